//! The snapshot pipeline: what the org export, the data-subject export and the
//! CLI's `export --out` all run.
//!
//! One REPEATABLE READ, READ ONLY transaction gives the consistent read: a
//! [`Reader`] opens it, the caller reads its header values and adds its sections in
//! it, and [`Reader::finish`] makes the [`Snapshot`]. Counts come first; then three stages run at once, joined by bounded channels so memory
//! stays flat whatever the org's size:
//!
//! ```text
//! PostgreSQL (binary COPY of plain columns) -> [COPY batches, bounded]
//!   -> JSON rows (render thread) -> [raw chunks, bounded, dealt in turn]
//!   -> deflate (COMPRESS_THREADS threads, one chunk each) -> [compressed blocks, bounded]
//!   -> gzip member + SHA-256 (gzip thread, blocks in order) -> [parts of PART_SIZE, bounded]
//!   -> sink: S3 multipart upload (PARTS_IN_FLIGHT at once) or a local file
//! ```
//!
//! The async reader only moves bytes; the CPU work (rendering, compressing) runs on
//! threads of its own at a lowered priority, off the runtime that serves web
//! requests. Compression is split the way `pigz` splits it: each chunk is deflated
//! on its own, with the 32 KiB before it as its dictionary and ending on a byte
//! boundary (a sync flush), so the blocks joined in order are one deflate stream, and
//! the gzip thread writes them as one gzip member with the CRC-32 of the whole
//! (combined from the blocks'). Each stage keeps a [`StageClock`]; the [`Outcome`]'s
//! [`Timeline`] shows where they waited on each other.
//!
//! Nothing is published until everything succeeded: the multipart upload is
//! completed (or the temp file renamed) last, and aborted (or removed) on any error.

use std::{
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicUsize, Ordering},
    },
    time::Instant,
};

use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use flate2::{Compress, Compression, FlushCompress};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use sqlx::{Column, Executor, PgPool, Postgres, Statement, Transaction};
use tokio::sync::{mpsc, watch};

use super::{
    columns::{Apply, Classes, select_list},
    copy_binary::CopyDecoder,
    described::{self, Catalog},
    row_json::{Render, RowFormat},
    sink::SinkUpload,
    timeline::{StageClock, StageTime, Timeline, Wait},
};

/// Binary COPY bytes are handed to the renderer in batches of about this size.
pub const COPY_BATCH: usize = 256 * 1024;
/// Room a batch or chunk has beyond its size, for the row (or COPY message) that
/// takes it past: without it, that one row would double the buffer.
const SLACK: usize = 64 * 1024;
/// COPY batches waiting for the renderer.
pub const COPY_QUEUE: usize = 4;
/// Raw JSON is handed to the compressor in chunks of about this size.
pub const RAW_CHUNK: usize = 256 * 1024;
/// Raw chunks waiting for each compressing thread.
pub const RAW_QUEUE: usize = 2;
/// Threads deflating chunks side by side. Two keep both cores of a small machine busy
/// while PostgreSQL and the renderer run; the JSON does not depend on the number.
pub const COMPRESS_THREADS: usize = 2;
/// Compressed blocks waiting for the gzip thread, per compressing thread.
pub const BLOCK_QUEUE: usize = 2;
/// The deflate window: each chunk is compressed with the bytes before it, up to this
/// many, as its dictionary, so splitting costs almost nothing in size.
const WINDOW: usize = 32 * 1024;
/// Compressed parts waiting for the sink.
pub const PART_QUEUE: usize = 1;
/// The default gzip level (`EXPORT_GZIP_LEVEL` sets another). At 3 zlib-rs searches
/// much shorter match chains than at 5: at 3.9 M rows the export took 12-13% less
/// time, for a file 6% larger (about 1.05 of `gzip -6`'s; see docs/benchmarks.md).
pub const GZIP_LEVEL: u32 = crate::config::DEFAULT_EXPORT_GZIP_LEVEL;

/// The result of a finished snapshot.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub size_bytes: u64,
    pub sha256: String,
    pub rows: i64,
    pub seconds: f64,
    pub buffers: Buffers,
    /// Where each stage spent its time.
    pub timeline: Timeline,
}

/// What the pipeline held in memory: how many COPY batches, raw chunks and
/// compressed parts it made, and the largest of each. With the bounded queues these
/// bound its memory (at most `COPY_QUEUE + 2` batches, `COMPRESS_THREADS *
/// (RAW_QUEUE + BLOCK_QUEUE + 1) + 1` chunks or their blocks and `PART_QUEUE + 2`
/// parts plus the uploads in flight exist at once), whatever the org's size.
#[derive(Debug, Clone, Copy, Default)]
pub struct Buffers {
    pub batches: u64,
    pub max_batch_bytes: usize,
    pub chunks: u64,
    pub max_chunk_bytes: usize,
    pub parts: u64,
    pub max_part_bytes: usize,
}

/// An open consistent read, with its header and its sections' counts known.
pub struct Snapshot {
    tx: Transaction<'static, Postgres>,
    pub snapshot_at: DateTime<Utc>,
    header: Header,
    /// Each section with how it is read and its row count.
    sections: Vec<(String, Plan, i64)>,
    /// How many connections described and counted the sections (1 or 2).
    connections: usize,
    /// The deflate level (see [`Self::with_level`]).
    level: u32,
}

/// What a file says before its sections' rows:
/// `{"format":F,"version":1,"<id_key>":ID,"generated_at":..,"snapshot_at":..,` then
/// each of `fields`, then `"counts"`, then `"sections":{`, which starts with
/// `lead` when there is one.
pub struct Header {
    /// The file's `format`, e.g. `data-export/snapshot`.
    pub format: &'static str,
    /// The key the file's id is written under, e.g. `export_id`.
    pub id_key: &'static str,
    /// Values read in the same snapshot, as JSON text, in order.
    pub fields: Vec<(&'static str, String)>,
    /// A section written first as one object rather than an array of rows (the org
    /// snapshot's `organization`); it counts as one row.
    pub lead: Option<(&'static str, String)>,
}

/// One section to read: its name in the file, its table, and the condition (on
/// alias `t`) that selects its rows, with ids inlined as numbers (never text from
/// input).
#[derive(Clone)]
pub struct SectionQuery {
    pub name: &'static str,
    pub table: &'static str,
    pub condition: String,
    /// How the table's columns are classified: only written columns are read, and a
    /// column it does not classify is left out (with a warning).
    pub classes: &'static Classes,
    /// Whether pseudonymised columns go through their rule (and the rows through
    /// the classification's order).
    pub apply: Apply,
    /// Expressions (on alias `t`) replacing some exported columns' values.
    pub overrides: Vec<(&'static str, String)>,
}

impl SectionQuery {
    /// The section of `classes.table` named after it, every written column as
    /// classified, no override.
    pub fn new(classes: &'static Classes, condition: String, apply: Apply) -> Self {
        Self { name: classes.table, table: classes.table, condition, classes, apply, overrides: Vec::new() }
    }
}

/// A consistent read being set up: the transaction is open, sections are being
/// listed; [`Self::finish`] describes and counts them.
pub struct Reader {
    pool: PgPool,
    tx: Transaction<'static, Postgres>,
    snapshot_at: DateTime<Utc>,
    queries: Vec<SectionQuery>,
}

impl Reader {
    /// Opens the read. Everything read through [`Self::conn`] and every section
    /// added sees the database as of one instant (the snapshot's `snapshot_at`).
    pub async fn begin(pool: &PgPool) -> anyhow::Result<Self> {
        let (tx, snapshot_at) = begin_snapshot(pool).await?;
        Ok(Self { pool: pool.clone(), tx, snapshot_at, queries: Vec::new() })
    }

    /// The read's connection, for the caller's header values (read only).
    pub fn conn(&mut self) -> &mut sqlx::PgConnection {
        &mut self.tx
    }

    /// Adds a section, described and counted by [`Self::finish`].
    pub fn add(&mut self, query: &SectionQuery) {
        self.queries.push(query.clone());
    }

    /// Describes each section's columns and counts its rows, then gives the
    /// snapshot, ready to [`Snapshot::write`].
    ///
    /// The counts take a few hundred milliseconds on a large org, all of it
    /// PostgreSQL's, and nothing downstream can start before they are known (they
    /// are in the header). So they are shared out over two connections when the pool
    /// has a second within [`SHARE_WAIT`]: it imports this transaction's snapshot
    /// (`pg_export_snapshot` / `SET TRANSACTION SNAPSHOT`, as `pg_dump -j` does),
    /// so every count still sees the one instant. Without one, or if it fails, the
    /// rest runs here.
    pub async fn finish(mut self, header: Header) -> anyhow::Result<Snapshot> {
        let queries = std::mem::take(&mut self.queries);
        // Every table's shape in one query (see `described`).
        let catalog = Catalog::load(&mut self.tx).await.context("reading the tables' columns")?;
        let catalog = &catalog;
        let mut second = if queries.len() > 1 { share_snapshot(&mut self.tx, &self.pool).await? } else { None };
        let next = AtomicUsize::new(0);
        let (mut done, theirs) = match second.as_mut() {
            Some(other) => {
                let (mine, theirs) = tokio::join!(
                    describe(&mut self.tx, &queries, &next, catalog),
                    describe(other, &queries, &next, catalog)
                );
                (mine?, theirs)
            }
            None => (describe(&mut self.tx, &queries, &next, catalog).await?, Ok(Vec::new())),
        };
        // The connections that counted something (a second that failed counts none).
        let connections = 1 + usize::from(matches!(&theirs, Ok(t) if !t.is_empty()));
        let theirs = match theirs {
            Ok(theirs) => theirs,
            Err(e) => {
                // The second connection is only a help: what it did not finish is done
                // here (a fault of the section itself fails here too).
                tracing::warn!(error = format!("{e:#}"), "the second connection failed; counting the rest on one");
                let mut redone = Vec::new();
                for (i, query) in queries.iter().enumerate() {
                    if !done.iter().any(|(mine, ..)| *mine == i) {
                        let (plan, n) = section(&mut self.tx, query, catalog).await?;
                        redone.push((i, plan, n));
                    }
                }
                redone
            }
        };
        if let Some(other) = second {
            // Read only: nothing to keep.
            let _ = other.rollback().await;
        }
        done.extend(theirs);
        done.sort_by_key(|(i, ..)| *i);
        let sections = done.into_iter().map(|(i, plan, n)| (queries[i].name.to_string(), plan, n)).collect();
        Ok(Snapshot { tx: self.tx, snapshot_at: self.snapshot_at, header, sections, connections, level: GZIP_LEVEL })
    }
}

/// Opens a second REPEATABLE READ, READ ONLY transaction on the snapshot of `tx`,
/// if the pool has a connection for it within [`SHARE_WAIT`]; `None` otherwise (the
/// caller reads everything on `tx`, which is only slower). An error on `tx` (which
/// would abort the read) is the caller's.
///
/// Only taking the connection is under the time limit: a BEGIN cut short went back
/// to the pool inside a transaction on sqlx 0.9.0 (launchbadge/sqlx#4385; 0.9.1
/// rolls it back, #4394), and a free connection begins at once anyway. Once begun,
/// a transaction that is dropped is rolled back before the pool hands it out again.
async fn share_snapshot(
    tx: &mut Transaction<'static, Postgres>,
    pool: &PgPool,
) -> anyhow::Result<Option<Transaction<'static, Postgres>>> {
    let id: String = sqlx::query_scalar("select pg_export_snapshot()").fetch_one(&mut **tx).await?;
    // PostgreSQL's own identifier (hex digits and dashes), checked before it is inlined.
    anyhow::ensure!(
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'),
        "unexpected snapshot identifier {id:?}"
    );
    let conn = match tokio::time::timeout(SHARE_WAIT, pool.acquire()).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "counting on one connection: no second connection");
            return Ok(None);
        }
        Err(_) => {
            tracing::debug!("counting on one connection: no second connection was free");
            return Ok(None);
        }
    };
    let shared = async {
        // (`Transaction::begin` is what `Pool::begin` runs once it has a connection.)
        let mut other = Transaction::begin(conn, None).await?;
        // As pg_dump -j: the isolation level, then the snapshot, before any query.
        sqlx::query("set transaction isolation level repeatable read, read only").execute(&mut *other).await?;
        // Not prepared: each export's id would stay in the connection's statement cache.
        sqlx::query(sqlx::AssertSqlSafe(format!("set transaction snapshot '{id}'")))
            .persistent(false)
            .execute(&mut *other)
            .await?;
        set_read_session(&mut other).await?;
        Ok::<_, sqlx::Error>(other)
    };
    match shared.await {
        Ok(other) => Ok(Some(other)),
        Err(e) => {
            tracing::debug!(error = %e, "counting on one connection: the snapshot could not be shared");
            Ok(None)
        }
    }
}

/// The session settings of every transaction of a read (the first, and the one
/// that shares its snapshot), so that both see values alike.
async fn set_read_session(tx: &mut Transaction<'static, Postgres>) -> sqlx::Result<()> {
    sqlx::query("set local timezone = 'UTC'").execute(&mut **tx).await?;
    Ok(())
}

/// How long [`Reader::finish`] waits for a second connection before it counts on
/// its own.
const SHARE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Describes and counts sections of `queries` on `conn`, taking the next one from
/// `next` until none is left: two of these on two connections share the work
/// whatever each section costs. Gives each one's index, plan and count.
async fn describe(
    conn: &mut sqlx::PgConnection,
    queries: &[SectionQuery],
    next: &AtomicUsize,
    catalog: &Catalog,
) -> anyhow::Result<Vec<(usize, Plan, i64)>> {
    let mut done = Vec::new();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(query) = queries.get(i) else { return Ok(done) };
        let (plan, n) = section(conn, query, catalog).await?;
        done.push((i, plan, n));
    }
}

/// Starts a REPEATABLE READ, READ ONLY transaction and returns its instant.
async fn begin_snapshot(pool: &PgPool) -> anyhow::Result<(Transaction<'static, Postgres>, DateTime<Utc>)> {
    let mut tx = pool
        .begin_with("begin isolation level repeatable read, read only")
        .await
        .context("opening the snapshot transaction")?;
    // The first statement fixes the snapshot; its clock is the snapshot's instant.
    let (snapshot_at,): (DateTime<Utc>,) = sqlx::query_as("select clock_timestamp()").fetch_one(&mut *tx).await?;
    set_read_session(&mut tx).await?;
    Ok((tx, snapshot_at))
}

/// The select list of a section: the table's columns in the catalog, as its
/// classification says. Columns it does not classify are left out and logged.
fn columns(catalog: &Catalog, query: &SectionQuery) -> anyhow::Result<String> {
    let table = query.table;
    let in_catalog = catalog.columns(table).with_context(|| format!("there is no table {table}"))?;
    let (cols, unclassified) = select_list(query.classes, in_catalog, query.apply, &query.overrides);
    for column in unclassified {
        tracing::warn!(
            table,
            column = %column,
            "a column the registry does not classify was left out of the file: classify it in the column registry"
        );
    }
    anyhow::ensure!(!cols.is_empty(), "table {table} has no columns to write");
    Ok(cols.join(", "))
}

/// How one section is read: a binary COPY of its columns' plain values, and how each
/// tuple becomes the JSON object `row_to_json` would give (see [`row_json`]).
struct Plan {
    copy: String,
    row: RowFormat,
}

/// The plan and the row count of `select .. from table t where condition`.
async fn section(
    conn: &mut sqlx::PgConnection,
    query: &SectionQuery,
    catalog: &Catalog,
) -> anyhow::Result<(Plan, i64)> {
    let (table, condition) = (query.table, &query.condition);
    let cols = columns(catalog, query)?;
    // The stored order can say who did what (rows are in the order they were
    // written): where the classification gives an order, pseudonymised rows follow it.
    let order = match (query.apply, query.classes.order) {
        (Apply::Pseudonyms, Some(order)) => format!(" order by {order}"),
        _ => String::new(),
    };
    // What the rules read beside the row (one row at most, so the count below holds).
    let join = match (query.apply, query.classes.join) {
        (Apply::Pseudonyms, Some(join)) => format!(" {join}"),
        _ => String::new(),
    };
    // Table names come from fixed registries; conditions hold only numeric ids.
    let inner = format!("select {cols} from {table} t{join} where {condition}{order}");
    // The statement's result columns, with their types, without running it: kept
    // per process under the statement without its condition (see `described`).
    let key = catalog.key(&format!("select {cols} from {table} t{join} where ?{order}"));
    let columns = match described::get(key) {
        Some(columns) => columns,
        None => {
            let statement = (&mut *conn)
                .prepare(sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(inner.clone())))
                .await
                .with_context(|| format!("describing {table}"))?;
            let columns: described::Columns = std::sync::Arc::new(
                statement
                    .columns()
                    .iter()
                    .map(|c| (c.name().to_string(), Render::for_type(c.type_info().oid().map(|o| o.0))))
                    .collect(),
            );
            described::put(key, columns.clone());
            columns
        }
    };
    let select_list: Vec<String> = columns
        .iter()
        .map(|(name, render)| {
            let col = format!("r.\"{}\"", name.replace('"', "\"\""));
            if render.is_some() { col } else { format!("to_json({col})") }
        })
        .collect();
    let copy = format!("copy (select {} from ({inner}) r) to stdout (format binary)", select_list.join(", "));
    let row = RowFormat::new(columns.iter().map(|(name, render)| (name.as_str(), render.unwrap_or(Render::Json))));
    let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!("select count(*) from {table} t where {condition}")))
        .fetch_one(&mut *conn)
        .await?;
    Ok((Plan { copy, row }, n))
}

impl Snapshot {
    /// Writes the file at deflate `level` (1 fastest and largest, 9 slowest and
    /// smallest; clamped to that range) instead of [`GZIP_LEVEL`]. The JSON is the
    /// same at every level.
    pub fn with_level(mut self, level: u32) -> Self {
        self.level = level.clamp(1, 9);
        self
    }

    /// How many connections described and counted the sections: 2 when a second
    /// one shared the snapshot and counted at least one, else 1.
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// Rows to be written (the lead section's one included).
    pub fn rows_total(&self) -> i64 {
        self.head_rows() + self.sections.iter().map(|s| s.2).sum::<i64>()
    }

    /// Rows written in the header: the lead section's one.
    fn head_rows(&self) -> i64 {
        if self.header.lead.is_some() { 1 } else { 0 }
    }

    /// `counts` as JSON, in section order.
    pub fn counts_json(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if let Some((name, _)) = &self.header.lead {
            parts.push(format!("\"{name}\":1"));
        }
        for (name, _, n) in &self.sections {
            parts.push(format!("\"{name}\":{n}"));
        }
        format!("{{{}}}", parts.join(","))
    }

    /// Everything before the first section's rows (see [`Header`]).
    fn header(&self, id: &str) -> String {
        let ts = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
        let h = &self.header;
        let mut out = format!(
            "{{\"format\":{},\"version\":1,\"{}\":{},\"generated_at\":\"{}\",\"snapshot_at\":\"{}\"",
            serde_json::to_string(h.format).unwrap_or_default(),
            h.id_key,
            serde_json::to_string(id).unwrap_or_default(),
            ts(Utc::now()),
            ts(self.snapshot_at),
        );
        for (key, value) in &h.fields {
            out.push_str(&format!(",\n\"{key}\":{value}"));
        }
        out.push_str(&format!(",\n\"counts\":{},\n\"sections\":{{", self.counts_json()));
        if let Some((name, value)) = &h.lead {
            out.push_str(&format!("\n\"{name}\":{value}"));
        }
        out
    }

    /// Streams the snapshot into an opened sink (see [`super::sink::Sink::start`]).
    /// `export_id` is the file's id (under [`Header::id_key`]).
    /// `progress` receives rows written so far.
    pub async fn write(
        self,
        export_id: &str,
        upload: SinkUpload,
        progress: &watch::Sender<i64>,
    ) -> anyhow::Result<Outcome> {
        let started = Instant::now();
        let (piece_tx, piece_rx) = mpsc::channel::<Piece>(COPY_QUEUE);
        let (block_txs, block_rxs): (Vec<_>, Vec<_>) =
            (0..COMPRESS_THREADS).map(|_| mpsc::channel::<Block>(RAW_QUEUE)).unzip();
        let (done_txs, done_rxs): (Vec<_>, Vec<_>) =
            (0..COMPRESS_THREADS).map(|_| mpsc::channel::<Deflated>(BLOCK_QUEUE)).unzip();
        let (part_tx, part_rx) = mpsc::channel::<Bytes>(PART_QUEUE);
        let part_size = super::sink::PART_SIZE;
        let rows_done = Arc::new(AtomicI64::new(self.head_rows()));
        let level = self.level;
        let sink_clock = StageClock::new(if upload.upload_id().is_some() { "upload" } else { "write" }, started);
        let uploader = tokio::spawn(upload.consume(part_rx, sink_clock));
        let threads = {
            let rows_done = rows_done.clone();
            move || -> anyhow::Result<_> {
                let renderer = background_thread("dx-render", move || {
                    render(piece_rx, block_txs, &rows_done, StageClock::on_this_thread("render", started))
                })?;
                let mut deflaters = Vec::with_capacity(COMPRESS_THREADS);
                for (i, (blocks, done)) in block_rxs.into_iter().zip(done_txs).enumerate() {
                    let clock = move || StageClock::on_this_thread(format!("deflate {}", i + 1), started);
                    deflaters.push(background_thread("dx-deflate", move || deflate(blocks, done, level, clock()))?);
                }
                let gzip = background_thread("dx-gzip", move || {
                    join_member(done_rxs, part_tx, part_size, StageClock::on_this_thread("gzip", started))
                })?;
                Ok((renderer, deflaters, gzip))
            }
        };
        let (renderer, deflaters, gzip) = match threads() {
            Ok(threads) => threads,
            Err(e) => {
                // The threads that started end as their channels close; the sink got
                // nothing and is aborted, so no partial file or upload is left.
                if let Ok((Ok(pending), _)) = uploader.await {
                    pending.abort().await;
                }
                return Err(e);
            }
        };
        let read = self.produce(export_id, piece_tx, progress, &rows_done, StageClock::new("read", started)).await;
        // A panicked stage is an error like any other, so the abort path still runs.
        let stopped = |what: &str| anyhow::anyhow!("the {what} stopped");
        let rendered = renderer.await.unwrap_or_else(|_| Err(stopped("renderer")));
        let mut deflated = Vec::with_capacity(deflaters.len());
        for d in deflaters {
            deflated.push(d.await.unwrap_or_else(|_| Err(stopped("compressor"))));
        }
        let compressed = gzip.await.unwrap_or_else(|_| Err(stopped("compressor")));
        let (uploaded, sink_clock) = match uploader.await {
            Ok((result, clock)) => (result, Some(clock)),
            Err(e) => (Err(anyhow::anyhow!("the upload task stopped: {e}")), None),
        };
        if let Ok(rendered) = &rendered {
            progress.send_replace(rendered.rows);
        }
        // The first real error wins; channel closures are only its echo.
        // It is returned as it is, so callers can still tell where it came from (the
        // storage endpoint, the database).
        let mut deflate_times = Vec::with_capacity(deflated.len());
        let mut deflate_errors = Vec::new();
        for d in deflated {
            match d {
                Ok(time) => deflate_times.push(time),
                Err(e) => deflate_errors.push(e),
            }
        }
        let deflated: anyhow::Result<()> = match deflate_errors.iter().position(|e| !is_downstream(e)) {
            Some(i) => Err(deflate_errors.swap_remove(i)),
            None => deflate_errors.pop().map_or(Ok(()), Err),
        };
        let errors = [
            uploaded.as_ref().err(),
            read.as_ref().err(),
            rendered.as_ref().err(),
            deflated.as_ref().err(),
            compressed.as_ref().err(),
        ];
        let failure = errors
            .iter()
            .position(|e| e.is_some_and(|e| !is_downstream(e)))
            .or_else(|| errors.iter().position(Option::is_some));
        match (failure, read, rendered, compressed, uploaded) {
            (None, Ok((batches, read_time)), Ok(rendered), Ok(joined), Ok(pending)) => {
                let last_byte = Instant::now();
                pending.complete(joined.size, &joined.sha256).await?;
                let publish = last_byte.elapsed();
                let mut stages = vec![read_time, rendered.time];
                stages.extend(deflate_times);
                stages.push(joined.time);
                stages.extend(sink_clock.map(StageClock::finish));
                Ok(Outcome {
                    size_bytes: joined.size,
                    sha256: joined.sha256,
                    rows: rendered.rows,
                    seconds: started.elapsed().as_secs_f64(),
                    buffers: Buffers {
                        batches: batches.0,
                        max_batch_bytes: batches.1,
                        chunks: rendered.chunks,
                        max_chunk_bytes: rendered.max_chunk,
                        parts: joined.parts,
                        max_part_bytes: joined.largest,
                    },
                    timeline: Timeline { wall: started.elapsed(), stages, publish },
                })
            }
            (failure, read, rendered, compressed, uploaded) => {
                let uploaded = match uploaded {
                    Ok(pending) => {
                        pending.abort().await;
                        None
                    }
                    Err(e) => Some(e),
                };
                let mut errors = [uploaded, read.err(), rendered.err(), deflated.err(), compressed.err()];
                Err(failure.and_then(|i| errors[i].take()).unwrap_or_else(|| anyhow::anyhow!("the export failed")))
            }
        }
    }

    /// Reads the snapshot, section by section, and hands the renderer the JSON text
    /// between rows and each section's binary COPY bytes in batches of about
    /// [`COPY_BATCH`]. Returns the batches made and the largest, and its time.
    async fn produce(
        mut self,
        export_id: &str,
        out: mpsc::Sender<Piece>,
        progress: &watch::Sender<i64>,
        rows_done: &AtomicI64,
        mut clock: StageClock,
    ) -> anyhow::Result<((u64, usize), StageTime)> {
        // Waits while the renderer is behind: this is the back-pressure.
        async fn send(out: &mpsc::Sender<Piece>, clock: &mut StageClock, piece: Piece) -> anyhow::Result<()> {
            let from = Instant::now();
            let sent = out.send(piece).await.map_err(|_| anyhow::Error::new(Downstream));
            clock.record(Wait::Out, from, Instant::now());
            sent
        }
        let (mut batches, mut largest) = (0u64, 0usize);
        send(&out, &mut clock, Piece::Text(self.header(export_id).into_bytes())).await?;
        progress.send_replace(rows_done.load(Ordering::Relaxed));
        for (i, (table, plan, expected)) in std::mem::take(&mut self.sections).into_iter().enumerate() {
            // A lead section came first, in the header.
            let comma = if i == 0 && self.header.lead.is_none() { "" } else { "," };
            send(&out, &mut clock, Piece::Text(format!("{comma}\n\"{table}\":[").into_bytes())).await?;
            let mut stream = self.tx.copy_out_raw(&plan.copy).await.with_context(|| format!("reading {table}"))?;
            send(&out, &mut clock, Piece::Section { name: table.clone(), row: plan.row, expected }).await?;
            let mut batch = Vec::with_capacity(COPY_BATCH + SLACK);
            loop {
                let next = next_waited(&mut stream, &mut clock)
                    .await
                    .transpose()
                    .with_context(|| format!("reading {table}"))?;
                if let Some(bytes) = &next {
                    batch.extend_from_slice(bytes);
                }
                if batch.len() >= COPY_BATCH || (next.is_none() && !batch.is_empty()) {
                    batches += 1;
                    largest = largest.max(batch.len());
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(COPY_BATCH + SLACK));
                    send(&out, &mut clock, Piece::Copy(full)).await?;
                    progress.send_replace(rows_done.load(Ordering::Relaxed));
                }
                if next.is_none() {
                    break;
                }
            }
            drop(stream);
            send(&out, &mut clock, Piece::End).await?;
        }
        send(&out, &mut clock, Piece::Text(b"\n}}\n".to_vec())).await?;
        self.tx.commit().await?;
        Ok(((batches, largest), clock.finish()))
    }
}

/// The stream's next item; the time it had to wait for one counts as waiting on input.
async fn next_waited<S: futures::Stream + Unpin>(stream: &mut S, clock: &mut StageClock) -> Option<S::Item> {
    std::future::poll_fn(|cx| clock.observe_input(stream.poll_next_unpin(cx))).await
}

/// What the reader hands the renderer, in order.
enum Piece {
    /// JSON text to write as it is: the header, a section's opening, the end.
    Text(Vec<u8>),
    /// A section's rows follow: how to render them, and how many were counted.
    Section { name: String, row: RowFormat, expected: i64 },
    /// Binary COPY bytes of the current section, cut anywhere.
    Copy(Vec<u8>),
    /// The current section's COPY stream ended.
    End,
}

/// What the renderer made.
struct Rendered {
    rows: i64,
    chunks: u64,
    max_chunk: usize,
    time: StageTime,
}

/// The section being rendered.
struct Open {
    name: String,
    row: RowFormat,
    expected: i64,
    decoder: CopyDecoder,
    written: i64,
}

/// Turns the reader's pieces into JSON, in chunks of about [`RAW_CHUNK`] dealt to
/// the compressing threads in turn, checking each section's rows against its count.
/// `rows_done` follows the rows written, for progress.
fn render(
    mut pieces: mpsc::Receiver<Piece>,
    outs: Vec<mpsc::Sender<Block>>,
    rows_done: &AtomicI64,
    clock: StageClock,
) -> anyhow::Result<Rendered> {
    let mut w = ChunkWriter {
        buf: Vec::with_capacity(RAW_CHUNK + SLACK),
        outs,
        window: Vec::with_capacity(WINDOW),
        chunks: 0,
        max_chunk: 0,
        clock,
    };
    let mut rows = rows_done.load(Ordering::Relaxed);
    let mut open: Option<Open> = None;
    while let Some(piece) = w.clock.wait(Wait::In, || pieces.blocking_recv()) {
        match piece {
            Piece::Text(text) => w.buf.extend_from_slice(&text),
            Piece::Section { name, row, expected } => {
                open = Some(Open { name, row, expected, decoder: CopyDecoder::default(), written: 0 });
            }
            Piece::Copy(bytes) => {
                let s = open.as_mut().context("COPY data outside a section")?;
                s.decoder
                    .feed(&bytes, |count, fields| {
                        w.buf.extend_from_slice(if s.written == 0 { b"\n" } else { b",\n" });
                        s.row.render(count, fields, &mut w.buf)?;
                        s.written += 1;
                        w.flush_if_full()
                    })
                    .with_context(|| format!("reading {}", s.name))?;
                rows_done.store(rows + s.written, Ordering::Relaxed);
            }
            Piece::End => {
                let s = open.take().context("a section ended that never started")?;
                s.decoder.finish().with_context(|| format!("reading {}", s.name))?;
                anyhow::ensure!(
                    s.written == s.expected,
                    "section {} has {} rows but {} were counted in the same snapshot",
                    s.name,
                    s.written,
                    s.expected
                );
                rows += s.written;
                rows_done.store(rows, Ordering::Relaxed);
                w.buf.push(b']');
            }
        }
    }
    anyhow::ensure!(open.is_none(), "the snapshot ended inside a section");
    w.flush()?;
    Ok(Rendered { rows, chunks: w.chunks, max_chunk: w.max_chunk, time: w.clock.finish() })
}

/// A downstream stage went away; the real error is that stage's.
#[derive(Debug, thiserror::Error)]
#[error("a pipeline stage stopped early")]
pub struct Downstream;

fn is_downstream(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Downstream>().is_some()
}

/// A chunk of JSON to deflate, with the bytes before it (up to [`WINDOW`]) as its
/// dictionary.
struct Block {
    raw: Vec<u8>,
    dictionary: Vec<u8>,
}

/// A deflated [`Block`]: raw deflate ending on a byte boundary, with the CRC-32 and
/// length of its input.
struct Deflated {
    data: Vec<u8>,
    crc: crc32fast::Hasher,
    raw_len: u64,
}

/// Gathers JSON into chunks of about [`RAW_CHUNK`] and deals them to the compressing
/// threads in turn.
struct ChunkWriter {
    buf: Vec<u8>,
    outs: Vec<mpsc::Sender<Block>>,
    /// The last [`WINDOW`] bytes handed over.
    window: Vec<u8>,
    chunks: u64,
    max_chunk: usize,
    clock: StageClock,
}

impl ChunkWriter {
    /// Hands the chunk over once it reached [`RAW_CHUNK`] (so a chunk is at most one
    /// row over).
    fn flush_if_full(&mut self) -> anyhow::Result<()> {
        if self.buf.len() >= RAW_CHUNK { self.flush() } else { Ok(()) }
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let raw = std::mem::replace(&mut self.buf, Vec::with_capacity(RAW_CHUNK + SLACK));
        let mut window = Vec::with_capacity(WINDOW);
        let kept = WINDOW.saturating_sub(raw.len()).min(self.window.len());
        window.extend_from_slice(&self.window[self.window.len() - kept..]);
        window.extend_from_slice(&raw[raw.len().saturating_sub(WINDOW)..]);
        let dictionary = std::mem::replace(&mut self.window, window);
        let out = &self.outs[(self.chunks % self.outs.len() as u64) as usize];
        self.chunks += 1;
        self.max_chunk = self.max_chunk.max(raw.len());
        // Waits while that compressor is behind: this is the back-pressure.
        self.clock.wait(Wait::Out, || out.blocking_send(Block { raw, dictionary })).map_err(|_| Downstream)?;
        Ok(())
    }
}

/// Deflates the blocks it is dealt, each on its own (see the module's notes), and
/// passes them on in the order they came.
fn deflate(
    mut blocks: mpsc::Receiver<Block>,
    out: mpsc::Sender<Deflated>,
    level: u32,
    mut clock: StageClock,
) -> anyhow::Result<StageTime> {
    let mut deflater = Compress::new(Compression::new(level), false);
    while let Some(block) = clock.wait(Wait::In, || blocks.blocking_recv()) {
        deflater.reset();
        if !block.dictionary.is_empty() {
            deflater.set_dictionary(&block.dictionary).context("setting a block's dictionary")?;
        }
        let mut data = Vec::with_capacity(block.raw.len() / 4 + 64);
        deflate_block(&mut deflater, &block.raw, &mut data)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&block.raw);
        let deflated = Deflated { data, crc, raw_len: block.raw.len() as u64 };
        clock.wait(Wait::Out, || out.blocking_send(deflated)).map_err(|_| Downstream)?;
    }
    Ok(clock.finish())
}

/// Deflates `raw` into `out`, ending with a sync flush: every byte of input is in the
/// output, which ends on a byte boundary, and the stream is not finished.
fn deflate_block(deflater: &mut Compress, raw: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
    let start = deflater.total_in();
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(4096));
        }
        let consumed = (deflater.total_in() - start) as usize;
        deflater.compress_vec(&raw[consumed..], out, FlushCompress::Sync).context("deflating a block")?;
        // The flush is complete once all input is taken and output room was left over.
        if (deflater.total_in() - start) as usize == raw.len() && out.len() < out.capacity() {
            return Ok(());
        }
    }
}

/// The gzip member's header: deflate, no name, no time, unknown OS (as flate2 writes it).
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// A final, empty, fixed-Huffman deflate block: ends the stream after the last sync flush.
const DEFLATE_END: [u8; 2] = [0x03, 0x00];

/// What the gzip thread made.
struct Joined {
    size: u64,
    sha256: String,
    parts: u64,
    largest: usize,
    time: StageTime,
}

/// Writes the gzip member: the header, the deflated blocks in the order they were
/// dealt (from each compressing thread in turn), the end of the deflate stream and
/// the trailer (CRC-32 and length of the whole JSON), into parts of `part_size`,
/// hashing with SHA-256 as it goes.
fn join_member(
    mut blocks: Vec<mpsc::Receiver<Deflated>>,
    parts: mpsc::Sender<Bytes>,
    part_size: usize,
    clock: StageClock,
) -> anyhow::Result<Joined> {
    let mut w = PartWriter {
        buf: Vec::with_capacity(part_size),
        part_size,
        parts,
        hasher: Sha256::new(),
        size: 0,
        made: 0,
        largest: 0,
        clock,
    };
    w.write_all(&GZIP_HEADER).map_err(io_to_anyhow)?;
    let (mut crc, mut length) = (crc32fast::Hasher::new(), 0u64);
    // Block i came from thread i % n; the first thread with nothing more is the end,
    // since blocks are dealt in turn. A thread that failed ends early too: its error
    // fails the snapshot before anything is published.
    let n = blocks.len();
    for i in 0.. {
        let from = &mut blocks[i % n];
        let Some(block) = w.clock.wait(Wait::In, || from.blocking_recv()) else { break };
        crc.combine(&block.crc);
        length += block.raw_len;
        w.write_all(&block.data).map_err(io_to_anyhow)?;
    }
    w.write_all(&DEFLATE_END).map_err(io_to_anyhow)?;
    w.write_all(&crc.finalize().to_le_bytes()).map_err(io_to_anyhow)?;
    // ISIZE is the length modulo 2^32.
    w.write_all(&(length as u32).to_le_bytes()).map_err(io_to_anyhow)?;
    w.send_part()?;
    Ok(Joined {
        size: w.size,
        sha256: hex::encode(w.hasher.finalize()),
        parts: w.made,
        largest: w.largest,
        time: w.clock.finish(),
    })
}

/// Nice value of the renderer's and the compressor's threads: an export is background work, so the
/// scheduler serves web requests first when they compete for a core, and gives the
/// export every idle cycle otherwise.
pub const BACKGROUND_NICE: i32 = 10;

/// Runs `work` on a thread of its own at [`BACKGROUND_NICE`]; the receiver gets its
/// result (an error if it panicked). A thread of its own rather than tokio's blocking
/// pool, whose threads are reused and could not get their priority back unprivileged.
fn background_thread<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<anyhow::Result<T>>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let label = name.to_string();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            lower_this_threads_priority(BACKGROUND_NICE);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the export's {label} thread panicked")));
            let _ = tx.send(result);
        })
        .map_err(|e| anyhow::anyhow!("cannot start the export's {name} thread: {e}"))?;
    Ok(rx)
}

/// Sets the calling thread's nice value (Linux applies `setpriority` per thread). A
/// refusal only costs the preference, so it is logged, not fatal.
fn lower_this_threads_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread, with no pointers.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS as _, libc::gettid() as _, nice) };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower an export thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

fn io_to_anyhow(e: std::io::Error) -> anyhow::Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Downstream>()) { Downstream.into() } else { e.into() }
}

struct PartWriter {
    buf: Vec<u8>,
    part_size: usize,
    parts: mpsc::Sender<Bytes>,
    hasher: Sha256,
    size: u64,
    made: u64,
    largest: usize,
    clock: StageClock,
}

impl PartWriter {
    fn send_part(&mut self) -> anyhow::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let part = std::mem::replace(&mut self.buf, Vec::with_capacity(self.part_size));
        self.made += 1;
        self.largest = self.largest.max(part.len());
        let parts = &self.parts;
        self.clock.wait(Wait::Out, || parts.blocking_send(Bytes::from(part))).map_err(|_| Downstream)?;
        Ok(())
    }
}

impl Write for PartWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = self.part_size - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        self.hasher.update(&data[..n]);
        self.size += n as u64;
        if self.buf.len() >= self.part_size {
            self.send_part().map_err(|_| std::io::Error::other(Downstream))?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// `data` through the chunk writer, the compressing threads and the gzip thread,
    /// in chunks of `chunk` bytes; returns the file and its SHA-256.
    fn gzip_in_blocks(data: &[u8], chunk: usize) -> (Vec<u8>, String) {
        let origin = Instant::now();
        let (block_txs, block_rxs): (Vec<_>, Vec<_>) =
            (0..COMPRESS_THREADS).map(|_| mpsc::channel::<Block>(RAW_QUEUE)).unzip();
        let (done_txs, done_rxs): (Vec<_>, Vec<_>) =
            (0..COMPRESS_THREADS).map(|_| mpsc::channel::<Deflated>(BLOCK_QUEUE)).unzip();
        let (part_tx, mut part_rx) = mpsc::channel::<Bytes>(PART_QUEUE);
        let deflaters: Vec<_> = block_rxs
            .into_iter()
            .zip(done_txs)
            .map(|(b, d)| std::thread::spawn(move || deflate(b, d, GZIP_LEVEL, StageClock::new("deflate", origin))))
            .collect();
        let joiner =
            std::thread::spawn(move || join_member(done_rxs, part_tx, 1 << 20, StageClock::new("gzip", origin)));
        let collector = std::thread::spawn(move || {
            let mut file = Vec::new();
            while let Some(part) = part_rx.blocking_recv() {
                assert!(part.len() <= 1 << 20);
                file.extend_from_slice(&part);
            }
            file
        });
        let mut w = ChunkWriter {
            buf: Vec::new(),
            outs: block_txs,
            window: Vec::new(),
            chunks: 0,
            max_chunk: 0,
            clock: StageClock::new("render", origin),
        };
        for piece in data.chunks(chunk) {
            w.buf.extend_from_slice(piece);
            w.flush().unwrap();
        }
        drop(w);
        for d in deflaters {
            d.join().unwrap().unwrap();
        }
        let joined = joiner.join().unwrap().unwrap();
        let file = collector.join().unwrap();
        assert_eq!(joined.size, file.len() as u64);
        (file, joined.sha256)
    }

    #[test]
    fn blocks_deflated_apart_make_one_gzip_member_of_the_same_bytes() {
        // JSON-like rows with repeats across chunk boundaries, and some noise.
        let mut data = Vec::new();
        let mut x = 12345u64;
        for i in 0..60_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            data.extend_from_slice(
                format!("{{\"id\":{i},\"email\":\"member{}@acme.test\",\"noise\":{}}},\n", i % 977, x >> 40).as_bytes(),
            );
        }
        let mut single = flate2::write::GzEncoder::new(Vec::new(), Compression::new(GZIP_LEVEL));
        single.write_all(&data).unwrap();
        let single = single.finish().unwrap();
        for chunk in [1, 1000, 40_000, RAW_CHUNK, data.len()] {
            let (file, sha) = gzip_in_blocks(&data[..if chunk == 1 { 5_000 } else { data.len() }], chunk);
            let expected = if chunk == 1 { &data[..5_000] } else { &data[..] };
            // One member: the single-member decoder reads it all, checking CRC-32 and length.
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&file[..]).read_to_end(&mut back).unwrap();
            assert!(back == expected, "chunks of {chunk}: the JSON differs");
            let mut member = flate2::read::GzDecoder::new(&file[..]);
            std::io::copy(&mut member, &mut std::io::sink()).unwrap();
            assert!(member.into_inner().is_empty(), "chunks of {chunk}: bytes after the member");
            assert_eq!(sha, hex::encode(Sha256::digest(&file)));
            if chunk >= 40_000 {
                // The 32 KiB dictionary keeps splitting almost free.
                let ratio = file.len() as f64 / single.len() as f64;
                assert!(ratio < 1.01, "chunks of {chunk}: {} bytes against {} in one piece", file.len(), single.len());
            }
        }
        // The same input in the same chunks gives the same file, whichever thread took which.
        assert_eq!(gzip_in_blocks(&data, RAW_CHUNK), gzip_in_blocks(&data, RAW_CHUNK));
    }

    #[tokio::test]
    async fn background_work_runs_on_a_lowered_priority_thread_and_reports_panics() {
        let seen = background_thread("dx-test", || {
            // SAFETY: plain system calls on the calling thread.
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS as _, libc::gettid() as _) };
            Ok((std::thread::current().name().map(str::to_string), nice))
        })
        .unwrap()
        .await
        .unwrap()
        .unwrap();
        assert_eq!(seen, (Some("dx-test".to_string()), BACKGROUND_NICE));
        // The caller's own thread keeps its priority.
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getpriority(libc::PRIO_PROCESS as _, libc::gettid() as _) }, 0);

        let failed = background_thread("dx-test", || -> anyhow::Result<()> { panic!("boom") }).unwrap().await.unwrap();
        assert!(failed.unwrap_err().to_string().contains("panicked"));
    }
}
