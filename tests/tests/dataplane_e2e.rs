//! End to end through the data plane, with real coordinator and agent processes in network
//! namespaces this test creates (root needed; nothing is added to the root namespace).
//!
//! ```text
//!                 +------------------------ inet (router) ------------------------+
//!                 | c0 198.51.100.1/24     a0 192.0.2.1/24      b0 203.0.113.1/24  |
//!                 +-------+-----------------------+--------------------+----------+
//!                         |                       |                    |
//!        coord 198.51.100.10          nata 192.0.2.10 (wan0)    gwb 203.0.113.10
//!        (strait-coordinator)         nftables masquerade       (gateway gcp-usc1)
//!                                     10.99.0.1 (lan0)          10.20.0.1/24 (lan0)
//!                                          |                         |
//!                                     gwa 10.99.0.10 (up0)      wlb 10.20.0.10
//!                                     (gateway aws-use1,        (workload, no agent)
//!                                      behind the NAT)
//!                                     br0 10.10.0.1/24
//!                                      |            |
//!                              wla 10.10.0.10   ma 10.10.0.20
//!                              (workload,       (member aws-use1: reaches gcp-usc1
//!                               no agent)        only through routes its agent installs)
//! ```

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strait_tests::netns::{uplink, veth, Netns, WireguardGo};
use strait_tests::procs::{wait_for, Agent, Coordinator, Site};

fn ping(from: &Netns, to: &str) -> bool {
    from.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "2", to])
        .status
        .success()
}

/// Sends `bytes` of deterministic data over TCP from `client` to `server_ip` on `server` and
/// returns (bytes sent hash, bytes received count and hash).
fn tcp_transfer(server: &Netns, server_ip: &str, client: &Netns, bytes: usize) -> (String, String) {
    const SERVER: &str = "import socket,hashlib\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',5001));s.listen(1);s.settimeout(30)\nc,_=s.accept();c.settimeout(30);h=hashlib.sha256();n=0\nwhile True:\n d=c.recv(65536)\n if not d: break\n h.update(d);n+=len(d)\nprint(n,h.hexdigest())";
    let srv = Command::new("ip")
        .args(["netns", "exec", &server.name, "python3", "-c", SERVER])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    std::thread::sleep(Duration::from_millis(500));
    let client_code = format!(
        "import socket,hashlib\ndata=bytes((i*7+3)%251 for i in range({bytes}))\nc=socket.create_connection(('{server_ip}',5001),timeout=20);c.sendall(data);c.close()\nprint({bytes},hashlib.sha256(data).hexdigest())"
    );
    let sent = client.exec(&["python3", "-c", &client_code]);
    assert!(
        sent.status.success(),
        "client: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let received = srv.wait_with_output().expect("server");
    (
        String::from_utf8_lossy(&sent.stdout).trim().to_string(),
        String::from_utf8_lossy(&received.stdout).trim().to_string(),
    )
}

#[test]
fn sites_reach_each_other_through_gateways_behind_nat_and_survive_the_coordinator() {
    let inet = Netns::new("inet");
    let coord = Netns::new("coord");
    let nata = Netns::new("nata");
    let gwa = Netns::new("gwa");
    let gwb = Netns::new("gwb");
    let wla = Netns::new("wla");
    let ma = Netns::new("ma");
    let wlb = Netns::new("wlb");
    inet.sysctl("net.ipv4.ip_forward", "1");
    uplink(&inet, "c0", &coord, "up0", "198.51.100", "10");
    uplink(&inet, "a0", &nata, "wan0", "192.0.2", "10");
    uplink(&inet, "b0", &gwb, "up0", "203.0.113", "10");
    // Site A's gateway sits behind a masquerading NAT.
    veth(&gwa, "up0", &nata, "lan0");
    nata.ip(&["addr", "add", "10.99.0.1/24", "dev", "lan0"]);
    gwa.ip(&["addr", "add", "10.99.0.10/24", "dev", "up0"]);
    gwa.ip(&["route", "add", "default", "via", "10.99.0.1"]);
    nata.ip(&["route", "add", "10.10.0.0/24", "via", "10.99.0.10"]);
    nata.sysctl("net.ipv4.ip_forward", "1");
    let nft = nata.exec(&[
        "nft",
        "add table ip nat; add chain ip nat post { type nat hook postrouting priority 100 ; } ; add rule ip nat post oifname \"wan0\" masquerade",
    ]);
    assert!(
        nft.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&nft.stderr)
    );
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
    // The member has no default route: it reaches the coordinator by a specific route and
    // site B only through the routes its agent installs.
    ma.ip(&["route", "add", "198.51.100.0/24", "via", "10.10.0.1"]);
    veth(&gwb, "lan0", &wlb, "eth0");
    gwb.ip(&["addr", "add", "10.20.0.1/24", "dev", "lan0"]);
    wlb.ip(&["addr", "add", "10.20.0.10/24", "dev", "eth0"]);
    wlb.ip(&["route", "add", "default", "via", "10.20.0.1"]);

    // An on-prem WireGuard device without an agent, running wireguard-go.
    let ext = Netns::new("ext");
    veth(&ext, "up0", &inet, "e0");
    inet.ip(&["addr", "add", "198.18.0.1/24", "dev", "e0"]);
    ext.ip(&["addr", "add", "198.18.0.10/24", "dev", "up0"]);
    ext.ip(&["route", "add", "default", "via", "198.18.0.1"]);
    ext.ip(&[
        "link", "add", "lan0", "type", "veth", "peer", "name", "lan1",
    ]);
    ext.ip(&["addr", "add", "10.30.0.1/24", "dev", "lan0"]);
    ext.ip(&["link", "set", "lan0", "up"]);
    let genkey = Command::new("wg")
        .arg("genkey")
        .output()
        .expect("wg (wireguard-tools)");
    let ext_private = String::from_utf8(genkey.stdout).unwrap().trim().to_string();
    let mut pubkey = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(pubkey.stdin.as_mut().unwrap(), ext_private.as_bytes()).unwrap();
    let ext_public = String::from_utf8(pubkey.wait_with_output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();
    let external = format!(
        "[[external-peers]]\nname = \"dc1\"\nsite = \"onprem\"\npublic-key = \"{ext_public}\"\nendpoint = \"198.18.0.10:51820\"\nprefixes = [\"10.30.0.0/24\"]\noverlay-ip = \"100.64.255.1\"\n"
    );
    let addr: std::net::SocketAddr = "198.51.100.10:7443".parse().unwrap();
    let mut c = Coordinator::start_in(
        &coord.name,
        addr,
        &[
            Site("aws-use1", "10.10.0.0/16"),
            Site("gcp-usc1", "10.20.0.0/16"),
            Site("onprem", "10.30.0.0/16"),
        ],
        &external,
    )
    .unwrap();

    let ta = c.token("aws-use1", "gateway").unwrap();
    let tb = c.token("gcp-usc1", "gateway").unwrap();
    let tm = c.token("aws-use1", "member").unwrap();
    let a = Agent::start_in_netns(
        &gwa.name,
        addr,
        "aws-use1",
        "gwa",
        "gateway",
        &ta,
        &[
            "--prefix",
            "10.10.0.0/16",
            "--endpoint",
            "public=192.0.2.10:51820",
            "--endpoint",
            "private=10.10.0.1:51820",
        ],
    )
    .unwrap();
    let b = Agent::start_in_netns(
        &gwb.name,
        addr,
        "gcp-usc1",
        "gwb",
        "gateway",
        &tb,
        &[
            "--prefix",
            "10.20.0.0/16",
            "--endpoint",
            "public=203.0.113.10:51820",
            "--endpoint",
            "private=10.20.0.1:51820",
        ],
    )
    .unwrap();
    let m = Agent::start_in_netns(
        &ma.name,
        addr,
        "aws-use1",
        "ma",
        "member",
        &tm,
        &["--endpoint", "private=10.10.0.20:51820"],
    )
    .unwrap();

    wait_for(
        Duration::from_secs(20),
        "the gateways to learn each other and the member its routes",
        || {
            let ma_map = m.saved_map()?;
            (a.saved_map()?["peers"].get("gcp-usc1/gwb").is_some()
                && b.saved_map()?["peers"].get("aws-use1/gwa").is_some()
                && ma_map["routes"].get("10.20.0.0/16").is_some())
            .then_some(())
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n{}\n{}",
            a.proc.log_text(),
            m.proc.log_text(),
            c.log_text()
        )
    });
    // The map is saved before the data plane has applied it (translation and MSS tables,
    // then routes): wait for the kernel's route rather than read it once.
    wait_for(
        Duration::from_secs(10),
        "gateway A's route to site B in table 21332",
        || {
            let out = std::process::Command::new("ip")
                .args([
                    "-n", &gwa.name, "route", "show", "table", "21332", "proto", "83",
                ])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .contains("10.20.0.0/16 dev strait0")
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", a.proc.log_text()));

    // Workload A <-> workload B (A behind NAT initiates; B answers through the mapping).
    wait_for(
        Duration::from_secs(15),
        "workload A to reach workload B",
        || ping(&wla, "10.20.0.10").then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", a.proc.log_text(), b.proc.log_text()));
    assert!(ping(&wlb, "10.10.0.10"), "workload B -> workload A");
    let b_overlay = b.saved_map().unwrap()["node"]["overlay-ip"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        ping(&gwa, &b_overlay),
        "gateway A -> gateway B's overlay address"
    );

    // The member reaches site B only through the route its agent installed via the gateway.
    let member_routes = ma.ip(&["route", "show", "table", "21332", "proto", "83"]);
    assert!(
        member_routes.contains("10.20.0.0/16 via 10.10.0.1"),
        "{member_routes}"
    );
    assert!(ping(&ma, "10.20.0.10"), "member A -> workload B");

    // A TCP transfer with a checksum compared at both ends.
    let (sent, received) = tcp_transfer(&wlb, "10.20.0.10", &wla, 4 << 20);
    assert_eq!(sent, received, "TCP transfer corrupted or incomplete");

    // The external device, configured from `straitctl external-peer config`, talks to site A.
    wait_for(
        Duration::from_secs(10),
        "the gateways to peer with the external device",
        || a.saved_map()?["peers"].get("external/dc1").map(|_| ()),
    )
    .unwrap();
    let out = c.ctl(&["external-peer", "config", "dc1"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = String::from_utf8(out.stdout).unwrap();
    assert!(
        config.contains("PrivateKey = <this device's private key>"),
        "{config}"
    );
    assert!(
        config.contains("Endpoint = 192.0.2.10:51820") && config.contains("10.10.0.0/16"),
        "{config}"
    );
    let setconf: String = config
        .lines()
        .filter(|l| !l.starts_with("Address"))
        .map(|l| l.replace("<this device's private key>", &ext_private) + "\n")
        .collect();
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("wg0.conf");
    std::fs::write(&conf, setconf).unwrap();
    let wg_go = WireguardGo::start(&ext, "wgx");
    let wg_if = &wg_go.interface;
    let set = ext.exec(&["wg", "setconf", wg_if.as_str(), conf.to_str().unwrap()]);
    assert!(
        set.status.success(),
        "wg setconf: {}",
        String::from_utf8_lossy(&set.stderr)
    );
    ext.ip(&["addr", "add", "100.64.255.1/32", "dev", wg_if.as_str()]);
    ext.ip(&["link", "set", wg_if.as_str(), "up"]);
    for line in config
        .lines()
        .filter_map(|l| l.strip_prefix("AllowedIPs = "))
    {
        for prefix in line.split(", ") {
            ext.ip(&["route", "add", prefix, "dev", wg_if.as_str()]);
        }
    }
    let reached = wait_for(
        Duration::from_secs(15),
        "workload A to reach the external device",
        || ping(&wla, "10.30.0.1").then_some(()),
    );
    let back = ping(&ext, "10.10.0.10");
    drop(wg_go);
    reached.unwrap_or_else(|e| panic!("{e}\n{}", a.proc.log_text()));
    assert!(back, "external device -> workload A");

    // The coordinator dies: traffic keeps flowing for 10 s.
    c.proc.as_mut().unwrap().kill();
    let started = Instant::now();
    let flow = wla.exec(&["ping", "-c", "20", "-i", "0.5", "-W", "1", "10.20.0.10"]);
    let text = String::from_utf8_lossy(&flow.stdout);
    assert!(started.elapsed() >= Duration::from_secs(9));
    assert!(
        flow.status.success() && text.contains(" 0% packet loss"),
        "traffic stopped without the coordinator:\n{text}"
    );
    // It comes back and the agents reconnect by themselves.
    c.start().unwrap();
    wait_for(Duration::from_secs(30), "the agents to reconnect", || {
        let nodes = c.ctl_json(&["nodes"]).ok()?;
        let nodes = nodes.as_array()?;
        (nodes.len() == 3 && nodes.iter().all(|n| n["online"] == true)).then_some(())
    })
    .unwrap();

    // A clean stop leaves only the fail-closed routes and the rule (so the stopped node
    // refuses traffic for other sites); `strait-agent uninstall` removes them too.
    let mut a = a;
    a.proc.stop();
    let left = gwa.ip(&["route", "show", "table", "21332", "proto", "83"]);
    assert!(
        !left.trim().is_empty() && left.lines().all(|l| l.starts_with("unreachable ")),
        "routes left after a clean stop: {left}"
    );
    assert!(gwa.ip(&["rule", "show"]).contains("lookup 21332"));
    let out = strait_tests::procs::command("strait-agent", Some(&gwa.name))
        .arg("uninstall")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = gwa.ip(&["route", "show", "table", "21332", "proto", "83"]);
    assert!(
        left.trim().is_empty(),
        "routes left after uninstall: {left}"
    );
    let rules = gwa.ip(&["rule", "show"]);
    assert!(
        !rules.contains("lookup 21332"),
        "routing rule left after uninstall: {rules}"
    );

    // Gateway B restarts on a host where a connected network now overlaps site A's prefix:
    // the route is refused, reported to the coordinator, and not installed; the rest is
    // reconciled without duplicates.
    let mut b = b;
    b.proc.kill();
    gwb.ip(&[
        "link", "add", "clash0", "type", "veth", "peer", "name", "clash1",
    ]);
    gwb.ip(&["addr", "add", "10.10.5.1/24", "dev", "clash0"]);
    gwb.ip(&["link", "set", "clash0", "up"]);
    let b = Agent::run_in_netns(
        b.dir,
        &gwb.name,
        addr,
        "gcp-usc1",
        "gwb",
        "gateway",
        "",
        &[
            "--prefix",
            "10.20.0.0/16",
            "--endpoint",
            "public=203.0.113.10:51820",
        ],
    )
    .unwrap();
    let conflict = wait_for(
        Duration::from_secs(20),
        "the conflict to be reported",
        || {
            let routes = c.ctl_json(&["routes"]).ok()?;
            routes
                .as_array()?
                .iter()
                .find(|r| r["status"] == "conflict" && r["node"] == "gwb")
                .cloned()
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", b.proc.log_text()));
    assert_eq!(conflict["prefix"], "10.10.0.0/16");
    assert!(
        conflict["reason"]
            .as_str()
            .unwrap()
            .contains("connected route 10.10.5.0/24"),
        "{conflict}"
    );
    let installed = gwb.ip(&["route", "show", "table", "21332", "proto", "83"]);
    assert!(
        !installed.contains("10.10.0.0/16"),
        "a conflicting route was installed: {installed}"
    );
    let mut lines: Vec<&str> = installed.lines().collect();
    let count = lines.len();
    lines.sort();
    lines.dedup();
    assert_eq!(
        lines.len(),
        count,
        "duplicate routes after a restart: {installed}"
    );
}
