//! Replays the fuzz corpora of the `messages` and `configs` targets
//! (`fuzz/corpus/messages/`, `fuzz/corpus/configs/`) through the coordinator's checks, as
//! the fuzzer runs them, so plain `cargo test` catches a regression on any input the fuzzer
//! ever found interesting. The agent's half of `configs` is replayed by
//! `agent/tests/fuzz_corpus.rs`. See `fuzz/README.md` for running the fuzzer itself.

use std::fs;
use std::path::PathBuf;

use strait_coordinator::fuzzing;
use strait_proto::fuzzing::{replay_corpus, write_seed};

#[test]
fn messages_corpus_replays_cleanly() {
    replay_corpus("messages", fuzzing::messages);
}

#[test]
fn configs_corpus_replays_cleanly() {
    replay_corpus("configs", fuzzing::coordinator_config);
}

/// Writes the coordinator's seed inputs into both corpora. Run by hand when the config or
/// the core change: `cargo test -p strait-coordinator --test fuzz_corpus -- --ignored
/// write_seed_corpus`, then let the fuzzer grow the corpora and minimize them (see
/// `fuzz/README.md`).
#[test]
#[ignore = "writes fuzz/corpus/{configs,messages}; run by hand"]
fn write_seed_corpus() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for (name, path) in [
        (
            "coordinator-kubernetes",
            "deploy/kubernetes/coordinator/coordinator.toml",
        ),
        (
            "coordinator-eks",
            "deploy/kubernetes/overlays/eks-with-coordinator/coordinator.toml",
        ),
    ] {
        let text = fs::read(root.join(path)).unwrap();
        write_seed("configs", name, &text, fuzzing::coordinator_config);
    }
    let good = "mesh = \"prod\"\nstate-dir = \"/tmp/x\"\n\
                [[sites]]\nname = \"aws-use1\"\ncloud = \"aws\"\nregion = \"us-east-1\"\n\
                prefixes = [\"10.10.0.0/16\", \"fd00:10::/48\"]\n\
                [[sites]]\nname = \"gcp-usc1\"\nprefixes = [\"10.20.0.0/16\"]\nfull-mesh = true\n";
    let ext = "[[external-peers]]\nname = \"dc1\"\nsite = \"aws-use1\"\n\
               public-key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n\
               endpoint = \"198.18.0.10:51820\"\nprefixes = [\"10.10.9.0/24\"]\n\
               overlay-ip = \"100.64.0.1\"\n";
    let seeds = [
        ("coordinator-sites", good.to_string()),
        ("coordinator-external", format!("{good}{ext}")),
        (
            "coordinator-everything",
            format!(
                "name = \"backup\"\nlisten = \"[::]:7443\"\noverlay-cidr = \"100.64.0.0/30\"\n\
                 heartbeat-timeout = \"1m 30s\"\nmetrics-listen = \"127.0.0.1:9465\"\n{good}\
                 [pki]\nmode = \"builtin\"\nagent-cert-lifetime = \"12h\"\n\
                 [throughput-probes]\ninterval = \"10m\"\nduration = \"30s\"\n"
            ),
        ),
        (
            "coordinator-vault",
            format!(
                "{}[pki]\nmode = \"vault\"\n[pki.vault]\naddress = \"https://v:8200\"\n\
                 role = \"r\"\nauth = \"approle\"\nrole-id = \"x\"\nsecret-id-file = \"/dev/zero\"\n\
                 cert-ttl = \"24h\"\n",
                good.replace("mesh = \"prod\"\n", "mesh = \"prod\"\nname = \"c\"\n")
            ),
        ),
        (
            // Overflowed before (found by the fuzzer in an agent config).
            "coordinator-vault-huge-ttl",
            format!(
                "{good}[pki]\nmode = \"vault\"\n[pki.vault]\naddress = \"https://v:8200\"\n\
                 role = \"r\"\nauth = \"kubernetes\"\nkubernetes-role = \"k\"\n\
                 cert-ttl = \"4584946418820579308m\"\n"
            ),
        ),
        (
            "coordinator-ipv6-overlay",
            format!("overlay-cidr = \"fd00::/64\"\n{good}"),
        ),
        (
            "coordinator-overlaps",
            good.replace("10.20.0.0/16", "10.10.128.0/17"),
        ),
        (
            "coordinator-two-external",
            format!(
                "{good}{ext}{}",
                ext.replace("dc1", "dc2")
                    .replace("AAAAAAAA", "BBBBBBBB")
                    .replace("100.64.0.1", "100.64.0.2")
            ),
        ),
        ("coordinator-bad-duration", format!("heartbeat-timeout = \"soon\"\n{good}")),
        (
            "coordinator-policy",
            format!(
                "{good}{ext}[policy]\ndefault = \"deny\"\n\
                 [[policy.rules]]\nname = \"web\"\nfrom = \"aws-use1\"\nto = \"gcp-usc1\"\n\
                 ports = [\"tcp/443\", \"tcp/8000-8100\", \"icmp\"]\n\
                 [[policy.rules]]\naction = \"deny\"\nfrom = [\"10.20.1.0/24\", \"gcp-usc1\"]\n\
                 to = [\"10.10.9.0/24\", \"fd00:10:0:1::/64\"]\nports = \"udp/53\"\n\
                 [[policy.rules]]\nfrom = \"100.64.0.0/10\"\nto = \"100.64.0.0/10\"\nports = \"any\"\n"
            ),
        ),
        (
            "coordinator-policy-bad",
            format!(
                "{good}[policy]\ndefault = \"allow\"\n\
                 [[policy.rules]]\nfrom = \"aws-use1\"\nto = \"10.10.0.0/8\"\nports = \"tcp/99999\"\n"
            ),
        ),
    ];
    for (name, text) in seeds {
        write_seed(
            "configs",
            name,
            text.as_bytes(),
            fuzzing::coordinator_config,
        );
    }

    for (name, data) in message_seeds() {
        write_seed("messages", name, &data, fuzzing::messages);
    }
}

// Indices into fuzzing::SITES, NAMES, SERIALS and the role lists.
const A: u8 = 0;
const B: u8 = 1;
const C: u8 = 2;
const EXTERNAL: u8 = 3;
const GW: u8 = 0;
const GW2: u8 = 1;
const M1: u8 = 2;
const DC1: u8 = 3;
const GATEWAY: u8 = 0;
const MEMBER: u8 = 1;
const OPERATOR: u8 = 3;

// Prefixes as the harness reads them (3 bytes each).
const P_A: [u8; 3] = [4, 16, 0]; // 10.1.0.0/16
const P_A_SUB: [u8; 3] = [4, 24, 5]; // 10.1.5.0/24
const P_B: [u8; 3] = [8, 16, 0]; // 10.2.0.0/16
const P_C: [u8; 3] = [12, 16, 0]; // 10.3.0.0/16
const P_DEFAULT: [u8; 3] = [3, 0, 0]; // 0.0.0.0/0
const P_V6: [u8; 3] = [0x81, 48, 0]; // fd00:1::/48
const P_HOST_BITS: [u8; 3] = [0x14, 16, 0]; // 10.1.0.1/16

/// Operations in the harness's byte format (see `strait_coordinator::fuzzing::messages`).
struct Ops(Vec<u8>);

impl Ops {
    fn new(flags: u8) -> Ops {
        Ops(vec![flags])
    }

    fn push(&mut self, bytes: &[u8]) -> &mut Ops {
        self.0.extend_from_slice(bytes);
        self
    }

    fn register(&mut self, node: (u8, u8), role: u8, key: u8, prefixes: &[[u8; 3]]) -> &mut Ops {
        // One private endpoint (10.2.0.12:51820, no cost), no known version, serial "01".
        self.push(&[0, node.0, node.1, role, key, 1, 0, 12, prefixes.len() as u8]);
        for p in prefixes {
            self.push(p);
        }
        self.push(&[0, 0])
    }

    fn heartbeat(&mut self, node: (u8, u8), version: u64) -> &mut Ops {
        self.push(&[1, node.0, node.1]).push(&version.to_be_bytes())
    }

    fn links(&mut self, node: (u8, u8), peer: (u8, u8)) -> &mut Ops {
        self.push(&[2, node.0, node.1, 1, peer.0, peer.1, 1, 2, 12, 1])
            .push(&5u64.to_be_bytes())
            .push(&1000u64.to_be_bytes())
            .push(&2000u64.to_be_bytes())
            // One path: interconnect 10.2.0.12, up, active, rtt 400 us.
            .push(&[1, 2, 12, 1, 1, 1])
            .push(&400u64.to_be_bytes())
            .push(&20u64.to_be_bytes())
            .push(&0.25f64.to_bits().to_be_bytes())
    }

    fn conflicts(&mut self, node: (u8, u8), prefix: [u8; 3]) -> &mut Ops {
        self.push(&[3, node.0, node.1, 1]).push(&prefix).push(&[0])
    }

    fn revoke(&mut self, node: (u8, u8)) -> &mut Ops {
        self.push(&[4, 0, node.0, node.1])
    }

    fn revoke_by_name(&mut self, name: u8) -> &mut Ops {
        self.push(&[4, 2, name])
    }

    fn tick(&mut self) -> &mut Ops {
        self.push(&[5])
    }

    fn issued(&mut self, node: (u8, u8), serial: u8, lifetime: u16) -> &mut Ops {
        self.push(&[6, node.0, node.1, serial])
            .push(&lifetime.to_be_bytes())
    }

    fn token(&mut self, site: u8, role: u8, ttl: u16, name: u8) -> &mut Ops {
        self.push(&[7, site, role]).push(&ttl.to_be_bytes()).push(&[
            site.wrapping_mul(31),
            0,
            0,
            10,
            2,
            name,
        ])
    }

    fn throughput(&mut self, node: (u8, u8), peer: (u8, u8)) -> &mut Ops {
        self.push(&[8, node.0, node.1, peer.0, peer.1])
            .push(&940.5f64.to_bits().to_be_bytes())
    }

    fn restart(&mut self) -> &mut Ops {
        self.push(&[9])
    }

    fn probe(&mut self, a: (u8, u8), b: (u8, u8)) -> &mut Ops {
        self.push(&[10, 0, a.0, a.1, 0, b.0, b.1])
    }

    fn wait(&mut self, secs: u8) -> &mut Ops {
        self.push(&[11, secs])
    }

    fn bytes(&self) -> Vec<u8> {
        self.0.clone()
    }
}

fn message_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut basic = Ops::new(0);
    basic
        .register((A, GW), GATEWAY, 0, &[P_A])
        .register((B, GW), GATEWAY, 1, &[P_B])
        .register((A, M1), MEMBER, 2, &[])
        .heartbeat((A, GW), 3)
        .probe((A, GW), (B, GW))
        .links((A, GW), (B, GW))
        .throughput((A, GW), (B, GW))
        .conflicts((A, M1), P_B)
        .wait(5)
        .tick()
        .wait(20)
        .tick()
        .heartbeat((B, GW), 7)
        .revoke((B, GW))
        .register((B, GW), GATEWAY, 1, &[P_B])
        .restart()
        .tick();

    let mut failover = Ops::new(0);
    failover
        .register((A, GW), GATEWAY, 0, &[P_A])
        .register((B, GW), GATEWAY, 1, &[P_B])
        .register((B, GW2), GATEWAY, 2, &[P_B])
        .register((A, M1), MEMBER, 3, &[])
        .wait(11)
        .heartbeat((B, GW2), 4)
        .heartbeat((A, GW), 4)
        .tick()
        .wait(11)
        .heartbeat((B, GW), 5)
        .tick();

    let mut full_mesh = Ops::new(1 | 8 | 16 | 128);
    full_mesh
        .register((A, GW), GATEWAY, 0, &[P_A, P_V6])
        .register((B, M1), MEMBER, 1, &[])
        .register((B, DC1), MEMBER, 2, &[])
        .register((A, M1), MEMBER, 3, &[])
        .probe((B, M1), (A, GW))
        .probe((A, M1), (B, M1))
        .register((A, M1), GATEWAY, 3, &[P_A_SUB])
        .register((A, M1), MEMBER, 3, &[]);

    let mut tokens = Ops::new(0);
    tokens
        .token(A, GATEWAY, 60, GW)
        .token(B, MEMBER, 0, M1)
        .token(EXTERNAL, GATEWAY, 60, GW)
        .token(A, 2, 60, GW)
        .issued((A, GW), 2, 100)
        .issued((B, GW), 1, 1)
        .register((B, GW), GATEWAY, 0, &[P_B])
        .revoke_by_name(GW)
        .wait(200)
        .revoke((A, GW))
        .revoke_by_name(GW);

    let mut small_overlay = Ops::new(4 | 8);
    for (i, name) in [GW, GW2, M1, DC1].into_iter().enumerate() {
        small_overlay.register((A, name), GATEWAY, i as u8, &[P_A]);
    }
    small_overlay
        .register((B, GW), GATEWAY, 5, &[P_B])
        .register((B, GW2), GATEWAY, 6, &[P_B])
        .revoke((A, GW2))
        .register((B, GW2), GATEWAY, 6, &[P_B]);

    let mut refusals = Ops::new(2);
    refusals
        .register(
            (B, GW),
            GATEWAY,
            0,
            &[P_B, P_A_SUB, P_DEFAULT, P_V6, P_HOST_BITS],
        )
        .register((C, GW), GATEWAY, 1, &[P_C, P_C])
        .register((A, GW), GATEWAY, 7, &[P_A])
        .register((A, M1), OPERATOR, 2, &[]);

    let mut clock = Ops::new(0);
    clock
        .register((A, GW), GATEWAY, 0, &[P_A])
        .register((B, GW), GATEWAY, 1, &[P_B])
        .push(&[11, 255, 3])
        .heartbeat((A, GW), u64::MAX)
        .tick()
        .wait(250)
        .tick()
        .heartbeat((B, GW), 0);

    // An external peer named gw (flag 32) in site a (8) and a site c (2); a node of the
    // undeclared site external would be external/gw too.
    let mut external_gw = Ops::new(2 | 8 | 32);
    external_gw
        .register((A, GW), GATEWAY, 0, &[P_A])
        .register((B, GW), GATEWAY, 1, &[P_B])
        .register((C, GW), GATEWAY, 2, &[P_C])
        .register((EXTERNAL, GW), GATEWAY, 3, &[P_C])
        .heartbeat((C, GW), 1);

    vec![
        ("external-gw", external_gw.bytes()),
        ("basic", basic.bytes()),
        ("failover", failover.bytes()),
        ("full-mesh", full_mesh.bytes()),
        ("tokens", tokens.bytes()),
        ("small-overlay", small_overlay.bytes()),
        ("refusals", refusals.bytes()),
        ("clock", clock.bytes()),
    ]
}
