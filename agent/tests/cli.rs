//! The `strait-agent` binary refuses invalid configuration at start, naming the key.

use std::process::Command;

#[test]
fn missing_and_invalid_keys_are_refused_at_start() {
    let bin = env!("CARGO_BIN_EXE_strait-agent");
    let out = Command::new(bin)
        .args([
            "run",
            "--site",
            "aws-use1",
            "--role",
            "gateway",
            "--coordinator",
            "127.0.0.1:7443",
            "--state-dir",
            "/nonexistent",
        ])
        .env_remove("STRAIT_MESH")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key `mesh` is required") && err.contains("STRAIT_MESH"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "mesh = \"prod\"\nsite = \"aws-use1\"\nrole = \"gateway\"\ncoordinators = [\"127.0.0.1:7443\"]\nstate-dir = \"/tmp/x\"\nhearbeat-interval = \"1s\"\n").unwrap();
    let out = Command::new(bin)
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hearbeat-interval"), "{err}");
}

#[test]
fn without_certificate_or_token_the_agent_says_how_to_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_strait-agent"))
        .args([
            "run",
            "--mesh",
            "prod",
            "--site",
            "aws-use1",
            "--node",
            "gw1",
            "--role",
            "gateway",
            "--coordinator",
            "127.0.0.1:9",
            "--dataplane",
            "none",
        ])
        .arg("--state-dir")
        .arg(dir.path())
        .env_remove("STRAIT_JOIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("straitctl token create --site aws-use1 --role gateway"),
        "{err}"
    );
}
