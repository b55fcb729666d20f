//! 1:1 address translation for sites with global prefixes (their address space overlaps
//! another site's): a pure plan, [`script`], and a thin shell, [`Translator`], that hands
//! it to `nft`.
//!
//! The rest of the mesh reaches such a site only by its global addresses, so every node of
//! the site that terminates tunnels rewrites, statelessly and for every packet:
//! - into the site (packets the TUN device delivers, hook `prerouting` at priority `raw`,
//!   before routing and conntrack): destination global -> local;
//! - out of the site (packets routed into the TUN device, hook `postrouting`): source local
//!   -> global.
//!
//! Only the network part of an address changes (`addr & hostmask | network`), ports never,
//! and the kernel fixes the IP and TCP/UDP checksums. No state is kept, so replies, flows
//! opened from either side, and gateways that share a site's traffic (HA) all translate the
//! same way: the rules are a pure function of the map (`SelfView::translations`) and the
//! TUN device's name. They live in one nftables table that Strait owns, `inet
//! strait_translate`, replaced whole in one transaction on every change (a restart neither
//! duplicates nor loses a rule) and deleted at a clean stop and by `uninstall`.
//!
//! The access policy judges packets as they travel in the tunnel (the engine runs before
//! `prerouting` and after `postrouting`), i.e. by global addresses; a packet for the site's
//! global addresses that is not translated (nft missing, the table deleted by hand) meets
//! the `unreachable` route the map's `fail-closed` list has for them, never the main table.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use ipnetwork::IpNetwork;
use strait_proto::map::Translation;

use super::nft;

/// The nftables table (family `inet`) holding the translation rules.
pub const TABLE: &str = "strait_translate";

/// The nft script that makes the table exactly `translations` for TUN device `tun`: the
/// table is created if missing, deleted, and (when there is something to translate)
/// created again with its rules, all in one transaction.
pub fn script(tun: &str, translations: &[Translation]) -> String {
    let mut out = format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n");
    if translations.is_empty() {
        return out;
    }
    let dev = quote(tun);
    let mut inbound = String::new();
    let mut outbound = String::new();
    for t in translations {
        let Some(family) = family(t) else { continue };
        inbound.push_str(&format!(
            "    iifname {dev} {family} daddr {} {family} daddr set {}\n",
            t.global,
            rewrite(family, "daddr", t.local)
        ));
        outbound.push_str(&format!(
            "    oifname {dev} {family} saddr {} {family} saddr set {}\n",
            t.local,
            rewrite(family, "saddr", t.global)
        ));
    }
    out.push_str(&format!(
        "table inet {TABLE} {{\n  chain inbound {{\n    type filter hook prerouting priority raw; policy accept;\n{inbound}  }}\n  chain outbound {{\n    type filter hook postrouting priority srcnat; policy accept;\n{outbound}  }}\n}}\n"
    ));
    out
}

/// The script that removes the table (and nothing else).
pub fn removal() -> String {
    script("", &[])
}

/// `ip` or `ip6` for a well-formed pair (same family and length), else `None`.
fn family(t: &Translation) -> Option<&'static str> {
    match (t.local, t.global) {
        (IpNetwork::V4(l), IpNetwork::V4(g)) if l.prefix() == g.prefix() => Some("ip"),
        (IpNetwork::V6(l), IpNetwork::V6(g)) if l.prefix() == g.prefix() => Some("ip6"),
        _ => None,
    }
}

/// The value an address field is set to so that it lands in `to`, keeping its host part.
fn rewrite(family: &str, field: &str, to: IpNetwork) -> String {
    let host_bits = match to {
        IpNetwork::V4(n) => 32 - u32::from(n.prefix()),
        IpNetwork::V6(n) => 128 - u32::from(n.prefix()),
    };
    if host_bits == 0 {
        return to.network().to_string();
    }
    let mask = match to {
        IpNetwork::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::MAX >> (32 - host_bits))),
        IpNetwork::V6(_) => IpAddr::V6(Ipv6Addr::from(u128::MAX >> (128 - host_bits))),
    };
    format!("{family} {field} & {mask} | {}", to.network())
}

/// An interface name as an nft string (names are at most 15 bytes, without quotes).
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace(['"', '\\'], ""))
}

/// The shell: applies [`script`] with `nft -f -` when the map's translations change.
#[derive(Debug)]
pub struct Translator {
    tun: String,
    /// What is in the kernel as far as this run knows (`None`: not looked at yet).
    applied: Option<Vec<Translation>>,
}

impl Translator {
    pub fn new(tun: &str) -> Translator {
        Translator {
            tun: tun.to_string(),
            applied: None,
        }
    }

    /// Makes the table match `want`. A node that never had translations and has none
    /// needs no `nft`: a table an earlier run left is removed if `nft` is there.
    pub async fn apply(&mut self, want: &[Translation]) -> Result<()> {
        if self.applied.as_deref() == Some(want) {
            return Ok(());
        }
        if want.is_empty() && self.applied.is_none() {
            if let Err(e) = nft::apply(&removal()).await {
                tracing::debug!(error = %format!("{e:#}"), "no translation table to remove");
            }
        } else {
            nft::apply(&script(&self.tun, want)).await.with_context(|| {
                format!(
                    "installing the address translation of this site's global prefixes (nftables table inet {TABLE}; needs the nft command and CAP_NET_ADMIN)"
                )
            })?;
            if !want.is_empty() {
                tracing::info!(
                    pairs = want.len(),
                    table = TABLE,
                    "address translation for the site's global prefixes in place"
                );
            }
        }
        self.applied = Some(want.to_vec());
        Ok(())
    }

    /// Deletes the table (at a clean stop), if this run installed one.
    pub async fn remove(&mut self) -> Result<()> {
        if self.applied.as_ref().is_some_and(|a| !a.is_empty()) {
            nft::apply(&removal()).await?;
        }
        self.applied = Some(Vec::new());
        Ok(())
    }
}

/// Removes the table whatever put it there (`strait-agent uninstall`); `Ok(false)` when
/// `nft` is not installed (then nothing could have made it).
pub async fn uninstall() -> Result<bool> {
    match nft::apply(&removal()).await {
        Ok(()) => Ok(true),
        Err(e) if e.downcast_ref::<std::io::Error>().is_some() => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(local: &str, global: &str) -> Translation {
        Translation {
            local: local.parse().unwrap(),
            global: global.parse().unwrap(),
        }
    }

    #[test]
    fn the_plan_rewrites_only_the_network_part_both_ways() {
        let s = script(
            "strait0",
            &[
                t("10.10.0.0/16", "10.200.0.0/16"),
                t("fd00:a::/48", "fd99:1::/48"),
                t("10.10.5.7/32", "10.201.0.1/32"),
            ],
        );
        assert!(s.starts_with(
            "table inet strait_translate {}\ndelete table inet strait_translate\ntable inet strait_translate {\n"
        ));
        for line in [
            "iifname \"strait0\" ip daddr 10.200.0.0/16 ip daddr set ip daddr & 0.0.255.255 | 10.10.0.0\n",
            "oifname \"strait0\" ip saddr 10.10.0.0/16 ip saddr set ip saddr & 0.0.255.255 | 10.200.0.0\n",
            "iifname \"strait0\" ip6 daddr fd99:1::/48 ip6 daddr set ip6 daddr & ::ffff:ffff:ffff:ffff:ffff | fd00:a::\n",
            "oifname \"strait0\" ip saddr 10.10.5.7/32 ip saddr set 10.201.0.1\n",
            "type filter hook prerouting priority raw; policy accept;",
            "type filter hook postrouting priority srcnat; policy accept;",
        ] {
            assert!(s.contains(line), "{line:?} not in:\n{s}");
        }
        // Exactly one rule per pair and direction.
        assert_eq!(s.matches(" daddr set ").count(), 3);
        assert_eq!(s.matches(" saddr set ").count(), 3);
    }

    #[test]
    fn no_translations_is_the_removal_and_malformed_pairs_are_skipped() {
        assert_eq!(script("strait0", &[]), removal());
        assert!(!removal().contains("chain"));
        let s = script("strait0", &[t("10.10.0.0/16", "10.200.0.0/24")]);
        assert!(!s.contains(" set "), "{s}");
    }

    #[test]
    fn the_device_name_cannot_break_out_of_its_string() {
        let s = script("a\"b\\c", &[t("10.10.0.0/16", "10.200.0.0/16")]);
        assert!(s.contains("iifname \"abc\" "), "{s}");
    }
}
