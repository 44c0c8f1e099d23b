//! `[functions.faults]` in a config file: read into the function, and every bad value rejected
//! with the file, the field (`functions."echo".faults.KEY`), the value and what is allowed.

mod common;

use std::time::Duration;

use common::{Fixture, ECHO};
use scfsim_config::ConfigError;

#[test]
fn faults_are_read_into_the_function_and_absent_means_none() {
    let fixture = Fixture::new();
    let config = fixture.parse_ok(&format!(
        "{ECHO}[functions.faults]\nstart_delay = \"1s\"\ndelay_to_client = \"20ms\"\nseed = 5\n"
    ));
    let faults = &config.functions[0].faults;
    assert_eq!(faults.start_delay, Some(Duration::from_secs(1)));
    assert_eq!(faults.delay_to_client, Some(Duration::from_millis(20)));
    assert_eq!(faults.seed, Some(5));
    assert!(!config.gateway.fault_headers);

    let plain = fixture.parse_ok(&format!("[gateway]\nfault_headers = true\n{ECHO}"));
    assert!(plain.functions[0].faults.is_empty());
    assert!(plain.gateway.fault_headers);
}

#[test]
fn bad_fault_values_name_file_field_value_and_range() {
    let fixture = Fixture::new();
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "start_failure = 439",
            "start_failure",
            &["got 439", "405", "434", "445", "446"],
        ),
        ("start_delay = -2", "start_delay", &["-2 is negative"]),
        (
            "delay_to_function = \"0ms\"",
            "delay_to_function",
            &["got \"0ms\"", "greater than zero"],
        ),
        (
            "kill_after = \"soon\"",
            "kill_after",
            &["\"soon\" is not a duration"],
        ),
        (
            "kill_after_messages = 0",
            "kill_after_messages",
            &["got 0", "from 1 to"],
        ),
        (
            "reset_client_after_messages = -1",
            "reset_client_after_messages",
            &["got -1"],
        ),
        (
            "drop_to_function = 2.0",
            "drop_to_function",
            &["got 2", "from 0 (never) to 1"],
        ),
        (
            "duplicate_to_function = -1.0",
            "duplicate_to_function",
            &["got -1", "probability"],
        ),
        ("seed = -4", "seed", &["got -4", "from 0 to"]),
    ];
    for (line, key, says) in cases {
        let text = format!("{ECHO}[functions.faults]\n{line}\n");
        match fixture.parse(&text) {
            Err(ConfigError::Invalid {
                path,
                field,
                message,
            }) => {
                assert_eq!(path, fixture.source(), "{text}");
                assert_eq!(field, format!("functions.\"echo\".faults.{key}"), "{text}");
                for want in *says {
                    assert!(message.contains(want), "{text}\n{message:?} lacks {want:?}");
                }
                let shown = ConfigError::Invalid {
                    path,
                    field,
                    message,
                }
                .to_string();
                assert!(shown.contains("scfsim.toml"), "{shown}");
            }
            other => panic!("expected Invalid for {line}, got {other:?}"),
        }
    }
}

#[test]
fn an_unknown_fault_key_is_rejected_by_name() {
    let fixture = Fixture::new();
    let text = format!("{ECHO}[functions.faults]\ndrop_to_client = 0.5\n");
    match fixture.parse(&text) {
        Err(ConfigError::Parse { message, .. }) => {
            assert!(message.contains("drop_to_client"), "{message}")
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
}
