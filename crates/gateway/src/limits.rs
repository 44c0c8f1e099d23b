//! The platform's quotas: per-connection rates (GCRA) and concurrency / new-instance quotas.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scfsim_config::{Config, Limits};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
// tokio's clock, not std's: the proxy's tests pause it to test throttling without waiting.
use tokio::time::Instant;

/// The generic cell rate algorithm: `rate` units per second with a burst of `burst` units.
/// Instead of a token count it keeps the theoretical arrival time of the next unit; a cost is
/// allowed once `now >= tat - burst/rate`. A cost larger than the burst (a 250 KB message
/// against 128 KB/s) is allowed after the wait that the rate asks for, never refused forever.
#[derive(Debug, Clone)]
pub(crate) struct Gcra {
    per_unit: f64,
    tolerance: Duration,
    tat: Option<Instant>,
}

impl Gcra {
    pub(crate) fn new(rate_per_second: f64, burst: f64) -> Gcra {
        let per_unit = 1.0 / rate_per_second;
        Gcra {
            per_unit,
            tolerance: Duration::from_secs_f64(per_unit * burst),
            tat: None,
        }
    }

    /// How long to wait before `cost` units may go at `now`.
    pub(crate) fn delay(&self, now: Instant, cost: u64) -> Duration {
        let tat = self.tat.unwrap_or(now).max(now);
        let increment = Duration::from_secs_f64(self.per_unit * cost as f64);
        // The cost is allowed when its own end (tat + increment) fits within the tolerance.
        (tat + increment).saturating_duration_since(now + self.tolerance)
    }

    /// Takes `cost` units at `at` (which includes any delay the caller waited).
    pub(crate) fn take(&mut self, at: Instant, cost: u64) {
        let tat = self.tat.unwrap_or(at).max(at);
        self.tat = Some(tat + Duration::from_secs_f64(self.per_unit * cost as f64));
    }
}

/// Client → function limits of one connection: bytes per second and messages per second, each
/// with one second's worth of burst, so a client within the limits is never delayed.
#[derive(Debug)]
pub(crate) struct RequestRate {
    bytes: Gcra,
    messages: Gcra,
}

impl RequestRate {
    pub(crate) fn new(limits: &Limits) -> RequestRate {
        let bytes = limits.max_bytes_per_second as f64;
        let messages = f64::from(limits.max_messages_per_second);
        RequestRate {
            bytes: Gcra::new(bytes, bytes),
            messages: Gcra::new(messages, messages),
        }
    }

    /// The wait before a message of `len` bytes may be forwarded at `now`.
    pub(crate) fn delay(&self, now: Instant, len: usize) -> Duration {
        self.bytes
            .delay(now, len as u64)
            .max(self.messages.delay(now, 1))
    }

    pub(crate) fn take(&mut self, at: Instant, len: usize) {
        self.bytes.take(at, len as u64);
        self.messages.take(at, 1);
    }
}

/// Why a new connection gets no instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The function's `max_instances` are all in use: 432.
    FunctionQuota { function: String, max: u32 },
    /// `gateway.max_total_instances` are in use: 432.
    TotalQuota { max: u32 },
    /// `gateway.max_new_instances_per_minute` reached: 429.
    NewInstanceRate { per_minute: u32 },
}

impl Refusal {
    pub(crate) fn message(&self) -> String {
        match self {
            Refusal::FunctionQuota { function, max } => format!(
                "function {function:?} already has max_instances = {max} instances running \
                 (its concurrency quota); retry when one ends, or raise max_instances"
            ),
            Refusal::TotalQuota { max } => format!(
                "scfsim already runs gateway.max_total_instances = {max} instances; retry when \
                 one ends, or raise the limit"
            ),
            Refusal::NewInstanceRate { per_minute } => format!(
                "more than gateway.max_new_instances_per_minute = {per_minute} new instances \
                 in the last minute; retry shortly"
            ),
        }
    }
}

/// Held by an invocation from before its instance starts until after it is stopped and reaped;
/// dropping it frees the slots.
#[derive(Debug)]
pub(crate) struct Permit {
    _function: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

/// Concurrency and new-instance quotas. Check and reservation are one step (a semaphore
/// `try_acquire`), so two connections can never both take the last slot.
#[derive(Debug)]
pub(crate) struct Quotas {
    per_function: HashMap<String, (Arc<Semaphore>, u32)>,
    total: Arc<Semaphore>,
    total_max: u32,
    new_instances: Option<(Mutex<Gcra>, u32)>,
}

impl Quotas {
    pub(crate) fn new(config: &Config) -> Quotas {
        let per_function = config
            .functions
            .iter()
            .map(|f| {
                let sem = Arc::new(Semaphore::new(f.max_instances as usize));
                (f.name.clone(), (sem, f.max_instances))
            })
            .collect();
        let total_max = config.gateway.max_total_instances;
        let new_instances = config.gateway.max_new_instances_per_minute.map(|n| {
            let per_minute = f64::from(n);
            (Mutex::new(Gcra::new(per_minute / 60.0, per_minute)), n)
        });
        Quotas {
            per_function,
            total: Arc::new(Semaphore::new(total_max as usize)),
            total_max,
            new_instances,
        }
    }

    /// A slot for a provisioned instance of `function`: waits until one is free (slots that
    /// free up go to waiting provisioned instances before new connections). Not subject to
    /// `max_new_instances_per_minute`: replacing a provisioned instance is scfsim keeping a
    /// promise made in the config, not a burst of demand.
    pub(crate) async fn acquire_waiting(&self, function: &str) -> Permit {
        let (sem, _) = self
            .per_function
            .get(function)
            .expect("every provisioned function has a quota");
        // Never closed: these semaphores live as long as the quotas.
        let function_permit = sem.clone().acquire_owned().await.expect("never closed");
        let total_permit = self
            .total
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        Permit {
            _function: function_permit,
            _total: total_permit,
        }
    }

    pub(crate) fn acquire(&self, function: &str) -> Result<Permit, Refusal> {
        let (sem, max) = self
            .per_function
            .get(function)
            .expect("every routed function has a quota");
        let function_permit =
            sem.clone()
                .try_acquire_owned()
                .map_err(|_| Refusal::FunctionQuota {
                    function: function.to_string(),
                    max: *max,
                })?;
        let total_permit =
            self.total
                .clone()
                .try_acquire_owned()
                .map_err(|_| Refusal::TotalQuota {
                    max: self.total_max,
                })?;
        if let Some((gcra, per_minute)) = &self.new_instances {
            let mut gcra = gcra.lock().expect("new-instance rate poisoned");
            let now = Instant::now();
            if !gcra.delay(now, 1).is_zero() {
                return Err(Refusal::NewInstanceRate {
                    per_minute: *per_minute,
                });
            }
            gcra.take(now, 1);
        }
        Ok(Permit {
            _function: function_permit,
            _total: total_permit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_within_the_rate_is_never_delayed() {
        let t0 = Instant::now();
        let mut g = Gcra::new(10.0, 10.0);
        for _ in 0..10 {
            assert_eq!(g.delay(t0, 1), Duration::ZERO);
            g.take(t0, 1);
        }
        // The eleventh at the same instant waits one emission interval.
        let d = g.delay(t0, 1);
        assert!((d.as_secs_f64() - 0.1).abs() < 1e-6, "{d:?}");
    }

    #[test]
    fn a_steady_client_at_the_rate_is_never_delayed() {
        let t0 = Instant::now();
        let mut g = Gcra::new(10.0, 10.0);
        for i in 0..100 {
            let now = t0 + Duration::from_millis(100 * i);
            assert_eq!(g.delay(now, 1), Duration::ZERO, "message {i}");
            g.take(now, 1);
        }
    }

    #[test]
    fn throttled_sends_keep_the_long_run_rate() {
        let t0 = Instant::now();
        let mut g = Gcra::new(10.0, 10.0);
        let mut now = t0;
        for _ in 0..50 {
            now += g.delay(now, 1);
            g.take(now, 1);
        }
        // 50 messages: 10 at once, then 40 more 100 ms apart: the last goes out at 4 s.
        let spent = now - t0;
        assert!((spent.as_secs_f64() - 4.0).abs() < 1e-6, "{spent:?}");
    }

    #[test]
    fn a_cost_over_the_burst_waits_instead_of_failing() {
        let t0 = Instant::now();
        let mut g = Gcra::new(131_072.0, 131_072.0);
        assert_eq!(g.delay(t0, 100_000), Duration::ZERO);
        g.take(t0, 100_000);
        let d = g.delay(t0, 250_000);
        assert!(d > Duration::ZERO && d < Duration::from_secs(3), "{d:?}");
        // After a long pause the bucket is full again but a 250 KB message still needs its
        // share beyond the burst.
        let later = t0 + Duration::from_secs(60);
        let d = g.delay(later, 250_000);
        let expected = (250_000.0 - 131_072.0) / 131_072.0;
        assert!((d.as_secs_f64() - expected).abs() < 1e-6, "{d:?}");
    }

    #[test]
    fn request_rate_uses_the_stricter_of_bytes_and_messages() {
        let limits = Limits {
            max_message_bytes: 262_144,
            max_bytes_per_second: 1000,
            max_messages_per_second: 100,
            rate_limit_action: scfsim_config::RateLimitAction::Throttle,
        };
        let t0 = Instant::now();
        let mut r = RequestRate::new(&limits);
        r.take(t0, 1000);
        let d = r.delay(t0, 500);
        assert!((d.as_secs_f64() - 0.5).abs() < 1e-6, "{d:?}");
    }
}
