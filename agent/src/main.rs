//! `strait-agent`: the node agent.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::{Parser, Subcommand};
use strait_agent::config::{Config, Dataplane, Overrides};
use strait_agent::dataplane::pump::Counters;
use strait_agent::metrics::AgentMetrics;
use strait_agent::wgkey::WgKey;
use strait_agent::{bgp, control, dataplane};
use strait_observe::{logging, signal, Readiness};

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The Strait node agent.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Log format: text or json.
    #[arg(long, env = "STRAIT_LOG_FORMAT", default_value = "text", global = true)]
    log_format: logging::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Enroll if needed, then keep this node in the mesh.
    Run {
        /// Agent config file (TOML); every key can also be a flag or STRAIT_* variable.
        #[arg(long, env = "STRAIT_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Box<Overrides>,
    },
    /// Remove what a stopped agent leaves in the kernel on purpose: its fail-closed
    /// routes and its policy rule (traffic for other sites then takes the main table).
    /// Run it when taking Strait off a node; the state directory is left alone.
    Uninstall,
    /// Validate the configuration `run` would use (file, flags and STRAIT_* variables)
    /// without starting anything; exits non-zero naming the key and the value at fault.
    CheckConfig {
        /// Agent config file (TOML).
        #[arg(long, env = "STRAIT_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        overrides: Box<Overrides>,
    },
}

/// The `STRAIT_*` variables some flag of this binary reads.
fn known_variables() -> std::collections::BTreeSet<String> {
    fn walk(cmd: &clap::Command, out: &mut std::collections::BTreeSet<String>) {
        for arg in cmd.get_arguments() {
            if let Some(env) = arg.get_env() {
                out.insert(env.to_string_lossy().into_owned());
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(&<Cli as clap::CommandFactory>::command(), &mut out);
    out
}

fn check_config(path: &std::path::Path, overrides: Overrides) -> Result<()> {
    let unknown =
        strait_agent::checkconfig::unknown_variables(std::env::vars(), &known_variables());
    if !unknown.is_empty() {
        anyhow::bail!(
            "unknown variable(s) {}: no setting of strait-agent reads them (see `strait-agent run --help` for the STRAIT_* names); fix or remove them",
            unknown.join(", ")
        );
    }
    let checked = strait_agent::checkconfig::check(path, overrides)?;
    for note in &checked.notes {
        eprintln!("note: {note}");
    }
    println!("{}", checked.summary(path));
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    match cli.command {
        Command::CheckConfig { config, overrides } => check_config(&config, *overrides),
        Command::Run { config, overrides } => {
            let config = Config::load(config.as_deref(), *overrides)?;
            control::preflight(&config)?;
            // Enroll (or load the certificate) before touching the network, so a node that
            // cannot join never creates a TUN device or routes.
            strait_agent::enroll::ensure_certificate(&config).await?;
            let (maps, maps_rx) = tokio::sync::watch::channel(None);
            let (conflicts_tx, conflicts_rx) = tokio::sync::watch::channel(Vec::new());
            let (links_tx, links_rx) = tokio::sync::watch::channel(Vec::new());
            let (access_tx, access_rx) = tokio::sync::watch::channel(Vec::new());
            let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
            let mut dataplane = None;
            let (up_tx, up_rx) = tokio::sync::watch::channel(Vec::new());
            let (bgp_tx, mut bgp_rx) = tokio::sync::watch::channel(bgp::Status::default());
            let (bgp_report_tx, bgp_report) = tokio::sync::watch::channel(None);
            let mut bgp_task = None;
            let mut pings = None;
            let counters = Arc::new(Counters::default());
            let metrics = Arc::new(AgentMetrics::new(
                links_rx.clone(),
                conflicts_rx.clone(),
                (config.dataplane == Dataplane::Userspace).then(|| counters.clone()),
            ));
            let readiness = Arc::new(Readiness::new("no network map yet"));
            let _metrics_server = match config.metrics_listen {
                Some(addr) => {
                    let listener = strait_observe::http::bind(addr)
                        .await
                        .map_err(anyhow::Error::msg)?;
                    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
                    Some(AbortOnDrop(tokio::spawn(strait_observe::http::serve(
                        listener,
                        Arc::new(metrics.registry()),
                        readiness.clone(),
                    ))))
                }
                None => None,
            };
            let wg = WgKey::load_or_create(&config.state_dir.join("wg.key"))?;
            let (keys_tx, keys_rx) = tokio::sync::watch::channel(Arc::new(wg));
            if config.dataplane == Dataplane::Userspace {
                if let Some(settings) = &config.bgp {
                    bgp::withdraw_stale(settings, &config.tun_name).await;
                }
                let (pings_tx, pings_rx) = tokio::sync::mpsc::channel(16);
                pings = Some(pings_tx);
                let (member_gateways_tx, member_gateways_rx) =
                    tokio::sync::watch::channel(Vec::new());
                metrics.set_member_gateways(member_gateways_rx);
                let settings = dataplane::Settings {
                    tun_name: config.tun_name.clone(),
                    mtu: config.mtu,
                    underlay_targets: config.coordinators.clone(),
                    listen_port: config.listen_port,
                    keepalive: config.persistent_keepalive,
                    forward: config.role == strait_pki::Role::Gateway,
                    probe_interval: config.probe_interval,
                    fail_closed: config.fail_closed,
                    mss_clamp: config.mss_clamp,
                };
                let mut stop = stop_tx.subscribe();
                dataplane = Some(tokio::spawn(async move {
                    dataplane::run(
                        settings,
                        keys_rx,
                        maps_rx,
                        dataplane::Reports {
                            conflicts: conflicts_tx,
                            links: links_tx,
                            counters,
                            access_drops: access_tx,
                            up_peers: up_tx,
                            member_gateways: member_gateways_tx,
                        },
                        pings_rx,
                        async move {
                            let _ = stop.recv().await;
                        },
                    )
                    .await
                }));
            }
            if let (Some(settings), Dataplane::Userspace) = (config.bgp.clone(), config.dataplane) {
                let mut stop = stop_tx.subscribe();
                let maps = maps.subscribe();
                let tun = config.tun_name.clone();
                tracing::info!(config = %settings.bird_config.display(), neighbors = settings.neighbors.len(), "driving BIRD for BGP to the site's routers");
                bgp_task = Some(tokio::spawn(bgp::run(
                    settings,
                    tun,
                    maps,
                    up_rx,
                    bgp_tx,
                    async move {
                        let _ = stop.recv().await;
                    },
                )));
                metrics.set_bgp(bgp_report.clone());
                // The report to the coordinator and the metrics follow BIRD's status.
                tokio::spawn(async move {
                    while bgp_rx.changed().await.is_ok() {
                        let report = bgp_rx.borrow_and_update().report();
                        bgp_report_tx.send_replace(Some(report));
                    }
                });
            }
            let mut stop = stop_tx.subscribe();
            let reports = control::DataplaneChannels {
                conflicts: conflicts_rx,
                links: links_rx,
                access_drops: access_rx,
                bgp: bgp_report,
                pings,
                keys: keys_tx,
            };
            let telemetry = control::Telemetry { metrics, readiness };
            let control = control::run(config, maps, reports, telemetry, async move {
                let _ = stop.recv().await;
            });
            tokio::pin!(control);
            let dataplane_done = async {
                match dataplane.as_mut() {
                    Some(handle) => handle.await,
                    None => std::future::pending().await,
                }
            };
            let result = tokio::select! {
                r = &mut control => r,
                _ = signal::shutdown() => {
                    let _ = stop_tx.send(());
                    control.await
                }
                r = dataplane_done => {
                    // The data plane cannot run: stop the control plane and report why.
                    let _ = stop_tx.send(());
                    let _ = control.await;
                    return match r {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(e.context("data plane")),
                        Err(e) => Err(anyhow::anyhow!("data plane task failed: {e}")),
                    };
                }
            };
            let _ = stop_tx.send(());
            if let Some(task) = bgp_task {
                let _ = task.await;
            }
            if let Some(dp) = dataplane {
                match dp.await {
                    Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "data plane failed"),
                    Err(e) => tracing::error!(error = %e, "data plane task failed"),
                    Ok(Ok(())) => {}
                }
            }
            result
        }
        Command::Uninstall => {
            let routes = dataplane::uninstall().await?;
            println!("removed {routes} Strait routes and the policy rule; traffic for other sites now takes the main routing table");
            Ok(())
        }
    }
}
