//! Faults injected on purpose: `[functions.faults]` in the config, `[faults]` in a scenario file,
//! and the `X-Scfsim-Faults` header (the same keys as JSON). One raw shape and one check serve
//! all three, so a key means the same everywhere and is rejected with the same words.
//!
//! Every delay here is real time, never platform time: `time_scale` does not shorten it.

use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use crate::duration::{format_duration, RawDuration};
use crate::error::BadValue;

/// The platform statuses a start can be made to fail with, and what each stands for.
pub const START_FAILURES: [(u16, &str); 4] = [
    (405, "the bootstrap exits before listening on port 9000"),
    (434, "the instance goes over its memory size while starting"),
    (445, "the bootstrap cannot be executed"),
    (446, "nothing listens on port 9000 within the init timeout"),
];

/// The faults table as written (file or header): every key optional, unknown keys rejected.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFaults {
    /// Extra real time before the gateway may connect to a started instance.
    pub start_delay: Option<RawDuration>,
    /// The start fails with this platform status (405, 434, 445 or 446).
    pub start_failure: Option<i64>,
    /// Each text/binary message toward the function waits this long.
    pub delay_to_function: Option<RawDuration>,
    /// Each text/binary message toward the client waits this long.
    pub delay_to_client: Option<RawDuration>,
    /// The client's TCP connection is reset once this many messages (both ways) were forwarded.
    pub reset_client_after_messages: Option<i64>,
    /// The instance is killed (SIGKILL) this long after the client's upgrade.
    pub kill_after: Option<RawDuration>,
    /// The instance is killed once this many messages (both ways) were forwarded.
    pub kill_after_messages: Option<i64>,
    /// Probability (0 to 1) that a message toward the function is dropped.
    pub drop_to_function: Option<f64>,
    /// Probability (0 to 1) that a message toward the function is sent twice.
    pub duplicate_to_function: Option<f64>,
    /// Seed of the choices above; a random one (recorded) when absent.
    pub seed: Option<i64>,
}

/// Validated faults; `Faults::default()` injects nothing. Serializes to the raw keys (durations
/// as strings such as "200ms"), so that its JSON parses back through [`RawFaults`].
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Faults {
    /// Extra real time before the gateway connects to a started instance.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "optional_duration"
    )]
    pub start_delay: Option<Duration>,
    /// The start fails with this platform status (one of [`START_FAILURES`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_failure: Option<u16>,
    /// Real time each text/binary message toward the function waits.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "optional_duration"
    )]
    pub delay_to_function: Option<Duration>,
    /// Real time each text/binary message toward the client waits.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "optional_duration"
    )]
    pub delay_to_client: Option<Duration>,
    /// Messages (both ways) after which the client's TCP connection is reset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset_client_after_messages: Option<u32>,
    /// Real time after the client's upgrade at which the instance is killed.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "optional_duration"
    )]
    pub kill_after: Option<Duration>,
    /// Messages (both ways) after which the instance is killed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill_after_messages: Option<u32>,
    /// Probability (0 to 1) that a message toward the function is dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_to_function: Option<f64>,
    /// Probability (0 to 1) that a message toward the function is sent twice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate_to_function: Option<f64>,
    /// Seed of the drop/duplicate choices; `None`: a random one per connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

fn optional_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format_duration(*d)),
        None => s.serialize_none(),
    }
}

/// A rejected fault: which key, and what is wrong with its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFault {
    /// The key as written, e.g. `kill_after_messages`.
    pub key: &'static str,
    /// The value as written and what is allowed.
    pub problem: BadValue,
}

impl Faults {
    /// True when nothing would be injected.
    pub fn is_empty(&self) -> bool {
        self == &Faults::default()
    }

    /// `self` with every key that `over` sets replaced by `over`'s value.
    pub fn overridden_by(&self, over: &Faults) -> Faults {
        Faults {
            start_delay: over.start_delay.or(self.start_delay),
            start_failure: over.start_failure.or(self.start_failure),
            delay_to_function: over.delay_to_function.or(self.delay_to_function),
            delay_to_client: over.delay_to_client.or(self.delay_to_client),
            reset_client_after_messages: over
                .reset_client_after_messages
                .or(self.reset_client_after_messages),
            kill_after: over.kill_after.or(self.kill_after),
            kill_after_messages: over.kill_after_messages.or(self.kill_after_messages),
            drop_to_function: over.drop_to_function.or(self.drop_to_function),
            duplicate_to_function: over.duplicate_to_function.or(self.duplicate_to_function),
            seed: over.seed.or(self.seed),
        }
    }

    /// Checks every key of `raw`, in the order of the struct; the first bad one is the error.
    pub fn check(raw: &RawFaults) -> Result<Faults, BadFault> {
        let bad = |key: &'static str, message: String| BadFault {
            key,
            problem: BadValue(message),
        };
        // A bare number is seconds, as everywhere in the config: the upper bounds catch a
        // `delay_to_function = 200` meant as milliseconds, and keep a fault shorter than the
        // longest timer it could stand in for (the init timeout's 300 s, the execution
        // timeout's 7200 s).
        let duration =
            |key: &'static str, raw: &Option<RawDuration>, max: Duration| -> Result<_, BadFault> {
                let Some(raw) = raw else { return Ok(None) };
                let value = raw.to_duration().map_err(|m| bad(key, m.into()))?;
                if value.is_zero() || value > max {
                    return Err(bad(
                        key,
                        format!(
                            "got {raw}; must be greater than zero and at most {} (a bare number \
                         is seconds; write \"200ms\" for milliseconds; leave the key out for \
                         none)",
                            format_duration(max)
                        ),
                    ));
                }
                Ok(Some(value))
            };
        let delay_max = Duration::from_secs(300);
        let kill_max = Duration::from_secs(7200);
        let count = |key: &'static str, raw: Option<i64>| -> Result<_, BadFault> {
            let Some(value) = raw else { return Ok(None) };
            match u32::try_from(value) {
                Ok(v) if v >= 1 => Ok(Some(v)),
                _ => Err(bad(
                    key,
                    format!(
                        "got {value}; must be a number of messages from 1 to {}",
                        u32::MAX
                    ),
                )),
            }
        };
        let probability = |key: &'static str, raw: Option<f64>| -> Result<_, BadFault> {
            let Some(value) = raw else { return Ok(None) };
            if !(0.0..=1.0).contains(&value) {
                return Err(bad(
                    key,
                    format!(
                        "got {value}; must be a probability from 0 (never) to 1 (every message)"
                    ),
                ));
            }
            Ok(Some(value))
        };
        let start_failure = match raw.start_failure {
            None => None,
            Some(code) => match START_FAILURES.iter().find(|(c, _)| i64::from(*c) == code) {
                Some((c, _)) => Some(*c),
                None => {
                    let allowed: Vec<String> = START_FAILURES
                        .iter()
                        .map(|(c, what)| format!("{c} ({what})"))
                        .collect();
                    return Err(bad(
                        "start_failure",
                        format!("got {code}; must be one of {}", allowed.join(", ")),
                    ));
                }
            },
        };
        let seed = match raw.seed {
            None => None,
            Some(v) => Some(u64::try_from(v).map_err(|_| {
                bad(
                    "seed",
                    format!("got {v}; must be a whole number from 0 to {}", i64::MAX),
                )
            })?),
        };
        Ok(Faults {
            start_delay: duration("start_delay", &raw.start_delay, delay_max)?,
            start_failure,
            delay_to_function: duration("delay_to_function", &raw.delay_to_function, delay_max)?,
            delay_to_client: duration("delay_to_client", &raw.delay_to_client, delay_max)?,
            reset_client_after_messages: count(
                "reset_client_after_messages",
                raw.reset_client_after_messages,
            )?,
            kill_after: duration("kill_after", &raw.kill_after, kill_max)?,
            kill_after_messages: count("kill_after_messages", raw.kill_after_messages)?,
            drop_to_function: probability("drop_to_function", raw.drop_to_function)?,
            duplicate_to_function: probability("duplicate_to_function", raw.duplicate_to_function)?,
            seed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml_text: &str) -> Result<Faults, BadFault> {
        let raw: RawFaults = toml::from_str(toml_text).expect("parses");
        Faults::check(&raw)
    }

    #[test]
    fn delays_are_bounded_and_say_how_to_write_milliseconds() {
        let err = check("delay_to_function = 400").expect_err("400 s is over the bound");
        assert_eq!(err.key, "delay_to_function");
        assert!(err.problem.0.contains("at most 5m"), "{err:?}");
        assert!(err.problem.0.contains("\"200ms\""), "{err:?}");
        assert!(check("kill_after = \"3h\"").is_err());
        assert!(check("kill_after = \"2h\"").is_ok());
        assert!(check("start_delay = \"0s\"").is_err());
    }

    #[test]
    fn every_key_is_read() {
        let f = check(
            r#"
            start_delay = "1s"
            start_failure = 446
            delay_to_function = "200ms"
            delay_to_client = "5ms"
            reset_client_after_messages = 4
            kill_after = "2s"
            kill_after_messages = 3
            drop_to_function = 0.5
            duplicate_to_function = 1
            seed = 7
            "#,
        )
        .expect("valid");
        assert_eq!(f.start_delay, Some(Duration::from_secs(1)));
        assert_eq!(f.start_failure, Some(446));
        assert_eq!(f.delay_to_function, Some(Duration::from_millis(200)));
        assert_eq!(f.delay_to_client, Some(Duration::from_millis(5)));
        assert_eq!(f.reset_client_after_messages, Some(4));
        assert_eq!(f.kill_after, Some(Duration::from_secs(2)));
        assert_eq!(f.kill_after_messages, Some(3));
        assert_eq!(f.drop_to_function, Some(0.5));
        assert_eq!(f.duplicate_to_function, Some(1.0));
        assert_eq!(f.seed, Some(7));
        assert!(!f.is_empty());
        assert!(check("").expect("valid").is_empty());
    }

    #[test]
    fn bad_values_name_the_key_quote_the_value_and_say_what_is_allowed() {
        let cases = [
            (
                "start_failure = 500",
                "start_failure",
                "got 500; must be one of 405",
            ),
            (
                "start_delay = \"0s\"",
                "start_delay",
                "got \"0s\"; must be greater than zero",
            ),
            (
                "delay_to_client = \"fast\"",
                "delay_to_client",
                "\"fast\" is not a duration",
            ),
            (
                "kill_after_messages = 0",
                "kill_after_messages",
                "got 0; must be a number of messages from 1",
            ),
            (
                "reset_client_after_messages = -3",
                "reset_client_after_messages",
                "got -3",
            ),
            (
                "drop_to_function = 1.5",
                "drop_to_function",
                "got 1.5; must be a probability from 0",
            ),
            (
                "duplicate_to_function = -0.1",
                "duplicate_to_function",
                "got -0.1",
            ),
            ("seed = -1", "seed", "got -1; must be a whole number from 0"),
        ];
        for (text, key, message) in cases {
            let err = check(text).expect_err(text);
            assert_eq!(err.key, key, "{text}");
            assert!(err.problem.0.contains(message), "{text}: {}", err.problem.0);
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<RawFaults>("drop_to_client = 0.5").expect_err("unknown");
        assert!(err.to_string().contains("drop_to_client"), "{err}");
    }

    #[test]
    fn the_json_form_parses_back_and_overrides_key_by_key() {
        let f = check("delay_to_function = \"1m30s\"\nseed = 3\ndrop_to_function = 0.25")
            .expect("valid");
        let json = serde_json::to_string(&f).expect("serializes");
        let back: RawFaults = serde_json::from_str(&json).expect("parses back");
        assert_eq!(Faults::check(&back).expect("valid"), f);
        let over = check("seed = 9\nkill_after_messages = 2").expect("valid");
        let merged = f.overridden_by(&over);
        assert_eq!(merged.seed, Some(9));
        assert_eq!(merged.kill_after_messages, Some(2));
        assert_eq!(merged.drop_to_function, Some(0.25));
    }
}
