//! What the kernel of a test namespace holds of Strait's: table 21332, the policy rules,
//! and a router's count of packets that left a gateway unencrypted.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::netns::Netns;

/// A prefix as `ip route` prints it, with the length made explicit.
pub fn prefix_of(word: &str, v6: bool) -> String {
    match word {
        "default" if v6 => "::/0".to_string(),
        "default" => "0.0.0.0/0".to_string(),
        w if w.contains('/') => w.to_string(),
        w if v6 => format!("{w}/128"),
        w => format!("{w}/32"),
    }
}

/// Every route in table 21332 (both families) as `prefix -> target` lines, where target is
/// `dev IF`, `via ADDR` or `unreachable` (a fail-closed twin); panics on a route that is
/// not Strait's (protocol 83).
pub fn table_routes(ns: &Netns) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (family, v6) in [("-4", false), ("-6", true)] {
        let text = ns.ip(&[family, "route", "show", "table", "21332"]);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut words: Vec<&str> = line.split_whitespace().collect();
            let unreachable = words[0] == "unreachable";
            if unreachable {
                words.remove(0);
            }
            assert!(
                line.contains(" proto 83"),
                "{}: a route in table 21332 that is not Strait's: {line}",
                ns.name
            );
            let after = |key: &str| {
                words
                    .iter()
                    .position(|w| *w == key)
                    .and_then(|i| words.get(i + 1))
                    .map(|w| format!("{key} {w}"))
            };
            let target = if unreachable {
                "unreachable".to_string()
            } else {
                after("via")
                    .or_else(|| after("dev"))
                    .unwrap_or_else(|| "?".into())
            };
            out.push((prefix_of(words[0], v6), target));
        }
    }
    out.sort();
    out
}

/// The routes a node's map asks for: peers' allowed IPs into the TUN, each with its
/// fail-closed `unreachable` twin, a member's routes via its gateway, and a twin for every
/// prefix of the map's `fail-closed` list (the agent's `routes::desired`).
pub fn desired_routes(map: &Value) -> Vec<(String, String)> {
    let mut want: BTreeMap<String, String> = BTreeMap::new();
    for peer in map["peers"]
        .as_object()
        .into_iter()
        .flat_map(|p| p.values())
    {
        for ip in peer["allowed-ips"].as_array().into_iter().flatten() {
            let ip = ip.as_str().unwrap_or_default();
            want.insert(prefix_of(ip, ip.contains(':')), "dev strait0".into());
        }
    }
    for (prefix, route) in map["routes"].as_object().into_iter().flatten() {
        let via = route["via-address"].as_str().unwrap_or_default();
        want.insert(prefix.clone(), format!("via {via}"));
    }
    let mut routes: Vec<(String, String)> = want.into_iter().collect();
    let mut twins: Vec<(String, String)> = routes
        .iter()
        .filter(|(_, target)| target == "dev strait0")
        .map(|(prefix, _)| (prefix.clone(), "unreachable".to_string()))
        .chain(
            map["node"]["fail-closed"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str())
                .map(|p| (prefix_of(p, p.contains(':')), "unreachable".to_string())),
        )
        .collect();
    twins.sort();
    twins.dedup();
    routes.extend(twins);
    routes.sort();
    routes
}

/// Counts, on the router, packets addressed to any of `prefixes` (the sites') other than
/// WireGuard's (UDP port 51820: a gateway probing another's private endpoint, encrypted):
/// tunnel traffic is addressed to the gateways' underlay addresses, so such a packet left a
/// gateway unencrypted. Read the count with [`leaked`].
pub fn count_leaks(inet: &Netns, prefixes: &[&str]) {
    let set = prefixes.join(", ");
    let nft = inet.exec(&[
        "nft",
        &format!(
            "add table inet leak; add chain inet leak pre {{ type filter hook prerouting priority -300 ; }} ; \
             add rule inet leak pre ip daddr {{ {set} }} meta l4proto != udp counter ; \
             add rule inet leak pre ip daddr {{ {set} }} udp dport != 51820 counter"
        ),
    ]);
    assert!(
        nft.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&nft.stderr)
    );
}

/// Packets counted by [`count_leaks`] so far.
pub fn leaked(inet: &Netns) -> u64 {
    let counts = nft_counters(inet, "inet leak pre");
    assert_eq!(counts.len(), 2, "the router's leak counters: {counts:?}");
    counts.iter().sum()
}

/// The packet counts of the `counter` rules of nftables chain `chain` (`family table
/// chain`) in `ns`, in rule order.
pub fn nft_counters(ns: &Netns, chain: &str) -> Vec<u64> {
    let out = ns.exec(&["nft", &format!("list chain {chain}")]);
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "packets")
        .filter_map(|w| w[1].parse().ok())
        .collect()
}

/// Runs an nftables script in `ns`, panicking with nft's error.
pub fn nft(ns: &Netns, script: &str) {
    let out = ns.exec(&["nft", script]);
    assert!(
        out.status.success(),
        "nft in {}: {}",
        ns.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Cuts a gateway's tunnel only: WireGuard's port dropped both ways on `uplink`, every other
/// interface and all other traffic untouched. Undone by [`restore_tunnel`].
pub fn cut_tunnel(ns: &Netns, uplink: &str) {
    nft(
        ns,
        &format!(
            "add table inet cut; add chain inet cut in {{ type filter hook input priority 0 ; }} ; \
             add chain inet cut out {{ type filter hook output priority 0 ; }} ; \
             add rule inet cut in iifname \"{uplink}\" udp dport 51820 drop ; \
             add rule inet cut out oifname \"{uplink}\" udp sport 51820 drop"
        ),
    );
}

/// Undoes [`cut_tunnel`].
pub fn restore_tunnel(ns: &Netns) {
    nft(ns, "delete table inet cut");
}

/// Strait's policy rules (`not fwmark 0x5354 lookup 21332`) per family: (IPv4, IPv6).
pub fn rules(ns: &Netns) -> (usize, usize) {
    let count = |family: &str| {
        ns.json(&[family, "rule", "show"])
            .as_array()
            .map(|rules| {
                rules
                    .iter()
                    .filter(|r| r["table"] == "21332")
                    .inspect(|r| {
                        assert!(
                            r["priority"] == 5354
                                && r["fwmark"] == "0x5354"
                                && r.get("not").is_some(),
                            "{}: unexpected Strait rule {r}",
                            ns.name
                        )
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    (count("-4"), count("-6"))
}

/// Strait routes (protocol 83) outside table 21332.
pub fn stray_routes(ns: &Netns) -> String {
    let mut text = ns.ip(&["-4", "route", "show", "table", "all", "proto", "83"]);
    text.push_str(&ns.ip(&["-6", "route", "show", "table", "all", "proto", "83"]));
    text.lines()
        .filter(|l| !l.contains("table 21332"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the kernel would do with a packet (`ip route get ARGS`): its answer, or the error
/// text if it refuses (an `unreachable` route: "No route to host").
pub fn route_get(ns: &Netns, args: &[&str]) -> String {
    let mut all = vec!["ip", "route", "get"];
    all.extend_from_slice(args);
    let out = ns.exec(&all);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
