//! The inter-site access policy (`[policy]` in `coordinator.toml`): which sites or prefixes
//! may open traffic to which, by protocol and port. Pure.
//!
//! [`Policy::build`] validates the config's `[policy]` against its sites (errors name the
//! key and the fix); [`Policy::for_site`] compiles the part one site enforces, which the
//! core ships in the maps of that site's tunnel nodes. Rules are tried in order and the
//! first that matches decides; a packet no rule matches gets `default`. Not to be confused
//! with [`crate::policy`], which decides which prefixes a node may advertise.

use std::fmt;

use anyhow::{bail, Result};
use ipnetwork::IpNetwork;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use strait_proto::access::{
    AccessPolicy, AccessRule, Action, RuleView, Service, Source, DEFAULT_REASON, MALFORMED_REASON,
};

use crate::config::{Config, SiteConfig};
use crate::policy::{contains, overlaps};

/// Most rules a policy may have (each is shipped to, and tried by, the gateways of the
/// sites it concerns).
pub const MAX_RULES: usize = 1000;
/// Most entries in one rule's `from`, `to` or `ports`.
pub const MAX_ENTRIES: usize = 256;

/// `[policy]` as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PolicyConfig {
    /// What happens to a packet no rule matches: `allow` (the default: every site reaches
    /// every site) or `deny`.
    #[serde(default)]
    pub default: Action,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// One `[[policy.rules]]` entry as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RuleConfig {
    /// Its name in counters and `straitctl policy` (default `rule-<n>`).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub action: Action,
    /// Site names or prefixes (one, or a list).
    pub from: Names,
    pub to: Names,
    /// `tcp/443`, `udp/8000-8100`, `tcp`, `udp`, `icmp`, `any` (one, or a list).
    pub ports: Names,
}

/// A string or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Names(pub Vec<String>);

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Names, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Names;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Names, E> {
                Ok(Names(vec![s.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Names, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(Names(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A rule's source or destination: a declared site, or a prefix inside one site's
/// prefixes or inside the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Site(String),
    Prefix(IpNetwork),
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    pub from: Vec<Target>,
    pub to: Vec<Target>,
    pub services: Vec<Service>,
    /// `from` and `to` as written, for `straitctl policy`.
    written: (Vec<String>, Vec<String>),
}

/// The validated policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub default: Action,
    pub rules: Vec<Rule>,
}

impl Policy {
    /// Validates `config.policy` against `config`'s sites and overlay.
    pub fn build(config: &Config) -> Result<Policy> {
        let p = &config.policy;
        if p.rules.len() > MAX_RULES {
            bail!(
                "key `policy.rules`: {} rules, at most {MAX_RULES}; merge rules (each takes lists in `from`, `to` and `ports`)",
                p.rules.len()
            );
        }
        let mut rules: Vec<Rule> = Vec::with_capacity(p.rules.len());
        for (i, r) in p.rules.iter().enumerate() {
            let key = |k: &str| format!("key `policy.rules[{i}].{k}`");
            let name = match &r.name {
                Some(n) => {
                    check_name(n).map_err(|why| anyhow::anyhow!("{}: {why}", key("name")))?;
                    n.clone()
                }
                None => format!("rule-{}", i + 1),
            };
            if let Some(other) = rules.iter().position(|o| o.name == name) {
                bail!(
                    "{}: rule name {name:?} is also rule {}'s (policy.rules[{other}]); give each rule its own name",
                    key("name"),
                    other + 1
                );
            }
            let from = targets(config, &r.from, &key("from"))?;
            let to = targets(config, &r.to, &key("to"))?;
            if r.ports.0.is_empty() || r.ports.0.len() > MAX_ENTRIES {
                bail!(
                    "{}: list 1 to {MAX_ENTRIES} services, e.g. [\"tcp/443\", \"icmp\"] (\"any\" for every protocol)",
                    key("ports")
                );
            }
            let mut services = Vec::with_capacity(r.ports.0.len());
            for s in &r.ports.0 {
                services.push(
                    s.parse::<Service>()
                        .map_err(|e| anyhow::anyhow!("{}: {e}", key("ports")))?,
                );
            }
            for f in &from {
                for t in &to {
                    if let (Some(a), Some(b)) = (site_of(config, f), site_of(config, t)) {
                        if a == b {
                            bail!(
                                "{}: traffic within site {a} never crosses a tunnel, so no gateway could enforce this rule; remove {a} (or its prefix) from `from` or `to`",
                                key("to")
                            );
                        }
                    }
                }
            }
            rules.push(Rule {
                name,
                action: r.action,
                from,
                to,
                services,
                written: (r.from.0.clone(), r.to.0.clone()),
            });
        }
        Ok(Policy {
            default: p.default,
            rules,
        })
    }

    /// The policy for invalid configs that slipped past validation: nothing gets through
    /// (a mesh without a valid policy must not quietly become open).
    pub fn deny_all() -> Policy {
        Policy {
            default: Action::Deny,
            rules: Vec::new(),
        }
    }

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

/// Rule names are counter labels: short, plain, and not a built-in drop reason.
fn check_name(name: &str) -> Result<(), String> {
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if name.is_empty() || name.len() > 63 || !plain {
        return Err(format!(
            "{name:?}: use 1 to 63 of a-z, 0-9, '-' and '_' (it labels the drop counters)"
        ));
    }
    if name == DEFAULT_REASON || name == MALFORMED_REASON {
        return Err(format!(
            "{name:?} is reserved for packets no rule decides; choose another name"
        ));
    }
    Ok(())
}

/// The site a target lies in (`None` for overlay prefixes, which belong to no site).
fn site_of<'c>(config: &'c Config, t: &'c Target) -> Option<&'c str> {
    match t {
        Target::Site(s) => Some(s),
        Target::Prefix(p) => config
            .sites
            .iter()
            .find(|s| s.prefixes.iter().any(|own| contains(*own, *p)))
            .map(|s| s.name.as_str()),
    }
}

fn targets(config: &Config, names: &Names, key: &str) -> Result<Vec<Target>> {
    if names.0.is_empty() || names.0.len() > MAX_ENTRIES {
        bail!("{key}: list 1 to {MAX_ENTRIES} site names or prefixes");
    }
    let declared = || {
        config
            .sites
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out: Vec<Target> = Vec::with_capacity(names.0.len());
    for n in &names.0 {
        let t = if config.site(n).is_some() {
            Target::Site(n.clone())
        } else if let Ok(p) = n.parse::<IpNetwork>() {
            if p.prefix() == 0 {
                bail!("{key}: {p} covers every address; name the sites instead");
            }
            if p.network() != p.ip() {
                bail!(
                    "{key}: {p} has host bits set; write {}/{}",
                    p.network(),
                    p.prefix()
                );
            }
            let in_site = config
                .sites
                .iter()
                .any(|s| s.prefixes.iter().any(|own| contains(*own, p)));
            if !in_site && !contains(config.overlay_cidr, p) {
                bail!(
                    "{key}: {p} lies in no site's prefixes (nor in overlay-cidr {}); name a site, or a prefix inside one site",
                    config.overlay_cidr
                );
            }
            Target::Prefix(p)
        } else {
            bail!(
                "{key}: {n:?} is neither a declared site ({}) nor a prefix like 10.20.1.0/24",
                declared()
            );
        };
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
