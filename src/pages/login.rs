//! Sign in and sign out.

use std::net::SocketAddr;

use axum::{
    Form,
    extract::{ConnectInfo, FromRequestParts, State},
    http::{StatusCode, request::Parts},
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};
use serde::Deserialize;
use tower_sessions::Session;

use crate::{
    auth::{SESSION_USER_ID, password, rate_limit},
    error::{AppError, AppResult},
    routes,
    state::AppState,
    views::{PageCtx, layout::flash, page},
};

/// The client's address (the TCP peer; put a proxy's `X-Forwarded-For` handling in front if needed).
pub struct ClientIp(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
        Ok(ClientIp(ip.unwrap_or_else(|| "unknown".into())))
    }
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

/// GET /login
pub async fn show(ctx: PageCtx) -> Response {
    if ctx.user.is_some() {
        return Redirect::to(routes::HOME).into_response();
    }
    view(&ctx, "", None).into_response()
}

/// POST /login
pub async fn submit(
    ctx: PageCtx,
    session: Session,
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> AppResult<Response> {
    let Ok(Form(form)) = form else {
        return Ok((StatusCode::BAD_REQUEST, view(&ctx, "", Some("Enter your email and password."))).into_response());
    };
    let email = form.email.trim().to_lowercase();
    // Control characters (a NUL above all, which PostgreSQL text refuses) are in no
    // account's email.
    if email.is_empty()
        || form.password.is_empty()
        || email.len() > 254
        || form.password.len() > 1024
        || email.chars().any(char::is_control)
    {
        return Ok(
            (StatusCode::BAD_REQUEST, view(&ctx, &email, Some("Enter your email and password."))).into_response()
        );
    }
    // The attempt is counted before it is checked, so a burst of parallel attempts
    // cannot all slip under the limit; a successful sign-in clears the count.
    rate_limit::record_attempt(&state.pool, &email, &ip).await?;
    if let Some(msg) = rate_limit::check(&state.pool, &email, &ip).await? {
        tracing::warn!(ip, "sign-in refused by rate limit");
        return Ok((StatusCode::TOO_MANY_REQUESTS, view(&ctx, &email, Some(&msg))).into_response());
    }
    let row: Option<(i64, String)> = sqlx::query_as("select id, password_hash from users where email = $1")
        .bind(&email)
        .fetch_optional(&state.pool)
        .await?;
    let (user_id, hash) = match row {
        Some((id, h)) => (Some(id), Some(h)),
        None => (None, None),
    };
    if !password::verify(form.password, hash).await {
        tracing::info!(ip, "sign-in failed");
        let msg = "That email and password do not match an account.";
        return Ok((StatusCode::UNAUTHORIZED, view(&ctx, &email, Some(msg))).into_response());
    }
    let user_id = user_id.ok_or_else(|| AppError::Internal(anyhow::anyhow!("verified without a user")))?;
    rate_limit::clear(&state.pool, &email).await?;
    // A new session id at sign-in defeats session fixation.
    session.cycle_id().await?;
    session.insert(SESSION_USER_ID, user_id).await?;
    crate::audit::write(
        &state.pool,
        None,
        Some(user_id),
        "user.login",
        &format!("user:{user_id}"),
        serde_json::json!({ "ip": ip }),
    )
    .await?;
    Ok(Redirect::to(routes::HOME).into_response())
}

/// POST /logout: the session is deleted from the store and the cookie cleared.
pub async fn logout(session: Session) -> AppResult<Redirect> {
    session.flush().await?;
    Ok(Redirect::to(routes::LOGIN))
}

fn view(ctx: &PageCtx, email: &str, error: Option<&str>) -> Markup {
    page(
        ctx,
        "Sign in",
        html! {
            @if let Some(e) = error { (flash(false, e)) }
            form.card.max-w-md.space-y-4 method="post" action=(routes::LOGIN) {
                (ctx.csrf_field())
                div {
                    label.label for="email" { "Email" }
                    input.input #email type="email" name="email" value=(email) required autocomplete="username" maxlength="254";
                }
                div {
                    label.label for="password" { "Password" }
                    input.input #password type="password" name="password" required autocomplete="current-password" maxlength="1024";
                }
                button.btn.btn-primary type="submit" { "Sign in" }
            }
        },
    )
}
