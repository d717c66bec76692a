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
    let (_, bob) = server.register("bob").await;
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
            count("message")
        ),
        (1, 3, 2, 4, 30)
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
        done.contains("imported 3 users, 2 chats, 30 messages"),
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
