//! Decoding of client events into typed commands.
//!
//! Socket.IO payloads are arbitrary JSON; these functions accept exactly the shapes the contract
//! names and refuse everything else with `Invalid payload` (or `Chat not found` for a malformed
//! chat id, which is indistinguishable from an unknown one). They never panic; the fuzz target
//! `socket_payloads` holds them to that.

use serde_json::Value;

use crate::service::{Refusal, SendMessage};

/// `"<chatId>"` or `{ chatId }` (join-chat, leave-chat).
pub fn chat_id(payload: &Value) -> Result<&str, Refusal> {
    match payload {
        Value::String(id) => Ok(id),
        Value::Object(fields) => match fields.get("chatId") {
            Some(Value::String(id)) => Ok(id),
            _ => Err(Refusal::InvalidPayload),
        },
        _ => Err(Refusal::InvalidPayload),
    }
}

fn object(payload: &Value) -> Result<&serde_json::Map<String, Value>, Refusal> {
    payload.as_object().ok_or(Refusal::InvalidPayload)
}

fn required_str<'a>(
    fields: &'a serde_json::Map<String, Value>,
    key: &str,
) -> Result<&'a str, Refusal> {
    fields
        .get(key)
        .and_then(Value::as_str)
        .ok_or(Refusal::InvalidPayload)
}

/// `{ chatId, text, clientMsgId? }`; `clientMsgId` may be absent, null or a string.
pub fn send(payload: &Value) -> Result<SendMessage, Refusal> {
    let fields = object(payload)?;
    send_fields(
        required_str(fields, "chatId")?,
        fields.get("text"),
        fields.get("clientMsgId"),
    )
}

/// A send from its fields, wherever they came from (a socket event's payload, or a REST path
/// and body): `text` a string, `clientMsgId` absent, null or a string.
pub fn send_fields(
    chat_id: &str,
    text: Option<&Value>,
    client_msg_id: Option<&Value>,
) -> Result<SendMessage, Refusal> {
    let client_msg_id = match client_msg_id {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => return Err(Refusal::InvalidPayload),
    };
    let text = text
        .and_then(Value::as_str)
        .ok_or(Refusal::InvalidPayload)?;
    Ok(SendMessage {
        chat_id: chat_id.to_owned(),
        text: text.to_owned(),
        client_msg_id,
    })
}

/// `{ chatId, isTyping }`; a missing or non-boolean `isTyping` counts as its truthiness in the
/// seed's JavaScript (`!!isTyping`), so `1` and `"yes"` mean typing.
pub fn typing(payload: &Value) -> Result<(&str, bool), Refusal> {
    let fields = object(payload)?;
    let is_typing = match fields.get("isTyping") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    };
    Ok((required_str(fields, "chatId")?, is_typing))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncCommand<'a> {
    pub chat_id: &'a str,
    pub after_seq: u64,
    pub limit: Option<u64>,
}

/// A non-negative whole number, as JSON number or numeric string.
fn whole_number(value: &Value) -> Result<u64, Refusal> {
    match value {
        Value::Number(n) => n.as_u64().ok_or(Refusal::InvalidPayload),
        Value::String(s) => s.trim().parse().map_err(|_| Refusal::InvalidPayload),
        _ => Err(Refusal::InvalidPayload),
    }
}

/// `{ chatId, afterSeq, limit? }`; a missing `afterSeq` means from the start.
pub fn sync(payload: &Value) -> Result<SyncCommand<'_>, Refusal> {
    let fields = object(payload)?;
    let after_seq = match fields.get("afterSeq") {
        None | Some(Value::Null) => 0,
        Some(value) => whole_number(value)?,
    };
    let limit = match fields.get("limit") {
        None | Some(Value::Null) => None,
        Some(value) => Some(whole_number(value)?),
    };
    Ok(SyncCommand {
        chat_id: required_str(fields, "chatId")?,
        after_seq,
        limit,
    })
}

/// `{ chatId, seq }` (mark-read): `seq` a non-negative whole number, or a numeric string.
pub fn mark_read(payload: &Value) -> Result<(&str, u64), Refusal> {
    let fields = object(payload)?;
    let seq = read_seq(fields.get("seq"))?;
    Ok((required_str(fields, "chatId")?, seq))
}

/// The `seq` of a mark-read (socket payload or REST body): required, a non-negative whole number.
pub fn read_seq(value: Option<&Value>) -> Result<u64, Refusal> {
    whole_number(value.ok_or(Refusal::InvalidPayload)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chat_ids_in_both_shapes() {
        assert_eq!(chat_id(&json!("c1")), Ok("c1"));
        assert_eq!(chat_id(&json!({"chatId": "c1"})), Ok("c1"));
        for bad in [
            json!(1),
            json!(null),
            json!({}),
            json!({"chatId": 5}),
            json!(["c1"]),
        ] {
            assert_eq!(chat_id(&bad), Err(Refusal::InvalidPayload), "{bad}");
        }
    }

    #[test]
    fn send_payloads() {
        assert_eq!(
            send(&json!({"chatId": "c", "text": "hi", "clientMsgId": "m1"})),
            Ok(SendMessage {
                chat_id: "c".into(),
                text: "hi".into(),
                client_msg_id: Some("m1".into())
            })
        );
        assert_eq!(
            send(&json!({"chatId": "c", "text": "hi", "clientMsgId": null}))
                .unwrap()
                .client_msg_id,
            None
        );
        for bad in [
            json!("c"),
            json!({"text": "hi"}),
            json!({"chatId": "c"}),
            json!({"chatId": "c", "text": 5}),
            json!({"chatId": "c", "text": "hi", "clientMsgId": 7}),
        ] {
            assert_eq!(send(&bad), Err(Refusal::InvalidPayload), "{bad}");
        }
    }

    #[test]
    fn typing_and_sync_payloads() {
        assert_eq!(
            typing(&json!({"chatId": "c", "isTyping": true})),
            Ok(("c", true))
        );
        assert_eq!(typing(&json!({"chatId": "c"})), Ok(("c", false)));
        assert_eq!(
            sync(&json!({"chatId": "c", "afterSeq": 4, "limit": "10"})),
            Ok(SyncCommand {
                chat_id: "c",
                after_seq: 4,
                limit: Some(10)
            })
        );
        assert_eq!(
            sync(&json!({"chatId": "c", "afterSeq": -1})),
            Err(Refusal::InvalidPayload)
        );
        assert_eq!(
            sync(&json!({"chatId": "c", "afterSeq": 1.5})),
            Err(Refusal::InvalidPayload)
        );
    }

    #[test]
    fn mark_read_payloads() {
        assert_eq!(mark_read(&json!({"chatId": "c", "seq": 7})), Ok(("c", 7)));
        assert_eq!(mark_read(&json!({"chatId": "c", "seq": "7"})), Ok(("c", 7)));
        for bad in [
            json!({"chatId": "c"}),
            json!({"chatId": "c", "seq": -1}),
            json!({"chatId": "c", "seq": 2.5}),
            json!({"chatId": "c", "seq": null}),
            json!({"seq": 1}),
            json!("c"),
        ] {
            assert_eq!(mark_read(&bad), Err(Refusal::InvalidPayload), "{bad}");
        }
    }
}
