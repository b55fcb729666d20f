//! Control-plane fan-out benchmark.
//!
//! Starts a real `strait-coordinator` (release build, next to this binary) and connects N
//! simulated agents (QUIC sessions in this process, certificates from the mesh's built-in
//! CA): one gateway per site, the rest members spread over the sites. Then, once per round,
//! a gateway joins a new site, and the benchmark measures how long that new node's entry
//! (a peer for gateways, a route for members) takes to reach all N maps. Prints
//! p50/p99/max and the coordinator's RSS and CPU.
//!
//!     cargo build --release --workspace
//!     target/release/controlplane --agents 100 --rounds 10

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use clap::Parser;
use strait_pki::ca::{BuiltinCa, Validity};
use strait_pki::tls::{client_config, quic_client_config, CertStore};
use strait_pki::{Identity, Role};
use strait_proto::frame::MAX_FRAME;
use strait_proto::msg::{AgentEvent, Endpoint, EndpointKind, Registration, Request, SessionEvent};
use strait_proto::{client, io as wire, ALPN};

#[derive(Parser, Debug)]
struct Args {
    /// Simulated agents kept connected (one gateway per site, the rest members).
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// New gateways added one after another (each in a new site); each is one fan-out
    /// measurement.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=50))]
    rounds: u16,
    /// Sites the agents are spread over.
    #[arg(long, default_value_t = 20)]
    sites: usize,
}

const SITE_PREFIX: &str = "s";

fn main() -> Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}

struct CoordinatorProcess {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("binary directory")?.join(name);
    if !path.is_file() {
        bail!(
            "{} not found; run `cargo build --release --workspace` first",
            path.display()
        );
    }
    Ok(path)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    ticks / 100.0
}

fn start_coordinator(args: &Args) -> Result<(CoordinatorProcess, SocketAddr, PathBuf)> {
    let dir = tempfile::Builder::new().prefix("strait-bench-").tempdir()?;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let state = dir.path().join("state");
    let mut init = Command::new(sibling("strait-coordinator")?);
    init.args(["init", "--mesh", "bench", "--listen", &addr.to_string()])
        .arg("--state-dir")
        .arg(&state);
    for i in 0..args.sites {
        init.arg("--site").arg(format!(
            "{SITE_PREFIX}{i}:bench:local:10.{}.0.0/16",
            i % 200
        ));
    }
    // One new site per round, for that round's new gateway.
    for r in 0..args.rounds {
        init.arg("--site")
            .arg(format!("new{r}:bench:local:10.{}.0.0/16", 200 + r));
    }
    let out = init.output()?;
    if !out.status.success() {
        bail!("init: {}", String::from_utf8_lossy(&out.stderr));
    }
    let config = state.join("coordinator.toml");
    let mut text = std::fs::read_to_string(&config)?.replace(
        "heartbeat-timeout = \"15s\"",
        "heartbeat-timeout = \"120s\"",
    );
    // Every simulated agent connects from 127.0.0.1: one address, like agents behind a NAT.
    let room = (args.agents as u64 * 2).max(10_000);
    text.push_str(&format!(
        "\n[limits]\nmax-connections = {room}\nmax-connections-per-address = {room}\n"
    ));
    std::fs::write(&config, text)?;
    // BENCH_COORDINATOR_WRAPPER="heaptrack -o /tmp/coord" runs the coordinator under a
    // profiler (the figures are then the profiler's, not the coordinator's).
    let wrapper = std::env::var("BENCH_COORDINATOR_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut serve = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(sibling("strait-coordinator")?);
            c
        }
        None => Command::new(sibling("strait-coordinator")?),
    };
    let child = serve
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    Ok((CoordinatorProcess { child, _dir: dir }, addr, state))
}

/// When each agent saw each new node: node id -> arrival instants.
type Seen = Arc<Mutex<HashMap<String, Vec<(usize, Instant)>>>>;

struct Sim {
    ca: Arc<BuiltinCa>,
    addr: SocketAddr,
    endpoints: Vec<quinn::Endpoint>,
}

impl Sim {
    async fn connect_agent(
        &self,
        i: usize,
        site: &str,
        name: &str,
        role: Role,
        prefix: Option<ipnetwork::IpNetwork>,
        seen: Option<Seen>,
    ) -> Result<tokio::sync::oneshot::Receiver<()>> {
        let id = Identity::node("bench", site, name, role)?;
        let bundle = self
            .ca
            .issue(&id, Validity::for_lifetime(Duration::from_secs(3600)))?;
        let cas = bundle.ca.clone();
        let tls = client_config(
            &cas,
            Some(CertStore::new(bundle)?),
            "bench",
            &[Role::Coordinator],
            ALPN,
        )?;
        let endpoint = &self.endpoints[i % self.endpoints.len()];
        let conn = client::connect(
            endpoint,
            self.addr,
            quic_client_config(tls)?,
            Duration::from_secs(30),
        )
        .await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .map_err(|_| anyhow::anyhow!("rng"))?;
        let reg = Registration {
            wg_public_key: base64::engine::general_purpose::STANDARD.encode(key),
            endpoints: vec![Endpoint {
                address: format!("192.0.2.{}:51820", 1 + i % 250).parse()?,
                kind: EndpointKind::Private,
                cost: None,
            }],
            prefixes: prefix.into_iter().collect(),
            agent_version: "bench".into(),
            have_version: None,
            priority: 0,
        };
        wire::write(&mut send, &Request::Subscribe(reg)).await?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
            loop {
                heartbeat.tick().await;
                if wire::write(&mut send, &AgentEvent::Heartbeat { map_version: 0 })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            let _conn = conn;
            let mut ready = Some(ready_tx);
            loop {
                let ev = match wire::read::<SessionEvent, _>(&mut recv, MAX_FRAME).await {
                    Ok(Some(ev)) => ev,
                    Ok(None) => {
                        eprintln!("agent {i}: session stream ended");
                        break;
                    }
                    Err(e) => {
                        eprintln!("agent {i}: session failed: {e}");
                        break;
                    }
                };
                let now = Instant::now();
                match ev {
                    SessionEvent::Command(_) => {}
                    SessionEvent::Snapshot(_) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                    SessionEvent::Delta(d) => {
                        if let Some(seen) = &seen {
                            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                            let sites = d
                                .upsert_peers
                                .iter()
                                .map(|p| &p.site)
                                .chain(d.upsert_routes.iter().map(|r| &r.site));
                            for site in sites {
                                if let Some(v) = seen.get_mut(site) {
                                    v.push((i, now));
                                }
                            }
                        }
                    }
                    SessionEvent::Closing(e) => {
                        eprintln!("agent {i}: coordinator closed the session: {e}")
                    }
                    SessionEvent::Registered(_) => {}
                }
            }
        });
        Ok(ready_rx)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn run(args: Args) -> Result<()> {
    let (coord, addr, state) = start_coordinator(&args)?;
    let pid = coord.child.id();
    let ca = Arc::new(BuiltinCa::load(&state, "bench")?);
    let mut endpoints = Vec::new();
    for _ in 0..8 {
        endpoints.push(quinn::Endpoint::client("127.0.0.1:0".parse()?)?);
    }
    let sim = Arc::new(Sim {
        ca,
        addr,
        endpoints,
    });
    let seen: Seen = Arc::new(Mutex::new(HashMap::new()));

    let t0 = Instant::now();
    let cpu_start = cpu_seconds(pid);
    let mut ready = Vec::new();
    for i in 0..args.agents {
        let site = format!("{SITE_PREFIX}{}", i % args.sites);
        let (name, role, prefix) = if i < args.sites {
            (
                format!("gw{i}"),
                Role::Gateway,
                Some(format!("10.{}.0.0/16", i % 200).parse()?),
            )
        } else {
            (format!("m{i}"), Role::Member, None)
        };
        ready.push(
            sim.connect_agent(i, &site, &name, role, prefix, Some(seen.clone()))
                .await?,
        );
    }
    for r in ready {
        r.await.context("an agent never got its snapshot")?;
    }
    let connect_time = t0.elapsed();
    let cpu_connect = cpu_seconds(pid) - cpu_start;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected = rss_kib(pid);

    let mut all = Vec::new();
    let mut per_round_p99 = Vec::new();
    let cpu_before = cpu_seconds(pid);
    for round in 0..args.rounds {
        let id = format!("new{round}");
        seen.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Vec::new());
        let prefix = format!("10.{}.0.0/16", 200 + round).parse()?;
        let start = Instant::now();
        let ready = sim
            .connect_agent(
                args.agents + round as usize,
                &id,
                "gw",
                Role::Gateway,
                Some(prefix),
                None,
            )
            .await?;
        ready.await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n = seen.lock().unwrap_or_else(|p| p.into_inner())[&id].len();
            if n >= args.agents {
                break;
            }
            if Instant::now() > deadline {
                let got: std::collections::BTreeSet<usize> =
                    seen.lock().unwrap_or_else(|p| p.into_inner())[&id]
                        .iter()
                        .map(|x| x.0)
                        .collect();
                let missing: Vec<usize> = (0..args.agents)
                    .filter(|i| !got.contains(i))
                    .take(20)
                    .collect();
                bail!("round {round}: only {n} of {} agents saw the new node within 30 s; missing agents {missing:?}", args.agents);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut lat: Vec<Duration> = seen.lock().unwrap_or_else(|p| p.into_inner())[&id]
            .iter()
            .map(|t| t.1 - start)
            .collect();
        lat.sort();
        per_round_p99.push(percentile(&lat, 0.99));
        all.extend(lat);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cpu = cpu_seconds(pid) - cpu_before;
    all.sort();
    let rss_end = rss_kib(pid);
    println!(
        "control-plane fan-out: {} agents ({} gateways, {} members) over {} sites, {} rounds (a gateway in a new site each)",
        args.agents,
        args.sites.min(args.agents),
        args.agents.saturating_sub(args.sites),
        args.sites,
        args.rounds
    );
    println!(
        "  connect+register all agents: {:.2} s ({:.0} agents/s), coordinator CPU {cpu_connect:.2} s",
        connect_time.as_secs_f64(),
        args.agents as f64 / connect_time.as_secs_f64()
    );
    println!(
        "  new node reaches all maps: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  (n = {})",
        percentile(&all, 0.5).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
        all.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        all.len()
    );
    let mut rp = per_round_p99.clone();
    rp.sort();
    println!(
        "  per-round p99: median {:.1} ms, worst {:.1} ms",
        percentile(&rp, 0.5).as_secs_f64() * 1e3,
        rp.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "  coordinator RSS: {:.1} MiB with all connected, {:.1} MiB at the end",
        rss_connected as f64 / 1024.0,
        rss_end as f64 / 1024.0
    );
    println!("  coordinator CPU during the rounds: {cpu:.2} s");
    drop(coord);
    Ok(())
}
