//! A bounded-frequency runner, as upstream's: requests coalesce; a run starts no sooner than
//! `min_interval` after the previous one ended; a run happens at least every `max_interval`;
//! a failed run is retried with exponential backoff from `retry_interval`, and any success
//! resets it. Time comes from tokio, so tests drive it with paused time.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Timing of a [`run`] loop.
#[derive(Clone, Copy, Debug)]
pub struct RunnerConfig {
    pub min_interval: Duration,
    pub max_interval: Duration,
    pub retry_interval: Duration,
}

/// Why a run happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Someone called [`RunnerHandle::request`].
    Requested,
    /// `max_interval` passed without a run.
    Periodic,
    /// Retrying after a failure.
    Retry,
}

/// Requests runs; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct RunnerHandle {
    notify: Arc<Notify>,
}

impl RunnerHandle {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for a run; requests made before it starts are coalesced into one.
    pub fn request(&self) {
        self.notify.notify_one();
    }
}

/// Runs `f` until `shutdown`, following the bounded-frequency rules. `f` returns whether the
/// run succeeded.
pub async fn run<F>(
    config: RunnerConfig,
    handle: RunnerHandle,
    shutdown: CancellationToken,
    mut f: F,
) where
    F: FnMut(Trigger) -> bool,
{
    let mut last_end: Option<Instant> = None;
    let mut retry_at: Option<Instant> = None;
    let mut backoff = config.retry_interval;
    loop {
        let periodic_at = last_end.map_or_else(Instant::now, |t| t + config.max_interval);
        let retry = retry_at;
        let retry_sleep = async move {
            match retry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let trigger = if last_end.is_none() {
            // Wait for the first request: the caller asks once its sources are ready.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = handle.notify.notified() => Trigger::Requested,
            }
        } else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = handle.notify.notified() => Trigger::Requested,
                _ = retry_sleep => Trigger::Retry,
                _ = tokio::time::sleep_until(periodic_at) => Trigger::Periodic,
            }
        };
        if let Some(end) = last_end {
            let earliest = end + config.min_interval;
            if Instant::now() < earliest {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(earliest) => {}
                }
            }
        }
        // Requests made while waiting are served by this run.
        let _ = futures::FutureExt::now_or_never(handle.notify.notified());
        let ok = f(trigger);
        let now = Instant::now();
        last_end = Some(now);
        if ok {
            retry_at = None;
            backoff = config.retry_interval;
        } else {
            retry_at = Some(now + backoff);
            backoff = (backoff * 2).min(config.max_interval.max(config.retry_interval));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn config() -> RunnerConfig {
        RunnerConfig {
            min_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(30),
            retry_interval: Duration::from_secs(2),
        }
    }

    type Log = Arc<Mutex<Vec<(u64, Trigger)>>>;

    fn start(results: Vec<bool>) -> (RunnerHandle, CancellationToken, Log, Instant) {
        let handle = RunnerHandle::new();
        let shutdown = CancellationToken::new();
        let log: Log = Arc::default();
        let t0 = Instant::now();
        let results = Arc::new(Mutex::new(results.into_iter()));
        let (h, s, l) = (handle.clone(), shutdown.clone(), log.clone());
        tokio::spawn(run(config(), h, s, move |trigger| {
            l.lock()
                .unwrap()
                .push((t0.elapsed().as_millis() as u64, trigger));
            results.lock().unwrap().next().unwrap_or(true)
        }));
        (handle, shutdown, log, t0)
    }

    async fn advance(ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn burst_inside_min_interval_runs_once_more() {
        let (handle, shutdown, log, _) = start(vec![]);
        handle.request();
        advance(10).await;
        for _ in 0..50 {
            handle.request();
            advance(10).await;
        }
        advance(2000).await;
        let runs = log.lock().unwrap().clone();
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!(runs[0], (0, Trigger::Requested));
        // The second run waits for min_interval after the first ended.
        assert_eq!(runs[1].0, 1000);
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn failure_retries_with_backoff_and_success_resets() {
        let (handle, shutdown, log, _) = start(vec![false, false, true]);
        handle.request();
        advance(10_000).await;
        let runs = log.lock().unwrap().clone();
        let times: Vec<u64> = runs.iter().map(|r| r.0).collect();
        assert_eq!(times, vec![0, 2000, 6000], "{runs:?}");
        assert_eq!(runs[1].1, Trigger::Retry);
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn idle_runs_at_max_interval() {
        let (handle, shutdown, log, _) = start(vec![]);
        handle.request();
        advance(65_000).await;
        let runs = log.lock().unwrap().clone();
        assert_eq!(
            runs.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![0, 30_000, 60_000]
        );
        assert!(runs[1..].iter().all(|r| r.1 == Trigger::Periodic));
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_runs_before_first_request() {
        let (_handle, shutdown, log, _) = start(vec![]);
        advance(100_000).await;
        assert!(log.lock().unwrap().is_empty());
        shutdown.cancel();
    }
}
