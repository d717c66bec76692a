//! A simulated browser tab: one user's client, behaving like the real app.
//!
//! A tab registers its user (the user's first tab) and opens the user's chats over REST, then
//! keeps a Socket.IO connection: it joins and leaves chats, sends messages with a
//! `clientMsgId`, types, lists chats and reads history over REST, and sometimes closes or drops
//! its connection. After every (re)connect it re-joins its chats, `sync`s every chat from the
//! last seq it holds without a gap, and resends whatever was never acknowledged, with the same
//! `clientMsgId`. A gap in the seqs it receives makes it `sync` that chat.
//!
//! Everything a tab sees goes to the trace and to the model: acks and outcomes of sends (for
//! durability, phantoms and idempotency), every sighting of a message (seq bindings), and, per
//! connection, the `new-message` ids (exactly once), the chats of events (authorization) and
//! the presence events (alternation).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use palaver::client::{self, Client, ClientError, Event};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

use crate::model::{Attempt, Invariant, MessageFacts, Model, Phase, SendRecord, TabReport};
use crate::net::{self, SERVER_HOST};

/// How long a tab waits for an ack before it counts the outcome as unknown.
const ACK_TIMEOUT: Duration = Duration::from_secs(6);
/// TCP connect and Socket.IO handshake, each.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REST_TIMEOUT: Duration = Duration::from_secs(8);
/// `sync` page size: random up to this (the contract's default), so that paging is exercised.
const SYNC_LIMIT_MAX: u64 = 100;
/// History page size at the audit: random up to this (the contract's maximum).
const HISTORY_LIMIT_MAX: u64 = 500;
/// Messages a burst sends at once, without waiting for acks in between.
const BURST_MAX: usize = 8;
/// Pages of one chat's history read at the audit before giving up (a bound on a broken server).
const HISTORY_PAGES_MAX: usize = 100;

/// What the driver tells a tab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Drop the connection without a goodbye (a killed tab); reconnect after `back_after`.
    Drop { back_after: Duration },
    /// Close the connection cleanly; reconnect after `back_after`.
    Close { back_after: Duration },
    /// The phase changed.
    Phase,
}

/// The driver's handle on a tab.
#[derive(Default)]
pub struct TabControl {
    commands: RefCell<VecDeque<Command>>,
    notify: Notify,
}

/// Commands waiting for a tab; a tab takes them all whenever it is woken, so only a tab that
/// stopped running could fill this, and its commands no longer matter.
const COMMANDS_QUEUED_MAX: usize = 64;

impl TabControl {
    pub fn send(&self, command: Command) {
        let mut commands = self.commands.borrow_mut();
        if commands.len() < COMMANDS_QUEUED_MAX {
            commands.push_back(command);
        }
        drop(commands);
        self.notify.notify_one();
    }

    fn take(&self) -> Option<Command> {
        self.commands.borrow_mut().pop_front()
    }
}

/// A send not yet acknowledged, to be retried with the same `clientMsgId`.
#[derive(Debug, Clone)]
struct PendingSend {
    chat: String,
    text: String,
}

/// The current connection.
struct Live {
    no: u32,
    client: Client,
    /// `new-message` ids received on this connection (exactly once).
    received: BTreeSet<String>,
    /// Who this connection believes is online (from `online-users` and transitions).
    online: BTreeMap<String, bool>,
    pump: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct TabState {
    connections: u32,
    live: Option<Live>,
    /// The tab's view of each of its chats.
    views: BTreeMap<String, BTreeMap<u64, MessageFacts>>,
    joined: BTreeSet<String>,
    pending: BTreeMap<String, PendingSend>,
    /// Chats whose seqs showed a gap: `sync` them.
    gaps: BTreeSet<String>,
    sends: u64,
    /// No reconnecting before this instant (after a close or drop).
    offline_until: Option<tokio::time::Instant>,
    final_acked: bool,
}

/// One tab.
pub struct Tab {
    pub index: usize,
    pub user: usize,
    model: Model,
    control: Rc<TabControl>,
    rng: RefCell<ChaCha8Rng>,
    state: RefCell<TabState>,
    /// The first tab of each user registers it and opens its chats.
    registers: bool,
}

/// Why an action could not finish: the connection is gone or unusable.
#[derive(Debug)]
enum Failure {
    Connection(String),
}

impl Tab {
    pub fn new(
        index: usize,
        user: usize,
        registers: bool,
        seed: u64,
        model: Model,
        control: Rc<TabControl>,
    ) -> Rc<Self> {
        Rc::new(Self {
            index,
            user,
            model,
            control,
            rng: RefCell::new(ChaCha8Rng::seed_from_u64(seed)),
            state: RefCell::new(TabState::default()),
            registers,
        })
    }

    fn label(&self) -> String {
        format!("t{}", self.index)
    }

    fn trace(&self, line: impl AsRef<str>) {
        self.model
            .trace
            .record(format!("{} {}", self.label(), line.as_ref()));
    }

    fn token(&self) -> Option<String> {
        self.model.state.borrow().users[self.user].token.clone()
    }

    fn my_id(&self) -> Option<String> {
        self.model.state.borrow().users[self.user].id.clone()
    }

    fn chance(&self, p: f64) -> bool {
        self.rng.borrow_mut().random_bool(p)
    }

    fn pick<T: Clone>(&self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            return None;
        }
        let i = self.rng.borrow_mut().random_range(0..items.len());
        Some(items[i].clone())
    }

    fn millis(&self, low: u64, high: u64) -> Duration {
        Duration::from_millis(self.rng.borrow_mut().random_range(low..=high))
    }

    /// The tab's whole life.
    pub async fn run(self: Rc<Self>) -> turmoil::Result {
        self.setup().await;
        self.model.state.borrow_mut().tabs[self.index].ready = true;
        self.trace("ready");
        loop {
            match self.model.phase() {
                Phase::Setup => self.wait_for_command().await,
                Phase::Safety => {
                    tokio::select! {
                        () = self.control.notify.notified() => self.handle_commands(),
                        () = self.safety_step() => {}
                    }
                }
                Phase::Liveness => {
                    tokio::select! {
                        () = self.control.notify.notified() => self.handle_commands(),
                        () = self.liveness() => {}
                    }
                }
                Phase::Audit => {
                    self.audit().await;
                    while self.model.phase() == Phase::Audit {
                        self.wait_for_command().await;
                    }
                }
                Phase::Done => break,
            }
        }
        let live = self.state.borrow_mut().live.take();
        if let Some(live) = live {
            live.client.abort();
            live.pump.abort();
        }
        self.publish_connected();
        Ok(())
    }

    /// Tells the driver whether this tab holds a connection (the liveness phase ends only
    /// when the server counts exactly the connections the tabs hold).
    fn publish_connected(&self) {
        let connected = self.state.borrow().live.is_some();
        self.model.state.borrow_mut().tabs[self.index].connected = connected;
    }

    async fn wait_for_command(&self) {
        self.control.notify.notified().await;
        self.handle_commands();
    }

    fn handle_commands(&self) {
        while let Some(command) = self.control.take() {
            match command {
                Command::Drop { back_after } => {
                    self.trace("drop (abrupt)");
                    self.disconnect(false, back_after);
                }
                Command::Close { back_after } => {
                    self.trace("close (clean)");
                    self.disconnect(true, back_after);
                }
                Command::Phase => {}
            }
        }
    }

    /// Ends the current connection, cleanly or not, and stays offline for `back_after`.
    fn disconnect(&self, clean: bool, back_after: Duration) {
        let mut state = self.state.borrow_mut();
        state.offline_until = Some(tokio::time::Instant::now() + back_after);
        if let Some(live) = state.live.take() {
            if clean {
                let client = live.client.clone();
                // `close` only queues two frames; the pump sends them and ends.
                tokio::task::spawn_local(async move { client.close().await });
            } else {
                live.client.abort();
            }
            live.pump.abort();
        }
        drop(state);
        self.publish_connected();
    }

    // ---- setup ----

    /// Registers the user (first tab only), opens the user's chats (first tab only), and waits
    /// until every user and chat exists. No faults run during setup; REST calls still retry.
    async fn setup(&self) {
        if self.registers {
            let (name, email) = {
                let state = self.model.state.borrow();
                let slot = &state.users[self.user];
                (slot.name.clone(), slot.email.clone())
            };
            let body = json!({ "name": name, "email": email, "password": format!("password-{}", self.user) });
            let answer = self
                .rest_until_ok(Method::POST, "/api/auth/register", None, Some(&body))
                .await;
            let token = answer["token"].as_str().map(str::to_owned);
            let id = answer["user"]["_id"].as_str().map(str::to_owned);
            if token.is_none() || id.is_none() {
                self.model
                    .violate(Invariant::Contract, format!("register answered {answer}"));
            }
            self.trace(format!("registered u{}", self.user));
            let mut state = self.model.state.borrow_mut();
            state.users[self.user].token = token;
            state.users[self.user].id = id;
        }
        self.wait_until(|m| m.users.iter().all(|u| u.id.is_some()))
            .await;
        if self.registers {
            let partners: Vec<(usize, usize)> = {
                let state = self.model.state.borrow();
                state
                    .chats
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.a == self.user)
                    .map(|(i, c)| (i, c.b))
                    .collect()
            };
            for (chat_index, partner) in partners {
                let partner_id = self.model.state.borrow().users[partner]
                    .id
                    .clone()
                    .expect("registered");
                let token = self.token();
                let answer = self
                    .rest_until_ok(
                        Method::POST,
                        &format!("/api/chats/with/{partner_id}"),
                        token.as_deref(),
                        None,
                    )
                    .await;
                let id = answer["_id"].as_str().map(str::to_owned);
                if id.is_none() {
                    self.model
                        .violate(Invariant::Contract, format!("open chat answered {answer}"));
                }
                self.trace(format!("opened c{chat_index} with u{partner}"));
                self.model.state.borrow_mut().chats[chat_index].id = id;
            }
        }
        self.wait_until(|m| m.chats.iter().all(|c| c.id.is_some()))
            .await;
        self.list_chats().await;
        let chats = self.model.chats_of(self.user);
        let mut state = self.state.borrow_mut();
        for chat in chats {
            state.views.entry(chat).or_default();
        }
    }

    async fn wait_until(&self, ready: impl Fn(&crate::model::ModelState) -> bool) {
        while !ready(&self.model.state.borrow()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn rest_until_ok(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Value {
        loop {
            match net::rest(method.clone(), path, token, body, REST_TIMEOUT).await {
                Ok((status, answer)) if status.is_success() => return answer,
                Ok((status, answer)) => {
                    self.model.violate(
                        Invariant::Contract,
                        format!("{method} {path} during setup answered {status} {answer}"),
                    );
                    return answer;
                }
                Err(error) => {
                    self.trace(format!("{method} {path} failed: {error}; retrying"));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    // ---- the safety phase ----

    /// One step of normal use: think, then act.
    async fn safety_step(self: &Rc<Self>) {
        let think = self.millis(200, 3000);
        tokio::time::sleep(think).await;
        if self.model.phase() != Phase::Safety {
            return;
        }
        if !self.is_connected() {
            if self.may_reconnect() {
                let _ = self.connect().await;
            }
            return;
        }
        let gap = self.state.borrow_mut().gaps.pop_first();
        if let Some(chat) = gap {
            let _ = self.sync_chat(&chat).await;
            return;
        }
        let roll: f64 = self.rng.borrow_mut().random();
        let _ = match roll {
            r if r < 0.40 => self.send_new(false).await,
            r if r < 0.43 => self.send_new(true).await,
            r if r < 0.45 => self.burst().await,
            r if r < 0.55 => self.retry_one_pending().await,
            r if r < 0.67 => self.type_something().await,
            r if r < 0.75 => self.join_some_chat().await,
            r if r < 0.80 => self.leave_some_chat().await,
            r if r < 0.84 => self.hostile().await,
            r if r < 0.88 => {
                self.list_chats().await;
                Ok(())
            }
            r if r < 0.92 => {
                self.read_history_page().await;
                Ok(())
            }
            r if r < 0.95 => {
                let back = self.millis(300, 5000);
                self.trace("closes itself");
                self.disconnect(true, back);
                Ok(())
            }
            r if r < 0.96 => {
                let back = self.millis(300, 5000);
                self.trace("drops itself");
                self.disconnect(false, back);
                Ok(())
            }
            _ => Ok(()),
        };
    }

    fn is_connected(&self) -> bool {
        let mut state = self.state.borrow_mut();
        let closed = state.live.as_ref().is_some_and(|l| l.client.is_closed());
        if closed {
            let live = state.live.take().expect("checked");
            live.pump.abort();
            drop(state);
            self.publish_connected();
            self.trace(format!("conn {} found closed", live.no));
            return false;
        }
        state.live.is_some()
    }

    fn may_reconnect(&self) -> bool {
        let state = self.state.borrow();
        state
            .offline_until
            .is_none_or(|t| tokio::time::Instant::now() >= t)
    }

    fn client(&self) -> Result<Client, Failure> {
        self.state
            .borrow()
            .live
            .as_ref()
            .map(|l| l.client.clone())
            .ok_or_else(|| Failure::Connection("not connected".into()))
    }

    /// Drops the current connection because it failed (an ack never came, it closed).
    fn abandon(&self, why: &str) {
        let live = self.state.borrow_mut().live.take();
        if let Some(live) = live {
            self.trace(format!("abandons conn {}: {why}", live.no));
            live.client.abort();
            live.pump.abort();
        }
        self.publish_connected();
    }

    /// Connects, then re-joins, syncs every chat and resends what is pending.
    async fn connect(self: &Rc<Self>) -> Result<(), Failure> {
        let Some(token) = self.token() else {
            return Err(Failure::Connection("no token".into()));
        };
        let stream = match net::dial(CONNECT_TIMEOUT).await {
            Ok(stream) => stream,
            Err(error) => {
                self.trace(format!("connect failed: {}", error.kind()));
                self.back_off();
                return Err(Failure::Connection(error.to_string()));
            }
        };
        let handshake = tokio::time::timeout(
            CONNECT_TIMEOUT,
            client::connect(stream, SERVER_HOST, &token),
        )
        .await;
        let (client, events) = match handshake {
            Ok(Ok(connected)) => connected,
            Ok(Err(ClientError::Refused(message)))
                if message == "Invalid namespace" && self.model.server_stopping() =>
            {
                // The server is closing after a storage failure: socketioxide has already
                // dropped its namespaces. Known behaviour (see the README's findings).
                self.trace("handshake refused: Invalid namespace (server stopping)");
                self.back_off();
                return Err(Failure::Connection(message));
            }
            Ok(Err(ClientError::Refused(message))) => {
                self.model.violate(
                    Invariant::Contract,
                    format!(
                        "{} refused at connect with {message:?}: a valid token must keep working",
                        self.label()
                    ),
                );
                self.back_off();
                return Err(Failure::Connection(message));
            }
            Ok(Err(error)) => {
                self.trace(format!("handshake failed: {}", error_kind(&error)));
                self.back_off();
                return Err(Failure::Connection(error.to_string()));
            }
            Err(_) => {
                self.trace("handshake timed out");
                self.back_off();
                return Err(Failure::Connection("handshake timed out".into()));
            }
        };
        let no = {
            let mut state = self.state.borrow_mut();
            state.connections += 1;
            state.connections
        };
        self.trace(format!("conn {no} open"));
        let pump = tokio::task::spawn_local(pump_events(Rc::clone(self), no, events));
        self.state.borrow_mut().live = Some(Live {
            no,
            client,
            received: BTreeSet::new(),
            online: BTreeMap::new(),
            pump,
        });
        self.publish_connected();
        self.resync().await
    }

    fn back_off(&self) {
        let wait = self.millis(500, 2500);
        self.state.borrow_mut().offline_until = Some(tokio::time::Instant::now() + wait);
    }

    /// What every (re)connect does: re-join, sync every chat, resend pending sends.
    async fn resync(&self) -> Result<(), Failure> {
        let joined: Vec<String> = self.state.borrow().joined.iter().cloned().collect();
        for chat in joined {
            self.join(&chat, true).await?;
        }
        for chat in self.model.chats_of(self.user) {
            self.sync_chat(&chat).await?;
        }
        let pending: Vec<String> = self.state.borrow().pending.keys().cloned().collect();
        for cmid in pending {
            self.retry(&cmid).await?;
        }
        Ok(())
    }

    /// Acks of `emit_with_ack`, with a failed connection abandoned.
    async fn ask(&self, event: &str, data: &Value) -> Result<Value, Failure> {
        let client = self.client()?;
        match client.emit_with_ack(event, data, ACK_TIMEOUT).await {
            Ok(answer) => Ok(answer),
            Err(error) => {
                self.abandon(&format!("{event}: {}", error_kind(&error)));
                Err(Failure::Connection(error.to_string()))
            }
        }
    }

    async fn join(&self, chat: &str, member: bool) -> Result<(), Failure> {
        let answer = self.ask("join-chat", &json!(chat)).await?;
        let label = self.model.chat_label(chat);
        let ok = answer["ok"] == json!(true);
        self.trace(format!(
            "join {label}: {}",
            if ok { "ok" } else { "refused" }
        ));
        match (member, ok) {
            (true, false) => self.model.violate(
                Invariant::Contract,
                format!(
                    "{} could not join its own chat {label}: {answer}",
                    self.label()
                ),
            ),
            (false, true) => {
                // Not a violation by itself: invariant 6 is about what the socket receives.
                self.trace(format!("joined foreign chat {label}"));
            }
            _ => {}
        }
        if member && ok {
            self.state.borrow_mut().joined.insert(chat.to_owned());
        }
        Ok(())
    }

    /// The highest seq below which the view of `chat` has no gap.
    fn contiguous(&self, chat: &str) -> u64 {
        let state = self.state.borrow();
        let Some(view) = state.views.get(chat) else {
            return 0;
        };
        let mut seq = 0;
        while view.contains_key(&(seq + 1)) {
            seq += 1;
        }
        seq
    }

    async fn sync_chat(&self, chat: &str) -> Result<(), Failure> {
        let label = self.model.chat_label(chat);
        let limit = self.rng.borrow_mut().random_range(1..=SYNC_LIMIT_MAX);
        loop {
            let after = self.contiguous(chat);
            let answer = self
                .ask(
                    "sync",
                    &json!({ "chatId": chat, "afterSeq": after, "limit": limit }),
                )
                .await?;
            if answer["ok"] != json!(true) {
                self.model.violate(
                    Invariant::Contract,
                    format!("{} sync of {label} refused: {answer}", self.label()),
                );
                return Ok(());
            }
            let messages = answer["messages"].as_array().cloned().unwrap_or_default();
            for message in &messages {
                self.take_message(message, "sync");
            }
            self.trace(format!(
                "sync {label} after {after}: {} messages",
                messages.len()
            ));
            if answer["hasMore"] != json!(true) {
                return Ok(());
            }
            if self.contiguous(chat) == after {
                self.model.violate(
                    Invariant::SeqContiguous,
                    format!("sync of {label} after {after} says hasMore but brings no next seq"),
                );
                return Ok(());
            }
        }
    }

    /// Adds a message seen in an ack, `sync` or history to the view.
    fn take_message(&self, message: &Value, source: &str) -> Option<MessageFacts> {
        let Some(facts) = MessageFacts::parse(message) else {
            self.model.violate(
                Invariant::Contract,
                format!("malformed message via {source}: {message}"),
            );
            return None;
        };
        self.model.observe(&facts, source);
        let mut state = self.state.borrow_mut();
        if let Some(view) = state.views.get_mut(&facts.chat) {
            view.insert(facts.seq, facts.clone());
        }
        Some(facts)
    }

    async fn send_new(&self, via_rest: bool) -> Result<(), Failure> {
        let Some(chat) = self.pick(&self.model.chats_of(self.user)) else {
            return Ok(());
        };
        let n = {
            let mut state = self.state.borrow_mut();
            state.sends += 1;
            state.sends
        };
        let cmid = format!("t{}-{n}", self.index);
        let text = format!("m{}-{n}", self.index);
        self.register_send(&cmid, &chat, &text, true);
        self.state.borrow_mut().pending.insert(
            cmid.clone(),
            PendingSend {
                chat: chat.clone(),
                text: text.clone(),
            },
        );
        if via_rest {
            self.send_rest(&cmid, &chat, &text).await;
            Ok(())
        } else {
            self.send_socket(&cmid, &chat, &text).await
        }
    }

    /// Several sends at once to one chat, as a user pasting lines quickly would: the server
    /// handles them concurrently and commits them in one batch or a few.
    async fn burst(&self) -> Result<(), Failure> {
        let Some(chat) = self.pick(&self.model.chats_of(self.user)) else {
            return Ok(());
        };
        let count = self.rng.borrow_mut().random_range(2..=BURST_MAX);
        let mut sends = Vec::with_capacity(count);
        for _ in 0..count {
            let n = {
                let mut state = self.state.borrow_mut();
                state.sends += 1;
                state.sends
            };
            let cmid = format!("t{}-{n}", self.index);
            let text = format!("m{}-{n}", self.index);
            self.register_send(&cmid, &chat, &text, true);
            self.state.borrow_mut().pending.insert(
                cmid.clone(),
                PendingSend {
                    chat: chat.clone(),
                    text: text.clone(),
                },
            );
            sends.push((cmid, text));
        }
        self.trace(format!("burst of {count}"));
        let results = futures_util::future::join_all(
            sends
                .iter()
                .map(|(cmid, text)| self.send_socket(cmid, &chat, text)),
        )
        .await;
        results.into_iter().collect()
    }

    fn register_send(&self, cmid: &str, chat: &str, text: &str, valid: bool) {
        let mut state = self.model.state.borrow_mut();
        state
            .sends
            .entry((self.user, cmid.to_owned()))
            .or_insert_with(|| SendRecord {
                user: self.user,
                chat: chat.to_owned(),
                text: text.to_owned(),
                valid,
                attempts: Vec::new(),
            });
    }

    /// Notes that an attempt of `cmid` is on its way. Until its outcome is known it counts as
    /// unknown, so an attempt interrupted by a fault may still show up in history.
    fn begin_attempt(&self, cmid: &str) {
        let mut state = self.model.state.borrow_mut();
        if let Some(record) = state.sends.get_mut(&(self.user, cmid.to_owned())) {
            record.attempts.push(Attempt::Unknown("in flight".into()));
        }
    }

    /// Replaces the outcome of the latest attempt of `cmid`.
    fn record_attempt(&self, cmid: &str, attempt: Attempt) {
        let mut state = self.model.state.borrow_mut();
        if let Some(record) = state.sends.get_mut(&(self.user, cmid.to_owned())) {
            match record.attempts.last_mut() {
                Some(last) => *last = attempt,
                None => record.attempts.push(attempt),
            }
        }
    }

    async fn send_socket(&self, cmid: &str, chat: &str, text: &str) -> Result<(), Failure> {
        let label = self.model.chat_label(chat);
        let client = self.client()?;
        let data = json!({ "chatId": chat, "text": text, "clientMsgId": cmid });
        self.trace(format!("send {cmid} to {label}"));
        self.begin_attempt(cmid);
        let answer = client
            .emit_with_ack("send-message", &data, ACK_TIMEOUT)
            .await;
        match answer {
            Ok(answer) if answer["ok"] == json!(true) => {
                self.accept_ack(cmid, chat, text, &answer["message"], "ack");
                Ok(())
            }
            Ok(answer) => {
                let error = answer["error"].as_str().unwrap_or("").to_owned();
                self.refused(cmid, &label, &error, true);
                Ok(())
            }
            Err(error) => {
                let kind = error_kind(&error);
                self.trace(format!("send {cmid}: no ack ({kind})"));
                self.record_attempt(cmid, Attempt::Unknown(kind.clone()));
                self.abandon(&format!("send-message: {kind}"));
                Err(Failure::Connection(kind))
            }
        }
    }

    /// A refusal of a valid send: retried later if it says nothing happened for a reason that
    /// passes, a contract violation otherwise.
    fn refused(&self, cmid: &str, label: &str, error: &str, valid: bool) {
        self.trace(format!("send {cmid}: refused {error:?}"));
        match error {
            "Failed to send message" => {
                self.record_attempt(cmid, Attempt::Unknown(error.to_owned()));
            }
            "Rate limited" => self.record_attempt(cmid, Attempt::Refused(error.to_owned())),
            _ => {
                self.record_attempt(cmid, Attempt::Refused(error.to_owned()));
                self.state.borrow_mut().pending.remove(cmid);
                if valid {
                    self.model.violate(
                        Invariant::Contract,
                        format!(
                            "{} valid send {cmid} to {label} refused: {error:?}",
                            self.label()
                        ),
                    );
                }
            }
        }
    }

    fn accept_ack(&self, cmid: &str, chat: &str, text: &str, message: &Value, source: &str) {
        let Some(facts) = self.take_message(message, source) else {
            return;
        };
        let my_id = self.my_id();
        if facts.chat != chat
            || facts.text != text
            || facts.client_msg_id.as_deref() != Some(cmid)
            || Some(&facts.sender) != my_id.as_ref()
        {
            self.model.violate(
                Invariant::Contract,
                format!(
                    "{} ack of {cmid} is another message: {facts:?}",
                    self.label()
                ),
            );
        }
        self.trace(format!(
            "send {cmid}: acked seq {} id {}",
            facts.seq, facts.id
        ));
        self.record_attempt(
            cmid,
            Attempt::Acked {
                id: facts.id,
                seq: facts.seq,
            },
        );
        self.state.borrow_mut().pending.remove(cmid);
    }

    async fn send_rest(&self, cmid: &str, chat: &str, text: &str) {
        let label = self.model.chat_label(chat);
        let token = self.token();
        self.trace(format!("post {cmid} to {label}"));
        self.begin_attempt(cmid);
        let body = json!({ "text": text, "clientMsgId": cmid });
        let answer = net::rest(
            Method::POST,
            &format!("/api/messages/chat/{chat}"),
            token.as_deref(),
            Some(&body),
            REST_TIMEOUT,
        )
        .await;
        match answer {
            Ok((StatusCode::CREATED, message)) => {
                self.accept_ack(cmid, chat, text, &message, "post");
            }
            Ok((StatusCode::SERVICE_UNAVAILABLE, _)) => {
                self.refused(cmid, &label, "Failed to send message", true);
            }
            Ok((StatusCode::TOO_MANY_REQUESTS, _)) => {
                self.refused(cmid, &label, "Rate limited", true);
            }
            Ok((status, answer)) => {
                let error = format!("{status} {answer}");
                self.refused(cmid, &label, &error, true);
            }
            Err(error) => {
                self.trace(format!("post {cmid}: no answer ({error})"));
                self.record_attempt(cmid, Attempt::Unknown(error.to_string()));
            }
        }
    }

    async fn retry(&self, cmid: &str) -> Result<(), Failure> {
        let pending = self.state.borrow().pending.get(cmid).cloned();
        let Some(PendingSend { chat, text }) = pending else {
            return Ok(());
        };
        self.trace(format!("retries {cmid}"));
        self.send_socket(cmid, &chat, &text).await
    }

    async fn retry_one_pending(&self) -> Result<(), Failure> {
        let first = self.state.borrow().pending.keys().next().cloned();
        match first {
            Some(cmid) => self.retry(&cmid).await,
            None => Ok(()),
        }
    }

    async fn type_something(&self) -> Result<(), Failure> {
        let Some(chat) = self.pick(&self.model.chats_of(self.user)) else {
            return Ok(());
        };
        let typing = self.chance(0.7);
        self.trace(format!("typing {} {typing}", self.model.chat_label(&chat)));
        let client = self.client()?;
        client
            .emit("typing", &json!({ "chatId": chat, "isTyping": typing }))
            .await
            .map_err(|e| Failure::Connection(e.to_string()))
    }

    async fn join_some_chat(&self) -> Result<(), Failure> {
        let chats = self.model.chats_of(self.user);
        let not_joined: Vec<String> = {
            let state = self.state.borrow();
            chats
                .into_iter()
                .filter(|c| !state.joined.contains(c))
                .collect()
        };
        match self.pick(&not_joined) {
            Some(chat) => self.join(&chat, true).await,
            None => Ok(()),
        }
    }

    async fn leave_some_chat(&self) -> Result<(), Failure> {
        let joined: Vec<String> = self.state.borrow().joined.iter().cloned().collect();
        let Some(chat) = self.pick(&joined) else {
            return Ok(());
        };
        self.state.borrow_mut().joined.remove(&chat);
        let answer = self.ask("leave-chat", &json!({ "chatId": chat })).await?;
        self.trace(format!(
            "leave {}: {}",
            self.model.chat_label(&chat),
            answer["ok"]
        ));
        Ok(())
    }

    /// Something the server must refuse: joining or syncing a chat the user is not in,
    /// sending to it, or sending an empty message.
    async fn hostile(&self) -> Result<(), Failure> {
        let foreign: Option<String> = self.pick(&self.model.foreign_chats(self.user));
        let own: Option<String> = self.pick(&self.model.chats_of(self.user));
        let kind = self.rng.borrow_mut().random_range(0..4);
        match (kind, foreign, own) {
            (0, Some(chat), _) => self.join(&chat, false).await,
            (1, Some(chat), _) => {
                let answer = self
                    .ask("sync", &json!({ "chatId": chat, "afterSeq": 0 }))
                    .await?;
                if answer["ok"] != json!(false) {
                    self.model.violate(
                        Invariant::Authorization,
                        format!(
                            "{} synced foreign chat {}: {answer}",
                            self.label(),
                            self.model.chat_label(&chat)
                        ),
                    );
                }
                Ok(())
            }
            (2, Some(chat), _) => self.send_refused(&chat, "intruder").await,
            (_, _, Some(chat)) => self.send_refused(&chat, "   ").await,
            _ => Ok(()),
        }
    }

    /// A send that must be refused (and never appear).
    async fn send_refused(&self, chat: &str, text: &str) -> Result<(), Failure> {
        let n = {
            let mut state = self.state.borrow_mut();
            state.sends += 1;
            state.sends
        };
        let cmid = format!("t{}-{n}x", self.index);
        self.register_send(&cmid, chat, text, false);
        let label = self.model.chat_label(chat);
        self.trace(format!("hostile send {cmid} to {label}"));
        self.begin_attempt(&cmid);
        let data = json!({ "chatId": chat, "text": text, "clientMsgId": cmid });
        let answer = self.ask("send-message", &data).await?;
        if answer["ok"] == json!(true) {
            self.record_attempt(&cmid, Attempt::Unknown("accepted".into()));
            self.model.violate(
                Invariant::Contract,
                format!(
                    "{} hostile send {cmid} to {label} accepted: {answer}",
                    self.label()
                ),
            );
        } else {
            let error = answer["error"].as_str().unwrap_or("").to_owned();
            self.trace(format!("hostile send {cmid}: refused {error:?}"));
            self.record_attempt(&cmid, Attempt::Refused(error));
        }
        Ok(())
    }

    /// `GET /api/chats`: must list exactly the user's chats.
    async fn list_chats(&self) {
        let token = self.token();
        let answer = net::rest(
            Method::GET,
            "/api/chats",
            token.as_deref(),
            None,
            REST_TIMEOUT,
        )
        .await;
        match answer {
            Ok((StatusCode::OK, Value::Array(chats))) => {
                let listed: BTreeSet<String> = chats
                    .iter()
                    .filter_map(|c| c["_id"].as_str().map(str::to_owned))
                    .collect();
                let expected: BTreeSet<String> =
                    self.model.chats_of(self.user).into_iter().collect();
                if listed != expected {
                    self.model.violate(
                        Invariant::Contract,
                        format!(
                            "{} lists chats {listed:?}, expected {expected:?}",
                            self.label()
                        ),
                    );
                }
                for chat in &chats {
                    if !chat["lastMessage"].is_null() {
                        self.take_message(&chat["lastMessage"], "chat list");
                    }
                }
                self.trace(format!("lists {} chats", listed.len()));
            }
            Ok((status, answer)) => {
                if status != StatusCode::INTERNAL_SERVER_ERROR {
                    self.model.violate(
                        Invariant::Contract,
                        format!("{} GET /api/chats answered {status} {answer}", self.label()),
                    );
                }
            }
            Err(error) => self.trace(format!("list chats failed: {error}")),
        }
    }

    /// Reads the newest page of a chat's history over REST (more sightings for the seq check).
    async fn read_history_page(&self) {
        let Some(chat) = self.pick(&self.model.chats_of(self.user)) else {
            return;
        };
        let token = self.token();
        let label = self.model.chat_label(&chat);
        let answer = net::rest(
            Method::GET,
            &format!("/api/messages/chat/{chat}?limit=20"),
            token.as_deref(),
            None,
            REST_TIMEOUT,
        )
        .await;
        match answer {
            Ok((StatusCode::OK, Value::Array(messages))) => {
                let mut seqs = Vec::with_capacity(messages.len());
                for message in &messages {
                    if let Some(facts) = MessageFacts::parse(message) {
                        self.model.observe(&facts, "history");
                        seqs.push(facts.seq);
                    }
                }
                if seqs.windows(2).any(|w| w[1] != w[0] + 1) {
                    self.model.violate(
                        Invariant::SeqContiguous,
                        format!("{} history page of {label} has seqs {seqs:?}", self.label()),
                    );
                }
                self.trace(format!("history {label}: {} messages", messages.len()));
            }
            Ok((status, answer)) => self.model.violate(
                Invariant::Contract,
                format!(
                    "{} history of {label} answered {status} {answer}",
                    self.label()
                ),
            ),
            Err(error) => self.trace(format!("history {label} failed: {error}")),
        }
    }

    // ---- the liveness phase ----

    /// Works until this tab is settled: connected, synced, nothing pending, its final message
    /// acknowledged. A tab that ends offline just closes. Runs again whenever it is woken.
    async fn liveness(self: &Rc<Self>) {
        let ends_offline = self.model.state.borrow().tabs[self.index].ends_offline;
        if ends_offline {
            if self.state.borrow().live.is_some() {
                self.trace("closes for good");
                self.disconnect(true, Duration::from_secs(3600));
            }
            self.set_settled(true);
            self.control.notify.notified().await;
            return;
        }
        self.state.borrow_mut().offline_until = None;
        loop {
            if self.model.phase() != Phase::Liveness {
                return;
            }
            match self.settle_once().await {
                Ok(()) => {
                    self.set_settled(true);
                    // Settled: keep serving gaps until something changes.
                    loop {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        if !self.is_connected() {
                            self.set_settled(false);
                            break;
                        }
                        let gap = self.state.borrow_mut().gaps.pop_first();
                        if let Some(chat) = gap {
                            let _ = self.sync_chat(&chat).await;
                        }
                    }
                }
                Err(Failure::Connection(why)) => {
                    self.trace(format!("not settled yet: {why}"));
                    self.set_settled(false);
                    tokio::time::sleep(Duration::from_millis(1000)).await;
                }
            }
        }
    }

    fn set_settled(&self, settled: bool) {
        let mut state = self.model.state.borrow_mut();
        let status = &mut state.tabs[self.index];
        if status.settled != settled {
            status.settled = settled;
            drop(state);
            self.trace(if settled { "settled" } else { "unsettled" });
        }
    }

    async fn settle_once(self: &Rc<Self>) -> Result<(), Failure> {
        if self.is_connected() {
            // A connection that survived the faults may still be dead: probe it.
            for chat in self.model.chats_of(self.user) {
                self.sync_chat(&chat).await?;
            }
        } else {
            self.connect().await?;
        }
        loop {
            let pending: Vec<String> = self.state.borrow().pending.keys().cloned().collect();
            if pending.is_empty() {
                break;
            }
            for cmid in pending {
                self.retry(&cmid).await?;
            }
            if !self.state.borrow().pending.is_empty() {
                // Refused for now (rate limited, or storage trouble): try again shortly.
                tokio::time::sleep(Duration::from_millis(1000)).await;
            }
        }
        if !self.state.borrow().final_acked {
            let chat = self.model.chats_of(self.user).first().cloned();
            if let Some(chat) = chat {
                let cmid = format!("t{}-final", self.index);
                let text = format!("final from t{}", self.index);
                self.register_send(&cmid, &chat, &text, true);
                self.state.borrow_mut().pending.insert(
                    cmid.clone(),
                    PendingSend {
                        chat: chat.clone(),
                        text: text.clone(),
                    },
                );
                self.send_socket(&cmid, &chat, &text).await?;
                if !self.state.borrow().pending.is_empty() {
                    return Err(Failure::Connection("final message not acked yet".into()));
                }
            }
            self.state.borrow_mut().final_acked = true;
        }
        let gaps: Vec<String> = std::mem::take(&mut self.state.borrow_mut().gaps)
            .into_iter()
            .collect();
        for chat in gaps {
            self.sync_chat(&chat).await?;
        }
        Ok(())
    }

    // ---- the audit ----

    /// Reports the tab's views and presence, and reads back the history of the chats the
    /// driver assigned to it.
    async fn audit(&self) {
        let report = {
            let state = self.state.borrow();
            TabReport {
                user: self.user,
                connected: state.live.is_some(),
                views: state.views.clone(),
                online: state
                    .live
                    .as_ref()
                    .map(|l| {
                        l.online
                            .iter()
                            .filter(|(_, online)| **online)
                            .map(|(id, _)| id.clone())
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        };
        self.model.state.borrow_mut().tabs[self.index].report = Some(report);
        let assigned: Vec<String> = {
            let state = self.model.state.borrow();
            state
                .chats
                .iter()
                .filter(|c| c.audit_tab == Some(self.index))
                .filter_map(|c| c.id.clone())
                .collect()
        };
        for chat in assigned {
            let history = self.read_full_history(&chat).await;
            self.model
                .state
                .borrow_mut()
                .histories
                .insert(chat, history);
        }
        self.model.state.borrow_mut().tabs[self.index].audited = true;
        self.trace("audited");
    }

    async fn read_full_history(&self, chat: &str) -> Vec<MessageFacts> {
        let token = self.token();
        let mut history = Vec::new();
        let mut after = 0;
        let limit = self.rng.borrow_mut().random_range(7..=HISTORY_LIMIT_MAX);
        for _ in 0..HISTORY_PAGES_MAX {
            let path = format!("/api/messages/chat/{chat}?after={after}&limit={limit}");
            let page =
                match net::rest(Method::GET, &path, token.as_deref(), None, REST_TIMEOUT).await {
                    Ok((StatusCode::OK, Value::Array(page))) => page,
                    other => {
                        self.trace(format!("history read failed: {other:?}; retrying"));
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
            let count = page.len();
            for message in &page {
                match MessageFacts::parse(message) {
                    Some(facts) => {
                        after = after.max(facts.seq);
                        history.push(facts);
                    }
                    None => self.model.violate(
                        Invariant::Contract,
                        format!("malformed message in history: {message}"),
                    ),
                }
            }
            if (count as u64) < limit {
                break;
            }
        }
        history
    }

    // ---- events ----

    /// Handles one server event on connection `no`.
    fn on_event(&self, no: u32, event: Event) {
        let data = event.data();
        match event.name.as_str() {
            "new-message" => self.on_new_message(no, &data),
            "typing" => self.on_typing(no, &data),
            "online-users" => {
                let mut ids: Vec<String> = data["userIds"]
                    .as_array()
                    .map(|ids| {
                        ids.iter()
                            .filter_map(|id| id.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                ids.sort();
                let mut users: Vec<Option<usize>> =
                    ids.iter().map(|id| self.model.user_index(id)).collect();
                users.sort();
                let labels: Vec<String> = users
                    .iter()
                    .map(|u| u.map_or_else(|| "u?".to_owned(), |u| format!("u{u}")))
                    .collect();
                self.trace(format!("#{no} online-users {}", labels.join(",")));
                self.with_live(no, |live| {
                    live.online = ids.into_iter().map(|id| (id, true)).collect();
                });
            }
            "user-online" | "user-offline" => {
                let online = event.name == "user-online";
                let Some(user) = data["userId"].as_str() else {
                    self.model.violate(
                        Invariant::Contract,
                        format!("{} without userId", event.name),
                    );
                    return;
                };
                let label = self.model.user_label(user);
                self.trace(format!("#{no} {} {label}", event.name));
                let before = self.with_live(no, |live| {
                    live.online.insert(user.to_owned(), online).unwrap_or(false)
                });
                if before == Some(online) {
                    self.model.violate(
                        Invariant::Presence,
                        format!(
                            "{}#{no} got {} for {label}, who it already saw {}",
                            self.label(),
                            event.name,
                            if online { "online" } else { "offline" }
                        ),
                    );
                }
            }
            "socket-error" => {
                self.trace(format!("#{no} socket-error {}", data["message"]));
            }
            other => self.trace(format!("#{no} event {other}")),
        }
    }

    /// Runs `f` on connection `no` if it is still the current one.
    fn with_live<R>(&self, no: u32, f: impl FnOnce(&mut Live) -> R) -> Option<R> {
        let mut state = self.state.borrow_mut();
        state.live.as_mut().filter(|l| l.no == no).map(f)
    }

    fn on_new_message(&self, no: u32, data: &Value) {
        let Some(facts) = MessageFacts::parse(data) else {
            self.model
                .violate(Invariant::Contract, format!("malformed new-message {data}"));
            return;
        };
        let label = self.model.chat_label(&facts.chat);
        self.trace(format!(
            "#{no} new-message {label} seq {} id {}",
            facts.seq, facts.id
        ));
        let mine = self.model.chats_of(self.user).contains(&facts.chat);
        if !mine {
            self.model.violate(
                Invariant::Authorization,
                format!(
                    "{}#{no} (u{}) received new-message {} of {label}, a chat it is not in",
                    self.label(),
                    self.user,
                    facts.id
                ),
            );
            return;
        }
        let duplicate = self.with_live(no, |live| !live.received.insert(facts.id.clone()));
        if duplicate == Some(true) {
            self.model.violate(
                Invariant::ExactlyOnce,
                format!(
                    "{}#{no} received new-message {} (seq {} of {label}) twice",
                    self.label(),
                    facts.id,
                    facts.seq
                ),
            );
        }
        self.model.observe(&facts, "new-message");
        let chat = facts.chat.clone();
        let seq = facts.seq;
        let mut state = self.state.borrow_mut();
        if let Some(view) = state.views.get_mut(&chat) {
            view.insert(seq, facts);
        }
        drop(state);
        if seq > self.contiguous(&chat) + 1 {
            self.state.borrow_mut().gaps.insert(chat);
        }
    }

    fn on_typing(&self, no: u32, data: &Value) {
        let chat = data["chatId"].as_str().unwrap_or_default();
        let from = data["userId"].as_str().unwrap_or_default();
        let label = self.model.chat_label(chat);
        self.trace(format!(
            "#{no} typing {label} from {} {}",
            self.model.user_label(from),
            data["isTyping"]
        ));
        if !self.model.chats_of(self.user).iter().any(|c| c == chat) {
            self.model.violate(
                Invariant::Authorization,
                format!(
                    "{}#{no} (u{}) received typing of {label}, a chat it is not in",
                    self.label(),
                    self.user
                ),
            );
        }
        if self.my_id().as_deref() == Some(from) {
            self.model.violate(
                Invariant::Contract,
                format!("{}#{no} received its own user's typing", self.label()),
            );
        }
    }
}

/// Moves the events of connection `no` into the tab, until the connection ends.
async fn pump_events(tab: Rc<Tab>, no: u32, mut events: mpsc::Receiver<Event>) {
    while let Some(event) = events.recv().await {
        tab.on_event(no, event);
    }
    let ended = {
        let mut state = tab.state.borrow_mut();
        match &state.live {
            Some(live) if live.no == no => state.live.take(),
            _ => None,
        }
    };
    if ended.is_some() {
        tab.publish_connected();
        tab.trace(format!("conn {no} closed"));
    }
}

fn error_kind(error: &ClientError) -> String {
    match error {
        ClientError::AckTimeout(_) => "ack timeout".into(),
        ClientError::Closed => "closed".into(),
        ClientError::WebSocket(_) => "websocket error".into(),
        ClientError::Refused(message) => format!("refused {message:?}"),
        ClientError::Protocol(_) => "protocol error".into(),
    }
}
