//! A simulated browser tab: one user's client, behaving like the real app, executing its part
//! of the plan.
//!
//! A tab registers its user (the user's first tab) and opens the user's chats over REST
//! (`setup`), then keeps a Socket.IO connection (`session`): after every (re)connect it
//! re-joins its chats, `sync`s every chat from the last seq it holds without a gap, and resends
//! whatever was never acknowledged, with the same `clientMsgId`; a gap in the seqs it receives
//! makes it `sync` that chat. During the safety phase it takes the steps of its plan
//! (`actions`, `sending`); in the liveness phase it settles and at the audit it reports
//! (`ending`). Events from the server are handed to the oracle as they arrive (`events`).
//!
//! A tab never judges what it sees: every answer and event goes to the oracle, and the tab
//! only keeps what a client keeps (its connection, its view of each chat, what it still has to
//! resend).

mod actions;
mod ending;
mod events;
mod groups;
mod sending;
mod session;
mod setup;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use palaver_client::Client;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::Notify;

use crate::model::{MessageFacts, Model, Phase};
use crate::plan::TabPlan;

/// How long a tab waits for an ack before it counts the outcome as unknown.
const ACK_TIMEOUT: Duration = Duration::from_secs(6);
/// TCP connect and Socket.IO handshake, each.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REST_TIMEOUT: Duration = Duration::from_secs(8);
/// Commands waiting for a tab; a tab takes them all whenever it is woken, so only a tab that
/// stopped running could fill this, and its commands no longer matter.
const COMMANDS_QUEUED_MAX: usize = 64;

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
    pump: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct TabState {
    connections: u32,
    live: Option<Live>,
    /// The tab's view of each of its chats.
    views: BTreeMap<String, BTreeMap<u64, MessageFacts>>,
    /// The groups its user is a member of, as far as the tab was told (chat lists, events,
    /// refusals).
    groups: BTreeSet<String>,
    /// Its user's read position per chat, as far as the tab was told (acks, `read` events,
    /// chat lists).
    read_positions: BTreeMap<String, u64>,
    joined: BTreeSet<String>,
    pending: BTreeMap<String, PendingSend>,
    /// Chats whose seqs showed a gap: `sync` them.
    gaps: BTreeSet<String>,
    /// Groups the tab learned its user left or was removed from: ask for their history and
    /// `sync` them once, which the server must refuse (unless the user is back by then).
    probes: BTreeSet<String>,
    /// `clientMsgId`s minted so far.
    sends: u64,
    /// The next step of the plan.
    next_step: usize,
    /// No reconnecting before this instant (after a close or drop).
    offline_until: Option<tokio::time::Instant>,
    final_acked: bool,
}

/// Why an action could not finish: the connection is gone or unusable.
#[derive(Debug)]
enum Failure {
    Connection(String),
}

/// One tab.
pub struct Tab {
    pub index: usize,
    pub user: usize,
    plan: TabPlan,
    model: Model,
    control: Rc<TabControl>,
    /// Draws what the plan leaves to the moment: page sizes, back-off delays.
    rng: RefCell<ChaCha8Rng>,
    state: RefCell<TabState>,
}

impl Tab {
    pub fn new(
        index: usize,
        plan: TabPlan,
        seed: u64,
        model: Model,
        control: Rc<TabControl>,
    ) -> Rc<Self> {
        Rc::new(Self {
            index,
            user: plan.user,
            plan,
            model,
            control,
            rng: RefCell::new(ChaCha8Rng::seed_from_u64(seed)),
            state: RefCell::new(TabState::default()),
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

    fn millis(&self, low: u64, high: u64) -> Duration {
        Duration::from_millis(self.rng.borrow_mut().random_range(low..=high))
    }

    /// The chats of this tab's user (server ids): its 1:1 chats in plan order, then the groups
    /// it believes its user is in.
    fn own_chats(&self) -> Vec<String> {
        let mut chats = self.model.chats_of(self.user);
        chats.extend(self.state.borrow().groups.iter().cloned());
        chats
    }

    /// The user's own server id.
    fn own_id(&self) -> String {
        self.model.state.borrow().users[self.user]
            .id
            .clone()
            .unwrap_or_default()
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
}
