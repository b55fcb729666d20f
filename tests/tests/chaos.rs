//! Chaos with real processes in network namespaces this test creates (root needed; nothing is
//! added to the root namespace, everything is torn down on drop): `kill -9` of the
//! coordinator, of a member agent and of a gateway agent while traffic flows, a site cut off
//! and healed, and loss on the control connection. After each disruption the test measures
//! how long recovery took and checks that every node's table 21332 holds exactly the routes
//! its map asks for (no stale ones, no duplicates), that the policy rule exists once per
//! family, that no packet for a site's prefix reached the router (none left a gateway
//! unencrypted, even with its agent dead: routes fail closed), and that the coordinator's
//! view (nodes, map versions, routes, links) agrees.
//!
//! ```text
//!                 +----------------------- kinet (router) -------------------------+
//!                 | c0 198.51.100.1/24       a0 192.0.2.1/24       b0 203.0.113.1/24 |
//!                 +------+------------------------+----------------------+---------+
//!                        |                        |                      |
//!        kcoord 198.51.100.10          kgwa 192.0.2.10 (up0)     kgwb 203.0.113.10 (up0)
//!        (strait-coordinator,          gateway aws-use1          gateway gcp-usc1
//!         heartbeat-timeout 3s)        br0 10.10.0.1/24          lan0 10.20.0.1/24
//!                                       |            |                |
//!                              kwla 10.10.0.10   kma 10.10.0.20   kwlb 10.20.0.10
//!                              (workload)        (member aws-use1) (workload)
//! ```
//!
//! The router knows only the three underlay networks: a workload's packet that leaves its
//! gateway outside the tunnel (no Strait route) is dropped there, never delivered in clear.
//! gwa masquerades the member's control traffic to the coordinator.
//!
//! The second test puts the coordinator behind the impairment relay
//! ([`strait_tests::impair`]) with 25 % loss each way; agents enroll, register and follow map
//! changes through it.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use strait_tests::impair::{Direction, Relay, RelaySpec};
use strait_tests::kernel::{
    count_leaks, desired_routes, leaked, rules, stray_routes, table_routes,
};
use strait_tests::netns::{uplink, veth, Netns};
use strait_tests::procs::{wait_for, Agent, Coordinator, Site, TWO_SITES};

/// The coordinator's heartbeat timeout in these tests (the minimum it accepts is 2 s; agents
/// send a heartbeat every 500 ms).
const HEARTBEAT_TIMEOUT: &str = "3s";

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A coordinator for `sites` in namespace `ns` at `addr`, with a short heartbeat timeout.
fn coordinator(ns: &Netns, addr: SocketAddr, sites: &[Site<'_>]) -> Coordinator {
    let mut c = Coordinator::init(sites, "").unwrap();
    let cfg = c.state().join("coordinator.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("heartbeat-timeout = \"15s\""), "{text}");
    let text = text.replace(
        "heartbeat-timeout = \"15s\"",
        &format!("heartbeat-timeout = {HEARTBEAT_TIMEOUT:?}"),
    );
    std::fs::write(&cfg, text).unwrap();
    c.move_to(&ns.name, addr).unwrap();
    c.start().unwrap();
    c
}

/// Waits (at most 10 s) until `ns`'s table 21332 holds exactly what `agent`'s saved map
/// asks for, checking at every look that there is no duplicate, and then that the rule is
/// there once per family and no Strait route is elsewhere. Returns the routes.
fn assert_routes_exact(label: &str, ns: &Netns, agent: &Agent) -> Vec<(String, String)> {
    let mut last = (Vec::new(), Vec::new());
    let ok = wait_for(Duration::from_secs(10), "routes to match the map", || {
        let have = table_routes(ns);
        // One route per prefix, and at most one fail-closed twin.
        for twins in [false, true] {
            let mut prefixes: Vec<&String> = have
                .iter()
                .filter(|(_, target)| (target == "unreachable") == twins)
                .map(|(p, _)| p)
                .collect();
            let count = prefixes.len();
            prefixes.dedup();
            assert_eq!(
                prefixes.len(),
                count,
                "{label}: duplicate routes in {}: {have:?}",
                ns.name
            );
        }
        let want = desired_routes(&agent.saved_map()?);
        let same = have == want && !want.is_empty();
        last = (have, want);
        same.then_some(())
    });
    let (have, want) = last;
    ok.unwrap_or_else(|e| {
        panic!(
            "{label}: {}: {e}\nkernel: {have:?}\nmap:    {want:?}\n{}",
            ns.name,
            agent.proc.log_text()
        )
    });
    assert_eq!(rules(ns), (1, 1), "{label}: {}: rules", ns.name);
    let stray = stray_routes(ns);
    assert!(
        stray.is_empty(),
        "{label}: {}: Strait routes outside table 21332:\n{stray}",
        ns.name
    );
    have
}

// ---- traffic ----

/// Pings `to` from `ns` every 10 ms, `count` times, with timestamps: the (unix time,
/// icmp_seq) of every reply.
fn ping_trace(ns: &str, to: &str, count: u32) -> Vec<(f64, u32)> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-n", "-D", "-i", "0.01", "-W", "1", "-c",
        ])
        .arg(count.to_string())
        .arg(to)
        .output()
        .expect("ping");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| {
            let ts = l.strip_prefix('[')?.split(']').next()?.parse().ok()?;
            let seq = l
                .split("icmp_seq=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            Some((ts, seq))
        })
        .collect()
}

/// A ping trace in the background.
fn ping_in_background(
    ns: &Netns,
    to: &str,
    count: u32,
) -> std::thread::JoinHandle<Vec<(f64, u32)>> {
    let (ns, to) = (ns.name.clone(), to.to_string());
    std::thread::spawn(move || ping_trace(&ns, &to, count))
}

/// Pings lost in a trace of `count`, and the longest run of them (in pings, 10 ms each).
fn losses(trace: &[(f64, u32)], count: u32) -> (u32, u32) {
    let mut seqs: Vec<u32> = trace.iter().map(|(_, s)| *s).collect();
    seqs.sort_unstable();
    seqs.dedup();
    let lost = count.saturating_sub(seqs.len() as u32);
    let mut longest = 0;
    let mut prev = 0;
    for s in seqs.iter().copied().chain([count + 1]) {
        longest = longest.max(s.saturating_sub(prev + 1));
        prev = s;
    }
    (lost, longest)
}

/// The longest time between two replies in `trace`, in seconds.
fn longest_silence(trace: &[(f64, u32)]) -> f64 {
    trace
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .fold(0.0, f64::max)
}

/// The first reply in `trace` after unix time `t`.
fn first_reply_after(trace: &[(f64, u32)], t: f64) -> Option<f64> {
    trace.iter().map(|(ts, _)| *ts).find(|ts| *ts > t)
}

/// A single ping with a 1 s timeout.
fn ping_once(ns: &Netns, to: &str) -> bool {
    ns.exec(&["ping", "-n", "-c", "1", "-W", "1", to])
        .status
        .success()
}

/// A paced TCP transfer (64 KiB every 20 ms) from `client` to `server_ip:5001` in
/// `server`, checked by hash at both ends; both ends give up after 30 s without progress,
/// and are killed if the test ends first.
struct Transfer {
    server: Option<Child>,
    client: Option<Child>,
}

impl Transfer {
    fn start(server: &Netns, server_ip: &str, client: &Netns, chunks: usize) -> Transfer {
        const SERVER: &str = "import socket,hashlib\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',5001));s.listen(1);s.settimeout(30)\nc,_=s.accept();c.settimeout(30);h=hashlib.sha256();n=0\nwhile True:\n d=c.recv(65536)\n if not d: break\n h.update(d);n+=len(d)\nprint(n,h.hexdigest())";
        let client_code = format!(
            "import socket,hashlib,time\nend=time.time()+5\nwhile True:\n try:\n  c=socket.create_connection(('{server_ip}',5001),timeout=2);break\n except OSError:\n  if time.time()>end: raise\n  time.sleep(0.1)\nc.settimeout(30);h=hashlib.sha256();n=0\nfor i in range({chunks}):\n d=bytes((i*7+j)%251 for j in range(256))*256\n c.sendall(d);h.update(d);n+=len(d);time.sleep(0.02)\nc.close()\nprint(n,h.hexdigest())"
        );
        let spawn = |ns: &Netns, code: &str| {
            Command::new("ip")
                .args(["netns", "exec", &ns.name, "python3", "-c", code])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("python3")
        };
        let server = spawn(server, SERVER);
        std::thread::sleep(Duration::from_millis(200));
        let client = spawn(client, &client_code);
        Transfer {
            server: Some(server),
            client: Some(client),
        }
    }

    /// Waits for both ends; returns what each counted and hashed.
    fn finish(mut self) -> (String, String) {
        let text = |c: Option<Child>| {
            let Some(c) = c else { return String::new() };
            let out = c.wait_with_output().expect("transfer end");
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        };
        let sent = text(self.client.take());
        (sent, text(self.server.take()))
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        for child in [self.client.take(), self.server.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---- the coordinator's view ----

fn ctl_json(c: &Coordinator, args: &[&str]) -> Option<Value> {
    c.ctl_json(args).ok()
}

/// Whether every node in `ids` (`site/node`) is online, has been heard from since unix
/// time `since`, and has acknowledged the coordinator's current map version. Returns that
/// version.
fn all_current(c: &Coordinator, ids: &[&str], since: u64) -> Option<u64> {
    let version = ctl_json(c, &["status"])?["map-version"].as_u64()?;
    let nodes = ctl_json(c, &["nodes"])?;
    let nodes = nodes.as_array()?;
    let ok = ids.iter().all(|id| {
        nodes.iter().any(|n| {
            format!(
                "{}/{}",
                n["site"].as_str().unwrap_or(""),
                n["name"].as_str().unwrap_or("")
            ) == *id
                && n["online"] == true
                && n["last-seen"].as_u64().unwrap_or(0) >= since
                && n["map-version"].as_u64() == Some(version)
        })
    });
    // The version must not have moved while we looked.
    (ok && ctl_json(c, &["status"])?["map-version"].as_u64()? == version).then_some(version)
}

/// The online state of `id` as the coordinator shows it.
fn online(c: &Coordinator, id: &str) -> Option<bool> {
    let nodes = ctl_json(c, &["nodes"])?;
    nodes.as_array()?.iter().find_map(|n| {
        (format!("{}/{}", n["site"].as_str()?, n["name"].as_str()?) == id)
            .then(|| n["online"] == true)
    })
}

/// What the coordinator's store says of each node and must keep across restarts and
/// disruptions: `site/node role overlay key prefixes`, sorted.
fn node_records(c: &Coordinator) -> Vec<String> {
    let nodes = ctl_json(c, &["nodes"]).expect("straitctl nodes");
    let mut out: Vec<String> = nodes
        .as_array()
        .expect("nodes array")
        .iter()
        .map(|n| {
            format!(
                "{}/{} {} {} {} {}",
                n["site"], n["name"], n["role"], n["overlay-ip"], n["wg-public-key"], n["prefixes"]
            )
        })
        .collect();
    out.sort();
    out
}

/// Every agent's saved map is at `version` and agrees with the coordinator's records: each
/// peer's key and overlay address are the node's, and the node's own address is its own.
fn assert_maps_agree(label: &str, c: &Coordinator, agents: &[&Agent], version: u64) {
    let nodes = ctl_json(c, &["nodes"]).expect("straitctl nodes");
    let nodes = nodes.as_array().expect("nodes array");
    let node = |id: &str| {
        nodes
            .iter()
            .find(|n| {
                format!(
                    "{}/{}",
                    n["site"].as_str().unwrap_or(""),
                    n["name"].as_str().unwrap_or("")
                ) == id
            })
            .unwrap_or_else(|| panic!("{label}: no node {id} in {nodes:?}"))
    };
    for agent in agents {
        let map = wait_for(
            Duration::from_secs(5),
            "the saved map to be current",
            || agent.saved_map().filter(|m| m["version"] == version),
        )
        .unwrap_or_else(|e| {
            panic!(
                "{label}: {}/{}: {e}: {:?}",
                agent.site,
                agent.node,
                agent.map_version()
            )
        });
        let me = node(&format!("{}/{}", agent.site, agent.node));
        assert_eq!(
            map["node"]["overlay-ip"], me["overlay-ip"],
            "{label}: {}",
            agent.node
        );
        for (id, peer) in map["peers"].as_object().into_iter().flatten() {
            let n = node(id);
            assert_eq!(
                peer["wg-public-key"], n["wg-public-key"],
                "{label}: {id} in {}'s map",
                agent.node
            );
            assert_eq!(
                peer["overlay-ip"], n["overlay-ip"],
                "{label}: {id} in {}'s map",
                agent.node
            );
        }
    }
}

/// `straitctl routes` and `links` agree with the topology: every advertised prefix
/// accepted, none refused or in conflict; the tunnel and the member's link up.
fn assert_ctl_consistent(label: &str, c: &Coordinator, prefixes: &[(&str, &str)]) {
    let routes = ctl_json(c, &["routes"]).expect("straitctl routes");
    let routes = routes.as_array().expect("routes array");
    let mut accepted: Vec<(String, String)> = routes
        .iter()
        .map(|r| {
            assert_eq!(r["status"], "accepted", "{label}: {r}");
            (
                r["node"].as_str().unwrap_or("").to_string(),
                r["prefix"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    accepted.sort();
    let mut want: Vec<(String, String)> = prefixes
        .iter()
        .map(|(n, p)| (n.to_string(), p.to_string()))
        .collect();
    want.sort();
    assert_eq!(accepted, want, "{label}: straitctl routes");
    let links = ctl_json(c, &["links"]).expect("straitctl links");
    let links = links.as_array().expect("links array");
    let find = |a: &str, b: &str| {
        links
            .iter()
            .find(|l| l["a"] == a && l["b"] == b)
            .unwrap_or_else(|| panic!("{label}: no link {a} - {b} in {links:?}"))
    };
    let tunnel = find("aws-use1/gwa", "gcp-usc1/gwb");
    assert_eq!(tunnel["kind"], "tunnel", "{label}: {tunnel}");
    assert_eq!(tunnel["state"], "up", "{label}: {tunnel}");
    let member = find("aws-use1/ma", "aws-use1/gwa");
    assert_eq!(member["kind"], "via-gateway", "{label}: {member}");
    assert_eq!(member["state"], "up", "{label}: {member}");
    assert_eq!(links.len(), 2, "{label}: links {links:?}");
}

/// Times `f` until it returns `Some`, at most `limit`; panics with `what` and `logs` after.
fn time_until<T>(
    limit: Duration,
    what: &str,
    logs: &dyn Fn() -> String,
    f: impl FnMut() -> Option<T>,
) -> (Duration, T) {
    let started = Instant::now();
    let v = wait_for(limit, what, f).unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    (started.elapsed(), v)
}

/// The logs of `agents` and the coordinator, for a failure message.
fn all_logs(agents: &[&Agent], c: &Coordinator) -> String {
    let mut text: Vec<String> = agents.iter().map(|x| x.proc.log_text()).collect();
    text.push(c.log_text());
    text.join("\n")
}

fn registrations(agent: &Agent) -> usize {
    agent
        .proc
        .log_text()
        .lines()
        .filter(|l| l.contains(": registered"))
        .count()
}

#[test]
fn kill_9_and_a_partition_leave_no_stale_routes_and_recover_within_bounds() {
    let inet = Netns::new("kinet");
    let coord = Netns::new("kcoord");
    let gwa = Netns::new("kgwa");
    let gwb = Netns::new("kgwb");
    let wla = Netns::new("kwla");
    let ma = Netns::new("kma");
    let wlb = Netns::new("kwlb");
    inet.sysctl("net.ipv4.ip_forward", "1");
    uplink(&inet, "c0", &coord, "up0", "198.51.100", "10");
    uplink(&inet, "a0", &gwa, "up0", "192.0.2", "10");
    uplink(&inet, "b0", &gwb, "up0", "203.0.113", "10");
    // Site A's LAN: a bridge on the gateway with a workload and a member.
    gwa.ip(&["link", "add", "br0", "type", "bridge"]);
    gwa.ip(&["addr", "add", "10.10.0.1/24", "dev", "br0"]);
    gwa.ip(&["link", "set", "br0", "up"]);
    for (host, port, addr) in [(&wla, "lan0", "10.10.0.10"), (&ma, "lan1", "10.10.0.20")] {
        veth(&gwa, port, host, "eth0");
        gwa.ip(&["link", "set", port, "master", "br0"]);
        host.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
    }
    wla.ip(&["route", "add", "default", "via", "10.10.0.1"]);
    // The member reaches the coordinator through its gateway (masqueraded there), and site B
    // only through the routes its agent installs.
    ma.ip(&["route", "add", "198.51.100.0/24", "via", "10.10.0.1"]);
    gwa.sysctl("net.ipv4.ip_forward", "1");
    let nft = gwa.exec(&[
        "nft",
        "add table ip nat; add chain ip nat post { type nat hook postrouting priority 100 ; } ; add rule ip nat post ip saddr 10.10.0.0/24 oifname \"up0\" masquerade",
    ]);
    assert!(
        nft.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&nft.stderr)
    );
    uplink(&gwb, "lan0", &wlb, "eth0", "10.20.0", "10");

    let addr: SocketAddr = "198.51.100.10:7443".parse().unwrap();
    let mut c = coordinator(&coord, addr, TWO_SITES);
    let gwa_args: &[&str] = &[
        "--prefix",
        "10.10.0.0/16",
        "--endpoint",
        "public=192.0.2.10:51820",
        "--endpoint",
        "private=10.10.0.1:51820",
        "--probe-interval",
        "200ms",
    ];
    let gwb_args: &[&str] = &[
        "--prefix",
        "10.20.0.0/16",
        "--endpoint",
        "public=203.0.113.10:51820",
        "--probe-interval",
        "200ms",
    ];
    let ma_args: &[&str] = &["--endpoint", "private=10.10.0.20:51820"];
    let token = |site: &str, role: &str| c.token(site, role).unwrap();
    let (ta, tb, tm) = (
        token("aws-use1", "gateway"),
        token("gcp-usc1", "gateway"),
        token("aws-use1", "member"),
    );
    let mut a = Agent::start_in_netns(&gwa.name, addr, "aws-use1", "gwa", "gateway", &ta, gwa_args)
        .unwrap();
    let b = Agent::start_in_netns(&gwb.name, addr, "gcp-usc1", "gwb", "gateway", &tb, gwb_args)
        .unwrap();
    let mut m =
        Agent::start_in_netns(&ma.name, addr, "aws-use1", "ma", "member", &tm, ma_args).unwrap();
    let ids = ["aws-use1/gwa", "gcp-usc1/gwb", "aws-use1/ma"];
    let prefixes = [("gwa", "10.10.0.0/16"), ("gwb", "10.20.0.0/16")];
    let set_up = Instant::now();
    wait_for(
        Duration::from_secs(30),
        "every agent current and workload A reaching B",
        || {
            all_current(&c, &ids, 0)?;
            ping_once(&wla, "10.20.0.10").then_some(())
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n{}\n{}\n{}",
            a.proc.log_text(),
            b.proc.log_text(),
            m.proc.log_text(),
            c.log_text()
        )
    });
    println!("mesh up in {:?}", set_up.elapsed());
    // Counted from now: before the agents' routes were in, workload A's first pings went
    // out by the default route, as they would on a network without Strait.
    count_leaks(&inet, &["10.10.0.0/16", "10.20.0.0/16"]);
    assert!(ping_once(&ma, "10.20.0.10"), "member -> workload B");
    let baseline = [
        assert_routes_exact("baseline", &gwa, &a),
        assert_routes_exact("baseline", &gwb, &b),
        assert_routes_exact("baseline", &ma, &m),
    ];
    println!(
        "routes: gwa {:?}\n        gwb {:?}\n        ma  {:?}",
        baseline[0], baseline[1], baseline[2]
    );
    assert!(
        baseline[2].contains(&("10.20.0.0/16".into(), "via 10.10.0.1".into())),
        "{:?}",
        baseline[2]
    );
    let nodes = node_records(&c);
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    // After each disruption: every node's routes as before and as its map asks, the
    // coordinator's records unchanged, every saved map at the coordinator's version and
    // agreeing with its records, `routes` and `links` as before.
    let check_all = |label: &str, c: &Coordinator, a: &Agent, m: &Agent| {
        for (i, (ns, agent)) in [(&gwa, a), (&gwb, &b), (&ma, m)].into_iter().enumerate() {
            let now = assert_routes_exact(label, ns, agent);
            assert_eq!(now, baseline[i], "{label}: {}'s routes changed", ns.name);
        }
        assert_eq!(
            node_records(c),
            nodes,
            "{label}: the coordinator's node records"
        );
        let version = wait_for(Duration::from_secs(10), "every node current", || {
            all_current(c, &ids, 0)
        })
        .unwrap_or_else(|e| panic!("{label}: {e}: {:?}", ctl_json(c, &["nodes"])));
        assert_maps_agree(label, c, &[a, &b, m], version);
        assert_ctl_consistent(label, c, &prefixes);
        assert_eq!(
            leaked(&inet),
            0,
            "{label}: packets left a gateway unencrypted"
        );
        version
    };
    let mut version = check_all("baseline", &c, &a, &m);

    // 1. kill -9 of the coordinator in the middle of a 10 s flow; it restarts at once on
    //    the same state directory. The flow must not notice; the agents reconnect.
    let before: Vec<usize> = [&a, &b, &m].iter().map(|x| registrations(x)).collect();
    let flow = ping_in_background(&wla, "10.20.0.10", 1000);
    std::thread::sleep(Duration::from_millis(500));
    c.proc.as_mut().unwrap().kill();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    c.start().unwrap();
    let restarted = Instant::now();
    let restarted_unix = unix_now() as u64;
    let (_, (reconnect, acked)) = time_until(
        Duration::from_secs(45),
        "every agent to reconnect and acknowledge the map",
        &|| all_logs(&[&a, &b, &m], &c),
        || {
            let again = [&a, &b, &m]
                .iter()
                .zip(&before)
                .all(|(x, n)| registrations(x) > *n);
            let v = all_current(&c, &ids, restarted_unix).filter(|_| again)?;
            Some((restarted.elapsed(), v))
        },
    );
    // How each agent learned its session was gone: with the coordinator's QUIC secret kept
    // in its state directory, by a stateless reset from the restarted process ("reset by
    // peer"), not by the 30 s idle timeout ("timed out").
    let ends: Vec<String> = [&a, &b, &m]
        .iter()
        .map(|x| {
            let log = x.proc.log_text();
            let end = log
                .lines()
                .rev()
                .find(|l| l.contains("session failed"))
                .and_then(|l| l.split("error=").nth(1))
                .unwrap_or("?")
                .to_string();
            format!("{}: {end}", x.node)
        })
        .collect();
    let trace = flow.join().unwrap();
    let (lost, longest) = losses(&trace, 1000);
    println!(
        "coordinator kill -9: {lost} of 1000 pings lost (longest silence {:.3} s) across the kill, \
         restart and reconnection; every agent re-registered and acknowledged map version {acked} \
         {reconnect:?} after the restart ({:?} after the kill)",
        longest_silence(&trace),
        killed.elapsed() - restarted.elapsed() + reconnect
    );
    println!("  sessions ended by {ends:?}");
    assert!(
        lost <= 2,
        "{lost} pings lost without the coordinator (longest gap {longest})"
    );
    assert!(
        reconnect < Duration::from_secs(10),
        "reconnection took {reconnect:?}\n{}",
        all_logs(&[&a, &b, &m], &c)
    );
    let after = check_all("after the coordinator's kill -9", &c, &a, &m);
    assert!(
        after > version,
        "map version went from {version} to {after}"
    );
    version = after;

    // 2. kill -9 of the member agent in the middle of a TCP transfer from the member to
    //    site B. Its routes point at the gateway, not at a device of its own: they stay, and
    //    the transfer goes on. The restarted agent reconciles them.
    let transfer = Transfer::start(&wlb, "10.20.0.10", &ma, 150);
    let flow = ping_in_background(&ma, "10.20.0.10", 400);
    std::thread::sleep(Duration::from_millis(1000));
    m.proc.kill();
    assert_eq!(
        table_routes(&ma),
        baseline[2],
        "the member's routes after kill -9"
    );
    assert_eq!(rules(&ma), (1, 1), "the member's rules after kill -9");
    std::thread::sleep(Duration::from_millis(500));
    let dir = m.dir;
    let restarted_unix = unix_now();
    let restarted = Instant::now();
    m = Agent::run_in_netns(dir, &ma.name, addr, "aws-use1", "ma", "member", "", ma_args).unwrap();
    let (_, back) = time_until(
        Duration::from_secs(10),
        "the member to be current again",
        &|| all_logs(&[&m], &c),
        || all_current(&c, &ids, restarted_unix as u64).map(|_| restarted.elapsed()),
    );
    let trace = flow.join().unwrap();
    let (sent, received) = transfer.finish();
    assert_eq!(
        sent, received,
        "the member's transfer across its agent's kill -9"
    );
    let (lost, _) = losses(&trace, 400);
    println!(
        "member kill -9 mid-transfer: routes and rules stayed, transfer intact ({sent}); {lost} \
         of 400 pings lost (longest silence {:.3} s); member current again {back:?} after its \
         restart",
        longest_silence(&trace)
    );
    assert!(
        lost <= 5,
        "{lost} pings lost while the member's agent restarted"
    );
    version = check_all("after the member's kill -9", &c, &a, &m).max(version);

    // 3. kill -9 of gateway A in the middle of a TCP transfer from workload A to workload B.
    //    Its TUN device goes with it, and the routes on it; the rule and the fail-closed
    //    twins stay, so site A's packets for site B are refused at gateway A, not sent out
    //    unencrypted (the router counts any that arrive). The restarted agent must
    //    reconcile to exactly the map's routes, one rule per family.
    let before_b = registrations(&b);
    let transfer = Transfer::start(&wlb, "10.20.0.10", &wla, 200);
    let flow = ping_in_background(&wla, "10.20.0.10", 800);
    std::thread::sleep(Duration::from_millis(1000));
    let killed_unix = unix_now();
    a.proc.kill();
    let left = table_routes(&gwa);
    let left_rules = rules(&gwa);
    println!("gateway kill -9: left behind routes {left:?}, rules {left_rules:?}");
    assert_eq!(left_rules, (1, 1), "the gateway's rules after kill -9");
    assert!(
        left.iter().all(|r| baseline[0].contains(r)),
        "routes after kill -9 that were not there before: {left:?}"
    );
    let twins = |routes: &[(String, String)]| -> Vec<(String, String)> {
        routes
            .iter()
            .filter(|(_, target)| target == "unreachable")
            .cloned()
            .collect()
    };
    assert!(!twins(&baseline[0]).is_empty(), "{:?}", baseline[0]);
    assert_eq!(
        twins(&left),
        twins(&baseline[0]),
        "fail-closed routes after kill -9"
    );
    let refused = gwa.exec(&[
        "ip",
        "route",
        "get",
        "10.20.0.10",
        "from",
        "10.10.0.10",
        "iif",
        "br0",
    ]);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("No route to host"),
        "gateway A without its agent would route site B's prefix: {}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    std::thread::sleep(Duration::from_millis(1000));
    let dir = a.dir;
    let restarted_unix = unix_now();
    let restarted = Instant::now();
    a = Agent::run_in_netns(
        dir, &gwa.name, addr, "aws-use1", "gwa", "gateway", "", gwa_args,
    )
    .unwrap();
    let (_, back) = time_until(
        Duration::from_secs(10),
        "gateway A to be current again",
        &|| all_logs(&[&a], &c),
        || all_current(&c, &ids, restarted_unix as u64).map(|_| restarted.elapsed()),
    );
    let trace = flow.join().unwrap();
    let (sent, received) = transfer.finish();
    let (lost, _) = losses(&trace, 800);
    let first = first_reply_after(&trace, restarted_unix);
    println!(
        "gateway kill -9 mid-transfer: transfer intact ({sent}); {lost} of 800 pings lost, \
         longest silence {:.3} s; first reply {:.3} s after the restart ({:.3} s after the \
         kill); gateway current again {back:?} after its restart",
        longest_silence(&trace),
        first.map_or(f64::NAN, |t| t - restarted_unix),
        first.map_or(f64::NAN, |t| t - killed_unix),
    );
    assert_eq!(
        sent, received,
        "workload A's transfer across gateway A's kill -9"
    );
    assert_eq!(
        leaked(&inet),
        0,
        "packets left gateway A unencrypted while its agent was dead"
    );
    let first =
        first.unwrap_or_else(|| panic!("no reply after the restart\n{}", a.proc.log_text()));
    assert!(
        first - restarted_unix < 5.0,
        "traffic back {} s after the restart",
        first - restarted_unix
    );
    version = check_all("after gateway A's kill -9", &c, &a, &m).max(version);
    // Gateway B's view recovers: it reaches A, and its probes of every path are answered.
    assert!(ping_once(&wlb, "10.10.0.10"), "workload B -> workload A");
    let probe = c
        .ctl(&[
            "probe",
            "gcp-usc1/gwb",
            "aws-use1/gwa",
            "-n",
            "3",
            "-i",
            "200ms",
        ])
        .unwrap();
    let text = String::from_utf8_lossy(&probe.stdout);
    assert!(
        probe.status.success() && text.contains("3 sent, 3 received"),
        "gwb -> gwa probe:\n{text}"
    );
    assert_eq!(
        registrations(&b),
        before_b,
        "gateway B's session was disturbed"
    );
    // A's tunnel report, from the new process: a handshake since the restart.
    let tunnel = wait_for(Duration::from_secs(10), "gateway A's link report", || {
        let links = ctl_json(&c, &["links"])?;
        let t = links
            .as_array()?
            .iter()
            .find(|l| l["a"] == "aws-use1/gwa" && l["b"] == "gcp-usc1/gwb")?
            .clone();
        (t["handshake-age-secs"].as_u64()? <= restarted.elapsed().as_secs()).then_some(t)
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", ctl_json(&c, &["links"])));
    println!("links after the restart: {tunnel}");

    // 4. Site B cut off: its uplink goes down at the router. Traffic to it fails, the
    //    coordinator marks gwb offline after the heartbeat timeout and tells gwa; healed,
    //    traffic and the session come back, with no stale or duplicate route anywhere.
    let before_b = registrations(&b);
    inet.ip(&["link", "set", "b0", "down"]);
    let cut = Instant::now();
    assert!(
        !ping_once(&wla, "10.20.0.10"),
        "site B reachable while cut off"
    );
    let (_, offline) = time_until(
        Duration::from_secs(15),
        "gwb to be offline",
        &|| all_logs(&[&a, &b, &m], &c),
        || (!online(&c, "gcp-usc1/gwb")?).then(|| cut.elapsed()),
    );
    let (told, _) = time_until(
        Duration::from_secs(10),
        "gwa's map to show gwb offline",
        &|| all_logs(&[&a, &b, &m], &c),
        || (a.saved_map()?["peers"]["gcp-usc1/gwb"]["online"] == false).then_some(()),
    );
    println!(
        "partition: gwb offline at the coordinator {offline:?} after the cut (heartbeat timeout \
         {HEARTBEAT_TIMEOUT}), in gwa's map {told:?} later"
    );
    // Nothing moves in the kernels: the routes stay as they were everywhere.
    for (i, (ns, agent)) in [(&gwa, &a), (&gwb, &b), (&ma, &m)].into_iter().enumerate() {
        let now = assert_routes_exact("during the partition", ns, agent);
        assert_eq!(
            now, baseline[i],
            "during the partition: {}'s routes",
            ns.name
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let healed_unix = unix_now();
    inet.ip(&["link", "set", "b0", "up"]);
    let healed = Instant::now();
    let (traffic, _) = time_until(
        Duration::from_secs(15),
        "traffic to site B after the heal",
        &|| all_logs(&[&a, &b, &m], &c),
        || ping_once(&wla, "10.20.0.10").then_some(()),
    );
    let (_, current) = time_until(
        Duration::from_secs(30),
        "gwb back online and every node current",
        &|| all_logs(&[&a, &b, &m], &c),
        || all_current(&c, &ids, healed_unix as u64).map(|_| healed.elapsed()),
    );
    println!(
        "partition healed after {:?}: traffic back in {traffic:?}, every node online and \
         current {current:?} after the heal (gwb {})",
        healed - cut,
        if registrations(&b) == before_b {
            "kept its session"
        } else {
            "registered again"
        }
    );
    assert!(
        traffic < Duration::from_secs(10),
        "traffic back {traffic:?} after the heal"
    );
    assert!(
        current < Duration::from_secs(15),
        "nodes current {current:?} after the heal"
    );
    let after = check_all("after the partition", &c, &a, &m);
    assert!(
        after > version,
        "map version went from {version} to {after}"
    );
    let trace = ping_trace(&wla.name, "10.20.0.10", 200);
    assert_eq!(losses(&trace, 200), (0, 0), "loss after the heal");
}

#[test]
fn agents_register_and_follow_map_changes_through_a_lossy_control_connection() {
    const LOSS: f64 = 0.25;
    let inet = Netns::new("klinet");
    let coord = Netns::new("klcoord");
    let gws: Vec<Netns> = ["klgwa", "klgwb", "klgwc"]
        .iter()
        .map(|t| Netns::new(t))
        .collect();
    inet.sysctl("net.ipv4.ip_forward", "1");
    uplink(&inet, "c0", &coord, "up0", "198.51.100", "10");
    let nets = ["192.0.2", "203.0.113", "198.18.0"];
    for (i, (ns, net)) in gws.iter().zip(nets).enumerate() {
        uplink(&inet, &format!("g{i}"), ns, "up0", net, "10");
    }
    let addr: SocketAddr = "198.51.100.10:7443".parse().unwrap();
    let c = coordinator(
        &coord,
        addr,
        &[
            Site("aws-use1", "10.10.0.0/16"),
            Site("gcp-usc1", "10.20.0.0/16"),
            Site("azure-eus", "10.30.0.0/16"),
        ],
    );
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xC4A05);
    let relay = Relay::start(
        Some(&coord),
        RelaySpec {
            listen: "198.51.100.10:7444".parse().unwrap(),
            upstream_from: "198.51.100.10".parse().unwrap(),
            target: addr,
            seed,
        },
    )
    .unwrap();
    relay.set_loss(LOSS);
    let lossy = relay.local_addr();
    println!("control connection through {lossy}: {LOSS} loss each way, seed {seed} (CHAOS_SEED)");
    let sites = [
        ("aws-use1", "gwa", "10.10.0.0/16"),
        ("gcp-usc1", "gwb", "10.20.0.0/16"),
        ("azure-eus", "gwc", "10.30.0.0/16"),
    ];
    let start = |i: usize| {
        let (site, node, prefix) = sites[i];
        let token = c.token(site, "gateway").unwrap();
        let public = format!("public={}.10:51820", nets[i]);
        Agent::start_in_netns(
            &gws[i].name,
            lossy,
            site,
            node,
            "gateway",
            &token,
            &["--prefix", prefix, "--endpoint", &public],
        )
        .unwrap()
    };
    let started = Instant::now();
    let a = start(0);
    let b = start(1);
    let logs = |agents: &[&Agent]| {
        agents
            .iter()
            .map(|x| x.proc.log_text())
            .collect::<Vec<_>>()
            .join("\n")
    };
    // Enrolment and the session each need a QUIC handshake, which the agent gives 5 s: at
    // this loss one in several fails and is retried after a backoff. 45 s allows five
    // failures in a row (0.25^5 per agent, if nothing else were wrong).
    let (registered, _) = time_until(
        Duration::from_secs(45),
        "gwa and gwb to register and learn each other",
        &|| logs(&[&a, &b]),
        || {
            (a.saved_map()?["peers"].get("gcp-usc1/gwb").is_some()
                && b.saved_map()?["peers"].get("aws-use1/gwa").is_some())
            .then_some(())
        },
    );
    println!("two gateways enrolled, registered and peered through the lossy connection in {registered:?}");
    let b_overlay = b.saved_map().unwrap()["node"]["overlay-ip"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for(
        Duration::from_secs(10),
        "gwa to reach gwb's overlay address",
        || ping_once(&gws[0], &b_overlay).then_some(()),
    )
    .unwrap();

    // A third site joins: both gateways must learn it.
    let joined = Instant::now();
    let gwc = start(2);
    let has = |agent: &Agent, peer: &str| {
        agent
            .saved_map()
            .is_some_and(|m| m["peers"].get(peer).is_some())
    };
    let (_, learned) = time_until(
        Duration::from_secs(45),
        "every gateway to learn the new site",
        &|| logs(&[&a, &b, &gwc]),
        || {
            (has(&a, "azure-eus/gwc")
                && has(&b, "azure-eus/gwc")
                && has(&gwc, "aws-use1/gwa")
                && has(&gwc, "gcp-usc1/gwb"))
            .then(|| joined.elapsed())
        },
    );
    println!(
        "a third site joined: every gateway had it in its map {learned:?} after its token was \
         made and its agent started (enrolment, registration and two map changes)"
    );
    let c_overlay = gwc.saved_map().unwrap()["node"]["overlay-ip"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for(Duration::from_secs(10), "gwa to reach gwc", || {
        ping_once(&gws[0], &c_overlay).then_some(())
    })
    .unwrap();
    for (ns, agent) in [(&gws[0], &a), (&gws[1], &b), (&gws[2], &gwc)] {
        let routes = assert_routes_exact("after the join", ns, agent);
        // Two peers' overlay addresses and prefixes, each with its fail-closed twin, and the
        // overlay's own twin.
        assert_eq!(routes.len(), 9, "{}: {routes:?}", ns.name);
    }

    // The new gateway is revoked: both others must drop it, and its routes.
    let revoked = Instant::now();
    let out = c.ctl(&["revoke", "azure-eus/gwc"]).unwrap();
    assert!(
        out.status.success(),
        "revoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, dropped) = time_until(
        Duration::from_secs(20),
        "the other gateways to drop the revoked one",
        &|| logs(&[&a, &b]),
        || (!has(&a, "azure-eus/gwc") && !has(&b, "azure-eus/gwc")).then(|| revoked.elapsed()),
    );
    println!("revocation reached both other gateways {dropped:?} after `straitctl revoke` began");
    for (ns, agent) in [(&gws[0], &a), (&gws[1], &b)] {
        let routes = assert_routes_exact("after the revocation", ns, agent);
        // Site C's prefix stays closed: its only gateway is gone, not the site.
        let c_routes: Vec<&str> = routes
            .iter()
            .filter(|(p, _)| p == "10.30.0.0/16")
            .map(|(_, t)| t.as_str())
            .collect();
        assert_eq!(c_routes, ["unreachable"], "{routes:?}");
    }
    let (acked, version) = time_until(
        Duration::from_secs(20),
        "gwa and gwb to acknowledge the current map",
        &|| logs(&[&a, &b]),
        || all_current(&c, &["aws-use1/gwa", "gcp-usc1/gwb"], 0),
    );
    println!("both acknowledged map version {version} {acked:?} later");
    assert_maps_agree("after the revocation", &c, &[&a, &b], version);
    let (up, down) = (
        relay.counts(Direction::ToTarget),
        relay.counts(Direction::ToClient),
    );
    println!(
        "relay: to the coordinator {up:?}, back {down:?}; {:?} since the first agent started",
        started.elapsed(),
    );
    assert!(
        up.dropped > 0 && down.dropped > 0,
        "the relay dropped nothing: {up:?} {down:?}"
    );
    assert!(
        ping_once(&gws[0], &b_overlay),
        "gwa -> gwb after the revocation"
    );
}
