//! Replays the fuzz corpora of the `configs` and `probes` targets (`fuzz/corpus/configs/`,
//! `fuzz/corpus/probes/`) through the agent's checks, as the fuzzer runs them, so plain
//! `cargo test` catches a regression on any input the fuzzer ever found interesting. The
//! coordinator's half of `configs` is replayed by `coordinator/tests/fuzz_corpus.rs`. See
//! `fuzz/README.md` for running the fuzzer itself.

use std::fs;
use std::path::PathBuf;

use strait_agent::fuzzing;
use strait_proto::fuzzing::{replay_corpus, write_seed};

#[test]
fn configs_corpus_replays_cleanly() {
    replay_corpus("configs", fuzzing::agent_config);
}

#[test]
fn probes_corpus_replays_cleanly() {
    replay_corpus("probes", fuzzing::probes);
}

#[test]
fn carry_corpus_replays_cleanly() {
    replay_corpus("carry", fuzzing::carry);
}

/// Writes the agent's seed inputs into both corpora. Run by hand when the config or the
/// probes change: `cargo test -p strait-agent --test fuzz_corpus -- --ignored
/// write_seed_corpus`, then let the fuzzer grow the corpora and minimize them (see
/// `fuzz/README.md`).
#[test]
#[ignore = "writes fuzz/corpus/{configs,probes}; run by hand"]
fn write_seed_corpus() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for (name, path) in [
        ("agent-systemd", "deploy/systemd/agent.example.toml"),
        ("agent-kubernetes", "deploy/kubernetes/base/agent.toml"),
    ] {
        let text = fs::read(root.join(path)).unwrap();
        write_seed("configs", name, &text, fuzzing::agent_config);
    }
    let minimal = "mesh = \"prod\"\nsite = \"aws-use1\"\nnode = \"gw-1\"\nrole = \"gateway\"\n\
                   coordinators = [\"192.0.2.1:7443\", \"[2001:db8::1]:7443\"]\n\
                   state-dir = \"/var/lib/strait\"\n";
    let agent_seeds = [
        ("agent-minimal", minimal.to_string()),
        (
            "agent-full",
            format!(
                "{minimal}join-token = \" strait1.x \"\ndataplane = \"none\"\nlisten-port = 0\n\
                 endpoints = [{{ address = \"10.0.0.1:51820\", kind = \"private\", cost = 3 }}]\n\
                 prefixes = [\"10.10.0.0/16\", \"fd00::/64\"]\n\
                 heartbeat-interval = \"200ms\"\nprobe-interval = \"1m\"\n\
                 metrics-listen = \"[::1]:9464\"\ntun-name = \"strait-123456789\"\nmtu = 9000\n\
                 persistent-keepalive = 0\n"
            ),
        ),
        (
            "agent-token-file",
            format!("{minimal}join-token-file = \"/dev/zero\"\n"),
        ),
        (
            "agent-vault-kubernetes",
            format!(
                "{minimal}[vault]\naddress = \"https://vault:8200\"\nrole = \"r\"\n\
                 auth = \"kubernetes\"\nkubernetes-role = \"k\"\ncert-ttl = \"90m\"\n"
            ),
        ),
        (
            "agent-vault-token",
            format!("{minimal}[vault]\naddress = \"http://127.0.0.1:8200\"\nrole = \"r\"\nauth = \"token\"\n"),
        ),
        (
            "agent-bad-values",
            format!("{minimal}mtu = 100\ntun-name = \"a/b\"\nprobe-interval = \"1ns\"\n"),
        ),
        ("agent-unknown-key", format!("{minimal}colour = \"blue\"\n")),
        ("agent-member-hostname", minimal.replace("node = \"gw-1\"\n", "").replace("gateway", "member")),
    ];
    for (name, text) in agent_seeds {
        write_seed("configs", name, text.as_bytes(), fuzzing::agent_config);
    }

    for (name, data) in probe_seeds() {
        write_seed("probes", name, &data, fuzzing::probes);
    }
    for (name, data) in carry_seeds() {
        write_seed("carry", name, &data, fuzzing::carry);
    }
}

/// Carry queries: signed by the bench (first byte odd) with no prefix, one IPv4 and one
/// IPv6 prefix, a count larger than the list, a bad family; and unsigned garbage.
fn carry_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let signed = |body: &[u8]| {
        let mut d = vec![1u8];
        d.extend_from_slice(body);
        d
    };
    let mut v4v6 = vec![0u8, 2, 4, 16, 10, 20, 0, 0, 6, 48];
    v4v6.extend([
        0x20, 0x01, 0x0d, 0xb8, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    vec![
        ("carry-empty", signed(&[0, 0])),
        ("carry-v4-v6", signed(&v4v6)),
        (
            "carry-count-too-large",
            signed(&[0, 9, 4, 16, 10, 20, 0, 0]),
        ),
        ("carry-bad-family", signed(&[0, 1, 5, 16, 10, 20, 0, 0])),
        ("carry-garbage", vec![0, b'S', b'P', 1, 4, 0, 0, 0]),
    ]
}

/// A control byte for a datagram: peer id (4), signed (8), from path `from` (0-3).
fn ctrl(id: bool, signed: bool, from: u8) -> u8 {
    1 | if id { 4 } else { 0 } | if signed { 8 } else { 0 } | from << 4
}

fn datagram(ctrl: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![ctrl, bytes.len() as u8];
    out.extend_from_slice(bytes);
    out
}

/// A probe's 36 bytes (sender and MAC zero: the control byte fills them in).
fn probe(version: u8, kind: u8, seq: u64) -> Vec<u8> {
    let mut p = vec![b'S', b'P', version, kind];
    p.extend([0; 8]);
    p.extend(seq.to_be_bytes());
    p.extend([0; 16]);
    p
}

/// Time moves on `n * 20` ms and the probe timer runs.
fn tick(n: u8) -> Vec<u8> {
    vec![0, n]
}

fn probe_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let authentic = |from, kind, seq| datagram(ctrl(true, true, from), &probe(1, kind, seq));
    let mut interconnect_wins = Vec::new();
    // Each second the engine probes both paths (odd sequence numbers on the public path,
    // even ones on the interconnect); only the interconnect answers.
    for round in 0..6u64 {
        interconnect_wins.extend(authentic(1, 2, 2 * round + 2));
        interconnect_wins.extend(tick(50));
    }
    let mut both = Vec::new();
    for round in 0..4u64 {
        both.extend(authentic(0, 2, 2 * round + 1));
        both.extend(authentic(1, 2, 2 * round + 2));
        both.extend(authentic(1, 2, 2 * round + 2));
        both.extend(tick(50));
    }
    let mut handshake = vec![1, 0, 0, 0];
    handshake.resize(148, 0x11);
    let mut data = vec![4, 0, 0, 0, 0, 0, 0x01];
    data.resize(64, 0);
    vec![
        ("request", authentic(0, 1, 77)),
        ("request-from-stranger", authentic(2, 1, 1)),
        ("reply", [authentic(0, 2, 1), authentic(1, 2, 2)].concat()),
        (
            "reply-replayed",
            [authentic(0, 2, 1), authentic(0, 2, 1)].concat(),
        ),
        ("reply-ping-bit", authentic(0, 2, 1 << 63)),
        ("interconnect-wins", interconnect_wins),
        ("both-answer", both),
        ("forged", datagram(ctrl(true, false, 0), &probe(1, 2, 1))),
        (
            "unknown-sender",
            datagram(ctrl(false, true, 0), &probe(1, 2, 1)),
        ),
        ("version-2", datagram(ctrl(true, true, 0), &probe(2, 1, 1))),
        ("kind-3", datagram(ctrl(true, true, 0), &probe(1, 3, 1))),
        (
            "short",
            datagram(ctrl(true, true, 0), &probe(1, 1, 1)[..35]),
        ),
        (
            "wireguard-handshake",
            datagram(ctrl(false, false, 3), &handshake),
        ),
        ("wireguard-data", datagram(ctrl(false, false, 1), &data)),
        ("ticks", [tick(255), tick(255), tick(1)].concat()),
    ]
}
