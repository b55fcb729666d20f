//! BGP toward the site's routers, spoken by a BIRD 2 daemon run beside the agent and driven
//! by it (no BGP speaker of our own).
//!
//! - [`settings`]: `[bgp]` in the agent's config, validated.
//! - [`announce`]: which remote prefixes this gateway can carry now (pure).
//! - [`bird`]: the BIRD configuration for them (pure).
//! - [`run`]: the shell: writes the configuration (0600, atomically) and reloads BIRD with
//!   `birdc configure` whenever the announcements change, and reads the sessions' state
//!   with `birdc show protocols` for reports.
//!
//! Announcement: a remote site's prefixes enter the configuration once one of its carriers
//! has a path up and a WireGuard session agreed since (`dataplane::spread::Rejoin`), and
//! a restarted agent withdraws the last run's announcements before its TUN device exists
//! ([`withdraw_stale`]), so the routers never send a gateway traffic it cannot carry yet.
//!
//! Withdrawal: a remote site's prefixes leave the configuration as soon as none of its
//! carriers has a path up by this gateway's probes (with `probe-interval = "200ms"`, about
//! 0.6-0.8 s after the path fails), and BIRD withdraws them from every neighbour at once.
//! When the agent dies, its TUN device goes with it, and BIRD drops every static route
//! through it (they name the device), so nothing stays announced by a gateway without an
//! agent. A dead gateway (BIRD gone too) is found by the routers through BFD or the hold
//! time.

pub mod announce;
pub mod bird;
pub mod settings;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use strait_proto::map::NetworkMap;
use strait_proto::msg::{BgpReport, BgpSession};
use tokio::sync::watch;

use announce::Announcement;
use settings::BgpSettings;

/// One BGP session as BIRD reports it.
pub type Session = BgpSession;

/// What the BGP side of a gateway is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub sessions: Vec<Session>,
    /// The prefixes in BIRD's configuration now (announced to every established session).
    pub announced: Vec<Announcement>,
    /// Whether the last reload succeeded.
    pub applied: bool,
    /// Reloads of BIRD done.
    pub reloads: u64,
}

impl Status {
    /// The report sent to the coordinator.
    pub fn report(&self) -> BgpReport {
        BgpReport {
            sessions: self.sessions.clone(),
            announced: self
                .announced
                .iter()
                .map(|a| a.prefix.to_string())
                .collect(),
            applied: self.applied,
        }
    }
}

/// `birdc show protocols`' lines for Strait's neighbours: (protocol, state, info).
pub fn parse_protocols(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?;
            if !name.starts_with("strait_n") {
                return None;
            }
            let _proto = words.next()?;
            let _table = words.next()?;
            let state = words.next()?.to_string();
            let rest: Vec<&str> = words.collect();
            // The "since" column is a time (and maybe a date); the info follows.
            let info = rest
                .iter()
                .skip_while(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            Some((name.to_string(), state, info))
        })
        .collect()
}

async fn birdc(settings: &BgpSettings, args: &[&str]) -> Result<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::process::Command::new(&settings.birdc)
            .arg("-s")
            .arg(&settings.bird_socket)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("`birdc {}` took over 3 s", args.join(" ")))?
    .with_context(|| format!("running {}", settings.birdc.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "`birdc {}` failed: {} {}",
            args.join(" "),
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(text)
}

/// Writes `text` to `path` atomically, mode 0600 (it may hold BGP passwords).
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// Writes the configuration for `routes` and reloads BIRD.
async fn apply(settings: &BgpSettings, tun: &str, routes: &[Announcement]) -> Result<()> {
    write_private(&settings.bird_config, &bird::render(settings, tun, routes))?;
    let out = birdc(settings, &["configure"]).await?;
    if !out.contains("Reconfigured") && !out.contains("Reconfiguration in progress") {
        bail!("BIRD refused the configuration: {}", out.trim());
    }
    Ok(())
}

/// Withdraws whatever BIRD still announces from an earlier run, before this run creates
/// its TUN device. After a crash BIRD keeps the last configuration; its static routes name
/// the TUN device, and a device of that name coming back would announce them again at
/// once, before this run has a map, routes or sessions, and the site's routers would send
/// traffic it cannot carry yet. A failure (BIRD not running yet) is only logged: a BIRD
/// started later reads the empty configuration written here.
pub async fn withdraw_stale(settings: &BgpSettings, tun: &str) {
    match apply(settings, tun, &[]).await {
        Ok(()) => tracing::info!("BGP announcements of an earlier run withdrawn"),
        Err(e) => {
            tracing::info!(error = %format!("{e:#}"), "BIRD not reloaded at start (the empty configuration is written)")
        }
    }
}

/// Drives BIRD until `shutdown`: announces what [`announce::announcements`] gives for the
/// current map and the peers with a path up (`up`, sorted public keys), and publishes
/// [`Status`]. At a clean stop everything is withdrawn.
pub async fn run(
    settings: BgpSettings,
    tun: String,
    mut maps: watch::Receiver<Option<Arc<NetworkMap>>>,
    mut up: watch::Receiver<Vec<[u8; 32]>>,
    status: watch::Sender<Status>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut applied: Option<Vec<Announcement>> = None;
    let mut state = Status::default();
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    let mut last_warning: Option<std::time::Instant> = None;
    loop {
        let want = match maps.borrow_and_update().as_deref() {
            Some(map) => announce::announcements(map, &up.borrow_and_update()),
            None => Vec::new(),
        };
        if applied.as_ref() != Some(&want) {
            let started = std::time::Instant::now();
            match apply(&settings, &tun, &want).await {
                Ok(()) => {
                    tracing::info!(
                        prefixes = want.len(),
                        took_ms = started.elapsed().as_millis() as u64,
                        "BGP announcements updated"
                    );
                    state.applied = true;
                    state.reloads += 1;
                    state.announced = want.clone();
                    applied = Some(want);
                }
                Err(e) => {
                    state.applied = false;
                    // BIRD may not be up yet: retried every second, warned every 30 s.
                    if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                        tracing::warn!(error = %format!("{e:#}"), config = %settings.bird_config.display(), "could not reload BIRD; retrying every second");
                        last_warning = Some(std::time::Instant::now());
                    }
                }
            }
            status.send_replace(state.clone());
        }
        tokio::select! {
            _ = &mut shutdown => break,
            r = maps.changed() => if r.is_err() { break },
            r = up.changed() => if r.is_err() { break },
            _ = poll.tick() => {
                if let Ok(text) = birdc(&settings, &["show", "protocols"]).await {
                    let sessions = sessions(&settings, &text);
                    if sessions != state.sessions {
                        for s in &sessions {
                            tracing::info!(neighbor = %s.neighbor, state = %s.state, info = %s.info, "BGP session");
                        }
                        state.sessions = sessions;
                        status.send_replace(state.clone());
                    }
                }
                if !state.applied {
                    applied = None;
                }
            }
        }
    }
    match apply(&settings, &tun, &[]).await {
        Ok(()) => tracing::info!("BGP announcements withdrawn"),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "could not withdraw BGP announcements at shutdown (they go when the TUN device does)")
        }
    }
}

fn sessions(settings: &BgpSettings, text: &str) -> Vec<Session> {
    let parsed = parse_protocols(text);
    settings
        .neighbors
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let name = bird::neighbor_protocol(i);
            let (state, info) = parsed
                .iter()
                .find(|(p, _, _)| *p == name)
                .map(|(_, s, i)| (s.clone(), i.clone()))
                .unwrap_or_else(|| ("unknown".into(), String::new()));
            Session {
                neighbor: n.address.to_string(),
                state,
                info,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_are_read_from_birdc_output() {
        let text = "BIRD 2.0.12 ready.\n\
Name       Proto      Table      State  Since         Info\n\
device1    Device     ---        up     06:50:01.123  \n\
strait_remote Static  master4    up     06:50:01.123  \n\
strait_n0  BGP        ---        up     06:50:02.456  Established   \n\
strait_n1  BGP        ---        start  2026-12-03 06:50:02  Active        Socket: Connection refused\n";
        let p = parse_protocols(text);
        assert_eq!(
            p,
            vec![
                ("strait_n0".into(), "up".into(), "Established".into()),
                (
                    "strait_n1".into(),
                    "start".into(),
                    "Active Socket: Connection refused".into()
                ),
            ]
        );
    }
}
