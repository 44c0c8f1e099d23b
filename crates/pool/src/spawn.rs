//! Forking a bootstrap into its namespaces and cgroups.
//!
//! With namespaces the process tree of one instance is:
//!
//! ```text
//! scfsim ─ keeper (host PID namespace; the pid scfsim waits on; session + group leader;
//!            │     own mount namespace with /var/lang mounted; joined the instance's cgroups)
//!            └─ init (PID 1 of a new PID namespace; mounts its /proc; reaps; ends with the bootstrap)
//!                 └─ scf_bootstrap (exec'd) ─ its children …
//! ```
//!
//! When init exits the kernel kills everything left in its namespace, daemonized grandchildren
//! included. The keeper dies with scfsim (parent-death signal, SIGKILL), init dies with the
//! keeper (same, plus a check that closes the race before its parent-death signal is set), so
//! nothing survives a SIGKILL of scfsim. The keeper mirrors the bootstrap's exit status (code
//! or signal) so scfsim records the bootstrap's real end. The keeper ignores SIGTERM so that a
//! stop request reaches the bootstrap's process group without cutting its grace period short;
//! init, being PID 1, is immune to it anyway. When the bootstrap exits, init sends SIGTERM to
//! everything left in the namespace and gives it a grace period before its own exit ends it.
//!
//! Everything below runs between fork and exec in a copy of a multi-threaded process, so it uses
//! only raw system calls: no allocation, no locks, no libc `fork` (whose atfork handlers are not
//! async-signal-safe): children are made with the `clone` system call.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// What to start: a bootstrap file, its working directory and its complete environment.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub bootstrap: PathBuf,
    pub code_dir: PathBuf,
    /// The whole environment; nothing of scfsim's own leaks in.
    pub env: Vec<(String, String)>,
    /// How long the bootstrap has to start listening on port 9000.
    pub init_timeout: Duration,
    /// The function's memory size; the instance is OOM-killed above it (where cgroups work).
    pub memory_mb: Option<u32>,
}

/// Open files per instance, as on the platform.
pub(crate) const MAX_OPEN_FILES: u64 = 1024;
/// Processes + threads per instance, as on the platform.
pub(crate) const MAX_PROCESSES: u32 = 1024;
/// How long init lets what the bootstrap left behind finish after a SIGTERM, once the bootstrap
/// itself exited. Shorter than scfsim's own stop grace, so that a stop that began with SIGTERM
/// still sees the bootstrap's real exit status rather than its own SIGKILL.
const CHILDREN_GRACE_MS: u32 = 1000;

/// Everything the child needs, prepared (and allocated) before the fork.
pub(crate) struct ChildSetup {
    pub netns: Option<RawFd>,
    pub pid_namespace: bool,
    /// `cgroup.procs` descriptors to join, at most two (memory, pids).
    pub cgroup_procs: Vec<RawFd>,
    /// The generated runtime tree to mount on `/var/lang`.
    pub var_lang: Option<PathBuf>,
}

struct Prepared {
    scfsim: libc::pid_t,
    netns: RawFd,
    pid_namespace: bool,
    cgroup_procs: [RawFd; 2],
    var_lang: Option<CString>,
}

fn cstr(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("paths from the filesystem have no NUL")
}

pub(crate) fn command(spec: &InstanceSpec, setup: ChildSetup) -> Command {
    let mut cmd = Command::new(&spec.bootstrap);
    cmd.current_dir(&spec.code_dir)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut procs = [-1; 2];
    for (slot, fd) in procs.iter_mut().zip(&setup.cgroup_procs) {
        *slot = *fd;
    }
    let prepared = Prepared {
        // SAFETY: getpid has no preconditions.
        scfsim: unsafe { libc::getpid() },
        netns: setup.netns.unwrap_or(-1),
        pid_namespace: setup.pid_namespace,
        cgroup_procs: procs,
        var_lang: setup.var_lang.as_deref().map(cstr),
    };
    // SAFETY: the closure only makes raw system calls (see the module doc).
    unsafe {
        cmd.pre_exec(move || prepared.run());
    }
    cmd
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn errno() -> libc::c_int {
    // SAFETY: errno is thread-local.
    unsafe { *libc::__errno_location() }
}

/// fork(2) without libc's atfork handlers.
unsafe fn raw_fork() -> libc::pid_t {
    // SAFETY: clone with only SIGCHLD and no new stack behaves as fork.
    unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        ) as libc::pid_t
    }
}

impl Prepared {
    fn run(&self) -> io::Result<()> {
        // SAFETY (whole function): raw system calls in the freshly forked child.
        unsafe {
            check(libc::setsid())?;
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
            // scfsim may have died between fork and prctl; then nobody would kill us.
            if libc::getppid() != self.scfsim {
                libc::_exit(1);
            }
            // Join the cgroups first, so every descendant is counted.
            for fd in self.cgroup_procs.iter().filter(|fd| **fd >= 0) {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if self.netns >= 0 {
                check(libc::setns(self.netns, libc::CLONE_NEWNET))?;
            }
            if !self.pid_namespace {
                return limit_open_files();
            }
            check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWPID))?;
            // Nothing mounted here may propagate back to the host.
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            if let Some(tree) = &self.var_lang {
                check(libc::mount(
                    tree.as_ptr(),
                    c"/var/lang".as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
            }
            let mut status = [0 as libc::c_int; 2];
            check(libc::pipe2(status.as_mut_ptr(), libc::O_CLOEXEC))?;
            let mut alive = [0 as libc::c_int; 2];
            check(libc::pipe2(alive.as_mut_ptr(), libc::O_CLOEXEC))?;
            match raw_fork() {
                -1 => return Err(io::Error::last_os_error()),
                0 => {}
                init => keeper(init, status, alive),
            }
            // PID 1 of the new namespace.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::close(status[0]);
            libc::close(alive[1]);
            // getppid() is 0 across the namespace boundary, so the keeper's death before the
            // prctl above is seen on the pipe whose only writer it holds.
            let mut poll = libc::pollfd {
                fd: alive[0],
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut poll, 1, 0) > 0 && poll.revents & libc::POLLHUP != 0 {
                libc::_exit(1);
            }
            libc::close(alive[0]);
            // A /proc of this PID namespace, so the bootstrap sees itself, not the host.
            libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC) as libc::c_ulong,
                std::ptr::null(),
            );
            libc::signal(libc::SIGCHLD, libc::SIG_DFL);
            match raw_fork() {
                -1 => libc::_exit(127),
                0 if limit_open_files().is_err() => libc::_exit(127),
                0 => {
                    libc::close(status[1]);
                    Ok(()) // the bootstrap: std goes on to exec it
                }
                bootstrap => init(bootstrap, status[1]),
            }
        }
    }
}

/// The platform's 1024 open files, for the bootstrap only: set after the keeper and init made
/// their pipes, because until the bootstrap's exec they still hold copies of scfsim's own
/// descriptors (numbered past 1024 once scfsim serves a few hundred connections).
fn limit_open_files() -> io::Result<()> {
    let files = libc::rlimit {
        rlim_cur: MAX_OPEN_FILES,
        rlim_max: MAX_OPEN_FILES,
    };
    // SAFETY: setrlimit with a valid struct.
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &files) })
}

/// Closes every descriptor but `keep` (two, possibly equal): the keeper and init never exec,
/// and must not hold other connections' sockets (or std's exec-error pipe) open.
unsafe fn close_all_but(keep: [RawFd; 2]) {
    let (lo, hi) = (keep[0].min(keep[1]), keep[0].max(keep[1]));
    let range = |first: RawFd, last: RawFd| -> bool {
        // SAFETY: closing descriptors of this (forked, single-threaded) process only.
        first > last
            || unsafe { libc::syscall(libc::SYS_close_range, first as u32, last as u32, 0u32) } == 0
    };
    if range(0, lo - 1) && range(lo + 1, hi - 1) && range(hi + 1, RawFd::MAX) {
        return;
    }
    // close_range is missing (kernel < 5.9) or filtered (some seccomp profiles).
    // SAFETY: plain system calls on this process's own descriptors.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur.min(1 << 20) as RawFd
        } else {
            1024
        };
        for fd in (0..max).filter(|fd| !keep.contains(fd)) {
            libc::close(fd);
        }
    }
}

unsafe fn keeper(init: libc::pid_t, status: [RawFd; 2], alive: [RawFd; 2]) -> ! {
    // SAFETY (whole function): raw system calls in a forked, single-threaded child.
    unsafe {
        libc::close(status[1]);
        libc::close(alive[0]);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
            libc::signal(sig, libc::SIG_IGN);
        }
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        // `alive[1]` stays open as long as the keeper lives: init checks it.
        close_all_but([status[0], alive[1]]);
        let mut reported: libc::c_int = 0;
        let got = read_full(status[0], &mut reported);
        let mut waited: libc::c_int = 0;
        while libc::waitpid(init, &mut waited, 0) < 0 {
            if errno() != libc::EINTR {
                break;
            }
        }
        mirror(if got { reported } else { waited })
    }
}

unsafe fn init(bootstrap: libc::pid_t, status_w: RawFd) -> ! {
    // SAFETY (whole function): raw system calls in a forked, single-threaded child.
    unsafe {
        close_all_but([status_w, status_w]);
        let mut reported = false;
        let mut waited_ms = 0u32;
        loop {
            let mut status: libc::c_int = 0;
            let flags = if reported { libc::WNOHANG } else { 0 };
            let pid = libc::waitpid(-1, &mut status, flags);
            if pid == bootstrap {
                libc::write(
                    status_w,
                    (&status as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>(),
                );
                reported = true;
                // Whatever is left (children, daemons in other sessions) gets the same stop as
                // the bootstrap: SIGTERM, a grace period, then the namespace's end.
                libc::kill(-1, libc::SIGTERM);
                continue;
            }
            if pid < 0 && errno() == libc::EINTR {
                continue;
            }
            if pid < 0 {
                libc::_exit(0); // no children left
            }
            if pid == 0 {
                // The bootstrap is gone; its children get a grace period, then init's exit
                // ends them.
                if waited_ms >= CHILDREN_GRACE_MS {
                    libc::_exit(0);
                }
                let pause = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 10_000_000,
                };
                libc::nanosleep(&pause, std::ptr::null_mut());
                waited_ms += 10;
            }
        }
    }
}

unsafe fn read_full(fd: RawFd, out: &mut libc::c_int) -> bool {
    let want = std::mem::size_of::<libc::c_int>();
    loop {
        // SAFETY: reading into a c_int-sized buffer we own.
        let n = unsafe { libc::read(fd, (out as *mut libc::c_int).cast(), want) };
        if n == want as isize {
            return true;
        }
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        return false;
    }
}

/// Ends the keeper the way the bootstrap ended, so scfsim sees the bootstrap's own status.
unsafe fn mirror(status: libc::c_int) -> ! {
    // SAFETY: raw system calls in a forked, single-threaded child.
    unsafe {
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            // The keeper is a copy of scfsim's memory: never let it dump core.
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
            libc::_exit(128 + sig);
        }
        libc::_exit(if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            1
        })
    }
}
