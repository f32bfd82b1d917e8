//! The import engine: a version-1 org snapshot streamed into a new org, all or
//! nothing.
//!
//! ```text
//! file -> gzip -> JSON (snapshot::verify::read, on a blocking thread: schema, counts,
//!         SHA-256) -> each row checked against its table and encoded as a COPY text
//!         line -> [batches, bounded] -> COPY into a staging table per section
//! staging -> checks (duplicate ids, foreign org ids, references to rows not in the
//!         file, modules) -> people mapped by email -> INSERT .. SELECT through the
//!         staging tables' new ids -> the org's bucket and its media -> commit
//! ```
//!
//! Every staging row gets its new id from the target table's own sequence as it is
//! copied in (a column default of `nextval`), so new ids follow the file's row order
//! and every reference is rewritten by a join on the old id. Memory stays flat: one
//! row and a few COPY batches are in memory at a time; the rest is in PostgreSQL.
//! Everything happens in one transaction on a connection of its own (closed
//! afterwards), so a failure at any byte leaves no org, no rows and no accounts;
//! objects copied into the new bucket (and the bucket, when this import created it)
//! are removed before the error is returned.

use std::{
    collections::{BTreeMap, HashMap},
    io::Read,
    sync::Arc,
    time::Instant,
};

use anyhow::Context;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, value::RawValue};
use sqlx::{Connection, PgConnection};
use tokio::sync::mpsc;

use super::{
    fast::{self, WritePath},
    steps::{Step, Steps},
};
use crate::{
    audit,
    orgs::{
        self, OrgSlug, columns,
        modules::Module,
        sections::{ADDED_LATER, SECTIONS},
    },
    snapshot::verify,
    state::AppState,
    storage::Storage,
};

/// What to import, and as whom.
#[derive(Clone, Debug)]
pub struct Request {
    /// The new org's slug, as typed (checked here: format, and not taken).
    pub slug: String,
    /// The new org's name; the file's organization name when `None`.
    pub name: Option<String>,
    /// Read and check everything, then roll back: nothing is kept.
    pub dry_run: bool,
    /// Who asked (the audit entry's actor); `None` from the command line.
    pub actor: Option<i64>,
    /// Where the request came from: `cli`, `ui` or `api` (in the audit entry).
    pub via: &'static str,
    /// When the caller read the file from this completed export's object: the file's
    /// `export_id` must be it, and its SHA-256 the one recorded on the run.
    pub source_export_id: Option<String>,
    /// The `org_imports` record behind this import, if any, and the attempt that
    /// holds it: the record is marked completed in the import's own transaction,
    /// so the org exists exactly when its record says completed.
    pub import_id: Option<String>,
    pub attempt: i32,
    /// What the check this import confirms reported: the import is refused unless
    /// the file and the people it matches are still those.
    pub expect: Option<Expected>,
}

/// What a confirmed check saw (see [`Request::expect`]).
#[derive(Clone, Debug)]
pub struct Expected {
    pub sha256: String,
    pub matched: Vec<Matched>,
}

/// Why an import did not happen. Either way nothing of it is left behind.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The input is bad: the file, the slug or the name. The text is one line.
    #[error("{0}")]
    Rejected(String),
    /// Something else failed (the database, the storage).
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for ImportError {
    fn from(e: anyhow::Error) -> Self {
        Self::Failed(e)
    }
}

impl From<sqlx::Error> for ImportError {
    fn from(e: sqlx::Error) -> Self {
        Self::Failed(e.into())
    }
}

/// What an import did (or, for a dry run, would do).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub org: String,
    /// The new org's id (`None` for a dry run).
    pub org_id: Option<i64>,
    pub name: String,
    /// Rows written, over every section (the organization's own row included).
    pub rows: u64,
    pub sections: BTreeMap<String, u64>,
    /// People matched to an existing account by the email in `user_profiles`.
    pub users_matched: u64,
    /// Accounts created (they cannot sign in) for emails no account has.
    pub users_created: u64,
    /// Accounts created for people a row needs but who have no profile in the file
    /// (`unknown-{org}-{id}@import.invalid`; they cannot sign in either).
    pub users_without_profile: u64,
    /// References to people with no profile in optional columns (an audit entry by a
    /// platform admin, say), which became null.
    pub user_references_cleared: u64,
    /// Every existing account the file matched, with the role and membership it
    /// gets in the new org (DESIGN "Restore, round 2"), platform admins and org
    /// admins first.
    #[serde(default)]
    pub matched: Vec<Matched>,
    /// Matched accounts that join suspended: every one from a file that is not a
    /// recorded export; from a recorded export, those no longer active members of
    /// the source org.
    #[serde(default)]
    pub users_suspended: u64,
    pub media: Media,
    pub source: Source,
    /// How the rows were written: `fast` (references checked set-based by the
    /// engine, no per-row foreign-key checks) or `per_row`; `None` in reports
    /// recorded before it was reported.
    #[serde(default)]
    pub write_path: Option<WritePath>,
    /// Why the rows were written `per_row`, when they were.
    #[serde(default)]
    pub write_path_reason: Option<String>,
    pub seconds: f64,
    pub dry_run: bool,
}

/// An existing account the file matched, and what it gets in the new org.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Matched {
    pub email: String,
    /// `admin` or `member`; `None` when the file gives the person no membership.
    pub role: Option<String>,
    pub platform_admin: bool,
    /// `active`, `suspended` (or `lapsed`, as the file has it); `None` without a
    /// membership.
    pub membership: Option<String>,
}

/// The documents' binaries.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Media {
    /// Objects copied server-side from the source org's bucket.
    pub copied: u64,
    /// Documents whose object was not in the source bucket.
    pub missing: u64,
    /// The first few missing keys.
    pub missing_keys: Vec<String>,
    /// Why nothing was copied, when nothing was tried (a file from elsewhere, a dry run).
    pub not_copied: Option<String>,
}

/// Where the file came from.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Source {
    pub sha256: String,
    pub size_bytes: u64,
    pub export_id: String,
    /// The slug of the org the file was exported from.
    pub org: String,
    /// Whether `export_id` is a completed export run of this platform whose recorded
    /// SHA-256 the file matched.
    pub recorded_run: bool,
}

/// Checks a slug for a new org: its format, and that no org has it.
pub async fn check_slug(pool: &sqlx::PgPool, slug: &str) -> Result<OrgSlug, ImportError> {
    let parsed = OrgSlug::parse(slug).ok_or_else(|| {
        ImportError::Rejected(format!(
            "{slug:?} is not a valid org slug (3 to 40 of a-z, 0-9 and '-', not starting or ending with '-')"
        ))
    })?;
    if let Some(why) = crate::orgs::closed_slug_refusal(pool, parsed.as_str()).await? {
        return Err(ImportError::Rejected(why));
    }
    if crate::orgs::find_by_slug(pool, parsed.as_str()).await?.is_some() {
        return Err(ImportError::Rejected(format!("the slug {slug:?} is taken by an existing org")));
    }
    Ok(parsed)
}

/// COPY text sent to PostgreSQL in batches of about this size.
const BATCH: usize = 256 * 1024;
/// Batches waiting for the database.
const QUEUE: usize = 4;
/// Server-side copies of media run this many at a time.
const COPIES_AT_ONCE: usize = 8;
/// Missing media keys named in the report.
const MISSING_KEYS_SHOWN: usize = 20;

fn rejected(msg: impl Into<String>) -> ImportError {
    ImportError::Rejected(msg.into())
}

/// Imports the snapshot read from `input` (the compressed bytes) as a new org.
pub async fn import<R: Read + Send + 'static>(
    state: &AppState,
    input: R,
    request: Request,
) -> Result<Report, ImportError> {
    let started = Instant::now();
    let slug = check_slug(&state.pool, &request.slug).await?;
    if let Some(name) = &request.name {
        check_name(name)?;
    }
    // A connection of its own, closed afterwards: a COPY cut off by an error must
    // not leave a half-used connection in the pool.
    let mut conn = state.pool.acquire().await?.detach();
    let mut media = Copied::default();
    // The step is written on the pool, beside the import's open transaction.
    let steps = match &request.import_id {
        Some(id) => Steps::of_record(state.pool.clone(), id.clone(), request.attempt),
        None => Steps::default(),
    };
    let result = run(state, &mut conn, input, &request, &slug, &mut media, &steps, started).await;
    let _ = conn.close().await;
    match result {
        Ok(report) => Ok(report),
        Err(e) => {
            // When the commit's answer was lost, the commit may have happened: the
            // org is then there, and its bucket must stay.
            if media.committing && crate::orgs::find_by_slug(&state.pool, slug.as_str()).await.ok().flatten().is_some()
            {
                return Err(ImportError::Failed(anyhow::anyhow!(
                    "the database's answer to the commit was lost, and org {} exists: check it before importing again ({e})",
                    slug.as_str()
                )));
            }
            // The transaction was not committed: the database keeps nothing. Remove
            // what this import put in storage.
            media.remove(&state.storage).await;
            Err(e)
        }
    }
}

fn check_name(name: &str) -> Result<(), ImportError> {
    let n = name.trim().chars().count();
    if n == 0 || n > 200 {
        return Err(rejected("the org's name must be 1 to 200 characters"));
    }
    Ok(())
}

/// What this import put in storage, removed again when it fails. The bucket is
/// always one this import created or found empty, so everything in it is this
/// import's.
#[derive(Default)]
struct Copied {
    bucket: Option<String>,
    bucket_created: bool,
    /// The commit was sent.
    committing: bool,
}

impl Copied {
    async fn remove(&mut self, storage: &Storage) {
        let Some(bucket) = &self.bucket else { return };
        if let Err(e) = storage.empty_bucket(bucket).await {
            tracing::warn!(
                bucket,
                error = format!("{e:#}"),
                "could not remove the copied objects after a failed import"
            );
            return;
        }
        if self.bucket_created
            && let Err(e) = storage.delete_bucket(bucket).await
        {
            tracing::warn!(bucket, error = format!("{e:#}"), "could not remove the bucket of a failed import");
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run<R: Read + Send + 'static>(
    state: &AppState,
    conn: &mut PgConnection,
    input: R,
    request: &Request,
    slug: &OrgSlug,
    media: &mut Copied,
    steps: &Steps,
    started: Instant,
) -> Result<Report, ImportError> {
    steps.enter(Step::Reading).await;
    let mut tx = Connection::begin(conn).await?;
    let catalog = Arc::new(Catalog::load(&mut tx).await?);
    catalog.create_staging(&mut tx).await?;

    // The file, streamed into the staging tables.
    let (checked, header) = stage(&mut tx, catalog.clone(), input).await?;
    let file_org = header.get("organization").cloned().unwrap_or(Value::Null);
    let file_org_id =
        file_org.get("id").and_then(Value::as_i64).ok_or_else(|| rejected("the organization has no id"))?;
    let source = source(&mut tx, request, &checked, &file_org).await?;
    if let Some(expected) = &request.expect
        && !expected.sha256.eq_ignore_ascii_case(&source.sha256)
    {
        return Err(rejected(format!(
            "the file's SHA-256 is {}, not {} as when it was checked: check it again",
            source.sha256, expected.sha256
        )));
    }
    let modules = modules_of(&header, &checked.counts)?;
    steps.enter(Step::Checking).await;

    // The file's own consistency, before anything is written. Temporary tables get
    // no statistics unless asked: without them the planner takes a section of a
    // million rows for a few and checks references by nested loops.
    let present: Vec<&Table> = catalog.tables.iter().filter(|t| checked.counts.contains_key(t.name)).collect();
    for table in &present {
        sqlx::query(sqlx::AssertSqlSafe(format!("analyze {}", table.staging()))).execute(&mut *tx).await?;
    }
    for table in &present {
        table.check(&mut tx, &catalog, file_org_id).await?;
    }
    check_object_keys(&mut tx).await?;

    // The org, its modules, its people, its rows.
    let name = match &request.name {
        Some(n) => n.trim().to_string(),
        None => {
            let n = file_org.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            check_name(&n)?;
            n
        }
    };
    let bucket = orgs::bucket_for(&state.storage, slug);
    let created_at = file_org.get("created_at").and_then(Value::as_str).unwrap_or_default();
    let org_id: i64 = sqlx::query_scalar(
        "insert into organizations (slug, name, bucket, created_at) values ($1, $2, $3, $4::timestamptz) returning id",
    )
    .bind(slug.as_str())
    .bind(&name)
    .bind(&bucket)
    .bind(created_at)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| rejected_db("the organization", e))?;
    for (m, on) in &modules {
        sqlx::query("insert into org_modules (org_id, module, enabled, updated_by) values ($1, $2, $3, $4)")
            .bind(org_id)
            .bind(m.key())
            .bind(on)
            .bind(request.actor)
            .execute(&mut *tx)
            .await?;
    }
    steps.enter(Step::People).await;
    let people = map_people(&mut tx, &catalog, org_id).await?;
    sqlx::query("analyze import_users").execute(&mut *tx).await?;
    for table in &present {
        table.check_people(&mut tx).await?;
    }

    // The fast write where it is sound and allowed (see `fast`), else each row's
    // keys checked by PostgreSQL as before.
    let mut per_row = fast::unsound(&mut tx, |t, c| catalog.checks(t, c)).await?;
    if per_row.is_none() {
        per_row = fast::begin(&mut tx).await?;
    }
    if per_row.is_none() {
        fast::lock_accounts(&mut tx).await?;
    }
    // Who joins suspended is written with the memberships (an update of them
    // afterwards took longer than writing them).
    let trust = trust_of(&mut tx, &source).await?;
    let suspend = suspends(trust);
    let suspended = match &suspend {
        Some(condition) => count_suspended(&mut tx, condition).await?,
        None => 0,
    };
    let mut sections = BTreeMap::from([("organization".to_string(), 1u64)]);
    let mut cleared = 0;
    let imported_from = serde_json::json!({
        "export_id": source.export_id,
        "org": source.org,
        "sha256": source.sha256,
        "recorded_run": source.recorded_run,
    });
    for (i, table) in present.iter().enumerate() {
        steps.enter(Step::Writing { n: i + 1, of: present.len(), section: table.name }).await;
        let (written, nulls) = table.publish(&mut tx, &catalog, org_id, &imported_from, suspend.as_deref()).await?;
        cleared += nulls;
        sections.insert(table.name.to_string(), written);
    }
    if per_row.is_none() {
        fast::end(&mut tx).await?;
        // The work of the triggers that `replica` turned off (`fast::KNOWN_TRIGGERS`).
        if checked.counts.contains_key("election_votes") {
            fast::participants_of_votes(&mut tx, org_id).await?;
        }
    }
    for (name, n) in &sections {
        let declared = checked.counts.get(name).copied().unwrap_or(0);
        if declared != *n {
            return Err(ImportError::Failed(anyhow::anyhow!(
                "section {name}: {n} rows written, but the file has {declared}"
            )));
        }
    }

    let matched = matched_people(&mut tx, org_id).await?;
    if let Some(expected) = &request.expect
        && expected.matched != matched
    {
        return Err(rejected(
            "the accounts the file matches, or the roles or memberships they would get, changed since the check: check it again",
        ));
    }

    let mut report = Report {
        org: slug.as_str().to_string(),
        org_id: (!request.dry_run).then_some(org_id),
        name,
        rows: sections.values().sum(),
        sections,
        users_matched: people.matched,
        users_created: people.created,
        users_without_profile: people.placeholders,
        user_references_cleared: cleared,
        matched,
        users_suspended: suspended,
        media: Media::default(),
        source,
        write_path: Some(if per_row.is_none() { WritePath::Fast } else { WritePath::PerRow }),
        write_path_reason: per_row,
        seconds: 0.0,
        dry_run: request.dry_run,
    };
    if request.dry_run {
        report.media.not_copied = Some("a dry run copies nothing".into());
        report.seconds = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
        tx.rollback().await?;
        steps.done();
        return Ok(report);
    }

    // The org's bucket, as provisioning makes it, and the documents' binaries. A
    // bucket of that name that holds objects (left by an org deleted outside the
    // product) is refused: its files would show through the new org's documents.
    steps.enter(Step::Media).await;
    let exists = state.storage.bucket_exists(&bucket).await?;
    if exists && !state.storage.bucket_is_empty(&bucket).await? {
        return Err(rejected(format!(
            "the bucket {bucket} already holds objects (left by an earlier org with this slug?): empty it or choose another slug"
        )));
    }
    media.bucket = Some(bucket.clone());
    media.bucket_created = !exists;
    state.storage.ensure_bucket(&bucket).await?;
    report.media = copy_media(&mut tx, &state.storage, &report.source, &bucket).await?;

    let details = serde_json::json!({
        "via": request.via,
        "import_id": request.import_id,
        "source": report.source,
        "counts": report.sections,
        "rows": report.rows,
        "users_matched": report.users_matched,
        "users_created": report.users_created,
        "users_without_profile": report.users_without_profile,
        "user_references_cleared": report.user_references_cleared,
        "users_suspended": report.users_suspended,
        "matched_admins": report.matched.iter().filter(|m| m.platform_admin || m.role.as_deref() == Some("admin"))
            .map(|m| &m.email).collect::<Vec<_>>(),
        "media": report.media,
    });
    steps.enter(Step::Finishing).await;
    audit::write(&mut *tx, Some(org_id), request.actor, "org.imported", slug.as_str(), details).await?;
    report.seconds = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    if let Some(id) = &request.import_id {
        let json = serde_json::to_value(&report).context("the report as JSON")?;
        let marked = sqlx::query(
            "update org_imports set status = 'completed', finished_at = now(), report = $3, restored_org_id = $4, error = null,
                                    step = null
             where id = $1 and status = 'running' and attempt = $2",
        )
        .bind(id)
        .bind(request.attempt)
        .bind(json)
        .bind(org_id)
        .execute(&mut *tx)
        .await?;
        if marked.rows_affected() != 1 {
            return Err(ImportError::Failed(anyhow::anyhow!(
                "import {id} is no longer held by attempt {}: another attempt took it over",
                request.attempt
            )));
        }
    }
    media.committing = true;
    tx.commit().await?;
    steps.done();
    Ok(report)
}

/// Streams the file into the staging tables: the reader (gzip, JSON, schema, each
/// row against its table) on a blocking thread, COPY on this one.
async fn stage<R: Read + Send + 'static>(
    tx: &mut PgConnection,
    catalog: Arc<Catalog>,
    input: R,
) -> Result<(verify::Report, serde_json::Map<String, Value>), ImportError> {
    let (batches, mut rx) = mpsc::channel::<Batch>(QUEUE);
    let reader_catalog = catalog.clone();
    let reader = tokio::task::spawn_blocking(move || read_rows(input, &reader_catalog, batches));
    let written = copy_batches(tx, &catalog, &mut rx).await;
    // Stop the reader if the database side stopped first.
    drop(rx);
    let read = reader.await.map_err(|e| ImportError::Failed(anyhow::anyhow!("the file reader stopped: {e}")))?;
    // A database error explains a reader that was cut off; a bad file explains a
    // COPY that was never finished.
    match (read, written) {
        (Ok(found), Ok(())) => Ok(found),
        (Err(bad), Ok(())) => Err(bad),
        (Err(bad), Err(_)) if !matches!(bad, ImportError::Failed(_)) && bad.to_string() != STOPPED => Err(bad),
        (_, Err(e)) => Err(e),
    }
}

const STOPPED: &str = "the database side stopped";

/// COPY text for one section.
struct Batch {
    table: usize,
    bytes: Vec<u8>,
}

fn read_rows<R: Read>(
    input: R,
    catalog: &Catalog,
    out: mpsc::Sender<Batch>,
) -> Result<(verify::Report, serde_json::Map<String, Value>), ImportError> {
    let mut current: Option<(usize, Vec<u8>, u64)> = None;
    let send = |b: Batch| out.blocking_send(b).map_err(|_| verify::Invalid(STOPPED.into()));
    let result = verify::read(input, None, &mut |section, raw, row| {
        let index = catalog.index(section).ok_or_else(|| verify::Invalid(format!("unknown section {section:?}")))?;
        if current.as_ref().is_some_and(|c| c.0 != index)
            && let Some((table, bytes, _)) = current.take()
        {
            send(Batch { table, bytes })?;
        }
        let (_, buf, n) = current.get_or_insert_with(|| (index, Vec::with_capacity(BATCH + 4096), 0));
        *n += 1;
        catalog.tables[index]
            .encode(raw, row, buf)
            .map_err(|why| verify::Invalid(format!("row {n} of section {section}: {why}")))?;
        if buf.len() >= BATCH {
            let bytes = std::mem::replace(buf, Vec::with_capacity(BATCH + 4096));
            send(Batch { table: index, bytes })?;
        }
        Ok(())
    });
    match result {
        Ok(found) => {
            if let Some((table, bytes, _)) = current.take()
                && !bytes.is_empty()
            {
                send(Batch { table, bytes }).map_err(|e| rejected(e.0))?;
            }
            Ok(found)
        }
        Err(e) => Err(rejected(e.0)),
    }
}

async fn copy_batches(
    tx: &mut PgConnection,
    catalog: &Catalog,
    rx: &mut mpsc::Receiver<Batch>,
) -> Result<(), ImportError> {
    // Sections come one after the other: one COPY per section.
    let mut next = rx.recv().await;
    while let Some(first) = next.take() {
        let index = first.table;
        let table = &catalog.tables[index];
        let what = format!("section {}", table.name);
        let mut copy = tx.copy_in_raw(&table.copy_statement()).await?;
        let mut batch = Some(first);
        while let Some(b) = batch.take() {
            if let Err(e) = copy.send(b.bytes).await {
                let _ = copy.abort("the import stopped").await;
                return Err(rejected_db(&what, e));
            }
            match rx.recv().await {
                Some(b) if b.table == index => batch = Some(b),
                other => next = other,
            }
        }
        copy.finish().await.map_err(|e| rejected_db(&what, e))?;
    }
    Ok(())
}

/// A database error caused by the file's content becomes a one-line rejection
/// naming where; any other error stays a failure.
fn rejected_db(what: &str, e: sqlx::Error) -> ImportError {
    match &e {
        sqlx::Error::Database(db) => {
            let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
            let mut msg = format!("{what}: {}", db.message());
            if let Some(detail) = pg.and_then(|p| p.detail()) {
                msg.push_str(&format!(" ({detail})"));
            }
            if let Some(at) = pg.and_then(|p| p.r#where()) {
                // "COPY import_chapters, line 3, column founded_on: ..." -> "row 3, column founded_on: ..."
                let at = at.lines().next().unwrap_or_default();
                let at =
                    at.split_once(", line ").map(|(_, rest)| format!("row {rest}")).unwrap_or_else(|| at.to_string());
                msg.push_str(&format!(" at {at}"));
            }
            rejected(msg.replace('\n', " "))
        }
        _ => ImportError::Failed(anyhow::Error::new(e).context(format!("importing {what}"))),
    }
}

/// What a column holds, for checking a JSON value before PostgreSQL parses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Integer,
    Boolean,
    /// `json` / `jsonb`: any JSON value.
    Json,
    /// `numeric`, `real`, `double precision`: a JSON number.
    Number,
    /// Everything else (text, dates, timestamps, ...): a JSON string.
    Text,
}

/// Where a column's value points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ref {
    /// The org itself: becomes the new org's id.
    Org,
    /// A person: mapped through `import_users`.
    User,
    /// A row of another section (index into the catalog): mapped through its staging table.
    Row(usize),
}

#[derive(Debug)]
struct Column {
    name: String,
    sql_type: String,
    kind: Kind,
    nullable: bool,
    reference: Option<Ref>,
    /// The table's default (SQL), for a row that lacks the column: a file written
    /// before the column existed (`elections.ballot`, say).
    default: Option<String>,
}

/// A section's table as the database describes it.
#[derive(Debug)]
struct Table {
    name: &'static str,
    /// The columns a snapshot writes (the registry's exported and pseudonymised ones),
    /// `id` first as in the table. A file holding any other column is refused.
    columns: Vec<Column>,
    sequence: String,
}

/// Every section's table.
#[derive(Debug)]
struct Catalog {
    tables: Vec<Table>,
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

impl Catalog {
    async fn load(conn: &mut PgConnection) -> Result<Self, ImportError> {
        let names: Vec<&str> = SECTIONS.iter().map(|s| s.table).collect();
        #[allow(clippy::type_complexity)]
        let cols: Vec<(String, String, String, String, bool, Option<String>)> = sqlx::query_as(
            "select c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), t.typname::text, not a.attnotnull,
                    pg_get_expr(d.adbin, d.adrelid)
             from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_type t on t.oid = a.atttypid
             left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
             where c.relname = any($1) and c.relnamespace = current_schema()::regnamespace
               and a.attnum > 0 and not a.attisdropped
             order by c.relname, a.attnum",
        )
        .bind(&names)
        .fetch_all(&mut *conn)
        .await?;
        let fks: Vec<(String, String, String)> = sqlx::query_as(
            "select c.relname::text, a.attname::text, r.relname::text
             from pg_constraint k join pg_class c on c.oid = k.conrelid join pg_class r on r.oid = k.confrelid
             join pg_attribute a on a.attrelid = k.conrelid and a.attnum = k.conkey[1]
             where k.contype = 'f' and c.relname = any($1) and c.relnamespace = current_schema()::regnamespace
               and cardinality(k.conkey) = 1",
        )
        .bind(&names)
        .fetch_all(&mut *conn)
        .await?;
        let index = |t: &str| SECTIONS.iter().position(|s| s.table == t);
        let mut tables = Vec::with_capacity(SECTIONS.len());
        for section in SECTIONS {
            let mut columns = Vec::new();
            let classes = columns::of(section.table);
            for (_, name, sql_type, typname, nullable, default) in cols.iter().filter(|c| c.0 == section.table) {
                // Only what a snapshot writes can be restored: a secret or unclassified
                // column is not in the catalog, so a file carrying one is refused.
                if !classes.class(name).is_some_and(|c| c.is_written()) {
                    continue;
                }
                let reference = match fks.iter().find(|f| f.0 == section.table && &f.1 == name) {
                    None => None,
                    Some((_, _, target)) if target == "organizations" => Some(Ref::Org),
                    Some((_, _, target)) if target == "users" => Some(Ref::User),
                    Some((_, _, target)) => match index(target) {
                        Some(i) => Some(Ref::Row(i)),
                        None => {
                            return Err(ImportError::Failed(anyhow::anyhow!(
                                "{}.{name} refers to {target}, which is not a section: restore cannot map it",
                                section.table
                            )));
                        }
                    },
                };
                let kind = match typname.as_str() {
                    "int2" | "int4" | "int8" => Kind::Integer,
                    "bool" => Kind::Boolean,
                    "json" | "jsonb" => Kind::Json,
                    "numeric" | "float4" | "float8" => Kind::Number,
                    _ => Kind::Text,
                };
                columns.push(Column {
                    name: name.clone(),
                    sql_type: sql_type.clone(),
                    kind,
                    nullable: *nullable,
                    reference,
                    default: default.clone(),
                });
            }
            if columns.first().map(|c| c.name.as_str()) != Some("id") {
                return Err(ImportError::Failed(anyhow::anyhow!("table {} has no leading id column", section.table)));
            }
            let sequence: Option<String> = sqlx::query_scalar("select pg_get_serial_sequence($1, 'id')")
                .bind(section.table)
                .fetch_one(&mut *conn)
                .await?;
            let sequence = sequence.with_context(|| format!("{}.id has no sequence", section.table))?;
            tables.push(Table { name: section.table, columns, sequence });
        }
        Ok(Self { tables })
    }

    fn index(&self, section: &str) -> Option<usize> {
        self.tables.iter().position(|t| t.name == section)
    }

    /// Whether the engine checks the references of `table.column` itself (the
    /// staging checks and the mapping): a column the file writes that refers to the
    /// org, a person or another section.
    fn checks(&self, table: &str, column: &str) -> bool {
        self.index(table)
            .is_some_and(|i| self.tables[i].columns.iter().any(|c| c.name == column && c.reference.is_some()))
    }

    /// One staging table per section, dropped at the transaction's end: the file's
    /// columns with the table's types, nullable, and `new_id` drawn from the table's
    /// own sequence as each row is copied in.
    async fn create_staging(&self, conn: &mut PgConnection) -> Result<(), ImportError> {
        for t in &self.tables {
            let cols: Vec<String> = t.columns.iter().map(|c| format!("{} {}", quote(&c.name), c.sql_type)).collect();
            let sql = format!(
                "create temp table {} (new_id bigint not null default nextval('{}'), {}) on commit drop",
                t.staging(),
                t.sequence.replace('\'', "''"),
                cols.join(", ")
            );
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *conn).await?;
        }
        sqlx::query(
            "create temp table import_users (
                old bigint primary key, email text not null, name text not null, new bigint,
                created boolean not null default false, placeholder boolean not null default false
             ) on commit drop",
        )
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

impl Table {
    fn staging(&self) -> String {
        format!("import_{}", self.name)
    }

    fn column_list(&self) -> String {
        self.columns.iter().map(|c| quote(&c.name)).collect::<Vec<_>>().join(", ")
    }

    fn copy_statement(&self) -> String {
        format!("copy {} ({}) from stdin", self.staging(), self.column_list())
    }

    /// Appends the row as one line of COPY text, after checking it against the
    /// table: no unknown column, each value of the column's JSON type, no null where
    /// the table has none.
    fn encode(&self, raw: &RawValue, row: &Value, out: &mut Vec<u8>) -> Result<(), String> {
        let obj = row.as_object().ok_or("a row must be an object")?;
        // JSON and numeric columns are written as the file has them, digit for
        // digit (`10.50` stays `10.50`; a number past f64 keeps every digit).
        let exact: Option<HashMap<&str, &RawValue>> =
            if self.columns.iter().any(|c| matches!(c.kind, Kind::Json | Kind::Number)) {
                Some(serde_json::from_str(raw.get()).map_err(|e| format!("cannot read the row: {e}"))?)
            } else {
                None
            };
        let exact_text = |name: &str| exact.as_ref().and_then(|m| m.get(name)).map(|r| r.get());
        if let Some(unknown) = obj.keys().find(|k| !self.columns.iter().any(|c| &c.name == *k)) {
            return Err(format!("{unknown:?} is not a column of {}", self.name));
        }
        for (i, col) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            let v = match obj.get(&col.name) {
                Some(v) => v,
                // Absent from a file written before the column existed: the table's
                // default, applied by `publish`. Only for the columns added to the
                // format since version 1 began; any other missing column is refused.
                None if col.default.is_some() && !col.nullable && added_since_v1(self.name, &col.name) => {
                    out.extend_from_slice(b"\\N");
                    continue;
                }
                None => &Value::Null,
            };
            match (v, col.kind) {
                (Value::Null, _) if col.nullable => out.extend_from_slice(b"\\N"),
                (Value::Null, _) => return Err(format!("column {} may not be null or missing", col.name)),
                (Value::Number(n), Kind::Integer) if n.is_i64() => out.extend_from_slice(n.to_string().as_bytes()),
                (Value::Number(n), Kind::Number) => out
                    .extend_from_slice(exact_text(&col.name).map_or_else(|| n.to_string(), str::to_string).as_bytes()),
                (Value::Bool(b), Kind::Boolean) => out.extend_from_slice(if *b { b"t" } else { b"f" }),
                (Value::String(s), Kind::Text) => escape(s, out)?,
                (v, Kind::Json) => escape(&exact_text(&col.name).map_or_else(|| v.to_string(), str::to_string), out)?,
                (v, kind) => {
                    let want = match kind {
                        Kind::Integer => "an integer",
                        Kind::Boolean => "true or false",
                        Kind::Number => "a number",
                        Kind::Json | Kind::Text => "a string",
                    };
                    let mut shown = v.to_string();
                    if shown.len() > 40 {
                        shown = format!("{}...", shown.chars().take(40).collect::<String>());
                    }
                    return Err(format!("column {} must be {want}, not {shown}", col.name));
                }
            }
        }
        out.push(b'\n');
        Ok(())
    }

    /// The staged rows' own consistency: unique ids, the file's org id, and every
    /// reference to a row of the file.
    async fn check(&self, conn: &mut PgConnection, catalog: &Catalog, file_org_id: i64) -> Result<(), ImportError> {
        let s = self.staging();
        let dup: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "select id from {s} group by id having count(*) > 1 limit 1"
        )))
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(id) = dup {
            return Err(rejected(format!("section {}: id {id} appears more than once", self.name)));
        }
        for col in &self.columns {
            let c = quote(&col.name);
            match col.reference {
                Some(Ref::Org) => {
                    let other: Option<(i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "select id, {c} from {s} where {c} is distinct from $1 and {c} is not null limit 1"
                    )))
                    .bind(file_org_id)
                    .fetch_optional(&mut *conn)
                    .await?;
                    if let Some((id, org)) = other {
                        return Err(rejected(format!(
                            "section {}: row id {id} has {} {org}, but the file is the export of org {file_org_id}",
                            self.name, col.name
                        )));
                    }
                }
                Some(Ref::Row(target)) => {
                    let t = &catalog.tables[target];
                    let dangling: Option<(i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "select s.id, s.{c} from {s} s where s.{c} is not null
                           and not exists (select 1 from {} p where p.id = s.{c}) limit 1",
                        t.staging()
                    )))
                    .fetch_optional(&mut *conn)
                    .await?;
                    if let Some((id, to)) = dangling {
                        return Err(rejected(format!(
                            "section {}: row id {id} refers to {} id {to} ({}), which is not in the file",
                            self.name, t.name, col.name
                        )));
                    }
                }
                Some(Ref::User) | None => {}
            }
        }
        Ok(())
    }

    /// Every person a staged row needs (a reference to a person in a column that
    /// takes no null) has an account, one anti-join per such column. The mapping
    /// gives each one an account (a placeholder for people without a profile);
    /// this is the check that the rows may be written without PostgreSQL's.
    async fn check_people(&self, conn: &mut PgConnection) -> Result<(), ImportError> {
        let s = self.staging();
        for col in self.columns.iter().filter(|c| c.reference == Some(Ref::User) && !c.nullable) {
            let c = quote(&col.name);
            let missing: Option<(i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "select s.id, s.{c} from {s} s where s.{c} is not null
                   and not exists (select 1 from import_users u where u.old = s.{c} and u.new is not null) limit 1"
            )))
            .fetch_optional(&mut *conn)
            .await?;
            if let Some((id, person)) = missing {
                return Err(ImportError::Failed(anyhow::anyhow!(
                    "section {}: row id {id} refers to person {person} ({}), who has no account",
                    self.name,
                    col.name
                )));
            }
        }
        Ok(())
    }

    /// Writes the staged rows into the table with their new ids and every
    /// reference rewritten. Returns the rows written and the optional references
    /// to people without a profile, which became null.
    /// `suspend` (see [`suspends`]) says which memberships are written suspended.
    async fn publish(
        &self,
        conn: &mut PgConnection,
        catalog: &Catalog,
        org_id: i64,
        imported_from: &Value,
        suspend: Option<&str>,
    ) -> Result<(u64, u64), ImportError> {
        let s = self.staging();
        let mut select = Vec::new();
        let mut joins = Vec::new();
        let mut cleared = 0;
        let mut marks_import = false;
        for (i, col) in self.columns.iter().enumerate() {
            let c = quote(&col.name);
            match (i, col.reference) {
                (0, _) => select.push("s.new_id".to_string()),
                (_, Some(Ref::Org)) => select.push(org_id.to_string()),
                (_, Some(Ref::Row(target))) => {
                    joins.push(format!("left join {} j{i} on j{i}.id = s.{c}", catalog.tables[target].staging()));
                    select.push(format!("j{i}.new_id"));
                }
                (_, Some(Ref::User)) => {
                    joins.push(format!("left join import_users j{i} on j{i}.old = s.{c}"));
                    select.push(format!("j{i}.new"));
                    if col.nullable {
                        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                            "select count(*) from {s} s where s.{c} is not null
                               and not exists (select 1 from import_users u where u.old = s.{c})"
                        )))
                        .fetch_one(&mut *conn)
                        .await?;
                        cleared += n as u64;
                    }
                }
                // Every audit entry from the file keeps its text, marked as imported:
                // it records what happened in the source org, not what anyone did
                // here (an entry without an actor too, or a crafted file could pass
                // off entries as this platform's own).
                (_, None) if self.name == "audit_log" && col.name == "details" => {
                    marks_import = true;
                    select.push(
                        "(case when jsonb_typeof(s.details) = 'object' then s.details
                               else jsonb_build_object('value', s.details) end)
                         || jsonb_build_object('imported_from', $1::jsonb)"
                            .to_string(),
                    )
                }
                (_, None) if self.name == "memberships" && col.name == "status" && suspend.is_some() => {
                    joins.push("left join import_users jm on jm.old = s.user_id".to_string());
                    select.push(format!("case when {} then 'suspended' else s.status end", suspend.unwrap_or("false")));
                }
                (_, None) => match &col.default {
                    // Staged null in a not-null column means the file lacks the column.
                    Some(default) if !col.nullable => select.push(format!("coalesce(s.{c}, {default})")),
                    _ => select.push(format!("s.{c}")),
                },
            }
        }
        let sql = format!(
            "insert into {} ({}) overriding system value select {} from {s} s {} order by s.new_id",
            self.name,
            self.column_list(),
            select.join(", "),
            joins.join(" ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        if marks_import {
            query = query.bind(imported_from);
        }
        let done = query.execute(&mut *conn).await.map_err(|e| rejected_db(&format!("section {}", self.name), e))?;
        Ok((done.rows_affected(), cleared))
    }
}

/// Escapes a value for COPY's text format.
fn escape(s: &str, out: &mut Vec<u8>) -> Result<(), String> {
    for b in s.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0 => return Err("a text value holds a NUL character, which PostgreSQL cannot store".into()),
            _ => out.push(b),
        }
    }
    Ok(())
}

/// Documents' object keys name objects in the new org's bucket (and, for a recorded
/// export, in the source org's): a key that could reach outside it is refused, since
/// a store on a file system (the embedded one) resolves `..` in a key as a path. So
/// is an empty key, a key starting with `/`, with a `..` segment, or with a control
/// character. (`.` and empty segments stay allowed: the org's own documents can have
/// such keys, and S3 takes keys literally.)
async fn check_object_keys(conn: &mut PgConnection) -> Result<(), ImportError> {
    let bad: Option<(i64, String)> = sqlx::query_as(
        r"select id, object_key from import_documents
          where object_key = '' or object_key like '/%' or object_key ~ '(^|/)\.\.(/|$)'
             or object_key ~ '[\x01-\x1f\x7f-\x9f]'
          order by id limit 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((id, key)) = bad {
        let mut shown: String = key.chars().take(80).collect();
        if shown.len() < key.len() {
            shown.push_str("...");
        }
        return Err(rejected(format!(
            "section documents: row id {id} has the object key {shown:?}, which is not allowed \
             (a key may not be empty, start with '/', have a '..' segment or a control character)"
        )));
    }
    Ok(())
}

/// Where the file came from: for a file that is a completed export of this platform,
/// its recorded SHA-256 must match.
async fn source(
    conn: &mut PgConnection,
    request: &Request,
    checked: &verify::Report,
    file_org: &Value,
) -> Result<Source, ImportError> {
    if let Some(expected) = &request.source_export_id
        && expected != &checked.export_id
    {
        return Err(rejected(format!("the file is export {}, not export {expected}", checked.export_id)));
    }
    let run: Option<(String, Option<String>)> = sqlx::query_as("select status, sha256 from export_runs where id = $1")
        .bind(&checked.export_id)
        .fetch_optional(&mut *conn)
        .await?;
    let recorded_run = match (&run, &request.source_export_id) {
        (Some((status, Some(sha))), _) if status == "completed" => {
            if !sha.eq_ignore_ascii_case(&checked.sha256) {
                return Err(rejected(format!(
                    "the file's SHA-256 is {}, but export {} recorded {sha}: the file was changed or damaged",
                    checked.sha256, checked.export_id
                )));
            }
            true
        }
        (_, Some(expected)) => return Err(rejected(format!("export {expected} is not a completed export"))),
        _ => false,
    };
    Ok(Source {
        sha256: checked.sha256.clone(),
        size_bytes: checked.size_bytes,
        export_id: checked.export_id.clone(),
        org: file_org.get("slug").and_then(Value::as_str).unwrap_or_default().to_string(),
        recorded_run,
    })
}

/// The file's module switches, checked against the sections it holds: a section is
/// there exactly when its module is on.
fn modules_of(
    header: &serde_json::Map<String, Value>,
    counts: &BTreeMap<String, u64>,
) -> Result<Vec<(Module, bool)>, ImportError> {
    let switches =
        header.get("modules").and_then(Value::as_object).ok_or_else(|| rejected("modules is not an object"))?;
    let mut out = Vec::new();
    for m in Module::ALL {
        let on = match switches.get(m.key()) {
            Some(Value::Bool(b)) => *b,
            None => false,
            Some(v) => return Err(rejected(format!("modules.{} must be true or false, not {v}", m.key()))),
        };
        out.push((m, on));
    }
    if let Some(k) = switches.keys().find(|k| *k != "core" && Module::parse(k).is_none()) {
        return Err(rejected(format!("modules names {k:?}, which is not a module")));
    }
    for s in SECTIONS {
        let on = s.module.is_none_or(|m| out.iter().any(|(om, on)| *om == m && *on));
        let present = counts.contains_key(s.table);
        match (on, present) {
            // A file from before this section existed: read as empty.
            (true, false) if ADDED_LATER.contains(&s.table) => {}
            (true, false) => {
                let module = s.module.map_or("core", Module::key);
                return Err(rejected(format!("section {} is missing, but module {module} is on", s.table)));
            }
            (false, true) => {
                let module = s.module.map_or("core", Module::key);
                return Err(rejected(format!("section {} is in the file, but module {module} is off", s.table)));
            }
            _ => {}
        }
    }
    Ok(out)
}

#[derive(Debug, Default)]
struct People {
    matched: u64,
    created: u64,
    placeholders: u64,
}

/// Maps every person of the file to an account: by the email of their profile in
/// `user_profiles` to an existing account, else to a new one that cannot sign in.
/// A person a required column needs but who has no profile gets a placeholder
/// account; optional references to such people become null (see `publish`).
async fn map_people(conn: &mut PgConnection, catalog: &Catalog, org_id: i64) -> Result<People, ImportError> {
    let dup: Option<i64> = sqlx::query_scalar(
        "select user_id from import_user_profiles where user_id is not null group by user_id having count(*) > 1 limit 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(u) = dup {
        return Err(rejected(format!("section user_profiles: user {u} has more than one profile")));
    }
    sqlx::query(
        "insert into import_users (old, email, name)
         select user_id, lower(btrim(email)), btrim(coalesce(first_name, '') || ' ' || coalesce(last_name, ''))
         from import_user_profiles where user_id is not null",
    )
    .execute(&mut *conn)
    .await?;
    let shared: Option<String> =
        sqlx::query_scalar("select email from import_users group by email having count(*) > 1 limit 1")
            .fetch_optional(&mut *conn)
            .await?;
    if let Some(email) = shared {
        return Err(rejected(format!(
            "section user_profiles: two people share the email {email:?}; people are matched to accounts by email, so each needs their own"
        )));
    }
    let bad: Option<String> =
        sqlx::query_scalar("select email from import_users where email !~ '^[^@[:space:]]+@[^@[:space:]]+$' limit 1")
            .fetch_optional(&mut *conn)
            .await?;
    if let Some(email) = bad {
        return Err(rejected(format!("section user_profiles: {email:?} is not an email address")));
    }
    // People whom a required column needs but who have no profile.
    for t in &catalog.tables {
        for col in t.columns.iter().filter(|c| c.reference == Some(Ref::User) && !c.nullable) {
            let c = quote(&col.name);
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "insert into import_users (old, email, name, placeholder)
                 select distinct s.{c}, 'unknown-' || $1 || '-' || s.{c} || '@import.invalid', 'Unknown person ' || s.{c}, true
                 from {} s where s.{c} is not null
                   and not exists (select 1 from import_users u where u.old = s.{c})
                 on conflict (old) do nothing",
                t.staging()
            )))
            .bind(org_id.to_string())
            .execute(&mut *conn)
            .await?;
        }
    }
    let matched = sqlx::query("update import_users m set new = u.id from users u where u.email = m.email")
        .execute(&mut *conn)
        .await?
        .rows_affected();
    sqlx::query(
        "with c as (
            insert into users (email, display_name, password_hash)
            select email, case when name = '' then email else name end, '!' from import_users
            where new is null order by email
            on conflict (email) do nothing
            returning id, email)
         update import_users m set new = c.id, created = true from c where c.email = m.email",
    )
    .execute(&mut *conn)
    .await?;
    // An account made meanwhile by someone else (a parallel import) is matched too.
    let late =
        sqlx::query("update import_users m set new = u.id from users u where u.email = m.email and m.new is null")
            .execute(&mut *conn)
            .await?
            .rows_affected();
    let (created, placeholders): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where created and not placeholder), count(*) filter (where created and placeholder) from import_users",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(People { matched: matched + late, created: created as u64, placeholders: placeholders as u64 })
}

/// How far the file's word on who is a member is taken (DESIGN "Restore, round 2").
#[derive(Clone, Copy, Debug)]
enum Trust {
    /// Not a recorded export of this platform: anyone could have written it, so
    /// every matched existing account joins suspended.
    Nobody,
    /// A recorded export whose org still exists (its id): a matched account joins as
    /// the file says only while it is still an active member there (and, for an
    /// admin in the file, still an admin there).
    StillMembersOf(i64),
    /// A recorded export whose org no longer exists: as the file says.
    File,
}

async fn trust_of(conn: &mut PgConnection, source: &Source) -> Result<Trust, ImportError> {
    if !source.recorded_run {
        return Ok(Trust::Nobody);
    }
    let org: Option<i64> =
        sqlx::query_scalar("select o.id from export_runs r join organizations o on o.id = r.org_id where r.id = $1")
            .bind(&source.export_id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(org.map_or(Trust::File, Trust::StillMembersOf))
}

/// Which memberships are written suspended: those of matched existing accounts,
/// active in the file, that the source does not vouch for (see [`Trust`]). A
/// condition on the staged membership `s` and its person's mapping `jm`; `None`
/// when the file is taken as it is. Accounts the import creates cannot sign in,
/// and keep what the file gives them.
fn suspends(trust: Trust) -> Option<String> {
    let matched = "s.status = 'active' and jm.new is not null and not jm.created";
    match trust {
        Trust::File => None,
        Trust::Nobody => Some(matched.to_string()),
        // The source org's id is a number from the database, not from the file.
        Trust::StillMembersOf(source_org) => Some(format!(
            "{matched} and not exists (select 1 from memberships src
                                      where src.org_id = {source_org} and src.user_id = jm.new
                                        and src.status = 'active' and (s.role <> 'admin' or src.role = 'admin'))"
        )),
    }
}

/// How many memberships `condition` (see [`suspends`]) writes suspended.
async fn count_suspended(conn: &mut PgConnection, condition: &str) -> Result<u64, ImportError> {
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "select count(*) from import_memberships s join import_users jm on jm.old = s.user_id where {condition}"
    )))
    .fetch_one(&mut *conn)
    .await?;
    Ok(n as u64)
}

/// Every existing account the file matched, with its role and membership in the new
/// org: platform admins first, then org admins, then by email.
async fn matched_people(conn: &mut PgConnection, org_id: i64) -> Result<Vec<Matched>, ImportError> {
    let rows: Vec<(String, Option<String>, bool, Option<String>)> = sqlx::query_as(
        "select u.email, m.role, pa.user_id is not null, m.status
         from import_users iu join users u on u.id = iu.new
         left join memberships m on m.org_id = $1 and m.user_id = iu.new
         left join platform_admins pa on pa.user_id = iu.new
         where not iu.created
         order by pa.user_id is null, m.role is distinct from 'admin', u.email",
    )
    .bind(org_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(email, role, platform_admin, membership)| Matched { email, role, platform_admin, membership })
        .collect())
}

/// Copies the documents' binaries from the source org's bucket into the new one,
/// server-side, when the file is a completed export of this platform whose org
/// still exists. Missing objects are reported, not fatal.
async fn copy_media(
    conn: &mut PgConnection,
    storage: &Storage,
    source: &Source,
    bucket: &str,
) -> Result<Media, ImportError> {
    let mut media = Media::default();
    if !source.recorded_run {
        media.not_copied = Some(
            "the file is not a recorded export of this platform: documents keep their keys, but their binaries were not copied"
                .into(),
        );
        return Ok(media);
    }
    let from: Option<String> = sqlx::query_scalar(
        "select o.bucket from export_runs r join organizations o on o.id = r.org_id where r.id = $1",
    )
    .bind(&source.export_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(from) = from else {
        media.not_copied = Some(
            "the source org no longer exists: documents keep their keys, but their binaries were not copied".into(),
        );
        return Ok(media);
    };
    // Keys in pages, so that memory stays flat however many documents there are.
    let mut after = String::new();
    loop {
        let keys: Vec<String> = sqlx::query_scalar(
            "select distinct object_key from import_documents where object_key > $1 order by object_key limit 500",
        )
        .bind(&after)
        .fetch_all(&mut *conn)
        .await?;
        let Some(last) = keys.last() else { break };
        after = last.clone();
        let outcomes: Vec<(String, anyhow::Result<bool>)> = futures::stream::iter(keys)
            .map(|key| {
                let from = from.clone();
                async move {
                    let outcome = async {
                        if !storage.exists(&from, &key).await? {
                            return Ok(false);
                        }
                        storage.copy(&from, &key, bucket, &key, None).await?;
                        Ok(true)
                    }
                    .await;
                    (key, outcome)
                }
            })
            .buffer_unordered(COPIES_AT_ONCE)
            .collect()
            .await;
        let mut failed = None;
        for (key, outcome) in outcomes {
            match outcome {
                Ok(true) => media.copied += 1,
                Ok(false) => {
                    media.missing += 1;
                    if media.missing_keys.len() < MISSING_KEYS_SHOWN {
                        media.missing_keys.push(key);
                    }
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        // The whole page ran first: whatever it copied is in the bucket, which the
        // caller empties on failure.
        if let Some(e) = failed {
            return Err(ImportError::Failed(e.context("copying the documents' binaries")));
        }
    }
    media.missing_keys.sort();
    Ok(media)
}

/// Columns added to version 1 of the format after files were already written: a
/// file without them is older, not damaged, and restores with the column's default.
const ADDED_SINCE_V1: &[(&str, &str)] = &[("elections", "ballot")];

fn added_since_v1(table: &str, column: &str) -> bool {
    ADDED_SINCE_V1.iter().any(|(t, c)| *t == table && *c == column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_what_copy_would_split_on() {
        let mut out = Vec::new();
        escape("a\tb\nc\\d\re", &mut out).unwrap();
        assert_eq!(out, b"a\\tb\\nc\\\\d\\re");
        assert!(escape("nul\0", &mut Vec::new()).is_err());
    }

    fn encode(table: &Table, text: &str, out: &mut Vec<u8>) -> Result<(), String> {
        let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
        let row: Value = serde_json::from_str(text).unwrap();
        table.encode(&raw, &row, out)
    }

    #[test]
    fn rows_are_checked_against_their_table() {
        let table = Table {
            name: "regions",
            columns: vec![
                Column {
                    name: "id".into(),
                    sql_type: "bigint".into(),
                    kind: Kind::Integer,
                    nullable: false,
                    reference: None,
                    default: None,
                },
                Column {
                    name: "code".into(),
                    sql_type: "text".into(),
                    kind: Kind::Text,
                    nullable: false,
                    reference: None,
                    default: None,
                },
                Column {
                    name: "data".into(),
                    sql_type: "jsonb".into(),
                    kind: Kind::Json,
                    nullable: true,
                    reference: None,
                    default: None,
                },
                Column {
                    name: "ok".into(),
                    sql_type: "boolean".into(),
                    kind: Kind::Boolean,
                    nullable: true,
                    reference: None,
                    default: None,
                },
            ],
            sequence: "regions_id_seq".into(),
        };
        let mut out = Vec::new();
        let text =
            r#"{"id": 7, "code": "R\t1", "data": {"a": [1, 10.50, 123456789012345678901234567890]}, "ok": true}"#;
        encode(&table, text, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "7\tR\\t1\t{\"a\": [1, 10.50, 123456789012345678901234567890]}\tt\n",
            "JSON values are written digit for digit"
        );
        let cases = [
            (serde_json::json!({"id": 7, "code": "x", "extra": 1}), "\"extra\" is not a column of regions"),
            (serde_json::json!({"id": "7", "code": "x"}), "column id must be an integer"),
            (serde_json::json!({"id": 1.5, "code": "x"}), "column id must be an integer"),
            (serde_json::json!({"id": 7, "code": 12}), "column code must be a string"),
            (serde_json::json!({"id": 7}), "column code may not be null"),
            (serde_json::json!({"id": 7, "code": "x", "ok": "yes"}), "column ok must be true or false"),
            (serde_json::json!([1]), "a row must be an object"),
        ];
        for (row, expect) in cases {
            let e = encode(&table, &row.to_string(), &mut Vec::new()).unwrap_err();
            assert!(e.contains(expect), "{row}: {e}");
        }
    }
}
