//! The tab's Socket.IO session: connecting (and what every reconnect does: re-join, `sync`,
//! resend), asking with an ack, joining, and `sync`ing a chat from the last seq held without a
//! gap.

use std::rc::Rc;

use palaver_client::{self as client, Client, ClientError};
use rand::RngExt;
use serde_json::{Value, json};

use super::events::pump_events;
use super::{ACK_TIMEOUT, CONNECT_TIMEOUT, Failure, Live, Tab};
use crate::net::{self, SERVER_HOST};
use crate::oracle;

/// `sync` page size: random up to this (the contract's default), so that paging is exercised.
const SYNC_LIMIT_MAX: u64 = 100;

impl Tab {
    /// True while the tab holds a connection that has not closed.
    pub(super) fn is_connected(&self) -> bool {
        let mut state = self.state.borrow_mut();
        let closed = state.live.as_ref().is_some_and(|l| l.client.is_closed());
        if closed {
            let live = state.live.take().expect("checked");
            live.pump.abort();
            drop(state);
            self.publish_connected();
            self.trace(format!("conn {} found closed", live.no));
            return false;
        }
        state.live.is_some()
    }

    pub(super) fn may_reconnect(&self) -> bool {
        let state = self.state.borrow();
        state
            .offline_until
            .is_none_or(|t| tokio::time::Instant::now() >= t)
    }

    /// The current connection's client and number.
    pub(super) fn client(&self) -> Result<(Client, u32), Failure> {
        self.state
            .borrow()
            .live
            .as_ref()
            .map(|l| (l.client.clone(), l.no))
            .ok_or_else(|| Failure::Connection("not connected".into()))
    }

    /// Drops the current connection because it failed (an ack never came, it closed).
    pub(super) fn abandon(&self, why: &str) {
        let live = self.state.borrow_mut().live.take();
        if let Some(live) = live {
            self.trace(format!("abandons conn {}: {why}", live.no));
            live.client.abort();
            live.pump.abort();
        }
        self.publish_connected();
    }

    /// Connects, then re-joins, syncs every chat and resends what is pending.
    pub(super) async fn connect(self: &Rc<Self>) -> Result<(), Failure> {
        let Some(token) = self.token() else {
            return Err(Failure::Connection("no token".into()));
        };
        let stream = match net::dial(CONNECT_TIMEOUT).await {
            Ok(stream) => stream,
            Err(error) => {
                self.trace(format!("connect failed: {}", error.kind()));
                self.back_off();
                return Err(Failure::Connection(error.to_string()));
            }
        };
        let handshake = tokio::time::timeout(
            CONNECT_TIMEOUT,
            client::connect(stream, SERVER_HOST, &token),
        )
        .await;
        let (client, events) = match handshake {
            Ok(Ok(connected)) => connected,
            Ok(Err(ClientError::Refused(message))) => {
                if oracle::on_connect_refused(&self.model, self.index, &message) {
                    self.trace(format!("handshake refused: {message} (server stopping)"));
                }
                self.back_off();
                return Err(Failure::Connection(message));
            }
            Ok(Err(error)) => {
                self.trace(format!("handshake failed: {}", error_kind(&error)));
                self.back_off();
                return Err(Failure::Connection(error.to_string()));
            }
            Err(_) => {
                self.trace("handshake timed out");
                self.back_off();
                return Err(Failure::Connection("handshake timed out".into()));
            }
        };
        let no = {
            let mut state = self.state.borrow_mut();
            state.connections += 1;
            state.connections
        };
        self.trace(format!("conn {no} open"));
        let pump = tokio::task::spawn_local(pump_events(Rc::clone(self), no, events));
        self.state.borrow_mut().live = Some(Live { no, client, pump });
        self.publish_connected();
        self.resync().await
    }

    fn back_off(&self) {
        let wait = self.millis(500, 2500);
        self.state.borrow_mut().offline_until = Some(tokio::time::Instant::now() + wait);
    }

    /// What every (re)connect does: list the chats (which groups the user is in, how far it has
    /// read: what the tab may have missed while away), re-join, sync every chat, resend pending
    /// sends.
    async fn resync(&self) -> Result<(), Failure> {
        self.list_chats().await;
        let joined: Vec<String> = self.state.borrow().joined.iter().cloned().collect();
        for chat in joined {
            self.join(&chat, true).await?;
        }
        for chat in self.own_chats() {
            self.sync_chat(&chat).await?;
        }
        let pending: Vec<String> = self.state.borrow().pending.keys().cloned().collect();
        for cmid in pending {
            self.retry(&cmid).await?;
        }
        Ok(())
    }

    /// Emits `event` and waits for its ack; a failed connection is abandoned.
    pub(super) async fn ask(&self, event: &str, data: &Value) -> Result<Value, Failure> {
        let (client, _) = self.client()?;
        match client.emit_with_ack(event, data, ACK_TIMEOUT).await {
            Ok(answer) => Ok(answer),
            Err(error) => {
                self.abandon(&format!("{event}: {}", error_kind(&error)));
                Err(Failure::Connection(error.to_string()))
            }
        }
    }

    /// `join-chat`; `member` says whether the user is in the chat (a hostile join is not).
    pub(super) async fn join(&self, chat: &str, member: bool) -> Result<(), Failure> {
        let answer = self.ask("join-chat", &json!(chat)).await?;
        let label = self.model.chat_label(chat);
        let ok = answer["ok"] == json!(true);
        self.trace(format!(
            "join {label}: {}",
            if ok { "ok" } else { "refused" }
        ));
        oracle::on_join_answer(&self.model, (self.index, self.user), chat, member, &answer);
        if member && answer["error"] == json!("Chat not found") {
            self.left_group(chat);
        }
        if ok && !member {
            self.trace(format!("joined foreign chat {label}"));
        }
        if member && ok {
            self.state.borrow_mut().joined.insert(chat.to_owned());
        }
        Ok(())
    }

    /// The highest seq below which the view of `chat` has no gap.
    pub(super) fn contiguous(&self, chat: &str) -> u64 {
        let state = self.state.borrow();
        let Some(view) = state.views.get(chat) else {
            return 0;
        };
        let mut seq = 0;
        while view.contains_key(&(seq + 1)) {
            seq += 1;
        }
        seq
    }

    /// `sync`s one of the user's chats from the last seq held without a gap, page by page.
    pub(super) async fn sync_chat(&self, chat: &str) -> Result<(), Failure> {
        let label = self.model.chat_label(chat);
        let limit = self.rng.borrow_mut().random_range(1..=SYNC_LIMIT_MAX);
        loop {
            let after = self.contiguous(chat);
            let answer = self
                .ask(
                    "sync",
                    &json!({ "chatId": chat, "afterSeq": after, "limit": limit }),
                )
                .await?;
            oracle::on_sync_answer(
                &self.model,
                (self.index, self.user),
                chat,
                (true, after),
                &answer,
            );
            if answer["error"] == json!("Chat not found") {
                self.left_group(chat);
                return Ok(());
            }
            if answer["error"] == json!("Too many requests") {
                // The user's read limit: the contract's answer to a flood; try again later.
                self.trace(format!(
                    "sync {label} after {after}: too many requests; waiting"
                ));
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            if answer["ok"] != json!(true) {
                return Ok(());
            }
            let messages = answer["messages"].as_array().cloned().unwrap_or_default();
            for message in &messages {
                self.take_message(message, "sync");
            }
            self.trace(format!(
                "sync {label} after {after}: {} messages",
                messages.len()
            ));
            if answer["hasMore"] != json!(true) {
                return Ok(());
            }
            if self.contiguous(chat) == after {
                oracle::on_sync_stalled(&self.model, chat, after);
                return Ok(());
            }
        }
    }

    /// Hands a message seen in an answer to the oracle and adds it to the view.
    pub(super) fn take_message(&self, message: &Value, source: &str) {
        if let Some(facts) = oracle::on_sighting(&self.model, message, source) {
            self.add_to_view(facts);
        }
    }

    pub(super) fn add_to_view(&self, facts: crate::model::MessageFacts) {
        let mut state = self.state.borrow_mut();
        if let Some(view) = state.views.get_mut(&facts.chat) {
            view.insert(facts.seq, facts);
        }
    }
}

/// A short name for a client error in the trace.
pub(super) fn error_kind(error: &ClientError) -> String {
    match error {
        ClientError::AckTimeout(_) => "ack timeout".into(),
        ClientError::Closed => "closed".into(),
        ClientError::WebSocket(_) => "websocket error".into(),
        ClientError::Refused(message) => format!("refused {message:?}"),
        ClientError::Protocol(_) => "protocol error".into(),
    }
}
