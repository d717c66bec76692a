//! Messages: history pages, `sync`, sending, and what a committed message is delivered as.
//!
//! A send is validated, rate-limited and appended through the writer; its answer (the stored
//! message, or the original for a retry) goes back to the sender. Delivery to the other sockets
//! does not happen here: the writer publishes every committed message on its commit feed, in
//! commit order, and [`App::delivery`] turns each into what the transport fans out.

use super::cache::Members;
use super::views::{MessageView, PublicUser};
use super::{ApiError, App, Refusal, storage_failed};
use crate::domain::page::{Anchor, clamp_limit, has_more_after, seq_range};
use crate::domain::validate;
use crate::limits::{PAGE_DEFAULT, PAGE_MAX};
use crate::storage::{
    AppendOutcome, ChatRecord, MessageRecord, NewMessage, StoreError, UserRecord,
};

/// `send-message` or `POST /api/messages/chat/:chatId`, as each transport decoded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendMessage {
    pub chat_id: String,
    pub text: String,
    pub client_msg_id: Option<String>,
}

/// A message that was accepted by `send`: the view to answer the sender with.
#[derive(Debug, Clone)]
pub struct Sent {
    pub message: MessageView,
    /// False when the send was an idempotent retry: the original, stored earlier.
    pub created: bool,
    pub members: Members,
}

/// A committed message and the members whose sockets receive it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: MessageView,
    pub members: Members,
}

impl App {
    /// Views of `records`, all of `chat`. Senders are members, whose public profiles are read
    /// once per page rather than once per message.
    fn message_views(
        &self,
        chat: &ChatRecord,
        records: Vec<MessageRecord>,
    ) -> Result<Vec<MessageView>, StoreError> {
        let members = self.public_users(&chat.members)?;
        records
            .into_iter()
            .map(|m| {
                let sender = match members.iter().find(|u| u.id == m.sender) {
                    Some(member) => member.clone(),
                    None => self.public_user(&m.sender)?,
                };
                Ok(MessageView::new(m, sender))
            })
            .collect()
    }

    /// Takes one of the user's read tokens (`sync`, history).
    fn take_read(&self, caller: &str) -> Result<(), Refusal> {
        let now = self.now_ms();
        let mut limiter = self.read_limiter.lock().expect("never poisoned");
        match limiter.try_take(caller, now) {
            true => Ok(()),
            false => Err(Refusal::TooManyRequests),
        }
    }

    /// A history page, ascending by seq.
    pub fn history(
        &self,
        caller: &str,
        chat_id: &str,
        anchor: Anchor,
        limit: Option<u64>,
    ) -> Result<Vec<MessageView>, ApiError> {
        self.take_read(caller)?;
        let chat = self
            .member_chat(caller, chat_id)
            .map_err(|refusal| match refusal {
                Refusal::ChatNotFound => ApiError::NotFound("Chat not found"),
                other => other.into(),
            })?;
        let limit = clamp_limit(limit, PAGE_DEFAULT, PAGE_MAX);
        let unavailable = storage_failed(ApiError::Unavailable);
        let records = self
            .store
            .messages(&chat.id, seq_range(anchor, limit, chat.last_seq));
        match records.and_then(|records| self.message_views(&chat, records)) {
            Ok(views) => Ok(views),
            Err(error) => Err(unavailable(error)),
        }
    }

    /// `sync`: the messages above `after_seq`, and whether there are more.
    pub fn sync(
        &self,
        caller: &str,
        chat_id: &str,
        after_seq: u64,
        limit: Option<u64>,
    ) -> Result<(Vec<MessageView>, bool), Refusal> {
        self.take_read(caller)?;
        let chat = self.member_chat(caller, chat_id)?;
        let limit = clamp_limit(limit, PAGE_DEFAULT, PAGE_MAX);
        let range = seq_range(Anchor::After(after_seq), limit, chat.last_seq);
        let has_more = has_more_after(&range, chat.last_seq);
        let views = self
            .store
            .messages(&chat.id, range)
            .and_then(|records| self.message_views(&chat, records))
            .map_err(storage_failed(Refusal::Unavailable))?;
        Ok((views, has_more))
    }

    /// Validates, deduplicates, rate-limits and durably appends a message.
    pub async fn send(&self, sender: &UserRecord, command: SendMessage) -> Result<Sent, Refusal> {
        let SendMessage {
            chat_id,
            text,
            client_msg_id,
        } = command;
        let client_msg_id = validate::client_msg_id(client_msg_id.as_deref())?;
        let members = self.chat_members(&sender.id, &chat_id, Refusal::SendFailed)?;
        let text = validate::text(&text, self.policy.max_text_chars)?;
        let failed = || storage_failed(Refusal::SendFailed);
        let now = self.now_ms();
        let limiter = || self.send_limiter.lock().expect("never poisoned");
        if !limiter().try_take(&sender.id, now) {
            // A retry of a committed send answers with the original and is not rate limited.
            // Only refused sends look for one here; the writer finds the others (below).
            let Some(cmid) = &client_msg_id else {
                return Err(Refusal::RateLimited);
            };
            let original = self
                .store
                .message_by_client_id(&chat_id, &sender.id, cmid)
                .map_err(failed())?
                .ok_or(Refusal::RateLimited)?;
            return self
                .sent(members, original, false, sender)
                .map_err(failed());
        }
        let new = NewMessage {
            id: self.mint_id(),
            chat: chat_id,
            sender: sender.id.clone(),
            text,
            client_msg_id,
            now_ms: now,
        };
        match self.writer.append_message(new).await.map_err(failed())? {
            AppendOutcome::Appended(message) => {
                self.sent(members, message, true, sender).map_err(failed())
            }
            AppendOutcome::Duplicate(message) => {
                limiter().give_back(&sender.id);
                self.sent(members, message, false, sender).map_err(failed())
            }
            AppendOutcome::NotMember => Err(Refusal::ChatNotFound),
        }
    }

    fn sent(
        &self,
        members: Members,
        message: MessageRecord,
        created: bool,
        sender: &UserRecord,
    ) -> Result<Sent, StoreError> {
        let sender_view = if message.sender == sender.id {
            PublicUser::from(sender)
        } else {
            self.public_user(&message.sender)?
        };
        Ok(Sent {
            message: MessageView::new(message, sender_view),
            created,
            members,
        })
    }

    /// What a committed message (from the commit feed) is delivered as; `None` when storage
    /// cannot say who receives it (logged; the members recover it with `sync`).
    pub fn delivery(&self, message: MessageRecord) -> Option<Delivery> {
        let members = match self.members_of(&message.chat) {
            Ok(members) => members?,
            Err(error) => return storage_failed(None)(error),
        };
        let sender = match self.public_user(&message.sender) {
            Ok(sender) => sender,
            Err(error) => return storage_failed(None)(error),
        };
        Some(Delivery {
            message: MessageView::new(message, sender),
            members,
        })
    }
}
