//! The real server over real sockets: group commit under concurrency, get-or-create under
//! concurrency, exactly-once fan-out, membership, presence, and a clean stop.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::{Socket, TestServer, relaxed_config, start};
use futures_util::future::join_all;
use palaver::server::ServerExit;
use serde_json::json;

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_are_group_committed_with_gapless_seq() {
    let server = start(relaxed_config()).await;
    let (ada, _) = server.register("ada").await;
    let (_, bob_id) = server.register("bob").await;
    let chat = server.open_chat(&ada, &bob_id).await;

    // Eight sockets of one user each send 50 messages concurrently.
    let sockets: Vec<Socket> = join_all((0..8).map(|_| server.connect(&ada))).await;
    let sends = sockets.iter().enumerate().flat_map(|(tab, socket)| {
        let chat = chat.clone();
        (0..50).map(move |i| {
            let data = json!({ "chatId": chat, "text": format!("m{tab}-{i}"), "clientMsgId": format!("{tab}-{i}") });
            async move { socket.ack("send-message", data).await }
        })
    });
    let acks = join_all(sends).await;
    let mut seqs = BTreeSet::new();
    for ack in &acks {
        assert_eq!(ack["ok"], true, "{ack}");
        assert!(
            seqs.insert(ack["message"]["seq"].as_u64().unwrap()),
            "seq handed out twice"
        );
    }
    assert_eq!(seqs, (1..=400).collect(), "seqs are exactly 1..=400");

    let (status, page) = server
        .get(
            &format!("/api/messages/chat/{chat}?after=0&limit=500"),
            Some(&ada),
        )
        .await;
    assert_eq!(status, 200);
    let stored: Vec<u64> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        stored,
        (1..=400).collect::<Vec<_>>(),
        "history is ascending and gapless"
    );
    let exit = server.stop().await;
    assert!(matches!(exit, ServerExit::Stopped), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_get_or_create_makes_one_chat() {
    let server = start(relaxed_config()).await;
    let (ada, ada_id) = server.register("ada").await;
    let (bob, bob_id) = server.register("bob").await;
    let calls = (0..40).map(|i| {
        let (token, other) = if i % 2 == 0 {
            (&ada, &bob_id)
        } else {
            (&bob, &ada_id)
        };
        server.open_chat(token, other)
    });
    let ids: BTreeSet<String> = join_all(calls).await.into_iter().collect();
    assert_eq!(ids.len(), 1, "one chat for the pair: {ids:?}");
    let (_, chats) = server.get("/api/chats", Some(&ada)).await;
    assert_eq!(chats.as_array().unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_message_reaches_every_socket_of_both_members_exactly_once() {
    let server = start(relaxed_config()).await;
    let (ada, _) = server.register("ada").await;
    let (bob, bob_id) = server.register("bob").await;
    let chat = server.open_chat(&ada, &bob_id).await;

    let mut joined_ada = server.connect(&ada).await;
    let mut idle_ada = server.connect(&ada).await;
    let mut joined_bob = server.connect(&bob).await;
    let mut idle_bob = server.connect(&bob).await;
    for socket in [&joined_ada, &joined_bob] {
        assert_eq!(socket.ack("join-chat", json!(chat)).await["ok"], true);
    }
    let ack = joined_ada
        .ack(
            "send-message",
            json!({ "chatId": chat, "text": "  hello  " }),
        )
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(ack["message"]["text"], "hello");
    assert_eq!(ack["message"]["clientMsgId"], serde_json::Value::Null);

    for socket in [
        &mut joined_ada,
        &mut idle_ada,
        &mut joined_bob,
        &mut idle_bob,
    ] {
        let received = socket.drain("new-message", QUIET).await;
        assert_eq!(received.len(), 1, "exactly once per socket: {received:?}");
        assert_eq!(received[0]["_id"], ack["message"]["_id"]);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_can_neither_join_nor_send_nor_read() {
    let server = start(relaxed_config()).await;
    let (ada, _) = server.register("ada").await;
    let (_, bob_id) = server.register("bob").await;
    let (eve, _) = server.register("eve").await;
    let chat = server.open_chat(&ada, &bob_id).await;

    let mut outsider = server.connect(&eve).await;
    let refused = outsider.ack("join-chat", json!({ "chatId": chat })).await;
    assert_eq!(refused, json!({ "ok": false, "error": "Chat not found" }));
    assert_eq!(
        outsider.next("socket-error", QUIET).await,
        Some(json!({ "message": "Chat not found" }))
    );
    let refused = outsider
        .ack("send-message", json!({ "chatId": chat, "text": "hi" }))
        .await;
    assert_eq!(refused["error"], "Chat not found");
    let refused = outsider
        .ack("sync", json!({ "chatId": chat, "afterSeq": 0 }))
        .await;
    assert_eq!(refused["error"], "Chat not found");
    let (status, body) = server
        .get(&format!("/api/messages/chat/{chat}"), Some(&eve))
        .await;
    assert_eq!(
        (status, body),
        (404, json!({ "message": "Chat not found" }))
    );

    let member = server.connect(&ada).await;
    member
        .ack("send-message", json!({ "chatId": chat, "text": "private" }))
        .await;
    assert!(
        outsider.drain("new-message", QUIET).await.is_empty(),
        "the outsider saw nothing"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_counts_tabs() {
    // A short grace period, so that the last tab's `user-offline` comes within the test.
    let server = start(palaver::config::Config {
        presence_grace: Duration::from_millis(500),
        ..relaxed_config()
    })
    .await;
    let (ada, ada_id) = server.register("ada").await;
    let (bob, _) = server.register("bob").await;
    let mut observer = server.connect(&bob).await;
    assert_eq!(
        observer.next("online-users", QUIET).await,
        Some(json!({ "userIds": [] }))
    );

    let tab1 = server.connect(&ada).await;
    assert_eq!(
        observer.next("user-online", QUIET).await,
        Some(json!({ "userId": ada_id }))
    );
    let tab2 = server.connect(&ada).await;
    tab1.client.close().await;
    assert_eq!(
        observer.drain("user-offline", QUIET).await,
        Vec::<serde_json::Value>::new()
    );
    assert!(
        observer.drain("user-online", QUIET).await.is_empty(),
        "the second tab announced nothing"
    );
    tab2.client.close().await;
    assert_eq!(
        observer.next("user-offline", Duration::from_secs(2)).await,
        Some(json!({ "userId": ada_id }))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_scoped_to_contacts_reaches_only_users_who_share_a_chat() {
    let server = start(palaver::config::Config {
        presence_grace: Duration::ZERO,
        presence_tick: Duration::ZERO,
        presence_scope: palaver::service::PresenceScope::Contacts,
        ..relaxed_config()
    })
    .await;
    let (ada, ada_id) = server.register("ada").await;
    let (bob, bob_id) = server.register("bob").await;
    let (cy, cy_id) = server.register("cy").await;
    server.open_chat(&ada, &bob_id).await;
    let mut bob_tab = server.connect(&bob).await;
    let mut cy_tab = server.connect(&cy).await;
    let nobody = Some(json!({ "userIds": [] }));
    assert_eq!(bob_tab.next("online-users", QUIET).await, nobody);
    assert_eq!(
        cy_tab.next("online-users", QUIET).await,
        nobody,
        "bob is no contact of cy"
    );

    let mut ada_tab = server.connect(&ada).await;
    let online = |id: &str| Some(json!({ "userId": id }));
    assert_eq!(
        ada_tab.next("online-users", QUIET).await,
        Some(json!({ "userIds": [bob_id] }))
    );
    assert_eq!(bob_tab.next("user-online", QUIET).await, online(&ada_id));
    assert!(
        cy_tab.drain("user-online", QUIET).await.is_empty(),
        "ada is no contact of cy"
    );

    // cy and ada now share a chat: each learns that the other is online, once.
    server.open_chat(&cy, &ada_id).await;
    assert_eq!(cy_tab.next("user-online", QUIET).await, online(&ada_id));
    assert_eq!(ada_tab.next("user-online", QUIET).await, online(&cy_id));
    server.open_chat(&ada, &cy_id).await;
    assert!(cy_tab.drain("user-online", QUIET).await.is_empty());

    ada_tab.client.close().await;
    let offline = Some(json!({ "userId": ada_id }));
    assert_eq!(bob_tab.next("user-offline", QUIET).await, offline);
    assert_eq!(cy_tab.next("user-offline", QUIET).await, offline);
    let later_cy_tab = server.connect(&cy).await;
    let mut later_cy_tab = later_cy_tab;
    assert_eq!(later_cy_tab.next("online-users", QUIET).await, nobody);
    assert!(
        bob_tab.drain("user-online", QUIET).await.is_empty(),
        "cy is no contact of bob"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_contract_messages() {
    let server = start(relaxed_config()).await;
    let (ada, _) = server.register("ada").await;
    let (_, bob_id) = server.register("bob").await;
    let chat = server.open_chat(&ada, &bob_id).await;
    let socket = server.connect(&ada).await;
    let cases = [
        (json!(5), "Invalid payload"),
        (json!({ "chatId": chat }), "Invalid payload"),
        (json!({ "chatId": chat, "text": "   " }), "Message is empty"),
        (
            json!({ "chatId": chat, "text": "x".repeat(4001) }),
            "Message too long",
        ),
        (
            json!({ "chatId": chat, "text": "x", "clientMsgId": "c".repeat(65) }),
            "Invalid payload",
        ),
        (
            json!({ "chatId": "no-such-chat", "text": "x" }),
            "Chat not found",
        ),
        (
            json!({ "chatId": "../../etc", "text": "x" }),
            "Chat not found",
        ),
    ];
    for (payload, expected) in cases {
        let ack = socket.ack("send-message", payload.clone()).await;
        assert_eq!(ack, json!({ "ok": false, "error": expected }), "{payload}");
    }
    server.stop().await;
}

/// A server whose send limit is a burst of 3 then 1 a second, with ada's socket and her chat
/// with bob.
async fn ada_limited_to_three_sends() -> (TestServer, Socket, String) {
    let config = palaver::config::Config {
        send_rate_per_sec: 1,
        send_burst: 3,
        ..Default::default()
    };
    let server = start(config).await;
    let (ada, _) = server.register("ada").await;
    let (_, bob_id) = server.register("bob").await;
    let chat = server.open_chat(&ada, &bob_id).await;
    let socket = server.connect(&ada).await;
    (server, socket, chat)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_rate_is_limited_per_user_and_retries_are_free() {
    let (server, socket, chat) = ada_limited_to_three_sends().await;
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    for i in 0..6 {
        let ack = socket
            .ack(
                "send-message",
                json!({ "chatId": chat, "text": "x", "clientMsgId": format!("c{i}") }),
            )
            .await;
        let key = if ack["ok"] == true {
            "ok".to_owned()
        } else {
            ack["error"].as_str().unwrap().to_owned()
        };
        *outcomes.entry(key).or_default() += 1;
    }
    assert_eq!(outcomes.get("ok"), Some(&3), "{outcomes:?}");
    assert_eq!(outcomes.get("Rate limited"), Some(&3), "{outcomes:?}");
    // A retry of a committed send answers with the original, even while limited.
    let retry = socket
        .ack(
            "send-message",
            json!({ "chatId": chat, "text": "x", "clientMsgId": "c0" }),
        )
        .await;
    assert_eq!(
        (retry["ok"].clone(), retry["message"]["seq"].clone()),
        (json!(true), json!(1))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_spend_none_of_the_senders_tokens() {
    let (server, socket, chat) = ada_limited_to_three_sends().await;
    let send = |cmid: &str| {
        socket.ack(
            "send-message",
            json!({ "chatId": chat, "text": "x", "clientMsgId": cmid }),
        )
    };
    let mut answers = Vec::new();
    for cmid in ["c0", "c0", "c0", "c0", "c1", "c2", "c3"] {
        let ack = send(cmid).await;
        answers.push(if ack["ok"] == true {
            format!("seq {}", ack["message"]["seq"])
        } else {
            ack["error"].as_str().unwrap().to_owned()
        });
    }
    // Three retries of c0 answered with the original; c1 and c2 used the other two tokens.
    assert_eq!(
        answers,
        [
            "seq 1",
            "seq 1",
            "seq 1",
            "seq 1",
            "seq 2",
            "seq 3",
            "Rate limited"
        ]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_without_a_valid_token_are_refused() {
    let server = start(relaxed_config()).await;
    assert_eq!(server.connect_refused("").await, "Unauthorized");
    assert_eq!(server.connect_refused("not-a-token").await, "Unauthorized");
    // A well-signed token of a user that does not exist.
    let tokens =
        palaver::service::auth::Tokens::new(b"other", Duration::from_secs(60), None).unwrap();
    let forged = tokens.issue(
        "ghost",
        palaver::clock::Clock::now_ms(&palaver::clock::SystemClock),
    );
    assert_eq!(
        server.connect_refused(&forged).await,
        "Unauthorized",
        "signed with another secret"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_commits_what_was_queued() {
    let server = start(relaxed_config()).await;
    let (ada, _) = server.register("ada").await;
    let (_, bob_id) = server.register("bob").await;
    let chat = server.open_chat(&ada, &bob_id).await;
    let socket = server.connect(&ada).await;
    let acks = join_all((0..100).map(|i| {
        socket.ack(
            "send-message",
            json!({ "chatId": chat, "text": format!("{i}") }),
        )
    }))
    .await;
    assert!(acks.iter().all(|a| a["ok"] == true));
    let (exit, dir) = server.stop_keeping_data().await;
    assert!(matches!(exit, ServerExit::Stopped), "{exit:?}");
    // Everything acknowledged is in the file after the stop, and the indexes agree. (The
    // in-process server's last database handle may outlive `stop` in a socket task, so the
    // file is checked through a copy.)
    let copy = tempfile::tempdir().unwrap();
    let file = palaver::storage::DB_FILE;
    std::fs::copy(dir.path().join(file), copy.path().join(file)).unwrap();
    let db = palaver::storage::open_dir(copy.path()).unwrap();
    let (store, _writer, _task) =
        palaver::storage::start(db, palaver::storage::Durability::Immediate).unwrap();
    assert_eq!(store.check_consistency().unwrap(), Vec::<String>::new());
    assert_eq!(store.chat(&chat).unwrap().unwrap().last_seq, 100);
}
