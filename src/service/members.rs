//! Group chats: creating one, listing its members, adding, removing (and leaving), renaming.
//!
//! Input is checked here (names, id lists and their bounds); who may do what is checked by the
//! writer against the members as of the change's commit (`domain::membership`), so two owners'
//! concurrent changes, or a change racing with a removal, always meet one consistent member list.
//! Each change is committed like a message, taking the chat's next seq as a system message, and
//! its events reach the sockets from the commit feed (`transport::deliver`), not from here.

use super::views::{ChatView, MemberView};
use super::{ApiError, App, storage_failed};
use crate::domain::ids::is_valid_id;
use crate::domain::membership::{self, MembershipError};
use crate::domain::time::rfc3339_ms;
use crate::limits::MEMBERS_PER_ADD_MAX;
use crate::storage::{Change, GroupChange, GroupOutcome, GroupState, NewGroup};

/// What the client is told when a change is refused.
fn refused(error: MembershipError) -> ApiError {
    match error {
        MembershipError::NotMember => ApiError::NotFound("Chat not found"),
        MembershipError::NotGroup => ApiError::BadRequest(error.to_string()),
        MembershipError::NotOwner => ApiError::Forbidden("Only the owner can do that"),
        MembershipError::TooManyMembers => ApiError::BadRequest(error.to_string()),
        MembershipError::NotAMember => ApiError::NotFound("Member not found"),
        MembershipError::UnknownUser => ApiError::NotFound("User not found"),
    }
}

/// The ids of an add or a creation, checked: at most `MEMBERS_PER_ADD_MAX` (at least one for an
/// add), each a well-formed id (one that is not names no user).
fn checked_ids(ids: Vec<String>, field: &str, allow_empty: bool) -> Result<Vec<String>, ApiError> {
    let least = if allow_empty { 0 } else { 1 };
    let ids = membership::bounded_ids(ids, allow_empty).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "{field} must list {least} to {MEMBERS_PER_ADD_MAX} user ids"
        ))
    })?;
    if ids.iter().any(|id| !is_valid_id(id)) {
        return Err(ApiError::NotFound("User not found"));
    }
    Ok(ids)
}

impl App {
    /// `POST /api/chats`: a group of the caller (its owner) and `member_ids`.
    pub async fn create_group(
        &self,
        caller: &str,
        name: &str,
        member_ids: Vec<String>,
    ) -> Result<ChatView, ApiError> {
        let name = membership::group_name(name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let others = checked_ids(member_ids, "memberIds", true)?;
        let group = NewGroup {
            id: self.mint_id(),
            owner: caller.to_owned(),
            name,
            others,
            now_ms: self.now_ms(),
        };
        let outcome = self
            .writer
            .create_group(group)
            .await
            .map_err(storage_failed(ApiError::Unavailable))?;
        self.changed(caller, outcome)
    }

    /// `GET /api/chats/:chatId/members`: the members in joining order (the owner first).
    pub fn members_of_chat(
        &self,
        caller: &str,
        chat_id: &str,
    ) -> Result<Vec<MemberView>, ApiError> {
        let state = self.member_state(caller, chat_id)?;
        let is_group = state.group.is_some();
        let unavailable = storage_failed(ApiError::Unavailable);
        let details = match self.store.member_details(&state.chat) {
            Ok(details) => details,
            Err(error) => return Err(unavailable(error)),
        };
        details
            .into_iter()
            .map(|detail| {
                let role = membership::role_of(&state.chat.members, &detail.user, is_group)
                    .unwrap_or(membership::Role::Member);
                Ok(MemberView {
                    user: self.public_user(&detail.user)?,
                    role,
                    joined_at: rfc3339_ms(detail.joined_ms),
                    last_read_seq: detail.last_read_seq,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(storage_failed(ApiError::Unavailable))
    }

    /// `POST /api/chats/:chatId/members`: the owner adds `user_ids` (members already are
    /// skipped); the chat after it.
    pub async fn add_members(
        &self,
        caller: &str,
        chat_id: &str,
        user_ids: Vec<String>,
    ) -> Result<ChatView, ApiError> {
        let ids = checked_ids(user_ids, "userIds", false)?;
        let ids_needed = ids.len();
        self.change(caller, chat_id, Change::Add(ids), ids_needed)
            .await
    }

    /// `DELETE /api/chats/:chatId/members/:userId`: the owner removes a member, or a member
    /// leaves (removes themself).
    pub async fn remove_member(
        &self,
        caller: &str,
        chat_id: &str,
        user_id: &str,
    ) -> Result<(), ApiError> {
        if !is_valid_id(user_id) {
            return Err(ApiError::NotFound("Member not found"));
        }
        let outcome = self
            .change_outcome(caller, chat_id, Change::Remove(user_id.to_owned()), 1)
            .await?;
        outcome.map(drop).map_err(refused)
    }

    /// `PATCH /api/chats/:chatId`: the owner renames the group; the chat after it.
    pub async fn rename_group(
        &self,
        caller: &str,
        chat_id: &str,
        name: &str,
    ) -> Result<ChatView, ApiError> {
        let name = membership::group_name(name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        self.change(caller, chat_id, Change::Rename(name), 1).await
    }

    async fn change(
        &self,
        caller: &str,
        chat_id: &str,
        change: Change,
        ids_needed: usize,
    ) -> Result<ChatView, ApiError> {
        let outcome = self
            .change_outcome(caller, chat_id, change, ids_needed)
            .await?;
        self.changed(caller, outcome)
    }

    async fn change_outcome(
        &self,
        caller: &str,
        chat_id: &str,
        change: Change,
        ids_needed: usize,
    ) -> Result<GroupOutcome, ApiError> {
        if !is_valid_id(chat_id) {
            return Err(ApiError::NotFound("Chat not found"));
        }
        let request = GroupChange {
            chat: chat_id.to_owned(),
            by: caller.to_owned(),
            change,
            message_ids: (0..ids_needed).map(|_| self.mint_id()).collect(),
            now_ms: self.now_ms(),
        };
        self.writer
            .change_group(request)
            .await
            .map_err(storage_failed(ApiError::Unavailable))
    }

    /// The chat a change or creation left, as the caller sees it.
    fn changed(&self, caller: &str, outcome: GroupOutcome) -> Result<ChatView, ApiError> {
        let GroupState { chat, .. } = outcome.map_err(refused)?;
        self.chat_of(caller, &chat.id)
    }
}
