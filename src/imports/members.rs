//! Memberships a restore left suspended (docs/restore.md, "Who gets in"): a
//! platform admin activates them once they have checked who these people are, by
//! `data-export activate --org SLUG (--email E ... | --all)`.

use sqlx::PgPool;

use crate::orgs::OrgSlug;

/// Whom to activate.
#[derive(Clone, Debug)]
pub enum Whom {
    /// These people (their accounts' emails, compared in lower case).
    Emails(Vec<String>),
    /// Every suspended membership of the org.
    AllSuspended,
}

/// Why nothing was activated.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("there is no org {0:?}")]
    NoOrg(String),
    #[error("{0} has no suspended membership in {1}")]
    NotSuspended(String, String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Activates the suspended memberships of `whom` in `org`, with one
/// `membership.activated` audit entry each (by `actor`; none from the command
/// line), in one transaction: all of them or, when one of the emails has no
/// suspended membership there, none. Returns the emails activated.
pub async fn activate(pool: &PgPool, org: &OrgSlug, whom: &Whom, actor: Option<i64>) -> Result<Vec<String>, Refused> {
    let mut tx = pool.begin().await?;
    let org_id: i64 = sqlx::query_scalar("select id from organizations where slug = $1")
        .bind(org.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Refused::NoOrg(org.as_str().to_string()))?;
    let emails: Option<Vec<String>> = match whom {
        Whom::Emails(list) => Some(list.iter().map(|e| e.trim().to_lowercase()).collect()),
        Whom::AllSuspended => None,
    };
    let activated: Vec<(i64, String)> = sqlx::query_as(
        "update memberships m set status = 'active' from users u
         where m.org_id = $1 and m.user_id = u.id and m.status = 'suspended'
           and ($2::text[] is null or u.email = any($2))
         returning u.id, u.email",
    )
    .bind(org_id)
    .bind(&emails)
    .fetch_all(&mut *tx)
    .await?;
    if let Some(list) = &emails
        && let Some(missing) = list.iter().find(|e| !activated.iter().any(|(_, a)| a == *e))
    {
        return Err(Refused::NotSuspended(missing.clone(), org.as_str().to_string()));
    }
    for (user, email) in &activated {
        crate::audit::write(
            &mut *tx,
            Some(org_id),
            actor,
            "membership.activated",
            email,
            serde_json::json!({ "user_id": user, "reason": "a restore left it suspended" }),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(activated.into_iter().map(|(_, e)| e).collect())
}
