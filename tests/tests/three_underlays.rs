//! Two gateways joined by three underlays of different MTUs, workloads on jumbo LANs behind
//! them (no agent on the workloads). Root needed; every namespace is this test's own.
//!
//! ```text
//!            +--- x0 10.255.0.1/30 ==== IPv4, MTU 1400 ==== x0 10.255.0.2/30 ---+
//!   inet (router)                                                         inet2 (router)
//!            +--- y0 2001:db8:ff::1 == IPv6, MTU 1280 ==== y0 2001:db8:ff::2 ---+
//!      | a0 192.0.2.1, 2001:db8:a::1   | c0 198.51.100.1            | b0 203.0.113.1, 2001:db8:b::1
//!      |                               coord 198.51.100.10          |
//!   gwa up0 192.0.2.10, 2001:db8:a::10 (1500)                    gwb up0 203.0.113.10, 2001:db8:b::10 (1500)
//!   gwa ic0 172.31.255.1 ============ interconnect, MTU 9000 ============ gwb ic0 172.31.255.2
//!   gwa lan0 (9001) 10.10.0.1, fd10:0:0:1::1                     gwb lan0 (9001) 10.20.0.1, fd20:0:0:1::1
//!      |                                                            |
//!   wla 10.10.0.10, fd10:0:0:1::10                               wlb 10.20.0.10, fd20:0:0:1::10
//! ```
//!
//! Each gateway announces three endpoints: `interconnect` (ic0), `public` IPv4 (cost 10) and
//! `public` IPv6 (cost 20), so traffic takes the interconnect, then the IPv4 internet path
//! (1400: "fragmentation needed" from the router, or nothing), then the IPv6 path (1280).
//!
//! - `each_of_three_underlays_carries_full_segments_and_failover_does_not_stall`: on each
//!   path in turn (the others cut), 30 MB TCP transfers both ways at the path's full segment
//!   size, and DF pings one byte over the path's limit answered with "fragmentation needed"
//!   / "packet too big" (IPv4 and IPv6 workloads on the IPv6 path); the interconnect is cut
//!   in the middle of a transfer, and the longest time the receiver gets nothing is
//!   measured against the failover's own time.
//! - `three_underlays_converge_when_the_routers_drop_icmp`: the routers send neither
//!   "fragmentation needed" nor "packet too big"; each path's MTU is still found (the time
//!   printed).

use std::time::{Duration, Instant, SystemTime};

use strait_tests::netns::{lan, uplink, veth, Netns};
use strait_tests::procs::{metric, wait_for, Agent, Coordinator, Site};
use strait_tests::traffic::{self, df_ping, longest_stall, reports_mtu, RxSampler};

const SITES: &[Site<'static>] = &[
    Site("aws-use1", "10.10.0.0/16,fd10::/48"),
    Site("gcp-usc1", "10.20.0.0/16,fd20::/48"),
];

/// gwa's paths to gwb, as its metrics label them.
const IC: &str = r#"{peer="gcp-usc1/gwb",path_kind="interconnect",address="172.31.255.2:51820"}"#;
const V4: &str = r#"{peer="gcp-usc1/gwb",path_kind="public",address="203.0.113.10:51820"}"#;
const V6: &str = r#"{peer="gcp-usc1/gwb",path_kind="public",address="[2001:db8:b::10]:51820"}"#;
/// gwb's paths to gwa.
const B_V4: &str = r#"{peer="aws-use1/gwa",path_kind="public",address="192.0.2.10:51820"}"#;
const B_V6: &str = r#"{peer="aws-use1/gwa",path_kind="public",address="[2001:db8:a::10]:51820"}"#;

struct Mesh {
    _ns: Vec<Netns>,
    inet: Netns,
    gwa: Netns,
    gwb: Netns,
    wla: Netns,
    wlb: Netns,
    _c: Coordinator,
    a: Agent,
    b: Agent,
    _config: tempfile::TempDir,
    /// When the agents were started.
    started: Instant,
    started_at: SystemTime,
}

impl Mesh {
    fn metrics_a(&self) -> String {
        curl(&self.gwa, "http://192.0.2.10:9464/metrics")
    }

    fn metrics_b(&self) -> String {
        curl(&self.gwb, "http://203.0.113.10:9464/metrics")
    }

    /// gwa's route to gwb's IPv4 prefix.
    fn route_a(&self) -> String {
        self.gwa
            .ip(&["route", "show", "table", "21332", "10.20.0.0/16"])
    }

    /// Waits until gwa's route to gwb's prefix has MTU `a` and gwb's route to gwa's one an
    /// MTU in `b` (each gateway clamps the SYNs it forwards to its own route's MTU; the two
    /// searches may end a few bytes apart).
    fn wait_routes(&self, a: u32, b: std::ops::RangeInclusive<u32>, within: Duration) {
        wait_for(within, &format!("route MTUs {a} and {b:?}"), || {
            let route_b = self
                .gwb
                .ip(&["route", "show", "table", "21332", "10.10.0.0/16"]);
            (route_mtu(&self.route_a()) == Some(a)
                && route_mtu(&route_b).is_some_and(|m| b.contains(&m)))
            .then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    fn logs(&self) -> String {
        format!(
            "{}\n{}\n--- gwa\n{}\n--- gwb\n{}",
            self.metrics_a(),
            self.route_a(),
            self.a.proc.log_text(),
            self.b.proc.log_text()
        )
    }

    /// Waits until `path` carries the tunnel on gwa and `b_path` on gwb; how long it took.
    fn wait_active(&self, path: &str, b_path: &str, within: Duration) -> Duration {
        let t0 = Instant::now();
        wait_for(within, &format!("{path} in use both ways"), || {
            let on = |m: String, p: &str| m.contains(&format!("strait_path_active{p} 1"));
            (on(self.metrics_a(), path) && on(self.metrics_b(), b_path)).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
        t0.elapsed()
    }

    /// Transfers in both directions (IPv4 workloads), each at segment size `mss`.
    fn transfers(&self, what: &str, mss: std::ops::RangeInclusive<u64>) {
        for (from, to, addr, dir) in [
            (&self.wla, &self.wlb, "10.20.0.10", "A->B"),
            (&self.wlb, &self.wla, "10.10.0.10", "B->A"),
        ] {
            let t = traffic::transfer(from, to, addr, &format!("{dir} {what}"), 60)
                .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
            assert!(
                mss.contains(&t.mss),
                "{dir} {what}: segment size {} not in {mss:?}",
                t.mss
            );
        }
    }
}

/// The MTU of a route as `ip route` prints it.
fn route_mtu(route: &str) -> Option<u32> {
    let mut words = route.split_whitespace().skip_while(|w| *w != "mtu");
    words.nth(1)?.parse().ok()
}

fn curl(ns: &Netns, url: &str) -> String {
    let out = ns.exec(&["curl", "-s", "--max-time", "5", url]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn nft(ns: &Netns, script: &str) {
    let out = ns.exec(&["nft", script]);
    assert!(
        out.status.success(),
        "nft {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the namespaces and starts the coordinator and both gateways' agents; returns once
/// workload A reaches workload B. With `drop_icmp` the routers send no "fragmentation
/// needed" and no "packet too big".
fn mesh(tag: &str, drop_icmp: bool) -> Mesh {
    let inet = Netns::new(&format!("{tag}i"));
    let inet2 = Netns::new(&format!("{tag}j"));
    let coord = Netns::new(&format!("{tag}c"));
    let gwa = Netns::new(&format!("{tag}a"));
    let gwb = Netns::new(&format!("{tag}b"));
    let wla = Netns::new(&format!("{tag}wa"));
    let wlb = Netns::new(&format!("{tag}wb"));
    for r in [&inet, &inet2] {
        r.sysctl("net.ipv4.ip_forward", "1");
        r.sysctl("net.ipv6.conf.all.forwarding", "1");
    }
    uplink(&inet, "c0", &coord, "up0", "198.51.100", "10");
    uplink(&inet, "a0", &gwa, "up0", "192.0.2", "10");
    uplink(&inet2, "b0", &gwb, "up0", "203.0.113", "10");
    // The same uplinks carry IPv6.
    for (r, outside, gw, net) in [
        (&inet, "a0", &gwa, "2001:db8:a"),
        (&inet2, "b0", &gwb, "2001:db8:b"),
    ] {
        r.ip(&[
            "addr",
            "add",
            &format!("{net}::1/64"),
            "dev",
            outside,
            "nodad",
        ]);
        gw.ip(&[
            "addr",
            "add",
            &format!("{net}::10/64"),
            "dev",
            "up0",
            "nodad",
        ]);
        gw.ip(&["-6", "route", "add", "default", "via", &format!("{net}::1")]);
    }
    // Between the routers: IPv4 over a 1400 hop, IPv6 over a 1280 one.
    veth(&inet, "x0", &inet2, "x0");
    veth(&inet, "y0", &inet2, "y0");
    for (r, v4, v6) in [
        (&inet, "10.255.0.1", "2001:db8:ff::1"),
        (&inet2, "10.255.0.2", "2001:db8:ff::2"),
    ] {
        r.ip(&["link", "set", "x0", "mtu", "1400"]);
        r.ip(&["link", "set", "y0", "mtu", "1280"]);
        r.ip(&["addr", "add", &format!("{v4}/30"), "dev", "x0"]);
        r.ip(&["addr", "add", &format!("{v6}/64"), "dev", "y0", "nodad"]);
    }
    inet.ip(&["route", "add", "203.0.113.0/24", "via", "10.255.0.2"]);
    inet2.ip(&["route", "add", "default", "via", "10.255.0.1"]);
    inet.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:b::/64",
        "via",
        "2001:db8:ff::2",
    ]);
    inet2.ip(&["-6", "route", "add", "default", "via", "2001:db8:ff::1"]);
    if drop_icmp {
        // Clouds drop ICMP: the routers neither say "fragmentation needed" nor "packet too big".
        for r in [&inet, &inet2] {
            nft(
                r,
                "add table inet noicmp; add chain inet noicmp out { type filter hook output priority 0; }; \
                 add rule inet noicmp out icmp type destination-unreachable icmp code frag-needed drop; \
                 add rule inet noicmp out icmpv6 type packet-too-big drop",
            );
        }
    }
    // The interconnect, and jumbo LANs (AWS: 9001).
    veth(&gwa, "ic0", &gwb, "ic0");
    for (gw, addr) in [(&gwa, "172.31.255.1/30"), (&gwb, "172.31.255.2/30")] {
        gw.ip(&["link", "set", "ic0", "mtu", "9000"]);
        gw.ip(&["addr", "add", addr, "dev", "ic0"]);
    }
    lan(&gwa, &wla, "10.10.0", "fd10:0:0:1");
    lan(&gwb, &wlb, "10.20.0", "fd20:0:0:1");
    for (gw, wl) in [(&gwa, &wla), (&gwb, &wlb)] {
        gw.ip(&["link", "set", "lan0", "mtu", "9001"]);
        wl.ip(&["link", "set", "eth0", "mtu", "9001"]);
    }

    let config = tempfile::tempdir().unwrap();
    let addr: std::net::SocketAddr = "198.51.100.10:7443".parse().unwrap();
    let c = Coordinator::start_in(&coord.name, addr, SITES, "").unwrap();
    let start =
        |ns: &Netns, site: &str, node: &str, prefixes: &str, ic: &str, v4: &str, v6: &str| {
            let file = config.path().join(format!("{node}.toml"));
            std::fs::write(
                &file,
                format!(
                    "endpoints = [\n  {{ address = \"{ic}:51820\", kind = \"interconnect\" }},\n  \
                 {{ address = \"{v4}:51820\", kind = \"public\", cost = 10 }},\n  \
                 {{ address = \"[{v6}]:51820\", kind = \"public\", cost = 20 }},\n]\n"
                ),
            )
            .unwrap();
            let token = c.token(site, "gateway").unwrap();
            let metrics = format!("{v4}:9464");
            let file = file.display().to_string();
            let args = [
                "--config",
                &file,
                "--prefix",
                prefixes,
                "--probe-interval",
                "200ms",
                "--metrics-listen",
                &metrics,
            ];
            Agent::start_in_netns(&ns.name, addr, site, node, "gateway", &token, &args).unwrap()
        };
    let started = Instant::now();
    let started_at = SystemTime::now();
    let a = start(
        &gwa,
        "aws-use1",
        "gwa",
        "10.10.0.0/16,fd10::/48",
        "172.31.255.1",
        "192.0.2.10",
        "2001:db8:a::10",
    );
    let b = start(
        &gwb,
        "gcp-usc1",
        "gwb",
        "10.20.0.0/16,fd20::/48",
        "172.31.255.2",
        "203.0.113.10",
        "2001:db8:b::10",
    );
    wait_for(
        Duration::from_secs(25),
        "workload A to reach workload B",
        || (wla.ping_flow("10.20.0.10", 1).1 == 1).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", a.proc.log_text(), b.proc.log_text()));
    println!("tunnel up {:?} after the agents started", started.elapsed());
    Mesh {
        _ns: vec![inet2, coord],
        inet,
        gwa,
        gwb,
        wla,
        wlb,
        _c: c,
        a,
        b,
        _config: config,
        started,
        started_at,
    }
}

/// Waits until gwa knows all three paths' MTUs: the interconnect's 9000, the IPv4 path's
/// within a search's 8 bytes under 1400, the IPv6 path's 1280 (the search's floor); prints
/// when gwa's log says each was found, and returns the IPv4 path's MTU.
fn wait_mtus(m: &Mesh, within: Duration) -> u32 {
    let v4 = wait_for(within, "the three paths' MTUs", || {
        let text = m.metrics_a();
        let mtu = |p: &str| metric(&text, &format!("strait_path_mtu_bytes{p}")).map(|v| v as u32);
        let v4 = mtu(V4).filter(|v| (1392..=1400).contains(v))?;
        (mtu(IC) == Some(9000) && mtu(V6) == Some(1280)).then_some(v4)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", m.logs()));
    let log = m.a.proc.log_text();
    let found: Vec<String> = [
        ("172.31.255.2:51820", 9000),
        ("203.0.113.10:51820", v4),
        ("[2001:db8:b::10]:51820", 1280),
    ]
    .iter()
    .map(|(address, mtu)| {
        let at = log
            .lines()
            .filter(|l| {
                l.contains("path MTU")
                    && l.contains(&format!("address={address} "))
                    && l.contains(&format!("to=Some({mtu})"))
            })
            .find_map(|l| humantime::parse_rfc3339_weak(l.split_whitespace().next()?).ok())
            .and_then(|t| t.duration_since(m.started_at).ok());
        format!("{address} {mtu} at {at:.2?}")
    })
    .collect();
    println!("gwa found, after the agents started: {}", found.join(", "));
    v4
}

#[test]
fn each_of_three_underlays_carries_full_segments_and_failover_does_not_stall() {
    let m = mesh("tu", false);
    let v4_mtu = wait_mtus(&m, Duration::from_secs(20));
    println!(
        "path MTUs 9000 / {v4_mtu} / 1280 known {:?} after the agents started",
        m.started.elapsed()
    );

    // 1. The interconnect: jumbo segments (9000 - 60 of outer headers = 8940 on the route
    //    and the TUN device; MSS 8940 - 40 of TCP/IP headers - 12 of timestamps).
    m.wait_active(IC, IC_B, Duration::from_secs(10));
    m.wait_routes(8940, 8940..=8940, Duration::from_secs(5));
    let tun = &m.gwa.json(&["link", "show", "strait0"])[0];
    assert_eq!(tun["mtu"], 8940, "TUN MTU raised for the jumbo path: {tun}");
    m.transfers("over the 9000 interconnect", 8888..=8888);
    over_the_limit(&m, 8940, false);

    // 2. The interconnect is cut 2 s into a 7 s transfer: the failover to the IPv4 internet
    //    path, and the longest time the receiving workload gets nothing.
    let port = strait_tests::procs::free_tcp_port().to_string();
    let mut server = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &m.wlb.name,
            "iperf3",
            "-s",
            "-1",
            "-p",
            &port,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let sampler = RxSampler::start(&m.wlb, "eth0", Duration::from_millis(50), 400);
    let client = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &m.wla.name,
            "timeout",
            "30",
            "iperf3",
            "-c",
            "10.20.0.10",
            "-p",
        ])
        .arg(&port)
        .args(["-t", "7", "-J"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    m.gwb.ip(&["link", "set", "ic0", "down"]);
    let cut = sampler.started.elapsed();
    let cut_at = SystemTime::now();
    m.wait_active(V4, B_V4, Duration::from_secs(5));
    let out = client.wait_with_output().unwrap();
    let _ = server.wait();
    let samples = sampler.finish();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        out.status.success() && json["end"]["sum_sent"]["bytes"].as_f64().unwrap_or(0.0) > 0.0,
        "the transfer did not survive the failover\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        m.logs()
    );
    // Each side's failover: from the cut to its log's "path switched".
    let fa = switched(&m.a.proc.log_text(), "203.0.113.10:51820", cut_at);
    let fb = switched(&m.b.proc.log_text(), "192.0.2.10:51820", cut_at);
    let (Some(fa), Some(fb)) = (fa, fb) else {
        panic!("no switch logged: gwa {fa:?}, gwb {fb:?}\n{}", m.logs());
    };
    let failover = fa.max(fb);
    // "Nothing received": under 2 KB in 50 ms.
    let (stall, at) = longest_stall(
        &samples,
        cut.saturating_sub(Duration::from_millis(500)),
        2048,
    );
    let got = samples.last().map_or(0, |s| s.1) - samples.first().map_or(0, |s| s.1);
    println!(
        "interconnect cut at {cut:.2?}: failover gwa {fa:.2?}, gwb {fb:.2?}; longest stall {stall:.2?} from {at:.2?}; \
         {:.1} MB received",
        got as f64 / 1e6
    );
    let after: Vec<u64> = samples
        .windows(2)
        .filter(|w| w[0].0 >= cut && w[0].0 < cut + Duration::from_secs(3))
        .map(|w| (w[1].1 - w[0].1) / 1000)
        .collect();
    println!("KB received per 50 ms from the cut: {after:?}");
    assert!(
        stall <= failover + STALL_MARGIN,
        "stalled {stall:?}, the failover took {failover:?}"
    );
    m.wait_routes(v4_mtu - 60, 1392 - 60..=1400 - 60, Duration::from_secs(2));

    // 3. The IPv4 internet path (1400 hop): segments of its size. The MTU each side found
    //    may differ by a few bytes (each searches to within 8).
    m.transfers("over the 1400 hop", 1392 - 60 - 52..=1400 - 60 - 52);
    over_the_limit(&m, v4_mtu - 60, false);

    // 4. IPv4 cut between the sites (the tunnel's datagrams dropped on the router): the
    //    IPv6 path, 1280 - 80 (IPv6 outer headers are 20 bytes more) = 1200.
    nft(
        &m.inet,
        "add table ip cut; add chain ip cut block { type filter hook forward priority 0; }; \
         add rule ip cut block udp dport 51820 drop",
    );
    let took = m.wait_active(V6, B_V6, Duration::from_secs(10));
    println!("failover from IPv4 to IPv6 in {took:?}");
    m.wait_routes(1200, 1200..=1200, Duration::from_secs(5));
    m.transfers("over the IPv6 1280 path", 1148..=1148);
    let v6 = traffic::transfer(
        &m.wla,
        &m.wlb,
        "fd20:0:0:1::10",
        "A->B IPv6 workloads over the IPv6 path",
        60,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // IPv6 in IPv6: 1200 - 40 - 20 of TCP and timestamps.
    assert_eq!(v6.mss, 1128);
    over_the_limit(&m, 1200, true);
    let _ = (&m.a, &m.b);
}

/// How long after `after` an agent's log says it switched to the path to `to`.
fn switched(log: &str, to: &str, after: SystemTime) -> Option<Duration> {
    log.lines()
        .filter(|l| l.contains("path switched") && l.contains(&format!("to={to}")))
        .filter_map(|l| humantime::parse_rfc3339_weak(l.split_whitespace().next()?).ok())
        .find_map(|t| t.duration_since(after).ok())
}

/// gwb's interconnect path to gwa, as its metrics label it.
const IC_B: &str = r#"{peer="aws-use1/gwa",path_kind="interconnect",address="172.31.255.1:51820"}"#;

/// How much longer than the failover the receiver may get nothing: a round trip over the
/// new path and one sample interval.
const STALL_MARGIN: Duration = Duration::from_millis(300);

/// A DF ping one byte over the tunnel's `limit` (inner bytes) gets "fragmentation needed"
/// with that MTU, and one that fits crosses; with `v6`, the same over IPv6 ("packet too
/// big").
fn over_the_limit(m: &Mesh, limit: u32, v6: bool) {
    let mut cases = vec![("10.20.0.10", limit - 28)];
    if v6 {
        cases.push(("fd20:0:0:1::10", limit - 48));
    }
    for (to, fits) in cases {
        // Forget what earlier errors taught the workload, so the answer is the gateway's.
        for family in ["-4", "-6"] {
            m.wla.ip(&[family, "route", "flush", "cache"]);
        }
        let (ok, text) = df_ping(&m.wla, to, fits + 1);
        assert!(
            !ok && reports_mtu(&text, limit),
            "a DF ping one byte over {limit} to {to} got no error with the MTU:\n{text}"
        );
        println!(
            "DF ping to {to} one byte over {limit}: {}",
            text.lines().find(|l| l.contains("mtu")).unwrap_or("")
        );
        let (ok, text) = df_ping(&m.wla, to, fits);
        assert!(
            ok,
            "a DF ping of exactly {limit} to {to} did not cross:\n{text}"
        );
    }
}

#[test]
fn three_underlays_converge_when_the_routers_drop_icmp() {
    let m = mesh("tq", true);
    let v4_mtu = wait_mtus(&m, Duration::from_secs(30));
    println!(
        "with no ICMP from the routers: path MTUs 9000 / {v4_mtu} / 1280 known {:?} after the agents started",
        m.started.elapsed()
    );
    // The interconnect cut: the IPv4 path's MTU applies at once (it was found while
    // standing by).
    m.wait_active(IC, IC_B, Duration::from_secs(10));
    m.gwb.ip(&["link", "set", "ic0", "down"]);
    let took = m.wait_active(V4, B_V4, Duration::from_secs(10));
    m.wait_routes(v4_mtu - 60, 1392 - 60..=1400 - 60, Duration::from_secs(2));
    println!("failover to the 1400 path in {took:?}, its MTU applied");
    m.transfers(
        "over the 1400 hop, no ICMP from the routers",
        1392 - 60 - 52..=1400 - 60 - 52,
    );
    let _ = (&m.inet, &m.a, &m.b);
}
