//! Exponential backoff with jitter, shared by every retry loop in the daemon.

use rand::Rng;
use slog::{warn, Logger};
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `min(max, min·2^attempt) · (1 + rand·jitter)`, the formula of Akka's backoff supervisor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
    /// 0.0 = no jitter; 0.2 = up to 20 % longer.
    pub jitter: f64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration, jitter: f64) -> Self {
        Backoff { min, max: max.max(min), jitter: jitter.clamp(0.0, 1.0) }
    }

    /// The delay before retry number `attempt` (0 = the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.base_delay(attempt);
        let factor = 1.0 + rand::rng().random::<f64>() * self.jitter;
        base.mul_f64(factor)
    }

    /// The delay without jitter: `min(max, min·2^attempt)`.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let doubled = self.min.saturating_mul(2u32.saturating_pow(attempt.min(31)));
        doubled.min(self.max)
    }
}

/// Retries `attempt` with backoff until it succeeds (`Some`) or `stop` is cancelled (`None`), logging
/// each failure as one WARN line whose message is `what`, with the attempt and the next delay.
pub async fn retry<T, E, F, Fut>(log: &Logger, what: &str, backoff: Backoff, stop: &CancellationToken, mut attempt: F) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut n: u32 = 0;
    loop {
        // An attempt is a read that can be made again: a stop need not wait for its answer.
        let outcome = tokio::select! {
            r = attempt() => r,
            _ = stop.cancelled() => return None,
        };
        match outcome {
            Ok(v) => return Some(v),
            Err(e) => {
                let delay = backoff.delay(n);
                n += 1;
                warn!(log, "{}", what; "error.message" => e.to_string(), "labels.attempt" => n,
                    "labels.delay_ms" => delay.as_millis() as u64);
                if !sleep_unless_stopped(stop, delay).await {
                    return None;
                }
            }
        }
    }
}

/// Sleeps `delay` unless `stop` is cancelled first (then at once); false when stopped.
pub async fn sleep_unless_stopped(stop: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => !stop.is_cancelled(),
        _ = stop.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_min_and_stops_at_max() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000), 0.0);
        let delays: Vec<u128> = (0..6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_millis(1000));
    }

    #[test]
    fn jitter_only_lengthens_and_stays_within_its_factor() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10), 0.5);
        for _ in 0..200 {
            let d = b.delay(1).as_millis();
            assert!((200..=300).contains(&d), "{d}");
        }
    }
}
