//! The coordinator binary refuses bad input with errors that name it.

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
fn check_config_validates_without_serving() {
    let bin = env!("CARGO_BIN_EXE_strait-coordinator");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("coordinator.toml");
    let good = "mesh = \"prod\"\nstate-dir = \"/nonexistent\"\nlisten = \"127.0.0.1:1\"\n[[sites]]\nname = \"aws-use1\"\nprefixes = [\"10.10.0.0/16\"]\n";
    let check = |text: &str| {
        std::fs::write(&cfg, text).unwrap();
        Command::new(bin)
            .args(["check-config", "--config"])
            .arg(&cfg)
            .env_remove("STRAIT_LISTEN")
            .output()
            .unwrap()
    };
    let out = check(good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sites=1"));
    let out = check(&good.replace("10.10.0.0/16", "100.64.0.0/16"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sites[0].prefixes") && err.contains("100.64.0.0/16"),
        "{err}"
    );
}
