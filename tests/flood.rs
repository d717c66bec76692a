//! Floods and exhaustion over real sockets (issue 16): `sync` and history reads rate-limited per
//! user and bounded in bytes, a socket that asks for more than it reads disconnected, the
//! password-hashing queue answering `Server busy` rather than stalling, token revocation and
//! expiry, and the per-user caps on sockets and typing events.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, relaxed_config, start};
use futures_util::future::join_all;
use palaver::limits::{PASSWORD_HASH_WAIT, READS_BURST, REPLY_BYTES_MAX};
use serde_json::{Value, json};

/// A text whose every character JSON escapes (`"` → `\"`): 4,000 characters, 8,000 bytes.
fn escaping_text(i: usize) -> String {
    format!("{i}{}", "\"".repeat(3999 - i.to_string().len()))
}

/// Ada and Bob with a chat of `n` messages of escaping text, sent by Ada.
async fn chat_of_escaping_messages(n: usize) -> (TestServer, String, String, String) {
    let server = start(relaxed_config()).await;
    let (ada, _) = server.register("ada").await;
    let (bob, bob_id) = server.register("bob").await;
    let chat = server.open_chat(&ada, &bob_id).await;
    for i in 0..n {
        let path = format!("/api/messages/chat/{chat}");
        let (status, body) = server
            .post(&path, Some(&ada), json!({ "text": escaping_text(i) }))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    (server, ada, bob, chat)
}

fn seqs(messages: &Value) -> Vec<u64> {
    messages
        .as_array()
        .expect("an array of messages")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_are_bounded_in_bytes_of_json_with_escapes() {
    let (server, ada, bob, chat) = chat_of_escaping_messages(40).await;
    let socket = server.connect(&bob).await;

    let ack = socket
        .ack(
            "sync",
            json!({ "chatId": chat, "afterSeq": 0, "limit": 500 }),
        )
        .await;
    assert_eq!(ack["ok"], true, "{}", ack["error"]);
    let synced = seqs(&ack["messages"]);
    assert!(synced.len() < 40, "cut short: {} messages", synced.len());
    assert_eq!(synced, (1..=synced.len() as u64).collect::<Vec<_>>());
    assert_eq!(ack["hasMore"], true, "a cut page has more");
    let bytes = serde_json::to_vec(&ack["messages"]).unwrap().len();
    assert!(bytes <= REPLY_BYTES_MAX, "{bytes} bytes");
    let after = synced.len();
    let rest = socket
        .ack(
            "sync",
            json!({ "chatId": chat, "afterSeq": after, "limit": 500 }),
        )
        .await;
    assert_eq!(
        seqs(&rest["messages"]),
        ((after as u64 + 1)..=40).collect::<Vec<_>>()
    );
    assert_eq!(rest["hasMore"], false);

    let (status, newest) = server
        .get(&format!("/api/messages/chat/{chat}?limit=500"), Some(&ada))
        .await;
    assert_eq!(status, 200);
    let newest = seqs(&newest);
    assert!(
        newest.len() < 40 && newest.last() == Some(&40),
        "{newest:?}"
    );
    let (_, oldest) = server
        .get(
            &format!("/api/messages/chat/{chat}?after=0&limit=500"),
            Some(&ada),
        )
        .await;
    let oldest = seqs(&oldest);
    assert!(
        oldest.len() < 40 && oldest.first() == Some(&1),
        "{oldest:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_and_history_are_rate_limited_per_user() {
    let (server, ada, _bob, chat) = chat_of_escaping_messages(1).await;
    let socket = server.connect(&ada).await;
    let sync = json!({ "chatId": chat, "afterSeq": 0 });
    let acks = join_all((0..READS_BURST + 20).map(|_| socket.ack("sync", sync.clone()))).await;
    let refused: Vec<_> = acks.iter().filter(|a| a["ok"] == false).collect();
    assert!(!refused.is_empty(), "a flood of sync is limited");
    assert!(
        refused.iter().all(|a| a["error"] == "Too many requests"),
        "{refused:?}"
    );

    // The same user's history reads share the limit: a second socket or REST does not help.
    // A bucket of REST's own would answer all of these (they are fewer than a burst); the
    // shared one has refilled at most a few tokens since the flood, however slow the machine.
    let path = format!("/api/messages/chat/{chat}");
    let reads = join_all((0..READS_BURST / 2).map(|_| server.get(&path, Some(&ada)))).await;
    let limited = reads
        .iter()
        .filter(|(status, body)| *status == 429 && body["message"] == "Too many requests")
        .count();
    assert!(
        limited > 0,
        "REST reads right after the socket's flood were all answered: {:?}",
        reads.iter().map(|(status, _)| status).collect::<Vec<_>>()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_asking_for_more_than_it_reads_is_disconnected() {
    let (server, _ada, bob, chat) = chat_of_escaping_messages(40).await;
    let socket = server.connect(&bob).await;
    let sync = json!({ "chatId": chat, "afterSeq": 0, "limit": 500 });
    let mut answered = 0;
    for _ in 0..READS_BURST {
        match socket
            .client
            .emit_with_ack("sync", &sync, Duration::from_secs(2))
            .await
        {
            Ok(ack) if ack["ok"] == true => answered += 1,
            Ok(ack) => panic!("refused: {ack}"),
            Err(_) => break,
        }
    }
    assert!(
        answered < READS_BURST as usize,
        "a socket pulling replies faster than it can have read them is dropped"
    );
    assert!(answered >= 8, "it got its budget first: {answered} replies");
    // The user is not locked out: a new socket is served.
    let fresh = server.connect(&bob).await;
    let one = json!({ "chatId": chat, "afterSeq": 39 });
    assert_eq!(fresh.ack("sync", one).await["ok"], true);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_beyond_the_hashing_queue_are_answered_busy_at_once() {
    let server = start(relaxed_config()).await;
    server.register("ada").await;
    let login = json!({ "email": "ada@example.com", "password": "password123" });
    let answers = join_all((0..200).map(|_| async {
        let asked = Instant::now();
        let (status, body) = server.post("/api/auth/login", None, login.clone()).await;
        (status, body, asked.elapsed())
    }))
    .await;
    let busy: Vec<_> = answers.iter().filter(|(s, ..)| *s == 503).collect();
    let ok: Vec<_> = answers.iter().filter(|(s, ..)| *s == 200).collect();
    let slowest = answers.iter().map(|(.., t)| *t).max().unwrap();
    let first_busy = busy.iter().map(|(.., t)| *t).min();
    eprintln!(
        "200 concurrent logins: {} ok, {} busy (first after {first_busy:?}), all answered within {slowest:?}",
        ok.len(),
        busy.len()
    );
    assert_eq!(ok.len() + busy.len(), 200, "only 200 and 503");
    assert!(!busy.is_empty(), "the queue for hashing is bounded");
    assert!(
        busy.iter()
            .all(|(_, body, _)| body["message"] == "Server busy")
    );
    assert!(ok.len() >= 4, "the logins that got a slot succeed");
    // Each login's own time: a refusal comes at once, or when the wait for a slot runs out.
    let latest_busy = busy.iter().map(|(.., t)| *t).max().unwrap();
    assert!(
        latest_busy < PASSWORD_HASH_WAIT + Duration::from_secs(3),
        "{latest_busy:?}"
    );
    assert!(
        slowest < PASSWORD_HASH_WAIT + Duration::from_secs(5),
        "none hangs"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_past_the_per_user_cap_is_refused_at_the_handshake() {
    let server = start(palaver::config::Config {
        max_sockets_per_user: 3,
        ..relaxed_config()
    })
    .await;
    let (ada, _) = server.register("ada").await;
    let (bob, _) = server.register("bob").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(server.connect(&ada).await);
    }
    assert_eq!(server.connect_refused(&ada).await, "Too many connections");
    let _others_unaffected = server.connect(&bob).await;

    // A closed socket makes room again.
    open.pop().unwrap().client.close().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        match palaver_client::connect(stream, &server.addr.to_string(), &ada).await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no room after a close: {e}"),
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_is_limited_per_user_over_all_sockets_and_every_shown_true_ends() {
    let server = start(relaxed_config()).await;
    let (ada, _) = server.register("ada").await;
    let (bob, bob_id) = server.register("bob").await;
    let chat = server.open_chat(&ada, &bob_id).await;
    let mut watcher = server.connect(&bob).await;
    let tabs = join_all((0..20).map(|_| server.connect(&ada))).await;

    let start_typing = json!({ "chatId": chat, "isTyping": true });
    join_all(
        tabs.iter()
            .map(|tab| tab.client.emit("typing", &start_typing)),
    )
    .await;
    let shown = watcher.drain("typing", Duration::from_millis(500)).await;
    assert!(shown.iter().all(|t| t["isTyping"] == true));
    let limit = palaver::limits::TYPING_PER_USER_PER_SEC as usize;
    assert!(
        (1..=limit + 2).contains(&shown.len()),
        "20 tabs showed {} trues",
        shown.len()
    );

    let stop_typing = json!({ "chatId": chat, "isTyping": false });
    join_all(
        tabs.iter()
            .map(|tab| tab.client.emit("typing", &stop_typing)),
    )
    .await;
    let ended = watcher.drain("typing", Duration::from_millis(500)).await;
    assert!(ended.iter().all(|t| t["isTyping"] == false));
    assert_eq!(
        ended.len(),
        shown.len(),
        "every shown true ends, no other false is sent"
    );
    server.stop().await;
}

/// Whether the server closes `socket` within `within` (its event stream ends).
async fn closed_within(socket: &mut common::Socket, within: Duration) -> bool {
    let ended = async { while socket.events.recv().await.is_some() {} };
    tokio::time::timeout(within, ended).await.is_ok()
}

async fn login(server: &TestServer, name: &str) -> String {
    let body = json!({ "email": format!("{name}@example.com"), "password": "password123" });
    let (status, body) = server.post("/api/auth/login", None, body).await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_refuses_every_earlier_token_and_closes_every_socket_durably() {
    let server = start(relaxed_config()).await;
    let (registered, _) = server.register("ada").await;
    let (bob, _) = server.register("bob").await;
    let logged_in = login(&server, "ada").await;
    let mut tab = server.connect(&registered).await;
    let bobs_tab = server.connect(&bob).await;

    let (status, _) = server
        .post("/api/auth/logout", Some(&logged_in), json!({}))
        .await;
    assert_eq!(status, 204);
    assert!(
        closed_within(&mut tab, Duration::from_secs(2)).await,
        "socket closed"
    );
    for token in [&registered, &logged_in] {
        let (status, body) = server.get("/api/auth/me", Some(token)).await;
        assert_eq!((status, &body["message"]), (401, &json!("Unauthorized")));
        assert_eq!(server.connect_refused(token).await, "Unauthorized");
    }
    let (status, _) = server
        .post("/api/auth/logout", Some(&logged_in), json!({}))
        .await;
    assert_eq!(status, 401, "a revoked token cannot log out either");
    assert!(
        !bobs_tab.client.is_closed(),
        "other users keep their sessions"
    );
    assert_eq!(server.get("/api/auth/me", Some(&bob)).await.0, 200);

    let fresh = login(&server, "ada").await;
    assert_eq!(server.get("/api/auth/me", Some(&fresh)).await.0, 200);
    drop(server.connect(&fresh).await);
    drop((tab, bobs_tab));

    // Durable: after a restart the old tokens stay refused, the fresh one works. The stopped
    // in-process server's last database handle may outlive `stop` in a socket task, so its file
    // is served again as a copy (as in corrupt_records.rs).
    let (_, old_dir) = server.stop_keeping_data().await;
    let dir = tempfile::tempdir().unwrap();
    let file = palaver::storage::DB_FILE;
    std::fs::copy(old_dir.path().join(file), dir.path().join(file)).unwrap();
    let server = common::start_in(relaxed_config(), dir).await;
    assert_eq!(server.get("/api/auth/me", Some(&registered)).await.0, 401);
    assert_eq!(server.get("/api/auth/me", Some(&fresh)).await.0, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_is_closed_when_its_token_expires() {
    let server = start(palaver::config::Config {
        token_ttl: Duration::from_secs(2),
        ..relaxed_config()
    })
    .await;
    let (ada, _) = server.register("ada").await;
    let mut socket = server.connect(&ada).await;
    let opened = Instant::now();
    assert!(
        closed_within(&mut socket, Duration::from_secs(4)).await,
        "closed at exp"
    );
    // `exp` counts whole seconds from `iat`, so the token lived between one and two seconds.
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "{:?}",
        opened.elapsed()
    );
    assert_eq!(server.connect_refused(&ada).await, "Unauthorized");
    server.stop().await;
}

/// A raw WebSocket through Socket.IO's CONNECT with `token`; the CONNECT answer's text.
async fn raw_connect(
    server: &TestServer,
    token: &str,
) -> (
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    String,
) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let _open = ws.next().await;
    let auth = format!("40{}", json!({ "token": token }));
    ws.send(Message::text(auth)).await.unwrap();
    // engineioxide sends its first Engine.IO ping (`2`) as soon as the transport opens, so it
    // may come before the CONNECT answer.
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.as_str() == "2" => {
                ws.send(Message::text("3")).await.unwrap();
            }
            Some(Ok(Message::Text(text))) => return (ws, text.to_string()),
            Some(Ok(_)) => continue,
            other => panic!("no CONNECT answer: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_reads_while_it_floods_sync_lets_its_user_reconnect() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let (server, _ada, bob, chat) = chat_of_escaping_messages(40).await;
    for round in 0..2 {
        let (mut ws, answer) = raw_connect(&server, &bob).await;
        assert!(answer.starts_with("40"), "round {round}: {answer}");
        let sync = json!(["sync", { "chatId": chat, "afterSeq": 0, "limit": 500 }]);
        let flood_until = Instant::now() + Duration::from_secs(3);
        let mut id = 0;
        while Instant::now() < flood_until {
            id += 1;
            if ws
                .send(Message::text(format!("42{id}{sync}")))
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(ws);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let fresh = server.connect(&bob).await;
    let one = json!({ "chatId": chat, "afterSeq": 39 });
    assert_eq!(fresh.ack("sync", one).await["ok"], true);
    server.stop().await;
}
