//! The reaper: a process of scfsim's own binary that removes every container of one scfsim run
//! once that scfsim is gone, however it ended (conventions: nothing outlives its owner, as
//! Testcontainers' Ryuk does it).
//!
//! scfsim starts it in the Docker backend's setup with a pipe on its stdin and keeps the write
//! end; nothing is ever written. When scfsim ends, by its own exit or by SIGKILL, the kernel
//! closes that end, the reaper's read returns end-of-file, and it force-removes the containers
//! labelled with the run (talking to the same engine, named by the same environment), then
//! exits. It runs in a process group of its own, so that a signal to scfsim's group (a
//! terminal's Ctrl-C) does not end it before scfsim.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

use bollard::query_parameters::ListContainersOptionsBuilder;

use super::{engine_from_env, remove, LABEL_RUN, REAPER_ARG};

/// The running reaper, seen from scfsim: dropping it (or scfsim's death) lets it do its work.
pub(crate) struct Reaper {
    stdin: Option<ChildStdin>,
    child: Option<Child>,
}

impl Reaper {
    /// Starts `program` (scfsim's binary) as the reaper of `run`.
    pub(crate) fn spawn(program: &Path, run: &str) -> io::Result<Reaper> {
        let mut child = Command::new(program)
            .arg0("scfsim-reaper")
            .arg(REAPER_ARG)
            .arg(run)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()?;
        Ok(Reaper {
            stdin: child.stdin.take(),
            child: Some(child),
        })
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            // Reaped when it is done, so that a long-lived process leaves no zombie.
            std::thread::spawn(move || child.wait());
        }
    }
}

/// The reaper's `main`: waits for scfsim's end, removes the run's containers, exits.
pub(crate) fn main(mut args: impl Iterator<Item = OsString>) -> ! {
    let Some(run) = args.next().and_then(|r| r.into_string().ok()) else {
        eprintln!("scfsim-reaper: usage: {REAPER_ARG} RUN");
        std::process::exit(2);
    };
    // Nothing is written: this returns when scfsim's end closes.
    let mut sink = [0u8; 64];
    let mut stdin = io::stdin();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("scfsim-reaper: cannot start a runtime: {err}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(remove_run(&run));
    std::process::exit(code)
}

async fn remove_run(run: &str) -> i32 {
    let mut engine = match engine_from_env() {
        Ok(engine) => engine,
        Err(err) => {
            eprintln!("scfsim-reaper: {}", crate::error::with_sources(&err));
            return 1;
        }
    };
    if let Err(err) = engine.negotiate().await {
        eprintln!("scfsim-reaper: {}", crate::error::with_sources(&err));
        return 1;
    }
    let filters = HashMap::from([("label", vec![format!("{LABEL_RUN}={run}")])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let containers = match engine.client.list_containers(Some(options)).await {
        Ok(containers) => containers,
        Err(err) => {
            eprintln!("scfsim-reaper: listing run {run}'s containers: {err}");
            return 1;
        }
    };
    let mut code = 0;
    for id in containers.into_iter().filter_map(|c| c.id) {
        if let Err(err) = remove(&engine.client, &id).await {
            eprintln!("scfsim-reaper: removing container {id}: {err}");
            code = 1;
        }
    }
    code
}
