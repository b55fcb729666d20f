//! Behaviour every [`Store`] must have, as checks run against each implementation (SQLite
//! in `store.rs`'s tests, PostgreSQL in `tests/pg_store.rs`).

use strait_proto::msg::AuditEntry;

use super::Store;

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
    store
        .apply(&[crate::records::StoreOp::SetVersion(9)])
        .unwrap();
    let mut again = reopen();
    assert_eq!(again.audit(10, None).unwrap(), all);
}
