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
//! A supervisor may be started *parked*, ahead of demand (a hand-over pipe on its command line
//! instead of a function): it makes its namespaces and init as above, then init reports
//! "parked" and waits on the pipe. At a connection scfsim writes the function there (see
//! [`Handover`]): the keeper's name changes from `scfsim-parked` to `scfsim-keeper`, and init
//! enters the function's directory, makes the function's mounts (the ones the keeper makes
//! before the fork otherwise, in the same mount namespace and order) and forks and execs the
//! bootstrap as it always does.
//!
//! Failures before the bootstrap runs (the bootstrap's own exec error above all: a missing
//! interpreter is ENOENT) are written to a report pipe as a stage byte and an errno; scfsim reads
//! that pipe to its end, which comes when the bootstrap's exec closes it.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicI32, Ordering};

use crate::spawn::exit_now;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::mount::{mount, MsFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{unshare, CloneFlags};
use nix::sys::prctl::{set_name, set_pdeathsig};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{kill, signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{chdir, close, execve, fork, getpid, pipe2, read, write, ForkResult, Pid};

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
    Chdir = 10,
    Handover = 11,
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
            Stage::Chdir,
            Stage::Handover,
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
            Stage::Chdir => "entering the function's code directory",
            Stage::Handover => "reading the hand-over to a parked supervisor",
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
    /// Parked: the read end of the pipe on which the function comes (see [`Handover`]), or -1;
    /// the fields below are then empty.
    pub handover_fd: RawFd,
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
            self.handover_fd.to_string().into(),
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
        let handover_fd = args.next()?.into_string().ok()?.parse().ok()?;
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
            handover_fd,
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
    // Only the keeper serves the control socket and only init reads the hand-over pipe; the
    // bootstrap must hold neither.
    for fd in [control, args.handover_fd]
        .into_iter()
        .filter(|fd| *fd >= 0)
    {
        // SAFETY: scfsim passed these open across the exec.
        let _ = fcntl(unsafe { passed(fd) }, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
    let parked = args.handover_fd >= 0;
    let start = if parked {
        Start::Parked(args.handover_fd)
    } else {
        let cstr = |s: OsString| CString::new(s.into_vec()).unwrap_or_default();
        Start::Now(Function {
            cwd: None,
            var_lang: args.var_lang.map(cstr),
            tmp_mb: args.tmp_mb,
            bootstrap: cstr(args.bootstrap),
            env: args.env.into_iter().map(cstr).collect(),
        })
    };
    if unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID).is_err() {
        fail_errno(Stage::Namespaces);
    }
    // Nothing mounted here may propagate back to the host.
    if mount(
        NONE,
        c"/",
        NONE,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        NONE,
    )
    .is_err()
    {
        fail_errno(Stage::Namespaces);
    }
    if let Start::Now(function) = &start {
        mount_function(function);
    }
    let status = pipe();
    let alive = pipe();
    // SAFETY: this process is single-threaded (a fresh exec that started no thread), so the
    // child may do anything the parent could.
    match unsafe { fork() } {
        Err(_) => fail_errno(Stage::Fork),
        Ok(ForkResult::Child) => init(start, status, alive),
        Ok(ForkResult::Parent { child }) => keeper(child, status, alive, control, parked),
    }
}

/// What one function's instance runs, and what it needs mounted.
struct Function {
    /// The working directory to enter, when it is not already this process's (parked).
    cwd: Option<CString>,
    var_lang: Option<CString>,
    tmp_mb: u32,
    bootstrap: CString,
    env: Vec<CString>,
}

/// When init learns what to run: from the command line, or, parked, from scfsim's hand-over
/// (on this descriptor) once a connection needs an instance.
enum Start {
    Now(Function),
    Parked(RawFd),
}

/// The function's own mounts, in the instance's mount namespace (shared by keeper and init).
fn mount_function(function: &Function) {
    if let Some(tree) = &function.var_lang {
        if mount(
            Some(tree.as_c_str()),
            c"/var/lang",
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            NONE,
        )
        .is_err()
        {
            fail_errno(Stage::MountVarLang);
        }
    }
    if function.tmp_mb > 0 {
        let options = CString::new(format!("size={}m,mode=1777", function.tmp_mb)).unwrap();
        if mount(
            Some(c"tmpfs"),
            c"/tmp",
            Some(c"tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_c_str()),
        )
        .is_err()
        {
            fail_errno(Stage::MountTmp);
        }
    }
}

/// The hand-over to a parked supervisor: what scfsim writes on its hand-over pipe. A
/// little-endian `u32` length, then NUL-terminated fields: working directory, bootstrap,
/// `/var/lang` tree (empty for none), private `/tmp` size in MiB, then each `KEY=VALUE` of the
/// bootstrap's environment. (None of these can hold a NUL: they become C strings.)
pub(crate) struct Handover<'a> {
    pub cwd: &'a OsStr,
    pub bootstrap: &'a OsStr,
    pub var_lang: Option<&'a OsStr>,
    pub tmp_mb: u32,
    pub env: &'a [(String, String)],
}

impl Handover<'_> {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let tmp = self.tmp_mb.to_string();
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let fields = [
            self.cwd.as_bytes(),
            self.bootstrap.as_bytes(),
            self.var_lang.map_or(&[][..], |v| v.as_bytes()),
            tmp.as_bytes(),
        ]
        .into_iter()
        .chain(env.iter().map(|kv| kv.as_bytes()));
        let mut body = Vec::new();
        for field in fields {
            body.extend_from_slice(field);
            body.push(0);
        }
        let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
        bytes.extend(body);
        bytes
    }

    fn decode(body: &[u8]) -> Option<Function> {
        let body = body.strip_suffix(&[0])?;
        let mut fields = body.split(|b| *b == 0);
        let mut next = || CString::new(fields.next()?.to_vec()).ok();
        let cwd = next()?;
        let bootstrap = next()?;
        let var_lang = next()?;
        let tmp_mb = next()?.to_str().ok()?.parse().ok()?;
        let env = std::iter::from_fn(next).collect();
        Some(Function {
            cwd: Some(cwd),
            var_lang: (!var_lang.is_empty()).then_some(var_lang),
            tmp_mb,
            bootstrap,
            env,
        })
    }
}

/// Marks on the report pipe of a parked supervisor, before any failure report (stage bytes are
/// below these): init is parked; init received its hand-over.
pub(crate) const REPORT_PARKED: u8 = b'P';
pub(crate) const REPORT_HANDED_OVER: u8 = b'H';

/// Init of a parked supervisor waits here for its function. scfsim letting the supervisor go
/// (its end of the pipe closed with nothing written) ends it.
fn await_handover(handover: RawFd, status_w: RawFd) -> Function {
    report_mark(REPORT_PARKED);
    // SAFETY: the hand-over pipe's read end, passed across the exec, closed only below.
    let fd = unsafe { passed(handover) };
    let mut len = [0u8; 4];
    if !read_exact(fd, &mut len) {
        exit_now(0);
    }
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    if !read_exact(fd, &mut body) {
        exit_now(0);
    }
    let _ = close(handover);
    let Some(function) = Handover::decode(&body) else {
        fail(Stage::Handover, Errno::EINVAL as i32)
    };
    report_mark(REPORT_HANDED_OVER);
    // The keeper names itself after the hand-over, so that process lists tell parked
    // supervisors from instances.
    // SAFETY: status_w is this process's pipe, open until init ends.
    let _ = write(unsafe { passed(status_w) }, &[HANDED_OVER]);
    function
}

fn read_exact(fd: BorrowedFd<'_>, mut buf: &mut [u8]) -> bool {
    while !buf.is_empty() {
        match read(fd, buf) {
            Err(Errno::EINTR) => {}
            Ok(n) if n > 0 => buf = &mut buf[n..],
            _ => return false,
        }
    }
    true
}

fn report_mark(mark: u8) {
    let fd = REPORT_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: scfsim passed the report pipe open across the exec.
        let _ = write(unsafe { passed(fd) }, &[mark]);
    }
}

/// The byte init sends the keeper on the status pipe at a hand-over.
const HANDED_OVER: u8 = 1;

/// `None` for an optional argument of [`mount`].
const NONE: Option<&CStr> = None;

/// A descriptor number scfsim passed across the exec, or one of this process's pipes.
///
/// # Safety
/// `fd` is open, and stays open while the returned value is used.
unsafe fn passed(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: see the function's contract.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// A pipe as two descriptor numbers: the processes below close them by number on their own
/// schedules, across forks.
fn pipe() -> [RawFd; 2] {
    match pipe2(OFlag::O_CLOEXEC) {
        Ok((read, write)) => [read.into_raw_fd(), write.into_raw_fd()],
        Err(_) => fail_errno(Stage::Pipe),
    }
}

fn fail_errno(stage: Stage) -> ! {
    fail(stage, Errno::last_raw())
}

/// Reports a failure to scfsim and exits 127 (as a shell does when it cannot run a command).
fn fail(stage: Stage, errno: i32) -> ! {
    let mut report = [0u8; 5];
    report[0] = stage as u8;
    report[1..].copy_from_slice(&errno.to_le_bytes());
    let fd = REPORT_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: scfsim passed the report pipe open across the exec; only a successful exec
        // of the bootstrap closes it, after which this code no longer runs.
        let _ = write(unsafe { passed(fd) }, &report);
    }
    exit_now(127)
}

/// Closes every descriptor but `keep`.
fn close_all_but(keep: &[RawFd]) {
    // A fresh process holds only what scfsim passed (stdio, the report pipe) and its own pipes;
    // anything else leaked through a descriptor without close-on-exec is closed here as well.
    let max = getrlimit(Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft.min(1 << 20) as RawFd)
        .unwrap_or(1024);
    let mut first = 0;
    let mut sorted = keep.to_vec();
    sorted.sort_unstable();
    for fd in sorted.into_iter().chain([max]) {
        // SAFETY: close_range on this process's own descriptor numbers, none of which is
        // borrowed or owned by anything still in use here; nix has no close_range.
        if fd > first
            && unsafe { libc::syscall(libc::SYS_close_range, first as u32, (fd - 1) as u32, 0u32) }
                != 0
        {
            (first..fd).for_each(|fd| {
                let _ = close(fd);
            });
        }
        first = fd + 1;
    }
}

fn keeper(init: Pid, status: [RawFd; 2], alive: [RawFd; 2], control: RawFd, parked: bool) -> ! {
    let _ = set_name(if parked {
        c"scfsim-parked"
    } else {
        c"scfsim-keeper"
    });
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
    // Stdio and the report pipe go: scfsim reads the bootstrap's output to its end, which
    // must not wait for the keeper. `alive[1]` stays open as long as the keeper lives: init
    // checks it.
    close_all_but(&[status[0], alive[1], control]);
    if control >= 0 {
        serve_sockets(status[0], control);
    }
    if parked {
        let mut byte = [0u8; 1];
        // SAFETY: status[0] is the keeper's end of the status pipe, open while it reads.
        let fd = unsafe { passed(status[0]) };
        if read_exact(fd, &mut byte) && byte[0] == HANDED_OVER {
            let _ = set_name(c"scfsim-keeper");
        }
    }
    let reported = read_status(status[0]);
    let waited = loop {
        match waitpid(init, None) {
            Err(Errno::EINTR) => continue,
            waited => break waited.ok(),
        }
    };
    mirror(reported.or(waited))
}

/// Hands scfsim a new TCP socket of this network namespace for every byte it writes on
/// `control`, until scfsim closes it or the bootstrap's status arrives on `status`.
fn serve_sockets(status: RawFd, control: RawFd) {
    use nix::sys::socket::{
        sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
    };
    // SAFETY: both stay open until this function closes `control` and returns.
    let (status_fd, control_fd) = unsafe { (passed(status), passed(control)) };
    loop {
        let mut fds = [
            PollFd::new(status_fd, PollFlags::POLLIN),
            PollFd::new(control_fd, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(Errno::EINTR) => continue,
            Err(_) => break,
            Ok(_) => {}
        }
        // Any event counts: a closed pipe or socket shows only as POLLHUP.
        if happened(&fds[0]) {
            break;
        }
        if !happened(&fds[1]) {
            continue;
        }
        let mut request = [0u8; 1];
        if read(control_fd, &mut request) != Ok(1) {
            break;
        }
        // Non-blocking: scfsim hands it to its async runtime as it is.
        let socket = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        );
        // A failed socket() is answered without a descriptor: scfsim reports it.
        let passed_fds = socket.as_ref().map(|s| [s.as_raw_fd()]);
        let rights = passed_fds
            .as_ref()
            .map(|fds| [ControlMessage::ScmRights(fds)]);
        let cmsgs: &[ControlMessage] = rights.as_ref().map_or(&[], |r| r);
        let _ = sendmsg::<()>(
            control,
            &[std::io::IoSlice::new(b"s")],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        );
    }
    let _ = close(control);
}

fn happened(fd: &PollFd) -> bool {
    fd.revents().is_none_or(|events| !events.is_empty())
}

fn init(start: Start, status: [RawFd; 2], alive: [RawFd; 2]) -> ! {
    let _ = set_name(c"scfsim-init");
    let _ = set_pdeathsig(Signal::SIGKILL);
    let _ = close(status[0]);
    let _ = close(alive[1]);
    // getppid() is 0 across the namespace boundary, so the keeper's death before the prctl
    // above is seen on the pipe whose only writer it holds.
    {
        // SAFETY: alive[0] is this process's pipe, closed only after this block.
        let mut fds = [PollFd::new(unsafe { passed(alive[0]) }, PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0)
            && fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLHUP))
        {
            exit_now(1);
        }
    }
    let _ = close(alive[0]);
    let function = match start {
        Start::Now(function) => function,
        Start::Parked(handover) => {
            let function = await_handover(handover, status[1]);
            if let Some(cwd) = &function.cwd {
                if chdir(cwd.as_c_str()).is_err() {
                    fail_errno(Stage::Chdir);
                }
            }
            mount_function(&function);
            function
        }
    };
    // A /proc of this PID namespace, so the bootstrap sees itself, not the host.
    if mount(
        Some(c"proc"),
        c"/proc",
        Some(c"proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        NONE,
    )
    .is_err()
    {
        fail_errno(Stage::MountProc);
    }
    // SAFETY: this process is single-threaded (a fork of a single-threaded process).
    match unsafe { fork() } {
        Err(_) => fail_errno(Stage::Fork),
        Ok(ForkResult::Child) => {
            let _ = close(status[1]);
            exec_bootstrap(&function.bootstrap, &function.env)
        }
        Ok(ForkResult::Parent { child }) => reap(child, status[1]),
    }
}

fn exec_bootstrap(bootstrap: &CString, env: &[CString]) -> ! {
    if setrlimit(Resource::RLIMIT_NOFILE, MAX_OPEN_FILES, MAX_OPEN_FILES).is_err() {
        fail_errno(Stage::Limits);
    }
    // The bootstrap gets every signal at its default, as a process the platform starts
    // does: Rust's runtime ignores SIGPIPE in this program, and scfsim may itself have been
    // started with signals ignored (nohup, a script's `&`).
    crate::spawn::default_signals();
    // A successful exec closes the report pipe: scfsim sees its end with nothing in it.
    let report = REPORT_FD.load(Ordering::Relaxed);
    if report >= 0 {
        // SAFETY: scfsim passed the report pipe open across the exec.
        let _ = fcntl(
            unsafe { passed(report) },
            FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC),
        );
    }
    // ETXTBSY: some process still holds the file open for writing — typically a copy of
    // the descriptor that the writer's process handed to a child it forked at that moment,
    // gone at that child's exec. Worth a few short retries rather than a 445.
    for _ in 0..50 {
        let Err(errno) = execve(bootstrap, &[bootstrap], env);
        if errno != Errno::ETXTBSY {
            fail(Stage::Exec, errno as i32);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    fail(Stage::Exec, Errno::ETXTBSY as i32)
}

fn reap(bootstrap: Pid, status_w: RawFd) -> ! {
    close_all_but(&[status_w]);
    let mut reported = false;
    let mut waited_ms = 0u32;
    loop {
        let flags = reported.then_some(WaitPidFlag::WNOHANG);
        match waitpid(None, flags) {
            Ok(status) if status.pid() == Some(bootstrap) => {
                // SAFETY: status_w is this process's pipe, never closed here.
                let _ = write(
                    unsafe { passed(status_w) },
                    &encode_status(status).to_ne_bytes(),
                );
                reported = true;
                // Whatever is left (children, daemons in other sessions) gets the same stop as
                // the bootstrap: SIGTERM, a grace period, then the namespace's end.
                let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
            }
            Err(Errno::EINTR) => {}
            Err(_) => exit_now(0), // no children left
            Ok(WaitStatus::StillAlive) => {
                // The bootstrap is gone; its children get a grace period, then init's exit
                // ends them.
                if waited_ms >= CHILDREN_GRACE_MS {
                    exit_now(0);
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
                waited_ms += 10;
            }
            Ok(_) => {}
        }
    }
}

/// The bootstrap's end as a wait(2) status word, for the pipe from init to the keeper.
fn encode_status(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => (code & 0xff) << 8,
        WaitStatus::Signaled(_, sig, core) => sig as i32 | if core { 0x80 } else { 0 },
        _ => 1 << 8,
    }
}

fn read_status(fd: RawFd) -> Option<WaitStatus> {
    let mut raw = [0u8; 4];
    loop {
        // SAFETY: `fd` is the keeper's end of the status pipe, open while it reads.
        match read(unsafe { passed(fd) }, &mut raw) {
            Err(Errno::EINTR) => continue,
            Ok(4) => return WaitStatus::from_raw(Pid::from_raw(0), i32::from_ne_bytes(raw)).ok(),
            _ => return None,
        }
    }
}

/// Ends the keeper the way the bootstrap ended, so scfsim sees the bootstrap's own status.
fn mirror(status: Option<WaitStatus>) -> ! {
    match status {
        Some(WaitStatus::Signaled(_, sig, _)) => {
            let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
            // SAFETY: SIG_DFL installs no handler code.
            let _ = unsafe { signal(sig, SigHandler::SigDfl) };
            let mut set = SigSet::empty();
            set.add(sig);
            let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
            let _ = kill(getpid(), sig);
            exit_now(128 + sig as i32)
        }
        Some(WaitStatus::Exited(_, code)) => exit_now(code),
        _ => exit_now(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        let mut bytes = vec![Stage::Exec as u8];
        bytes.extend((Errno::ENOENT as i32).to_le_bytes());
        let (stage, err) = decode_report(&bytes).unwrap();
        assert_eq!(stage, Stage::Exec);
        assert_eq!(err.raw_os_error(), Some(Errno::ENOENT as i32));
        assert!(decode_report(&bytes[..3]).is_none());
        assert!(decode_report(&[]).is_none());
        assert!(decode_report(&[99, 0, 0, 0, 0]).is_none());
    }

    #[test]
    fn handovers_round_trip() {
        let env = vec![
            ("A".to_string(), "1".to_string()),
            ("B".into(), "x=y".into()),
        ];
        let handover = Handover {
            cwd: "/code".as_ref(),
            bootstrap: "/code/scf_bootstrap".as_ref(),
            var_lang: None,
            tmp_mb: 512,
            env: &env,
        };
        let bytes = handover.encode();
        let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 4);
        let function = Handover::decode(&bytes[4..]).unwrap();
        assert_eq!(function.cwd.as_deref(), Some(c"/code"));
        assert_eq!(function.bootstrap.as_c_str(), c"/code/scf_bootstrap");
        assert!(function.var_lang.is_none());
        assert_eq!(function.tmp_mb, 512);
        assert_eq!(function.env, vec![c"A=1".to_owned(), c"B=x=y".to_owned()]);
        let with_tree = Handover {
            var_lang: Some("/data/var-lang".as_ref()),
            env: &[],
            ..handover
        };
        let function = Handover::decode(&with_tree.encode()[4..]).unwrap();
        assert_eq!(function.var_lang.as_deref(), Some(c"/data/var-lang"));
        assert!(function.env.is_empty());
        assert!(Handover::decode(b"/code\0").is_none());
    }

    #[test]
    fn arguments_round_trip() {
        let args = SupervisorArgs {
            report_fd: 7,
            control_fd: -1,
            handover_fd: -1,
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
