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
