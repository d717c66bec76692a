//! Chats: the caller's chat list, opening the one 1:1 chat of a pair, and membership checks.

use std::sync::Arc;

use super::cache::Members;
use super::views::{ChatView, MessageView, PublicUser};
use super::{ApiError, App, Refusal, storage_failed};
use crate::domain::ids::is_valid_id;
use crate::limits::CHATS_LIST_MAX;
use crate::storage::{ChatRecord, StoreError};

impl App {
    /// A user's public profile: from memory when seen before (profiles are never edited).
    pub(super) fn public_user(&self, id: &str) -> Result<PublicUser, StoreError> {
        if let Some(profile) = self.profiles.get(id) {
            return Ok(profile);
        }
        let Some(user) = self.store.user(id)? else {
            return Ok(PublicUser::unknown(id));
        };
        let profile = PublicUser::from(&user);
        self.profiles.insert(id, profile.clone());
        Ok(profile)
    }

    pub(super) fn public_users(&self, ids: &[String]) -> Result<Vec<PublicUser>, StoreError> {
        ids.iter().map(|id| self.public_user(id)).collect()
    }

    fn chat_view(&self, chat: &ChatRecord, viewer: &str) -> Result<ChatView, StoreError> {
        let members = self.public_users(&chat.members)?;
        let last = match chat.last_seq {
            0 => None,
            seq => self.store.messages(&chat.id, seq..seq + 1)?.pop(),
        };
        let last = last.map(|m| {
            let sender = members
                .iter()
                .find(|u| u.id == m.sender)
                .cloned()
                .unwrap_or_else(|| PublicUser::unknown(&m.sender));
            MessageView::new(m, sender)
        });
        Ok(ChatView::new(chat, viewer, members, last))
    }

    /// The caller's chats, newest `lastMessageAt` first.
    pub fn chats_of(&self, caller: &str) -> Result<Vec<ChatView>, ApiError> {
        let mut chats = self
            .store
            .chats_of(caller, CHATS_LIST_MAX)
            .map_err(storage_failed(ApiError::Unavailable))?;
        chats.sort_by(|a, b| {
            b.last_message_ms
                .cmp(&a.last_message_ms)
                .then_with(|| b.id.cmp(&a.id))
        });
        chats
            .iter()
            .map(|chat| {
                self.chat_view(chat, caller)
                    .map_err(storage_failed(ApiError::Unavailable))
            })
            .collect()
    }

    pub async fn open_chat_with(&self, caller: &str, other: &str) -> Result<ChatView, ApiError> {
        if other == caller {
            return Err(ApiError::BadRequest("You cannot chat with yourself".into()));
        }
        if !is_valid_id(other)
            || self
                .store
                .user(other)
                .map_err(storage_failed(ApiError::Unavailable))?
                .is_none()
        {
            return Err(ApiError::NotFound("User not found"));
        }
        let chat = self
            .writer
            .get_or_create_chat(
                self.mint_id(),
                caller.to_owned(),
                other.to_owned(),
                self.now_ms(),
            )
            .await
            .map_err(storage_failed(ApiError::Unavailable))?;
        self.chat_view(&chat, caller)
            .map_err(storage_failed(ApiError::Unavailable))
    }

    /// The chat, if `user` is one of its members; the same refusal whether it does not exist or
    /// the user is an outsider, so outsiders learn nothing. A storage failure is
    /// `Unavailable`, never "not found".
    pub fn member_chat(&self, user: &str, chat_id: &str) -> Result<ChatRecord, Refusal> {
        if !is_valid_id(chat_id) {
            return Err(Refusal::ChatNotFound);
        }
        match self.store.chat(chat_id) {
            Ok(Some(chat)) if chat.has_member(user) => Ok(chat),
            Ok(_) => Err(Refusal::ChatNotFound),
            Err(error) => Err(storage_failed(Refusal::Unavailable)(error)),
        }
    }

    /// The members of the chat, if `user` is one of them (refused as [`member_chat`] refuses),
    /// from memory when the chat was seen before. A storage failure is logged and answered
    /// with `on_storage_failure`.
    ///
    /// [`member_chat`]: Self::member_chat
    pub fn chat_members(
        &self,
        user: &str,
        chat_id: &str,
        on_storage_failure: Refusal,
    ) -> Result<Members, Refusal> {
        if !is_valid_id(chat_id) {
            return Err(Refusal::ChatNotFound);
        }
        match self.members_of(chat_id) {
            Ok(Some(members)) if members.iter().any(|m| m == user) => Ok(members),
            Ok(_) => Err(Refusal::ChatNotFound),
            Err(error) => Err(storage_failed(on_storage_failure)(error)),
        }
    }

    /// The members of an existing chat: from memory when the chat was seen before (a chat's
    /// members never change), else from storage, then remembered.
    pub(super) fn members_of(&self, chat_id: &str) -> Result<Option<Members>, StoreError> {
        if let Some(members) = self.members.get(chat_id) {
            return Ok(Some(members));
        }
        let Some(chat) = self.store.chat(chat_id)? else {
            return Ok(None);
        };
        let members: Members = chat.members.into();
        self.members.insert(chat_id, Arc::clone(&members));
        Ok(Some(members))
    }
}
