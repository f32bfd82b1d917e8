//! CSRF protection for every state-changing HTML request, htmx included: a random
//! token per session, sent back as the `csrf_token` form field or the `X-CSRF-Token`
//! header (htmx sends it from `hx-headers` on `<body>`). The one `multipart/form-data`
//! form, the snapshot upload of `/platform/imports/upload` (whose body is streamed by
//! its handler and never read here), carries it in its action URL's query string
//! instead; no other route accepts it there.

use axum::{
    body::{Body, to_bytes},
    extract::{FromRequestParts, Request},
    http::{Method, StatusCode, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine;
use maud::{Markup, html};
use rand::RngCore;
use tower_sessions::Session;

use crate::error::AppError;

const SESSION_KEY: &str = "csrf";
/// The form field name.
pub const FIELD: &str = "csrf_token";
/// The header name.
pub const HEADER: &str = "x-csrf-token";
/// Largest form body read while looking for the token.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The session's token, for templates (a request extension). Also an extractor, for
/// fragments that need the token but none of the page's navigation.
#[derive(Clone, Debug, Default)]
pub struct CsrfToken(pub String);

impl<S: Send + Sync> FromRequestParts<S> for CsrfToken {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<CsrfToken>().cloned().unwrap_or_default())
    }
}

/// The hidden field holding `token` that a form carries so that it also works
/// without JavaScript.
pub fn hidden_field(token: &str) -> Markup {
    html! { input type="hidden" name=(FIELD) value=(token); }
}

/// The middleware. Safe methods get a token put in place; others must present it.
pub async fn protect(session: Session, req: Request, next: Next) -> Response {
    match check(session, req).await {
        Ok(req) => next.run(req).await,
        Err(resp) => resp,
    }
}

async fn check(session: Session, mut req: Request) -> Result<Request, Response> {
    let token = match session.get::<String>(SESSION_KEY).await {
        Ok(Some(t)) => t,
        // Anonymous visitors get a session (and a token) only on the sign-in page,
        // the one form they can use; elsewhere they are redirected to it, and no
        // session row is written for them.
        Ok(None) if !(is_safe(req.method()) && req.uri().path() == crate::routes::LOGIN) => String::new(),
        Ok(None) => {
            let t = new_token();
            session.insert(SESSION_KEY, &t).await.map_err(|e| AppError::from(e).into_response())?;
            t
        }
        Err(e) => return Err(AppError::from(e).into_response()),
    };
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
    fn compares_exactly() {
        assert!(constant_eq("abc", "abc"));
        assert!(!constant_eq("abc", "abd"));
        assert!(!constant_eq("abc", "abcd"));
    }
}
