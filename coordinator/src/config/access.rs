//! `[policy]`, the inter-site access policy, as written and validated against the sites
//! ([`Policy::build`], run by [`super::Config::validate`]): errors name the key and the fix.
//! [`crate::access`] compiles a validated policy into the part each site enforces.

use std::fmt;

use anyhow::{bail, Result};
use ipnetwork::IpNetwork;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use strait_proto::access::{Action, Service, DEFAULT_REASON, MALFORMED_REASON};

use super::Config;
use crate::globals::Globals;
use crate::prefix::contains;

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
    pub(crate) written: (Vec<String>, Vec<String>),
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
        let globals = crate::globals::Globals::of(config);
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
            let from = targets(config, &globals, &r.from, &key("from"))?;
            let to = targets(config, &globals, &r.to, &key("to"))?;
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
                    if let (Some(a), Some(b)) =
                        (site_of(config, &globals, f), site_of(config, &globals, t))
                    {
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
/// Prefixes of targets are mesh addresses.
fn site_of<'c>(config: &'c Config, globals: &Globals, t: &'c Target) -> Option<&'c str> {
    match t {
        Target::Site(s) => Some(s),
        Target::Prefix(p) => config
            .sites
            .iter()
            .find(|s| {
                globals
                    .mesh_prefixes(s)
                    .iter()
                    .any(|own| contains(*own, *p))
            })
            .map(|s| s.name.as_str()),
    }
}

/// A prefix as written, as the mesh addresses it: a global prefix (or part of one) stays;
/// a prefix inside a translated site's local prefixes becomes the same part of its global
/// prefix, unless several sites have those local addresses (their address space
/// overlaps), when the error names each one's global form to write instead.
fn mesh_prefix(
    config: &Config,
    globals: &Globals,
    p: IpNetwork,
    key: &str,
) -> Result<Option<IpNetwork>> {
    let in_global = config
        .sites
        .iter()
        .any(|s| globals.pairs(&s.name).iter().any(|t| contains(t.global, p)));
    if in_global {
        return Ok(Some(p));
    }
    let owners: Vec<&str> = config
        .sites
        .iter()
        .filter(|s| s.prefixes.iter().any(|own| contains(*own, p)))
        .map(|s| s.name.as_str())
        .collect();
    match owners.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(globals.to_mesh(one, p))),
        many => {
            let forms: Vec<String> = many
                .iter()
                .map(|s| format!("{s}: {}", globals.to_mesh(s, p)))
                .collect();
            bail!(
                "{key}: {p} lies in sites {}, whose address space overlaps; write the global prefix of the one you mean ({})",
                many.join(" and "),
                forms.join(", ")
            )
        }
    }
}

fn targets(config: &Config, globals: &Globals, names: &Names, key: &str) -> Result<Vec<Target>> {
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
            match mesh_prefix(config, globals, p, key)? {
                Some(m) => Target::Prefix(m),
                None if contains(config.overlay_cidr, p) => Target::Prefix(p),
                None => bail!(
                    "{key}: {p} lies in no site's prefixes or global prefixes (nor in overlay-cidr {}); name a site, or a prefix inside one site",
                    config.overlay_cidr
                ),
            }
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
