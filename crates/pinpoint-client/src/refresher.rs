//! When an agent refreshes its managed intake key. [`Schedule`] is the pure decision
//! logic (unit-tested); [`run`] drives it with real exchanges.
//!
//! - After a successful exchange: refresh shortly before `rotates_at`, with jitter so a
//!   fleet does not refresh at the same second.
//! - After a failure: retry with exponential backoff (x2, from 1 s up to 1 hour), keeping the
//!   previous key, which keeps working through the server's overlap window.
//! - A 401/403 on the key from the intake endpoint means re-exchange now.
//! - A configured static fallback key is used only while no exchanged key is usable and an
//!   exchange has failed, and the switch is logged.

use std::time::Duration;

use crate::{Credentials, Exchanger, IntakeKey};

const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// The refresh state of one agent.
#[derive(Debug, Default)]
pub struct Schedule {
    current: Option<IntakeKey>,
    fallback: Option<String>,
    failures: u32,
}

impl Schedule {
    pub fn new(fallback: Option<String>) -> Self {
        Schedule {
            current: None,
            fallback,
            failures: 0,
        }
    }

    /// Records a successful exchange; returns the delay until the next refresh. `jitter`
    /// in [0, 1) spreads refreshes over the last tenth of the time before rotation.
    pub fn on_success(&mut self, key: IntakeKey, now: i64, jitter: f64) -> Duration {
        let until_rotation = (key.rotates_at - now).max(1) as f64;
        self.current = Some(key);
        self.failures = 0;
        let early = until_rotation * 0.1 * jitter.clamp(0.0, 1.0);
        Duration::from_secs_f64((until_rotation - early).max(1.0))
    }

    /// Records a failed exchange; returns the backoff delay (1 s, 2 s, 4 s ... 1 h), less
    /// up to a quarter by `jitter` (0 to 1), so agents that failed together do not retry
    /// together.
    pub fn on_failure(&mut self, jitter: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let factor = 1u64 << (self.failures - 1).min(12);
        let backoff = (MIN_BACKOFF * factor as u32).min(MAX_BACKOFF);
        backoff.mul_f64(1.0 - 0.25 * jitter.clamp(0.0, 1.0))
    }

    /// The server refused the current key (401/403): drop it and re-exchange at once.
    pub fn on_rejected(&mut self) {
        self.current = None;
    }

    /// The key to use now: the exchanged one while it has not expired, else the static
    /// fallback but only after an exchange failed.
    pub fn key(&self, now: i64) -> Option<&str> {
        match &self.current {
            Some(k) if k.expires > now => Some(&k.api_key),
            _ if self.failures > 0 => self.fallback.as_deref(),
            _ => None,
        }
    }

    /// Whether the fallback is in use.
    pub fn using_fallback(&self, now: i64) -> bool {
        self.fallback.is_some()
            && self.key(now) == self.fallback.as_deref()
            && self.current.as_ref().is_none_or(|k| k.expires <= now)
    }
}

/// Keeps an intake key fresh until `shutdown` resolves, calling `publish` with every new
/// key in use (exchanged or fallback). `credentials` is asked for AWS credentials before
/// every exchange (so rotated instance credentials are picked up). Notify `rejected` when
/// the intake endpoint answers 401/403 with the published key: it is dropped and a new
/// exchange runs at once.
pub async fn run<C, F>(
    exchanger: &Exchanger,
    mut credentials: C,
    fallback: Option<String>,
    mut publish: impl FnMut(&str),
    rejected: &tokio::sync::Notify,
    shutdown: impl std::future::Future<Output = ()>,
) where
    C: FnMut() -> F,
    F: std::future::Future<Output = Result<Credentials, String>>,
{
    let mut schedule = Schedule::new(fallback);
    let mut published: Option<String> = None;
    tokio::pin!(shutdown);
    loop {
        let now = unix_now();
        let delay = match credentials().await {
            Ok(creds) => match exchanger.intake_key(&creds).await {
                Ok(key) => schedule.on_success(key, now, rand::random::<f64>()),
                Err(e) => {
                    let delay = schedule.on_failure(rand::random::<f64>());
                    tracing::warn!(error = %e, retry_in_s = delay.as_secs(), refusal = e.is_refusal(), "intake key exchange failed; keeping the previous key");
                    delay
                }
            },
            Err(e) => {
                let delay = schedule.on_failure(rand::random::<f64>());
                tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "no AWS credentials; keeping the previous key");
                delay
            }
        };
        let key = schedule.key(unix_now()).map(str::to_owned);
        if key != published {
            if let Some(k) = &key {
                if schedule.using_fallback(unix_now()) {
                    tracing::warn!("using the configured static fallback key: no exchanged key is available");
                }
                publish(k);
            }
            published = key;
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = rejected.notified() => {
                tracing::warn!("the intake endpoint refused the key; exchanging again now");
                schedule.on_rejected();
            }
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Re-exchange at once after the intake endpoint refused the key.
pub fn is_key_refused(status: u16) -> bool {
    status == 401 || status == 403
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(expires: i64, rotates_at: i64) -> IntakeKey {
        IntakeKey {
            api_key: String::from("pp_current"),
            expires,
            rotates_at,
        }
    }

    #[test]
    fn refreshes_before_rotation_with_jitter() {
        let mut s = Schedule::new(None);
        assert_eq!(s.on_success(key(2000, 1000), 0, 0.0), Duration::from_secs(1000));
        assert_eq!(s.on_success(key(2000, 1000), 0, 0.5), Duration::from_secs(950));
        assert!(s.on_success(key(2000, 1000), 0, 0.999) >= Duration::from_secs(900));
        assert_eq!(s.key(10), Some("pp_current"));
    }

    #[test]
    fn backs_off_exponentially_up_to_an_hour_and_keeps_the_previous_key() {
        let mut s = Schedule::new(None);
        s.on_success(key(2000, 1000), 0, 0.0);
        let delays: Vec<u64> = (0..15).map(|_| s.on_failure(0.0).as_secs()).collect();
        assert_eq!(&delays[..5], &[1, 2, 4, 8, 16]);
        assert_eq!(*delays.last().unwrap(), 3600);
        assert_eq!(
            s.key(1500),
            Some("pp_current"),
            "the previous key is kept while refreshes fail"
        );
        s.on_success(key(3000, 2000), 1500, 0.0);
        assert_eq!(
            s.on_failure(0.0),
            Duration::from_secs(1),
            "backoff restarts after a success"
        );
        // Jitter takes up to a quarter off, so agents that failed together spread out.
        s.on_success(key(3000, 2000), 1500, 0.0);
        let jittered = s.on_failure(1.0);
        assert_eq!(jittered, Duration::from_millis(750));
    }

    #[test]
    fn fallback_only_after_a_failed_exchange() {
        let mut s = Schedule::new(Some(String::from("pp_static")));
        assert_eq!(s.key(0), None, "no fallback before any exchange failed");
        s.on_failure(0.5);
        assert_eq!(s.key(0), Some("pp_static"));
        assert!(s.using_fallback(0));
        s.on_success(key(2000, 1000), 0, 0.0);
        assert_eq!(s.key(0), Some("pp_current"));
        assert!(!s.using_fallback(0));
        s.on_rejected();
        assert_eq!(
            s.key(0),
            None,
            "a refused key is dropped; the next exchange runs at once"
        );
        assert!(is_key_refused(403));
    }
}
