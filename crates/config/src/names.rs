//! Rules for the strings a function is identified and started by: its name, its gateway path and
//! its environment. All of these always apply, relaxed or not: they protect scfsim itself (the
//! router, the process environment), not just platform fidelity. Each check returns the message
//! for the user; the caller adds the field.

use std::collections::BTreeMap;

use crate::error::BadValue;

const NAME_MAX: usize = 60;
const RESERVED_ENV_PREFIXES: [&str; 3] = ["SCF_", "QCLOUD_", "TENCENTCLOUD_"];
const ENV_MAX_BYTES: usize = 4096;

/// `[A-Za-z][A-Za-z0-9_-]{0,59}`.
pub(crate) fn check_function_name(name: &str) -> Result<(), BadValue> {
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if starts_with_letter && rest_ok && name.len() <= NAME_MAX {
        Ok(())
    } else {
        Err(BadValue(format!(
            "{name:?} is not a valid function name: 1 to {NAME_MAX} letters, digits, '_' or '-', \
             starting with a letter"
        )))
    }
}

/// "/" or "/a[/b...]": no trailing '/', since "/echo" already serves "/echo/" and below, and a
/// second spelling of the same route would make matching ambiguous.
pub(crate) fn check_route_path(path: &str) -> Result<(), BadValue> {
    if !path.starts_with('/') {
        return Err(BadValue(format!("{path:?} must start with '/'")));
    }
    if path.contains(['?', '#']) {
        return Err(BadValue(format!(
            "{path:?} must not contain '?' or '#' (query strings and fragments are not part of \
             the route)"
        )));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(BadValue(format!(
            "{path:?} must not contain spaces or control characters"
        )));
    }
    if path.len() > 1 && path.ends_with('/') {
        let trimmed = path.trim_end_matches('/');
        let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
        return Err(BadValue(format!(
            "{path:?} must not end with '/'; write {trimmed:?}, which also serves {path:?} and \
             every path below it"
        )));
    }
    Ok(())
}

/// `[a-zA-Z][a-zA-Z0-9_]*`.
pub(crate) fn is_env_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Keys `[a-zA-Z][a-zA-Z0-9_]*` outside the platform's reserved prefixes, values without NUL
/// (they become process environment), and at most 4096 bytes counting key + value + 2 per entry.
pub(crate) fn check_env(env: &BTreeMap<String, String>) -> Result<(), BadValue> {
    let mut total = 0usize;
    let mut over_at: Option<&str> = None;
    for (key, value) in env {
        if !is_env_key(key) {
            return Err(BadValue(format!(
                "key {key:?} is not allowed: keys must match [a-zA-Z][a-zA-Z0-9_]*"
            )));
        }
        if let Some(prefix) = RESERVED_ENV_PREFIXES.iter().find(|p| key.starts_with(*p)) {
            return Err(BadValue(format!(
                "key {key:?} starts with {prefix:?}, which the platform reserves for its own \
                 variables (reserved: {})",
                RESERVED_ENV_PREFIXES.join(", ")
            )));
        }
        if value.contains('\0') {
            return Err(BadValue(format!(
                "the value of key {key:?} contains a NUL character, which a process environment \
                 cannot hold"
            )));
        }
        total += key.len() + value.len() + 2;
        if total > ENV_MAX_BYTES && over_at.is_none() {
            over_at = Some(key);
        }
    }
    if let Some(key) = over_at {
        return Err(BadValue(format!(
            "the variables take {total} bytes (key + value + 2 per entry), over the platform's \
             {ENV_MAX_BYTES}; key {key:?} is where the total passes {ENV_MAX_BYTES}"
        )));
    }
    Ok(())
}
