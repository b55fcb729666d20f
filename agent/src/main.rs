//! `strait-agent`: the node agent.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use strait_agent::config::{Config, Overrides};
use strait_agent::control;

/// The Strait node agent.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Log format: text or json.
    #[arg(long, env = "STRAIT_LOG_FORMAT", default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Enroll if needed, then keep this node in the mesh.
    Run {
        /// Agent config file (TOML); every key can also be a flag or STRAIT_* variable.
        #[arg(long, env = "STRAIT_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Run { config, overrides } => {
            let config = Config::load(config.as_deref(), overrides)?;
            control::preflight(&config)?;
            let (maps, _watch) = tokio::sync::watch::channel(None);
            control::run(config, maps, shutdown_signal()).await
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
