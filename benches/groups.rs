//! Benchmarks of group chats beside the 1:1 ones: a send to a group of 20 delivered to every
//! member's socket, `mark-read`s coalescing in the writer's batch, and the chat list with unread
//! counts of a user in 50 groups.
//!
//! - `group_send`: a member's `send` through the service of a server serving on loopback, until
//!   every member's socket (one `palaver-client` per member, the sender's included: the server
//!   echoes to the sender's sockets) has received the `new-message`. That is the append, its
//!   commit, the commit feed, the fan-out to the chat's room and the members' rooms, and 2 or 20
//!   WebSocket frames written and read. The database is not durable (`Durability::None`), so the
//!   disk's fsync, the same for both, does not hide the per-member cost.
//! - `mark_read`: 100 mark-reads of one member moving through 100 new messages, awaited one by
//!   one (a commit each) or filed together (one batch, coalesced into one write of the read
//!   position), with fsync (`Durability::Immediate`): what a client scrolling through a chat costs.
//! - `chat_list`: `GET /api/chats`'s service call and its JSON for a user in 50 groups of 20
//!   (each with messages, system messages and a read position), against 50 1:1 chats.
//!
//! `BENCH_DIR` chooses where the databases live (a temporary directory by default).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::future::join_all;
use palaver::config::Config;
use palaver::server::{Running, Server};
use palaver::service::{App, SendMessage};
use palaver::storage::{Durability, UserRecord};
use palaver_client::{Client, Event};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// Members of the benchmarked group; its 1:1 counterpart has 2.
const GROUP_SIZE: usize = 20;
/// Groups (and 1:1 chats) in the chat list.
const LISTED_CHATS: usize = 50;
/// Mark-reads per measured run of `mark_read`.
const MARKS: u64 = 100;
/// How long a member's socket may take to receive a message before the benchmark fails.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn temp_dir() -> tempfile::TempDir {
    match std::env::var_os("BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .expect("temporary directory")
}

/// A server on loopback with its own data directory, and the users registered on it.
struct Fixture {
    running: Running,
    addr: std::net::SocketAddr,
    users: Vec<(String, UserRecord)>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start(durability: Durability, users: usize) -> Self {
        let dir = temp_dir();
        let config = Config {
            data_dir: dir.path().to_owned(),
            jwt_secret: Some("bench-secret-bench-secret-bench-s".into()),
            send_rate_per_sec: 1_000_000,
            send_burst: 1_000_000,
            registrations_per_address: palaver::limits::REGISTRATIONS_PER_ADDRESS_CEILING,
            web: false,
            ..Config::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let running = Server::builder(config)
            .durability(durability)
            .seed([5; 32])
            .start(listener)
            .await
            .expect("start server");
        let app = Arc::clone(running.app());
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut registered = Vec::with_capacity(users);
        for i in 0..users {
            let (token, view) = app
                .register(
                    localhost,
                    &format!("member {i}"),
                    &format!("member-{i}@bench.test"),
                    "bench-password",
                )
                .await
                .expect("register");
            let record = running
                .store()
                .user(&view.id)
                .expect("read")
                .expect("registered");
            registered.push((token, record));
        }
        Self {
            running,
            addr,
            users: registered,
            _dir: dir,
        }
    }

    async fn stop(self) {
        self.running.stop();
        self.running.exited().await;
    }

    fn app(&self) -> &App {
        self.running.app()
    }

    fn id(&self, user: usize) -> String {
        self.users[user].1.id.clone()
    }

    /// A group of `members` (the first its owner) named `name`.
    async fn group(&self, name: &str, members: &[usize]) -> String {
        let others = members[1..].iter().map(|&m| self.id(m)).collect();
        self.app()
            .create_group(&self.id(members[0]), name, others)
            .await
            .expect("create group")
            .id
    }

    async fn direct(&self, a: usize, b: usize) -> String {
        self.app()
            .open_chat_with(&self.id(a), &self.id(b))
            .await
            .expect("open chat")
            .id
    }

    async fn send(&self, sender: usize, chat: &str, text: String) {
        self.app()
            .send(
                &self.users[sender].1,
                SendMessage {
                    chat_id: chat.to_owned(),
                    text,
                    client_msg_id: None,
                },
            )
            .await
            .expect("send");
    }

    async fn connect(&self, user: usize) -> (Client, mpsc::Receiver<Event>) {
        let authority = self.addr.to_string();
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        palaver_client::connect(stream, &authority, &self.users[user].0)
            .await
            .expect("socket handshake")
    }
}

/// Waits for the `new-message` whose text is `text` on one socket, skipping other events.
async fn delivered(events: &mut mpsc::Receiver<Event>, text: &str) {
    let wanted = async {
        while let Some(event) = events.recv().await {
            if event.name == "new-message" && event.data()["text"] == text {
                return;
            }
        }
        panic!("socket closed before the message arrived");
    };
    tokio::time::timeout(DELIVERY_TIMEOUT, wanted)
        .await
        .expect("delivered in time");
}

fn group_send(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("group_send");
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(6));
    let fixture = rt.block_on(Fixture::start(Durability::None, GROUP_SIZE));
    let members: Vec<usize> = (0..GROUP_SIZE).collect();
    let chats = rt.block_on(async {
        [
            ("direct_2", fixture.direct(0, 1).await, 2),
            (
                "group_20",
                fixture.group("bench group", &members).await,
                GROUP_SIZE,
            ),
        ]
    });
    let mut sockets = rt.block_on(join_all(members.iter().map(|&m| fixture.connect(m))));
    let mut n = 0u64;
    for (name, chat, size) in &chats {
        group.throughput(Throughput::Elements(*size as u64));
        group.bench_function(
            BenchmarkId::new("send_until_every_member_has_it", name),
            |b| {
                b.iter(|| {
                    n += 1;
                    let text = format!("bench message {n} {}", "x".repeat(64));
                    rt.block_on(async {
                        fixture.send(0, chat, text.clone()).await;
                        let text = text.as_str();
                        join_all(
                            sockets[..*size]
                                .iter_mut()
                                .map(|(_, events)| delivered(events, text)),
                        )
                        .await;
                    });
                });
            },
        );
    }
    group.finish();
    drop(sockets);
    rt.block_on(fixture.stop());
}

fn mark_read(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("mark_read");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(MARKS));
    let fixture = rt.block_on(Fixture::start(Durability::Immediate, 3));
    let chat = rt.block_on(fixture.group("reads", &[0, 1, 2]));
    let reader = fixture.id(2);
    let mut n = 0u64;
    for coalesced in [false, true] {
        let name = if coalesced {
            "100_filed_together"
        } else {
            "100_one_by_one"
        };
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                let mut spent = Duration::ZERO;
                for _ in 0..iterations {
                    spent += rt.block_on(async {
                        // 100 new messages (not measured), then the reader marks each read.
                        let first = fixture
                            .app()
                            .chat_of(&reader, &chat)
                            .expect("chat")
                            .last_message
                            .map_or(0, |m| m.seq)
                            + 1;
                        join_all((0..MARKS).map(|_| {
                            n += 1;
                            fixture.send(1, &chat, format!("to read {n}"))
                        }))
                        .await;
                        let seqs = first..first + MARKS;
                        let started = Instant::now();
                        mark_all(fixture.app(), &reader, &chat, seqs, coalesced).await;
                        started.elapsed()
                    });
                }
                spent
            });
        });
    }
    group.finish();
    rt.block_on(fixture.stop());
}

/// Marks `seqs` read one after another: each awaited before the next, or all filed first.
async fn mark_all(
    app: &App,
    reader: &str,
    chat: &str,
    seqs: std::ops::Range<u64>,
    coalesced: bool,
) {
    let last = seqs.end - 1;
    if coalesced {
        let mut filed = Vec::with_capacity(MARKS as usize);
        for seq in seqs.clone() {
            filed.push(app.file_mark_read(reader, chat, seq).await);
        }
        let answers = join_all(filed.into_iter().map(|f| f.outcome())).await;
        assert_eq!(answers, seqs.map(Ok).collect::<Vec<_>>());
    } else {
        for seq in seqs {
            assert_eq!(app.mark_read(reader, chat, seq).await, Ok(seq));
        }
    }
    let position = app.chat_of(reader, chat).expect("chat").last_read_seq;
    assert_eq!(position, last);
}

fn chat_list(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("chat_list");
    group.sample_size(30);
    group.throughput(Throughput::Elements(LISTED_CHATS as u64));
    // User 0 is in 50 groups of 20 (the others rotate through them), user 1 in 50 1:1 chats.
    let pool = 2 + LISTED_CHATS;
    let fixture = rt.block_on(Fixture::start(Durability::None, pool));
    rt.block_on(async {
        for g in 0..LISTED_CHATS {
            let members: Vec<usize> = std::iter::once(0)
                .chain((0..GROUP_SIZE - 1).map(|k| 2 + (g + k) % LISTED_CHATS))
                .collect();
            let chats = [
                (
                    0,
                    fixture.group(&format!("group {g}"), &members).await,
                    members[1],
                ),
                (1, fixture.direct(1, 2 + g).await, 2 + g),
            ];
            for (viewer, chat, other) in chats {
                for k in 0..10 {
                    fixture.send(other, &chat, format!("{g} message {k}")).await;
                }
                // A read position part way, so every chat has something unread.
                let app = fixture.app();
                app.mark_read(&fixture.id(viewer), &chat, 4)
                    .await
                    .expect("mark");
            }
        }
    });
    for (name, viewer) in [("50_direct", 1), ("50_groups_of_20", 0)] {
        let viewer = fixture.id(viewer);
        let listed = fixture.app().chats_of(&viewer).expect("chats");
        assert_eq!(listed.len(), LISTED_CHATS);
        assert!(listed.iter().all(|c| c.unread_count == 6), "{name}");
        group.bench_function(name, |b| {
            b.iter(|| {
                let chats = fixture.app().chats_of(&viewer).expect("chats");
                std::hint::black_box(serde_json::to_vec(&chats).expect("json"))
            });
        });
    }
    group.finish();
    rt.block_on(fixture.stop());
}

criterion_group!(benches, group_send, mark_read, chat_list);
criterion_main!(benches);
