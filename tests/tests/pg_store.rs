//! `PgStore` against a real PostgreSQL server started by the test (see
//! `strait_tests::postgres`): the checks every store passes (`store::conformance`, run on
//! SQLite too), the generation check that serializes coordinators sharing one database,
//! and presence.

use strait_coordinator::config::{StoreConfig, StoreKind};
use strait_coordinator::mesh::{IssuedCert, Presence, Revocation, StoreOp};
use strait_coordinator::store::conformance::node;
use strait_coordinator::store::postgres::PgStore;
use strait_coordinator::store::{Store, StoreError};
use strait_tests::postgres::Postgres;

fn presence(name: &str, last_seen: u64, map_version: u64) -> Presence {
    Presence {
        site: "a".into(),
        name: name.into(),
        last_seen,
        map_version,
    }
}

#[test]
fn postgres_store_round_trip_conflicts_and_presence() {
    let pg = Postgres::start().unwrap();
    let url = pg.create_database("strait").unwrap();

    // Round trip, as SQLite's test: ops in order, survives reopening.
    {
        let mut s = PgStore::open_url(&url).unwrap();
        let empty = s.load().unwrap();
        assert_eq!((empty.nodes.len(), empty.version), (0, 0));
        s.apply(&[
            StoreOp::PutNode(node("gw")),
            StoreOp::PutNode(node("gw2")),
            StoreOp::DeleteNode {
                site: "a".into(),
                name: "gw2".into(),
            },
            StoreOp::PutRevocation(Revocation {
                serial: "ff".into(),
                site: "a".into(),
                name: "x".into(),
                revoked_at: 1,
                not_after: 2,
            }),
            StoreOp::PutIssued(IssuedCert {
                serial: "ee".into(),
                site: "a".into(),
                name: "gw".into(),
                not_after: 2,
            }),
            StoreOp::SetVersion(7),
        ])
        .unwrap();
        // Upserts replace.
        let mut changed = node("gw");
        changed.agent_version = "v2".into();
        s.apply(&[StoreOp::PutNode(changed), StoreOp::SetVersion(8)])
            .unwrap();
    }
    let mut a = PgStore::open_url(&url).unwrap();
    let p = a.load().unwrap();
    let mut expected = node("gw");
    expected.agent_version = "v2".into();
    assert_eq!(p.nodes, vec![expected]);
    assert_eq!(p.revocations.len(), 1);
    assert_eq!(p.issued.len(), 1);
    assert_eq!(p.version, 8);
    assert_eq!(a.generation(), Some(2), "two writes so far");

    // A second coordinator on the same database: whoever writes second without having
    // seen the first write is refused, and writes nothing.
    let mut b = PgStore::open_url(&url).unwrap();
    b.load().unwrap();
    assert!(!a.changed_elsewhere().unwrap());
    a.apply(&[StoreOp::PutNode(node("from-a")), StoreOp::SetVersion(9)])
        .unwrap();
    assert!(b.changed_elsewhere().unwrap());
    let refused = b.apply(&[StoreOp::PutNode(node("from-b")), StoreOp::SetVersion(9)]);
    assert!(matches!(refused, Err(StoreError::Conflict)), "{refused:?}");
    let p = b.load().unwrap();
    assert!(p.nodes.iter().any(|n| n.name == "from-a"));
    assert!(!p.nodes.iter().any(|n| n.name == "from-b"));
    assert_eq!(p.version, 9);
    b.apply(&[StoreOp::PutNode(node("from-b")), StoreOp::SetVersion(10)])
        .unwrap();
    assert!(!b.changed_elsewhere().unwrap());
    assert!(a.changed_elsewhere().unwrap());
    assert!(matches!(
        a.apply(&[StoreOp::SetVersion(10)]),
        Err(StoreError::Conflict)
    ));

    // Concurrent writers: every write lands exactly once, in some order.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut s = PgStore::open_url(&url).unwrap();
                let mut conflicts = 0;
                for i in 0..10 {
                    loop {
                        let n = s.load().unwrap().version;
                        match s.apply(&[
                            StoreOp::PutNode(node(&format!("w{w}-{i}"))),
                            StoreOp::SetVersion(n + 1),
                        ]) {
                            Ok(()) => break,
                            Err(StoreError::Conflict) => conflicts += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    let conflicts: u32 = writers.into_iter().map(|t| t.join().unwrap()).sum();
    let p = a.load().unwrap();
    assert_eq!(p.version, 10 + 40, "each write bumped the version once");
    assert_eq!(
        p.nodes.iter().filter(|n| n.name.starts_with('w')).count(),
        40
    );
    eprintln!("4 writers x 10 writes: {conflicts} conflicts, each retried on fresh state");

    // Presence: shared liveness, newest wins, folded into the nodes on load.
    let mut wa = a.watcher().expect("a shared store has a watcher");
    let mut wb = b.watcher().unwrap();
    let g = wa.generation().unwrap();
    assert_eq!(Some(g), a.generation());
    wa.put_presence(&[presence("gw", 100, 11), presence("from-a", 50, 10)])
        .unwrap();
    wb.put_presence(&[presence("gw", 90, 12)]).unwrap();
    let mut seen = wb.presence().unwrap();
    seen.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(
        seen,
        vec![presence("from-a", 50, 10), presence("gw", 100, 12)]
    );
    assert_eq!(
        wa.generation().unwrap(),
        g,
        "presence is not a registry write"
    );
    let p = a.load().unwrap();
    let gw = p.nodes.iter().find(|n| n.name == "gw").unwrap();
    assert_eq!((gw.last_seen, gw.map_version), (100, 12));
    // Deleting a node drops its presence.
    a.apply(&[StoreOp::DeleteNode {
        site: "a".into(),
        name: "from-a".into(),
    }])
    .unwrap();
    assert_eq!(wb.presence().unwrap().len(), 1);

    // Corrupt records are named, as with SQLite.
    pg.psql(
        "strait",
        "INSERT INTO nodes (site, name, data) VALUES ('a', 'bad', '{nope')",
    )
    .unwrap();
    let err = a.load().unwrap_err().to_string();
    assert!(err.contains("nodes") && err.contains("corrupt"), "{err}");
}

#[test]
fn postgres_store_round_trips_records_in_order() {
    let pg = Postgres::start().unwrap();
    let url = pg.create_database("strait").unwrap();
    let mut s = PgStore::open_url(&url).unwrap();
    strait_coordinator::store::conformance::round_trip(&mut s, &mut || {
        Box::new(PgStore::open_url(&url).unwrap())
    });
}

#[test]
fn postgres_audit_log_is_append_only_and_ordered() {
    let pg = Postgres::start().unwrap();
    let url = pg.create_database("strait").unwrap();
    let mut s = PgStore::open_url(&url).unwrap();
    s.load().unwrap();
    strait_coordinator::store::conformance::audit_log(&mut s, &mut || {
        let mut s = PgStore::open_url(&url).unwrap();
        s.load().unwrap();
        Box::new(s)
    });
}

#[test]
fn postgres_store_settings_are_checked_at_open() {
    let pg = Postgres::start().unwrap();
    pg.create_database("strait").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("db-url");
    std::fs::write(&url_file, format!("{}\n", pg.url("strait"))).unwrap();
    let settings = |file: &std::path::Path| StoreConfig {
        kind: StoreKind::Postgres,
        url_file: Some(file.to_path_buf()),
        ..StoreConfig::default()
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&url_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = format!("{:#}", PgStore::open(&settings(&url_file)).unwrap_err());
    eprintln!("open with a 0644 url-file: {err}");
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&url_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut s = PgStore::open(&settings(&url_file)).unwrap();
    s.load().unwrap();

    // A wrong password or database is refused with the target, never the password.
    let wrong = dir.path().join("wrong-url");
    std::fs::write(
        &wrong,
        format!(
            "postgres://strait:nope@127.0.0.1:{}/strait?connect_timeout=5",
            pg.port
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = format!("{:#}", PgStore::open(&settings(&wrong)).unwrap_err());
    eprintln!("open with a wrong password: {err}");
    assert!(
        err.contains("strait@127.0.0.1") && err.contains("password") && !err.contains("nope"),
        "{err}"
    );
    // Nothing listening.
    let closed = strait_tests::postgres::free_tcp_port();
    let err = format!(
        "{:#}",
        PgStore::open_url(&format!(
            "postgres://strait@127.0.0.1:{closed}/strait?connect_timeout=2"
        ))
        .unwrap_err()
    );
    assert!(
        err.contains("127.0.0.1") && err.contains("connect"),
        "{err}"
    );
}

/// A CA and a server certificate for 127.0.0.1 and localhost: (CA PEM, chain PEM, key PEM).
fn test_pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "test database CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

#[test]
fn postgres_store_over_tls() {
    let pg = Postgres::start().unwrap();
    let url = pg.create_database("strait").unwrap();
    let (ca, chain, key) = test_pki();
    pg.enable_tls(&chain, &key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("db-ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let settings = |url: String, ca_file: Option<std::path::PathBuf>| StoreConfig {
        kind: StoreKind::Postgres,
        url: Some(url),
        ca_file,
        ..StoreConfig::default()
    };
    let mut s = PgStore::open(&settings(
        format!("{url}?sslmode=require"),
        Some(ca_file.clone()),
    ))
    .unwrap();
    s.load().unwrap();
    s.apply(&[StoreOp::SetVersion(1)]).unwrap();
    let ssl = pg
        .psql(
            "strait",
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid \
             WHERE s.ssl AND a.application_name = 'strait-coordinator'",
        )
        .unwrap();
    assert_eq!(ssl.trim(), "1", "the store's connection uses TLS");
    // The server's certificate is verified: without the CA it is refused, also with the
    // default sslmode (prefer), which would otherwise fall back to plain text elsewhere.
    for url in [format!("{url}?sslmode=require"), url.clone()] {
        let err = format!("{:#}", PgStore::open(&settings(url, None)).unwrap_err());
        eprintln!("open with an unknown server certificate: {err}");
        assert!(err.contains("certificate"), "{err}");
    }
}
