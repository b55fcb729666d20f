//! What a map means for the engine (pure): its peers as [`PeerSpec`]s, and the engine's
//! tunnels in the coordinator's terms ([`PeerLink`]s by `site/node`). With `routes.rs`,
//! the whole of "map -> peers + routes".

use base64::Engine as _;
use strait_proto::map::{NetworkMap, PeerKind};
use strait_proto::msg::{PathFigures, PeerLink};

use super::engine::{PeerSpec, PeerStatus};
use crate::paths::select::{first_guess, Candidate};

/// The keepalive toward external peers when the node's own is off: their handshakes are
/// all that says they are up.
pub const EXTERNAL_KEEPALIVE: u16 = 25;

/// The engine's peers for `map`: every announced endpoint a path to probe, the first guess
/// where to send until probing chooses (see [`first_guess`]). Peers whose key is not 32
/// bytes of base64 are left out (the coordinator checks keys; this is a second line).
///
/// External peers (plain WireGuard devices) do not answer Strait's probes, so they are not
/// probed: probing them would find every path down and count them as down for spreading,
/// BGP announcements and members' carry queries. Their endpoint is used as given (roaming
/// moves it), with a persistent keepalive (the node's, or [`EXTERNAL_KEEPALIVE`] when that
/// is off), so a session is renewed every two minutes while the device answers: the
/// engine counts such a peer up while its last handshake is under 180 s old.
pub fn peer_specs(map: &NetworkMap, keepalive: Option<u16>) -> Vec<PeerSpec> {
    map.peers
        .values()
        .filter_map(|p| {
            let key = decode_key(&p.wg_public_key)?;
            let external = p.kind == PeerKind::External;
            let candidates: Vec<Candidate> = p
                .endpoints
                .iter()
                .filter(|_| !external)
                .map(|e| Candidate {
                    address: e.address,
                    kind: e.kind,
                    cost: e.cost.unwrap_or(0),
                })
                .collect();
            let (endpoint, keepalive) = if external {
                (
                    p.endpoints.first().map(|e| e.address),
                    keepalive.or(Some(EXTERNAL_KEEPALIVE)),
                )
            } else {
                (first_guess(&candidates), keepalive)
            };
            Some(PeerSpec {
                public_key: key,
                endpoint,
                allowed_ips: p.allowed_ips.clone(),
                keepalive,
                candidates,
                next_public_key: p.next_wg_public_key.as_deref().and_then(decode_key),
                priority: p.priority,
            })
        })
        .collect()
}

fn decode_key(b64: &str) -> Option<[u8; 32]> {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()?
        .try_into()
        .ok()
}

/// The engine's status in the coordinator's terms: peers by `site/node`. A tunnel whose key
/// is no peer's in `map` is left out.
pub fn peer_links(map: &NetworkMap, status: &[PeerStatus]) -> Vec<PeerLink> {
    let b64 = base64::engine::general_purpose::STANDARD;
    status
        .iter()
        .filter_map(|s| {
            let key = b64.encode(s.public_key);
            // A peer that has just switched to its announced key is found by that key.
            let (id, _) = map.peers.iter().find(|(_, p)| {
                p.wg_public_key == key || p.next_wg_public_key.as_deref() == Some(key.as_str())
            })?;
            Some(PeerLink {
                peer: id.clone(),
                endpoint: s.endpoint,
                handshake_age_secs: s.last_handshake.map(|d| d.as_secs()),
                tx_bytes: s.tx_bytes,
                rx_bytes: s.rx_bytes,
                paths: s
                    .paths
                    .iter()
                    .map(|p| PathFigures {
                        address: p.address,
                        kind: p.kind,
                        health: format!("{:?}", p.health).to_lowercase(),
                        active: p.active,
                        rtt_us: p.srtt_us,
                        p50_us: p.p50_us,
                        p95_us: p.p95_us,
                        jitter_us: p.jitter_us,
                        loss: p.loss,
                        mtu: p.mtu,
                    })
                    .collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use strait_proto::map::{PeerKind, PeerView, SelfView};
    use strait_proto::msg::{Endpoint, EndpointKind};

    use super::*;
    use crate::paths::select::{Health, PathReport};

    fn key(n: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([n; 32])
    }

    fn ep(addr: &str, kind: EndpointKind, cost: Option<u32>) -> Endpoint {
        Endpoint {
            address: addr.parse().unwrap(),
            kind,
            cost,
        }
    }

    fn peer(id: &str, wg: String, endpoints: Vec<Endpoint>) -> PeerView {
        PeerView {
            id: id.into(),
            site: id.split('/').next().unwrap().into(),
            name: id.split('/').nth(1).unwrap().into(),
            kind: PeerKind::Agent,
            role: None,
            wg_public_key: wg,
            next_wg_public_key: None,
            endpoints,
            allowed_ips: vec!["10.20.0.0/16".parse().unwrap()],
            overlay_ip: None,
            online: true,
            priority: 0,
        }
    }

    fn map(peers: Vec<PeerView>) -> NetworkMap {
        NetworkMap {
            version: 1,
            mesh: "prod".into(),
            node: SelfView {
                site: "a".into(),
                name: "gw".into(),
                role: strait_proto::Role::Gateway,
                overlay_ip: "100.64.0.1".parse().unwrap(),
                overlay_cidr: "100.64.0.0/10".parse().unwrap(),
                accepted: vec![],
                refused: vec![],
                next_wg_public_key: None,
                fail_closed: vec![],
                translations: vec![],
                local_gateways: vec![],
            },
            peers: peers.into_iter().map(|p| (p.id.clone(), p)).collect(),
            routes: BTreeMap::new(),
            access: Default::default(),
        }
    }

    const IC: &str = "172.31.255.2:51820";
    const PUBLIC: &str = "203.0.113.10:51820";
    const PRIVATE: &str = "10.20.0.1:51820";

    #[test]
    fn external_peers_are_not_probed_and_always_keep_a_session_alive() {
        let mut device = peer(
            "external/dc1",
            key(7),
            vec![ep(PUBLIC, EndpointKind::Public, None)],
        );
        device.kind = PeerKind::External;
        device.role = None;
        let agent = peer("b/gw", key(1), vec![ep(PUBLIC, EndpointKind::Public, None)]);
        for keepalive in [None, Some(10)] {
            let specs = peer_specs(&map(vec![device.clone(), agent.clone()]), keepalive);
            let ext = specs.iter().find(|s| s.public_key == [7; 32]).unwrap();
            assert!(ext.candidates.is_empty(), "an external device is probed");
            assert_eq!(ext.endpoint, Some(PUBLIC.parse().unwrap()));
            assert_eq!(ext.keepalive, Some(keepalive.unwrap_or(EXTERNAL_KEEPALIVE)));
            // Agents keep their probing and the node's keepalive.
            let gw = specs.iter().find(|s| s.public_key == [1; 32]).unwrap();
            assert_eq!(gw.candidates.len(), 1);
            assert_eq!(gw.keepalive, keepalive);
        }
    }

    #[test]
    fn every_endpoint_is_a_path_and_the_first_guess_avoids_private_addresses() {
        use EndpointKind::*;
        let first = |endpoints: Vec<Endpoint>| {
            let specs = peer_specs(&map(vec![peer("b/gw", key(1), endpoints)]), Some(25));
            assert_eq!(specs.len(), 1);
            specs[0].endpoint.map(|e| e.to_string())
        };
        assert_eq!(
            first(vec![
                ep(PRIVATE, Private, None),
                ep(PUBLIC, Public, None),
                ep(IC, Interconnect, None)
            ]),
            Some(IC.into())
        );
        // Another site's private address is likely out of reach until probed.
        assert_eq!(
            first(vec![ep(PRIVATE, Private, None), ep(PUBLIC, Public, None)]),
            Some(PUBLIC.into())
        );
        // A member's gateway announces only its private address: that is the one.
        assert_eq!(
            first(vec![ep(PRIVATE, Private, None)]),
            Some(PRIVATE.into())
        );
        // Within a kind, the lower cost (absent: 0).
        assert_eq!(
            first(vec![
                ep(PUBLIC, Public, Some(10)),
                ep("198.51.100.7:51820", Public, None)
            ]),
            Some("198.51.100.7:51820".into())
        );
        // Behind NAT, nothing to send to until the peer speaks.
        assert_eq!(first(vec![]), None);

        let specs = peer_specs(
            &map(vec![peer(
                "b/gw",
                key(1),
                vec![ep(PUBLIC, Public, Some(3)), ep(PRIVATE, Private, None)],
            )]),
            Some(25),
        );
        let spec = &specs[0];
        assert_eq!(spec.public_key, [1; 32]);
        assert_eq!(spec.keepalive, Some(25));
        assert_eq!(spec.allowed_ips, vec!["10.20.0.0/16".parse().unwrap()]);
        assert_eq!(
            spec.candidates,
            vec![
                Candidate {
                    address: PUBLIC.parse().unwrap(),
                    kind: Public,
                    cost: 3
                },
                Candidate {
                    address: PRIVATE.parse().unwrap(),
                    kind: Private,
                    cost: 0
                },
            ]
        );
    }

    #[test]
    fn peers_with_unusable_keys_are_left_out_and_announced_keys_decoded() {
        let mut next = peer("c/gw", key(3), vec![]);
        next.next_wg_public_key = Some(key(4));
        let mut bad_next = peer("d/gw", key(5), vec![]);
        bad_next.next_wg_public_key = Some("not base64".into());
        let m = map(vec![
            peer("b/gw", "c2hvcnQ=".into(), vec![]),
            peer("e/gw", "!!!".into(), vec![]),
            next,
            bad_next,
        ]);
        let specs = peer_specs(&m, None);
        let keys: Vec<_> = specs
            .iter()
            .map(|s| (s.public_key[0], s.next_public_key.map(|k| k[0])))
            .collect();
        assert_eq!(keys, vec![(3, Some(4)), (5, None)]);
    }

    #[test]
    fn links_name_peers_by_site_and_node_also_under_their_announced_key() {
        let mut rotating = peer("c/gw", key(3), vec![]);
        rotating.next_wg_public_key = Some(key(4));
        let m = map(vec![peer("b/gw", key(1), vec![]), rotating]);
        let status = |n: u8| PeerStatus {
            public_key: [n; 32],
            endpoint: Some(PUBLIC.parse().unwrap()),
            last_handshake: Some(Duration::from_millis(2500)),
            tx_bytes: 10,
            rx_bytes: 20,
            paths: vec![PathReport {
                address: PUBLIC.parse().unwrap(),
                kind: EndpointKind::Public,
                health: Health::Degraded,
                active: true,
                srtt_us: Some(900),
                p50_us: Some(850),
                p95_us: None,
                jitter_us: 40,
                loss: 0.25,
                mtu: Some(1400),
            }],
            mtu: Some(1340),
        };
        // 9: a tunnel the map no longer names (the peer was just removed).
        let links = peer_links(&m, &[status(1), status(4), status(9)]);
        let ids: Vec<&str> = links.iter().map(|l| l.peer.as_str()).collect();
        assert_eq!(ids, ["b/gw", "c/gw"]);
        let l = &links[0];
        assert_eq!(l.handshake_age_secs, Some(2));
        assert_eq!((l.tx_bytes, l.rx_bytes), (10, 20));
        assert_eq!(
            l.paths,
            vec![PathFigures {
                address: PUBLIC.parse().unwrap(),
                kind: EndpointKind::Public,
                health: "degraded".into(),
                active: true,
                rtt_us: Some(900),
                p50_us: Some(850),
                p95_us: None,
                jitter_us: 40,
                loss: 0.25,
                mtu: Some(1400),
            }]
        );
    }
}
