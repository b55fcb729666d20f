//! `straitctl`: inspect and operate a Strait mesh.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use strait_coordinator::ctl::{self, exit};
use strait_pki::Role;
use strait_proto::msg::{Request, Response};
use strait_proto::probe::ProbeRequest;

/// Inspect and operate a Strait mesh (connects to the coordinator with an operator certificate).
///
/// Exit codes: 0 ok, 1 refused, 2 usage, 3 unreachable (network/TLS/certificate),
/// 4 permission denied, 5 not found, 6 invalid request.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Coordinator address, host:port.
    #[arg(
        long,
        short = 'c',
        env = "STRAIT_COORDINATOR",
        global = true,
        default_value = "127.0.0.1:7443"
    )]
    coordinator: String,
    /// Directory with the operator certificate (cert.pem, key.pem, ca.pem).
    #[arg(
        long,
        env = "STRAIT_TLS_DIR",
        global = true,
        default_value = "/etc/strait/operator"
    )]
    tls_dir: PathBuf,
    /// Output: table for people, json for scripts.
    #[arg(long, short = 'o', value_enum, global = true, default_value = "table")]
    output: Output,
    /// How long to wait for the coordinator.
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum GraphFormat {
    Dot,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mesh summary: sites, nodes online, map version.
    Status,
    /// Every node: site, role, overlay address, state, certificate expiry.
    Nodes,
    /// Advertised prefixes by site and node, with refused ones and why.
    Routes,
    /// Peer pairs and their state.
    Links,
    /// The topology: sites as clusters, nodes, links.
    Graph {
        #[arg(long, value_enum, default_value = "dot")]
        format: GraphFormat,
    },
    /// Join tokens for enrolling nodes with the built-in CA.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Revoke a node's certificates and remove it from the mesh (NODE or SITE/NODE).
    Revoke { node: String },
    /// Rotate a node's WireGuard key now (NODE or SITE/NODE; it must be connected to this
    /// coordinator): the new key is announced to its peers, then used a few seconds later.
    RotateKey { node: String },
    /// Probe the tunnel from node FROM to node TO: RTT on every path, one line per reply
    /// (like `ping`), or with --throughput a transfer through the tunnel in Mbit/s.
    Probe {
        /// The probing node (NODE or SITE/NODE).
        from: String,
        /// The probed node; it must be a tunnel peer of FROM (two gateways, say).
        to: String,
        /// RTT rounds, each one probe per path.
        #[arg(long, short = 'n', default_value_t = 5)]
        count: u32,
        /// Time between rounds.
        #[arg(long, short = 'i', default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Measure throughput instead: FROM sends to TO through the tunnel.
        #[arg(long)]
        throughput: bool,
        /// Length of the throughput transfer (1s to 30s).
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// The inter-site access policy (`[policy]`: rules in the order they are tried) and,
    /// per gateway, whether it has it and the packets it dropped.
    Policy,
    /// Plain WireGuard devices declared in the coordinator's [[external-peers]].
    ExternalPeer {
        #[command(subcommand)]
        command: ExternalPeerCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ExternalPeerCommand {
    /// Print a wg-quick style config for the device (its private key stays a placeholder).
    Config { name: String },
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a single-use join token; prints the token on stdout.
    Create {
        #[arg(long)]
        site: String,
        /// gateway or member.
        #[arg(long)]
        role: Role,
        /// Lifetime, e.g. 15m or 24h.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("straitctl: cannot start: {e}");
            std::process::exit(exit::FAILED);
        }
    };
    let code = match runtime.block_on(run(&cli)) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("straitctl: {e:#}");
            ctl::exit_code(&e)
        }
    };
    std::process::exit(code);
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

/// `straitctl probe`: events printed as they come, then a summary.
async fn probe(cli: &Cli, request: &Request, from: &str, to: &str) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    let as_json = cli.output == Output::Json;
    let tty = std::io::stdout().is_terminal();
    let mut view = ctl::ProbeView::default();
    let mut overwrite = false;
    let throughput = matches!(request, Request::Probe(r) if r.throughput_secs.is_some());
    // The header waits for the first event, so a refused probe prints only the error.
    let mut header = (!as_json).then(|| {
        if throughput {
            format!("{from} -> {to}: throughput through the tunnel")
        } else {
            format!("{from} -> {to}: probing every path")
        }
    });
    // Each answer comes within a round (or a progress second); a transfer's result may take
    // its whole slack.
    let idle = cli.timeout.max(Duration::from_secs(40));
    ctl::stream(&cli.coordinator, &cli.tls_dir, request, idle, |response| {
        let Response::Probe { node, event } = response else {
            return;
        };
        let mut out = std::io::stdout().lock();
        if let Some(h) = header.take() {
            let _ = writeln!(out, "{h}");
        }
        if as_json {
            let _ = writeln!(
                out,
                "{}",
                serde_json::json!({ "node": node, "event": event })
            );
            return;
        }
        let progress = matches!(event, strait_proto::probe::ProbeEvent::Progress { .. });
        if let Some(line) = view.line(to, &event) {
            if progress && tty {
                let _ = write!(out, "\r{line}");
                overwrite = true;
            } else {
                let _ = writeln!(out, "{line}");
            }
            let _ = out.flush();
        }
    })
    .await?;
    if overwrite {
        println!();
    }
    if !as_json {
        print!("{}", view.summary(from, to));
    }
    Ok(())
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    if let Command::Probe {
        from,
        to,
        count,
        interval,
        throughput,
        duration,
    } = &cli.command
    {
        let request = Request::Probe(ProbeRequest {
            from: from.clone(),
            to: to.clone(),
            count: *count,
            interval_ms: interval.as_millis() as u64,
            throughput_secs: throughput.then_some(duration.as_secs() as u32),
        });
        return probe(cli, &request, from, to).await;
    }
    let request = match &cli.command {
        Command::Probe { .. } => unreachable!("handled above"),
        Command::Status => Request::Status,
        Command::Nodes => Request::Nodes,
        Command::Routes => Request::Routes,
        Command::Links => Request::Links,
        Command::Graph { .. } => Request::Graph,
        Command::Token {
            command: TokenCommand::Create { site, role, ttl },
        } => Request::CreateToken {
            site: site.clone(),
            role: *role,
            ttl_secs: ttl.as_secs(),
        },
        Command::Policy => Request::Policy,
        Command::Revoke { node } => Request::Revoke { node: node.clone() },
        Command::RotateKey { node } => Request::RotateKey { node: node.clone() },
        Command::ExternalPeer {
            command: ExternalPeerCommand::Config { name },
        } => Request::ExternalPeerConfig { name: name.clone() },
    };
    let response = ctl::request(&cli.coordinator, &cli.tls_dir, &request, cli.timeout).await?;
    let as_json = cli.output == Output::Json;
    let text = match (&cli.command, response) {
        (_, Response::Status(s)) => {
            if as_json {
                json(&s)
            } else {
                ctl::render_status(&s)
            }
        }
        (_, Response::Nodes { nodes }) => {
            if as_json {
                json(&nodes)
            } else {
                ctl::render_nodes(&nodes)
            }
        }
        (_, Response::Routes { routes }) => {
            if as_json {
                json(&routes)
            } else {
                ctl::render_routes(&routes)
            }
        }
        (_, Response::Links { links }) => {
            if as_json {
                json(&links)
            } else {
                ctl::render_links(&links)
            }
        }
        (Command::Graph { format }, Response::Graph(g)) => {
            if as_json || *format == GraphFormat::Json {
                json(&g)
            } else {
                ctl::render_dot(&g)
            }
        }
        (_, Response::Token(t)) => {
            if as_json {
                json(&t)
            } else {
                eprintln!(
                    "join token {} for a {} in site {}, single use, expires at unix time {}",
                    t.id, t.role, t.site, t.expires_at
                );
                format!("{}\n", t.token)
            }
        }
        (_, Response::Revoked { node, serials }) => {
            if as_json {
                json(&serde_json::json!({ "node": node, "serials": serials }))
            } else {
                format!("revoked {node} ({} certificate(s))\n", serials.len())
            }
        }
        (_, Response::KeyRotation { node }) => {
            if as_json {
                json(&serde_json::json!({ "node": node }))
            } else {
                format!("{node} announced its next WireGuard key; it switches to it once its peers have it (`straitctl nodes` shows the key)\n")
            }
        }
        (_, Response::Policy(p)) => {
            if as_json {
                json(&p)
            } else {
                ctl::render_policy(&p)
            }
        }
        (_, Response::ExternalPeerConfig { config }) => {
            if as_json {
                json(&serde_json::json!({ "config": config }))
            } else {
                config
            }
        }
        (_, other) => anyhow::bail!("unexpected answer from the coordinator: {other:?}"),
    };
    print!("{text}");
    Ok(())
}
