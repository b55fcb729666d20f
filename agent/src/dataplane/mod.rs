//! The WireGuard data plane: a TUN device, one UDP socket, one boringtun tunnel per peer,
//! routes in the kernel. [`run`] applies every map the control plane publishes.
//!
//! - [`engine`]: per-packet decisions (cryptokey routing, roaming, timers).
//! - [`access`]: the inter-site access policy on decrypted packets (pure).
//! - [`icmp`]: "fragmentation needed" / "packet too big" for oversized packets (pure).
//! - [`underlay`]: the kernel's view of the underlay: the MTU toward a path.
//! - [`pump`]: the IO shell: batched TUN and UDP IO on two tasks.
//! - [`tunnel`]: the only code that drives boringtun's `Tunn`.
//! - [`lpm`]: cryptokey routing table.
//! - [`mss`]: MSS clamping of forwarded TCP into the tunnel (an nftables table of its own).
//! - [`peers`]: the map's peers for the engine, the engine's tunnels for the coordinator
//!   (pure).
//! - [`routes`]: desired routes and the plan against the kernel's (pure).
//! - [`spread`]: which gateway of a site carries a flow (pure).
//! - [`nexthops`]: which gateways of its own site a member routes each prefix through
//!   (pure), from their answers to carry queries; [`member_watch`] is its IO shell.
//! - [`netlink`]: the only code that talks netlink.
//! - [`translate`]: 1:1 address translation for sites with global prefixes (a pure nft
//!   script and the shell that applies it).
//! - [`nft`]: the only code that runs `nft`.

pub mod access;
pub mod engine;
pub mod icmp;
pub mod lpm;
pub mod member_watch;
pub mod mss;
pub mod netlink;
pub mod nexthops;
pub mod nft;
pub mod peers;
pub mod pump;
pub mod recent_flows;
pub mod routes;
pub mod spread;
pub mod translate;
pub mod tunnel;
pub mod underlay;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use ipnetwork::IpNetwork;
use strait_proto::access::AccessDrop;
use strait_proto::map::NetworkMap;
use strait_proto::msg::{PeerLink, Refusal};
use tokio::sync::watch;

use crate::control::MapWatch;
use crate::wgkey::WgKey;
use engine::PeerSpec;
use netlink::Netlink;
use peers::{peer_links, peer_specs};

/// How the data plane is set up on this node.
#[derive(Debug, Clone)]
pub struct Settings {
    pub tun_name: String,
    /// TUN MTU; `None`: the MTU of the underlay interface toward `underlay_targets`, minus
    /// WireGuard's 80 bytes of worst-case overhead.
    pub mtu: Option<u16>,
    /// Addresses (`host:port`) reached over the underlay, for finding its MTU.
    pub underlay_targets: Vec<String>,
    pub listen_port: u16,
    /// Persistent keepalive toward every peer, in seconds (keeps NAT mappings open).
    pub keepalive: Option<u16>,
    pub forward: bool,
    /// How often every path to every peer is probed.
    pub probe_interval: std::time::Duration,
    /// Back every TUN route and every prefix of the rest of the mesh with an `unreachable`
    /// one (see `routes`), kept while the agent is stopped, so traffic for other sites is
    /// refused instead of leaving unencrypted by the main table.
    pub fail_closed: bool,
    /// Clamp the MSS of TCP connections forwarded into the tunnel to the route's MTU
    /// (gateways only: with `forward`).
    pub mss_clamp: bool,
}

/// WireGuard's worst-case overhead: outer IPv6 header 40 + UDP 8 + WireGuard 32.
pub const WIREGUARD_OVERHEAD: u16 = 80;

/// The TUN MTU for an underlay of `underlay` bytes, within what the agent accepts.
pub fn mtu_for_underlay(underlay: u32) -> u16 {
    let mtu = underlay.saturating_sub(u32::from(WIREGUARD_OVERHEAD));
    mtu.clamp(576, 9000) as u16
}

/// The TUN MTU from the MTU of the interface this node reaches `targets` through (the first
/// that resolves to a non-loopback route), or [`crate::config::DEFAULT_MTU`].
pub async fn tun_mtu(nl: &Netlink, targets: &[String]) -> u16 {
    for target in targets {
        let Ok(addrs) = tokio::net::lookup_host(target.as_str()).await else {
            continue;
        };
        for addr in addrs {
            let local = std::net::UdpSocket::bind(if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            })
            .and_then(|s| s.connect(addr).and_then(|()| s.local_addr()));
            let Ok(local) = local else { continue };
            if local.ip().is_loopback() {
                continue;
            }
            match nl.link_mtu_of_address(local.ip()).await {
                Ok(Some((name, underlay))) => {
                    let mtu = mtu_for_underlay(underlay);
                    tracing::info!(interface = %name, underlay, mtu, toward = %addr, "TUN MTU from the underlay");
                    return mtu;
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "underlay MTU"),
            }
        }
    }
    let mtu = crate::config::DEFAULT_MTU;
    tracing::info!(
        mtu,
        "underlay MTU not found (set `mtu` to choose); using the default"
    );
    mtu
}

/// Turns IPv4 forwarding on, unless it already is (in a container `/proc/sys` is often
/// read-only, and the node's own setup, e.g. an init container or sysctl.d, has done it),
/// and IPv6 forwarding where the node has IPv6 (a failure there is only logged: a site
/// without IPv6 prefixes does not need it).
fn enable_forwarding() -> Result<()> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    const PATH6: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
    if std::path::Path::new(PATH6).exists()
        && !std::fs::read_to_string(PATH6).is_ok_and(|v| v.trim() == "1")
    {
        if let Err(e) = std::fs::write(PATH6, "1") {
            tracing::warn!(error = %e, "could not enable IPv6 forwarding ({PATH6}); IPv6 prefixes will not be forwarded (set net.ipv6.conf.all.forwarding=1 on the node)");
        }
    }
    if std::fs::read_to_string(PATH).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(PATH, "1").with_context(|| {
        format!("enabling IPv4 forwarding ({PATH}); set net.ipv4.ip_forward=1 on the node or give the agent write access")
    })
}

/// What the data plane reports while it runs.
pub struct Reports {
    /// Routes the kernel refused.
    pub conflicts: watch::Sender<Vec<Refusal>>,
    /// Tunnels and their paths, every few seconds.
    pub links: watch::Sender<Vec<PeerLink>>,
    /// IO counters, updated as packets move.
    pub counters: std::sync::Arc<pump::Counters>,
    /// Packets the access policy dropped (published with the link reports).
    pub access_drops: watch::Sender<Vec<AccessDrop>>,
    /// The public keys of the peers with a path up, sorted, as soon as it changes.
    pub up_peers: watch::Sender<Vec<[u8; 32]>>,
    /// On a member: its site's gateways, whether each answers and how many routes go
    /// through it.
    pub member_gateways: watch::Sender<Vec<nexthops::GatewayReport>>,
}

/// Runs the data plane until `shutdown`: creates the TUN device, cleans routes a crashed
/// run left, then follows `keys` (this node's WireGuard key; a new one is a rotation) and
/// `maps` (peers, overlay address, routes), publishing on `reports`,
/// and sends the on-demand probes asked for on `pings`. At a clean stop every Strait route
/// is removed but, with `fail_closed`, the unreachable ones and the rule.
pub async fn run(
    settings: Settings,
    mut keys: watch::Receiver<Arc<WgKey>>,
    mut maps: MapWatch,
    reports: Reports,
    pings: tokio::sync::mpsc::Receiver<pump::PingRequest>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let Reports {
        conflicts,
        links,
        counters,
        access_drops,
        up_peers,
        member_gateways,
    } = reports;
    let nl = Netlink::connect().context("opening a netlink socket")?;
    let mtu = match settings.mtu {
        Some(mtu) => mtu,
        None => tun_mtu(&nl, &settings.underlay_targets).await,
    };
    let tun = engine::create_tun(&settings.tun_name, mtu).with_context(|| {
        format!(
            "creating TUN device {} (needs root or CAP_NET_ADMIN and /dev/net/tun)",
            settings.tun_name
        )
    })?;
    let index = nl
        .link_index(&settings.tun_name)
        .await?
        .with_context(|| format!("TUN device {} vanished", settings.tun_name))?;
    // Routes a crashed run left go, but its fail-closed ones stay until this run's routes
    // are in place (the first map reconciles them).
    let stale = nl.remove_all(settings.fail_closed).await?;
    if stale > 0 {
        tracing::info!(routes = stale, "removed routes left by an earlier run");
    }
    nl.ensure_rules().await.map_err(|e| {
        anyhow::Error::from(e)
            .context("installing the policy rule for Strait's routing table (needs CAP_NET_ADMIN)")
    })?;
    if settings.forward {
        enable_forwarding()?;
    }
    // Clamping is a safety net, not a condition of the tunnel: without `nft` (a slim
    // container image) the data plane runs without it, saying so.
    let clamping = settings.forward && settings.mss_clamp;
    if clamping {
        match mss::install(&settings.tun_name).await {
            Ok(()) => tracing::info!(
                table = mss::TABLE,
                "MSS of forwarded TCP clamped to the path MTU"
            ),
            Err(e) => tracing::warn!(
                error = %format!("{e:#}"),
                "MSS clamping is off: TCP between sites relies on the hosts' path MTU discovery (install nftables, or set mss-clamp = false to silence this)"
            ),
        }
    } else if let Err(e) = mss::remove().await {
        // A run with clamping may have left the table; without nft there is none.
        tracing::debug!(error = %format!("{e:#}"), "no MSS clamping table to remove");
    }
    let socket = underlay::bind_dual_stack(settings.listen_port)
        .with_context(|| format!("binding WireGuard UDP port {}", settings.listen_port))?;
    // The tunnel's own datagrams skip Strait's routing table (see `routes`): they take the
    // underlay even toward an address inside a prefix the tunnel carries.
    socket2::SockRef::from(&socket)
        .set_mark(routes::FWMARK)
        .context("marking the WireGuard socket (SO_MARK needs CAP_NET_ADMIN)")?;
    // Every datagram leaves with DF set and crosses whole or not at all: path MTU discovery
    // measures exactly that.
    if let Err(e) = underlay::set_dont_fragment(&socket) {
        tracing::warn!(error = %e, "could not set don't-fragment on the WireGuard socket; path MTU discovery may find too large a size");
    }
    let (peers_tx, peers_rx) = watch::channel(Vec::new());
    let (access_tx, access_rx) = watch::channel(Arc::new(access::Filter::allow_all()));
    let io_counters = counters.clone();
    let (status_tx, mut status) = watch::channel(Vec::new());
    let secret = keys.borrow_and_update().secret().clone();
    let own_keys = keys.clone();
    let feeds = pump::Feeds {
        keys: own_keys,
        peers: peers_rx,
        pings,
        access: access_rx,
    };
    let mut core = engine::Engine::new(secret, settings.probe_interval);
    // An explicit MTU wins: path MTUs are still discovered and reported, but neither set on
    // routes nor enforced.
    core.set_enforce_mtu(settings.mtu.is_none());
    let mut engine = tokio::spawn(pump::run(
        tun, socket, core, feeds, counters, status_tx, up_peers,
    ));
    // A member asks its site's gateways which prefixes each carries (idle on other nodes).
    let (hops_tx, mut hops) = watch::channel(member_watch::Hops::new());
    let mut watcher = tokio::spawn(member_watch::run(
        settings.probe_interval,
        maps.clone(),
        keys.clone(),
        hops_tx,
        member_gateways,
    ));
    tracing::info!(tun = %settings.tun_name, mtu, port = settings.listen_port, "data plane up");
    tokio::pin!(shutdown);
    let mut link = TunLink {
        nl: nl.clone(),
        index,
        mtu,
        base_mtu: mtu,
        address: None,
        translator: translate::Translator::new(&settings.tun_name),
        route_mtus: BTreeMap::new(),
        member_hops: BTreeMap::new(),
    };
    let mut map_changed = true;
    let result = loop {
        if map_changed {
            let map = maps.borrow_and_update().clone();
            if let Some(map) = map {
                let feeds = MapFeeds {
                    peers: &peers_tx,
                    access: &access_tx,
                    conflicts: &conflicts,
                };
                if let Err(e) = apply(&mut link, &settings, &map, feeds).await {
                    tracing::warn!(error = %format!("{e:#}"), "applying the map failed; retrying at the next change");
                }
            }
        }
        map_changed = false;
        tokio::select! {
            changed = maps.changed() => {
                if changed.is_err() {
                    break Ok(());
                }
                map_changed = true;
            }
            changed = status.changed() => {
                if changed.is_ok() {
                    // Drops first: the control session reads them when it sends the links.
                    let drops = io_counters.access().drops;
                    access_drops.send_if_modified(|current| {
                        let changed = *current != drops;
                        if changed {
                            *current = drops;
                        }
                        changed
                    });
                    let report = status.borrow_and_update().clone();
                    let map = maps.borrow().clone();
                    if let Some(map) = map {
                        links.send_replace(peer_links(&map, &report));
                        let route_mtus = route_mtus(&report, settings.mtu.is_none());
                        if route_mtus != link.route_mtus {
                            tracing::info!(peers = ?route_mtus, "route MTUs from the path MTUs");
                            link.route_mtus = route_mtus;
                            if let Err(e) = follow_path_mtus(&mut link, &settings, &map, &conflicts).await {
                                tracing::warn!(error = %format!("{e:#}"), "setting route MTUs failed; retrying at the next change");
                            }
                        }
                    }
                }
            }
            changed = hops.changed() => {
                if changed.is_ok() {
                    link.member_hops = hops.borrow_and_update().clone();
                    let map = maps.borrow().clone();
                    if let Some(map) = map {
                        if let Err(e) = apply_routes(&link, &settings, &map, &conflicts).await {
                            tracing::warn!(error = %format!("{e:#}"), "moving member routes between gateways failed; retrying at the next change");
                        }
                    }
                }
            }
            r = &mut watcher => break match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.context("asking the site's gateways")),
                Err(e) => Err(anyhow::anyhow!("asking the site's gateways stopped: {e}")),
            },
            _ = &mut shutdown => break Ok(()),
            r = &mut engine => break match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(anyhow::Error::from(e).context("WireGuard engine")),
                Err(e) => Err(anyhow::anyhow!("WireGuard engine stopped: {e}")),
            },
        }
    };
    engine.abort();
    watcher.abort();
    // The rules name the TUN device, which goes with this process.
    if let Err(e) = link.translator.remove().await {
        tracing::warn!(error = %format!("{e:#}"), "could not remove the address translation table at shutdown");
    }
    // Failing closed holds while the agent is stopped too (every upgrade restarts it): the
    // unreachable routes and the rule stay; `strait-agent uninstall` removes them.
    let keep = settings.fail_closed;
    match nl.remove_all(keep).await {
        Ok(n) if keep => tracing::info!(
            routes = n,
            "data plane stopped; routes removed, the fail-closed routes and the rule kept: traffic for other sites is refused until the agent runs again (`strait-agent uninstall` removes them)"
        ),
        Ok(n) => tracing::info!(routes = n, "data plane stopped; routes removed"),
        Err(e) => tracing::warn!(error = %e, "could not remove routes at shutdown"),
    }
    if !keep {
        if let Err(e) = nl.remove_rules().await {
            tracing::warn!(error = %e, "could not remove the routing rule at shutdown");
        }
    }
    if clamping {
        if let Err(e) = mss::remove().await {
            tracing::warn!(error = %format!("{e:#}"), "could not remove MSS clamping at shutdown");
        }
    }
    result
}

/// Removes everything the agent leaves in the kernel on purpose when it stops: the
/// fail-closed routes and the policy rule (with the agent stopped, traffic for other sites
/// then takes the main table). Returns the number of routes removed.
pub async fn uninstall() -> Result<usize> {
    let nl = Netlink::connect().context("opening a netlink socket")?;
    let routes = nl
        .remove_all(false)
        .await
        .context("removing Strait's routes (needs root or CAP_NET_ADMIN)")?;
    nl.remove_rules()
        .await
        .context("removing Strait's routing rule (needs root or CAP_NET_ADMIN)")?;
    translate::uninstall()
        .await
        .context("removing Strait's address translation table (needs root or CAP_NET_ADMIN)")?;
    if let Err(e) = mss::remove().await {
        tracing::debug!(error = %format!("{e:#}"), "no MSS clamping table to remove");
    }
    Ok(routes)
}

/// The TUN device as configured so far.
struct TunLink {
    nl: Netlink,
    index: u32,
    mtu: u16,
    /// The MTU from the underlay (or `mtu`): the TUN device's MTU unless a path carries
    /// more (a jumbo interconnect), and the routes' MTU while their peer's is unknown.
    base_mtu: u16,
    address: Option<IpNetwork>,
    translator: translate::Translator,
    /// The MTU of each peer's routes (by WireGuard key as the map spells it), from the
    /// path MTU of its active path.
    route_mtus: BTreeMap<String, u32>,
    /// On a member: the gateways to route each prefix through (see `nexthops`).
    member_hops: member_watch::Hops,
}

/// The route MTU of every peer whose active path's MTU is known (none when `enabled` is
/// false: an explicit `mtu` wins).
fn route_mtus(report: &[engine::PeerStatus], enabled: bool) -> BTreeMap<String, u32> {
    use base64::Engine as _;
    if !enabled {
        return BTreeMap::new();
    }
    report
        .iter()
        .filter_map(|p| {
            let key = base64::engine::general_purpose::STANDARD.encode(p.public_key);
            Some((key, u32::from(p.mtu?)))
        })
        .collect()
}

/// Where a map's parts go.
struct MapFeeds<'a> {
    peers: &'a watch::Sender<Vec<PeerSpec>>,
    access: &'a watch::Sender<Arc<access::Filter>>,
    conflicts: &'a watch::Sender<Vec<Refusal>>,
}

async fn apply(
    link: &mut TunLink,
    settings: &Settings,
    map: &NetworkMap,
    feeds: MapFeeds<'_>,
) -> Result<()> {
    let MapFeeds {
        peers,
        access,
        conflicts,
    } = feeds;
    // Only nodes with tunnels carry the overlay address; a member reaches the overlay
    // through its gateway.
    if !map.peers.is_empty() {
        let want = IpNetwork::new(
            IpAddr::V4(map.node.overlay_ip),
            map.node.overlay_cidr.prefix(),
        )?;
        if link.address != Some(want) {
            link.nl
                .configure_link(link.index, want, link.mtu.into())
                .await?;
            link.address = Some(want);
        }
    }
    // The policy goes before the peers it names, so no new peer's packet meets an old one;
    // compiled here, off the packet path, and only when it changed.
    if !access.borrow().is_for(map) {
        let filter = access::Filter::for_map(map);
        if *access.borrow().policy() != map.access {
            tracing::info!(
                rules = filter.rule_count(),
                default = filter.policy().default.as_str(),
                "access policy from the map"
            );
        }
        access.send_replace(Arc::new(filter));
    }
    // Translation before the peers and routes that bring traffic to be translated.
    link.translator.apply(&map.node.translations).await?;
    peers.send_replace(peer_specs(map, settings.keepalive));
    apply_routes(link, settings, map, conflicts).await
}

/// After a change of the peers' path MTUs: the TUN device's MTU follows the largest
/// (never below the underlay's, at most 9000, so a jumbo path carries jumbo packets), then
/// the routes take each peer's. Lowered, routes go first; raised, the device goes first, so
/// no route ever allows more than the device or its peer's path.
async fn follow_path_mtus(
    link: &mut TunLink,
    settings: &Settings,
    map: &NetworkMap,
    conflicts: &watch::Sender<Vec<Refusal>>,
) -> Result<()> {
    let largest = link.route_mtus.values().copied().max().unwrap_or(0);
    let want = u16::try_from(largest.min(9000))
        .unwrap_or(9000)
        .max(link.base_mtu);
    if settings.mtu.is_some() || want == link.mtu {
        return apply_routes(link, settings, map, conflicts).await;
    }
    if want < link.mtu {
        let before = link.mtu;
        link.mtu = want;
        apply_routes(link, settings, map, conflicts).await?;
        link.nl.set_link_mtu(link.index, want.into()).await?;
        tracing::info!(
            from = before,
            to = want,
            "TUN MTU lowered with the path MTUs"
        );
    } else {
        link.nl.set_link_mtu(link.index, want.into()).await?;
        tracing::info!(
            from = link.mtu,
            to = want,
            "TUN MTU raised for a path that carries more"
        );
        link.mtu = want;
        apply_routes(link, settings, map, conflicts).await?;
    }
    Ok(())
}

/// Brings the kernel's routes to the map's, each peer's TUN routes at its path's MTU.
async fn apply_routes(
    link: &TunLink,
    settings: &Settings,
    map: &NetworkMap,
    conflicts: &watch::Sender<Vec<Refusal>>,
) -> Result<()> {
    let mut desired = routes::desired(map, settings.fail_closed, &link.member_hops);
    // A peer whose path MTU is unknown gets the underlay's, when the device allows more.
    let unknown = (link.mtu > link.base_mtu).then_some(u32::from(link.base_mtu));
    routes::set_mtus(&mut desired, map, link.mtu.into(), |key| {
        link.route_mtus.get(key).copied().or(unknown)
    });
    let plan = link.nl.reconcile(&desired, link.index).await?;
    conflicts.send_if_modified(|current| {
        let changed = *current != plan.conflicts;
        if changed {
            *current = plan.conflicts.clone();
        }
        changed
    });
    Ok(())
}
