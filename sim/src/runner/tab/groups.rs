//! Groups and read state, for one tab: which groups it believes its user is in (and what it does
//! when that changes), the membership changes of its plan (over REST), `mark-read` over the
//! socket or REST, and at the audit its own figures of each chat's read position and unread
//! count, computed from what it received.

use hyper::{Method, StatusCode};
use serde_json::json;

use super::{Failure, REST_TIMEOUT, Tab};
use crate::model::{ChangeOutcome, ChangeRecord, ReadFigures};
use crate::net;
use crate::oracle::{self, ReadAnswer};
use crate::plan::{GroupAction, MARK_BEYOND, Via};

impl Tab {
    /// The tab learned that its user is in group `chat`: it keeps a view of it and syncs it.
    pub(super) fn joined_group(&self, chat: &str) {
        let mut state = self.state.borrow_mut();
        if state.groups.insert(chat.to_owned()) {
            state.views.entry(chat.to_owned()).or_default();
            state.gaps.insert(chat.to_owned());
        }
    }

    /// The tab learned that its user is no longer in group `chat` (an event, a refusal, a chat
    /// list without it): it stops syncing it and forgets its join (its view stays, stale).
    pub(super) fn left_group(&self, chat: &str) {
        let mut state = self.state.borrow_mut();
        state.groups.remove(chat);
        state.joined.remove(chat);
        state.gaps.remove(chat);
    }

    /// The tab's user left or was removed from `chat`: probe that its history is closed.
    pub(super) fn removed_from(&self, chat: &str) {
        self.left_group(chat);
        self.state.borrow_mut().probes.insert(chat.to_owned());
    }

    /// Asks for the newest history page and a `sync` of a group the user was removed from:
    /// refused with 404 / `Chat not found` unless the user is back (the oracle judges either
    /// answer against the membership at the end).
    pub(super) async fn probe_removed(&self, chat: &str) -> Result<(), Failure> {
        if self.believes_member(chat) {
            return Ok(());
        }
        self.trace(format!("probes {}", self.model.chat_label(chat)));
        self.read_history_page(chat).await;
        let answer = self
            .ask(
                "sync",
                &json!({ "chatId": chat, "afterSeq": 0, "limit": 1 }),
            )
            .await?;
        oracle::on_sync_answer(
            &self.model,
            (self.index, self.user),
            chat,
            (true, 0),
            &answer,
        );
        Ok(())
    }

    /// True for a 1:1 chat, and for a group the tab believes its user is in.
    pub(super) fn believes_member(&self, chat: &str) -> bool {
        self.model.group(chat).is_none() || self.state.borrow().groups.contains(chat)
    }

    /// The tab's user has read `chat` up to `seq` (an ack, a `read` event, a chat list).
    pub(super) fn read_up_to(&self, chat: &str, seq: u64) {
        let mut state = self.state.borrow_mut();
        let position = state.read_positions.entry(chat.to_owned()).or_insert(0);
        *position = (*position).max(seq);
    }

    /// Marks `chat` read up to the last seq held without a gap (past it by [`MARK_BEYOND`]
    /// when `beyond`), over the socket or REST.
    pub(super) async fn mark_read(
        &self,
        chat: &str,
        via: Via,
        beyond: bool,
    ) -> Result<(), Failure> {
        if !self.believes_member(chat) {
            return Ok(());
        }
        let seq = self.contiguous(chat) + if beyond { MARK_BEYOND } else { 0 };
        let label = self.model.chat_label(chat);
        let floor = oracle::on_mark_read_asked(&self.model, self.user, chat);
        let answer = match via {
            Via::Socket => {
                let answer = self
                    .ask("mark-read", &json!({ "chatId": chat, "seq": seq }))
                    .await?;
                match (answer["ok"] == json!(true), answer["lastReadSeq"].as_u64()) {
                    (true, Some(read)) => ReadAnswer::Acked(read),
                    _ => match answer["error"].as_str() {
                        // Storage trouble (a mark-read's refusal is a read's: `Storage
                        // unavailable`): it may or may not have moved.
                        Some("Failed to send message" | "Storage unavailable") => {
                            ReadAnswer::Unknown
                        }
                        Some(error) => ReadAnswer::Refused(static_refusal(error)),
                        None => ReadAnswer::Refused("malformed answer"),
                    },
                }
            }
            Via::Rest => {
                let token = self.token();
                let answer = net::rest(
                    Method::POST,
                    &format!("/api/chats/{chat}/read"),
                    token.as_deref(),
                    Some(&json!({ "seq": seq })),
                    REST_TIMEOUT,
                )
                .await;
                match answer {
                    Ok((StatusCode::OK, body)) => match body["lastReadSeq"].as_u64() {
                        Some(read) => ReadAnswer::Acked(read),
                        None => ReadAnswer::Refused("malformed answer"),
                    },
                    Ok((StatusCode::NOT_FOUND, _)) => ReadAnswer::Refused("Chat not found"),
                    Ok((StatusCode::TOO_MANY_REQUESTS, _)) => ReadAnswer::Refused("Rate limited"),
                    Ok((status, _)) if status.is_server_error() => ReadAnswer::Unknown,
                    Ok(_) => ReadAnswer::Refused("unexpected status"),
                    Err(_) => ReadAnswer::Unknown,
                }
            }
        };
        self.trace(format!(
            "mark {label} read up to {seq} via {via:?}: {answer:?}"
        ));
        oracle::on_mark_read_answer(&self.model, self.index, self.user, chat, seq, floor, answer);
        match answer {
            ReadAnswer::Acked(read) => self.read_up_to(chat, read),
            ReadAnswer::Refused("Chat not found") => self.left_group(chat),
            _ => {}
        }
        Ok(())
    }

    /// A change of group `group` (its index among the groups) over REST, whether or not the
    /// tab believes its user may make it: the server refuses what it may not.
    pub(super) async fn change_group(&self, group: usize, change: GroupAction) {
        let Some((chat, users)) = self.group_slot(group) else {
            return;
        };
        let id_of = |u: usize| {
            self.model.state.borrow().users[u]
                .id
                .clone()
                .unwrap_or_default()
        };
        let (method, path, body, kind, target) = match change {
            GroupAction::Add { user } => (
                Method::POST,
                format!("/api/chats/{chat}/members"),
                Some(json!({ "userIds": [id_of(user)] })),
                "added",
                user,
            ),
            GroupAction::Remove { user } => (
                Method::DELETE,
                format!("/api/chats/{chat}/members/{}", id_of(user)),
                None,
                if user == self.user { "left" } else { "removed" },
                user,
            ),
            GroupAction::Leave => (
                Method::DELETE,
                format!("/api/chats/{chat}/members/{}", id_of(self.user)),
                None,
                "left",
                self.user,
            ),
            GroupAction::Rename { name } => (
                Method::PATCH,
                format!("/api/chats/{chat}"),
                Some(json!({ "name": format!("g{group}-{name}") })),
                "renamed",
                self.user,
            ),
        };
        debug_assert!(users.contains(&target));
        let asked = oracle::on_change_asked(
            &self.model,
            ChangeRecord {
                chat: chat.clone(),
                by: self.user,
                kind,
                user: target,
                outcome: ChangeOutcome::Unknown,
            },
        );
        let token = self.token();
        let answer = net::rest(
            method.clone(),
            &path,
            token.as_deref(),
            body.as_ref(),
            REST_TIMEOUT,
        )
        .await;
        let label = self.model.chat_label(&chat);
        let outcome = match &answer {
            Ok((StatusCode::OK | StatusCode::NO_CONTENT, _)) => ChangeOutcome::Done,
            Ok((StatusCode::FORBIDDEN | StatusCode::NOT_FOUND, _)) => ChangeOutcome::Refused,
            Ok((status, _)) if status.is_server_error() => ChangeOutcome::Unknown,
            Ok((status, body)) => {
                oracle::on_unexpected_answer(
                    &self.model,
                    format!(
                        "t{} {method} {label} ({kind}) answered {status} {body}",
                        self.index
                    ),
                );
                ChangeOutcome::Refused
            }
            Err(_) => ChangeOutcome::Unknown,
        };
        self.trace(format!(
            "{kind} u{target} in {label}: {outcome:?} ({})",
            answer
                .as_ref()
                .map_or_else(|e| e.to_string(), |(s, _)| s.to_string())
        ));
        if outcome == ChangeOutcome::Done && kind != "renamed" && target == self.user {
            self.removed_from(&chat);
        }
        oracle::on_change_answer(&self.model, asked, outcome);
    }

    /// The chat id of group `group` and every user who may be in it.
    fn group_slot(&self, group: usize) -> Option<(String, Vec<usize>)> {
        let state = self.model.state.borrow();
        let slot = state
            .chats
            .iter()
            .filter(|c| c.group.is_some())
            .nth(group)?;
        Some((slot.id.clone()?, slot.group.as_ref()?.users.clone()))
    }

    /// The tab's own figures of `chat` at the audit: its user's read position (the highest it
    /// was told, its own messages and the message that added it count as read) and the messages
    /// above it that others sent, system messages excluded.
    pub(super) fn client_read_figures(&self, chat: &str) -> ReadFigures {
        let own = self.own_id();
        let state = self.state.borrow();
        let empty = Default::default();
        let view = state.views.get(chat).unwrap_or(&empty);
        let read_by_own = view
            .values()
            .filter(|m| match &m.system {
                None => m.sender == own,
                Some(event) => event.kind == "added" && event.user == own,
            })
            .map(|m| m.seq)
            .max()
            .unwrap_or(0);
        let last_read = state
            .read_positions
            .get(chat)
            .copied()
            .unwrap_or(0)
            .max(read_by_own);
        let unread = view
            .values()
            .filter(|m| m.seq > last_read && m.system.is_none() && m.sender != own)
            .count() as u64;
        ReadFigures {
            client_last_read: last_read,
            client_unread: unread,
            ..ReadFigures::default()
        }
    }
}

/// The refusals a `mark-read` may meet, as static strings (anything else is unexpected).
fn static_refusal(error: &str) -> &'static str {
    match error {
        "Chat not found" => "Chat not found",
        "Rate limited" => "Rate limited",
        "Too many requests" => "Too many requests",
        "Invalid payload" => "Invalid payload",
        _ => "unexpected refusal",
    }
}
