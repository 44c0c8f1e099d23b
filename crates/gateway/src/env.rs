//! The environment an instance sees: semantics.md §2.

use scfsim_config::FunctionConfig;

use crate::PlatformIdentity;

/// Variables of scfsim's own environment that reach instances; nothing else leaks in.
const PASSED_FROM_HOST: &[&str] = &["PATH", "HOME", "LANG"];
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The part of every instance's environment that comes from scfsim's own: read once, when the
/// gateway is made (scfsim's environment does not change while it runs).
pub(crate) fn from_host(pass_env: &[String]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = PASSED_FROM_HOST
        .iter()
        .copied()
        .chain(pass_env.iter().map(String::as_str))
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    env
}

pub(crate) fn instance_env(
    function: &FunctionConfig,
    identity: &PlatformIdentity,
    from_host: &[(String, String)],
) -> Vec<(String, String)> {
    // An image carries its own PATH, HOME and LANG: the host's would replace them.
    let mut env = match function.image {
        Some(_) => Vec::new(),
        None => from_host.to_vec(),
    };
    env.extend(function.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let code_root = function.code_dir.display().to_string();
    let builtins = [
        ("SCF_RUNTIME", "custom".to_string()),
        ("SCF_FUNCTIONNAME", function.name.clone()),
        ("SCF_FUNCTIONVERSION", "$LATEST".to_string()),
        ("SCF_NAMESPACE", identity.namespace.clone()),
        ("SCF_MEMORY", function.memory_mb.to_string()),
        ("TENCENTCLOUD_REGION", identity.region.clone()),
        ("TENCENTCLOUD_APPID", identity.appid.clone()),
        ("TENCENTCLOUD_UIN", identity.uin.clone()),
        ("TENCENTCLOUD_RUNENV", "SCF".to_string()),
        ("TENCENTCLOUD_TZ", "UTC".to_string()),
        ("USER_CODE_ROOT", code_root),
    ];
    env.extend(builtins.into_iter().map(|(k, v)| (k.to_string(), v)));
    env
}
