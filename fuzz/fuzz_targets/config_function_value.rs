//! Validation of one function's values: the input's first byte picks a key of `[[functions]]`
//! (or of `[functions.limits]`, `[gateway]`, `[limits]`), the rest is that key's TOML value,
//! inserted into an otherwise valid config. Most inputs thus get past TOML into `validate`,
//! where the durations, counts, names and paths are checked: it must never panic.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn base_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        std::fs::create_dir_all(dir.join("code")).expect("mkdir code");
        dir
    })
}

/// (table, key): where the fuzzed value goes.
const SLOTS: &[(&str, &str)] = &[
    ("function", "name"),
    ("function", "path"),
    ("function", "code_dir"),
    ("function", "bootstrap"),
    ("function", "idle_timeout"),
    ("function", "execution_timeout"),
    ("function", "init_timeout"),
    ("function", "max_instances"),
    ("function", "memory_mb"),
    ("function", "env"),
    ("function.limits", "max_message_bytes"),
    ("function.limits", "max_bytes_per_second"),
    ("function.limits", "max_messages_per_second"),
    ("function.limits", "rate_limit_action"),
    ("gateway", "listen"),
    ("gateway", "tls_listen"),
    ("gateway", "admin_listen"),
    ("gateway", "data_dir"),
    ("gateway", "admin_token"),
    ("gateway", "max_total_instances"),
    ("gateway", "max_new_instances_per_minute"),
    ("gateway", "isolation"),
    ("gateway", "pass_env"),
    ("gateway", "max_records"),
    ("gateway", "max_logged_invocations"),
    ("limits", "max_message_bytes"),
    ("runtimes", "\"python3/bin/python3\""),
    ("platform", "region"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, value)) = data.split_first() else {
        return;
    };
    let Ok(value) = std::str::from_utf8(value) else {
        return;
    };
    if value.contains('\n') {
        // One value on one line; multi-line input is config_parse's job.
        return;
    }
    let relaxed = pick & 0x80 != 0;
    let (table, key) = SLOTS[usize::from(pick & 0x7f) % SLOTS.len()];
    let mut function = vec![
        ("name", "\"echo\"".to_string()),
        ("path", "\"/echo\"".to_string()),
        ("code_dir", "\"code\"".to_string()),
    ];
    let mut top = String::new();
    let mut limits = String::new();
    match table {
        "function" => match function.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value.to_string(),
            None => function.push((key, value.to_string())),
        },
        "function.limits" => limits = format!("[functions.limits]\n{key} = {value}\n"),
        other => top = format!("[{other}]\n{key} = {value}\n"),
    }
    let mut text = format!("relaxed_limits = {relaxed}\n{top}[[functions]]\n");
    for (k, v) in &function {
        text.push_str(&format!("{k} = {v}\n"));
    }
    text.push_str(&limits);
    let base = base_dir();
    if let Err(err) = scfsim_config::parse(&text, base, &base.join("scfsim.toml")) {
        assert!(!err.to_string().is_empty());
    }
});
