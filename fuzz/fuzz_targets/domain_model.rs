//! `domain_model`: an arbitrary sequence of operations (register, log in, open a 1:1 chat,
//! create a group, add, remove or leave, rename, join, send, retry a send, mark-read, sync,
//! history, list members, bursts of sends and mark-reads filed without waiting, connect,
//! disconnect, let time pass) applied both to the service layer (`service::App` on an in-memory
//! store) and to a reference model of a few maps and `Vec`s, which says what the contract says
//! should happen. Each case has users of its own (emails carry the case number) on a server
//! rebuilt every 25 cases, and retires its connections at the end, so cases do not see each other.
//!
//! After every step the two must agree on every answer (refusals included: 400 for bad input,
//! 403 for a member who is not the owner, 404 for an outsider, a removed member included, and for
//! a user who is not a member), and the invariants must hold: every chat's messages, system
//! messages included, are exactly 1..=n in the order the model accepted them (gapless `seq`),
//! the indexes agree with the tables (`Store::check_consistency`), each user's chat list is the
//! model's with its kind, name, members, owner, `lastReadSeq` and `unreadCount` (the model counts
//! unread messages by scanning; the server keeps counts), and presence counts connections: a user
//! is online while at least one connection is, `connect` reports the first and `disconnect` the
//! last. Read positions move forward only, stop at the chat's last seq, follow the member's own
//! sends and an add, and outlive a removal.
//!
//! Rate limits are out of scope (the send burst is larger than any case; `domain::rate` has its
//! own property tests); login throttling is checked only loosely.

#![no_main]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use palaver::domain::membership::{Role, SystemKind, describe};
use palaver::domain::page::Anchor;
use palaver::domain::time::rfc3339_ms;
use palaver::limits::{LOGIN_FAILURES_MAX, PAGE_MAX};
use palaver::service::views::{ChatKind, ChatView, MessageView};
use palaver::service::{ApiError, FiledRead, FiledSend, Refusal, SendMessage, Sent, Transition};
use palaver_fuzz::{Server, config, with_fixture};

const USERS: u8 = 4;
const OPS_MAX: usize = 96;
const TEXTS: [&str; 7] = [
    "hello",
    "  padded  ",
    "",
    " \n\t ",
    "multi\nline",
    "😀",
    "long",
];
const TEXT_LONG_CHARS: usize = 4001;

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    /// variant: 0 as is, 1 email in upper case, 2 empty name, 3 short password.
    Register {
        user: u8,
        variant: u8,
    },
    Login {
        user: u8,
        right_password: bool,
    },
    CreateChat {
        caller: u8,
        other: u8,
    },
    Join {
        user: u8,
        chat: u8,
    },
    Send(SendOp),
    /// The `index`-th earlier send, again, exactly (a client retrying after a lost ack).
    Retry {
        index: u8,
    },
    Sync {
        user: u8,
        chat: u8,
        after: u8,
        limit: u8,
    },
    History {
        user: u8,
        chat: u8,
        before: Option<u8>,
        limit: u8,
    },
    Connect {
        user: u8,
    },
    Disconnect {
        conn: u8,
    },
    Tick {
        ms: u16,
    },
    /// `others`: bit n (n < USERS) names slot n (an unregistered slot is an id of nobody), bit 7
    /// names the caller as well.
    CreateGroup {
        caller: u8,
        others: u8,
        name: u8,
    },
    /// `users` as in `CreateGroup::others`; none is a bad request.
    AddMembers {
        caller: u8,
        chat: u8,
        users: u8,
    },
    /// The caller removes `target`, or leaves when it is themself; `target` >= 250 is an id
    /// that is not well formed.
    RemoveMember {
        caller: u8,
        chat: u8,
        target: u8,
    },
    Rename {
        caller: u8,
        chat: u8,
        name: u8,
    },
    /// `seq`: below 200 a seq in 0..=last+2 (backward, forward and beyond), else far beyond.
    MarkRead {
        user: u8,
        chat: u8,
        seq: u8,
    },
    Members {
        user: u8,
        chat: u8,
    },
    /// Sends and mark-reads filed one after another without waiting, then awaited in order:
    /// they meet in the writer's batches (mark-reads coalesce there).
    Burst(Vec<BurstItem>),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum BurstItem {
    Send(SendOp),
    MarkRead { user: u8, chat: u8, seq: u8 },
}

const BURST_MAX: usize = 8;
const GROUP_NAMES: [&str; 6] = ["Team", "  padded  ", "", " \t ", "a\u{0}b", "long"];
const GROUP_NAME_LONG_CHARS: usize = 65;

fn group_name(pick: u8) -> String {
    match GROUP_NAMES[usize::from(pick) % GROUP_NAMES.len()] {
        "long" if pick >= 128 => "n".repeat(GROUP_NAME_LONG_CHARS - 1),
        "long" => "n".repeat(GROUP_NAME_LONG_CHARS),
        name => name.to_owned(),
    }
}

/// The name as the contract stores it, or `None` when it is refused.
fn valid_group_name(raw: &str) -> Option<String> {
    let trimmed = raw.trim();
    let chars = trimmed.chars().count();
    (chars > 0 && chars < GROUP_NAME_LONG_CHARS && !trimmed.chars().any(char::is_control))
        .then(|| trimmed.to_owned())
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct SendOp {
    user: u8,
    chat: u8,
    text: u8,
    /// None: no clientMsgId; 0..=7: `c0`…`c7` (collisions intended); otherwise one too long.
    cmid: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelMessage {
    sender: u8,
    text: String,
    cmid: Option<String>,
    /// A system message's kind and the user it is about.
    event: Option<(SystemKind, u8)>,
}

#[derive(Debug)]
struct ModelChat {
    id: String,
    /// A 1:1 chat's sorted pair; `None` for a group.
    pair: Option<(u8, u8)>,
    /// A group's name.
    name: Option<String>,
    /// In joining order (a group's first is its owner), with when each joined.
    members: Vec<(u8, u64)>,
    created_ms: u64,
    messages: Vec<ModelMessage>,
    /// Read positions, kept when a member leaves (a re-added member's only moves forward).
    reads: BTreeMap<u8, u64>,
}

impl ModelChat {
    fn is_member(&self, slot: u8) -> bool {
        self.members.iter().any(|&(m, _)| m == slot)
    }

    fn is_group(&self) -> bool {
        self.pair.is_none()
    }

    fn last_seq(&self) -> u64 {
        self.messages.len() as u64
    }

    fn read(&self, slot: u8) -> u64 {
        self.reads.get(&slot).copied().unwrap_or(0)
    }

    /// Moves `slot`'s position forward to `seq` (never back); the position after it.
    fn advance(&mut self, slot: u8, seq: u64) -> u64 {
        let position = self.reads.entry(slot).or_insert(0);
        *position = (*position).max(seq.min(self.messages.len() as u64));
        *position
    }

    /// The messages above `slot`'s position that are not system messages, counted the slow way.
    fn unread(&self, slot: u8) -> u64 {
        let read = self.read(slot) as usize;
        self.messages[read.min(self.messages.len())..]
            .iter()
            .filter(|m| m.event.is_none())
            .count() as u64
    }

    fn owner(&self) -> Option<u8> {
        self.is_group()
            .then(|| self.members.first().map(|&(m, _)| m))
            .flatten()
    }
}

#[derive(Default)]
struct Model {
    /// The case number, which makes this case's emails unique on a reused server.
    case: u64,
    /// slot → user id (as the service minted it)
    users: BTreeMap<u8, String>,
    failed_logins: HashMap<u8, usize>,
    /// Every chat, 1:1 and group, in creation order.
    chats: Vec<ModelChat>,
    /// connection id → slot
    connections: BTreeMap<String, u8>,
    next_connection: u64,
    sends: Vec<SendOp>,
}

impl Model {
    /// The chat an op's `chat` byte names: one of the model's, or an id that exists nowhere.
    fn chat_id(&self, pick: u8) -> String {
        match self.chats.get(usize::from(pick) % (self.chats.len() + 1)) {
            Some(chat) => chat.id.clone(),
            None => "65f00000000000000000dead".into(),
        }
    }

    fn chat(&self, id: &str) -> Option<&ModelChat> {
        self.chats.iter().find(|c| c.id == id)
    }

    fn chat_mut(&mut self, id: &str) -> Option<&mut ModelChat> {
        self.chats.iter_mut().find(|c| c.id == id)
    }

    /// The chat `id` if `slot` is one of its members.
    fn member_chat(&self, id: &str, slot: u8) -> Option<&ModelChat> {
        self.chat(id).filter(|c| c.is_member(slot))
    }

    /// The id of `slot`: the registered user's, or a well-formed id that names nobody.
    fn user_id(&self, slot: u8) -> String {
        self.users
            .get(&slot)
            .cloned()
            .unwrap_or_else(|| format!("65f0000000000000000000b{slot}"))
    }

    fn slot_of(&self, id: &str) -> u8 {
        *self
            .users
            .iter()
            .find(|(_, known)| *known == id)
            .unwrap_or_else(|| panic!("{id} is no user of this case"))
            .0
    }

    fn user_name(&self, slot: u8) -> String {
        format!("U{slot}")
    }
}

/// Each case's user logs in and registers from an address of its own, so the per-address
/// login and registration limits count exactly what the model's per-user counts do.
fn client(case: u64, slot: u8) -> std::net::IpAddr {
    let case = (case as u32) & 0x00ff_ffff;
    std::net::IpAddr::V4(std::net::Ipv4Addr::from((case << 8) | u32::from(slot)))
}

fn email(case: u64, slot: u8) -> String {
    format!("user{slot}-{case}@example.com")
}

fn password(slot: u8) -> String {
    format!("password-{slot}")
}

fn text(pick: u8) -> String {
    match TEXTS[usize::from(pick) % TEXTS.len()] {
        "long" => "x".repeat(TEXT_LONG_CHARS),
        t => t.to_owned(),
    }
}

fn cmid(pick: Option<u8>) -> Option<String> {
    pick.map(|n| {
        if n < 8 {
            format!("c{n}")
        } else {
            "x".repeat(65)
        }
    })
}

fuzz_target!(|ops: Vec<Op>| {
    static CASES: AtomicU64 = AtomicU64::new(0);
    let case = CASES.fetch_add(1, Ordering::Relaxed);
    with_fixture(25, build, async |server: &Server| {
        run(server, case, ops).await
    });
});

async fn build() -> Server {
    let mut config = config();
    config.send_burst = 1_000_000;
    Server::start(&config).await
}

async fn run(server: &Server, case: u64, ops: Vec<Op>) {
    let mut model = Model {
        case,
        ..Model::default()
    };
    for op in ops.into_iter().take(OPS_MAX) {
        step(server, &mut model, op).await;
        check_invariants(server, &model).await;
    }
    // Retire this case's connections so the next case starts with nobody online.
    let mut presence = server.app.presence().await;
    let before = presence.state().connection_count();
    for conn in model.connections.keys() {
        presence.disconnect(conn);
    }
    assert_eq!(before, model.connections.len());
    assert_eq!(presence.state().connection_count(), 0);
}

async fn step(server: &Server, model: &mut Model, op: Op) {
    let app = &server.app;
    match op {
        Op::Register { user, variant } => {
            let slot = user % USERS;
            let (name, mut email, mut password) =
                (format!("U{slot}"), email(model.case, slot), password(slot));
            let mut name = name;
            match variant % 4 {
                1 => email = email.to_uppercase(),
                2 => name = "   ".into(),
                3 => password = "short".into(),
                _ => {}
            }
            let result = app
                .register(client(model.case, slot), &name, &email, &password)
                .await;
            match (variant % 4, result) {
                (2 | 3, Err(ApiError::BadRequest(_))) => {}
                (0 | 1, Err(ApiError::EmailTaken)) => assert!(model.users.contains_key(&slot)),
                (0 | 1, Ok((token, view))) => {
                    assert!(
                        !model.users.contains_key(&slot),
                        "registered an email twice"
                    );
                    assert_eq!(view.email, self::email(model.case, slot));
                    assert_eq!(
                        app.authenticate(&token).await.expect("fresh token").id,
                        view.id
                    );
                    model.users.insert(slot, view.id);
                }
                (variant, result) => panic!("register variant {variant}: {result:?}"),
            }
        }
        Op::Login {
            user,
            right_password,
        } => {
            let slot = user % USERS;
            let attempt = if right_password {
                password(slot)
            } else {
                "wrong-password".into()
            };
            let result = app
                .login(
                    client(model.case, slot),
                    &email(model.case, slot).to_uppercase(),
                    &attempt,
                )
                .await;
            let failures = model.failed_logins.get(&slot).copied().unwrap_or(0);
            match result {
                Ok((_, view)) => {
                    assert!(right_password);
                    assert_eq!(model.users.get(&slot), Some(&view.id));
                }
                Err(ApiError::InvalidCredentials) => {
                    assert!(!(right_password && model.users.contains_key(&slot)));
                    *model.failed_logins.entry(slot).or_default() += 1;
                }
                Err(ApiError::TooManyAttempts) => assert!(failures >= LOGIN_FAILURES_MAX),
                Err(other) => panic!("login: {other:?}"),
            }
            if right_password && model.users.contains_key(&slot) && failures < LOGIN_FAILURES_MAX {
                assert!(
                    app.login(client(model.case, slot), &email(model.case, slot), &attempt)
                        .await
                        .is_ok()
                );
            }
        }
        Op::CreateChat { caller, other } => {
            let (a, b) = (caller % USERS, other % USERS);
            let Some(a_id) = model.users.get(&a).cloned() else {
                return;
            };
            let b_id = model
                .users
                .get(&b)
                .cloned()
                .unwrap_or_else(|| "65f000000000000000000bad".into());
            let result = app.open_chat_with(&a_id, &b_id).await;
            if a == b {
                assert!(matches!(result, Err(ApiError::BadRequest(_))), "{result:?}");
                return;
            }
            if !model.users.contains_key(&b) {
                assert_eq!(result.err(), Some(ApiError::NotFound("User not found")));
                return;
            }
            let view = result.expect("open chat");
            let key = (a.min(b), a.max(b));
            if !model.chats.iter().any(|c| c.pair == Some(key)) {
                let now = server.clock_now();
                model.chats.push(ModelChat {
                    id: view.id.clone(),
                    pair: Some(key),
                    name: None,
                    members: vec![(a, now), (b, now)],
                    created_ms: now,
                    messages: Vec::new(),
                    reads: BTreeMap::new(),
                });
            }
            let chat = model
                .chats
                .iter()
                .find(|c| c.pair == Some(key))
                .expect("just found or added");
            assert_eq!(view.id, chat.id, "a second chat for one pair");
            check_view(model, &view, a);
        }
        Op::Join { user, chat } => {
            let slot = user % USERS;
            let Some(user_id) = model.users.get(&slot) else {
                return;
            };
            let chat_id = model.chat_id(chat);
            let member = model.member_chat(&chat_id, slot).is_some();
            match app.member_chat(user_id, &chat_id) {
                Ok(found) => {
                    assert!(member);
                    assert_eq!(found.id, chat_id);
                }
                Err(refusal) => {
                    assert!(!member);
                    assert_eq!(refusal, Refusal::ChatNotFound);
                }
            }
        }
        Op::Send(send_op) => {
            model.sends.push(send_op);
            send(server, model, send_op).await;
        }
        Op::Retry { index } => {
            if model.sends.is_empty() {
                return;
            }
            let send_op = model.sends[usize::from(index) % model.sends.len()];
            send(server, model, send_op).await;
        }
        Op::Sync {
            user,
            chat,
            after,
            limit,
        } => {
            let slot = user % USERS;
            let Some(user_id) = model.users.get(&slot).cloned() else {
                return;
            };
            let chat_id = model.chat_id(chat);
            let limit = u64::from(limit % 8);
            let result = app.sync(&user_id, &chat_id, u64::from(after % 16), Some(limit));
            let Some(chat) = model.member_chat(&chat_id, slot) else {
                assert_eq!(result.err(), Some(Refusal::ChatNotFound));
                return;
            };
            let (messages, has_more) = result.expect("sync");
            let n = chat.messages.len() as u64;
            let first = u64::from(after % 16) + 1;
            let last = (first + limit.max(1) - 1).min(n);
            let want: Vec<u64> = (first..=last).collect();
            assert_eq!(messages.iter().map(|m| m.seq).collect::<Vec<_>>(), want);
            check_message_views(model, chat, &messages);
            assert_eq!(has_more, last < n);
        }
        Op::History {
            user,
            chat,
            before,
            limit,
        } => {
            let slot = user % USERS;
            let Some(user_id) = model.users.get(&slot).cloned() else {
                return;
            };
            let chat_id = model.chat_id(chat);
            let limit = u64::from(limit) * 3;
            let anchor = before.map_or(Anchor::Newest, |b| Anchor::Before(u64::from(b % 16)));
            let result = app.history(&user_id, &chat_id, anchor, Some(limit));
            let Some(chat) = model.member_chat(&chat_id, slot) else {
                assert_eq!(result.err(), Some(ApiError::NotFound("Chat not found")));
                return;
            };
            let page = result.expect("history");
            let n = chat.messages.len() as u64;
            let limit = limit.clamp(1, u64::from(PAGE_MAX));
            let below = match anchor {
                Anchor::Before(b) => b.max(1).min(n + 1),
                _ => n + 1,
            };
            let want: Vec<u64> = (below.saturating_sub(limit).max(1)..below).collect();
            assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), want);
            check_message_views(model, chat, &page);
        }
        Op::Connect { user } => {
            let slot = user % USERS;
            let Some(user_id) = model.users.get(&slot).cloned() else {
                return;
            };
            let conn = format!("conn{}", model.next_connection);
            model.next_connection += 1;
            let was_online = model.connections.values().any(|&s| s == slot);
            let came_online = !app.presence().await.connect(&conn, &user_id).is_empty();
            assert_eq!(
                came_online, !was_online,
                "user-online must mark the first connection"
            );
            model.connections.insert(conn, slot);
        }
        Op::Disconnect { conn } => {
            let live: Vec<String> = model.connections.keys().cloned().collect();
            let conn = live
                .get(usize::from(conn) % (live.len() + 1))
                .cloned()
                .unwrap_or_else(|| "never-connected".into());
            let mut presence = app.presence().await;
            let counted = presence.state().connection_count();
            let went_offline: Vec<Transition> = presence
                .disconnect(&conn)
                .into_iter()
                .map(|announcement| announcement.transition)
                .collect();
            let retired = counted - presence.state().connection_count();
            match model.connections.remove(&conn) {
                None => assert_eq!((retired, went_offline), (0, vec![])),
                Some(slot) => {
                    let still = model.connections.values().any(|&s| s == slot);
                    let offline: Vec<Transition> = (!still)
                        .then(|| Transition::Offline(model.users[&slot].clone()))
                        .into_iter()
                        .collect();
                    assert_eq!((retired, went_offline), (1, offline));
                }
            }
        }
        Op::Tick { ms } => server.clock.advance(u64::from(ms)),
        Op::CreateGroup {
            caller,
            others,
            name,
        } => create_group(server, model, caller % USERS, others, name).await,
        Op::AddMembers {
            caller,
            chat,
            users,
        } => add_members(server, model, caller % USERS, chat, users).await,
        Op::RemoveMember {
            caller,
            chat,
            target,
        } => remove_member(server, model, caller % USERS, chat, target).await,
        Op::Rename { caller, chat, name } => {
            rename(server, model, caller % USERS, chat, name).await;
        }
        Op::MarkRead { user, chat, seq } => {
            let Some((filed, expected)) = file_mark_read(server, model, user, chat, seq).await
            else {
                return;
            };
            assert_eq!(filed.outcome().await, expected, "mark-read");
        }
        Op::Members { user, chat } => members(server, model, user % USERS, chat),
        Op::Burst(items) => burst(server, model, items).await,
    }
}

/// The ids an op's bit mask names (see `Op::CreateGroup`), in slot order.
fn named_ids(model: &Model, caller: u8, mask: u8) -> Vec<String> {
    let mut ids: Vec<String> = (0..USERS)
        .filter(|slot| mask & (1 << slot) != 0)
        .map(|slot| model.user_id(slot))
        .collect();
    if mask & 0x80 != 0 {
        ids.push(model.user_id(caller));
    }
    ids
}

fn unknown_among(model: &Model, ids: &[String]) -> bool {
    ids.iter()
        .any(|id| !model.users.values().any(|known| known == id))
}

async fn create_group(server: &Server, model: &mut Model, caller: u8, others: u8, name: u8) {
    let Some(caller_id) = model.users.get(&caller).cloned() else {
        return;
    };
    let (raw_name, ids) = (group_name(name), named_ids(model, caller, others));
    let result = server
        .app
        .create_group(&caller_id, &raw_name, ids.clone())
        .await;
    let Some(name) = valid_group_name(&raw_name) else {
        assert!(matches!(result, Err(ApiError::BadRequest(_))), "{result:?}");
        return;
    };
    if unknown_among(model, &ids) {
        assert_eq!(result.err(), Some(ApiError::NotFound("User not found")));
        return;
    }
    let view = result.expect("create group");
    let now = server.clock_now();
    let mut members = vec![(caller, now)];
    for id in &ids {
        let slot = model.slot_of(id);
        if !members.iter().any(|&(m, _)| m == slot) {
            members.push((slot, now));
        }
    }
    assert!(model.chat(&view.id).is_none(), "a new group reuses an id");
    model.chats.push(ModelChat {
        id: view.id.clone(),
        pair: None,
        name: Some(name),
        members,
        created_ms: now,
        messages: Vec::new(),
        reads: BTreeMap::new(),
    });
    check_view(model, &view, caller);
}

/// The refusal of a change by `caller` to `chat_id` that only the owner of a group may make,
/// if it is refused: as the writer decides it (`domain::membership`).
fn owner_refusal(model: &Model, chat_id: &str, caller: u8) -> Option<ApiError> {
    let Some(chat) = model.member_chat(chat_id, caller) else {
        return Some(ApiError::NotFound("Chat not found"));
    };
    if !chat.is_group() {
        return Some(ApiError::BadRequest("Not a group chat".into()));
    }
    (chat.owner() != Some(caller)).then_some(ApiError::Forbidden("Only the owner can do that"))
}

/// Appends a system message about `user` by `by` to the model's chat.
fn system_message(model: &mut Model, chat_id: &str, kind: SystemKind, user: u8, by: u8) {
    let (user_name, by_name) = (model.user_name(user), model.user_name(by));
    let chat = model.chat_mut(chat_id).expect("model chat");
    let group_name = chat.name.clone().unwrap_or_default();
    chat.messages.push(ModelMessage {
        sender: by,
        text: describe(kind, &user_name, &by_name, &group_name),
        cmid: None,
        event: Some((kind, user)),
    });
}

async fn add_members(server: &Server, model: &mut Model, caller: u8, chat: u8, users: u8) {
    let Some(caller_id) = model.users.get(&caller).cloned() else {
        return;
    };
    let chat_id = model.chat_id(chat);
    let ids = named_ids(model, caller, users);
    let result = server
        .app
        .add_members(&caller_id, &chat_id, ids.clone())
        .await;
    if ids.is_empty() {
        assert!(matches!(result, Err(ApiError::BadRequest(_))), "{result:?}");
        return;
    }
    if let Some(refusal) = owner_refusal(model, &chat_id, caller) {
        assert_eq!(result.err(), Some(refusal));
        return;
    }
    let chat = model.chat(&chat_id).expect("member chat");
    let mut new: Vec<String> = Vec::new();
    for id in ids {
        let member =
            model.users.values().any(|known| *known == id) && chat.is_member(model.slot_of(&id));
        if !member && !new.contains(&id) {
            new.push(id);
        }
    }
    if unknown_among(model, &new) {
        assert_eq!(result.err(), Some(ApiError::NotFound("User not found")));
        return;
    }
    let view = result.expect("add members");
    let now = server.clock_now();
    for id in new {
        let slot = model.slot_of(&id);
        system_message(model, &chat_id, SystemKind::Added, slot, caller);
        let chat = model.chat_mut(&chat_id).expect("model chat");
        chat.members.push((slot, now));
        // An added member starts with nothing unread.
        let seq = chat.last_seq();
        chat.advance(slot, seq);
    }
    check_view(model, &view, caller);
}

async fn remove_member(server: &Server, model: &mut Model, caller: u8, chat: u8, target: u8) {
    let Some(caller_id) = model.users.get(&caller).cloned() else {
        return;
    };
    let chat_id = model.chat_id(chat);
    let target_id = if target >= 250 {
        "not an id".to_owned()
    } else {
        model.user_id(target % USERS)
    };
    let result = server
        .app
        .remove_member(&caller_id, &chat_id, &target_id)
        .await;
    let member_not_found = Err(ApiError::NotFound("Member not found"));
    if target >= 250 {
        assert_eq!(result, member_not_found);
        return;
    }
    let target = target % USERS;
    let Some(chat) = model.member_chat(&chat_id, caller) else {
        assert_eq!(result, Err(ApiError::NotFound("Chat not found")));
        return;
    };
    if !chat.is_group() {
        assert_eq!(result, Err(ApiError::BadRequest("Not a group chat".into())));
        return;
    }
    if target != caller && chat.owner() != Some(caller) {
        assert_eq!(
            result,
            Err(ApiError::Forbidden("Only the owner can do that"))
        );
        return;
    }
    if !model.users.contains_key(&target) || !chat.is_member(target) {
        assert_eq!(result, member_not_found);
        return;
    }
    assert_eq!(result, Ok(()), "remove");
    let kind = if target == caller {
        SystemKind::Left
    } else {
        SystemKind::Removed
    };
    system_message(model, &chat_id, kind, target, caller);
    let chat = model.chat_mut(&chat_id).expect("model chat");
    chat.members.retain(|&(m, _)| m != target);
}

async fn rename(server: &Server, model: &mut Model, caller: u8, chat: u8, name: u8) {
    let Some(caller_id) = model.users.get(&caller).cloned() else {
        return;
    };
    let chat_id = model.chat_id(chat);
    let raw_name = group_name(name);
    let result = server
        .app
        .rename_group(&caller_id, &chat_id, &raw_name)
        .await;
    let Some(name) = valid_group_name(&raw_name) else {
        assert!(matches!(result, Err(ApiError::BadRequest(_))), "{result:?}");
        return;
    };
    if let Some(refusal) = owner_refusal(model, &chat_id, caller) {
        assert_eq!(result.err(), Some(refusal));
        return;
    }
    let view = result.expect("rename");
    model.chat_mut(&chat_id).expect("model chat").name = Some(name);
    system_message(model, &chat_id, SystemKind::Renamed, caller, caller);
    check_view(model, &view, caller);
}

/// Files a mark-read with the service and applies it to the model; `None` when the user is not
/// registered. The filed request and the answer the model expects.
async fn file_mark_read(
    server: &Server,
    model: &mut Model,
    user: u8,
    chat: u8,
    seq: u8,
) -> Option<(FiledRead, Result<u64, Refusal>)> {
    let slot = user % USERS;
    let user_id = model.users.get(&slot).cloned()?;
    let chat_id = model.chat_id(chat);
    let last = model.chat(&chat_id).map_or(0, ModelChat::last_seq);
    let seq = if seq < 200 {
        u64::from(seq) % (last + 3)
    } else {
        u64::MAX - u64::from(seq)
    };
    let filed = server.app.file_mark_read(&user_id, &chat_id, seq).await;
    let expected = match model.chat_mut(&chat_id).filter(|c| c.is_member(slot)) {
        Some(chat) => Ok(chat.advance(slot, seq)),
        None => Err(Refusal::ChatNotFound),
    };
    Some((filed, expected))
}

fn members(server: &Server, model: &Model, user: u8, chat: u8) {
    let Some(user_id) = model.users.get(&user) else {
        return;
    };
    let chat_id = model.chat_id(chat);
    let result = server.app.members_of_chat(user_id, &chat_id);
    let Some(chat) = model.member_chat(&chat_id, user) else {
        assert_eq!(result.err(), Some(ApiError::NotFound("Chat not found")));
        return;
    };
    let listed: Vec<(String, Role, String, u64)> = result
        .expect("members")
        .into_iter()
        .map(|m| (m.user.id, m.role, m.joined_at, m.last_read_seq))
        .collect();
    let want: Vec<(String, Role, String, u64)> = chat
        .members
        .iter()
        .enumerate()
        .map(|(i, &(slot, joined))| {
            let role = if chat.is_group() && i == 0 {
                Role::Owner
            } else {
                Role::Member
            };
            (
                model.users[&slot].clone(),
                role,
                rfc3339_ms(joined),
                chat.read(slot),
            )
        })
        .collect();
    assert_eq!(listed, want);
}

/// A filed request of a burst and what the model expects of it.
enum Pending {
    Send(FiledSend, SendOp, Result<(u64, bool), Refusal>),
    Read(FiledRead, Result<u64, Refusal>),
}

async fn burst(server: &Server, model: &mut Model, items: Vec<BurstItem>) {
    let mut pending = Vec::new();
    for item in items.into_iter().take(BURST_MAX) {
        match item {
            BurstItem::Send(op) => {
                model.sends.push(op);
                if let Some((filed, expected)) = file_send(server, model, op).await {
                    pending.push(Pending::Send(filed, op, expected));
                }
            }
            BurstItem::MarkRead { user, chat, seq } => {
                if let Some((filed, expected)) =
                    file_mark_read(server, model, user, chat, seq).await
                {
                    pending.push(Pending::Read(filed, expected));
                }
            }
        }
    }
    for request in pending {
        match request {
            Pending::Send(filed, op, expected) => {
                let result = filed.outcome(&server.app).await;
                check_sent(model, op, result, expected);
            }
            Pending::Read(filed, expected) => {
                assert_eq!(filed.outcome().await, expected, "mark-read in a burst");
            }
        }
    }
}

/// `view` against the model's chat of the same id, as `viewer` sees it.
fn check_view(model: &Model, view: &ChatView, viewer: u8) {
    let chat = model.chat(&view.id).expect("a chat the model knows");
    let ids = |slots: &mut dyn Iterator<Item = u8>| -> Vec<String> {
        slots.map(|slot| model.users[&slot].clone()).collect()
    };
    let kind = if chat.is_group() {
        ChatKind::Group
    } else {
        ChatKind::Direct
    };
    assert_eq!(view.kind, kind);
    assert_eq!(view.name, chat.name);
    assert_eq!(
        view.participants
            .iter()
            .map(|p| p.id.clone())
            .collect::<Vec<_>>(),
        ids(&mut chat.members.iter().map(|&(m, _)| m))
    );
    assert_eq!(view.member_count, chat.members.len());
    let participant = match chat.pair {
        Some((a, b)) => Some(model.users[if a == viewer { &b } else { &a }].clone()),
        None => None,
    };
    assert_eq!(view.participant.as_ref().map(|p| p.id.clone()), participant);
    assert_eq!(
        view.owner_id,
        chat.owner().map(|slot| model.users[&slot].clone())
    );
    assert_eq!(
        view.last_message.as_ref().map(|m| m.seq),
        (chat.last_seq() > 0).then_some(chat.last_seq())
    );
    assert_eq!(view.created_at, rfc3339_ms(chat.created_ms));
    assert_eq!(
        (view.last_read_seq, view.unread_count),
        (chat.read(viewer), chat.unread(viewer)),
        "read state of U{viewer} in {}",
        chat.id
    );
}

/// Messages of `chat` as the service shows them: texts, senders and system events as the model
/// has them.
fn check_message_views(model: &Model, chat: &ModelChat, views: &[MessageView]) {
    for view in views {
        let want = &chat.messages[view.seq as usize - 1];
        assert_eq!(view.text, want.text);
        assert_eq!(view.sender.id, model.users[&want.sender]);
        let event = view
            .event
            .as_ref()
            .map(|e| (e.kind, e.user_id.clone(), e.by.clone()));
        let want_event = want.event.map(|(kind, user)| {
            (
                kind.as_str(),
                model.users[&user].clone(),
                model.users[&want.sender].clone(),
            )
        });
        assert_eq!(event, want_event);
    }
}

async fn send(server: &Server, model: &mut Model, op: SendOp) {
    if let Some((filed, expected)) = file_send(server, model, op).await {
        let result = filed.outcome(&server.app).await;
        check_sent(model, op, result, expected);
    }
}

/// Files a send with the service and applies it to the model; `None` when the user is not
/// registered. The filed send and the (seq, created) the model expects of it.
async fn file_send(
    server: &Server,
    model: &mut Model,
    op: SendOp,
) -> Option<(FiledSend, Result<(u64, bool), Refusal>)> {
    let slot = op.user % USERS;
    let user_id = model.users.get(&slot).cloned()?;
    let user = server
        .store
        .user(&user_id)
        .expect("read")
        .expect("registered user");
    let chat_id = model.chat_id(op.chat);
    let (raw_text, cmid) = (text(op.text), cmid(op.cmid));
    let command = SendMessage {
        chat_id: chat_id.clone(),
        text: raw_text.clone(),
        client_msg_id: cmid.clone(),
    };
    let filed = server.app.file_send(&user, command).await;

    // The model, in the contract's order of checks.
    let trimmed = raw_text.trim().to_owned();
    let expected: Result<(u64, bool), Refusal> = 'expected: {
        if cmid.as_ref().is_some_and(|c| c.chars().count() > 64) {
            break 'expected Err(Refusal::InvalidPayload);
        }
        let Some(chat) = model.chat_mut(&chat_id).filter(|c| c.is_member(slot)) else {
            break 'expected Err(Refusal::ChatNotFound);
        };
        if trimmed.is_empty() {
            break 'expected Err(Refusal::MessageEmpty);
        }
        if trimmed.chars().count() > 4000 {
            break 'expected Err(Refusal::MessageTooLong);
        }
        if let Some(cmid) = &cmid
            && let Some(at) = chat
                .messages
                .iter()
                .position(|m| m.sender == slot && m.cmid.as_ref() == Some(cmid))
        {
            break 'expected Ok((at as u64 + 1, false));
        }
        chat.messages.push(ModelMessage {
            sender: slot,
            text: trimmed.clone(),
            cmid: cmid.clone(),
            event: None,
        });
        // The sender has read their own message.
        let seq = chat.last_seq();
        chat.advance(slot, seq);
        Ok((seq, true))
    };
    Some((filed, expected))
}

fn check_sent(
    model: &Model,
    op: SendOp,
    result: Result<Sent, Refusal>,
    expected: Result<(u64, bool), Refusal>,
) {
    match (result, expected) {
        (Ok(sent), Ok((seq, created))) => {
            assert_eq!((sent.message.seq, sent.created), (seq, created));
            let chat = model.chat(&sent.message.chat).expect("model chat");
            assert_eq!(sent.message.chat, model.chat_id(op.chat));
            assert_eq!(sent.message.sender.id, model.users[&(op.user % USERS)]);
            assert_eq!(sent.message.text, chat.messages[seq as usize - 1].text);
            let members: Vec<String> = chat
                .members
                .iter()
                .map(|(slot, _)| model.users[slot].clone())
                .collect();
            assert_eq!(sent.members.to_vec(), members, "members as of the commit");
        }
        (Err(refusal), Err(expected)) => assert_eq!(refusal, expected),
        (result, expected) => panic!("send {op:?}: service {result:?}, model {expected:?}"),
    }
}

async fn check_invariants(server: &Server, model: &Model) {
    let problems = server.store.check_consistency().expect("readable");
    assert!(problems.is_empty(), "{problems:?}");
    for chat in &model.chats {
        let stored = server
            .store
            .chat(&chat.id)
            .expect("read")
            .expect("chat exists");
        let n = chat.last_seq();
        assert_eq!(stored.last_seq, n);
        let messages = server
            .store
            .messages_with_events(&chat.id, 1..n + 1)
            .expect("read");
        let got: Vec<ModelMessage> = messages
            .iter()
            .map(|(m, event)| ModelMessage {
                sender: model.slot_of(&m.sender),
                text: m.text.clone(),
                cmid: m.client_msg_id.clone(),
                event: event.as_ref().map(|e| (e.kind, model.slot_of(&e.user))),
            })
            .collect();
        assert_eq!(got, chat.messages);
        assert!(
            messages
                .iter()
                .enumerate()
                .all(|(i, (m, _))| m.seq == i as u64 + 1)
        );
    }
    // Each user's chat list (`GET /api/chats`): exactly the chats they are a member of, each
    // with the model's kind, members, owner, last message, and read state; the unread count
    // against the brute-force count.
    for (&slot, id) in &model.users {
        let listed = server.app.chats_of(id).expect("chats");
        let mut ids: Vec<&str> = listed.iter().map(|c| c.id.as_str()).collect();
        ids.sort_unstable();
        let mut want: Vec<&str> = model
            .chats
            .iter()
            .filter(|c| c.is_member(slot))
            .map(|c| c.id.as_str())
            .collect();
        want.sort_unstable();
        assert_eq!(ids, want, "chat list of U{slot}");
        for view in &listed {
            check_view(model, view, slot);
        }
    }
    let desk = server.app.presence().await;
    let presence = desk.state();
    let mut online = 0;
    for (slot, id) in &model.users {
        let count = model.connections.values().filter(|&&s| s == *slot).count();
        assert_eq!(presence.connections_of(id) as usize, count);
        assert_eq!(presence.is_online(id), count > 0);
        online += usize::from(count > 0);
    }
    assert_eq!(presence.online_count(), online);
    assert_eq!(presence.connection_count(), model.connections.len());
}
