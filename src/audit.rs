//! The audit log writer: one entry per change a person (or the platform) made.
//! Entries of an org are a section of its snapshot; platform-level entries have no org.

/// Writes an audit entry, inside the caller's transaction when given one.
pub async fn write<'e, E: sqlx::PgExecutor<'e>>(
    db: E,
    org_id: Option<i64>,
    actor: Option<i64>,
    action: &str,
    target: &str,
    details: serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query("insert into audit_log (org_id, actor_user_id, action, target, details) values ($1, $2, $3, $4, $5)")
        .bind(org_id)
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(details)
        .execute(db)
        .await?;
    Ok(())
}
