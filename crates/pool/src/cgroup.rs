//! Memory and process limits per instance, with cgroups.
//!
//! Layout: `<controller root>/scfsim-<scfsim pid>-<n>/<instance id>`. The instance's first process
//! joins its cgroups before it forks anything (it writes to `cgroup.procs` descriptors opened
//! here), so every descendant is counted. cgroup v1 (separate `memory` and `pids` hierarchies)
//! is what this machine has and what the tests exercise; a v2 unified hierarchy with the memory
//! and pids controllers available is handled the same way but was not tested here.
//! Directories of a scfsim that died are removed at the next start.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::PoolError;

const V1_MEMORY: &str = "/sys/fs/cgroup/memory";
const V1_PIDS: &str = "/sys/fs/cgroup/pids";
const V2_ROOT: &str = "/sys/fs/cgroup";
const PREFIX: &str = "scfsim-";

#[derive(Debug, Clone)]
enum Layout {
    V1 {
        memory: PathBuf,
        pids: Option<PathBuf>,
    },
    V2 {
        parent: PathBuf,
    },
}

/// This scfsim's cgroup parents, removed when dropped.
#[derive(Debug)]
pub(crate) struct Cgroups {
    layout: Layout,
}

/// One instance's cgroups.
#[derive(Debug)]
pub(crate) struct InstanceCgroup {
    dirs: Vec<PathBuf>,
    procs: Vec<OwnedFd>,
    /// Where the OOM-kill counter is read.
    memory_dir: PathBuf,
    v2: bool,
}

impl Cgroups {
    /// Finds a usable hierarchy and makes this scfsim's parent directories.
    pub(crate) fn setup() -> Result<Cgroups, PoolError> {
        // Several launchers may live in one process (tests): each gets its own parent.
        static LAUNCHERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = LAUNCHERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let me = format!("{PREFIX}{}-{n}", std::process::id());
        let create = |path: PathBuf| match fs::create_dir_all(&path) {
            Ok(()) => Ok(path),
            Err(source) => Err(PoolError::HostFile {
                action: "create the cgroup",
                path,
                source,
            }),
        };
        if Path::new(V1_MEMORY).join("memory.limit_in_bytes").exists() {
            remove_stale(Path::new(V1_MEMORY));
            let memory = create(Path::new(V1_MEMORY).join(&me))?;
            let pids = Path::new(V1_PIDS).join(&me);
            let pids = if Path::new(V1_PIDS).join("cgroup.procs").exists() {
                remove_stale(Path::new(V1_PIDS));
                fs::create_dir_all(&pids).ok().map(|_| pids)
            } else {
                None
            };
            return Ok(Cgroups {
                layout: Layout::V1 { memory, pids },
            });
        }
        let controllers = fs::read_to_string(Path::new(V2_ROOT).join("cgroup.controllers"))
            .map_err(|source| PoolError::NoMemoryController {
                source: Some(source),
            })?;
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return Err(PoolError::NoMemoryController { source: None });
        }
        remove_stale(Path::new(V2_ROOT));
        let parent = create(Path::new(V2_ROOT).join(&me))?;
        let _ = fs::write(
            Path::new(V2_ROOT).join("cgroup.subtree_control"),
            "+memory +pids",
        );
        // From here on, a failure removes the parent again (the drop).
        let cgroups = Cgroups {
            layout: Layout::V2 {
                parent: parent.clone(),
            },
        };
        fs::write(parent.join("cgroup.subtree_control"), "+memory +pids").map_err(|source| {
            PoolError::CgroupControllers {
                path: parent,
                source,
            }
        })?;
        Ok(cgroups)
    }

    pub(crate) fn describe(&self) -> &'static str {
        match self.layout {
            Layout::V1 { pids: Some(_), .. } => "cgroup v1 (memory, pids)",
            Layout::V1 { pids: None, .. } => "cgroup v1 (memory)",
            Layout::V2 { .. } => "cgroup v2 (memory, pids)",
        }
    }

    pub(crate) fn create(
        &self,
        id: &str,
        memory_mb: Option<u32>,
        max_pids: u32,
    ) -> io::Result<InstanceCgroup> {
        let cgroup = match &self.layout {
            Layout::V1 { memory, pids } => {
                let mem = memory.join(id);
                fs::create_dir(&mem)?;
                let mut cg = InstanceCgroup {
                    dirs: vec![mem.clone()],
                    procs: Vec::new(),
                    memory_dir: mem.clone(),
                    v2: false,
                };
                if let Some(mb) = memory_mb {
                    cg.limit_memory(mb)?;
                }
                cg.procs.push(open_procs(&mem)?);
                if let Some(pids) = pids {
                    let dir = pids.join(id);
                    fs::create_dir(&dir)?;
                    cg.dirs.push(dir.clone());
                    fs::write(dir.join("pids.max"), max_pids.to_string())?;
                    cg.procs.push(open_procs(&dir)?);
                }
                cg
            }
            Layout::V2 { parent } => {
                let dir = parent.join(id);
                fs::create_dir(&dir)?;
                let mut cg = InstanceCgroup {
                    procs: Vec::new(),
                    dirs: vec![dir.clone()],
                    memory_dir: dir.clone(),
                    v2: true,
                };
                if let Some(mb) = memory_mb {
                    cg.limit_memory(mb)?;
                }
                fs::write(dir.join("pids.max"), max_pids.to_string())?;
                cg.procs.push(open_procs(&dir)?);
                cg
            }
        };
        Ok(cgroup)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        let parents = match &self.layout {
            Layout::V1 { memory, pids } => {
                let mut v = vec![memory.clone()];
                v.extend(pids.clone());
                v
            }
            Layout::V2 { parent } => vec![parent.clone()],
        };
        for parent in parents {
            remove_tree(&parent);
        }
    }
}

fn open_procs(dir: &Path) -> io::Result<OwnedFd> {
    let file = fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))?;
    Ok(file.into())
}

impl InstanceCgroup {
    /// Descriptors the instance's first process writes "0" to, to join.
    pub(crate) fn procs_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(|fd| fd.as_raw_fd()).collect()
    }

    /// Sets the memory limit: at creation, or when a parked supervisor's cgroup gets its
    /// function.
    pub(crate) fn limit_memory(&self, mb: u32) -> io::Result<()> {
        let bytes = (u64::from(mb) * 1024 * 1024).to_string();
        if self.v2 {
            fs::write(self.memory_dir.join("memory.max"), &bytes)?;
            let _ = fs::write(self.memory_dir.join("memory.swap.max"), "0");
        } else {
            fs::write(self.memory_dir.join("memory.limit_in_bytes"), &bytes)?;
            // Swap counts too, where the kernel accounts it.
            let _ = fs::write(self.memory_dir.join("memory.memsw.limit_in_bytes"), &bytes);
        }
        Ok(())
    }

    /// [`InstanceCgroup::remove`] for a drop, where nothing can be awaited: blocks up to
    /// `bound` while the processes just killed exit.
    pub(crate) fn remove_blocking(mut self, bound: Duration) {
        self.procs.clear();
        let until = std::time::Instant::now() + bound;
        loop {
            self.dirs
                .retain(|d| fs::remove_dir(d).is_err() && d.exists());
            if self.dirs.is_empty() || std::time::Instant::now() >= until {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// True once the kernel has OOM-killed a process of this instance.
    pub(crate) fn oom_killed(&self) -> bool {
        let (file, key) = if self.v2 {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        fs::read_to_string(self.memory_dir.join(file))
            .ok()
            .and_then(|text| {
                text.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse::<u64>().ok()).flatten()
                })
            })
            .is_some_and(|n| n > 0)
    }

    /// Removes the directories once their processes are gone (which the kernel finishes a
    /// moment after the last one is reaped).
    pub(crate) async fn remove(mut self) {
        self.procs.clear();
        for _ in 0..100 {
            self.dirs
                .retain(|d| fs::remove_dir(d).is_err() && d.exists());
            if self.dirs.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::warn!(dirs = ?self.dirs, "cgroup directories still busy; left for the next start");
        self.dirs.clear();
    }
}

impl Drop for InstanceCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Removes `scfsim-<pid>` directories whose scfsim is no longer running.
fn remove_stale(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !pid.parse().is_ok_and(crate::procfs::running) {
            remove_tree(&entry.path());
        }
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(children) = fs::read_dir(dir) {
        for child in children.flatten() {
            if child.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                let _ = fs::remove_dir(child.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}
