//! MSS clamping on gateways: TCP SYNs forwarded into the TUN device get their MSS option
//! lowered to what the route they take carries (`tcp option maxseg size set rt mtu`). The
//! routes of each peer carry its path's MTU (see `routes`), so a connection between two
//! sites' hosts starts with segments that fit the path, even where the hosts drop the ICMP
//! that path MTU discovery needs. Both directions are covered: each gateway clamps the SYN
//! or SYN-ACK it sends into its tunnel.
//!
//! The rule lives in an nftables table of Strait's own, [`TABLE`], replaced whole at start
//! (so a crashed run's is gone) and deleted at a clean stop, like the routes; nothing else
//! in the ruleset is touched. Applied with the `nft` tool.

use anyhow::{Context, Result};

use super::nft;

/// Strait's nftables table (family `inet`: IPv4 and IPv6).
pub const TABLE: &str = "strait_mss";

/// The nft script that (re)creates [`TABLE`] with the clamping rule for TUN device `tun`.
/// Declaring the table before deleting it makes the deletion succeed when it is absent.
pub fn script(tun: &str) -> String {
    format!(
        "table inet {TABLE} {{}}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority mangle; policy accept;\n\
         \t\toifname \"{tun}\" tcp flags syn / syn,rst tcp option maxseg size set rt mtu\n\
         \t}}\n\
         }}\n"
    )
}

/// The nft script that removes [`TABLE`], present or not.
pub fn removal() -> String {
    format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n")
}

/// Installs (or replaces) the clamping rule for `tun`.
pub async fn install(tun: &str) -> Result<()> {
    nft::apply(&script(tun)).await.with_context(|| {
        format!("installing MSS clamping (nftables table inet {TABLE}; or set mss-clamp = false)")
    })
}

/// Removes the clamping rule; absent is fine.
pub async fn remove() -> Result<()> {
    nft::apply(&removal())
        .await
        .with_context(|| format!("removing nftables table inet {TABLE}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_clamps_syns_into_the_tun_device_to_the_route_mtu() {
        let s = script("strait0");
        assert!(s.starts_with("table inet strait_mss {}\ndelete table inet strait_mss\n"));
        assert!(s.contains(
            "oifname \"strait0\" tcp flags syn / syn,rst tcp option maxseg size set rt mtu"
        ));
        assert!(s.contains("hook forward priority mangle"));
        assert_eq!(
            removal(),
            "table inet strait_mss {}\ndelete table inet strait_mss\n"
        );
    }
}
