//! The store's tables, defined once and written out in SQLite's and PostgreSQL's dialect.
//! Records are JSON text in key-value tables, so a record gaining a field changes no table.

/// Which database the statements are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    /// PostgreSQL, and CockroachDB (see [`super::postgres`] for the subset used).
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Text,
    /// A 64-bit integer.
    Int,
    /// An increasing integer key the database assigns on insert.
    Serial,
}

struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Type)],
    /// Primary key columns.
    key: &'static [&'static str],
    /// Only stores that several coordinators share have it.
    shared_only: bool,
}

const TABLES: &[Table] = &[
    Table {
        name: "nodes",
        columns: &[
            ("site", Type::Text),
            ("name", Type::Text),
            ("data", Type::Text),
        ],
        key: &["site", "name"],
        shared_only: false,
    },
    Table {
        name: "tokens",
        columns: &[("id", Type::Text), ("data", Type::Text)],
        key: &["id"],
        shared_only: false,
    },
    Table {
        name: "revocations",
        columns: &[("serial", Type::Text), ("data", Type::Text)],
        key: &["serial"],
        shared_only: false,
    },
    Table {
        name: "issued",
        columns: &[("serial", Type::Text), ("data", Type::Text)],
        key: &["serial"],
        shared_only: false,
    },
    // `version` (the map version) and, shared, `generation` (writes by all coordinators).
    Table {
        name: "meta",
        columns: &[("key", Type::Text), ("value", Type::Text)],
        key: &["key"],
        shared_only: false,
    },
    // Heartbeats the coordinators sharing a store exchange (see `Presence`).
    Table {
        name: "presence",
        columns: &[
            ("site", Type::Text),
            ("name", Type::Text),
            ("last_seen", Type::Int),
            ("map_version", Type::Int),
        ],
        key: &["site", "name"],
        shared_only: true,
    },
    // Append-only.
    Table {
        name: "audit",
        columns: &[
            ("seq", Type::Serial),
            ("at", Type::Int),
            ("data", Type::Text),
        ],
        key: &["seq"],
        shared_only: false,
    },
];

/// The statements that create whatever tables are missing.
pub fn create_tables(dialect: Dialect) -> String {
    let mut sql = String::new();
    for t in TABLES {
        if t.shared_only && dialect == Dialect::Sqlite {
            continue;
        }
        let single_key = (t.key.len() == 1).then(|| t.key[0]);
        let mut columns: Vec<String> = t
            .columns
            .iter()
            .map(|&(name, ty)| {
                let base = match (ty, dialect) {
                    (Type::Int, Dialect::Sqlite) => "INTEGER",
                    (Type::Int, Dialect::Postgres) => "BIGINT",
                    _ => "TEXT",
                };
                let declared = match (ty, dialect) {
                    // A serial column is always its table's whole key.
                    (Type::Serial, Dialect::Sqlite) => "INTEGER PRIMARY KEY AUTOINCREMENT".into(),
                    (Type::Serial, Dialect::Postgres) => "BIGSERIAL PRIMARY KEY".into(),
                    _ if single_key == Some(name) => format!("{base} PRIMARY KEY"),
                    _ => format!("{base} NOT NULL"),
                };
                format!("{name} {declared}")
            })
            .collect();
        if single_key.is_none() {
            columns.push(format!("PRIMARY KEY ({})", t.key.join(", ")));
        }
        sql.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {} ({});\n",
            t.name,
            columns.join(", ")
        ));
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tables as each store created them before they had one definition: a store
    /// created by an older coordinator has exactly these.
    #[test]
    fn both_dialects_create_the_tables_they_always_had() {
        assert_eq!(
            create_tables(Dialect::Sqlite),
            "\
CREATE TABLE IF NOT EXISTS nodes (site TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (site, name));
CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS revocations (serial TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS issued (serial TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, data TEXT NOT NULL);
"
        );
        assert_eq!(
            create_tables(Dialect::Postgres),
            "\
CREATE TABLE IF NOT EXISTS nodes (site TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (site, name));
CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS revocations (serial TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS issued (serial TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS presence (site TEXT NOT NULL, name TEXT NOT NULL, last_seen BIGINT NOT NULL, map_version BIGINT NOT NULL, PRIMARY KEY (site, name));
CREATE TABLE IF NOT EXISTS audit (seq BIGSERIAL PRIMARY KEY, at BIGINT NOT NULL, data TEXT NOT NULL);
"
        );
    }
}
