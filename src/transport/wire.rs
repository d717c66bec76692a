//! The contract's JSON field names for the service's objects.
//!
//! The service hands out plain data (`service::views`); this is the one place that says how each
//! object is spelled on the wire. The names follow the seed application (`_id`, `createdAt`, …)
//! so its clients work unchanged. Each view is serialised through a `…Wire` struct whose
//! derived OpenAPI schema is thus exactly what goes on the wire.

use std::borrow::Cow;

use serde::Serialize;
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use crate::service::views::{ChatView, EventView, MemberView, MessageView, PublicUser, UserView};

/// A user as they see themselves.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = User)]
struct UserWire<'a> {
    #[serde(rename = "_id")]
    id: &'a str,
    name: &'a str,
    email: &'a str,
    /// An `https:` URL, or empty.
    avatar: &'a str,
    created_at: &'a str,
    updated_at: &'a str,
}

/// A user as embedded in other objects; `email` is empty unless the viewer searched for it.
#[derive(Serialize, ToSchema)]
#[schema(as = PublicUser)]
struct PublicUserWire<'a> {
    #[serde(rename = "_id")]
    id: &'a str,
    name: &'a str,
    email: &'a str,
    avatar: &'a str,
}

/// A message. System messages (a group's membership changes and renames) also carry
/// `kind: "system"` and `event`; a message a user sent keeps the seed's shape, without them.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Message)]
struct MessageWire<'a> {
    #[serde(rename = "_id")]
    id: &'a str,
    chat: &'a str,
    sender: &'a PublicUser,
    text: &'a str,
    /// Gapless and ascending within a chat, from 1.
    seq: u64,
    client_msg_id: Option<&'a str>,
    created_at: &'a str,
    updated_at: &'a str,
    /// `"system"` on system messages only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    kind: Option<&'static str>,
    /// What a system message records; absent on a message a user sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    event: Option<&'a EventView>,
}

/// A system message's event.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = SystemEvent)]
struct EventWire<'a> {
    /// `added`, `removed`, `left` or `renamed`.
    #[serde(rename = "type")]
    kind: &'a str,
    /// The user the event is about.
    user_id: &'a str,
    /// Who made the change.
    by: &'a str,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Chat)]
struct ChatWire<'a> {
    #[serde(rename = "_id")]
    id: &'a str,
    /// `direct` (two members who never change) or `group`.
    kind: &'a str,
    /// A group's name; `null` for a direct chat.
    name: Option<&'a str>,
    /// The other member of a direct chat, as seen by the requesting user; `null` for a group.
    participant: Option<&'a PublicUser>,
    participants: &'a [PublicUser],
    member_count: usize,
    /// A group's owner; `null` for a direct chat (and a group everyone left).
    owner_id: Option<&'a str>,
    last_message: Option<&'a MessageView>,
    last_message_at: &'a str,
    created_at: &'a str,
    /// The viewer's read position in the chat.
    last_read_seq: u64,
    /// Messages above `lastReadSeq` that others sent (system messages excluded).
    unread_count: u64,
}

/// A member of a chat.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Member)]
struct MemberWire<'a> {
    user: &'a PublicUser,
    /// `owner` or `member`.
    role: &'a str,
    joined_at: &'a str,
    last_read_seq: u64,
}

impl Serialize for UserView {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        UserWire {
            id: &self.id,
            name: &self.name,
            email: &self.email,
            avatar: &self.avatar,
            created_at: &self.created_at,
            updated_at: &self.updated_at,
        }
        .serialize(serializer)
    }
}

impl Serialize for PublicUser {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        PublicUserWire {
            id: &self.id,
            name: &self.name,
            email: &self.email,
            avatar: &self.avatar,
        }
        .serialize(serializer)
    }
}

impl Serialize for MessageView {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        MessageWire {
            id: &self.id,
            chat: &self.chat,
            sender: &self.sender,
            text: &self.text,
            seq: self.seq,
            client_msg_id: self.client_msg_id.as_deref(),
            created_at: &self.created_at,
            updated_at: &self.updated_at,
            kind: self.event.as_ref().map(|_| "system"),
            event: self.event.as_ref(),
        }
        .serialize(serializer)
    }
}

impl Serialize for EventView {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        EventWire {
            kind: self.kind,
            user_id: &self.user_id,
            by: &self.by,
        }
        .serialize(serializer)
    }
}

impl Serialize for ChatView {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ChatWire {
            id: &self.id,
            kind: self.kind.as_str(),
            name: self.name.as_deref(),
            participant: self.participant.as_ref(),
            participants: &self.participants,
            member_count: self.member_count,
            owner_id: self.owner_id.as_deref(),
            last_message: self.last_message.as_ref(),
            last_message_at: &self.last_message_at,
            created_at: &self.created_at,
            last_read_seq: self.last_read_seq,
            unread_count: self.unread_count,
        }
        .serialize(serializer)
    }
}

impl Serialize for MemberView {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        MemberWire {
            user: &self.user,
            role: self.role.as_str(),
            joined_at: &self.joined_at,
            last_read_seq: self.last_read_seq,
        }
        .serialize(serializer)
    }
}

/// Each view's OpenAPI schema is the one of the struct it is serialised through, so the
/// document describes exactly what goes on the wire.
macro_rules! schema_through {
    ($view:ty, $wire:ident) => {
        impl PartialSchema for $view {
            fn schema() -> RefOr<Schema> {
                <$wire<'static> as PartialSchema>::schema()
            }
        }

        impl ToSchema for $view {
            fn name() -> Cow<'static, str> {
                <$wire<'static> as ToSchema>::name()
            }

            fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                <$wire<'static> as ToSchema>::schemas(schemas)
            }
        }
    };
}

schema_through!(UserView, UserWire);
schema_through!(PublicUser, PublicUserWire);
schema_through!(MessageView, MessageWire);
schema_through!(EventView, EventWire);
schema_through!(ChatView, ChatWire);
schema_through!(MemberView, MemberWire);

/// Which end of a page is kept when it is cut to its byte bound: the lowest seqs for `sync` and
/// `after=` (the client continues above them), the highest for the newest page and `before=`
/// (the client pages on below them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Lowest,
    Highest,
}

/// Counts the bytes serde_json writes, so that a size is exactly what goes on the wire.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The bytes of `value` as JSON, escapes included.
pub fn json_len<T: Serialize>(value: &T) -> usize {
    let mut count = ByteCount(0);
    serde_json::to_writer(&mut count, value).expect("our views always serialise");
    count.0
}

/// A page cut to a byte bound: whether messages were left out, and the bytes of what is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fitted {
    pub cut: bool,
    pub bytes: usize,
}

/// Cuts `messages` (ascending by seq) to what fits in `budget` bytes of JSON array, keeping the
/// `keep` end; one message is always kept, whatever its size, so a client makes progress.
pub fn fit_to_bytes(messages: &mut Vec<MessageView>, budget: usize, keep: Keep) -> Fitted {
    let mut bytes = 2; // the array's brackets
    let mut kept = 0;
    let order: Box<dyn Iterator<Item = &MessageView>> = match keep {
        Keep::Lowest => Box::new(messages.iter()),
        Keep::Highest => Box::new(messages.iter().rev()),
    };
    for message in order {
        let size = json_len(message) + usize::from(kept > 0); // the comma before it
        if kept > 0 && bytes + size > budget {
            break;
        }
        bytes += size;
        kept += 1;
    }
    let cut = kept < messages.len();
    match keep {
        Keep::Lowest => messages.truncate(kept),
        Keep::Highest => {
            messages.drain(..messages.len() - kept);
        }
    }
    Fitted { cut, bytes }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64, text: &str) -> MessageView {
        MessageView {
            id: format!("m{seq}"),
            chat: "c".into(),
            sender: PublicUser {
                id: "u".into(),
                name: "Ada".into(),
                email: "ada@example.com".into(),
                avatar: String::new(),
            },
            text: text.into(),
            seq,
            client_msg_id: None,
            created_at: "2026-11-29T20:00:00.000Z".into(),
            updated_at: "2026-11-29T20:00:00.000Z".into(),
            event: None,
        }
    }

    fn seqs(messages: &[MessageView]) -> Vec<u64> {
        messages.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn control_characters_count_as_their_escapes() {
        let controls = "\u{1}".repeat(4000);
        let one = json_len(&message(1, &controls));
        assert!(one > 4000 * 6, "{one}");
        let mut page: Vec<_> = (1..=3).map(|seq| message(seq, &controls)).collect();
        let fitted = fit_to_bytes(&mut page, 2 * one + 3, Keep::Lowest);
        assert_eq!(seqs(&page), [1, 2]);
        assert_eq!(
            fitted,
            Fitted {
                cut: true,
                bytes: 2 * one + 3
            }
        );
        assert_eq!(fitted.bytes, serde_json::to_vec(&page).unwrap().len());
    }

    #[test]
    fn the_kept_end_follows_the_paging_direction() {
        let mut page: Vec<_> = (1..=10).map(|seq| message(seq, "hello")).collect();
        let each = json_len(&page[0]);
        let fitted = fit_to_bytes(&mut page, 2 + 3 * (each + 3), Keep::Highest);
        assert_eq!(seqs(&page), [8, 9, 10]);
        assert!(fitted.cut);
        let mut whole: Vec<_> = (1..=3).map(|seq| message(seq, "hello")).collect();
        assert!(!fit_to_bytes(&mut whole, 10_000, Keep::Lowest).cut);
        assert_eq!(whole.len(), 3);
    }

    #[test]
    fn one_message_is_kept_whatever_its_size() {
        let mut page = vec![message(1, &"x".repeat(1000)), message(2, "y")];
        let fitted = fit_to_bytes(&mut page, 10, Keep::Lowest);
        assert_eq!(seqs(&page), [1]);
        assert!(fitted.cut && fitted.bytes > 1000);
    }
}
