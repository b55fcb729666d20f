//! Certificates from a real Vault-API server (RustyVault, started by the test on a loopback
//! port): AppRole and token login, `pki/issue/<role>`, the CA chain, a mutual-TLS QUIC
//! handshake with Vault-issued certificates, and renewal when Vault is unreachable.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use strait_pki::ca::{BuiltinCa, Validity};
use strait_pki::material::parse_certs;
use strait_pki::renewal::{self, RenewalState};
use strait_pki::tls::{client_config, server_config, CertStore, ClientAuth};
use strait_pki::vault::{VaultAuth, VaultCertSource, VaultConfig, VaultError, VaultPki};
use strait_pki::{Identity, Role};
use strait_tests::quic::{connect_and_echo, EchoServer};
use strait_tests::rustyvault::RustyVault;

const ALPN: &[u8] = strait_proto::ALPN;

fn approle(vault: &RustyVault, role: &str) -> VaultConfig {
    VaultConfig::new(
        &vault.addr,
        role,
        VaultAuth::AppRole {
            mount: "approle".into(),
            role_id: vault.role_id.clone(),
            secret_id: vault.secret_id.clone(),
        },
    )
}

#[tokio::test]
async fn approle_issued_certs_complete_mutual_tls_and_foreign_or_expired_are_refused() {
    strait_tests::init_logging();
    let vault = RustyVault::start()
        .await
        .expect("RustyVault must run for this test");

    let coord_pki = VaultPki::login(approle(&vault, "strait-coordinator"))
        .await
        .unwrap();
    let coord_id = Identity::service("prod", "c1", Role::Coordinator).unwrap();
    let coord = coord_pki
        .issue(&coord_id, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(coord.identity, coord_id);

    let agent_pki = VaultPki::login(approle(&vault, "strait-gateway"))
        .await
        .unwrap();
    let agent_id = Identity::node("prod", "gcp-usc1", "gw1", Role::Gateway).unwrap();
    let agent = agent_pki
        .issue(&agent_id, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(agent.identity, agent_id);
    let lifetime = agent.lifetime().as_secs();
    assert!((600..=700).contains(&lifetime), "lifetime {lifetime}s");

    // The CA chain read from Vault is the one the certificates chain to.
    let vault_ca = agent_pki.ca_certificates().await.unwrap();
    assert_eq!(vault_ca, parse_certs("ca", &vault.ca_pem).unwrap());
    assert_eq!(agent.ca, vault_ca);

    // The server trusts Vault's CA and a built-in CA (so that an expired certificate from
    // the latter is refused for its dates, not its issuer).
    let builtin = BuiltinCa::generate("prod").unwrap();
    let mut trust = vault_ca.clone();
    trust.push(builtin.cert_der().clone());
    let srv_cfg = server_config(
        &trust,
        CertStore::new(coord).unwrap(),
        ClientAuth::Required,
        ALPN,
    )
    .unwrap();
    let mut srv = EchoServer::start(srv_cfg).unwrap();

    let client = |cert| {
        client_config(
            &vault_ca,
            Some(CertStore::new(cert).unwrap()),
            "prod",
            &[Role::Coordinator],
            ALPN,
        )
        .unwrap()
    };
    connect_and_echo(client(agent), srv.addr)
        .await
        .expect("mTLS with Vault certificates");
    let accepted = srv.next().await.unwrap().unwrap();
    assert_eq!(accepted.identity, Some(agent_id.clone()));

    let foreign = BuiltinCa::generate("prod").unwrap();
    let stranger = foreign
        .issue(&agent_id, Validity::for_lifetime(Duration::from_secs(600)))
        .unwrap();
    assert!(connect_and_echo(client(stranger), srv.addr).await.is_err());
    assert!(srv.next().await.unwrap().is_err(), "foreign CA accepted");

    let now = SystemTime::now();
    let expired = builtin
        .issue(
            &agent_id,
            Validity {
                not_before: now - Duration::from_secs(7200),
                not_after: now - Duration::from_secs(60),
            },
        )
        .unwrap();
    assert!(connect_and_echo(client(expired), srv.addr).await.is_err());
    assert!(
        srv.next().await.unwrap().is_err(),
        "expired certificate accepted"
    );
}

#[tokio::test]
async fn token_login_works_and_bad_credentials_get_a_clear_error() {
    let vault = RustyVault::start()
        .await
        .expect("RustyVault must run for this test");
    let by_token = VaultConfig::new(
        &vault.addr,
        "strait-member",
        VaultAuth::Token {
            token: vault.root_token.clone(),
        },
    );
    let pki = VaultPki::login(by_token).await.unwrap();
    let id = Identity::node("prod", "azure-eus", "m1", Role::Member).unwrap();
    assert_eq!(
        pki.issue(&id, Duration::from_secs(120))
            .await
            .unwrap()
            .identity,
        id
    );

    let mut wrong = approle(&vault, "strait-member");
    wrong.auth = VaultAuth::AppRole {
        mount: "approle".into(),
        role_id: vault.role_id.clone(),
        secret_id: "not-the-secret".into(),
    };
    match VaultPki::login(wrong).await {
        Err(e @ VaultError::Refused { .. }) => {
            assert!(e.to_string().contains("auth/approle/login"), "{e}");
            assert!(
                !e.to_string().contains("not-the-secret"),
                "secret in error: {e}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    let bad_token = VaultConfig::new(
        &vault.addr,
        "strait-member",
        VaultAuth::Token {
            token: "nope".into(),
        },
    );
    let pki = VaultPki::login(bad_token).await.unwrap();
    let err = pki.issue(&id, Duration::from_secs(60)).await.unwrap_err();
    assert!(
        matches!(err, VaultError::Refused { status: 403, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn renewal_keeps_the_certificate_while_vault_is_unreachable_and_reports_expiry() {
    let mut vault = RustyVault::start()
        .await
        .expect("RustyVault must run for this test");
    let pki = Arc::new(
        VaultPki::login(approle(&vault, "strait-gateway"))
            .await
            .unwrap(),
    );
    let id = Identity::node("prod", "aws-use1", "gw2", Role::Gateway).unwrap();
    // A 3 s certificate: its renewal time has already come.
    let first = pki.issue(&id, Duration::from_secs(3)).await.unwrap();
    let store = CertStore::new(first.clone()).unwrap();
    vault.stop();

    let source = VaultCertSource {
        pki,
        identity: id,
        ttl: Duration::from_secs(600),
    };
    let (task, mut state) = renewal::spawn(source, store.clone());
    let mut saw_retrying = false;
    let outcome = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            state.changed().await.unwrap();
            let s = state.borrow().clone();
            match s {
                RenewalState::Retrying {
                    ref last_error,
                    ref serial,
                    ..
                } => {
                    assert!(last_error.contains("could not reach Vault"), "{last_error}");
                    assert_eq!(serial, &first.serial);
                    saw_retrying = true;
                }
                RenewalState::Expired { .. } => return s,
                RenewalState::Valid { .. } => {}
            }
        }
    })
    .await
    .expect("state reached Expired within 15 s");
    assert!(saw_retrying, "never reported Retrying before expiry");
    assert!(matches!(outcome, RenewalState::Expired { attempts, .. } if attempts >= 2));
    // The certificate was kept all along.
    assert_eq!(store.bundle().serial, first.serial);
    task.abort();
}
