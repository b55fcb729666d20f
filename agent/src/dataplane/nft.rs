//! The only code that runs `nft`: [`apply`] hands a script to `nft -f -`, which applies it
//! as one transaction (all of it or none). The scripts are pure functions of their modules
//! ([`super::mss`], [`super::translate`]).

use anyhow::{bail, Context, Result};

/// Runs `nft -f -` on `script`. A missing `nft` command is an error whose source is the
/// [`std::io::Error`] of the spawn (callers that can do without nftables test for it).
pub async fn apply(script: &str) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running `nft` (install nftables)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!(
            "nft -f - failed ({}; it needs CAP_NET_ADMIN): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
