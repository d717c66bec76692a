//! The churn scenario (`--churn SECS`): users who chat while their connections keep dropping, as
//! phones on a flaky network do, and an audit of what survived.
//!
//! Users are paired 1:1 as in the other scenarios; each holds `--tabs` sockets, and each socket
//! sends `--rate / --tabs` messages per second (so a user sends `--rate`), out of phase. Every
//! socket is cut independently: the time to its next cut is drawn from an exponential
//! distribution with mean SECS (cuts form a Poisson process, counted from the moment the socket is
//! back), it stays offline for a time drawn uniformly from 0.5–2 s, then reconnects with the same
//! token, re-joins its chat and calls `sync` from the highest seq below which it holds every
//! message (paging while `hasMore`). A cut is an abort: the TCP connection closes without a
//! Socket.IO or WebSocket goodbye. Every send carries a `clientMsgId`
//! (`<user>.<tab>.<n>`); the sends a cut left unacknowledged are sent again once, with the same
//! `clientMsgId`, right after the reconnect. A send tick that finds its socket offline is skipped
//! (a user cannot type into a dead tab; the latency of a queue on the phone is not the server's).
//!
//! After `--secs` nothing is sent or cut any more; every socket waits for its acknowledgements,
//! reconnects if it was cut, and syncs to the end of its chat. Then the generator compares what
//! each socket holds with what was acknowledged, and prints one JSON line:
//!
//! - `users`, `tabs`, `sockets`, `rate` (per user), `secs`, `churn_secs`, `connect_ms` (setup of
//!   every socket, joins included), `settle_ms` (the wait after it until no presence packet
//!   arrived for 750 ms, so the setup's own announcements are not counted; 30 s at most).
//! - `sends`: messages sent (first attempts); `retries`: second attempts after a cut;
//!   `acked`: sends acknowledged `ok`; `refused`: acknowledged `ok: false`; `unacked`: never
//!   acknowledged (still open after 10 s, or cut again after their retry); `skipped`: send ticks
//!   that found their socket offline or 256 acknowledgements outstanding.
//! - `acked_within_1s_pct`: sends acknowledged `ok` within 1 s of their first attempt, of
//!   `sends`; `uncut_acked_within_1s_pct`: the same over the sends no cut caught in flight
//!   (`sends − retries`: the server's share, since a cut send cannot be answered before its
//!   socket is back); `ack_p50_ms`, `ack_p99_ms`: first attempt → acknowledgement, over `acked` (a retried
//!   send counts from its first attempt).
//! - `live_pct`: of every (acknowledged message, socket of the recipient) pair, the share where
//!   that socket received the message as `new-message` (while connected, before any `sync`
//!   brought it). `recovered_pct`: the share where the socket holds it after its final `sync`;
//!   100 on a correct server.
//! - `stored_duplicates`: messages stored beyond the first for one `clientMsgId` (two seqs, so two
//!   ids, for one send), over the union of every chat's views. `redelivered`: `new-message`s a
//!   connection received for a seq it had already been sent live on that connection (a repeat,
//!   or one out of ascending order). `seq_conflicts`: a seq that arrived as two different
//!   messages. `ack_mismatches`: acknowledgements whose message is not the one sent.
//! - `cuts`: cuts performed; `drops`: connections the server or the network ended; `reconnect_errors`:
//!   failed reconnection attempts (each retried after 250 ms, 40 at most); `failed_sockets`:
//!   sockets that gave up reconnecting.
//! - `presence_per_socket_s`: `user-online`, `user-offline` and `online-users` packets received
//!   during the `--secs` of sending, per socket per second.
//! - `server_rss_mb` with `--server-pid`, after the sending.
//!
//! Each socket is one task (plus the client's one frame pump), which reads its events, sends on
//! schedule, awaits its acknowledgements in order and performs its cuts; it keeps reading while it
//! waits for an acknowledgement, so presence packets are counted, never left unread. What it keeps
//! grows with the run (a few bytes per message of its chat), never per event.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use palaver_client::{AckAnswer, Client, ClientError, Event, PendingAck};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::{Account, Args, Failure, Server, now_us, percentile, print, register_all, round2};

/// How long a send's acknowledgement is awaited before the send counts as unacknowledged.
const ACK_WAIT: Duration = Duration::from_secs(10);
/// The acknowledgement time the report's headline share is measured against.
const ACK_FAST: Duration = Duration::from_secs(1);
/// Sends one socket awaits acknowledgements for; a tick beyond that is skipped.
const IN_FLIGHT_MAX: usize = 256;
/// A cut socket stays offline for a time drawn uniformly from this range.
const OFFLINE_MIN: Duration = Duration::from_millis(500);
const OFFLINE_MAX: Duration = Duration::from_millis(2000);
/// Messages asked for per `sync` page.
const SYNC_PAGE: u64 = 100;
/// Reconnection attempts after a cut, and the pause between two.
const RECONNECT_ATTEMPTS: u32 = 40;
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);
/// How long a join or a sync page may take.
const REQUEST_WAIT: Duration = Duration::from_secs(30);
/// Seqs one socket's view of its chat may track; a run that would send more is refused.
const VIEW_SEQS_MAX: u64 = 1 << 22;
/// Sockets per user.
pub const TABS_MAX: usize = 64;
/// The sending starts once no socket has received a presence packet for this long (the
/// announcements of the setup's own connections are not the churn's), or after `SETTLE_MAX`.
const SETTLE_QUIET: Duration = Duration::from_millis(750);
const SETTLE_MAX: Duration = Duration::from_secs(30);

/// When (`now_us`) any socket last received a presence packet.
static LAST_PRESENCE_US: AtomicU64 = AtomicU64::new(0);

/// The scenario's settings, fixed for the run.
struct Plan {
    rate_per_tab: f64,
    churn_mean: Duration,
    secs: u64,
    padding: Arc<str>,
    seed: u64,
}

pub async fn run(server: Server, args: &Args, churn_secs: f64) -> Result<(), Failure> {
    let users = args.users.max(2).div_ceil(2) * 2;
    let tabs = args.tabs;
    let messages_per_chat = 2.0 * args.rate * args.secs as f64 * 2.0;
    if messages_per_chat > VIEW_SEQS_MAX as f64 {
        return Err(format!(
            "--rate × --secs asks for up to {messages_per_chat:.0} messages per chat; the views \
             track at most {VIEW_SEQS_MAX}"
        )
        .into());
    }
    let server = Arc::new(server);
    let accounts = register_all(&server, users, args.concurrency).await?;
    let chats: Vec<Arc<str>> = futures_util::stream::iter(accounts.chunks(2))
        .map(|pair| server.open_chat(&pair[0], &pair[1]))
        .buffered(args.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|chat| chat.map(Arc::from))
        .collect::<Result<_, _>>()?;
    let plan = Arc::new(Plan {
        rate_per_tab: args.rate / tabs as f64,
        churn_mean: Duration::from_secs_f64(churn_secs),
        secs: args.secs,
        padding: "x".repeat(args.padding).into(),
        seed: args.seed,
    });
    let (start_tx, start_rx) = watch::channel(None);
    let (ready_tx, mut ready_rx) = mpsc::channel(args.concurrency.max(1));
    let setup = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let started = std::time::Instant::now();
    let mut tasks = Vec::with_capacity(users * tabs);
    for (user, account) in accounts.iter().enumerate() {
        for tab in 0..tabs {
            let socket = Tab::new(user, tab, tabs, &chats[user / 2], account, &plan);
            tasks.push(tokio::spawn(socket_task(
                Arc::clone(&server),
                socket,
                Arc::clone(&plan),
                Arc::clone(&setup),
                ready_tx.clone(),
                start_rx.clone(),
            )));
        }
    }
    drop(ready_tx);
    let sockets = tasks.len();
    for _ in 0..sockets {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(error)) => {
                tasks.iter().for_each(|t| t.abort());
                return Err(error);
            }
            None => return Err("a socket's task ended during setup".into()),
        }
    }
    let connect_ms = started.elapsed().as_millis() as u64;
    let settle_ms = settle().await;
    start_tx.send_replace(Some(Instant::now()));
    let mut finished = Vec::with_capacity(sockets);
    for task in tasks {
        finished.push(task.await?);
    }
    let server_rss_mb = crate::rss_mb(args.server_pid);
    // Every send has its answer now: each socket catches up to the end of its chat.
    let mut finished: Vec<Tab> = futures_util::stream::iter(finished)
        .map(|(tab, live)| final_sync(Arc::clone(&server), tab, live))
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    finished.sort_by_key(|tab| (tab.user, tab.tab));
    let report = report(
        &finished,
        Settings {
            users,
            tabs,
            rate: args.rate,
            secs: args.secs,
            churn_secs,
            connect_ms,
            settle_ms,
            server_rss_mb,
        },
    );
    print(&report);
    Ok(())
}

/// Waits until the presence packets the setup caused have been read; returns the time taken.
async fn settle() -> u64 {
    let started = Instant::now();
    while started.elapsed() < SETTLE_MAX {
        tokio::time::sleep(SETTLE_QUIET / 4).await;
        let quiet_us = now_us().saturating_sub(LAST_PRESENCE_US.load(Ordering::Relaxed));
        if quiet_us >= SETTLE_QUIET.as_micros() as u64 {
            break;
        }
    }
    started.elapsed().as_millis() as u64
}

/// One socket's life: set up, wait for the start, churn, then hand back what it holds.
async fn socket_task(
    server: Arc<Server>,
    mut tab: Tab,
    plan: Arc<Plan>,
    setup: Arc<Semaphore>,
    ready: mpsc::Sender<Result<(), Failure>>,
    mut start: watch::Receiver<Option<Instant>>,
) -> (Tab, Option<Live>) {
    let connected = {
        let _permit = setup.acquire().await;
        connect_and_join(&server, &mut tab).await
    };
    let mut live = match connected {
        Ok(live) => {
            let _ = ready.send(Ok(())).await;
            live
        }
        Err(error) => {
            let _ = ready.send(Err(error)).await;
            return (tab, None);
        }
    };
    drop(ready);
    // Keep reading while the others connect, so no socket's queue backs up before the start.
    let start = loop {
        if let Some(at) = *start.borrow_and_update() {
            break at;
        }
        tokio::select! {
            changed = start.changed() => if changed.is_err() { return (tab, Some(live)) },
            event = live.events.recv() => match event {
                Some(event) => tab.on_event(&event, &mut live.newest_live_seq),
                None => {
                    tab.stats.drops += 1;
                    match reconnect(&server, &mut tab, &mut AckQueue::default(), &plan).await {
                        Some(back) => live = back,
                        None => return (tab, None),
                    }
                }
            },
        }
    };
    let live = churn(&server, &mut tab, live, &plan, start).await;
    (tab, live)
}

/// What woke a socket's loop.
enum Wake {
    Handled,
    /// The connection ended without us (or a send found it gone).
    Broken,
    Cut,
}

/// The sending phase of one socket, and the wait for its last acknowledgements.
async fn churn(
    server: &Server,
    tab: &mut Tab,
    mut live: Live,
    plan: &Plan,
    start: Instant,
) -> Option<Live> {
    let send_end = start + Duration::from_secs(plan.secs);
    tab.counting_until = send_end;
    let period = Duration::from_secs_f64(1.0 / plan.rate_per_tab);
    let mut next_send = start + period.mul_f64(tab.phase);
    let mut next_cut = Instant::now() + tab.rng.exponential(plan.churn_mean);
    let mut acks = AckQueue::default();
    loop {
        let sending = Instant::now() < send_end;
        if !sending && acks.is_empty() && tab.to_retry.is_empty() {
            return Some(live);
        }
        let wake = tokio::select! {
            biased;
            event = live.events.recv() => match event {
                Some(event) => {
                    tab.on_event(&event, &mut live.newest_live_seq);
                    Wake::Handled
                }
                None => Wake::Broken,
            },
            (sent, answer) = acks.next(), if acks.has_head() => {
                tab.on_ack(sent, answer);
                Wake::Handled
            }
            () = tokio::time::sleep_until(next_send), if next_send < send_end => {
                next_send += period;
                if acks.len() >= IN_FLIGHT_MAX {
                    tab.stats.skipped += 1;
                    Wake::Handled
                } else if tab.send(&live.client, &mut acks, plan).await {
                    Wake::Handled
                } else {
                    Wake::Broken
                }
            }
            () = tokio::time::sleep_until(next_cut), if next_cut < send_end => Wake::Cut,
            () = tokio::time::sleep_until(send_end), if sending => Wake::Handled,
        };
        let offline = match wake {
            Wake::Handled => continue,
            Wake::Broken => {
                tab.stats.drops += 1;
                Duration::ZERO
            }
            Wake::Cut => {
                tab.stats.cuts += 1;
                tab.rng.uniform(OFFLINE_MIN, OFFLINE_MAX)
            }
        };
        live.client.abort();
        tab.to_retry.extend(acks.take_all());
        drop(live);
        tokio::time::sleep(offline).await;
        live = reconnect(server, tab, &mut acks, plan).await?;
        let missed = ticks_missed(next_send, Instant::now(), send_end, period);
        tab.stats.skipped += missed;
        next_send += period * u32::try_from(missed).unwrap_or(u32::MAX);
        next_cut = Instant::now() + tab.rng.exponential(plan.churn_mean);
    }
}

/// Send ticks at or before `now` (and before `end`), counted from `next`.
fn ticks_missed(next: Instant, now: Instant, end: Instant, period: Duration) -> u64 {
    let until = now.min(end);
    if until < next {
        return 0;
    }
    (until - next).as_nanos() as u64 / period.as_nanos().max(1) as u64 + 1
}

/// Reconnects, re-joins, sends again what a cut left unacknowledged (once per message), and
/// syncs. `None` once every attempt failed; what was waiting to be retried counts as unacked.
async fn reconnect(
    server: &Server,
    tab: &mut Tab,
    acks: &mut AckQueue,
    plan: &Plan,
) -> Option<Live> {
    for attempt in 0..RECONNECT_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
        let mut live = match connect_and_join(server, tab).await {
            Ok(live) => live,
            Err(_) => {
                tab.stats.reconnect_errors += 1;
                continue;
            }
        };
        if resend(tab, &live.client, acks, plan).await && sync(tab, &mut live).await.is_ok() {
            return Some(live);
        }
        live.client.abort();
        tab.to_retry.extend(acks.take_all());
        tab.stats.reconnect_errors += 1;
    }
    tab.stats.failed = true;
    tab.stats.unacked += tab.to_retry.len() as u64;
    tab.to_retry.clear();
    None
}

/// Sends again, once each, the sends a lost connection left unanswered; those already retried
/// count as unacked. False if the connection is gone again (what is left stays to be retried).
async fn resend(tab: &mut Tab, client: &Client, acks: &mut AckQueue, plan: &Plan) -> bool {
    let mut waiting = std::mem::take(&mut tab.to_retry).into_iter();
    while let Some(sent) = waiting.next() {
        if sent.retried {
            tab.stats.unacked += 1;
            continue;
        }
        let retry = Sent {
            retried: true,
            ..sent
        };
        if !tab.emit(client, acks, plan, retry).await {
            tab.to_retry.push(sent);
            tab.to_retry.extend(waiting);
            return false;
        }
        tab.stats.retries += 1;
    }
    true
}

/// After the sending: reconnects a socket that is down, syncs it to the end, closes it.
async fn final_sync(server: Arc<Server>, mut tab: Tab, live: Option<Live>) -> Tab {
    let live = match live {
        Some(live) if !live.client.is_closed() => Some(live),
        _ if tab.stats.failed => None,
        _ => {
            let mut attempts = 0;
            loop {
                match connect_and_join(&server, &mut tab).await {
                    Ok(live) => break Some(live),
                    Err(_) if attempts + 1 < RECONNECT_ATTEMPTS => {
                        attempts += 1;
                        tab.stats.reconnect_errors += 1;
                        tokio::time::sleep(RECONNECT_PAUSE).await;
                    }
                    Err(_) => {
                        tab.stats.failed = true;
                        break None;
                    }
                }
            }
        }
    };
    if let Some(mut live) = live {
        if sync(&mut tab, &mut live).await.is_err() {
            tab.stats.failed = true;
        }
        live.client.close().await;
    }
    tab
}

/// A connected socket: its client, its events, and the newest seq it has been sent live.
struct Live {
    client: Client,
    events: mpsc::Receiver<Event>,
    newest_live_seq: u64,
}

/// Connects with the tab's token and joins its chat, reading events meanwhile.
async fn connect_and_join(server: &Server, tab: &mut Tab) -> Result<Live, Failure> {
    let (client, events) = server.connect(&tab.token).await?;
    let mut live = Live {
        client,
        events,
        newest_live_seq: 0,
    };
    let join = live
        .client
        .emit_expecting_ack("join-chat", &json!(&*tab.chat))
        .await?;
    let answer = reading(tab, &mut live, join).await?;
    if !crate::accepted(&answer) {
        return Err(format!("join-chat refused: {}", answer.get()).into());
    }
    Ok(live)
}

/// Waits for `pending`'s answer while handling the socket's events.
async fn reading(
    tab: &mut Tab,
    live: &mut Live,
    pending: PendingAck,
) -> Result<AckAnswer, ClientError> {
    let answer = pending.wait_until(Instant::now() + REQUEST_WAIT);
    tokio::pin!(answer);
    loop {
        tokio::select! {
            biased;
            event = live.events.recv() => match event {
                Some(event) => tab.on_event(&event, &mut live.newest_live_seq),
                // The frame pump has ended: no answer can come any more.
                None => return Err(ClientError::Closed),
            },
            result = &mut answer => return result,
        }
    }
}

/// One page of a `sync` answer.
#[derive(Deserialize)]
struct SyncPage<'a> {
    ok: bool,
    #[serde(borrow, default)]
    messages: Vec<Stored<'a>>,
    #[serde(rename = "hasMore", default)]
    has_more: bool,
}

/// The fields of a message the audit reads.
#[derive(Deserialize)]
struct Stored<'a> {
    seq: u64,
    #[serde(rename = "clientMsgId", borrow, default)]
    client_msg_id: Option<Cow<'a, str>>,
}

/// Fetches, page by page, the messages above the highest seq below which the tab holds all.
async fn sync(tab: &mut Tab, live: &mut Live) -> Result<(), Failure> {
    let mut after = tab.view.complete_up_to();
    loop {
        let pending = live
            .client
            .emit_expecting_ack(
                "sync",
                &json!({ "chatId": &*tab.chat, "afterSeq": after, "limit": SYNC_PAGE }),
            )
            .await?;
        let answer = reading(tab, live, pending).await?;
        let page: SyncPage = serde_json::from_str(answer.get())?;
        if !page.ok {
            return Err(format!("sync refused: {}", answer.get()).into());
        }
        for message in &page.messages {
            let key = tab.key_of(message.client_msg_id.as_deref());
            tab.hold(message.seq, key, false);
            after = after.max(message.seq);
        }
        if !page.has_more || page.messages.is_empty() {
            return Ok(());
        }
    }
}

/// A send whose acknowledgement is awaited.
#[derive(Debug, Clone, Copy)]
struct Sent {
    n: u64,
    first_sent_us: u64,
    retried: bool,
}

type AckFuture = Pin<Box<dyn Future<Output = Result<AckAnswer, ClientError>> + Send>>;

/// A socket's outstanding acknowledgements, awaited in send order (the server answers a
/// socket's sends in the order they came). Only the oldest is polled.
#[derive(Default)]
struct AckQueue {
    head: Option<(Sent, AckFuture)>,
    /// Each with the time its answer is due by ([`ACK_WAIT`] after its emission).
    rest: VecDeque<(Sent, Instant, PendingAck)>,
}

impl AckQueue {
    fn push(&mut self, sent: Sent, pending: PendingAck) {
        let deadline = Instant::now() + ACK_WAIT;
        self.rest.push_back((sent, deadline, pending));
        if self.head.is_none() {
            self.promote();
        }
    }

    fn promote(&mut self) {
        self.head = self.rest.pop_front().map(|(sent, deadline, pending)| {
            let future: AckFuture = Box::pin(pending.wait_until(deadline));
            (sent, future)
        });
    }

    fn has_head(&self) -> bool {
        self.head.is_some()
    }

    fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    fn len(&self) -> usize {
        usize::from(self.head.is_some()) + self.rest.len()
    }

    /// The oldest send and its answer. Cancel-safe: the send stays queued until answered.
    async fn next(&mut self) -> (Sent, Result<AckAnswer, ClientError>) {
        let (_, answer) = self.head.as_mut().expect("awaited only with a head");
        let answer = answer.await;
        let (sent, _) = self.head.take().expect("still there");
        self.promote();
        (sent, answer)
    }

    /// Forgets every outstanding send (its connection is gone) and returns them.
    fn take_all(&mut self) -> Vec<Sent> {
        let head = self.head.take().map(|(sent, _)| sent);
        head.into_iter()
            .chain(self.rest.drain(..).map(|(sent, _, _)| sent))
            .collect()
    }
}

/// Counters of one socket.
#[derive(Debug, Default, Clone)]
struct Stats {
    sends: u64,
    retries: u64,
    acked: u64,
    acked_fast: u64,
    /// Acknowledged within `ACK_FAST` on the first attempt.
    acked_fast_first: u64,
    refused: u64,
    unacked: u64,
    skipped: u64,
    redelivered: u64,
    seq_conflicts: u64,
    ack_mismatches: u64,
    cuts: u64,
    drops: u64,
    reconnect_errors: u64,
    presence: u64,
    failed: bool,
}

/// One socket of one user, across all its connections.
struct Tab {
    user: usize,
    tab: usize,
    tabs: usize,
    chat: Arc<str>,
    token: Arc<str>,
    /// Where in the send period this tab's ticks fall, in [0, 1).
    phase: f64,
    view: View,
    /// (seq, key) of this tab's sends acknowledged `ok`.
    acked: Vec<(u64, u64)>,
    ack_ms: Vec<f32>,
    to_retry: Vec<Sent>,
    next_n: u64,
    stats: Stats,
    /// Presence packets are counted until then (the end of the sending).
    counting_until: Instant,
    rng: SplitMix,
}

impl Tab {
    fn new(
        user: usize,
        tab: usize,
        tabs: usize,
        chat: &Arc<str>,
        account: &Account,
        plan: &Plan,
    ) -> Self {
        let socket = user * tabs + tab;
        Self {
            user,
            tab,
            tabs,
            chat: Arc::clone(chat),
            token: Arc::from(account.token.as_str()),
            // Golden-ratio steps spread any number of sockets evenly over the period.
            phase: (socket as f64 * 0.618_033_988_75).fract(),
            view: View::default(),
            acked: Vec::new(),
            ack_ms: Vec::new(),
            to_retry: Vec::new(),
            next_n: 0,
            stats: Stats::default(),
            counting_until: Instant::now(),
            rng: SplitMix::new(plan.seed ^ (socket as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        }
    }

    /// The `clientMsgId` of this tab's `n`th send.
    fn client_msg_id(&self, n: u64) -> String {
        format!("{}.{}.{n}", self.user, self.tab)
    }

    /// The key a message of this tab's chat is tracked by (see [`MessageKey`]).
    fn key_of(&self, client_msg_id: Option<&str>) -> u64 {
        MessageKey::parse(client_msg_id, self.user / 2, self.tabs).map_or(FOREIGN, |k| k.encode())
    }

    fn hold(&mut self, seq: u64, key: u64, live: bool) -> Holding {
        let holding = self.view.hold(seq, key, live);
        if holding == Holding::Conflict {
            self.stats.seq_conflicts += 1;
        }
        holding
    }

    fn on_event(&mut self, event: &Event, newest_live_seq: &mut u64) {
        match event.name.as_str() {
            "new-message" => {
                let Some(message) = event.parse::<Stored>() else {
                    return;
                };
                if message.seq <= *newest_live_seq {
                    self.stats.redelivered += 1;
                }
                *newest_live_seq = (*newest_live_seq).max(message.seq);
                let key = self.key_of(message.client_msg_id.as_deref());
                self.hold(message.seq, key, true);
            }
            "user-online" | "user-offline" | "online-users" => {
                LAST_PRESENCE_US.store(now_us(), Ordering::Relaxed);
                if Instant::now() < self.counting_until {
                    self.stats.presence += 1;
                }
            }
            _ => {}
        }
    }

    /// Sends the next message; false if the connection is gone.
    async fn send(&mut self, client: &Client, acks: &mut AckQueue, plan: &Plan) -> bool {
        let sent = Sent {
            n: self.next_n,
            first_sent_us: now_us(),
            retried: false,
        };
        self.next_n += 1;
        self.stats.sends += 1;
        if self.emit(client, acks, plan, sent).await {
            return true;
        }
        self.to_retry.push(sent);
        false
    }

    /// Emits `sent` (a first attempt or its retry: same text, same `clientMsgId`); false if the
    /// connection is gone.
    async fn emit(
        &mut self,
        client: &Client,
        acks: &mut AckQueue,
        plan: &Plan,
        sent: Sent,
    ) -> bool {
        let payload = json!({
            "chatId": &*self.chat,
            "text": format!("{} {} {} {} {}", self.user, self.tab, sent.n, sent.first_sent_us, plan.padding),
            "clientMsgId": self.client_msg_id(sent.n),
        });
        match client.emit_expecting_ack("send-message", &payload).await {
            Ok(pending) => {
                acks.push(sent, pending);
                true
            }
            Err(_) => false,
        }
    }

    fn on_ack(&mut self, sent: Sent, answer: Result<AckAnswer, ClientError>) {
        match answer {
            Ok(answer) => {
                let Ok(ack) = serde_json::from_str::<SendAck>(answer.get()) else {
                    self.stats.ack_mismatches += 1;
                    return;
                };
                let Some(message) = ack.message.filter(|_| ack.ok) else {
                    self.stats.refused += 1;
                    return;
                };
                let key = self.key_of(Some(&self.client_msg_id(sent.n)));
                if self.key_of(message.client_msg_id.as_deref()) != key {
                    self.stats.ack_mismatches += 1;
                    return;
                }
                let waited_us = now_us().saturating_sub(sent.first_sent_us);
                self.stats.acked += 1;
                if waited_us <= ACK_FAST.as_micros() as u64 {
                    self.stats.acked_fast += 1;
                    self.stats.acked_fast_first += u64::from(!sent.retried);
                }
                self.ack_ms.push(waited_us as f32 / 1000.0);
                self.acked.push((message.seq, key));
                self.hold(message.seq, key, false);
            }
            // The connection went away under it: retried after the reconnect.
            Err(ClientError::Closed) => self.to_retry.push(sent),
            Err(_) => self.stats.unacked += 1,
        }
    }
}

/// A `send-message` acknowledgement.
#[derive(Deserialize)]
struct SendAck<'a> {
    ok: bool,
    #[serde(borrow, default)]
    message: Option<Stored<'a>>,
}

/// Which send of a chat a message is: the pair's side (0 for the even user), the tab, and the
/// tab's counter, from its `clientMsgId` `<user>.<tab>.<n>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MessageKey {
    side: u64,
    tab: u64,
    n: u64,
}

/// The key of a message no tab of this chat sent.
const FOREIGN: u64 = u64::MAX >> 1;

impl MessageKey {
    fn parse(client_msg_id: Option<&str>, chat: usize, tabs: usize) -> Option<Self> {
        let mut parts = client_msg_id?.split('.');
        let user: usize = parts.next()?.parse().ok()?;
        let tab: usize = parts.next()?.parse().ok()?;
        let n: u64 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || user / 2 != chat || tab >= tabs || n >= 1 << 40 {
            return None;
        }
        Some(Self {
            side: (user % 2) as u64,
            tab: tab as u64,
            n,
        })
    }

    /// A number from 1 up, below [`FOREIGN`].
    fn encode(self) -> u64 {
        ((self.n << 7 | self.tab) << 1 | self.side) + 1
    }

    fn side_of(key: u64) -> Option<u64> {
        (key != FOREIGN && key != 0).then(|| (key - 1) & 1)
    }
}

/// What a socket holds of its chat: for seq s, entry s-1 is 0 (not held) or the message's key
/// shifted left by one, with the low bit set if it arrived as `new-message`.
#[derive(Debug, Default)]
struct View {
    held: Vec<u64>,
    /// Every seq up to this one is held.
    complete: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Holding {
    New,
    Again,
    /// The seq was held as another message.
    Conflict,
    /// A seq of 0 or past [`VIEW_SEQS_MAX`].
    Untracked,
}

impl View {
    fn hold(&mut self, seq: u64, key: u64, live: bool) -> Holding {
        if seq == 0 || seq > VIEW_SEQS_MAX {
            return Holding::Untracked;
        }
        let index = (seq - 1) as usize;
        if self.held.len() <= index {
            self.held.resize(index + 1, 0);
        }
        let entry = &mut self.held[index];
        if *entry != 0 {
            return if *entry >> 1 == key {
                Holding::Again
            } else {
                Holding::Conflict
            };
        }
        *entry = key << 1 | u64::from(live);
        while self
            .held
            .get(self.complete as usize)
            .is_some_and(|&e| e != 0)
        {
            self.complete += 1;
        }
        Holding::New
    }

    /// The highest seq below which every message is held (0 if the first is missing).
    fn complete_up_to(&self) -> u64 {
        self.complete
    }

    /// The key held at `seq`, and whether it arrived live.
    fn get(&self, seq: u64) -> Option<(u64, bool)> {
        let entry = *self.held.get(usize::try_from(seq.checked_sub(1)?).ok()?)?;
        (entry != 0).then_some((entry >> 1, entry & 1 == 1))
    }
}

/// What the audit of one chat found.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    /// (acknowledged message, socket of the recipient) pairs.
    expected: u64,
    recovered: u64,
    live: u64,
    stored_duplicates: u64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.expected += other.expected;
        self.recovered += other.recovered;
        self.live += other.live;
        self.stored_duplicates += other.stored_duplicates;
    }
}

/// Audits one chat: `views` are its sockets' views with their side, `acked` the (seq, key) of
/// every acknowledged send of the chat. A message counts for each socket of the other side.
fn audit_chat(views: &[(u64, &View)], acked: &[(u64, u64)]) -> Tally {
    let mut tally = Tally::default();
    for &(seq, key) in acked {
        let Some(side) = MessageKey::side_of(key) else {
            continue;
        };
        for (_, view) in views.iter().filter(|(s, _)| *s != side) {
            tally.expected += 1;
            if let Some((held, live)) = view.get(seq)
                && held == key
            {
                tally.recovered += 1;
                tally.live += u64::from(live);
            }
        }
    }
    let longest = views.iter().map(|(_, v)| v.held.len()).max().unwrap_or(0);
    let mut stored: Vec<u64> = (1..=longest as u64)
        .filter_map(|seq| views.iter().find_map(|(_, v)| v.get(seq)).map(|(k, _)| k))
        .filter(|&key| MessageKey::side_of(key).is_some())
        .collect();
    stored.sort_unstable();
    tally.stored_duplicates = stored.windows(2).filter(|w| w[0] == w[1]).count() as u64;
    tally
}

/// A small deterministic generator (SplitMix64), so a `--seed` reproduces a run's cut schedule.
struct SplitMix(u64);

impl SplitMix {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn uniform(&mut self, low: Duration, high: Duration) -> Duration {
        low + (high - low).mul_f64(self.unit())
    }

    /// Exponentially distributed with the given mean.
    fn exponential(&mut self, mean: Duration) -> Duration {
        mean.mul_f64(-(1.0 - self.unit()).ln())
    }
}

/// The run's settings, echoed in the report.
struct Settings {
    users: usize,
    tabs: usize,
    rate: f64,
    secs: u64,
    churn_secs: f64,
    connect_ms: u64,
    settle_ms: u64,
    server_rss_mb: Option<f64>,
}

/// The line a churn run prints (fields in the module doc).
#[derive(Debug, Serialize)]
struct ChurnReport {
    users: usize,
    tabs: usize,
    sockets: usize,
    rate: f64,
    secs: u64,
    churn_secs: f64,
    connect_ms: u64,
    settle_ms: u64,
    sends: u64,
    retries: u64,
    acked: u64,
    refused: u64,
    unacked: u64,
    skipped: u64,
    acked_within_1s_pct: f64,
    uncut_acked_within_1s_pct: f64,
    ack_p50_ms: f64,
    ack_p99_ms: f64,
    live_pct: f64,
    recovered_pct: f64,
    stored_duplicates: u64,
    redelivered: u64,
    seq_conflicts: u64,
    ack_mismatches: u64,
    cuts: u64,
    drops: u64,
    reconnect_errors: u64,
    failed_sockets: u64,
    presence_per_socket_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_rss_mb: Option<f64>,
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    // Three decimals: the goal is 99.9%, and 99.95 must not round up to it.
    (part as f64 * 100_000.0 / whole as f64).floor() / 1000.0
}

/// Sums the tabs (sorted by user, then tab) into the report.
fn report(tabs: &[Tab], settings: Settings) -> ChurnReport {
    let mut total = Stats::default();
    let mut failed = 0;
    let mut ack_ms = Vec::new();
    for tab in tabs {
        let s = &tab.stats;
        total.sends += s.sends;
        total.retries += s.retries;
        total.acked += s.acked;
        total.acked_fast += s.acked_fast;
        total.acked_fast_first += s.acked_fast_first;
        total.refused += s.refused;
        total.unacked += s.unacked;
        total.skipped += s.skipped;
        total.redelivered += s.redelivered;
        total.seq_conflicts += s.seq_conflicts;
        total.ack_mismatches += s.ack_mismatches;
        total.cuts += s.cuts;
        total.drops += s.drops;
        total.reconnect_errors += s.reconnect_errors;
        total.presence += s.presence;
        failed += u64::from(s.failed);
        ack_ms.extend_from_slice(&tab.ack_ms);
    }
    ack_ms.sort_unstable_by(f32::total_cmp);
    let mut tally = Tally::default();
    for chat in tabs.chunk_by(|a, b| a.user / 2 == b.user / 2) {
        let views: Vec<(u64, &View)> = chat
            .iter()
            .map(|t| ((t.user % 2) as u64, &t.view))
            .collect();
        let acked: Vec<(u64, u64)> = chat.iter().flat_map(|t| t.acked.iter().copied()).collect();
        tally.add(&audit_chat(&views, &acked));
    }
    let sockets = tabs.len();
    ChurnReport {
        users: settings.users,
        tabs: settings.tabs,
        sockets,
        rate: settings.rate,
        secs: settings.secs,
        churn_secs: settings.churn_secs,
        connect_ms: settings.connect_ms,
        settle_ms: settings.settle_ms,
        sends: total.sends,
        retries: total.retries,
        acked: total.acked,
        refused: total.refused,
        unacked: total.unacked,
        skipped: total.skipped,
        acked_within_1s_pct: pct(total.acked_fast, total.sends),
        uncut_acked_within_1s_pct: pct(
            total.acked_fast_first,
            total.sends.saturating_sub(total.retries),
        ),
        ack_p50_ms: round2(percentile(&ack_ms, 0.50)),
        ack_p99_ms: round2(percentile(&ack_ms, 0.99)),
        live_pct: pct(tally.live, tally.expected),
        recovered_pct: pct(tally.recovered, tally.expected),
        stored_duplicates: tally.stored_duplicates,
        redelivered: total.redelivered,
        seq_conflicts: total.seq_conflicts,
        ack_mismatches: total.ack_mismatches,
        cuts: total.cuts,
        drops: total.drops,
        reconnect_errors: total.reconnect_errors,
        failed_sockets: failed,
        presence_per_socket_s: round2(
            total.presence as f64 / (sockets.max(1) as f64 * settings.secs as f64),
        ),
        server_rss_mb: settings.server_rss_mb,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(side: u64, tab: u64, n: u64) -> u64 {
        MessageKey { side, tab, n }.encode()
    }

    fn view(held: &[(u64, u64, bool)]) -> View {
        let mut view = View::default();
        for &(seq, key, live) in held {
            view.hold(seq, key, live);
        }
        view
    }

    #[test]
    fn a_client_msg_id_names_a_send_of_its_chat_only() {
        let parsed = MessageKey::parse(Some("7.1.42"), 3, 2);
        assert_eq!(
            parsed,
            Some(MessageKey {
                side: 1,
                tab: 1,
                n: 42
            })
        );
        assert_eq!(MessageKey::side_of(parsed.unwrap().encode()), Some(1));
        assert_eq!(
            MessageKey::parse(Some("6.0.0"), 3, 1).map(|k| k.side),
            Some(0)
        );
        for other in [
            None,
            Some("8.0.1"),
            Some("7.2.1"),
            Some("7.1"),
            Some("7.1.2.3"),
            Some("c-1"),
        ] {
            assert_eq!(MessageKey::parse(other, 3, 2), None, "{other:?}");
        }
        assert_ne!(key(0, 0, 0), key(1, 0, 0));
        assert_ne!(key(0, 1, 0), key(0, 0, 1));
        assert_eq!(MessageKey::side_of(FOREIGN), None);
        assert_eq!(MessageKey::side_of(0), None);
    }

    #[test]
    fn a_view_knows_up_to_where_it_is_complete_and_spots_conflicts() {
        let mut view = View::default();
        assert_eq!(view.hold(2, key(0, 0, 1), true), Holding::New);
        assert_eq!(view.complete_up_to(), 0, "seq 1 is missing");
        assert_eq!(view.hold(1, key(0, 0, 0), false), Holding::New);
        assert_eq!(view.complete_up_to(), 2);
        assert_eq!(view.hold(4, key(1, 0, 0), true), Holding::New);
        assert_eq!(view.complete_up_to(), 2);
        assert_eq!(view.hold(2, key(0, 0, 1), false), Holding::Again);
        assert_eq!(
            view.get(2),
            Some((key(0, 0, 1), true)),
            "still counted live"
        );
        assert_eq!(view.hold(2, key(1, 0, 5), false), Holding::Conflict);
        assert_eq!(view.hold(0, key(1, 0, 5), false), Holding::Untracked);
        assert_eq!(view.hold(VIEW_SEQS_MAX + 1, 1, false), Holding::Untracked);
        assert_eq!(view.get(3), None);
        assert_eq!(view.get(0), None);
        view.hold(3, key(1, 0, 1), false);
        assert_eq!(view.complete_up_to(), 4);
    }

    #[test]
    fn the_audit_counts_each_acknowledged_message_once_per_recipient_socket() {
        let (a0, a1, b0) = (key(0, 0, 0), key(0, 0, 1), key(1, 0, 0));
        // Side 0 has one tab, side 1 two. Recipient tab 1 missed seq 2 for good.
        let sender = view(&[(1, a0, false), (2, a1, false), (3, b0, true)]);
        let tab0 = view(&[(1, a0, true), (2, a1, false), (3, b0, false)]);
        let tab1 = view(&[(1, a0, true), (3, b0, false)]);
        let views = [(0, &sender), (1, &tab0), (1, &tab1)];
        let tally = audit_chat(&views, &[(1, a0), (2, a1), (3, b0)]);
        assert_eq!(
            tally,
            Tally {
                expected: 5,
                recovered: 4,
                live: 3,
                stored_duplicates: 0
            }
        );
    }

    #[test]
    fn the_audit_counts_a_message_held_under_its_seq_as_another_as_not_recovered() {
        let (a0, b0) = (key(0, 0, 0), key(1, 0, 0));
        let recipient = view(&[(1, b0, true)]);
        let tally = audit_chat(&[(1, &recipient)], &[(1, a0)]);
        assert_eq!((tally.expected, tally.recovered), (1, 0));
    }

    #[test]
    fn two_seqs_for_one_client_msg_id_are_a_stored_duplicate_repeats_of_one_seq_are_not() {
        let (a0, a1) = (key(0, 0, 0), key(0, 0, 1));
        // Seq 2 and 3 both store send a1 (its retry was committed again); seq 4 is not ours.
        let sender = view(&[(1, a0, false), (2, a1, false)]);
        let recipient = view(&[
            (1, a0, true),
            (1, a0, true),
            (3, a1, false),
            (4, FOREIGN, true),
        ]);
        let tally = audit_chat(&[(0, &sender), (1, &recipient)], &[(1, a0), (2, a1)]);
        assert_eq!(tally.stored_duplicates, 1);
        assert_eq!((tally.expected, tally.recovered), (2, 1));
    }

    #[test]
    fn shares_round_down_so_a_miss_never_reads_as_the_goal() {
        assert_eq!(pct(9_995, 10_000), 99.95);
        assert_eq!(pct(99_999, 100_000), 99.999);
        assert_eq!(pct(999_999, 1_000_000), 99.999);
        assert_eq!(pct(1, 1), 100.0);
        assert_eq!(pct(0, 0), 0.0);
    }

    #[test]
    fn ticks_missed_while_offline_count_every_tick_due_before_the_end() {
        let t0 = Instant::now();
        let period = Duration::from_millis(100);
        let end = t0 + Duration::from_secs(10);
        assert_eq!(ticks_missed(t0 + period, t0, end, period), 0);
        assert_eq!(ticks_missed(t0, t0, end, period), 1);
        assert_eq!(
            ticks_missed(t0, t0 + Duration::from_millis(250), end, period),
            3
        );
        assert_eq!(
            ticks_missed(t0, t0 + Duration::from_secs(60), end, period),
            101
        );
    }

    #[test]
    fn cut_intervals_are_exponential_around_their_mean_and_offline_times_stay_in_range() {
        let mut rng = SplitMix::new(7);
        let mean = Duration::from_secs(5);
        let draws: Vec<f64> = (0..20_000)
            .map(|_| rng.exponential(mean).as_secs_f64())
            .collect();
        let average = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((average - 5.0).abs() < 0.2, "{average}");
        // For an exponential, P(X > mean) = 1/e.
        let above = draws.iter().filter(|&&d| d > 5.0).count() as f64 / draws.len() as f64;
        assert!((above - (-1.0f64).exp()).abs() < 0.02, "{above}");
        for _ in 0..1000 {
            let offline = rng.uniform(OFFLINE_MIN, OFFLINE_MAX);
            assert!((OFFLINE_MIN..=OFFLINE_MAX).contains(&offline));
        }
    }
}
