//! The hardening of issue 16 on the real server over real sockets: private file modes, binary
//! attachments refused on the wire, CORS without credentials, what other users' emails and
//! avatars look like, user search bounds, and the external provider's `email_verified` and
//! revoked JWKS keys.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestServer, relaxed_config, start, start_in};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use palaver::config::{Config, ExternalAuth, KeySource};
use palaver::service::auth::Tokens;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Test-only keys (fuzz/keys/README.md): the provider's and an attacker's P-256 pairs.
const PROVIDER_EC: &[u8] = include_bytes!("../fuzz/keys/provider_ec.pem");
const PROVIDER_EC_PUB: &[u8] = include_bytes!("../fuzz/keys/provider_ec.pub.pem");
const OTHER_EC: &[u8] = include_bytes!("../fuzz/keys/other_ec.pem");
const AUDIENCE: &str = "palaver-tests";

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_database_are_private_to_their_owner() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let database = dir.path().join("palaver.redb");
    std::fs::write(&database, b"").unwrap();
    std::fs::set_permissions(&database, std::fs::Permissions::from_mode(0o644)).unwrap();

    let server = start_in(relaxed_config(), dir).await;
    assert_eq!(mode_of(server.dir.path()), 0o700, "directory tightened");
    assert_eq!(mode_of(&database), 0o600, "database tightened");
    server.stop().await;

    // One palaver creates itself, with its missing parent.
    let fresh = tempfile::tempdir().unwrap();
    let data = fresh.path().join("srv").join("palaver-data");
    drop(palaver::storage::open_dir(&data).unwrap());
    assert_eq!(mode_of(&data), 0o700, "new directory");
    assert_eq!(mode_of(&data.join("palaver.redb")), 0o600, "new database");
}

/// A raw WebSocket speaking Engine.IO v4 / Socket.IO v5, connected and authenticated.
async fn raw_socket(
    server: &TestServer,
    token: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let open = ws.next().await.unwrap().unwrap();
    assert!(open.to_text().unwrap().starts_with('0'), "{open:?}");
    ws.send(Message::text(format!("40{}", json!({ "token": token }))))
        .await
        .unwrap();
    loop {
        let text = ws.next().await.unwrap().unwrap().into_text().unwrap();
        if text.starts_with("40") {
            return ws;
        }
    }
}

/// What the server sends within `within`, up to the end of the connection: the text frames,
/// and whether the connection ended.
async fn frames_until_closed(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    within: Duration,
) -> (Vec<String>, bool) {
    let mut texts = Vec::new();
    let ended = tokio::time::timeout(within, async {
        while let Some(frame) = ws.next().await {
            match frame {
                Ok(Message::Text(text)) => texts.push(text.to_string()),
                Ok(Message::Close(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok();
    (texts, ended)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_with_binary_attachments_closes_its_socket() {
    let server = start(relaxed_config()).await;
    let (ada, _) = server.register("ada").await;
    let (_, bob_id) = server.register("bob").await;
    let chat = server.open_chat(&ada, &bob_id).await;

    // A plain event on a raw socket is answered, so the socket itself is sound.
    let mut plain = raw_socket(&server, &ada).await;
    let event = json!(["join-chat", chat]);
    plain
        .send(Message::text(format!("421{event}")))
        .await
        .unwrap();
    let (texts, ended) = frames_until_closed(&mut plain, Duration::from_millis(500)).await;
    assert!(!ended, "a plain event keeps the socket");
    assert!(texts.iter().any(|t| t.starts_with("431")), "{texts:?}");

    // BINARY_EVENT (5) with one attachment and ack id 7, then the attachment itself.
    let mut binary = raw_socket(&server, &ada).await;
    let event =
        json!(["send-message", { "chatId": chat, "text": { "_placeholder": true, "num": 0 } }]);
    binary
        .send(Message::text(format!("451-7{event}")))
        .await
        .unwrap();
    let _ = binary.send(Message::binary(vec![b'x'; 16 * 1024])).await;
    let (texts, ended) = frames_until_closed(&mut binary, Duration::from_secs(3)).await;
    assert!(ended, "the socket is closed; it got {texts:?}");
    assert!(
        !texts.iter().any(|t| t.starts_with("437")),
        "the event was never handled: {texts:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_the_configured_origins_without_credentials() {
    let server = start(relaxed_config()).await;
    let client = reqwest::Client::new();
    let preflight = client
        .request(reqwest::Method::OPTIONS, server.url("/api/users"))
        .header("Origin", "http://localhost:5173")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .unwrap();
    let headers = preflight.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "http://localhost:5173"
    );
    assert!(
        headers.get("access-control-allow-credentials").is_none(),
        "{headers:?}"
    );
    let simple = client
        .get(server.url("/health"))
        .header("Origin", "http://localhost:5173")
        .send()
        .await
        .unwrap();
    assert!(
        simple
            .headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
    server.stop().await;
}

fn emails_of(users: &Value) -> Vec<(String, String)> {
    users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["name"].as_str().unwrap().to_owned(),
                u["email"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_users_emails_show_only_to_whoever_names_them_exactly() {
    let server = start(relaxed_config()).await;
    let (ada, _) = server.register("ada").await;
    let (bob, bob_id) = server.register("bob").await;
    server.register("carol").await;

    let (status, everyone) = server.get("/api/users", Some(&ada)).await;
    assert_eq!(status, 200);
    assert_eq!(
        emails_of(&everyone),
        [
            ("bob".into(), String::new()),
            ("carol".into(), String::new())
        ]
    );
    let (_, found) = server.get("/api/users?q=BOB@example.com", Some(&ada)).await;
    assert_eq!(
        emails_of(&found),
        [("bob".into(), "bob@example.com".into())]
    );
    let (_, by_domain) = server.get("/api/users?q=example.com", Some(&ada)).await;
    assert_eq!(emails_of(&by_domain), [], "no harvesting by fragment");
    let (_, by_name) = server.get("/api/users?q=CAR", Some(&ada)).await;
    assert_eq!(emails_of(&by_name), [("carol".into(), String::new())]);

    // Chats and messages embed public users: no email there either; `me` keeps its own.
    let chat = server.open_chat(&ada, &bob_id).await;
    let (_, sent) = server
        .post(
            &format!("/api/messages/chat/{chat}"),
            Some(&bob),
            json!({ "text": "hi" }),
        )
        .await;
    assert_eq!(sent["sender"]["email"], "");
    let (_, chats) = server.get("/api/chats", Some(&ada)).await;
    assert_eq!(chats[0]["participant"]["email"], "");
    let (_, me) = server.get("/api/auth/me", Some(&ada)).await;
    assert_eq!(me["email"], "ada@example.com");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_search_is_bounded_and_rate_limited_per_user() {
    let server = start(relaxed_config()).await;
    let (ada, _) = server.register("ada").await;
    let (bob, _) = server.register("bob").await;
    let long = "a".repeat(palaver::limits::USER_QUERY_CHARS_MAX + 1);
    let (status, body) = server
        .get(&format!("/api/users?q={long}"), Some(&ada))
        .await;
    assert_eq!(status, 400, "{body}");

    let burst = palaver::limits::USER_SEARCH_BURST as usize;
    let mut statuses = Vec::new();
    for _ in 0..burst + 5 {
        statuses.push(server.get("/api/users?q=b", Some(&ada)).await.0);
    }
    assert!(
        statuses[..burst - 2].iter().all(|&s| s == 200),
        "{statuses:?}"
    );
    let (status, body) = server.get("/api/users?q=b", Some(&ada)).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (429, Some("Rate limited"))
    );
    assert_eq!(
        server.get("/api/users?q=a", Some(&bob)).await.0,
        200,
        "per user"
    );
    server.stop().await;
}

fn ec_token(key: &[u8], kid: Option<&str>, claims: Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_pem(key).unwrap()).unwrap()
}

fn provider_claims(sub: &str, extra: Value) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = json!({
        "sub": sub, "aud": AUDIENCE, "exp": now + 600,
        "email": format!("{sub}@example.com"), "name": sub,
    });
    claims
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    claims
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_tokens_with_unverified_emails_and_unsafe_avatars_go_nowhere() {
    let keys = tempfile::tempdir().unwrap();
    let pem = keys.path().join("provider.pem");
    std::fs::write(&pem, PROVIDER_EC_PUB).unwrap();
    let server = start(Config {
        external_auth: Some(ExternalAuth {
            keys: vec![KeySource::PemFile(pem)],
            issuer: None,
            audience: Some(AUDIENCE.into()),
        }),
        ..relaxed_config()
    })
    .await;

    let unverified = ec_token(
        PROVIDER_EC,
        None,
        provider_claims("mallory", json!({ "email_verified": false })),
    );
    let (status, _) = server
        .post("/api/auth/callback", Some(&unverified), json!({}))
        .await;
    assert_eq!(status, 401, "an unverified email is refused");

    let verified = ec_token(
        PROVIDER_EC,
        None,
        provider_claims(
            "trent",
            json!({ "email_verified": true, "picture": "javascript:alert(document.cookie)" }),
        ),
    );
    let (status, user) = server
        .post("/api/auth/callback", Some(&verified), json!({}))
        .await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["avatar"], "", "a javascript: avatar is dropped");

    let pictured = ec_token(
        PROVIDER_EC,
        None,
        provider_claims(
            "peggy",
            json!({ "picture": "https://img.example/p.png", "name": "\u{202E}Peggy\u{200D}" }),
        ),
    );
    let (_, user) = server
        .post("/api/auth/callback", Some(&pictured), json!({}))
        .await;
    assert_eq!(user["avatar"], "https://img.example/p.png");
    assert_eq!(
        user["name"], "Peggy",
        "format characters dropped from a provider's name"
    );
    server.stop().await;
}

/// A JWKS document served on loopback whose keys the test can change.
async fn serve_jwks(document: Arc<Mutex<String>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let document = Arc::clone(&document);
            async move { document.lock().unwrap().clone() }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/jwks.json")
}

fn jwks_of(key: &[u8], kid: &str) -> String {
    let mut jwk =
        Jwk::from_encoding_key(&EncodingKey::from_ec_pem(key).unwrap(), Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.into());
    serde_json::to_string(&JwkSet { keys: vec![jwk] }).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_withdrawn_from_the_jwks_url_stops_verifying_after_a_reload() {
    // reqwest needs a process-wide TLS provider even for plain http (as `main` installs it).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let document = Arc::new(Mutex::new(jwks_of(PROVIDER_EC, "k1")));
    let url = serve_jwks(Arc::clone(&document)).await;
    let tokens = Arc::new(
        Tokens::new(
            &[1; 32],
            Duration::from_secs(3600),
            Some(&ExternalAuth {
                keys: vec![KeySource::JwksUrl(url)],
                issuer: None,
                audience: Some(AUDIENCE.into()),
            }),
        )
        .unwrap(),
    );
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    tokens.refresh_external_keys(now_ms()).await.unwrap();
    let token = ec_token(PROVIDER_EC, Some("k1"), provider_claims("ann", json!({})));
    assert!(tokens.verify(&token, now_ms()).await.is_some());

    // The provider rotates k1 out (revoked) for k2.
    *document.lock().unwrap() = jwks_of(OTHER_EC, "k2");
    let reloader = tokio::spawn({
        let tokens = Arc::clone(&tokens);
        async move {
            tokens
                .reload_external_keys_every(Duration::from_millis(100), now_ms)
                .await
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokens.verify(&token, now_ms()).await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the withdrawn key still verifies after 5 s of reloads every 100 ms"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rotated = ec_token(OTHER_EC, Some("k2"), provider_claims("ann", json!({})));
    assert!(tokens.verify(&rotated, now_ms()).await.is_some());
    reloader.abort();
}
