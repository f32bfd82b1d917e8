//! The tables' shapes and what each section's statement returns, read once per
//! snapshot and kept per process.
//!
//! Every snapshot needs, for each section, the table's columns (to build the
//! select list) and the types of what the statement returns (to pick how each
//! column is rendered). Asking PostgreSQL for them section by section
//! (`information_schema.columns`, then a describe) cost two round trips and a good
//! deal of the server's CPU per section: for a small org, most of the export. So
//! one query reads the shape of every table of the schema ([`Catalog`]), and the
//! result of each describe is kept, keyed by the statement (its condition left
//! out: the org's id changes no type) and by a fingerprint of every table's shape.
//! Any change to any table's columns (added, dropped, retyped, renamed) changes the
//! fingerprint, so nothing described before it is used after it.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::{Arc, Mutex, OnceLock},
};

use super::row_json::Render;

/// What a section's statement returns: each column's name and how it is rendered
/// (`None`: through `to_json`).
pub type Columns = Arc<Vec<(String, Option<Render>)>>;

/// Every table of the current schema: its columns in order, and a fingerprint of
/// all of them.
#[derive(Debug, Default)]
pub struct Catalog {
    tables: HashMap<String, Vec<String>>,
    fingerprint: u64,
}

impl Catalog {
    /// Reads the shape of every table of the current schema in one query (names,
    /// types and type modifiers of its live columns).
    pub async fn load(conn: &mut sqlx::PgConnection) -> sqlx::Result<Self> {
        let rows: Vec<(String, Vec<String>, String)> = sqlx::query_as(
            "select c.relname::text, array_agg(a.attname::text order by a.attnum),
                    string_agg(a.attname || ':' || a.atttypid::text || ':' || a.atttypmod::text, ',' order by a.attnum)
             from pg_class c
             join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
             where c.relnamespace = current_schema()::regnamespace and c.relkind in ('r', 'p', 'v')
             group by c.relname order by c.relname",
        )
        .fetch_all(conn)
        .await?;
        let mut hasher = DefaultHasher::new();
        let mut tables = HashMap::with_capacity(rows.len());
        for (table, columns, shape) in rows {
            (&table, &shape).hash(&mut hasher);
            tables.insert(table, columns);
        }
        Ok(Self { tables, fingerprint: hasher.finish() })
    }

    /// The columns of `table` in the catalog's order; `None` for no such table.
    pub fn columns(&self, table: &str) -> Option<&[String]> {
        self.tables.get(table).map(Vec::as_slice)
    }

    /// The key of a statement's description under this catalog.
    pub fn key(&self, statement: &str) -> u64 {
        let mut hasher = DefaultHasher::new();
        (self.fingerprint, statement).hash(&mut hasher);
        hasher.finish()
    }
}

/// The most descriptions kept; past it the cache starts over (each schema change
/// leaves the old ones unused).
const CAPACITY: usize = 4096;

fn cache() -> &'static Mutex<HashMap<u64, Columns>> {
    static CACHE: OnceLock<Mutex<HashMap<u64, Columns>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// The description kept under `key`, if any.
pub fn get(key: u64) -> Option<Columns> {
    cache().lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key).cloned()
}

/// Keeps a description under `key`.
pub fn put(key: u64, columns: Columns) {
    let mut cache = cache().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if cache.len() >= CAPACITY {
        cache.clear();
    }
    cache.insert(key, columns);
}
