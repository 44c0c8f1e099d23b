//! Every validation rule: the field it names, the value and range in its message, and whether
//! `relaxed_limits = true` lifts it.

mod common;

use common::{Fixture, ECHO};
use scfsim_config::ConfigError;

const RELAX_HINT: &str = "(set relaxed_limits = true to lift the platform's ranges)";
const FORMS: &str = "\"500ms\", \"15s\", \"2m\", \"1h\"";

struct Case {
    /// Top-level keys and tables that go before the functions.
    top: &'static str,
    /// Lines appended to the `echo` function (may open more tables).
    function: &'static str,
    field: &'static str,
    /// Substrings the message must contain.
    says: &'static [&'static str],
    /// A platform range: rejected with the relax hint, accepted when relaxed.
    platform: bool,
}

const fn platform(
    top: &'static str,
    function: &'static str,
    field: &'static str,
    says: &'static [&'static str],
) -> Case {
    Case {
        top,
        function,
        field,
        says,
        platform: true,
    }
}

const fn always(
    top: &'static str,
    function: &'static str,
    field: &'static str,
    says: &'static [&'static str],
) -> Case {
    Case {
        top,
        function,
        field,
        says,
        platform: false,
    }
}

const IDLE: &str = "functions.\"echo\".idle_timeout";
const EXEC: &str = "functions.\"echo\".execution_timeout";
const INIT: &str = "functions.\"echo\".init_timeout";
const MEMORY: &str = "functions.\"echo\".memory_mb";
const ENV: &str = "functions.\"echo\".env";
const PATH: &str = "functions.\"echo\".path";

fn cases() -> Vec<Case> {
    vec![
        // Platform ranges.
        platform("", "idle_timeout = \"2s\"", IDLE, &["\"2s\"", "10s to 2h"]),
        platform("", "idle_timeout = 9", IDLE, &["got 9;", "10s to 2h"]),
        platform(
            "",
            "idle_timeout = \"2h1s\"\nexecution_timeout = \"3h\"",
            IDLE,
            &["\"2h1s\"", "10s to 2h"],
        ),
        platform(
            "",
            "execution_timeout = \"10s\"",
            EXEC,
            &["\"10s\"", "shorter than idle_timeout (15s)"],
        ),
        platform(
            "",
            "idle_timeout = \"1h\"",
            EXEC,
            &["the default 15m", "shorter than idle_timeout (1h)"],
        ),
        platform(
            "",
            "execution_timeout = \"24h1s\"",
            EXEC,
            &["\"24h1s\"", "at most 24h"],
        ),
        platform("", "init_timeout = \"2s\"", INIT, &["\"2s\"", "3s to 5m"]),
        platform("", "init_timeout = 301", INIT, &["got 301;", "3s to 5m"]),
        platform(
            "",
            "memory_mb = 100",
            MEMORY,
            &["got 100;", "64, or 128 to 3072 in steps of 128"],
        ),
        platform("", "memory_mb = 200", MEMORY, &["got 200;", "steps of 128"]),
        platform("", "memory_mb = 3200", MEMORY, &["got 3200;"]),
        platform(
            "[limits]\nmax_message_bytes = 262145",
            "",
            "limits.max_message_bytes",
            &["got 262145;", "1 to 262144"],
        ),
        platform(
            "[limits]\nmax_bytes_per_second = 131073",
            "",
            "limits.max_bytes_per_second",
            &["got 131073;", "1 to 131072"],
        ),
        platform(
            "[limits]\nmax_messages_per_second = 11",
            "",
            "limits.max_messages_per_second",
            &["got 11;", "1 to 10"],
        ),
        platform(
            "",
            "[functions.limits]\nmax_messages_per_second = 20",
            "functions.\"echo\".limits.max_messages_per_second",
            &["got 20;", "1 to 10"],
        ),
        platform(
            "",
            "[functions.limits]\nmax_message_bytes = 1048576",
            "functions.\"echo\".limits.max_message_bytes",
            &["got 1048576;"],
        ),
        // time_scale: scfsim's own range, never lifted.
        always(
            "time_scale = 0.5",
            "",
            "time_scale",
            &["got 0.5;", "from 1 (real time) to 10000"],
        ),
        always("time_scale = 20000", "", "time_scale", &["got 20000;"]),
        // [timeline]: scfsim's own sizes, never lifted.
        always(
            "[timeline]\nmax_events = 0",
            "",
            "timeline.max_events",
            &["got 0;", "must be 1 to 1000000"],
        ),
        always(
            "[timeline]\nkeep_invocations = -5",
            "",
            "timeline.keep_invocations",
            &["got -5;", "timeline.enabled = false"],
        ),
        always(
            "[timeline]\npayload_bytes = 99999999999",
            "",
            "timeline.payload_bytes",
            &["got 99999999999;", "1 to 16777216"],
        ),
        // Durations: always positive and well-formed.
        always(
            "",
            "idle_timeout = 0",
            IDLE,
            &["got 0;", "greater than zero"],
        ),
        always(
            "",
            "init_timeout = \"0ms\"",
            INIT,
            &["\"0ms\"", "greater than zero"],
        ),
        always(
            "",
            "execution_timeout = -5",
            EXEC,
            &["-5 is negative", FORMS],
        ),
        always(
            "",
            "idle_timeout = \"soon\"",
            IDLE,
            &["\"soon\" is not a duration", FORMS],
        ),
        always("", "idle_timeout = \"15\"", IDLE, &["needs a unit", FORMS]),
        always("", "idle_timeout = \"-15s\"", IDLE, &["\"-15s\"", FORMS]),
        always("", "idle_timeout = \"1.5s\"", IDLE, &["\"1.5s\"", FORMS]),
        // Counts: always at least 1.
        always(
            "",
            "max_instances = 0",
            "functions.\"echo\".max_instances",
            &["got 0;", "at least 1"],
        ),
        always(
            "",
            "max_instances = 4294967296",
            "functions.\"echo\".max_instances",
            &["at most 4294967295"],
        ),
        always(
            "",
            "container_stock = -1",
            "functions.\"echo\".container_stock",
            &["got -1;", "0 (no stock) or more"],
        ),
        // Provisioned instances: 0 to max_instances, never in debug mode.
        always(
            "",
            "max_instances = 3\nprovisioned_instances = 4",
            "functions.\"echo\".provisioned_instances",
            &["got 4;", "0 to max_instances (3)", "concurrency quota"],
        ),
        always(
            "",
            "provisioned_instances = -1",
            "functions.\"echo\".provisioned_instances",
            &["got -1;", "0 to max_instances (100)"],
        ),
        always(
            "",
            "provisioned_instances = 1\ndebug = true",
            "functions.\"echo\".provisioned_instances",
            &["got 1;", "debug = true", "waits for a person"],
        ),
        always("", "memory_mb = 0", MEMORY, &["got 0;", "at least 1"]),
        always("", "memory_mb = -128", MEMORY, &["got -128;", "at least 1"]),
        always(
            "[limits]\nmax_message_bytes = 0",
            "",
            "limits.max_message_bytes",
            &["got 0;", "at least 1", "1 to 262144"],
        ),
        always(
            "[limits]\nmax_bytes_per_second = -1",
            "",
            "limits.max_bytes_per_second",
            &["got -1;"],
        ),
        always(
            "",
            "[functions.limits]\nmax_messages_per_second = 0",
            "functions.\"echo\".limits.max_messages_per_second",
            &["got 0;", "at least 1"],
        ),
        // Paths.
        always(
            "",
            "bootstrap = \"\"",
            "functions.\"echo\".bootstrap",
            &["must not be empty"],
        ),
        // Gateway.
        always(
            "[gateway]\nlisten = \"localhost:8080\"",
            "",
            "gateway.listen",
            &["\"localhost:8080\"", "IP:PORT", "127.0.0.1:8080"],
        ),
        always(
            "[gateway]\ntls_listen = \"8443\"",
            "",
            "gateway.tls_listen",
            &["\"8443\"", "IP:PORT"],
        ),
        always(
            "[gateway]\nadmin_listen = \"0.0.0.0:9100\"",
            "",
            "gateway.admin_listen",
            &["0.0.0.0:9100", "not a loopback", "admin_token"],
        ),
        always(
            "[gateway]\nadmin_listen = \"[::]:0\"",
            "",
            "gateway.admin_listen",
            &["not a loopback"],
        ),
        always(
            "[gateway]\nadmin_token = \"\"",
            "",
            "gateway.admin_token",
            &["must not be empty"],
        ),
        always(
            "[gateway]\ntls_cert = \"cert.pem\"",
            "",
            "gateway.tls_key",
            &["is missing", "go together"],
        ),
        always(
            "[gateway]\ntls_key = \"key.pem\"",
            "",
            "gateway.tls_cert",
            &["is missing", "go together"],
        ),
        always(
            "[gateway]\nlisten = \"127.0.0.1:9100\"",
            "",
            "gateway.admin_listen",
            &["127.0.0.1:9100", "also gateway.listen"],
        ),
        always(
            "[gateway]\ndata_dir = \"\"",
            "",
            "gateway.data_dir",
            &["must not be empty"],
        ),
    ]
}

/// Rules about names, paths and env, which replace the function's own lines.
fn identity_cases() -> Vec<(String, &'static str, Vec<&'static str>)> {
    let function = |name: &str, path: &str| {
        format!("[[functions]]\nname = {name:?}\npath = {path:?}\ncode_dir = \"code\"\n")
    };
    let with_env = |env: &str| format!("{ECHO}env = {{ {env} }}\n");
    let long_name = "a".repeat(61);
    vec![
        (
            function("1echo", "/echo"),
            "functions[0].name",
            vec!["\"1echo\"", "starting with a letter"],
        ),
        (
            function("", "/echo"),
            "functions[0].name",
            vec!["\"\"", "1 to 60"],
        ),
        (
            function("ec ho", "/echo"),
            "functions[0].name",
            vec!["\"ec ho\""],
        ),
        (
            function("échо", "/echo"),
            "functions[0].name",
            vec!["not a valid function name"],
        ),
        (
            function(&long_name, "/echo"),
            "functions[0].name",
            vec!["1 to 60"],
        ),
        (
            format!("{ECHO}{}", function("echo", "/other")),
            "functions[1].name",
            vec!["\"echo\" is already the name of functions[0]"],
        ),
        (
            format!("{ECHO}{}", function("echo2", "/echo")),
            "functions.\"echo2\".path",
            vec!["\"/echo\" is already the path of function \"echo\""],
        ),
        (
            function("echo", "echo"),
            PATH,
            vec!["\"echo\" must start with '/'"],
        ),
        (function("echo", ""), PATH, vec!["must start with '/'"]),
        (
            function("echo", "/echo?x=1"),
            PATH,
            vec!["must not contain '?' or '#'"],
        ),
        (
            function("echo", "/echo#top"),
            PATH,
            vec!["must not contain '?' or '#'"],
        ),
        (
            function("echo", "/echo/"),
            PATH,
            vec!["must not end with '/'", "write \"/echo\""],
        ),
        (function("echo", "/e cho"), PATH, vec!["spaces"]),
        (
            with_env("\"1X\" = \"v\""),
            ENV,
            vec!["key \"1X\"", "[a-zA-Z][a-zA-Z0-9_]*"],
        ),
        (with_env("\"A-B\" = \"v\""), ENV, vec!["key \"A-B\""]),
        (with_env("\"\" = \"v\""), ENV, vec!["key \"\""]),
        (
            with_env("SCF_MINE = \"v\""),
            ENV,
            vec!["key \"SCF_MINE\"", "reserved"],
        ),
        (
            with_env("QCLOUD_X = \"v\""),
            ENV,
            vec!["key \"QCLOUD_X\"", "\"QCLOUD_\""],
        ),
        (
            with_env("TENCENTCLOUD_REGION = \"v\""),
            ENV,
            vec!["key \"TENCENTCLOUD_REGION\""],
        ),
        (
            with_env("NUL = \"a\\u0000b\""),
            ENV,
            vec!["key \"NUL\"", "NUL"],
        ),
        (
            ECHO.replace("\"code\"", "\"nope\""),
            "functions.\"echo\".code_dir",
            vec!["\"nope\"", "does not exist", "relative to the config file"],
        ),
        (
            ECHO.replace("\"code\"", "\"\""),
            "functions.\"echo\".code_dir",
            vec!["must not be empty"],
        ),
    ]
}

fn expect_invalid(fixture: &Fixture, text: &str, field: &str, says: &[&str]) -> String {
    match fixture.parse(text) {
        Err(ConfigError::Invalid {
            path,
            field: got,
            message,
        }) => {
            assert_eq!(path, fixture.source(), "{text}");
            assert_eq!(got, field, "{text}\nmessage: {message}");
            for want in says {
                assert!(
                    message.contains(want),
                    "{text}\nmessage {message:?} lacks {want:?}"
                );
            }
            message
        }
        other => panic!("expected Invalid {field}, got {other:?}\n---\n{text}"),
    }
}

#[test]
fn each_rule_names_field_value_and_range() {
    let fixture = Fixture::new();
    for case in cases() {
        let text = format!("{}\n{ECHO}{}\n", case.top, case.function);
        let message = expect_invalid(&fixture, &text, case.field, case.says);
        assert_eq!(
            message.contains(RELAX_HINT),
            case.platform,
            "{text}\n{message}"
        );

        let relaxed = format!("relaxed_limits = true\n{text}");
        let result = fixture.parse(&relaxed);
        if case.platform {
            assert!(
                result.is_ok(),
                "relaxed should accept:\n{relaxed}\n{result:?}"
            );
        } else {
            expect_invalid(&fixture, &relaxed, case.field, case.says);
        }
    }
}

#[test]
fn identity_rules_hold_even_when_relaxed() {
    let fixture = Fixture::new();
    for (text, field, says) in identity_cases() {
        for text in [text.clone(), format!("relaxed_limits = true\n{text}")] {
            let message = expect_invalid(&fixture, &text, field, &says);
            assert!(!message.contains(RELAX_HINT), "{message}");
        }
    }
}

#[test]
fn env_size_limit_names_the_key_where_it_is_passed() {
    let fixture = Fixture::new();
    // Each entry counts key + value + 2: "A" + 2000 + 2 = 2003, twice is 4006, a third passes.
    let value = "x".repeat(2000);
    let fits = format!(
        "{ECHO}env = {{ A = {value:?}, B = {value:?}, C = \"{}\" }}\n",
        "y".repeat(87)
    );
    let config = fixture.parse_ok(&fits);
    let total: usize = config.functions[0]
        .env
        .iter()
        .map(|(k, v)| k.len() + v.len() + 2)
        .sum();
    assert_eq!(total, 4096);

    let over = format!(
        "{ECHO}env = {{ A = {value:?}, B = {value:?}, C = \"{}\" }}\n",
        "y".repeat(88)
    );
    for text in [over.clone(), format!("relaxed_limits = true\n{over}")] {
        expect_invalid(&fixture, &text, ENV, &["4097 bytes", "4096", "key \"C\""]);
    }
}

#[test]
fn at_least_one_function() {
    let fixture = Fixture::new();
    for text in [
        "",
        "relaxed_limits = true",
        "[gateway]\nlisten = \"127.0.0.1:0\"",
    ] {
        expect_invalid(&fixture, text, "functions", &["add a [[functions]] table"]);
    }
}

#[test]
fn code_dir_must_be_a_directory() {
    let fixture = Fixture::new();
    std::fs::write(fixture.path().join("file"), "").expect("write");
    let text = ECHO.replace("\"code\"", "\"file\"");
    expect_invalid(
        &fixture,
        &text,
        "functions.\"echo\".code_dir",
        &["\"file\"", "is not a directory"],
    );
}

#[test]
fn non_loopback_admin_is_fine_with_a_token() {
    let fixture = Fixture::new();
    let text =
        format!("[gateway]\nadmin_listen = \"0.0.0.0:9100\"\nadmin_token = \"s3cret\"\n{ECHO}");
    let config = fixture.parse_ok(&text);
    assert_eq!(config.gateway.admin_token.as_deref(), Some("s3cret"));
}

#[test]
fn port_zero_listeners_may_share_an_address() {
    let fixture = Fixture::new();
    let text = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{ECHO}"
    );
    fixture.parse_ok(&text);
}

#[test]
fn execution_timeout_may_equal_idle_timeout() {
    let fixture = Fixture::new();
    let text = format!("{ECHO}idle_timeout = \"2h\"\nexecution_timeout = 7200\n");
    let config = fixture.parse_ok(&text);
    assert_eq!(
        config.functions[0].execution_timeout,
        config.functions[0].idle_timeout
    );
}

#[test]
fn platform_memory_sizes_are_accepted() {
    let fixture = Fixture::new();
    for mb in [64, 128, 256, 1536, 3072] {
        let config = fixture.parse_ok(&format!("{ECHO}memory_mb = {mb}\n"));
        assert_eq!(config.functions[0].memory_mb, mb);
    }
}

#[test]
fn error_display_names_file_field_value_and_range() {
    let fixture = Fixture::new();
    let err = fixture
        .parse(&format!("{ECHO}idle_timeout = \"2s\"\n"))
        .expect_err("2s is below the platform's range");
    let text = err.to_string();
    let source = fixture.source().display().to_string();
    assert!(
        text.starts_with(&format!("{source}: functions.\"echo\".idle_timeout: ")),
        "{text}"
    );
    assert!(
        text.contains("\"2s\"") && text.contains("10s to 2h") && text.contains(RELAX_HINT),
        "{text}"
    );
}

#[test]
fn time_scale_defaults_to_one_and_ranges_apply_to_the_unscaled_values() {
    let fixture = Fixture::new();
    assert_eq!(fixture.parse_ok(ECHO).time_scale, 1.0);
    // 10 s idle and 2 h execution are within the platform's ranges as written; at 100 they run
    // in 100 ms and 72 s, without relaxed_limits.
    let config = fixture.parse_ok(&format!(
        "time_scale = 100\n{ECHO}idle_timeout = \"10s\"\nexecution_timeout = \"2h\"\n"
    ));
    assert_eq!(config.time_scale, 100.0);
    let f = &config.functions[0];
    assert_eq!(
        config.real_time(f.idle_timeout),
        std::time::Duration::from_millis(100)
    );
    assert_eq!(
        config.real_time(f.execution_timeout),
        std::time::Duration::from_secs(72)
    );
    // A scaled value is still checked as written: 5 s idle is below the platform's 10 s.
    let err = fixture
        .parse(&format!("time_scale = 100\n{ECHO}idle_timeout = \"5s\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("10s to 2h"), "{err}");
}
