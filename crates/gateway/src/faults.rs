//! Faults injected on purpose (`[functions.faults]`, or a scenario's `[faults]` sent in the
//! `X-Scfsim-Faults` request header): a slow or failed start, delayed messages, the client's TCP
//! connection reset, the instance killed, messages toward the function dropped or duplicated.
//!
//! Each connection gets its own [`FaultPlan`], built when it is routed. The invocation consults
//! it before and after the start; the proxy consults it around each text/binary message. The
//! plan keeps what it did, and the record lists that in `injected_faults`, so that a status an
//! injected fault caused is never taken for a real one. Everything else in the gateway is
//! unaware of faults.
//!
//! Chance is deterministic: a connection's choices come from a generator seeded with the
//! configured `seed` plus the number of earlier seeded connections of the same function since
//! scfsim started, so the same connections opened one after another in a fresh scfsim make the
//! same choices. Without a `seed`, a random one is drawn and recorded.
//!
//! All delays are real time; `time_scale` does not shorten them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use scfsim_config::{format_duration, Faults, GatewayConfig, RawFaults};
use scfsim_record::{Direction, EndReason, EventKind, Side};

use crate::responses::{json_error, Body};
use crate::timeline::Recorder;

/// The request header carrying faults for one connection, as JSON with the keys of
/// `[functions.faults]`.
pub(crate) const FAULTS_HEADER: &str = "x-scfsim-faults";
/// The admin token, required with [`FAULTS_HEADER`] when the config has one.
pub(crate) const TOKEN_HEADER: &str = "x-scfsim-token";

/// The faults a request asks for in its header: `Ok(None)` without the header, or the answer
/// that refuses the request (403 when headers are not allowed or the token is wrong, 400 for a
/// bad value).
pub(crate) fn from_headers(
    headers: &HeaderMap,
    gateway: &GatewayConfig,
) -> Result<Option<Faults>, Box<http::Response<Body>>> {
    let Some(value) = headers.get(FAULTS_HEADER) else {
        return Ok(None);
    };
    let refuse = |status: StatusCode, message: String| {
        Err(Box::new(json_error(status, None, &message, None)))
    };
    if !gateway.fault_headers {
        return refuse(
            StatusCode::FORBIDDEN,
            "the X-Scfsim-Faults header is refused: this scfsim does not take faults from \
             requests; set `fault_headers = true` in the [gateway] table of its config (scfsim \
             test sets it for the scfsim it starts itself)"
                .into(),
        );
    }
    if let Some(token) = &gateway.admin_token {
        let given = headers.get(TOKEN_HEADER).map(|v| v.as_bytes());
        if given != Some(token.as_bytes()) {
            return refuse(
                StatusCode::FORBIDDEN,
                "the X-Scfsim-Faults header needs this scfsim's admin token in an \
                 X-Scfsim-Token header"
                    .into(),
            );
        }
    }
    let raw: RawFaults = match value
        .to_str()
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str(text).map_err(|e| e.to_string()))
    {
        Ok(raw) => raw,
        Err(err) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "X-Scfsim-Faults: not a JSON object of [functions.faults] keys \
                     (start_delay, start_failure, delay_to_function, delay_to_client, \
                     reset_client_after_messages, kill_after, kill_after_messages, \
                     drop_to_function, duplicate_to_function, seed): {err}"
                ),
            )
        }
    };
    match Faults::check(&raw) {
        Ok(faults) => Ok(Some(faults)),
        Err(bad) => refuse(
            StatusCode::BAD_REQUEST,
            format!("X-Scfsim-Faults: {}: {}", bad.key, bad.problem),
        ),
    }
}

/// Per function, how many connections drew from a seeded generator: the next one's offset.
#[derive(Default)]
pub(crate) struct SeedCounters(Mutex<HashMap<String, u64>>);

impl SeedCounters {
    fn next(&self, function: &str) -> u64 {
        let mut counts = self.0.lock().expect("seed counters poisoned");
        let n = counts.entry(function.to_owned()).or_default();
        let this = *n;
        *n += 1;
        this
    }
}

/// What the proxy does with one text/binary message.
pub(crate) struct Forward {
    /// Wait this long first.
    pub delay: Option<Duration>,
    /// Send it this many times: 0 (dropped), 1, or 2 (duplicated).
    pub copies: u8,
}

/// What happens once a message went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterForward {
    /// Go on.
    Nothing,
    /// Reset the client's TCP connection now.
    ResetClient,
}

/// One connection's faults and what they did. Shared by the invocation and both proxy
/// directions (short critical sections, never held across an await).
pub(crate) struct FaultPlan {
    faults: Faults,
    /// The generator's seed, when a fault draws on chance.
    seed: Option<u64>,
    state: Mutex<State>,
    /// The instance's pid once it runs, for the kill faults; 0 before.
    pid: AtomicU32,
    /// Whole process group (a process instance) or the one pid (a container's init).
    group: AtomicBool,
    reset_fired: AtomicBool,
    /// The connection's frame timeline: each fault as it acts, as an event of kind "fault".
    timeline: Recorder,
}

struct State {
    rng: fastrand::Rng,
    /// Text/binary messages passed through, both directions (the record's in + out).
    messages: u64,
    toward_function: u64,
    dropped: u64,
    duplicated: u64,
    delayed: [bool; 2],
    killed: bool,
    /// What acted, in order, as the record lists it.
    injected: Vec<String>,
}

impl FaultPlan {
    /// The plan of a connection to `function` with `faults` (already merged: the function's,
    /// overridden key by key by the request's). `None` when nothing is injected.
    pub(crate) fn new(
        faults: Faults,
        function: &str,
        counters: &SeedCounters,
        timeline: Recorder,
    ) -> Option<Self> {
        if faults.is_empty() {
            return None;
        }
        let chance = faults.drop_to_function.is_some() || faults.duplicate_to_function.is_some();
        let seed = chance.then(|| match faults.seed {
            Some(seed) => seed.wrapping_add(counters.next(function)),
            None => fastrand::u64(..),
        });
        Some(FaultPlan {
            state: Mutex::new(State {
                rng: fastrand::Rng::with_seed(seed.unwrap_or(0)),
                messages: 0,
                toward_function: 0,
                dropped: 0,
                duplicated: 0,
                delayed: [false; 2],
                killed: false,
                injected: Vec::new(),
            }),
            faults,
            seed,
            pid: AtomicU32::new(0),
            group: AtomicBool::new(true),
            reset_fired: AtomicBool::new(false),
            timeline,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fault plan poisoned")
    }

    fn note(&self, what: String) {
        tracing::info!(fault = %what, "injected fault");
        self.timeline
            .note(EventKind::Fault, None, || format!("injected fault: {what}"));
        self.state().injected.push(what);
    }

    /// The start fails with this status instead of starting an instance: the end reason of
    /// that real failure, and the message the client and the record get, which says that it
    /// was injected.
    /// Whether this plan fails or slows the instance's start.
    pub(crate) fn acts_on_start(&self) -> bool {
        self.faults.start_failure.is_some() || self.faults.start_delay.is_some()
    }

    pub(crate) fn start_failure(&self, memory_mb: u32) -> Option<(EndReason, String)> {
        let status = self.faults.start_failure?;
        self.note(format!("start_failure({status})"));
        let what = match status {
            405 => "the bootstrap exited before listening on port 9000",
            445 => "the bootstrap cannot be executed",
            446 => "nothing listened on port 9000 within the init timeout",
            _ => "the instance went over its memory size while starting",
        };
        let message =
            format!("{what} (injected fault: start_failure = {status}; no instance was started)");
        let detail = message.clone();
        let reason = match status {
            405 => EndReason::BootstrapExited { detail },
            445 => EndReason::BootstrapNotFound { detail },
            446 => EndReason::NotListening { detail },
            _ => EndReason::MemoryLimit {
                limit_mb: memory_mb,
            },
        };
        Some((reason, message))
    }

    /// True when the start was failed on purpose: there was never a WebSocket connection.
    pub(crate) fn failed_start(&self) -> bool {
        let prefix = "start_failure(";
        self.state().injected.iter().any(|f| f.starts_with(prefix))
    }

    /// Extra time before the gateway connects to the started instance.
    pub(crate) fn start_delay(&self) -> Option<Duration> {
        let delay = self.faults.start_delay?;
        self.note(format!("start_delay({})", format_duration(delay)));
        Some(delay)
    }

    /// When to kill the instance, counted from the client's upgrade.
    pub(crate) fn kill_after(&self) -> Option<Duration> {
        self.faults.kill_after
    }

    /// The instance now runs as `pid`; `group`: its process group is the instance.
    pub(crate) fn instance(&self, pid: u32, group: bool) {
        self.group.store(group, Ordering::Relaxed);
        self.pid.store(pid, Ordering::Relaxed);
    }

    /// Kills the instance with SIGKILL, as the platform's repossession does: its socket drops
    /// and the proxy sees that as a real exit (439). `why` goes into the record.
    pub(crate) fn kill(&self, why: String) {
        let pid = self.pid.load(Ordering::Relaxed);
        {
            let mut state = self.state();
            if state.killed || pid == 0 {
                return;
            }
            state.killed = true;
        }
        self.note(format!("kill_instance({why})"));
        let target = nix::unistd::Pid::from_raw(pid as i32);
        // Not reaped until the invocation's teardown, so the pid is still the instance's.
        let _ = if self.group.load(Ordering::Relaxed) {
            nix::sys::signal::killpg(target, nix::sys::signal::Signal::SIGKILL)
        } else {
            nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL)
        };
    }

    /// Before a text/binary message from `from` is passed on.
    pub(crate) fn before_forward(&self, from: Side) -> Forward {
        let (delay, direction) = match from {
            Side::Client => (self.faults.delay_to_function, "to_function"),
            Side::Function => (self.faults.delay_to_client, "to_client"),
        };
        let toward = Some(match from {
            Side::Client => Direction::ToFunction,
            Side::Function => Direction::ToClient,
        });
        let mut state = self.state();
        let slot = usize::from(from == Side::Function);
        if let Some(delay) = delay.filter(|_| !state.delayed[slot]) {
            state.delayed[slot] = true;
            let what = format!("delay_{direction}({})", format_duration(delay));
            tracing::info!(fault = %what, "injected fault");
            state.injected.push(what);
        }
        if let Some(delay) = delay {
            self.timeline.note(EventKind::Fault, toward, || {
                format!(
                    "injected fault: the message waits {} (delay_{direction})",
                    format_duration(delay)
                )
            });
        }
        let mut copies = 1;
        if from == Side::Function && state.killed {
            // Read after the kill: written by the instance in the instant between the message
            // that triggered the kill and its death. Lost with it, so that what the client sees
            // does not depend on that race.
            copies = 0;
            self.timeline.note(EventKind::Fault, toward, || {
                "injected fault: a message of the killed instance, not passed on".into()
            });
        } else if from == Side::Client {
            state.toward_function += 1;
            let n = state.toward_function;
            // Both drawn for every message, so one key's choices do not depend on the other's.
            let drop = state.rng.f64();
            let duplicate = state.rng.f64();
            if self.faults.drop_to_function.is_some_and(|p| drop < p) {
                state.dropped += 1;
                copies = 0;
                self.timeline.note(EventKind::Fault, toward, || {
                    format!("injected fault: message {n} toward the function dropped (drop_to_function)")
                });
            } else if self
                .faults
                .duplicate_to_function
                .is_some_and(|p| duplicate < p)
            {
                state.duplicated += 1;
                copies = 2;
                self.timeline.note(EventKind::Fault, toward, || {
                    format!(
                        "injected fault: message {n} toward the function sent twice \
                         (duplicate_to_function)"
                    )
                });
            }
        }
        Forward { delay, copies }
    }

    /// After a text/binary message went through (or was dropped): the message counts fire.
    pub(crate) fn after_forward(&self) -> AfterForward {
        let messages = {
            let mut state = self.state();
            state.messages += 1;
            state.messages
        };
        if self.faults.kill_after_messages.map(u64::from) == Some(messages) {
            self.kill(format!("after {}", messages_text(messages)));
        }
        if self.faults.reset_client_after_messages.map(u64::from) == Some(messages) {
            self.note(format!("reset_client(after {})", messages_text(messages)));
            self.reset_fired.store(true, Ordering::Relaxed);
            return AfterForward::ResetClient;
        }
        AfterForward::Nothing
    }

    /// True once the client's connection is to be reset (its socket closed with RST).
    pub(crate) fn reset_client(&self) -> bool {
        self.reset_fired.load(Ordering::Relaxed)
    }

    /// What acted on this connection, for the record's `injected_faults`.
    pub(crate) fn injected(&self) -> Vec<String> {
        let state = self.state();
        let mut out = state.injected.clone();
        let seed = self.seed.unwrap_or_default();
        let of = state.toward_function;
        if let Some(p) = self.faults.drop_to_function.filter(|_| state.dropped > 0) {
            out.push(format!(
                "drop_to_function(p={p}, seed={seed}: {} of {of} messages dropped)",
                state.dropped
            ));
        }
        if let Some(p) = self
            .faults
            .duplicate_to_function
            .filter(|_| state.duplicated > 0)
        {
            out.push(format!(
                "duplicate_to_function(p={p}, seed={seed}: {} of {of} messages sent twice)",
                state.duplicated
            ));
        }
        out
    }
}

/// "1 message", "4 messages".
fn messages_text(n: u64) -> String {
    if n == 1 {
        "1 message".into()
    } else {
        format!("{n} messages")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(json: &str) -> Faults {
        Faults::check(&serde_json::from_str(json).expect("json")).expect("valid")
    }

    fn choices(plan: &FaultPlan, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| plan.before_forward(Side::Client).copies)
            .collect()
    }

    #[test]
    fn the_same_seed_makes_the_same_choices_and_the_next_connection_others() {
        let f = faults(r#"{"drop_to_function": 0.5, "duplicate_to_function": 0.5, "seed": 11}"#);
        let first = SeedCounters::default();
        let second = SeedCounters::default();
        let a = FaultPlan::new(f.clone(), "f", &first, Recorder::default()).expect("plan");
        let b = FaultPlan::new(f.clone(), "f", &second, Recorder::default()).expect("plan");
        let (ca, cb) = (choices(&a, 64), choices(&b, 64));
        assert_eq!(ca, cb);
        assert!(
            ca.contains(&0) && ca.contains(&1) && ca.contains(&2),
            "{ca:?}"
        );
        let next = FaultPlan::new(f, "f", &first, Recorder::default()).expect("plan");
        assert_ne!(choices(&next, 64), ca, "connection 1 draws from seed 12");
        assert!(a
            .injected()
            .iter()
            .any(|s| s.starts_with("drop_to_function(p=0.5, seed=11: ")));
        assert!(next.injected().iter().any(|s| s.contains("seed=12")));
    }

    #[test]
    fn counts_fire_once_at_exactly_n_messages() {
        let plan = FaultPlan::new(
            faults(r#"{"reset_client_after_messages": 3}"#),
            "f",
            &SeedCounters::default(),
            Recorder::default(),
        )
        .expect("plan");
        let fired: Vec<AfterForward> = (0..4).map(|_| plan.after_forward()).collect();
        assert_eq!(
            fired,
            [
                AfterForward::Nothing,
                AfterForward::Nothing,
                AfterForward::ResetClient,
                AfterForward::Nothing
            ]
        );
        assert!(plan.reset_client());
        assert_eq!(plan.injected(), ["reset_client(after 3 messages)"]);
    }

    #[test]
    fn a_delay_is_listed_once_per_direction_and_nothing_unused_is_listed() {
        let plan = FaultPlan::new(
            faults(r#"{"delay_to_client": "20ms", "delay_to_function": "1s", "kill_after_messages": 9}"#),
            "f",
            &SeedCounters::default(),
            Recorder::default(),
        )
        .expect("plan");
        for _ in 0..3 {
            assert_eq!(
                plan.before_forward(Side::Function).delay,
                Some(Duration::from_millis(20))
            );
        }
        assert_eq!(plan.injected(), ["delay_to_client(20ms)"]);
        assert!(FaultPlan::new(
            Faults::default(),
            "f",
            &SeedCounters::default(),
            Recorder::default()
        )
        .is_none());
    }

    #[test]
    fn headers_are_refused_unless_allowed_and_then_need_the_token() {
        let mut headers = HeaderMap::new();
        headers.insert(
            FAULTS_HEADER,
            r#"{"kill_after_messages": 2}"#.parse().unwrap(),
        );
        let mut gw = GatewayConfig::default();
        let status = |r: Result<Option<Faults>, Box<http::Response<Body>>>| match r {
            Ok(_) => 200,
            Err(resp) => resp.status().as_u16(),
        };
        assert_eq!(status(from_headers(&headers, &gw)), 403);
        gw.fault_headers = true;
        let ok = from_headers(&headers, &gw).expect("allowed").expect("some");
        assert_eq!(ok.kill_after_messages, Some(2));
        gw.admin_token = Some("s3cret".into());
        assert_eq!(status(from_headers(&headers, &gw)), 403);
        headers.insert(TOKEN_HEADER, "s3cret".parse().unwrap());
        assert_eq!(status(from_headers(&headers, &gw)), 200);
        headers.insert(
            FAULTS_HEADER,
            r#"{"kill_after_messages": 0}"#.parse().unwrap(),
        );
        let Err(bad) = from_headers(&headers, &gw) else {
            panic!("0 messages accepted")
        };
        assert_eq!(bad.status(), 400);
        let body = String::from_utf8_lossy(bad.body()).into_owned();
        assert!(
            body.contains("kill_after_messages") && body.contains("got 0"),
            "{body}"
        );
        assert!(from_headers(&HeaderMap::new(), &GatewayConfig::default())
            .expect("no header")
            .is_none());
    }
}
