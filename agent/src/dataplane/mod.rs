//! The WireGuard data plane: a TUN device, one UDP socket, one boringtun tunnel per peer,
//! routes in the kernel. [`run`] applies every map the control plane publishes.
//!
//! - [`engine`]: per-packet decisions and the IO loop.
//! - [`tunnel`]: the only code that drives boringtun's `Tunn`.
//! - [`lpm`]: cryptokey routing table.
//! - [`routes`]: desired routes and the plan against the kernel's (pure).
//! - [`netlink`]: the only code that talks netlink.

pub mod engine;
pub mod lpm;
pub mod netlink;
pub mod routes;
pub mod tunnel;

use std::future::Future;
use std::net::IpAddr;

use anyhow::{Context, Result};
use base64::Engine as _;
use boringtun::x25519::StaticSecret;
use ipnetwork::IpNetwork;
use strait_proto::map::NetworkMap;
use strait_proto::msg::{EndpointKind, Refusal};
use tokio::sync::watch;

use crate::control::MapWatch;
use engine::PeerSpec;
use netlink::Netlink;

/// How the data plane is set up on this node.
#[derive(Debug, Clone)]
pub struct Settings {
    pub tun_name: String,
    pub mtu: u16,
    pub listen_port: u16,
    /// Persistent keepalive toward every peer, in seconds (keeps NAT mappings open).
    pub keepalive: Option<u16>,
    pub forward: bool,
}

/// Which of a remote peer's endpoints to use until path probing chooses: a dedicated
/// interconnect, then the public address, then a private one.
fn endpoint_rank(kind: EndpointKind) -> u8 {
    match kind {
        EndpointKind::Interconnect => 0,
        EndpointKind::Public => 1,
        EndpointKind::Private => 2,
    }
}

/// The engine's peers for `map`.
pub fn peer_specs(map: &NetworkMap, keepalive: Option<u16>) -> Vec<PeerSpec> {
    map.peers
        .values()
        .filter_map(|p| {
            let key: [u8; 32] = base64::engine::general_purpose::STANDARD
                .decode(&p.wg_public_key)
                .ok()?
                .try_into()
                .ok()?;
            let endpoint = p
                .endpoints
                .iter()
                .min_by_key(|e| (endpoint_rank(e.kind), e.cost.unwrap_or(0)))
                .map(|e| e.address);
            Some(PeerSpec {
                public_key: key,
                endpoint,
                allowed_ips: p.allowed_ips.clone(),
                keepalive,
            })
        })
        .collect()
}

fn enable_forwarding() -> Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .context("enabling IPv4 forwarding (/proc/sys/net/ipv4/ip_forward)")
}

/// Runs the data plane until `shutdown`: creates the TUN device, cleans routes a crashed
/// run left, then follows `maps` (peers, overlay address, routes), reporting refused routes
/// on `conflicts`. At a clean stop every Strait route is removed.
pub async fn run(
    settings: Settings,
    secret: StaticSecret,
    mut maps: MapWatch,
    conflicts: watch::Sender<Vec<Refusal>>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let tun = engine::create_tun(&settings.tun_name, settings.mtu).with_context(|| {
        format!(
            "creating TUN device {} (needs root or CAP_NET_ADMIN and /dev/net/tun)",
            settings.tun_name
        )
    })?;
    let nl = Netlink::connect().context("opening a netlink socket")?;
    let index = nl
        .link_index(&settings.tun_name)
        .await?
        .with_context(|| format!("TUN device {} vanished", settings.tun_name))?;
    let stale = nl.remove_all().await?;
    if stale > 0 {
        tracing::info!(routes = stale, "removed routes left by an earlier run");
    }
    if settings.forward {
        enable_forwarding()?;
    }
    let socket = tokio::net::UdpSocket::bind(("0.0.0.0", settings.listen_port))
        .await
        .with_context(|| format!("binding WireGuard UDP port {}", settings.listen_port))?;
    let (peers_tx, peers_rx) = watch::channel(Vec::new());
    let mut engine = tokio::spawn(engine::run(tun, socket, secret, peers_rx));
    tracing::info!(tun = %settings.tun_name, port = settings.listen_port, "data plane up");
    tokio::pin!(shutdown);
    let mut address: Option<IpNetwork> = None;
    let result = loop {
        let map = maps.borrow_and_update().clone();
        if let Some(map) = map {
            if let Err(e) = apply(
                &nl,
                index,
                &settings,
                &map,
                &mut address,
                &peers_tx,
                &conflicts,
            )
            .await
            {
                tracing::warn!(error = %format!("{e:#}"), "applying the map failed; retrying at the next change");
            }
        }
        tokio::select! {
            changed = maps.changed() => if changed.is_err() { break Ok(()) },
            _ = &mut shutdown => break Ok(()),
            r = &mut engine => break match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(anyhow::Error::from(e).context("WireGuard engine")),
                Err(e) => Err(anyhow::anyhow!("WireGuard engine stopped: {e}")),
            },
        }
    };
    engine.abort();
    match nl.remove_all().await {
        Ok(n) => tracing::info!(routes = n, "data plane stopped; routes removed"),
        Err(e) => tracing::warn!(error = %e, "could not remove routes at shutdown"),
    }
    result
}

async fn apply(
    nl: &Netlink,
    index: u32,
    settings: &Settings,
    map: &NetworkMap,
    address: &mut Option<IpNetwork>,
    peers: &watch::Sender<Vec<PeerSpec>>,
    conflicts: &watch::Sender<Vec<Refusal>>,
) -> Result<()> {
    // Only nodes with tunnels carry the overlay address; a member reaches the overlay
    // through its gateway.
    if !map.peers.is_empty() {
        let want = IpNetwork::new(
            IpAddr::V4(map.node.overlay_ip),
            map.node.overlay_cidr.prefix(),
        )?;
        if *address != Some(want) {
            nl.configure_link(index, want, settings.mtu.into()).await?;
            *address = Some(want);
        }
    }
    peers.send_replace(peer_specs(map, settings.keepalive));
    let plan = nl.reconcile(&routes::desired(map), index).await?;
    conflicts.send_if_modified(|current| {
        let changed = *current != plan.conflicts;
        if changed {
            *current = plan.conflicts.clone();
        }
        changed
    });
    Ok(())
}
