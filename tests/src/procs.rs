//! Real Strait processes for tests: a coordinator in a temporary state directory, agents,
//! and `straitctl`. Every process is killed when its handle drops, and every directory is
//! removed.
//!
//! The binaries come from the workspace's target directory; `cargo test --workspace` builds
//! them (the agent and coordinator packages have integration tests of their own). A binary
//! older than a source file of its crates is refused with the command to rebuild it:
//! `cargo test -p strait-tests` alone does not rebuild them, and a test run against a stale
//! binary passes or fails for the wrong reason.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The path of a workspace binary (`strait-agent`, `strait-coordinator`, `straitctl`).
pub fn bin(name: &str) -> PathBuf {
    // target/debug/deps/<test> -> target/debug/<name>
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: run the tests with `cargo test --workspace`, which builds the binaries",
        path.display()
    );
    if let Some(newer) = source_newer_than(name, &path) {
        panic!(
            "{} is older than {}: the test would run a stale binary. Run the tests with \
             `cargo test --workspace` (which rebuilds it), or `cargo build -p {}` first",
            path.display(),
            newer.display(),
            package_of(name)
        );
    }
    path
}

/// A unit-test module's file (`tests.rs`, or under a `tests/` directory), by its path within
/// the workspace.
fn is_unit_test_module(path: &Path) -> bool {
    path.file_stem().is_some_and(|s| s == "tests")
        || path
            .parent()
            .is_some_and(|d| d.components().any(|c| c.as_os_str() == "tests"))
}

/// The package that builds binary `name`.
fn package_of(name: &str) -> &str {
    match name {
        "straitctl" => "strait-ctl",
        other => other,
    }
}

/// A source file of binary `name`'s workspace crates modified after the binary was built
/// (`cargo test -p strait-tests` does not rebuild the binaries its processes run), if any.
fn source_newer_than(name: &str, binary: &Path) -> Option<PathBuf> {
    let crates: &[&str] = match name {
        "strait-agent" => &["agent", "proto", "pki", "observe"],
        "strait-coordinator" => &["coordinator", "proto", "pki", "observe"],
        "straitctl" => &["ctl", "proto", "pki"],
        _ => return None,
    };
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let mut stack: Vec<PathBuf> = crates
        .iter()
        .flat_map(|c| [root.join(c).join("src"), root.join(c).join("Cargo.toml")])
        .collect();
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if is_unit_test_module(p.strip_prefix(root).unwrap_or(&p)) {
            // `#[cfg(test)] mod tests;` files are not part of the binary: editing them does
            // not rebuild it.
        } else if meta.modified().is_ok_and(|m| m > built) {
            return Some(p);
        }
    }
    None
}

/// A command for `bin`, run inside network namespace `netns` when given.
pub fn command(bin_name: &str, netns: Option<&str>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin(bin_name));
            c
        }
        None => Command::new(bin(bin_name)),
    }
}

/// A free UDP port on loopback (bound and released; tests use it at once).
pub fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
    s.local_addr().expect("local addr").port()
}

/// A free TCP port on loopback (for a listener a process will bind).
pub fn free_tcp_port() -> u16 {
    let s = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    s.local_addr().expect("local addr").port()
}

/// `GET path` from an HTTP/1.1 server at `addr` (the metrics endpoint); the body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP head in {text:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {head}");
    }
    Ok(body.to_string())
}

/// The value of the series `series` (name with labels, as exported) in a metrics text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed on drop; its output goes to a log file.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
    name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Result<Proc> {
        let file = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            child,
            log,
            name: name.to_string(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process has exited (and with what status).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then SIGKILL after 3 s.
    pub fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, self.log_text());
        }
    }
}

/// Copies directory `from` to `to` recursively, keeping permission bits.
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    std::fs::set_permissions(to, std::fs::metadata(from)?.permissions())?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// A site for [`Coordinator::init`]: `name:cloud:region:prefixes`.
pub struct Site<'a>(pub &'a str, pub &'a str);

/// The two sites most tests use: `aws-use1` (10.10.0.0/16) and `gcp-usc1` (10.20.0.0/16).
pub const TWO_SITES: &[Site<'static>] = &[
    Site("aws-use1", "10.10.0.0/16"),
    Site("gcp-usc1", "10.20.0.0/16"),
];

/// A coordinator with its own state directory.
pub struct Coordinator {
    // Declared before `dir`, so the process (and its log, printed on a panic) goes first.
    pub proc: Option<Proc>,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    starts: u32,
    /// The network namespace the coordinator and straitctl run in (None: this one).
    pub netns: Option<String>,
}

impl Coordinator {
    /// `init` a mesh named `prod` with `sites` (`(name, prefix)`), then apply `extra_config`
    /// (TOML lines inserted before the first table).
    pub fn init(sites: &[Site<'_>], extra_config: &str) -> Result<Coordinator> {
        let dir = tempfile::Builder::new().prefix("strait-coord-").tempdir()?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse()?;
        let mut cmd = Command::new(bin("strait-coordinator"));
        cmd.arg("init")
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["--mesh", "prod", "--listen", &addr.to_string()]);
        for Site(name, prefix) in sites {
            cmd.arg("--site").arg(format!("{name}:test:local:{prefix}"));
        }
        let out = cmd.output()?;
        if !out.status.success() {
            bail!("init failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let config = dir.path().join("state/coordinator.toml");
        let text = std::fs::read_to_string(&config)?;
        let text = text.replacen("\n[pki]", &format!("\n{extra_config}\n[pki]"), 1);
        std::fs::write(&config, text)?;
        Ok(Coordinator {
            dir,
            addr,
            proc: None,
            starts: 0,
            netns: None,
        })
    }

    /// A coordinator whose `coordinator.toml` is `config` (with `{state}` and `{listen}`
    /// substituted), and whose operator certificate will be put in `operator_dir()` by the
    /// caller (e.g. from Vault).
    pub fn from_config(config: &str) -> Result<Coordinator> {
        let dir = tempfile::Builder::new().prefix("strait-coord-").tempdir()?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse()?;
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state)?;
        let text = config
            .replace("{state}", &state.display().to_string())
            .replace("{listen}", &addr.to_string());
        std::fs::write(state.join("coordinator.toml"), text)?;
        Ok(Coordinator {
            dir,
            addr,
            proc: None,
            starts: 0,
            netns: None,
        })
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A second coordinator of the same mesh (not yet started): a copy of this one's state
    /// directory (CA, certificates, config) listening on another port. With a shared store
    /// (`[store] kind = "postgres"`) both serve one mesh.
    pub fn replica(&self) -> Result<Coordinator> {
        let dir = tempfile::Builder::new().prefix("strait-coord-").tempdir()?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse()?;
        let state = dir.path().join("state");
        copy_dir(&self.state(), &state)?;
        let cfg = state.join("coordinator.toml");
        let text = std::fs::read_to_string(&cfg)?
            .replace(&self.addr.to_string(), &addr.to_string())
            .replace(
                &format!("{:?}", self.state().display().to_string()),
                &format!("{:?}", state.display().to_string()),
            );
        std::fs::write(&cfg, text)?;
        Ok(Coordinator {
            dir,
            addr,
            proc: None,
            starts: 0,
            netns: self.netns.clone(),
        })
    }

    /// Makes the coordinator (not yet started) listen on `addr` inside namespace `netns`,
    /// where straitctl will run too.
    pub fn move_to(&mut self, netns: &str, addr: SocketAddr) -> Result<()> {
        let cfg = self.state().join("coordinator.toml");
        let text =
            std::fs::read_to_string(&cfg)?.replace(&self.addr.to_string(), &addr.to_string());
        std::fs::write(&cfg, text)?;
        self.addr = addr;
        self.netns = Some(netns.to_string());
        Ok(())
    }

    /// A started coordinator listening on `addr` inside namespace `netns`, for `sites`, with
    /// `extra_config` added to its config (see [`Coordinator::init`]).
    pub fn start_in(
        netns: &str,
        addr: SocketAddr,
        sites: &[Site<'_>],
        extra_config: &str,
    ) -> Result<Coordinator> {
        let mut c = Coordinator::init(sites, extra_config)?;
        c.move_to(netns, addr)?;
        c.start()?;
        Ok(c)
    }

    pub fn operator_dir(&self) -> PathBuf {
        self.state().join("operator")
    }

    /// Starts `serve` and waits until `straitctl status` answers.
    pub fn start(&mut self) -> Result<()> {
        self.starts += 1;
        let log = self
            .dir
            .path()
            .join(format!("coordinator-{}.log", self.starts));
        let mut cmd = command("strait-coordinator", self.netns.as_deref());
        cmd.arg("serve")
            .arg("--config")
            .arg(self.state().join("coordinator.toml"));
        self.proc = Some(Proc::spawn("coordinator", &mut cmd, log)?);
        let answered = wait_for(Duration::from_secs(10), "the coordinator to answer", || {
            self.ctl(&["status"]).ok().filter(|o| o.status.success())
        });
        if let Err(e) = answered {
            let last = self
                .ctl(&["status"])
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
            let exited = self.proc.as_mut().and_then(|p| p.exited());
            bail!(
                "{e}; coordinator exit status {exited:?}; last straitctl: {last:?}; log:\n{}",
                self.log_text()
            );
        }
        Ok(())
    }

    pub fn log_text(&self) -> String {
        self.proc.as_ref().map(|p| p.log_text()).unwrap_or_default()
    }

    /// Runs straitctl with the operator certificate.
    pub fn ctl(&self, args: &[&str]) -> Result<Output> {
        self.ctl_with(&self.operator_dir(), args)
    }

    /// Runs straitctl with the certificate in `tls_dir`.
    pub fn ctl_with(&self, tls_dir: &Path, args: &[&str]) -> Result<Output> {
        Ok(command("straitctl", self.netns.as_deref())
            .args([
                "--coordinator",
                &self.addr.to_string(),
                "--timeout",
                "5s",
                "--tls-dir",
            ])
            .arg(tls_dir)
            .args(args)
            .output()?)
    }

    /// `straitctl -o json ARGS`, parsed.
    pub fn ctl_json(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let out = self.ctl(&all)?;
        if !out.status.success() {
            bail!(
                "straitctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// A join token for `site` and `role`.
    pub fn token(&self, site: &str, role: &str) -> Result<String> {
        let out = self.ctl(&[
            "token", "create", "--site", site, "--role", role, "--ttl", "10m",
        ])?;
        if !out.status.success() {
            bail!("token create: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }
}

/// An agent process with its own state directory.
pub struct Agent {
    // Declared before `dir`, so the process (and its log, printed on a panic) goes first.
    pub proc: Proc,
    pub dir: tempfile::TempDir,
    pub site: String,
    pub node: String,
}

impl Agent {
    /// Starts `strait-agent run` inside network namespace `netns` (data plane on) enrolling
    /// with `token`.
    pub fn start_in_netns(
        netns: &str,
        coordinator: SocketAddr,
        site: &str,
        node: &str,
        role: &str,
        token: &str,
        extra: &[&str],
    ) -> Result<Agent> {
        let dir = tempfile::Builder::new().prefix("strait-agent-").tempdir()?;
        Agent::run_in_netns(dir, netns, coordinator, site, node, role, token, extra)
    }

    /// Like [`Agent::start_in_netns`] with an existing state directory (a restart).
    #[allow(clippy::too_many_arguments)]
    pub fn run_in_netns(
        dir: tempfile::TempDir,
        netns: &str,
        coordinator: SocketAddr,
        site: &str,
        node: &str,
        role: &str,
        token: &str,
        extra: &[&str],
    ) -> Result<Agent> {
        Agent::launch(
            dir,
            Some(netns),
            coordinator,
            site,
            node,
            role,
            token,
            extra,
        )
    }

    /// Starts `strait-agent run --dataplane none` enrolling with `token`.
    pub fn start(
        coordinator: SocketAddr,
        site: &str,
        node: &str,
        role: &str,
        token: &str,
        extra: &[&str],
    ) -> Result<Agent> {
        let dir = tempfile::Builder::new().prefix("strait-agent-").tempdir()?;
        Agent::launch(dir, None, coordinator, site, node, role, token, extra)
    }

    /// Like [`Agent::start`] with an existing state directory (a restart, or one prepared
    /// by the test).
    pub fn run(
        dir: tempfile::TempDir,
        coordinator: SocketAddr,
        site: &str,
        node: &str,
        role: &str,
        token: &str,
        extra: &[&str],
    ) -> Result<Agent> {
        Agent::launch(dir, None, coordinator, site, node, role, token, extra)
    }

    /// Runs the agent in `dir`: inside `netns` with the userspace data plane, or here with
    /// the control plane only.
    #[allow(clippy::too_many_arguments)]
    pub fn launch(
        dir: tempfile::TempDir,
        netns: Option<&str>,
        coordinator: SocketAddr,
        site: &str,
        node: &str,
        role: &str,
        token: &str,
        extra: &[&str],
    ) -> Result<Agent> {
        let dataplane = if netns.is_some() { "userspace" } else { "none" };
        let mut cmd = command("strait-agent", netns);
        cmd.args([
            "run", "--mesh", "prod", "--site", site, "--node", node, "--role", role,
        ])
        .args([
            "--coordinator",
            &coordinator.to_string(),
            "--dataplane",
            dataplane,
        ])
        .args(["--heartbeat-interval", "500ms"])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("STRAIT_JOIN_TOKEN", token)
        .args(extra);
        let log = dir.path().join("agent.log");
        let proc = Proc::spawn(&format!("agent {site}/{node}"), &mut cmd, log)?;
        Ok(Agent {
            dir,
            proc,
            site: site.to_string(),
            node: node.to_string(),
        })
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The map the agent saved last, if any.
    pub fn saved_map(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.state().join("map.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn map_version(&self) -> Option<u64> {
        self.saved_map()?.get("version")?.as_u64()
    }
}
