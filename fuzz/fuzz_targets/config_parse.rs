//! `scfsim_config::parse` on arbitrary bytes: the whole path from text to a validated `Config`
//! (TOML, serde with `deny_unknown_fields`, every check of `validate`) must return `Ok` or a
//! `ConfigError` with a message, never panic, whatever the file holds.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// A config directory with a `code` directory, so a well-formed function gets past `code_dir`
/// into the checks after it. Created once per fuzzing process.
fn base_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        std::fs::create_dir_all(dir.join("code")).expect("mkdir code");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = base_dir();
    if let Err(err) = scfsim_config::parse(text, base, &base.join("scfsim.toml")) {
        assert!(!err.to_string().is_empty());
    }
});
