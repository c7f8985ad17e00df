//! Remembers the slices a controller just wrote until its watch shows them, so a sync never
//! runs on a cache that misses its own last write (which would create duplicate slices), and
//! so the watch events of its own writes do not trigger another sync.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::world::Key;

/// How long an unobserved write may hold a Service back before it is given up on.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
enum Expect {
    /// Written with this resourceVersion.
    Present(String),
    Gone,
}

/// Service → slice name → what we wrote and when.
type Expectations = HashMap<Key, HashMap<String, (Expect, Instant)>>;

#[derive(Default)]
pub(crate) struct Tracker {
    inner: Mutex<Expectations>,
}

/// Resource versions are opaque, but numeric ones (ours, etcd's) can be ordered.
fn at_least(seen: &str, expected: &str) -> bool {
    match (seen.parse::<u64>(), expected.parse::<u64>()) {
        (Ok(a), Ok(b)) => a >= b,
        _ => seen == expected,
    }
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Expectations> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn expect_written(&self, service: &Key, name: &str, resource_version: &str) {
        self.lock().entry(service.clone()).or_default().insert(
            name.to_string(),
            (
                Expect::Present(resource_version.to_string()),
                Instant::now(),
            ),
        );
    }

    pub fn expect_deleted(&self, service: &Key, name: &str) {
        self.lock()
            .entry(service.clone())
            .or_default()
            .insert(name.to_string(), (Expect::Gone, Instant::now()));
    }

    /// Records a watch event; true when it is exactly the write we made (nothing to do).
    pub fn observe(&self, service: &Key, name: &str, resource_version: Option<&str>) -> bool {
        let mut inner = self.lock();
        let Some(names) = inner.get_mut(service) else {
            return false;
        };
        let Some((expect, _)) = names.get(name).cloned() else {
            return false;
        };
        let (own, satisfied) = match (&expect, resource_version) {
            (Expect::Present(want), Some(seen)) => (seen == want, at_least(seen, want)),
            (Expect::Gone, None) => (true, true),
            _ => (false, false),
        };
        if satisfied {
            names.remove(name);
            if names.is_empty() {
                inner.remove(service);
            }
        }
        own
    }

    /// True when the cache, read through `current` (slice name → resourceVersion), does not
    /// yet show every write made for `service`.
    pub fn stale(&self, service: &Key, current: impl Fn(&str) -> Option<String>) -> bool {
        let mut inner = self.lock();
        let Some(names) = inner.get_mut(service) else {
            return false;
        };
        names.retain(|name, (expect, since)| {
            if since.elapsed() > EXPECTATION_TIMEOUT {
                return false;
            }
            match (expect, current(name)) {
                (Expect::Present(want), Some(seen)) => !at_least(&seen, want),
                (Expect::Present(_), None) => true,
                (Expect::Gone, Some(_)) => true,
                (Expect::Gone, None) => false,
            }
        });
        let stale = !names.is_empty();
        if !stale {
            inner.remove(service);
        }
        stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_observe() {
        let t = Tracker::default();
        let svc = ("ns".to_string(), "web".to_string());
        t.expect_written(&svc, "web-abc", "10");
        assert!(t.stale(&svc, |_| None));
        assert!(t.stale(&svc, |_| Some("9".into())));
        assert!(t.observe(&svc, "web-abc", Some("10")));
        assert!(!t.stale(&svc, |_| Some("10".into())));
        t.expect_deleted(&svc, "web-abc");
        assert!(t.stale(&svc, |_| Some("10".into())));
        assert!(!t.observe(&svc, "web-abc", Some("11")));
        assert!(t.observe(&svc, "web-abc", None));
        assert!(!t.stale(&svc, |_| None));
    }
}
