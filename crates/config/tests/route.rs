//! Config::route: prefix on a '/' boundary, longest match wins, "/" catches the rest.

mod common;

use common::Fixture;
use scfsim_config::Config;

fn config_with_paths(fixture: &Fixture, functions: &[(&str, &str)]) -> Config {
    let text: String = functions
        .iter()
        .map(|(name, path)| {
            format!("[[functions]]\nname = {name:?}\npath = {path:?}\ncode_dir = \"code\"\n")
        })
        .collect();
    fixture.parse_ok(&text)
}

fn routed<'a>(config: &'a Config, path: &str) -> Option<&'a str> {
    config.route(path).map(|f| f.name.as_str())
}

#[test]
fn longest_prefix_on_a_segment_boundary() {
    let fixture = Fixture::new();
    // Declared shortest-first and longest-first mixed, so file order cannot decide.
    let config = config_with_paths(
        &fixture,
        &[
            ("deep", "/echo/deep"),
            ("root", "/"),
            ("echo", "/echo"),
            ("echoes", "/echoes"),
        ],
    );
    let cases = [
        ("/echo", Some("echo")),
        ("/echo/", Some("echo")),
        ("/echo/a/b", Some("echo")),
        ("/echo/deeper", Some("echo")),
        ("/echo/deep", Some("deep")),
        ("/echo/deep/", Some("deep")),
        ("/echo/deep/x", Some("deep")),
        ("/echoes", Some("echoes")),
        ("/echoes/x", Some("echoes")),
        ("/echox", Some("root")),
        ("/", Some("root")),
        ("/other/path", Some("root")),
    ];
    for (path, want) in cases {
        assert_eq!(routed(&config, path), want, "{path}");
    }
}

#[test]
fn without_a_root_function_unknown_paths_match_nothing() {
    let fixture = Fixture::new();
    let config = config_with_paths(&fixture, &[("echo", "/echo"), ("chat", "/api/chat")]);
    let cases = [
        ("/echoes", None),
        ("/ech", None),
        ("/", None),
        ("", None),
        ("/api", None),
        ("/api/chat/room/1", Some("chat")),
        ("/ECHO", None),
    ];
    for (path, want) in cases {
        assert_eq!(routed(&config, path), want, "{path}");
    }
}

#[test]
fn function_by_name() {
    let fixture = Fixture::new();
    let config = config_with_paths(&fixture, &[("echo", "/echo"), ("chat", "/chat")]);
    assert_eq!(
        config.function("chat").map(|f| f.path.as_str()),
        Some("/chat")
    );
    assert!(config.function("Chat").is_none());
    assert!(config.function("missing").is_none());
}
