//! `socket_payloads`: arbitrary JSON as the payload of every client event, through the same
//! decoding (`transport::payload`), validation and service calls the Socket.IO handlers make.
//!
//! Input: the first byte picks the event (join-chat, leave-chat, send-message, typing, sync); the
//! rest is the payload as JSON text, or, when it is not JSON, a value built from the bytes. The
//! server (rebuilt every few thousand cases) has the caller in one chat, which starts with three
//! messages, and a chat the caller is not in; the target predicts every answer from the contract
//! and the chat's current state, not just that nothing panicked. Every refusal must be one of the
//! contract's messages.

#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use palaver::domain::validate;
use palaver::service::{Refusal, SendMessage};
use palaver::limits::{CLIENT_MSG_ID_CHARS_MAX, PAGE_DEFAULT, PAGE_MAX};
use palaver::storage::UserRecord;
use palaver::transport::payload;
use palaver_fuzz::{REFUSALS, Server, config, with_fixture};
use serde_json::{Map, Number, Value};

/// Messages in the caller's chat when the fixture is built.
const EXISTING: u64 = 3;

fuzz_target!(|data: &[u8]| {
    let Some((&event, rest)) = data.split_first() else {
        return;
    };
    let value = match serde_json::from_slice::<Value>(rest) {
        Ok(value) => value,
        Err(_) => match arbitrary_value(&mut Unstructured::new(rest), 0) {
            Ok(value) => value,
            Err(_) => return,
        },
    };
    check_validators(&value);
    with_fixture(5000, Fixture::build, async |fixture: &Fixture| {
        // A second per case: the send bucket refills faster than cases can drain it.
        fixture.server.clock.advance(1000);
        handle(fixture, event % 5, &value).await;
    });
});

struct Fixture {
    server: Server,
    ada: UserRecord,
    cy: UserRecord,
    chat: String,
}

impl Fixture {
    async fn build() -> Self {
        let mut config = config();
        config.send_burst = 1000;
        let server = Server::start(&config).await;
        let ada = server.user("ada0000000000000000000001", "Ada").await;
        let bob = server.user("bob0000000000000000000002", "Bob").await;
        let cy = server.user("cyc0000000000000000000003", "Cy").await;
        let chat = server
            .app
            .open_chat_with(&ada.id, &bob.id)
            .await
            .expect("chat")
            .id;
        // A chat the caller is not in: must look exactly like one that does not exist.
        let foreign = server
            .app
            .open_chat_with(&bob.id, &cy.id)
            .await
            .expect("chat")
            .id;
        assert_ne!(chat, foreign);
        for n in 1..=EXISTING {
            let command = SendMessage {
                chat_id: chat.clone(),
                text: format!("m{n}"),
                client_msg_id: Some(format!("seed-{n}")),
            };
            server.app.send(&ada, command).await.expect("seed message");
        }
        Self {
            server,
            ada,
            cy,
            chat,
        }
    }
}

/// A JSON value from raw bytes, nested at most four deep, biased to the keys the events use.
fn arbitrary_value(u: &mut Unstructured, depth: u32) -> arbitrary::Result<Value> {
    const KEYS: [&str; 7] = [
        "chatId",
        "text",
        "clientMsgId",
        "isTyping",
        "afterSeq",
        "limit",
        "x",
    ];
    let kind = if depth >= 4 {
        u.int_in_range(0..=4)?
    } else {
        u.int_in_range(0..=6)?
    };
    Ok(match kind {
        0 => Value::Null,
        1 => Value::Bool(bool::arbitrary(u)?),
        2 => Value::Number(Number::from(i64::arbitrary(u)?)),
        3 => Number::from_f64(f64::arbitrary(u)?).map_or(Value::Null, Value::Number),
        4 => Value::String(String::arbitrary(u)?),
        5 => {
            let n = u.int_in_range(0..=4)?;
            Value::Array(
                (0..n)
                    .map(|_| arbitrary_value(u, depth + 1))
                    .collect::<Result<_, _>>()?,
            )
        }
        _ => {
            let mut fields = Map::new();
            for _ in 0..u.int_in_range(0..=5)? {
                let key = if bool::arbitrary(u)? {
                    (*u.choose(&KEYS)?).to_owned()
                } else {
                    String::arbitrary(u)?
                };
                fields.insert(key, arbitrary_value(u, depth + 1)?);
            }
            Value::Object(fields)
        }
    })
}

/// Every string in the payload through the account validators: no panic, and what they accept
/// they accept again unchanged (stored values are fixed points).
fn check_validators(value: &Value) {
    match value {
        Value::String(s) => {
            if let Ok(name) = validate::name(s) {
                assert_eq!(validate::name(&name), Ok(name.clone()));
            }
            if let Ok(email) = validate::email(s) {
                assert_eq!(validate::email(&email), Ok(email.clone()));
            }
            let _ = validate::password(s);
        }
        Value::Array(items) => items.iter().for_each(check_validators),
        Value::Object(fields) => fields.values().for_each(check_validators),
        _ => {}
    }
}

fn assert_contract(refusal: Refusal) {
    assert!(
        REFUSALS.contains(&refusal.to_string().as_str()),
        "refusal {refusal:?} is not a contract message"
    );
}

async fn handle(fixture: &Fixture, event: u8, value: &Value) {
    let (server, ada, cy) = (&fixture.server, &fixture.ada, &fixture.cy);
    let chat = &fixture.chat;
    let is_ours = |id: &str| id == chat;
    match event {
        // join-chat: any decoding failure is `Chat not found` (the handler maps it so).
        0 => {
            let result = payload::chat_id(value)
                .map_err(|_| Refusal::ChatNotFound)
                .and_then(|id| server.app.member_chat(&ada.id, id).map(|c| c.id));
            match (&result, payload::chat_id(value)) {
                (Ok(id), Ok(asked)) => assert!(is_ours(asked) && id == chat),
                (Err(refusal), asked) => {
                    assert_eq!(*refusal, Refusal::ChatNotFound);
                    assert!(asked.is_err() || !is_ours(asked.unwrap()));
                }
                (Ok(_), Err(_)) => unreachable!("joined without a chat id"),
            }
        }
        // leave-chat: only the shape is checked; leaving a room one is not in is harmless.
        1 => {
            if let Err(refusal) = payload::chat_id(value) {
                assert_eq!(refusal, Refusal::InvalidPayload);
            }
        }
        2 => send(server, ada, chat, value).await,
        // typing: refusals are dropped silently, but only members may type into a chat.
        3 => {
            if let Ok((id, _)) = payload::typing(value) {
                let allowed = server.app.member_chat(&ada.id, id).is_ok();
                assert_eq!(allowed, is_ours(id));
                assert!(server.app.member_chat(&cy.id, id).is_err());
            }
        }
        _ => sync(server, ada, chat, value),
    }
}

async fn send(server: &Server, ada: &UserRecord, chat_id: &str, value: &Value) {
    let command = match payload::send(value) {
        Ok(command) => command,
        Err(refusal) => {
            assert_eq!(refusal, Refusal::InvalidPayload);
            return;
        }
    };
    // What the contract says should happen, in the order the service checks, given the chat's
    // current state (earlier cases may have added messages).
    let cmid = command.client_msg_id.as_deref().filter(|id| !id.is_empty());
    // The contract's text rules: control characters other than newline and tab are dropped,
    // then the text is trimmed; white space and format characters alone are empty.
    let kept: String = command
        .text
        .chars()
        .filter(|&c| !c.is_control() || c == '\n' || c == '\t')
        .collect();
    let trimmed = kept.trim();
    let last_seq = server
        .store
        .chat(chat_id)
        .expect("read")
        .expect("chat")
        .last_seq;
    let original = cmid.and_then(|id| {
        server
            .store
            .message_by_client_id(chat_id, &ada.id, id)
            .expect("read")
    });
    let expected = if cmid.is_some_and(|id| id.chars().count() > CLIENT_MSG_ID_CHARS_MAX) {
        Err(Refusal::InvalidPayload)
    } else if command.chat_id != chat_id {
        Err(Refusal::ChatNotFound)
    } else if trimmed
        .chars()
        .all(|c| c.is_whitespace() || validate::is_format(c))
    {
        Err(Refusal::MessageEmpty)
    } else if trimmed.chars().count() > palaver::limits::TEXT_CHARS_DEFAULT {
        Err(Refusal::MessageTooLong)
    } else {
        Ok(())
    };
    let result = server.app.send(ada, command.clone()).await;
    let last_seq_after = server
        .store
        .chat(chat_id)
        .expect("read")
        .expect("chat")
        .last_seq;
    match (result, expected) {
        (Ok(sent), Ok(())) => {
            match original {
                // The same clientMsgId as an earlier message: that message, nothing new.
                Some(original) => {
                    assert!(!sent.created);
                    assert_eq!(sent.message.seq, original.seq);
                    assert_eq!(sent.message.text, original.text);
                    assert_eq!(last_seq_after, last_seq);
                }
                None => {
                    assert!(sent.created);
                    assert_eq!(sent.message.seq, last_seq + 1);
                    assert_eq!(sent.message.text, trimmed);
                    assert_eq!(sent.message.client_msg_id.as_deref(), cmid);
                    assert_eq!(last_seq_after, last_seq + 1);
                }
            }
            let stored = server
                .store
                .messages(chat_id, sent.message.seq..sent.message.seq + 1);
            assert_eq!(stored.expect("read")[0].id, sent.message.id);
        }
        (Err(refusal), Err(expected)) => {
            assert_contract(refusal);
            assert_eq!(refusal, expected);
            assert_eq!(last_seq_after, last_seq, "a refused send changed the chat");
        }
        (result, expected) => panic!("send answered {result:?}, contract says {expected:?}"),
    }
}

fn sync(server: &Server, ada: &UserRecord, chat_id: &str, value: &Value) {
    let command = match payload::sync(value) {
        Ok(command) => command,
        Err(refusal) => {
            assert_eq!(refusal, Refusal::InvalidPayload);
            return;
        }
    };
    let result = server
        .app
        .sync(&ada.id, command.chat_id, command.after_seq, command.limit);
    if command.chat_id != chat_id {
        assert_eq!(result.err(), Some(Refusal::ChatNotFound));
        return;
    }
    let (messages, has_more) = result.expect("sync of a member chat");
    let existing = server
        .store
        .chat(chat_id)
        .expect("read")
        .expect("chat")
        .last_seq;
    let limit = match command.limit {
        None => u64::from(PAGE_DEFAULT),
        Some(n) => n.clamp(1, u64::from(PAGE_MAX)),
    };
    let first = command.after_seq.saturating_add(1);
    let last = command.after_seq.saturating_add(limit).min(existing);
    let expected: Vec<u64> = (first..=last).collect();
    let got: Vec<u64> = messages.iter().map(|m| m.seq).collect();
    assert_eq!(
        got, expected,
        "sync after {} limit {limit}",
        command.after_seq
    );
    assert_eq!(has_more, last < existing);
}
