//! Durations as people write them in the config ("500ms", "15s", "1m30s") and as scfsim prints
//! them in messages and JSON. `format_duration` output always parses back to the same value.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serializer};

use crate::error::BadValue;

/// Shown whenever a duration is rejected, so the user sees every form that would have worked.
/// Also serde's "expected ..." text, hence the noun phrase.
const FORMS: &str = "a duration such as \"500ms\", \"15s\", \"2m\", \"1h\", a combination \
     such as \"1m30s\", or an integer number of seconds";

/// Units from largest to smallest; a string must use them in this order, each at most once, so
/// "30s1m" (almost certainly a typo) is rejected rather than silently read as 90 s.
const UNITS: [(&str, Duration); 6] = [
    ("h", Duration::from_secs(3600)),
    ("m", Duration::from_secs(60)),
    ("s", Duration::from_secs(1)),
    ("ms", Duration::from_millis(1)),
    ("us", Duration::from_micros(1)),
    ("ns", Duration::from_nanos(1)),
];

/// Formats `d` compactly for messages and JSON: "500ms", "15s", "2m", "1m30s", "1h", "0s".
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    let mut rest = d.as_nanos();
    let mut out = String::new();
    for (unit, size) in UNITS {
        let count = rest / size.as_nanos();
        if count > 0 {
            out.push_str(&format!("{count}{unit}"));
            rest %= size.as_nanos();
        }
    }
    out
}

/// Parses the string form of a duration; the error is a complete sentence for the user.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, BadValue> {
    let reject = |why: &str| BadValue(format!("{text:?} is not a duration ({why}); write {FORMS}"));
    if text.is_empty() {
        return Err(reject("it is empty"));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(reject("a number in a string needs a unit, e.g. \"15s\""));
    }
    let mut total = Duration::ZERO;
    // Index into UNITS of the last unit used, to enforce largest-to-smallest order.
    let mut last_unit: Option<usize> = None;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(reject("expected a whole number before each unit"));
        }
        let (number, after) = rest.split_at(digits);
        let letters = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(letters);
        let Some(index) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(if unit.is_empty() {
                reject("every number needs a unit: h, m, s, ms, us or ns")
            } else {
                reject(&format!("unknown unit {unit:?}; use h, m, s, ms, us or ns"))
            });
        };
        if last_unit.is_some_and(|last| index <= last) {
            return Err(reject("units must go from largest to smallest, each once"));
        }
        last_unit = Some(index);
        let count: u32 = number.parse().map_err(|_| reject("number too large"))?;
        total = UNITS[index]
            .1
            .checked_mul(count)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| reject("too large"))?;
        rest = after;
    }
    Ok(total)
}

/// A duration as written in the file, kept unparsed so that validation can name the field when
/// it is bad (a serde error only knows the line). Public so that other scfsim files (scenario
/// files) accept durations in exactly the config's forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawDuration {
    /// A TOML integer: whole seconds. May be negative here; validation rejects it.
    Seconds(i64),
    /// A TOML string such as "15s".
    Text(String),
}

impl RawDuration {
    /// Converts to a `Duration`, or a message saying what is accepted.
    pub fn to_duration(&self) -> Result<Duration, BadValue> {
        match self {
            RawDuration::Seconds(secs) => u64::try_from(*secs)
                .map(Duration::from_secs)
                .map_err(|_| BadValue(format!("{secs} is negative; write {FORMS}"))),
            RawDuration::Text(text) => parse_duration(text),
        }
    }
}

/// Shows the value the way it was written, so messages quote the user's own text.
impl fmt::Display for RawDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawDuration::Seconds(secs) => write!(f, "{secs}"),
            RawDuration::Text(text) => write!(f, "{text:?}"),
        }
    }
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RawDurationVisitor;

        impl Visitor<'_> for RawDurationVisitor {
            type Value = RawDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(FORMS)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawDuration, E> {
                Ok(RawDuration::Seconds(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawDuration, E> {
                i64::try_from(v)
                    .map(RawDuration::Seconds)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration::Text(v.to_owned()))
            }
        }

        deserializer.deserialize_any(RawDurationVisitor)
    }
}

/// `serialize_with` for `Duration` fields: JSON readers (the admin API) get "15s", not
/// `{"secs":15,"nanos":0}`.
pub(crate) fn serialize_as_string<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn parses_accepted_forms() {
        let cases = [
            ("500ms", ms(500)),
            ("15s", ms(15_000)),
            ("2m", ms(120_000)),
            ("1h", ms(3_600_000)),
            ("1m30s", ms(90_000)),
            ("1h2m3s4ms", ms(3_723_004)),
            ("0s", Duration::ZERO),
            ("250us", Duration::from_micros(250)),
            ("7ns", Duration::from_nanos(7)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_garbage_with_accepted_forms() {
        for text in [
            "",
            "15",
            "-5s",
            "5",
            "s",
            "1.5s",
            "5 s",
            " 5s",
            "5sec",
            "5S",
            "30s1m",
            "1s1s",
            "abc",
            "5s ",
            "99999999999h",
        ] {
            let err = parse_duration(text).expect_err(text).0;
            assert!(err.contains(FORMS), "{text}: {err}");
            assert!(err.contains(&format!("{text:?}")), "{text}: {err}");
        }
    }

    #[test]
    fn integer_seconds() {
        assert_eq!(RawDuration::Seconds(15).to_duration(), Ok(ms(15_000)));
        assert_eq!(RawDuration::Seconds(0).to_duration(), Ok(Duration::ZERO));
        let err = RawDuration::Seconds(-1).to_duration().unwrap_err().0;
        assert!(
            err.contains("-1 is negative") && err.contains(FORMS),
            "{err}"
        );
    }

    #[test]
    fn formats_compactly() {
        let cases = [
            (Duration::ZERO, "0s"),
            (ms(500), "500ms"),
            (ms(15_000), "15s"),
            (ms(120_000), "2m"),
            (ms(90_000), "1m30s"),
            (ms(3_600_000), "1h"),
            (ms(1_500), "1s500ms"),
            (Duration::from_secs(86_400), "24h"),
            (Duration::from_nanos(1_001), "1us1ns"),
        ];
        for (d, want) in cases {
            assert_eq!(format_duration(d), want);
        }
    }

    #[test]
    fn format_round_trips() {
        for d in [
            ms(1),
            ms(999),
            ms(61_001),
            Duration::from_secs(7_200),
            Duration::new(3_723, 4_005_006),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }

    #[test]
    fn displays_as_written() {
        assert_eq!(RawDuration::Seconds(15).to_string(), "15");
        assert_eq!(RawDuration::Text("2s".into()).to_string(), "\"2s\"");
    }
}
