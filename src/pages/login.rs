//! Sign in and sign out.

use axum::{
    Form,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};
use serde::Deserialize;
use tower_sessions::Session;

use crate::{
    auth::{SESSION_USER_ID, client_ip::ClientIp, csrf, password, rate_limit},
    error::{AppError, AppResult},
    routes,
    state::AppState,
    views::{PageCtx, layout::flash, page},
};

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
    client: ClientIp,
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
    let keys = client.limit_keys();
    let attempt = match rate_limit::admit(&state.pool, &email, &keys).await? {
        rate_limit::Decision::Refuse { message, retry_after_secs } => {
            tracing::warn!(ip = %client.to_log(), "sign-in refused by rate limit");
            let mut resp = (StatusCode::TOO_MANY_REQUESTS, view(&ctx, &email, Some(&message))).into_response();
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            return Ok(resp);
        }
        rate_limit::Decision::Proceed { attempt } => attempt,
    };
    let row: Option<(i64, String)> = sqlx::query_as("select id, password_hash from users where email = $1")
        .bind(&email)
        .fetch_optional(&state.pool)
        .await?;
    let (user_id, hash) = match row {
        Some((id, h)) => (Some(id), Some(h)),
        None => (None, None),
    };
    let Ok(matched) = password::verify(form.password, hash, state.config.password_hash_wait).await else {
        tracing::warn!(ip = %client.to_log(), "sign-in refused: every password hashing slot is busy");
        rate_limit::withdraw(&state.pool, attempt).await?;
        let msg = "The server is busy checking other sign-ins. Try again in a few seconds.";
        let mut resp = (StatusCode::SERVICE_UNAVAILABLE, view(&ctx, &email, Some(msg))).into_response();
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        return Ok(resp);
    };
    if !matched {
        tracing::info!(ip = %client.to_log(), "sign-in failed");
        let msg = "That email and password do not match an account.";
        return Ok((StatusCode::UNAUTHORIZED, view(&ctx, &email, Some(msg))).into_response());
    }
    let user_id = user_id.ok_or_else(|| AppError::Internal(anyhow::anyhow!("verified without a user")))?;
    rate_limit::succeeded(&state.pool, &email, &keys.address).await?;
    // A new session id at sign-in defeats session fixation, and a new CSRF token
    // means no token a page showed before sign-in works after it.
    session.cycle_id().await?;
    session.insert(SESSION_USER_ID, user_id).await?;
    csrf::rotate(&session).await?;
    crate::audit::write(
        &state.pool,
        None,
        Some(user_id),
        "user.login",
        &format!("user:{user_id}"),
        serde_json::json!({ "ip": client.to_log() }),
    )
    .await?;
    let mut resp = Redirect::to(routes::HOME).into_response();
    // The sign-in form's nonce has served its purpose.
    resp.headers_mut().append(header::SET_COOKIE, csrf::clear_login_cookie(state.config.cookies_secure()));
    Ok(resp)
}

/// POST /logout: the session (its CSRF token included) is deleted from the store and
/// the cookie cleared; the sign-in page then issues a new token.
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
