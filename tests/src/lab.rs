//! The local lab: a three-site mesh in network namespaces on one Linux box, with real
//! coordinator and agent processes that keep running after `up` returns.
//!
//! ```text
//!                        +------------------- <p>-inet (router) -------------------+
//!                        | aws0 192.0.2.1   gcp0 198.51.100.1   azr0 203.0.113.1    |
//!                        | ctl0 203.0.113.129                                       |
//!                        +-----+---------------+------------------+--------------+-+
//!                              |               |                  |              |
//!  <p>-coord 203.0.113.130     |               |                  |              |
//!  (strait-coordinator) -------+               |                  |              |
//!                      <p>-aws-gw 192.0.2.10   <p>-gcp-gw 198.51.100.10   <p>-azr-gw 203.0.113.10
//!                      br0 10.10.0.1/24        br0 10.20.0.1/24           br0 10.30.0.1/24
//!                        |         |             |         |                |         |
//!                   <p>-aws-vm  <p>-aws-m1   <p>-gcp-vm  <p>-gcp-m1     <p>-azr-vm  <p>-azr-m1
//!                   10.10.0.10  10.10.0.20   10.20.0.10  10.20.0.20     10.30.0.10  10.30.0.20
//!                   (no agent)  (member)     (no agent)  (member)       (no agent)  (member)
//! ```
//!
//! Sites `aws-use1`, `gcp-usc1` and `azure-eus` each have a gateway agent (the site's only
//! tunnel endpoint), a member agent (reaches other sites through routes its agent installs
//! via the gateway) and a workload host without an agent (reaches other sites through its
//! default route to the gateway, like a VPC route table entry).
//!
//! Everything the lab makes is named from its prefix (`<p>-*` namespaces) and its state
//! directory; `down` removes both. Nothing is added to the root namespace.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// One site of the lab.
pub struct LabSite {
    /// Site name in the mesh.
    pub name: &'static str,
    /// Short tag used in namespace and interface names.
    pub tag: &'static str,
    pub cloud: &'static str,
    pub region: &'static str,
    /// Second octet of the site's 10.x.0.0/16.
    pub octet: u8,
    /// The gateway's public network (/24 or /25) in a documentation range: (router, gateway, prefix length).
    pub uplink: (&'static str, &'static str, u8),
}

pub const SITES: [LabSite; 3] = [
    LabSite {
        name: "aws-use1",
        tag: "aws",
        cloud: "aws",
        region: "us-east-1",
        octet: 10,
        uplink: ("192.0.2.1", "192.0.2.10", 24),
    },
    LabSite {
        name: "gcp-usc1",
        tag: "gcp",
        cloud: "gcp",
        region: "us-central1",
        octet: 20,
        uplink: ("198.51.100.1", "198.51.100.10", 24),
    },
    LabSite {
        name: "azure-eus",
        tag: "azr",
        cloud: "azure",
        region: "eastus",
        octet: 30,
        uplink: ("203.0.113.1", "203.0.113.10", 25),
    },
];

/// The coordinator's network: router side, coordinator, prefix length.
const COORD_NET: (&str, &str, u8) = ("203.0.113.129", "203.0.113.130", 25);
const COORD_PORT: u16 = 7443;

/// Where the lab lives.
#[derive(Debug, Clone)]
pub struct LabPaths {
    /// Namespace name prefix.
    pub prefix: String,
    /// State directory (coordinator state, agent state, logs).
    pub dir: PathBuf,
    /// Directory holding `strait-coordinator`, `strait-agent` and `straitctl`.
    pub bin_dir: PathBuf,
}

impl LabPaths {
    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    fn coordinator_addr(&self) -> String {
        format!("{}:{COORD_PORT}", COORD_NET.1)
    }

    /// A `straitctl` command with the operator certificate, run in the coordinator's
    /// namespace.
    pub fn ctl(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns("coord")])
            .arg(self.bin("straitctl"))
            .args(["--coordinator", &self.coordinator_addr(), "--tls-dir"])
            .arg(self.dir.join("coordinator/operator"))
            .args(args);
        c
    }

    /// Every namespace of this lab that exists now.
    pub fn namespaces(&self) -> Vec<String> {
        let out = Command::new("ip").args(["netns", "list"]).output();
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let want = format!("{}-", self.prefix);
        text.lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&want))
            .map(str::to_string)
            .collect()
    }
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} {:?} failed: {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(|_| ())
}

fn ip_in(ns: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

fn exec_in(ns: &str, args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

fn ping(ns: &str, to: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", to])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn add_ns(name: &str) -> Result<()> {
    ip(&["netns", "add", name])?;
    ip_in(name, &["link", "set", "lo", "up"])
}

fn veth(a: &str, a_if: &str, b: &str, b_if: &str) -> Result<()> {
    ip(&[
        "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
    ])?;
    ip_in(a, &["link", "set", a_if, "up"])?;
    ip_in(b, &["link", "set", b_if, "up"])
}

/// Starts `program args` inside `ns` in its own process group (so it outlives the lab
/// command and a Ctrl-C in its terminal), output to `log`.
fn daemon(
    ns: &str,
    program: &Path,
    args: &[String],
    env: &[(&str, &str)],
    log: &Path,
) -> Result<u32> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    Ok(child.id())
}

/// Waits for `f`, polling every 100 ms, at most `timeout`.
fn wait(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// What `up` reports.
#[derive(Debug)]
pub struct LabUp {
    pub elapsed: Duration,
    pub namespaces: usize,
    pub agents: usize,
}

/// Builds the topology, starts the coordinator and six agents, and returns once every
/// workload reaches every other site's workload and every member reaches the other sites.
/// On failure everything made so far is removed again (the logs are kept in the error).
pub fn up(paths: &LabPaths, progress: &mut dyn FnMut(&str)) -> Result<LabUp> {
    if paths.dir.exists() || !paths.namespaces().is_empty() {
        bail!(
            "a lab with prefix {:?} is already up (state in {}); run `strait-lab down` first",
            paths.prefix,
            paths.dir.display()
        );
    }
    for b in ["strait-coordinator", "strait-agent", "straitctl"] {
        if !paths.bin(b).is_file() {
            bail!(
                "{} not found; build the workspace first (`cargo build --release`) or set STRAIT_BIN_DIR",
                paths.bin(b).display()
            );
        }
    }
    let started = Instant::now();
    match build(paths, progress) {
        Ok(agents) => Ok(LabUp {
            elapsed: started.elapsed(),
            namespaces: paths.namespaces().len(),
            agents,
        }),
        Err(e) => {
            let logs = tail_logs(&paths.dir.join("logs"));
            let _ = down(paths);
            Err(e.context(format!(
                "the lab did not come up; it was removed again.{logs}"
            )))
        }
    }
}

fn tail_logs(dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let last = &lines[lines.len().saturating_sub(5)..];
        out.push_str(&format!(
            "\n--- {} (last lines)\n{}",
            f.display(),
            last.join("\n")
        ));
    }
    out
}

fn build(paths: &LabPaths, progress: &mut dyn FnMut(&str)) -> Result<usize> {
    std::fs::create_dir_all(paths.dir.join("logs"))
        .with_context(|| format!("creating {}", paths.dir.display()))?;
    restrict(&paths.dir)?;

    progress("network namespaces: an internet router, the coordinator, 3 sites x (gateway, member, workload)");
    let inet = paths.ns("inet");
    add_ns(&inet)?;
    exec_in(&inet, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    let coord = paths.ns("coord");
    add_ns(&coord)?;
    veth(&coord, "up0", &inet, "ctl0")?;
    ip_in(
        &inet,
        &[
            "addr",
            "add",
            &format!("{}/{}", COORD_NET.0, COORD_NET.2),
            "dev",
            "ctl0",
        ],
    )?;
    ip_in(
        &coord,
        &[
            "addr",
            "add",
            &format!("{}/{}", COORD_NET.1, COORD_NET.2),
            "dev",
            "up0",
        ],
    )?;
    ip_in(&coord, &["route", "add", "default", "via", COORD_NET.0])?;
    for s in &SITES {
        let gw = paths.ns(&format!("{}-gw", s.tag));
        let vm = paths.ns(&format!("{}-vm", s.tag));
        let m1 = paths.ns(&format!("{}-m1", s.tag));
        for n in [&gw, &vm, &m1] {
            add_ns(n)?;
        }
        let (router, gateway, len) = s.uplink;
        veth(&gw, "up0", &inet, &format!("{}0", s.tag))?;
        ip_in(
            &inet,
            &[
                "addr",
                "add",
                &format!("{router}/{len}"),
                "dev",
                &format!("{}0", s.tag),
            ],
        )?;
        ip_in(
            &gw,
            &["addr", "add", &format!("{gateway}/{len}"), "dev", "up0"],
        )?;
        ip_in(&gw, &["route", "add", "default", "via", router])?;
        let lan = format!("10.{}.0", s.octet);
        ip_in(&gw, &["link", "add", "br0", "type", "bridge"])?;
        ip_in(&gw, &["addr", "add", &format!("{lan}.1/24"), "dev", "br0"])?;
        ip_in(&gw, &["link", "set", "br0", "up"])?;
        for (host, port, last) in [(&vm, "lan0", 10), (&m1, "lan1", 20)] {
            veth(&gw, port, host, "eth0")?;
            ip_in(&gw, &["link", "set", port, "master", "br0"])?;
            ip_in(
                host,
                &["addr", "add", &format!("{lan}.{last}/24"), "dev", "eth0"],
            )?;
        }
        // The gateway is also the site's NAT toward the internet (like a cloud NAT
        // gateway), so members reach the coordinator; traffic to other sites leaves
        // through the tunnel and is not translated.
        exec_in(
            &gw,
            &[
                "nft",
                &format!(
                    "add table ip nat; add chain ip nat post {{ type nat hook postrouting priority 100 ; }} ; add rule ip nat post ip saddr {lan}.0/24 oifname \"up0\" masquerade"
                ),
            ],
        )?;
        // The workload's VPC route table: everything via the gateway.
        ip_in(
            &vm,
            &["route", "add", "default", "via", &format!("{lan}.1")],
        )?;
        // The member reaches the coordinator through its gateway and other sites only
        // through the routes its agent installs.
        ip_in(
            &m1,
            &[
                "route",
                "add",
                &format!("{}/{}", COORD_NET.1, 32),
                "via",
                &format!("{lan}.1"),
            ],
        )?;
    }

    progress("coordinator: built-in CA, embedded store");
    let coord_state = paths.dir.join("coordinator");
    let mut init = Command::new(paths.bin("strait-coordinator"));
    init.arg("init").arg("--state-dir").arg(&coord_state).args([
        "--mesh",
        "lab",
        "--listen",
        &paths.coordinator_addr(),
    ]);
    for s in &SITES {
        init.arg("--site").arg(format!(
            "{}:{}:{}:10.{}.0.0/16",
            s.name, s.cloud, s.region, s.octet
        ));
    }
    run(&mut init)?;
    daemon(
        &coord,
        &paths.bin("strait-coordinator"),
        &[
            "serve".into(),
            "--config".into(),
            coord_state.join("coordinator.toml").display().to_string(),
        ],
        &[],
        &paths.dir.join("logs/coordinator.log"),
    )?;
    wait(Duration::from_secs(15), "the coordinator to answer", || {
        paths
            .ctl(&["--timeout", "1s", "status"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })?;

    progress("agents: a gateway and a member per site, enrolled with join tokens");
    let mut agents = 0;
    for s in &SITES {
        for (role, node, ns, extra) in [
            (
                "gateway",
                "gw-1",
                paths.ns(&format!("{}-gw", s.tag)),
                vec![
                    "--prefix".to_string(),
                    format!("10.{}.0.0/16", s.octet),
                    "--endpoint".to_string(),
                    format!("public={}:51820", s.uplink.1),
                    "--endpoint".to_string(),
                    format!("private=10.{}.0.1:51820", s.octet),
                ],
            ),
            (
                "member",
                "app-1",
                paths.ns(&format!("{}-m1", s.tag)),
                vec![
                    "--endpoint".to_string(),
                    format!("private=10.{}.0.20:51820", s.octet),
                ],
            ),
        ] {
            let out = run(&mut paths.ctl(&[
                "token", "create", "--site", s.name, "--role", role, "--ttl", "10m",
            ]))?;
            let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let state = paths.dir.join(format!("{}-{node}", s.name));
            let mut args: Vec<String> = [
                "run",
                "--mesh",
                "lab",
                "--site",
                s.name,
                "--node",
                node,
                "--role",
                role,
                "--coordinator",
                &paths.coordinator_addr(),
                "--state-dir",
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
            args.push(state.display().to_string());
            args.extend(extra);
            daemon(
                &ns,
                &paths.bin("strait-agent"),
                &args,
                &[("STRAIT_JOIN_TOKEN", &token)],
                &paths.dir.join(format!("logs/{}-{node}.log", s.name)),
            )?;
            agents += 1;
        }
    }

    progress("waiting until tunnels carry traffic between every pair of sites");
    for from in &SITES {
        for to in SITES.iter().filter(|t| t.name != from.name) {
            let target = format!("10.{}.0.10", to.octet);
            for (host, what) in [("vm", "workload"), ("m1", "member")] {
                let ns = paths.ns(&format!("{}-{host}", from.tag));
                wait(
                    Duration::from_secs(40),
                    &format!(
                        "{} {what} to reach {} workload {target}",
                        from.name, to.name
                    ),
                    || ping(&ns, &target),
                )?;
            }
        }
    }
    Ok(agents)
}

/// The lab's state directory holds CA and agent keys: root only.
fn restrict(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", dir.display()))
}

/// What `down` removed.
#[derive(Debug, Default)]
pub struct LabDown {
    pub processes: usize,
    pub namespaces: usize,
    pub dir_removed: bool,
}

/// Stops every process in the lab's namespaces (SIGTERM, SIGKILL after 5 s), deletes the
/// namespaces and the state directory. Safe to run when nothing (or half a lab) is up.
pub fn down(paths: &LabPaths) -> Result<LabDown> {
    let namespaces = paths.namespaces();
    let mut report = LabDown::default();
    let pids_in = |ns: &str| -> Vec<String> {
        Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let all_pids =
        |nss: &[String]| -> Vec<String> { nss.iter().flat_map(|n| pids_in(n)).collect() };
    let pids = all_pids(&namespaces);
    report.processes = pids.len();
    if !pids.is_empty() {
        let _ = Command::new("kill")
            .args(&pids)
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !all_pids(&namespaces).is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
        let left = all_pids(&namespaces);
        if !left.is_empty() {
            let _ = Command::new("kill")
                .arg("-9")
                .args(&left)
                .stderr(Stdio::null())
                .status();
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let mut failed = Vec::new();
    for ns in &namespaces {
        match ip(&["netns", "del", ns]) {
            Ok(()) => report.namespaces += 1,
            Err(e) => failed.push(format!("{ns}: {e}")),
        }
    }
    if paths.dir.exists() {
        std::fs::remove_dir_all(&paths.dir)
            .with_context(|| format!("removing {}", paths.dir.display()))?;
        report.dir_removed = true;
    }
    if !failed.is_empty() {
        bail!("could not delete namespaces: {}", failed.join("; "));
    }
    Ok(report)
}
