//! The in-memory record index: Services, EndpointSlices and Pods in, DNS records out.
//!
//! Owns: turning plain Service/EndpointSlice/Pod records into the names of the Kubernetes DNS
//! specification (schema 1.1.0) and keeping them current incrementally: a change to one Service or
//! one of its slices recomputes only that Service's names. Must not: do I/O or know about the
//! wire format beyond name keys (the answer writer in `answer.rs` does that).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::name::{self, Zone};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;
/// A PTR target (relative key) tagged with the Service that contributed it.
type PtrTarget = (u32, Arc<[u8]>);

/// How `a-b-c-d.<ns>.pod.<zone>` names are answered (CoreDNS's `pods` option).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PodMode {
    /// No pod records (NXDOMAIN).
    Disabled,
    /// Any well-formed dashed IP answers with that IP, whether or not a pod has it.
    Insecure,
    /// Only IPs of running pods in that namespace answer (needs a Pod watch). The default:
    /// it satisfies the specification without letting anyone mint names for arbitrary IPs.
    #[default]
    Verified,
}

/// A Service port, as far as DNS cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortRecord {
    /// Empty for unnamed ports (they get no SRV record).
    pub name: String,
    /// `tcp`, `udp` or `sctp`, lowercase.
    pub protocol: String,
    pub port: u16,
}

/// What kind of names a Service gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    /// A/AAAA to the cluster IPs (one per family).
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: records per ready endpoint.
    Headless,
    /// CNAME to the external name.
    ExternalName(String),
}

/// A Service reduced to what DNS needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRecord {
    pub namespace: String,
    pub name: String,
    pub kind: ServiceKind,
    pub ports: Vec<PortRecord>,
    pub publish_not_ready: bool,
}

/// One endpoint of a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointRecord {
    pub addresses: Vec<IpAddr>,
    pub hostname: Option<String>,
    /// `conditions.ready`, with unset read as ready (the EndpointSlice API's rule).
    pub ready: bool,
}

/// An EndpointSlice reduced to what DNS needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceRecord {
    pub namespace: String,
    pub name: String,
    /// The `kubernetes.io/service-name` label.
    pub service: String,
    pub ports: Vec<PortRecord>,
    pub endpoints: Vec<EndpointRecord>,
}

/// A Pod reduced to what DNS needs (pod records and autopath).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub host_network: bool,
}

/// Record data stored under a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rdata {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// Target is a relative key inside the zone.
    Srv {
        port: u16,
        target: Arc<[u8]>,
    },
    /// Target is an absolute wire name with its original case.
    Cname(Arc<[u8]>),
    /// An empty non-terminal (for example `_tcp.<svc>.<ns>.svc`): the name exists, no data.
    Ent,
}

impl Rdata {
    /// The RR type code this data answers.
    pub fn rtype(&self) -> u16 {
        match self {
            Rdata::A(_) => 1,
            Rdata::Aaaa(_) => 28,
            Rdata::Srv { .. } => 33,
            Rdata::Cname(_) => 5,
            Rdata::Ent => 0,
        }
    }
}

/// All records at one name, tagged with the Service that contributed them.
#[derive(Debug, Default)]
pub struct NameEntry {
    pub records: Vec<(u32, Rdata)>,
}

impl NameEntry {
    /// Records of one type. Forward names are owned by exactly one Service (its name is part
    /// of every key it contributes), and each contribution is deduplicated, so no filtering of
    /// duplicates is needed here.
    pub fn of_type(&self, rtype: u16) -> impl Iterator<Item = &Rdata> {
        self.records
            .iter()
            .filter(move |(_, r)| r.rtype() == rtype)
            .map(|(_, r)| r)
    }

    /// The CNAME at this name, if any.
    pub fn cname(&self) -> Option<&Arc<[u8]>> {
        self.records.iter().find_map(|(_, r)| match r {
            Rdata::Cname(target) => Some(target),
            _ => None,
        })
    }
}

/// What a relative in-zone name resolves to.
#[derive(Debug)]
pub enum Found<'a> {
    /// The zone apex (SOA, NS).
    Apex,
    /// A name with stored records (possibly none of the asked type).
    Entry(&'a NameEntry),
    /// A name that exists without records (`svc`, `<ns>.svc`, `pod`).
    EmptyNonTerminal,
    /// `dns-version.<zone>`.
    DnsVersion,
    /// A pod record.
    Pod(IpAddr),
    /// `ns.dns.<zone>`, the name server the SOA and NS records name.
    Nameserver,
    /// No such name.
    NxDomain,
}

#[derive(Default)]
struct ServiceState {
    owner: u32,
    record: Option<ServiceRecord>,
    /// Slices of this Service by slice name.
    slices: HashMap<String, SliceRecord>,
    names: Vec<Box<[u8]>>,
    ptrs: Vec<IpAddr>,
}

/// The record index. Reads are lock-free of each other (callers wrap it in an `RwLock`);
/// every mutation costs time proportional to the one Service it touches.
pub struct Index {
    zone: Zone,
    pod_mode: PodMode,
    services: HashMap<(String, String), ServiceState>,
    /// (namespace, slice name) → service name, so a slice that changes Service is moved.
    slice_owner: HashMap<(String, String), String>,
    names: FastMap<Box<[u8]>, NameEntry>,
    reverse: FastMap<IpAddr, Vec<PtrTarget>>,
    /// Number of Services per namespace label (makes `<ns>.svc.<zone>` exist).
    namespaces: FastMap<Box<[u8]>, u32>,
    pods: HashMap<(String, String), PodRecord>,
    pod_ips: FastMap<IpAddr, Vec<Arc<str>>>,
    next_owner: u32,
    serial: u32,
    /// Cluster IPs of the DNS Service (`kube-system/kube-dns`), the addresses of
    /// `ns.dns.<zone>` when present (what clients are configured with).
    dns_service_ips: Vec<IpAddr>,
    /// This server's own addresses, used for `ns.dns.<zone>` when there is no DNS Service.
    own_addresses: Vec<IpAddr>,
}

/// The Service that fronts the cluster DNS by convention (kubelet's `clusterDNS` points at it,
/// whatever server runs behind it).
pub const DNS_SERVICE: (&str, &str) = ("kube-system", "kube-dns");

impl Index {
    pub fn new(zone: Zone, pod_mode: PodMode) -> Index {
        Index {
            zone,
            pod_mode,
            services: HashMap::new(),
            slice_owner: HashMap::new(),
            names: FastMap::default(),
            reverse: FastMap::default(),
            namespaces: FastMap::default(),
            pods: HashMap::new(),
            pod_ips: FastMap::default(),
            next_owner: 1,
            serial: 1,
            dns_service_ips: Vec::new(),
            own_addresses: Vec::new(),
        }
    }

    /// Sets this server's own addresses (answered for `ns.dns.<zone>` when no DNS Service
    /// exists). Unspecified addresses are ignored.
    pub fn set_own_addresses(&mut self, addresses: &[IpAddr]) {
        self.own_addresses = addresses
            .iter()
            .copied()
            .filter(|ip| !ip.is_unspecified())
            .collect();
        self.serial = self.serial.wrapping_add(1);
    }

    /// Addresses of `ns.dns.<zone>`: the DNS Service's cluster IPs, else our own addresses.
    pub fn nameserver_addresses(&self) -> &[IpAddr] {
        if self.dns_service_ips.is_empty() {
            &self.own_addresses
        } else {
            &self.dns_service_ips
        }
    }

    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    pub fn pod_mode(&self) -> PodMode {
        self.pod_mode
    }

    /// The SOA serial; it changes whenever a record changes.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Number of names with records (for metrics and memory checks).
    pub fn name_count(&self) -> usize {
        self.names.len()
    }

    /// Adds or replaces a Service.
    pub fn upsert_service(&mut self, svc: ServiceRecord) {
        let key = (svc.namespace.clone(), svc.name.clone());
        if let Some(state) = self.services.get(&key)
            && state.record.as_ref() == Some(&svc)
        {
            return;
        }
        let state = self.state_mut(&key);
        let was_new = state.record.is_none();
        state.record = Some(svc);
        if was_new {
            *self.namespaces.entry(ns_key(&key.0)).or_default() += 1;
        }
        self.rebuild(&key);
    }

    /// Removes a Service (its slices stay until they are deleted too).
    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        let Some(state) = self.services.get_mut(&key) else {
            return;
        };
        if state.record.take().is_none() {
            return;
        }
        let ns = ns_key(namespace);
        if let Some(count) = self.namespaces.get_mut(&ns) {
            *count -= 1;
            if *count == 0 {
                self.namespaces.remove(&ns);
            }
        }
        self.rebuild(&key);
        self.forget_if_empty(&key);
    }

    /// Adds or replaces an EndpointSlice.
    pub fn upsert_slice(&mut self, slice: SliceRecord) {
        let slice_key = (slice.namespace.clone(), slice.name.clone());
        if let Some(previous) = self.slice_owner.get(&slice_key).cloned()
            && previous != slice.service
        {
            self.delete_slice(&slice.namespace, &slice.name);
        }
        let key = (slice.namespace.clone(), slice.service.clone());
        if let Some(state) = self.services.get(&key)
            && state.slices.get(&slice.name) == Some(&slice)
        {
            return;
        }
        self.slice_owner.insert(slice_key, slice.service.clone());
        let state = self.state_mut(&key);
        state.slices.insert(slice.name.clone(), slice);
        self.rebuild(&key);
    }

    /// Removes an EndpointSlice.
    pub fn delete_slice(&mut self, namespace: &str, name: &str) {
        let slice_key = (namespace.to_string(), name.to_string());
        let Some(service) = self.slice_owner.remove(&slice_key) else {
            return;
        };
        let key = (namespace.to_string(), service);
        if let Some(state) = self.services.get_mut(&key) {
            state.slices.remove(name);
            self.rebuild(&key);
            self.forget_if_empty(&key);
        }
    }

    /// Adds or replaces a Pod.
    pub fn upsert_pod(&mut self, pod: PodRecord) {
        let key = (pod.namespace.clone(), pod.name.clone());
        if self.pods.get(&key) == Some(&pod) {
            return;
        }
        self.delete_pod(&pod.namespace, &pod.name);
        if !pod.host_network {
            let ns: Arc<str> = Arc::from(pod.namespace.as_str());
            for ip in &pod.ips {
                self.pod_ips.entry(*ip).or_default().push(ns.clone());
            }
        }
        self.pods.insert(key, pod);
        self.serial = self.serial.wrapping_add(1);
    }

    /// Removes a Pod.
    pub fn delete_pod(&mut self, namespace: &str, name: &str) {
        let Some(pod) = self.pods.remove(&(namespace.to_string(), name.to_string())) else {
            return;
        };
        if !pod.host_network {
            for ip in &pod.ips {
                if let Some(list) = self.pod_ips.get_mut(ip) {
                    if let Some(pos) = list.iter().position(|ns| &**ns == namespace) {
                        list.swap_remove(pos);
                    }
                    if list.is_empty() {
                        self.pod_ips.remove(ip);
                    }
                }
            }
        }
        self.serial = self.serial.wrapping_add(1);
    }

    /// The namespace of the (non-host-network) pod that owns `ip`, when exactly one does.
    pub fn pod_namespace(&self, ip: IpAddr) -> Option<&str> {
        match self.pod_ips.get(&ip)?.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }

    /// Keys of every Service, slice and pod, for resyncs after a watch restart.
    pub fn service_keys(&self) -> Vec<(String, String)> {
        self.services
            .iter()
            .filter(|(_, s)| s.record.is_some())
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub fn slice_keys(&self) -> Vec<(String, String)> {
        self.slice_owner.keys().cloned().collect()
    }

    pub fn pod_keys(&self) -> Vec<(String, String)> {
        self.pods.keys().cloned().collect()
    }

    /// Resolves a relative lowercase key (wire labels without the zone).
    pub fn find(&self, rel: &[u8]) -> Found<'_> {
        if rel.is_empty() {
            return Found::Apex;
        }
        if let Some(entry) = self.names.get(rel) {
            return Found::Entry(entry);
        }
        let mut array: [&[u8]; 4] = [&[]; 4];
        let Some(n) = name::split_labels(rel, &mut array) else {
            return Found::NxDomain;
        };
        match &array[..n] {
            [b"svc"] | [b"pod"] | [b"dns"] => Found::EmptyNonTerminal,
            [b"ns", b"dns"] => Found::Nameserver,
            [b"dns-version"] => Found::DnsVersion,
            [ns, b"svc"] => {
                if self.namespaces.contains_key(*ns) {
                    Found::EmptyNonTerminal
                } else {
                    Found::NxDomain
                }
            }
            [ns, b"pod"] if self.pod_mode != PodMode::Disabled && !ns.is_empty() => {
                Found::EmptyNonTerminal
            }
            [ip, ns, b"pod"] => self.find_pod(ip, ns),
            _ => Found::NxDomain,
        }
    }

    fn find_pod(&self, ip_label: &[u8], ns: &[u8]) -> Found<'_> {
        let Some(ip) = name::parse_dashed_ip(ip_label) else {
            return Found::NxDomain;
        };
        match self.pod_mode {
            PodMode::Disabled => Found::NxDomain,
            PodMode::Insecure => Found::Pod(ip),
            PodMode::Verified => {
                let known = self
                    .pod_ips
                    .get(&ip)
                    .is_some_and(|list| list.iter().any(|n| n.as_bytes() == ns));
                if known {
                    Found::Pod(ip)
                } else {
                    Found::NxDomain
                }
            }
        }
    }

    /// PTR targets (relative keys) for an address.
    pub fn ptr(&self, ip: IpAddr) -> impl Iterator<Item = &Arc<[u8]>> {
        let list = self.reverse.get(&ip).map(Vec::as_slice).unwrap_or(&[]);
        list.iter()
            .enumerate()
            .filter(move |(i, (_, t))| !list[..*i].iter().any(|(_, e)| e == t))
            .map(|(_, (_, t))| t)
    }

    fn state_mut(&mut self, key: &(String, String)) -> &mut ServiceState {
        if !self.services.contains_key(key) {
            let owner = self.next_owner;
            self.next_owner = self.next_owner.wrapping_add(1);
            self.services.insert(
                key.clone(),
                ServiceState {
                    owner,
                    ..ServiceState::default()
                },
            );
        }
        // Inserted just above when missing.
        self.services.entry(key.clone()).or_default()
    }

    fn forget_if_empty(&mut self, key: &(String, String)) {
        if self
            .services
            .get(key)
            .is_some_and(|s| s.record.is_none() && s.slices.is_empty())
        {
            self.services.remove(key);
        }
    }

    /// Recomputes one Service's names and swaps them into the tables.
    fn rebuild(&mut self, key: &(String, String)) {
        let Some(state) = self.services.get_mut(key) else {
            return;
        };
        let owner = state.owner;
        let (names, ptrs) = match &state.record {
            Some(svc) => contributions(svc, &state.slices),
            None => (Vec::new(), Vec::new()),
        };
        if (key.0.as_str(), key.1.as_str()) == DNS_SERVICE {
            self.dns_service_ips = match &state.record {
                Some(ServiceRecord {
                    kind: ServiceKind::ClusterIp(ips),
                    ..
                }) => ips.clone(),
                _ => Vec::new(),
            };
        }
        let old_names = std::mem::take(&mut state.names);
        let old_ptrs = std::mem::take(&mut state.ptrs);
        let mut new_names: Vec<Box<[u8]>> = Vec::with_capacity(names.len());
        let mut new_ptrs: Vec<IpAddr> = Vec::with_capacity(ptrs.len());
        // Remove the previous contribution.
        for name in &old_names {
            if let Some(entry) = self.names.get_mut(name) {
                entry.records.retain(|(o, _)| *o != owner);
                if entry.records.is_empty() {
                    self.names.remove(name);
                }
            }
        }
        for ip in &old_ptrs {
            if let Some(list) = self.reverse.get_mut(ip) {
                list.retain(|(o, _)| *o != owner);
                if list.is_empty() {
                    self.reverse.remove(ip);
                }
            }
        }
        // Add the new one.
        let mut seen: HashSet<(Box<[u8]>, Rdata)> = HashSet::with_capacity(names.len());
        for (name, rdata) in names {
            if !seen.insert((name.clone(), rdata.clone())) {
                continue;
            }
            let entry = self.names.entry(name.clone()).or_default();
            if !entry.records.iter().any(|(o, _)| *o == owner) {
                new_names.push(name);
            }
            entry.records.push((owner, rdata));
        }
        let mut seen_ptr: HashSet<(IpAddr, Arc<[u8]>)> = HashSet::with_capacity(ptrs.len());
        for (ip, target) in ptrs {
            if !seen_ptr.insert((ip, target.clone())) {
                continue;
            }
            let list = self.reverse.entry(ip).or_default();
            if !list.iter().any(|(o, _)| *o == owner) {
                new_ptrs.push(ip);
            }
            list.push((owner, target));
        }
        if let Some(state) = self.services.get_mut(key) {
            state.names = new_names;
            state.ptrs = new_ptrs;
        }
        self.serial = self.serial.wrapping_add(1);
    }
}

impl std::hash::Hash for Rdata {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            Rdata::A(ip) => ip.hash(state),
            Rdata::Aaaa(ip) => ip.hash(state),
            Rdata::Srv { port, target } => {
                port.hash(state);
                target.hash(state);
            }
            Rdata::Cname(t) => t.hash(state),
            Rdata::Ent => 0u8.hash(state),
        }
    }
}

fn ns_key(namespace: &str) -> Box<[u8]> {
    namespace
        .to_ascii_lowercase()
        .into_bytes()
        .into_boxed_slice()
}

fn address_record(ip: IpAddr) -> Rdata {
    match ip {
        IpAddr::V4(v4) => Rdata::A(v4),
        IpAddr::V6(v6) => Rdata::Aaaa(v6),
    }
}

type Contributions = (Vec<(Box<[u8]>, Rdata)>, Vec<(IpAddr, Arc<[u8]>)>);

/// Every name and PTR one Service contributes, per the specification.
fn contributions(svc: &ServiceRecord, slices: &HashMap<String, SliceRecord>) -> Contributions {
    let mut names = Vec::new();
    let mut ptrs = Vec::new();
    let Some(base) = name::key(&[&svc.name, &svc.namespace, "svc"]) else {
        return (names, ptrs);
    };
    let base: Arc<[u8]> = Arc::from(base);
    match &svc.kind {
        ServiceKind::ClusterIp(ips) => {
            for ip in ips {
                names.push((Box::from(&*base), address_record(*ip)));
                ptrs.push((*ip, base.clone()));
            }
            for port in svc.ports.iter().filter(|p| !p.name.is_empty()) {
                push_srv(&mut names, &base, port, port.port, base.clone());
            }
        }
        ServiceKind::ExternalName(target) => {
            if let Some(wire) = name::absolute_wire(target) {
                names.push((Box::from(&*base), Rdata::Cname(Arc::from(wire))));
            }
        }
        ServiceKind::Headless => {
            // Slices are visited in name order so answers are stable.
            let mut ordered: Vec<&SliceRecord> = slices.values().collect();
            ordered.sort_by(|a, b| a.name.cmp(&b.name));
            for slice in ordered {
                for ep in &slice.endpoints {
                    if !(ep.ready || svc.publish_not_ready) {
                        continue;
                    }
                    for ip in &ep.addresses {
                        let host = match &ep.hostname {
                            Some(h) if !h.is_empty() => h.to_ascii_lowercase(),
                            _ => name::dashed_ip(*ip),
                        };
                        let Some(host_key) = name::prefixed(&[&host], &base) else {
                            continue;
                        };
                        let host_key: Arc<[u8]> = Arc::from(host_key);
                        names.push((Box::from(&*base), address_record(*ip)));
                        names.push((Box::from(&*host_key), address_record(*ip)));
                        ptrs.push((*ip, host_key.clone()));
                        for port in slice.ports.iter().filter(|p| !p.name.is_empty()) {
                            push_srv(&mut names, &base, port, port.port, host_key.clone());
                        }
                    }
                }
            }
        }
    }
    (names, ptrs)
}

fn push_srv(
    names: &mut Vec<(Box<[u8]>, Rdata)>,
    base: &[u8],
    port: &PortRecord,
    number: u16,
    target: Arc<[u8]>,
) {
    let proto = port.protocol.to_ascii_lowercase();
    let port_label = format!("_{}", port.name);
    let proto_label = format!("_{proto}");
    if let Some(ent) = name::prefixed(&[&proto_label], base) {
        names.push((ent, Rdata::Ent));
    }
    if let Some(srv) = name::prefixed(&[&port_label, &proto_label], base) {
        names.push((
            srv,
            Rdata::Srv {
                port: number,
                target,
            },
        ));
    }
}
