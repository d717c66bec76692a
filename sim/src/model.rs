//! What the simulation knows, shared by the driver, the clients and the server host: the
//! planned users and chats, the phase, every send and its outcome, every message observed, and
//! the violations found along the way.
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

use crate::trace::Trace;

/// The invariants of the oracle, numbered as in the issue, plus the contract checks that are
/// not one of the eight (unexpected refusals, tokens that stop working, malformed answers).
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
}

impl MessageFacts {
    /// Reads a Message object; `None` if it is not shaped like one.
    pub fn parse(value: &Value) -> Option<Self> {
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

/// A planned 1:1 chat between users `a` < `b`.
#[derive(Debug, Clone)]
pub struct ChatSlot {
    pub a: usize,
    pub b: usize,
    pub id: Option<String>,
    /// The tab that reads this chat's history back at the audit.
    pub audit_tab: Option<usize>,
}

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

/// What a client reports at the audit: its view of each of its chats and who it sees online.
#[derive(Debug, Clone, Default)]
pub struct TabReport {
    pub user: usize,
    pub connected: bool,
    pub views: BTreeMap<String, BTreeMap<u64, MessageFacts>>,
    pub online: BTreeSet<String>,
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
    /// Conflicting sightings already reported, as `(chat, seq, _id)`: reported once each.
    pub conflicts: BTreeSet<(String, u64, String)>,
    /// Acknowledged sends already reported missing, as `(user, clientMsgId)`.
    pub lost: BTreeSet<(usize, String)>,
    /// History read back at the audit, per chat id.
    pub histories: BTreeMap<String, Vec<MessageFacts>>,
    pub violations: Vec<Violation>,
    /// Set by the server host from the moment its storage failed until it stops: a handshake
    /// in that window is refused with `Invalid namespace` (see `tab::Tab::connect`).
    pub server_stopping: Arc<AtomicBool>,
}

/// The shared model. Cheap to clone.
#[derive(Clone)]
pub struct Model {
    pub state: Rc<RefCell<ModelState>>,
    pub trace: Trace,
}

impl Model {
    pub fn new(trace: Trace, users: Vec<UserSlot>, chats: Vec<ChatSlot>, tabs: usize) -> Self {
        Self {
            state: Rc::new(RefCell::new(ModelState {
                phase: Some(Phase::Setup),
                users,
                chats,
                tabs: vec![TabStatus::default(); tabs],
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

    /// Records a violation (and a trace line for it).
    pub fn violate(&self, invariant: Invariant, detail: impl Into<String>) {
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

    /// Index of the user with this server id.
    pub fn user_index(&self, id: &str) -> Option<usize> {
        self.state
            .borrow()
            .users
            .iter()
            .position(|u| u.id.as_deref() == Some(id))
    }

    /// The chats of user `u` (ids known so far), in plan order.
    pub fn chats_of(&self, u: usize) -> Vec<String> {
        self.state
            .borrow()
            .chats
            .iter()
            .filter(|c| c.a == u || c.b == u)
            .filter_map(|c| c.id.clone())
            .collect()
    }

    /// Chats user `u` is not in (for the hostile actions).
    pub fn foreign_chats(&self, u: usize) -> Vec<String> {
        self.state
            .borrow()
            .chats
            .iter()
            .filter(|c| c.a != u && c.b != u)
            .filter_map(|c| c.id.clone())
            .collect()
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

    /// Notes a sighting of a message (from an ack, an event, `sync` or history) and checks it
    /// against earlier sightings: one `(chat, seq)` must always be the same message, and one
    /// `_id` must always carry the same facts.
    pub fn observe(&self, facts: &MessageFacts, source: &str) {
        let key = (facts.chat.clone(), facts.seq);
        let earlier = {
            let mut state = self.state.borrow_mut();
            match state.bindings.get(&key) {
                Some(bound) if bound == facts => None,
                Some(bound) => {
                    let bound = bound.clone();
                    let fresh =
                        state
                            .conflicts
                            .insert((facts.chat.clone(), facts.seq, facts.id.clone()));
                    fresh.then_some(bound)
                }
                None => {
                    state.bindings.insert(key, facts.clone());
                    None
                }
            }
        };
        if let Some(bound) = earlier {
            let chat = self.chat_label(&facts.chat);
            if bound.id == facts.id {
                self.violate(
                    Invariant::Contract,
                    format!(
                        "message {} in {chat} changed: {bound:?} then {facts:?} ({source})",
                        facts.id
                    ),
                );
            } else {
                self.violate(
                    Invariant::SeqContiguous,
                    format!(
                        "seq {} of {chat} repeated: {} ({:?}) and then {} ({:?}) via {source}",
                        facts.seq, bound.id, bound.text, facts.id, facts.text
                    ),
                );
            }
        }
    }
}
