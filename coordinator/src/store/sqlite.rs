//! The embedded store: SQLite in one file in the state directory, for one coordinator.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use strait_proto::msg::AuditEntry;

use super::schema::{create_tables, Dialect};
use super::{audit_entry, json, Store, StoreError};
use crate::records::{Persisted, StoreOp};

/// SQLite in one file (`<state-dir>/strait.db`), mode 0600 (it holds token hashes).
pub struct SqliteStore {
    conn: Connection,
    path: String,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let display = path.display().to_string();
        let err = |source| StoreError::Sqlite {
            path: display.clone(),
            source,
        };
        let fresh = !path.exists();
        let conn = Connection::open(path).map_err(err)?;
        if fresh {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.execute_batch(&create_tables(Dialect::Sqlite))
            .map_err(err)?;
        Ok(SqliteStore {
            conn,
            path: display,
        })
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn all<T: DeserializeOwned>(&self, table: &'static str) -> Result<Vec<T>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT data FROM {table}"))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let text = row.map_err(|e| self.err(e))?;
            out.push(
                serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                    path: self.path.clone(),
                    table,
                    reason: e.to_string(),
                })?,
            );
        }
        Ok(out)
    }
}

impl Store for SqliteStore {
    fn load(&mut self) -> Result<Persisted, StoreError> {
        let version: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'version'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(Persisted {
            nodes: self.all("nodes")?,
            tokens: self.all("tokens")?,
            revocations: self.all("revocations")?,
            issued: self.all("issued")?,
            version: version.and_then(|v| v.parse().ok()).unwrap_or(0),
        })
    }

    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        for op in ops {
            match op {
                StoreOp::PutNode(n) => tx.execute(
                    "INSERT OR REPLACE INTO nodes (site, name, data) VALUES (?1, ?2, ?3)",
                    params![n.site, n.name, json(n)],
                ),
                StoreOp::DeleteNode { site, name } => tx.execute(
                    "DELETE FROM nodes WHERE site = ?1 AND name = ?2",
                    params![site, name],
                ),
                StoreOp::PutToken(t) => tx.execute(
                    "INSERT OR REPLACE INTO tokens (id, data) VALUES (?1, ?2)",
                    params![t.id, json(t)],
                ),
                StoreOp::PutRevocation(r) => tx.execute(
                    "INSERT OR REPLACE INTO revocations (serial, data) VALUES (?1, ?2)",
                    params![r.serial, json(r)],
                ),
                StoreOp::PutIssued(c) => tx.execute(
                    "INSERT OR REPLACE INTO issued (serial, data) VALUES (?1, ?2)",
                    params![c.serial, json(c)],
                ),
                StoreOp::SetVersion(v) => tx.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('version', ?1)",
                    params![v.to_string()],
                ),
            }
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    fn append_audit(&mut self, entry: &AuditEntry) -> Result<u64, StoreError> {
        self.conn
            .execute(
                "INSERT INTO audit (at, data) VALUES (?1, ?2)",
                params![entry.at as i64, json(entry)],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid() as u64)
    }

    fn audit(&mut self, limit: u32, before: Option<u64>) -> Result<Vec<AuditEntry>, StoreError> {
        let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        let mut stmt = self
            .conn
            .prepare("SELECT seq, data FROM audit WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![before, i64::from(limit)], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, data) = row.map_err(|e| self.err(e))?;
            out.push(audit_entry(seq as u64, &data, &self.path)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{IssuedCert, Revocation};
    use crate::store::conformance::node;

    #[test]
    fn survives_reopen_and_applies_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strait.db");
        {
            let mut s = SqliteStore::open(&path).unwrap();
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
        }
        let mut s = SqliteStore::open(&path).unwrap();
        let p = s.load().unwrap();
        assert_eq!(p.nodes, vec![node("gw")]);
        assert_eq!(p.revocations.len(), 1);
        assert_eq!(p.issued.len(), 1);
        assert_eq!(p.version, 7);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn records_round_trip_in_order_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strait.db");
        let mut s = SqliteStore::open(&path).unwrap();
        crate::store::conformance::round_trip(&mut s, &mut || {
            Box::new(SqliteStore::open(&path).unwrap())
        });
    }

    #[test]
    fn the_audit_log_is_append_only_and_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strait.db");
        let mut s = SqliteStore::open(&path).unwrap();
        crate::store::conformance::audit_log(&mut s, &mut || {
            Box::new(SqliteStore::open(&path).unwrap())
        });
    }

    #[test]
    fn corrupt_records_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strait.db");
        let mut s = SqliteStore::open(&path).unwrap();
        s.conn
            .execute("INSERT INTO nodes VALUES ('a','b','{nope')", [])
            .unwrap();
        let err = s.load().unwrap_err().to_string();
        assert!(err.contains("nodes") && err.contains("corrupt"), "{err}");
    }
}
