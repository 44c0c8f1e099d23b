//! Forking an instance: into its cgroups and network namespace, then into the supervisor.
//!
//! With namespaces, scfsim's forked child joins the instance's cgroups and network namespace and
//! execs the supervisor (see [`crate::supervisor`]), which makes the mount and PID namespaces,
//! init, and the bootstrap. Without root, the child makes a user namespace (mapping scfsim's
//! user to root in it) and a network namespace of its own instead. Without namespaces it execs
//! the bootstrap directly.
//!
//! Everything in [`Prepared::run`] runs between fork and exec in a copy of a multi-threaded
//! process, so it uses only raw system calls: no allocation, no locks.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::supervisor::{SupervisorArgs, MAX_OPEN_FILES};

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

/// Processes + threads per instance, as on the platform.
pub(crate) const MAX_PROCESSES: u32 = 1024;

/// Everything the child needs, prepared (and allocated) before the fork.
pub(crate) struct ChildSetup {
    pub netns: Option<RawFd>,
    /// `cgroup.procs` descriptors to join, at most two (memory, pids).
    pub cgroup_procs: Vec<RawFd>,
    /// With namespaces: the supervisor program and what to tell it.
    pub supervised: Option<Supervised>,
    /// Without root: a new user and network namespace, made by the child itself.
    pub user_namespace: Option<UserMaps>,
}

/// The contents of `uid_map` and `gid_map`: scfsim's own ids as root of the new namespace.
#[derive(Debug, Clone)]
pub(crate) struct UserMaps {
    uid_map: CString,
    gid_map: CString,
}

impl UserMaps {
    pub(crate) fn current() -> UserMaps {
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        UserMaps {
            uid_map: CString::new(format!("0 {uid} 1\n")).expect("no NUL"),
            gid_map: CString::new(format!("0 {gid} 1\n")).expect("no NUL"),
        }
    }
}

/// The supervisor to exec, its arguments, the write end of its report pipe and, without root,
/// its end of the socket-factory channel.
pub(crate) struct Supervised {
    pub program: PathBuf,
    pub args: SupervisorArgs,
    pub report: OwnedFd,
    pub control: Option<OwnedFd>,
}

struct Prepared {
    scfsim: libc::pid_t,
    netns: RawFd,
    cgroup_procs: [RawFd; 2],
    /// Descriptors kept open across the exec for the supervisor (report pipe, control
    /// socket); -1 where there is none.
    inherited: [RawFd; 2],
    user_namespace: Option<UserMaps>,
}

/// The command that starts an instance. The caller keeps `setup.supervised`'s report pipe
/// alive until `spawn` returned, then drops its write end.
pub(crate) fn command(spec: &InstanceSpec, setup: &ChildSetup) -> Command {
    let mut cmd = match &setup.supervised {
        Some(supervised) => {
            let mut cmd = Command::new(&supervised.program);
            cmd.arg0("scfsim-keeper")
                .args::<Vec<OsString>, _>(supervised.args.to_args());
            cmd
        }
        None => Command::new(&spec.bootstrap),
    };
    cmd.current_dir(&spec.code_dir).env_clear();
    match &setup.supervised {
        Some(supervised) => cmd.envs(supervised.args.to_env()),
        None => cmd.envs(spec.env.iter().map(|(k, v)| (k, v))),
    };
    cmd.stdin(Stdio::null())
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
        cgroup_procs: procs,
        inherited: setup.supervised.as_ref().map_or([-1; 2], |s| {
            [
                s.report.as_raw_fd(),
                s.control.as_ref().map_or(-1, |c| c.as_raw_fd()),
            ]
        }),
        user_namespace: setup.user_namespace.clone(),
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

impl Prepared {
    fn run(&self) -> io::Result<()> {
        // SAFETY (whole function): raw system calls in the freshly forked child.
        unsafe {
            check(libc::setsid())?;
            // The parent-death signal fires when the forking *thread* ends: instances are
            // spawned from tokio's worker threads, which live as long as scfsim's runtime; a
            // spawn from a short-lived thread (spawn_blocking) would kill its instance early.
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
            if let Some(maps) = &self.user_namespace {
                enter_user_namespace(maps)?;
                // Credentials changed: make sure the parent-death signal still holds.
                check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
                if libc::getppid() != self.scfsim {
                    libc::_exit(1);
                }
            }
            if self.inherited[0] < 0 {
                default_signals();
                return limit_open_files();
            }
            // Only this child's copies lose close-on-exec; scfsim's stay as they were.
            for fd in self.inherited.iter().filter(|fd| **fd >= 0) {
                check(libc::fcntl(*fd, libc::F_SETFD, 0))?;
            }
            Ok(())
        }
    }
}

/// A new user namespace in which scfsim's user is root, and a network namespace it owns with
/// its loopback up. Raw system calls only (see the module doc).
pub(crate) unsafe fn enter_user_namespace(maps: &UserMaps) -> io::Result<()> {
    // SAFETY (whole function): raw system calls on memory prepared before the fork.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET))?;
        // An unprivileged process may map only its own ids, and gid_map only once setgroups
        // is denied.
        write_file(c"/proc/self/setgroups", c"deny")?;
        write_file(c"/proc/self/uid_map", &maps.uid_map)?;
        write_file(c"/proc/self/gid_map", &maps.gid_map)?;
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        check(sock)?;
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        let up = check(libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req)).and_then(|()| {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            check(libc::ioctl(sock, libc::SIOCSIFFLAGS, &req))
        });
        libc::close(sock);
        up
    }
}

unsafe fn write_file(path: &std::ffi::CStr, contents: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY (whole function): raw system calls with valid NUL-terminated strings.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        check(fd)?;
        let len = contents.to_bytes().len();
        let written = libc::write(fd, contents.as_ptr().cast(), len);
        libc::close(fd);
        if written == len as isize {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Every signal at its default disposition, none blocked: what a bootstrap starts with.
/// Raw system calls only, so it may run between fork and exec.
pub(crate) fn default_signals() {
    // The kernel's `struct sigaction`, all zero: SIG_DFL, no flags, empty mask. (Zero is the
    // same whether or not the architecture has `sa_restorer`.) The raw system call, because
    // glibc's `signal` refuses the real-time signals it reserves (32, 33), which a parent may
    // still have left ignored.
    let default = [0u64; 4];
    // SAFETY: rt_sigaction with a valid, zeroed kernel sigaction and the kernel's sigset size;
    // SIGKILL and SIGSTOP cannot be changed and are skipped.
    unsafe {
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    default.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

/// The platform's 1024 open files, for a bootstrap exec'd directly (the supervisor sets its own).
fn limit_open_files() -> io::Result<()> {
    let files = libc::rlimit {
        rlim_cur: MAX_OPEN_FILES,
        rlim_max: MAX_OPEN_FILES,
    };
    // SAFETY: setrlimit with a valid struct.
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &files) })
}
