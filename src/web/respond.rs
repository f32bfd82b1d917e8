//! Answers shared by every feature's handlers.

use axum::{
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Redirect, Response},
};

/// A 303 to a presigned URL, which must not be cached (the router's layer adds
/// `Referrer-Policy: no-referrer`, so its target does not learn where the user came from).
pub fn see_other(url: &str) -> Response {
    let mut resp = Redirect::to(url).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A fragment or page that must not be cached (it shows live state).
pub fn no_store(body: maud::Markup) -> Response {
    ([(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], body).into_response()
}

/// Whether htmx sent the request.
pub fn is_htmx(headers: &HeaderMap) -> bool {
    headers.contains_key("hx-request")
}

/// After a POST: htmx gets `fragment` (the part of the page it swaps in), a plain
/// form a 303 to `page`, which shows the same.
pub async fn htmx_or_redirect<F, E>(headers: &HeaderMap, page: &str, fragment: F) -> Result<Response, E>
where
    F: Future<Output = Result<Response, E>>,
{
    if is_htmx(headers) { fragment.await } else { Ok(Redirect::to(page).into_response()) }
}

/// Middleware: an htmx request that is answered "sign in" (a redirect to the
/// sign-in page: the session expired or was ended) gets `HX-Redirect` to it
/// instead, so the browser goes there rather than htmx swapping the sign-in page
/// into a part of the page it was updating.
pub async fn htmx_sign_in(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let htmx = is_htmx(req.headers());
    let answer = next.run(req).await;
    let to_login = answer.status().is_redirection()
        && answer.headers().get(header::LOCATION).is_some_and(|l| l.as_bytes() == crate::routes::LOGIN.as_bytes());
    if htmx && to_login {
        // The same answer's headers (a cookie it clears, say), as 204 with no body.
        let (mut parts, _) = answer.into_parts();
        parts.status = axum::http::StatusCode::NO_CONTENT;
        parts.headers.remove(header::LOCATION);
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::CONTENT_TYPE);
        parts.headers.insert("hx-redirect", HeaderValue::from_static(crate::routes::LOGIN));
        return Response::from_parts(parts, axum::body::Body::empty());
    }
    answer
}
