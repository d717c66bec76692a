//! Connections that never speak and connection caps, over real sockets on 127.0.0.1 with short
//! bounds: a silent connection, a slow request head and an idle keep-alive connection are
//! closed within their bounds; a Socket.IO transport that never sends CONNECT is closed; past
//! the per-address and global caps a connection is closed at once, except that a full server
//! first closes its oldest connection that never sent a request head; a trusted proxy is exempt
//! from the per-address cap; and the login throttle and the registration limit count per
//! client address, taken from `X-Forwarded-For` only behind a trusted proxy.

mod common;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use palaver::config::{Config, ConnectionSettings};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use common::{TestServer, relaxed_config, start};

fn with_connections(connections: ConnectionSettings) -> Config {
    Config {
        connections,
        ..relaxed_config()
    }
}

fn bounds(first_byte_ms: u64, request_head_ms: u64) -> ConnectionSettings {
    ConnectionSettings {
        first_byte_timeout: Duration::from_millis(first_byte_ms),
        request_head_timeout: Duration::from_millis(request_head_ms),
        ..ConnectionSettings::default()
    }
}

/// Reads until the server closes the connection (EOF or reset); returns how long that took
/// and what was read. Panics if it stays open for `limit`.
async fn until_closed(stream: &mut TcpStream, limit: Duration) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    let mut read = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let left = limit
            .checked_sub(started.elapsed())
            .unwrap_or_else(|| panic!("still open after {limit:?}"));
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => panic!("still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return (started.elapsed(), read),
            Ok(Ok(n)) => read.extend_from_slice(&buffer[..n]),
        }
    }
}

async fn health_over(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
        .await
        .expect("an answer")
        .expect("read");
    String::from_utf8_lossy(&buffer[..n]).into_owned()
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_first_byte_timeout() {
    let server = start(with_connections(bounds(700, 5_000))).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let (after, read) = until_closed(&mut silent, Duration::from_secs(4)).await;
    assert!(read.is_empty());
    assert!(
        after >= Duration::from_millis(600) && after < Duration::from_millis(2_000),
        "closed after {after:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_slow_request_head_is_closed_after_the_head_timeout() {
    let server = start(with_connections(bounds(500, 1_500))).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    let trickle = async {
        for n in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let line = format!("x-slow-{n}: 1\r\n");
            if slow.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), trickle).await;
    let (_, read) = until_closed(&mut slow, Duration::from_secs(1)).await;
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(1_400) && after < Duration::from_millis(3_500),
        "closed after {after:?}"
    );
    let answer = String::from_utf8_lossy(&read);
    assert!(!answer.contains("200 OK"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_head_timeout() {
    let server = start(with_connections(bounds(500, 1_200))).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    assert!(health_over(&mut idle).await.starts_with("HTTP/1.1 200"));
    let (after, read) = until_closed(&mut idle, Duration::from_secs(4)).await;
    assert!(read.is_empty());
    assert!(
        after >= Duration::from_millis(1_100) && after < Duration::from_millis(2_500),
        "closed after {after:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_socket_io_transport_without_connect_is_closed_after_the_connect_timeout() {
    let server = start(with_connections(ConnectionSettings {
        socket_io_connect_timeout: Duration::from_secs(1),
        ..ConnectionSettings::default()
    }))
    .await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let open = ws.next().await.expect("open packet").expect("frame");
    assert!(
        matches!(&open, Message::Text(t) if t.starts_with('0')),
        "{open:?}"
    );
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(4), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the transport stayed open");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(800) && after < Duration::from_millis(2_500),
        "closed after {after:?}"
    );
    server.stop().await;
}

/// Opens `n` connections that each answered a request (so they are admitted and held).
async fn held_connections(server: &TestServer, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        assert!(health_over(&mut stream).await.starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    held
}

async fn assert_refused_at_once(server: &TestServer) {
    let mut refused = TcpStream::connect(server.addr).await.unwrap();
    let (after, read) = until_closed(&mut refused, Duration::from_secs(2)).await;
    assert!(read.is_empty());
    assert!(after < Duration::from_millis(500), "closed after {after:?}");
}

#[tokio::test]
async fn past_the_per_address_cap_a_connection_is_closed_at_once() {
    let server = start(with_connections(ConnectionSettings {
        per_address: 5,
        ..bounds(30_000, 30_000)
    }))
    .await;
    let mut held = held_connections(&server, 5).await;
    assert_refused_at_once(&server).await;
    held.pop();
    // The server sees the close a moment later.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = TcpStream::connect(server.addr).await.unwrap();
    assert!(health_over(&mut again).await.starts_with("HTTP/1.1 200"));
    server.stop().await;
}

#[tokio::test]
async fn past_the_global_cap_a_connection_is_closed_at_once() {
    let server = start(with_connections(ConnectionSettings {
        max: 4,
        trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
        ..bounds(30_000, 30_000)
    }))
    .await;
    let held = held_connections(&server, 4).await;
    assert_refused_at_once(&server).await;
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    held_connections(&server, 4).await;
    server.stop().await;
}

#[tokio::test]
async fn a_full_server_closes_a_connection_that_never_spoke_to_admit_a_client() {
    let server = start(with_connections(ConnectionSettings {
        max: 4,
        ..bounds(30_000, 30_000)
    }))
    .await;
    let mut talker = held_connections(&server, 1).await.remove(0);
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
        // Admitted in this order: the first is the oldest.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    assert!(health_over(&mut client).await.starts_with("HTTP/1.1 200"));
    let (after, read) = until_closed(&mut silent[0], Duration::from_secs(2)).await;
    assert!(
        read.is_empty() && after < Duration::from_millis(500),
        "closed after {after:?}"
    );
    // The others, and the connection that spoke, keep their places.
    assert!(health_over(&mut talker).await.starts_with("HTTP/1.1 200"));
    assert!(
        health_over(&mut silent[1])
            .await
            .starts_with("HTTP/1.1 200")
    );
    server.stop().await;
}

#[tokio::test]
async fn a_trusted_proxy_is_exempt_from_the_per_address_cap() {
    let server = start(with_connections(ConnectionSettings {
        per_address: 2,
        trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
        ..bounds(30_000, 30_000)
    }))
    .await;
    let held = held_connections(&server, 10).await;
    assert_eq!(held.len(), 10);
    server.stop().await;
}

async fn post_from(
    server: &TestServer,
    forwarded_for: &str,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.url(path))
        .header("x-forwarded-for", forwarded_for)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn behind_proxy() -> Config {
    with_connections(ConnectionSettings {
        trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
        ..ConnectionSettings::default()
    })
}

const VICTIM: &str = "203.0.113.5";
const ATTACKER: &str = "198.51.100.66";

fn login(email: &str, password: &str) -> Value {
    json!({ "email": email, "password": password })
}

#[tokio::test]
async fn an_attacker_cannot_lock_out_a_user_at_another_address() {
    let server = start(behind_proxy()).await;
    server.register("ada").await;
    for _ in 0..palaver::limits::LOGIN_FAILURES_MAX {
        let (status, _) = post_from(
            &server,
            ATTACKER,
            "/api/auth/login",
            login("ada@example.com", "wrong-password"),
        )
        .await;
        assert_eq!(status, 401);
    }
    let (status, body) = post_from(
        &server,
        ATTACKER,
        "/api/auth/login",
        login("ada@example.com", "password123"),
    )
    .await;
    assert_eq!(
        status, 429,
        "the attacker's own address is throttled: {body}"
    );
    let (status, body) = post_from(
        &server,
        &format!("{VICTIM}, {ATTACKER}"),
        "/api/auth/login",
        login("ada@example.com", "password123"),
    )
    .await;
    assert_eq!(
        status, 429,
        "a forged left-most entry changes nothing: {body}"
    );
    let (status, body) = post_from(
        &server,
        VICTIM,
        "/api/auth/login",
        login("ada@example.com", "password123"),
    )
    .await;
    assert_eq!(status, 200, "the user elsewhere logs in: {body}");
    server.stop().await;
}

#[tokio::test]
async fn spraying_one_address_across_accounts_is_throttled() {
    let server = start(behind_proxy()).await;
    server.register("ada").await;
    for n in 0..palaver::limits::LOGIN_ADDRESS_FAILURES_MAX {
        let (status, _) = post_from(
            &server,
            ATTACKER,
            "/api/auth/login",
            login(&format!("user{n}@example.com"), "password123"),
        )
        .await;
        assert_eq!(status, 401);
    }
    let (status, _) = post_from(
        &server,
        ATTACKER,
        "/api/auth/login",
        login("ada@example.com", "password123"),
    )
    .await;
    assert_eq!(status, 429);
    let (status, _) = post_from(
        &server,
        VICTIM,
        "/api/auth/login",
        login("ada@example.com", "password123"),
    )
    .await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn forwarded_addresses_from_an_untrusted_peer_are_ignored() {
    let server = start(relaxed_config()).await;
    server.register("ada").await;
    for n in 0..palaver::limits::LOGIN_FAILURES_MAX {
        let (status, _) = post_from(
            &server,
            &format!("198.51.100.{n}"),
            "/api/auth/login",
            login("ada@example.com", "wrong-password"),
        )
        .await;
        assert_eq!(status, 401);
    }
    let (status, _) = post_from(
        &server,
        VICTIM,
        "/api/auth/login",
        login("ada@example.com", "password123"),
    )
    .await;
    assert_eq!(status, 429, "every attempt came from 127.0.0.1");
    server.stop().await;
}

#[tokio::test]
async fn registrations_are_limited_per_client_address() {
    let server = start(Config {
        registrations_per_address: 3,
        ..behind_proxy()
    })
    .await;
    let register = |n: usize| json!({ "name": format!("u{n}"), "email": format!("u{n}@example.com"), "password": "password123" });
    for n in 0..3 {
        let (status, body) = post_from(&server, ATTACKER, "/api/auth/register", register(n)).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = post_from(&server, ATTACKER, "/api/auth/register", register(3)).await;
    assert_eq!(status, 429);
    assert_eq!(
        body["message"],
        "Too many registrations from this address, try again later"
    );
    let (status, body) = post_from(&server, VICTIM, "/api/auth/register", register(4)).await;
    assert_eq!(status, 201, "{body}");
    server.stop().await;
}
