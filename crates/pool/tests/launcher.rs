//! The launcher against real processes (Linux, root: namespaces).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use scfsim_pool::{InstanceSpec, IsolationRequest, Launcher, LauncherOptions, StartFailureKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LISTENER: &str = r#"exec python3 -c "
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 9000)); s.listen()
print('listening', flush=True)
c, _ = s.accept(); c.sendall(b'hi'); c.recv(1)
""#;

fn bootstrap(dir: &Path, body: &str) -> InstanceSpec {
    let path = dir.join("scf_bootstrap");
    std::fs::write(&path, format!("#!/bin/bash\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    InstanceSpec {
        bootstrap: path,
        code_dir: dir.to_path_buf(),
        env: vec![("PATH".into(), std::env::var("PATH").unwrap())],
        init_timeout: Duration::from_secs(20),
        memory_mb: None,
        ..InstanceSpec::default()
    }
}

async fn launcher() -> Launcher {
    let work_dir = std::env::temp_dir().join(format!("scfsim-pool-test-{}", std::process::id()));
    let mut launcher = Launcher::new(LauncherOptions {
        isolation: IsolationRequest::Namespaces,
        image_functions: false,
        runtimes: Default::default(),
        work_dir,
        supervisor: env!("CARGO_BIN_EXE_scfsim-supervisor").into(),
    })
    .expect("tests run as root with namespaces");
    launcher.setup().await.expect("the host setup");
    launcher
}

#[tokio::test]
async fn two_instances_listen_on_port_9000_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let spec = bootstrap(dir.path(), LISTENER);
    let launcher = launcher().await;
    let (a, b) = tokio::join!(launcher.start(&spec), launcher.start(&spec));
    for ready in [a.unwrap(), b.unwrap()] {
        let mut stream = ready.stream;
        let mut buf = [0u8; 2];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        stream.write_all(b"x").await.unwrap();
        let stopped = ready.instance.stop(Duration::from_secs(2)).await;
        assert_eq!(stopped.output.lines[0].line, "listening");
    }
}

#[tokio::test]
async fn exit_before_listening_reports_code_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let spec = bootstrap(dir.path(), "echo about to fail; echo oops >&2; exit 3");
    let failure = launcher().await.start(&spec).await.err().unwrap();
    assert!(
        matches!(failure.kind, StartFailureKind::ExitedBeforeListening { .. }),
        "{:?}",
        failure.kind
    );
    assert_eq!(failure.exit.unwrap().code, Some(3));
    let lines: Vec<_> = failure
        .output
        .lines
        .iter()
        .map(|l| l.line.as_str())
        .collect();
    assert!(
        lines.contains(&"about to fail") && lines.contains(&"oops"),
        "{lines:?}"
    );
    assert!(
        failure.message().contains("exited with code 3"),
        "{}",
        failure.message()
    );
}

#[tokio::test]
async fn never_listening_ends_at_the_init_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = bootstrap(dir.path(), "sleep 1000");
    spec.init_timeout = Duration::from_millis(300);
    let failure = launcher().await.start(&spec).await.err().unwrap();
    assert!(matches!(
        failure.kind,
        StartFailureKind::NotListening { .. }
    ));
}

#[tokio::test]
async fn missing_and_non_executable_bootstraps() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = bootstrap(dir.path(), "true");
    std::fs::set_permissions(&spec.bootstrap, std::fs::Permissions::from_mode(0o644)).unwrap();
    let failure = launcher().await.start(&spec).await.err().unwrap();
    assert!(matches!(
        failure.kind,
        StartFailureKind::BootstrapNotExecutable { .. }
    ));
    spec.bootstrap = dir.path().join("nope");
    let failure = launcher().await.start(&spec).await.err().unwrap();
    assert!(matches!(
        failure.kind,
        StartFailureKind::BootstrapMissing { .. }
    ));
}

#[tokio::test]
async fn bad_interpreter_is_a_spawn_failure() {
    let dir = tempfile::tempdir().unwrap();
    let spec = bootstrap(dir.path(), "true");
    std::fs::write(&spec.bootstrap, "#!/var/lang/nothing/bin/nothing\n").unwrap();
    let failure = launcher().await.start(&spec).await.err().unwrap();
    assert!(
        matches!(failure.kind, StartFailureKind::Spawn { .. }),
        "{failure}"
    );
}

fn running(marker: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline"))
            .map(|cmd| String::from_utf8_lossy(&cmd).contains(marker))
            .unwrap_or(false)
    })
}

#[tokio::test]
async fn stop_ends_daemonized_grandchildren() {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("{}.{}", std::process::id(), 4242);
    let body = format!("setsid sleep {marker} </dev/null >/dev/null 2>&1 &\n{LISTENER}");
    let spec = bootstrap(dir.path(), &body);
    let ready = launcher().await.start(&spec).await.unwrap();
    assert!(
        running(&marker),
        "daemon should run while the instance does"
    );
    let stopped = ready.instance.stop(Duration::from_secs(2)).await;
    assert_eq!(stopped.exit.signal, Some(libc_sigterm()));
    // The namespace's teardown is asynchronous in the kernel; give it a bounded moment.
    for _ in 0..200 {
        if !running(&marker) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("daemonized grandchild survived its instance");
}

fn libc_sigterm() -> i32 {
    15
}
