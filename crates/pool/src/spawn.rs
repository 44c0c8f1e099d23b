//! Forking an instance: into its cgroups and network namespace, then into the supervisor.
//!
//! With namespaces, scfsim's forked child joins the instance's cgroups and network namespace and
//! execs the supervisor (see [`crate::supervisor`]), which makes the mount and PID namespaces,
//! init, and the bootstrap. Without root, the child makes a user namespace (mapping scfsim's
//! user to root in it) and a network namespace of its own instead. Without namespaces it execs
//! the bootstrap directly.
//!
//! Everything in [`Prepared::run`] runs between fork and exec in a copy of a multi-threaded
//! process, so it makes only system calls (nix's thin wrappers, which do not allocate for the
//! arguments used here, or raw ones where nix has none): no allocation, no locks.

use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, open, FcntlArg, FdFlag, OFlag};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::prctl::set_pdeathsig;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use nix::sys::stat::Mode;
use nix::unistd::{getgid, getpid, getppid, getuid, setsid, write, Pid};
use tokio::process::Command;

use crate::supervisor::{SupervisorArgs, MAX_OPEN_FILES};

/// What to start: a bootstrap file, its working directory and its complete environment; or,
/// for an image function, a container image.
#[derive(Debug, Clone, Default)]
pub struct InstanceSpec {
    /// Empty for an image function.
    pub bootstrap: PathBuf,
    /// Empty for an image function.
    pub code_dir: PathBuf,
    /// An image function's container; `None` for a code function.
    pub image: Option<ImageSpec>,
    /// The function's name and the invocation's request id: labels of a container instance.
    pub function: String,
    pub request_id: String,
    /// The function's concurrency quota: bounds what a backend prepares ahead for it.
    pub max_instances: u32,
    /// How many containers a container backend keeps created ahead of demand for the function
    /// (at most `max_instances`).
    pub container_stock: u32,
    /// The whole environment; nothing of scfsim's own leaks in.
    pub env: Vec<(String, String)>,
    /// How long the bootstrap has to start listening on port 9000.
    pub init_timeout: Duration,
    /// The function's memory size; the instance is OOM-killed above it (where cgroups work).
    pub memory_mb: Option<u32>,
    /// Debug mode: the instance's `/var/lang` runs Python under debugpy, and the launcher
    /// hands this tap a way to reach the debugger's port once the instance started.
    pub debug: Option<crate::DebugTap>,
}

/// An image function's container image, with the platform's optional Command and Args.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ImageSpec {
    pub image: String,
    /// Replaces the image's entrypoint.
    pub command: Option<Vec<String>>,
    /// Replaces the image's command.
    pub args: Option<Vec<String>>,
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
        let (uid, gid) = (getuid(), getgid());
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
    /// Parked: the read end of the hand-over pipe.
    pub handover: Option<OwnedFd>,
}

struct Prepared {
    scfsim: Pid,
    netns: RawFd,
    cgroup_procs: [RawFd; 2],
    /// Descriptors kept open across the exec for the supervisor (report pipe, control
    /// socket, hand-over pipe); -1 where there is none.
    inherited: [RawFd; 3],
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
        scfsim: getpid(),
        netns: setup.netns.unwrap_or(-1),
        cgroup_procs: procs,
        inherited: setup.supervised.as_ref().map_or([-1; 3], |s| {
            [
                s.report.as_raw_fd(),
                s.control.as_ref().map_or(-1, |c| c.as_raw_fd()),
                s.handover.as_ref().map_or(-1, |c| c.as_raw_fd()),
            ]
        }),
        user_namespace: setup.user_namespace.clone(),
    };
    // SAFETY: the closure only makes system calls that neither allocate nor lock (see the
    // module doc).
    unsafe {
        cmd.pre_exec(move || prepared.run());
    }
    cmd
}

/// A descriptor that the parent holds open while it spawns.
///
/// # Safety
/// `fd` is open in the parent until `spawn` returned, hence open in this forked copy of it, and
/// nothing here closes it.
unsafe fn inherited(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: see the function's contract.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Ends this process at once: no destructors, no atexit handlers, nothing of a forking
/// parent's state touched (the forked child here, the supervisor's processes). nix has no
/// `_exit`.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and has no preconditions.
    unsafe { libc::_exit(code) }
}

impl Prepared {
    fn run(&self) -> io::Result<()> {
        setsid()?;
        // The parent-death signal fires when the forking *thread* ends: instances are spawned
        // from tokio's worker threads, which live as long as scfsim's runtime; a spawn from a
        // short-lived thread (spawn_blocking) would kill its instance early.
        set_pdeathsig(Signal::SIGKILL)?;
        // scfsim may have died between fork and prctl; then nobody would kill us.
        if getppid() != self.scfsim {
            exit_now(1);
        }
        // Join the cgroups first, so every descendant is counted.
        for fd in self.cgroup_procs.iter().filter(|fd| **fd >= 0) {
            // SAFETY: the cgroup's `cgroup.procs` stays open in scfsim while it spawns.
            if write(unsafe { inherited(*fd) }, b"0")? != 1 {
                return Err(Errno::EIO.into());
            }
        }
        if self.netns >= 0 {
            // SAFETY: the launcher holds the namespace open while it spawns.
            setns(unsafe { inherited(self.netns) }, CloneFlags::CLONE_NEWNET)?;
        }
        if let Some(maps) = &self.user_namespace {
            enter_user_namespace(maps)?;
            // Credentials changed: make sure the parent-death signal still holds.
            set_pdeathsig(Signal::SIGKILL)?;
            if getppid() != self.scfsim {
                exit_now(1);
            }
        }
        if self.inherited[0] < 0 {
            default_signals();
            return limit_open_files();
        }
        // Only this child's copies lose close-on-exec; scfsim's stay as they were.
        for fd in self.inherited.iter().filter(|fd| **fd >= 0) {
            // SAFETY: the supervisor's report pipe and control socket stay open in scfsim
            // while it spawns.
            fcntl(
                unsafe { inherited(*fd) },
                FcntlArg::F_SETFD(FdFlag::empty()),
            )?;
        }
        Ok(())
    }
}

/// A new user namespace in which scfsim's user is root, and a network namespace it owns with
/// its loopback up. It may run between fork and exec: nothing here allocates.
pub(crate) fn enter_user_namespace(maps: &UserMaps) -> io::Result<()> {
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET)?;
    // An unprivileged process may map only its own ids, and gid_map only once setgroups is
    // denied.
    write_file(c"/proc/self/setgroups", c"deny")?;
    write_file(c"/proc/self/uid_map", &maps.uid_map)?;
    write_file(c"/proc/self/gid_map", &maps.gid_map)?;
    // An ioctl, not netlink: it needs no buffers, which matters between fork and exec.
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data, for which all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads into a valid ifreq that names its device; nix has no wrapper
    // for the interface-flag ioctls.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: SIOCGIFFLAGS just filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS with the same valid ifreq; as above, nix has no wrapper.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })?;
    Ok(())
}

fn write_file(path: &CStr, contents: &CStr) -> io::Result<()> {
    let file = open(path, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())?;
    let len = contents.to_bytes().len();
    if write(&file, contents.to_bytes())? == len {
        Ok(())
    } else {
        Err(Errno::EIO.into())
    }
}

/// Every signal at its default disposition, none blocked: what a bootstrap starts with.
/// It may run between fork and exec: nothing here allocates.
pub(crate) fn default_signals() {
    // The kernel's `struct sigaction`, all zero: SIG_DFL, no flags, empty mask. (Zero is the
    // same whether or not the architecture has `sa_restorer`.) The raw system call, because
    // glibc's `sigaction` (and so nix's) refuses the real-time signals it reserves (32, 33),
    // which a parent may still have left ignored.
    let default = [0u64; 4];
    for sig in 1..=64 {
        if sig != Signal::SIGKILL as i32 && sig != Signal::SIGSTOP as i32 {
            // SAFETY: rt_sigaction with a valid, zeroed kernel sigaction, no old-action
            // pointer and the kernel's sigset size; SIGKILL and SIGSTOP cannot be changed and
            // are skipped.
            unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    default.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
            }
        }
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// The platform's 1024 open files, for a bootstrap exec'd directly (the supervisor sets its own).
fn limit_open_files() -> io::Result<()> {
    setrlimit(Resource::RLIMIT_NOFILE, MAX_OPEN_FILES, MAX_OPEN_FILES)?;
    Ok(())
}
