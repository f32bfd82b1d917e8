//! The org's modules: which parts of the product (and which sections of its
//! snapshot) are on, switched by org admins and audit-logged.

use sqlx::PgPool;

/// The switchable modules (core is always on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Module {
    DataExport,
    Engage,
    Operations,
    Foundation,
    Learning,
    Alumni,
}

impl Module {
    pub const ALL: [Module; 6] =
        [Self::DataExport, Self::Engage, Self::Operations, Self::Foundation, Self::Learning, Self::Alumni];

    /// The stored key (and the key in a snapshot's `modules`).
    pub fn key(self) -> &'static str {
        match self {
            Self::DataExport => "data_export",
            Self::Engage => "engage",
            Self::Operations => "operations",
            Self::Foundation => "foundation",
            Self::Learning => "learning",
            Self::Alumni => "alumni",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::DataExport => "Data Export",
            Self::Engage => "Engage",
            Self::Operations => "Operations",
            Self::Foundation => "Foundation",
            Self::Learning => "Learning",
            Self::Alumni => "Alumni",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::DataExport => "Org snapshots under Backups & Export, downloadable as one gzipped JSON file.",
            Self::Engage => "Forum posts and comments.",
            Self::Operations => "Compliance records, elections, invoices and payments.",
            Self::Foundation => "Foundation funds and donations.",
            Self::Learning => "Courses and enrollments.",
            Self::Alumni => "Alumni profiles and career postings.",
        }
    }

    pub fn parse(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.key() == key)
    }
}

/// Each module and whether it is on for the org.
/// Takes any executor, so a snapshot reads them in its own transaction.
pub async fn states<'e, E: sqlx::PgExecutor<'e>>(db: E, org_id: i64) -> sqlx::Result<Vec<(Module, bool)>> {
    let on: Vec<(String,)> = sqlx::query_as("select module from org_modules where org_id = $1 and enabled")
        .bind(org_id)
        .fetch_all(db)
        .await?;
    Ok(Module::ALL.into_iter().map(|m| (m, on.iter().any(|(k,)| k == m.key()))).collect())
}

/// Sets modules for an org, auditing each change. Returns the modules that changed.
pub async fn set(
    pool: &PgPool,
    org_id: i64,
    actor: Option<i64>,
    wanted: &[Module],
) -> sqlx::Result<Vec<(Module, bool)>> {
    let mut tx = pool.begin().await?;
    let mut changed = Vec::new();
    for m in Module::ALL {
        let enable = wanted.contains(&m);
        let prev: Option<(bool,)> =
            sqlx::query_as("select enabled from org_modules where org_id = $1 and module = $2 for update")
                .bind(org_id)
                .bind(m.key())
                .fetch_optional(&mut *tx)
                .await?;
        if prev.map(|p| p.0).unwrap_or(false) == enable {
            continue;
        }
        sqlx::query(
            "insert into org_modules (org_id, module, enabled, updated_by) values ($1, $2, $3, $4)
             on conflict (org_id, module) do update set enabled = excluded.enabled, updated_at = now(), updated_by = excluded.updated_by",
        )
        .bind(org_id)
        .bind(m.key())
        .bind(enable)
        .bind(actor)
        .execute(&mut *tx)
        .await?;
        let action = if enable { "module.enabled" } else { "module.disabled" };
        crate::audit::write(&mut *tx, Some(org_id), actor, action, m.key(), serde_json::json!({})).await?;
        changed.push((m, enable));
    }
    tx.commit().await?;
    Ok(changed)
}
