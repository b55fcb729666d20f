//! `straitctl`: inspect and operate a Strait mesh.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use strait_coordinator::ctl::{self, exit};
use strait_pki::Role;
use strait_proto::msg::{Request, Response};

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

async fn run(cli: &Cli) -> anyhow::Result<()> {
    let request = match &cli.command {
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
        Command::Revoke { node } => Request::Revoke { node: node.clone() },
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
