//! Group chats, membership and read state over real sockets: every route and refusal, the events
//! of each change, a member removed while another is mid-burst, concurrent changes, and unread
//! counts.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Socket, TestServer, relaxed_config, start};
use futures_util::future::join_all;
use serde_json::{Value, json};

const QUIET: Duration = Duration::from_millis(300);
const WITHIN: Duration = Duration::from_secs(5);

async fn create_group(server: &TestServer, token: &str, name: &str, members: &[&str]) -> Value {
    let (status, body) = server
        .post(
            "/api/chats",
            Some(token),
            json!({ "name": name, "memberIds": members }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn members(server: &TestServer, token: &str, chat: &str) -> Vec<(String, String)> {
    let (status, body) = server
        .get(&format!("/api/chats/{chat}/members"), Some(token))
        .await;
    assert_eq!(status, 200, "{body}");
    body.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user"]["_id"].as_str().unwrap().to_owned(),
                m["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn history(server: &TestServer, token: &str, chat: &str) -> (u16, Value) {
    server
        .get(
            &format!("/api/messages/chat/{chat}?after=0&limit=500"),
            Some(token),
        )
        .await
}

async fn chat_in_list(server: &TestServer, token: &str, chat: &str) -> Value {
    let (status, list) = server.get("/api/chats", Some(token)).await;
    assert_eq!(status, 200);
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["_id"] == chat)
        .cloned()
        .unwrap_or(Value::Null)
}

fn seqs_of(events: &[Value]) -> Vec<u64> {
    events.iter().map(|m| m["seq"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_created_read_changed_and_refused_as_the_contract_says() {
    let server = start(relaxed_config()).await;
    let (ada, ada_id) = server.register("ada").await;
    let (bob, bob_id) = server.register("bob").await;
    let (carol, carol_id) = server.register("carol").await;
    let (dave, dave_id) = server.register("dave").await;

    let group = create_group(&server, &ada, "  Team  ", &[&bob_id, &carol_id]).await;
    let chat = group["_id"].as_str().unwrap().to_owned();
    assert_eq!(group["kind"], "group");
    assert_eq!(group["name"], "Team");
    assert_eq!(group["participant"], Value::Null);
    assert_eq!(group["memberCount"], 3);
    assert_eq!(group["ownerId"], ada_id.as_str());
    assert_eq!(group["participants"].as_array().unwrap().len(), 3);
    assert_eq!(
        (group["lastReadSeq"].as_u64(), group["unreadCount"].as_u64()),
        (Some(0), Some(0))
    );
    let (status, seen) = server.get(&format!("/api/chats/{chat}"), Some(&bob)).await;
    assert_eq!((status, &seen["name"]), (200, &json!("Team")));
    assert_eq!(
        members(&server, &carol, &chat).await,
        [
            (ada_id.clone(), "owner".to_string()),
            (bob_id.clone(), "member".to_string()),
            (carol_id.clone(), "member".to_string())
        ]
    );

    // Outsiders learn nothing.
    for path in [
        format!("/api/chats/{chat}"),
        format!("/api/chats/{chat}/members"),
        format!("/api/messages/chat/{chat}"),
    ] {
        let (status, body) = server.get(&path, Some(&dave)).await;
        assert_eq!(
            (status, &body["message"]),
            (404, &json!("Chat not found")),
            "{path}"
        );
    }
    let (status, body) = server
        .post(
            &format!("/api/chats/{chat}/members"),
            Some(&dave),
            json!({ "userIds": [dave_id] }),
        )
        .await;
    assert_eq!((status, &body["message"]), (404, &json!("Chat not found")));

    // Only the owner adds, removes others and renames.
    let (status, body) = server
        .post(
            &format!("/api/chats/{chat}/members"),
            Some(&bob),
            json!({ "userIds": [dave_id] }),
        )
        .await;
    assert_eq!(
        (status, &body["message"]),
        (403, &json!("Only the owner can do that"))
    );
    let (status, body) = server
        .patch(
            &format!("/api/chats/{chat}"),
            Some(&bob),
            json!({ "name": "Mine" }),
        )
        .await;
    assert_eq!(
        (status, &body["message"]),
        (403, &json!("Only the owner can do that"))
    );
    let (status, body) = server
        .delete(&format!("/api/chats/{chat}/members/{carol_id}"), Some(&bob))
        .await;
    assert_eq!(
        (status, &body["message"]),
        (403, &json!("Only the owner can do that"))
    );

    // Bad input.
    for (body, message) in [
        (
            json!({ "userIds": [] }),
            "userIds must list 1 to 100 user ids",
        ),
        (json!({}), "userIds must list 1 to 100 user ids"),
    ] {
        let (status, answer) = server
            .post(&format!("/api/chats/{chat}/members"), Some(&ada), body)
            .await;
        assert_eq!((status, &answer["message"]), (400, &json!(message)));
    }
    let too_many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let (status, _) = server
        .post(
            &format!("/api/chats/{chat}/members"),
            Some(&ada),
            json!({ "userIds": too_many }),
        )
        .await;
    assert_eq!(status, 400);
    let (status, body) = server
        .post(
            &format!("/api/chats/{chat}/members"),
            Some(&ada),
            json!({ "userIds": ["nobody000000000000000000"] }),
        )
        .await;
    assert_eq!((status, &body["message"]), (404, &json!("User not found")));
    let (status, body) = server
        .patch(
            &format!("/api/chats/{chat}"),
            Some(&ada),
            json!({ "name": " " }),
        )
        .await;
    assert_eq!(
        (status, &body["message"]),
        (400, &json!("Group name must be 1 to 64 characters"))
    );
    let (status, _) = server
        .post(
            "/api/chats",
            Some(&ada),
            json!({ "name": "x".repeat(65), "memberIds": [] }),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = server
        .post("/api/chats", Some(&ada), json!({ "name": "Big", "memberIds": (0..101).map(|i| format!("u{i}")).collect::<Vec<_>>() }))
        .await;
    assert_eq!(status, 400);

    // The owner adds, renames; each change is a system message in history.
    let (status, after_add) = server
        .post(
            &format!("/api/chats/{chat}/members"),
            Some(&ada),
            json!({ "userIds": [dave_id, bob_id] }),
        )
        .await;
    assert_eq!((status, &after_add["memberCount"]), (200, &json!(4)));
    let (status, renamed) = server
        .patch(
            &format!("/api/chats/{chat}"),
            Some(&ada),
            json!({ "name": "Crew" }),
        )
        .await;
    assert_eq!((status, &renamed["name"]), (200, &json!("Crew")));
    let (status, page) = history(&server, &dave, &chat).await;
    assert_eq!(status, 200, "a new member reads the whole history");
    let page = page.as_array().unwrap();
    assert_eq!(seqs_of(page), [1, 2]);
    assert_eq!(page[0]["kind"], "system");
    assert_eq!(
        page[0]["event"],
        json!({ "type": "added", "userId": dave_id, "by": ada_id })
    );
    assert_eq!(page[0]["text"], "ada added dave");
    assert_eq!(page[1]["event"]["type"], "renamed");

    // 1:1 chats refuse every change.
    let direct = server.open_chat(&ada, &bob_id).await;
    let (_, direct_chat) = server
        .get(&format!("/api/chats/{direct}"), Some(&ada))
        .await;
    assert_eq!(direct_chat["kind"], "direct");
    assert_eq!(direct_chat["participant"]["_id"], bob_id.as_str());
    assert_eq!(direct_chat["name"], Value::Null);
    for (status, body) in [
        server
            .post(
                &format!("/api/chats/{direct}/members"),
                Some(&ada),
                json!({ "userIds": [carol_id] }),
            )
            .await,
        server
            .delete(&format!("/api/chats/{direct}/members/{bob_id}"), Some(&ada))
            .await,
        server
            .patch(
                &format!("/api/chats/{direct}"),
                Some(&ada),
                json!({ "name": "x" }),
            )
            .await,
    ] {
        assert_eq!(
            (status, &body["message"]),
            (400, &json!("Not a group chat"))
        );
    }

    // The owner leaves: the longest-standing member owns the group.
    let (status, _) = server
        .delete(&format!("/api/chats/{chat}/members/{ada_id}"), Some(&ada))
        .await;
    assert_eq!(status, 204);
    let (status, _) = server.get(&format!("/api/chats/{chat}"), Some(&ada)).await;
    assert_eq!(status, 404, "a member who left no longer reaches the chat");
    assert!(chat_in_list(&server, &ada, &chat).await.is_null());
    assert_eq!(
        chat_in_list(&server, &bob, &chat).await["ownerId"],
        bob_id.as_str()
    );
    let (status, _) = server
        .delete(&format!("/api/chats/{chat}/members/{carol_id}"), Some(&bob))
        .await;
    assert_eq!(status, 204, "the new owner removes");
    let (status, body) = server
        .delete(&format!("/api/chats/{chat}/members/{carol_id}"), Some(&bob))
        .await;
    assert_eq!(
        (status, &body["message"]),
        (404, &json!("Member not found"))
    );
    let (status, _) = history(&server, &carol, &chat).await;
    assert_eq!(
        status, 404,
        "a removed member can no longer read the history"
    );

    // The last members leave: the chat is kept, reachable by nobody.
    for token in [&dave, &bob] {
        let (_, me) = server.get("/api/auth/me", Some(token)).await;
        let id = me["_id"].as_str().unwrap();
        let (status, _) = server
            .delete(&format!("/api/chats/{chat}/members/{id}"), Some(token))
            .await;
        assert_eq!(status, 204);
        let (status, _) = server.get(&format!("/api/chats/{chat}"), Some(token)).await;
        assert_eq!(status, 404);
    }
    assert!(server.store().check_consistency().unwrap().is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_and_changed_users_hear_of_every_change() {
    let server = start(relaxed_config()).await;
    let (ada, _) = server.register("ada").await;
    let (bob, bob_id) = server.register("bob").await;
    let (carol, carol_id) = server.register("carol").await;
    let mut ada_socket = server.connect(&ada).await;
    let mut bob_socket = server.connect(&bob).await;
    let mut carol_socket = server.connect(&carol).await;

    let group = create_group(&server, &ada, "Team", &[&bob_id]).await;
    let chat = group["_id"].as_str().unwrap().to_owned();
    for socket in [&mut ada_socket, &mut bob_socket] {
        let created = socket
            .next("chat-created", WITHIN)
            .await
            .expect("chat-created");
        assert_eq!(created["_id"], chat.as_str());
        assert_eq!(created["kind"], "group");
    }
    assert!(carol_socket.next("chat-created", QUIET).await.is_none());

    let (status, _) = server
        .post(
            &format!("/api/chats/{chat}/members"),
            Some(&ada),
            json!({ "userIds": [carol_id] }),
        )
        .await;
    assert_eq!(status, 200);
    for socket in [&mut ada_socket, &mut bob_socket, &mut carol_socket] {
        let added = socket
            .next("member-added", WITHIN)
            .await
            .expect("member-added");
        assert_eq!(added["chatId"], chat.as_str());
        assert_eq!(added["user"]["_id"], carol_id.as_str());
        assert_eq!(added["role"], "member");
    }
    let updated = carol_socket
        .next("chat-updated", WITHIN)
        .await
        .expect("chat-updated");
    assert_eq!(updated["_id"], chat.as_str());

    let (status, _) = server
        .patch(
            &format!("/api/chats/{chat}"),
            Some(&ada),
            json!({ "name": "Crew" }),
        )
        .await;
    assert_eq!(status, 200);
    for socket in [&mut ada_socket, &mut bob_socket, &mut carol_socket] {
        let updated = socket
            .next("chat-updated", WITHIN)
            .await
            .expect("chat-updated");
        assert_eq!(updated["name"], "Crew");
    }

    // Carol joined the room; once removed, her sockets leave it and hear nothing more. The
    // typing indicator she showed is still ended for the others.
    let joined = carol_socket.ack("join-chat", json!(chat)).await;
    assert_eq!(joined["ok"], true);
    let typing = json!({ "chatId": chat, "isTyping": true });
    carol_socket.client.emit("typing", &typing).await.unwrap();
    let shown = ada_socket.next("typing", WITHIN).await.expect("typing");
    assert_eq!(
        (&shown["userId"], &shown["isTyping"]),
        (&json!(carol_id), &json!(true))
    );
    let (status, _) = server
        .delete(&format!("/api/chats/{chat}/members/{carol_id}"), Some(&ada))
        .await;
    assert_eq!(status, 204);
    for socket in [&mut ada_socket, &mut bob_socket, &mut carol_socket] {
        let removed = socket
            .next("member-removed", WITHIN)
            .await
            .expect("member-removed");
        assert_eq!(removed["userId"], carol_id.as_str());
    }
    assert!(carol_socket.drain("new-message", QUIET).await.is_empty());
    let stop = json!({ "chatId": chat, "isTyping": false });
    carol_socket.client.emit("typing", &stop).await.unwrap();
    // Well before the server would end it as stale (5 s).
    let ended = ada_socket
        .next("typing", Duration::from_secs(2))
        .await
        .expect("typing ended");
    assert_eq!(
        (&ended["userId"], &ended["isTyping"]),
        (&json!(carol_id), &json!(false))
    );
    bob_socket
        .client
        .emit("typing", &json!({ "chatId": chat, "isTyping": true }))
        .await
        .unwrap();
    let sent = bob_socket
        .ack("send-message", json!({ "chatId": chat, "text": "after" }))
        .await;
    assert_eq!(sent["ok"], true);
    assert!(ada_socket.next("typing", WITHIN).await.is_some());
    assert!(carol_socket.next("new-message", QUIET).await.is_none());
    assert!(carol_socket.next("typing", QUIET).await.is_none());
    let refused = carol_socket.ack("join-chat", json!(chat)).await;
    assert_eq!(refused["error"], "Chat not found");
    let refused = carol_socket
        .ack("sync", json!({ "chatId": chat, "afterSeq": 0 }))
        .await;
    assert_eq!(refused["error"], "Chat not found");

    // Added back, she reads the whole history again.
    let (status, _) = server
        .post(
            &format!("/api/chats/{chat}/members"),
            Some(&ada),
            json!({ "userIds": [carol_id] }),
        )
        .await;
    assert_eq!(status, 200);
    let synced = carol_socket
        .ack("sync", json!({ "chatId": chat, "afterSeq": 0 }))
        .await;
    let all = synced["messages"].as_array().unwrap();
    assert_eq!(seqs_of(all), (1..=5).collect::<Vec<_>>());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_mid_burst_receives_nothing_committed_after_the_removal() {
    let server = start(relaxed_config()).await;
    let (ada, _) = server.register("ada").await;
    let (bob, bob_id) = server.register("bob").await;
    let (carol, carol_id) = server.register("carol").await;
    let group = create_group(&server, &ada, "Burst", &[&bob_id, &carol_id]).await;
    let chat = group["_id"].as_str().unwrap().to_owned();
    let bob_sockets: Vec<Socket> = join_all((0..3).map(|_| server.connect(&bob))).await;
    let mut carol_sockets: Vec<Socket> = join_all((0..3).map(|_| server.connect(&carol))).await;
    for socket in &carol_sockets[..2] {
        assert_eq!(socket.ack("join-chat", json!(chat)).await["ok"], true);
    }

    let burst = async {
        // Three tabs sending at once, each message after the last one's ack: a burst that lasts
        // long enough for the removal to land inside it.
        let tabs = bob_sockets.iter().enumerate().map(|(tab, socket)| {
            let chat = &chat;
            async move {
                let mut acks = Vec::new();
                for i in 0..100 {
                    let text = format!("m{tab}-{i}");
                    let data = json!({ "chatId": chat, "text": text, "clientMsgId": text });
                    acks.push(socket.ack("send-message", data).await);
                }
                acks
            }
        });
        join_all(tabs).await.concat()
    };
    // Removed once the burst is well under way: after a third socket of hers saw 50 messages.
    let (watcher, joined) = carol_sockets.split_last_mut().unwrap();
    let removal = async {
        let mut seen = Vec::new();
        while seen.len() < 50 {
            let message = watcher.next("new-message", WITHIN).await.expect("burst");
            seen.push(message["seq"].as_u64().unwrap());
        }
        let (status, _) = server
            .delete(&format!("/api/chats/{chat}/members/{carol_id}"), Some(&ada))
            .await;
        (status, seen)
    };
    let (acks, (status, seen_first)) = tokio::join!(burst, removal);
    assert_eq!(status, 204);
    assert!(acks.iter().all(|a| a["ok"] == true));

    let (_, page) = history(&server, &ada, &chat).await;
    let page = page.as_array().unwrap().clone();
    let removal_seq = page
        .iter()
        .find(|m| m["event"]["type"] == "removed")
        .and_then(|m| m["seq"].as_u64())
        .expect("the removal is in history");
    assert_eq!(page.len(), 301);
    assert!(
        removal_seq > 50 && removal_seq < 301,
        "the removal landed mid-burst, at {removal_seq}"
    );
    let mut received: Vec<Vec<u64>> = Vec::new();
    for socket in joined.iter_mut() {
        received.push(seqs_of(&socket.drain("new-message", QUIET).await));
    }
    let mut watched = seen_first;
    watched.extend(seqs_of(&watcher.drain("new-message", QUIET).await));
    received.push(watched);
    for got in received {
        assert!(
            got.iter().all(|&seq| seq < removal_seq),
            "a removed member received seq {:?} after the removal at {removal_seq}",
            got.iter().find(|&&s| s >= removal_seq)
        );
        let mut sorted = got.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), got.len(), "no duplicates");
    }
    assert!(server.store().check_consistency().unwrap().is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_and_removes_leave_one_consistent_member_list() {
    let server = start(relaxed_config()).await;
    let (ada, ada_id) = server.register("ada").await;
    let mut users = Vec::new();
    for i in 0..12 {
        users.push(server.register(&format!("user{i}")).await);
    }
    let group = create_group(&server, &ada, "Churn", &[]).await;
    let chat = group["_id"].as_str().unwrap().to_owned();
    // Every user is added, and the odd ones leave again, all at once, three rounds.
    for _ in 0..3 {
        let changes = users.iter().enumerate().map(|(i, (token, id))| {
            let (server, chat, ada) = (&server, &chat, &ada);
            async move {
                server
                    .post(
                        &format!("/api/chats/{chat}/members"),
                        Some(ada),
                        json!({ "userIds": [id] }),
                    )
                    .await;
                if i % 2 == 1 {
                    server
                        .delete(&format!("/api/chats/{chat}/members/{id}"), Some(token))
                        .await;
                }
            }
        });
        join_all(changes).await;
    }
    let listed: BTreeSet<String> = members(&server, &ada, &chat)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let expected: BTreeSet<String> = std::iter::once(ada_id.clone())
        .chain(users.iter().step_by(2).map(|(_, id)| id.clone()))
        .collect();
    assert_eq!(listed, expected);
    // Replaying the system messages gives the same list.
    let (_, page) = history(&server, &ada, &chat).await;
    let mut replayed = BTreeSet::from([ada_id.clone()]);
    for message in page.as_array().unwrap() {
        let user = message["event"]["userId"].as_str().unwrap().to_owned();
        match message["event"]["type"].as_str().unwrap() {
            "added" => assert!(replayed.insert(user), "added twice"),
            "left" | "removed" => assert!(replayed.remove(&user), "removed a non-member"),
            other => panic!("unexpected event {other}"),
        }
    }
    assert_eq!(replayed, listed);
    assert_eq!(
        chat_in_list(&server, &ada, &chat).await["memberCount"],
        listed.len()
    );
    assert!(server.store().check_consistency().unwrap().is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_state_moves_forward_and_unread_counts_what_others_sent() {
    let server = start(relaxed_config()).await;
    let (ada, ada_id) = server.register("ada").await;
    let (bob, bob_id) = server.register("bob").await;
    let (carol, carol_id) = server.register("carol").await;
    let (dave, _) = server.register("dave").await;
    let group = create_group(&server, &ada, "Reads", &[&bob_id]).await;
    let chat = group["_id"].as_str().unwrap().to_owned();
    let ada_socket = server.connect(&ada).await;
    let mut ada_tab = server.connect(&ada).await;
    let mut bob_socket = server.connect(&bob).await;

    for i in 0..3 {
        let sent = bob_socket
            .ack(
                "send-message",
                json!({ "chatId": chat, "text": format!("b{i}") }),
            )
            .await;
        assert_eq!(sent["ok"], true);
    }
    let listed = chat_in_list(&server, &ada, &chat).await;
    assert_eq!(
        (&listed["lastReadSeq"], &listed["unreadCount"]),
        (&json!(0), &json!(3))
    );
    assert_eq!(
        chat_in_list(&server, &bob, &chat).await["unreadCount"],
        0,
        "own messages are read"
    );

    let ack = ada_socket
        .ack("mark-read", json!({ "chatId": chat, "seq": 2 }))
        .await;
    assert_eq!(ack, json!({ "ok": true, "lastReadSeq": 2 }));
    let read = ada_tab
        .next("read", WITHIN)
        .await
        .expect("the other tab hears of it");
    assert_eq!(
        read,
        json!({ "chatId": chat, "userId": ada_id, "lastReadSeq": 2 })
    );
    let seen = bob_socket
        .next("read", WITHIN)
        .await
        .expect("other members see it");
    assert_eq!(seen["lastReadSeq"], 2);
    assert_eq!(chat_in_list(&server, &ada, &chat).await["unreadCount"], 1);
    let ack = ada_socket
        .ack("mark-read", json!({ "chatId": chat, "seq": 1 }))
        .await;
    assert_eq!(
        ack,
        json!({ "ok": true, "lastReadSeq": 2 }),
        "backwards is a no-op"
    );
    let ack = ada_socket
        .ack("mark-read", json!({ "chatId": chat, "seq": 99 }))
        .await;
    assert_eq!(
        ack,
        json!({ "ok": true, "lastReadSeq": 3 }),
        "capped at the last seq"
    );

    // A system message counts for nobody; a new member starts with nothing unread.
    let (status, _) = server
        .post(
            &format!("/api/chats/{chat}/members"),
            Some(&ada),
            json!({ "userIds": [carol_id] }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(chat_in_list(&server, &ada, &chat).await["unreadCount"], 0);
    assert_eq!(chat_in_list(&server, &carol, &chat).await["unreadCount"], 0);
    let sent = bob_socket
        .ack("send-message", json!({ "chatId": chat, "text": "more" }))
        .await;
    assert_eq!(sent["message"]["seq"], 5);
    assert_eq!(chat_in_list(&server, &ada, &chat).await["unreadCount"], 1);
    assert_eq!(chat_in_list(&server, &carol, &chat).await["unreadCount"], 1);

    // REST does the same; bad input and outsiders are refused.
    let (status, body) = server
        .post(
            &format!("/api/chats/{chat}/read"),
            Some(&carol),
            json!({ "seq": 5 }),
        )
        .await;
    assert_eq!(
        (status, body),
        (200, json!({ "ok": true, "lastReadSeq": 5 }))
    );
    assert_eq!(chat_in_list(&server, &carol, &chat).await["unreadCount"], 0);
    let (status, body) = server
        .post(
            &format!("/api/chats/{chat}/read"),
            Some(&carol),
            json!({ "seq": -1 }),
        )
        .await;
    assert_eq!(
        (status, &body["message"]),
        (400, &json!("seq must be a non-negative whole number"))
    );
    let (status, body) = server
        .post(
            &format!("/api/chats/{chat}/read"),
            Some(&dave),
            json!({ "seq": 1 }),
        )
        .await;
    assert_eq!((status, &body["message"]), (404, &json!("Chat not found")));
    let refused = ada_socket.ack("mark-read", json!({ "chatId": chat })).await;
    assert_eq!(refused["error"], "Invalid payload");
    let (_, listed) = server
        .get(&format!("/api/chats/{chat}/members"), Some(&bob))
        .await;
    let carol_entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"]["_id"] == carol_id.as_str())
        .unwrap();
    assert_eq!(carol_entry["lastReadSeq"], 5);

    // A burst of mark-reads from one socket is answered in order, moving forward only.
    let burst = join_all(
        (1..=5)
            .rev()
            .chain(1..=5)
            .map(|seq| ada_socket.ack("mark-read", json!({ "chatId": chat, "seq": seq }))),
    )
    .await;
    let positions: Vec<u64> = burst
        .iter()
        .map(|a| a["lastReadSeq"].as_u64().unwrap())
        .collect();
    assert!(positions.iter().all(|&p| p == 5), "{positions:?}");
    assert!(server.store().check_consistency().unwrap().is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_chats_keep_their_shape_with_read_state() {
    let server = start(relaxed_config()).await;
    let (ada, _) = server.register("ada").await;
    let (bob, bob_id) = server.register("bob").await;
    let chat = server.open_chat(&ada, &bob_id).await;
    let bob_socket = server.connect(&bob).await;
    let sent = bob_socket
        .ack("send-message", json!({ "chatId": chat, "text": "hi" }))
        .await;
    assert_eq!(
        sent["message"].get("kind"),
        None,
        "a sent message keeps the seed's shape"
    );
    let listed = chat_in_list(&server, &ada, &chat).await;
    assert_eq!(listed["kind"], "direct");
    assert_eq!(listed["participant"]["_id"], bob_id.as_str());
    assert_eq!(listed["memberCount"], 2);
    assert_eq!(listed["unreadCount"], 1);
    assert_eq!(listed["ownerId"], Value::Null);
    let roles = members(&server, &ada, &chat).await;
    assert!(roles.iter().all(|(_, role)| role == "member"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_scoped_to_contacts_introduces_the_members_of_a_group() {
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
    let (dee, dee_id) = server.register("dee").await;
    let mut tabs = Vec::new();
    for token in [&ada, &bob, &cy, &dee] {
        let mut tab = server.connect(token).await;
        assert_eq!(
            tab.next("online-users", QUIET).await,
            Some(json!({ "userIds": [] })),
            "nobody shares a chat yet"
        );
        tabs.push(tab);
    }
    let online =
        |ids: &[&String]| -> BTreeSet<String> { ids.iter().map(|id| (*id).clone()).collect() };
    let heard = |events: Vec<Value>| -> BTreeSet<String> {
        events
            .iter()
            .map(|e| e["userId"].as_str().unwrap().to_owned())
            .collect()
    };

    // A group of three: each member learns of the two others, and dee of nobody.
    let group = create_group(&server, &ada, "team", &[&bob_id, &cy_id]).await;
    let chat = group["_id"].as_str().unwrap();
    let ids = [&ada_id, &bob_id, &cy_id];
    for (index, tab) in tabs.iter_mut().take(3).enumerate() {
        let others: Vec<&String> = ids
            .iter()
            .copied()
            .filter(|id| **id != *ids[index])
            .collect();
        assert_eq!(
            heard(tab.drain("user-online", QUIET).await),
            online(&others)
        );
    }
    assert!(tabs[3].drain("user-online", QUIET).await.is_empty());

    // dee joins: dee learns of the three, each of them of dee, once.
    let (status, body) = server
        .post(
            &format!("/api/chats/{chat}/members"),
            Some(&ada),
            json!({ "userIds": [dee_id] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        heard(tabs[3].drain("user-online", QUIET).await),
        online(&ids)
    );
    for tab in tabs.iter_mut().take(3) {
        assert_eq!(
            heard(tab.drain("user-online", QUIET).await),
            online(&[&dee_id])
        );
    }
    server.stop().await;
}
