//! The web client: the files of `web/`, embedded into the binary at build time, served at `/`
//! (`index.html`) and under `/assets/`.
//!
//! The serving is memory-serve's (chosen over rust-embed because it does the whole job: it
//! brotli-compresses the files once at build time, keeps gzip and brotli bodies in memory, sends
//! a strong ETag from the content hash and answers `If-None-Match` with 304, so no serving code
//! of our own is needed). Asset names carry no content hash, so every file is `no-cache`: a
//! browser revalidates each load with its ETag (a 304 without a body) and a new binary's files
//! are used at once. Every answer carries a Content-Security-Policy that lets the page load and
//! connect to this server only: no inline script or style, no other origin.

use std::sync::OnceLock;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::Response;
use memory_serve::CacheControl;

/// Only this server: scripts, styles, images, fetch and the WebSocket (`'self'` covers `ws:`
/// to the same host); the page may not be framed, and forms and `<base>` cannot point away.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const SECURITY_HEADERS: [(HeaderName, &str); 4] = [
    (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_FRAME_OPTIONS, "DENY"),
];

/// The routes of the web client, or none when it is turned off (`--web false`). The assets are
/// decompressed and recompressed once per process (memory-serve leaks them on purpose), so
/// every server of the process shares one router.
pub fn routes(enabled: bool) -> Router {
    if !enabled {
        return Router::new();
    }
    static ROUTES: OnceLock<Router> = OnceLock::new();
    ROUTES
        .get_or_init(|| {
            memory_serve::load!()
                .index_file(Some("/index.html"))
                .html_cache_control(CacheControl::NoCache)
                .cache_control(CacheControl::NoCache)
                .enable_gzip(true)
                .enable_brotli(true)
                .into_router()
                .layer(axum::middleware::map_response(with_security_headers))
        })
        .clone()
}

async fn with_security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
