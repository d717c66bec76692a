//! Soak and abuse: the real `palaver` binary on loopback under hostile load for a bounded time,
//! while a control group of well-behaved users keeps chatting and is measured.
//!
//! `cargo bench --bench soak -- --secs 600 --connections 10000` starts `palaver serve` (the
//! release build cargo made for this bench) on a free loopback port with a fresh data directory,
//! raises the open-file limit of this process (and so of the server it starts) with `prlimit`,
//! and runs, all at once:
//! - a crowd of idle connections up to `--connections` in total, spread over many users (one
//!   connection each for some, so that their churn flips presence), with connect/disconnect
//!   storms: every `--storm-every` seconds a tenth of the crowd drops and reconnects at once;
//! - slow readers: authenticated WebSockets that never read their socket, members of the chats
//!   the flooder writes to, replaced as the server drops them;
//! - garbage: WebSockets that send random text and binary frames, broken Socket.IO packets,
//!   deeply nested JSON, frames over the 64 KiB limit; raw TCP junk; oversize and malformed REST
//!   bodies; oversize and empty messages on an authenticated socket;
//! - a flooder: one user sending `send-message` and `typing` as fast as acks come back;
//! - connections that never speak: `--silent` that send nothing and `--slow-heads` that send a
//!   request head one header line every 5 s, each replaced as soon as the server closes it; each
//!   must be closed within its bound (the server's first-byte and request-head timeouts) plus
//!   `NEVER_SPEAKING_SLACK`;
//! - sync flooders: sockets of one user that never read and ask `sync` for a chat of
//!   escape-heavy messages (each answer ~256 KiB) 50 times a second, reconnecting when dropped;
//! - a socket hoarder: one user opening sockets until 300 are asked for, past the per-user cap;
//! - the control group: pairs of users, each sending one message a second with a clientMsgId and
//!   timing the ack, and counting the partner's `new-message` deliveries.
//!
//! It samples the server's RSS, open fds and threads every `--sample-every` seconds. At the end it
//! checks through REST history that every acknowledged control message is stored at the seq its
//! ack named, stops the server with SIGTERM and expects a clean exit, and prints a Markdown report
//! (also written to `--report FILE` when given). It exits non-zero if anything acknowledged was
//! lost, the server died or answered a 5xx, the control group lost messages, or a connection
//! that never speaks was held past its bound.
//! Everything stays on 127.0.0.0/8; every loop stops at the deadline.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use palaver_client::{self as client, Client, Event};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;

const FD_LIMIT: u64 = 65_536;
/// Source addresses the clients bind to, so that 10,000 connections plus churn do not run out
/// of ephemeral ports on one address pair.
const SOURCE_ADDRESSES: u8 = 16;
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How late past its bound a connection that never speaks may be closed (a loaded machine's
/// timers and this process's own scheduling).
const NEVER_SPEAKING_SLACK: Duration = Duration::from_secs(2);
/// A slow head sends one header line this often, well inside the request-head timeout.
const SLOW_HEAD_LINE_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Args {
    secs: u64,
    connections: usize,
    control_pairs: usize,
    slow_readers: usize,
    crowd_users: usize,
    storm_every: u64,
    sample_every: u64,
    garbage_per_sec: u64,
    silent: usize,
    slow_heads: usize,
    report: Option<PathBuf>,
}

impl Args {
    fn parse() -> Self {
        let mut args = Args {
            secs: 600,
            connections: 10_000,
            control_pairs: 25,
            slow_readers: 100,
            crowd_users: 300,
            storm_every: 30,
            sample_every: 10,
            garbage_per_sec: 20,
            silent: 500,
            slow_heads: 500,
            report: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
            match flag.as_str() {
                "--secs" => args.secs = value().parse().expect("--secs N"),
                "--connections" => args.connections = value().parse().expect("--connections N"),
                "--control-pairs" => args.control_pairs = value().parse().expect("N"),
                "--slow-readers" => args.slow_readers = value().parse().expect("N"),
                "--crowd-users" => args.crowd_users = value().parse().expect("N"),
                "--storm-every" => args.storm_every = value().parse().expect("N"),
                "--sample-every" => args.sample_every = value().parse().expect("N"),
                "--garbage-per-sec" => args.garbage_per_sec = value().parse().expect("N"),
                "--silent" => args.silent = value().parse().expect("--silent N"),
                "--slow-heads" => args.slow_heads = value().parse().expect("--slow-heads N"),
                "--report" => args.report = Some(value().into()),
                // cargo passes `--bench` to every bench target.
                "--bench" => {}
                other => panic!("unknown argument {other}"),
            }
        }
        args
    }
}

/// Counters of everything that happened, by kind.
#[derive(Default)]
struct Stats {
    counters: std::sync::Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn add(&self, key: &str, n: u64) {
        *self
            .counters
            .lock()
            .unwrap()
            .entry(key.to_owned())
            .or_default() += n;
    }

    fn inc(&self, key: &str) {
        self.add(key, 1);
    }

    fn get(&self, key: &str) -> u64 {
        self.counters.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

/// A small deterministic generator (xorshift64*), enough to pick garbage and jitter.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Between `min` and `max` (exclusive) random bytes.
    fn bytes(&mut self, min: u64, max: u64) -> Vec<u8> {
        let n = min + self.below(max - min);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

struct Env {
    addr: SocketAddr,
    host: String,
    http: reqwest::Client,
    stats: Stats,
    stop: AtomicBool,
    next_source: AtomicUsize,
    start: Instant,
}

impl Env {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.host)
    }

    async fn tcp(&self) -> std::io::Result<TcpStream> {
        let n = self.next_source.fetch_add(1, Ordering::Relaxed) as u8 % SOURCE_ADDRESSES;
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 1, 1 + n), 0)))?;
        socket.connect(self.addr).await
    }

    /// An authenticated Socket.IO connection through palaver's own client.
    async fn connect(&self, token: &str) -> Result<(Client, mpsc::Receiver<Event>), String> {
        let attempt = async {
            let stream = self.tcp().await.map_err(|e| e.to_string())?;
            client::connect(stream, &self.host, token)
                .await
                .map_err(|e| e.to_string())
        };
        tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .map_err(|_| "connect timed out".to_owned())?
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Result<Value, String> {
        let mut request = self.http.post(self.url(path)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("{status}: {body}"))
        }
    }
}

struct User {
    id: String,
    token: String,
}

async fn register(env: &Env, name: &str) -> User {
    let body =
        json!({ "name": name, "email": format!("{name}@soak.test"), "password": "soak-password" });
    let answer = env
        .post("/api/auth/register", None, body)
        .await
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    User {
        id: answer["user"]["_id"].as_str().unwrap().to_owned(),
        token: answer["token"].as_str().unwrap().to_owned(),
    }
}

async fn open_chat(env: &Env, a: &User, b: &User) -> String {
    let chat = env
        .post(
            &format!("/api/chats/with/{}", b.id),
            Some(&a.token),
            json!({}),
        )
        .await
        .unwrap_or_else(|e| panic!("open chat: {e}"));
    chat["_id"].as_str().unwrap().to_owned()
}

async fn register_all(env: &Arc<Env>, prefix: &str, n: usize) -> Vec<User> {
    // The server hashes four passwords at a time; more in flight only queue.
    let gate = Arc::new(Semaphore::new(8));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (env, gate, name) = (Arc::clone(env), Arc::clone(&gate), format!("{prefix}{i}"));
            tokio::spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                register(&env, &name).await
            })
        })
        .collect();
    let mut users = Vec::with_capacity(n);
    for task in tasks {
        users.push(task.await.unwrap());
    }
    users
}

// ---------------------------------------------------------------- the server

/// Raises this process's open-file limit (inherited by the server it starts) to `FD_LIMIT`, or,
/// without the privilege to raise the hard limit, the soft limit to the hard one. Returns the
/// soft limit in force.
fn raise_fd_limit() -> u64 {
    let pid = std::process::id().to_string();
    let prlimit = |limit: String| {
        Command::new("prlimit")
            .args(["--pid", &pid, &limit])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !prlimit(format!("--nofile={FD_LIMIT}:{FD_LIMIT}")) {
        let hard = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|limits| {
                limits
                    .lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(4))
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        if !prlimit(format!("--nofile={hard}:{hard}")) {
            eprintln!("soak: could not raise the open-file limit; keeping the current one");
        }
    }
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_server(data_dir: &std::path::Path, port: u16) -> Child {
    let log = std::fs::File::create(data_dir.join("server.log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_palaver"))
        .arg("serve")
        .env("PALAVER_LISTEN", format!("127.0.0.1:{port}"))
        .env("PALAVER_DATA_DIR", data_dir.join("data"))
        .env("RUST_LOG", "warn")
        // The crowd comes from 16 loopback addresses, ~600 connections each, and registers
        // hundreds of users: lift the per-address limits (the connection tests cover them).
        .env("PALAVER_CONNECTIONS_PER_ADDRESS", "1000000")
        .env("PALAVER_REGISTRATIONS_PER_ADDRESS", "1000000")
        .env("NO_COLOR", "1")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("start palaver")
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at_secs: u64,
    rss_kib: u64,
    fds: u64,
    threads: u64,
    crowd_live: usize,
}

fn proc_status(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Whether the server still runs: an exited child stays in /proc as a zombie until reaped.
fn server_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
        !status.lines().any(|l| {
            l.starts_with("State:") && (l.contains("Z (zombie)") || l.contains("X (dead)"))
        })
    })
}

fn sample(pid: u32, env: &Env, crowd_live: usize) -> Sample {
    Sample {
        at_secs: env.start.elapsed().as_secs(),
        rss_kib: proc_status(pid, "VmRSS:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64),
        threads: proc_status(pid, "Threads:"),
        crowd_live,
    }
}

// ---------------------------------------------------------------- the loads

/// Reads and discards a connection's events (so its reader keeps answering pings); returns when
/// the connection closes.
fn drain(mut events: mpsc::Receiver<Event>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while events.recv().await.is_some() {} })
}

struct CrowdSlot {
    token: Arc<str>,
    live: Option<(Client, tokio::task::JoinHandle<()>)>,
}

async fn connect_slot(env: &Env, slot: &Mutex<CrowdSlot>, live: &AtomicUsize) {
    let token = slot.lock().await.token.clone();
    match env.connect(&token).await {
        Ok((client, events)) => {
            slot.lock().await.live = Some((client, drain(events)));
            live.fetch_add(1, Ordering::Relaxed);
            env.stats.inc("crowd: connected");
        }
        Err(error) => {
            env.stats.inc("crowd: connect failed");
            if env.stats.get("crowd: connect failed") <= 5 {
                eprintln!("soak: crowd connect failed: {error}");
            }
        }
    }
}

async fn crowd(env: Arc<Env>, tokens: Vec<Arc<str>>, live: Arc<AtomicUsize>, storm_every: u64) {
    let slots: Arc<Vec<Mutex<CrowdSlot>>> = Arc::new(
        tokens
            .into_iter()
            .map(|token| Mutex::new(CrowdSlot { token, live: None }))
            .collect(),
    );
    // Ramp up, 64 handshakes in flight.
    let gate = Arc::new(Semaphore::new(64));
    let mut ramp = Vec::new();
    for i in 0..slots.len() {
        if env.stopped() {
            break;
        }
        let permit = Arc::clone(&gate).acquire_owned().await.unwrap();
        let (env, slots, live) = (Arc::clone(&env), Arc::clone(&slots), Arc::clone(&live));
        ramp.push(tokio::spawn(async move {
            connect_slot(&env, &slots[i], &live).await;
            drop(permit);
        }));
    }
    for task in ramp {
        let _ = task.await;
    }
    eprintln!(
        "soak: crowd ramped to {} connections at {:?}",
        live.load(Ordering::Relaxed),
        env.start.elapsed()
    );
    // Storms: a tenth of the crowd drops at once, then reconnects at once.
    let mut rng = Rng(0x5eed_0001);
    let mut round = 0u64;
    while !env.stopped() {
        sleep_unless_stopped(&env, Duration::from_secs(storm_every)).await;
        if env.stopped() {
            break;
        }
        round += 1;
        let picked: HashSet<usize> = (0..slots.len() / 10)
            .map(|_| rng.below(slots.len() as u64) as usize)
            .collect();
        for &i in &picked {
            if let Some((client, drainer)) = slots[i].lock().await.live.take() {
                client.close().await;
                drainer.abort();
                live.fetch_sub(1, Ordering::Relaxed);
                env.stats.inc("crowd: storm disconnects");
            }
        }
        let storm: Vec<_> = picked
            .into_iter()
            .map(|i| {
                let (env, slots, live, gate) = (
                    Arc::clone(&env),
                    Arc::clone(&slots),
                    Arc::clone(&live),
                    Arc::clone(&gate),
                );
                tokio::spawn(async move {
                    let _permit = gate.acquire().await.unwrap();
                    connect_slot(&env, &slots[i], &live).await;
                })
            })
            .collect();
        for task in storm {
            let _ = task.await;
        }
        env.stats.inc("crowd: storms");
        // Connections the server dropped (their drainer ended) are replaced too.
        for slot in slots.iter() {
            let mut slot = slot.lock().await;
            if slot.live.as_ref().is_some_and(|(_, d)| d.is_finished()) {
                slot.live = None;
                live.fetch_sub(1, Ordering::Relaxed);
                env.stats.inc("crowd: found dropped by server");
            }
        }
        let _ = round;
    }
    for slot in slots.iter() {
        if let Some((client, drainer)) = slot.lock().await.live.take() {
            client.close().await;
            drainer.abort();
        }
    }
}

async fn sleep_unless_stopped(env: &Env, total: Duration) {
    let deadline = Instant::now() + total;
    while !env.stopped() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200).min(deadline - Instant::now())).await;
    }
}

/// A WebSocket to the Socket.IO endpoint, with the Engine.IO open packet read.
async fn raw_socket(env: &Env) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, String> {
    let stream = env.tcp().await.map_err(|e| e.to_string())?;
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", env.host);
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(CONNECT_TIMEOUT, ws.next()).await {
        Ok(Some(Ok(Message::Text(open)))) if open.starts_with('0') => Ok(ws),
        other => Err(format!("no open packet: {other:?}")),
    }
}

/// Slow readers: authenticate, then never read again. The server must drop them (missed pings,
/// full buffers) without stalling anyone else; each one dropped is replaced.
async fn slow_reader(env: Arc<Env>, token: String) {
    while !env.stopped() {
        let mut ws = match raw_socket(&env).await {
            Ok(ws) => ws,
            Err(_) => {
                env.stats.inc("slow readers: connect failed");
                sleep_unless_stopped(&env, Duration::from_secs(1)).await;
                continue;
            }
        };
        let auth = format!("40{}", json!({ "token": token }));
        if ws.send(Message::text(auth)).await.is_err() {
            continue;
        }
        env.stats.inc("slow readers: connected");
        // Hold the socket without reading. Probe every few seconds whether the server has
        // closed it: a write fails once the peer has reset the connection.
        let since = Instant::now();
        loop {
            sleep_unless_stopped(&env, Duration::from_secs(5)).await;
            if env.stopped() {
                return;
            }
            // A Socket.IO pong-less keepalive the server ignores: an empty event on `/`.
            if ws.send(Message::text("42[\"noop\"]")).await.is_err() {
                env.stats.inc("slow readers: dropped by server");
                env.stats.add(
                    "slow readers: secs held before drop",
                    since.elapsed().as_secs(),
                );
                break;
            }
        }
    }
}

async fn garbage(env: Arc<Env>, per_sec: u64, flood_token: String, chat: String) {
    let mut rng = Rng(0x6a7b_a6e0);
    let gate = Arc::new(Semaphore::new(32));
    let period = Duration::from_micros(1_000_000 / per_sec.max(1));
    let mut tick = tokio::time::interval(period);
    while !env.stopped() {
        tick.tick().await;
        let Ok(permit) = Arc::clone(&gate).try_acquire_owned() else {
            env.stats.inc("garbage: skipped (32 in flight)");
            continue;
        };
        let kind = rng.below(9);
        let seed = rng.next();
        let (env, token, chat) = (Arc::clone(&env), flood_token.clone(), chat.clone());
        tokio::spawn(async move {
            let outcome = tokio::time::timeout(
                Duration::from_secs(15),
                one_garbage(&env, kind, Rng(seed | 1), &token, &chat),
            )
            .await
            .unwrap_or_else(|_| "timed out".into());
            env.stats.inc(&format!("garbage: {outcome}"));
            drop(permit);
        });
    }
}

/// One abusive client; returns a short description of how the server dealt with it.
async fn one_garbage(env: &Env, kind: u64, mut rng: Rng, token: &str, chat: &str) -> String {
    match kind {
        // Junk on a WebSocket: random text, random binary, broken Socket.IO packets, nesting.
        0..=3 => {
            let Ok(mut ws) = raw_socket(env).await else {
                return "ws connect failed".into();
            };
            for _ in 0..1 + rng.below(20) {
                let frame = match kind {
                    0 => Message::text(String::from_utf8_lossy(&rng.bytes(0, 512)).into_owned()),
                    1 => Message::binary(rng.bytes(0, 4096)),
                    2 => Message::text(
                        [
                            "42[",
                            "42[\"send-message\",{",
                            "43x[]",
                            "4",
                            "40{\"token\":5}",
                            "2probe",
                            "41",
                            "44{}",
                            "99999",
                        ][rng.below(9) as usize]
                            .to_owned(),
                    ),
                    _ => Message::text(format!(
                        "42{}",
                        "[".repeat(10_000 + rng.below(10_000) as usize)
                    )),
                };
                if ws.send(frame).await.is_err() {
                    return "ws closed by server".into();
                }
            }
            closed_within(&mut ws, Duration::from_secs(3)).await
        }
        // A frame over the 64 KiB limit.
        4 => {
            let Ok(mut ws) = raw_socket(env).await else {
                return "ws connect failed".into();
            };
            let big = format!(
                "42[\"send-message\",{{\"text\":\"{}\"}}]",
                "x".repeat(100_000)
            );
            if ws.send(Message::text(big)).await.is_err() {
                return "oversize frame: closed by server".into();
            }
            format!(
                "oversize frame: {}",
                closed_within(&mut ws, Duration::from_secs(3)).await
            )
        }
        // Raw TCP junk, not even HTTP.
        5 => {
            let Ok(mut stream) = env.tcp().await else {
                return "tcp connect failed".into();
            };
            let _ = stream.write_all(&rng.bytes(1, 8192)).await;
            let _ = stream.shutdown().await;
            "tcp junk sent".into()
        }
        // REST: an oversize body, and a malformed one.
        6 => {
            let big = "x".repeat(100_000);
            let response = env
                .http
                .post(env.url("/api/auth/login"))
                .header("content-type", "application/json")
                .body(big)
                .send()
                .await;
            match response {
                Ok(r) if r.status().is_server_error() => "rest: SERVER ERROR".into(),
                Ok(r) => format!("rest oversize: {}", r.status().as_u16()),
                Err(_) => "rest oversize: connection error".into(),
            }
        }
        7 => {
            let response = env
                .http
                .post(env.url(&format!("/api/messages/chat/{chat}")))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(rng.bytes(1, 2048))
                .send()
                .await;
            match response {
                Ok(r) if r.status().is_server_error() => "rest: SERVER ERROR".into(),
                Ok(r) => format!("rest junk: {}", r.status().as_u16()),
                Err(_) => "rest junk: connection error".into(),
            }
        }
        // An authenticated socket sending texts over the limit and empty ones.
        _ => {
            let Ok((client, events)) = env.connect(token).await else {
                return "auth socket connect failed".into();
            };
            let _drainer = drain(events);
            let text = if rng.below(2) == 0 {
                "y".repeat(4001)
            } else {
                "   ".into()
            };
            let answer = client
                .emit_with_ack(
                    "send-message",
                    &json!({ "chatId": chat, "text": text }),
                    ACK_TIMEOUT,
                )
                .await;
            client.close().await;
            match answer {
                Ok(v) => format!(
                    "bad message refused: {}",
                    v["error"].as_str().unwrap_or("ACCEPTED?")
                ),
                Err(e) => format!("bad message: {e}"),
            }
        }
    }
}

async fn closed_within(
    ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>,
    limit: Duration,
) -> String {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return "ws still open after junk".into(),
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => {
                return "ws closed by server".into();
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Sync flooders run at once (one user), each holding one socket that never reads.
const SYNC_FLOODERS: usize = 4;
/// Sockets the hoarder asks for, well past the per-user cap (32 by default).
const HOARDER_SOCKETS: usize = 300;

/// A chat whose 40 messages each escape to 8,000 bytes of JSON, so that every `sync` answer is
/// as large as the server lets it be.
async fn escape_heavy_chat(env: &Env, a: &User, b: &User) -> String {
    let chat = open_chat(env, a, b).await;
    for i in 0..40 {
        let text = format!("{i}{}", "\"".repeat(3990));
        // Half from each member: both stay within their send burst.
        let sender = if i % 2 == 0 { a } else { b };
        env.post(
            &format!("/api/messages/chat/{chat}"),
            Some(&sender.token),
            json!({ "text": text }),
        )
        .await
        .unwrap_or_else(|e| panic!("escape-heavy message: {e}"));
    }
    chat
}

/// A socket that never reads and asks for `sync` 50 times a second. The server must drop it
/// (its unread budget, its heartbeat) and keep its RSS bounded; it reconnects when the server
/// closed the connection or after a minute.
async fn sync_flooder(env: Arc<Env>, token: String, chat: String) {
    let sync = |id: u64| {
        format!(
            "42{id}{}",
            json!(["sync", { "chatId": chat, "afterSeq": 0, "limit": 500 }])
        )
    };
    let mut id = 0;
    while !env.stopped() {
        let Ok(mut ws) = raw_socket(&env).await else {
            env.stats.inc("sync flooders: connect failed");
            sleep_unless_stopped(&env, Duration::from_secs(1)).await;
            continue;
        };
        if ws
            .send(Message::text(format!("40{}", json!({ "token": token }))))
            .await
            .is_err()
        {
            continue;
        }
        // The CONNECT answer is the last thing this socket reads (past the Engine.IO ping that
        // engineioxide sends as soon as the transport opens, which may come first).
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
            while let Some(Ok(message)) = ws.next().await {
                if let Message::Text(text) = message
                    && text.as_str() != "2"
                {
                    return text.chars().take(60).collect::<String>();
                }
            }
            "connection closed".to_owned()
        });
        let answer = connected.await.unwrap_or_else(|_| "timed out".to_owned());
        if !answer.starts_with("40") {
            env.stats
                .inc(&format!("sync flooders: connect refused: {answer}"));
            sleep_unless_stopped(&env, Duration::from_secs(1)).await;
            continue;
        }
        env.stats.inc("sync flooders: connected");
        let since = Instant::now();
        while !env.stopped() && since.elapsed() < Duration::from_secs(60) {
            id += 1;
            if ws.send(Message::text(sync(id))).await.is_err() {
                env.stats.inc("sync flooders: closed by server");
                break;
            }
            env.stats.inc("sync flooders: syncs asked");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One user opening sockets until `HOARDER_SOCKETS` were asked for, holding the ones accepted:
/// more than the cap accepted is a failure of the run.
async fn socket_hoarder(env: Arc<Env>, token: String) {
    let mut held = Vec::new();
    for _ in 0..HOARDER_SOCKETS {
        if env.stopped() {
            return;
        }
        match env.connect(&token).await {
            Ok((client, events)) => {
                env.stats.inc("socket hoarder: accepted");
                held.push((client, drain(events)));
            }
            Err(e) if e.contains("Too many connections") => {
                env.stats
                    .inc("socket hoarder: refused (Too many connections)");
            }
            Err(_) => env.stats.inc("socket hoarder: other failures"),
        }
    }
    if held.len() > 32 {
        env.stats.add(
            "socket hoarder: ACCEPTED? past the cap of 32",
            held.len() as u64 - 32,
        );
    }
    while !env.stopped() {
        sleep_unless_stopped(&env, Duration::from_secs(1)).await;
    }
}

/// One user sending as fast as the acks come back (64 in flight), plus typing, to chats whose
/// other members are the slow readers.
async fn flooder(env: Arc<Env>, token: String, chats: Vec<String>) {
    let Ok((client, events)) = env.connect(&token).await else {
        env.stats.inc("flood: connect failed");
        return;
    };
    let _drainer = drain(events);
    let gate = Arc::new(Semaphore::new(64));
    let mut n = 0u64;
    while !env.stopped() {
        let permit = Arc::clone(&gate).acquire_owned().await.unwrap();
        n += 1;
        let chat = chats[(n % chats.len() as u64) as usize].clone();
        let (env2, client2) = (Arc::clone(&env), client.clone());
        tokio::spawn(async move {
            let data = json!({ "chatId": chat, "text": format!("flood {n}"), "clientMsgId": format!("f{n}") });
            let answer = client2
                .emit_with_ack("send-message", &data, ACK_TIMEOUT)
                .await;
            let key = match answer {
                Ok(v) if v["ok"] == true => "flood: accepted".to_owned(),
                Ok(v) => format!("flood: refused {}", v["error"].as_str().unwrap_or("?")),
                Err(e) => format!("flood: {e}"),
            };
            env2.stats.inc(&key);
            let _ = client2
                .emit(
                    "typing",
                    &json!({ "chatId": chat, "isTyping": n.is_multiple_of(2) }),
                )
                .await;
            drop(permit);
        });
    }
    client.close().await;
}

/// Latencies and deliveries of the control group.
#[derive(Default)]
struct Control {
    ack_micros: std::sync::Mutex<Vec<u64>>,
    delivery_micros: std::sync::Mutex<Vec<u64>>,
    /// chat → (seq → clientMsgId) of every acknowledged message.
    acked: std::sync::Mutex<HashMap<String, BTreeMap<u64, String>>>,
    /// clientMsgIds the partner received as `new-message`.
    delivered: std::sync::Mutex<HashSet<String>>,
    sent: AtomicU64,
    failed: AtomicU64,
}

async fn control_user(
    env: Arc<Env>,
    control: Arc<Control>,
    me: usize,
    token: String,
    chat: String,
    everyone_connected: Arc<tokio::sync::Barrier>,
) {
    let connected = env.connect(&token).await;
    // Nobody sends before the whole group is connected: a message sent while the partner is
    // still connecting reaches it through sync, not live, and would count as undelivered.
    everyone_connected.wait().await;
    let Ok((client, mut events)) = connected else {
        env.stats.inc("control: connect failed");
        return;
    };
    let receiver = {
        let (env, control) = (Arc::clone(&env), Arc::clone(&control));
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if event.name != "new-message" {
                    continue;
                }
                let data = event.data();
                let cmid = data["clientMsgId"].as_str().unwrap_or_default().to_owned();
                if !cmid.starts_with("ctl-") || cmid.starts_with(&format!("ctl-{me}-")) {
                    continue;
                }
                if let Some(sent_at) = data["text"]
                    .as_str()
                    .and_then(|t| t.rsplit_once("t=").and_then(|(_, n)| n.parse::<u64>().ok()))
                {
                    let now = env.start.elapsed().as_micros() as u64;
                    control
                        .delivery_micros
                        .lock()
                        .unwrap()
                        .push(now.saturating_sub(sent_at));
                }
                control.delivered.lock().unwrap().insert(cmid);
            }
        })
    };
    let mut rng = Rng(0xc0de + me as u64);
    let mut n = 0u64;
    while !env.stopped() {
        // One message a second on average, jittered so the group does not march in step.
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1000))).await;
        if env.stopped() {
            break;
        }
        n += 1;
        let cmid = format!("ctl-{me}-{n}");
        let sent_at = env.start.elapsed().as_micros() as u64;
        let data = json!({ "chatId": chat, "text": format!("hello {n} t={sent_at}"), "clientMsgId": cmid });
        control.sent.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        match client
            .emit_with_ack("send-message", &data, ACK_TIMEOUT)
            .await
        {
            Ok(answer) if answer["ok"] == true => {
                control
                    .ack_micros
                    .lock()
                    .unwrap()
                    .push(started.elapsed().as_micros() as u64);
                let seq = answer["message"]["seq"].as_u64().unwrap_or(0);
                control
                    .acked
                    .lock()
                    .unwrap()
                    .entry(chat.clone())
                    .or_default()
                    .insert(seq, cmid);
            }
            Ok(answer) => {
                control.failed.fetch_add(1, Ordering::Relaxed);
                env.stats
                    .inc(&format!("control: refused {}", answer["error"]));
            }
            Err(error) => {
                control.failed.fetch_add(1, Ordering::Relaxed);
                env.stats.inc(&format!("control: {error}"));
            }
        }
    }
    // Keep listening well past the slowest delivery seen, so that a message acknowledged just
    // before the stop is not counted as undelivered.
    tokio::time::sleep(Duration::from_secs(10)).await;
    client.close().await;
    receiver.abort();
}

/// Every acknowledged control message, read back through REST history.
async fn verify_history(
    env: &Env,
    control: &Control,
    token_of_chat: &HashMap<String, String>,
) -> (u64, u64) {
    let acked = control.acked.lock().unwrap().clone();
    let (mut checked, mut lost) = (0, 0);
    for (chat, messages) in acked {
        let token = &token_of_chat[&chat];
        let mut stored: HashMap<u64, String> = HashMap::new();
        let mut after = 0u64;
        loop {
            let url = env.url(&format!(
                "/api/messages/chat/{chat}?after={after}&limit=500"
            ));
            let page = env
                .http
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .and_then(|r| r.error_for_status());
            let page: Value = match page {
                Ok(response) => response.json().await.unwrap_or(Value::Null),
                Err(error) => {
                    eprintln!("soak: history of {chat} unreadable: {error}");
                    return (checked, u64::MAX);
                }
            };
            let page = page.as_array().cloned().unwrap_or_default();
            if page.is_empty() {
                break;
            }
            for m in &page {
                let seq = m["seq"].as_u64().unwrap();
                stored.insert(
                    seq,
                    m["clientMsgId"].as_str().unwrap_or_default().to_owned(),
                );
                after = after.max(seq);
            }
        }
        for (seq, cmid) in messages {
            checked += 1;
            if stored.get(&seq) != Some(&cmid) {
                lost += 1;
                eprintln!("soak: LOST acknowledged message {cmid} (seq {seq}) of chat {chat}");
            }
        }
    }
    (checked, lost)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at] as f64 / 1000.0
}

fn main() {
    let args = Args::parse();
    let fd_limit = raise_fd_limit();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = start_server(dir.path(), port);
    let pid = server.id();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = runtime.block_on(soak(&args, port, pid, fd_limit));
    drop(runtime);

    // A clean stop: SIGTERM, then the server must exit 0 within the shutdown grace.
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = server.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    if !report.passed || !exit.is_some_and(|s| s.success()) {
        // Keep the data directory and the whole server log for a post-mortem.
        let kept = dir.keep();
        eprintln!("soak: server log and data kept in {}", kept.display());
        for line in log
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            eprintln!("soak: server log: {line}");
        }
    }
    let errors = log.lines().filter(|l| l.contains("ERROR")).count();
    let warnings = log.lines().filter(|l| l.contains("WARN")).count();
    let mut text = report.text;
    text.push_str(&format!(
        "\nServer exit after SIGTERM: {}. Server log: {errors} ERROR lines, {warnings} WARN lines.\n",
        exit.map_or("did not exit within 30 s (killed)".to_owned(), |s| s.to_string())
    ));
    for line in log.lines().filter(|l| l.contains("ERROR")).take(10) {
        text.push_str(&format!("    {line}\n"));
    }
    // The kinds of warnings, without timestamps and ids.
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("WARN")) {
        let message = line.split_once("WARN").map_or(line, |(_, m)| m).trim();
        let kind: String = message
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .take(120)
            .collect();
        *kinds.entry(kind).or_default() += 1;
    }
    for (kind, n) in kinds.iter().take(10) {
        text.push_str(&format!("    {n} × WARN {kind}\n"));
    }
    println!("{text}");
    if let Some(path) = &args.report {
        std::fs::write(path, &text).expect("write report");
    }
    let clean_exit = exit.is_some_and(|s| s.success());
    if !report.passed || !clean_exit {
        eprintln!("soak: FAILED");
        std::process::exit(1);
    }
}

struct Report {
    text: String,
    passed: bool,
}

// ---------------------------------------------------------------- connections that never speak

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speechless {
    /// Sends nothing at all: closed after the first-byte timeout.
    Silent,
    /// Sends a request head one header line at a time: closed after the request-head timeout.
    SlowHead,
}

impl Speechless {
    fn bound(self) -> Duration {
        match self {
            Speechless::Silent => palaver::limits::FIRST_BYTE_TIMEOUT_DEFAULT,
            Speechless::SlowHead => palaver::limits::REQUEST_HEAD_TIMEOUT_DEFAULT,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Speechless::Silent => "silent",
            Speechless::SlowHead => "slow head",
        }
    }
}

/// How long the server took to close each connection that never speaks, by kind.
#[derive(Default)]
struct NeverSpeaking {
    silent_closed_millis: std::sync::Mutex<Vec<u64>>,
    slow_head_closed_millis: std::sync::Mutex<Vec<u64>>,
    held_past_bound: AtomicU64,
}

impl NeverSpeaking {
    fn closed(&self, kind: Speechless) -> &std::sync::Mutex<Vec<u64>> {
        match kind {
            Speechless::Silent => &self.silent_closed_millis,
            Speechless::SlowHead => &self.slow_head_closed_millis,
        }
    }

    /// Appends the table; returns how many were held past their bound.
    fn report(&self, args: &Args, text: &mut String) -> u64 {
        text.push_str("\n### Connections that never speak\n\n| kind | at once | bound | closed | closed after min / p50 / p99 / max | held past bound + 2 s |\n|---|---|---|---|---|---|\n");
        let held = self.held_past_bound.load(Ordering::Relaxed);
        for (kind, at_once) in [
            (Speechless::Silent, args.silent),
            (Speechless::SlowHead, args.slow_heads),
        ] {
            let mut millis = self.closed(kind).lock().unwrap().clone();
            millis.sort_unstable();
            // `percentile` divides by 1,000: milliseconds in, seconds out.
            let secs = |q: f64| percentile(&millis, q);
            text.push_str(&format!(
                "| {} | {at_once} | {} s | {} | {:.1} / {:.1} / {:.1} / {:.1} s | |\n",
                kind.name(),
                kind.bound().as_secs(),
                millis.len(),
                millis.first().map_or(0.0, |&m| m as f64 / 1000.0),
                secs(0.5),
                secs(0.99),
                secs(1.0),
            ));
        }
        text.push_str(&format!("| all | | | | | {held} |\n"));
        held
    }
}

/// One connection that never speaks, again and again until the soak stops: connect, behave as
/// `kind`, time the server's close. One held `NEVER_SPEAKING_SLACK` past its bound is counted
/// and dropped.
async fn never_speaking(env: Arc<Env>, record: Arc<NeverSpeaking>, kind: Speechless) {
    while !env.stopped() {
        let mut stream = match env.tcp().await {
            Ok(stream) => stream,
            Err(_) => {
                env.stats.inc("never speaking: connect failed");
                sleep_unless_stopped(&env, Duration::from_secs(1)).await;
                continue;
            }
        };
        let opened = Instant::now();
        let limit = kind.bound() + NEVER_SPEAKING_SLACK;
        match tokio::time::timeout(limit, until_closed(&env, &mut stream, kind)).await {
            Ok(true) => record
                .closed(kind)
                .lock()
                .unwrap()
                .push(opened.elapsed().as_millis() as u64),
            // The soak stopped first.
            Ok(false) => return,
            Err(_) => {
                record.held_past_bound.fetch_add(1, Ordering::Relaxed);
                let opened_at = opened.duration_since(env.start).as_secs() / 10 * 10;
                env.stats.inc(&format!(
                    "never speaking: {} HELD PAST BOUND (opened at t={opened_at}-{} s)",
                    kind.name(),
                    opened_at + 10
                ));
            }
        }
    }
}

/// Behaves as `kind` until the server closes the connection (true) or the soak stops (false).
async fn until_closed(env: &Env, stream: &mut TcpStream, kind: Speechless) -> bool {
    let mut buffer = [0u8; 1024];
    let mut next_line = tokio::time::interval(SLOW_HEAD_LINE_EVERY);
    let mut stop_check = tokio::time::interval(Duration::from_millis(200));
    let mut lines = 0u64;
    if kind == Speechless::SlowHead
        && stream
            .write_all(b"GET /health HTTP/1.1\r\nhost: soak\r\n")
            .await
            .is_err()
    {
        return true;
    }
    loop {
        tokio::select! {
            read = stream.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            },
            _ = next_line.tick(), if kind == Speechless::SlowHead => {
                lines += 1;
                let line = format!("x-slow-{lines}: 1\r\n");
                if stream.write_all(line.as_bytes()).await.is_err() {
                    return true;
                }
            }
            _ = stop_check.tick() => {
                if env.stopped() {
                    return false;
                }
            }
        }
    }
}

async fn soak(args: &Args, port: u16, pid: u32, fd_limit: u64) -> Report {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let env = Arc::new(Env {
        addr,
        host: addr.to_string(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        stats: Stats::default(),
        stop: AtomicBool::new(false),
        next_source: AtomicUsize::new(0),
        start: Instant::now(),
    });
    // Wait for the server.
    for _ in 0..200 {
        if env.http.get(env.url("/health")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let idle_rss = proc_status(pid, "VmRSS:");

    eprintln!("soak: registering users");
    let control_users = register_all(&env, "control", args.control_pairs * 2).await;
    let crowd_users = register_all(&env, "crowd", args.crowd_users).await;
    let slow_users = register_all(&env, "slow", args.slow_readers.max(1)).await;
    let flood = register(&env, "flooder").await;
    let syncer = register(&env, "syncer").await;
    let hoarder = register(&env, "hoarder").await;
    let sync_chat = escape_heavy_chat(&env, &syncer, &flood).await;
    let mut token_of_chat = HashMap::new();
    let mut control_chats = Vec::new();
    for pair in control_users.chunks(2) {
        let chat = open_chat(&env, &pair[0], &pair[1]).await;
        token_of_chat.insert(chat.clone(), pair[0].token.clone());
        control_chats.push(chat);
    }
    let mut flood_chats = Vec::new();
    for slow in &slow_users {
        flood_chats.push(open_chat(&env, &flood, slow).await);
    }
    let setup_secs = env.start.elapsed().as_secs_f64();
    let registered_rss = proc_status(pid, "VmRSS:");

    // The crowd fills the connection budget left after everyone else. Its first `flippers`
    // users get one connection each, so that storms flip their presence.
    let others = args.control_pairs * 2
        + args.slow_readers
        + 2
        + 32
        + args.silent
        + args.slow_heads
        + SYNC_FLOODERS
        + 32;
    let crowd_size = args.connections.saturating_sub(others);
    let flippers = (args.crowd_users / 3).max(1);
    let crowd_tokens: Vec<Arc<str>> = (0..crowd_size)
        .map(|i| {
            let user = if i < flippers {
                i
            } else {
                flippers + i % (args.crowd_users - flippers).max(1)
            };
            Arc::from(crowd_users[user.min(crowd_users.len() - 1)].token.as_str())
        })
        .collect();

    let started = env.start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let crowd_live = Arc::new(AtomicUsize::new(0));
    let control = Arc::new(Control::default());
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(crowd(
        Arc::clone(&env),
        crowd_tokens,
        Arc::clone(&crowd_live),
        args.storm_every,
    )));
    for user in slow_users.iter().take(args.slow_readers) {
        tasks.push(tokio::spawn(slow_reader(
            Arc::clone(&env),
            user.token.clone(),
        )));
    }
    tasks.push(tokio::spawn(flooder(
        Arc::clone(&env),
        flood.token.clone(),
        flood_chats.clone(),
    )));
    for _ in 0..SYNC_FLOODERS {
        tasks.push(tokio::spawn(sync_flooder(
            Arc::clone(&env),
            syncer.token.clone(),
            sync_chat.clone(),
        )));
    }
    tasks.push(tokio::spawn(socket_hoarder(
        Arc::clone(&env),
        hoarder.token.clone(),
    )));
    tasks.push(tokio::spawn(garbage(
        Arc::clone(&env),
        args.garbage_per_sec,
        flood.token.clone(),
        flood_chats[0].clone(),
    )));
    let speechless = Arc::new(NeverSpeaking::default());
    for (kind, count) in [
        (Speechless::Silent, args.silent),
        (Speechless::SlowHead, args.slow_heads),
    ] {
        for _ in 0..count {
            tasks.push(tokio::spawn(never_speaking(
                Arc::clone(&env),
                Arc::clone(&speechless),
                kind,
            )));
        }
    }
    let everyone_connected = Arc::new(tokio::sync::Barrier::new(control_users.len()));
    for (i, user) in control_users.iter().enumerate() {
        tasks.push(tokio::spawn(control_user(
            Arc::clone(&env),
            Arc::clone(&control),
            i,
            user.token.clone(),
            control_chats[i / 2].clone(),
            Arc::clone(&everyone_connected),
        )));
    }

    let mut samples = Vec::new();
    let mut server_died = false;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(args.sample_every).min(deadline - Instant::now()))
            .await;
        if !server_alive(pid) {
            server_died = true;
            eprintln!("soak: THE SERVER DIED");
            break;
        }
        let s = sample(pid, &env, crowd_live.load(Ordering::Relaxed));
        eprintln!(
            "soak: t={:>4}s rss={:>7} KiB fds={:>6} threads={:>3} crowd={:>6} control sent={} failed={}",
            s.at_secs,
            s.rss_kib,
            s.fds,
            s.threads,
            s.crowd_live,
            control.sent.load(Ordering::Relaxed),
            control.failed.load(Ordering::Relaxed)
        );
        samples.push(s);
    }
    env.stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
    let (checked, lost) = if server_died {
        (0, u64::MAX)
    } else {
        verify_history(&env, &control, &token_of_chat).await
    };

    // ---- the report
    let mut acks = control.ack_micros.lock().unwrap().clone();
    acks.sort_unstable();
    let mut deliveries = control.delivery_micros.lock().unwrap().clone();
    deliveries.sort_unstable();
    let acked_total: usize = control
        .acked
        .lock()
        .unwrap()
        .values()
        .map(BTreeMap::len)
        .sum();
    let undelivered = {
        let delivered = control.delivered.lock().unwrap();
        let acked = control.acked.lock().unwrap();
        acked
            .values()
            .flat_map(BTreeMap::values)
            .filter(|cmid| !delivered.contains(*cmid))
            .inspect(|cmid| eprintln!("soak: acknowledged but not delivered live: {cmid}"))
            .count()
    };
    let sent = control.sent.load(Ordering::Relaxed);
    let failed = control.failed.load(Ordering::Relaxed);
    let mut text = String::new();
    text.push_str(&format!(
        "## Soak: {} s, {} connections\n\nSetup {setup_secs:.1} s (registration of {} users); load from t={:.0} s. Open-file limit {fd_limit}.\n\n",
        args.secs,
        args.connections,
        control_users.len() + crowd_users.len() + slow_users.len() + 3,
        started.as_secs_f64()
    ));
    text.push_str("### Control group\n\n| | |\n|---|---|\n");
    text.push_str(&format!(
        "| users (pairs) | {} ({}) |\n",
        control_users.len(),
        args.control_pairs
    ));
    text.push_str(&format!(
        "| sends / acknowledged / failed | {sent} / {acked_total} / {failed} |\n"
    ));
    text.push_str(&format!(
        "| ack latency p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |\n",
        percentile(&acks, 0.5),
        percentile(&acks, 0.99),
        percentile(&acks, 1.0)
    ));
    text.push_str(&format!(
        "| delivery latency to the partner p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |\n",
        percentile(&deliveries, 0.5),
        percentile(&deliveries, 0.99),
        percentile(&deliveries, 1.0)
    ));
    text.push_str(&format!(
        "| acknowledged but not delivered live | {undelivered} |\n"
    ));
    text.push_str(&format!(
        "| acknowledged messages checked in history / missing | {checked} / {} |\n\n",
        if lost == u64::MAX {
            "server died".to_owned()
        } else {
            lost.to_string()
        }
    ));
    text.push_str("### Server resources\n\n| t (s) | RSS (MiB) | open fds | threads | crowd connections |\n|---|---|---|---|---|\n");
    text.push_str(&format!(
        "| idle | {:.1} | | | |\n",
        idle_rss as f64 / 1024.0
    ));
    text.push_str(&format!(
        "| after registering the users | {:.1} | | | |\n",
        registered_rss as f64 / 1024.0
    ));
    for s in &samples {
        text.push_str(&format!(
            "| {} | {:.1} | {} | {} | {} |\n",
            s.at_secs,
            s.rss_kib as f64 / 1024.0,
            s.fds,
            s.threads,
            s.crowd_live
        ));
    }
    if samples.len() >= 4 {
        let settled = &samples[samples.len() / 2..];
        let min = settled.iter().map(|s| s.rss_kib).min().unwrap();
        let max = settled.iter().map(|s| s.rss_kib).max().unwrap();
        text.push_str(&format!(
            "\nRSS over the second half of the run: {:.1}–{:.1} MiB (spread {:.1} MiB).\n",
            min as f64 / 1024.0,
            max as f64 / 1024.0,
            (max - min) as f64 / 1024.0
        ));
    }
    let held_past_bound = speechless.report(args, &mut text);
    text.push_str("\n### Everything counted\n\n| what | count |\n|---|---|\n");
    for (key, n) in env.stats.counters.lock().unwrap().iter() {
        text.push_str(&format!("| {key} | {n} |\n"));
    }
    let server_errors = env
        .stats
        .counters
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.contains("SERVER ERROR") || k.contains("ACCEPTED?"))
        .map(|(_, n)| n)
        .sum::<u64>();
    let passed = !server_died
        && lost == 0
        && server_errors == 0
        && undelivered == 0
        && failed == 0
        && held_past_bound == 0;
    text.push_str(&format!(
        "\nVerdict: {} (server alive: {}, acknowledged lost: {}, 5xx or wrongly accepted: {server_errors}, control failures: {failed}, undelivered: {undelivered}, never-speaking connections held past their bound: {held_past_bound}).\n",
        if passed { "PASS" } else { "FAIL" },
        !server_died,
        if lost == u64::MAX { "unknown".into() } else { lost.to_string() },
    ));
    Report { text, passed }
}
