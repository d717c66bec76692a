//! Online backup: `palaver backup` through a running server's admin socket while messages
//! stream in, then `palaver restore` into a new data directory, which must hold every message
//! acknowledged before the backup began, with gapless seqs and consistent indexes. And a
//! backup of a filled database checked whole (30,000 messages; `BACKUP_MESSAGES=1000000` makes
//! it the measurement of docs/deploy.md).

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{relaxed_config, start};
use palaver::storage::{self, DB_FILE, Durability, NewMessage, NewUser, Store};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_palaver");

async fn palaver_ok(dir: &Path, args: &[&str]) -> String {
    let output = tokio::process::Command::new(BIN)
        .args(args)
        .env_clear()
        .env("PALAVER_DATA_DIR", dir)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("palaver runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "palaver {args:?}: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

/// Opens a stopped data directory's database for reading and checking.
fn open_store(dir: &Path) -> (Store, storage::StoreWriter, storage::WriterTask) {
    let db = storage::open_dir(dir).expect("open the restored database");
    storage::start(db, Durability::Immediate).expect("prepare")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_holds_every_message_acknowledged_before_it() {
    let server = Arc::new(start(relaxed_config()).await);
    let (ada, _) = server.register("ada").await;
    let (_, bob_id) = server.register("bob").await;
    let chat = server.open_chat(&ada, &bob_id).await;

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(std::sync::Mutex::new(Vec::<(u64, Instant)>::new()));
    let mut senders = Vec::new();
    for sender in 0..4 {
        let (server, ada, chat) = (Arc::clone(&server), ada.clone(), chat.clone());
        let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
        senders.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let (status, message) = server
                    .post(
                        &format!("/api/messages/chat/{chat}"),
                        Some(&ada),
                        json!({ "text": format!("message {sender}-{n}"), "clientMsgId": format!("{sender}-{n}") }),
                    )
                    .await;
                assert_eq!(status, 201, "{message}");
                let seq = message["seq"].as_u64().unwrap();
                acked.lock().unwrap().push((seq, Instant::now()));
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;

    let backups = tempfile::tempdir().unwrap();
    let file = backups.path().join("under-load.redb");
    let began = Instant::now();
    palaver_ok(server.dir.path(), &["backup", file.to_str().unwrap()]).await;
    let backup_took = began.elapsed();
    // Sends go on a little after the backup, so the stream spans it on both sides.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let before: Vec<u64> = acked
        .iter()
        .filter(|(_, at)| *at < began)
        .map(|(seq, _)| *seq)
        .collect();
    let after = acked.len() - before.len();
    assert!(before.len() >= 20, "a stream was flowing: {}", before.len());
    assert!(after >= 1, "sends went on during and after the backup");

    let restored = tempfile::tempdir().unwrap();
    palaver_ok(restored.path(), &["restore", file.to_str().unwrap()]).await;
    let (store, _writer, _task) = open_store(restored.path());
    assert_eq!(store.check_consistency().unwrap(), Vec::<String>::new());
    let messages = store.messages(&chat, 1..u64::MAX).unwrap();
    let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "seqs gapless from 1");
    let highest = seqs.last().copied().unwrap_or(0);
    for seq in &before {
        assert!(
            *seq <= highest,
            "message {seq}, acknowledged before the backup, is in it"
        );
    }
    eprintln!(
        "backup under load: {} messages acknowledged before it, {} in it, {} in all; took {backup_took:?}",
        before.len(),
        messages.len(),
        acked.len()
    );
    Arc::try_unwrap(server)
        .ok()
        .expect("senders done")
        .stop()
        .await;
}

/// Fills a database through the storage writer (durability off, to fill it quickly), backs it
/// up, and checks the copy whole. 30,000 messages by default: more rows than one of the backup's
/// copying transactions takes, so the copy spans several. The measurement of docs/deploy.md:
/// `BACKUP_MESSAGES=1000000 cargo test --release --test backup -- --nocapture backup_of_many`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_of_many_messages_is_whole() {
    let messages: u64 = std::env::var("BACKUP_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(30_000);
    const CHATS: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let db = storage::open_dir(dir.path()).unwrap();
    let (store, writer, task) = storage::start(db, Durability::None).unwrap();
    let (stop_writer, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(task.run(async {
        let _ = stopped.await;
    }));
    let filled = Instant::now();
    let chats: Vec<String> = (0..CHATS).map(|c| format!("c{c:023}")).collect();
    for (n, chat) in chats.iter().enumerate() {
        // One pair can have one chat only; members are spread over distinct pairs.
        let (a, b) = (format!("m{n:023}"), format!("n{n:023}"));
        for id in [&a, &b] {
            writer
                .create_user(NewUser {
                    id: id.clone(),
                    name: id.clone(),
                    email: format!("{id}@example.com"),
                    avatar: String::new(),
                    password_hash: None,
                    external_id: None,
                    now_ms: 1,
                })
                .await
                .unwrap();
        }
        writer
            .get_or_create_chat(chat.clone(), a, b, 1)
            .await
            .unwrap();
    }
    let mut pending = std::collections::VecDeque::new();
    for n in 0..messages {
        let c = (n % CHATS) as usize;
        let filed = writer
            .file_append(NewMessage {
                id: format!("x{n:023}"),
                chat: chats[c].clone(),
                sender: format!("m{c:023}"),
                text: format!("message number {n}: some ordinary chat text of ordinary length"),
                client_msg_id: Some(format!("cm-{n}")),
                now_ms: 1_700_000_000_000 + n,
            })
            .await
            .unwrap();
        pending.push_back(filed);
        if pending.len() >= 2048 {
            pending.pop_front().unwrap().answer().await.unwrap();
        }
    }
    for filed in pending {
        filed.answer().await.unwrap();
    }
    let fill_took = filled.elapsed();
    let database_bytes = std::fs::metadata(dir.path().join(DB_FILE)).unwrap().len();

    let target = dir.path().join("filled.backup");
    let began = Instant::now();
    let summary = store.backup_to(&target).unwrap();
    let backup_took = began.elapsed();
    let _ = stop_writer.send(());
    running.await.unwrap();
    drop((store, writer));

    let restored = tempfile::tempdir().unwrap();
    palaver::storage::backup::restore(&target, restored.path(), false).unwrap();
    let (copy, _writer, _task) = open_store(restored.path());
    let counted: usize = chats
        .iter()
        .map(|chat| copy.messages(chat, 1..u64::MAX).unwrap().len())
        .sum();
    assert_eq!(counted as u64, messages);
    assert_eq!(copy.check_consistency().unwrap(), Vec::<String>::new());
    eprintln!(
        "{messages} messages: filled in {fill_took:?}; database {database_bytes} bytes; \
         backup {} bytes, {} rows, in {backup_took:?}",
        summary.bytes, summary.rows
    );
}
