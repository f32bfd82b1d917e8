//! Re-reads a snapshot and checks it: one whole gzip member, the JSON Schema of
//! `docs/snapshot.schema.json`, each section's length against `counts`, and the
//! SHA-256 of the compressed bytes against the recorded one. It streams: one row
//! is in memory at a time, so a file of any size verifies in flat memory.
//!
//! Used by `data-export verify FILE`, by the Verify action on a completed run, and
//! by the fault tests.

use std::{
    cell::Cell,
    collections::BTreeMap,
    fmt,
    io::{BufRead, BufReader, Read},
    rc::Rc,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Value, value::RawValue};
use sha2::{Digest, Sha256};

/// The snapshot's JSON Schema, the same file the docs publish.
pub const SCHEMA: &str = include_str!("../../docs/snapshot.schema.json");

/// What a whole, valid snapshot holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub export_id: String,
    pub organization: String,
    pub snapshot_at: String,
    /// Size of the compressed file.
    pub size_bytes: u64,
    pub sha256: String,
    /// Rows per section, as counted in the file (and equal to its `counts`).
    pub counts: BTreeMap<String, u64>,
    pub rows: u64,
}

/// Why a snapshot is not whole or not valid. The message says where.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(msg: impl Into<String>) -> Invalid {
    Invalid(msg.into())
}

/// The compiled schema: the whole document (with sections' rows taken out) and a
/// row on its own, both from [`SCHEMA`], with the names it allows at the top level
/// and for sections, so that a reader refuses any other name as soon as it is read.
pub struct Schemas {
    document: jsonschema::Validator,
    row: jsonschema::Validator,
    /// The document's top-level keys (`format`, ..., `sections`).
    header_keys: Vec<String>,
    /// The section names (`$defs/sectionName`).
    sections: Vec<String>,
}

impl Schemas {
    pub fn load() -> Self {
        let doc: Value = serde_json::from_str(SCHEMA).expect("the bundled schema is JSON");
        let row = serde_json::json!({
            "$schema": doc["$schema"],
            "$defs": doc["$defs"],
            "$ref": "#/$defs/row",
        });
        let header_keys = doc["properties"].as_object().expect("the schema names its properties").keys().cloned();
        let sections = doc["$defs"]["sectionName"]["enum"].as_array().expect("the schema lists the sections");
        Self {
            document: jsonschema::validator_for(&doc).expect("the bundled schema compiles"),
            row: jsonschema::validator_for(&row).expect("the bundled row schema compiles"),
            header_keys: header_keys.collect(),
            sections: sections.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        }
    }
}

/// Verifies a snapshot read from `input` (the compressed bytes). With `expected_sha256`
/// the file's hash must equal it.
pub fn verify(input: impl Read, expected_sha256: Option<&str>) -> Result<Report, Invalid> {
    read(input, expected_sha256, &mut |_, _, _| Ok(())).map(|(report, _)| report)
}

/// The most decompressed bytes one row may take (with the separator before it): the
/// reader holds one row at a time, and this bounds that row.
pub const MAX_ROW_BYTES: u64 = 64 * 1024 * 1024;

/// The most decompressed bytes of everything that is not a section's row, together:
/// the header fields, the section names, `sections.organization`. A real header is a
/// few KiB; this is what the reader keeps (parsed) for the whole read, so it is
/// bounded as a whole, not per field.
pub const MAX_HEADER_BYTES: u64 = 1024 * 1024;

/// The most keys one row may have (a table has a few dozen columns).
pub const MAX_ROW_COLUMNS: usize = 1024;

/// The buffer of decompressed bytes the JSON parser reads from. Bytes are counted as
/// they enter it, so a phase's count is off by at most this much.
const PARSE_BUFFER: usize = 64 * 1024;

const ROW_TOO_LARGE: &str = "a row is larger than 64 MiB";
const HEADER_TOO_LARGE: &str =
    "the snapshot's header (its fields, section names and organization, everything but the rows) is larger than 1 MiB";

/// What a reader does with each row of a section (after the row's schema check), in
/// file order: it gets the section, the row's JSON text as it is in the file (numbers
/// exactly as written), and the row parsed one level deep: its columns with their
/// scalar values, and an empty array or object in place of a nested one (read the
/// text for those), so that no row's parse is larger than its text. An error stops
/// the read and is its result.
pub type OnRow<'a> = dyn FnMut(&str, &RawValue, &Value) -> Result<(), Invalid> + 'a;

/// Reads and checks a snapshot as [`verify`] does, handing each row of every section
/// but `organization` to `on_row` as it is read. Returns the report and the document
/// without its sections' rows (`sections.organization` is kept).
///
/// Memory is bounded whatever the file: a row is at most [`MAX_ROW_BYTES`] of text and
/// [`MAX_ROW_COLUMNS`] keys, parsed one level deep; everything else together at most
/// [`MAX_HEADER_BYTES`]; a top-level key or section name that the schema does not
/// have is refused as soon as it is read.
pub fn read(
    input: impl Read,
    expected_sha256: Option<&str>,
    on_row: &mut OnRow<'_>,
) -> Result<(Report, serde_json::Map<String, Value>), Invalid> {
    let schemas = Schemas::load();
    let mut hashed = HashingReader { inner: input, hasher: Sha256::new(), bytes: 0 };
    let found = {
        let mut buffered = BufReader::with_capacity(256 * 1024, &mut hashed);
        match buffered.fill_buf() {
            Ok([]) => return Err(invalid("the file is empty (0 bytes)")),
            Ok(_) => {}
            Err(e) => return Err(invalid(format!("cannot read the file: {e}"))),
        }
        let found = {
            let mut gz = flate2::bufread::GzDecoder::new(&mut buffered);
            // serde_json reads a reader a byte at a time: buffer the decompressed side.
            // The meter bounds what a row, or the header, can make the reader hold.
            let meter = Meter::default();
            meter.header();
            let budget = Budget { inner: &mut gz, meter: meter.clone() };
            let found = read_document(BufReader::with_capacity(PARSE_BUFFER, budget), &schemas, on_row, meter)?;
            // The JSON ended; the rest of the member must be only its trailer.
            let mut rest = [0u8; 1];
            match gz.read(&mut rest) {
                Ok(0) => {}
                Ok(_) => return Err(invalid("data after the JSON document")),
                Err(e) => return Err(invalid(format!("not a whole gzip file: {e}"))),
            }
            found
        };
        // One member only: nothing may follow its trailer.
        match buffered.fill_buf() {
            Ok([]) => {}
            Ok(_) => return Err(invalid("more than one gzip member, or bytes after the gzip trailer")),
            Err(e) => return Err(invalid(format!("cannot read the file: {e}"))),
        }
        found
    };
    let sha256 = hex::encode(hashed.hasher.finalize());
    if let Some(expected) = expected_sha256
        && !expected.eq_ignore_ascii_case(&sha256)
    {
        return Err(invalid(format!("SHA-256 is {sha256}, but {expected} was recorded")));
    }
    let Found { header, counts } = found;
    let empty = serde_json::Map::new();
    let declared = header.get("counts").and_then(Value::as_object).unwrap_or(&empty);
    for (name, n) in &counts {
        match declared.get(name).and_then(Value::as_u64) {
            Some(d) if d == *n => {}
            Some(d) => return Err(invalid(format!("section {name} has {n} rows, but counts says {d}"))),
            None => return Err(invalid(format!("section {name} is not in counts"))),
        }
    }
    if let Some(name) = declared.keys().find(|k| !counts.contains_key(*k)) {
        return Err(invalid(format!("counts names section {name}, which is not in the file")));
    }
    let text = |k: &str| header.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let report = Report {
        export_id: text("export_id"),
        organization: header["organization"]["slug"].as_str().unwrap_or_default().to_string(),
        snapshot_at: text("snapshot_at"),
        size_bytes: hashed.bytes,
        sha256,
        rows: counts.values().sum(),
        counts,
    };
    Ok((report, header))
}

/// The document with every section's rows replaced by `[]` (already validated one by
/// one), and the rows counted per section.
struct Found {
    header: serde_json::Map<String, Value>,
    counts: BTreeMap<String, u64>,
}

fn read_document(input: impl Read, schemas: &Schemas, on_row: &mut OnRow<'_>, meter: Meter) -> Result<Found, Invalid> {
    let mut de = serde_json::Deserializer::from_reader(input);
    let mut ctx = Ctx { schemas, problem: None, on_row, meter, header_bytes: 0, counts: BTreeMap::new() };
    let parsed = DocumentSeed { ctx: &mut ctx }.deserialize(&mut de).and_then(|f| {
        // Whitespace after the document counts as header.
        ctx.meter.header();
        de.end().map(|_| f)
    });
    if let Some(p) = ctx.problem {
        return Err(p);
    }
    let header = parsed.map_err(|e| {
        if e.is_io() && e.to_string().contains(ROW_TOO_LARGE) {
            invalid(ROW_TOO_LARGE)
        } else if e.is_io() && e.to_string().contains(HEADER_TOO_LARGE) {
            invalid(HEADER_TOO_LARGE)
        } else if e.is_io() {
            invalid(format!("not a whole gzip file: {e}"))
        } else {
            invalid(format!("not valid JSON: {e}"))
        }
    })?;
    // Validated in place, not copied: the map is moved into the document and back.
    let doc = Value::Object(header);
    if let Some(e) = schemas.document.iter_errors(&doc).next() {
        return Err(invalid(format!("does not match the snapshot schema at {}: {e}", location(&e.instance_path()))));
    }
    let Value::Object(header) = doc else { unreachable!("built as an object above") };
    Ok(Found { header, counts: ctx.counts })
}

fn location(pointer: &impl ToString) -> String {
    let p = pointer.to_string();
    if p.is_empty() { "the top level".into() } else { p }
}

/// What the reader's parts share while reading one document.
struct Ctx<'a, 'r> {
    schemas: &'a Schemas,
    /// The reason the read stopped, when it is ours (not the parser's).
    problem: Option<Invalid>,
    on_row: &'a mut OnRow<'r>,
    meter: Meter,
    /// The header's bytes so far (exact: the text of each value kept).
    header_bytes: u64,
    counts: BTreeMap<String, u64>,
}

impl Ctx<'_, '_> {
    /// Stops the read for `why`.
    fn refuse<E: serde::de::Error>(&mut self, why: String) -> E {
        let e = E::custom(&why);
        self.problem = Some(invalid(why));
        e
    }

    /// A header value, counted against [`MAX_HEADER_BYTES`] by its text, then parsed.
    fn header_value<E: serde::de::Error>(&mut self, raw: &RawValue) -> Result<Value, E> {
        self.header_bytes += raw.get().len() as u64;
        if self.header_bytes > MAX_HEADER_BYTES {
            return Err(self.refuse(HEADER_TOO_LARGE.into()));
        }
        serde_json::from_str(raw.get()).map_err(E::custom)
    }
}

/// A map key that must be one of `known`: anything else is `Err` with the name (cut
/// short), before its value is read.
struct KnownKey<'a> {
    known: &'a [String],
}

impl<'de> DeserializeSeed<'de> for KnownKey<'_> {
    type Value = Result<String, String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KnownKey<'_> {
    type Value = Result<String, String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if self.known.iter().any(|k| k == v) {
            return Ok(Ok(v.to_string()));
        }
        let mut shown: String = v.chars().take(40).collect();
        if shown.len() < v.len() {
            shown.push_str("...");
        }
        Ok(Err(shown))
    }
}

struct DocumentSeed<'c, 'a, 'r> {
    ctx: &'c mut Ctx<'a, 'r>,
}

impl<'de> DeserializeSeed<'de> for DocumentSeed<'_, '_, '_> {
    type Value = serde_json::Map<String, Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DocumentSeed<'_, '_, '_> {
    type Value = serde_json::Map<String, Value>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a snapshot object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let ctx = self.ctx;
        let mut header = serde_json::Map::new();
        loop {
            ctx.meter.header();
            let Some(key) = map.next_key_seed(KnownKey { known: &ctx.schemas.header_keys })? else { break };
            let key = match key {
                Ok(k) => k,
                Err(name) => return Err(ctx.refuse(format!("not an org snapshot: it has an unknown field {name:?}"))),
            };
            if header.contains_key(&key) {
                return Err(ctx.refuse(format!("the field {key:?} appears twice")));
            }
            if key == "sections" {
                let sections = map.next_value_seed(SectionsSeed { ctx: &mut *ctx })?;
                header.insert(key, Value::Object(sections));
                continue;
            }
            let raw: Box<RawValue> = map.next_value()?;
            let v = ctx.header_value::<A::Error>(&raw)?;
            drop(raw);
            // The format and version are checked as soon as they are read, so a
            // file of another kind stops before its rows are; so are the section
            // names in `counts`.
            if let Some(why) = wrong_kind(&key, &v) {
                return Err(ctx.refuse(why));
            }
            if key == "counts"
                && let Some(name) =
                    v.as_object().and_then(|c| c.keys().find(|k| !ctx.schemas.sections.iter().any(|s| s == *k)))
            {
                let shown: String = name.chars().take(40).collect();
                return Err(ctx.refuse(format!("counts names {shown:?}, which is not a section of the format")));
            }
            header.insert(key, v);
        }
        Ok(header)
    }
}

/// Why a header field says the file is not a version-1 org snapshot.
fn wrong_kind(key: &str, v: &Value) -> Option<String> {
    match key {
        "format" if v.as_str() != Some("data-export/snapshot") => {
            Some(format!("not an org snapshot: its format is {}, not \"data-export/snapshot\"", short(v)))
        }
        "version" if v.as_u64() != Some(1) => {
            Some(format!("snapshot version {} is not supported (this program reads version 1)", short(v)))
        }
        _ => None,
    }
}

/// A value as JSON text, cut short for a message.
fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.len() <= 60 { text } else { format!("{}...", text.chars().take(60).collect::<String>()) }
}

/// `sections`: `organization` kept whole; every other section's rows validated and
/// counted one at a time, handed to the row visitor, and replaced by `[]`.
struct SectionsSeed<'c, 'a, 'r> {
    ctx: &'c mut Ctx<'a, 'r>,
}

impl<'de> DeserializeSeed<'de> for SectionsSeed<'_, '_, '_> {
    type Value = serde_json::Map<String, Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SectionsSeed<'_, '_, '_> {
    type Value = serde_json::Map<String, Value>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of sections")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let ctx = self.ctx;
        let mut out = serde_json::Map::new();
        loop {
            ctx.meter.header();
            let Some(name) = map.next_key_seed(KnownKey { known: &ctx.schemas.sections })? else { break };
            let name = match name {
                Ok(n) => n,
                Err(name) => {
                    return Err(ctx.refuse(format!("sections has {name:?}, which is not a section of the format")));
                }
            };
            if out.contains_key(&name) {
                return Err(ctx.refuse(format!("duplicate section {name:?}")));
            }
            if name == "organization" {
                let raw: Box<RawValue> = map.next_value()?;
                let v = ctx.header_value::<A::Error>(&raw)?;
                ctx.counts.insert(name.clone(), 1);
                out.insert(name, v);
                continue;
            }
            let n = map.next_value_seed(RowsSeed { ctx: &mut *ctx, section: &name })?;
            ctx.counts.insert(name.clone(), n);
            out.insert(name, Value::Array(Vec::new()));
        }
        Ok(out)
    }
}

struct RowsSeed<'c, 'a, 'r> {
    ctx: &'c mut Ctx<'a, 'r>,
    section: &'c str,
}

impl<'de> DeserializeSeed<'de> for RowsSeed<'_, '_, '_> {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowsSeed<'_, '_, '_> {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an array of rows for section {}", self.section)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let ctx = self.ctx;
        let mut n = 0u64;
        loop {
            ctx.meter.row();
            let Some(raw) = seq.next_element::<Box<RawValue>>()? else { break };
            // The meter stops a row at about the bound (what the parser's buffer read
            // ahead was counted before the row began); its text is the exact measure.
            if raw.get().len() as u64 > MAX_ROW_BYTES {
                return Err(ctx.refuse(ROW_TOO_LARGE.into()));
            }
            let row = match shallow_row(raw.get()) {
                Ok(row) => row,
                Err(e) => return Err(ctx.refuse(format!("row {} of section {}: {e}", n + 1, self.section))),
            };
            if let Some(e) = ctx.schemas.row.iter_errors(&row).next() {
                let msg = format!(
                    "row {} of section {} does not match the snapshot schema at {}: {e}",
                    n + 1,
                    self.section,
                    location(&e.instance_path())
                );
                return Err(ctx.refuse(msg));
            }
            if let Err(e) = (ctx.on_row)(self.section, &raw, &row) {
                return Err(ctx.refuse(e.0));
            }
            n += 1;
        }
        Ok(n)
    }
}

/// A row parsed one level deep (see [`OnRow`]): at most [`MAX_ROW_COLUMNS`] keys, none
/// twice; nested arrays and objects are checked as JSON but not kept.
fn shallow_row(text: &str) -> Result<Value, String> {
    if !text.starts_with('{') {
        return shallow(text).map_err(|e| e.to_string());
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let row = (&mut de).deserialize_map(ShallowRow).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(row)
}

/// A value whose text is `text`: a scalar as it is, an array or object empty.
fn shallow(text: &str) -> Result<Value, serde_json::Error> {
    Ok(match text.as_bytes().first() {
        Some(b'{') => Value::Object(serde_json::Map::new()),
        Some(b'[') => Value::Array(Vec::new()),
        _ => serde_json::from_str(text)?,
    })
}

struct ShallowRow;

impl<'de> Visitor<'de> for ShallowRow {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a row object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        use serde::de::Error;
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.len() >= MAX_ROW_COLUMNS {
                return Err(A::Error::custom(format!("it has more than {MAX_ROW_COLUMNS} columns")));
            }
            let raw: &RawValue = map.next_value()?;
            let v = shallow(raw.get()).map_err(A::Error::custom)?;
            if out.contains_key(&key) {
                return Err(A::Error::custom(format!("column {key:?} appears twice")));
            }
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Which part of the document the parser is in, and how many decompressed bytes it
/// has read there: a row may take [`MAX_ROW_BYTES`], a stretch of header (a field,
/// a section name, `sections.organization`, what lies between) [`MAX_HEADER_BYTES`]
/// (what the header keeps is bounded as a whole by [`Ctx::header_value`]).
#[derive(Clone, Default)]
struct Meter(Rc<MeterState>);

#[derive(Default)]
struct MeterState {
    used: Cell<u64>,
    in_header: Cell<bool>,
}

impl Meter {
    fn row(&self) {
        self.0.used.set(0);
        self.0.in_header.set(false);
    }

    fn header(&self) {
        self.0.used.set(0);
        self.0.in_header.set(true);
    }
}

/// Counts the decompressed bytes read in the current part (see [`Meter`]), and refuses
/// more than it may take.
struct Budget<R> {
    inner: R,
    meter: Meter,
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let state = &self.meter.0;
        let used = state.used.get() + n as u64;
        // What the parser's buffer read ahead may have been counted in the part before.
        let (limit, why) = if state.in_header.get() {
            (MAX_HEADER_BYTES + PARSE_BUFFER as u64, HEADER_TOO_LARGE)
        } else {
            (MAX_ROW_BYTES, ROW_TOO_LARGE)
        };
        if used > limit {
            return Err(std::io::Error::other(why));
        }
        state.used.set(used);
        Ok(n)
    }
}

/// Hashes and counts what passes through.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Streams `bucket/key` through [`verify`] (on a blocking thread, one row in memory
/// at a time). The outer error is the storage's; the inner one says what is wrong
/// with the file, including that it is missing from the bucket.
pub async fn verify_object(
    storage: &crate::storage::Storage,
    bucket: &str,
    key: &str,
    expected_sha256: Option<&str>,
) -> anyhow::Result<Result<Report, Invalid>> {
    verify_object_bounded(storage, bucket, key, expected_sha256, None, ()).await
}

/// The work did not finish by its deadline: no verdict on the file.
#[derive(Debug, thiserror::Error)]
#[error("the verification did not finish within its time limit; the file was not judged")]
pub struct TimedOut;

/// [`verify_object`] with a deadline and a guard that the work itself holds: the
/// storage read and the blocking parse both stop at `deadline` (a [`TimedOut`] error,
/// not a verdict on the file), and `guard` (a semaphore permit, say) is dropped only
/// once the blocking work has ended, even when whoever awaited it has gone.
pub async fn verify_object_bounded<G: Send + 'static>(
    storage: &crate::storage::Storage,
    bucket: &str,
    key: &str,
    expected_sha256: Option<&str>,
    deadline: Option<std::time::Instant>,
    guard: G,
) -> anyhow::Result<Result<Report, Invalid>> {
    let opened = match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), storage.read(bucket, key)).await.map_err(|_| TimedOut)?,
        None => storage.read(bucket, key).await,
    };
    let Some(body) = opened? else {
        // Gone from the bucket (removed outside the product): the file is lost.
        // Told to org admins as it is, so it names neither the bucket nor the key.
        tracing::warn!(bucket, key, "a recorded file is missing from its bucket");
        return Ok(Err(Invalid("the file is missing from storage: it was removed outside Data Export".into())));
    };
    let expired = Arc::new(AtomicBool::new(false));
    let reader = DeadlineReader { inner: tokio_util::io::SyncIoBridge::new(body), deadline, expired: expired.clone() };
    let expected = expected_sha256.map(str::to_string);
    let verdict = tokio::task::spawn_blocking(move || {
        let _held_until_the_work_ends = guard;
        verify(reader, expected.as_deref())
    })
    .await?;
    if expired.load(Ordering::Relaxed) {
        return Err(TimedOut.into());
    }
    Ok(verdict)
}

/// A reader that fails once its deadline has passed, so that a blocking parse of a
/// slow or huge object cannot run on after its time.
struct DeadlineReader<R> {
    inner: R,
    deadline: Option<std::time::Instant>,
    expired: Arc<AtomicBool>,
}

impl<R: Read> Read for DeadlineReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            self.expired.store(true, Ordering::Relaxed);
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, TimedOut));
        }
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gz(text: &str) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    }

    fn doc(memberships: &str, count: u64) -> String {
        let core = [
            "regions",
            "chapters",
            "user_profiles",
            "custom_fields",
            "custom_field_values",
            "saved_views",
            "member_enrichment",
            "documents",
            "audit_log",
        ];
        let mut sections = format!(
            r#""organization":{{"id":1,"slug":"acme","name":"Acme","bucket":"org-acme","created_at":"2026-01-01T00:00:00Z"}},"memberships":{memberships}"#
        );
        let mut counts = format!(r#""organization":1,"memberships":{count}"#);
        for s in core {
            sections.push_str(&format!(r#","{s}":[]"#));
            counts.push_str(&format!(r#","{s}":0"#));
        }
        format!(
            r#"{{"format":"data-export/snapshot","version":1,"export_id":"01M8F18Q922CNFEQSWZD9A6EMB","generated_at":"2026-11-27T17:36:20Z","snapshot_at":"2026-11-27T17:36:20Z","organization":{{"id":1,"slug":"acme","name":"Acme","bucket":"org-acme","created_at":"2026-01-01T00:00:00Z"}},"modules":{{"core":true,"data_export":true,"engage":false,"operations":false,"foundation":false,"learning":false,"alumni":false}},"counts":{{{counts}}},"sections":{{{sections}}}}}"#
        )
    }

    #[test]
    fn a_whole_valid_file_verifies_with_its_hash() {
        let file = gz(&doc(r#"[{"id":1},{"id":2,"note":"ü"}]"#, 2));
        let sha = hex::encode(Sha256::digest(&file));
        let r = verify(&file[..], Some(&sha)).unwrap();
        assert_eq!(r.counts["memberships"], 2);
        assert_eq!(r.rows, 3);
        assert_eq!(r.size_bytes, file.len() as u64);
        assert_eq!(r.organization, "acme");
    }

    #[test]
    fn a_row_over_the_budget_is_refused_as_it_is_read() {
        let big = "x".repeat(MAX_ROW_BYTES as usize + 1);
        let file = gz(&doc(&format!(r#"[{{"id":1,"note":"{big}"}}]"#), 1));
        drop(big);
        let e = verify(&file[..], None).unwrap_err();
        assert!(e.0.contains("larger than 64 MiB"), "{e}");
        // Just under it, a row is read.
        let fits = "x".repeat(MAX_ROW_BYTES as usize - 1024 * 1024);
        let file = gz(&doc(&format!(r#"[{{"id":1,"note":"{fits}"}}]"#), 1));
        assert_eq!(verify(&file[..], None).unwrap().counts["memberships"], 1);
    }

    #[test]
    fn the_header_is_bounded_as_a_whole_and_unknown_names_stop_the_read() {
        // One header field of 60 MiB of `[],`: refused once the header passes 1 MiB.
        let bomb = format!("[{}[]]", "[],".repeat(20 * 1024 * 1024));
        let file =
            gz(&doc("[]", 0).replace(r#""generated_at":"2026-11-27T17:36:20Z""#, &format!(r#""generated_at":{bomb}"#)));
        drop(bomb);
        let e = verify(&file[..], None).unwrap_err();
        assert!(e.0.contains("header") && e.0.contains("larger than 1 MiB"), "{e}");
        // Many fields under 1 MiB each, over it together.
        let half = "x".repeat(600 * 1024);
        let two = doc("[]", 0)
            .replace(r#""generated_at":"2026-11-27T17:36:20Z""#, &format!(r#""generated_at":"{half}""#))
            .replace(r#""snapshot_at":"2026-11-27T17:36:20Z""#, &format!(r#""snapshot_at":"{half}""#));
        let e = verify(&gz(&two)[..], None).unwrap_err();
        assert!(e.0.contains("larger than 1 MiB"), "{e}");
        // Names the format does not have, refused at the first one.
        let cases = [
            (doc("[]", 0).replacen(r#""format""#, r#""made_up":1,"format""#, 1), "unknown field \"made_up\""),
            (
                doc("[]", 0).replace(r#""memberships":[]"#, r#""s000001":[],"memberships":[]"#),
                "sections has \"s000001\", which is not a section",
            ),
            (doc("[]", 0).replace(r#""memberships":0"#, r#""s1":0,"memberships":0"#), "counts names \"s1\""),
            (doc(r#"[{"id":1,"id":2}]"#, 1), "column \"id\" appears twice"),
        ];
        for (text, expect) in cases {
            let e = verify(&gz(&text)[..], None).unwrap_err();
            assert!(e.0.contains(expect), "{expect}: {e}");
        }
        // A long made-up section name stops within the header's bound, not at the row's.
        let long = "s".repeat(40 * 1024 * 1024);
        let e = verify(
            &gz(&doc("[]", 0).replace(r#""memberships":[]"#, &format!(r#""{long}":[],"memberships":[]"#)))[..],
            None,
        )
        .unwrap_err();
        assert!(e.0.contains("larger than 1 MiB"), "{e}");
    }

    #[test]
    fn rows_are_handed_on_one_level_deep() {
        let file = gz(&doc(r#"[{"id":1,"note":"a","data":{"deep":[1,2,3]},"list":[[],[]]}]"#, 1));
        let mut seen = Vec::new();
        read(&file[..], None, &mut |_, raw, row| {
            seen.push((raw.get().to_string(), row.clone()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen[0].1, serde_json::json!({"id": 1, "note": "a", "data": {}, "list": []}));
        assert!(seen[0].0.contains(r#""deep":[1,2,3]"#), "the text keeps everything");
    }

    #[test]
    fn every_kind_of_damage_is_named() {
        let good = gz(&doc(r#"[{"id":1}]"#, 1));
        let cases: Vec<(&str, Vec<u8>, Option<&str>, &str)> = vec![
            ("truncated", good[..good.len() - 9].to_vec(), None, "not a whole gzip file"),
            (
                "bad crc",
                {
                    let mut b = good.clone();
                    let n = b.len();
                    b[n - 6] ^= 1;
                    b
                },
                None,
                "not a whole gzip file",
            ),
            ("two members", [good.clone(), good.clone()].concat(), None, "more than one gzip member"),
            ("not gzip", b"{}".to_vec(), None, "not a whole gzip file"),
            ("empty", Vec::new(), None, "the file is empty"),
            ("wrong hash", good.clone(), Some("00"), "SHA-256 is"),
            ("count off", gz(&doc(r#"[{"id":1}]"#, 2)), None, "counts says 2"),
            ("row without id", gz(&doc(r#"[{"x":1}]"#, 1)), None, "row 1 of section memberships"),
            ("secret column", gz(&doc(r#"[{"id":1,"password_hash":"x"}]"#, 1)), None, "row 1 of section memberships"),
            ("not json", gz("{\"format\":"), None, "not valid JSON"),
            ("trailing", gz(&(doc("[]", 0) + " {}")), None, "not valid JSON"),
            ("wrong format", gz(&doc("[]", 0).replace("data-export/snapshot", "other")), None, "not an org snapshot"),
            (
                "version 2",
                gz(&doc("[]", 0).replace("\"version\":1", "\"version\":2")),
                None,
                "version 2 is not supported",
            ),
        ];
        for (what, bytes, sha, expect) in cases {
            let e = verify(&bytes[..], sha).expect_err(what);
            assert!(e.0.contains(expect), "{what}: {e}");
        }
    }
}
