//! Periodic history compaction for any [`Store`] backend, like kube-apiserver's compactor.
//! Must not: compact history younger than one interval or the last `keep_revisions` revisions.

use std::sync::Arc;
use std::time::Duration;

use crate::{Revision, Store};

/// How much history to keep. Both bounds hold: at least `keep_revisions` revisions and at least
/// one `interval` of time (each run compacts to the revision seen at the previous run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactionPolicy {
    pub interval: Duration,
    pub keep_revisions: Revision,
}

impl Default for CompactionPolicy {
    /// kube-apiserver's default `--etcd-compaction-interval` is 5 minutes.
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(300),
            keep_revisions: 10_000,
        }
    }
}

/// The revision to compact to now, if any: the older of "the revision at the previous run" and
/// "`keep_revisions` below current", and only when it moves past the last compaction.
pub fn compaction_target(
    current: Revision,
    seen_at_previous_run: Option<Revision>,
    keep_revisions: Revision,
    last_compacted: Revision,
) -> Option<Revision> {
    let previous = seen_at_previous_run?;
    let target = previous.min(current - keep_revisions.max(0));
    (target > last_compacted && target >= 1).then_some(target)
}

/// Runs compaction every `policy.interval` until the returned task is aborted or the runtime
/// stops. Failures are logged and retried at the next interval.
pub fn spawn_auto_compaction(
    store: Arc<dyn Store>,
    policy: CompactionPolicy,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(policy.interval.max(Duration::from_millis(10)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen_at_previous_run = None;
        let mut last_compacted = 0;
        loop {
            ticker.tick().await;
            let current = match store.current_revision().await {
                Ok(current) => current,
                Err(error) => {
                    tracing::warn!(%error, "auto compaction: cannot read the current revision");
                    continue;
                }
            };
            if let Some(target) = compaction_target(
                current,
                seen_at_previous_run,
                policy.keep_revisions,
                last_compacted,
            ) {
                match store.compact(target).await {
                    Ok(()) => {
                        tracing::debug!(revision = target, "auto compaction done");
                        last_compacted = target;
                    }
                    Err(error) => {
                        tracing::warn!(%error, revision = target, "auto compaction failed")
                    }
                }
            }
            seen_at_previous_run = Some(current);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compaction_targets() {
        // (current, previous run, keep, last compacted) -> target
        let cases = [
            (100, None, 10, 0, None),
            (100, Some(50), 10, 0, Some(50)),
            (100, Some(95), 10, 0, Some(90)),
            (100, Some(50), 0, 50, None),
            (100, Some(60), 0, 50, Some(60)),
            (5, Some(5), 10, 0, None),
            (12, Some(12), 10, 0, Some(2)),
        ];
        for (current, previous, keep, last, expected) in cases {
            assert_eq!(
                compaction_target(current, previous, keep, last),
                expected,
                "{current} {previous:?} {keep} {last}"
            );
        }
    }
}
