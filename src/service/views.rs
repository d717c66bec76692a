//! The objects of the contract (user, public user, message, chat), built from stored records.
//!
//! Plain data: what each object holds, with times already in the contract's RFC 3339 form. Their
//! wire names (`_id`, `createdAt`, …) belong to the transport (`transport::wire`).
//!
//! What other users may see is decided here: a public user's `email` is empty (only the user's
//! own `User` object, and a user search naming the exact address, show it), and an avatar that
//! is not an `https:` URL (or `http:` on loopback) is shown as none, whatever is stored.

use crate::domain::time::rfc3339_ms;
use crate::domain::validate::avatar_url;
use crate::storage::{ChatRecord, MessageRecord, UserRecord};

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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatView {
    pub id: String,
    /// The other member, as seen by the requesting user.
    pub participant: Option<PublicUser>,
    pub participants: Vec<PublicUser>,
    pub last_message: Option<MessageView>,
    pub last_message_at: String,
    pub created_at: String,
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
        }
    }
}

impl ChatView {
    pub fn new(
        chat: &ChatRecord,
        viewer: &str,
        members: Vec<PublicUser>,
        last_message: Option<MessageView>,
    ) -> Self {
        Self {
            id: chat.id.clone(),
            participant: members.iter().find(|m| m.id != viewer).cloned(),
            participants: members,
            last_message,
            last_message_at: rfc3339_ms(chat.last_message_ms),
            created_at: rfc3339_ms(chat.created_ms),
        }
    }
}
