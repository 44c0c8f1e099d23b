//! Instances as the platform runs them: unchanged bootstraps calling /var/lang runtimes, the
//! instance's limits, and nothing left behind after many connections.

use scfsim_e2e::procs::{fd_count, parked, parked_cgroups, rss_kib, scfsim_mounts};
use scfsim_e2e::{fixture_bin, repo_root, Function, Options, Scfsim};
use serde_json::Value;

#[tokio::test]
async fn a_platform_bootstrap_calling_var_lang_python3_runs_unchanged() {
    let server = repo_root().join("examples/echo/server.py");
    let scfsim = Scfsim::start(vec![Function::script(
        "py",
        &format!("/var/lang/python3/bin/python3 {}", server.display()),
    )])
    .await;
    let mut client = scfsim.connect("/py").await;
    client.send_text("through /var/lang").await;
    client.expect_text("through /var/lang").await;
    client.close(1000, "").await;
    assert_eq!(scfsim.record(&client.request_id).await["status_code"], 200);
}

#[tokio::test]
async fn a_runtime_that_is_not_installed_is_405_naming_it_and_the_config_key() {
    // A default runtime whose command this machine lacks (php, else java): its /var/lang path
    // is a stub that says so.
    let on_path = |command: &str| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path).any(|dir| dir.join(command).is_file())
    };
    let (runtime, command) = [("php7/bin/php", "php"), ("java8/bin/java", "java")]
        .into_iter()
        .find(|(_, command)| !on_path(command))
        .expect(
            "php and java are both installed here: this test needs a runtime that is not \
             (remove one, e.g. `apt-get remove php-cli`)",
        );
    let missing = format!("/var/lang/{runtime}");
    let scfsim = Scfsim::start(vec![Function::script(
        "php",
        &format!("{missing} index.{command}"),
    )])
    .await;
    let err = scfsim.connect_with("/php", &[]).await.err().unwrap();
    let (status, _, body) = scfsim_e2e::refused(err);
    assert_eq!(status, 502);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status_code"], 405);
    let message = body["error"].as_str().unwrap();
    assert!(message.contains(&missing), "{message}");
    assert!(message.contains("[runtimes]"), "{message}");
}

#[tokio::test]
async fn runtimes_in_the_config_map_var_lang_paths() {
    let scfsim = Scfsim::start_with(
        vec![Function::script("custom", "/var/lang/custom1/bin/run echo")],
        Options {
            extra_toml: format!(
                "[runtimes]\n\"custom1/bin/run\" = {:?}\n",
                fixture_bin().display().to_string()
            ),
            ..Options::default()
        },
    )
    .await;
    let mut client = scfsim.connect("/custom").await;
    client.send_text("mapped").await;
    client.expect_text("mapped").await;
}

#[tokio::test]
async fn the_instance_has_the_platforms_limits_and_its_own_proc() {
    let body = format!(
        "echo \"nofile=$(ulimit -n)\"\n\
         echo \"pids.max=$(cat /sys/fs/cgroup/pids$(grep ':pids:' /proc/self/cgroup | cut -d: -f3)/pids.max)\"\n\
         echo \"memory.limit=$(cat /sys/fs/cgroup/memory$(grep ':memory:' /proc/self/cgroup | cut -d: -f3)/memory.limit_in_bytes)\"\n\
         echo \"processes=$(ls /proc | grep -c '^[0-9]')\"\n\
         echo \"sigign=$(grep SigIgn /proc/self/status | cut -f2)\"\n\
         touch /tmp/scfsim-instance-write-test && echo tmp-writable\n\
         exec {} echo",
        fixture_bin().display()
    );
    let scfsim = Scfsim::start(vec![
        Function::script("limits", &body).set("memory_mb", "256")
    ])
    .await;
    let mut client = scfsim.connect("/limits").await;
    client.close(1000, "").await;
    scfsim.record(&client.request_id).await;
    let lines = scfsim.log_lines(&client.request_id).await;
    assert!(lines.contains(&"nofile=1024".to_string()), "{lines:?}");
    assert!(lines.contains(&"pids.max=1024".to_string()), "{lines:?}");
    assert!(
        lines.contains(&format!("memory.limit={}", 256 * 1024 * 1024)),
        "{lines:?}"
    );
    assert!(lines.contains(&"tmp-writable".to_string()), "{lines:?}");
    // Nothing ignored (Rust ignores SIGPIPE in scfsim; the bootstrap must not). Measured in a
    // child of the bootstrap: bash ignores SIGQUIT for itself, not for what it runs.
    assert!(
        lines.contains(&"sigign=0000000000000000".to_string()),
        "{lines:?}"
    );
    // Its own PID namespace and /proc: init, the bootstrap, and the subshell counting.
    let processes: usize = lines
        .iter()
        .find_map(|l| l.strip_prefix("processes="))
        .expect("process count line")
        .parse()
        .unwrap();
    assert!(
        processes < 10,
        "the instance sees the host's processes: {processes}"
    );
}

#[tokio::test]
async fn going_over_memory_mb_ends_with_434() {
    let body = format!(
        "(sleep 0.5; exec python3 -c \"a = b'x' * (400 * 1024 * 1024); import time; time.sleep(60)\") &\n\
         exec {} echo",
        fixture_bin().display()
    );
    let scfsim = Scfsim::start(vec![Function::script("hog", &body).set("memory_mb", "128")]).await;
    let mut client = scfsim.connect("/hog").await;
    let (code, reason) = client.expect_close().await;
    assert_eq!(code, 1011);
    assert!(reason.contains("memory"), "{reason}");
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 434, "{record:#}");
    assert_eq!(record["end_reason"], "memory_limit");
}

/// Children of `pid` (zombies included) and scfsim cgroups of `pid`, but for its parked
/// supervisors and their cgroups.
fn leftovers(pid: u32) -> (Vec<String>, usize) {
    let children = scfsim_e2e::children(pid);
    let parked = parked_cgroups(pid);
    let cgroups = scfsim_cgroups(pid)
        .into_iter()
        .map(|parent| {
            std::fs::read_dir(parent)
                .map(|d| {
                    d.flatten()
                        .filter(|c| c.path().is_dir() && !parked.contains(&c.path()))
                        .count()
                })
                .unwrap_or(0)
        })
        .sum();
    (children, cgroups)
}

#[tokio::test]
async fn a_thousand_connections_leave_nothing_behind() {
    const CYCLES: usize = 1000;
    let scfsim = Scfsim::start(vec![Function::fixture("echo", &["echo"])]).await;
    let pid = scfsim.pid();
    let cycle = |i: usize| {
        let scfsim = &scfsim;
        async move {
            let mut client = scfsim.connect("/echo").await;
            client.send_text(&i.to_string()).await;
            client.expect_text(&i.to_string()).await;
            client.close(1000, "").await;
            client.request_id
        }
    };
    // Warm up: thread pools, allocator arenas and buffers reach their working size.
    for i in 0..50 {
        let id = cycle(i).await;
        scfsim.record(&id).await;
    }
    let fds = fd_count(pid);
    let rss = rss_kib(pid);
    let mounts = scfsim_mounts(pid);
    let mut last = String::new();
    for i in 0..CYCLES {
        last = cycle(i).await;
    }
    scfsim.record(&last).await;
    let failed = scfsim
        .get("/api/invocations?status_code=200&limit=10000")
        .await;
    assert!(
        failed.as_array().unwrap().len() >= CYCLES,
        "every cycle recorded as 200"
    );

    // Instances are reaped and their cgroups removed a moment after their records are
    // written; wait for that (bounded), then compare.
    scfsim
        .eventually("the instances to be reaped and their cgroups removed", || async {
            let (children, cgroups) = leftovers(pid);
            let open = fd_count(pid);
            if children.is_empty() && cgroups == 0 && open <= fds {
                Ok(())
            } else {
                Err(format!(
                    "left behind: children {children:?}, cgroups {cgroups}, fds {open} (baseline {fds})"
                ))
            }
        })
        .await;
    assert_eq!(scfsim_mounts(pid), mounts, "mounts leaked");
    let grown = rss_kib(pid).saturating_sub(rss);
    assert!(
        grown < 32 * 1024,
        "scfsim's RSS grew by {grown} KiB over {CYCLES} connections"
    );
}

#[tokio::test]
async fn a_function_reaches_a_tcp_service_on_the_host_at_scfsim_host() {
    use tokio::io::AsyncReadExt;
    // Bound on all addresses, as a local Redis or API would be for containers.
    let service = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = service.local_addr().unwrap().port();
    let body = format!(
        "python3 -c \"import os, socket; s = socket.create_connection((os.environ['SCFSIM_HOST'], {port}), timeout=10); s.sendall(b'hello from the instance'); s.close()\"\n\
         exec {} echo",
        fixture_bin().display()
    );
    let scfsim = Scfsim::start(vec![Function::script("net", &body)]).await;
    let mut client = scfsim.connect("/net").await;
    let (mut conn, peer) = tokio::time::timeout(scfsim_e2e::PATIENCE, service.accept())
        .await
        .expect("the instance connected to the host's service")
        .unwrap();
    let mut got = String::new();
    conn.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "hello from the instance");
    assert!(peer.ip().to_string().starts_with("169.254."), "{peer}");
    client.send_text("still echoing").await;
    client.expect_text("still echoing").await;
}

#[tokio::test]
async fn a_function_reaches_a_server_beyond_the_host_through_nat() {
    // A server in a namespace of the test's own, reachable from the host only by routing, as
    // a server on the internet is: it has no route back to the instances' 169.254.0.0/16, so
    // the connection works only if scfsim forwards and masquerades, and, on a host whose
    // firewall drops forwarded traffic (Docker's engine sets FORWARD's policy to DROP), only if
    // scfsim allows its instances' traffic there.
    let outside = scfsim_e2e::TestNet::create(2);
    let listener = outside.listen();
    let addr = listener.local_addr().unwrap();
    // Non-blocking and driven by tokio, so every wait below is bounded: a thread blocked in
    // accept() would outlive a failed test and hold up the whole test binary.
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let body = format!(
        "python3 -c \"import socket; s = socket.create_connection(('{}', {}), timeout=10); s.sendall(b'hello from the instance'); s.close()\"\n\
         exec {} echo",
        addr.ip(),
        addr.port(),
        fixture_bin().display()
    );
    let mut scfsim = Scfsim::start(vec![Function::script("nat", &body)]).await;
    let mark = format!("scfsim_{}_", scfsim.pid());
    let host_drops = forward_is_dropped();
    if host_drops {
        assert!(
            !scfsim_rules(&mark).is_empty(),
            "the host's firewall drops forwarded traffic, yet scfsim added no rule:\n{}",
            iptables_rules()
        );
    }
    let mut client = scfsim.connect("/nat").await;
    let Ok(accepted) = tokio::time::timeout(scfsim_e2e::PATIENCE, listener.accept()).await else {
        panic!(
            "no connection from the instance reached {addr} beyond the host within {:?}; \
             the instance's output: {:?}\nthe host's firewall:\n{}\nscfsim's log:\n{}",
            scfsim_e2e::PATIENCE,
            scfsim.log_lines(&client.request_id).await,
            iptables_rules(),
            scfsim.log()
        )
    };
    let (mut conn, peer) = accepted.expect("accept");
    let mut got = String::new();
    tokio::time::timeout(
        scfsim_e2e::PATIENCE,
        tokio::io::AsyncReadExt::read_to_string(&mut conn, &mut got),
    )
    .await
    .expect("the instance's message and its end within patience")
    .expect("read the instance's message");
    assert_eq!(got, "hello from the instance");
    // Masqueraded: the server saw the host's address on its link, not the instance's.
    assert_eq!(peer.ip(), std::net::IpAddr::V4(outside.host_addr), "{peer}");
    client.send_text("still echoing").await;
    client.expect_text("still echoing").await;

    // Nothing is left in the host's firewall: a killed scfsim's rules go when the next one
    // starts, and that one's own when it stops.
    let dir = scfsim.dir.clone();
    assert!(!scfsim.signal(libc::SIGKILL).await.success());
    let mut restarted = Scfsim::reopen(dir).await;
    let restarted_mark = format!("scfsim_{}_", restarted.pid());
    assert_eq!(
        scfsim_rules(&mark),
        Vec::<String>::new(),
        "killed scfsim's rules"
    );
    assert_eq!(host_drops, !scfsim_rules(&restarted_mark).is_empty());
    assert!(restarted.signal(libc::SIGTERM).await.success());
    assert_eq!(
        scfsim_rules(&restarted_mark),
        Vec::<String>::new(),
        "stopped scfsim's rules"
    );
}

/// The filter table's rules as `iptables -S` prints them (the backend the host chose).
fn iptables_rules() -> String {
    let out = std::process::Command::new("iptables")
        .args(["-w", "5", "-S"])
        .output()
        .expect("run iptables (install it: apt-get install iptables)");
    assert!(out.status.success(), "iptables -S: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Rules whose comment starts with `mark`.
fn scfsim_rules(mark: &str) -> Vec<String> {
    iptables_rules()
        .lines()
        .filter(|rule| rule.contains(&format!("--comment {mark}")))
        .map(str::to_owned)
        .collect()
}

/// Whether the host's firewall drops forwarded packets that no rule accepts, or keeps Docker's
/// chain for other software's rules.
fn forward_is_dropped() -> bool {
    iptables_rules()
        .lines()
        .any(|rule| matches!(rule.trim(), "-P FORWARD DROP" | "-N DOCKER-USER"))
}

const NOBODY: (u32, u32) = (65534, 65534);

/// A directory for a scfsim that runs as nobody, with its own copy of the fixture: the user
/// must be able to run it wherever the checkout is.
fn unprivileged_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("scfsim-fixture");
    std::fs::copy(fixture_bin(), &fixture).unwrap();
    (dir, fixture)
}

#[tokio::test]
async fn without_root_going_over_memory_mb_ends_with_434() {
    let (dir, fixture) = unprivileged_dir();
    let body = format!(
        "(sleep 0.5; exec python3 -c \"a = b'x' * (400 * 1024 * 1024); import time; time.sleep(60)\") &\n\
         exec {} echo",
        fixture.display()
    );
    let scfsim = Scfsim::start_with(
        vec![Function::script("hog", &body).set("memory_mb", "128")],
        Options {
            dir: Some(dir.path().to_path_buf()),
            run_as: Some(NOBODY),
            ..Options::default()
        },
    )
    .await;
    assert!(
        scfsim.log().contains("memory_mb watched by scfsim"),
        "{}",
        scfsim.log()
    );
    let mut client = scfsim.connect("/hog").await;
    let (code, reason) = client.expect_close().await;
    assert_eq!(code, 1011);
    assert!(reason.contains("memory"), "{reason}");
    let record = scfsim.record(&client.request_id).await;
    assert_eq!(record["status_code"], 434, "{record:#}");
    assert_eq!(record["end_reason"], "memory_limit");
}

#[tokio::test]
async fn without_root_each_instance_gets_user_namespaces_and_its_own_port_9000() {
    let (dir, fixture) = unprivileged_dir();
    let body = format!(
        "echo \"uid=$(id -u) processes=$(ls /proc | grep -c '^[0-9]')\"\n\
         exec {} echo",
        fixture.display()
    );
    let scfsim = Scfsim::start_with(
        vec![Function::script("unprivileged", &body)],
        Options {
            dir: Some(dir.path().to_path_buf()),
            run_as: Some(NOBODY),
            ..Options::default()
        },
    )
    .await;
    assert_eq!(
        scfsim_e2e::procs::uid(scfsim.pid()),
        65534,
        "scfsim runs as nobody"
    );
    assert!(
        scfsim.log().contains("instance isolation: user namespaces"),
        "{}",
        scfsim.log()
    );
    // Two at once, both on port 9000 of their own network namespace.
    let mut a = scfsim.connect("/unprivileged").await;
    let mut b = scfsim.connect("/unprivileged").await;
    for (client, text) in [(&mut a, "a"), (&mut b, "b")] {
        client.send_text(text).await;
        client.expect_text(text).await;
    }
    for client in [&mut a, &mut b] {
        client.close(1000, "").await;
        let record = scfsim.record(&client.request_id).await;
        assert_eq!(record["status_code"], 200, "{record:#}");
        let lines = scfsim.log_lines(&client.request_id).await;
        let line = lines
            .iter()
            .find(|l| l.starts_with("uid="))
            .unwrap_or_else(|| panic!("{lines:?}"));
        // Root of its own user namespace, in its own PID namespace.
        assert!(line.starts_with("uid=0 "), "{line}");
        let processes: usize = line.split("processes=").nth(1).unwrap().parse().unwrap();
        assert!(processes < 10, "{line}");
    }
}

#[tokio::test]
async fn the_instance_has_a_private_512_mb_tmp() {
    // The code, and the fixture it runs, must live outside the host's /tmp, which the
    // instance's own /tmp hides; the build may well be under /tmp (CARGO_TARGET_DIR).
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let fixture = dir.path().join("scfsim-fixture");
    std::fs::copy(fixture_bin(), &fixture).unwrap();
    let host_marker = format!("/tmp/scfsim-host-marker-{}", std::process::id());
    let instance_marker = format!("/tmp/scfsim-instance-marker-{}", std::process::id());
    std::fs::write(&host_marker, "host").unwrap();
    let body = format!(
        "test -e {host_marker} && echo tmp=host || echo tmp=private\n\
         echo \"tmp.kib=$(df -k /tmp | tail -1 | awk '{{print $2}}')\"\n\
         echo instance > {instance_marker} && echo tmp-writable\n\
         exec {} echo",
        fixture.display()
    );
    let scfsim = Scfsim::start_with(
        vec![Function::script("tmp", &body)],
        Options {
            dir: Some(dir.path().to_path_buf()),
            ..Options::default()
        },
    )
    .await;
    let mut client = scfsim.connect("/tmp").await;
    client.close(1000, "").await;
    scfsim.record(&client.request_id).await;
    let lines = scfsim.log_lines(&client.request_id).await;
    std::fs::remove_file(&host_marker).unwrap();
    assert!(lines.contains(&"tmp=private".to_string()), "{lines:?}");
    assert!(lines.contains(&"tmp.kib=524288".to_string()), "{lines:?}");
    assert!(lines.contains(&"tmp-writable".to_string()), "{lines:?}");
    assert!(
        !std::path::Path::new(&instance_marker).exists(),
        "the instance wrote to the host's /tmp"
    );
}

/// What a function sees of its instance, one `key=value` line each, then the fixture's echo.
fn instance_report_body() -> String {
    format!(
        "echo \"self=$$\"\n\
         echo \"init=$(cat /proc/1/comm)\"\n\
         echo \"cwd=$(pwd)\"\n\
         echo \"tmp=$(stat -f -c %T /tmp) $(ls -A /tmp | wc -l)\"\n\
         touch /tmp/left-by-an-earlier-instance\n\
         echo \"nofile=$(ulimit -n)\"\n\
         echo \"pids.max=$(cat /sys/fs/cgroup/pids$(grep ':pids:' /proc/self/cgroup | cut -d: -f3)/pids.max)\"\n\
         echo \"memory.limit=$(cat /sys/fs/cgroup/memory$(grep ':memory:' /proc/self/cgroup | cut -d: -f3)/memory.limit_in_bytes)\"\n\
         echo \"mounts=$(awk '$5 == \"/var/lang\" || $5 == \"/tmp\" || $5 == \"/proc\" {{ print $5 }}' /proc/self/mountinfo | tr '\\n' ' ')\"\n\
         env | sed 's/^/env:/'\n\
         exec {} echo",
        fixture_bin().display()
    )
}

#[tokio::test]
async fn a_parked_supervisor_serves_a_connection_as_a_fresh_one_would_and_is_replaced() {
    // Outside /tmp, so that the instance gets its private /tmp.
    let dir = tempfile::tempdir_in("/var/tmp").expect("a directory under /var/tmp");
    let scfsim = Scfsim::start_with(
        vec![Function::script("report", &instance_report_body())
            .set("memory_mb", "256")
            .set("env", "{ GREETING = \"hello\" }")],
        Options {
            dir: Some(dir.path().to_path_buf()),
            ..Options::default()
        },
    )
    .await;
    let pid = scfsim.pid();
    let stock = |what: &'static str, not: Option<u32>| {
        let scfsim = &scfsim;
        async move {
            scfsim
                .eventually(what, || async {
                    let parked = parked(pid);
                    if parked.len() == 2 && not.is_none_or(|n| !parked.contains(&n)) {
                        Ok(parked)
                    } else {
                        Err(format!("parked supervisors: {parked:?}"))
                    }
                })
                .await
        }
    };
    let first = stock("two supervisors parked ahead of demand", None).await;

    // A parked supervisor that dies is replaced, and scfsim says so.
    // SAFETY: kill(2) on a process of this test's scfsim.
    unsafe { libc::kill(first[0] as i32, libc::SIGKILL) };
    let parked_now = stock("the killed supervisor replaced", Some(first[0])).await;
    scfsim
        .eventually("the replacement logged", || async {
            match scfsim.log().contains("a parked supervisor ended") {
                true => Ok(()),
                false => Err(scfsim.log()),
            }
        })
        .await;

    // Two connections: each takes a parked supervisor (its pid is the instance's), and each sees
    // an instance as a fresh supervisor makes it.
    let code_dir = scfsim.dir.join("functions/report");
    for _ in 0..2 {
        let before = stock("the stock full again", None).await;
        let mut client = scfsim.connect("/report").await;
        client.send_text("served").await;
        client.expect_text("served").await;
        client.close(1000, "").await;
        let record = scfsim.record(&client.request_id).await;
        assert_eq!(record["status_code"], 200, "{record:#}");
        let instance = record["instance_pid"].as_u64().expect("instance pid") as u32;
        assert!(
            before.contains(&instance),
            "instance {instance} was not one of the parked {before:?} (then {parked_now:?})"
        );
        let lines = scfsim.log_lines(&client.request_id).await;
        let has = |line: &str| assert!(lines.iter().any(|l| l == line), "{line}: {lines:?}");
        has("self=2");
        has("init=scfsim-init");
        has(&format!("cwd={}", code_dir.display()));
        has("tmp=tmpfs 0");
        has("nofile=1024");
        has("pids.max=1024");
        has(&format!("memory.limit={}", 256 * 1024 * 1024));
        // The function's own mounts come last, in the order a fresh supervisor makes them.
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("mounts=") && l.ends_with(" /var/lang /tmp /proc ")),
            "{lines:?}"
        );
        has("env:GREETING=hello");
        has(&format!("env:USER_CODE_ROOT={}", code_dir.display()));
        assert!(
            lines.iter().any(|l| l.starts_with("env:SCFSIM_HOST=")),
            "{lines:?}"
        );
        let env: Vec<&String> = lines.iter().filter(|l| l.starts_with("env:")).collect();
        assert!(
            env.iter().all(|l| !l.contains("SCFSIM_BOOTSTRAP_ENV_")),
            "{env:?}"
        );
    }

    // Shutdown leaves nothing: no parked supervisor, no cgroup of this scfsim.
    let left = parked(pid);
    let mut scfsim = scfsim;
    let status = scfsim.signal(libc::SIGTERM).await;
    assert!(status.success(), "scfsim exited with {status}");
    scfsim_e2e::eventually(
        "the parked supervisors and cgroups to be gone",
        scfsim_e2e::PATIENCE,
        || async {
            let running: Vec<u32> = left
                .iter()
                .copied()
                .filter(|p| scfsim_e2e::procs::alive(*p))
                .collect();
            let cgroups = scfsim_cgroups(pid);
            if running.is_empty() && cgroups.is_empty() {
                Ok(())
            } else {
                Err(format!("left: processes {running:?}, cgroups {cgroups:?}"))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn sigkill_of_scfsim_ends_its_parked_supervisors() {
    let mut scfsim = Scfsim::start(vec![Function::fixture("echo", &["echo"])]).await;
    let pid = scfsim.pid();
    let parked = scfsim
        .eventually("supervisors parked ahead of demand", || async {
            match parked(pid) {
                parked if parked.len() == 2 => Ok(parked),
                parked => Err(format!("parked: {parked:?}")),
            }
        })
        .await;
    let status = scfsim.signal(libc::SIGKILL).await;
    assert!(!status.success());
    scfsim_e2e::eventually(
        "the parked supervisors to be gone",
        scfsim_e2e::PATIENCE,
        || async {
            match parked
                .iter()
                .copied()
                .filter(|p| scfsim_e2e::procs::alive(*p))
                .collect::<Vec<_>>()
            {
                running if running.is_empty() => Ok(()),
                running => Err(format!("still running: {running:?}")),
            }
        },
    )
    .await;
}

/// The cgroup parents of scfsim `pid` (`scfsim-<pid>-<n>`), in any hierarchy.
fn scfsim_cgroups(pid: u32) -> Vec<std::path::PathBuf> {
    [
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup",
    ]
    .iter()
    .filter_map(|root| std::fs::read_dir(root).ok())
    .flat_map(|d| d.flatten())
    .filter(|e| {
        e.file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(&format!("scfsim-{pid}-")))
    })
    .map(|e| e.path())
    .collect()
}
