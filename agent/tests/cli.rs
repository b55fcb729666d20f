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

#[test]
fn check_config_exits_non_zero_naming_the_key_or_variable() {
    let bin = env!("CARGO_BIN_EXE_strait-agent");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    let good = "mesh = \"prod\"\nsite = \"aws-use1\"\nnode = \"gw-1\"\nrole = \"gateway\"\ncoordinators = [\"192.0.2.1:7443\"]\nstate-dir = \"/nonexistent\"\nprefixes = [\"10.10.0.0/16\"]\nlisten-port = 51820\n";
    let run = |text: &str, var: Option<(&str, &str)>| {
        std::fs::write(&cfg, text).unwrap();
        let mut cmd = Command::new(bin);
        cmd.args(["check-config", "--config"]).arg(&cfg);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("STRAIT_")) {
            cmd.env_remove(k);
        }
        if let Some((k, v)) = var {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = run(good, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("role=gateway"));
    // Nothing started: no state directory was created.
    assert!(!std::path::Path::new("/nonexistent").exists());

    let out = run(&good.replace("51820", "\"fifty\""), None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("listen-port") && err.contains("fifty"),
        "{err}"
    );

    let out = run(good, Some(("STRAIT_PREFIXS", "10.10.0.0/16")));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("STRAIT_PREFIXS"));
}
