//! `straitctl`: the operator CLI.

use clap::Parser;

/// Inspect and operate a Strait mesh.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
