//! The BIRD 2 configuration a gateway runs (pure): one static protocol holding the
//! prefixes to announce, each routed to the TUN device, and one BGP session per neighbour
//! exporting exactly those routes with this gateway as next hop.
//!
//! The static routes point at the TUN device by name, so BIRD holds them only while the
//! device exists and is up: when the agent dies (the device goes with its process) BIRD
//! withdraws everything at once, whatever the last configuration said. While the agent
//! runs, it rewrites the file and reloads BIRD (`birdc configure`) whenever the set of
//! prefixes it can carry changes; BIRD then withdraws or announces just the difference,
//! without resetting the sessions.

use std::fmt::Write as _;

use super::announce::Announcement;
use super::settings::BgpSettings;

/// The protocol name of the announced routes (also what `birdc show route` lists them by).
pub const STATIC_PROTOCOL: &str = "strait_remote";

/// The protocol name of neighbour `i`.
pub fn neighbor_protocol(i: usize) -> String {
    format!("strait_n{i}")
}

/// BIRD's configuration for `settings`, announcing `routes` through `tun`.
pub fn render(settings: &BgpSettings, tun: &str, routes: &[Announcement]) -> String {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# Written by strait-agent from its [bgp] settings; rewritten on every change: do not edit."
    );
    let _ = writeln!(c, "router id {};", settings.router_id);
    let _ = writeln!(c, "protocol device {{ scan time 10; }}");
    let _ = writeln!(c, "protocol static {STATIC_PROTOCOL} {{");
    let _ = writeln!(c, "  ipv4;");
    for r in routes.iter().filter(|r| r.prefix.is_ipv4()) {
        let _ = writeln!(c, "  route {} via \"{tun}\"; # site {}", r.prefix, r.site);
    }
    let _ = writeln!(c, "}}");
    if routes.iter().any(|r| r.prefix.is_ipv6()) {
        let _ = writeln!(c, "protocol static {STATIC_PROTOCOL}6 {{");
        let _ = writeln!(c, "  ipv6;");
        for r in routes.iter().filter(|r| r.prefix.is_ipv6()) {
            let _ = writeln!(c, "  route {} via \"{tun}\"; # site {}", r.prefix, r.site);
        }
        let _ = writeln!(c, "}}");
    }
    let _ = writeln!(c, "filter strait_export {{");
    let _ = writeln!(
        c,
        "  if proto != \"{STATIC_PROTOCOL}\" && proto != \"{STATIC_PROTOCOL}6\" then reject;"
    );
    for _ in 0..settings.prepend {
        let _ = writeln!(c, "  bgp_path.prepend({});", settings.local_as);
    }
    if let Some(med) = settings.med {
        let _ = writeln!(c, "  bgp_med = {med};");
    }
    let _ = writeln!(c, "  accept;");
    let _ = writeln!(c, "}}");
    if settings.neighbors.iter().any(|n| n.bfd) {
        let ms = settings.bfd_interval.as_millis();
        let _ = writeln!(c, "protocol bfd {{");
        let _ = writeln!(
            c,
            "  interface \"*\" {{ min rx interval {ms} ms; min tx interval {ms} ms; multiplier {}; }};",
            settings.bfd_multiplier
        );
        let _ = writeln!(c, "}}");
    }
    let hold = settings.hold_time.as_secs();
    let keepalive = (hold / 3).max(1);
    for (i, n) in settings.neighbors.iter().enumerate() {
        let _ = writeln!(c, "protocol bgp {} {{", neighbor_protocol(i));
        let _ = writeln!(c, "  local as {};", settings.local_as);
        let _ = writeln!(c, "  neighbor {} as {};", n.address, n.remote_as);
        if let Some(src) = n.source_address {
            let _ = writeln!(c, "  source address {src};");
        }
        let _ = writeln!(c, "  hold time {hold};");
        let _ = writeln!(c, "  keepalive time {keepalive};");
        let _ = writeln!(c, "  connect retry time 1;");
        let _ = writeln!(c, "  error wait time 1, 10;");
        if let Some(p) = &n.password {
            // Validated: no quotes, backslashes or control characters.
            let _ = writeln!(c, "  password \"{p}\";");
        }
        if n.bfd {
            let _ = writeln!(c, "  bfd on;");
        }
        let family = if n.address.is_ipv4() { "ipv4" } else { "ipv6" };
        let _ = writeln!(
            c,
            "  {family} {{ import none; export filter strait_export; next hop self; }};"
        );
        let _ = writeln!(c, "}}");
    }
    c
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bgp::settings::Neighbor;

    fn settings(prepend: u8, med: Option<u32>) -> BgpSettings {
        BgpSettings {
            local_as: 65001,
            router_id: "10.10.0.11".parse().unwrap(),
            bird_config: "/run/strait/bird.conf".into(),
            birdc: "birdc".into(),
            bird_socket: "/run/strait/bird.ctl".into(),
            hold_time: Duration::from_secs(3),
            bfd_interval: Duration::from_millis(100),
            bfd_multiplier: 3,
            prepend,
            med,
            neighbors: vec![Neighbor {
                address: "10.10.0.1".parse().unwrap(),
                remote_as: 65000,
                password: Some("pw".into()),
                bfd: true,
                source_address: None,
            }],
        }
    }

    fn ann(p: &str, site: &str) -> Announcement {
        Announcement {
            prefix: p.parse().unwrap(),
            site: site.into(),
        }
    }

    #[test]
    fn routes_go_to_the_tun_device_and_only_they_are_exported() {
        let c = render(&settings(0, None), "strait0", &[ann("10.20.0.0/16", "b")]);
        assert!(c.contains("route 10.20.0.0/16 via \"strait0\"; # site b"));
        assert!(c.contains("neighbor 10.10.0.1 as 65000;"));
        assert!(c.contains("bfd on;"));
        assert!(c.contains("password \"pw\";"));
        assert!(c.contains("hold time 3;"));
        assert!(c.contains("export filter strait_export; next hop self;"));
        assert!(!c.contains("prepend"));
        assert!(!c.contains("bgp_med"));
    }

    #[test]
    fn a_standby_gateway_prepends_and_sets_med() {
        let c = render(&settings(2, Some(100)), "strait0", &[]);
        assert_eq!(c.matches("bgp_path.prepend(65001);").count(), 2);
        assert!(c.contains("bgp_med = 100;"));
    }
}
