//! What the tests read about processes, through the `procfs` crate: the one `/proc` reader of
//! the tests, as `procfs` is scfsim's own.

use procfs::process::{all_processes, Process};

fn process(pid: u32) -> Process {
    Process::new(pid as i32).unwrap_or_else(|e| panic!("process {pid} in /proc: {e}"))
}

/// `pid (comm) state` of each child of `pid`, zombies included.
pub fn children(pid: u32) -> Vec<String> {
    all_processes()
        .expect("/proc")
        .flatten()
        .filter_map(|p| p.stat().ok())
        .filter(|stat| stat.ppid == pid as i32)
        .map(|stat| format!("{} ({}) {}", stat.pid, stat.comm, stat.state))
        .collect()
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
