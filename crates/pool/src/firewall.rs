//! Allowances in the host's own firewall for the instances' forwarded traffic.
//!
//! scfsim's NAT ([`crate::outbound`]) forwards the instances' packets, but a packet is forwarded
//! only if every netfilter base chain on the forward hook accepts it: an accept in scfsim's own
//! nftables table does not override a DROP in the chain that iptables keeps. Docker's engine sets
//! iptables' `FORWARD` policy to DROP (and offers the `DOCKER-USER` chain for other software's
//! rules); ufw and hand-made firewalls do the same with a DROP policy. On such a host scfsim adds
//! two rules where that firewall looks first, `DOCKER-USER` if it exists, else `FORWARD` when
//! its policy is DROP, limited to the instances' host-side links (`sv*`):
//! - in from an instance, out through anything but another instance's link: accept;
//! - out to an instance: accept only what belongs to a connection (ESTABLISHED, RELATED), so
//!   nothing beyond the host can open a connection to an instance.
//!
//! Through the `iptables` command, which writes to the backend the host chose (nftables or
//! legacy xtables) like Docker and ufw do; a library would only wrap that same command. Each
//! rule carries the comment `scfsim_<pid>_<n>` (the name of the NAT's nftables table too): the
//! rules go when that scfsim stops, or, if it crashed, when the next scfsim starts.
//!
//! Not covered: firewalld with its nftables backend (its own table, rules it rewrites on every
//! reload), and a firewall that starts dropping after scfsim started (a dockerd started later).

use std::io;
use std::process::{Command, Stdio};

/// How the comment on scfsim's rules starts; the rest is `<pid>_<n>`.
const MARK_PREFIX: &str = "scfsim_";
/// The chain Docker's engine keeps for the rules of others, jumped to first from `FORWARD`.
const DOCKER_USER: &str = "DOCKER-USER";
const FORWARD: &str = "FORWARD";
/// At most this long waiting for the legacy backend's xtables lock (another program changing
/// rules at the same moment); nftables' backend needs no lock and ignores it.
const LOCK_WAIT_SECONDS: &str = "5";

/// The host's firewall would not take scfsim's rules; the host's setup is at fault, not the
/// function's or the client's.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot run the host's `iptables {args}`")]
    Run {
        args: String,
        #[source]
        source: io::Error,
    },
    #[error("the host's firewall refused `iptables {args}`: {stderr}")]
    Refused { args: String, stderr: String },
}

/// scfsim's rules in the host's firewall, removed on drop. Holds no rule when the host's
/// firewall lets forwarded traffic through anyway.
#[derive(Debug)]
pub(crate) struct Allowance {
    mark: String,
    chain: Option<&'static str>,
}

impl Allowance {
    /// Adds the rules if the host's firewall drops forwarded traffic. `id` is `<pid>_<n>` of this
    /// scfsim (and launcher).
    pub(crate) fn grant(id: &str) -> Result<Allowance, FirewallError> {
        let mut allowance = Allowance {
            mark: format!("{MARK_PREFIX}{id}"),
            chain: None,
        };
        let Some(chain) = dropping_chain() else {
            return Ok(allowance);
        };
        // From here on a failure removes what was added (the drop).
        allowance.chain = Some(chain);
        let mark = allowance.mark.as_str();
        // Inserted at the top, in this order: replies first, they are the most packets.
        let outgoing = ["-i", "sv+", "!", "-o", "sv+"];
        let replies = ["-o", "sv+", "-m", "conntrack"];
        let replies_state = ["--ctstate", "RELATED,ESTABLISHED"];
        let marked = ["-m", "comment", "--comment", mark, "-j", "ACCEPT"];
        let insert = ["-I", chain, "1"];
        iptables(&[&insert[..], &outgoing, &marked].concat())?;
        iptables(&[&insert[..], &replies, &replies_state, &marked].concat())?;
        Ok(allowance)
    }

    /// Where the rules are, for the startup log; `None` if none was needed.
    pub(crate) fn describe(&self) -> Option<String> {
        self.chain.map(|chain| {
            format!("forwarding accepted for the instances' links in iptables' {chain} chain")
        })
    }
}

impl Drop for Allowance {
    fn drop(&mut self) {
        if self.chain.is_some() {
            remove_marked(|mark| mark == self.mark);
        }
    }
}

/// Removes the rules of scfsims that are no longer running (crashed, killed).
pub(crate) fn remove_stale() {
    remove_marked(|mark| {
        mark.strip_prefix(MARK_PREFIX)
            .and_then(|id| id.split('_').next()?.parse::<u32>().ok())
            .is_some_and(|pid| !crate::procfs::running(pid))
    });
}

/// The chain that decides, if the host's firewall drops forwarded traffic by default. A host
/// whose rules cannot be read (no `iptables`, a table iptables cannot parse) gets no rules, as
/// before scfsim knew of firewalls.
fn dropping_chain() -> Option<&'static str> {
    if iptables(&["-S", DOCKER_USER]).is_ok() {
        return Some(DOCKER_USER);
    }
    let forward = iptables(&["-S", FORWARD]).ok()?;
    forward
        .lines()
        .any(|line| line.trim() == "-P FORWARD DROP")
        .then_some(FORWARD)
}

/// Deletes every rule of the filter table whose scfsim comment satisfies `remove`.
fn remove_marked(remove: impl Fn(&str) -> bool) {
    let Ok(rules) = iptables(&["-S"]) else {
        return;
    };
    for rule in rules.lines() {
        // `iptables -S` prints each rule as the arguments that add it: `-A CHAIN spec…`. The
        // comments scfsim writes have no spaces, so splitting on whitespace gives those
        // arguments back (quotes, where a backend adds them, removed).
        let args: Vec<&str> = rule
            .split_whitespace()
            .map(|a| a.trim_matches('"'))
            .collect();
        let Some(("-A", spec)) = args.split_first().map(|(first, rest)| (*first, rest)) else {
            continue;
        };
        let marked = spec.windows(2).any(|pair| {
            pair[0] == "--comment" && pair[1].starts_with(MARK_PREFIX) && remove(pair[1])
        });
        if marked {
            let _ = iptables(&[&["-D"], spec].concat());
        }
    }
}

/// Runs `iptables -w <seconds> args…` and returns what it printed, or why it failed.
fn iptables(args: &[&str]) -> Result<String, FirewallError> {
    let out = Command::new("iptables")
        .args(["-w", LOCK_WAIT_SECONDS])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| FirewallError::Run {
            args: args.join(" "),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(FirewallError::Refused {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_sources_names_every_cause_once() {
        let err = FirewallError::Run {
            args: "-S".into(),
            source: io::Error::new(io::ErrorKind::NotFound, "No such file or directory"),
        };
        assert_eq!(
            crate::error::with_sources(&err),
            "cannot run the host's `iptables -S`: No such file or directory"
        );
    }
}
