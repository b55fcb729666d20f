//! `strait-agent`: the node agent.

use clap::Parser;

/// The Strait node agent.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
