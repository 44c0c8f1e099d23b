//! What the tests read about processes, through the `procfs` crate: the one `/proc` reader of
//! the tests, as `procfs` is scfsim's own.

use procfs::process::{all_processes, Process};

fn process(pid: u32) -> Process {
    Process::new(pid as i32).unwrap_or_else(|e| panic!("process {pid} in /proc: {e}"))
}

/// `pid (comm) state` of each child of `pid`, zombies included, but for the supervisors scfsim
/// keeps parked ahead of demand (its stock, not instances: see [`parked`]).
pub fn children(pid: u32) -> Vec<String> {
    all_processes()
        .expect("/proc")
        .flatten()
        .filter_map(|p| p.stat().ok())
        .filter(|stat| stat.ppid == pid as i32 && stat.comm != PARKED)
        .map(|stat| format!("{} ({}) {}", stat.pid, stat.comm, stat.state))
        .collect()
}

/// The command name of a supervisor parked ahead of demand (`isolation = "namespaces"`); it
/// becomes `scfsim-keeper` when it is handed a function.
pub const PARKED: &str = "scfsim-parked";

/// The pids of scfsim `pid`'s parked supervisors.
pub fn parked(pid: u32) -> Vec<u32> {
    all_processes()
        .expect("/proc")
        .flatten()
        .filter_map(|p| p.stat().ok())
        .filter(|stat| stat.ppid == pid as i32 && stat.comm == PARKED && stat.state != 'Z')
        .map(|stat| stat.pid as u32)
        .collect()
}

/// The cgroup directories (absolute, under `/sys/fs/cgroup`) of scfsim `pid`'s parked
/// supervisors: their cgroups are the stock's, not instances'.
pub fn parked_cgroups(pid: u32) -> Vec<std::path::PathBuf> {
    parked(pid).into_iter().flat_map(cgroup_dirs).collect()
}

/// The memory and pids cgroup directories of `pid` (cgroup v1), or its v2 cgroup.
pub fn cgroup_dirs(pid: u32) -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new("/sys/fs/cgroup");
    Process::new(pid as i32)
        .and_then(|p| p.cgroups())
        .map(|groups| {
            groups
                .into_iter()
                .filter_map(|g| {
                    let path = g.pathname.trim_start_matches('/');
                    match g.controllers.first().map(String::as_str) {
                        Some("memory") => Some(root.join("memory").join(path)),
                        Some("pids") => Some(root.join("pids").join(path)),
                        None if g.hierarchy == 0 => Some(root.join(path)),
                        _ => None,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    Process::new(pid as i32)
        .and_then(|p| p.stat())
        .is_ok_and(|stat| stat.state != 'Z')
}

/// Resident memory of `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    process(pid)
        .status()
        .expect("status")
        .vmrss
        .expect("VmRSS in status")
}

/// Open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    process(pid).fd_count().expect("fd count")
}

/// The real user id `pid` runs as.
pub fn uid(pid: u32) -> u32 {
    process(pid).status().expect("status").ruid
}

/// Mounts in `pid`'s mount namespace that scfsim could have made: `/var/lang` trees and `proc`
/// mounts (all of scfsim's own belong in its instances' namespaces).
pub fn scfsim_mounts(pid: u32) -> usize {
    process(pid)
        .mountinfo()
        .map(|mounts| {
            mounts
                .into_iter()
                .filter(|m| {
                    m.fs_type == "proc"
                        || m.root.contains("var-lang")
                        || m.mount_point.starts_with("/var/lang")
                })
                .count()
        })
        .unwrap_or(0)
}

/// Processes whose environment holds `KEY=VALUE` `entry`, with their command names.
pub fn with_env(entry: &str) -> Vec<(u32, String)> {
    let (key, value) = entry.split_once('=').expect("KEY=VALUE");
    all_processes()
        .expect("/proc")
        .flatten()
        .filter(|p| {
            p.environ().is_ok_and(|env| {
                env.get(std::ffi::OsStr::new(key))
                    .is_some_and(|v| v == value)
            })
        })
        .filter_map(|p| Some((p.pid as u32, p.stat().ok()?.comm)))
        .collect()
}

/// Bootstrap processes (not their supervisors) whose environment holds
/// `SCFSIM_TEST_MARKER=marker`.
pub fn bootstraps_with(marker: &str) -> Vec<u32> {
    with_env(&format!("SCFSIM_TEST_MARKER={marker}"))
        .into_iter()
        .filter(|(_, comm)| !matches!(comm.as_str(), "scfsim-keeper" | "scfsim-init"))
        .map(|(pid, _)| pid)
        .collect()
}

/// Every process (bootstraps and their supervisors) whose environment holds
/// `SCFSIM_TEST_MARKER=marker`: the instances of one test.
pub fn processes_with(marker: &str) -> Vec<u32> {
    with_env(&format!("SCFSIM_TEST_MARKER={marker}"))
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}
