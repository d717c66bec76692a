//! palaver-load: a load generator speaking the wire contract (REST + Socket.IO over WebSocket).
//!
//! It registers `--users` users, pairs them 1:1 (user 2k with 2k+1), opens their chats, connects
//! every user's socket and joins its chat, then has every user send `--rate` messages per second
//! for `--secs` seconds, out of phase (user i starts i/users of a period late), and waits 2 s
//! for stragglers. Each text carries its send time; the partner measures send→deliver latency
//! and counts what arrived, so the one JSON line it prints says what was sent, delivered, lost,
//! duplicated and refused. `--groups G --group-size S` puts `G × S` users in G group chats of S
//! instead (`POST /api/chats`), so every message is delivered to the S - 1 other members, each of
//! whom measures and counts it. `--ramp` repeats that at rising rates on the same connections and
//! prints, last, the highest step with nothing lost, no error and p99 under 50 ms. `--idle N`
//! holds N idle sockets open instead, to measure the server's memory per connection
//! (`--server-pid`). `--churn SECS` runs the churn scenario instead: every socket (`--tabs` per
//! user) is cut about every SECS seconds and comes back, and what was acknowledged is audited
//! against what the recipients hold after `sync` (see the `churn` module for its report). Everything runs in one process on a few tasks per user, so that it stays
//! cheaper than the server it measures; it works against any server of the contract (palaver,
//! the Node peer).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use palaver_client::{self as client, Client, Event, PendingAck};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

// In a directory of its own: a file directly in src/bin/ would be taken for a binary.
#[path = "palaver-load/churn.rs"]
mod churn;

/// Times a `503 Server busy` answer to a setup request is retried, with pauses growing by
/// 250 ms up to `BUSY_PAUSE_MAX` (about a minute in all: registering thousands of users on a
/// machine that is busy with other work overflows the server's hashing queue for that long).
const BUSY_RETRIES: u64 = 36;
const BUSY_PAUSE_MAX: Duration = Duration::from_secs(2);

/// Time after the last send during which deliveries and acks still count.
const GRACE: Duration = Duration::from_secs(2);
/// A step of `--ramp` passes when nothing is lost, nothing refused, and p99 is below this.
const RAMP_P99_MAX_MS: f64 = 50.0;
/// Sends whose acks one user's collector may be waiting for; the sender waits beyond that.
const ACKS_IN_FLIGHT_MAX: usize = 4096;
/// Largest `--group-size`: a group is created in one request, whose `memberIds` the contract
/// bounds to 100 (the owner comes on top).
const GROUP_SIZE_MAX: usize = 101;
/// How long a setup request (register, open chat, connect, join) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
#[command(
    name = "palaver-load",
    about = "Load generator for the palaver wire contract (palaver or any peer server)"
)]
struct Args {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,
    /// Users, paired 1:1 (rounded up to an even number). With --idle: the users the idle
    /// sockets belong to, round-robin.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Messages per second each user sends.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Seconds of sending (with --idle: seconds to hold the sockets).
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Raise the rate step by step (×--ramp-factor) from --rate; print each step, then, last,
    /// the highest step with nothing lost, no error and p99 under 50 ms.
    #[arg(long)]
    ramp: bool,
    /// Rate multiplier between ramp steps.
    #[arg(long, default_value_t = 1.5)]
    ramp_factor: f64,
    /// Most ramp steps to run.
    #[arg(long, default_value_t = 16)]
    ramp_steps: usize,
    /// Steps that narrow the ramp's result once it has ended: each runs the geometric middle
    /// of the highest passing rate and the lowest failing one above it, and moves whichever
    /// bound it lands on. Three of them narrow a ×1.5 gap to ×1.05.
    #[arg(long, default_value_t = 3)]
    ramp_refine: usize,
    /// Open this many idle sockets and hold them for --secs (memory per connection).
    #[arg(long)]
    idle: Option<usize>,
    /// Process id of the server, to report its resident memory (from /proc).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Setup requests and connections in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Bytes of padding in each message text (the send time and ids come before it).
    #[arg(long, default_value_t = 64)]
    padding: usize,
    /// Churn scenario: cut every socket about every SECS seconds (exponential, mean SECS),
    /// offline 0.5-2 s, then reconnect, re-join, sync and retry unacknowledged sends.
    #[arg(long, value_name = "SECS", conflicts_with_all = ["ramp", "idle"])]
    churn: Option<f64>,
    /// Sockets per user in the churn scenario, each cut independently; a user's --rate is
    /// spread over them.
    #[arg(long, default_value_t = 1, requires = "churn")]
    tabs: usize,
    /// Seed of the churn scenario's cut schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Group scenario: this many group chats of --group-size users each (replaces --users and
    /// the 1:1 pairs).
    #[arg(long, conflicts_with_all = ["churn", "idle"])]
    groups: Option<usize>,
    /// Members of each group of --groups.
    #[arg(long, default_value_t = 20, requires = "groups")]
    group_size: usize,
}

impl Args {
    /// Users of the run, and how many share each chat.
    fn layout(&self) -> (usize, usize) {
        match self.groups {
            Some(groups) => (groups * self.group_size, self.group_size),
            None => (self.users.max(2).div_ceil(2) * 2, 2),
        }
    }
}

/// The line printed per run (or ramp step); field order as documented in issue 4.
#[derive(Debug, Clone, Serialize)]
struct Report {
    users: usize,
    /// Members of each group chat (the group scenario); each message is due to all but its
    /// sender, and `delivered` counts deliveries.
    #[serde(skip_serializing_if = "Option::is_none")]
    group_size: Option<usize>,
    rate: f64,
    secs: u64,
    connect_ms: u64,
    sent: u64,
    acked: u64,
    delivered: u64,
    lost: u64,
    duplicates: u64,
    errors: u64,
    delivered_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_rss_mb: Option<f64>,
    /// CPU seconds the server spent (user + system) from the step's first send to the end of
    /// its grace: setup (registration's password hashing above all) is not in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_cpu_s: Option<f64>,
}

#[derive(Debug, Serialize)]
struct IdleReport {
    idle: usize,
    users: usize,
    connect_ms: u64,
    errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_rss_before_mb: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_rss_mb: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_per_conn_kib: Option<f64>,
}

/// Microseconds since the generator started: the clock every sender and recipient share.
fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn rss_mb(pid: Option<u32>) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((kib / 1024.0 * 10.0).round() / 10.0)
}

/// CPU seconds (user + system) the process has used, from /proc (clock ticks of 100 Hz, the
/// kernel's `USER_HZ` on every common architecture).
fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // The fields after the command, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |field: usize| fields.get(field)?.parse::<u64>().ok();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

struct Server {
    base: String,
    /// `host:port` for the TCP connection and the WebSocket request.
    authority: String,
    http: reqwest::Client,
}

#[derive(Clone)]
struct Account {
    id: String,
    token: String,
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

impl Server {
    fn new(url: &str) -> Result<Self, Failure> {
        let parsed = reqwest::Url::parse(url)?;
        let host = parsed.host_str().ok_or("--url needs a host")?;
        let port = parsed.port_or_known_default().ok_or("--url needs a port")?;
        Ok(Self {
            base: url.trim_end_matches('/').to_owned(),
            authority: format!("{host}:{port}"),
            http: reqwest::Client::builder().timeout(SETUP_TIMEOUT).build()?,
        })
    }

    /// POSTs `body`; a `503 Server busy` (the server's password-hashing queue is full, as it
    /// may be while thousands of users register on a busy machine) is retried after a pause,
    /// as a client is told to, up to `BUSY_RETRIES` times.
    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Result<Value, Failure> {
        for attempt in 0.. {
            let mut request = self.http.post(format!("{}{path}", self.base)).json(&body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await?;
            let status = response.status();
            let answer: Value = response.json().await?;
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE && attempt < BUSY_RETRIES {
                let pause = Duration::from_millis(250 * (attempt + 1)).min(BUSY_PAUSE_MAX);
                tokio::time::sleep(pause).await;
                continue;
            }
            if !status.is_success() {
                return Err(format!("POST {path}: {status} {answer}").into());
            }
            return Ok(answer);
        }
        unreachable!("the loop returns")
    }

    async fn register(&self, run: &str, i: usize) -> Result<Account, Failure> {
        let body = self
            .post(
                "/api/auth/register",
                None,
                json!({
                    "name": format!("load {i}"),
                    "email": format!("load-{run}-{i}@load.test"),
                    "password": format!("load-password-{run}"),
                }),
            )
            .await?;
        Ok(Account {
            id: body["user"]["_id"]
                .as_str()
                .ok_or("register: no user id")?
                .to_owned(),
            token: body["token"]
                .as_str()
                .ok_or("register: no token")?
                .to_owned(),
        })
    }

    /// A group of `owner` and `others`; its chat id.
    async fn create_group(
        &self,
        name: &str,
        owner: &Account,
        others: &[Account],
    ) -> Result<String, Failure> {
        let ids: Vec<&str> = others.iter().map(|a| a.id.as_str()).collect();
        let body = self
            .post(
                "/api/chats",
                Some(&owner.token),
                json!({ "name": name, "memberIds": ids }),
            )
            .await?;
        Ok(body["_id"]
            .as_str()
            .ok_or("create group: no id")?
            .to_owned())
    }

    async fn open_chat(&self, caller: &Account, other: &Account) -> Result<String, Failure> {
        let body = self
            .post(
                &format!("/api/chats/with/{}", other.id),
                Some(&caller.token),
                json!({}),
            )
            .await?;
        Ok(body["_id"].as_str().ok_or("open chat: no id")?.to_owned())
    }

    async fn connect(&self, token: &str) -> Result<(Client, mpsc::Receiver<Event>), Failure> {
        let stream = tokio::net::TcpStream::connect(&self.authority).await?;
        stream.set_nodelay(true)?;
        Ok(client::connect(stream, &self.authority, token).await?)
    }
}

/// Registers `n` users, `concurrency` at a time; fails on the first refusal.
async fn register_all(
    server: &Server,
    n: usize,
    concurrency: usize,
) -> Result<Vec<Account>, Failure> {
    let run = format!("{}-{}", std::process::id(), now_us() ^ wall_nanos());
    let mut accounts: Vec<(usize, Account)> = futures_util::stream::iter(0..n)
        .map(|i| {
            let run = run.as_str();
            async move { server.register(run, i).await.map(|a| (i, a)) }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    accounts.sort_by_key(|(i, _)| *i);
    Ok(accounts.into_iter().map(|(_, a)| a).collect())
}

/// Distinguishes runs against the same server, so their emails never collide.
fn wall_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// What one recipient saw of the other members' messages during the current step.
#[derive(Default)]
struct Inbox {
    step: u32,
    /// Per sender, bit n set: the sender's message n of this step arrived.
    seen: HashMap<usize, Vec<u64>>,
    delivered: u64,
    duplicates: u64,
    latencies_ms: Vec<f32>,
}

impl Inbox {
    fn reset(&mut self, step: u32) {
        *self = Inbox {
            step,
            ..Inbox::default()
        };
    }

    fn record(&mut self, sender: usize, n: usize, latency_ms: f32) {
        let (word, bit) = (n / 64, 1u64 << (n % 64));
        let seen = self.seen.entry(sender).or_default();
        if seen.len() <= word {
            seen.resize(word + 1, 0);
        }
        if seen[word] & bit != 0 {
            self.duplicates += 1;
            return;
        }
        seen[word] |= bit;
        self.delivered += 1;
        self.latencies_ms.push(latency_ms);
    }
}

/// One connected user.
struct User {
    index: usize,
    chat: String,
    client: Client,
    inbox: Arc<Mutex<Inbox>>,
}

/// Counters shared by every task of a step.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    /// Sends answered `{ ok: true }` within the grace.
    acked: AtomicU64,
    /// Refused sends (`ok: false`), missing acks, broken connections.
    errors: AtomicU64,
    refused: AtomicU64,
}

/// The one field of a `new-message` the recipient reads.
#[derive(Deserialize)]
struct Delivered<'a> {
    #[serde(borrow)]
    text: std::borrow::Cow<'a, str>,
}

/// The one field of a send's acknowledgement the sender reads.
#[derive(Deserialize)]
struct AckOk {
    ok: bool,
}

/// True for an acknowledgement `{ ok: true, … }`.
fn accepted(answer: &client::AckAnswer) -> bool {
    serde_json::from_str::<AckOk>(answer.get()).is_ok_and(|a| a.ok)
}

/// Reads a user's events for the whole run: the partner's `new-message`s go into the inbox;
/// the user's own (the server echoes them to every socket of the sender) are skipped.
async fn receive(
    index: usize,
    mut events: mpsc::Receiver<Event>,
    inbox: Arc<Mutex<Inbox>>,
    counters: Arc<Mutex<Arc<Counters>>>,
) {
    while let Some(event) = events.recv().await {
        if event.name != "new-message" {
            continue;
        }
        let arrived = now_us();
        let Some(Delivered { text }) = event.parse::<Delivered>() else {
            continue;
        };
        // "<step> <sent at, µs> <sender index> <n> <padding>"
        let mut fields = text.split(' ');
        let (Some(step), Some(at), Some(sender), Some(n)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (Ok(step), Ok(at), Ok(sender), Ok(n)) = (
            step.parse::<u32>(),
            at.parse::<u64>(),
            sender.parse::<usize>(),
            n.parse::<usize>(),
        ) else {
            continue;
        };
        if sender == index {
            continue;
        }
        let mut inbox = inbox.lock().expect("never poisoned");
        // A straggler of an earlier step was already counted as lost there.
        if step == inbox.step {
            inbox.record(sender, n, arrived.saturating_sub(at) as f32 / 1000.0);
        }
    }
    // The connection closed: during a run that is an error of the current step.
    let current = counters.lock().expect("never poisoned").clone();
    current.errors.fetch_add(1, Ordering::Relaxed);
}

/// One user's sending for one step: `rate` messages per second, starting `phase` late.
async fn send_step(
    user: Arc<User>,
    step: u32,
    rate: f64,
    phase: Duration,
    end: tokio::time::Instant,
    padding: Arc<str>,
    counters: Arc<Counters>,
) {
    let (acks_tx, mut acks_rx) = mpsc::channel::<PendingAck>(ACKS_IN_FLIGHT_MAX);
    let deadline = end + GRACE;
    let ack_counters = Arc::clone(&counters);
    // Acks are awaited in send order by a second task, so the sender keeps its schedule.
    let collector = tokio::spawn(async move {
        while let Some(pending) = acks_rx.recv().await {
            match pending.wait_until(deadline).await {
                Ok(answer) if accepted(&answer) => {
                    ack_counters.acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {
                    ack_counters.refused.fetch_add(1, Ordering::Relaxed);
                    ack_counters.errors.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    ack_counters.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    tokio::time::sleep(phase).await;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut n = 0usize;
    loop {
        tick.tick().await;
        if tokio::time::Instant::now() >= end {
            break;
        }
        let text = format!("{step} {} {} {n} {padding}", now_us(), user.index);
        let payload = json!({
            "chatId": user.chat,
            "text": text,
            "clientMsgId": format!("{step}-{n}"),
        });
        match user
            .client
            .emit_expecting_ack("send-message", &payload)
            .await
        {
            Ok(pending) => {
                counters.sent.fetch_add(1, Ordering::Relaxed);
                if acks_tx.send(pending).await.is_err() {
                    break;
                }
            }
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        n += 1;
    }
    drop(acks_tx);
    let _ = collector.await;
}

/// Percentile by nearest rank of sorted values.
fn percentile(sorted: &[f32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1])
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

struct Run {
    users: Vec<Arc<User>>,
    connect_ms: u64,
    counters: Arc<Mutex<Arc<Counters>>>,
}

async fn set_up(server: &Server, args: &Args) -> Result<Run, Failure> {
    let (n, size) = args.layout();
    let accounts = register_all(server, n, args.concurrency).await?;
    let chats: Vec<String> = futures_util::stream::iter(accounts.chunks(size).enumerate())
        .map(|(k, members)| async move {
            match args.groups {
                Some(_) => {
                    let name = format!("load group {k}");
                    server.create_group(&name, &members[0], &members[1..]).await
                }
                None => server.open_chat(&members[0], &members[1]).await,
            }
        })
        .buffered(args.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let counters: Arc<Mutex<Arc<Counters>>> = Arc::default();
    let started = Instant::now();
    let users: Vec<Arc<User>> = futures_util::stream::iter(accounts.iter().enumerate())
        .map(|(index, account)| {
            let chat = chats[index / size].clone();
            let counters = Arc::clone(&counters);
            async move {
                let (client, events) = server.connect(&account.token).await?;
                let inbox = Arc::new(Mutex::new(Inbox::default()));
                tokio::spawn(receive(index, events, Arc::clone(&inbox), counters));
                let joined = client
                    .emit_with_ack("join-chat", &json!(chat), SETUP_TIMEOUT)
                    .await?;
                if joined["ok"] != Value::Bool(true) {
                    return Err(format!("join-chat refused: {joined}").into());
                }
                Ok::<_, Failure>(Arc::new(User {
                    index,
                    chat,
                    client,
                    inbox,
                }))
            }
        })
        .buffered(args.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    Ok(Run {
        users,
        connect_ms: started.elapsed().as_millis() as u64,
        counters,
    })
}

async fn run_step(run: &Run, args: &Args, step: u32, rate: f64) -> Report {
    let counters = Arc::new(Counters::default());
    *run.counters.lock().expect("never poisoned") = Arc::clone(&counters);
    for user in &run.users {
        user.inbox.lock().expect("never poisoned").reset(step);
    }
    let padding: Arc<str> = "x".repeat(args.padding).into();
    let period = Duration::from_secs_f64(1.0 / rate);
    let cpu_before = cpu_seconds(args.server_pid);
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_secs(args.secs);
    let count = run.users.len();
    let senders: Vec<_> = run
        .users
        .iter()
        .map(|user| {
            // Spread evenly over one period, as people do, never all on the same tick.
            let phase = period.mul_f64(user.index as f64 / count as f64);
            tokio::spawn(send_step(
                Arc::clone(user),
                step,
                rate,
                phase,
                end,
                Arc::clone(&padding),
                Arc::clone(&counters),
            ))
        })
        .collect();
    for sender in senders {
        let _ = sender.await;
    }
    tokio::time::sleep_until(end + GRACE).await;
    let server_rss_mb = rss_mb(args.server_pid);
    let server_cpu_s = cpu_seconds(args.server_pid)
        .zip(cpu_before)
        .map(|(after, before)| round2(after - before));

    let mut latencies = Vec::new();
    let (mut delivered, mut duplicates) = (0, 0);
    for user in &run.users {
        let mut inbox = user.inbox.lock().expect("never poisoned");
        delivered += inbox.delivered;
        duplicates += inbox.duplicates;
        latencies.append(&mut inbox.latencies_ms);
        // Stragglers after this point belong to no step.
        inbox.step = u32::MAX;
    }
    latencies.sort_unstable_by(f32::total_cmp);
    let sent = counters.sent.load(Ordering::Relaxed);
    let refused = counters.refused.load(Ordering::Relaxed);
    let (_, size) = args.layout();
    // Every message is due to every member but its sender.
    let due = (sent.saturating_sub(refused)) * (size as u64 - 1);
    Report {
        users: count,
        group_size: args.groups.map(|_| size),
        rate,
        secs: args.secs,
        connect_ms: run.connect_ms,
        sent,
        acked: counters.acked.load(Ordering::Relaxed),
        delivered,
        lost: due.saturating_sub(delivered),
        duplicates,
        errors: counters.errors.load(Ordering::Relaxed),
        delivered_per_s: round2(delivered as f64 / args.secs as f64),
        p50_ms: round2(percentile(&latencies, 0.50)),
        p99_ms: round2(percentile(&latencies, 0.99)),
        max_ms: round2(latencies.last().copied().map_or(0.0, f64::from)),
        server_rss_mb,
        server_cpu_s,
    }
}

fn passes(report: &Report) -> bool {
    report.lost == 0 && report.errors == 0 && report.sent > 0 && report.p99_ms < RAMP_P99_MAX_MS
}

fn print(line: &impl Serialize) {
    println!(
        "{}",
        serde_json::to_string(line).expect("reports serialise")
    );
}

async fn load(server: &Server, args: &Args) -> Result<(), Failure> {
    let run = set_up(server, args).await?;
    if !args.ramp {
        print(&run_step(&run, args, 0, args.rate).await);
        return Ok(());
    }
    let mut ramp = Ramp::default();
    let mut rate = args.rate;
    let mut failures_in_a_row = 0;
    for step in 0..args.ramp_steps {
        if ramp.record(ramp_step(&run, args, step, rate).await) {
            failures_in_a_row = 0;
        } else {
            // One bad step can be noise on a shared machine; two in a row end the ramp.
            failures_in_a_row += 1;
            if failures_in_a_row == 2 {
                break;
            }
        }
        rate = (rate * args.ramp_factor * 100.0).round() / 100.0;
    }
    for step in args.ramp_steps..args.ramp_steps + args.ramp_refine {
        let Some(rate) = ramp.middle() else { break };
        ramp.record(ramp_step(&run, args, step, rate).await);
    }
    match ramp.best {
        Some(best) => print(&best),
        None => return Err("no ramp step passed (nothing lost, no error, p99 < 50 ms)".into()),
    }
    Ok(())
}

/// One step of `--ramp`, printed, after which the server gets a second to drain what the step
/// left queued.
async fn ramp_step(run: &Run, args: &Args, step: usize, rate: f64) -> Report {
    let report = run_step(run, args, step as u32, rate).await;
    print(&report);
    tokio::time::sleep(Duration::from_secs(1)).await;
    report
}

/// What the ramp has learnt so far: its highest passing step, and the lowest rate above that
/// which failed.
#[derive(Default)]
struct Ramp {
    best: Option<Report>,
    lowest_failure_above_best: Option<f64>,
}

impl Ramp {
    /// Records a step; true if it passed.
    fn record(&mut self, report: Report) -> bool {
        let passed = passes(&report);
        let rate = report.rate;
        if rate <= self.best_rate() {
            // Below the best: neither bound moves (a failure there is noise or a hiccup).
            return passed;
        }
        if passed {
            self.best = Some(report);
            self.lowest_failure_above_best = self.lowest_failure_above_best.filter(|&f| f > rate);
        } else {
            let lowest = self.lowest_failure_above_best.map_or(rate, |f| f.min(rate));
            self.lowest_failure_above_best = Some(lowest);
        }
        passed
    }

    fn best_rate(&self) -> f64 {
        self.best.as_ref().map_or(0.0, |b| b.rate)
    }

    /// The rate to try next when narrowing: the geometric middle of the bounds, rounded as the
    /// ramp's rates are; none without both bounds or once they are within 1% of each other.
    fn middle(&self) -> Option<f64> {
        let low = self.best.as_ref()?.rate;
        let high = self.lowest_failure_above_best?;
        let middle = ((low * high).sqrt() * 100.0).round() / 100.0;
        (high / low > 1.01 && middle > low && middle < high).then_some(middle)
    }
}

async fn idle(server: &Server, args: &Args, sockets: usize) -> Result<(), Failure> {
    let users = args.users.clamp(1, sockets.max(1));
    let accounts = register_all(server, users, args.concurrency).await?;
    // Settle: the server's memory after setup, before any socket, is the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_mb(args.server_pid);
    let errors = AtomicU64::new(0);
    let started = Instant::now();
    let held: Vec<(Client, mpsc::Receiver<Event>)> = futures_util::stream::iter(0..sockets)
        .map(|i| server.connect(&accounts[i % users].token))
        .buffer_unordered(args.concurrency)
        .filter_map(|connected| {
            if connected.is_err() {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            std::future::ready(connected.ok())
        })
        .collect()
        .await;
    let connect_ms = started.elapsed().as_millis() as u64;
    // Drain presence events while holding, so no socket's queue backs up.
    let drains: Vec<_> = held
        .into_iter()
        .map(|(client, mut events)| {
            tokio::spawn(async move {
                while events.recv().await.is_some() {}
                drop(client);
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    let after = rss_mb(args.server_pid);
    let per_conn = match (before, after) {
        (Some(b), Some(a)) if sockets > 0 => Some(round2((a - b) * 1024.0 / sockets as f64)),
        _ => None,
    };
    print(&IdleReport {
        idle: sockets,
        users,
        connect_ms,
        errors: errors.load(Ordering::Relaxed),
        server_rss_before_mb: before,
        server_rss_mb: after,
        rss_per_conn_kib: per_conn,
    });
    drains.iter().for_each(tokio::task::JoinHandle::abort);
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if !(args.rate > 0.0 && args.rate.is_finite()) || args.secs == 0 || args.ramp_factor <= 1.0 {
        eprintln!("palaver-load: --rate and --secs must be positive and --ramp-factor above 1");
        return std::process::ExitCode::from(2);
    }
    if args.groups == Some(0) || !(2..=GROUP_SIZE_MAX).contains(&args.group_size) {
        eprintln!(
            "palaver-load: --groups must be positive and --group-size from 2 to {GROUP_SIZE_MAX}"
        );
        return std::process::ExitCode::from(2);
    }
    if args
        .churn
        .is_some_and(|secs| !(secs > 0.0 && secs.is_finite()))
        || !(1..=churn::TABS_MAX).contains(&args.tabs)
    {
        eprintln!(
            "palaver-load: --churn must be positive and --tabs from 1 to {}",
            churn::TABS_MAX
        );
        return std::process::ExitCode::from(2);
    }
    // reqwest is built with rustls and no default crypto provider, as in the server's main.rs.
    let _ = rustls::crypto::ring::default_provider().install_default();
    now_us();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome = runtime.block_on(async {
        let server = Server::new(&args.url)?;
        match (args.idle, args.churn) {
            (Some(sockets), _) => idle(&server, &args, sockets).await,
            (None, Some(churn_secs)) => churn::run(server, &args, churn_secs).await,
            (None, None) => load(&server, &args).await,
        }
    });
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("palaver-load: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rate: f64, p99_ms: f64) -> Report {
        Report {
            users: 2,
            group_size: None,
            rate,
            secs: 1,
            connect_ms: 0,
            sent: 10,
            acked: 10,
            delivered: 10,
            lost: 0,
            duplicates: 0,
            errors: 0,
            delivered_per_s: 10.0,
            p50_ms: 1.0,
            p99_ms,
            max_ms: p99_ms,
            server_rss_mb: None,
            server_cpu_s: None,
        }
    }

    #[test]
    fn narrowing_bisects_between_the_best_pass_and_the_lowest_failure_above_it() {
        let mut ramp = Ramp::default();
        assert!(ramp.record(step(100.0, 5.0)));
        assert_eq!(ramp.middle(), None, "no failure yet");
        assert!(!ramp.record(step(225.0, 80.0)));
        assert!(!ramp.record(step(150.0, 60.0)));
        assert_eq!(ramp.middle(), Some(122.47));
        assert!(ramp.record(step(122.47, 20.0)));
        assert_eq!(ramp.best_rate(), 122.47);
        assert_eq!(ramp.middle(), Some(135.54));
        assert!(!ramp.record(step(135.54, 51.0)));
        assert_eq!(ramp.middle(), Some(128.84));
    }

    #[test]
    fn a_failure_below_the_best_moves_no_bound_and_a_higher_pass_drops_lower_failures() {
        let mut ramp = Ramp::default();
        ramp.record(step(100.0, 5.0));
        ramp.record(step(150.0, 60.0));
        assert!(!ramp.record(step(90.0, 60.0)));
        assert_eq!(ramp.lowest_failure_above_best, Some(150.0));
        // Noise can let a rate above an earlier failure pass: it becomes the best.
        assert!(ramp.record(step(225.0, 10.0)));
        assert_eq!(ramp.lowest_failure_above_best, None);
        assert_eq!(ramp.middle(), None);
    }

    #[test]
    fn an_inbox_counts_each_senders_messages_once() {
        let mut inbox = Inbox::default();
        inbox.reset(3);
        // Two members of a group both send their message 0: two deliveries, not a duplicate.
        inbox.record(1, 0, 1.0);
        inbox.record(2, 0, 2.0);
        inbox.record(2, 70, 2.5);
        inbox.record(1, 0, 3.0);
        assert_eq!((inbox.delivered, inbox.duplicates), (3, 1));
        assert_eq!(inbox.latencies_ms, [1.0, 2.0, 2.5]);
    }

    #[test]
    fn bounds_within_one_percent_need_no_more_steps() {
        let mut ramp = Ramp::default();
        ramp.record(step(100.0, 5.0));
        ramp.record(step(100.9, 60.0));
        assert_eq!(ramp.middle(), None);
    }
}
