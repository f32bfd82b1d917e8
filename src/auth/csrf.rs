//! CSRF protection for every state-changing HTML request, htmx included: a random
//! token per session, sent back as the `csrf_token` form field or the `X-CSRF-Token`
//! header (htmx sends it from `hx-headers` on `<body>`). The one `multipart/form-data`
//! form, the snapshot upload of `/platform/imports/upload` (whose body is streamed by
//! its handler and never read here), carries it in its action URL's query string
//! instead; no other route accepts it there.
//!
//! The sign-in form of a visitor without a session is protected without writing
//! anything (anonymous visitors cost no session row): a signed double-submit token.
//! The visitor gets a cookie holding a random nonce and its issue time, and the form
//! carries HMAC-SHA256(server key, nonce); the key is in the database
//! (`server_keys`), so every web process checks what any other issued. A forged
//! sign-in needs the victim's cookie (unreadable cross-site, not sent on a
//! cross-site POST: `SameSite=Strict`; on https the `__Host-` prefix stops a
//! sibling subdomain from planting one) and the key.
//!
//! The token changes whenever the session's user does: [`rotate`] at sign-in (the
//! sign-in form's cookie is dropped too), and sign-out deletes the session.

use axum::{
    body::{Body, to_bytes},
    extract::{FromRequestParts, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine;
use maud::{Markup, html};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tower_sessions::Session;

use crate::{error::AppError, state::AppState};

/// The session key of the token.
pub const SESSION_KEY: &str = "csrf";
/// The form field name.
pub const FIELD: &str = "csrf_token";
/// The header name.
pub const HEADER: &str = "x-csrf-token";
/// Largest form body read while looking for the token.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The session's token, for templates (a request extension). Also an extractor, for
/// fragments that need the token but none of the page's navigation.
///
/// A request that changes something had its token read and checked by [`protect`].
/// A safe one reads it only when it renders it, here, from the session, unless an
/// extractor that ran before read it with the session's user (the org-scoped ones
/// do, `auth::OrgCtx`): a handler that takes both takes the org's extractor first,
/// or its request costs a round trip more.
#[derive(Clone, Debug, Default)]
pub struct CsrfToken(pub String);

impl<S: Send + Sync> FromRequestParts<S> for CsrfToken {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        if let Some(token) = parts.extensions.get::<CsrfToken>() {
            return Ok(token.clone());
        }
        // Routes without the session layer (none of the HTML ones) have no token.
        let Some(session) = parts.extensions.get::<Session>().cloned() else {
            return Ok(Self::default());
        };
        let token = Self(session.get::<String>(SESSION_KEY).await?.unwrap_or_default());
        parts.extensions.insert(token.clone());
        Ok(token)
    }
}

/// The hidden field holding `token` that a form carries so that it also works
/// without JavaScript.
pub fn hidden_field(token: &str) -> Markup {
    html! { input type="hidden" name=(FIELD) value=(token); }
}

/// The middleware. Requests with other methods than the safe ones must present the
/// token; the sign-in page gets its stateless one. Other safe requests pass
/// untouched: they change nothing, so they need no check, and loading the session
/// here for a token that may never be shown would cost each of them a round trip
/// to the database (a polled row reads the session with its user and org in one
/// query instead); [`CsrfToken`] reads the token when a page shows it.
pub async fn protect(State(state): State<AppState>, session: Session, req: Request, next: Next) -> Response {
    if is_safe(req.method()) && req.uri().path() != crate::routes::LOGIN {
        return next.run(req).await;
    }
    match check(&state, session, req).await {
        Ok((req, None)) => next.run(req).await,
        Ok((req, Some(cookie))) => {
            let mut resp = next.run(req).await;
            resp.headers_mut().append(header::SET_COOKIE, cookie);
            resp
        }
        Err(resp) => resp,
    }
}

/// Checks `req`; passes it on with the `Set-Cookie` of a new sign-in form nonce
/// when one was issued.
async fn check(state: &AppState, session: Session, req: Request) -> Result<(Request, Option<HeaderValue>), Response> {
    let (token, cookie) = match session.get::<String>(SESSION_KEY).await {
        Ok(Some(t)) => (t, None),
        // Anonymous visitors get a token only for the sign-in form, the one form they
        // can use, and it is stateless; elsewhere they are redirected to sign in.
        Ok(None) if req.uri().path() == crate::routes::LOGIN => {
            let secure = state.config.cookies_secure();
            let key = login_key(&state.pool).await.map_err(|e| AppError::from(e).into_response())?;
            match login_nonce(req.headers(), secure, now_unix()) {
                Some(nonce) => (login_token(&key, &nonce), None),
                None if is_safe(req.method()) => {
                    let nonce = new_login_nonce(now_unix());
                    (login_token(&key, &nonce), Some(login_cookie(secure, &nonce)))
                }
                None => (String::new(), None),
            }
        }
        // Anywhere else, a request without a session has no authority a forged
        // request could borrow: every other route wants a signed-in user and sends
        // this visitor to sign in before it reads the body or changes anything (a
        // form left open past its session's end, signing out twice). So it needs no
        // token, and gets the same answer whatever it sends. (A session that holds
        // anything but no token is refused below, as before.)
        Ok(None) if session.is_empty().await => return Ok((req, None)),
        Ok(None) => (String::new(), None),
        Err(e) => return Err(AppError::from(e).into_response()),
    };
    let req = verified(req, token).await?;
    Ok((req, cookie))
}

/// `req` when it is safe or carries `token`, else the refusal.
async fn verified(mut req: Request, token: String) -> Result<Request, Response> {
    req.extensions_mut().insert(CsrfToken(token.clone()));
    if is_safe(req.method()) {
        return Ok(req);
    }
    if token.is_empty() {
        return Err(refusal());
    }
    if let Some(h) = req.headers().get(HEADER).and_then(|v| v.to_str().ok()) {
        return if constant_eq(h, &token) { Ok(req) } else { Err(refusal()) };
    }
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    // Only the one upload route takes the token from its URL, and only with a
    // multipart body; every other route wants a header or a form field.
    if is_multipart(content_type) && req.uri().path() == crate::routes::PLATFORM_IMPORT_UPLOAD {
        let sent = query_token(req.uri());
        return if sent.is_some_and(|s| constant_eq(&s, &token)) { Ok(req) } else { Err(refusal()) };
    }
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return Err(refusal());
    }
    let (parts, body) = req.into_parts();
    let bytes = to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| (StatusCode::PAYLOAD_TOO_LARGE, "The form is too large.").into_response())?;
    let sent = form_urlencoded_value(&bytes, FIELD);
    if !sent.is_some_and(|s| constant_eq(&s, &token)) {
        return Err(refusal());
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn is_multipart(content_type: &str) -> bool {
    content_type.get(..19).is_some_and(|t| t.eq_ignore_ascii_case("multipart/form-data"))
}

/// The token in a URI's query string (where a multipart form sends it).
fn query_token(uri: &axum::http::Uri) -> Option<String> {
    form_urlencoded_value(uri.query()?.as_bytes(), FIELD)
}

fn form_urlencoded_value(body: &[u8], name: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).ok()?;
    pairs.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn refusal() -> Response {
    AppError::Forbidden(
        "This form has expired or did not come from this site (missing or wrong CSRF token). Reload the page and try again."
            .into(),
    )
    .into_response()
}

fn new_token() -> String {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// Gives the session a new token (at sign-in: the one a page showed before no
/// longer works). Returns it.
pub async fn rotate(session: &Session) -> Result<String, tower_sessions::session::Error> {
    let token = new_token();
    session.insert(SESSION_KEY, &token).await?;
    Ok(token)
}

/// The sign-in form nonce's cookie: `__Host-` prefixed when cookies are `Secure`.
pub fn login_cookie_name(secure: bool) -> &'static str {
    if secure { "__Host-dx_login" } else { "dx_login" }
}

/// How long a sign-in form stays usable.
const LOGIN_NONCE_SECS: i64 = 12 * 3600;

fn login_cookie(secure: bool, nonce: &str) -> HeaderValue {
    let name = login_cookie_name(secure);
    let secure = if secure { "; Secure" } else { "" };
    let text = format!("{name}={nonce}; Path=/; HttpOnly; SameSite=Strict; Max-Age={LOGIN_NONCE_SECS}{secure}");
    HeaderValue::from_str(&text).expect("a nonce is a valid header value")
}

/// The `Set-Cookie` that drops the sign-in form's cookie (after sign-in).
pub fn clear_login_cookie(secure: bool) -> HeaderValue {
    let name = login_cookie_name(secure);
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"))
        .expect("a fixed header value")
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `{issued}.{random}`.
fn new_login_nonce(now: i64) -> String {
    let mut raw = [0u8; 24];
    rand::rng().fill_bytes(&mut raw);
    format!("{now}.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

/// The request's sign-in nonce, if it has a well-formed one that has not expired.
fn login_nonce(headers: &HeaderMap, secure: bool, now: i64) -> Option<String> {
    let name = login_cookie_name(secure);
    let nonce = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(name)?.strip_prefix('='))?;
    let (issued, random) = nonce.split_once('.')?;
    let issued: i64 = issued.parse().ok()?;
    let fresh = issued <= now + 60 && now - issued <= LOGIN_NONCE_SECS;
    let well_formed = random.len() == 32 && random.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (fresh && well_formed).then(|| nonce.to_string())
}

/// The sign-in form's token for `nonce`.
fn login_token(key: &[u8], nonce: &str) -> String {
    let mac = hmac_sha256(key, format!("data-export/login-csrf\n{nonce}").as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac)
}

/// The server's key for sign-in form tokens (made by the migration that added it).
async fn login_key(pool: &sqlx::PgPool) -> sqlx::Result<Vec<u8>> {
    let (key,): (Vec<u8>,) =
        sqlx::query_as("select key from server_keys where name = 'login_csrf'").fetch_one(pool).await?;
    Ok(key)
}

/// HMAC-SHA256 (RFC 2104), on the sha2 crate we already have (also what signs
/// webhooks).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner = Sha256::new().chain_update(block.map(|b| b ^ 0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(block.map(|b| b ^ 0x5c)).chain_update(inner).finalize().into()
}

fn constant_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_field_in_a_form() {
        assert_eq!(form_urlencoded_value(b"a=1&csrf_token=xyz", FIELD).as_deref(), Some("xyz"));
        assert_eq!(form_urlencoded_value(b"a=1", FIELD), None);
        assert_eq!(form_urlencoded_value(b"%%%", FIELD), None);
    }

    #[test]
    fn a_multipart_form_sends_the_token_in_its_query_string() {
        assert!(is_multipart("multipart/form-data; boundary=x"));
        assert!(is_multipart("Multipart/Form-Data; boundary=x"));
        assert!(!is_multipart("application/x-www-form-urlencoded"));
        assert!(!is_multipart("multipart/mixed; boundary=x"));
        assert!(!is_multipart("multi"));
        let token = |uri: &str| query_token(&uri.parse().unwrap());
        assert_eq!(token("/platform/imports/upload?csrf_token=abc%2Bd&x=1").as_deref(), Some("abc+d"));
        assert_eq!(token("/platform/imports/upload?x=1&csrf_token=t").as_deref(), Some("t"));
        assert_eq!(token("/platform/imports/upload"), None);
        assert_eq!(token("/platform/imports/upload?csrf=t"), None);
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        let hex = |b: [u8; 32]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        // Test cases 2 and 6 (a key longer than the block).
        assert_eq!(
            hex(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn a_sign_in_nonce_is_read_only_when_well_formed_and_fresh() {
        let now = 1_800_000_000;
        let nonce = new_login_nonce(now);
        let headers = |cookie: String| {
            let mut h = HeaderMap::new();
            h.insert(header::COOKIE, HeaderValue::from_str(&cookie).unwrap());
            h
        };
        let h = headers(format!("other=1; dx_login={nonce}"));
        assert_eq!(login_nonce(&h, false, now + 10).as_deref(), Some(nonce.as_str()));
        assert_eq!(login_nonce(&h, true, now), None, "https reads only the __Host- cookie");
        assert_eq!(login_nonce(&headers(format!("__Host-dx_login={nonce}")), true, now).as_deref(), Some(&*nonce));
        assert_eq!(login_nonce(&h, false, now + LOGIN_NONCE_SECS + 1), None, "expired");
        assert_eq!(login_nonce(&h, false, now - 3600), None, "issued in the future");
        for bad in ["dx_login=", "dx_login=abc", "dx_login=x.yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy", "dx_login=1.a b"] {
            assert_eq!(login_nonce(&headers(bad.into()), false, now), None, "{bad}");
        }
        // Tokens depend on the key and the nonce.
        assert_ne!(login_token(b"k1", &nonce), login_token(b"k2", &nonce));
        assert_ne!(login_token(b"k1", &nonce), login_token(b"k1", &new_login_nonce(now)));
    }

    #[test]
    fn compares_exactly() {
        assert!(constant_eq("abc", "abc"));
        assert!(!constant_eq("abc", "abd"));
        assert!(!constant_eq("abc", "abcd"));
    }
}
