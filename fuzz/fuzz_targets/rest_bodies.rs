//! `rest_bodies`: arbitrary bytes as the body of every POST route, through the real axum router
//! (`server::router`, with its body limit, CORS and Socket.IO layers) with
//! `tower::ServiceExt::oneshot`, on a fresh in-memory server.
//!
//! Input: `[route, auth, target, content_type, body…]`. `route` picks register, login, callback,
//! open-chat or post-message; `auth` the Authorization header (none, a valid token, garbage, a
//! token of a user that does not exist, another scheme); `target` the path parameter (the peer,
//! oneself, the chat, a chat one is not in, an unknown id, or the next `target - 6` body bytes,
//! percent-encoded); `content_type` the header, and with its high bit set the body is repeated
//! past the 64 KiB limit. Never a 5xx or a panic; every error is JSON `{ "message": string }`;
//! what succeeds has the contract's status and shape. The server is rebuilt every few thousand
//! cases (see `with_fixture`); its clock moves a second per case so rate limits refill.

#![no_main]

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use palaver::limits::BODY_BYTES_MAX;
use palaver_fuzz::{Server, config, with_fixture};
use serde_json::Value;
use tower::ServiceExt;

const ROUTES: [&str; 5] = ["register", "login", "callback", "chat-with", "message"];

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (head, rest) = data.split_at(4);
    with_fixture(2000, Fixture::build, async |fixture: &Fixture| {
        fixture.server.clock.advance(1000);
        case(fixture, head[0] % 5, head[1] % 5, head[2], head[3], rest).await;
    });
});

struct Fixture {
    server: Server,
    router: axum::Router,
    ada: String,
    bob: String,
    chat: String,
    foreign: String,
}

impl Fixture {
    async fn build() -> Self {
        let config = config();
        let server = Server::start(&config).await;
        let ada = server.user("ada0000000000000000000001", "Ada").await.id;
        let bob = server.user("bob0000000000000000000002", "Bob").await.id;
        server
            .app
            .register(
                std::net::Ipv4Addr::LOCALHOST.into(),
                "Cy",
                "cy@example.com",
                "password123",
            )
            .await
            .expect("register fixture");
        let cy = server
            .store
            .user_id_by_email("cy@example.com")
            .expect("read")
            .expect("cy exists");
        let chat = server
            .app
            .open_chat_with(&ada, &bob)
            .await
            .expect("chat")
            .id;
        let foreign = server.app.open_chat_with(&bob, &cy).await.expect("chat").id;
        let (router, _io) = palaver::server::router(server.app.clone(), &config);
        Self {
            server,
            router,
            ada,
            bob,
            chat,
            foreign,
        }
    }
}

fn percent_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn case(fixture: &Fixture, route: u8, auth: u8, target: u8, content_type: u8, rest: &[u8]) {
    let Fixture {
        server,
        router,
        ada,
        bob,
        chat,
        foreign,
    } = fixture;
    let last_seq = server
        .store
        .chat(chat)
        .expect("read")
        .expect("chat")
        .last_seq;
    let (segment, body) = match target {
        0 => (bob.clone(), rest),
        1 => (ada.clone(), rest),
        2 => (chat.clone(), rest),
        3 => (foreign.clone(), rest),
        4 | 5 => ("65f0000000000000000000ff".to_owned(), rest),
        n => {
            let len = usize::from(n - 6).min(rest.len());
            (percent_encode(&rest[..len]), &rest[len..])
        }
    };
    let path = match route {
        0 => "/api/auth/register".to_owned(),
        1 => "/api/auth/login".to_owned(),
        2 => "/api/auth/callback".to_owned(),
        3 => format!("/api/chats/with/{segment}"),
        _ => format!("/api/messages/chat/{segment}"),
    };
    // The connection loop records each connection's peer; the router alone needs it given.
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 40_000));
    let mut request = Request::builder()
        .method("POST")
        .uri(&path)
        .extension(axum::extract::ConnectInfo(peer));
    let now = server.clock_now();
    request = match auth {
        0 => request,
        1 => request.header(
            header::AUTHORIZATION,
            format!("Bearer {}", server.app.tokens().issue(ada, now)),
        ),
        2 => request.header(header::AUTHORIZATION, "Bearer not.a.token"),
        3 => request.header(
            header::AUTHORIZATION,
            format!(
                "Bearer {}",
                server.app.tokens().issue("nobody000000000000000000", now)
            ),
        ),
        _ => request.header(header::AUTHORIZATION, "Basic YWRhOnBhc3N3b3Jk"),
    };
    request = match content_type & 0x7f {
        0 => request,
        1 => request.header(header::CONTENT_TYPE, "application/json"),
        2 => request.header(header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        3 => request.header(header::CONTENT_TYPE, "multipart/form-data; boundary=x"),
        _ => request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded"),
    };
    let oversize = content_type & 0x80 != 0 && !body.is_empty();
    let body = if oversize {
        body.repeat(BODY_BYTES_MAX / body.len() + 1)
    } else {
        body.to_vec()
    };
    let Ok(request) = request.body(Body::from(body)) else {
        return;
    };

    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("infallible router");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("response body");
    let what = format!(
        "POST {path} ({}) answered {status}: {}",
        ROUTES[usize::from(route)],
        String::from_utf8_lossy(&bytes)
    );
    assert!(!status.is_server_error(), "{what}");
    let json: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("not JSON: {what}"));
    if !status.is_success() {
        assert!(
            json["message"].is_string(),
            "error without a message: {what}"
        );
    }
    if oversize {
        // Register and login read the body first; posting a message reads it after the caller
        // and the path are accepted; the callback and open-chat never read it.
        match route {
            0 | 1 => assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{what}"),
            4 => assert!(
                [400, 401, 404, 405, 413].contains(&status.as_u16()),
                "{what}"
            ),
            _ => {}
        }
    }
    match (route, status) {
        (0, StatusCode::CREATED) | (1, StatusCode::OK) => {
            assert!(
                json["token"].is_string() && json["user"]["_id"].is_string(),
                "{what}"
            );
        }
        (3, StatusCode::OK) => assert!(json["_id"].is_string(), "{what}"),
        (4, StatusCode::CREATED) => {
            assert_eq!(json["chat"], Value::String(chat.clone()), "{what}");
            let seq = json["seq"].as_u64().expect("seq");
            // A new message gets the next seq; a retried clientMsgId its original one.
            assert!(seq >= 1 && seq <= last_seq + 1, "{what}");
        }
        (_, status) if status.is_success() => panic!("unexpected success: {what}"),
        _ => {}
    }
}
