//! Forking a bootstrap into its namespaces.
//!
//! With PID namespaces the process tree of one instance is:
//!
//! ```text
//! scfsim ─ keeper (host PID namespace; the pid scfsim waits on; session + group leader)
//!            └─ init (PID 1 of a new PID namespace; reaps; exits when the bootstrap exits)
//!                 └─ scf_bootstrap (exec'd) ─ its children …
//! ```
//!
//! When init exits the kernel kills everything left in its namespace, daemonized grandchildren
//! included. The keeper dies with scfsim (parent-death signal, SIGKILL), init dies with the
//! keeper (same), so nothing survives a SIGKILL of scfsim. The keeper mirrors the bootstrap's
//! exit status (code or signal) so scfsim records the bootstrap's real end. The keeper ignores
//! SIGTERM so that a stop request reaches the bootstrap's process group without cutting its
//! grace period short; init, being PID 1, is immune to it anyway.
//!
//! Everything below runs between fork and exec in a copy of a multi-threaded process, so it uses
//! only async-signal-safe system calls: no allocation, no locks.

use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;
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
}

pub(crate) fn command(spec: &InstanceSpec, netns: Option<RawFd>, pid_namespace: bool) -> Command {
    let mut cmd = Command::new(&spec.bootstrap);
    cmd.current_dir(&spec.code_dir)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: getpid has no preconditions.
    let scfsim = unsafe { libc::getpid() };
    let netns = netns.unwrap_or(-1);
    // SAFETY: the closure only makes async-signal-safe system calls (see the module doc).
    unsafe {
        cmd.pre_exec(move || setup_child(scfsim, netns, pid_namespace));
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

fn setup_child(scfsim: libc::pid_t, netns: RawFd, pid_namespace: bool) -> io::Result<()> {
    // SAFETY (whole function): raw system calls in the freshly forked child.
    unsafe {
        check(libc::setsid())?;
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
        // scfsim may have died between fork and prctl; then nobody would kill us.
        if libc::getppid() != scfsim {
            libc::_exit(1);
        }
        if netns >= 0 {
            check(libc::setns(netns, libc::CLONE_NEWNET))?;
        }
        if !pid_namespace {
            return Ok(());
        }
        check(libc::unshare(libc::CLONE_NEWPID))?;
        let mut pipe = [0 as libc::c_int; 2];
        check(libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC))?;
        let (status_r, status_w) = (pipe[0], pipe[1]);
        match libc::fork() {
            -1 => return Err(io::Error::last_os_error()),
            0 => {}
            init => keeper(init, status_r, status_w),
        }
        // PID 1 of the new namespace. (Its parent's death cannot be re-checked here: getppid()
        // is 0 across the namespace boundary. The window is a few instructions long.)
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::close(status_r);
        match libc::fork() {
            -1 => libc::_exit(127),
            0 => {
                libc::close(status_w);
                Ok(()) // the bootstrap: std goes on to exec it
            }
            bootstrap => init(bootstrap, status_w),
        }
    }
}

/// Closes every descriptor but `keep`: the keeper and init never exec, and must not hold other
/// connections' sockets (or std's exec-error pipe) open.
unsafe fn close_all_but(keep: RawFd) {
    // SAFETY: close_range on descriptor ranges of this process only.
    unsafe {
        if keep > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, (keep - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (keep + 1) as u32, u32::MAX, 0u32);
    }
}

unsafe fn keeper(init: libc::pid_t, status_r: RawFd, status_w: RawFd) -> ! {
    // SAFETY (whole function): raw system calls in a forked, single-threaded child.
    unsafe {
        libc::close(status_w);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
            libc::signal(sig, libc::SIG_IGN);
        }
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        close_all_but(status_r);
        let mut reported: libc::c_int = 0;
        let got = read_full(status_r, &mut reported);
        let mut waited: libc::c_int = 0;
        while libc::waitpid(init, &mut waited, 0) < 0 {
            if *libc::__errno_location() != libc::EINTR {
                break;
            }
        }
        mirror(if got { reported } else { waited })
    }
}

unsafe fn init(bootstrap: libc::pid_t, status_w: RawFd) -> ! {
    // SAFETY (whole function): raw system calls in a forked, single-threaded child.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        close_all_but(status_w);
        loop {
            let mut status: libc::c_int = 0;
            let pid = libc::waitpid(-1, &mut status, 0);
            if pid == bootstrap {
                libc::write(
                    status_w,
                    (&status as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>(),
                );
                libc::_exit(0);
            }
            if pid < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(0);
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
        // SAFETY: errno is thread-local.
        if n < 0 && unsafe { *libc::__errno_location() } == libc::EINTR {
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
