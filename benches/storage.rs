//! Storage benchmarks: appending messages through the group-committing writer, in batches of
//! 1, 16 and 256 under `Durability::Immediate` (fsync per commit) and `None`, to one chat and
//! spread over 100 chats, and reading a history page from a chat of 100,000 messages.
//!
//! The database is a real file in a temporary directory (`BENCH_DIR` chooses where), because
//! what `Immediate` costs is the disk's fsync. The writer runs on the same current-thread
//! runtime as the requests, so a batch of N requests queued together is committed as exactly
//! one transaction of N, which is what group commit does under load.

use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::future::join_all;
use palaver::storage::{self, AppendOutcome, Durability, NewMessage, NewUser, Store, StoreWriter};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A database with `chats` 1:1 chats (two users each), and the writer running on `rt`.
struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    writer: StoreWriter,
    /// (chat id, sender) of each chat.
    chats: Vec<(String, String)>,
    _stop: oneshot::Sender<()>,
}

fn fixture(rt: &Runtime, durability: Durability, chats: usize) -> Fixture {
    let dir = match std::env::var_os("BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .expect("temporary directory");
    let db = storage::open_dir(dir.path()).expect("open database");
    let (store, writer, task) = storage::start(db, durability).expect("start storage");
    let (stop, stopped) = oneshot::channel::<()>();
    rt.spawn(task.run(async {
        let _ = stopped.await;
    }));
    let chats = rt.block_on(async {
        let mut made = Vec::new();
        for c in 0..chats {
            let (sender, other) = (format!("u{c:022}a"), format!("u{c:022}b"));
            for id in [&sender, &other] {
                writer
                    .create_user(NewUser {
                        id: id.clone(),
                        name: id.clone(),
                        email: format!("{id}@bench.test"),
                        avatar: String::new(),
                        password_hash: None,
                        external_id: None,
                        now_ms: 1,
                    })
                    .await
                    .expect("create user");
            }
            let chat = writer
                .get_or_create_chat(format!("c{c:023}"), sender.clone(), other, 1)
                .await
                .expect("create chat")
                .id;
            made.push((chat, sender));
        }
        made
    });
    Fixture {
        _dir: dir,
        store,
        writer,
        chats,
        _stop: stop,
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A message like the load generator's: about 100 bytes of text and a clientMsgId.
/// Round-robin over the fixture's chats.
fn message(f: &Fixture) -> NewMessage {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let (chat, sender) = &f.chats[n as usize % f.chats.len()];
    NewMessage {
        id: format!("m{n:023}"),
        chat: chat.clone(),
        sender: sender.clone(),
        text: format!("0 {n} 0 {n} {}", "x".repeat(64)),
        client_msg_id: Some(format!("b-{n}")),
        now_ms: 1_795_635_442_123 + n,
    }
}

/// Queues `n` appends together and waits for all: one commit of `n` requests.
async fn append_batch(f: &Fixture, n: usize) {
    // Unconstrained: tokio's cooperative budget would otherwise make some sends yield, letting
    // the writer start on a partial batch.
    let appended = tokio::task::unconstrained(join_all(
        (0..n).map(|_| f.writer.append_message(message(f))),
    ))
    .await;
    for outcome in appended {
        assert!(matches!(outcome, Ok(AppendOutcome::Appended(_))));
    }
}

fn append(c: &mut Criterion) {
    append_group(c, "append", 1, &[1, 16, 256]);
}

/// The same batches spread over 100 chats, as under the load generator: each chat touched
/// dirties its own B-tree leaves, so a commit writes (and syncs) more pages than for one chat.
fn append_spread(c: &mut Criterion) {
    append_group(c, "append_100_chats", 100, &[16, 256]);
}

/// Appends in batches of each size, with and without fsync, over `chats` chats.
fn append_group(c: &mut Criterion, name: &str, chats: usize, batches: &[usize]) {
    let rt = runtime();
    let mut group = c.benchmark_group(name);
    group.sample_size(20);
    group.warm_up_time(std::time::Duration::from_secs(1));
    group.measurement_time(std::time::Duration::from_secs(4));
    for (name, durability) in [
        ("immediate", Durability::Immediate),
        ("none", Durability::None),
    ] {
        let f = fixture(&rt, durability, chats);
        for &batch in batches {
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, &batch| {
                b.iter(|| rt.block_on(append_batch(&f, batch)));
            });
        }
    }
    group.finish();
}

/// Messages in the chat the history benchmark reads.
const HISTORY_MESSAGES: u64 = 100_000;

fn history(c: &mut Criterion) {
    let rt = runtime();
    // Seeded without fsync: only the reads are measured.
    let f = fixture(&rt, Durability::None, 1);
    let chat = f.chats[0].0.clone();
    for _ in 0..HISTORY_MESSAGES / 500 {
        rt.block_on(append_batch(&f, 500));
    }
    let last = f.store.chat(&chat).expect("read").expect("chat").last_seq;
    assert_eq!(last, HISTORY_MESSAGES);
    let mut group = c.benchmark_group("history_100k");
    group.throughput(Throughput::Elements(100));
    group.bench_function("newest_100", |b| {
        b.iter(|| {
            let page = f.store.messages(&chat, last - 99..last + 1).expect("page");
            assert_eq!(page.len(), 100);
            page
        });
    });
    group.bench_function("middle_100", |b| {
        b.iter(|| {
            let page = f.store.messages(&chat, 50_000..50_100).expect("page");
            assert_eq!(page.len(), 100);
            page
        });
    });
    group.finish();
}

criterion_group!(benches, append, append_spread, history);
criterion_main!(benches);
