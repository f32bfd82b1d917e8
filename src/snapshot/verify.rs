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
/// row on its own, both from [`SCHEMA`].
pub struct Schemas {
    document: jsonschema::Validator,
    row: jsonschema::Validator,
}

impl Schemas {
    pub fn load() -> Self {
        let doc: Value = serde_json::from_str(SCHEMA).expect("the bundled schema is JSON");
        let row = serde_json::json!({
            "$schema": doc["$schema"],
            "$defs": doc["$defs"],
            "$ref": "#/$defs/row",
        });
        Self {
            document: jsonschema::validator_for(&doc).expect("the bundled schema compiles"),
            row: jsonschema::validator_for(&row).expect("the bundled row schema compiles"),
        }
    }
}

/// Verifies a snapshot read from `input` (the compressed bytes). With `expected_sha256`
/// the file's hash must equal it.
pub fn verify(input: impl Read, expected_sha256: Option<&str>) -> Result<Report, Invalid> {
    read(input, expected_sha256, &mut |_, _, _| Ok(())).map(|(report, _)| report)
}

/// The most decompressed bytes one row (or the header before the first row) may
/// take: the reader holds one row at a time, and this bounds that row.
pub const MAX_ROW_BYTES: u64 = 64 * 1024 * 1024;

const ROW_TOO_LARGE: &str = "a row (or a header field) is larger than 64 MiB";

/// What a reader does with each row of a section (after the row's schema check), in
/// file order: it gets the section, the row's JSON text as it is in the file (numbers
/// exactly as written), and the row parsed. An error stops the read and is its result.
pub type OnRow<'a> = dyn FnMut(&str, &RawValue, &Value) -> Result<(), Invalid> + 'a;

/// Reads and checks a snapshot as [`verify`] does, handing each row of every section
/// but `organization` to `on_row` as it is read. Returns the report and the document
/// without its sections' rows (`sections.organization` is kept).
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
            // The budget bounds what one row can make the reader hold.
            let used = Rc::new(Cell::new(0));
            let budget = Budget { inner: &mut gz, used: used.clone() };
            let found = read_document(BufReader::with_capacity(256 * 1024, budget), &schemas, on_row, &used)?;
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
    let declared = header.get("counts").and_then(Value::as_object).cloned().unwrap_or_default();
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

fn read_document(
    input: impl Read,
    schemas: &Schemas,
    on_row: &mut OnRow<'_>,
    used: &Rc<Cell<u64>>,
) -> Result<Found, Invalid> {
    let mut de = serde_json::Deserializer::from_reader(input);
    let mut problem = None;
    let parsed = DocumentSeed { schemas, problem: &mut problem, on_row, used }
        .deserialize(&mut de)
        .and_then(|f| de.end().map(|_| f));
    if let Some(p) = problem {
        return Err(p);
    }
    let found = parsed.map_err(|e| {
        if e.is_io() && e.to_string().contains(ROW_TOO_LARGE) {
            invalid(ROW_TOO_LARGE)
        } else if e.is_io() {
            invalid(format!("not a whole gzip file: {e}"))
        } else {
            invalid(format!("not valid JSON: {e}"))
        }
    })?;
    let doc = Value::Object(found.header.clone());
    if let Some(e) = schemas.document.iter_errors(&doc).next() {
        return Err(invalid(format!("does not match the snapshot schema at {}: {e}", location(&e.instance_path()))));
    }
    Ok(found)
}

fn location(pointer: &impl ToString) -> String {
    let p = pointer.to_string();
    if p.is_empty() { "the top level".into() } else { p }
}

struct DocumentSeed<'a, 'r> {
    schemas: &'a Schemas,
    problem: &'a mut Option<Invalid>,
    on_row: &'a mut OnRow<'r>,
    used: &'a Rc<Cell<u64>>,
}

impl<'de> DeserializeSeed<'de> for DocumentSeed<'_, '_> {
    type Value = Found;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DocumentSeed<'_, '_> {
    type Value = Found;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a snapshot object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        let mut header = serde_json::Map::new();
        let mut counts = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            if header.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
            if key == "sections" {
                let sections = map.next_value_seed(SectionsSeed {
                    schemas: self.schemas,
                    problem: &mut *self.problem,
                    counts: &mut counts,
                    on_row: &mut *self.on_row,
                    used: self.used,
                })?;
                header.insert(key, Value::Object(sections));
            } else {
                let v: Value = map.next_value()?;
                // The format and version are checked as soon as they are read, so a
                // file of another kind stops before its rows are.
                if let Some(why) = wrong_kind(&key, &v) {
                    *self.problem = Some(invalid(why.clone()));
                    return Err(serde::de::Error::custom(why));
                }
                header.insert(key, v);
            }
        }
        Ok(Found { header, counts })
    }
}

/// Why a header field says the file is not a version-1 org snapshot.
fn wrong_kind(key: &str, v: &Value) -> Option<String> {
    match key {
        "format" if v.as_str() != Some("data-export/snapshot") => {
            Some(format!("not an org snapshot: its format is {v}, not \"data-export/snapshot\""))
        }
        "version" if v.as_u64() != Some(1) => {
            Some(format!("snapshot version {v} is not supported (this program reads version 1)"))
        }
        _ => None,
    }
}

/// `sections`: `organization` kept whole; every other section's rows validated and
/// counted one at a time, handed to the row visitor, and replaced by `[]`.
struct SectionsSeed<'a, 'r> {
    schemas: &'a Schemas,
    problem: &'a mut Option<Invalid>,
    counts: &'a mut BTreeMap<String, u64>,
    on_row: &'a mut OnRow<'r>,
    used: &'a Rc<Cell<u64>>,
}

impl<'de> DeserializeSeed<'de> for SectionsSeed<'_, '_> {
    type Value = serde_json::Map<String, Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SectionsSeed<'_, '_> {
    type Value = serde_json::Map<String, Value>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of sections")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if out.contains_key(&name) {
                return Err(serde::de::Error::custom(format!("duplicate section {name:?}")));
            }
            if name == "organization" {
                let v: Value = map.next_value()?;
                self.counts.insert(name.clone(), 1);
                out.insert(name, v);
                continue;
            }
            let n = map.next_value_seed(RowsSeed {
                schemas: self.schemas,
                problem: &mut *self.problem,
                section: &name,
                on_row: &mut *self.on_row,
                used: self.used,
            })?;
            self.counts.insert(name.clone(), n);
            out.insert(name, Value::Array(Vec::new()));
        }
        Ok(out)
    }
}

struct RowsSeed<'a, 'r> {
    schemas: &'a Schemas,
    problem: &'a mut Option<Invalid>,
    section: &'a str,
    on_row: &'a mut OnRow<'r>,
    used: &'a Rc<Cell<u64>>,
}

impl<'de> DeserializeSeed<'de> for RowsSeed<'_, '_> {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowsSeed<'_, '_> {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an array of rows for section {}", self.section)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut n = 0u64;
        while let Some(raw) = seq.next_element::<Box<RawValue>>()? {
            self.used.set(0);
            let row: Value = serde_json::from_str(raw.get()).map_err(serde::de::Error::custom)?;
            if let Some(e) = self.schemas.row.iter_errors(&row).next() {
                let msg = format!(
                    "row {} of section {} does not match the snapshot schema at {}: {e}",
                    n + 1,
                    self.section,
                    location(&e.instance_path())
                );
                *self.problem = Some(invalid(msg.clone()));
                return Err(serde::de::Error::custom(msg));
            }
            if let Err(e) = (self.on_row)(self.section, &raw, &row) {
                let msg = e.0.clone();
                *self.problem = Some(e);
                return Err(serde::de::Error::custom(msg));
            }
            n += 1;
        }
        Ok(n)
    }
}

/// Counts the decompressed bytes read since the last row, and refuses more than
/// [`MAX_ROW_BYTES`].
struct Budget<R> {
    inner: R,
    used: Rc<Cell<u64>>,
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let used = self.used.get() + n as u64;
        if used > MAX_ROW_BYTES {
            return Err(std::io::Error::other(ROW_TOO_LARGE));
        }
        self.used.set(used);
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
