//! `strait-coordinator`: the mesh's source of truth.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use strait_coordinator::config::Config;
use strait_coordinator::config::StoreKind;
use strait_coordinator::handlers::{Pki, VaultMode};
use strait_coordinator::init::{init, InitOptions, Layout, SiteSpec};
use strait_coordinator::renew_own;
use strait_coordinator::server::{self, Coordinator};
use strait_coordinator::store::postgres::PgStore;
use strait_coordinator::store::{SqliteStore, Store};
use strait_observe::logging;
use strait_pki::ca::BuiltinCa;
use strait_pki::renewal;
use strait_pki::tls::CertStore;
use strait_pki::vault::{VaultCertSource, VaultPki};
use strait_pki::{CertBundle, Identity, Role};

/// The Strait coordinator: holds the mesh's truth and pushes network maps to agents.
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
    /// Create a new mesh: CA, coordinator and operator certificates, and a config file.
    Init {
        /// Directory to create (it will hold the CA key; mode 0700).
        #[arg(long, env = "STRAIT_STATE_DIR")]
        state_dir: PathBuf,
        /// Mesh name (an RFC 1123 label, e.g. prod).
        #[arg(long, env = "STRAIT_MESH")]
        mesh: String,
        /// UDP address the coordinator will listen on.
        #[arg(long, default_value = strait_coordinator::config::DEFAULT_LISTEN)]
        listen: String,
        /// This coordinator's name in its certificate.
        #[arg(long, default_value = "primary")]
        name: String,
        /// Name in the operator certificate written to <state-dir>/operator.
        #[arg(long, default_value = "admin")]
        operator: String,
        /// A site as name:cloud:region:prefix[,prefix...] (repeatable).
        #[arg(long = "site")]
        sites: Vec<SiteSpec>,
        /// A free range from which sites whose address space overlaps get global prefixes
        /// (`global-cidr`; README: "Sites whose addresses overlap").
        #[arg(long)]
        global_cidr: Option<ipnetwork::IpNetwork>,
    },
    /// Validate a config file without serving (no Vault login, no store, no socket);
    /// exits non-zero naming the key and the value at fault.
    CheckConfig {
        /// The config file.
        #[arg(long, env = "STRAIT_CONFIG")]
        config: PathBuf,
    },
    /// Run the coordinator.
    Serve {
        /// The config file written by `init`.
        #[arg(long, env = "STRAIT_CONFIG")]
        config: PathBuf,
        /// Override `listen` from the config.
        #[arg(long, env = "STRAIT_LISTEN")]
        listen: Option<std::net::SocketAddr>,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    match cli.command {
        Command::Init {
            state_dir,
            mesh,
            listen,
            name,
            operator,
            sites,
            global_cidr,
        } => {
            let layout = init(&InitOptions {
                state_dir,
                mesh,
                listen,
                name,
                operator,
                sites,
                global_cidr,
            })?;
            let ca = BuiltinCa::load(&layout.root, &Config::load(&layout.config())?.mesh)?;
            println!("Created mesh state in {}", layout.root.display());
            println!("  config:          {}", layout.config().display());
            println!("  CA fingerprint:  {}", ca.fingerprint());
            println!("  operator certs:  {}", layout.operator().display());
            println!(
                "Next: strait-coordinator serve --config {}",
                layout.config().display()
            );
            Ok(())
        }
        Command::Serve { config, listen } => serve(config, listen).await,
        Command::CheckConfig { config } => check_config(&config),
    }
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

fn check_config(path: &std::path::Path) -> Result<()> {
    let known = known_variables();
    let unknown: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("STRAIT_") && !known.contains(k))
        .collect();
    if !unknown.is_empty() {
        anyhow::bail!(
            "unknown variable(s) {}: no setting of strait-coordinator reads them; fix or remove them",
            unknown.join(", ")
        );
    }
    let checked = strait_coordinator::checkconfig::check(path)?;
    for note in &checked.notes {
        eprintln!("note: {note}");
    }
    println!("{}", checked.summary(path));
    Ok(())
}

async fn serve(path: PathBuf, listen: Option<std::net::SocketAddr>) -> Result<()> {
    let mut config = Config::load(&path)?;
    if let Some(l) = listen {
        config.listen = l;
    }
    let config = Arc::new(config);
    let layout = Layout::new(&config.state_dir);
    std::fs::create_dir_all(&layout.root)
        .with_context(|| format!("creating state directory {}", layout.root.display()))?;
    let store: Box<dyn Store> = match config.store.kind {
        StoreKind::Sqlite => Box::new(SqliteStore::open(&layout.database())?),
        StoreKind::Postgres => {
            let settings = config.store.clone();
            // Connecting blocks (with a timeout); keep it off the async workers.
            let store = tokio::task::spawn_blocking(move || PgStore::open(&settings))
                .await
                .context("opening the store")??;
            tracing::info!(store = ?store, "registry in PostgreSQL, shared with any other coordinator using it");
            Box::new(store)
        }
    };
    let (certs, cas, pki, own_renewal) = match &config.pki.vault {
        None => {
            let ca = BuiltinCa::load(&layout.root, &config.mesh)
                .with_context(|| format!("loading the mesh CA from {}", layout.root.display()))?;
            let own = CertBundle::load(&layout.tls()).with_context(|| {
                format!(
                    "loading the coordinator certificate from {}",
                    layout.tls().display()
                )
            })?;
            let certs = CertStore::new(own)?;
            let renewal = renew_own::spawn(
                &layout,
                &config.mesh,
                certs.clone(),
                config.pki.coordinator_cert_lifetime,
            )
            .await?;
            (
                certs,
                vec![ca.cert_der().clone()],
                Box::new(ca) as Box<dyn Pki>,
                renewal,
            )
        }
        Some(settings) => {
            let vault = Arc::new(
                VaultPki::login(settings.to_config()?)
                    .await
                    .context("logging in to Vault (key `pki.vault`)")?,
            );
            let cas = vault
                .ca_certificates()
                .await
                .context("reading Vault's PKI CA")?;
            let identity = Identity::service(&config.mesh, &config.name, Role::Coordinator)?;
            let ttl = settings.cert_ttl()?;
            let own = vault
                .issue(&identity, ttl)
                .await
                .context("issuing the coordinator's certificate from Vault")?;
            let certs = CertStore::new(own)?;
            let renewal = renewal::spawn_counted(
                VaultCertSource {
                    pki: vault,
                    identity,
                    ttl,
                },
                certs.clone(),
            );
            (certs, cas, Box::new(VaultMode) as Box<dyn Pki>, renewal)
        }
    };
    // Bind the metrics address first: a bad address is refused before serving anything.
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            strait_observe::http::bind(addr)
                .await
                .map_err(anyhow::Error::msg)
                .context("key `metrics-listen`")?,
        ),
        None => None,
    };
    let quic = server::endpoint_config(&layout.quic_secret())?;
    let endpoint = server::bind(config.listen, certs.clone(), &cas, quic)?;
    let coordinator = Coordinator::new(config.clone(), store, pki)?;
    coordinator.watch_own_cert(certs);
    let (renewal, renewal_state, renewal_counts) = own_renewal;
    coordinator.watch_own_renewal(renewal_state, renewal_counts);
    let metrics_server = metrics_listener.map(|listener| {
        tracing::info!(addr = ?config.metrics_listen, "serving /metrics, /healthz and /readyz");
        let readiness = Arc::new(strait_observe::Readiness::new("starting"));
        // The store is loaded and the QUIC endpoint bound: ready.
        readiness.set_ready();
        tokio::spawn(strait_observe::http::serve(
            listener,
            Arc::new(coordinator.metrics.registry()),
            readiness,
        ))
    });
    tracing::info!(
        listen = %endpoint.local_addr()?,
        mesh = %config.mesh,
        sites = config.sites.len(),
        "coordinator serving"
    );
    let reloads = tokio::spawn(reload_policy_on_hangup(coordinator.clone(), path));
    server::serve(coordinator, endpoint, strait_observe::signal::shutdown()).await?;
    reloads.abort();
    renewal.abort();
    if let Some(m) = metrics_server {
        m.abort();
    }
    tracing::info!("coordinator stopped");
    Ok(())
}

/// On SIGHUP, reads the config file again and puts its `[policy]` in force (other keys take
/// effect at the next start). A file that does not validate changes nothing.
async fn reload_policy_on_hangup(coordinator: Arc<Coordinator>, path: PathBuf) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        tracing::warn!("cannot watch SIGHUP; a changed [policy] takes effect at the next start");
        return;
    };
    while hangups.recv().await.is_some() {
        let reloaded = Config::load(&path).and_then(|c| {
            let rules = c.policy.rules.len();
            let version = coordinator.reload_policy(c.policy)?;
            Ok((rules, version))
        });
        match reloaded {
            Ok((rules, version)) => tracing::info!(
                rules,
                version,
                "access policy reloaded (only [policy] is reloaded; other keys take effect at the next start)"
            ),
            Err(e) => tracing::error!(
                error = %format!("{e:#}"),
                "access policy not reloaded; the previous one stays in force"
            ),
        }
    }
}
