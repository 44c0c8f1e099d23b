//! Properties of durations and of validation, over generated input.
//!
//! Durations are only reachable through the public API as config values, so the round trip goes
//! `format_duration` -> a config file -> `parse` -> `FunctionConfig`. Validation must turn any
//! text, TOML or not, into a `Config` or a `ConfigError`: never a panic.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use scfsim_config::{format_duration, parse, Config, ConfigError};

/// A config directory with an existing `code` directory, shared by every case of a test.
struct Dir {
    _tmp: tempfile::TempDir,
    path: PathBuf,
}

impl Dir {
    fn new() -> Dir {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("code")).expect("mkdir code");
        let path = tmp.path().to_path_buf();
        Dir { _tmp: tmp, path }
    }

    fn parse(&self, text: &str) -> Result<Config, ConfigError> {
        parse(text, &self.path, &self.path.join("scfsim.toml"))
    }
}

/// One function whose three timeouts are given as TOML values.
fn with_timeouts(idle: &str, execution: &str, init: &str) -> String {
    format!(
        "relaxed_limits = true\n\n[[functions]]\nname = \"echo\"\npath = \"/echo\"\n\
         code_dir = \"code\"\nidle_timeout = {idle}\nexecution_timeout = {execution}\n\
         init_timeout = {init}\n"
    )
}

/// Any non-zero duration whose hour count fits the parser's u32 counts (up to ~490 000 years;
/// the strategy stays far below that).
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        // Whole seconds, as configs mostly are.
        (1u64..=10 * 365 * 86_400).prop_map(Duration::from_secs),
        // Sub-second, as tests use.
        (1u64..1_000_000_000).prop_map(Duration::from_nanos),
        // Anything, down to the nanosecond.
        (0u64..=10 * 365 * 86_400, 0u32..1_000_000_000)
            .prop_filter("non-zero", |(s, n)| *s > 0 || *n > 0)
            .prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

/// The units of `format_duration`, largest first, with the size of the next larger unit (the
/// bound a canonical count stays under).
const UNITS: [(&str, u128); 6] = [
    ("h", u128::MAX),
    ("m", 60),
    ("s", 60),
    ("ms", 1000),
    ("us", 1000),
    ("ns", 1000),
];

/// Splits "1h2m3s" into [(1, "h"), (2, "m"), (3, "s")].
fn parts(text: &str) -> Vec<(u128, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let letters = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        out.push((
            rest[..digits].parse().expect("a count"),
            rest[digits..digits + letters].to_string(),
        ));
        rest = &rest[digits + letters..];
    }
    out
}

/// What kind of value a key takes, to generate mostly well-typed but hostile values.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Duration,
    Count,
    Path,
    Addr,
    Name,
    Route,
    Action,
    Isolation,
    EnvNames,
    EnvTable,
    Text,
}

const GATEWAY: &[(&str, Kind)] = &[
    ("listen", Kind::Addr),
    ("tls_listen", Kind::Addr),
    ("tls_cert", Kind::Path),
    ("tls_key", Kind::Path),
    ("admin_listen", Kind::Addr),
    ("data_dir", Kind::Path),
    ("admin_token", Kind::Text),
    ("max_total_instances", Kind::Count),
    ("max_new_instances_per_minute", Kind::Count),
    ("isolation", Kind::Isolation),
    ("pass_env", Kind::EnvNames),
    ("max_records", Kind::Count),
    ("max_logged_invocations", Kind::Count),
];

const LIMITS: &[(&str, Kind)] = &[
    ("max_message_bytes", Kind::Count),
    ("max_bytes_per_second", Kind::Count),
    ("max_messages_per_second", Kind::Count),
    ("rate_limit_action", Kind::Action),
];

const FUNCTION: &[(&str, Kind)] = &[
    ("bootstrap", Kind::Path),
    ("idle_timeout", Kind::Duration),
    ("execution_timeout", Kind::Duration),
    ("init_timeout", Kind::Duration),
    ("max_instances", Kind::Count),
    ("memory_mb", Kind::Count),
    ("env", Kind::EnvTable),
];

const PLATFORM: &[(&str, Kind)] = &[
    ("region", Kind::Text),
    ("appid", Kind::Text),
    ("uin", Kind::Text),
];

fn count() -> impl Strategy<Value = String> {
    prop_oneof![
        (-3i64..3000).prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            0,
            1,
            64,
            128,
            3072,
            3073,
            262_144,
            262_145,
            u32::MAX as i64,
            u32::MAX as i64 + 1,
            i64::MAX,
            i64::MIN,
        ])
        .prop_map(|n| n.to_string()),
    ]
}

/// A TOML basic string (Rust's `{:?}` writes `\u{..}`, which TOML does not know).
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn quoted(pattern: &'static str) -> impl Strategy<Value = String> {
    pattern.prop_map(|s| toml_str(&s))
}

/// Any TOML value at all (for type mismatches).
fn any_value() -> impl Strategy<Value = String> {
    prop_oneof![
        count(),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("inf".to_string()),
        Just("nan".to_string()),
        quoted("\\PC{0,40}"),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
    ]
}

fn value(kind: Kind) -> BoxedStrategy<String> {
    let typed: BoxedStrategy<String> = match kind {
        Kind::Duration => prop_oneof![
            count(),
            quoted("[0-9]{0,12}(h|m|s|ms|us|ns|d|){0,1}[0-9]{0,3}(h|m|s|ms|us|ns|){0,1}"),
            prop::sample::select(vec![
                "\"99999999999h\"",
                "\"4294967295h59m59s999ms999us999ns\"",
                "\"4294967296h\"",
                "\"0s\"",
                "\"0h0m0s\"",
                "\"1ns\"",
                "\"4294967295ns\"",
            ])
            .prop_map(str::to_string),
        ]
        .boxed(),
        Kind::Count => count().boxed(),
        Kind::Path => prop_oneof![
            quoted("(/?[a-z.]{0,6}){0,4}"),
            Just("\"code\"".to_string()),
            Just("\"\"".to_string()),
            Just("\"/proc/self/fd/0\"".to_string()),
            Just("\"a\\u0000b\"".to_string()),
        ]
        .boxed(),
        Kind::Addr => prop_oneof![
            quoted("[0-9.:\\[\\]a-f]{0,24}"),
            Just("\"127.0.0.1:0\"".to_string()),
            Just("\"0.0.0.0:8080\"".to_string()),
            Just("\"[::1]:65535\"".to_string()),
            Just("\"localhost:80\"".to_string()),
            Just("\"1.2.3.4:99999\"".to_string()),
        ]
        .boxed(),
        Kind::Name => prop_oneof![
            quoted("[a-zA-Z][a-zA-Z0-9_-]{0,70}"),
            quoted("\\PC{0,20}"),
            Just("\"echo\"".to_string()),
        ]
        .boxed(),
        Kind::Route => prop_oneof![
            quoted("(/[a-z?#%.]{0,5}){0,4}/?"),
            quoted("\\PC{0,20}"),
            Just("\"/\"".to_string()),
            Just("\"/echo\"".to_string()),
        ]
        .boxed(),
        Kind::Action => prop::sample::select(vec![
            "\"throttle\"",
            "\"close\"",
            "\"off\"",
            "\"Close\"",
            "\"\"",
        ])
        .prop_map(str::to_string)
        .boxed(),
        Kind::Isolation => quoted("auto|namespaces|none|process|[a-z]{0,3}").boxed(),
        Kind::EnvNames => prop::collection::vec(quoted("[A-Za-z0-9_ ]{0,10}"), 0..4)
            .prop_map(|v| format!("[{}]", v.join(", ")))
            .boxed(),
        Kind::EnvTable => prop::collection::vec(
            (
                quoted("[A-Za-z0-9_ -]{0,10}|SCF_[A-Z]{0,4}|TENCENTCLOUD_X"),
                quoted("\\PC{0,30}|[a-z]{0,5000}"),
            ),
            0..5,
        )
        .prop_map(|pairs| {
            let mut seen = std::collections::HashSet::new();
            let body: Vec<String> = pairs
                .into_iter()
                .filter(|(k, _)| seen.insert(k.clone()))
                .map(|(k, v)| format!("{k} = {v}"))
                .collect();
            format!("{{ {} }}", body.join(", "))
        })
        .boxed(),
        Kind::Text => quoted("\\PC{0,30}").boxed(),
    };
    prop_oneof![40 => typed, 1 => any_value()].boxed()
}

/// `key = value` lines for a random subset of `keys`, each at most once.
fn table(keys: &'static [(&'static str, Kind)]) -> BoxedStrategy<String> {
    prop::sample::subsequence(keys.to_vec(), 0..=keys.len())
        .prop_flat_map(|chosen| {
            chosen
                .into_iter()
                .map(|(key, kind)| value(kind).prop_map(move |v| format!("{key} = {v}\n")))
                .collect::<Vec<_>>()
        })
        .prop_map(|lines| lines.concat())
        .boxed()
}

fn function_table() -> impl Strategy<Value = String> {
    (
        value(Kind::Name),
        value(Kind::Route),
        prop_oneof![4 => Just("\"code\"".to_string()), 1 => value(Kind::Path)],
        table(FUNCTION),
        prop::option::of(table(LIMITS)),
    )
        .prop_map(|(name, path, code_dir, rest, limits)| {
            let mut t = format!(
                "[[functions]]\nname = {name}\npath = {path}\ncode_dir = {code_dir}\n{rest}"
            );
            if let Some(limits) = limits {
                t.push_str("[functions.limits]\n");
                t.push_str(&limits);
            }
            t
        })
}

/// A TOML-ish config: the right tables with each key at most once, well-typed but hostile
/// values (a tenth of them of the wrong type), sometimes a line of raw noise; so most
/// documents get past TOML and serde into validation.
fn tomlish() -> impl Strategy<Value = String> {
    (
        prop::option::of(any::<bool>()),
        prop::option::of(table(GATEWAY)),
        prop::option::of(table(LIMITS)),
        prop::collection::vec(function_table(), 0..4),
        prop::option::of(table(PLATFORM)),
        prop::option::of(prop::collection::vec(
            (quoted("[a-z0-9/.]{0,20}"), value(Kind::Path)),
            0..3,
        )),
        prop_oneof![9 => Just(String::new()), 1 => "\\PC{0,30}"],
    )
        .prop_map(
            |(relaxed, gateway, limits, functions, platform, runtimes, noise)| {
                let mut text = String::new();
                if let Some(relaxed) = relaxed {
                    text.push_str(&format!("relaxed_limits = {relaxed}\n"));
                }
                text.push_str(&noise);
                text.push('\n');
                if let Some(g) = gateway {
                    text.push_str(&format!("[gateway]\n{g}"));
                }
                if let Some(l) = limits {
                    text.push_str(&format!("[limits]\n{l}"));
                }
                if let Some(p) = platform {
                    text.push_str(&format!("[platform]\n{p}"));
                }
                if let Some(runtimes) = runtimes {
                    text.push_str("[runtimes]\n");
                    let mut seen = std::collections::HashSet::new();
                    for (k, v) in runtimes {
                        if seen.insert(k.clone()) {
                            text.push_str(&format!("{k} = {v}\n"));
                        }
                    }
                }
                for f in functions {
                    text.push_str(&f);
                }
                text
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `format_duration` output parses back, through a real config, to the same value.
    #[test]
    fn formatted_durations_parse_back_to_the_same_value(
        idle in duration(),
        execution in duration(),
        init in duration(),
    ) {
        let dir = Dir::new();
        let q = |d: Duration| format!("{:?}", format_duration(d));
        let config = dir
            .parse(&with_timeouts(&q(idle), &q(execution), &q(init)))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let f = &config.functions[0];
        prop_assert_eq!(f.idle_timeout, idle);
        prop_assert_eq!(f.execution_timeout, execution);
        prop_assert_eq!(f.init_timeout, init);
    }

    /// `format_duration` is canonical: units largest first, each once, every count non-zero and
    /// below the next unit's size; so two different durations never print the same.
    #[test]
    fn formatted_durations_are_canonical(d in duration()) {
        let text = format_duration(d);
        let parts = parts(&text);
        prop_assert!(!parts.is_empty(), "{}", text);
        let mut last = None;
        for (count, unit) in &parts {
            let index = UNITS.iter().position(|(u, _)| u == unit);
            prop_assert!(index.is_some(), "unknown unit in {}", text);
            let index = index.unwrap();
            if let Some(last) = last {
                prop_assert!(index > last, "order in {}", text);
            }
            last = Some(index);
            prop_assert!(*count > 0, "zero count in {}", text);
            prop_assert!(*count < UNITS[index].1, "count over its unit in {}", text);
        }
        let total: u128 = parts
            .iter()
            .map(|(count, unit)| {
                let nanos: u128 = match unit.as_str() {
                    "h" => 3_600_000_000_000,
                    "m" => 60_000_000_000,
                    "s" => 1_000_000_000,
                    "ms" => 1_000_000,
                    "us" => 1_000,
                    _ => 1,
                };
                count * nanos
            })
            .sum();
        prop_assert_eq!(total, d.as_nanos());
    }

    /// An integer is whole seconds.
    #[test]
    fn integer_timeouts_are_seconds(secs in 1i64..=10 * 365 * 86_400) {
        let dir = Dir::new();
        let n = secs.to_string();
        let config = dir
            .parse(&with_timeouts(&n, &n, &n))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(config.functions[0].idle_timeout, Duration::from_secs(secs as u64));
    }

    /// Any string the parser accepts as a duration means the same after formatting it again;
    /// anything it refuses is refused with an error naming the field.
    #[test]
    fn accepted_duration_strings_survive_reformatting(
        text in "([0-9]{1,10}(h|m|s|ms|us|ns|x|)){1,4}|\\PC{0,12}"
    ) {
        let dir = Dir::new();
        let q = toml_str(&text);
        match dir.parse(&with_timeouts(&q, "\"1s\"", "\"1s\"")) {
            Ok(config) => {
                let d = config.functions[0].idle_timeout;
                prop_assert!(!d.is_zero());
                let again = format!("{:?}", format_duration(d));
                let config = dir
                    .parse(&with_timeouts(&again, "\"1s\"", "\"1s\""))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(config.functions[0].idle_timeout, d);
            }
            Err(err) => {
                let message = err.to_string();
                prop_assert!(message.contains("idle_timeout"), "{}", message);
            }
        }
    }

    /// Validation never panics, whatever the text; an error always has a message.
    #[test]
    fn validation_never_panics_on_tomlish_input(text in tomlish()) {
        let dir = Dir::new();
        if let Err(err) = dir.parse(&text) {
            prop_assert!(!err.to_string().is_empty());
        }
    }

    /// Nor on text that is not TOML at all.
    #[test]
    fn validation_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        let dir = Dir::new();
        let _ = dir.parse(&text);
    }
}

#[test]
fn the_largest_accepted_duration_formats_and_parses_back() {
    // The parser's counts are u32: u32::MAX hours is the largest whole-hour duration.
    let dir = Dir::new();
    let d = Duration::from_secs(u64::from(u32::MAX) * 3600 + 3599);
    let q = format!("{:?}", format_duration(d));
    let config = dir.parse(&with_timeouts(&q, &q, &q)).expect("parses");
    assert_eq!(config.functions[0].idle_timeout, d);
    assert!(Path::new(&config.functions[0].code_dir).is_absolute());
}

#[test]
fn the_tomlish_generator_reaches_validation() {
    // Guards the property above against being vacuous: a fair share of generated documents
    // must get past TOML syntax into validation, and some must be valid configs.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let dir = Dir::new();
    let mut runner = TestRunner::deterministic();
    let (mut syntax, mut invalid, mut valid) = (0, 0, 0);
    for _ in 0..2000 {
        let text = tomlish().new_tree(&mut runner).unwrap().current();
        match dir.parse(&text) {
            Ok(_) => valid += 1,
            Err(ConfigError::Parse { .. }) => syntax += 1,
            Err(_) => invalid += 1,
        }
    }
    assert!(
        invalid >= 600 && valid >= 1,
        "syntax errors {syntax}, validation errors {invalid}, valid {valid}"
    );
}
