//! The control plane with real processes on loopback (no root): a coordinator, agents with
//! `--dataplane none`, and `straitctl`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use strait_tests::procs::{wait_for, Agent, Coordinator, Site, TWO_SITES};

const SITES: &[Site<'static>] = TWO_SITES;

fn nodes(c: &Coordinator) -> Vec<Value> {
    c.ctl_json(&["nodes"])
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn status_version(c: &Coordinator) -> Option<u64> {
    c.ctl_json(&["status"]).ok()?.get("map-version")?.as_u64()
}

/// Starts gateways in both sites and a member in aws-use1.
fn three_agents(c: &Coordinator) -> Vec<Agent> {
    let specs = [
        (
            "aws-use1",
            "gw1",
            "gateway",
            vec![
                "--prefix",
                "10.10.0.0/16",
                "--endpoint",
                "private=10.10.0.5:51820",
            ],
        ),
        (
            "gcp-usc1",
            "gw1",
            "gateway",
            vec![
                "--prefix",
                "10.20.0.0/16",
                "--endpoint",
                "public=198.51.100.7:51820",
            ],
        ),
        (
            "aws-use1",
            "app1",
            "member",
            vec!["--endpoint", "private=10.10.0.9:51820"],
        ),
    ];
    specs
        .iter()
        .map(|(site, node, role, extra)| {
            let token = c.token(site, role).unwrap();
            Agent::start(c.addr, site, node, role, &token, extra).unwrap()
        })
        .collect()
}

/// Waits until all `n` nodes are online and every agent holds the coordinator's version.
fn converged(c: &Coordinator, agents: &[Agent], n: usize) -> u64 {
    wait_for(Duration::from_secs(20), "agents to converge", || {
        let v = status_version(c)?;
        let ns = nodes(c);
        let all_online = ns.len() == n
            && ns
                .iter()
                .all(|x| x["online"] == true && x["map-version"] == v);
        let all_saved = agents.iter().all(|a| a.map_version() == Some(v));
        (all_online && all_saved).then_some(v)
    })
    .unwrap_or_else(|e| panic!("{e}\ncoordinator log:\n{}", c.log_text()))
}

#[test]
fn agents_converge_to_one_map_version_and_nodes_lists_overlay_ips() {
    let mut c = Coordinator::init(SITES, "").unwrap();
    c.start().unwrap();
    let agents = three_agents(&c);
    let version = converged(&c, &agents, 3);

    let ns = nodes(&c);
    let ips: BTreeMap<String, String> = ns
        .iter()
        .map(|n| {
            (
                format!(
                    "{}/{}",
                    n["site"].as_str().unwrap(),
                    n["name"].as_str().unwrap()
                ),
                n["overlay-ip"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(ips.len(), 3);
    assert!(ips.values().all(|ip| ip.starts_with("100.")), "{ips:?}");
    assert_eq!(
        ips.values()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3,
        "distinct overlay IPs"
    );

    // Each node's saved map is its own view: gateways peer, the member routes via its gateway.
    let gw = agents[0].saved_map().unwrap();
    assert_eq!(gw["version"], version);
    assert!(gw["peers"].get("gcp-usc1/gw1").is_some(), "{gw}");
    let member = agents[2].saved_map().unwrap();
    assert_eq!(member["peers"].as_object().unwrap().len(), 0);
    let route = &member["routes"]["10.20.0.0/16"];
    assert_eq!(route["via"], "aws-use1/gw1");
    assert_eq!(route["via-address"], "10.10.0.5");

    let links = c.ctl_json(&["links"]).unwrap();
    assert_eq!(links.as_array().unwrap().len(), 2, "{links}");
    let dot = c.ctl(&["graph", "--format", "dot"]).unwrap();
    let dot = String::from_utf8(dot.stdout).unwrap();
    assert!(
        dot.contains("subgraph cluster_") && dot.contains("\"aws-use1/gw1\" -- \"gcp-usc1/gw1\""),
        "{dot}"
    );
}

#[test]
fn coordinator_restart_keeps_overlay_ips_and_agents_reconnect() {
    let mut c = Coordinator::init(SITES, "").unwrap();
    c.start().unwrap();
    let agents = three_agents(&c);
    let before_version = converged(&c, &agents, 3);
    let ip_of = |ns: &[Value]| -> BTreeMap<String, String> {
        ns.iter()
            .map(|n| {
                (
                    format!("{}/{}", n["site"], n["name"]),
                    n["overlay-ip"].to_string(),
                )
            })
            .collect()
    };
    let before = ip_of(&nodes(&c));

    c.proc.as_mut().unwrap().stop();
    std::thread::sleep(Duration::from_millis(500));
    for a in &agents {
        assert!(
            a.map_version().is_some(),
            "agents keep their last map while the coordinator is down"
        );
    }
    c.start().unwrap();
    let after_version = converged(&c, &agents, 3);
    assert!(
        after_version > before_version,
        "agents re-registered after the restart"
    );
    assert_eq!(ip_of(&nodes(&c)), before);
}

#[test]
fn revoked_node_leaves_other_maps_within_a_second_and_cannot_reconnect() {
    let mut c = Coordinator::init(SITES, "").unwrap();
    c.start().unwrap();
    let mut agents = three_agents(&c);
    converged(&c, &agents, 3);

    let start = Instant::now();
    let out = c.ctl(&["revoke", "gcp-usc1/gw1"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        Duration::from_secs(1),
        "the revoked gateway to leave aws-use1/gw1's map",
        || {
            agents[0]
                .saved_map()
                .filter(|m| m["peers"].get("gcp-usc1/gw1").is_none())
        },
    )
    .unwrap();
    let removal = start.elapsed();
    eprintln!("revocation reached the other gateway's map in {removal:?}");
    assert!(removal < Duration::from_secs(1));

    // The revoked agent keeps retrying, and is refused every time.
    let revoked = &mut agents[1];
    wait_for(
        Duration::from_secs(5),
        "the revoked agent to be refused",
        || {
            revoked
                .proc
                .log_text()
                .contains("certificate revoked")
                .then_some(())
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(nodes(&c)
        .iter()
        .all(|n| !(n["site"] == "gcp-usc1" && n["name"] == "gw1")));
    assert!(c.log_text().contains("refused: revoked certificate"));
}

#[test]
fn refused_prefixes_are_reported_with_the_conflict() {
    let mut c = Coordinator::init(SITES, "").unwrap();
    c.start().unwrap();
    let token = c.token("gcp-usc1", "gateway").unwrap();
    let agent = Agent::start(
        c.addr,
        "gcp-usc1",
        "gw1",
        "gateway",
        &token,
        &[
            "--prefix",
            "10.20.0.0/16",
            "--prefix",
            "10.10.5.0/24",
            "--prefix",
            "192.168.7.0/24",
            "--prefix",
            "0.0.0.0/0",
        ],
    )
    .unwrap();
    converged(&c, std::slice::from_ref(&agent), 1);
    let routes = c.ctl_json(&["routes"]).unwrap();
    let by_prefix: BTreeMap<&str, &Value> = routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["prefix"].as_str().unwrap(), r))
        .collect();
    assert_eq!(by_prefix["10.20.0.0/16"]["status"], "accepted");
    assert!(by_prefix["10.10.5.0/24"]["reason"]
        .as_str()
        .unwrap()
        .contains("overlaps site aws-use1's prefix 10.10.0.0/16"));
    assert!(by_prefix["192.168.7.0/24"]["reason"]
        .as_str()
        .unwrap()
        .contains("outside site gcp-usc1"));
    assert!(by_prefix["0.0.0.0/0"]["reason"]
        .as_str()
        .unwrap()
        .contains("default route"));
    let table = String::from_utf8(c.ctl(&["routes"]).unwrap().stdout).unwrap();
    assert!(
        table.contains("refused") && table.contains("overlaps site aws-use1"),
        "{table}"
    );
    assert!(agent
        .proc
        .log_text()
        .contains("coordinator refused an advertised prefix"));
    // Nothing refused reaches a map.
    let map = agent.saved_map().unwrap();
    assert_eq!(map["node"]["accepted"], serde_json::json!(["10.20.0.0/16"]));
}

#[test]
fn a_used_token_is_refused_with_a_clear_error() {
    let mut c = Coordinator::init(SITES, "").unwrap();
    c.start().unwrap();
    let token = c.token("aws-use1", "member").unwrap();
    let first = Agent::start(c.addr, "aws-use1", "m1", "member", &token, &[]).unwrap();
    converged(&c, std::slice::from_ref(&first), 1);
    let mut second = Agent::start(c.addr, "aws-use1", "m2", "member", &token, &[]).unwrap();
    let status = wait_for(
        Duration::from_secs(10),
        "the second agent to give up",
        || second.proc.exited(),
    )
    .unwrap();
    assert!(!status.success());
    let log = second.proc.log_text();
    assert!(
        log.contains("already used") && log.contains("straitctl token create"),
        "{log}"
    );
    // Wrong site: a token for aws-use1 used to join gcp-usc1.
    let token = c.token("aws-use1", "gateway").unwrap();
    let mut wrong = Agent::start(c.addr, "gcp-usc1", "gw9", "gateway", &token, &[]).unwrap();
    wait_for(
        Duration::from_secs(10),
        "the wrong-site agent to give up",
        || wrong.proc.exited(),
    )
    .unwrap();
    assert!(
        wrong.proc.log_text().contains("is for site aws-use1"),
        "{}",
        wrong.proc.log_text()
    );
    assert_eq!(nodes(&c).len(), 1);
}
