//! The safety phase: the tab takes the steps of its plan, one after another, keeping its
//! connection up and its views without gaps in between.

use std::rc::Rc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::{Failure, REST_TIMEOUT, Tab};
use crate::model::Phase;
use crate::plan::{Action, Hostile, Step};
use crate::{net, oracle};

/// How long a tab that has taken every step of its plan waits between looks at its connection.
const IDLE_THINK: Duration = Duration::from_millis(1000);

impl Tab {
    /// Thinks, then takes the next step of the plan, unless the connection needs attention
    /// first (reconnect, or `sync` a chat with a gap): then the step waits for the next turn.
    pub(super) async fn safety_step(self: &Rc<Self>) {
        let next = self.state.borrow().next_step;
        let step = self.plan.steps.get(next);
        tokio::time::sleep(step.map_or(IDLE_THINK, |s| s.think)).await;
        if self.model.phase() != Phase::Safety {
            return;
        }
        if !self.is_connected() {
            if self.may_reconnect() {
                let _ = self.connect().await;
            }
            return;
        }
        let gap = self.state.borrow_mut().gaps.pop_first();
        if let Some(chat) = gap {
            let _ = self.sync_chat(&chat).await;
            return;
        }
        let probe = self.state.borrow_mut().probes.pop_first();
        if let Some(chat) = probe {
            let _ = self.probe_removed(&chat).await;
            return;
        }
        let Some(Step { action, .. }) = step else {
            return;
        };
        // Taken before it runs: a command from the driver may cancel it midway.
        self.state.borrow_mut().next_step = next + 1;
        let _ = self.perform(action).await;
    }

    /// The server id of plan chat `index` (every chat is open once setup is done).
    fn chat(&self, index: usize) -> String {
        self.model.chat_id(index).expect("setup opened every chat")
    }

    /// Takes one step. Steps that name a group the tab believes its user is not in (any more,
    /// or yet) are skipped, as a client does not offer them.
    async fn perform(&self, action: &Action) -> Result<(), Failure> {
        match action {
            Action::Send { chat, via } => {
                let chat = self.chat(*chat);
                if !self.believes_member(&chat) {
                    return Ok(());
                }
                self.send_new(&chat, *via).await
            }
            Action::Burst { chats } => {
                let chats: Vec<String> = chats
                    .iter()
                    .map(|c| self.chat(*c))
                    .filter(|c| self.believes_member(c))
                    .collect();
                if chats.is_empty() {
                    return Ok(());
                }
                self.burst(&chats).await
            }
            Action::RetryPending => self.retry_one_pending().await,
            Action::Type { chat, typing } => {
                let chat = self.chat(*chat);
                if !self.believes_member(&chat) {
                    return Ok(());
                }
                self.type_in(&chat, *typing).await
            }
            Action::MarkRead { chat, via, beyond } => {
                self.mark_read(&self.chat(*chat), *via, *beyond).await
            }
            Action::Group { group, change } => {
                self.change_group(*group, *change).await;
                Ok(())
            }
            Action::Join { pick } => self.join_one(*pick).await,
            Action::Leave { pick } => self.leave_one(*pick).await,
            Action::Hostile(hostile) => self.hostile(*hostile).await,
            Action::ListChats => {
                self.list_chats().await;
                Ok(())
            }
            Action::ReadHistory { chat } => {
                let chat = self.chat(*chat);
                if self.believes_member(&chat) {
                    self.read_history_page(&chat).await;
                }
                Ok(())
            }
            Action::Disconnect { clean, back_after } => {
                self.trace(if *clean {
                    "closes itself"
                } else {
                    "drops itself"
                });
                self.disconnect(*clean, *back_after);
                Ok(())
            }
        }
    }

    async fn type_in(&self, chat: &str, typing: bool) -> Result<(), Failure> {
        self.trace(format!("typing {} {typing}", self.model.chat_label(chat)));
        let (client, _) = self.client()?;
        client
            .emit("typing", &json!({ "chatId": chat, "isTyping": typing }))
            .await
            .map_err(|e| Failure::Connection(e.to_string()))
    }

    /// Joins the `pick`-th (modulo) of the user's chats the tab has not joined.
    async fn join_one(&self, pick: u32) -> Result<(), Failure> {
        let not_joined: Vec<String> = {
            let state = self.state.borrow();
            self.own_chats()
                .into_iter()
                .filter(|c| !state.joined.contains(c))
                .collect()
        };
        match nth(&not_joined, pick) {
            Some(chat) => self.join(&chat, true).await,
            None => Ok(()),
        }
    }

    /// Leaves the `pick`-th (modulo) of the chats the tab has joined.
    async fn leave_one(&self, pick: u32) -> Result<(), Failure> {
        let joined: Vec<String> = self.state.borrow().joined.iter().cloned().collect();
        let Some(chat) = nth(&joined, pick) else {
            return Ok(());
        };
        self.state.borrow_mut().joined.remove(&chat);
        let answer = self.ask("leave-chat", &json!({ "chatId": chat })).await?;
        self.trace(format!(
            "leave {}: {}",
            self.model.chat_label(&chat),
            answer["ok"]
        ));
        Ok(())
    }

    async fn hostile(&self, hostile: Hostile) -> Result<(), Failure> {
        match hostile {
            Hostile::JoinForeign { chat } => self.join(&self.chat(chat), false).await,
            Hostile::SyncForeign { chat } => {
                let chat = self.chat(chat);
                let answer = self
                    .ask("sync", &json!({ "chatId": chat, "afterSeq": 0 }))
                    .await?;
                oracle::on_sync_answer(
                    &self.model,
                    (self.index, self.user),
                    &chat,
                    (false, 0),
                    &answer,
                );
                Ok(())
            }
            Hostile::SendForeign { chat } => self.send_refused(&self.chat(chat), "intruder").await,
            Hostile::SendEmpty { chat } => self.send_refused(&self.chat(chat), "   ").await,
        }
    }

    /// `GET /api/chats`: the list goes to the oracle, the last messages into the views, its
    /// groups become the ones the tab believes its user is in, its read positions the tab's.
    /// Returns the list, if it came.
    pub(super) async fn list_chats(&self) -> Option<Vec<Value>> {
        let token = self.token();
        let answer = net::rest(
            Method::GET,
            "/api/chats",
            token.as_deref(),
            None,
            REST_TIMEOUT,
        )
        .await;
        match answer {
            Ok((StatusCode::OK, Value::Array(chats))) => {
                let lasts = oracle::on_chat_list(&self.model, self.index, self.user, &chats);
                self.take_listed_groups(&chats);
                for last in lasts {
                    self.add_to_view(last);
                }
                self.trace(format!("lists {} chats", chats.len()));
                return Some(chats);
            }
            // A storage failure answers 500; the contract allows it.
            Ok((StatusCode::INTERNAL_SERVER_ERROR, _)) => {}
            Ok((status, answer)) => oracle::on_unexpected_answer(
                &self.model,
                format!("{} GET /api/chats answered {status} {answer}", self.label()),
            ),
            Err(error) => self.trace(format!("list chats failed: {error}")),
        }
        None
    }

    /// The groups of a chat list are the ones the tab's user is in; its read positions are
    /// the user's.
    fn take_listed_groups(&self, chats: &[Value]) {
        let listed: Vec<String> = chats
            .iter()
            .filter(|c| c["kind"] == json!("group"))
            .filter_map(|c| c["_id"].as_str().map(str::to_owned))
            .collect();
        let gone: Vec<String> = self
            .state
            .borrow()
            .groups
            .iter()
            .filter(|g| !listed.contains(g))
            .cloned()
            .collect();
        for group in gone {
            self.left_group(&group);
        }
        for group in &listed {
            self.joined_group(group);
        }
        for chat in chats {
            if let (Some(id), Some(seq)) = (chat["_id"].as_str(), chat["lastReadSeq"].as_u64()) {
                self.read_up_to(id, seq);
            }
        }
    }

    /// Reads the newest page of a chat's history over REST (more sightings for the oracle).
    pub(super) async fn read_history_page(&self, chat: &str) {
        let token = self.token();
        let label = self.model.chat_label(chat);
        let answer = net::rest(
            Method::GET,
            &format!("/api/messages/chat/{chat}?limit=20"),
            token.as_deref(),
            None,
            REST_TIMEOUT,
        )
        .await;
        match answer {
            Ok((StatusCode::OK, Value::Array(messages))) => {
                oracle::on_history_page(&self.model, (self.index, self.user), chat, &messages);
                self.trace(format!("history {label}: {} messages", messages.len()));
            }
            Ok((StatusCode::NOT_FOUND, _))
                if oracle::on_group_refused(
                    &self.model,
                    self.index,
                    self.user,
                    chat,
                    "history",
                ) =>
            {
                self.trace(format!("history {label}: not found"));
                self.left_group(chat);
            }
            // A storage failure answers 500; the contract allows it.
            Ok((StatusCode::INTERNAL_SERVER_ERROR, _)) => {}
            Ok((status, answer)) => oracle::on_unexpected_answer(
                &self.model,
                format!(
                    "{} history of {label} answered {status} {answer}",
                    self.label()
                ),
            ),
            Err(error) => self.trace(format!("history {label} failed: {error}")),
        }
    }
}

/// The `pick`-th of `items`, counting round.
fn nth(items: &[String], pick: u32) -> Option<String> {
    if items.is_empty() {
        return None;
    }
    items.get(pick as usize % items.len()).cloned()
}
