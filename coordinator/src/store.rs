//! Persistence of the registry behind a trait. The embedded default is SQLite in the state
//! directory; [`postgres::PgStore`] keeps it in PostgreSQL (or CockroachDB), which several
//! coordinators can share (HA).
//!
//! Records are stored as JSON in a few key-value tables, so the schema does not change each
//! time a record gains a field.

#[doc(hidden)]
pub mod conformance;
pub mod postgres;
mod schema;
mod sqlite;

pub use sqlite::SqliteStore;

use std::time::Duration;

use serde::Serialize;

use crate::records::{Persisted, Presence, StoreOp};
use strait_proto::msg::AuditEntry;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("store {path}: corrupt record in {table}: {reason}")]
    Corrupt {
        path: String,
        table: &'static str,
        reason: String,
    },
    /// Not `#[source]`: the message already carries the driver's chain of causes.
    #[error("PostgreSQL store {target}: {}", causes(.error))]
    Postgres {
        target: String,
        error: ::postgres::Error,
    },
    /// A shared store refused a write because another coordinator wrote since this one last
    /// loaded: reload, run the change again on fresh state, and retry.
    #[error(
        "another coordinator changed the store first; the change must be made again on fresh state"
    )]
    Conflict,
    #[error("PostgreSQL store {target}: {reason}")]
    Unavailable { target: String, reason: String },
}

/// `error` and its sources, each once ("db error: FATAL: password authentication failed").
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Where the coordinator keeps its registry.
pub trait Store: Send {
    /// Everything persisted so far.
    fn load(&mut self) -> Result<Persisted, StoreError>;
    /// Applies `ops` atomically, in order. A shared store refuses with
    /// [`StoreError::Conflict`] (writing nothing) when another coordinator wrote since this
    /// handle's last `load` or `apply`.
    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError>;
    /// Appends `entry` to the audit log (append-only: entries are never changed or
    /// removed; no registry change, so no generation is used up). Returns its sequence
    /// number.
    fn append_audit(&mut self, entry: &AuditEntry) -> Result<u64, StoreError>;
    /// Audit entries, newest first: at most `limit`, with a sequence number below `before`.
    fn audit(&mut self, limit: u32, before: Option<u64>) -> Result<Vec<AuditEntry>, StoreError>;
    /// Whether several coordinators may write this store.
    fn is_shared(&self) -> bool {
        false
    }
    /// For a shared store: whether another coordinator wrote since this handle's last `load`
    /// or `apply`, so the registry in memory may be stale. Always false for a private store.
    fn changed_elsewhere(&mut self) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// For a shared store: the generation (count of writes by all coordinators) that this
    /// handle's last `load` or `apply` reflects; `None` when unknown (after a failed write).
    fn generation(&self) -> Option<u64> {
        None
    }
    /// For a shared store: the registry in memory now reflects `generation` (loaded through
    /// the [`Watcher`]); writes are checked against it.
    fn adopt(&mut self, _generation: u64) {}
    /// For a shared store: a second handle, on its own connection, for the background work
    /// (noticing other coordinators' writes, sharing liveness). `None` for a private store.
    fn watcher(&self) -> Option<Box<dyn Watcher>> {
        None
    }
}

/// Background access to a shared store, off the registry lock.
pub trait Watcher: Send {
    /// The store's current generation.
    fn generation(&mut self) -> Result<u64, StoreError>;
    /// Everything stored, as [`Store::load`], with the generation it reflects.
    fn load(&mut self) -> Result<(u64, Persisted), StoreError>;
    /// Records when this coordinator last heard from nodes whose sessions it holds.
    fn put_presence(&mut self, seen: &[Presence]) -> Result<(), StoreError>;
    /// Liveness recorded by every coordinator.
    fn presence(&mut self) -> Result<Vec<Presence>, StoreError>;
    /// How often to look for other coordinators' writes.
    fn poll_interval(&self) -> Duration;
}

/// An audit entry read back with its sequence number, or the corruption named.
pub(crate) fn audit_entry(seq: u64, data: &str, path: &str) -> Result<AuditEntry, StoreError> {
    let mut entry: AuditEntry = serde_json::from_str(data).map_err(|e| StoreError::Corrupt {
        path: path.to_string(),
        table: "audit",
        reason: e.to_string(),
    })?;
    entry.seq = seq;
    Ok(entry)
}

pub(crate) fn json<T: Serialize>(v: &T) -> String {
    // Invariant: records are plain data whose serialization cannot fail.
    serde_json::to_string(v).unwrap_or_default()
}
