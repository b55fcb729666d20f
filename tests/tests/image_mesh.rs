//! The container image as a two-site mesh: a coordinator container and two gateway agent
//! containers, each in a network namespace this test creates (podman `--network ns:`, the
//! container equivalent of Kubernetes' hostNetwork), pass traffic between the sites'
//! workloads. Needs root, podman and the image: `#[ignore]`d in `cargo test --workspace`;
//! CI runs it after building the image (`.ci/run`, step "image: two-site mesh"):
//!
//! ```text
//! STRAIT_IMAGE=localhost/strait:0.1.0 cargo test -p strait-tests --test image_mesh -- --ignored
//! ```
//!
//! ```text
//!            +------------------------- inet (router) ---------------------------+
//!            | c0 198.51.100.1/24      a0 192.0.2.1/24        b0 203.0.113.1/24   |
//!            +------+------------------------+------------------------+-----------+
//!                   |                        |                        |
//!      coord 198.51.100.10        gwa 192.0.2.10 (up0)       gwb 203.0.113.10 (up0)
//!      [strait-coordinator,       [strait-agent, gateway     [strait-agent, gateway
//!       user 65532, no caps]       aws-use1, NET_ADMIN only]  gcp-usc1, NET_ADMIN only]
//!                                 lan0 10.10.0.1/24          lan0 10.20.0.1/24
//!                                    |                          |
//!                                 wla 10.10.0.10             wlb 10.20.0.10
//!                                 (workload, no agent)       (workload, no agent)
//! ```
//!
//! Each gateway serves its metrics on its LAN address only: the test checks they answer
//! there and not on the public address.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strait_tests::container::{podman_ok, run_once, Container};
use strait_tests::netns::{uplink, veth, Netns};
use strait_tests::procs::wait_for;

const COORD: &str = "198.51.100.10:7443";

fn ns_opt(ns: &Netns) -> String {
    format!("--network=ns:{}", ns.path())
}

/// `straitctl ARGS` in a container in the coordinator's namespace, with the operator
/// certificate `strait-coordinator init` wrote.
fn straitctl(coord: &Netns, operator: &Path, args: &[&str]) -> std::process::Output {
    let net = ns_opt(coord);
    let mount = format!("{}:/etc/strait/operator:ro", operator.display());
    let mut cmd = vec![
        "straitctl",
        "--coordinator",
        COORD,
        "--timeout",
        "3s",
        "--tls-dir",
        "/etc/strait/operator",
    ];
    cmd.extend_from_slice(args);
    run_once(&[&net, "--read-only", "-v", &mount], &cmd)
}

fn gateway_config(site: &str, node: &str, public: &str, lan: &str, prefix: &str) -> String {
    format!(
        r#"mesh = "prod"
site = "{site}"
node = "{node}"
role = "gateway"
coordinators = ["{COORD}"]
state-dir = "/var/lib/strait/agent"
listen-port = 51820
endpoints = [{{ address = "{public}:51820", kind = "public" }}]
prefixes = ["{prefix}"]
# The LAN address only: the public address does not expose the metrics.
metrics-listen = "{lan}:9464"
join-token-file = "/etc/strait/join-token"
"#
    )
}

/// Starts a gateway agent container in `ns` with `config` and `token`.
fn gateway(tag: &str, ns: &Netns, dir: &Path, config: &str, token: &str) -> Container {
    let conf = dir.join("conf");
    let state = dir.join("state");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(conf.join("agent.toml"), config).unwrap();
    std::fs::write(conf.join("join-token"), token).unwrap();
    for f in ["agent.toml", "join-token"] {
        std::fs::set_permissions(conf.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // The agent skips the write when forwarding is on (a container's /proc/sys is
    // read-only): the Kubernetes gateways' enable-forwarding init container does the same.
    ns.sysctl("net.ipv4.ip_forward", "1");
    let net = ns_opt(ns);
    let conf_mount = format!("{}:/etc/strait:ro", conf.display());
    let state_mount = format!("{}:/var/lib/strait", state.display());
    Container::run(
        tag,
        &[
            &net,
            // Root with CAP_NET_ADMIN alone (effective): the TUN device and netlink.
            "--user=0",
            "--cap-drop=all",
            "--cap-add=NET_ADMIN",
            "--device=/dev/net/tun",
            "--read-only",
            "--security-opt=no-new-privileges",
            "-v",
            &conf_mount,
            "-v",
            &state_mount,
        ],
        &["strait-agent", "run", "--config", "/etc/strait/agent.toml"],
    )
}

/// Sends `bytes` over TCP from `client` to `server_ip:5001` in `server`; (sent, received)
/// as "count sha256" each.
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

/// An HTTP GET of `url` from `ns`; the body, or None if the connection fails.
fn http_get(ns: &Netns, url: &str) -> Option<String> {
    let code = format!(
        "import urllib.request\nprint(urllib.request.urlopen('{url}', timeout=3).read().decode())"
    );
    let out = ns.exec(&["python3", "-c", &code]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ping(from: &Netns, to: &str) -> bool {
    from.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "2", to])
        .status
        .success()
}

#[test]
#[ignore = "needs root, podman and the image (STRAIT_IMAGE); CI runs it after deploy/image/build.sh"]
fn the_image_runs_a_two_site_mesh_that_passes_traffic() {
    let image = strait_tests::container::image();
    let labels = podman_ok(&["image", "inspect", "--format", "{{json .Labels}}", &image]);
    assert!(
        labels.contains("org.opencontainers.image.version")
            && labels.contains("org.opencontainers.image.source")
            && labels.contains("org.opencontainers.image.revision"),
        "image labels: {labels}"
    );

    let inet = Netns::new("iinet");
    let coord = Netns::new("icoord");
    let gwa = Netns::new("igwa");
    let gwb = Netns::new("igwb");
    let wla = Netns::new("iwla");
    let wlb = Netns::new("iwlb");
    inet.sysctl("net.ipv4.ip_forward", "1");
    uplink(&inet, "c0", &coord, "up0", "198.51.100", "10");
    uplink(&inet, "a0", &gwa, "up0", "192.0.2", "10");
    uplink(&inet, "b0", &gwb, "up0", "203.0.113", "10");
    for (gw, wl, net) in [(&gwa, &wla, "10.10.0"), (&gwb, &wlb, "10.20.0")] {
        veth(gw, "lan0", wl, "eth0");
        gw.ip(&["addr", "add", &format!("{net}.1/24"), "dev", "lan0"]);
        wl.ip(&["addr", "add", &format!("{net}.10/24"), "dev", "eth0"]);
        wl.ip(&["route", "add", "default", "via", &format!("{net}.1")]);
    }

    // The coordinator: `init` then `serve`, as the image's default user (65532), with no
    // capability, on a read-only root.
    let dir = tempfile::Builder::new()
        .prefix("strait-image-")
        .tempdir()
        .unwrap();
    let coord_dir = dir.path().join("coordinator");
    std::fs::create_dir_all(&coord_dir).unwrap();
    let chown = Command::new("chown")
        .args(["65532:65532"])
        .arg(&coord_dir)
        .status()
        .unwrap();
    assert!(chown.success());
    let coord_mount = format!("{}:/var/lib/strait-coordinator", coord_dir.display());
    let init = run_once(
        &["--network=none", "--read-only", "-v", &coord_mount],
        &[
            "strait-coordinator",
            "init",
            "--state-dir",
            "/var/lib/strait-coordinator/state",
            "--mesh",
            "prod",
            "--listen",
            COORD,
            "--site",
            "aws-use1:aws:us-east-1:10.10.0.0/16",
            "--site",
            "gcp-usc1:gcp:us-central1:10.20.0.0/16",
        ],
    );
    assert!(
        init.status.success(),
        "coordinator init: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let c = Container::run(
        "coord",
        &[
            &ns_opt(&coord),
            "--cap-drop=all",
            "--read-only",
            "--security-opt=no-new-privileges",
            "-v",
            &coord_mount,
        ],
        &[
            "strait-coordinator",
            "serve",
            "--config",
            "/var/lib/strait-coordinator/state/coordinator.toml",
        ],
    );
    let operator = coord_dir.join("state/operator");
    wait_for(Duration::from_secs(30), "the coordinator to answer", || {
        straitctl(&coord, &operator, &["status"])
            .status
            .success()
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let users = podman_ok(&["top", &c.name, "huser", "user"]);
    assert!(
        users
            .lines()
            .skip(1)
            .all(|l| l.split_whitespace().all(|u| u == "65532")),
        "the coordinator runs as 65532 (host and container): {users}"
    );
    assert_eq!(c.inspect("{{.HostConfig.CapAdd}}"), "[]");

    let token = |site: &str| {
        let out = straitctl(
            &coord,
            &operator,
            &[
                "token", "create", "--site", site, "--role", "gateway", "--ttl", "10m",
            ],
        );
        assert!(
            out.status.success(),
            "token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let a_dir = dir.path().join("gwa");
    let b_dir = dir.path().join("gwb");
    let a = gateway(
        "gwa",
        &gwa,
        &a_dir,
        &gateway_config("aws-use1", "gwa", "192.0.2.10", "10.10.0.1", "10.10.0.0/16"),
        &token("aws-use1"),
    );
    let b = gateway(
        "gwb",
        &gwb,
        &b_dir,
        &gateway_config(
            "gcp-usc1",
            "gwb",
            "203.0.113.10",
            "10.20.0.1",
            "10.20.0.0/16",
        ),
        &token("gcp-usc1"),
    );

    let started = Instant::now();
    wait_for(
        Duration::from_secs(60),
        "workload A to reach workload B through the containers",
        || ping(&wla, "10.20.0.10").then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}\n{}", a.logs(), b.logs(), c.logs()));
    let joined = started.elapsed();
    assert!(ping(&wlb, "10.10.0.10"), "workload B -> workload A");
    let routes = gwa.ip(&["route", "show", "table", "21332"]);
    assert!(routes.contains("10.20.0.0/16 dev strait0"), "{routes}");

    let before = gwa.json(&["-s", "link", "show", "strait0"])[0]["stats64"]["tx"]["bytes"]
        .as_u64()
        .unwrap_or(0);
    let bytes = 8 << 20;
    let t = Instant::now();
    let (sent, received) = tcp_transfer(&wlb, "10.20.0.10", &wla, bytes);
    let took = t.elapsed();
    assert_eq!(sent, received, "TCP transfer corrupted or incomplete");
    let after = gwa.json(&["-s", "link", "show", "strait0"])[0]["stats64"]["tx"]["bytes"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        after - before >= bytes as u64,
        "the transfer went through gateway A's TUN device: {} bytes",
        after - before
    );
    eprintln!(
        "image mesh: joined and first ping in {joined:.1?}; {bytes} bytes over TCP A->B in {took:.2?}, \
         {} bytes into gwa's strait0",
        after - before
    );

    // Metrics on the LAN address, not on the public one.
    let metrics = http_get(&wla, "http://10.10.0.1:9464/metrics").expect("metrics on the LAN");
    assert!(metrics.contains("strait_"), "{metrics}");
    assert!(
        http_get(&inet, "http://192.0.2.10:9464/metrics").is_none(),
        "metrics must not answer on the public address"
    );
    assert!(a.running() && b.running() && c.running());
    let status = straitctl(&coord, &operator, &["status"]);
    eprintln!("{}", String::from_utf8_lossy(&status.stdout));
}
