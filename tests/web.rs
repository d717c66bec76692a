//! The embedded web client as served by the real server: `/` and `/assets/`, ETag and 304,
//! gzip and brotli when accepted, the cache and security headers, the API beside it
//! unchanged, and `--web false` turning it off.

mod common;

use common::{relaxed_config, start};
use palaver::config::Config;
use palaver::transport::web::CONTENT_SECURITY_POLICY;
use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_SECURITY_POLICY as CSP, CONTENT_TYPE,
    ETAG, IF_NONE_MATCH, VARY,
};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

async fn get(url: &str, headers: &[(reqwest::header::HeaderName, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(url);
    for (name, value) in headers {
        request = request.header(name, *value);
    }
    request.send().await.expect("request")
}

fn header(response: &reqwest::Response, name: reqwest::header::HeaderName) -> &str {
    response
        .headers()
        .get(&name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .expect("ASCII header")
}

#[tokio::test]
async fn index_is_served_at_the_root_with_its_headers() {
    let server = start(relaxed_config()).await;
    let response = get(&server.url("/"), &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(header(&response, CONTENT_TYPE).starts_with("text/html"));
    assert_eq!(header(&response, CACHE_CONTROL), "no-cache");
    assert_eq!(header(&response, CSP), CONTENT_SECURITY_POLICY);
    assert_eq!(
        header(&response, reqwest::header::X_CONTENT_TYPE_OPTIONS),
        "nosniff"
    );
    let body = response.text().await.unwrap();
    assert!(body.contains(r#"<script type="module" src="/assets/app.js">"#));
    assert!(!body.contains("<script>"), "no inline script");
    assert!(!body.contains("<style"), "no inline style");
    server.stop().await;
}

#[tokio::test]
async fn an_unchanged_file_is_answered_304_by_its_etag() {
    let server = start(relaxed_config()).await;
    for path in ["/", "/assets/app.js", "/assets/app.css", "/sw.js"] {
        let first = get(&server.url(path), &[]).await;
        assert_eq!(first.status(), StatusCode::OK, "{path}");
        let etag = header(&first, ETAG).to_owned();
        assert!(
            etag.starts_with('"') && etag.ends_with('"'),
            "strong ETag: {etag}"
        );

        let again = get(&server.url(path), &[(IF_NONE_MATCH, &etag)]).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(header(&again, ETAG), etag);
        assert!(again.bytes().await.unwrap().is_empty(), "304 has no body");

        let changed = get(&server.url(path), &[(IF_NONE_MATCH, "\"other\"")]).await;
        assert_eq!(changed.status(), StatusCode::OK, "{path}");
    }
    server.stop().await;
}

#[tokio::test]
async fn files_are_compressed_when_the_client_accepts_it() {
    let server = start(relaxed_config()).await;
    let url = server.url("/assets/app.js");
    let plain = get(&url, &[]).await;
    assert!(plain.headers().get(CONTENT_ENCODING).is_none());
    assert!(header(&plain, CONTENT_TYPE).contains("javascript"));
    let plain_len = plain.bytes().await.unwrap().len();

    let gzip = get(&url, &[(ACCEPT_ENCODING, "gzip")]).await;
    assert_eq!(header(&gzip, CONTENT_ENCODING), "gzip");
    assert_eq!(header(&gzip, VARY), "accept-encoding");
    let gzipped = gzip.bytes().await.unwrap();
    assert_eq!(gzipped[..2], GZIP_MAGIC);
    assert!(
        gzipped.len() * 2 < plain_len,
        "{} of {plain_len}",
        gzipped.len()
    );

    let brotli = get(&url, &[(ACCEPT_ENCODING, "gzip, deflate, br")]).await;
    assert_eq!(header(&brotli, CONTENT_ENCODING), "br");
    let brotlied = brotli.bytes().await.unwrap();
    assert!(brotlied.len() <= gzipped.len());
    server.stop().await;
}

#[tokio::test]
async fn the_api_beside_the_app_is_unchanged() {
    let server = start(relaxed_config()).await;
    let (status, body) = server.get("/health", None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = server.get("/assets/missing.js", None).await;
    assert_eq!((status, body["message"].as_str()), (404, Some("Not found")));
    let (status, _) = server.get("/api/chats", None).await;
    assert_eq!(status, 401);
    let api = get(&server.url("/health"), &[]).await;
    assert!(
        api.headers().get(CSP).is_none(),
        "the CSP is the app's only"
    );
    server.stop().await;
}

#[tokio::test]
async fn web_false_serves_the_api_only() {
    let server = start(Config {
        web: false,
        ..relaxed_config()
    })
    .await;
    for path in ["/", "/assets/app.js", "/sw.js"] {
        let (status, body) = server.get(path, None).await;
        assert_eq!(
            (status, body["message"].as_str()),
            (404, Some("Not found")),
            "{path}"
        );
    }
    let (status, _) = server.get("/health", None).await;
    assert_eq!(status, 200);
    server.stop().await;
}
