//! The contract's JSON field names for the service's objects.
//!
//! The service hands out plain data (`service::views`); this is the one place that says how each
//! object is spelled on the wire. The names follow the seed application (`_id`, `createdAt`, …)
//! so its clients work unchanged.

use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::service::views::{ChatView, EventView, MemberView, MessageView, PublicUser, UserView};

impl Serialize for UserView {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut object = serializer.serialize_struct("User", 6)?;
        object.serialize_field("_id", &self.id)?;
        object.serialize_field("name", &self.name)?;
        object.serialize_field("email", &self.email)?;
        object.serialize_field("avatar", &self.avatar)?;
        object.serialize_field("createdAt", &self.created_at)?;
        object.serialize_field("updatedAt", &self.updated_at)?;
        object.end()
    }
}

impl Serialize for PublicUser {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut object = serializer.serialize_struct("PublicUser", 4)?;
        object.serialize_field("_id", &self.id)?;
        object.serialize_field("name", &self.name)?;
        object.serialize_field("email", &self.email)?;
        object.serialize_field("avatar", &self.avatar)?;
        object.end()
    }
}

impl Serialize for MessageView {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut object = serializer.serialize_struct("Message", 8)?;
        object.serialize_field("_id", &self.id)?;
        object.serialize_field("chat", &self.chat)?;
        object.serialize_field("sender", &self.sender)?;
        object.serialize_field("text", &self.text)?;
        object.serialize_field("seq", &self.seq)?;
        object.serialize_field("clientMsgId", &self.client_msg_id)?;
        object.serialize_field("createdAt", &self.created_at)?;
        object.serialize_field("updatedAt", &self.updated_at)?;
        // Only system messages carry these: a message a user sent keeps the seed's shape.
        if let Some(event) = &self.event {
            object.serialize_field("kind", "system")?;
            object.serialize_field("event", event)?;
        }
        object.end()
    }
}

impl Serialize for EventView {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut object = serializer.serialize_struct("Event", 3)?;
        object.serialize_field("type", self.kind)?;
        object.serialize_field("userId", &self.user_id)?;
        object.serialize_field("by", &self.by)?;
        object.end()
    }
}

impl Serialize for ChatView {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut object = serializer.serialize_struct("Chat", 13)?;
        object.serialize_field("_id", &self.id)?;
        object.serialize_field("kind", self.kind.as_str())?;
        object.serialize_field("name", &self.name)?;
        object.serialize_field("participant", &self.participant)?;
        object.serialize_field("participants", &self.participants)?;
        object.serialize_field("memberCount", &self.member_count)?;
        object.serialize_field("ownerId", &self.owner_id)?;
        object.serialize_field("lastMessage", &self.last_message)?;
        object.serialize_field("lastMessageAt", &self.last_message_at)?;
        object.serialize_field("createdAt", &self.created_at)?;
        object.serialize_field("lastReadSeq", &self.last_read_seq)?;
        object.serialize_field("unreadCount", &self.unread_count)?;
        object.end()
    }
}

impl Serialize for MemberView {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut object = serializer.serialize_struct("Member", 4)?;
        object.serialize_field("user", &self.user)?;
        object.serialize_field("role", self.role.as_str())?;
        object.serialize_field("joinedAt", &self.joined_at)?;
        object.serialize_field("lastReadSeq", &self.last_read_seq)?;
        object.end()
    }
}

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
