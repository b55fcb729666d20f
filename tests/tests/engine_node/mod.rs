//! A Strait engine on a real TUN device, running on its own thread inside a network
//! namespace, for the agent's namespace tests.

// Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use boringtun::x25519::StaticSecret;
use strait_agent::dataplane::engine::{self, PeerSpec};
use strait_agent::dataplane::netlink::Netlink;
use strait_agent::dataplane::pump::{self, Counters};
use strait_agent::dataplane::routes::Route;
use strait_agent::wgkey::WgKey;
use strait_tests::netns::{enter, Netns};
use tokio::sync::watch;

/// A running engine; stops when dropped.
pub struct Node {
    pub counters: Arc<Counters>,
    peers: Option<watch::Sender<Vec<PeerSpec>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        // Closing the peer channel ends `pump::run`.
        self.peers.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts an engine in `ns`: TUN `strait0` with address `own` (e.g. 100.64.0.1/10) and MTU
/// 1420, `routes` reconciled into it (any conflict fails the start), UDP port 51820, one peer.
pub fn start(
    ns: &Netns,
    secret: StaticSecret,
    own: &str,
    routes: Vec<Route>,
    peer: PeerSpec,
) -> Node {
    let path = ns.path();
    let own: ipnetwork::IpNetwork = own.parse().unwrap();
    let counters = Arc::new(Counters::default());
    let (peers_tx, peers_rx) = watch::channel(vec![peer]);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let c = counters.clone();
    let thread = std::thread::spawn(move || {
        enter(&path);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let setup = async {
                let tun = engine::create_tun("strait0", 1420).map_err(|e| format!("tun: {e}"))?;
                let nl = Netlink::connect().map_err(|e| e.to_string())?;
                let index = nl
                    .link_index("strait0")
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("no strait0")?;
                nl.configure_link(index, own, 1420)
                    .await
                    .map_err(|e| e.to_string())?;
                let plan = nl
                    .reconcile(&routes, index)
                    .await
                    .map_err(|e| e.to_string())?;
                if !plan.conflicts.is_empty() {
                    return Err(format!("conflicts: {:?}", plan.conflicts));
                }
                nl.ensure_rules().await.map_err(|e| e.to_string())?;
                let socket =
                    std::net::UdpSocket::bind("0.0.0.0:51820").map_err(|e| e.to_string())?;
                socket2::SockRef::from(&socket)
                    .set_mark(strait_agent::dataplane::routes::FWMARK)
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((tun, socket))
            };
            match setup.await {
                Ok((tun, socket)) => {
                    let _ = ready_tx.send(Ok(()));
                    let engine = engine::Engine::new(secret, Duration::from_secs(1));
                    let (status, _) = watch::channel(Vec::new());
                    // No on-demand probes here: the sender is dropped at once.
                    let (_, pings) = tokio::sync::mpsc::channel(1);
                    // The key never changes here (the sender stays alive until the end).
                    let (keys_tx, keys) = watch::channel(Arc::new(WgKey::generate()));
                    // No access policy here (every packet passes); the sender is dropped.
                    let (_, access) = watch::channel(Arc::default());
                    let feeds = pump::Feeds {
                        keys,
                        peers: peers_rx,
                        pings,
                        access,
                    };
                    let (up, _) = watch::channel(Vec::new());
                    pump::run(tun, socket, engine, feeds, c, status, up)
                        .await
                        .expect("engine");
                    drop(keys_tx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("engine thread")
        .expect("engine setup");
    Node {
        counters,
        peers: Some(peers_tx),
        thread: Some(thread),
    }
}
