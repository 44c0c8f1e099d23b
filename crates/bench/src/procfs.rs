//! What the benchmark reads from /proc: memory of a process and of its descendants, CPU time,
//! the process tree. Through the `procfs` crate, as scfsim's own pool does.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use procfs::process::Process;
use procfs::{Current, LoadAverage, Meminfo};

fn process(pid: u32) -> Option<Process> {
    Process::new(i32::try_from(pid).ok()?).ok()
}

/// Resident set size of `pid` in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    process(pid)?.status().ok()?.vmrss
}

/// Proportional set size of `pid` in KiB (shared pages divided among their users).
pub fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = process(pid)?.smaps_rollup().ok()?;
    let bytes: u64 = rollup
        .memory_map_rollup
        .iter()
        .filter_map(|map| map.extension.map.get("Pss"))
        .sum();
    Some(bytes / 1024)
}

/// `MemAvailable` of /proc/meminfo, in KiB.
pub fn mem_available_kib() -> Option<u64> {
    Some(Meminfo::current().ok()?.mem_available? / 1024)
}

/// The 1, 5 and 15 minute load averages: other work on the machine shows here.
pub fn loadavg() -> String {
    LoadAverage::current()
        .map(|l| format!("{} {} {}", l.one, l.five, l.fifteen))
        .unwrap_or_default()
}

/// (pid, ppid, comm) of every process.
fn processes() -> Vec<(u32, u32, String)> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.filter_map(|p| {
        let stat = p.ok()?.stat().ok()?;
        Some((
            u32::try_from(stat.pid).ok()?,
            u32::try_from(stat.ppid).ok()?,
            stat.comm,
        ))
    })
    .collect()
}

/// Command name of a supervisor scfsim keeps started ahead of demand (isolation =
/// "namespaces"). It serves no connection yet, so it is not an instance: counting it would
/// make a drained scfsim look busy and charge its memory to the connections held.
pub const PARKED: &str = "scfsim-parked";

/// Every descendant of `root` (not `root` itself), with its command name.
pub fn descendants(root: u32) -> Vec<(u32, String)> {
    descendants_where(root, |_| true)
}

/// Every descendant of `root` reached through processes `follow` accepts.
fn descendants_where(root: u32, follow: impl Fn(&str) -> bool) -> Vec<(u32, String)> {
    let procs = processes();
    let mut children: HashMap<u32, Vec<(u32, String)>> = HashMap::new();
    for (pid, ppid, comm) in procs {
        children.entry(ppid).or_default().push((pid, comm));
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        if let Some(kids) = children.get(&pid) {
            for (kid, comm) in kids.iter().filter(|(_, comm)| follow(comm)) {
                stack.push(*kid);
                out.push((*kid, comm.clone()));
            }
        }
    }
    out
}

/// Number of direct children of `pid`, parked supervisors aside.
pub fn child_count(pid: u32) -> usize {
    processes()
        .iter()
        .filter(|(_, ppid, comm)| *ppid == pid && comm != PARKED)
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

/// RSS and PSS of every descendant of `root` that belongs to an instance (parked supervisors
/// and what they started aside), summed per command name.
pub fn descendant_memory(root: u32) -> BTreeMap<String, MemGroup> {
    let mut groups: BTreeMap<String, MemGroup> = BTreeMap::new();
    for (pid, comm) in descendants_where(root, |comm| comm != PARKED) {
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
    let Some(tasks) = process(pid).and_then(|p| p.tasks().ok()) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .filter_map(|t| Some(t.ok()?.schedstat().ok()?.sum_exec_runtime))
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

/// `MemTotal` of /proc/meminfo, in KiB.
pub fn mem_total_kib() -> Option<u64> {
    Some(Meminfo::current().ok()?.mem_total / 1024)
}

/// The running kernel's release, as `uname -r` prints it (the procfs crate parses only its
/// numbers).
pub fn kernel_release() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory_and_cpu() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(pss_kib(me).unwrap() > 0);
        assert!(mem_available_kib().unwrap() > 0);
        assert!(cpu_time(me) > Duration::ZERO);
        assert_eq!(loadavg().split(' ').count(), 3);
    }

    #[test]
    fn a_child_is_a_descendant() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("coreutils' sleep (apt-get install coreutils)");
        let found = descendants(std::process::id())
            .into_iter()
            .any(|(pid, comm)| pid == child.id() && comm == "sleep");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found);
    }
}
