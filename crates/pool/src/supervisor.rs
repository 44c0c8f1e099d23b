//! The instance supervisor: a small program of its own between scfsim and a bootstrap.
//!
//! scfsim's forked child joins the instance's cgroups and network namespace, then execs this
//! program (scfsim's own binary, or any binary whose `main` calls
//! [`crate::run_supervisor_if_requested`] first). Being a fresh process, it costs a few hundred
//! KiB instead of a copy-on-write image of scfsim that grows with every connection scfsim holds.
//!
//! ```text
//! scfsim ─ keeper (this program; host PID namespace; the pid scfsim waits on; session and group
//!            │     leader; own mount namespace with /var/lang mounted; in the instance's cgroups)
//!            └─ init (PID 1 of a new PID namespace; mounts its /proc; reaps; ends with the bootstrap)
//!                 └─ scf_bootstrap (exec'd) ─ its children …
//! ```
//!
//! When init exits the kernel kills everything left in its namespace, daemonized grandchildren
//! included. The keeper dies with scfsim (parent-death signal, SIGKILL, set before the exec),
//! init dies with the keeper (same, plus a check that closes the race before its parent-death
//! signal is set), so nothing survives a SIGKILL of scfsim. The keeper mirrors the bootstrap's
//! exit status (code or signal) so scfsim records the bootstrap's real end. The keeper ignores
//! SIGTERM so that a stop request reaches the bootstrap's process group without cutting its
//! grace period short; init, being PID 1, is immune to it anyway. When the bootstrap exits, init
//! sends SIGTERM to everything left in the namespace and gives it a grace period before its own
//! exit ends it.
//!
//! Without root, scfsim cannot enter the instance's network namespace (that needs
//! CAP_SYS_ADMIN where scfsim runs), so the keeper, which is inside it, makes the TCP sockets
//! scfsim connects to port 9000 with: one per byte scfsim writes on the control socket, passed
//! back with SCM_RIGHTS.
//!
//! Failures before the bootstrap runs (the bootstrap's own exec error above all: a missing
//! interpreter is ENOENT) are written to a report pipe as a stage byte and an errno; scfsim reads
//! that pipe to its end, which comes when the bootstrap's exec closes it.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStringExt;
use std::sync::atomic::{AtomicI32, Ordering};

/// The argument (after the program name) that makes a binary run as a supervisor.
pub const SUPERVISOR_ARG: &str = "__scfsim-instance-supervisor";

/// The descriptor on which the supervisor reports a failure to scfsim (from its arguments).
static REPORT_FD: AtomicI32 = AtomicI32::new(-1);

/// Open files per instance, as on the platform.
pub(crate) const MAX_OPEN_FILES: u64 = 1024;

/// How long init lets what the bootstrap left behind finish after a SIGTERM, once the bootstrap
/// itself exited. Shorter than scfsim's own stop grace, so that a stop that began with SIGTERM
/// still sees the bootstrap's real exit status rather than its own SIGKILL.
const CHILDREN_GRACE_MS: u32 = 1000;

/// Where a supervisor failed, as reported on its report pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Stage {
    Namespaces = 2,
    MountVarLang = 3,
    MountTmp = 4,
    Fork = 5,
    Limits = 6,
    MountProc = 8,
    Pipe = 9,
    /// The bootstrap's own exec: its errors are the function's (status 445), all others scfsim's.
    Exec = 7,
}

impl Stage {
    pub(crate) fn from_byte(byte: u8) -> Option<Stage> {
        [
            Stage::Namespaces,
            Stage::MountVarLang,
            Stage::MountTmp,
            Stage::Fork,
            Stage::Limits,
            Stage::MountProc,
            Stage::Pipe,
            Stage::Exec,
        ]
        .into_iter()
        .find(|s| *s as u8 == byte)
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Stage::Namespaces => "creating the instance's mount and PID namespaces",
            Stage::MountVarLang => "mounting the runtime tree on /var/lang",
            Stage::MountTmp => "mounting the instance's private /tmp",
            Stage::Fork => "forking the instance's init or bootstrap",
            Stage::MountProc => "mounting the instance's own /proc",
            Stage::Pipe => "creating the supervisor's pipes",
            Stage::Limits => "setting the instance's open-file limit",
            Stage::Exec => "executing the bootstrap",
        }
    }
}

/// A report read back by scfsim: the stage and the OS error.
pub(crate) fn decode_report(bytes: &[u8]) -> Option<(Stage, io::Error)> {
    let (&stage, errno) = bytes.split_first()?;
    let errno = i32::from_le_bytes(errno.get(..4)?.try_into().ok()?);
    Some((
        Stage::from_byte(stage)?,
        io::Error::from_raw_os_error(errno),
    ))
}

/// What scfsim passes on the supervisor's command line.
pub(crate) struct SupervisorArgs {
    /// The write end of the report pipe, inherited across the exec.
    pub report_fd: RawFd,
    /// The socket-factory channel (without root), or -1.
    pub control_fd: RawFd,
    /// The generated runtime tree to mount on `/var/lang`, if any.
    pub var_lang: Option<OsString>,
    /// The instance's private `/tmp` size in MiB, or 0 for the host's `/tmp`.
    pub tmp_mb: u32,
    pub bootstrap: OsString,
    /// The bootstrap's whole environment, `KEY=VALUE`. It travels in the supervisor's own
    /// environment (private to its user, unlike the command line), each name behind
    /// [`ENV_PREFIX`], so that nothing in a function's `env` (`LD_PRELOAD`, say) applies to the
    /// supervisor itself.
    pub env: Vec<OsString>,
}

/// Marks the bootstrap's variables in the supervisor's environment.
pub(crate) const ENV_PREFIX: &str = "SCFSIM_BOOTSTRAP_ENV_";

impl SupervisorArgs {
    pub(crate) fn to_args(&self) -> Vec<OsString> {
        vec![
            SUPERVISOR_ARG.into(),
            self.report_fd.to_string().into(),
            self.control_fd.to_string().into(),
            self.var_lang.clone().unwrap_or_default(),
            self.tmp_mb.to_string().into(),
            self.bootstrap.clone(),
        ]
    }

    /// The supervisor's environment: the bootstrap's, each name prefixed.
    pub(crate) fn to_env(&self) -> Vec<(OsString, OsString)> {
        self.env
            .iter()
            .filter_map(|kv| {
                let kv = kv.to_str()?;
                let (k, v) = kv.split_once('=')?;
                Some((format!("{ENV_PREFIX}{k}").into(), v.into()))
            })
            .collect()
    }

    fn parse(
        mut args: impl Iterator<Item = OsString>,
        vars: impl Iterator<Item = (OsString, OsString)>,
    ) -> Option<SupervisorArgs> {
        let report_fd = args.next()?.into_string().ok()?.parse().ok()?;
        let control_fd = args.next()?.into_string().ok()?.parse().ok()?;
        let var_lang = args.next()?;
        let tmp_mb = args.next()?.into_string().ok()?.parse().ok()?;
        let bootstrap = args.next()?;
        let env = vars
            .filter_map(|(k, v)| {
                let k = k.to_str()?.strip_prefix(ENV_PREFIX)?;
                let mut kv = OsString::from(format!("{k}="));
                kv.push(v);
                Some(kv)
            })
            .collect();
        Some(SupervisorArgs {
            report_fd,
            control_fd,
            var_lang: (!var_lang.is_empty()).then_some(var_lang),
            tmp_mb,
            bootstrap,
            env,
        })
    }
}

/// The supervisor's `main`: never returns.
pub(crate) fn main(args: impl Iterator<Item = OsString>) -> ! {
    let Some(args) = SupervisorArgs::parse(args, std::env::vars_os()) else {
        eprintln!("scfsim: this program is started by scfsim for each function instance");
        std::process::exit(2)
    };
    REPORT_FD.store(args.report_fd, Ordering::Relaxed);
    let control = args.control_fd;
    if control >= 0 {
        // Only the keeper serves it; init and the bootstrap must not hold it.
        // SAFETY: fcntl on a descriptor this process owns.
        unsafe { libc::fcntl(control, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let cstr = |s: OsString| CString::new(s.into_vec()).unwrap_or_default();
    let var_lang = args.var_lang.map(cstr);
    let bootstrap = cstr(args.bootstrap);
    let env: Vec<CString> = args.env.into_iter().map(cstr).collect();
    // SAFETY (whole block): a fresh, single-threaded process making plain system calls.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWPID) < 0 {
            fail_errno(Stage::Namespaces);
        }
        // Nothing mounted here may propagate back to the host.
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) < 0
        {
            fail_errno(Stage::Namespaces);
        }
        if let Some(tree) = &var_lang {
            if libc::mount(
                tree.as_ptr(),
                c"/var/lang".as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ) < 0
            {
                fail_errno(Stage::MountVarLang);
            }
        }
        if args.tmp_mb > 0 {
            let options = CString::new(format!("size={}m,mode=1777", args.tmp_mb)).unwrap();
            if libc::mount(
                c"tmpfs".as_ptr(),
                c"/tmp".as_ptr(),
                c"tmpfs".as_ptr(),
                (libc::MS_NOSUID | libc::MS_NODEV) as libc::c_ulong,
                options.as_ptr().cast(),
            ) < 0
            {
                fail_errno(Stage::MountTmp);
            }
        }
        let status = pipe();
        let alive = pipe();
        match libc::fork() {
            -1 => fail_errno(Stage::Fork),
            0 => init(bootstrap, env, status, alive),
            init => keeper(init, status, alive, control),
        }
    }
}

fn pipe() -> [RawFd; 2] {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 into a two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        fail_errno(Stage::Pipe);
    }
    fds
}

fn fail_errno(stage: Stage) -> ! {
    fail(
        stage,
        io::Error::last_os_error().raw_os_error().unwrap_or(0),
    )
}

/// Reports a failure to scfsim and exits 127 (as a shell does when it cannot run a command).
fn fail(stage: Stage, errno: i32) -> ! {
    let mut report = [0u8; 5];
    report[0] = stage as u8;
    report[1..].copy_from_slice(&errno.to_le_bytes());
    // SAFETY: writing a local buffer, then exiting without running anything else.
    unsafe {
        libc::write(
            REPORT_FD.load(Ordering::Relaxed),
            report.as_ptr().cast(),
            report.len(),
        );
        libc::_exit(127)
    }
}

fn errno() -> libc::c_int {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn set_name(name: &std::ffi::CStr) {
    // SAFETY: PR_SET_NAME with a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

/// Closes every descriptor but `keep`.
fn close_all_but(keep: &[RawFd]) {
    // A fresh process holds only what scfsim passed (stdio, the report pipe) and its own pipes;
    // anything else leaked through a descriptor without close-on-exec is closed here as well.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on this process's own descriptors.
    unsafe {
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur.min(1 << 20) as RawFd
        } else {
            1024
        };
        let mut first = 0;
        let mut sorted = keep.to_vec();
        sorted.sort_unstable();
        for fd in sorted.into_iter().chain([max]) {
            if fd > first
                && libc::syscall(libc::SYS_close_range, first as u32, (fd - 1) as u32, 0u32) != 0
            {
                (first..fd).for_each(|fd| {
                    libc::close(fd);
                });
            }
            first = fd + 1;
        }
    }
}

fn keeper(init: libc::pid_t, status: [RawFd; 2], alive: [RawFd; 2], control: RawFd) -> ! {
    set_name(c"scfsim-keeper");
    // SAFETY (whole function): plain system calls in a single-threaded process.
    unsafe {
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
            libc::signal(sig, libc::SIG_IGN);
        }
        // Stdio and the report pipe go: scfsim reads the bootstrap's output to its end, which
        // must not wait for the keeper. `alive[1]` stays open as long as the keeper lives:
        // init checks it.
        close_all_but(&[status[0], alive[1], control]);
        if control >= 0 {
            serve_sockets(status[0], control);
        }
        let mut reported: libc::c_int = 0;
        let got = read_status(status[0], &mut reported);
        let mut waited: libc::c_int = 0;
        while libc::waitpid(init, &mut waited, 0) < 0 {
            if errno() != libc::EINTR {
                break;
            }
        }
        mirror(if got { reported } else { waited })
    }
}

/// Hands scfsim a new TCP socket of this network namespace for every byte it writes on
/// `control`, until scfsim closes it or the bootstrap's status arrives on `status`.
fn serve_sockets(status: RawFd, control: RawFd) {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let mut fds = [
        libc::pollfd {
            fd: status,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: control,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    while fds[1].fd >= 0 {
        // SAFETY (whole loop): plain system calls on this process's descriptors.
        unsafe {
            if libc::poll(fds.as_mut_ptr(), 2, -1) < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                break;
            }
            if fds[0].revents != 0 {
                break;
            }
            if fds[1].revents == 0 {
                continue;
            }
            let mut request = [0u8; 1];
            if libc::read(control, request.as_mut_ptr().cast(), 1) != 1 {
                libc::close(control);
                fds[1].fd = -1;
                continue;
            }
            // Non-blocking: scfsim hands it to its async runtime as it is.
            let socket = libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            );
            let passed = [socket];
            let rights = [ControlMessage::ScmRights(&passed)];
            // A failed socket() is answered without a descriptor: scfsim reports it.
            let cmsgs: &[ControlMessage] = if socket >= 0 { &rights } else { &[] };
            let _ = sendmsg::<()>(
                control,
                &[std::io::IoSlice::new(b"s")],
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            );
            if socket >= 0 {
                libc::close(socket);
            }
        }
    }
    if fds[1].fd >= 0 {
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(control) };
    }
}

fn init(bootstrap: CString, env: Vec<CString>, status: [RawFd; 2], alive: [RawFd; 2]) -> ! {
    set_name(c"scfsim-init");
    // SAFETY (whole function): plain system calls in a single-threaded process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::close(status[0]);
        libc::close(alive[1]);
        // getppid() is 0 across the namespace boundary, so the keeper's death before the prctl
        // above is seen on the pipe whose only writer it holds.
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
        if libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC) as libc::c_ulong,
            std::ptr::null(),
        ) < 0
        {
            fail_errno(Stage::MountProc);
        }
        match libc::fork() {
            -1 => fail_errno(Stage::Fork),
            0 => {
                libc::close(status[1]);
                exec_bootstrap(&bootstrap, &env)
            }
            pid => reap(pid, status[1]),
        }
    }
}

fn exec_bootstrap(bootstrap: &CString, env: &[CString]) -> ! {
    // SAFETY (whole function): plain system calls in a single-threaded process.
    unsafe {
        let files = libc::rlimit {
            rlim_cur: MAX_OPEN_FILES,
            rlim_max: MAX_OPEN_FILES,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &files) < 0 {
            fail_errno(Stage::Limits);
        }
        // The bootstrap gets every signal at its default, as a process the platform starts
        // does: Rust's runtime ignores SIGPIPE in this program, and scfsim may itself have been
        // started with signals ignored (nohup, a script's `&`).
        crate::spawn::default_signals();
        // A successful exec closes the report pipe: scfsim sees its end with nothing in it.
        libc::fcntl(
            REPORT_FD.load(Ordering::Relaxed),
            libc::F_SETFD,
            libc::FD_CLOEXEC,
        );
        let argv = [bootstrap.as_ptr(), std::ptr::null()];
        let envp: Vec<*const libc::c_char> = env
            .iter()
            .map(|kv| kv.as_ptr())
            .chain([std::ptr::null()])
            .collect();
        // ETXTBSY: some process still holds the file open for writing — typically a copy of
        // the descriptor that the writer's process handed to a child it forked at that moment,
        // gone at that child's exec. Worth a few short retries rather than a 445.
        for _ in 0..50 {
            libc::execve(bootstrap.as_ptr(), argv.as_ptr(), envp.as_ptr());
            if errno() != libc::ETXTBSY {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        fail_errno(Stage::Exec)
    }
}

fn reap(bootstrap: libc::pid_t, status_w: RawFd) -> ! {
    close_all_but(&[status_w]);
    // SAFETY (whole function): plain system calls in a single-threaded process.
    unsafe {
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
                std::thread::sleep(std::time::Duration::from_millis(10));
                waited_ms += 10;
            }
        }
    }
}

fn read_status(fd: RawFd, out: &mut libc::c_int) -> bool {
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
fn mirror(status: libc::c_int) -> ! {
    // SAFETY: plain system calls in a single-threaded process.
    unsafe {
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        let mut bytes = vec![Stage::Exec as u8];
        bytes.extend(libc::ENOENT.to_le_bytes());
        let (stage, err) = decode_report(&bytes).unwrap();
        assert_eq!(stage, Stage::Exec);
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        assert!(decode_report(&bytes[..3]).is_none());
        assert!(decode_report(&[]).is_none());
        assert!(decode_report(&[99, 0, 0, 0, 0]).is_none());
    }

    #[test]
    fn arguments_round_trip() {
        let args = SupervisorArgs {
            report_fd: 7,
            control_fd: -1,
            var_lang: Some("/data/var-lang".into()),
            tmp_mb: 512,
            bootstrap: "/code/scf_bootstrap".into(),
            env: vec!["A=1".into(), "B=x=y".into()],
        };
        let parsed = SupervisorArgs::parse(
            args.to_args().into_iter().skip(1),
            args.to_env().into_iter(),
        )
        .unwrap();
        assert_eq!(parsed.var_lang.as_deref(), Some("/data/var-lang".as_ref()));
        assert_eq!(parsed.tmp_mb, 512);
        assert_eq!(parsed.report_fd, 7);
        assert_eq!(parsed.control_fd, -1);
        assert_eq!(parsed.bootstrap, "/code/scf_bootstrap");
        assert_eq!(parsed.env, vec!["A=1", "B=x=y"]);
        let none = SupervisorArgs {
            var_lang: None,
            ..args
        };
        let parsed =
            SupervisorArgs::parse(none.to_args().into_iter().skip(1), std::iter::empty()).unwrap();
        assert!(parsed.var_lang.is_none());
    }
}
