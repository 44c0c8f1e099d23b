//! What scfsim reads of other processes in `/proc`, through the `procfs` crate (the one reader
//! of `/proc` in the workspace; the benchmark uses it as well).

use procfs::process::Process;

/// Running, not a zombie waiting to be reaped.
pub(crate) fn running(pid: u32) -> bool {
    process(pid)
        .and_then(|p| p.stat().ok())
        .is_some_and(|stat| !matches!(stat.state, 'Z' | 'X'))
}

/// The resident memory of `root` and all its descendants, by `/proc/<pid>/task/*/children`.
/// Pages shared between processes count once per process, so this errs high, never low.
pub(crate) fn tree_rss_bytes(root: u32) -> u64 {
    let page = procfs::page_size();
    let mut pending = vec![root];
    let mut total = 0;
    // Bounded: a fork bomb must not make scfsim walk forever (the pids limit is 1024).
    for _ in 0..4096 {
        let Some(pid) = pending.pop() else { break };
        let Some(process) = process(pid) else {
            continue;
        };
        total += process.statm().map_or(0, |statm| statm.resident) * page;
        let Ok(tasks) = process.tasks() else {
            continue;
        };
        for task in tasks.flatten() {
            pending.extend(task.children().unwrap_or_default());
        }
    }
    total
}

fn process(pid: u32) -> Option<Process> {
    Process::new(i32::try_from(pid).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_runs_and_has_memory() {
        let me = std::process::id();
        assert!(running(me));
        assert!(tree_rss_bytes(me) > 0);
        assert!(!running(u32::MAX));
    }

    #[test]
    fn a_child_counts_in_the_tree_and_a_zombie_does_not_run() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("coreutils' sleep (apt-get install coreutils)");
        let pid = child.id();
        assert!(running(pid));
        child.kill().unwrap();
        // Not reaped yet: a zombie (or already gone from the kill), either way not running.
        let gone = (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            !running(pid)
        });
        child.wait().unwrap();
        assert!(gone, "pid {pid} still running 5 s after SIGKILL");
    }
}
