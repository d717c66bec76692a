//! Regression tests for what the fuzz targets (fuzz/) found, each replaying the failing input
//! through the same code path in the normal `cargo test` run.
//!
//! - `rest_bodies`, crash-13262cfd: `POST /api/messages/chat/1%01%8Ad12` (a path parameter that
//!   is not UTF-8) was answered 400 with axum's plain-text rejection, breaking the contract's
//!   "every non-2xx answer is JSON `{ message }`". The same held for the other path parameters.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use palaver::clock::ManualClock;
use palaver::config::Config;
use palaver::server::{Server, Service, router};
use palaver::storage::{self, NewUser};
use serde_json::Value;
use tower::ServiceExt;

const NOW_MS: u64 = 1_800_000_000_000;

async fn server() -> (Service, axum::Router, String) {
    let config = Config {
        jwt_secret: Some("regression-secret-regression-sec".into()),
        ..Config::default()
    };
    let service = Server::builder(config.clone())
        .database(storage::open_in_memory().unwrap())
        .clock(Arc::new(ManualClock::at(NOW_MS)))
        .seed([3; 32])
        .writer_on_callers_runtime()
        .build()
        .await
        .unwrap();
    let app = Arc::clone(&service.app);
    service
        .writer
        .create_user(NewUser {
            id: "ada000000000000000000001".into(),
            name: "Ada".into(),
            email: "ada@example.com".into(),
            avatar: String::new(),
            password_hash: None,
            external_id: None,
            now_ms: NOW_MS,
        })
        .await
        .unwrap();
    let token = app.tokens().issue("ada000000000000000000001", NOW_MS);
    let (router, _io) = router(Arc::clone(&app), &config);
    (service, router, token)
}

async fn call(
    router: &axum::Router,
    method: Method,
    uri: &str,
    token: &str,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"text":"hi"}"#))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "{uri}: {status} with a body that is not JSON: {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, body)
}

#[tokio::test]
async fn malformed_path_parameters_get_json_errors() {
    let (_service, router, token) = server().await;
    for (method, uri) in [
        // The fuzz input, as the target builds it: route 4, a valid token, raw path bytes.
        (Method::POST, "/api/messages/chat/1%01%8Ad12"),
        (Method::GET, "/api/messages/chat/%FF"),
        (Method::POST, "/api/chats/with/%C3%28"),
        (Method::GET, "/api/messages/chat/abc?before=%FE"),
    ] {
        let (status, body) = call(&router, method, uri, &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert!(body["message"].is_string(), "{uri}: {body}");
    }
}
