//! `straitctl`: inspect and operate a Strait mesh.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use strait_ctl::{self as ctl, exit};
use strait_pki::{OperatorRole, Role};
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
    /// Every site's gateways: priority, whether each carries traffic, tunnels up, bytes,
    /// BGP sessions and the prefixes each announces to its routers.
    Gateways,
    /// Which site (and node) an address belongs to: a global address of a site with
    /// global prefixes, a real address (of several sites, if their address space
    /// overlaps), or an overlay address.
    Resolve {
        /// An IPv4 or IPv6 address, e.g. 10.200.0.10.
        address: std::net::IpAddr,
    },
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
    /// Operator certificates (admin): each names a role, viewer (read-only commands),
    /// operator (also tokens, probes, key rotation) or admin (also revocation, external
    /// peers, operator certificates).
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
    /// The audit log of state-changing requests (who, when, what, with what result),
    /// newest first.
    Audit {
        /// At most this many entries.
        #[arg(long, short = 'n', default_value_t = 50)]
        limit: u32,
        /// Only entries older than this sequence number (to page back).
        #[arg(long)]
        before: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
enum OperatorCommand {
    /// Make a key here and have the coordinator certify it for operator NAME with a role;
    /// cert.pem, key.pem (0600) and ca.pem go to --out (use it as --tls-dir).
    Create {
        name: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: OperatorRole,
        /// Directory to write the certificate into (created 0700; must not hold one).
        #[arg(long)]
        out: PathBuf,
        /// Lifetime, at most 90 days.
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        ttl: Duration,
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

/// `straitctl operator create`: the key is made here and never sent; the coordinator
/// certifies it.
async fn create_operator(
    cli: &Cli,
    name: &str,
    role: OperatorRole,
    out: &std::path::Path,
    ttl: Duration,
) -> anyhow::Result<()> {
    use anyhow::Context;
    if out.join("key.pem").exists() || out.join("cert.pem").exists() {
        anyhow::bail!(
            "{} already holds a certificate; choose another --out directory",
            out.display()
        );
    }
    let key = strait_pki::ca::generate_csr(name).context("making the operator's key")?;
    let request = Request::CreateOperator {
        name: name.to_string(),
        role,
        csr_pem: key.csr_pem.clone(),
        ttl_secs: ttl.as_secs(),
    };
    let response = ctl::request(&cli.coordinator, &cli.tls_dir, &request, cli.timeout).await?;
    let Response::OperatorCreated {
        cert_pem,
        ca_pem,
        identity,
        serial,
        expires_at,
    } = response
    else {
        anyhow::bail!("unexpected answer from the coordinator: {response:?}");
    };
    let leaf = strait_pki::material::parse_certs("the operator certificate", &cert_pem)?
        .into_iter()
        .next()
        .context("the coordinator sent no certificate")?;
    let bundle = strait_pki::ca::bundle_from_signed(&leaf, key.key, &ca_pem)?;
    strait_pki::files::private_dir(out).map_err(anyhow::Error::msg)?;
    bundle
        .save(out)
        .with_context(|| format!("writing the certificate to {}", out.display()))?;
    if cli.output == Output::Json {
        print!(
            "{}",
            json(
                &serde_json::json!({ "identity": identity, "serial": serial, "expires-at": expires_at, "dir": out })
            )
        );
    } else {
        println!(
            "{identity}: certificate {serial} in {} (use it with --tls-dir), expires at unix time {expires_at}",
            out.display()
        );
    }
    Ok(())
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
    if let Command::Operator {
        command:
            OperatorCommand::Create {
                name,
                role,
                out,
                ttl,
            },
    } = &cli.command
    {
        return create_operator(cli, name, *role, out, *ttl).await;
    }
    let request = match &cli.command {
        Command::Probe { .. } | Command::Operator { .. } => unreachable!("handled above"),
        Command::Audit { limit, before } => Request::Audit {
            limit: *limit,
            before: *before,
        },
        Command::Status => Request::Status,
        Command::Nodes => Request::Nodes,
        Command::Routes => Request::Routes,
        Command::Resolve { address } => Request::Resolve { address: *address },
        Command::Links => Request::Links,
        Command::Gateways => Request::Gateways,
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
        (_, Response::Resolved { address, matches }) => {
            if as_json {
                json(&serde_json::json!({ "address": address, "matches": matches }))
            } else {
                ctl::render_resolved(address, &matches)
            }
        }
        (_, Response::Links { links }) => {
            if as_json {
                json(&links)
            } else {
                ctl::render_links(&links)
            }
        }
        (_, Response::Gateways { gateways }) => {
            if as_json {
                json(&gateways)
            } else {
                ctl::render_gateways(&gateways)
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
        (_, Response::Audit { entries }) => {
            if as_json {
                json(&entries)
            } else {
                ctl::render_audit(&entries)
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
