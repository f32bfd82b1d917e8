//! `GET /metrics`: the Prometheus text format, for an operator's scraper. Served
//! only while `METRICS_TOKEN` is set, and only to `Authorization: Bearer` that
//! token (401 otherwise); unset, the route answers 404 as if it did not exist.
//! Every figure is read from the database, so any process serves the whole
//! platform's figures; one reading is served for up to [`FRESH`].

use std::fmt::Write;

use axum::{
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::health::{self, Basis};
use crate::{settings::backup, state::AppState};

/// How long one reading of the figures is served again: each reading scans the
/// runs and jobs tables, and a scraper (or several) may ask every few seconds.
pub const FRESH: std::time::Duration = std::time::Duration::from_secs(10);

/// The upper bounds of the export duration histogram, in seconds.
const DURATION_BUCKETS: [f64; 9] = [1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14_400.0];

/// GET /metrics
pub async fn serve(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(token) = state.config.metrics_token.as_deref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let ok = given.is_some_and(|g| {
        use sha2::Digest;
        // Equal-length digests, compared in full: the time taken tells nothing of the token.
        let (a, b) = (sha2::Sha256::digest(g.trim().as_bytes()), sha2::Sha256::digest(token.as_bytes()));
        a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    });
    if !ok {
        let mut r = (StatusCode::UNAUTHORIZED, "metrics need the bearer token METRICS_TOKEN\n").into_response();
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let cached = state.metrics_cache.lock().ok().and_then(|c| c.clone()).filter(|(at, _)| at.elapsed() < FRESH);
    let rendered = match cached {
        Some((_, text)) => Ok(text),
        None => render(&state).await.inspect(|text| {
            if let Ok(mut c) = state.metrics_cache.lock() {
                *c = Some((std::time::Instant::now(), text.clone()));
            }
        }),
    };
    match rendered {
        Ok(text) => {
            ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))], text)
                .into_response()
        }
        Err(e) => {
            tracing::warn!(error = format!("{e:#}"), "could not gather the metrics");
            (StatusCode::SERVICE_UNAVAILABLE, "the metrics could not be read from the database\n").into_response()
        }
    }
}

/// The metrics as text.
pub async fn render(state: &AppState) -> anyhow::Result<String> {
    let mut out = String::new();
    let basis = Basis::now(state).await?;

    writeln!(out, "# HELP data_export_orgs Organizations by backup state (see DESIGN: Platform health).")?;
    writeln!(out, "# TYPE data_export_orgs gauge")?;
    for (s, n) in health::counts(&state.pool, basis).await? {
        writeln!(out, "data_export_orgs{{state=\"{s}\"}} {n}")?;
    }

    let jobs: Vec<(String, String, i64)> =
        sqlx::query_as("select job_type, status, count(*) from apalis.jobs group by job_type, status order by 1, 2")
            .fetch_all(&state.pool)
            .await?;
    writeln!(out, "# HELP data_export_jobs Background jobs by queue and status.")?;
    writeln!(out, "# TYPE data_export_jobs gauge")?;
    for (queue, status, n) in jobs {
        writeln!(out, "data_export_jobs{{queue=\"{}\",status=\"{}\"}} {n}", label(&queue), label(&status))?;
    }

    // Counted in the database: the runs are never loaded.
    let filters: Vec<String> =
        DURATION_BUCKETS.iter().map(|b| format!("count(*) filter (where d <= {b:.1})")).collect();
    let row: (Vec<i64>, f64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select array[{}]::bigint[], coalesce(sum(d), 0)::float8, count(*)
         from (select extract(epoch from finished_at - started_at)::float8 as d from export_runs
               where status in ('completed', 'deleted', 'pruned', 'failed')
                 and started_at is not null and finished_at is not null) runs",
        filters.join(", ")
    )))
    .fetch_one(&state.pool)
    .await?;
    let (counts, sum, total) = row;
    writeln!(out, "# HELP data_export_export_duration_seconds How long finished exports took, start to end.")?;
    writeln!(out, "# TYPE data_export_export_duration_seconds histogram")?;
    for (bound, n) in DURATION_BUCKETS.iter().zip(counts) {
        writeln!(out, "data_export_export_duration_seconds_bucket{{le=\"{bound}\"}} {n}")?;
    }
    writeln!(out, "data_export_export_duration_seconds_bucket{{le=\"+Inf\"}} {total}")?;
    writeln!(out, "data_export_export_duration_seconds_sum {sum}")?;
    writeln!(out, "data_export_export_duration_seconds_count {total}")?;

    let verified = backup::is_ready(state).await?;
    writeln!(out, "# HELP data_export_storage_verified 1 while the backup configuration is active and verified.")?;
    writeln!(out, "# TYPE data_export_storage_verified gauge")?;
    writeln!(out, "data_export_storage_verified {}", u8::from(verified))?;

    let buckets: Vec<(String, i64)> =
        sqlx::query_as("select bucket_state, count(*) from organizations group by bucket_state order by 1")
            .fetch_all(&state.pool)
            .await?;
    writeln!(out, "# HELP data_export_org_buckets Org buckets by the state their last check left.")?;
    writeln!(out, "# TYPE data_export_org_buckets gauge")?;
    for state_name in ["ok", "unverified", "failing"] {
        let n = buckets.iter().find(|(s, _)| s == state_name).map_or(0, |(_, n)| *n);
        writeln!(out, "data_export_org_buckets{{state=\"{state_name}\"}} {n}")?;
    }
    Ok(out)
}

/// A label value with `\`, `"` and newlines escaped, as the text format asks.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
