//! Outbound access beyond the host: the instances' traffic is forwarded and masqueraded behind
//! the host's own address, the way a container bridge network reaches the internet.
//!
//! What scfsim changes on the host, and how it is undone:
//! - an nftables table `ip scfsim_<pid>_<n>` (a masquerade rule for 169.254.0.0/16 leaving through
//!   any interface but an instance's, and a rule that keeps instances from reaching each other),
//!   deleted when scfsim stops, and by the next scfsim to start if this one crashed;
//! - `net.ipv4.ip_forward`, set to 1 if it was 0; the old value is kept in
//!   `/run/scfsim/ip_forward.orig` and put back when the last scfsim using NAT stops (each
//!   marks itself with `/run/scfsim/nat-<pid>_<n>`), or, after a crash, when the next one starts and
//!   finds no other alive;
//! - on a host whose firewall drops forwarded traffic (Docker's engine, ufw), two rules that
//!   accept the instances' traffic there, removed like the table (see [`crate::firewall`]).
//!
//! Needs nftables' `nft`; without it instances reach the host only.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::PoolError;

const TABLE_PREFIX: &str = "scfsim_";
/// Launchers of this process so far: a process (a test binary) may run several.
static LAUNCHERS: AtomicU32 = AtomicU32::new(0);
const STATE_DIR: &str = "/run/scfsim";
const USER_PREFIX: &str = "nat-";
const ORIGINAL: &str = "ip_forward.orig";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// NAT for this scfsim's instances, removed on drop.
#[derive(Debug)]
pub(crate) struct Outbound {
    table: String,
    /// This scfsim's `nat-<pid>` file: it relies on forwarding.
    user: PathBuf,
    /// Whether forwarding was off before scfsim (this one or another) turned it on.
    forwarding_changed: bool,
    /// Rules in the host's firewall, if it drops forwarded traffic (Docker's engine does).
    firewall: crate::firewall::Allowance,
}

impl Outbound {
    /// Sets up forwarding and NAT, or says why not.
    pub(crate) fn enable() -> Result<Outbound, PoolError> {
        if !runs(Command::new("nft").arg("--version")) {
            return Err(PoolError::NftMissing);
        }
        // Another scfsim starting or stopping at the same time must not undo ip_forward
        // between our look at the markers and our own marker.
        let _lock = state_lock();
        remove_stale();
        let id = format!(
            "{}_{}",
            std::process::id(),
            LAUNCHERS.fetch_add(1, Ordering::Relaxed)
        );
        let table = format!("{TABLE_PREFIX}{id}");
        // First: dropped (rules removed) if anything below fails.
        let firewall = crate::firewall::Allowance::grant(&id)
            .map_err(|source| PoolError::Firewall { source })?;
        // `oifname != "sv*"`: traffic between instances' links is never masqueraded, and is
        // dropped in forward: instances do not see each other, as on the platform.
        let rules = format!(
            "table ip {table} {{\n\
               chain postrouting {{\n\
                 type nat hook postrouting priority srcnat; policy accept;\n\
                 ip saddr 169.254.0.0/16 oifname != \"sv*\" masquerade\n\
               }}\n\
               chain forward {{\n\
                 type filter hook forward priority filter; policy accept;\n\
                 iifname \"sv*\" oifname \"sv*\" drop\n\
               }}\n\
             }}\n"
        );
        nft_script(&rules)?;
        let state = Path::new(STATE_DIR);
        let user = state.join(format!("{USER_PREFIX}{id}"));
        // From here on, a failure undoes what was done (the drop).
        let mut outbound = Outbound {
            table,
            user: user.clone(),
            forwarding_changed: false,
            firewall,
        };
        fs::create_dir_all(state)
            .and_then(|()| fs::write(&user, ""))
            .map_err(|source| host_file("write", &user, source))?;
        let forwarding = fs::read_to_string(IP_FORWARD)
            .map_err(|source| host_file("read", Path::new(IP_FORWARD), source))?;
        let original = state.join(ORIGINAL);
        if forwarding.trim() == "1" {
            outbound.forwarding_changed = original.exists();
            return Ok(outbound);
        }
        fs::write(&original, forwarding.trim())
            .map_err(|source| host_file("record the old ip_forward in", &original, source))?;
        fs::write(IP_FORWARD, "1")
            .map_err(|source| host_file("write 1 to", Path::new(IP_FORWARD), source))?;
        outbound.forwarding_changed = true;
        Ok(outbound)
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "the internet through NAT (nftables table ip {}{}{})",
            self.table,
            self.firewall
                .describe()
                .map_or_else(String::new, |d| format!(", {d}")),
            if self.forwarding_changed {
                ", and net.ipv4.ip_forward = 1 until scfsim stops"
            } else {
                ""
            }
        )
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        let _lock = state_lock();
        let _ = nft_script(&format!("delete table ip {}\n", self.table));
        let _ = fs::remove_file(&self.user);
        // Also what a crashed scfsim left, if it crashed while this one ran.
        remove_stale();
    }
}

/// An exclusive lock on `/run/scfsim/lock`, held by every scfsim while it changes the shared
/// state (markers, ip_forward); released when dropped. `None` if it cannot be had, in which
/// case scfsim goes on unlocked rather than not at all.
fn state_lock() -> Option<nix::fcntl::Flock<fs::File>> {
    fs::create_dir_all(STATE_DIR).ok()?;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(Path::new(STATE_DIR).join("lock"))
        .ok()?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).ok()
}

fn runs(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn host_file(action: &'static str, path: &Path, source: std::io::Error) -> PoolError {
    PoolError::HostFile {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn nft_script(script: &str) -> Result<(), PoolError> {
    let spawn = |source| PoolError::NftSpawn { source };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(PoolError::Nft {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The pid in `<pid>_<n>`.
fn owner(id: &str) -> Option<u32> {
    id.split('_').next()?.parse().ok()
}

/// Tables, firewall rules and forwarding markers of scfsims that are no longer running.
fn remove_stale() {
    crate::firewall::remove_stale();
    if let Ok(out) = Command::new("nft").args(["list", "tables"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.strip_prefix("table ip ") else {
                continue;
            };
            let dead = name
                .strip_prefix(TABLE_PREFIX)
                .and_then(owner)
                .is_some_and(|pid| !crate::procfs::running(pid));
            if dead {
                let _ = nft_script(&format!("delete table ip {name}\n"));
            }
        }
    }
    for (pid, user) in users() {
        if !crate::procfs::running(pid) {
            let _ = fs::remove_file(user);
        }
    }
    restore_forwarding_if_unused();
}

/// The scfsims (pids) that use NAT, by their marker files.
fn users() -> Vec<(u32, PathBuf)> {
    let Ok(entries) = fs::read_dir(STATE_DIR) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let pid = owner(name.strip_prefix(USER_PREFIX)?)?;
            Some((pid, e.path()))
        })
        .collect()
}

/// Puts the ip_forward that scfsim found back, once no live scfsim uses NAT.
fn restore_forwarding_if_unused() {
    if users()
        .into_iter()
        .any(|(pid, _)| crate::procfs::running(pid))
    {
        return;
    }
    let original = Path::new(STATE_DIR).join(ORIGINAL);
    if let Ok(old) = fs::read_to_string(&original) {
        if matches!(old.trim(), "0" | "1") {
            let _ = fs::write(IP_FORWARD, old.trim());
        }
        let _ = fs::remove_file(original);
    }
}
