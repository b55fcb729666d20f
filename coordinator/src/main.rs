//! `strait-coordinator`: the mesh's source of truth.

use clap::Parser;

/// The Strait coordinator.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
