//! `strait-lab`: a three-site Strait mesh in network namespaces on this machine (root).
//!
//! ```text
//! strait-lab up      # build it, wait until tunnels carry traffic, print status and links
//! strait-lab ctl links          # straitctl against the lab's coordinator
//! strait-lab down    # remove every namespace, process and file it made
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use strait_tests::lab::{self, LabPaths, SITES};

#[derive(Parser)]
#[command(
    name = "strait-lab",
    version,
    about = "A local three-site Strait mesh in network namespaces (run as root)"
)]
struct Cli {
    /// Prefix of the lab's network namespaces.
    #[arg(long, default_value = "slab", global = true)]
    prefix: String,
    /// State directory (coordinator and agent state, logs); removed by `down`.
    #[arg(long, default_value = "/run/strait-lab", global = true)]
    dir: PathBuf,
    /// Directory with strait-coordinator, strait-agent and straitctl (default: next to
    /// this program).
    #[arg(long, env = "STRAIT_BIN_DIR", global = true)]
    bin_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the lab: 3 sites (aws-use1, gcp-usc1, azure-eus), each with a gateway, a member
    /// and a workload host without an agent; coordinator with the built-in CA.
    Up,
    /// Stop the lab's processes and remove its namespaces and state directory.
    Down,
    /// Run straitctl against the lab's coordinator (e.g. `strait-lab ctl links`).
    Ctl {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("strait-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let bin_dir = match cli.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()
            .context("locating strait-lab")?
            .parent()
            .context("strait-lab has no directory")?
            .to_path_buf(),
    };
    let paths = LabPaths {
        prefix: cli.prefix,
        dir: cli.dir,
        bin_dir,
    };
    match cli.command {
        Cmd::Up => {
            let up = lab::up(&paths, &mut |step| println!("==> {step}"))?;
            println!(
                "\nLab up in {:.1} s: {} namespaces, {} agents, tunnels carrying traffic between all {} sites.\n",
                up.elapsed.as_secs_f64(),
                up.namespaces,
                up.agents,
                SITES.len()
            );
            for what in ["status", "links"] {
                println!("$ straitctl {what}");
                let out = paths.ctl(&[what]).output().context("running straitctl")?;
                print!("{}", String::from_utf8_lossy(&out.stdout));
                eprint!("{}", String::from_utf8_lossy(&out.stderr));
                println!();
            }
            let me = std::env::args()
                .next()
                .unwrap_or_else(|| "strait-lab".into());
            println!("Try:");
            let p = &paths.prefix;
            for (cmd, what) in [
                (
                    format!("ip netns exec {p}-aws-vm ping -c 3 10.20.0.10"),
                    "AWS workload (no agent) -> GCP workload",
                ),
                (
                    format!("ip netns exec {p}-azr-m1 ping -c 3 10.10.0.10"),
                    "Azure member -> AWS workload",
                ),
                (
                    format!("{me} ctl graph --format dot"),
                    "any straitctl command",
                ),
                (format!("{me} down"), "remove everything"),
            ] {
                println!("  {cmd:<50} # {what}");
            }
            println!("Logs and state: {}", paths.dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Down => {
            let d = lab::down(&paths)?;
            println!(
                "Lab down: {} processes stopped, {} namespaces deleted, state directory {}.",
                d.processes,
                d.namespaces,
                if d.dir_removed {
                    "removed"
                } else {
                    "was already gone"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ctl { args } => {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let status = paths.ctl(&args).status().context("running straitctl")?;
            Ok(ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8
            ))
        }
    }
}
