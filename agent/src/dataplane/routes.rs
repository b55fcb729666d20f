//! Which kernel routes a node should have, and the plan that gets it there from what the
//! kernel has. Pure: the netlink adapter lists routes and applies the plan.
//!
//! Strait owns exactly the routes tagged with [`RTPROT_STRAIT`]; it never touches another
//! owner's route. A desired route that would overlap a connected route or another owner's
//! route in the main table is refused (and reported), never installed.
//!
//! Strait's routes live in their own table, [`STRAIT_TABLE`], consulted before the main
//! table by every packet except those marked [`FWMARK`]: the agent marks its WireGuard
//! socket, so the tunnel's own datagrams and probes take the underlay even to an address
//! inside a prefix the tunnel carries (a gateway reached over an interconnect by its VPC
//! address), as wg-quick does.
//!
//! **Fail closed.** A route into the TUN device goes with the device: if the agent dies,
//! its routes vanish but the rule stays, and packets for remote prefixes would fall through
//! to the main table (the default route, unencrypted). A prefix whose carrier is revoked or
//! never enrolled has no route at all. So, unless `fail-closed = false`, every prefix the
//! mesh's configuration gives to other sites (the map's `fail-closed` list) and every TUN
//! route has an `unreachable` route at [`FAIL_CLOSED_METRIC`], tied to no device:
//! while a tunnel or gateway route exists it wins; otherwise such packets are refused on the
//! node (ICMP unreachable) instead of leaking. The twins and the rule stay across a clean
//! stop (an upgrade restarts the agent); only `strait-agent uninstall` or a start with
//! `fail-closed = false` removes them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use strait_proto::map::NetworkMap;
use strait_proto::msg::Refusal;

/// The routing protocol number on every route Strait installs (`ip route ... proto 83`).
pub const RTPROT_STRAIT: u8 = 83;
/// `RTPROT_KERNEL`: routes the kernel adds for an interface's own addresses.
pub const RTPROT_KERNEL: u8 = 2;
/// The routing table holding Strait's routes ("ST").
pub const STRAIT_TABLE: u32 = 0x5354;
/// The main routing table.
pub const MAIN_TABLE: u32 = 254;
/// The mark on the WireGuard socket's packets: they skip [`STRAIT_TABLE`].
pub const FWMARK: u32 = 0x5354;
/// Priority of the rule `not fwmark FWMARK lookup STRAIT_TABLE` (before main's 32766).
pub const RULE_PRIORITY: u32 = 5354;
/// Metric of the fail-closed `unreachable` routes: the last choice for their prefix.
pub const FAIL_CLOSED_METRIC: u32 = u32::MAX;

/// Where a route sends packets.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Via {
    /// Into the Strait TUN device (gateways and full-mesh nodes).
    Tun,
    /// To next hops on the site network (members, through their site's gateways): one
    /// address, or several (sorted, no repeats) for a multipath route over which the kernel
    /// spreads flows by its own hash (`net.ipv4.fib_multipath_hash_policy`).
    Gateways(Vec<IpAddr>),
    /// Nowhere: an `unreachable` route at [`FAIL_CLOSED_METRIC`], behind a [`Via::Tun`]
    /// route for the same prefix (see "Fail closed" above).
    Unreachable,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub prefix: IpNetwork,
    pub via: Via,
    /// The route's MTU (`ip route ... mtu`), for a [`Via::Tun`] route: the largest packet
    /// the peer's active path carries, so that the kernel answers larger ones with ICMP
    /// itself and TCP picks a segment size that fits. `None`: the TUN device's MTU.
    pub mtu: Option<u32>,
}

/// A route as the kernel reports it (main table or [`STRAIT_TABLE`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    pub prefix: IpNetwork,
    pub table: u32,
    pub protocol: u8,
    /// Output interface index.
    pub oif: Option<u32>,
    pub gateway: Option<IpAddr>,
    /// The next hops of a multipath route (`RTA_MULTIPATH`), sorted; empty otherwise.
    pub nexthops: Vec<IpAddr>,
    /// An `unreachable` route (type `RTN_UNREACHABLE`), not a unicast one.
    pub unreachable: bool,
    /// The route's metric, if the kernel reports one.
    pub metric: Option<u32>,
    /// The route's MTU metric (`RTAX_MTU`), if set.
    pub mtu: Option<u32>,
}

/// What to change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub add: Vec<Route>,
    /// Strait's own routes that are no longer wanted (or wrong).
    pub remove: Vec<KernelRoute>,
    /// Desired routes refused, with the reason.
    pub conflicts: Vec<Refusal>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

fn normalize(p: IpNetwork) -> IpNetwork {
    IpNetwork::new(p.network(), p.prefix()).unwrap_or(p)
}

/// The routes `map` asks for: peers' allowed IPs into the TUN, or a member's routes via its
/// site's gateways: the next hops `hops` gives for the route's prefix (the gateways that
/// can carry it now, see `nexthops`), or, where it gives none, the gateway the map names.
/// The node's own overlay address is covered by the TUN's connected route. With
/// `fail_closed`, every TUN route and every prefix of the map's `fail-closed` list (the rest
/// of the mesh by configuration) gets a [`Via::Unreachable`] twin.
pub fn desired(
    map: &NetworkMap,
    fail_closed: bool,
    hops: &BTreeMap<IpNetwork, Vec<IpAddr>>,
) -> Vec<Route> {
    let mut routes: Vec<Route> = map
        .peers
        .values()
        .flat_map(|p| p.allowed_ips.iter())
        .map(|p| Route {
            prefix: normalize(*p),
            via: Via::Tun,
            mtu: None,
        })
        .chain(map.routes.values().map(|r| {
            let prefix = normalize(r.prefix);
            let mut via = match hops.get(&prefix) {
                Some(h) if !h.is_empty() => h.clone(),
                _ => vec![r.via_address],
            };
            via.sort();
            via.dedup();
            Route {
                prefix,
                via: Via::Gateways(via),
                mtu: None,
            }
        }))
        .collect();
    routes.sort();
    routes.dedup_by(|a, b| a.prefix == b.prefix);
    if fail_closed {
        let mut closed: Vec<Route> = routes
            .iter()
            .filter(|r| r.via == Via::Tun)
            .map(|r| r.prefix)
            .chain(map.node.fail_closed.iter().map(|p| normalize(*p)))
            .map(|prefix| Route {
                prefix,
                via: Via::Unreachable,
                mtu: None,
            })
            .collect();
        closed.sort();
        closed.dedup();
        routes.extend(closed);
        routes.sort();
    }
    routes
}

/// Sets the MTU of every TUN route to its peer's (`mtu_of` the peer's WireGuard key, as
/// the map spells it), at most `cap` (the TUN device's MTU).
pub fn set_mtus(
    routes: &mut [Route],
    map: &NetworkMap,
    cap: u32,
    mtu_of: impl Fn(&str) -> Option<u32>,
) {
    for route in routes.iter_mut().filter(|r| r.via == Via::Tun) {
        let peer = map
            .peers
            .values()
            .find(|p| p.allowed_ips.iter().any(|a| normalize(*a) == route.prefix));
        route.mtu = peer
            .and_then(|p| mtu_of(&p.wg_public_key))
            .map(|m| m.min(cap));
    }
}

fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

fn matches(route: &Route, k: &KernelRoute, tun: u32) -> bool {
    k.table == STRAIT_TABLE
        && k.prefix == route.prefix
        && match route.via {
            Via::Tun => !k.unreachable && k.oif == Some(tun) && k.mtu == route.mtu,
            Via::Gateways(ref hops) => !k.unreachable && same_hops(hops, k),
            Via::Unreachable => k.unreachable && k.metric == Some(FAIL_CLOSED_METRIC),
        }
}

/// Whether kernel route `k` goes to exactly `hops`: one next hop as its gateway, several
/// as its multipath next hops.
fn same_hops(hops: &[IpAddr], k: &KernelRoute) -> bool {
    match hops {
        [one] => k.nexthops.is_empty() && k.gateway == Some(*one),
        many => k.gateway.is_none() && k.nexthops == many,
    }
}

/// The plan from `actual` (the kernel's main table and [`STRAIT_TABLE`]) to `desired`,
/// installed in [`STRAIT_TABLE`]. `tun` is the index of Strait's TUN device: routes on it
/// (such as the overlay's connected route) never conflict. Strait's routes found anywhere
/// else (an older version's, in main) are removed.
pub fn plan(desired: &[Route], actual: &[KernelRoute], tun: u32) -> Plan {
    let mut out = Plan::default();
    let (ours, others): (Vec<&KernelRoute>, Vec<&KernelRoute>) =
        actual.iter().partition(|k| k.protocol == RTPROT_STRAIT);
    let others: Vec<&KernelRoute> = others
        .into_iter()
        .filter(|k| k.table == MAIN_TABLE)
        .collect();
    let mut keep: Vec<&KernelRoute> = Vec::new();
    for route in desired {
        let conflict = others.iter().find(|k| {
            k.oif != Some(tun) && k.prefix.prefix() != 0 && overlaps(k.prefix, route.prefix)
        });
        if let Some(k) = conflict {
            // Reported once, for the prefix's TUN route.
            if route.via == Via::Unreachable {
                continue;
            }
            let what = if k.protocol == RTPROT_KERNEL {
                "a connected route".to_string()
            } else {
                format!("a route of another owner (protocol {})", k.protocol)
            };
            out.conflicts.push(Refusal {
                prefix: route.prefix.to_string(),
                reason: format!("overlaps {what} {} on this node; not installed", k.prefix),
            });
            continue;
        }
        match ours.iter().find(|k| matches(route, k, tun)) {
            Some(k) => keep.push(k),
            None => {
                // Only the MTU differs, or the next hops of a route via gateways: the
                // route is replaced in place, never removed (removing it first would drop
                // the prefix's packets for a moment).
                let in_place = ours.iter().find(|k| match route.via {
                    Via::Tun => matches(
                        &Route {
                            mtu: k.mtu,
                            ..route.clone()
                        },
                        k,
                        tun,
                    ),
                    Via::Gateways(_) => {
                        k.table == STRAIT_TABLE
                            && k.prefix == route.prefix
                            && !k.unreachable
                            && (k.gateway.is_some() || !k.nexthops.is_empty())
                    }
                    Via::Unreachable => false,
                });
                if let Some(k) = in_place {
                    keep.push(k);
                }
                out.add.push(route.clone());
            }
        }
    }
    out.remove = ours
        .into_iter()
        .filter(|k| !keep.iter().any(|kept| std::ptr::eq(*kept, *k)))
        .cloned()
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TUN: u32 = 7;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn tun(p: &str) -> Route {
        Route {
            prefix: net(p),
            via: Via::Tun,
            mtu: None,
        }
    }

    fn kernel(p: &str, protocol: u8, oif: u32) -> KernelRoute {
        KernelRoute {
            prefix: net(p),
            table: if protocol == RTPROT_STRAIT {
                STRAIT_TABLE
            } else {
                MAIN_TABLE
            },
            protocol,
            oif: Some(oif),
            gateway: None,
            nexthops: vec![],
            unreachable: false,
            metric: None,
            mtu: None,
        }
    }

    /// A map of node a/x with `peers` and `routes`, nothing else.
    fn test_map(
        role: strait_proto::Role,
        peers: BTreeMap<String, strait_proto::map::PeerView>,
        routes: BTreeMap<IpNetwork, strait_proto::map::RouteView>,
    ) -> NetworkMap {
        NetworkMap {
            version: 1,
            mesh: "prod".into(),
            node: strait_proto::map::SelfView {
                site: "a".into(),
                name: "x".into(),
                role,
                overlay_ip: "100.64.0.1".parse().unwrap(),
                overlay_cidr: net("100.64.0.0/10"),
                accepted: vec![],
                refused: vec![],
                next_wg_public_key: None,
                fail_closed: vec![],
                translations: vec![],
                local_gateways: vec![],
            },
            peers,
            routes,
            access: Default::default(),
        }
    }

    fn closed(p: &str) -> Route {
        Route {
            prefix: net(p),
            via: Via::Unreachable,
            mtu: None,
        }
    }

    /// A fail-closed route as the kernel lists it (IPv6 ones are on `lo`, index 1).
    fn kernel_closed(p: &str) -> KernelRoute {
        KernelRoute {
            prefix: net(p),
            table: STRAIT_TABLE,
            protocol: RTPROT_STRAIT,
            oif: p.contains(':').then_some(1),
            gateway: None,
            nexthops: vec![],
            unreachable: true,
            metric: Some(FAIL_CLOSED_METRIC),
            mtu: None,
        }
    }

    #[test]
    fn a_changed_mtu_replaces_the_route_in_place() {
        let mut want = tun("10.20.0.0/16");
        want.mtu = Some(1220);
        let have = vec![kernel("10.20.0.0/16", RTPROT_STRAIT, TUN)];
        let p = plan(std::slice::from_ref(&want), &have, TUN);
        assert_eq!(p.add, vec![want.clone()]);
        assert!(p.remove.is_empty(), "{p:?}");
        let mut now = have.clone();
        now[0].mtu = Some(1220);
        assert!(plan(std::slice::from_ref(&want), &now, TUN).is_empty());
        // Back to the device's MTU: replaced again.
        let p = plan(&[tun("10.20.0.0/16")], &now, TUN);
        assert_eq!((p.add.len(), p.remove.len()), (1, 0));
    }

    #[test]
    fn adds_missing_keeps_present_removes_stale() {
        let want = vec![tun("10.20.0.0/16"), tun("100.64.0.2/32")];
        let have = vec![
            kernel("10.20.0.0/16", RTPROT_STRAIT, TUN),
            kernel("10.99.0.0/16", RTPROT_STRAIT, TUN),
            kernel("100.64.0.0/10", RTPROT_KERNEL, TUN),
            kernel("0.0.0.0/0", 16, 2),
        ];
        let p = plan(&want, &have, TUN);
        assert_eq!(p.add, vec![tun("100.64.0.2/32")]);
        assert_eq!(p.remove, vec![kernel("10.99.0.0/16", RTPROT_STRAIT, TUN)]);
        assert!(p.conflicts.is_empty(), "{:?}", p.conflicts);
        // Applying the plan makes the next plan empty (idempotence).
        let after = vec![
            kernel("10.20.0.0/16", RTPROT_STRAIT, TUN),
            kernel("100.64.0.2/32", RTPROT_STRAIT, TUN),
            kernel("100.64.0.0/10", RTPROT_KERNEL, TUN),
            kernel("0.0.0.0/0", 16, 2),
        ];
        assert!(plan(&want, &after, TUN).is_empty());
    }

    #[test]
    fn overlaps_with_connected_or_foreign_routes_are_refused_not_installed() {
        let want = vec![
            tun("10.10.0.0/16"),
            tun("192.168.5.0/24"),
            tun("172.16.0.0/12"),
        ];
        let have = vec![
            kernel("10.10.4.0/24", RTPROT_KERNEL, 2),
            kernel("192.168.5.0/24", 4, 3),
            kernel("172.16.0.0/12", RTPROT_STRAIT, TUN),
        ];
        let p = plan(&want, &have, TUN);
        assert!(p.add.is_empty());
        assert!(p.remove.is_empty());
        let reasons: Vec<String> = p
            .conflicts
            .iter()
            .map(|c| format!("{} {}", c.prefix, c.reason))
            .collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(
            reasons[0].starts_with("10.10.0.0/16")
                && reasons[0].contains("connected route 10.10.4.0/24")
        );
        assert!(reasons[1].contains("another owner (protocol 4)"));
    }

    #[test]
    fn desired_routes_come_from_peers_and_member_routes() {
        use std::collections::BTreeMap;
        use strait_proto::map::{PeerKind, PeerView, RouteView};
        let peer = PeerView {
            id: "b/gw".into(),
            site: "b".into(),
            name: "gw".into(),
            kind: PeerKind::Agent,
            role: None,
            wg_public_key: String::new(),
            next_wg_public_key: None,
            endpoints: vec![],
            allowed_ips: vec![net("100.64.0.2/32"), net("10.20.0.0/16")],
            overlay_ip: None,
            online: true,
            priority: 0,
        };
        let route = RouteView {
            prefix: net("10.30.0.0/16"),
            site: "c".into(),
            via: "a/gw".into(),
            via_address: "10.10.0.1".parse().unwrap(),
        };
        let mut map = test_map(
            strait_proto::Role::Gateway,
            BTreeMap::from([(peer.id.clone(), peer)]),
            BTreeMap::from([(route.prefix, route)]),
        );
        let d = desired(&map, false, &BTreeMap::new());
        assert_eq!(
            d,
            vec![
                Route {
                    prefix: net("10.20.0.0/16"),
                    via: Via::Tun,
                    mtu: None,
                },
                Route {
                    prefix: net("10.30.0.0/16"),
                    via: Via::Gateways(vec!["10.10.0.1".parse().unwrap()]),
                    mtu: None,
                },
                Route {
                    prefix: net("100.64.0.2/32"),
                    via: Via::Tun,
                    mtu: None,
                },
            ]
        );
        // Failing closed: each TUN route gets an unreachable twin; a member's route via its
        // gateway does not (it does not go with the agent).
        let mut want = d.clone();
        want.extend([closed("10.20.0.0/16"), closed("100.64.0.2/32")]);
        want.sort();
        assert_eq!(desired(&map, true, &BTreeMap::new()), want);

        // The mesh's configured prefixes stay closed whatever the state of the nodes that
        // carry them: the peer revoked (gone from the map), a site never enrolled.
        map.node.fail_closed = vec![
            net("10.20.0.0/16"),
            net("10.40.0.0/16"),
            net("100.64.0.0/10"),
        ];
        map.peers.clear();
        let member = Route {
            prefix: net("10.30.0.0/16"),
            via: Via::Gateways(vec!["10.10.0.1".parse().unwrap()]),
            mtu: None,
        };
        let mut want = vec![
            member.clone(),
            closed("10.20.0.0/16"),
            closed("10.40.0.0/16"),
            closed("100.64.0.0/10"),
        ];
        want.sort();
        assert_eq!(desired(&map, true, &BTreeMap::new()), want);
        assert_eq!(desired(&map, false, &BTreeMap::new()), vec![member]);
    }

    #[test]
    fn fail_closed_twins_are_planned_like_any_route() {
        let want = vec![
            tun("10.20.0.0/16"),
            closed("10.20.0.0/16"),
            tun("2001:db8:20::/48"),
            closed("2001:db8:20::/48"),
        ];
        // After a crash: the TUN routes went with the device, the twins stayed. The
        // restarted agent adds the TUN routes and keeps the twins.
        let left = vec![
            kernel_closed("10.20.0.0/16"),
            kernel_closed("2001:db8:20::/48"),
        ];
        let p = plan(&want, &left, TUN);
        assert_eq!(p.add, vec![tun("10.20.0.0/16"), tun("2001:db8:20::/48")]);
        assert!(p.remove.is_empty(), "{:?}", p.remove);
        // A TUN route does not stand for its twin, nor a twin for the TUN route.
        let only_tun = vec![kernel("10.20.0.0/16", RTPROT_STRAIT, TUN)];
        let p = plan(&want[..2], &only_tun, TUN);
        assert_eq!(p.add, vec![closed("10.20.0.0/16")]);
        // An unreachable route at another metric is not a twin: replaced.
        let mut other_metric = kernel_closed("10.20.0.0/16");
        other_metric.metric = Some(100);
        let p = plan(&want[1..2], std::slice::from_ref(&other_metric), TUN);
        assert_eq!(
            (p.add, p.remove),
            (vec![closed("10.20.0.0/16")], vec![other_metric])
        );
        // With fail-closed turned off, twins left from before are removed.
        let p = plan(&[tun("10.20.0.0/16")], &left[..1], TUN);
        assert_eq!(p.remove, left[..1].to_vec());
        // A prefix refused for a conflict is reported once, and neither route installed.
        let connected = vec![kernel("10.20.4.0/24", RTPROT_KERNEL, 2)];
        let p = plan(&want[..2], &connected, TUN);
        assert!(p.add.is_empty());
        assert_eq!(p.conflicts.len(), 1, "{:?}", p.conflicts);
    }

    #[test]
    fn a_route_whose_next_hops_changed_is_replaced_in_place() {
        let via = |hops: &[&str]| Route {
            prefix: net("10.20.0.0/16"),
            via: Via::Gateways(hops.iter().map(|s| s.parse().unwrap()).collect()),
            mtu: None,
        };
        let kernel_via = |gateway: Option<&str>, nexthops: &[&str]| KernelRoute {
            prefix: net("10.20.0.0/16"),
            table: STRAIT_TABLE,
            protocol: RTPROT_STRAIT,
            oif: Some(2),
            gateway: gateway.map(|g| g.parse().unwrap()),
            nexthops: nexthops.iter().map(|s| s.parse().unwrap()).collect(),
            unreachable: false,
            metric: None,
            mtu: None,
        };
        let one = kernel_via(Some("10.10.0.1"), &[]);
        let both = kernel_via(None, &["10.10.0.1", "10.10.0.2"]);
        // Nothing to do when the kernel has exactly the next hops.
        assert!(plan(&[via(&["10.10.0.1"])], std::slice::from_ref(&one), TUN).is_empty());
        assert!(plan(
            &[via(&["10.10.0.1", "10.10.0.2"])],
            std::slice::from_ref(&both),
            TUN
        )
        .is_empty());
        // One gateway to another, one to two, two to one: replaced, never removed first
        // (that would leave the prefix to its unreachable twin for a moment).
        for (want, have) in [
            (via(&["10.10.0.2"]), &one),
            (via(&["10.10.0.1", "10.10.0.2"]), &one),
            (via(&["10.10.0.2"]), &both),
        ] {
            let p = plan(std::slice::from_ref(&want), std::slice::from_ref(have), TUN);
            assert_eq!(p.add, vec![want.clone()]);
            assert!(p.remove.is_empty(), "{:?}", p.remove);
        }
    }

    #[test]
    fn member_routes_follow_the_gateways_that_carry_them() {
        let route_view = strait_proto::map::RouteView {
            prefix: net("10.20.0.0/16"),
            site: "b".into(),
            via: "a/gw1".into(),
            via_address: "10.10.0.1".parse().unwrap(),
        };
        let map = test_map(
            strait_proto::Role::Member,
            BTreeMap::new(),
            BTreeMap::from([(route_view.prefix, route_view)]),
        );
        let route = |hops: &[&str]| Route {
            prefix: net("10.20.0.0/16"),
            via: Via::Gateways(hops.iter().map(|s| s.parse().unwrap()).collect()),
            mtu: None,
        };
        // No word from the gateways yet: the gateway the map names.
        assert_eq!(
            desired(&map, false, &BTreeMap::new()),
            vec![route(&["10.10.0.1"])]
        );
        let mut hops = BTreeMap::new();
        hops.insert(net("10.20.0.0/16"), vec![]);
        assert_eq!(desired(&map, false, &hops), vec![route(&["10.10.0.1"])]);
        // The gateways that carry it, sorted, whatever the order given.
        hops.insert(
            net("10.20.0.0/16"),
            vec!["10.10.0.3".parse().unwrap(), "10.10.0.2".parse().unwrap()],
        );
        assert_eq!(
            desired(&map, false, &hops),
            vec![route(&["10.10.0.2", "10.10.0.3"])]
        );
    }

    #[test]
    fn routes_of_an_older_version_in_main_move_to_the_strait_table() {
        let mut old = kernel("10.20.0.0/16", RTPROT_STRAIT, TUN);
        old.table = MAIN_TABLE;
        let want = Route {
            prefix: net("10.20.0.0/16"),
            via: Via::Tun,
            mtu: None,
        };
        let p = plan(std::slice::from_ref(&want), std::slice::from_ref(&old), TUN);
        assert_eq!((p.add, p.remove), (vec![want.clone()], vec![old]));
        // Another owner's routes in other tables are not Strait's business.
        let mut elsewhere = kernel("10.20.0.0/16", 4, 3);
        elsewhere.table = 100;
        let p = plan(std::slice::from_ref(&want), &[elsewhere], TUN);
        assert!(p.conflicts.is_empty() && p.add == vec![want.clone()]);
    }
}
