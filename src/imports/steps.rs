//! The step a running import is in ("reading the file", "writing section 3 of 24:
//! chapters", ...), written to its `org_imports` record for the page's poll and the
//! API. The import runs in one transaction on a connection of its own, which nobody
//! else sees until it commits; so the step is written on a connection of the pool,
//! in a statement of its own that commits at once.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sqlx::PgPool;

/// How long a step's write may take before it is given up: the step is for people
/// to watch, and never holds up or fails the import.
const WRITE_WITHIN: Duration = Duration::from_secs(2);

/// Where an import is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// The file, streamed and checked row by row into the staging tables.
    Reading,
    /// The file's own consistency: ids, org ids, references, keys.
    Checking,
    /// People mapped to accounts by email, and the accounts locked or created.
    People,
    /// Section `n` of `of` written into its table.
    Writing { n: usize, of: usize, section: &'a str },
    /// The new org's bucket and the documents' binaries.
    Media,
    /// The audit entry and the commit.
    Finishing,
}

impl fmt::Display for Step<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reading => f.write_str("reading the file"),
            Self::Checking => f.write_str("checking the file"),
            Self::People => f.write_str("matching people"),
            Self::Writing { n, of, section } => write!(f, "writing section {n} of {of}: {section}"),
            Self::Media => f.write_str("copying media"),
            Self::Finishing => f.write_str("finishing"),
        }
    }
}

/// Writes each step to the import's record, while `attempt` holds it. Without a
/// record (the command line) the steps go to the debug log only. Each step's
/// duration is logged at debug level when the next one begins (target
/// `data_export::imports::steps`: where an import's time goes).
#[derive(Clone, Debug, Default)]
pub struct Steps {
    record: Option<(PgPool, String, i32)>,
    current: Arc<Mutex<Option<(String, Instant)>>>,
}

impl Steps {
    /// Steps of the import record `id`, held by `attempt`.
    pub fn of_record(pool: PgPool, id: String, attempt: i32) -> Self {
        Self { record: Some((pool, id, attempt)), ..Self::default() }
    }

    /// Logs how long the step before took.
    pub fn done(&self) {
        let Ok(mut current) = self.current.lock() else { return };
        if let Some((step, since)) = current.take() {
            tracing::debug!(step, seconds = since.elapsed().as_secs_f64(), "import step done");
        }
    }

    /// Records `step`; a failure is logged, never returned.
    pub async fn enter(&self, step: Step<'_>) {
        let text = step.to_string();
        self.done();
        if let Ok(mut current) = self.current.lock() {
            *current = Some((text.clone(), Instant::now()));
        }
        let Some((pool, id, attempt)) = &self.record else { return };
        let write =
            sqlx::query("update org_imports set step = $3 where id = $1 and attempt = $2 and status = 'running'")
                .bind(id)
                .bind(attempt)
                .bind(&text)
                .execute(pool);
        match tokio::time::timeout(WRITE_WITHIN, write).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(import_id = %id, error = %e, "could not record the import's step"),
            Err(_) => tracing::warn!(import_id = %id, "recording the import's step took too long; skipped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_step_reads_as_people_see_it() {
        let shown: Vec<String> = [
            Step::Reading,
            Step::Checking,
            Step::People,
            Step::Writing { n: 3, of: 24, section: "chapters" },
            Step::Media,
            Step::Finishing,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            shown,
            [
                "reading the file",
                "checking the file",
                "matching people",
                "writing section 3 of 24: chapters",
                "copying media",
                "finishing"
            ]
        );
    }
}
