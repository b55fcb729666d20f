//! Behaviour every [`Store`] must have, as checks run against each implementation (SQLite
//! in `store/sqlite.rs`'s tests, PostgreSQL in `tests/pg_store.rs`). Each takes a fresh
//! store and `reopen`, which must give another handle on the same store: what was written
//! must be there for the next coordinator that starts.

use strait_pki::token::TokenRecord;
use strait_pki::Role;
use strait_proto::msg::{AuditEntry, PeerLink};

use super::Store;
use crate::records::{IssuedCert, NodeRecord, Revocation, StoreOp};

/// A gateway record `name` in site `a`.
pub fn node(name: &str) -> NodeRecord {
    NodeRecord {
        site: "a".into(),
        name: name.into(),
        role: Role::Gateway,
        overlay_ip: "100.64.0.1".parse().expect("constant address"),
        wg_public_key: "k".into(),
        endpoints: vec![],
        advertised: vec![],
        accepted: vec!["10.1.0.0/16".parse().expect("constant prefix")],
        refused: vec![],
        route_conflicts: vec![],
        agent_version: "v".into(),
        last_seen: 5,
        online: true,
        cert_serial: "01".into(),
        cert_not_after: 9,
        map_version: 3,
        next_wg_public_key: None,
        priority: 0,
        links: Vec::new(),
        bgp: None,
        throughput: Default::default(),
    }
}

fn token(id: &str) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        secret_sha256: "00".repeat(32),
        site: "a".into(),
        role: Role::Member,
        created_at: 1,
        expires_at: 601,
        used_at: None,
        used_by: None,
    }
}

/// Records and the map version are read back as written, by a store opened again; a put
/// replaces the record with the same key; the ops of one write apply in order; live
/// figures (link reports, throughput) are never stored.
pub fn round_trip(store: &mut dyn Store, reopen: &mut dyn FnMut() -> Box<dyn Store>) {
    let empty = store.load().unwrap();
    assert!(empty.nodes.is_empty() && empty.tokens.is_empty());
    assert!(empty.revocations.is_empty() && empty.issued.is_empty());
    assert_eq!(empty.version, 0);
    store.apply(&[]).unwrap();

    let revocation = Revocation {
        serial: "ff".into(),
        site: "a".into(),
        name: "x".into(),
        revoked_at: 1,
        not_after: 2,
    };
    let issued = IssuedCert {
        serial: "ee".into(),
        site: "a".into(),
        name: "gw".into(),
        not_after: 2,
    };
    store
        .apply(&[
            StoreOp::PutNode(node("gw")),
            StoreOp::PutNode(node("gw2")),
            StoreOp::DeleteNode {
                site: "a".into(),
                name: "gw2".into(),
            },
            StoreOp::PutToken(token("t1")),
            StoreOp::PutRevocation(revocation.clone()),
            StoreOp::PutIssued(issued.clone()),
            StoreOp::SetVersion(7),
        ])
        .unwrap();
    let mut live = node("gw3");
    live.links = vec![PeerLink {
        peer: "b/gw".into(),
        endpoint: None,
        handshake_age_secs: Some(1),
        tx_bytes: 1,
        rx_bytes: 2,
        paths: vec![],
    }];
    live.throughput.insert("b/gw".into(), (100.0, 5));
    store
        .apply(&[
            // Deleting what is not there is no error; a put after a delete restores.
            StoreOp::DeleteNode {
                site: "a".into(),
                name: "gw3".into(),
            },
            StoreOp::PutNode(live),
            StoreOp::SetVersion(8),
            StoreOp::SetVersion(9),
        ])
        .unwrap();
    let mut changed = node("gw");
    changed.agent_version = "v2".into();
    changed.next_wg_public_key = Some("k2".into());
    let mut used = token("t1");
    used.used_at = Some(5);
    used.used_by = Some("a/gw".into());
    store
        .apply(&[
            StoreOp::PutNode(changed.clone()),
            StoreOp::PutToken(used.clone()),
            StoreOp::SetVersion(10),
        ])
        .unwrap();

    let mut p = reopen().load().unwrap();
    p.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(p.nodes, vec![changed, node("gw3")]);
    assert_eq!(p.tokens, vec![used]);
    assert_eq!(p.revocations, vec![revocation]);
    assert_eq!(p.issued, vec![issued]);
    assert_eq!(p.version, 10);
}

fn entry(n: u64) -> AuditEntry {
    AuditEntry {
        seq: 0,
        at: 1_000 + n,
        coordinator: "c1".into(),
        operator: format!("op{n}.admin.operators.prod.strait.internal"),
        serial: format!("{n:02x}"),
        from: "192.0.2.1:4000".into(),
        request: format!("revoke a/n{n}"),
        ok: n % 2 == 0,
        result: format!("result {n}"),
    }
}

/// The audit log is append-only, numbered in order, read newest first and paged with
/// `before`; `reopen` must give a handle on the same store (what was written is kept).
pub fn audit_log(store: &mut dyn Store, reopen: &mut dyn FnMut() -> Box<dyn Store>) {
    assert!(store.audit(10, None).unwrap().is_empty());
    let seqs: Vec<u64> = (0..5)
        .map(|n| store.append_audit(&entry(n)).unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let all = store.audit(10, None).unwrap();
    assert_eq!(all.len(), 5);
    for (got, n) in all.iter().zip((0..5).rev()) {
        let mut want = entry(n);
        want.seq = seqs[n as usize];
        assert_eq!(*got, want);
    }
    let page = store.audit(2, Some(seqs[3])).unwrap();
    assert_eq!(
        page.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [seqs[2], seqs[1]]
    );
    // Writes to the registry leave the log alone, and the log survives a reopen.
    store.apply(&[StoreOp::SetVersion(9)]).unwrap();
    let mut again = reopen();
    assert_eq!(again.audit(10, None).unwrap(), all);
}
