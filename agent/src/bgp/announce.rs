//! What a gateway announces to its site's routers (pure): every prefix of another site
//! (and of external peers) that this gateway can carry now, i.e. for which at least one of
//! the peers carrying it is reachable by this gateway's own probes. A prefix whose every
//! carrier is unreachable is withdrawn, so the routers send that traffic to another gateway
//! of the site.

use std::collections::BTreeMap;

use base64::Engine as _;
use ipnetwork::IpNetwork;
use strait_proto::map::NetworkMap;

/// A prefix to announce and the site it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Announcement {
    pub prefix: IpNetwork,
    pub site: String,
}

/// The prefixes to announce for `map`, given the public keys of the peers this node's
/// probes reach (sorted). The overlay's addresses are not announced: hosts without an agent
/// reach other sites' prefixes, not nodes' overlay addresses.
pub fn announcements(map: &NetworkMap, reachable: &[[u8; 32]]) -> Vec<Announcement> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out: BTreeMap<IpNetwork, (String, bool)> = BTreeMap::new();
    for peer in map.peers.values() {
        let up = b64
            .decode(&peer.wg_public_key)
            .ok()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .is_some_and(|k| reachable.binary_search(&k).is_ok());
        for prefix in &peer.allowed_ips {
            if peer.site == map.node.site || map.node.overlay_cidr.contains(prefix.network()) {
                continue;
            }
            let entry = out
                .entry(*prefix)
                .or_insert_with(|| (peer.site.clone(), false));
            entry.1 |= up;
        }
    }
    out.into_iter()
        .filter(|(_, (_, up))| *up)
        .map(|(prefix, (site, _))| Announcement { prefix, site })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use strait_proto::map::{PeerKind, PeerView, SelfView};
    use strait_proto::Role;

    use super::*;

    fn key(n: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([n; 32])
    }

    fn peer(id: &str, n: u8, allowed: &[&str]) -> PeerView {
        PeerView {
            id: id.into(),
            site: id.split('/').next().unwrap().into(),
            name: id.split('/').nth(1).unwrap().into(),
            kind: PeerKind::Agent,
            role: Some(Role::Gateway),
            wg_public_key: key(n),
            next_wg_public_key: None,
            endpoints: vec![],
            allowed_ips: allowed.iter().map(|s| s.parse().unwrap()).collect(),
            overlay_ip: None,
            online: true,
            priority: 0,
        }
    }

    fn map(peers: Vec<PeerView>) -> NetworkMap {
        NetworkMap {
            version: 1,
            mesh: "m".into(),
            node: SelfView {
                site: "a".into(),
                name: "gw1".into(),
                role: Role::Gateway,
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

    fn prefixes(a: &[Announcement]) -> Vec<String> {
        a.iter().map(|a| a.prefix.to_string()).collect()
    }

    #[test]
    fn a_site_is_announced_while_one_of_its_gateways_is_reachable() {
        let m = map(vec![
            peer("b/gw1", 1, &["100.64.0.5/32", "10.20.0.0/16"]),
            peer("b/gw2", 2, &["100.64.0.6/32", "10.20.0.0/16"]),
            peer(
                "c/gw1",
                3,
                &["100.64.0.7/32", "10.30.0.0/16", "10.31.0.0/16"],
            ),
        ]);
        let all = announcements(&m, &[[1; 32], [2; 32], [3; 32]]);
        assert_eq!(
            prefixes(&all),
            vec!["10.20.0.0/16", "10.30.0.0/16", "10.31.0.0/16"]
        );
        assert_eq!(all[0].site, "b");
        assert_eq!(
            prefixes(&announcements(&m, &[[2; 32], [3; 32]])),
            vec!["10.20.0.0/16", "10.30.0.0/16", "10.31.0.0/16"],
            "b/gw2 still carries site b"
        );
        assert_eq!(
            prefixes(&announcements(&m, &[[3; 32]])),
            vec!["10.30.0.0/16", "10.31.0.0/16"],
            "no path to site b: withdrawn"
        );
        assert!(announcements(&m, &[]).is_empty());
    }
}
