//! The IO shell of [`nexthops::Watch`] on a member: a UDP socket that sends the carry
//! queries it asks for to the site's gateways and feeds their authenticated answers back,
//! and publishes the next hops of the member's routes whenever they change.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine as _;
use boringtun::x25519::PublicKey;
use ipnetwork::IpNetwork;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

use super::nexthops::{Gateway, GatewayReport, Watch};
use crate::control::MapWatch;
use crate::paths::carry::{self, Query};
use crate::paths::probe::{id_of, ProbeKey};
use crate::wgkey::WgKey;

/// Per prefix of the member's routes, the gateways to route it through (empty: the map's).
pub type Hops = BTreeMap<IpNetwork, Vec<IpAddr>>;

/// Gateways as keyed for this node's current key.
struct Keyed {
    gateways: Vec<Gateway>,
    keys: Vec<ProbeKey>,
    ids: Vec<[u8; 8]>,
}

fn keyed(gateways: Vec<Gateway>, own: &WgKey) -> Keyed {
    let keys = gateways
        .iter()
        .map(|g| ProbeKey::derive(own.secret(), &PublicKey::from(g.key)))
        .collect();
    let ids = gateways
        .iter()
        .map(|g| id_of(&PublicKey::from(g.key)))
        .collect();
    Keyed {
        gateways,
        keys,
        ids,
    }
}

/// The gateways and route prefixes of a member's map (nothing for other nodes). A gateway
/// whose key does not decode is left out, saying so.
fn from_map(maps: &MapWatch) -> (Vec<Gateway>, Vec<IpNetwork>) {
    let Some(map) = maps.borrow().clone() else {
        return (Vec::new(), Vec::new());
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let gateways = map
        .node
        .local_gateways
        .iter()
        .filter_map(|g| {
            let key = b64
                .decode(&g.wg_public_key)
                .ok()
                .and_then(|k| <[u8; 32]>::try_from(k).ok());
            if key.is_none() {
                tracing::warn!(gateway = %g.id, "the map's key for this gateway is not a WireGuard key; not asking it");
            }
            Some(Gateway {
                id: g.id.clone(),
                key: key?,
                address: g.address,
                priority: g.priority,
            })
        })
        .collect();
    let prefixes = map
        .routes
        .keys()
        .map(|p| IpNetwork::new(p.network(), p.prefix()).unwrap_or(*p))
        .collect();
    (gateways, prefixes)
}

/// Runs until `maps` closes: asks the gateways the member's map lists every `interval`
/// and publishes the next hops on `hops` and what it knows of each gateway on `report`.
/// Does nothing (and opens no socket) while the map lists no gateway.
pub async fn run(
    interval: Duration,
    mut maps: MapWatch,
    mut keys: watch::Receiver<Arc<WgKey>>,
    hops: watch::Sender<Hops>,
    report: watch::Sender<Vec<GatewayReport>>,
) -> Result<()> {
    let mut watch = Watch::new(interval);
    let mut own = keys.borrow_and_update().clone();
    let mut current = keyed(Vec::new(), &own);
    let mut socket: Option<UdpSocket> = None;
    let mut buf = vec![0u8; 2048];
    let mut map_changed = true;
    loop {
        let now = Instant::now();
        if map_changed {
            let (gateways, prefixes) = from_map(&maps);
            if !gateways.is_empty() && socket.is_none() {
                // Dual stack where the node has IPv6, IPv4 only otherwise.
                let s = match UdpSocket::bind((std::net::Ipv6Addr::UNSPECIFIED, 0)).await {
                    Ok(s) => s,
                    Err(_) => UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0))
                        .await
                        .context(
                            "binding the UDP socket for carry queries to the site's gateways",
                        )?,
                };
                socket = Some(s);
            }
            current = keyed(gateways.clone(), &own);
            watch.set(gateways, prefixes, now.into_std());
            map_changed = false;
        }
        if let Some(s) = &socket {
            for ask in watch.poll(now.into_std()) {
                let wire = carry::encode_query(
                    &Query {
                        member: *own.public().as_bytes(),
                        seq: ask.seq,
                        prefixes: ask.prefixes,
                    },
                    &current.keys[ask.gateway],
                );
                let to = mapped(s, ask.address);
                if let Err(e) = s.send_to(&wire, to).await {
                    tracing::debug!(gateway = %current.gateways[ask.gateway].id, %to, error = %e, "carry query not sent");
                }
            }
        }
        let next = watch.next_hops();
        let seen = watch.report(&next);
        report.send_if_modified(|r| {
            let changed = *r != seen;
            if changed {
                *r = seen;
            }
            changed
        });
        hops.send_if_modified(|h| {
            let changed = *h != next;
            if changed {
                tracing::info!(hops = ?next, "member routes' gateways");
                *h = next;
            }
            changed
        });
        let wake = watch
            .next_wakeup()
            .map(Instant::from_std)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            changed = maps.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                map_changed = true;
            }
            changed = keys.changed() => {
                if changed.is_ok() {
                    own = keys.borrow_and_update().clone();
                    current = keyed(current.gateways, &own);
                }
            }
            received = recv(socket.as_ref(), &mut buf) => {
                let Some((len, from)) = received else { continue };
                let datagram = &buf[..len];
                if !carry::is_answer(datagram) {
                    continue;
                }
                let id: [u8; 8] = datagram[4..12].try_into().unwrap_or_default();
                let Some(i) = current.ids.iter().position(|g| *g == id) else {
                    tracing::trace!(%from, "carry answer from no gateway of the site; dropped");
                    continue;
                };
                match carry::decode_answer(datagram, &current.keys[i]) {
                    Ok(answer) => {
                        watch.on_answer(i, answer.seq, &answer.carries, Instant::now().into_std());
                    }
                    Err(e) => tracing::debug!(%from, error = %e, "carry answer refused"),
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// `to` as the socket can send to it (an IPv4 address on a dual-stack IPv6 socket).
fn mapped(socket: &UdpSocket, to: SocketAddr) -> SocketAddr {
    match (socket.local_addr().map(|a| a.is_ipv6()), to) {
        (Ok(true), SocketAddr::V4(v4)) => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        _ => to,
    }
}

async fn recv(socket: Option<&UdpSocket>, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
    match socket {
        Some(s) => match s.recv_from(buf).await {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::debug!(error = %e, "carry socket");
                tokio::time::sleep(Duration::from_millis(10)).await;
                None
            }
        },
        None => std::future::pending().await,
    }
}
