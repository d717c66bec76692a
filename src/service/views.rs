//! The objects of the contract (user, public user, message, chat, member), built from stored
//! records.
//!
//! Plain data: what each object holds, with times already in the contract's RFC 3339 form. Their
//! wire names (`_id`, `createdAt`, …) belong to the transport (`transport::wire`).
//!
//! What other users may see is decided here: a public user's `email` is empty (only the user's
//! own `User` object, and a user search naming the exact address, show it), and an avatar that
//! is not an `https:` URL (or `http:` on loopback) is shown as none, whatever is stored.

use crate::domain::membership::{self, Role};
use crate::domain::reads;
use crate::domain::time::rfc3339_ms;
use crate::domain::validate::avatar_url;
use crate::storage::{ChatState, MessageRecord, SystemEvent, UserRecord};

/// A user as they see themselves (`/api/auth/me`, register, login).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserView {
    pub id: String,
    pub name: String,
    pub email: String,
    pub avatar: String,
    pub created_at: String,
    pub updated_at: String,
}

/// A user as embedded in other objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUser {
    pub id: String,
    pub name: String,
    /// Empty unless the viewer already knows the address (see [`PublicUser::found_by_email`]).
    pub email: String,
    pub avatar: String,
}

/// The avatar a client may be handed: the stored one if it is a safe URL, else none.
fn shown_avatar(stored: &str) -> String {
    avatar_url(stored).unwrap_or_default().to_owned()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    pub id: String,
    pub chat: String,
    pub sender: PublicUser,
    pub text: String,
    pub seq: u64,
    pub client_msg_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// What a system message records; `None` for a message a user sent.
    pub event: Option<EventView>,
}

/// A system message's event: `type` (`added`, `removed`, `left`, `renamed`), the user it is
/// about and who made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventView {
    pub kind: &'static str,
    pub user_id: String,
    pub by: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatKind {
    Direct,
    Group,
}

impl ChatKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChatKind::Direct => "direct",
            ChatKind::Group => "group",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatView {
    pub id: String,
    pub kind: ChatKind,
    /// A group's name; `None` for a 1:1 chat.
    pub name: Option<String>,
    /// The other member of a 1:1 chat, as seen by the requesting user; `None` for a group.
    pub participant: Option<PublicUser>,
    pub participants: Vec<PublicUser>,
    pub member_count: usize,
    /// A group's owner; `None` for a 1:1 chat (and for a group everyone left).
    pub owner_id: Option<String>,
    pub last_message: Option<MessageView>,
    pub last_message_at: String,
    pub created_at: String,
    /// The viewer's read position and the messages above it that others sent.
    pub last_read_seq: u64,
    pub unread_count: u64,
}

/// A member as `GET /api/chats/:chatId/members` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub user: PublicUser,
    pub role: Role,
    pub joined_at: String,
    pub last_read_seq: u64,
}

impl From<&UserRecord> for UserView {
    fn from(user: &UserRecord) -> Self {
        Self {
            id: user.id.clone(),
            name: user.name.clone(),
            email: user.email.clone(),
            avatar: shown_avatar(&user.avatar),
            created_at: rfc3339_ms(user.created_ms),
            updated_at: rfc3339_ms(user.updated_ms),
        }
    }
}

impl From<&UserRecord> for PublicUser {
    fn from(user: &UserRecord) -> Self {
        Self {
            id: user.id.clone(),
            name: user.name.clone(),
            email: String::new(),
            avatar: shown_avatar(&user.avatar),
        }
    }
}

impl PublicUser {
    /// The user a search found by their exact email: the searcher typed the address, so it is
    /// shown back (that is how users find each other).
    pub fn found_by_email(user: &UserRecord) -> Self {
        Self {
            email: user.email.clone(),
            ..Self::from(user)
        }
    }

    /// Stands in for a user record that cannot be found (never expected: users are not deleted).
    pub fn unknown(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            name: String::new(),
            email: String::new(),
            avatar: String::new(),
        }
    }
}

impl MessageView {
    pub fn new(message: MessageRecord, sender: PublicUser) -> Self {
        let at = rfc3339_ms(message.created_ms);
        Self {
            id: message.id,
            chat: message.chat,
            sender,
            text: message.text,
            seq: message.seq,
            client_msg_id: message.client_msg_id,
            created_at: at.clone(),
            updated_at: at,
            event: None,
        }
    }

    /// The same message marked as a system message when `event` says it is one.
    pub fn with_event(self, event: Option<SystemEvent>) -> Self {
        Self {
            event: event.map(|e| EventView {
                kind: e.kind.as_str(),
                user_id: e.user,
                by: e.by,
            }),
            ..self
        }
    }
}

impl ChatView {
    /// `state` as its `viewer` sees it; `members` are the public users of its members, in order.
    pub fn new(
        state: &ChatState,
        viewer: &str,
        members: Vec<PublicUser>,
        last_message: Option<MessageView>,
    ) -> Self {
        let chat = &state.chat;
        let (kind, participant, owner_id) = match &state.group {
            None => (
                ChatKind::Direct,
                members.iter().find(|m| m.id != viewer).cloned(),
                None,
            ),
            Some(_) => (
                ChatKind::Group,
                None,
                membership::owner(&chat.members).map(str::to_owned),
            ),
        };
        Self {
            id: chat.id.clone(),
            kind,
            name: state.group.as_ref().map(|g| g.name.clone()),
            participant,
            member_count: members.len(),
            participants: members,
            owner_id,
            last_message,
            last_message_at: rfc3339_ms(chat.last_message_ms),
            created_at: rfc3339_ms(chat.created_ms),
            last_read_seq: state.read.seq,
            unread_count: reads::unread(state.counted, state.read),
        }
    }
}
