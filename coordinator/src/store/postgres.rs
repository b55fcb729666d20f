//! The registry in PostgreSQL, shared by several coordinators (HA).
//!
//! The tables are SQLite's ([`super::SqliteStore`]), defined once in `store/schema.rs`:
//! records as JSON text in key-value tables, plus `presence` (liveness the coordinators
//! exchange). Every write goes through one row, `meta.generation`:
//!
//! ```sql
//! UPDATE meta SET value = <seen + 1> WHERE key = 'generation' AND value = <seen>
//! ```
//!
//! is the first statement of each write transaction. It locks the row, so writes of all
//! coordinators are serialized, and it matches only if nobody wrote since this coordinator
//! last loaded (or wrote): otherwise the transaction is rolled back and the write refused
//! with [`StoreError::Conflict`], and the coordinator reloads and makes its change again on
//! fresh state. Overlay addresses, single-use tokens and map versions therefore never
//! collide. Coordinators notice each other's writes by polling the generation (a primary-key
//! read every `store.poll-interval`), which works where LISTEN/NOTIFY does not.
//!
//! # The SQL subset (PostgreSQL 11+ and CockroachDB 22+)
//!
//! Only what both accept is used: `CREATE TABLE IF NOT EXISTS` with `TEXT`/`BIGINT`
//! columns and (composite) primary keys; `INSERT ... ON CONFLICT (pk) DO UPDATE SET col =
//! excluded.col` and `ON CONFLICT DO NOTHING`; `GREATEST`; `UPDATE`/`DELETE`/`SELECT` by
//! primary key or whole table; explicit transactions (`BEGIN`, `START TRANSACTION
//! ISOLATION LEVEL REPEATABLE READ, READ ONLY`, `COMMIT`, `ROLLBACK`); `SET
//! statement_timeout`, `SET client_min_messages` (whose failure is ignored). No
//! LISTEN/NOTIFY, advisory locks, triggers, stored procedures or JSONB operators; the one
//! sequence is the audit log's key (`BIGSERIAL`, read back with `INSERT ... RETURNING`,
//! both of which CockroachDB has; its serials increase but are not consecutive).
//! Serialization failures (SQLSTATE 40001, CockroachDB's retry errors, and 40P01) are
//! reported as conflicts, which the coordinator already retries; a write whose outcome is
//! unknown makes the next one reload first. Only PostgreSQL is
//! tested (15, `tests/tests/pg_store.rs`, `tests/tests/ha_postgres.rs`).

use std::sync::{mpsc, Arc};
use std::time::Duration;

use ::postgres::error::SqlState;
use ::postgres::{Client, IsolationLevel};
use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::schema::{create_tables, Dialect};
use super::{json, Store, StoreError, Watcher};
use crate::config::{parse_url, StoreConfig};
use crate::records::{Persisted, Presence, StoreOp};
use strait_proto::msg::AuditEntry;

/// A statement that does not finish in this time fails (the registry lock is held while
/// the coordinator waits for the database).
const STATEMENT_TIMEOUT: &str = "15s";
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection whose data stays unacknowledged this long is dropped (and reopened).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);
/// Rows per statement when recording presence.
const PRESENCE_CHUNK: usize = 500;

/// `user@host:port/db`, for messages (never the password).
fn describe(config: &::postgres::Config) -> String {
    let host = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            ::postgres::config::Host::Tcp(name) => name.clone(),
            ::postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let port = config
        .get_ports()
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "{}@{}:{}/{}",
        config.get_user().unwrap_or("?"),
        if host.is_empty() { "localhost" } else { &host },
        if port.is_empty() { "5432" } else { &port },
        config.get_dbname().unwrap_or("?")
    )
}

/// Reads the URL from `store.url` or `store.url-file` (which must not be readable by group
/// or others).
fn read_url(settings: &StoreConfig) -> Result<String> {
    match (&settings.url, &settings.url_file) {
        (Some(url), _) => Ok(url.clone()),
        (None, Some(path)) => {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path)
                .with_context(|| format!("key `store.url-file`: reading {}", path.display()))?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                bail!(
                    "key `store.url-file`: {} has mode {mode:04o}, but it holds the database password; chmod 600 it",
                    path.display()
                );
            }
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("key `store.url-file`: reading {}", path.display()))?;
            let url = text.trim().to_string();
            if url.is_empty() {
                bail!("key `store.url-file`: {} is empty", path.display());
            }
            Ok(url)
        }
        (None, None) => bail!(
            "key `store.kind` is \"postgres\" but neither `store.url` nor `store.url-file` is set"
        ),
    }
}

fn tls_config(settings: &StoreConfig) -> Result<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match &settings.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| anyhow::anyhow!("key `store.ca-file`: {}: {e}", path.display()))?;
            if certs.is_empty() {
                bail!(
                    "key `store.ca-file`: {} holds no PEM certificate",
                    path.display()
                );
            }
            for c in certs {
                roots.add(c).with_context(|| {
                    format!("key `store.ca-file`: a certificate in {}", path.display())
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for c in native.certs {
                let _ = roots.add(c);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS for the store")?
    .with_root_certificates(roots);
    Ok(
        match (&settings.client_cert_file, &settings.client_key_file) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| {
                        anyhow::anyhow!("key `store.client-cert-file`: {}: {e}", cert.display())
                    })?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    anyhow::anyhow!("key `store.client-key-file`: {}: {e}", key.display())
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .context("keys `store.client-cert-file` and `store.client-key-file`")?
            }
            _ => builder.with_no_client_auth(),
        },
    )
}

/// One database connection, owned by a thread of its own: the `postgres` client blocks
/// (it runs a runtime of its own, which may not be started from async code), and the
/// [`Store`] trait is synchronous. Reconnects when the connection was lost.
struct Conn {
    jobs: mpsc::Sender<Job>,
    target: Arc<str>,
}

type Job = Box<dyn FnOnce(&mut Link) + Send>;

struct Link {
    config: ::postgres::Config,
    tls: MakeRustlsConnect,
    client: Option<Client>,
}

impl Link {
    fn client(&mut self) -> Result<&mut Client, ::postgres::Error> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let mut client = self.config.connect(self.tls.clone())?;
            client.batch_execute(&format!("SET statement_timeout = '{STATEMENT_TIMEOUT}'"))?;
            self.client = Some(client);
        }
        Ok(self
            .client
            .as_mut()
            .expect("connected just above or before"))
    }
}

impl Conn {
    fn open(config: ::postgres::Config, tls: MakeRustlsConnect, target: Arc<str>) -> Result<Conn> {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("strait-store".into())
            .spawn(move || {
                let mut link = Link {
                    config,
                    tls,
                    client: None,
                };
                for job in rx {
                    job(&mut link);
                }
            })
            .context("starting the store thread")?;
        Ok(Conn { jobs, target })
    }

    fn err(&self) -> impl Fn(::postgres::Error) -> StoreError + Clone + Send + 'static {
        let target = self.target.to_string();
        move |error| StoreError::Postgres {
            target: target.clone(),
            error,
        }
    }

    /// Runs `f` on the connection's thread and waits for it. On a multi-threaded runtime
    /// the wait lets the runtime move other tasks off this worker.
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let err = self.err();
        let job: Job = Box::new(move |link: &mut Link| {
            let result = match link.client() {
                Ok(client) => f(client),
                Err(e) => Err(err(e)),
            };
            if link.client.as_ref().is_some_and(|c| c.is_closed()) {
                link.client = None;
            }
            let _ = tx.send(result);
        });
        let gone = || StoreError::Unavailable {
            target: self.target.to_string(),
            reason: "the store thread has stopped".into(),
        };
        self.jobs.send(job).map_err(|_| gone())?;
        let wait = || rx.recv().map_err(|_| gone());
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)?
            }
            _ => wait()?,
        }
    }
}

fn is_conflict(e: &::postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// The registry in a PostgreSQL (or CockroachDB) database. See the module documentation.
pub struct PgStore {
    conn: Conn,
    settings: Arc<Connect>,
    /// The generation the last `load` or `apply` saw; `None` after a failed write (whose
    /// outcome is unknown), which makes the next write reload first.
    seen: Option<u64>,
}

/// What opening another connection needs.
struct Connect {
    config: ::postgres::Config,
    tls: MakeRustlsConnect,
    target: Arc<str>,
    poll_interval: Duration,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.conn.target)
            .field("seen", &self.seen)
            .finish()
    }
}

impl PgStore {
    /// Connects as `[store]` says, creating the tables if they are missing.
    pub fn open(settings: &StoreConfig) -> Result<PgStore> {
        let url = read_url(settings)?;
        let mut config = parse_url(&url).context(if settings.url_file.is_some() {
            "key `store.url-file`"
        } else {
            "key `store.url`"
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("strait-coordinator");
        }
        config.keepalives_idle(Duration::from_secs(30));
        let tls = MakeRustlsConnect::new(tls_config(settings)?);
        let target: Arc<str> = describe(&config).into();
        let connect = Arc::new(Connect {
            config,
            tls,
            target: target.clone(),
            poll_interval: settings.poll_interval,
        });
        let conn = Conn::open(connect.config.clone(), connect.tls.clone(), target.clone())?;
        let err = conn.err();
        // Two coordinators starting at once may race on CREATE TABLE IF NOT EXISTS
        // (PostgreSQL can then fail on its catalog's unique index): try again.
        let mut last = None;
        for attempt in 0..5 {
            let err = err.clone();
            let done = conn.run(move |c| {
                // No "already exists, skipping" notices in the log.
                let _ = c.batch_execute("SET client_min_messages = warning");
                c.batch_execute(&create_tables(Dialect::Postgres))
                    .map_err(&err)?;
                c.execute(
                    "INSERT INTO meta (key, value) VALUES ('generation', '0') ON CONFLICT (key) DO NOTHING",
                    &[],
                )
                .map_err(&err)?;
                Ok(())
            });
            match done {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => {
                    let retry =
                        matches!(&e, StoreError::Postgres { error, .. } if error.code().is_some());
                    last = Some(e);
                    if !retry {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100 * (attempt + 1)));
                }
            }
        }
        if let Some(e) = last {
            let text = e.to_string();
            let hint = if text.contains("invalid peer certificate") {
                " (the database's TLS certificate is not trusted: name its CA in `store.ca-file`)"
            } else {
                ""
            };
            return Err(
                anyhow::Error::new(e).context(format!("opening the store (key `store`){hint}"))
            );
        }
        Ok(PgStore {
            conn,
            settings: connect,
            seen: None,
        })
    }

    /// A PostgreSQL store at `url` (tests and tools), polling every 200 ms.
    pub fn open_url(url: &str) -> Result<PgStore> {
        PgStore::open(&StoreConfig {
            kind: crate::config::StoreKind::Postgres,
            url_file: None,
            url: Some(url.to_string()),
            ..StoreConfig::default()
        })
    }
}

fn all<T: DeserializeOwned>(
    tx: &mut ::postgres::Transaction<'_>,
    table: &'static str,
    target: &str,
    err: &impl Fn(::postgres::Error) -> StoreError,
) -> Result<Vec<T>, StoreError> {
    let rows = tx
        .query(&format!("SELECT data FROM {table}"), &[])
        .map_err(err)?;
    rows.iter()
        .map(|row| {
            let text: String = row.try_get(0).map_err(err)?;
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                path: target.to_string(),
                table,
                reason: e.to_string(),
            })
        })
        .collect()
}

fn meta_u64(
    tx: &mut ::postgres::Transaction<'_>,
    key: &str,
    target: &str,
    err: &impl Fn(::postgres::Error) -> StoreError,
) -> Result<Option<u64>, StoreError> {
    let row = tx
        .query_opt("SELECT value FROM meta WHERE key = $1", &[&key])
        .map_err(err)?;
    let Some(row) = row else { return Ok(None) };
    let text: String = row.try_get(0).map_err(err)?;
    text.parse().map(Some).map_err(|_| StoreError::Corrupt {
        path: target.to_string(),
        table: "meta",
        reason: format!("{key} is {text:?}, not a number"),
    })
}

fn read_generation(
    client: &mut Client,
    target: &str,
    err: &impl Fn(::postgres::Error) -> StoreError,
) -> Result<u64, StoreError> {
    let row = client
        .query_opt("SELECT value FROM meta WHERE key = 'generation'", &[])
        .map_err(err)?;
    let Some(row) = row else { return Ok(0) };
    let text: String = row.try_get(0).map_err(err)?;
    text.parse().map_err(|_| StoreError::Corrupt {
        path: target.to_string(),
        table: "meta",
        reason: format!("generation is {text:?}, not a number"),
    })
}

fn presence_rows(rows: &[::postgres::Row]) -> Result<Vec<Presence>, ::postgres::Error> {
    rows.iter()
        .map(|r| {
            Ok(Presence {
                site: r.try_get(0)?,
                name: r.try_get(1)?,
                last_seen: r.try_get::<_, i64>(2)?.max(0) as u64,
                map_version: r.try_get::<_, i64>(3)?.max(0) as u64,
            })
        })
        .collect()
}

/// Everything stored, in one snapshot, with the generation it reflects. Heartbeats the
/// coordinators recorded in `presence` are folded into the nodes (they are newer).
fn load_snapshot(conn: &Conn) -> Result<(u64, Persisted), StoreError> {
    let err = conn.err();
    let target = conn.target.to_string();
    conn.run(move |c| {
        let mut tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(&err)?;
        let generation = meta_u64(&mut tx, "generation", &target, &err)?.unwrap_or(0);
        let version = meta_u64(&mut tx, "version", &target, &err)?.unwrap_or(0);
        let mut persisted = Persisted {
            nodes: all(&mut tx, "nodes", &target, &err)?,
            tokens: all(&mut tx, "tokens", &target, &err)?,
            revocations: all(&mut tx, "revocations", &target, &err)?,
            issued: all(&mut tx, "issued", &target, &err)?,
            version,
        };
        let rows = tx
            .query(
                "SELECT site, name, last_seen, map_version FROM presence",
                &[],
            )
            .map_err(&err)?;
        let presence = presence_rows(&rows).map_err(&err)?;
        tx.commit().map_err(&err)?;
        let seen: std::collections::HashMap<(&str, &str), &Presence> = presence
            .iter()
            .map(|p| ((p.site.as_str(), p.name.as_str()), p))
            .collect();
        for n in &mut persisted.nodes {
            if let Some(p) = seen.get(&(n.site.as_str(), n.name.as_str())) {
                n.last_seen = n.last_seen.max(p.last_seen);
                n.map_version = n.map_version.max(p.map_version);
            }
        }
        Ok((generation, persisted))
    })
}

impl Store for PgStore {
    fn load(&mut self) -> Result<Persisted, StoreError> {
        let (generation, persisted) = load_snapshot(&self.conn)?;
        self.seen = Some(generation);
        Ok(persisted)
    }

    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let Some(seen) = self.seen else {
            return Err(StoreError::Conflict);
        };
        let err = self.conn.err();
        let ops = ops.to_vec();
        let result = self.conn.run(move |c| {
            let mut tx = c.transaction().map_err(&err)?;
            let claimed = tx
                .execute(
                    "UPDATE meta SET value = $1 WHERE key = 'generation' AND value = $2",
                    &[&(seen + 1).to_string(), &seen.to_string()],
                )
                .map_err(&err)?;
            if claimed != 1 {
                let _ = tx.rollback();
                return Err(StoreError::Conflict);
            }
            for op in &ops {
                match op {
                    StoreOp::PutNode(n) => tx.execute(
                        "INSERT INTO nodes (site, name, data) VALUES ($1, $2, $3) ON CONFLICT (site, name) DO UPDATE SET data = excluded.data",
                        &[&n.site, &n.name, &json(n)],
                    ),
                    StoreOp::DeleteNode { site, name } => tx
                        .execute(
                            "DELETE FROM nodes WHERE site = $1 AND name = $2",
                            &[site, name],
                        )
                        .and_then(|_| {
                            tx.execute(
                                "DELETE FROM presence WHERE site = $1 AND name = $2",
                                &[site, name],
                            )
                        }),
                    StoreOp::PutToken(t) => tx.execute(
                        "INSERT INTO tokens (id, data) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET data = excluded.data",
                        &[&t.id, &json(t)],
                    ),
                    StoreOp::PutRevocation(r) => tx.execute(
                        "INSERT INTO revocations (serial, data) VALUES ($1, $2) ON CONFLICT (serial) DO UPDATE SET data = excluded.data",
                        &[&r.serial, &json(r)],
                    ),
                    StoreOp::PutIssued(i) => tx.execute(
                        "INSERT INTO issued (serial, data) VALUES ($1, $2) ON CONFLICT (serial) DO UPDATE SET data = excluded.data",
                        &[&i.serial, &json(i)],
                    ),
                    StoreOp::SetVersion(v) => tx.execute(
                        "INSERT INTO meta (key, value) VALUES ('version', $1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        &[&v.to_string()],
                    ),
                }
                .map_err(&err)?;
            }
            tx.commit().map_err(&err)
        });
        match result {
            Ok(()) => {
                self.seen = Some(seen + 1);
                Ok(())
            }
            Err(StoreError::Conflict) => Err(StoreError::Conflict),
            Err(StoreError::Postgres { error, .. }) if is_conflict(&error) => {
                Err(StoreError::Conflict)
            }
            Err(e) => {
                // The write may or may not have happened: reload before the next one.
                self.seen = None;
                Err(e)
            }
        }
    }

    fn append_audit(&mut self, entry: &AuditEntry) -> Result<u64, StoreError> {
        let err = self.conn.err();
        let (at, data) = (entry.at as i64, json(entry));
        self.conn.run(move |c| {
            let row = c
                .query_one(
                    "INSERT INTO audit (at, data) VALUES ($1, $2) RETURNING seq",
                    &[&at, &data],
                )
                .map_err(&err)?;
            Ok(row.get::<_, i64>(0) as u64)
        })
    }

    fn audit(&mut self, limit: u32, before: Option<u64>) -> Result<Vec<AuditEntry>, StoreError> {
        let err = self.conn.err();
        let target = self.conn.target.to_string();
        let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        let limit = i64::from(limit);
        self.conn.run(move |c| {
            let rows = c
                .query(
                    "SELECT seq, data FROM audit WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
                    &[&before, &limit],
                )
                .map_err(&err)?;
            rows.iter()
                .map(|r| super::audit_entry(r.get::<_, i64>(0) as u64, r.get(1), &target))
                .collect()
        })
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn changed_elsewhere(&mut self) -> Result<bool, StoreError> {
        let err = self.conn.err();
        let target = self.conn.target.to_string();
        let current = self.conn.run(move |c| read_generation(c, &target, &err))?;
        Ok(self.seen != Some(current))
    }

    fn generation(&self) -> Option<u64> {
        self.seen
    }

    fn adopt(&mut self, generation: u64) {
        self.seen = Some(generation);
    }

    fn watcher(&self) -> Option<Box<dyn Watcher>> {
        let s = &self.settings;
        match Conn::open(s.config.clone(), s.tls.clone(), s.target.clone()) {
            Ok(conn) => Some(Box::new(PgWatcher {
                conn,
                poll_interval: s.poll_interval,
            })),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot watch the shared store");
                None
            }
        }
    }
}

/// The background connection of a [`PgStore`].
struct PgWatcher {
    conn: Conn,
    poll_interval: Duration,
}

impl Watcher for PgWatcher {
    fn generation(&mut self) -> Result<u64, StoreError> {
        let err = self.conn.err();
        let target = self.conn.target.to_string();
        self.conn.run(move |c| read_generation(c, &target, &err))
    }

    fn load(&mut self) -> Result<(u64, Persisted), StoreError> {
        load_snapshot(&self.conn)
    }

    fn put_presence(&mut self, seen: &[Presence]) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        let err = self.conn.err();
        let seen = seen.to_vec();
        self.conn.run(move |c| {
            for chunk in seen.chunks(PRESENCE_CHUNK) {
                let mut sql = String::from(
                    "INSERT INTO presence (site, name, last_seen, map_version) VALUES ",
                );
                let numbers: Vec<(i64, i64)> = chunk
                    .iter()
                    .map(|p| (p.last_seen as i64, p.map_version as i64))
                    .collect();
                let mut params: Vec<&(dyn ::postgres::types::ToSql + Sync)> = Vec::new();
                for (i, (p, (seen, version))) in chunk.iter().zip(&numbers).enumerate() {
                    if i > 0 {
                        sql.push_str(", ");
                    }
                    let b = i * 4;
                    sql.push_str(&format!("(${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4));
                    params.extend([
                        &p.site as &(dyn ::postgres::types::ToSql + Sync),
                        &p.name,
                        seen,
                        version,
                    ]);
                }
                sql.push_str(
                    " ON CONFLICT (site, name) DO UPDATE SET \
                     last_seen = GREATEST(presence.last_seen, excluded.last_seen), \
                     map_version = GREATEST(presence.map_version, excluded.map_version)",
                );
                c.execute(sql.as_str(), &params).map_err(&err)?;
            }
            Ok(())
        })
    }

    fn presence(&mut self) -> Result<Vec<Presence>, StoreError> {
        let err = self.conn.err();
        self.conn.run(move |c| {
            let rows = c
                .query(
                    "SELECT site, name, last_seen, map_version FROM presence",
                    &[],
                )
                .map_err(&err)?;
            presence_rows(&rows).map_err(&err)
        })
    }

    fn poll_interval(&self) -> Duration {
        self.poll_interval
    }
}
