//! Prefix policy: which advertised prefixes a node may carry. Pure.

use ipnetwork::IpNetwork;
use strait_proto::msg::Refusal;

use crate::config::SiteConfig;
pub use crate::prefix::{contains, overlaps};

/// A prefix accepted for another site's node, which advertisements must not overlap.
#[derive(Debug, Clone)]
pub struct Claimed<'a> {
    pub prefix: IpNetwork,
    pub site: &'a str,
    pub node: &'a str,
}

/// A prefix an external peer carries (`node` is the peer's name).
pub type External<'a> = Claimed<'a>;

/// Splits `advertised` into accepted prefixes and refusals (each naming the conflict).
///
/// A prefix is refused if it covers the default route, overlaps a prefix another site
/// declares or already carries, is exactly a prefix an external peer carries (both would
/// route it, and peers of one map cannot share a destination), or lies outside every prefix
/// of the node's own site.
///
/// Other sites' prefixes (in `sites`) and `claimed` are mesh addresses (global prefixes for
/// translated sites, see [`crate::globals`]); `to_mesh` gives an advertised prefix's mesh
/// form, which is what must not clash with them.
pub fn check(
    site: &SiteConfig,
    sites: &[SiteConfig],
    claimed: &[Claimed<'_>],
    external: &[External<'_>],
    overlay: IpNetwork,
    advertised: &[IpNetwork],
    to_mesh: &dyn Fn(IpNetwork) -> IpNetwork,
) -> (Vec<IpNetwork>, Vec<Refusal>) {
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for &p in advertised {
        let p = normalize(p);
        match refusal_reason(site, sites, claimed, external, overlay, p, to_mesh(p)) {
            None if !accepted.contains(&p) => accepted.push(p),
            None => {}
            Some(reason) => refused.push(Refusal {
                prefix: p.to_string(),
                reason,
            }),
        }
    }
    (accepted, refused)
}

// How each refusal's reason begins; `Conflict::of` reads the kind back from these.
const DEFAULT_ROUTE: &str = "covers the default route";
const OVERLAY: &str = "overlaps the mesh overlay";
const OTHER_SITE: &str = "overlaps site ";
const CARRIED: &str = " carried by ";
const EXTERNAL: &str = "is carried by external peer ";
const OUTSIDE: &str = "outside site ";

/// The kind of conflict a refused prefix has: a small fixed set, the `reason` label of
/// `strait_coordinator_refused_prefixes_total` (the reason text itself names the prefix and
/// the other party, too many values for a label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// A default route (`0.0.0.0/0`, `::/0`).
    DefaultRoute,
    /// Overlaps the mesh's overlay range.
    Overlay,
    /// Overlaps a prefix another site declares (that prefix, inside it, or around it).
    OtherSite,
    /// Overlaps a prefix another site's node already carries.
    OtherNode,
    /// Exactly a prefix an external peer carries.
    ExternalPeer,
    /// Outside every prefix of the node's own site.
    OutsideSite,
    /// A reason this version does not write (kept from an older one).
    Other,
}

impl Conflict {
    /// The kind of a refusal's reason, as [`check`] writes it.
    pub fn of(reason: &str) -> Conflict {
        if reason.starts_with(DEFAULT_ROUTE) {
            Conflict::DefaultRoute
        } else if reason.starts_with(OVERLAY) {
            Conflict::Overlay
        } else if reason.starts_with(OTHER_SITE) {
            Conflict::OtherSite
        } else if reason.starts_with("overlaps ") && reason.contains(CARRIED) {
            Conflict::OtherNode
        } else if reason.starts_with(EXTERNAL) {
            Conflict::ExternalPeer
        } else if reason.starts_with(OUTSIDE) {
            Conflict::OutsideSite
        } else {
            Conflict::Other
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Conflict::DefaultRoute => "default-route",
            Conflict::Overlay => "overlay",
            Conflict::OtherSite => "other-site",
            Conflict::OtherNode => "other-node",
            Conflict::ExternalPeer => "external-peer",
            Conflict::OutsideSite => "outside-site",
            Conflict::Other => "other",
        }
    }
}

fn normalize(p: IpNetwork) -> IpNetwork {
    IpNetwork::new(p.network(), p.prefix()).unwrap_or(p)
}

fn refusal_reason(
    site: &SiteConfig,
    sites: &[SiteConfig],
    claimed: &[Claimed<'_>],
    external: &[External<'_>],
    overlay: IpNetwork,
    p: IpNetwork,
    mesh: IpNetwork,
) -> Option<String> {
    if p.prefix() == 0 {
        return Some(format!("{DEFAULT_ROUTE}; advertise the site's own ranges"));
    }
    if overlaps(p, overlay) {
        return Some(format!("{OVERLAY} {overlay}"));
    }
    for other in sites.iter().filter(|s| s.name != site.name) {
        if let Some(theirs) = other.prefixes.iter().find(|q| overlaps(**q, mesh)) {
            return Some(format!("{OTHER_SITE}{}'s prefix {theirs}", other.name));
        }
    }
    if let Some(c) = claimed
        .iter()
        .find(|c| c.site != site.name && overlaps(c.prefix, mesh))
    {
        return Some(format!(
            "overlaps {}{CARRIED}{}/{}",
            c.prefix, c.site, c.node
        ));
    }
    if let Some(e) = external.iter().find(|e| normalize(e.prefix) == p) {
        return Some(format!("{EXTERNAL}{} of site {}", e.node, e.site));
    }
    if !site.prefixes.iter().any(|own| contains(*own, p)) {
        let own: Vec<String> = site.prefixes.iter().map(|q| q.to_string()).collect();
        return Some(format!(
            "{OUTSIDE}{}'s allowed prefixes [{}]; add it to the site's prefixes in the coordinator config",
            site.name,
            own.join(", ")
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str, prefixes: &[&str]) -> SiteConfig {
        SiteConfig {
            name: name.into(),
            cloud: String::new(),
            region: String::new(),
            prefixes: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
            full_mesh: false,
            global_prefixes: vec![],
        }
    }

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn accepts_inside_and_refuses_each_kind_with_a_reason() {
        let a = site("a", &["10.1.0.0/16"]);
        let b = site("b", &["10.2.0.0/16"]);
        let c = site("c", &["172.16.0.0/12"]);
        let sites = vec![a.clone(), b.clone(), c.clone()];
        let claimed = [Claimed {
            prefix: net("172.16.5.0/24"),
            site: "c",
            node: "gw",
        }];
        let overlay = net("100.64.0.0/10");
        let (ok, refused) = check(
            &a,
            &sites,
            &claimed,
            &[],
            overlay,
            &[
                net("10.1.0.0/16"),
                net("10.1.2.0/24"),
                net("0.0.0.0/0"),
                net("10.2.5.0/24"),
                net("192.168.0.0/24"),
                net("100.64.0.0/16"),
                net("10.1.2.3/24"),
            ],
            &|p| p,
        );
        assert_eq!(ok, vec![net("10.1.0.0/16"), net("10.1.2.0/24")]);
        let reasons: Vec<&str> = refused.iter().map(|r| r.reason.as_str()).collect();
        assert!(reasons[0].contains("default route"));
        assert!(reasons[1].contains("site b's prefix 10.2.0.0/16"));
        assert!(reasons[2].contains("outside site a's allowed prefixes [10.1.0.0/16]"));
        assert!(reasons[3].contains("overlay"));
        assert_eq!(refused.len(), 4);
        let kinds: Vec<Conflict> = reasons.iter().map(|r| Conflict::of(r)).collect();
        assert_eq!(
            kinds,
            [
                Conflict::DefaultRoute,
                Conflict::OtherSite,
                Conflict::OutsideSite,
                Conflict::Overlay
            ]
        );
        // A prefix claimed by another site's node (not in its declared ranges).
        let c_open = site("c", &[]);
        let d = site("d", &["172.16.0.0/16"]);
        let (ok, refused) = check(
            &d,
            &[c_open, d.clone()],
            &claimed,
            &[],
            overlay,
            &[net("172.16.5.128/25")],
            &|p| p,
        );
        assert!(ok.is_empty());
        assert!(refused[0].reason.contains("carried by c/gw"), "{refused:?}");
        assert_eq!(Conflict::of(&refused[0].reason), Conflict::OtherNode);
        // Exactly a prefix an external peer of the site carries (found by the fuzz harness's
        // checks): both would route it. A prefix containing it is fine (the longer prefix
        // wins).
        let external = [External {
            prefix: net("10.1.9.7/24"),
            site: "a",
            node: "dc1",
        }];
        let (ok, refused) = check(
            &a,
            std::slice::from_ref(&a),
            &[],
            &external,
            overlay,
            &[net("10.1.9.0/24"), net("10.1.0.0/16")],
            &|p| p,
        );
        assert_eq!(ok, vec![net("10.1.0.0/16")]);
        assert!(
            refused[0].reason.contains("external peer dc1 of site a"),
            "{refused:?}"
        );
        assert_eq!(Conflict::of(&refused[0].reason), Conflict::ExternalPeer);
        assert_eq!(Conflict::of("refused by an older version").label(), "other");
    }

    #[test]
    fn hijacks_of_another_sites_prefix_are_refused_as_such() {
        let a = site("a", &["10.1.0.0/16"]);
        let c = site("c", &["10.3.0.0/16", "fd03::/48"]);
        let sites = vec![a.clone(), c.clone()];
        let (ok, refused) = check(
            &c,
            &sites,
            &[],
            &[],
            net("100.64.0.0/10"),
            &[
                net("10.3.0.0/16"),
                net("0.0.0.0/0"),
                net("::/0"),
                net("10.1.0.0/16"),
                net("10.1.5.0/24"),
                net("10.0.0.0/8"),
            ],
            &|p| p,
        );
        assert_eq!(ok, vec![net("10.3.0.0/16")]);
        let got: Vec<(&str, &str)> = refused
            .iter()
            .map(|r| (r.prefix.as_str(), Conflict::of(&r.reason).label()))
            .collect();
        assert_eq!(
            got,
            [
                ("0.0.0.0/0", "default-route"),
                ("::/0", "default-route"),
                ("10.1.0.0/16", "other-site"),
                ("10.1.5.0/24", "other-site"),
                ("10.0.0.0/8", "other-site"),
            ]
        );
        for r in &refused[2..] {
            assert!(r.reason.contains("site a's prefix 10.1.0.0/16"), "{r:?}");
        }
    }

    #[test]
    fn containment_is_family_aware() {
        assert!(contains(net("10.0.0.0/8"), net("10.1.0.0/16")));
        assert!(!contains(net("10.1.0.0/16"), net("10.0.0.0/8")));
        assert!(!contains(net("10.0.0.0/8"), net("fd00::/8")));
    }
}
