//! The only code that talks netlink: the overlay address, MTU and state of the TUN link, the
//! routes Strait owns (protocol [`RTPROT_STRAIT`], in [`STRAIT_TABLE`]) and the rule that
//! sends every packet not marked [`FWMARK`] through that table first. Adding something that
//! exists is not an error; reconciliation applies a [`Plan`] computed by `routes`.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteNextHop,
    RouteProtocol, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use rtnetlink::{Handle, IpVersion, LinkUnspec, RouteMessageBuilder};

use super::routes::{
    plan, KernelRoute, Plan, Route, Via, FAIL_CLOSED_METRIC, FWMARK, MAIN_TABLE, RTPROT_STRAIT,
    RULE_PRIORITY, STRAIT_TABLE,
};

/// A netlink failure, naming the operation.
#[derive(Debug, thiserror::Error)]
#[error("netlink: {op}: {reason}")]
pub struct NetlinkError {
    pub op: String,
    pub reason: String,
}

fn err<E: std::fmt::Display>(op: impl Into<String>) -> impl FnOnce(E) -> NetlinkError {
    let op = op.into();
    move |e| NetlinkError {
        op,
        reason: e.to_string(),
    }
}

/// EEXIST from the kernel: the thing is already there.
fn is_exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EEXIST)
}

/// ESRCH/ENOENT: already gone.
fn is_missing(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::ESRCH || m.raw_code() == -libc::ENOENT)
}

/// A netlink handle in the current network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Netlink")
    }
}

impl Netlink {
    /// Opens a netlink socket (in the calling thread's network namespace) and spawns its
    /// connection task on the current tokio runtime.
    pub fn connect() -> std::io::Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The index of the link named `name`.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(Some(link.header.index)),
            Ok(None) => Ok(None),
            Err(e)
                if is_missing(&e)
                    || matches!(&e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::ENODEV) =>
            {
                Ok(None)
            }
            Err(e) => Err(err(format!("looking up link {name}"))(e)),
        }
    }

    /// The name and MTU of the link that carries the local address `ip`.
    pub async fn link_mtu_of_address(
        &self,
        ip: IpAddr,
    ) -> Result<Option<(String, u32)>, NetlinkError> {
        use netlink_packet_route::address::AddressAttribute;
        use netlink_packet_route::link::LinkAttribute;
        let mut addrs = self.handle.address().get().execute();
        let mut index = None;
        while let Some(msg) = addrs.try_next().await.map_err(err("listing addresses"))? {
            let owns = msg.attributes.iter().any(|a| {
                matches!(a, AddressAttribute::Local(x) | AddressAttribute::Address(x) if *x == ip)
            });
            if owns {
                index = Some(msg.header.index);
                break;
            }
        }
        let Some(index) = index else { return Ok(None) };
        let mut links = self.handle.link().get().match_index(index).execute();
        let Some(link) = links
            .try_next()
            .await
            .map_err(err(format!("reading link {index}")))?
        else {
            return Ok(None);
        };
        let name = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        });
        let mtu = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        });
        Ok(mtu.map(|m| (name.unwrap_or_else(|| index.to_string()), m)))
    }

    /// Puts `address` on the link, sets its MTU and brings it up. Idempotent.
    pub async fn configure_link(
        &self,
        index: u32,
        address: IpNetwork,
        mtu: u32,
    ) -> Result<(), NetlinkError> {
        match self
            .handle
            .address()
            .add(index, address.ip(), address.prefix())
            .execute()
            .await
        {
            Ok(()) => {}
            Err(e) if is_exists(&e) => {}
            Err(e) => return Err(err(format!("adding address {address}"))(e)),
        }
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(err(format!(
                "setting MTU {mtu} and bringing link {index} up"
            )))
    }

    /// Sets the link's MTU.
    pub async fn set_link_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(err(format!("setting MTU {mtu} on link {index}")))
    }

    /// Routes in the main table and in [`STRAIT_TABLE`].
    pub async fn routes(&self) -> Result<Vec<KernelRoute>, NetlinkError> {
        let mut out = Vec::new();
        for request in [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            let mut routes = self.handle.route().get(request).execute();
            while let Some(msg) = routes.try_next().await.map_err(err("listing routes"))? {
                if let Some(route) = parse_route(&msg) {
                    out.push(route);
                }
            }
        }
        Ok(out)
    }

    /// Installs `route` (protocol [`RTPROT_STRAIT`]); an existing identical route is fine.
    pub async fn add_route(&self, route: &Route, tun: u32) -> Result<(), NetlinkError> {
        let mut builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(route.prefix.network(), route.prefix.prefix())
            .map_err(err(format!("building route {}", route.prefix)))?
            .protocol(RouteProtocol::from(RTPROT_STRAIT))
            .table_id(STRAIT_TABLE);
        builder = match &route.via {
            Via::Tun => builder.output_interface(tun),
            Via::Gateways(hops) if hops.len() == 1 => builder.gateway(hops[0]).map_err(err(
                format!("building route {} via {}", route.prefix, hops[0]),
            ))?,
            // Several: a multipath route, one next hop per gateway, equal weights.
            Via::Gateways(hops) => builder.multipath(
                hops.iter()
                    .map(|gw| {
                        let mut hop = RouteNextHop::default();
                        hop.attributes = vec![RouteAttribute::Gateway((*gw).into())];
                        hop
                    })
                    .collect(),
            ),
            Via::Unreachable => builder
                .kind(RouteType::Unreachable)
                .priority(FAIL_CLOSED_METRIC),
        };
        let mut message = builder.build();
        if let Some(mtu) = route.mtu {
            message
                .attributes
                .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        }
        match self.handle.route().add(message).replace().execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_exists(&e) => Ok(()),
            Err(e) => Err(err(format!("adding route {}", route.prefix))(e)),
        }
    }

    /// Removes one of Strait's routes; one already gone is fine.
    pub async fn del_route(&self, route: &KernelRoute) -> Result<(), NetlinkError> {
        let mut builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(route.prefix.network(), route.prefix.prefix())
            .map_err(err(format!("building route {}", route.prefix)))?
            .protocol(RouteProtocol::from(route.protocol))
            .table_id(route.table);
        if let Some(oif) = route.oif {
            builder = builder.output_interface(oif);
        }
        if let Some(metric) = route.metric {
            builder = builder.priority(metric);
        }
        if route.unreachable {
            builder = builder.kind(RouteType::Unreachable);
        }
        match self.handle.route().del(builder.build()).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_missing(&e) => Ok(()),
            Err(e) => Err(err(format!("removing route {}", route.prefix))(e)),
        }
    }

    /// Brings the kernel's routes to `desired`: computes the plan, removes stale Strait
    /// routes, adds missing ones, and returns the plan (with the refused conflicts).
    pub async fn reconcile(&self, desired: &[Route], tun: u32) -> Result<Plan, NetlinkError> {
        let actual = self.routes().await?;
        let p = plan(desired, &actual, tun);
        for stale in &p.remove {
            self.del_route(stale).await?;
        }
        for route in &p.add {
            self.add_route(route, tun).await?;
        }
        for c in &p.conflicts {
            tracing::warn!(prefix = %c.prefix, reason = %c.reason, "route refused");
        }
        Ok(p)
    }

    /// Strait's rules (IPv4 and IPv6): `not fwmark FWMARK lookup STRAIT_TABLE`, one each.
    async fn our_rules(&self) -> Result<Vec<RuleMessage>, NetlinkError> {
        let mut out = Vec::new();
        for version in [IpVersion::V4, IpVersion::V6] {
            let mut rules = self.handle.rule().get(version).execute();
            while let Some(msg) = rules.try_next().await.map_err(err("listing rules"))? {
                let table = msg.attributes.iter().find_map(|a| match a {
                    RuleAttribute::Table(t) => Some(*t),
                    _ => None,
                });
                let priority = msg.attributes.iter().find_map(|a| match a {
                    RuleAttribute::Priority(p) => Some(*p),
                    _ => None,
                });
                if table == Some(STRAIT_TABLE) && priority == Some(RULE_PRIORITY) {
                    out.push(msg);
                }
            }
        }
        Ok(out)
    }

    /// Installs the rules that send every packet not marked [`FWMARK`] (everything but the
    /// WireGuard socket's own datagrams) through [`STRAIT_TABLE`] before the main table.
    pub async fn ensure_rules(&self) -> Result<(), NetlinkError> {
        let have = self.our_rules().await?;
        for v6 in [false, true] {
            let family = if v6 {
                netlink_packet_route::AddressFamily::Inet6
            } else {
                netlink_packet_route::AddressFamily::Inet
            };
            if have.iter().any(|r| r.header.family == family) {
                continue;
            }
            let add = self
                .handle
                .rule()
                .add()
                .table_id(STRAIT_TABLE)
                .priority(RULE_PRIORITY)
                .fw_mark(FWMARK)
                .action(RuleAction::ToTable);
            let r = if v6 {
                let mut req = add.v6();
                req.message_mut().header.flags |= RuleFlags::Invert;
                req.execute().await
            } else {
                let mut req = add.v4();
                req.message_mut().header.flags |= RuleFlags::Invert;
                req.execute().await
            };
            match r {
                Ok(()) => {}
                Err(e) if is_exists(&e) => {}
                Err(e) => {
                    return Err(err(format!(
                        "adding rule `not fwmark {FWMARK:#x} lookup {STRAIT_TABLE}` ({})",
                        if v6 { "IPv6" } else { "IPv4" }
                    ))(e))
                }
            }
        }
        Ok(())
    }

    /// Removes Strait's rules; ones already gone are fine.
    pub async fn remove_rules(&self) -> Result<(), NetlinkError> {
        for rule in self.our_rules().await? {
            match self.handle.rule().del(rule).execute().await {
                Ok(()) => {}
                Err(e) if is_missing(&e) => {}
                Err(e) => return Err(err("removing Strait's routing rule")(e)),
            }
        }
        Ok(())
    }

    /// Removes every route Strait owns (at a clean stop, or stale ones after a crash), but
    /// the fail-closed `unreachable` ones if `keep_unreachable` (at start, until the map's
    /// routes are in place).
    pub async fn remove_all(&self, keep_unreachable: bool) -> Result<usize, NetlinkError> {
        let ours: Vec<KernelRoute> = self
            .routes()
            .await?
            .into_iter()
            .filter(|r| r.protocol == RTPROT_STRAIT && !(keep_unreachable && r.unreachable))
            .collect();
        for r in &ours {
            self.del_route(r).await?;
        }
        Ok(ours.len())
    }
}

fn parse_route(msg: &RouteMessage) -> Option<KernelRoute> {
    let mut table = msg.header.table as u32;
    let mut destination = None;
    let mut oif = None;
    let mut gateway = None;
    let mut nexthops = Vec::new();
    let mut metric = None;
    let mut mtu = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Metrics(metrics) => {
                mtu = metrics.iter().find_map(|m| match m {
                    RouteMetric::Mtu(v) => Some(*v),
                    _ => None,
                });
            }
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Priority(m) => metric = Some(*m),
            RouteAttribute::Destination(a) => destination = address(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(a) => gateway = address(a),
            RouteAttribute::MultiPath(hops) => {
                nexthops = hops
                    .iter()
                    .flat_map(|h| &h.attributes)
                    .filter_map(|a| match a {
                        RouteAttribute::Gateway(a) => address(a),
                        _ => None,
                    })
                    .collect();
                nexthops.sort();
            }
            _ => {}
        }
    }
    if table != RouteHeader::RT_TABLE_MAIN as u32 && table != STRAIT_TABLE {
        return None;
    }
    debug_assert_eq!(RouteHeader::RT_TABLE_MAIN as u32, MAIN_TABLE);
    let len = msg.header.destination_prefix_length;
    let prefix = match destination {
        Some(ip) => IpNetwork::new(ip, len).ok()?,
        None if msg.header.address_family == netlink_packet_route::AddressFamily::Inet6 => {
            IpNetwork::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0).ok()?
        }
        None => IpNetwork::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0).ok()?,
    };
    Some(KernelRoute {
        prefix,
        table,
        protocol: u8::from(msg.header.protocol),
        oif,
        gateway,
        nexthops,
        unreachable: msg.header.kind == RouteType::Unreachable,
        metric,
        mtu,
    })
}

fn address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}
