//! `domain_model`: an arbitrary sequence of operations (register, log in, create chat, join,
//! send, retry a send, sync, connect, disconnect, let time pass) applied both to the service
//! layer (`service::App` on an in-memory store) and to a reference model of a few `HashMap`s
//! and `Vec`s, which says what the contract says should happen. Each case has users of its own
//! (emails carry the case number) on a server rebuilt every 25 cases, and retires
//! its connections at the end, so cases do not see each other.
//!
//! After every step the two must agree on every answer, and the invariants must hold: every
//! chat's messages are exactly 1..=n in the order the model accepted them (gapless `seq`), the
//! indexes agree with the tables (`Store::check_consistency`), each user's chat list is the
//! model's, and presence counts connections: a user is online while at least one connection is,
//! `connect` reports the first and `disconnect` the last.
//!
//! Rate limits are out of scope (the send burst is larger than any case; `domain::rate` has its
//! own property tests); login throttling is checked only loosely.

#![no_main]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use palaver::domain::page::Anchor;
use palaver::service::{Refusal, SendMessage, Transition};
use palaver::limits::{LOGIN_FAILURES_MAX, PAGE_MAX};
use palaver::service::ApiError;
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
}

#[derive(Debug)]
struct ModelChat {
    id: String,
    members: [u8; 2],
    messages: Vec<ModelMessage>,
}

#[derive(Default)]
struct Model {
    /// The case number, which makes this case's emails unique on a reused server.
    case: u64,
    /// slot → user id (as the service minted it)
    users: BTreeMap<u8, String>,
    failed_logins: HashMap<u8, usize>,
    /// sorted slot pair → chat
    chats: BTreeMap<(u8, u8), ModelChat>,
    /// connection id → slot
    connections: BTreeMap<String, u8>,
    next_connection: u64,
    sends: Vec<SendOp>,
}

impl Model {
    fn chat_ids(&self) -> Vec<String> {
        self.chats.values().map(|c| c.id.clone()).collect()
    }

    /// The chat an op's `chat` byte names: one of the model's, or an id that exists nowhere.
    fn chat_id(&self, pick: u8) -> String {
        let ids = self.chat_ids();
        match ids.get(usize::from(pick) % (ids.len() + 1)) {
            Some(id) => id.clone(),
            None => "65f00000000000000000dead".into(),
        }
    }

    fn chat_mut(&mut self, id: &str) -> Option<&mut ModelChat> {
        self.chats.values_mut().find(|c| c.id == id)
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
            let chat = model.chats.entry(key).or_insert_with(|| ModelChat {
                id: view.id.clone(),
                members: [a, b],
                messages: Vec::new(),
            });
            assert_eq!(view.id, chat.id, "a second chat for one pair");
            assert_eq!(
                view.participant.as_ref().map(|p| p.id.as_str()),
                Some(b_id.as_str())
            );
            assert_eq!(
                view.last_message.as_ref().map(|m| m.seq),
                (!chat.messages.is_empty()).then_some(chat.messages.len() as u64)
            );
        }
        Op::Join { user, chat } => {
            let slot = user % USERS;
            let Some(user_id) = model.users.get(&slot) else {
                return;
            };
            let chat_id = model.chat_id(chat);
            let member = model
                .chats
                .values()
                .any(|c| c.id == chat_id && c.members.contains(&slot));
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
            let Some(chat) = model
                .chats
                .values()
                .find(|c| c.id == chat_id && c.members.contains(&slot))
            else {
                assert_eq!(result.err(), Some(Refusal::ChatNotFound));
                return;
            };
            let (messages, has_more) = result.expect("sync");
            let n = chat.messages.len() as u64;
            let first = u64::from(after % 16) + 1;
            let last = (first + limit.max(1) - 1).min(n);
            let want: Vec<u64> = (first..=last).collect();
            assert_eq!(messages.iter().map(|m| m.seq).collect::<Vec<_>>(), want);
            for m in &messages {
                assert_eq!(m.text, chat.messages[m.seq as usize - 1].text);
            }
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
            let Some(chat) = model
                .chats
                .values()
                .find(|c| c.id == chat_id && c.members.contains(&slot))
            else {
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
    }
}

async fn send(server: &Server, model: &mut Model, op: SendOp) {
    let slot = op.user % USERS;
    let Some(user_id) = model.users.get(&slot).cloned() else {
        return;
    };
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
    let result = server.app.send(&user, command).await;

    // The model, in the contract's order of checks.
    let trimmed = raw_text.trim().to_owned();
    let expected: Result<(u64, bool), Refusal> = 'expected: {
        if cmid.as_ref().is_some_and(|c| c.chars().count() > 64) {
            break 'expected Err(Refusal::InvalidPayload);
        }
        let Some(chat) = model
            .chat_mut(&chat_id)
            .filter(|c| c.members.contains(&slot))
        else {
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
        });
        Ok((chat.messages.len() as u64, true))
    };
    match (result, expected) {
        (Ok(sent), Ok((seq, created))) => {
            assert_eq!((sent.message.seq, sent.created), (seq, created));
            assert_eq!(sent.message.chat, chat_id);
            assert_eq!(sent.message.sender.id, user_id);
            let chat = model
                .chats
                .values()
                .find(|c| c.id == chat_id)
                .expect("model chat");
            assert_eq!(sent.message.text, chat.messages[seq as usize - 1].text);
            let members: BTreeSet<String> = chat
                .members
                .iter()
                .map(|s| model.users[s].clone())
                .collect();
            assert_eq!(
                sent.members.iter().cloned().collect::<BTreeSet<_>>(),
                members
            );
        }
        (Err(refusal), Err(expected)) => assert_eq!(refusal, expected),
        (result, expected) => panic!("send {op:?}: service {result:?}, model {expected:?}"),
    }
}

async fn check_invariants(server: &Server, model: &Model) {
    let problems = server.store.check_consistency().expect("readable");
    assert!(problems.is_empty(), "{problems:?}");
    for chat in model.chats.values() {
        let stored = server
            .store
            .chat(&chat.id)
            .expect("read")
            .expect("chat exists");
        let n = chat.messages.len() as u64;
        assert_eq!(stored.last_seq, n);
        let messages = server.store.messages(&chat.id, 1..n + 1).expect("read");
        let got: Vec<ModelMessage> = messages
            .iter()
            .map(|m| ModelMessage {
                sender: *model
                    .users
                    .iter()
                    .find(|(_, id)| **id == m.sender)
                    .expect("known sender")
                    .0,
                text: m.text.clone(),
                cmid: m.client_msg_id.clone(),
            })
            .collect();
        assert_eq!(got, chat.messages);
        assert!(
            messages
                .iter()
                .enumerate()
                .all(|(i, m)| m.seq == i as u64 + 1)
        );
    }
    for (slot, id) in &model.users {
        let mut listed: Vec<String> = server
            .app
            .chats_of(id)
            .expect("chats")
            .into_iter()
            .map(|c| c.id)
            .collect();
        listed.sort();
        let mut want: Vec<String> = model
            .chats
            .values()
            .filter(|c| c.members.contains(slot))
            .map(|c| c.id.clone())
            .collect();
        want.sort();
        assert_eq!(listed, want);
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
