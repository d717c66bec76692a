//! `palaver export` and `palaver import`: JSON Lines with a version line first; export, import,
//! export gives the same file; an export through a running server equals one of the stopped
//! data directory; a non-empty data directory and broken files are refused.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::{relaxed_config, start};
use palaver::storage::{self, DB_FILE, Durability};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_palaver");

async fn palaver(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(BIN)
        .args(args)
        .env_clear()
        .env("PALAVER_DATA_DIR", dir)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("palaver runs");
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

async fn palaver_ok(dir: &Path, args: &[&str]) -> String {
    let (ok, stdout, stderr) = palaver(dir, args).await;
    assert!(ok, "palaver {args:?}: {stderr}");
    stdout
}

fn lines(export: &str) -> Vec<Value> {
    export
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_import_export_gives_the_same_file() {
    let server = start(relaxed_config()).await;
    let (ada, _) = server.register("ada").await;
    let (bob_token, bob) = server.register("bob").await;
    let (cy, _) = server.register("cy").await;
    let chat = server.open_chat(&ada, &bob).await;
    let other = server.open_chat(&cy, &bob).await;
    for n in 0..30 {
        let (token, chat) = if n % 3 == 0 {
            (&cy, &other)
        } else {
            (&ada, &chat)
        };
        let body =
            json!({ "text": format!("hello \"{n}\" ünïcode\n😀"), "clientMsgId": format!("m{n}") });
        let (status, _) = server
            .post(&format!("/api/messages/chat/{chat}"), Some(token), body)
            .await;
        assert_eq!(status, 201);
    }
    let group = fill_a_group(&server, &ada, &bob_token, &bob, &cy).await;
    let chats_before = (
        server.get("/api/chats", Some(&ada)).await,
        server.get("/api/chats", Some(&bob_token)).await,
        server
            .get(&format!("/api/chats/{group}/members"), Some(&ada))
            .await,
    );
    let dir = server.dir.path().to_owned();
    palaver_ok(&dir, &["user", "disable", "cy@example.com"]).await;
    let online = palaver_ok(&dir, &["export", "--include-secrets"]).await;
    let (_, kept) = server.stop_keeping_data().await;

    // The stopped server's last handle may outlive `stop`: export a copy of its file.
    let stopped = tempfile::tempdir().unwrap();
    std::fs::copy(kept.path().join(DB_FILE), stopped.path().join(DB_FILE)).unwrap();
    let first = palaver_ok(stopped.path(), &["export", "--include-secrets"]).await;
    assert_eq!(
        online, first,
        "an export through the server equals the stopped directory's"
    );

    let parsed = lines(&first);
    assert_eq!(parsed[0]["type"], "version");
    assert_eq!(parsed[0]["secrets"], true);
    let count = |kind: &str| parsed.iter().filter(|l| l["type"] == kind).count();
    assert_eq!(
        (
            count("secret"),
            count("user"),
            count("chat"),
            count("member"),
            count("message"),
        ),
        (1, 3, 3, 6, 35)
    );
    let group_line = parsed
        .iter()
        .find(|l| l["type"] == "chat" && l["id"] == group.as_str())
        .unwrap();
    assert_eq!(group_line["group"], "the team");
    assert_eq!(
        parsed.iter().filter(|l| l["event"].is_object()).count(),
        2,
        "the rename and the removal are system messages"
    );
    assert!(
        parsed
            .iter()
            .any(|l| l["type"] == "read" && l["chat"] == group.as_str() && l["lastReadSeq"] == 2),
        "bob's read position"
    );
    assert!(
        parsed
            .iter()
            .filter(|l| l["type"] == "user")
            .all(|u| u["passwordHash"].is_string())
    );
    let cy_line = parsed
        .iter()
        .find(|l| l["email"] == "cy@example.com")
        .unwrap();
    assert!(cy_line["disabledMs"].is_u64());

    let file = stopped.path().join("export.jsonl");
    std::fs::write(&file, &first).unwrap();
    let imported = tempfile::tempdir().unwrap();
    let done = palaver_ok(imported.path(), &["import", file.to_str().unwrap()]).await;
    assert!(
        done.contains("imported 3 users, 3 chats, 35 messages"),
        "{done}"
    );
    let second = palaver_ok(imported.path(), &["export", "--include-secrets"]).await;
    assert_eq!(
        first, second,
        "export, import, export round-trips byte for byte"
    );

    let db = storage::open_dir(imported.path()).unwrap();
    let (store, _writer, _task) = storage::start(db, Durability::Immediate).unwrap();
    assert_eq!(store.check_consistency().unwrap(), Vec::<String>::new());
    drop((store, _writer, _task));

    // The imported directory serves: passwords, the secret and the disabled flag came along.
    let server = common::start_in(relaxed_config(), imported).await;
    let (status, _) = server
        .post(
            "/api/auth/login",
            None,
            json!({ "email": "ada@example.com", "password": "password123" }),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .post(
            "/api/auth/login",
            None,
            json!({ "email": "cy@example.com", "password": "password123" }),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(
        server.get("/api/auth/me", Some(&ada)).await.0,
        200,
        "tokens survive with the secret"
    );
    let chats_after = (
        server.get("/api/chats", Some(&ada)).await,
        server.get("/api/chats", Some(&bob_token)).await,
        server
            .get(&format!("/api/chats/{group}/members"), Some(&ada))
            .await,
    );
    assert_eq!(
        chats_before, chats_after,
        "chat lists (unread counts, read positions, groups) and members survive the move"
    );
    server.stop().await;

    let plain = palaver_ok(stopped.path(), &["export"]).await;
    let plain = lines(&plain);
    assert_eq!(plain[0]["secrets"], false);
    assert!(
        plain
            .iter()
            .all(|l| l.get("passwordHash").is_none() && l["type"] != "secret")
    );
}

/// A group of ada (owner), bob and cy with messages, a rename, cy removed and bob's read
/// position at 2; its id.
async fn fill_a_group(
    server: &common::TestServer,
    ada: &str,
    bob_token: &str,
    bob: &str,
    cy: &str,
) -> String {
    let cy_id = server.get("/api/auth/me", Some(cy)).await.1["_id"].clone();
    let (status, group) = server
        .post(
            "/api/chats",
            Some(ada),
            json!({ "name": "team", "memberIds": [bob, cy_id] }),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let id = group["_id"].as_str().unwrap().to_owned();
    for n in 0..3 {
        let body = json!({ "text": format!("to the team {n}") });
        let (status, _) = server
            .post(&format!("/api/messages/chat/{id}"), Some(ada), body)
            .await;
        assert_eq!(status, 201);
    }
    let renamed = json!({ "name": "the team" });
    assert_eq!(
        server
            .patch(&format!("/api/chats/{id}"), Some(ada), renamed)
            .await
            .0,
        200
    );
    let cy_id = cy_id.as_str().unwrap();
    let removed = server
        .delete(&format!("/api/chats/{id}/members/{cy_id}"), Some(ada))
        .await;
    assert_eq!(removed.0, 204);
    let read = server
        .post(
            &format!("/api/chats/{id}/read"),
            Some(bob_token),
            json!({ "seq": 2 }),
        )
        .await;
    assert_eq!(read, (200, json!({ "ok": true, "lastReadSeq": 2 })));
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_refuses_a_non_empty_directory_and_broken_files() {
    let source = tempfile::tempdir().unwrap();
    palaver_ok(
        source.path(),
        &[
            "user",
            "add",
            "--name",
            "Ann",
            "--email",
            "ann@example.com",
            "--password",
            "password123",
        ],
    )
    .await;
    let out = source.path().join("export.jsonl");
    palaver_ok(source.path(), &["export", "--out", out.to_str().unwrap()]).await;
    let exported = std::fs::read_to_string(&out).unwrap();
    assert!(exported.starts_with("{\"type\":\"version\""), "{exported}");

    let (ok, _, stderr) = palaver(source.path(), &["import", out.to_str().unwrap()]).await;
    assert!(!ok && stderr.contains("already has accounts"), "{stderr}");

    let broken = source.path().join("broken.jsonl");
    let version = exported.lines().next().unwrap();
    for (body, expected) in [
        ("{\"type\":\"user\"}\n".to_owned(), "line 1"),
        (
            format!(
                "{version}\n{{\"type\":\"chat\",\"id\":\"c1\",\"createdMs\":1,\"lastSeq\":2,\"lastMessageMs\":1}}\n{{\"type\":\"message\",\"chat\":\"c1\",\"seq\":2,\"id\":\"x\",\"sender\":\"u\",\"text\":\"t\",\"clientMsgId\":null,\"createdMs\":1}}\n"
            ),
            "line 3: chat c1: seq 2 where 1 was due",
        ),
        (
            format!("{version}\n{{\"type\":\"member\",\"chat\":\"nope\",\"user\":\"u\"}}\n"),
            "line 2: no chat nope",
        ),
        (
            format!(
                "{version}\n{{\"type\":\"chat\",\"id\":\"c1\",\"createdMs\":1,\"lastSeq\":1,\"lastMessageMs\":1}}\n{{\"type\":\"message\",\"chat\":\"c1\",\"seq\":1,\"id\":\"x\",\"sender\":\"u\",\"text\":\"t\",\"clientMsgId\":null,\"createdMs\":1,\"event\":{{\"type\":\"left\",\"userId\":\"u\",\"by\":\"u\"}}}}\n"
            ),
            "line 3: chat c1: message 1 from an unknown sender",
        ),
        (
            format!(
                "{version}\n{{\"type\":\"chat\",\"id\":\"c1\",\"createdMs\":1,\"lastSeq\":0,\"lastMessageMs\":1}}\n{{\"type\":\"read\",\"user\":\"u\",\"chat\":\"c1\",\"lastReadSeq\":0}}\n"
            ),
            "line 3: no user u",
        ),
    ] {
        std::fs::write(&broken, body).unwrap();
        let empty = tempfile::tempdir().unwrap();
        let (ok, _, stderr) = palaver(empty.path(), &["import", broken.to_str().unwrap()]).await;
        assert!(!ok && stderr.contains(expected), "{expected}: {stderr}");
        assert!(
            !empty.path().join(DB_FILE).exists(),
            "a failed import leaves no database"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_of_version_1_imports_with_everything_read_so_far() {
    let dir = tempfile::tempdir().unwrap();
    let user = |id: &str| {
        json!({ "type": "user", "id": id, "name": id, "email": format!("{id}@example.com"),
            "avatar": "", "externalId": null, "createdMs": 1, "updatedMs": 1,
            "tokenGeneration": 0, "tokensRevokedMs": 0, "disabledMs": null })
    };
    let file_lines = [
        json!({ "type": "version", "export": 1, "format": 1, "secrets": false }),
        user("u1"),
        user("u2"),
        json!({ "type": "chat", "id": "c1", "createdMs": 1, "lastSeq": 2, "lastMessageMs": 2 }),
        json!({ "type": "member", "chat": "c1", "user": "u1" }),
        json!({ "type": "member", "chat": "c1", "user": "u2" }),
        json!({ "type": "message", "chat": "c1", "seq": 1, "id": "m1", "sender": "u1",
            "text": "hi", "clientMsgId": null, "createdMs": 1 }),
        json!({ "type": "message", "chat": "c1", "seq": 2, "id": "m2", "sender": "u2",
            "text": "hello", "clientMsgId": null, "createdMs": 2 }),
    ];
    let file = dir.path().join("v1.jsonl");
    let text: String = file_lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, text).unwrap();
    let data = dir.path().join("data");
    palaver_ok(&data, &["import", file.to_str().unwrap()]).await;
    let exported = lines(&palaver_ok(&data, &["export"]).await);
    assert_eq!(exported[0]["export"], 2);
    let reads: Vec<(&str, u64)> = exported
        .iter()
        .filter(|l| l["type"] == "read")
        .map(|l| {
            (
                l["user"].as_str().unwrap(),
                l["lastReadSeq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reads,
        [("u1", 2), ("u2", 2)],
        "like a database of format 1 opened by this build: unread counts start at the move"
    );
}
