//! A record that does not decode fails only the requests that touch it: the server answers
//! those with its failure messages (REST 503 `Storage unavailable`, the socket event's own
//! refusal) and keeps serving every other chat, and the writer keeps committing.

mod common;

use common::{relaxed_config, start, start_in};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::json;

/// The messages table as palaver lays it out: (chat id, seq) → record.
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");

/// Overwrites the record of message `seq` of `chat` with bytes that do not decode.
fn corrupt_message(dir: &std::path::Path, chat: &str, seq: u64) {
    let db = redb::Database::open(dir.join(palaver::storage::DB_FILE)).expect("open the file");
    let tx = db.begin_write().unwrap();
    {
        let mut messages = tx.open_table(MESSAGES).unwrap();
        assert!(
            messages.get((chat, seq)).unwrap().is_some(),
            "the message exists"
        );
        messages
            .insert((chat, seq), [1u8, 0xff, 0xff].as_slice())
            .unwrap();
    }
    tx.commit().unwrap();
    let read = db.begin_read().unwrap();
    let table = read.open_table(MESSAGES).unwrap();
    assert_eq!(
        table.get((chat, seq)).unwrap().unwrap().value(),
        [1u8, 0xff, 0xff]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_fails_its_requests_and_nothing_else() {
    let server = start(relaxed_config()).await;
    let (ada, _) = server.register("ada").await;
    let (_, bob_id) = server.register("bob").await;
    let (_, carol_id) = server.register("carol").await;
    let with_bob = server.open_chat(&ada, &bob_id).await;
    let with_carol = server.open_chat(&ada, &carol_id).await;
    let socket = server.connect(&ada).await;
    let sent = socket
        .ack(
            "send-message",
            json!({ "chatId": with_bob, "text": "first", "clientMsgId": "c-1" }),
        )
        .await;
    assert_eq!(sent["ok"], true, "{sent}");
    drop(socket);
    let (_, old_dir) = server.stop_keeping_data().await;
    // The stopped in-process server's last database handle may outlive `stop` in a socket task,
    // so the file is corrupted, and served again, as a copy.
    let dir = tempfile::tempdir().unwrap();
    let file = palaver::storage::DB_FILE;
    std::fs::copy(old_dir.path().join(file), dir.path().join(file)).unwrap();
    corrupt_message(dir.path(), &with_bob, 1);

    let server = start_in(relaxed_config(), dir).await;
    let socket = server.connect(&ada).await;
    // A retry makes the writer read the corrupt original: only that request fails.
    let retry = socket
        .ack(
            "send-message",
            json!({ "chatId": with_bob, "text": "first", "clientMsgId": "c-1" }),
        )
        .await;
    assert_eq!(retry["ok"], false, "{retry}");
    assert_eq!(retry["error"], "Failed to send message");
    // History through the corrupt record is 503, never "not found".
    let (status, body) = server
        .get(&format!("/api/messages/chat/{with_bob}"), Some(&ada))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["message"], "Storage unavailable");
    let sync = socket
        .ack("sync", json!({ "chatId": with_bob, "afterSeq": 0 }))
        .await;
    assert_eq!(sync["error"], "Storage unavailable", "{sync}");
    // The writer goes on: the same chat takes new messages, and so does every other chat.
    for (chat, text) in [(&with_bob, "second"), (&with_carol, "hello carol")] {
        let ack = socket
            .ack("send-message", json!({ "chatId": chat, "text": text }))
            .await;
        assert_eq!(ack["ok"], true, "{ack}");
    }
    let (status, page) = server
        .get(&format!("/api/messages/chat/{with_carol}"), Some(&ada))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page[0]["text"], "hello carol");
    let (status, _) = server.get("/health", None).await;
    assert_eq!(status, 200);
    drop(socket);
    let exit = server.stop().await;
    assert!(
        matches!(exit, palaver::server::ServerExit::Stopped),
        "{exit:?}"
    );
}

#[test]
fn a_corrupt_record_names_its_table_and_key() {
    let error = palaver::storage::StoreError::corrupt("messages", "(c1, 7)")(
        palaver::storage::records::DecodeError::Empty,
    );
    assert_eq!(
        error.to_string(),
        "corrupt record in table messages at key (c1, 7): empty record"
    );
    assert!(error.is_per_request());
}
