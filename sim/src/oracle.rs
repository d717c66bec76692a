//! The oracle: every invariant of the README, checked in this module and nowhere else.
//!
//! The runner hands it what the tabs see, as they see it, and it judges against the model:
//! - each message object in an answer or event: one `(chat, seq)` is always the same message
//!   (3), one `_id` always the same facts (0);
//! - each event a socket receives: its chat is one of the user's (6), no `new-message` twice on
//!   one connection (5), per connection and chat the `new-message` seqs only rise (10), presence
//!   transitions alternate from the `online-users` snapshot (8), no typing echoed to its user;
//! - each answer to a send: the ack is the message sent (0), a valid send is not refused, a
//!   hostile one is (0), and per connection the sends acknowledged as new hold seqs in the
//!   order they were emitted (9);
//! - every other answer the contract fixes (joins, `sync`, chat lists, history pages, connects);
//! - at every server boot, on the recovered database before the server accepts a connection:
//!   every acknowledged message is there with its `_id` and `seq` (1), nothing is there that no
//!   client sent or that was refused (2), seqs are 1..n (3), no `(sender, clientMsgId)` twice
//!   (4);
//! - at the end, the same on the history read back over REST, plus convergence (7: every
//!   connected client's view equals history) and presence (8: every connected client sees
//!   online exactly the users with a connected client, or with presence scope `contacts` the
//!   online users who share a chat with its user), and the time bounds of the phases.

use std::collections::{BTreeMap, BTreeSet};

use palaver::storage::Store;
use serde_json::{Value, json};

use crate::model::{
    AckedSend, Attempt, ChangeOutcome, ChangeRecord, Delivered, Invariant, MessageFacts, Model,
    ModelState, RefusalKind, Shown, SystemFacts,
};
use crate::plan::{MARK_BEYOND, PresenceScope};

// ---- sightings and events ----

/// A message object seen in an answer (`source`: ack, sync, chat list, history...). Returns its
/// facts, or `None` (a contract violation) if it is not shaped like a message.
pub fn on_sighting(model: &Model, message: &Value, source: &str) -> Option<MessageFacts> {
    let Some(facts) = MessageFacts::parse(message) else {
        model.record_violation(
            Invariant::Contract,
            format!("malformed message via {source}: {message}"),
        );
        return None;
    };
    check_binding(model, &facts, source);
    Some(facts)
}

/// Invariant 3: one `(chat, seq)` is always the same message, and one `_id` always carries the same facts.
fn check_binding(model: &Model, facts: &MessageFacts, source: &str) {
    let key = (facts.chat.clone(), facts.seq);
    let earlier = {
        let mut state = model.state.borrow_mut();
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
                state.bindings.insert(key.clone(), facts.clone());
                state.first_seen_ms.insert(key, model.trace.now_ms());
                None
            }
        }
    };
    let Some(bound) = earlier else { return };
    let chat = model.chat_label(&facts.chat);
    if bound.id == facts.id {
        model.record_violation(
            Invariant::Contract,
            format!(
                "message {} in {chat} changed: {bound:?} then {facts:?} ({source})",
                facts.id
            ),
        );
    } else {
        model.record_violation(
            Invariant::SeqContiguous,
            format!(
                "seq {} of {chat} repeated: {} ({:?}) and then {} ({:?}) via {source}",
                facts.seq, bound.id, bound.text, facts.id, facts.text
            ),
        );
    }
}

/// Who received an event: connection `conn` of tab `tab`, which belongs to user `user`.
#[derive(Debug, Clone, Copy)]
pub struct Receiver {
    pub tab: usize,
    pub user: usize,
    pub conn: u32,
}

impl Receiver {
    fn label(&self) -> String {
        format!("t{}#{}", self.tab, self.conn)
    }
}

/// A `new-message` event: authorization (6), exactly once (5), delivery order (10), and the
/// seq binding (3). Returns the message for the tab's view when it is one of the user's chats.
pub fn on_new_message(model: &Model, to: Receiver, data: &Value) -> Option<MessageFacts> {
    let Some(facts) = MessageFacts::parse(data) else {
        model.record_violation(Invariant::Contract, format!("malformed new-message {data}"));
        return None;
    };
    model.record_delivery(
        to.tab,
        to.conn,
        Delivered::NewMessage {
            chat: facts.chat.clone(),
            seq: facts.seq,
            id: facts.id.clone(),
        },
    );
    let label = model.chat_label(&facts.chat);
    if model.group(&facts.chat).is_some() {
        model.record_group_sighting(
            to.tab,
            Some(to.conn),
            to.user,
            &facts.chat,
            Shown::Message(facts.seq),
        );
    } else if !model.chats_of(to.user).contains(&facts.chat) {
        model.record_violation(
            Invariant::Authorization,
            format!(
                "{} (u{}) received new-message {} of {label}, a chat it is not in",
                to.label(),
                to.user,
                facts.id
            ),
        );
        return None;
    }
    let (duplicate, highest) = {
        let mut state = model.state.borrow_mut();
        let record = state.connections.entry((to.tab, to.conn)).or_default();
        let duplicate = !record.received.insert(facts.id.clone());
        let highest = record.highest_seq.entry(facts.chat.clone()).or_insert(0);
        let before = *highest;
        *highest = before.max(facts.seq);
        (duplicate, before)
    };
    if duplicate {
        model.record_violation(
            Invariant::ExactlyOnce,
            format!(
                "{} received new-message {} (seq {} of {label}) twice",
                to.label(),
                facts.id,
                facts.seq
            ),
        );
    } else if facts.seq < highest {
        model.record_violation(
            Invariant::DeliveryOrder,
            format!(
                "{} received seq {} of {label} (id {}) after seq {highest}",
                to.label(),
                facts.seq,
                facts.id
            ),
        );
    }
    check_binding(model, &facts, "new-message");
    if facts
        .system
        .as_ref()
        .is_some_and(|s| s.kind == "removed" || s.kind == "left")
    {
        let mut state = model.state.borrow_mut();
        let record = state.connections.entry((to.tab, to.conn)).or_default();
        record.separations.insert((facts.chat.clone(), facts.seq));
    }
    Some(facts)
}

/// A `typing` event: authorization (6), and never the receiver's own user's typing.
pub fn on_typing(model: &Model, to: Receiver, data: &Value) {
    let chat = data["chatId"].as_str().unwrap_or_default();
    let from = data["userId"].as_str().unwrap_or_default();
    model.record_delivery(
        to.tab,
        to.conn,
        Delivered::Typing {
            chat: chat.to_owned(),
            from: from.to_owned(),
        },
    );
    let label = model.chat_label(chat);
    if model.group(chat).is_some() {
        model.record_group_sighting(to.tab, Some(to.conn), to.user, chat, Shown::Event("typing"));
    } else if !model.chats_of(to.user).iter().any(|c| c == chat) {
        model.record_violation(
            Invariant::Authorization,
            format!(
                "{} (u{}) received typing of {label}, a chat it is not in",
                to.label(),
                to.user
            ),
        );
    }
    let own = model.state.borrow().users[to.user].id.clone();
    if own.as_deref() == Some(from) {
        model.record_violation(
            Invariant::Contract,
            format!("{} received its own user's typing", to.label()),
        );
    }
}

/// A `read` event: its chat is one of the user's (6), and per connection the position of one
/// user in one chat only rises (11). Returns `(chat, user, lastReadSeq)`.
pub fn on_read_event(model: &Model, to: Receiver, data: &Value) -> Option<(String, String, u64)> {
    let (Some(chat), Some(user), Some(seq)) = (
        data["chatId"].as_str(),
        data["userId"].as_str(),
        data["lastReadSeq"].as_u64(),
    ) else {
        model.record_violation(Invariant::Contract, format!("malformed read event {data}"));
        return None;
    };
    let label = model.chat_label(chat);
    if model.group(chat).is_some() {
        model.record_group_sighting(to.tab, Some(to.conn), to.user, chat, Shown::Event("read"));
    } else if !model.chats_of(to.user).iter().any(|c| c == chat) {
        model.record_violation(
            Invariant::Authorization,
            format!(
                "{} (u{}) received read of {label}, a chat it is not in",
                to.label(),
                to.user
            ),
        );
    }
    let before = {
        let mut state = model.state.borrow_mut();
        let record = state.connections.entry((to.tab, to.conn)).or_default();
        let position = record
            .reads
            .entry((user.to_owned(), chat.to_owned()))
            .or_insert(0);
        let before = *position;
        *position = before.max(seq);
        before
    };
    if seq < before {
        model.record_violation(
            Invariant::ReadMonotonic,
            format!(
                "{} was told {} read {label} up to {seq} after {before}",
                to.label(),
                model.user_label(user)
            ),
        );
    }
    Some((chat.to_owned(), user.to_owned(), seq))
}

/// A membership event (`member-added`, `member-removed`, `chat-created`, `chat-updated`) of a
/// group: its user must have been a member at some time (6).
pub fn on_group_event(model: &Model, to: Receiver, chat: &str, event: &'static str) {
    if model.group(chat).is_some() {
        model.record_group_sighting(to.tab, Some(to.conn), to.user, chat, Shown::Event(event));
    } else {
        model.record_violation(
            Invariant::Contract,
            format!(
                "{} got {event} of {}, which is not a group",
                to.label(),
                model.chat_label(chat)
            ),
        );
    }
}

/// A member's request (`what`) about `chat` refused with `Chat not found`: in a group, the
/// user may have been removed meanwhile (judged at the end); returns whether it is a group.
pub fn on_group_refused(
    model: &Model,
    tab: usize,
    user: usize,
    chat: &str,
    what: &'static str,
) -> bool {
    let group = model.group(chat).is_some();
    if group {
        model.record_group_sighting(tab, None, user, chat, Shown::Refused(what));
    }
    group
}

/// An answer about group `chat` made when its last seq was `last_seq` (a last `sync` page, the
/// newest history page, a chat list): the user must be a member as of it (6, at the end).
pub fn on_group_answer(
    model: &Model,
    tab: usize,
    user: usize,
    chat: &str,
    last_seq: u64,
    what: &'static str,
) {
    if model.group(chat).is_some() {
        model.record_group_sighting(tab, None, user, chat, Shown::LastSeq(last_seq, what));
    }
}

/// A `mark-read` (socket or REST) is asked for: the position it must not fall below.
pub fn on_mark_read_asked(model: &Model, user: usize, chat: &str) -> u64 {
    model
        .state
        .borrow()
        .read_acked
        .get(&(user, chat.to_owned()))
        .copied()
        .unwrap_or(0)
}

/// How a `mark-read` was answered.
#[derive(Debug, Clone, Copy)]
pub enum ReadAnswer<'a> {
    Acked(u64),
    Refused(&'a str),
    /// No answer or a storage failure: it may or may not have moved.
    Unknown,
}

/// A `mark-read` of `chat` by `tab` up to `asked` (`floor`: the position acknowledged when it
/// was asked): an ack is never below either (11), a member is not refused (0).
pub fn on_mark_read_answer(
    model: &Model,
    tab: usize,
    user: usize,
    chat: &str,
    asked: u64,
    floor: u64,
    answer: ReadAnswer<'_>,
) {
    let label = model.chat_label(chat);
    match answer {
        ReadAnswer::Acked(seq) => {
            // A `mark-read` beyond the last seq is capped; the tab asked past what it holds.
            let least = floor.max(asked.saturating_sub(MARK_BEYOND));
            if seq < least {
                model.record_violation(
                    Invariant::ReadMonotonic,
                    format!(
                        "t{tab} marked {label} read up to {asked} and was answered {seq}, below {least}"
                    ),
                );
            }
            let mut state = model.state.borrow_mut();
            let acked = state.read_acked.entry((user, chat.to_owned())).or_insert(0);
            *acked = (*acked).max(seq);
        }
        ReadAnswer::Refused("Chat not found")
            if on_group_refused(model, tab, user, chat, "mark-read") => {}
        ReadAnswer::Refused("Too many requests" | "Rate limited") => {}
        ReadAnswer::Refused(error) => model.record_violation(
            Invariant::Contract,
            format!("t{tab} mark-read of {label} refused: {error:?}"),
        ),
        ReadAnswer::Unknown => {}
    }
}

/// A group change is asked for: until its answer comes it counts as unknown (a step cut short
/// by a fault may still have been committed). Returns its index for [`on_change_answer`].
pub fn on_change_asked(model: &Model, change: ChangeRecord) -> usize {
    let mut state = model.state.borrow_mut();
    state.changes.push(change);
    state.changes.len() - 1
}

/// How change `index` ended.
pub fn on_change_answer(model: &Model, index: usize, outcome: ChangeOutcome) {
    if let Some(change) = model.state.borrow_mut().changes.get_mut(index) {
        change.outcome = outcome;
    }
}

/// An `online-users` snapshot: the start of the connection's presence (8).
pub fn on_online_users(model: &Model, to: Receiver, ids: &[String]) {
    model.record_delivery(to.tab, to.conn, Delivered::OnlineUsers(ids.to_vec()));
    let mut state = model.state.borrow_mut();
    let record = state.connections.entry((to.tab, to.conn)).or_default();
    record.online = ids.iter().map(|id| (id.clone(), true)).collect();
}

/// A `user-online` or `user-offline` event (`online` says which): it must change what the
/// connection was told (8), so transitions alternate from the snapshot.
pub fn on_presence(model: &Model, to: Receiver, data: &Value, online: bool) {
    let event = if online {
        "user-online"
    } else {
        "user-offline"
    };
    let Some(user) = data["userId"].as_str() else {
        model.record_violation(Invariant::Contract, format!("{event} without userId"));
        return;
    };
    let delivered = if online {
        Delivered::UserOnline(user.to_owned())
    } else {
        Delivered::UserOffline(user.to_owned())
    };
    model.record_delivery(to.tab, to.conn, delivered);
    let before = {
        let mut state = model.state.borrow_mut();
        let record = state.connections.entry((to.tab, to.conn)).or_default();
        let before = record
            .online
            .insert(user.to_owned(), online)
            .unwrap_or(false);
        if !online {
            // One connection's events come in the order they were sent: this announcement
            // was made after every separation the connection heard of before it.
            let after: Vec<(String, u64, String)> = record
                .separations
                .iter()
                .map(|(chat, seq)| (chat.clone(), *seq, user.to_owned()))
                .collect();
            state.offline_after_separation.extend(after);
        }
        before
    };
    if before == online {
        model.record_violation(
            Invariant::Presence,
            format!(
                "{} got {event} for {}, who it already saw {}",
                to.label(),
                model.user_label(user),
                if online { "online" } else { "offline" }
            ),
        );
    }
}

// ---- answers ----

/// A send whose answer came (or did not).
#[derive(Debug, Clone, Copy)]
pub struct Sent<'a> {
    pub tab: usize,
    pub user: usize,
    /// For a send over the socket, its connection and emission number there.
    pub emitted: Option<(u32, u64)>,
    /// The first attempt of its `clientMsgId`: acknowledged, it is a new message.
    pub first_attempt: bool,
    pub client_msg_id: &'a str,
    pub chat: &'a str,
    pub text: &'a str,
    /// A send the server must accept; a hostile one it must refuse.
    pub valid: bool,
}

/// How a send was answered.
#[derive(Debug, Clone, Copy)]
pub enum SendAnswer<'a> {
    /// The message the server acknowledged (the socket ack's `message`, REST's 201 body).
    Acked(&'a Value),
    Refused(&'a str),
    /// No answer (timeout, connection lost, no HTTP response): the outcome is unknown.
    NoAnswer(&'a str),
}

/// The answer to a send: the outcome goes to the model, and the oracle checks it is the message
/// sent (0), that a valid send is not refused and a hostile one is (0), and the send order (9).
/// Returns the acknowledged message of a valid send.
pub fn on_send_answer(
    model: &Model,
    sent: Sent<'_>,
    answer: SendAnswer<'_>,
) -> Option<MessageFacts> {
    let cmid = sent.client_msg_id;
    let label = model.chat_label(sent.chat);
    match answer {
        SendAnswer::Acked(message) if !sent.valid => {
            model.record_attempt(sent.user, cmid, Attempt::Unknown("accepted".into()));
            model.record_violation(
                Invariant::Contract,
                format!(
                    "t{} hostile send {cmid} to {label} accepted: {message}",
                    sent.tab
                ),
            );
        }
        SendAnswer::Acked(message) => {
            let facts = on_sighting(model, message, "ack")?;
            let own = model.state.borrow().users[sent.user].id.clone();
            if facts.chat != sent.chat
                || facts.text != sent.text
                || facts.client_msg_id.as_deref() != Some(cmid)
                || Some(&facts.sender) != own.as_ref()
            {
                model.record_violation(
                    Invariant::Contract,
                    format!("t{} ack of {cmid} is another message: {facts:?}", sent.tab),
                );
            }
            model.record_attempt(
                sent.user,
                cmid,
                Attempt::Acked {
                    id: facts.id.clone(),
                    seq: facts.seq,
                },
            );
            if let (Some((conn, emission)), true) = (sent.emitted, sent.first_attempt) {
                check_send_order(model, sent.tab, conn, emission, cmid, &facts);
            }
            return Some(facts);
        }
        SendAnswer::Refused(error) => match RefusalKind::of(error) {
            RefusalKind::Unknown => {
                model.record_attempt(sent.user, cmid, Attempt::Unknown(error.to_owned()));
            }
            RefusalKind::Retry => {
                model.record_attempt(sent.user, cmid, Attempt::Refused(error.to_owned()));
            }
            RefusalKind::Final => {
                model.record_attempt(sent.user, cmid, Attempt::Refused(error.to_owned()));
                let removed = error == "Chat not found"
                    && on_group_refused(model, sent.tab, sent.user, sent.chat, "send");
                if sent.valid && !removed {
                    model.record_violation(
                        Invariant::Contract,
                        format!(
                            "t{} valid send {cmid} to {label} refused: {error:?}",
                            sent.tab
                        ),
                    );
                }
            }
        },
        SendAnswer::NoAnswer(why) => {
            model.record_attempt(sent.user, cmid, Attempt::Unknown(why.to_owned()));
        }
    }
    None
}

/// Invariant 9: on one connection, two sends to one chat acknowledged as new hold seqs in the order they
/// were emitted, whether or not the first was acknowledged before the second was emitted.
fn check_send_order(
    model: &Model,
    tab: usize,
    conn: u32,
    emission: u64,
    cmid: &str,
    facts: &MessageFacts,
) {
    let crossed: Vec<AckedSend> = {
        let mut state = model.state.borrow_mut();
        let record = state.connections.entry((tab, conn)).or_default();
        let crossed = record
            .acked_new
            .iter()
            .filter(|a| a.chat == facts.chat && (a.emission < emission) != (a.seq < facts.seq))
            .cloned()
            .collect();
        record.acked_new.push(AckedSend {
            emission,
            client_msg_id: cmid.to_owned(),
            chat: facts.chat.clone(),
            seq: facts.seq,
        });
        crossed
    };
    let label = model.chat_label(&facts.chat);
    for other in crossed {
        let (first, second) = if other.emission < emission {
            ((other.client_msg_id.as_str(), other.seq), (cmid, facts.seq))
        } else {
            ((cmid, facts.seq), (other.client_msg_id.as_str(), other.seq))
        };
        model.record_violation(
            Invariant::SendOrder,
            format!(
                "t{tab}#{conn} emitted {} before {} to {label}, but they got seqs {} and {}",
                first.0, second.0, first.1, second.1
            ),
        );
    }
}

/// The answer to `join-chat`: a member's join must succeed. (A foreign join that succeeds is no
/// violation by itself: invariant 6 judges what the socket then receives.)
pub fn on_join_answer(
    model: &Model,
    (tab, user): (usize, usize),
    chat: &str,
    member: bool,
    answer: &Value,
) {
    let removed = answer["error"] == json!("Chat not found")
        && member
        && on_group_refused(model, tab, user, chat, "join");
    if member && !removed && answer["ok"] != json!(true) {
        model.record_violation(
            Invariant::Contract,
            format!(
                "t{tab} could not join its own chat {}: {answer}",
                model.chat_label(chat)
            ),
        );
    }
}

/// The answer to a `sync` after `after`: refused for a member (0), answered for a non-member
/// (6); a group's last page must be shown to a member as of its last seq (6, at the end).
pub fn on_sync_answer(
    model: &Model,
    (tab, user): (usize, usize),
    chat: &str,
    (member, after): (bool, u64),
    answer: &Value,
) {
    let label = model.chat_label(chat);
    let ok = answer["ok"] == json!(true);
    if ok && answer["hasMore"] != json!(true) {
        let last = answer["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["seq"].as_u64())
            .unwrap_or(after);
        on_group_answer(model, tab, user, chat, last, "sync");
    }
    match (member, ok) {
        // A member may be asked to slow down (the per-user read limit), nothing else.
        (true, false) if answer["error"] == json!("Too many requests") => {}
        // A member of a group may have been removed meanwhile.
        (true, false)
            if answer["error"] == json!("Chat not found")
                && on_group_refused(model, tab, user, chat, "sync") => {}
        (true, false) => model.record_violation(
            Invariant::Contract,
            format!("t{tab} sync of {label} refused: {answer}"),
        ),
        (false, _) if answer["ok"] != json!(false) => model.record_violation(
            Invariant::Authorization,
            format!("t{tab} synced foreign chat {label}: {answer}"),
        ),
        _ => {}
    }
}

/// A `sync` page that says `hasMore` but brought no next seq (3).
pub fn on_sync_stalled(model: &Model, chat: &str, after: u64) {
    model.record_violation(
        Invariant::SeqContiguous,
        format!(
            "sync of {} after {after} says hasMore but brings no next seq",
            model.chat_label(chat)
        ),
    );
}

/// `GET /api/chats`: exactly the user's chats (0); each last message is a sighting. Returns the
/// last messages.
pub fn on_chat_list(model: &Model, tab: usize, user: usize, chats: &[Value]) -> Vec<MessageFacts> {
    let mut listed = BTreeSet::new();
    for chat in chats {
        let Some(id) = chat["_id"].as_str() else {
            continue;
        };
        match model.group(id) {
            Some(group) if group.users.contains(&user) => {
                let last = chat["lastMessage"]["seq"].as_u64().unwrap_or(0);
                on_group_answer(model, tab, user, id, last, "chat list");
            }
            Some(_) => model.record_violation(
                Invariant::Authorization,
                format!(
                    "t{tab} (u{user}) lists group {}, which it may never be in",
                    model.chat_label(id)
                ),
            ),
            None => {
                listed.insert(id.to_owned());
            }
        }
    }
    let expected: BTreeSet<String> = model.chats_of(user).into_iter().collect();
    if listed != expected {
        model.record_violation(
            Invariant::Contract,
            format!("t{tab} lists chats {listed:?}, expected {expected:?}"),
        );
    }
    chats
        .iter()
        .filter(|chat| !chat["lastMessage"].is_null())
        .filter_map(|chat| on_sighting(model, &chat["lastMessage"], "chat list"))
        .collect()
}

/// A message of the history read back at the audit (judged as a whole at the end): `None`, a
/// contract violation, if it is not shaped like a message.
pub fn parse_history_message(model: &Model, message: &Value) -> Option<MessageFacts> {
    let facts = MessageFacts::parse(message);
    if facts.is_none() {
        model.record_violation(
            Invariant::Contract,
            format!("malformed message in history: {message}"),
        );
    }
    facts
}

/// The newest page of history: its messages are sightings and its seqs have no gap (3); in a
/// group, the user must be a member as of its last seq (6, at the end).
pub fn on_history_page(model: &Model, (tab, user): (usize, usize), chat: &str, messages: &[Value]) {
    let seqs: Vec<u64> = messages
        .iter()
        .filter_map(|m| on_sighting(model, m, "history"))
        .map(|facts| facts.seq)
        .collect();
    on_group_answer(
        model,
        tab,
        user,
        chat,
        seqs.last().copied().unwrap_or(0),
        "history",
    );
    if seqs.windows(2).any(|w| w[1] != w[0] + 1) {
        model.record_violation(
            Invariant::SeqContiguous,
            format!(
                "t{tab} history page of {} has seqs {seqs:?}",
                model.chat_label(chat)
            ),
        );
    }
}

/// A handshake refused with `message`: a valid token must keep working (0), except for the
/// `Invalid namespace` of a server stopping after a storage failure (see the README's findings).
/// Returns whether the refusal is that known one.
pub fn on_connect_refused(model: &Model, tab: usize, message: &str) -> bool {
    if message == "Invalid namespace" && model.server_stopping() {
        return true;
    }
    model.record_violation(
        Invariant::Contract,
        format!("t{tab} refused at connect with {message:?}: a valid token must keep working"),
    );
    false
}

/// An answer the contract rules out (a status or shape no request of that kind may get).
pub fn on_unexpected_answer(model: &Model, what: String) {
    model.record_violation(Invariant::Contract, what);
}

/// A bound of the run that did not hold: `invariant` names what it bounds (setup and hosts:
/// contract; settling: convergence or presence).
pub fn on_bound_exceeded(model: &Model, invariant: Invariant, what: String) {
    model.record_violation(invariant, what);
}

// ---- at every boot, and at the end ----

/// Checks the database a boot recovered, before it serves.
pub fn check_recovered(store: &Store, model: &Model, boot: u32) {
    let when = format!("after boot {boot}");
    match store.check_consistency() {
        Ok(problems) => {
            for problem in problems {
                model.record_violation(
                    Invariant::SeqContiguous,
                    format!("{when}: storage inconsistent: {problem}"),
                );
            }
        }
        Err(error) => model.record_violation(
            Invariant::Contract,
            format!("{when}: consistency check failed: {error}"),
        ),
    }
    let chat_ids: Vec<String> = model
        .state
        .borrow()
        .chats
        .iter()
        .filter_map(|c| c.id.clone())
        .collect();
    let mut histories = BTreeMap::new();
    for chat in chat_ids {
        let last_seq = match store.chat(&chat) {
            Ok(Some(record)) => record.last_seq,
            Ok(None) => {
                model.record_violation(
                    Invariant::Durability,
                    format!("{when}: chat {} is gone", model.chat_label(&chat)),
                );
                continue;
            }
            Err(error) => {
                model.record_violation(Invariant::Contract, format!("{when}: {error}"));
                continue;
            }
        };
        match store.messages_with_events(&chat, 1..last_seq + 1) {
            Ok(records) => {
                let facts = records
                    .into_iter()
                    .map(|(m, event)| MessageFacts {
                        id: m.id,
                        chat: m.chat,
                        seq: m.seq,
                        sender: m.sender,
                        text: m.text,
                        client_msg_id: m.client_msg_id,
                        system: event.map(|e| SystemFacts {
                            kind: e.kind.as_str().to_owned(),
                            user: e.user,
                            by: e.by,
                        }),
                    })
                    .collect::<Vec<_>>();
                histories.insert(chat, facts);
            }
            Err(error) => model.record_violation(Invariant::Contract, format!("{when}: {error}")),
        }
    }
    check_recovered_reads(store, model, &when);
    check_histories(model, &histories, &when);
}

/// Invariant 12 on a recovered database: every acknowledged read position of a member is still
/// there (at or above what was acknowledged).
fn check_recovered_reads(store: &Store, model: &Model, when: &str) {
    let acked: Vec<((usize, String), u64)> = model
        .state
        .borrow()
        .read_acked
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    for ((user, chat), seq) in acked {
        let Some(user_id) = model.state.borrow().users[user].id.clone() else {
            continue;
        };
        let Ok(Some(record)) = store.chat(&chat) else {
            continue;
        };
        let details = match store.member_details(&record) {
            Ok(details) => details,
            Err(error) => {
                model.record_violation(Invariant::Contract, format!("{when}: {error}"));
                continue;
            }
        };
        if let Some(detail) = details.iter().find(|d| d.user == user_id)
            && detail.last_read_seq < seq
        {
            model.record_violation(
                Invariant::ReadDurability,
                format!(
                    "{when}: u{user}'s read position in {} is {}, below the acknowledged {seq}",
                    model.chat_label(&chat),
                    detail.last_read_seq
                ),
            );
        }
    }
}

/// The end-of-run checks on the history read back at the audit and on the clients' reports.
pub fn final_check(model: &Model) {
    let histories = model.state.borrow().histories.clone();
    let chats: Vec<String> = model
        .state
        .borrow()
        .chats
        .iter()
        .filter_map(|c| c.id.clone())
        .collect();
    for chat in &chats {
        if !histories.contains_key(chat) {
            model.record_violation(
                Invariant::Convergence,
                format!("history of {} was never read back", model.chat_label(chat)),
            );
        }
    }
    check_histories(model, &histories, "at the end");
    let memberships = memberships(model, &histories);
    check_group_sightings(model, &memberships);
    check_convergence(model, &histories, &memberships);
    check_presence(model, &memberships);
    check_reads(model, &histories, &memberships);
}

/// A group's members as of each seq of its history (index 0: as created), by user id.
pub struct Membership {
    pub at: Vec<BTreeSet<String>>,
    /// Everyone who was a member at some time.
    pub ever: BTreeSet<String>,
}

impl Membership {
    /// The members as of `seq` (`None` past the history).
    pub fn at(&self, seq: u64) -> Option<&BTreeSet<String>> {
        self.at.get(usize::try_from(seq).ok()?)
    }

    /// The members at the end.
    pub fn last(&self) -> &BTreeSet<String> {
        self.at.last().expect("as created, at least")
    }
}

/// The membership of every group whose history was read back: its first members, then each
/// system message applied in seq order.
fn memberships(
    model: &Model,
    histories: &BTreeMap<String, Vec<MessageFacts>>,
) -> BTreeMap<String, Membership> {
    let state = model.state.borrow();
    let mut found = BTreeMap::new();
    for slot in &state.chats {
        let (Some(id), Some(group)) = (&slot.id, &slot.group) else {
            continue;
        };
        let Some(history) = histories.get(id) else {
            continue;
        };
        let mut members: BTreeSet<String> = group
            .initial
            .iter()
            .filter_map(|&u| state.users[u].id.clone())
            .collect();
        let mut ever = members.clone();
        let mut at = vec![members.clone()];
        for message in history {
            if let Some(event) = &message.system {
                match event.kind.as_str() {
                    "added" => {
                        members.insert(event.user.clone());
                        ever.insert(event.user.clone());
                    }
                    "removed" | "left" => {
                        members.remove(&event.user);
                    }
                    _ => {}
                }
            }
            at.push(members.clone());
        }
        found.insert(id.clone(), Membership { at, ever });
    }
    found
}

/// Invariant 6 in groups: nothing of a group reached a user who was not a member as of it
/// (a message: as of its seq; an answer: as of the chat's last seq then; an event without a seq:
/// at some time), and a member's request was refused only if the user was out at some time.
fn check_group_sightings(model: &Model, memberships: &BTreeMap<String, Membership>) {
    let state = model.state.borrow();
    let mut found = Vec::new();
    for sighting in &state.group_sightings {
        let Some(membership) = memberships.get(&sighting.chat) else {
            continue;
        };
        let Some(user) = state.users[sighting.user].id.as_ref() else {
            continue;
        };
        let label = chat_label(&state.chats, &sighting.chat);
        let who = match sighting.conn {
            Some(conn) => format!("t{}#{conn} (u{})", sighting.tab, sighting.user),
            None => format!("t{} (u{})", sighting.tab, sighting.user),
        };
        let member_as_of = |seq: u64| membership.at(seq).is_none_or(|m| m.contains(user));
        let breach = match &sighting.what {
            Shown::Message(seq) if !member_as_of(*seq) => Some((
                Invariant::Authorization,
                format!(
                    "{who} received new-message seq {seq} of {label}, committed while u{} was not a member",
                    sighting.user
                ),
            )),
            Shown::LastSeq(seq, what) if !member_as_of(*seq) => Some((
                Invariant::Authorization,
                format!(
                    "{who} was answered a {what} of {label} up to seq {seq}, while u{} was not a member",
                    sighting.user
                ),
            )),
            Shown::Event(event) if !membership.ever.contains(user) => Some((
                Invariant::Authorization,
                format!(
                    "{who} received {event} of {label}, a group u{} was never in",
                    sighting.user
                ),
            )),
            Shown::Refused(what) if membership.at.iter().all(|m| m.contains(user)) => Some((
                Invariant::Contract,
                format!(
                    "{who}'s {what} of {label} was refused with Chat not found, though u{} was always a member",
                    sighting.user
                ),
            )),
            _ => None,
        };
        if let Some((invariant, detail)) = breach {
            found.push((invariant, sighting.at_ms, detail));
        }
    }
    drop(state);
    for (invariant, at_ms, detail) in found {
        model.record_violation_at(invariant, at_ms, detail);
    }
}

/// Invariants 12 and 13 at the end: each client's chat list shows at least every position
/// acknowledged to its user, and the read position and unread count the client computed from
/// what it received equal the server's; no acknowledged position is past the chat's last seq.
fn check_reads(
    model: &Model,
    histories: &BTreeMap<String, Vec<MessageFacts>>,
    memberships: &BTreeMap<String, Membership>,
) {
    let state = model.state.borrow();
    let mut found = Vec::new();
    for ((user, chat), acked) in &state.read_acked {
        let last = histories.get(chat).map_or(0, |h| h.len() as u64);
        if *acked > last && histories.contains_key(chat) {
            found.push((
                Invariant::Contract,
                format!(
                    "u{user}'s read position in {} was acknowledged at {acked}, past its last seq {last}",
                    chat_label(&state.chats, chat)
                ),
            ));
        }
    }
    for (tab, status) in state.tabs.iter().enumerate() {
        let Some(report) = status.report.as_ref().filter(|r| r.connected) else {
            continue;
        };
        let user_id = state.users[report.user].id.clone().unwrap_or_default();
        for (chat, membership) in memberships {
            let member = membership.last().contains(&user_id);
            if member != report.reads.contains_key(chat) {
                found.push((
                    Invariant::Convergence,
                    format!(
                        "t{tab}'s chat list at the end {} {}, but u{} is {}a member",
                        if member { "lacks" } else { "shows" },
                        chat_label(&state.chats, chat),
                        report.user,
                        if member { "" } else { "not " }
                    ),
                ));
            }
        }
        for (chat, figures) in &report.reads {
            let label = chat_label(&state.chats, chat);
            let acked = state
                .read_acked
                .get(&(report.user, chat.clone()))
                .copied()
                .unwrap_or(0);
            if figures.server_last_read < acked {
                found.push((
                    Invariant::ReadDurability,
                    format!(
                        "t{tab}'s chat list shows u{}'s read position in {label} at {}, below the acknowledged {acked}",
                        report.user, figures.server_last_read
                    ),
                ));
            }
            if figures.client_last_read != figures.server_last_read
                || figures.client_unread != figures.server_unread
            {
                found.push((
                    Invariant::UnreadConvergence,
                    format!(
                        "t{tab} computes {label} read up to {} with {} unread; the server says {} and {}",
                        figures.client_last_read,
                        figures.client_unread,
                        figures.server_last_read,
                        figures.server_unread
                    ),
                ));
            }
        }
    }
    drop(state);
    for (invariant, detail) in found {
        model.record_violation(invariant, detail);
    }
}

/// Invariants 1–4 on one reading of every chat's history.
fn check_histories(model: &Model, histories: &BTreeMap<String, Vec<MessageFacts>>, when: &str) {
    let mut found = Vec::new();
    let mut lost = Vec::new();
    let state = model.state.borrow();
    let user_of = |id: &str| state.users.iter().position(|u| u.id.as_deref() == Some(id));

    // 1. Durability: every acknowledged message, same id and seq (each loss reported once).
    for ((user, cmid), send) in &state.sends {
        let Some((id, seq)) = send.acked() else {
            continue;
        };
        let Some(history) = histories.get(&send.chat) else {
            continue;
        };
        let present = history.iter().any(|m| m.id == id && m.seq == seq);
        if !present && !state.lost.contains(&(*user, cmid.clone())) {
            lost.push((*user, cmid.clone()));
            let now_at = history.iter().find(|m| m.seq == seq).map(|m| m.id.as_str());
            found.push((
                Invariant::Durability,
                format!(
                    "{when}: u{user}'s acknowledged {cmid} (id {id}, seq {seq}) is missing; seq {seq} holds {now_at:?}"
                ),
            ));
        }
    }

    for (chat, history) in histories {
        let label = chat_label(&state.chats, chat);
        // 3. Seqs are exactly 1..n.
        for (i, message) in history.iter().enumerate() {
            if message.seq != i as u64 + 1 {
                found.push((
                    Invariant::SeqContiguous,
                    format!(
                        "{when}: {label} has seq {} at position {} (seqs {:?})",
                        message.seq,
                        i + 1,
                        history.iter().map(|m| m.seq).collect::<Vec<_>>()
                    ),
                ));
                break;
            }
        }
        // 4. Idempotency: one entry per (sender, clientMsgId).
        let mut keys = BTreeSet::new();
        for message in history {
            if let Some(cmid) = &message.client_msg_id
                && !keys.insert((message.sender.clone(), cmid.clone()))
            {
                found.push((
                    Invariant::Idempotency,
                    format!(
                        "{when}: {label} holds {cmid} of {} twice (seq {})",
                        message.sender, message.seq
                    ),
                ));
            }
        }
        // 2. No phantoms: each message was sent by a client, to this chat, with this text, and
        // not definitely refused.
        for message in history.iter().filter(|m| m.system.is_none()) {
            let user = user_of(&message.sender);
            let send = match (&message.client_msg_id, user) {
                (Some(cmid), Some(user)) => state.sends.get(&(user, cmid.clone())),
                _ => None,
            };
            let problem = match send {
                None => Some("no client sent it".to_owned()),
                Some(send) if send.chat != *chat || send.text != message.text => Some(format!(
                    "it was sent as {:?} to another chat or text",
                    send.text
                )),
                Some(send) if !send.valid => {
                    Some(format!("it had to be refused ({:?})", send.attempts))
                }
                Some(send) if !send.may_exist() => {
                    Some(format!("every attempt was refused ({:?})", send.attempts))
                }
                Some(_) => None,
            };
            if let Some(problem) = problem {
                found.push((
                    Invariant::NoPhantoms,
                    format!(
                        "{when}: {label} seq {} ({:?}, {:?}): {problem}",
                        message.seq, message.client_msg_id, message.text
                    ),
                ));
            }
        }
    }
    found.extend(check_system_messages(&state, histories, when));
    drop(state);
    model.state.borrow_mut().lost.extend(lost);
    for (invariant, detail) in found {
        model.record_violation(invariant, detail);
    }
}

/// The key a system message and the change that made it share: chat, kind, user, by.
type ChangeKey = (String, String, String, String);

/// Invariants 1 and 2 for group changes: every change answered as done (other than an add,
/// which commits nothing for a member already in) has its system message, sent by who made it;
/// and no kind of change appears more often than it was asked for without a refusal.
fn check_system_messages(
    state: &crate::model::ModelState,
    histories: &BTreeMap<String, Vec<MessageFacts>>,
    when: &str,
) -> Vec<(Invariant, String)> {
    let id_of = |u: usize| state.users[u].id.clone().unwrap_or_default();
    let mut asked: BTreeMap<ChangeKey, usize> = BTreeMap::new();
    let mut done: BTreeSet<ChangeKey> = BTreeSet::new();
    for change in &state.changes {
        let key = (
            change.chat.clone(),
            change.kind.to_owned(),
            id_of(change.user),
            id_of(change.by),
        );
        if change.outcome != ChangeOutcome::Refused {
            *asked.entry(key.clone()).or_default() += 1;
        }
        if change.outcome == ChangeOutcome::Done && change.kind != "added" {
            done.insert(key);
        }
    }
    let mut made: BTreeMap<ChangeKey, usize> = BTreeMap::new();
    let mut found = Vec::new();
    for (chat, history) in histories {
        let label = chat_label(&state.chats, chat);
        for message in history {
            let Some(event) = &message.system else {
                continue;
            };
            let key = (
                chat.clone(),
                event.kind.clone(),
                event.user.clone(),
                event.by.clone(),
            );
            let count = made.entry(key.clone()).or_default();
            *count += 1;
            if *count > asked.get(&key).copied().unwrap_or(0) || message.sender != event.by {
                found.push((
                    Invariant::NoPhantoms,
                    format!(
                        "{when}: {label} seq {} is a system message {event:?} (sender {}) no change asked for",
                        message.seq, message.sender
                    ),
                ));
            }
        }
    }
    for key in done {
        if histories.contains_key(&key.0) && !made.contains_key(&key) {
            found.push((
                Invariant::Durability,
                format!(
                    "{when}: {} has no system message of the {} of {} by {}, answered as done",
                    chat_label(&state.chats, &key.0),
                    key.1,
                    key.2,
                    key.3
                ),
            ));
        }
    }
    found
}

fn chat_label(chats: &[crate::model::ChatSlot], id: &str) -> String {
    match chats.iter().position(|c| c.id.as_deref() == Some(id)) {
        Some(i) => format!("c{i}"),
        None => format!("c?{id}"),
    }
}

/// Invariant 7: every connected client's view of each chat its user is in at the end (a 1:1
/// chat, or a group it is a member of as of the last seq) equals history, system messages
/// included.
fn check_convergence(
    model: &Model,
    histories: &BTreeMap<String, Vec<MessageFacts>>,
    memberships: &BTreeMap<String, Membership>,
) {
    let state = model.state.borrow();
    let mut found = Vec::new();
    let empty = BTreeMap::new();
    for (tab, status) in state.tabs.iter().enumerate() {
        if status.ends_offline {
            continue;
        }
        let Some(report) = &status.report else {
            found.push(format!("t{tab} never reported"));
            continue;
        };
        if !report.connected {
            found.push(format!("t{tab} is not connected at the end"));
            continue;
        }
        let user_id = state.users[report.user].id.clone().unwrap_or_default();
        for (chat, history) in histories {
            let in_chat = match memberships.get(chat) {
                Some(membership) => membership.last().contains(&user_id),
                None => state.chats.iter().any(|c| {
                    c.id.as_ref() == Some(chat)
                        && c.group.is_none()
                        && (c.a == report.user || c.b == report.user)
                }),
            };
            if !in_chat {
                continue;
            }
            let view = report.views.get(chat).unwrap_or(&empty);
            let label = chat_label(&state.chats, chat);
            let expected: BTreeMap<u64, &MessageFacts> =
                history.iter().map(|m| (m.seq, m)).collect();
            let missing: Vec<u64> = expected
                .keys()
                .filter(|seq| !view.contains_key(seq))
                .copied()
                .collect();
            let extra: Vec<u64> = view
                .keys()
                .filter(|seq| !expected.contains_key(seq))
                .copied()
                .collect();
            let different: Vec<u64> = view
                .iter()
                .filter(|(seq, m)| expected.get(seq).is_some_and(|h| *h != *m))
                .map(|(seq, _)| *seq)
                .collect();
            if !missing.is_empty() || !extra.is_empty() || !different.is_empty() {
                found.push(format!(
                    "t{tab}'s view of {label} differs from history: missing seqs {missing:?}, extra {extra:?}, different {different:?}"
                ));
            }
        }
    }
    drop(state);
    for detail in found {
        model.record_violation(Invariant::Convergence, detail);
    }
}

/// Who may see whose presence at the end, by user id, with presence scope `contacts`.
#[derive(Debug, Default)]
struct Contacts {
    /// Pairs `(a, b)`, `a < b`, who share a chat at the end: a 1:1 chat, or a group both are
    /// members of as of its last seq.
    sharing: BTreeSet<(String, String)>,
    /// Pairs who were members of a group together, stopped being (a removal or a leave), and
    /// share no chat at the end, whose contact may still linger. The contract lets it linger
    /// "until either of them has had all their sockets gone and been announced offline"; so it
    /// has surely ended when a server boot came after the separation (a boot forgets every
    /// announcement), or when some connection received `user-offline` of either after the
    /// separation's system message.
    lingering: BTreeSet<(String, String)>,
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

impl Contacts {
    fn at_the_end(state: &ModelState, memberships: &BTreeMap<String, Membership>) -> Self {
        let mut contacts = Contacts::default();
        for slot in state.chats.iter().filter(|c| c.group.is_none()) {
            if let (Some(a), Some(b)) = (&state.users[slot.a].id, &state.users[slot.b].id) {
                contacts.sharing.insert(pair(a, b));
            }
        }
        for membership in memberships.values() {
            let last = membership.last();
            for a in last {
                for b in last
                    .range::<String, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
                {
                    contacts.sharing.insert(pair(a, b));
                }
            }
        }
        let last_boot = state.boots_at_ms.last().copied().unwrap_or(0);
        for (chat, membership) in memberships {
            // Per pair, the seq of its last separation in this group.
            let mut separated_at = BTreeMap::new();
            for (seq, now) in membership.at.iter().enumerate().skip(1) {
                let before = &membership.at[seq - 1];
                if before == now {
                    continue;
                }
                for gone in before.difference(now) {
                    for stayed in before.iter().filter(|u| *u != gone) {
                        separated_at.insert(pair(gone, stayed), seq as u64);
                    }
                }
            }
            for ((a, b), seq) in separated_at {
                // Committed by the time it was first seen; a boot after that surely followed it.
                let seen = state
                    .first_seen_ms
                    .get(&(chat.clone(), seq))
                    .copied()
                    .unwrap_or(u64::MAX);
                let offline_after = |user: &String| {
                    state
                        .offline_after_separation
                        .contains(&(chat.clone(), seq, user.clone()))
                };
                if seen >= last_boot && !offline_after(&a) && !offline_after(&b) {
                    contacts.lingering.insert((a, b));
                }
            }
        }
        let sharing = &contacts.sharing;
        contacts.lingering.retain(|p| !sharing.contains(p));
        contacts
    }

    fn share(&self, a: &str, b: &str) -> bool {
        self.sharing.contains(&pair(a, b))
    }

    fn linger(&self, a: &str, b: &str) -> bool {
        self.lingering.contains(&pair(a, b))
    }
}

/// Invariant 8 at the end: every connected client sees online exactly the other users with a
/// connected client; with presence scope `contacts`, exactly those who share a chat with its
/// user, plus (tolerated) those whose contact may still linger (see [`Contacts`]).
fn check_presence(model: &Model, memberships: &BTreeMap<String, Membership>) {
    let state = model.state.borrow();
    let online_users: BTreeSet<String> = state
        .tabs
        .iter()
        .filter_map(|status| status.report.as_ref())
        .filter(|report| report.connected)
        .filter_map(|report| state.users[report.user].id.clone())
        .collect();
    let contacts = (state.presence_scope == PresenceScope::Contacts)
        .then(|| Contacts::at_the_end(&state, memberships));
    let label = |ids: &BTreeSet<String>| -> Vec<String> {
        ids.iter()
            .map(
                |id| match state.users.iter().position(|u| u.id.as_ref() == Some(id)) {
                    Some(u) => format!("u{u}"),
                    None => format!("u?{id}"),
                },
            )
            .collect()
    };
    let mut found = Vec::new();
    for (tab, status) in state.tabs.iter().enumerate() {
        let Some(report) = status.report.as_ref().filter(|r| r.connected) else {
            continue;
        };
        let own = state.users[report.user].id.clone().unwrap_or_default();
        let mut expected = online_users.clone();
        expected.remove(&own);
        let mut tolerated = BTreeSet::new();
        if let Some(contacts) = &contacts {
            (tolerated, expected) = expected
                .into_iter()
                .filter(|u| contacts.share(&own, u) || contacts.linger(&own, u))
                .partition(|u| !contacts.share(&own, u));
        }
        let mut seen = report.online.clone();
        seen.remove(&own);
        let missing: BTreeSet<String> = expected.difference(&seen).cloned().collect();
        let extra: BTreeSet<String> = seen
            .difference(&expected)
            .filter(|u| !tolerated.contains(*u))
            .cloned()
            .collect();
        if !missing.is_empty() || !extra.is_empty() {
            found.push(format!(
                "t{tab} (u{}) sees online {:?}; missing {:?}, extra {:?}{}",
                report.user,
                label(&seen),
                label(&missing),
                label(&extra),
                if contacts.is_some() {
                    " (presence scope contacts)"
                } else {
                    ""
                }
            ));
        }
    }
    drop(state);
    for detail in found {
        model.record_violation(Invariant::Presence, detail);
    }
}

#[cfg(test)]
mod tests {
    //! The checks that no planted bug exercises (phantoms, idempotency, convergence) and the
    //! others, on hand-made records: each must fire on its violation and stay quiet otherwise.

    use super::*;
    use crate::model::{Attempt, ChatSlot, SendRecord, TabReport, UserSlot};
    use crate::trace::Trace;

    fn model() -> Model {
        let users = (0..2)
            .map(|u| UserSlot {
                id: Some(format!("user{u}")),
                ..UserSlot::default()
            })
            .collect();
        let chats = vec![ChatSlot {
            a: 0,
            b: 1,
            id: Some("chat".into()),
            audit_tab: Some(0),
            group: None,
        }];
        Model::new(Trace::new(false), users, chats, 2, true)
    }

    fn message(seq: u64, cmid: &str) -> MessageFacts {
        MessageFacts {
            id: format!("id-{cmid}"),
            chat: "chat".into(),
            seq,
            sender: "user0".into(),
            text: format!("text-{cmid}"),
            client_msg_id: Some(cmid.into()),
            system: None,
        }
    }

    fn sent(model: &Model, cmid: &str, valid: bool, attempt: Attempt) {
        model.state.borrow_mut().sends.insert(
            (0, cmid.into()),
            SendRecord {
                user: 0,
                chat: "chat".into(),
                text: format!("text-{cmid}"),
                valid,
                attempts: vec![attempt],
            },
        );
    }

    fn acked(seq: u64, cmid: &str) -> Attempt {
        Attempt::Acked {
            id: format!("id-{cmid}"),
            seq,
        }
    }

    fn violated(model: &Model, history: Vec<MessageFacts>) -> Vec<Invariant> {
        let histories = BTreeMap::from([("chat".to_owned(), history)]);
        check_histories(model, &histories, "test");
        model
            .state
            .borrow()
            .violations
            .iter()
            .map(|v| v.invariant)
            .collect()
    }

    #[test]
    fn a_consistent_history_passes() {
        let model = model();
        sent(&model, "a", true, acked(1, "a"));
        sent(&model, "b", true, Attempt::Unknown("ack timeout".into()));
        assert!(violated(&model, vec![message(1, "a"), message(2, "b")]).is_empty());
    }

    #[test]
    fn a_lost_acknowledged_message_breaks_durability() {
        let model = model();
        sent(&model, "a", true, acked(1, "a"));
        assert_eq!(violated(&model, vec![]), vec![Invariant::Durability]);
    }

    #[test]
    fn an_acknowledged_message_at_another_seq_breaks_durability() {
        let model = model();
        sent(&model, "a", true, Attempt::Unknown("closed".into()));
        sent(&model, "b", true, acked(1, "b"));
        assert_eq!(
            violated(&model, vec![message(1, "a"), message(2, "b")]),
            vec![Invariant::Durability]
        );
    }

    #[test]
    fn unsent_refused_and_hostile_messages_are_phantoms() {
        let model = model();
        sent(
            &model,
            "refused",
            true,
            Attempt::Refused("Rate limited".into()),
        );
        sent(
            &model,
            "hostile",
            false,
            Attempt::Refused("Chat not found".into()),
        );
        let history = vec![
            message(1, "never-sent"),
            message(2, "refused"),
            message(3, "hostile"),
        ];
        assert_eq!(violated(&model, history), vec![Invariant::NoPhantoms; 3]);
    }

    #[test]
    fn a_gap_breaks_seq_order() {
        let model = model();
        sent(&model, "a", true, acked(1, "a"));
        sent(&model, "b", true, acked(3, "b"));
        assert_eq!(
            violated(&model, vec![message(1, "a"), message(3, "b")]),
            vec![Invariant::SeqContiguous]
        );
    }

    #[test]
    fn one_client_msg_id_twice_breaks_idempotency() {
        let model = model();
        sent(&model, "a", true, Attempt::Unknown("closed".into()));
        let mut again = message(2, "a");
        again.id = "id-a-again".into();
        assert_eq!(
            violated(&model, vec![message(1, "a"), again]),
            vec![Invariant::Idempotency]
        );
    }

    #[test]
    fn two_messages_at_one_seq_break_seq_order() {
        let model = model();
        check_binding(&model, &message(1, "a"), "test");
        check_binding(&model, &message(1, "a"), "test");
        assert!(model.state.borrow().violations.is_empty());
        check_binding(&model, &message(1, "b"), "test");
        let violations = model.state.borrow().violations.clone();
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].invariant, Invariant::SeqContiguous);
    }

    fn report(user: usize, views: Vec<MessageFacts>, online: &[&str]) -> TabReport {
        TabReport {
            user,
            connected: true,
            views: BTreeMap::from([(
                "chat".to_owned(),
                views.into_iter().map(|m| (m.seq, m)).collect(),
            )]),
            online: online.iter().map(|u| (*u).to_owned()).collect(),
            reads: BTreeMap::new(),
        }
    }

    #[test]
    fn a_view_that_differs_from_history_breaks_convergence() {
        let model = model();
        let history = vec![message(1, "a"), message(2, "b")];
        {
            let mut state = model.state.borrow_mut();
            state.tabs[0].report = Some(report(0, history.clone(), &[]));
            state.tabs[1].report = Some(report(1, vec![message(1, "a")], &[]));
        }
        let histories = BTreeMap::from([("chat".to_owned(), history)]);
        check_convergence(&model, &histories, &BTreeMap::new());
        let violations = model.state.borrow().violations.clone();
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].invariant, Invariant::Convergence);
        assert!(violations[0].detail.starts_with("t1"));
    }

    #[test]
    fn presence_must_match_the_connected_users() {
        let model = model();
        {
            let mut state = model.state.borrow_mut();
            state.tabs[0].report = Some(report(0, vec![], &["user1"]));
            state.tabs[1].report = Some(report(1, vec![], &[]));
        }
        check_presence(&model, &BTreeMap::new());
        let violations = model.state.borrow().violations.clone();
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].invariant, Invariant::Presence);
        assert!(violations[0].detail.starts_with("t1"));
    }

    fn to(conn: u32) -> Receiver {
        Receiver {
            tab: 1,
            user: 1,
            conn,
        }
    }

    fn event(seq: u64, cmid: &str) -> Value {
        json!({
            "_id": format!("id-{cmid}"), "chat": "chat", "seq": seq,
            "sender": { "_id": "user0" }, "text": format!("text-{cmid}"), "clientMsgId": cmid
        })
    }

    fn invariants(model: &Model) -> Vec<Invariant> {
        model
            .state
            .borrow()
            .violations
            .iter()
            .map(|v| v.invariant)
            .collect()
    }

    #[test]
    fn a_socket_may_miss_seqs_but_never_goes_back() {
        let model = model();
        for (seq, cmid) in [(1, "a"), (3, "c"), (4, "d")] {
            on_new_message(&model, to(1), &event(seq, cmid));
        }
        assert!(invariants(&model).is_empty());
        // A new connection starts afresh.
        on_new_message(&model, to(2), &event(2, "b"));
        assert!(invariants(&model).is_empty());
        on_new_message(&model, to(1), &event(2, "b"));
        assert_eq!(invariants(&model), vec![Invariant::DeliveryOrder]);
    }

    #[test]
    fn the_same_message_twice_is_exactly_once_not_order() {
        let model = model();
        on_new_message(&model, to(1), &event(1, "a"));
        on_new_message(&model, to(1), &event(1, "a"));
        assert_eq!(invariants(&model), vec![Invariant::ExactlyOnce]);
    }

    fn send_of(cmid: &str, emission: u64, first_attempt: bool) -> Sent<'_> {
        Sent {
            tab: 0,
            user: 0,
            emitted: Some((1, emission)),
            first_attempt,
            client_msg_id: cmid,
            chat: "chat",
            text: if cmid == "a" { "text-a" } else { "text-b" },
            valid: true,
        }
    }

    fn ack(model: &Model, cmid: &str, seq: u64, emission: u64, first_attempt: bool) {
        sent(model, cmid, true, Attempt::Unknown("in flight".into()));
        let message = event(seq, cmid);
        on_send_answer(
            model,
            send_of(cmid, emission, first_attempt),
            SendAnswer::Acked(&message),
        );
    }

    #[test]
    fn sends_emitted_in_a_row_get_seqs_in_that_order() {
        let model = model();
        // Acks may come in any order; the seqs must follow the emissions.
        ack(&model, "b", 2, 1, true);
        ack(&model, "a", 1, 0, true);
        assert!(invariants(&model).is_empty());

        let model = self::model();
        ack(&model, "a", 2, 0, true);
        ack(&model, "b", 1, 1, true);
        assert_eq!(invariants(&model), vec![Invariant::SendOrder]);
        assert!(
            model.state.borrow().violations[0]
                .detail
                .contains("emitted a before b")
        );
    }

    #[test]
    fn a_retry_acknowledged_with_its_original_is_not_an_order_breach() {
        let model = model();
        ack(&model, "b", 2, 0, true);
        // A retry of `a` answered with the message committed before `b`.
        ack(&model, "a", 1, 1, false);
        assert!(invariants(&model).is_empty());
    }

    // ---- groups and read state ----

    /// Users 0, 1, 2; the group "group" starts with users 0 (owner) and 1, user 2 may join.
    fn group_model() -> Model {
        let users = (0..3)
            .map(|u| UserSlot {
                id: Some(format!("user{u}")),
                ..UserSlot::default()
            })
            .collect();
        let chats = vec![ChatSlot {
            a: 0,
            b: 0,
            id: Some("group".into()),
            audit_tab: Some(0),
            group: Some(crate::model::GroupSlot {
                owner: 0,
                initial: vec![0, 1],
                users: vec![0, 1, 2],
            }),
        }];
        Model::new(Trace::new(false), users, chats, 3, false)
    }

    /// Under presence scope `contacts`: user1 left the group it shared with user0 (their only
    /// chat), and each still sees the other online at the audit.
    fn lingering_violations(boots_at_ms: Vec<u64>, offline_heard: Option<&str>) -> usize {
        let model = group_model();
        {
            let mut state = model.state.borrow_mut();
            state.presence_scope = PresenceScope::Contacts;
            state.first_seen_ms.insert(("group".into(), 1), 1_000);
            state.boots_at_ms = boots_at_ms;
            if let Some(user) = offline_heard {
                state
                    .offline_after_separation
                    .insert(("group".into(), 1, user.into()));
            }
            for (tab, other) in [(0, "user1"), (1, "user0")] {
                let mut seen = report(tab, vec![], &[other]);
                seen.views.clear();
                state.tabs[tab].report = Some(seen);
            }
        }
        let histories = BTreeMap::from([("group".to_owned(), vec![system(1, "left", 1)])]);
        check_presence(&model, &memberships(&model, &histories));
        let violations = model.state.borrow().violations.clone();
        assert!(
            violations
                .iter()
                .all(|v| v.invariant == Invariant::Presence),
            "{violations:?}"
        );
        violations.len()
    }

    #[test]
    fn a_contact_may_linger_after_a_leave_until_a_boot_or_either_goes_offline() {
        assert_eq!(lingering_violations(vec![0], None), 0);
        assert_eq!(
            lingering_violations(vec![0, 2_000], None),
            2,
            "a boot ends it"
        );
        assert_eq!(
            lingering_violations(vec![0], Some("user1")),
            2,
            "the leaver"
        );
        assert_eq!(
            lingering_violations(vec![0], Some("user0")),
            2,
            "the one left"
        );
        assert_eq!(
            lingering_violations(vec![0], Some("user2")),
            0,
            "someone else"
        );
    }

    fn system(seq: u64, kind: &str, user: usize) -> MessageFacts {
        let by = if kind == "left" { user } else { 0 };
        MessageFacts {
            id: format!("sys-{seq}"),
            chat: "group".into(),
            seq,
            sender: format!("user{by}"),
            text: kind.into(),
            client_msg_id: None,
            system: Some(SystemFacts {
                kind: kind.into(),
                user: format!("user{user}"),
                by: format!("user{by}"),
            }),
        }
    }

    fn said(seq: u64, cmid: &str) -> MessageFacts {
        MessageFacts {
            chat: "group".into(),
            ..message(seq, cmid)
        }
    }

    fn asked(model: &Model, kind: &'static str, user: usize, outcome: ChangeOutcome) {
        let by = if kind == "left" { user } else { 0 };
        let index = on_change_asked(
            model,
            ChangeRecord {
                chat: "group".into(),
                by,
                kind,
                user,
                outcome: ChangeOutcome::Unknown,
            },
        );
        on_change_answer(model, index, outcome);
    }

    /// History of "group": 1 said, 2 removes user 1, 3 said, 4 adds user 1 back, 5 said.
    fn removal_history(model: &Model) -> BTreeMap<String, Vec<MessageFacts>> {
        for (seq, cmid) in [(1, "a"), (3, "b"), (5, "c")] {
            model.state.borrow_mut().sends.insert(
                (0, cmid.into()),
                SendRecord {
                    user: 0,
                    chat: "group".into(),
                    text: format!("text-{cmid}"),
                    valid: true,
                    attempts: vec![acked(seq, cmid)],
                },
            );
        }
        asked(model, "removed", 1, ChangeOutcome::Done);
        asked(model, "added", 1, ChangeOutcome::Done);
        let history = vec![
            said(1, "a"),
            system(2, "removed", 1),
            said(3, "b"),
            system(4, "added", 1),
            said(5, "c"),
        ];
        BTreeMap::from([("group".to_owned(), history)])
    }

    fn judge_sightings(model: &Model, histories: &BTreeMap<String, Vec<MessageFacts>>) {
        let memberships = memberships(model, histories);
        check_group_sightings(model, &memberships);
    }

    #[test]
    fn a_removed_member_may_see_nothing_of_the_group_until_added_back() {
        let model = group_model();
        let histories = removal_history(&model);
        for seq in [1, 4, 5] {
            model.record_group_sighting(1, Some(1), 1, "group", Shown::Message(seq));
        }
        model.record_group_sighting(1, None, 1, "group", Shown::Refused("sync"));
        judge_sightings(&model, &histories);
        assert!(invariants(&model).is_empty(), "{:?}", invariants(&model));

        for seq in [2, 3] {
            let model = group_model();
            let histories = removal_history(&model);
            model.record_group_sighting(1, Some(1), 1, "group", Shown::Message(seq));
            judge_sightings(&model, &histories);
            assert_eq!(
                invariants(&model),
                vec![Invariant::Authorization],
                "seq {seq}"
            );
        }
        let model = group_model();
        let histories = removal_history(&model);
        model.record_group_sighting(1, None, 1, "group", Shown::LastSeq(3, "sync"));
        model.record_group_sighting(2, Some(1), 2, "group", Shown::Event("typing"));
        judge_sightings(&model, &histories);
        assert_eq!(invariants(&model), vec![Invariant::Authorization; 2]);
    }

    #[test]
    fn a_member_who_never_left_is_never_refused() {
        let model = group_model();
        let histories = removal_history(&model);
        model.record_group_sighting(0, None, 0, "group", Shown::Refused("join"));
        judge_sightings(&model, &histories);
        assert_eq!(invariants(&model), vec![Invariant::Contract]);
    }

    #[test]
    fn system_messages_must_be_asked_for_and_done_changes_must_be_there() {
        let model = group_model();
        let histories = removal_history(&model);
        check_histories(&model, &histories, "test");
        assert!(invariants(&model).is_empty(), "{:?}", invariants(&model));

        // A removal nobody asked for (the one asked was refused).
        let model = group_model();
        let mut histories = removal_history(&model);
        model.state.borrow_mut().changes[0].outcome = ChangeOutcome::Refused;
        check_histories(&model, &histories, "test");
        assert_eq!(invariants(&model), vec![Invariant::NoPhantoms]);

        // A leave answered as done whose system message is missing.
        let model = group_model();
        histories = removal_history(&model);
        asked(&model, "left", 2, ChangeOutcome::Done);
        check_histories(&model, &histories, "test");
        assert_eq!(invariants(&model), vec![Invariant::Durability]);
    }

    #[test]
    fn a_read_position_never_goes_back() {
        let model = group_model();
        let floor = on_mark_read_asked(&model, 1, "group");
        on_mark_read_answer(&model, 1, 1, "group", 4, floor, ReadAnswer::Acked(4));
        // Asked beyond the last seq: capped, not below what the tab holds.
        let floor = on_mark_read_asked(&model, 1, "group");
        on_mark_read_answer(&model, 1, 1, "group", 8, floor, ReadAnswer::Acked(5));
        assert!(invariants(&model).is_empty(), "{:?}", invariants(&model));
        // A lower mark answered below the position acknowledged before it.
        let floor = on_mark_read_asked(&model, 1, "group");
        on_mark_read_answer(&model, 1, 1, "group", 2, floor, ReadAnswer::Acked(2));
        assert_eq!(invariants(&model), vec![Invariant::ReadMonotonic]);

        let model = group_model();
        let read = |seq: u64| json!({ "chatId": "group", "userId": "user1", "lastReadSeq": seq });
        on_read_event(&model, to(1), &read(3));
        on_read_event(&model, to(1), &read(3));
        on_read_event(&model, to(2), &read(1));
        assert!(invariants(&model).is_empty());
        on_read_event(&model, to(1), &read(2));
        assert_eq!(invariants(&model), vec![Invariant::ReadMonotonic]);
    }

    #[test]
    fn unread_counts_and_positions_must_match_the_servers() {
        let model = group_model();
        let histories = removal_history(&model);
        let memberships = memberships(&model, &histories);
        model
            .state
            .borrow_mut()
            .read_acked
            .insert((1, "group".into()), 4);
        let figures = |client: (u64, u64), server: (u64, u64)| crate::model::ReadFigures {
            client_last_read: client.0,
            client_unread: client.1,
            server_last_read: server.0,
            server_unread: server.1,
        };
        let report = |f: crate::model::ReadFigures| TabReport {
            user: 1,
            connected: true,
            reads: BTreeMap::from([("group".to_owned(), f)]),
            ..TabReport::default()
        };
        model.state.borrow_mut().tabs[1].report = Some(report(figures((4, 1), (4, 1))));
        check_reads(&model, &histories, &memberships);
        assert!(invariants(&model).is_empty(), "{:?}", invariants(&model));

        model.state.borrow_mut().tabs[1].report = Some(report(figures((4, 2), (4, 1))));
        check_reads(&model, &histories, &memberships);
        assert_eq!(invariants(&model), vec![Invariant::UnreadConvergence]);

        let model = group_model();
        let histories = removal_history(&model);
        model
            .state
            .borrow_mut()
            .read_acked
            .insert((1, "group".into()), 5);
        model.state.borrow_mut().tabs[1].report = Some(report(figures((4, 1), (4, 1))));
        check_reads(&model, &histories, &memberships);
        assert_eq!(invariants(&model), vec![Invariant::ReadDurability]);
    }
}
