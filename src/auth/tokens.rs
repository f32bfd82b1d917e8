//! Personal API tokens: shown once, stored as a SHA-256 hash.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

/// Token prefix, so leaked tokens are easy to recognise and scan for.
pub const PREFIX: &str = "dex_";

/// A new token's secret and its row id.
pub struct NewToken {
    pub id: i64,
    pub token: String,
}

/// Creates a token for the user with `email`. `None` when there is no such user.
pub async fn create(pool: &PgPool, email: &str, name: &str) -> anyhow::Result<Option<NewToken>> {
    let email = email.trim().to_lowercase();
    let Some((user_id,)) =
        sqlx::query_as::<_, (i64,)>("select id from users where email = $1").bind(&email).fetch_optional(pool).await?
    else {
        return Ok(None);
    };
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let token = format!("{PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw));
    let (id,): (i64,) = sqlx::query_as(
        "insert into api_tokens (user_id, name, token_prefix, token_hash) values ($1, $2, $3, $4) returning id",
    )
    .bind(user_id)
    .bind(name)
    .bind(&token[..PREFIX.len() + 6])
    .bind(hash(&token))
    .fetch_one(pool)
    .await?;
    sqlx::query("insert into audit_log (actor_user_id, action, target) values ($1, 'api_token.created', $2)")
        .bind(user_id)
        .bind(format!("api_token:{id}"))
        .execute(pool)
        .await?;
    Ok(Some(NewToken { id, token }))
}

/// The user id a presented token belongs to, if it is live.
pub async fn authenticate(pool: &PgPool, token: &str) -> sqlx::Result<Option<i64>> {
    if !token.starts_with(PREFIX) || token.len() > 200 {
        return Ok(None);
    }
    let row: Option<(i64,)> = sqlx::query_as(
        "update api_tokens set last_used_at = now()
         where token_hash = $1 and revoked_at is null returning user_id",
    )
    .bind(hash(token))
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| r.0))
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}
