//! The control plane on Vault's PKI (a real RustyVault): the coordinator trusts Vault's CA
//! and holds no CA key; its own, the operator's and the agent's certificates come from Vault.

use std::time::Duration;

use strait_tests::procs::{wait_for, Agent};
use strait_tests::rustyvault::{vault_coordinator, RustyVault};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_and_agents_on_vault_pki() {
    let vault = RustyVault::start()
        .await
        .expect("RustyVault must run for this test");
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = secrets.path().join("secret-id");
    let mut c = vault_coordinator(&vault, &secret_file).await.unwrap();

    c.start().unwrap();
    assert!(
        !c.state().join("ca.key").exists(),
        "a Vault coordinator holds no CA key"
    );
    let status = c.ctl_json(&["status"]).unwrap();
    assert_eq!(status["pki"], "vault");

    let secret = secret_file.display().to_string();
    let vault_flags = |role: &'static str| {
        vec![
            "--vault-address".to_string(),
            vault.addr.clone(),
            "--vault-role".into(),
            role.into(),
            "--vault-auth".into(),
            "approle".into(),
            "--vault-role-id".into(),
            vault.role_id.clone(),
            "--vault-secret-id-file".into(),
            secret.clone(),
            "--vault-cert-ttl".into(),
            "1h".into(),
        ]
    };
    let a_flags = vault_flags("strait-gateway");
    let mut a_args: Vec<&str> = a_flags.iter().map(String::as_str).collect();
    a_args.extend([
        "--prefix",
        "10.10.0.0/16",
        "--endpoint",
        "private=10.10.0.5:51820",
    ]);
    let a = Agent::start(c.addr, "aws-use1", "gw1", "gateway", "", &a_args).unwrap();
    let b_flags = vault_flags("strait-gateway");
    let mut b_args: Vec<&str> = b_flags.iter().map(String::as_str).collect();
    b_args.extend([
        "--prefix",
        "10.20.0.0/16",
        "--endpoint",
        "public=198.51.100.7:51820",
    ]);
    let b = Agent::start(c.addr, "gcp-usc1", "gw1", "gateway", "", &b_args).unwrap();

    wait_for(
        Duration::from_secs(20),
        "both Vault-certified gateways to see each other",
        || {
            let ma = a.saved_map()?;
            let mb = b.saved_map()?;
            (ma["peers"].get("gcp-usc1/gw1").is_some() && mb["peers"].get("aws-use1/gw1").is_some())
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", a.proc.log_text(), c.log_text()));
    assert!(a.proc.log_text().contains("certificate issued by Vault"));

    // Join tokens belong to the built-in CA; this coordinator says so.
    let out = c
        .ctl(&["token", "create", "--site", "aws-use1", "--role", "member"])
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("uses Vault's PKI"));
}
