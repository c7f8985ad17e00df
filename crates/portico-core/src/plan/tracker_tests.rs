//! Property test: folding any sequence of events through the trackers, applying at random
//! points, gives the same plan as building from the final objects.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proptest::prelude::*;

use super::tests::{Ep, ep, service, slice, terminating};
use super::tracker::{ChangeTracker, PlanState};
use super::{NodeInfo, build};

#[derive(Clone, Debug)]
enum Event {
    Service {
        idx: u8,
        variant: u8,
        delete: bool,
    },
    Slice {
        idx: u8,
        service: u8,
        variant: u8,
        delete: bool,
    },
    Apply,
}

fn make_service(idx: u8, variant: u8) -> Service {
    service(&format!("svc{idx}"), |s| match variant % 4 {
        0 => {}
        1 => s.internal_traffic_policy = Some("Local".into()),
        2 => {
            s.type_ = Some("NodePort".into());
            s.external_traffic_policy = Some("Local".into());
            if let Some(p) = s.ports.as_mut().and_then(|p| p.first_mut()) {
                p.node_port = Some(30000 + i32::from(idx));
            }
        }
        _ => s.cluster_ip = Some("None".into()),
    })
}

fn make_slice(idx: u8, service: u8, variant: u8) -> EndpointSlice {
    let eps: Vec<Ep> = match variant % 4 {
        0 => vec![ep("10.0.0.1", "node-a")],
        1 => vec![ep("10.0.0.1", "node-b"), ep("10.0.0.2", "node-a")],
        2 => vec![terminating(ep("10.0.0.3", "node-a"), true)],
        _ => vec![],
    };
    slice(
        &format!("svc{service}"),
        &format!("slice{idx}"),
        8080 + i32::from(variant),
        &eps,
    )
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0u8..3, 0u8..4, any::<bool>()).prop_map(|(idx, variant, delete)| Event::Service {
            idx,
            variant,
            delete
        }),
        (0u8..4, 0u8..3, 0u8..4, any::<bool>()).prop_map(|(idx, service, variant, delete)| {
            Event::Slice {
                idx,
                service,
                variant,
                delete,
            }
        }),
        Just(Event::Apply),
    ]
}

proptest! {
    #[test]
    fn folding_equals_building_from_final_state(events in proptest::collection::vec(event(), 0..40)) {
        let node = NodeInfo::new("node-a");
        let mut state = PlanState::new(node.clone());
        let mut services: BTreeMap<u8, Service> = BTreeMap::new();
        let mut slices: BTreeMap<u8, EndpointSlice> = BTreeMap::new();
        for e in events {
            match e {
                Event::Service { idx, variant, delete } => {
                    let svc = make_service(idx, variant);
                    if delete {
                        if let Some(old) = services.remove(&idx) {
                            state.on_service_deleted(&old);
                        }
                    } else {
                        state.on_service(&svc);
                        services.insert(idx, svc);
                    }
                }
                Event::Slice { idx, service, variant, delete } => {
                    let s = make_slice(idx, service, variant);
                    if delete {
                        if let Some(old) = slices.remove(&idx) {
                            state.on_slice_deleted(&old);
                        }
                    } else {
                        state.on_slice(&s);
                        slices.insert(idx, s);
                    }
                }
                Event::Apply => {
                    state.apply();
                }
            }
        }
        state.apply();
        prop_assert!(!state.pending());
        let services: Vec<Service> = services.into_values().collect();
        let slices: Vec<EndpointSlice> = slices.into_values().collect();
        prop_assert_eq!(state.plan(), &build(&services, &slices, &node));
    }

    #[test]
    fn change_and_revert_leave_nothing_pending(a in 0u8..10, b in 0u8..10) {
        let mut tracker: ChangeTracker<&str, u8> = ChangeTracker::default();
        tracker.update("k", Some(a), Some(b));
        let pending = tracker.update("k", Some(b), Some(a));
        prop_assert!(!pending);
        prop_assert!(tracker.drain().is_empty());
    }
}

#[test]
fn first_previous_wins() {
    let mut tracker: ChangeTracker<&str, u8> = ChangeTracker::default();
    assert!(tracker.update("k", Some(1), Some(2)));
    assert!(tracker.update("k", Some(2), Some(3)));
    let changes = tracker.drain();
    assert_eq!(changes["k"].previous, Some(1));
    assert_eq!(changes["k"].current, Some(3));
}

#[test]
fn node_change_rebuilds_everything() {
    let mut state = PlanState::new(NodeInfo::new("node-a"));
    state.on_service(&make_service(0, 1));
    state.on_slice(&make_slice(0, 0, 1));
    state.apply();
    let local: Vec<String> = state
        .plan()
        .services
        .values()
        .flat_map(|p| p.cluster_endpoints.iter().map(|e| e.ip.to_string()))
        .collect();
    assert_eq!(local, vec!["10.0.0.2"]);
    let node = k8s_openapi::api::core::v1::Node {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("node-b".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(state.on_node(&node));
    let applied = state.apply();
    assert!(applied.full);
    let local: Vec<String> = state
        .plan()
        .services
        .values()
        .flat_map(|p| p.cluster_endpoints.iter().map(|e| e.ip.to_string()))
        .collect();
    assert_eq!(local, vec!["10.0.0.1"]);
}
