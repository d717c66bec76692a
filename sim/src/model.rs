//! The model: what the simulation knows, shared by the driver, the tabs, the server host and
//! the oracle. The users, chats and groups of the plan (with the ids the server gave them), the
//! phase, every send and the outcome of each attempt, every group change asked for and how it
//! ended, the read positions acknowledged, the message each `(chat, seq)` was seen bound to, per
//! connection what it was sent and what it received, what each user was shown of each group
//! (judged against the membership at the end), the history read back at the audit, and the
//! violations the oracle found. The model records; only the oracle judges.
//!
//! Everything is single-threaded (turmoil runs all hosts on the thread that steps the
//! simulation), so the model is an `Rc<RefCell<_>>`, and every map is a `BTreeMap` so that
//! iterating it cannot depend on hash order.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::Value;

use crate::plan::PresenceScope;
use crate::trace::Trace;

/// The invariants of the oracle, numbered as in the README, plus the contract checks that are
/// not one of them (unexpected refusals, tokens that stop working, malformed answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    Contract,
    Durability,
    NoPhantoms,
    SeqContiguous,
    Idempotency,
    ExactlyOnce,
    Authorization,
    Convergence,
    Presence,
    SendOrder,
    DeliveryOrder,
    ReadMonotonic,
    ReadDurability,
    UnreadConvergence,
}

impl Invariant {
    pub fn number(self) -> u8 {
        match self {
            Invariant::Contract => 0,
            Invariant::Durability => 1,
            Invariant::NoPhantoms => 2,
            Invariant::SeqContiguous => 3,
            Invariant::Idempotency => 4,
            Invariant::ExactlyOnce => 5,
            Invariant::Authorization => 6,
            Invariant::Convergence => 7,
            Invariant::Presence => 8,
            Invariant::SendOrder => 9,
            Invariant::DeliveryOrder => 10,
            Invariant::ReadMonotonic => 11,
            Invariant::ReadDurability => 12,
            Invariant::UnreadConvergence => 13,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Invariant::Contract => "contract",
            Invariant::Durability => "durability",
            Invariant::NoPhantoms => "no phantoms",
            Invariant::SeqContiguous => "seq 1..n",
            Invariant::Idempotency => "idempotency",
            Invariant::ExactlyOnce => "exactly once",
            Invariant::Authorization => "authorization",
            Invariant::Convergence => "convergence",
            Invariant::Presence => "presence",
            Invariant::SendOrder => "send order",
            Invariant::DeliveryOrder => "delivery order",
            Invariant::ReadMonotonic => "read state monotonic",
            Invariant::ReadDurability => "read state durable",
            Invariant::UnreadConvergence => "unread convergence",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invariant {} ({})", self.number(), self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: Invariant,
    pub at_ms: u64,
    pub detail: String,
}

/// The run's phases. Clients and the driver move through them in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Registering users and opening chats, without faults.
    Setup,
    /// Normal use under the fault schedule.
    Safety,
    /// Every fault healed: clients reconnect, sync, resend, and settle.
    Liveness,
    /// Settled and quiet: clients report their views, history is read back.
    Audit,
    /// Clients stop.
    Done,
}

/// The facts of one message, as the contract shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageFacts {
    pub id: String,
    pub chat: String,
    pub seq: u64,
    pub sender: String,
    pub text: String,
    pub client_msg_id: Option<String>,
    /// A system message's event (a membership change or rename).
    pub system: Option<SystemFacts>,
}

/// The event of a system message: `kind` is `added`, `removed`, `left` or `renamed`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SystemFacts {
    pub kind: String,
    pub user: String,
    pub by: String,
}

impl MessageFacts {
    /// Reads a Message object; `None` if it is not shaped like one (a system message without
    /// its event, too).
    pub fn parse(value: &Value) -> Option<Self> {
        let system = match value.get("kind") {
            Some(kind) if kind == "system" => {
                let event = value.get("event")?;
                Some(SystemFacts {
                    kind: event.get("type")?.as_str()?.to_owned(),
                    user: event.get("userId")?.as_str()?.to_owned(),
                    by: event.get("by")?.as_str()?.to_owned(),
                })
            }
            _ => None,
        };
        Some(Self {
            id: value.get("_id")?.as_str()?.to_owned(),
            chat: value.get("chat")?.as_str()?.to_owned(),
            seq: value.get("seq")?.as_u64()?,
            sender: value.get("sender")?.get("_id")?.as_str()?.to_owned(),
            text: value.get("text")?.as_str()?.to_owned(),
            client_msg_id: match value.get("clientMsgId") {
                Some(Value::String(id)) => Some(id.clone()),
                _ => None,
            },
            system,
        })
    }
}

/// A user of the simulation.
#[derive(Debug, Clone, Default)]
pub struct UserSlot {
    pub name: String,
    pub email: String,
    pub id: Option<String>,
    pub token: Option<String>,
}

/// A planned chat: a 1:1 chat between users `a` < `b`, or a group (`group`; then `a` and `b`
/// are its owner).
#[derive(Debug, Clone)]
pub struct ChatSlot {
    pub a: usize,
    pub b: usize,
    pub id: Option<String>,
    /// The tab that reads this chat's history back at the audit.
    pub audit_tab: Option<usize>,
    pub group: Option<GroupSlot>,
}

/// What the model knows of a group before the run: who it starts with and who may ever be in it.
#[derive(Debug, Clone)]
pub struct GroupSlot {
    pub owner: usize,
    /// The members it is created with, the owner first.
    pub initial: Vec<usize>,
    /// Every user who may ever be a member.
    pub users: Vec<usize>,
}

/// A group change as asked for (over REST) and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRecord {
    pub chat: String,
    pub by: usize,
    /// The system message it makes: `added`, `removed`, `left` or `renamed`.
    pub kind: &'static str,
    /// The user added, removed or leaving (`by` for a rename).
    pub user: usize,
    pub outcome: ChangeOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeOutcome {
    /// 200/204: committed (an add of a member already in commits nothing).
    Done,
    /// Refused (not the owner, not a member...): nothing committed.
    Refused,
    /// No answer, or a storage failure: it may or may not have been committed.
    Unknown,
}

/// Something of group `chat` shown to user `user` (on connection `conn`, or over REST):
/// judged at the end against the group's membership in its final history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSighting {
    pub at_ms: u64,
    pub tab: usize,
    pub conn: Option<u32>,
    pub user: usize,
    pub chat: String,
    pub what: Shown,
}

/// What a group sighting showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    /// The message of seq `seq` (`new-message`): the user must be a member as of it.
    Message(u64),
    /// An answer made when the chat's last seq was `seq` (a last `sync` page, a chat list, the
    /// newest history page): the user must be a member as of it.
    LastSeq(u64, &'static str),
    /// An event with no seq (`typing`, `read`, membership events): the user must have been a
    /// member at some time.
    Event(&'static str),
    /// A member's request refused with `Chat not found`: the user must have been out of the
    /// group at some time.
    Refused(&'static str),
}

/// Group sightings a run keeps; a run of the default size makes a few tens of thousands.
pub const GROUP_SIGHTINGS_MAX: usize = 1_000_000;

/// How one attempt of a send ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Acked {
        id: String,
        seq: u64,
    },
    /// Refused with a message that says nothing was committed.
    Refused(String),
    /// No answer, or `Failed to send message`: it may or may not have been committed.
    Unknown(String),
}

/// What a refusal of a send says about it, by its error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// `Failed to send message`: storage trouble; it may or may not have been committed.
    Unknown,
    /// `Rate limited`: nothing was committed; the tab retries later.
    Retry,
    /// Any other refusal: nothing was committed and a retry would be refused too.
    Final,
}

impl RefusalKind {
    pub fn of(error: &str) -> Self {
        match error {
            "Failed to send message" => RefusalKind::Unknown,
            "Rate limited" => RefusalKind::Retry,
            _ => RefusalKind::Final,
        }
    }
}

/// Everything sent under one `(user, clientMsgId)`.
#[derive(Debug, Clone)]
pub struct SendRecord {
    pub user: usize,
    pub chat: String,
    pub text: String,
    /// A send the server must accept (a member, a valid text); hostile ones must be refused.
    pub valid: bool,
    pub attempts: Vec<Attempt>,
}

impl SendRecord {
    pub fn acked(&self) -> Option<(&str, u64)> {
        self.attempts.iter().find_map(|a| match a {
            Attempt::Acked { id, seq } => Some((id.as_str(), *seq)),
            _ => None,
        })
    }

    /// True when some attempt may have been committed.
    pub fn may_exist(&self) -> bool {
        self.attempts
            .iter()
            .any(|a| !matches!(a, Attempt::Refused(_)))
    }
}

/// One send emitted on a connection and acknowledged as a new message (its first attempt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckedSend {
    /// Its place among the sends emitted on the connection (0 first).
    pub emission: u64,
    pub client_msg_id: String,
    pub chat: String,
    pub seq: u64,
}

/// What one connection `(tab, number)` was sent and what it received.
#[derive(Debug, Clone, Default)]
pub struct ConnRecord {
    /// `send-message` events emitted on it so far.
    pub emitted: u64,
    /// Its sends acknowledged as new, in the order the acks came.
    pub acked_new: Vec<AckedSend>,
    /// `new-message` ids received.
    pub received: BTreeSet<String>,
    /// Per chat, the highest seq received in a `new-message`.
    pub highest_seq: BTreeMap<String, u64>,
    /// Who it was told is online: `online-users`, then the transitions.
    pub online: BTreeMap<String, bool>,
    /// Per `(user id, chat)`, the highest `lastReadSeq` of a `read` event received.
    pub reads: BTreeMap<(String, String), u64>,
    /// `(chat, seq)` of the system messages received that took a member out of a group.
    pub separations: BTreeSet<(String, u64)>,
}

/// An event as a socket received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    NewMessage { chat: String, seq: u64, id: String },
    Typing { chat: String, from: String },
    OnlineUsers(Vec<String>),
    UserOnline(String),
    UserOffline(String),
}

/// An event received by connection `conn` of tab `tab`, at simulated `at_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub at_ms: u64,
    pub tab: usize,
    pub conn: u32,
    pub event: Delivered,
}

/// Deliveries a run keeps (when it keeps them at all); a run of the default size receives a
/// few tens of thousands.
pub const DELIVERIES_MAX: usize = 1_000_000;

/// What a client reports at the audit: its view of each of its chats and who it sees online,
/// and per chat it lists its read position and unread count, its own and the server's.
#[derive(Debug, Clone, Default)]
pub struct TabReport {
    pub user: usize,
    pub connected: bool,
    pub views: BTreeMap<String, BTreeMap<u64, MessageFacts>>,
    pub online: BTreeSet<String>,
    pub reads: BTreeMap<String, ReadFigures>,
}

/// A chat's read state at the audit: as the client computes it from what it received, and as
/// `GET /api/chats` says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadFigures {
    pub client_last_read: u64,
    pub client_unread: u64,
    pub server_last_read: u64,
    pub server_unread: u64,
}

/// Driver-side status of each client.
#[derive(Debug, Clone, Default)]
pub struct TabStatus {
    /// Setup done: registered, chats known.
    pub ready: bool,
    /// Stays offline once the liveness phase starts (a closed tab).
    pub ends_offline: bool,
    pub settled: bool,
    /// The tab holds an open connection.
    pub connected: bool,
    pub audited: bool,
    pub report: Option<TabReport>,
}

#[derive(Default)]
pub struct ModelState {
    pub phase: Option<Phase>,
    pub users: Vec<UserSlot>,
    pub chats: Vec<ChatSlot>,
    pub tabs: Vec<TabStatus>,
    /// Keyed by `(user, clientMsgId)`.
    pub sends: BTreeMap<(usize, String), SendRecord>,
    /// The message each `(chat, seq)` was seen bound to, first sighting.
    pub bindings: BTreeMap<(String, u64), MessageFacts>,
    /// When each `(chat, seq)` was first seen (simulated ms): it was committed by then.
    pub first_seen_ms: BTreeMap<(String, u64), u64>,
    /// When each server boot began (simulated ms), in order.
    pub boots_at_ms: Vec<u64>,
    /// `(chat, seq, user)`: some connection received `user-offline` of the user after the
    /// system message of that seq (a removal or a leave), so the announcement came after it.
    pub offline_after_separation: BTreeSet<(String, u64, String)>,
    /// Whom the server tells of a user's presence in this run.
    pub presence_scope: PresenceScope,
    /// Conflicting sightings already reported, as `(chat, seq, _id)`: reported once each.
    pub conflicts: BTreeSet<(String, u64, String)>,
    /// Acknowledged sends already reported missing, as `(user, clientMsgId)`.
    pub lost: BTreeSet<(usize, String)>,
    /// History read back at the audit, per chat id.
    pub histories: BTreeMap<String, Vec<MessageFacts>>,
    pub violations: Vec<Violation>,
    /// Per connection `(tab, connection number)`: what it was sent and what it received.
    pub connections: BTreeMap<(usize, u32), ConnRecord>,
    /// Every group change asked for.
    pub changes: Vec<ChangeRecord>,
    /// What each user was shown of each group (at most [`GROUP_SIGHTINGS_MAX`]).
    pub group_sightings: Vec<GroupSighting>,
    /// Per `(user, chat)`, the highest read position acknowledged (`mark-read` ack or 200).
    pub read_acked: BTreeMap<(usize, String), u64>,
    /// Every event the sockets received, in order, if the run keeps them (at most
    /// [`DELIVERIES_MAX`]).
    pub deliveries: Option<Vec<Delivery>>,
    /// Set by the server host from the moment its storage failed until it stops: a handshake
    /// in that window is refused with `Invalid namespace`, which the oracle tolerates.
    pub server_stopping: Arc<AtomicBool>,
}

/// The shared model. Cheap to clone.
#[derive(Clone)]
pub struct Model {
    pub state: Rc<RefCell<ModelState>>,
    pub trace: Trace,
}

impl Model {
    pub fn new(
        trace: Trace,
        users: Vec<UserSlot>,
        chats: Vec<ChatSlot>,
        tabs: usize,
        keep_deliveries: bool,
    ) -> Self {
        Self {
            state: Rc::new(RefCell::new(ModelState {
                phase: Some(Phase::Setup),
                users,
                chats,
                tabs: vec![TabStatus::default(); tabs],
                deliveries: keep_deliveries.then(Vec::new),
                ..ModelState::default()
            })),
            trace,
        }
    }

    /// True while the server is stopping after a storage failure.
    pub fn server_stopping(&self) -> bool {
        self.state
            .borrow()
            .server_stopping
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn phase(&self) -> Phase {
        self.state.borrow().phase.unwrap_or(Phase::Setup)
    }

    /// Records a violation (and a trace line for it). The oracle's to call.
    pub fn record_violation(&self, invariant: Invariant, detail: impl Into<String>) {
        let detail = detail.into();
        self.trace
            .record(format!("VIOLATION {invariant}: {detail}"));
        let at_ms = self.trace.now_ms();
        self.state.borrow_mut().violations.push(Violation {
            invariant,
            at_ms,
            detail,
        });
    }

    /// Records that a server boot begins now.
    pub fn record_boot(&self) {
        let now = self.trace.now_ms();
        self.state.borrow_mut().boots_at_ms.push(now);
    }

    /// Records an event a socket received, if the run keeps them.
    pub fn record_delivery(&self, tab: usize, conn: u32, event: Delivered) {
        let at_ms = self.trace.now_ms();
        let mut state = self.state.borrow_mut();
        if let Some(deliveries) = &mut state.deliveries
            && deliveries.len() < DELIVERIES_MAX
        {
            deliveries.push(Delivery {
                at_ms,
                tab,
                conn,
                event,
            });
        }
    }

    /// Notes a send the first time its `clientMsgId` is used.
    pub fn register_send(&self, user: usize, cmid: &str, chat: &str, text: &str, valid: bool) {
        self.state
            .borrow_mut()
            .sends
            .entry((user, cmid.to_owned()))
            .or_insert_with(|| SendRecord {
                user,
                chat: chat.to_owned(),
                text: text.to_owned(),
                valid,
                attempts: Vec::new(),
            });
    }

    /// Notes that an attempt of `cmid` is on its way, and returns whether it is the first.
    /// Until its outcome is known it counts as unknown, so an attempt interrupted by a fault
    /// may still show up in history.
    pub fn begin_attempt(&self, user: usize, cmid: &str) -> bool {
        let mut state = self.state.borrow_mut();
        match state.sends.get_mut(&(user, cmid.to_owned())) {
            Some(record) => {
                record.attempts.push(Attempt::Unknown("in flight".into()));
                record.attempts.len() == 1
            }
            None => false,
        }
    }

    /// Replaces the outcome of the latest attempt of `cmid`.
    pub fn record_attempt(&self, user: usize, cmid: &str, attempt: Attempt) {
        let mut state = self.state.borrow_mut();
        if let Some(record) = state.sends.get_mut(&(user, cmid.to_owned())) {
            match record.attempts.last_mut() {
                Some(last) => *last = attempt,
                None => record.attempts.push(attempt),
            }
        }
    }

    /// The next emission number on connection `conn` of `tab`.
    pub fn next_emission(&self, tab: usize, conn: u32) -> u64 {
        let mut state = self.state.borrow_mut();
        let record = state.connections.entry((tab, conn)).or_default();
        let emission = record.emitted;
        record.emitted += 1;
        emission
    }

    /// The server id of chat `index` of the plan, once it is opened.
    pub fn chat_id(&self, index: usize) -> Option<String> {
        self.state.borrow().chats.get(index)?.id.clone()
    }

    /// Index of the user with this server id.
    pub fn user_index(&self, id: &str) -> Option<usize> {
        self.state
            .borrow()
            .users
            .iter()
            .position(|u| u.id.as_deref() == Some(id))
    }

    /// The 1:1 chats of user `u` (ids known so far), in plan order.
    pub fn chats_of(&self, u: usize) -> Vec<String> {
        self.state
            .borrow()
            .chats
            .iter()
            .filter(|c| c.group.is_none() && (c.a == u || c.b == u))
            .filter_map(|c| c.id.clone())
            .collect()
    }

    /// The group with this chat id, if it is one.
    pub fn group(&self, id: &str) -> Option<GroupSlot> {
        self.state
            .borrow()
            .chats
            .iter()
            .find(|c| c.id.as_deref() == Some(id))?
            .group
            .clone()
    }

    /// Records what user `user` was shown of group `chat`, if the run still keeps sightings.
    pub fn record_group_sighting(
        &self,
        tab: usize,
        conn: Option<u32>,
        user: usize,
        chat: &str,
        what: Shown,
    ) {
        let at_ms = self.trace.now_ms();
        let mut state = self.state.borrow_mut();
        if state.group_sightings.len() < GROUP_SIGHTINGS_MAX {
            state.group_sightings.push(GroupSighting {
                at_ms,
                tab,
                conn,
                user,
                chat: chat.to_owned(),
                what,
            });
        }
    }

    /// Records a violation found later, at the simulated time `at_ms` it happened.
    pub fn record_violation_at(&self, invariant: Invariant, at_ms: u64, detail: String) {
        self.trace
            .record(format!("VIOLATION {invariant}: {detail}"));
        self.state.borrow_mut().violations.push(Violation {
            invariant,
            at_ms,
            detail,
        });
    }

    /// A short, stable name for a chat id in the trace (its plan index).
    pub fn chat_label(&self, id: &str) -> String {
        match self
            .state
            .borrow()
            .chats
            .iter()
            .position(|c| c.id.as_deref() == Some(id))
        {
            Some(i) => format!("c{i}"),
            None => format!("c?{id}"),
        }
    }

    /// A short, stable name for a user id in the trace.
    pub fn user_label(&self, id: &str) -> String {
        match self.user_index(id) {
            Some(u) => format!("u{u}"),
            None => format!("u?{id}"),
        }
    }
}
