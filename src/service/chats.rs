//! Chats: the caller's chat list, one chat, opening the one 1:1 chat of a pair, and membership
//! checks.

use super::cache::Members;
use super::views::{ChatView, MessageView, PublicUser};
use super::{ApiError, App, Refusal, storage_failed};
use crate::domain::ids::is_valid_id;
use crate::limits::CHATS_LIST_MAX;
use crate::storage::{ChatRecord, ChatState, StoreError};

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

    /// The Chat object of `state` as `viewer` sees it.
    pub(super) fn chat_view(
        &self,
        state: &ChatState,
        viewer: &str,
    ) -> Result<ChatView, StoreError> {
        let chat = &state.chat;
        let members = self.public_users(&chat.members)?;
        let last = match chat.last_seq {
            0 => None,
            seq => self
                .store
                .messages_with_events(&chat.id, seq..seq + 1)?
                .pop(),
        };
        let last = match last {
            Some((m, event)) => {
                let sender = match members.iter().find(|u| u.id == m.sender) {
                    Some(member) => member.clone(),
                    None => self.public_user(&m.sender)?,
                };
                Some(MessageView::new(m, sender).with_event(event))
            }
            None => None,
        };
        Ok(ChatView::new(state, viewer, members, last))
    }

    /// The caller's chats, newest `lastMessageAt` first.
    pub fn chats_of(&self, caller: &str) -> Result<Vec<ChatView>, ApiError> {
        let mut chats = self
            .store
            .chat_states_of(caller, CHATS_LIST_MAX)
            .map_err(storage_failed(ApiError::Unavailable))?;
        chats.sort_by(|a, b| {
            b.chat
                .last_message_ms
                .cmp(&a.chat.last_message_ms)
                .then_with(|| b.chat.id.cmp(&a.chat.id))
        });
        chats
            .iter()
            .map(|state| {
                self.chat_view(state, caller)
                    .map_err(storage_failed(ApiError::Unavailable))
            })
            .collect()
    }

    /// `GET /api/chats/:chatId`: one chat of the caller; 404 `Chat not found` for anyone else.
    pub fn chat_of(&self, caller: &str, chat_id: &str) -> Result<ChatView, ApiError> {
        let state = self.member_state(caller, chat_id)?;
        self.chat_view(&state, caller)
            .map_err(storage_failed(ApiError::Unavailable))
    }

    /// The chat as the caller sees it, if they are a member (`Chat not found` otherwise).
    pub(super) fn member_state(&self, caller: &str, chat_id: &str) -> Result<ChatState, ApiError> {
        if !is_valid_id(chat_id) {
            return Err(ApiError::NotFound("Chat not found"));
        }
        match self.store.chat_state(chat_id, caller) {
            Ok(Some(state)) if state.chat.has_member(caller) => Ok(state),
            Ok(_) => Err(ApiError::NotFound("Chat not found")),
            Err(error) => Err(storage_failed(ApiError::Unavailable)(error)),
        }
    }

    /// The Chat object of `chat_id` as `viewer` sees it, for an event; `None` when the chat is
    /// gone or storage fails (logged; the client reads its chat list again).
    pub fn chat_for(&self, chat_id: &str, viewer: &str) -> Option<ChatView> {
        let state = match self.store.chat_state(chat_id, viewer) {
            Ok(state) => state?,
            Err(error) => return storage_failed(None)(error),
        };
        match self.chat_view(&state, viewer) {
            Ok(view) => Some(view),
            Err(error) => storage_failed(None)(error),
        }
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
        self.chat_of(caller, &chat.id)
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

    /// The chat's current members, whoever asks; `None` when there is no such chat or storage
    /// fails (logged).
    pub fn members_now(&self, chat_id: &str) -> Option<Members> {
        match self.store.members_of(chat_id) {
            Ok(members) => members,
            Err(error) => storage_failed(None)(error),
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
        match self.store.members_of(chat_id) {
            Ok(Some(members)) if members.iter().any(|m| m == user) => Ok(members),
            Ok(_) => Err(Refusal::ChatNotFound),
            Err(error) => Err(storage_failed(on_storage_failure)(error)),
        }
    }
}
