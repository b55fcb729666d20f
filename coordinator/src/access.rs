//! The inter-site access policy (`[policy]` in `coordinator.toml`): which sites or prefixes
//! may open traffic to which, by protocol and port. Pure.
//!
//! [`Policy::build`] (with the config, in [`crate::config::access`]) validates the config's
//! `[policy]` against its sites (errors name the key and the fix); [`Policy::for_site`]
//! compiles the part one site enforces, which the core ships in the maps of that site's
//! tunnel nodes. Rules are tried in order and the
//! first that matches decides; a packet no rule matches gets `default`. Not to be confused
//! with [`crate::policy`], which decides which prefixes a node may advertise.

use ipnetwork::IpNetwork;
use strait_proto::access::{AccessPolicy, AccessRule, RuleView, Source};

pub use crate::config::access::{
    Names, Policy, PolicyConfig, Rule, RuleConfig, Target, MAX_ENTRIES, MAX_RULES,
};
use crate::config::SiteConfig;
use crate::prefix::{contains, overlaps};

// `Policy` is defined with the config it validates; compiling it for a site is here.
impl Policy {
    /// The part that `site`'s tunnel nodes enforce: the default, and the rules with a
    /// destination in the site (its prefixes, the prefixes inside them, or the overlay),
    /// their destinations narrowed to those.
    pub fn for_site(&self, site: &SiteConfig, overlay: IpNetwork) -> AccessPolicy {
        let rules = self
            .rules
            .iter()
            .filter_map(|r| {
                let mut to_node = false;
                let mut to = Vec::new();
                for t in &r.to {
                    match t {
                        Target::Site(s) if *s == site.name => {
                            to_node = true;
                            to.extend(site.prefixes.iter().copied());
                        }
                        Target::Site(_) => {}
                        Target::Prefix(p)
                            if contains(overlay, *p)
                                || site.prefixes.iter().any(|own| overlaps(*own, *p)) =>
                        {
                            to.push(*p);
                        }
                        Target::Prefix(_) => {}
                    }
                }
                to.sort();
                to.dedup();
                (to_node || !to.is_empty()).then(|| AccessRule {
                    name: r.name.clone(),
                    action: r.action,
                    from: r
                        .from
                        .iter()
                        .map(|f| match f {
                            Target::Site(s) => Source::Site(s.clone()),
                            Target::Prefix(p) => Source::Prefix(*p),
                        })
                        .collect(),
                    to,
                    to_node,
                    services: r.services.clone(),
                })
            })
            .collect();
        AccessPolicy {
            default: self.default,
            rules,
        }
    }

    /// The rules as the operator wrote them.
    pub fn views(&self) -> Vec<RuleView> {
        self.rules
            .iter()
            .map(|r| RuleView {
                name: r.name.clone(),
                action: r.action,
                from: r.written.0.clone(),
                to: r.written.1.clone(),
                services: r.services.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use anyhow::Result;
    use strait_proto::access::{Action, Service};

    const SITES: &str = r#"
mesh = "prod"
state-dir = "/tmp/x"
[[sites]]
name = "a"
prefixes = ["10.10.0.0/16", "fd00:a::/48"]
[[sites]]
name = "b"
prefixes = ["10.20.0.0/16"]
[[sites]]
name = "c"
prefixes = ["10.30.0.0/16"]
"#;

    fn config(policy: &str) -> Result<Config> {
        let c: Config = toml::from_str(&format!("{SITES}\n{policy}"))?;
        c.validate()?;
        Ok(c)
    }

    fn site(c: &Config, name: &str) -> SiteConfig {
        c.site(name).unwrap().clone()
    }

    #[test]
    fn no_policy_allows_all_everywhere() {
        let c = config("").unwrap();
        let p = Policy::build(&c).unwrap();
        assert_eq!(p, Policy::default());
        for s in ["a", "b", "c"] {
            assert!(p.for_site(&site(&c, s), c.overlay_cidr).allows_all());
        }
    }

    #[test]
    fn each_site_gets_the_rules_with_destinations_in_it() {
        let c = config(
            r#"
[policy]
default = "deny"
[[policy.rules]]
from = "a"
to = "b"
ports = ["tcp/443", "icmp"]
[[policy.rules]]
name = "dns"
from = ["b", "10.30.1.0/24"]
to = ["10.10.5.0/24", "fd00:a:0:1::/64"]
ports = "udp/53"
[[policy.rules]]
name = "no-ssh"
action = "deny"
from = "c"
to = ["b", "a"]
ports = "tcp/22"
[[policy.rules]]
name = "probes"
from = "100.64.0.0/10"
to = "100.64.0.0/10"
ports = "tcp"
"#,
        )
        .unwrap();
        let p = Policy::build(&c).unwrap();
        let b = p.for_site(&site(&c, "b"), c.overlay_cidr);
        assert_eq!(b.default, Action::Deny);
        let names: Vec<&str> = b.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["rule-1", "no-ssh", "probes"]);
        assert_eq!(b.rules[0].to, vec!["10.20.0.0/16".parse().unwrap()]);
        assert!(b.rules[0].to_node);
        assert_eq!(b.rules[0].from, vec![Source::Site("a".into())]);
        assert_eq!(
            b.rules[0].services,
            vec![
                Service::Tcp {
                    first: 443,
                    last: 443
                },
                Service::Icmp
            ]
        );
        assert_eq!(b.rules[1].action, Action::Deny);
        // Overlay destinations concern every site; they name no site, so no `to_node`.
        assert!(!b.rules[2].to_node);
        assert_eq!(b.rules[2].to, vec!["100.64.0.0/10".parse().unwrap()]);

        let a = p.for_site(&site(&c, "a"), c.overlay_cidr);
        let names: Vec<&str> = a.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["dns", "no-ssh", "probes"]);
        // Narrowed to site a's part, IPv4 and IPv6.
        assert_eq!(
            a.rules[0].to,
            vec![
                "10.10.5.0/24".parse().unwrap(),
                "fd00:a:0:1::/64".parse().unwrap()
            ]
        );
        assert!(!a.rules[0].to_node);
        assert_eq!(
            a.rules[0].from,
            vec![
                Source::Site("b".into()),
                Source::Prefix("10.30.1.0/24".parse().unwrap())
            ]
        );
        assert_eq!(
            a.rules[1].to,
            vec![
                "10.10.0.0/16".parse().unwrap(),
                "fd00:a::/48".parse().unwrap()
            ]
        );
        let c_site = p.for_site(&site(&c, "c"), c.overlay_cidr);
        assert_eq!(c_site.rules.len(), 1, "only the overlay rule");
        assert_eq!(c_site.default, Action::Deny);
        // As written, for straitctl.
        let views = p.views();
        assert_eq!(views[1].from, vec!["b", "10.30.1.0/24"]);
        assert_eq!(views[0].name, "rule-1");
    }

    #[test]
    fn bad_policies_name_the_key_and_the_fix() {
        let rule = |body: &str| format!("[[policy.rules]]\n{body}");
        let cases = [
            (
                "[policy]\ndefault = \"maybe\"".to_string(),
                "unknown variant `maybe`",
            ),
            (
                rule("from = \"a\"\nto = \"b\"\nports = \"tcp/443\"\nbogus = 1"),
                "bogus",
            ),
            (
                rule("from = \"a\"\nto = \"nowhere\"\nports = \"tcp/443\""),
                "policy.rules[0].to`: \"nowhere\" is neither a declared site (a, b, c)",
            ),
            (
                rule("from = \"a\"\nto = \"b\"\nports = \"tcp/99999\""),
                "policy.rules[0].ports`: \"tcp/99999\" is not a service",
            ),
            (
                rule("from = \"a\"\nto = \"b\"\nports = []"),
                "policy.rules[0].ports`: list 1 to",
            ),
            (
                rule("from = []\nto = \"b\"\nports = \"any\""),
                "policy.rules[0].from`: list 1 to",
            ),
            (
                rule("from = \"a\"\nto = \"10.0.0.0/8\"\nports = \"any\""),
                "10.0.0.0/8 lies in no site's prefixes",
            ),
            (
                rule("from = \"a\"\nto = \"10.20.1.1/24\"\nports = \"any\""),
                "host bits set; write 10.20.1.0/24",
            ),
            (
                rule("from = \"0.0.0.0/0\"\nto = \"b\"\nports = \"any\""),
                "covers every address",
            ),
            (
                rule("from = [\"a\", \"b\"]\nto = \"10.20.1.0/24\"\nports = \"any\""),
                "traffic within site b never crosses a tunnel",
            ),
            (
                rule("name = \"default\"\nfrom = \"a\"\nto = \"b\"\nports = \"any\""),
                "reserved",
            ),
            (
                rule("name = \"Web Rule\"\nfrom = \"a\"\nto = \"b\"\nports = \"any\""),
                "policy.rules[0].name`",
            ),
            (
                format!(
                    "{}\n{}",
                    rule("name = \"rule-2\"\nfrom = \"a\"\nto = \"b\"\nports = \"any\""),
                    rule("from = \"a\"\nto = \"c\"\nports = \"any\"")
                ),
                "policy.rules[1].name`: rule name \"rule-2\" is also rule 1's",
            ),
            (
                rule("from = \"a\"\nto = \"b\"\nports = \"tcp/443\"\naction = \"drop\""),
                "unknown variant `drop`",
            ),
            (
                rule("from = 5\nto = \"b\"\nports = \"any\""),
                "a string or a list of strings",
            ),
        ];
        for (text, needle) in cases {
            let err = format!("{:#}", config(&text).unwrap_err());
            assert!(err.contains(needle), "expected {needle:?} in: {err}");
        }
    }
}
