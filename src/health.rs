//! Every org's backup state, as DESIGN.md's "Platform health" defines it, worst
//! first: what the org list (`/platform/orgs` and its API), the home page's counts,
//! the health mails and `/metrics` read, and what makes an export stuck. One query computes it for every org from
//! one row each (`org_backup_status`, kept by a trigger as runs end), the org's
//! Data Export switch, its active run and that run's job.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::{error::AppError, settings, state::AppState};

/// The SQL condition that makes the active run `r` (joined with its job `j` from
/// `apalis.jobs`) stuck, with `$1` the seconds without progress that count: its
/// job is gone, has ended (done, killed, or failed with no attempt left), or it has
/// been running without progress for that long. Shared by housekeeping
/// (`exports::stuck`) and the org list, so both call the same runs stuck.
pub const STUCK_WHY: &str = "case
      when j.id is null then 'no_job'
      when j.status in ('Done', 'Killed') or (j.status = 'Failed' and j.attempts >= j.max_attempts) then 'job_ended'
      when r.status = 'running' and coalesce(r.progress_at, r.started_at, r.created_at) < now() - make_interval(secs => $1)
        then 'no_progress'
    end";

/// The states, worst first (the order of the list). `off` comes after the others:
/// nothing is expected of an org that switched Data Export off; nor of one that is
/// `closing` (its final export made, its erasure waiting: docs/runbooks/offboarding.md)
/// or `closed` (erased; its row stays with the receipt), which come last.
pub const STATES: [&str; 8] = ["stuck", "failing", "overdue", "never", "ok", "off", "closing", "closed"];

/// What a state means, in a sentence (the org list's legend).
pub fn describe(state: &str) -> &'static str {
    match state {
        "stuck" => {
            "An export is pending or running but cannot end by itself; housekeeping fails it within a minute or two."
        }
        "failing" => "Its newest finished export failed, or its bucket failed its last check.",
        "overdue" => {
            "Its newest completed export is older than twice the schedule's period (30 days while the schedule is off), or it has none although a slot has passed."
        }
        "never" => "No completed export yet, and no scheduled slot has passed since Data Export was switched on.",
        "ok" => "Backed up within the schedule's period.",
        "off" => "Data Export is switched off for the org.",
        "closing" => {
            "The org is being closed: its final export is made, then it waits out its grace period before it is erased."
        }
        "closed" => "The org was closed and its data erased; its receipt is kept.",
        _ => "",
    }
}

/// One org's backup state and what it rests on.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct OrgHealth {
    pub id: i64,
    pub slug: String,
    pub name: String,
    pub data_export: bool,
    pub state: String,
    /// The state's place in [`STATES`] (the list's order, with the slug).
    pub rank: i32,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
    pub last_failure_reason: Option<String>,
    pub consecutive_failures: i32,
    pub last_size_bytes: Option<i64>,
    pub run_id: Option<String>,
    pub run_status: Option<String>,
    pub run_created_at: Option<DateTime<Utc>>,
    pub run_started_at: Option<DateTime<Utc>>,
    pub bucket_state: String,
    pub bucket_error: Option<String>,
}

impl OrgHealth {
    /// The API's view (DESIGN.md, `GET /api/v1/platform/orgs`).
    pub fn api_json(&self) -> serde_json::Value {
        let active_run = self.run_id.as_ref().map(|id| {
            serde_json::json!({
                "id": id, "status": self.run_status, "created_at": self.run_created_at, "started_at": self.run_started_at,
            })
        });
        serde_json::json!({
            "slug": self.slug,
            "name": self.name,
            "data_export": self.data_export,
            "state": self.state,
            "last_success_at": self.last_success_at,
            "last_failure_at": self.last_failure_at,
            "last_failure_reason": self.last_failure_reason,
            "consecutive_failures": self.consecutive_failures,
            "active_run": active_run,
            "last_size_bytes": self.last_size_bytes,
            "bucket_state": self.bucket_state,
            "bucket_error": self.bucket_error,
        })
    }

    /// The list's cursor after this org: its rank and slug.
    pub fn cursor(&self) -> String {
        format!("{}.{}", self.rank, self.slug)
    }
}

/// What the states are judged against: now's settings and limits.
#[derive(Clone, Copy, Debug)]
pub struct Basis {
    /// `STUCK_RUN_SECS`.
    pub stuck_secs: u64,
    /// The preset's [`settings::schedule::Preset::overdue_after`], in seconds.
    pub overdue_secs: i64,
    /// The latest slot that has passed (none while the schedule is off, or before
    /// its first slot).
    pub latest_slot: Option<DateTime<Utc>>,
}

impl Basis {
    /// Now's basis, from the stored settings and the configuration.
    pub async fn now(state: &AppState) -> sqlx::Result<Self> {
        let s = settings::load(&state.pool).await?;
        let latest = s.preset.latest_at_or_before(s.timezone, Utc::now()).filter(|slot| *slot >= s.schedule_since);
        Ok(Self {
            stuck_secs: state.config.stuck_run_secs,
            overdue_secs: s.preset.overdue_after().num_seconds(),
            latest_slot: latest,
        })
    }
}

/// Every org with its state, as the CTE `t`; `$1` the stuck seconds, `$2` the
/// overdue seconds, `$3` the latest slot that has passed.
fn states_sql() -> String {
    format!(
        "with s as (
           select o.id, o.slug, o.name, o.bucket_state, o.bucket_error, o.lifecycle,
                  coalesce(m.enabled, false) as data_export, m.updated_at as switched_at,
                  b.last_success_at, b.last_failure_at, b.last_failure_reason,
                  coalesce(b.consecutive_failures, 0) as consecutive_failures, b.last_size_bytes,
                  r.id as run_id, r.status as run_status, r.created_at as run_created_at, r.started_at as run_started_at,
                  (r.id is not null and ({STUCK_WHY}) is not null) as stuck
           from organizations o
           left join org_modules m on m.org_id = o.id and m.module = 'data_export'
           left join org_backup_status b on b.org_id = o.id
           left join export_runs r on r.org_id = o.id and r.status in ('pending', 'running')
           left join apalis.jobs j on j.id = r.id
         ), t as (
           select s.*, case
               when lifecycle = 'closing' then 'closing'
               when lifecycle <> 'active' then 'closed'
               when not data_export then 'off'
               when stuck then 'stuck'
               when consecutive_failures > 0 or bucket_state = 'failing' then 'failing'
               when last_success_at is not null and last_success_at < now() - make_interval(secs => $2) then 'overdue'
               when last_success_at is null and run_id is null and $3::timestamptz is not null
                    and $3::timestamptz > switched_at then 'overdue'
               when last_success_at is null then 'never'
               else 'ok' end as state
           from s
         ), u as (
           select t.*, array_position(array['stuck', 'failing', 'overdue', 'never', 'ok', 'off', 'closing', 'closed'], t.state)::int as rank
           from t
         )"
    )
}

/// The columns of [`OrgHealth`], from the CTE `u` of [`states_sql`].
const ORG_HEALTH: &str = "select id, slug, name, data_export, state, rank, last_success_at, last_failure_at,
    last_failure_reason, consecutive_failures, last_size_bytes, run_id, run_status, run_created_at, run_started_at,
    bucket_state, bucket_error from u";

/// Binds a [`Basis`] as [`states_sql`]'s `$1`, `$2` and `$3`.
trait BindBasis {
    fn bind_basis(self, basis: Basis) -> Self;
}

impl<'q, O> BindBasis for sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    fn bind_basis(self, basis: Basis) -> Self {
        self.bind(basis.stuck_secs as f64).bind(basis.overdue_secs as f64).bind(basis.latest_slot)
    }
}

/// Which orgs a page of the list holds.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only orgs in this state.
    pub state: Option<String>,
    /// Only orgs whose slug or name contains this (any case).
    pub q: Option<String>,
    /// Only orgs after this cursor ([`OrgHealth::cursor`]).
    pub before: Option<(i32, String)>,
    pub limit: i64,
}

impl Filter {
    /// Reads `state`, `q`, `limit` (1..=`max`, else `default`) and `before` from a
    /// query string; a value that is malformed is refused with what is expected.
    pub fn parse(query: Option<&str>, default: i64, max: i64) -> Result<Self, AppError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
            .map_err(|_| AppError::BadRequest("The query string is malformed.".into()))?;
        let value = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim()).filter(|v| !v.is_empty());
        let state = match value("state") {
            None => None,
            Some(s) if STATES.contains(&s) => Some(s.to_string()),
            Some(s) => {
                return Err(AppError::BadRequest(format!("state must be one of {} (got {s:?}).", STATES.join(", "))));
            }
        };
        let q = match value("q") {
            Some(q) if q.chars().count() > 100 => {
                return Err(AppError::BadRequest("q must be at most 100 characters.".into()));
            }
            Some(q) if q.chars().any(char::is_control) => {
                return Err(AppError::BadRequest("q must not hold control characters.".into()));
            }
            q => q.map(str::to_string),
        };
        let limit = match value("limit") {
            None => default,
            Some(raw) => raw.parse::<i64>().ok().filter(|n| (1..=max).contains(n)).ok_or_else(|| {
                AppError::BadRequest(format!("limit must be a whole number from 1 to {max} (got {raw:?})."))
            })?,
        };
        let before = match value("before") {
            None => None,
            Some(raw) => Some(parse_cursor(raw).ok_or_else(|| {
                AppError::BadRequest(format!("before must be a cursor from the list's next link (got {raw:?})."))
            })?),
        };
        Ok(Self { state, q, before, limit })
    }

    /// The query string of the page after `next` with this filter.
    pub fn next_query(&self, next: &str) -> String {
        let mut pairs = vec![("limit", self.limit.to_string()), ("before", next.to_string())];
        if let Some(s) = &self.state {
            pairs.push(("state", s.clone()));
        }
        if let Some(q) = &self.q {
            pairs.push(("q", q.clone()));
        }
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }
}

/// `RANK.SLUG`, as [`OrgHealth::cursor`] writes it.
fn parse_cursor(raw: &str) -> Option<(i32, String)> {
    let (rank, slug) = raw.split_once('.')?;
    let rank: i32 = rank.parse().ok().filter(|r| (1..=STATES.len() as i32).contains(r))?;
    crate::orgs::OrgSlug::parse(slug).map(|s| (rank, s.as_str().to_string()))
}

/// One page of the list, worst first, then by slug.
#[derive(Debug)]
pub struct Page {
    pub orgs: Vec<OrgHealth>,
    /// The cursor of the next page while more remain.
    pub next: Option<String>,
}

/// A page of every org's state.
pub async fn page(pool: &PgPool, basis: Basis, filter: &Filter) -> sqlx::Result<Page> {
    let pattern =
        filter.q.as_ref().map(|q| format!("%{}%", q.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
    let (before_rank, before_slug) = filter.before.clone().unzip();
    let mut orgs: Vec<OrgHealth> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{} {ORG_HEALTH} where ($4::text is null or state = $4)
              and ($5::text is null or slug ilike $5 or name ilike $5)
              and ($6::int is null or (rank, slug) > ($6, $7::text))
            order by rank, slug limit $8",
        states_sql()
    )))
    .bind_basis(basis)
    .bind(filter.state.as_deref())
    .bind(pattern)
    .bind(before_rank)
    .bind(before_slug)
    .bind(filter.limit + 1)
    .fetch_all(pool)
    .await?;
    let more = orgs.len() as i64 > filter.limit;
    orgs.truncate(filter.limit.max(0) as usize);
    let next = if more { orgs.last().map(OrgHealth::cursor) } else { None };
    Ok(Page { orgs, next })
}

/// How many orgs are in each state, in [`STATES`]' order (0s included).
pub async fn counts(pool: &PgPool, basis: Basis) -> sqlx::Result<Vec<(&'static str, i64)>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{} select state, count(*) from u group by state", states_sql())))
            .bind_basis(basis)
            .fetch_all(pool)
            .await?;
    Ok(STATES.iter().map(|s| (*s, rows.iter().find(|(r, _)| r == s).map_or(0, |(_, n)| *n))).collect())
}

/// Every org in a state that platform admins are told of (`stuck`, `failing`,
/// `overdue`), with its reason: what the health mail compares with what it told.
pub async fn alarming(pool: &PgPool, basis: Basis) -> sqlx::Result<Vec<OrgHealth>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{} {ORG_HEALTH} where state in ('stuck', 'failing', 'overdue') order by rank, slug",
        states_sql()
    )))
    .bind_basis(basis)
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_reads_its_parameters_and_refuses_what_is_malformed() {
        let f = Filter::parse(Some("state=failing&q=ac%25me&limit=7&before=2.acme"), 100, 500).unwrap();
        assert_eq!(f.state.as_deref(), Some("failing"));
        assert_eq!(f.q.as_deref(), Some("ac%me"));
        assert_eq!(f.limit, 7);
        assert_eq!(f.before, Some((2, "acme".to_string())));
        assert_eq!(Filter::parse(None, 100, 500).unwrap().limit, 100);
        for bad in ["state=fine", "limit=0", "limit=501", "before=acme", "before=9.acme", "before=1.ACME", "before=1.a"]
        {
            assert!(matches!(Filter::parse(Some(bad), 100, 500), Err(AppError::BadRequest(_))), "{bad}");
        }
        let q = "q=".to_string() + &"x".repeat(101);
        assert!(Filter::parse(Some(&q), 100, 500).is_err());
        let next = f.next_query("3.globex");
        assert!(
            next.contains("before=3.globex") && next.contains("state=failing") && next.contains("limit=7"),
            "{next}"
        );
    }
}
