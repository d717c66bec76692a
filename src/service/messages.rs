//! Messages: history pages, `sync`, sending, and what a committed message is delivered as.
//!
//! A send is validated, rate-limited and appended through the writer; its answer (the stored
//! message, or the original for a retry) goes back to the sender. It comes in two halves,
//! filing and awaiting the commit, so that a socket can have several sends in flight and still
//! get them stored and answered in the order it sent them. Delivery to the other sockets
//! does not happen here: the writer publishes every committed message on its commit feed, in
//! commit order, and [`App::delivery`] turns each into what the transport fans out.

use std::sync::MutexGuard;

use super::cache::Members;
use super::views::{MessageView, PublicUser};
use super::{ApiError, App, Refusal, storage_failed};
use crate::domain::page::{Anchor, clamp_limit, has_more_after, seq_range};
use crate::domain::rate::KeyedLimiter;
use crate::domain::validate;
use crate::limits::{PAGE_DEFAULT, PAGE_MAX};
use crate::storage::{
    AppendOutcome, ChatRecord, Filed, MessageRecord, NewMessage, StoreError, SystemEvent,
    UserRecord,
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

/// A committed message and the members whose sockets receive it (the members as of its
/// commit).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: MessageView,
    pub members: Members,
}

/// A send on its way: refused or answered already, or filed with the writer and waiting for
/// its commit. See [`App::file_send`].
pub struct FiledSend {
    stage: Result<SendStage, Refusal>,
    sender: PublicUser,
}

enum SendStage {
    /// A retry of a committed send, answered with the original without writing.
    Answered(MessageRecord, Members),
    Filed(Filed<AppendOutcome>, Members),
}

impl FiledSend {
    /// The send's answer, once its append has committed (durable) or failed.
    pub async fn outcome(self, app: &App) -> Result<Sent, Refusal> {
        let failed = || storage_failed(Refusal::SendFailed);
        let sender = &self.sender;
        match self.stage? {
            SendStage::Answered(original, members) => {
                app.sent(members, original, false, sender).map_err(failed())
            }
            SendStage::Filed(filed, members) => match filed.answer().await.map_err(failed())? {
                AppendOutcome::Appended(message) => {
                    app.sent(members, message, true, sender).map_err(failed())
                }
                AppendOutcome::Duplicate(message) => {
                    app.send_limiter().give_back(&sender.id);
                    app.sent(members, message, false, sender).map_err(failed())
                }
                AppendOutcome::NotMember => Err(Refusal::ChatNotFound),
            },
        }
    }
}

impl App {
    /// Views of `records`, all of `chat`. Senders are members, whose public profiles are read
    /// once per page rather than once per message.
    fn message_views(
        &self,
        chat: &ChatRecord,
        records: Vec<(MessageRecord, Option<SystemEvent>)>,
    ) -> Result<Vec<MessageView>, StoreError> {
        let members = self.public_users(&chat.members)?;
        records
            .into_iter()
            .map(|(m, event)| {
                let sender = match members.iter().find(|u| u.id == m.sender) {
                    Some(member) => member.clone(),
                    None => self.public_user(&m.sender)?,
                };
                Ok(MessageView::new(m, sender).with_event(event))
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
            .messages_with_events(&chat.id, seq_range(anchor, limit, chat.last_seq));
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
            .messages_with_events(&chat.id, range)
            .and_then(|records| self.message_views(&chat, records))
            .map_err(storage_failed(Refusal::Unavailable))?;
        Ok((views, has_more))
    }

    /// Validates, deduplicates, rate-limits and durably appends a message.
    pub async fn send(&self, sender: &UserRecord, command: SendMessage) -> Result<Sent, Refusal> {
        self.file_send(sender, command).await.outcome(self).await
    }

    /// The first half of [`App::send`]: everything up to filing the append with the writer,
    /// without waiting for its commit. Sends filed one after another by one caller get
    /// ascending seqs; [`FiledSend::outcome`] waits for the answer.
    pub async fn file_send(&self, sender: &UserRecord, command: SendMessage) -> FiledSend {
        FiledSend {
            stage: self.file_send_stage(sender, command).await,
            sender: PublicUser::from(sender),
        }
    }

    async fn file_send_stage(
        &self,
        sender: &UserRecord,
        command: SendMessage,
    ) -> Result<SendStage, Refusal> {
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
        if !self.send_limiter().try_take(&sender.id, now) {
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
            return Ok(SendStage::Answered(original, members));
        }
        let new = NewMessage {
            id: self.mint_id(),
            chat: chat_id,
            sender: sender.id.clone(),
            text,
            client_msg_id,
            now_ms: now,
        };
        let filed = self.writer.file_append(new).await.map_err(failed())?;
        Ok(SendStage::Filed(filed, members))
    }

    fn send_limiter(&self) -> MutexGuard<'_, KeyedLimiter> {
        self.send_limiter.lock().expect("never poisoned")
    }

    fn sent(
        &self,
        members: Members,
        message: MessageRecord,
        created: bool,
        sender: &PublicUser,
    ) -> Result<Sent, StoreError> {
        let sender_view = if message.sender == sender.id {
            sender.clone()
        } else {
            self.public_user(&message.sender)?
        };
        Ok(Sent {
            message: MessageView::new(message, sender_view),
            created,
            members,
        })
    }

    /// What a committed message (from the commit feed) is delivered as, to `members` (the
    /// chat's members as of its commit); `None` when storage cannot give its sender's profile
    /// (logged; the members recover it with `sync`).
    pub fn delivery(
        &self,
        message: MessageRecord,
        event: Option<SystemEvent>,
        members: Members,
    ) -> Option<Delivery> {
        let sender = match self.public_user(&message.sender) {
            Ok(sender) => sender,
            Err(error) => return storage_failed(None)(error),
        };
        Some(Delivery {
            message: MessageView::new(message, sender).with_event(event),
            members,
        })
    }

    /// A user's public profile for an event (`member-added`); a storage failure is logged and
    /// answered with the bare id.
    pub fn profile(&self, id: &str) -> PublicUser {
        self.public_user(id).unwrap_or_else(|error| {
            tracing::error!(%error, "storage failure");
            PublicUser::unknown(id)
        })
    }
}
