//! Trust boundaries, tried as a hostile user would with the CLI and a join token or
//! certificate of their own (no root: the control plane on loopback, `--dataplane none`).
//! Each test is the regression test of a defect that was found that way.

use std::time::Duration;

use serde_json::Value;
use strait_pki::ca::{BuiltinCa, Validity};
use strait_pki::{Identity, Role};
use strait_tests::procs::{wait_for, Agent, Coordinator, Site};

const SITES: &[Site<'static>] = &[Site("aws-use1", "10.10.0.0/16")];

fn node<'a>(nodes: &'a Value, id: &str) -> Option<&'a Value> {
    nodes
        .as_array()?
        .iter()
        .find(|n| format!("{}/{}", n["site"], n["name"]).replace('"', "") == id)
}

/// A member token cannot enroll a node under a gateway's name, and a member certificate
/// naming the gateway (as a too-permissive Vault role could issue) cannot register in its
/// place: the gateway keeps its role, overlay address and session.
#[test]
fn a_node_name_belongs_to_one_identity() {
    let mut c = Coordinator::init(SITES, "").unwrap();
    c.start().unwrap();
    let token = c.token("aws-use1", "gateway").unwrap();
    let gateway = Agent::start(
        c.addr,
        "aws-use1",
        "gw1",
        "gateway",
        &token,
        &[
            "--prefix",
            "10.10.0.0/16",
            "--endpoint",
            "private=10.10.0.5:51820",
        ],
    )
    .unwrap();
    let before = wait_for(Duration::from_secs(20), "the gateway to register", || {
        let nodes = c.ctl_json(&["nodes"]).ok()?;
        node(&nodes, "aws-use1/gw1")
            .filter(|n| n["online"] == true)
            .cloned()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.log_text()));
    assert_eq!(before["role"], "gateway", "{before}");

    // 1. Enrollment with a member token under the gateway's name: refused, named.
    let member_token = c.token("aws-use1", "member").unwrap();
    let mut impostor = Agent::start(
        c.addr,
        "aws-use1",
        "gw1",
        "member",
        &member_token,
        &["--endpoint", "private=10.10.0.66:51820"],
    )
    .unwrap();
    let status = wait_for(Duration::from_secs(20), "the impostor to give up", || {
        impostor.proc.exited()
    })
    .unwrap();
    assert!(!status.success());
    let log = impostor.proc.log_text();
    assert!(
        log.contains("aws-use1/gw1 belongs to the registered gateway aws-use1/gw1")
            && log.contains("straitctl revoke aws-use1/gw1"),
        "{log}"
    );

    // 2. A certificate for member aws-use1/gw1 made outside enrollment: its registration
    // is refused and the gateway's session is not replaced.
    let ca = BuiltinCa::load(&c.state(), "prod").unwrap();
    let identity = Identity::node("prod", "aws-use1", "gw1", Role::Member).unwrap();
    let bundle = ca
        .issue(&identity, Validity::for_lifetime(Duration::from_secs(3600)))
        .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("strait-agent-")
        .tempdir()
        .unwrap();
    let tls = dir.path().join("state/tls");
    std::fs::create_dir_all(&tls).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        for d in [dir.path().join("state"), tls.clone()] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
    }
    bundle.save(&tls).unwrap();
    let vault_like = Agent::run(
        dir,
        c.addr,
        "aws-use1",
        "gw1",
        "member",
        "",
        &["--endpoint", "private=10.10.0.67:51820"],
    )
    .unwrap();
    wait_for(
        Duration::from_secs(20),
        "the registration to be refused",
        || {
            vault_like
                .proc
                .log_text()
                .contains("this certificate names a member")
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", vault_like.proc.log_text()));
    // Several refused attempts later the gateway is still the one registered, online.
    std::thread::sleep(Duration::from_secs(2));
    let nodes = c.ctl_json(&["nodes"]).unwrap();
    let after = node(&nodes, "aws-use1/gw1").unwrap();
    assert_eq!(after["role"], "gateway", "{after}");
    assert_eq!(after["online"], true, "{after}");
    assert_eq!(after["overlay-ip"], before["overlay-ip"], "{after}");
    let log = c.log_text();
    assert!(!log.contains("replaced by a newer session"), "{log}");
    drop(vault_like);
    drop(gateway);
}
