//! Benchmarks of the per-message work above storage: presence updates, decoding and validating
//! a `send-message` payload, and serialising a message the way it goes out (`new-message`, the
//! ack, a history page through the service).
//!
//! These are the CPU costs every message pays on the server besides the commit; the load
//! generator's profile (BENCHMARKS.md) says how they weigh against the transport.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use palaver::config::Config;
use palaver::domain::page::Anchor;
use palaver::domain::presence::Presence;
use palaver::domain::validate;
use palaver::server::Server;
use palaver::service::views::{MessageView, PublicUser};
use palaver::storage::{Durability, MessageRecord, NewMessage, NewUser};
use palaver::transport::payload;
use serde_json::{Value, json};

fn presence(c: &mut Criterion) {
    let mut group = c.benchmark_group("presence");
    // 10,000 connections of 5,000 users already online, as on a busy server.
    let mut online = Presence::new(5_000);
    for i in 0..10_000 {
        online.connect(&format!("sock{i:016}"), &format!("user{:020}", i / 2));
    }
    online.flush(0);
    group.bench_function("connect_disconnect_flush_10k_online", |b| {
        b.iter(|| {
            let first = online.connect("sockbench00000000", "userbench");
            let last = online.disconnect("sockbench00000000", 0);
            black_box((first, last, online.flush(0)))
        });
    });
    let mut small = Presence::new(5_000);
    for i in 0..1_000 {
        small.connect(&format!("sock{i:016}"), &format!("user{i:020}"));
    }
    small.flush(0);
    group.bench_function("online_users_snapshot_1k", |b| {
        b.iter(|| black_box(small.announced_except("user00000000000000000007", 10_000)));
    });
    group.finish();
}

fn sample_record(seq: u64) -> MessageRecord {
    MessageRecord {
        id: "65f0000000000000000000aa".into(),
        chat: "c0000000000000000000000a".into(),
        seq,
        sender: "u0000000000000000000000a".into(),
        text: format!("0 1234567 17 {seq} {}", "x".repeat(64)),
        client_msg_id: Some(format!("0-{seq}")),
        created_ms: 1_795_635_442_123,
    }
}

fn sender() -> PublicUser {
    PublicUser {
        id: "u0000000000000000000000a".into(),
        name: "load 17".into(),
        email: "load-123-17@load.test".into(),
        avatar: String::new(),
    }
}

fn payloads(c: &mut Criterion) {
    let mut group = c.benchmark_group("payload");
    group.throughput(Throughput::Elements(1));
    // The frame as it arrives, after the Engine.IO/Socket.IO prefix: parsed into a Value by the
    // Socket.IO layer, then decoded and validated by palaver.
    let frame = json!(["send-message", {
        "chatId": "c0000000000000000000000a",
        "text": format!("0 1234567 17 42 {}", "x".repeat(64)),
        "clientMsgId": "0-42",
    }])
    .to_string();
    group.bench_function("parse_frame", |b| {
        b.iter(|| black_box(serde_json::from_str::<Value>(black_box(&frame)).expect("json")));
    });
    let value = serde_json::from_str::<Value>(&frame).expect("json")[1].clone();
    group.bench_function("decode_and_validate_send", |b| {
        b.iter(|| {
            let command = payload::send(black_box(&value)).expect("valid");
            let text = validate::text(&command.text, 4000).expect("valid text");
            let cmid = validate::client_msg_id(command.client_msg_id.as_deref()).expect("valid id");
            black_box((text, cmid))
        });
    });
    let long = json!({ "chatId": "c0000000000000000000000a", "text": "é".repeat(4000) });
    group.bench_function("decode_and_validate_send_4000_chars", |b| {
        b.iter(|| {
            let command = payload::send(black_box(&long)).expect("valid");
            black_box(validate::text(&command.text, 4000).expect("valid text"))
        });
    });
    group.finish();
}

fn serialisation(c: &mut Criterion) {
    let mut group = c.benchmark_group("serialise");
    group.throughput(Throughput::Elements(1));
    group.bench_function("message_view_from_record", |b| {
        b.iter(|| black_box(MessageView::new(sample_record(black_box(42)), sender())));
    });
    let view = MessageView::new(sample_record(42), sender());
    group.bench_function("new_message_json", |b| {
        b.iter(|| black_box(serde_json::to_string(black_box(&view)).expect("json")));
    });
    group.bench_function("ack_json", |b| {
        // The ack built through a `serde_json::Value` (`{ ok, message }`), for comparison.
        b.iter(|| {
            let mut body =
                json!({ "message": serde_json::to_value(black_box(&view)).expect("json") });
            body["ok"] = Value::Bool(true);
            black_box(serde_json::to_string(&body).expect("json"))
        });
    });
    group.bench_function("ack_json_typed", |b| {
        // The same JSON the way the socket handler builds it (src/transport/socket.rs `Accepted`).
        #[derive(serde::Serialize)]
        struct Accepted<T> {
            ok: bool,
            #[serde(flatten)]
            body: T,
        }
        #[derive(serde::Serialize)]
        struct SentAck<'a> {
            message: &'a MessageView,
        }
        b.iter(|| {
            let ack = Accepted {
                ok: true,
                body: SentAck {
                    message: black_box(&view),
                },
            };
            black_box(serde_json::to_string(&ack).expect("json"))
        });
    });
    group.finish();
}

/// A history page through the service (membership check, read, views, JSON) from a chat of
/// 100,000 messages.
fn history_page(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = Config {
        data_dir: dir.path().to_owned(),
        jwt_secret: Some("bench-secret-bench-secret-bench-s".into()),
        ..Config::default()
    };
    let service = rt
        .block_on(
            Server::builder(config)
                .durability(Durability::None)
                .seed([9; 32])
                .writer_on_callers_runtime()
                .build(),
        )
        .expect("service");
    let (app, writer) = (&service.app, &service.writer);
    let (a, b_id) = ("u0000000000000000000000a", "u0000000000000000000000b");
    let chat = rt.block_on(async {
        for (id, email) in [(a, "a@bench.test"), (b_id, "b@bench.test")] {
            writer
                .create_user(NewUser {
                    id: id.into(),
                    name: id.into(),
                    email: email.into(),
                    avatar: String::new(),
                    password_hash: None,
                    external_id: None,
                    now_ms: 1,
                })
                .await
                .expect("user");
        }
        let chat = writer
            .get_or_create_chat("c0000000000000000000000a".into(), a.into(), b_id.into(), 1)
            .await
            .expect("chat")
            .id;
        let mut n = 0u64;
        for _ in 0..200 {
            let batch = (0..500).map(|_| {
                n += 1;
                let sender = if n.is_multiple_of(2) { a } else { b_id };
                writer.append_message(NewMessage {
                    id: format!("m{n:023}"),
                    chat: chat.clone(),
                    sender: sender.into(),
                    text: format!("0 1234567 17 {n} {}", "x".repeat(64)),
                    client_msg_id: Some(format!("0-{n}")),
                    now_ms: 1_795_635_442_123 + n,
                })
            });
            for outcome in tokio::task::unconstrained(futures_util::future::join_all(batch)).await {
                outcome.expect("append");
            }
        }
        chat
    });
    let mut group = c.benchmark_group("history_100k");
    group.throughput(Throughput::Elements(100));
    group.bench_function("service_page_newest_100_json", |bench| {
        bench.iter(|| {
            let page = app
                .history(a, &chat, Anchor::Newest, None)
                .expect("history");
            black_box(serde_json::to_vec(&page).expect("json"))
        });
    });
    group.finish();
}

criterion_group!(benches, presence, payloads, serialisation, history_page);
criterion_main!(benches);
