//! Global addresses for sites whose address space overlaps another's. Pure.
//!
//! A site with global prefixes (`global-prefixes`, or allocated from the mesh's
//! `global-cidr`) is known to the rest of the mesh only by them: its tunnel peers' allowed
//! IPs, the routes and fail-closed prefixes of other sites, and the access policy all use
//! the global prefixes, and the site's tunnel nodes translate 1:1 between local and global
//! (destination on the way in, source on the way out). Every other site is known by its
//! real prefixes. So every address that travels in a tunnel (a *mesh address*) names one
//! host in the mesh, whoever looks at it: two overlapping sites both seen by a third would
//! otherwise be ambiguous to it.
//!
//! [`assign`] validates the configuration's global addresses and allocates the missing
//! ones; it is a pure function of the config, so every coordinator sharing a config
//! computes the same allocation. Allocation is first fit, in the order sites are listed:
//! adding a site at the end never moves another site's global prefixes.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{bail, Result};
use ipnetwork::IpNetwork;
pub use strait_proto::map::Translation;

use crate::config::{Config, SiteConfig};
use crate::prefix::{contains, overlaps};

/// The global prefixes of every translated site, paired with its local ones in the order
/// of the site's `prefixes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Globals {
    sites: BTreeMap<String, Vec<Translation>>,
}

/// Which site an address belongs to, and how the mesh and the site name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub site: String,
    /// The address inside the site (what its hosts use).
    pub local: IpAddr,
    /// The address the rest of the mesh uses (equal to `local` for untranslated sites).
    pub global: IpAddr,
}

impl Globals {
    /// The globals of a validated config (empty if it is not valid: validation refuses it
    /// before any map is made).
    pub fn of(config: &Config) -> Globals {
        assign(config).unwrap_or_default()
    }

    /// The site's local-global pairs (empty for a site that uses its real addresses).
    pub fn pairs(&self, site: &str) -> &[Translation] {
        self.sites.get(site).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn is_translated(&self, site: &str) -> bool {
        !self.pairs(site).is_empty()
    }

    /// `prefix` as the mesh names it: inside a local prefix of a translated `site`, the
    /// same part of its global prefix; otherwise unchanged.
    pub fn to_mesh(&self, site: &str, prefix: IpNetwork) -> IpNetwork {
        self.pairs(site)
            .iter()
            .find(|t| contains(t.local, prefix))
            .and_then(|t| map_prefix(t.local, t.global, prefix))
            .unwrap_or(prefix)
    }

    /// The prefixes the rest of the mesh reaches `site` by: its global prefixes if it has
    /// them, else its own.
    pub fn mesh_prefixes(&self, site: &SiteConfig) -> Vec<IpNetwork> {
        match self.sites.get(&site.name) {
            Some(pairs) => pairs.iter().map(|t| t.global).collect(),
            None => site.prefixes.clone(),
        }
    }

    /// The sites `addr` belongs to: by a global address (one site at most), or by a real
    /// address (several, when their address space overlaps).
    pub fn resolve(&self, sites: &[SiteConfig], addr: IpAddr) -> Vec<Resolved> {
        let mut out = Vec::new();
        for s in sites {
            for t in self.pairs(&s.name) {
                if t.global.contains(addr) {
                    if let Some(local) = map_addr(t.global, t.local, addr) {
                        out.push(Resolved {
                            site: s.name.clone(),
                            local,
                            global: addr,
                        });
                    }
                }
            }
        }
        for s in sites {
            for p in s.prefixes.iter().filter(|p| p.contains(addr)) {
                let global = self
                    .pairs(&s.name)
                    .iter()
                    .find(|t| t.local == *p)
                    .and_then(|t| map_addr(t.local, t.global, addr))
                    .unwrap_or(addr);
                out.push(Resolved {
                    site: s.name.clone(),
                    local: addr,
                    global,
                });
            }
        }
        out.dedup();
        out
    }
}

/// Validates the sites' address space and global addresses, and allocates global
/// prefixes from `global-cidr` for every site that overlaps another and declares none.
/// Errors name the key and what to add or change.
pub fn assign(config: &Config) -> Result<Globals> {
    // Every real prefix in use: sites' prefixes (external peers' lie inside them) and the
    // overlay. No global prefix may overlap one.
    let mut real: Vec<(IpNetwork, String)> = vec![(config.overlay_cidr, "the overlay CIDR".into())];
    for s in &config.sites {
        real.extend(
            s.prefixes
                .iter()
                .map(|p| (*p, format!("site {}'s prefix", s.name))),
        );
    }
    if let Some(cidr) = config.global_cidr {
        if cidr.prefix() == 0 || cidr.network() != cidr.ip() {
            bail!(
                "key `global-cidr`: {cidr} is not a network; write e.g. {}/{} (not the default route)",
                cidr.network(),
                cidr.prefix().max(1)
            );
        }
        if let Some((p, what)) = real.iter().find(|(p, _)| overlaps(*p, cidr)) {
            bail!("key `global-cidr`: {cidr} overlaps {what} {p}; global addresses must be unused in the mesh, choose a free range");
        }
    }
    let mut globals = Globals::default();
    let mut taken: Vec<(IpNetwork, String)> = Vec::new();
    for (i, s) in config.sites.iter().enumerate() {
        if s.global_prefixes.is_empty() {
            continue;
        }
        let key = format!("key `sites[{i}].global-prefixes`");
        if s.global_prefixes.len() != s.prefixes.len() {
            bail!(
                "{key}: {} global prefixes for {} in `prefixes`; list one per local prefix, in the same order and of the same size",
                s.global_prefixes.len(),
                s.prefixes.len()
            );
        }
        if let Some(e) = config.external_peers.iter().find(|e| e.site == s.name) {
            bail!("{key}: site {} has external peer {}, which cannot translate addresses (a plain WireGuard device); move it to a site without global prefixes", s.name, e.name);
        }
        let mut pairs = Vec::new();
        for (local, global) in s.prefixes.iter().zip(&s.global_prefixes) {
            if global.network() != global.ip() {
                bail!(
                    "{key}: {global} has host bits set; write {}/{}",
                    global.network(),
                    global.prefix()
                );
            }
            if local.is_ipv4() != global.is_ipv4() || local.prefix() != global.prefix() {
                bail!("{key}: {global} is paired with local prefix {local}; a global prefix must be the same family and size (/{}) as its local one", local.prefix());
            }
            if let Some((p, what)) = real.iter().find(|(p, _)| overlaps(*p, *global)) {
                bail!("{key}: {global} overlaps {what} {p}; global addresses must be unused in the mesh");
            }
            if let Some((p, what)) = taken.iter().find(|(p, _)| overlaps(*p, *global)) {
                bail!(
                    "{key}: {global} overlaps {what} {p}; each global prefix belongs to one site"
                );
            }
            taken.push((*global, format!("site {}'s global prefix", s.name)));
            pairs.push(Translation {
                local: *local,
                global: *global,
            });
        }
        globals.sites.insert(s.name.clone(), pairs);
    }
    // Sites whose real prefixes overlap: fine when one of them is translated; with a
    // `global-cidr`, every such site without global prefixes gets some.
    let mut wanted: Vec<usize> = Vec::new();
    for (i, a) in config.sites.iter().enumerate() {
        for (j, b) in config.sites.iter().enumerate().skip(i + 1) {
            let Some((pa, pb)) = a
                .prefixes
                .iter()
                .flat_map(|pa| b.prefixes.iter().map(move |pb| (pa, pb)))
                .find(|(pa, pb)| overlaps(**pa, **pb))
            else {
                continue;
            };
            if config.global_cidr.is_some() {
                for k in [i, j] {
                    if config.sites[k].global_prefixes.is_empty() && !wanted.contains(&k) {
                        wanted.push(k);
                    }
                }
            } else if !globals.is_translated(&a.name) && !globals.is_translated(&b.name) {
                bail!(
                    "key `sites`: site {}'s prefix {pa} overlaps site {}'s prefix {pb}; sites may share address space only if one of them has global addresses: add `global-prefixes` (one per prefix, same sizes, unused anywhere in the mesh) to site {} or {}, or set `global-cidr` (a free range) so the coordinator allocates them",
                    a.name, b.name, a.name, b.name
                );
            }
        }
    }
    wanted.sort_unstable();
    let Some(cidr) = config.global_cidr else {
        return Ok(globals);
    };
    for i in wanted {
        let s = &config.sites[i];
        if let Some(e) = config.external_peers.iter().find(|e| e.site == s.name) {
            bail!("key `sites[{i}]`: site {} overlaps another site and would get global prefixes from `global-cidr`, but its external peer {} cannot translate addresses; move the peer to a site of its own or renumber one of the sites", s.name, e.name);
        }
        let mut pairs = Vec::new();
        for local in &s.prefixes {
            let in_use: Vec<IpNetwork> = real.iter().chain(&taken).map(|(p, _)| *p).collect();
            let Some(global) = allocate(cidr, *local, &in_use) else {
                bail!("key `global-cidr`: {cidr} has no free /{} left for site {}'s prefix {local}; use a larger range (or one of the same family)", local.prefix(), s.name);
            };
            taken.push((global, format!("site {}'s global prefix", s.name)));
            pairs.push(Translation {
                local: *local,
                global,
            });
        }
        globals.sites.insert(s.name.clone(), pairs);
    }
    Ok(globals)
}

/// The first block of `local`'s size inside `cidr`, aligned, overlapping nothing in
/// `taken`.
pub fn allocate(cidr: IpNetwork, local: IpNetwork, taken: &[IpNetwork]) -> Option<IpNetwork> {
    if cidr.is_ipv4() != local.is_ipv4() || local.prefix() < cidr.prefix() {
        return None;
    }
    let bits = if cidr.is_ipv4() { 32 } else { 128 };
    let size = 1u128.checked_shl(u32::from(bits - local.prefix()))?;
    let (start, end) = bounds(cidr);
    let mut candidate = start;
    loop {
        let last = candidate.checked_add(size - 1)?;
        if last > end {
            return None;
        }
        let clash = taken
            .iter()
            .filter(|t| t.is_ipv4() == cidr.is_ipv4())
            .map(|t| bounds(*t))
            .filter(|(s, e)| *s <= last && *e >= candidate)
            .map(|(_, e)| e)
            .max();
        match clash {
            None => {
                return IpNetwork::new(from_u128(candidate, cidr.is_ipv4()), local.prefix()).ok()
            }
            Some(e) => {
                // Past the clash, aligned to the block size.
                let next = e.checked_add(1)?.checked_add(size - 1)? / size * size;
                candidate = next.max(candidate.checked_add(size)?);
            }
        }
    }
}

/// `p` (inside `from`) moved to the same offset inside `to`.
pub fn map_prefix(from: IpNetwork, to: IpNetwork, p: IpNetwork) -> Option<IpNetwork> {
    let ip = map_addr(from, to, p.network())?;
    IpNetwork::new(ip, p.prefix()).ok()
}

/// `addr` (inside `from`) moved to the same offset inside `to` (same family and size).
pub fn map_addr(from: IpNetwork, to: IpNetwork, addr: IpAddr) -> Option<IpAddr> {
    if from.is_ipv4() != to.is_ipv4() || addr.is_ipv4() != from.is_ipv4() || !from.contains(addr) {
        return None;
    }
    let offset = to_u128(addr) - to_u128(from.network());
    Some(from_u128(
        to_u128(to.network()).checked_add(offset)?,
        to.is_ipv4(),
    ))
}

fn bounds(p: IpNetwork) -> (u128, u128) {
    let bits = if p.is_ipv4() { 32 } else { 128 };
    let start = to_u128(p.network());
    let host = u32::from(bits - p.prefix());
    let span = if host >= 128 {
        u128::MAX
    } else {
        (1u128 << host) - 1
    };
    (start, start.saturating_add(span))
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        // Callers stay inside an IPv4 prefix, so the value fits.
        IpAddr::V4(std::net::Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(std::net::Ipv6Addr::from(v))
    }
}

#[cfg(test)]
mod tests;
