//! Defaults, the interface.md example, limit merging, relaxed limits, load() and parse errors.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{Fixture, ECHO};
use scfsim_config::{load, ConfigError, GatewayConfig, Limits, RateLimitAction};

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("socket address")
}

#[test]
fn minimal_config_gets_platform_defaults() {
    let fixture = Fixture::new();
    let config = fixture.parse_ok(ECHO);

    assert!(!config.relaxed_limits);
    assert_eq!(config.source, fixture.source());
    let gw = &config.gateway;
    assert_eq!(gw.listen, addr("127.0.0.1:8080"));
    assert_eq!(gw.admin_listen, addr("127.0.0.1:9100"));
    assert_eq!(gw.tls_listen, None);
    assert_eq!((&gw.tls_cert, &gw.tls_key), (&None, &None));
    assert_eq!(gw.data_dir, PathBuf::from(".scfsim"));
    assert_eq!(gw.admin_token, None);

    let platform = Limits {
        max_message_bytes: 262_144,
        max_bytes_per_second: 131_072,
        max_messages_per_second: 10,
        rate_limit_action: RateLimitAction::Throttle,
    };
    assert_eq!(config.limits, platform);
    assert_eq!(Limits::default(), platform);

    let f = &config.functions[0];
    assert_eq!(f.name, "echo");
    assert_eq!(f.path, "/echo");
    assert_eq!(f.code_dir, fixture.code_dir());
    assert!(f.code_dir.is_absolute());
    assert_eq!(f.bootstrap, fixture.code_dir().join("scf_bootstrap"));
    assert_eq!(f.idle_timeout, Duration::from_secs(15));
    assert_eq!(f.execution_timeout, Duration::from_secs(900));
    assert_eq!(f.init_timeout, Duration::from_secs(60));
    assert_eq!(f.max_instances, 100);
    assert_eq!(f.provisioned_instances, 0);
    assert_eq!(f.memory_mb, 128);
    assert!(f.env.is_empty());
    assert_eq!(f.limits, platform);
}

#[test]
fn gateway_default_matches_parsed_default() {
    let parsed = Fixture::new().parse_ok(ECHO).gateway;
    let default = GatewayConfig::default();
    assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
}

#[test]
fn example_from_interface_md() {
    let fixture = Fixture::new();
    let code_dir = fixture.path().join("python-echo");
    std::fs::create_dir(&code_dir).expect("mkdir");
    // interface.md's example verbatim, except code_dir (pointed at a real directory).
    let text = r#"
relaxed_limits = false          # true: allow values outside the platform's ranges (for tests)

[gateway]
listen = "127.0.0.1:8080"       # ws://
tls_listen = "127.0.0.1:8443"   # wss:// ; optional
tls_cert = "path/cert.pem"      # optional with tls_key; without them scfsim makes a self-signed
tls_key = "path/key.pem"        #   certificate for localhost in data_dir and logs where it is
admin_listen = "127.0.0.1:9100"
data_dir = ".scfsim"

[limits]                        # platform defaults for every function; a function may override
max_message_bytes = 262144
max_bytes_per_second = 131072
max_messages_per_second = 10
rate_limit_action = "throttle"  # throttle | close | off

[[functions]]
name = "echo"
path = "/echo"                  # gateway path: matches /echo and /echo/... (longest match wins)
code_dir = "CODE_DIR"   # relative to the config file
# bootstrap = "scf_bootstrap"   # default
idle_timeout = "15s"            # durations: "500ms", "15s", "2m", or an integer of seconds
execution_timeout = "900s"
init_timeout = "60s"
max_instances = 100             # the function's concurrency quota
provisioned_instances = 2       # started ahead of demand, part of max_instances
memory_mb = 128
env = { GREETING = "hello" }
# [functions.limits]            # overrides of [limits]
"#
    .replace("CODE_DIR", &code_dir.display().to_string());

    let config = fixture.parse_ok(&text);
    let gw = &config.gateway;
    assert_eq!(gw.listen, addr("127.0.0.1:8080"));
    assert_eq!(gw.tls_listen, Some(addr("127.0.0.1:8443")));
    assert_eq!(gw.tls_cert, Some(fixture.path().join("path/cert.pem")));
    assert_eq!(gw.tls_key, Some(fixture.path().join("path/key.pem")));
    assert_eq!(gw.admin_listen, addr("127.0.0.1:9100"));
    assert_eq!(gw.data_dir, PathBuf::from(".scfsim"));
    assert_eq!(config.limits, Limits::default());

    let f = config.function("echo").expect("echo");
    assert_eq!(f.code_dir, code_dir.canonicalize().expect("canonicalize"));
    assert_eq!(f.bootstrap, f.code_dir.join("scf_bootstrap"));
    assert_eq!(f.idle_timeout, Duration::from_secs(15));
    assert_eq!(f.execution_timeout, Duration::from_secs(900));
    assert_eq!(f.init_timeout, Duration::from_secs(60));
    assert_eq!((f.max_instances, f.memory_mb), (100, 128));
    assert_eq!(f.provisioned_instances, 2);
    assert_eq!(f.env.get("GREETING").map(String::as_str), Some("hello"));

    // The TLS files and the bootstrap do not exist: allowed, but worth a warning.
    let warnings = config.warnings();
    assert!(
        warnings.iter().any(|w| w.contains("gateway.tls_cert")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("gateway.tls_key")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("\"echo\"") && w.contains("does not exist") && w.contains("445")),
        "{warnings:?}"
    );
}

#[test]
fn function_limits_override_field_by_field() {
    let fixture = Fixture::new();
    let text = r#"
[limits]
max_message_bytes = 1000
rate_limit_action = "close"

[[functions]]
name = "tuned"
path = "/tuned"
code_dir = "code"
[functions.limits]
max_messages_per_second = 5
rate_limit_action = "off"

[[functions]]
name = "plain"
path = "/plain"
code_dir = "code"
"#;
    let config = fixture.parse_ok(text);
    let global = Limits {
        max_message_bytes: 1000,
        max_bytes_per_second: 131_072,
        max_messages_per_second: 10,
        rate_limit_action: RateLimitAction::Close,
    };
    assert_eq!(config.limits, global);
    assert_eq!(
        config.function("tuned").expect("tuned").limits,
        Limits {
            max_messages_per_second: 5,
            rate_limit_action: RateLimitAction::Off,
            ..global
        }
    );
    assert_eq!(config.function("plain").expect("plain").limits, global);
}

#[test]
fn relaxed_limits_lift_platform_ranges() {
    let fixture = Fixture::new();
    let text = format!(
        "relaxed_limits = true\n[limits]\nmax_message_bytes = 10485760\nmax_bytes_per_second = \
         10485760\nmax_messages_per_second = 100000\n{ECHO}idle_timeout = \"500ms\"\n\
         execution_timeout = \"200ms\"\ninit_timeout = \"100ms\"\nmemory_mb = 100\n"
    );
    let config = fixture.parse_ok(&text);
    assert!(config.relaxed_limits);
    let f = &config.functions[0];
    assert_eq!(f.idle_timeout, Duration::from_millis(500));
    assert_eq!(f.execution_timeout, Duration::from_millis(200));
    assert_eq!(f.init_timeout, Duration::from_millis(100));
    assert_eq!(f.memory_mb, 100);
    assert_eq!(f.limits.max_message_bytes, 10_485_760);
    assert_eq!(f.limits.max_messages_per_second, 100_000);
}

#[test]
fn durations_accept_every_form() {
    let fixture = Fixture::new();
    let cases = [
        ("idle_timeout = 30", Duration::from_secs(30)),
        ("idle_timeout = \"30s\"", Duration::from_secs(30)),
        ("idle_timeout = \"10000ms\"", Duration::from_secs(10)),
        ("idle_timeout = \"2m\"", Duration::from_secs(120)),
        ("idle_timeout = \"1m30s\"", Duration::from_secs(90)),
        (
            "idle_timeout = \"1h\"\nexecution_timeout = \"1h\"",
            Duration::from_secs(3600),
        ),
    ];
    for (line, want) in cases {
        let config = fixture.parse_ok(&format!("{ECHO}{line}\n"));
        assert_eq!(config.functions[0].idle_timeout, want, "{line}");
    }
}

#[test]
fn bad_toml_unknown_keys_and_wrong_types_are_parse_errors() {
    let fixture = Fixture::new();
    let cases = [
        ("relaxed = true\n", "unknown field `relaxed`"),
        ("[gateway]\nport = 1\n", "unknown field `port`"),
        ("[limits]\nmax_bytes = 1\n", "unknown field `max_bytes`"),
        ("[limits]\nrate_limit_action = \"drop\"\n", "throttle"),
        ("[server]\n", "unknown field `server`"),
        ("relaxed_limits = \"yes\"\n", "relaxed_limits"),
        ("this is not toml", "TOML parse error"),
    ];
    for (top, says) in cases {
        let text = format!("{top}{ECHO}");
        match fixture.parse(&text) {
            Err(ConfigError::Parse { path, message }) => {
                assert_eq!(path, fixture.source());
                assert!(message.contains(says), "{text}\n{message}");
            }
            other => panic!("expected Parse error for {text:?}, got {other:?}"),
        }
    }
    let function_cases = [
        ("timeout = \"15s\"\n", "unknown field `timeout`"),
        ("idle_timeout = 1.5\n", "\"500ms\""),
        ("idle_timeout = true\n", "\"500ms\""),
        (
            "[functions.limits]\nmax_msgs = 1\n",
            "unknown field `max_msgs`",
        ),
        ("env = { A = 1 }\n", "string"),
    ];
    for (line, says) in function_cases {
        let text = format!("{ECHO}{line}");
        match fixture.parse(&text) {
            Err(ConfigError::Parse { message, .. }) => {
                assert!(message.contains(says), "{text}\n{message}");
            }
            other => panic!("expected Parse error for {text:?}, got {other:?}"),
        }
    }
    let missing_code_dir = "[[functions]]\nname = \"echo\"\npath = \"/echo\"\n";
    assert!(matches!(
        fixture.parse(missing_code_dir),
        Err(ConfigError::Invalid { field, message, .. })
            if field == "functions.\"echo\".code_dir" && message.contains("either code_dir")
    ));
}

#[test]
fn load_resolves_code_dir_against_the_config_files_directory() {
    let fixture = Fixture::new();
    let conf_dir = fixture.path().join("conf");
    std::fs::create_dir(&conf_dir).expect("mkdir");
    let file = conf_dir.join("scfsim.toml");
    std::fs::write(&file, ECHO.replace("\"code\"", "\"../code\"")).expect("write");

    let config = load(&file).expect("valid");
    assert_eq!(config.source, file);
    assert_eq!(config.functions[0].code_dir, fixture.code_dir());
}

#[test]
fn load_reports_an_unreadable_file() {
    let fixture = Fixture::new();
    let missing = fixture.path().join("absent.toml");
    let err = load(&missing).expect_err("no such file");
    assert!(matches!(&err, ConfigError::Read { path, .. } if *path == missing));
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
}

#[test]
fn custom_bootstrap_is_joined_to_code_dir() {
    let fixture = Fixture::new();
    let config = fixture.parse_ok(&format!("{ECHO}bootstrap = \"bin/start.sh\"\n"));
    assert_eq!(
        config.functions[0].bootstrap,
        fixture.code_dir().join("bin/start.sh")
    );
}

#[cfg(unix)]
#[test]
fn warnings_follow_the_bootstrap_file() {
    use std::os::unix::fs::PermissionsExt;

    let fixture = Fixture::new();
    let config = fixture.parse_ok(ECHO);
    let bootstrap = &config.functions[0].bootstrap;
    assert!(config.warnings()[0].contains("does not exist"));

    std::fs::write(bootstrap, "#!/bin/bash\n").expect("write");
    std::fs::set_permissions(bootstrap, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let warnings = config.warnings();
    assert!(
        warnings[0].contains("not executable") && warnings[0].contains("chmod 755"),
        "{warnings:?}"
    );

    std::fs::set_permissions(bootstrap, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
}

#[test]
fn tls_files_without_tls_listen_are_a_warning() {
    let fixture = Fixture::new();
    for name in ["cert.pem", "key.pem"] {
        std::fs::write(fixture.path().join(name), "").expect("write");
    }
    let text = format!("[gateway]\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n{ECHO}");
    let warnings = fixture.parse_ok(&text).warnings();
    assert!(
        warnings.iter().any(|w| w.contains("tls_listen is not")),
        "{warnings:?}"
    );
    assert!(
        !warnings.iter().any(|w| w.contains("not a readable file")),
        "{warnings:?}"
    );
}

#[test]
fn serializes_for_the_admin_api() {
    let fixture = Fixture::new();
    let text = format!("[gateway]\nadmin_token = \"s3cret\"\n{ECHO}idle_timeout = \"1m30s\"\n");
    let json = serde_json::to_value(fixture.parse_ok(&text)).expect("serialize");
    let f = &json["functions"][0];
    assert_eq!(f["idle_timeout"], "1m30s");
    assert_eq!(f["execution_timeout"], "15m");
    assert_eq!(f["init_timeout"], "1m");
    assert_eq!(f["limits"]["rate_limit_action"], "throttle");
    assert_eq!(json["gateway"]["listen"], "127.0.0.1:8080");
    assert_eq!(json["gateway"]["admin_token"], "<redacted>");
    assert!(json.get("source").is_none());
    assert!(!json.to_string().contains("s3cret"));
}
