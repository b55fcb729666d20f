//! The coordinator binaries refuse bad input with errors that name it.

use std::process::Command;

#[test]
fn serve_refuses_an_invalid_config_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("coordinator.toml");
    std::fs::write(
        &cfg,
        "mesh = \"prod\"\nstate-dir = \"/tmp\"\noverlay-cidr = \"fd00::/64\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_strait-coordinator"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("overlay-cidr"), "{err}");
}

#[test]
fn straitctl_without_a_certificate_exits_unreachable_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_straitctl"))
        .args(["status", "--tls-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-dir"), "{err}");
}
