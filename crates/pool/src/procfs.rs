//! What scfsim reads of other processes in `/proc`.

/// Running, not a zombie waiting to be reaped.
pub(crate) fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        !state.is_some_and(|s| s.starts_with('Z') || s.starts_with('X'))
    })
}

/// The resident memory of `root` and all its descendants, by `/proc/<pid>/task/*/children`.
/// Pages shared between processes count once per process, so this errs high, never low.
pub(crate) fn tree_rss_bytes(root: u32) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let mut pending = vec![root];
    let mut total = 0;
    // Bounded: a fork bomb must not make scfsim walk forever (the pids limit is 1024).
    for _ in 0..4096 {
        let Some(pid) = pending.pop() else { break };
        let resident = std::fs::read_to_string(format!("/proc/{pid}/statm"))
            .ok()
            .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok());
        total += resident.unwrap_or(0) * page;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                pending.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
    total
}
