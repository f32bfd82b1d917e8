//! The job board's Logs page: a tracing layer that turns chosen log events into the
//! board UI's log entries (`apalis_board_types::LogEntry`, as JSON) on one bounded
//! broadcast channel, which the board's `/api/v1/events` streams to platform admins.
//!
//! Ours rather than apalis-board-api's `sse` feature: its `TracingBroadcaster`
//! formats every field of every event it is given (a token or a presigned URL
//! included), keeps a sender for every client that ever connected (closed ones are
//! never removed, so memory grows with each page load), stops sending at the first
//! client whose queue is full (the others then miss the entry), and drops entries
//! whenever its lock is busy.
//!
//! What reaches the stream (platform admins see it; no secret may):
//! - events of this crate and of apalis at INFO, WARN and ERROR ([`TARGETS`]),
//!   whatever `RUST_LOG` says (that filter is the stderr log's); not the INFO lines
//!   of the board's own requests (its UI polls its API every few seconds);
//! - of their fields and their spans' fields, only those named in
//!   [`ALLOWED_FIELDS`] (ids, counts, durations, queue and status names, the
//!   request's method and path); never `error`, `reason`, `url`, `to`, `key`,
//!   `bucket`, `upload_id` or any other: an error chain can quote a URL or a
//!   server's answer, and the rest name addresses, people or storage objects.
//!   A failure's detail stays on the platform pages and in the server log;
//! - the message and every kept value passed through [`scrub`] (a URL cut to its
//!   scheme and host, `dex_` tokens, `whsec_` secrets, signatures and
//!   `password=`-like pairs removed) and cut to a bounded length.
//!
//! Bounds: the channel holds [`CAPACITY`] entries in all (one ring buffer shared by
//! every client; an entry's text is at most 2,000 characters, with no control
//! character). A client that reads too slowly misses the oldest entries: its
//! receiver reports how many (`RecvError::Lagged`), which the stream counts
//! ([`count_dropped`]) and tells the page. With no client connected an event costs
//! one atomic read (its spans' allowed fields are still noted).

use std::{
    fmt::Write as _,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use apalis_board_types::{Entry, LogEntry, LogLevel, Span as BoardSpan};
use tokio::sync::broadcast;
use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
    span,
};
use tracing_subscriber::{
    Layer,
    filter::Targets,
    layer::{Context, Filter},
    registry::LookupSpan,
};

/// Entries the channel keeps for its slowest client; older ones are dropped.
pub const CAPACITY: usize = 1024;

/// The targets (and their modules) whose events may reach the stream, at INFO and above.
pub const TARGETS: &[&str] = &["data_export", "apalis", "apalis_core", "apalis_postgres"];

/// The name of the span of a request to the board's own listener: its INFO events
/// (every "answered" line of the UI's polls) stay out of the stream.
pub const BOARD_REQUEST_SPAN: &str = "board_request";

/// Fields that may reach the stream. Each holds an id, a count, a duration, a
/// fixed name or the path of a request (never its query); none holds text from
/// outside the product (an error, an address, a server's answer).
pub const ALLOWED_FIELDS: &[&str] = &[
    // ids
    "export_id",
    "import_id",
    "mail_id",
    "request_id",
    "id",
    "org_id",
    "org",
    "active_export_id",
    // what and where
    "what",
    "kind",
    "queue",
    "status",
    "method",
    "path",
    "preset",
    "slot",
    "scheduled_for",
    "table",
    "column",
    "channel",
    // counts and durations
    "attempt",
    "rows",
    "bytes",
    "seconds",
    "open_seconds",
    "connections",
    "ms",
    "removed",
    "expired",
    "mails",
    "deliveries",
    "dropped",
    "retry_in",
    "timeout",
    "max",
];

/// Prefixes of this product's secrets, removed wherever they appear: API tokens
/// (`auth::tokens::PREFIX`) and webhook signing secrets (a test checks both).
pub const SECRET_PREFIXES: &[&str] = &["dex_", "whsec_"];

/// A message is cut to this many characters, a field's value to [`MAX_VALUE`], and
/// the entry's text (the message and its fields) to [`MAX_ENTRY`].
const MAX_MESSAGE: usize = 1000;
const MAX_VALUE: usize = 200;
const MAX_ENTRY: usize = 2000;

/// The process's channel and its count of dropped entries.
fn channel() -> &'static broadcast::Sender<Arc<str>> {
    static CHANNEL: OnceLock<broadcast::Sender<Arc<str>>> = OnceLock::new();
    CHANNEL.get_or_init(|| broadcast::channel(CAPACITY).0)
}

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// A new client of the process's stream: it receives the entries logged from now on.
pub fn subscribe() -> broadcast::Receiver<Arc<str>> {
    channel().subscribe()
}

/// Counts `n` entries a slow client missed.
pub fn count_dropped(n: u64) {
    DROPPED.fetch_add(n, Ordering::Relaxed);
}

/// Entries that clients missed, since the process started.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The layer for the process's global subscriber, with its own filter ([`TARGETS`]
/// at INFO), independent of `RUST_LOG`.
pub fn layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    layer_to(channel().clone())
}

/// The layer, sending to `sender`.
fn layer_to<S>(sender: broadcast::Sender<Arc<str>>) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    BoardLog { sender }.with_filter(filter::<S>())
}

fn filter<S: Subscriber>() -> impl Filter<S> {
    TARGETS.iter().fold(Targets::new(), |t, target| t.with_target(*target, Level::INFO))
}

/// The entry told to a client that missed `n` entries.
pub fn dropped_notice(n: u64) -> String {
    let message = format!("{n} log entries were dropped here: this page read them more slowly than they came");
    entry(Level::WARN, "data_export::board", BoardSpan { name: "board".into(), ..Default::default() }, message)
}

struct BoardLog {
    sender: broadcast::Sender<Arc<str>>,
}

/// The allowed fields of a span, kept in its extensions.
struct SpanFields(Vec<(&'static str, String)>);

impl<S> Layer<S> for BoardLog
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields.kept));
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        values.record(&mut fields);
        let mut extensions = span.extensions_mut();
        if let Some(SpanFields(kept)) = extensions.get_mut::<SpanFields>() {
            for (name, value) in fields.kept {
                kept.retain(|(n, _)| *n != name);
                kept.push((name, value));
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if self.sender.receiver_count() == 0 {
            return;
        }
        let level = *event.metadata().level();
        let spans: Vec<_> = ctx.event_scope(event).map(|scope| scope.collect()).unwrap_or_default();
        if level == Level::INFO && spans.iter().any(|s| s.name() == BOARD_REQUEST_SPAN) {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        // The event's own fields, then its spans' (innermost first), each name once.
        let mut all = fields.kept;
        let mut board_span = None;
        for span in &spans {
            let extensions = span.extensions();
            let Some(SpanFields(kept)) = extensions.get::<SpanFields>() else { continue };
            if board_span.is_none() {
                board_span = task_of(span.name(), kept);
            }
            for (name, value) in kept {
                if !all.iter().any(|(n, _)| n == name) {
                    all.push((*name, value.clone()));
                }
            }
        }
        // The board's Logs page shows only entries with a span (an id and an attempt);
        // outside any, the event's own id stands in.
        let mut board_span = board_span
            .or_else(|| task_of("log", &all))
            .unwrap_or_else(|| BoardSpan { name: "log".into(), ..Default::default() });
        if board_span.attempt == 0 {
            board_span.attempt = attempt_in(&all);
        }
        let mut message = scrub(&fields.message);
        for (name, value) in &all {
            let _ = write!(message, " {name}={value}");
        }
        let _ = self.sender.send(entry(level, event.metadata().target(), board_span, message).into());
    }
}

/// The board's span of an entry: named after our span, its id the first id field
/// it has (an export's id is also its job's id, so the task's page finds it).
fn task_of(name: &str, fields: &[(&'static str, String)]) -> Option<BoardSpan> {
    let field = |wanted: &str| fields.iter().find(|(n, _)| *n == wanted).map(|(_, v)| v.clone());
    let task_id = ["export_id", "import_id", "mail_id", "request_id", "id"].into_iter().find_map(field)?;
    Some(BoardSpan { attempt: attempt_in(fields), task_id, name: name.to_string() })
}

/// The `attempt` field's number, or 0.
fn attempt_in(fields: &[(&'static str, String)]) -> i64 {
    fields.iter().find(|(n, _)| *n == "attempt").and_then(|(_, v)| v.parse().ok()).unwrap_or(0)
}

/// One entry as the board's UI reads it (it fails on anything else).
fn entry(level: Level, target: &str, span: BoardSpan, message: String) -> String {
    let level = match level {
        Level::ERROR => LogLevel::Error,
        Level::WARN => LogLevel::Warn,
        Level::INFO => LogLevel::Info,
        Level::DEBUG => LogLevel::Debug,
        _ => LogLevel::Trace,
    };
    let entry = LogEntry {
        span: Some(span),
        level,
        timestamp: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        target: target.to_string(),
        entry: Entry { message: Some(cut(message, MAX_ENTRY)), entry_type: None },
    };
    serde_json::to_string(&entry).expect("a log entry is plain data")
}

/// An event's or a span's message and allowed fields, scrubbed and cut.
#[derive(Default)]
struct Fields {
    message: String,
    kept: Vec<(&'static str, String)>,
}

impl Fields {
    fn keep(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = cut(value, MAX_MESSAGE);
        } else if let Some(name) = ALLOWED_FIELDS.iter().find(|n| **n == field.name()) {
            self.kept.push((name, cut(scrub(&value), MAX_VALUE)));
        }
    }

    fn wanted(field: &Field) -> bool {
        field.name() == "message" || ALLOWED_FIELDS.contains(&field.name())
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if Self::wanted(field) {
            self.keep(field, format!("{value:?}"));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if Self::wanted(field) {
            self.keep(field, value.to_string());
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if Self::wanted(field) {
            self.keep(field, format!("{value:.3}"));
        }
    }
}

/// `text` cut to `max` characters (an ellipsis marks the cut).
fn cut(text: String, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// Names whose value, in `name=value` or `name: value`, is removed.
const SECRET_NAMES: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "signature",
    "credential",
    "authorization",
    "apikey",
    "api_key",
    "cookie",
    "session",
    "private",
    "access_key",
];

/// Removes what may be secret from a text, word by word: a URL keeps its scheme and
/// host (its user, password, path and query may all be secret: a presigned URL's
/// signature, a chat webhook's path); a word with `X-Amz-` in it goes; a `dex_`
/// token or `whsec_` secret loses all but its prefix; a `password=...`-like pair
/// and the word after `Bearer`, `Basic` or `password:` lose their value. Line
/// breaks, tabs and other control characters become spaces.
pub fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut hide_next = false;
    for (i, word) in text.split(|c: char| c.is_whitespace() || c.is_control()).enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let lower = word.to_ascii_lowercase();
        let bare = lower.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_');
        if matches!(bare, "bearer" | "basic") || (lower.ends_with(':') && is_secret_name(bare)) {
            hide_next = true;
            out.push_str(word);
        } else if hide_next && !word.is_empty() {
            hide_next = false;
            out.push_str("[removed]");
        } else {
            out.push_str(&scrub_word(word, &lower));
        }
    }
    out
}

fn is_secret_name(name: &str) -> bool {
    !name.is_empty() && SECRET_NAMES.iter().any(|s| name.contains(s))
}

/// One word of [`scrub`] (`lower`: the same in ASCII lower case, so of equal length).
fn scrub_word(word: &str, lower: &str) -> String {
    if let Some(at) = lower.find("://") {
        let rest = &word[at + 3..];
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = authority.rsplit('@').next().unwrap_or("");
        let tail = if rest.len() > authority.len() { "/[removed]" } else { "" };
        return format!("{}{host}{tail}", &word[..at + 3]);
    }
    if lower.contains("x-amz-") {
        return "[removed]".to_string();
    }
    for prefix in SECRET_PREFIXES {
        // At the start of a word or after punctuation: `index_name` keeps its `dex_`.
        let starts = lower.match_indices(prefix).map(|(at, _)| at);
        if let Some(at) =
            starts.into_iter().find(|&at| !lower[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
        {
            return format!("{}{prefix}[removed]", &word[..at]);
        }
    }
    // Each `name=value` of the word (a query's pairs, a list's items).
    let mut out = String::with_capacity(word.len());
    let mut start = 0;
    for piece in word.split_inclusive(['&', '?', ';', ',']) {
        let lower_piece = &lower[start..start + piece.len()];
        start += piece.len();
        match piece.find(['=', ':']) {
            Some(at)
                if is_secret_name(lower_piece[..at].trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_')) =>
            {
                out.push_str(&piece[..=at]);
                out.push_str("[removed]");
                if let Some(end) = piece[at + 1..].chars().last().filter(|c| "&?;,".contains(*c)) {
                    out.push(end);
                }
            }
            _ => out.push_str(piece),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    /// What the stream carries while `body` logs, as the board's entries.
    fn streamed(body: impl FnOnce()) -> Vec<LogEntry> {
        let (sender, mut receiver) = broadcast::channel(CAPACITY);
        let subscriber = tracing_subscriber::registry().with(layer_to(sender));
        tracing::subscriber::with_default(subscriber, body);
        let mut out = Vec::new();
        while let Ok(text) = receiver.try_recv() {
            out.push(serde_json::from_str(&text).expect("the board's UI can read every entry"));
        }
        out
    }

    fn message(entry: &LogEntry) -> &str {
        entry.entry.message.as_deref().unwrap_or_default()
    }

    const PRESIGNED: &str = "http://127.0.0.1:9000/org-acme/exports/x.json.gz?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20261207&X-Amz-Signature=0123abcd";

    #[test]
    fn secrets_in_fields_or_messages_do_not_reach_the_stream() {
        let entries = streamed(|| {
            let span = tracing::info_span!("export", export_id = "01JEXPORT", org_id = 7, attempt = 2);
            let _in = span.enter();
            tracing::warn!(
                token = "dex_abcdefSECRET1",
                password = "hunter2SECRET2",
                url = PRESIGNED,
                error = "upload refused: SECRET3 at https://user:pw@s3.example/b?X-Amz-Signature=SECRET4",
                reason = "SECRET5",
                secret = "whsec_SECRET6",
                rows = 12,
                "failed to upload to {PRESIGNED} with dex_SECRET7 and whsec_SECRET8; password=SECRET9 Bearer SECRET10"
            );
        });
        assert_eq!(entries.len(), 1, "{entries:?}");
        let e = &entries[0];
        let text = serde_json::to_string(e).unwrap();
        for n in 1..=10 {
            assert!(!text.contains(&format!("SECRET{n}")), "SECRET{n} leaked: {text}");
        }
        assert!(!text.contains("X-Amz") && !text.contains("hunter2") && !text.contains("0123abcd"), "{text}");
        assert_eq!(e.level, LogLevel::Warn);
        let span = e.span.as_ref().unwrap();
        assert_eq!((span.name.as_str(), span.task_id.as_str(), span.attempt), ("export", "01JEXPORT", 2));
        assert_eq!(
            message(e),
            "failed to upload to http://127.0.0.1:9000/[removed] with dex_[removed] and whsec_[removed] \
             password=[removed] Bearer [removed] rows=12 export_id=01JEXPORT org_id=7 attempt=2"
        );
    }

    #[test]
    fn only_our_crate_and_apalis_at_info_and_above_reach_it() {
        let entries = streamed(|| {
            tracing::debug!("debug: not shown");
            tracing::info!(target: "sqlx::query", "a query: not shown");
            tracing::info!(target: "hyper", "not shown");
            tracing::info!(target: "apalis_core::worker", "Worker exports-1 started");
            tracing::error!(rows = 3, "shown");
            let board = tracing::info_span!("board_request", request_id = "01JBOARD", path = "/api/v1/overview");
            let _in = board.enter();
            tracing::info!(status = 200, ms = 1, "answered");
            tracing::warn!(status = 500, "the board's own failures are shown");
        });
        let messages: Vec<&str> = entries.iter().map(message).collect();
        assert_eq!(
            messages,
            [
                "Worker exports-1 started",
                "shown rows=3",
                "the board's own failures are shown status=500 request_id=01JBOARD path=/api/v1/overview"
            ]
        );
        // Outside any span an entry still has one (the Logs page shows only those).
        assert_eq!(entries[1].span.as_ref().unwrap().name, "log");
    }

    #[test]
    fn nothing_is_formatted_without_a_client_and_values_are_bounded() {
        let (sender, receiver) = broadcast::channel::<Arc<str>>(4);
        drop(receiver);
        let subscriber = tracing_subscriber::registry().with(layer_to(sender.clone()));
        tracing::subscriber::with_default(subscriber, || tracing::info!("nobody listens"));
        assert_eq!(sender.len(), 0);
        let long = "x".repeat(5000);
        let entries = streamed(|| tracing::info!(path = long.as_str(), table = long.as_str(), "{long}"));
        let m = message(&entries[0]);
        assert_eq!(
            m.chars().count(),
            MAX_MESSAGE + 1 + " path=".len() + MAX_VALUE + 1 + " table=".len() + MAX_VALUE + 1
        );
        let many = streamed(|| {
            tracing::info!(
                path = long.as_str(),
                table = long.as_str(),
                column = long.as_str(),
                stages = long.as_str(),
                slot = long.as_str(),
                channel = long.as_str(),
                "{long}"
            )
        });
        assert_eq!(message(&many[0]).chars().count(), MAX_ENTRY + 1);
    }

    #[test]
    fn a_slow_client_loses_the_oldest_entries_and_learns_how_many() {
        let (sender, mut receiver) = broadcast::channel(8);
        let subscriber = tracing_subscriber::registry().with(layer_to(sender));
        tracing::subscriber::with_default(subscriber, || {
            for n in 0..100 {
                tracing::info!(rows = n, "entry");
            }
        });
        match receiver.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => assert_eq!(n, 92),
            other => panic!("expected the client to lag, got {other:?}"),
        }
        let next: LogEntry = serde_json::from_str(&receiver.try_recv().unwrap()).unwrap();
        assert_eq!(message(&next), "entry rows=92", "the newest 8 are kept");
        let notice: LogEntry = serde_json::from_str(&dropped_notice(92)).unwrap();
        assert!(message(&notice).starts_with("92 log entries were dropped"));
    }

    #[test]
    fn scrub_keeps_plain_text() {
        assert_eq!(
            scrub("export completed rows=12 the CSRF token was refused"),
            "export completed rows=12 the CSRF token was refused"
        );
        assert_eq!(scrub("see postgres://app:pw@db:5432/prod now"), "see postgres://db:5432/[removed] now");
        assert_eq!(scrub("(https://hooks.slack.com/services/T0/B0/XYZ)"), "(https://hooks.slack.com/[removed]");
        assert_eq!(scrub("\"token\":\"abc\""), "\"token\":[removed]");
        assert_eq!(scrub("Authorization: Basic dXNlcjpwdw=="), "Authorization: Basic [removed]");
        assert_eq!(scrub("column=index_name reindex_all"), "column=index_name reindex_all");
        assert_eq!(scrub("/x?a=1&Signature=abc&b=2,token:xyz"), "/x?a=1&Signature=[removed]&b=2,token:[removed]");
        assert_eq!(scrub("line\none\u{1}two"), "line one two");
    }
}
