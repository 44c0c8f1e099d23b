//! A second Docker engine for the `DOCKER_HOST=tcp://` tests: `dockerd` on a loopback TCP port
//! with TLS (a CA, a server and a client certificate made here), with its own data root, exec
//! root, pid file, config file and bridge, so that it shares nothing with the machine's engine.
//! Its containers are reached only through ports it publishes, as on another machine.
//!
//! Dropping it stops it, whatever the test did: SIGTERM, then SIGKILL after a bound, then what
//! it leaves (containerd shims of its exec root, its mounts, its bridge) is removed.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use scfsim_e2e::{free_port, run_bounded, BoundedOutput};

/// How long the engine may take to answer after it started, and to stop.
const ENGINE_PATIENCE: Duration = Duration::from_secs(60);
const STOP_PATIENCE: Duration = Duration::from_secs(20);

pub struct SecondEngine {
    dir: tempfile::TempDir,
    dockerd: Option<Child>,
    bridge: String,
    pub host: String,
    /// ca.pem, cert.pem, key.pem of a client the engine trusts.
    pub client_certs: PathBuf,
    /// A client whose ca.pem is another CA's: the engine's certificate fails verification.
    pub wrong_ca_certs: PathBuf,
}

fn find_dockerd() -> PathBuf {
    ["/usr/sbin/dockerd", "/usr/bin/dockerd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "dockerd is not installed (/usr/sbin/dockerd, /usr/bin/dockerd): \
                 apt-get install docker.io, or scripts/docker-engine.sh"
            )
        })
}

/// A CA and the certificates signed by it: the server's for 127.0.0.1 and localhost, and a
/// client's.
struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn make_pki(name: &str) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name.push(DnType::CommonName, name);
    let ca_pem = ca.self_signed(&ca_key).expect("CA certificate").pem();
    let issuer = Issuer::new(ca, &ca_key);
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, cn: &str| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(names).expect("params");
        params.extended_key_usages = vec![usage];
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &issuer).expect("certificate");
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        server: leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "scfsim test engine",
        ),
        client: leaf(vec![], ExtendedKeyUsagePurpose::ClientAuth, "scfsim"),
        ca: ca_pem,
    }
}

fn write(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).expect("certificate dir");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("certificate file");
    }
}

impl SecondEngine {
    /// Starts it and waits until it answers over TLS.
    pub fn start() -> SecondEngine {
        static STARTED: AtomicU8 = AtomicU8::new(0);
        let nth = STARTED.fetch_add(1, Ordering::SeqCst);
        let dockerd = find_dockerd();
        let dir = tempfile::Builder::new()
            .prefix("scfsim-engine2-")
            .tempdir()
            .expect("engine dir");
        let root = dir.path();
        let pki = make_pki("scfsim test CA");
        let other = make_pki("another CA");
        let server = root.join("server");
        write(
            &server,
            &[
                ("ca.pem", &pki.ca),
                ("cert.pem", &pki.server.0),
                ("key.pem", &pki.server.1),
            ],
        );
        let client_certs = root.join("client");
        write(
            &client_certs,
            &[
                ("ca.pem", &pki.ca),
                ("cert.pem", &pki.client.0),
                ("key.pem", &pki.client.1),
            ],
        );
        let wrong_ca_certs = root.join("client-wrong-ca");
        write(
            &wrong_ca_certs,
            &[
                ("ca.pem", &other.ca),
                ("cert.pem", &pki.client.0),
                ("key.pem", &pki.client.1),
            ],
        );
        std::fs::write(root.join("daemon.json"), "{}").expect("daemon.json");

        // Its own bridge (the machine's engine owns docker0), in a range of its own; without
        // iptables, published ports go through the engine's userland proxy only.
        let pid = std::process::id();
        let bridge = format!("sfe{}{nth}", pid % 100_000);
        let subnet = format!("10.231.{}.1/24", 240 + (pid % 8) as u8 * 2 + nth % 2);
        for args in [
            vec!["link", "add", &bridge, "type", "bridge"],
            vec!["addr", "add", &subnet, "dev", &bridge],
            vec!["link", "set", &bridge, "up"],
        ] {
            let out = Command::new("ip").args(&args).output().expect("run ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        let port = free_port();
        let host = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(root.join("dockerd.log")).expect("dockerd log");
        let mut command = Command::new(dockerd);
        command
            .arg("--config-file")
            .arg(root.join("daemon.json"))
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("exec"))
            .arg("--pidfile")
            .arg(root.join("dockerd.pid"))
            .args(["--host", &host, "--tlsverify"])
            .arg("--tlscacert")
            .arg(server.join("ca.pem"))
            .arg("--tlscert")
            .arg(server.join("cert.pem"))
            .arg("--tlskey")
            .arg(server.join("key.pem"))
            .args(["--bridge", &bridge, "--iptables=false", "--ip-masq=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0);
        let child = command.spawn().expect("start the second dockerd");
        let mut engine = SecondEngine {
            dir,
            dockerd: Some(child),
            bridge,
            host,
            client_certs,
            wrong_ca_certs,
        };
        let deadline = Instant::now() + ENGINE_PATIENCE;
        loop {
            let info = engine.docker(&["info", "--format", "{{.ServerVersion}}"]);
            if info.success() {
                break;
            }
            let exited = engine
                .dockerd
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= deadline {
                panic!(
                    "the second dockerd did not answer on {} within {ENGINE_PATIENCE:?} \
                     (exited: {exited:?}); last answer: {}\nits log:\n{}",
                    engine.host,
                    info.stderr,
                    engine.log()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        engine
    }

    /// `DOCKER_HOST`, `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH` for a client with `certs`.
    pub fn env(&self, certs: &Path) -> Vec<(String, String)> {
        vec![
            ("DOCKER_HOST".into(), self.host.clone()),
            ("DOCKER_TLS_VERIFY".into(), "1".into()),
            ("DOCKER_CERT_PATH".into(), certs.display().to_string()),
        ]
    }

    /// The docker CLI against this engine, bounded.
    pub fn docker(&self, args: &[&str]) -> BoundedOutput {
        run_bounded(
            Command::new("docker")
                .args(args)
                .envs(self.env(&self.client_certs)),
            Duration::from_secs(30),
        )
    }

    /// Copies `image` from the machine's engine into this one.
    pub fn load(&self, image: &str) {
        let out = run_bounded(
            Command::new("bash")
                .args([
                    "-c",
                    "set -o pipefail; docker save \"$1\" | \
                     DOCKER_HOST=\"$2\" DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=\"$3\" docker load",
                    "load",
                    image,
                    &self.host,
                ])
                .arg(&self.client_certs),
            Duration::from_secs(180),
        );
        assert!(
            out.success(),
            "loading {image} into the second engine: {}{}",
            out.stdout,
            out.stderr
        );
    }

    /// Ids of this engine's containers (running or not) that `docker ps --filter FILTER` lists.
    pub fn containers_filtered(&self, filter: &str) -> Vec<String> {
        let out = self.docker(&["ps", "--all", "--quiet", "--no-trunc", "--filter", filter]);
        assert!(out.success(), "docker ps: {}", out.stderr);
        out.stdout.lines().map(str::to_string).collect()
    }

    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

/// Pids of the processes whose command line names `dir` (the engine's containerd and shims).
fn processes_under(dir: &Path) -> Vec<i32> {
    let needle = dir.display().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        if let Some(mut dockerd) = self.dockerd.take() {
            // SIGTERM: it stops its containers and unmounts; bounded, then SIGKILL.
            // SAFETY: kill(2) on the child this guard started.
            unsafe { libc::kill(dockerd.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + STOP_PATIENCE;
            while dockerd.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            // SAFETY: as above, its process group (it was started as the group's leader).
            unsafe { libc::kill(-(dockerd.id() as i32), libc::SIGKILL) };
            let _ = dockerd.wait();
        }
        // Its containerd and containerd shims name its exec root on their command lines.
        for pid in processes_under(self.dir.path()) {
            // SAFETY: kill(2) on processes of the engine this guard started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // dockerd bind-mounts its data root over itself (and overlays under it); what is left
        // mounted keeps the directory from being removed.
        let root = self.dir.path().display().to_string();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<&str> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&root))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounts {
            if let Ok(path) = std::ffi::CString::new(mount) {
                // SAFETY: umount2(2) with a valid C string.
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}
