//! Network namespaces for end-to-end tests: created with `ip netns add`, named uniquely per
//! test and process, deleted on drop (also when the test fails). Nothing is ever added to
//! the root namespace.

use std::process::{Command, Output};

pub struct Netns {
    pub name: String,
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2 `ip` must be installed");
    assert!(
        out.status.success(),
        "ip {args:?}: {} (end-to-end tests need root)",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Netns {
    /// Packets sent by `dev` in this namespace so far (its kernel counter).
    pub fn tx_packets(&self, dev: &str) -> u64 {
        self.json(&["-s", "link", "show", dev])[0]["stats64"]["tx"]["packets"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Pings `to` from this namespace: see [`ping_flow`].
    pub fn ping_flow(&self, to: &str, count: u32) -> (u32, u32) {
        ping_flow(&self.name, to, count)
    }

    /// A new namespace `s<tag>-<pid>` (short: interface names inside are ours to choose).
    pub fn new(tag: &str) -> Netns {
        let name = format!("s{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> ARGS`, panicking with the error on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        let out = self.exec(&["sysctl", "-qw", &format!("{key}={value}")]);
        assert!(
            out.status.success(),
            "sysctl {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A veth pair between two namespaces, named `a_if` in `a` and `b_if` in `b`.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    ip(&[
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// Connects `ns` to the router namespace `router` on `net`.0/24 (a documentation range,
/// say): `inside` in `ns` gets `net.host`, `outside` in the router gets `net.1`, and `ns`
/// routes everything through the router.
pub fn uplink(router: &Netns, outside: &str, ns: &Netns, inside: &str, net: &str, host: &str) {
    veth(ns, inside, router, outside);
    router.ip(&["addr", "add", &format!("{net}.1/24"), "dev", outside]);
    ns.ip(&["addr", "add", &format!("{net}.{host}/24"), "dev", inside]);
    ns.ip(&["route", "add", "default", "via", &format!("{net}.1")]);
}

/// A workload behind gateway `gw` on `lan0`, with an IPv4 and an IPv6 address.
pub fn lan(gw: &Netns, wl: &Netns, net4: &str, net6: &str) {
    veth(wl, "eth0", gw, "lan0");
    gw.ip(&["addr", "add", &format!("{net4}.1/24"), "dev", "lan0"]);
    gw.ip(&[
        "addr",
        "add",
        &format!("{net6}::1/64"),
        "dev",
        "lan0",
        "nodad",
    ]);
    wl.ip(&["addr", "add", &format!("{net4}.10/24"), "dev", "eth0"]);
    wl.ip(&[
        "addr",
        "add",
        &format!("{net6}::10/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    wl.ip(&["route", "add", "default", "via", &format!("{net4}.1")]);
    wl.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        &format!("{net6}::1"),
    ]);
}

impl Netns {
    /// `ip -n <ns> -j ARGS`, parsed (`Null` when the output is empty).
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ip(&all)).unwrap_or(serde_json::Value::Null)
    }

    /// The namespace's file, for `setns`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

/// Enters the namespace at `path` on the calling thread (only this thread moves).
pub fn enter(path: &str) {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).expect("namespace file");
    // SAFETY: setns on a valid namespace fd changes only the calling thread's namespace.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// Runs `f` on a new thread inside `ns` and returns its result (netlink sockets belong to
/// the namespace of the thread that opens them).
pub fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = ns.path();
    std::thread::spawn(move || {
        enter(&path);
        f()
    })
    .join()
    .expect("namespace thread")
}

/// Debian's `wireguard-go` running in the foreground inside a namespace; killed on drop.
pub struct WireguardGo {
    child: std::process::Child,
    /// The interface it created.
    pub interface: String,
}

impl WireguardGo {
    /// Starts wireguard-go in `ns` and waits (at most 10 s) for its interface. The name is
    /// `<prefix><pid>`: wireguard-go's control socket (`/var/run/wireguard/<if>.sock`) is
    /// shared by all namespaces, so a name unique to this process lets test runs overlap.
    pub fn start(ns: &Netns, prefix: &str) -> WireguardGo {
        let interface = format!("{prefix}{}", std::process::id());
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "wireguard-go", "-f", &interface])
            .env("WG_PROCESS_FOREGROUND", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("wireguard-go must be installed (apt-get install wireguard-go)");
        let wg = WireguardGo { child, interface };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !ns
            .exec(&["ip", "link", "show", &wg.interface])
            .status
            .success()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "wireguard-go did not create {}",
                wg.interface
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        wg
    }
}

impl Drop for WireguardGo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the future `f` makes on a single-threaded tokio runtime on a new thread inside `ns`
/// (so netlink sockets and TUN devices it opens belong to `ns`), and returns its output.
pub fn block_on_in<T, F>(ns: &Netns, f: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: std::future::Future<Output = T>,
{
    in_netns(ns, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(f())
    })
}

/// Pings `to` from namespace `ns` `count` times at 10 ms (1 s timeout each); returns
/// (sent, received).
pub fn ping_flow(ns: &str, to: &str, count: u32) -> (u32, u32) {
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-q", "-i", "0.01", "-W", "1", "-c",
        ])
        .arg(count.to_string())
        .arg(to)
        .output()
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().find(|l| l.contains("packets transmitted")) else {
        // No route at all (a fail-closed `unreachable` route): ping sends nothing.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("No route to host") || err.contains("unreachable"),
            "no ping summary in {text}{err}"
        );
        return (count, 0);
    };
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}
