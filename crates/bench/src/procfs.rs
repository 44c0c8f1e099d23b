//! What the benchmark reads from /proc: memory of a process and of its descendants, CPU time,
//! the process tree.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// A `kB` field (e.g. `VmRSS:`, `Pss:`) of a /proc file, in KiB.
fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Resident set size of `pid` in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&status, "VmRSS:")
}

/// Proportional set size of `pid` in KiB (shared pages divided among their users).
pub fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    kib_field(&rollup, "Pss:")
}

/// `MemAvailable` of /proc/meminfo, in KiB.
pub fn mem_available_kib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    kib_field(&meminfo, "MemAvailable:")
}

/// The 1, 5 and 15 minute load averages: other work on the machine shows here.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// (pid, ppid, comm) of every process.
fn processes() -> Vec<(u32, u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let name = entry.ok()?.file_name();
        let pid: u32 = name.to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat.get(open + 1..close)?.to_string();
        // After ") ": state, ppid, ...
        let ppid = stat.get(close + 2..)?.split(' ').nth(1)?.parse().ok()?;
        Some((pid, ppid, comm))
    })
    .collect()
}

/// Every descendant of `root` (not `root` itself), with its command name.
pub fn descendants(root: u32) -> Vec<(u32, String)> {
    let procs = processes();
    let mut children: HashMap<u32, Vec<(u32, String)>> = HashMap::new();
    for (pid, ppid, comm) in procs {
        children.entry(ppid).or_default().push((pid, comm));
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        if let Some(kids) = children.get(&pid) {
            for (kid, comm) in kids {
                stack.push(*kid);
                out.push((*kid, comm.clone()));
            }
        }
    }
    out
}

/// Number of direct children of `pid`.
pub fn child_count(pid: u32) -> usize {
    processes()
        .iter()
        .filter(|(_, ppid, _)| *ppid == pid)
        .count()
}

/// Waits (polling) until `pid` has no children, at most `bound`. Returns whether it got there.
pub async fn wait_childless(pid: u32, bound: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if child_count(pid) == 0 {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Memory of a group of processes that share a command name.
#[derive(Debug, Default, Clone)]
pub struct MemGroup {
    pub processes: u64,
    pub rss_kib: u64,
    pub pss_kib: u64,
}

/// RSS and PSS of every descendant of `root`, summed per command name.
pub fn descendant_memory(root: u32) -> BTreeMap<String, MemGroup> {
    let mut groups: BTreeMap<String, MemGroup> = BTreeMap::new();
    for (pid, comm) in descendants(root) {
        let (Some(rss), pss) = (rss_kib(pid), pss_kib(pid)) else {
            continue; // kernel thread or already gone
        };
        let g = groups.entry(comm).or_default();
        g.processes += 1;
        g.rss_kib += rss;
        g.pss_kib += pss.unwrap_or(0);
    }
    groups
}

/// CPU time used so far by every thread of `pid` (from /proc/PID/task/*/schedstat, ns).
/// Threads that have already exited are not counted.
pub fn cpu_time(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .filter_map(|t| {
            let path = t.ok()?.path().join("schedstat");
            let text = std::fs::read_to_string(path).ok()?;
            text.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    Duration::from_nanos(ns)
}

/// CPU time of `pid` and all its descendants that are alive now.
pub fn tree_cpu_time(pid: u32) -> Duration {
    cpu_time(pid)
        + descendants(pid)
            .iter()
            .map(|(p, _)| cpu_time(*p))
            .sum::<Duration>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory_and_cpu() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(mem_available_kib().unwrap() > 0);
        assert!(cpu_time(me) > Duration::ZERO);
    }

    #[test]
    fn kib_fields() {
        let text = "Name:\tx\nVmRSS:\t  1234 kB\nVmSwap:\t0 kB\n";
        assert_eq!(kib_field(text, "VmRSS:"), Some(1234));
        assert_eq!(kib_field(text, "Pss:"), None);
    }
}
