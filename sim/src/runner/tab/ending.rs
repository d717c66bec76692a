//! The end of a run, for one tab: the liveness phase (settle: connected, synced, nothing
//! pending, a final message acknowledged) and the audit (report the views and who is online,
//! read back the history of the chats assigned to this tab).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use rand::RngExt;
use serde_json::Value;

use super::{Failure, PendingSend, REST_TIMEOUT, Tab};
use crate::model::{MessageFacts, Phase, ReadFigures, TabReport};
use crate::{net, oracle};

/// History page size at the audit: random up to this (the contract's maximum).
const HISTORY_LIMIT_MAX: u64 = 500;
/// Pages of one chat's history read at the audit before giving up (a bound on a broken server).
const HISTORY_PAGES_MAX: usize = 100;

impl Tab {
    /// Works until this tab is settled: connected, synced, nothing pending, its final message
    /// acknowledged. A tab that ends offline just closes. Runs again whenever it is woken.
    pub(super) async fn liveness(self: &Rc<Self>) {
        if self.plan.ends_offline {
            if self.state.borrow().live.is_some() {
                self.trace("closes for good");
                self.disconnect(true, Duration::from_secs(3600));
            }
            self.set_settled(true);
            self.control.notify.notified().await;
            return;
        }
        self.state.borrow_mut().offline_until = None;
        loop {
            if self.model.phase() != Phase::Liveness {
                return;
            }
            match self.settle_once().await {
                Ok(()) => {
                    self.set_settled(true);
                    // Settled: keep serving gaps until something changes.
                    loop {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        if !self.is_connected() {
                            self.set_settled(false);
                            break;
                        }
                        let gap = self.state.borrow_mut().gaps.pop_first();
                        if let Some(chat) = gap {
                            let _ = self.sync_chat(&chat).await;
                        }
                    }
                }
                Err(Failure::Connection(why)) => {
                    self.trace(format!("not settled yet: {why}"));
                    self.set_settled(false);
                    tokio::time::sleep(Duration::from_millis(1000)).await;
                }
            }
        }
    }

    fn set_settled(&self, settled: bool) {
        let mut state = self.model.state.borrow_mut();
        let status = &mut state.tabs[self.index];
        if status.settled != settled {
            status.settled = settled;
            drop(state);
            self.trace(if settled { "settled" } else { "unsettled" });
        }
    }

    async fn settle_once(self: &Rc<Self>) -> Result<(), Failure> {
        if self.is_connected() {
            // Which groups the user is in now that the changes are over.
            self.list_chats().await;
            // A connection that survived the faults may still be dead: probe it.
            for chat in self.own_chats() {
                self.sync_chat(&chat).await?;
            }
        } else {
            self.connect().await?;
        }
        loop {
            let pending: Vec<String> = self.state.borrow().pending.keys().cloned().collect();
            if pending.is_empty() {
                break;
            }
            for cmid in pending {
                self.retry(&cmid).await?;
            }
            if !self.state.borrow().pending.is_empty() {
                // Refused for now (rate limited, or storage trouble): try again shortly.
                tokio::time::sleep(Duration::from_millis(1000)).await;
            }
        }
        if !self.state.borrow().final_acked {
            self.send_final().await?;
        }
        let gaps: Vec<String> = std::mem::take(&mut self.state.borrow_mut().gaps)
            .into_iter()
            .collect();
        for chat in gaps {
            self.sync_chat(&chat).await?;
        }
        Ok(())
    }

    /// The last message of the run, which must be acknowledged once the faults are healed.
    async fn send_final(&self) -> Result<(), Failure> {
        if let Some(chat) = self.own_chats().first().cloned() {
            let cmid = format!("t{}-final", self.index);
            let text = format!("final from t{}", self.index);
            self.model
                .register_send(self.user, &cmid, &chat, &text, true);
            self.state.borrow_mut().pending.insert(
                cmid.clone(),
                PendingSend {
                    chat: chat.clone(),
                    text: text.clone(),
                },
            );
            self.send_socket(&cmid, &chat, &text).await?;
            if !self.state.borrow().pending.is_empty() {
                return Err(Failure::Connection("final message not acked yet".into()));
            }
        }
        self.state.borrow_mut().final_acked = true;
        Ok(())
    }

    /// Reports the tab's views, presence and read figures (its own, then the chat list's), and
    /// reads back the history of the chats the driver assigned to it.
    pub(super) async fn audit(&self) {
        let own_figures: BTreeMap<String, ReadFigures> = self
            .state
            .borrow()
            .views
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .into_iter()
            .map(|chat| {
                let figures = self.client_read_figures(&chat);
                (chat, figures)
            })
            .collect();
        let listed = if self.state.borrow().live.is_some() {
            self.list_until_answered().await
        } else {
            Vec::new()
        };
        let reads = listed
            .iter()
            .filter_map(|chat| {
                let id = chat["_id"].as_str()?.to_owned();
                let own = own_figures.get(&id).copied().unwrap_or_default();
                Some((
                    id,
                    ReadFigures {
                        server_last_read: chat["lastReadSeq"].as_u64()?,
                        server_unread: chat["unreadCount"].as_u64()?,
                        ..own
                    },
                ))
            })
            .collect();
        let report = {
            let state = self.state.borrow();
            let online = state
                .live
                .as_ref()
                .and_then(|live| {
                    let model = self.model.state.borrow();
                    let record = model.connections.get(&(self.index, live.no))?;
                    Some(
                        record
                            .online
                            .iter()
                            .filter(|(_, online)| **online)
                            .map(|(id, _)| id.clone())
                            .collect(),
                    )
                })
                .unwrap_or_default();
            TabReport {
                user: self.user,
                connected: state.live.is_some(),
                views: state.views.clone(),
                online,
                reads,
            }
        };
        self.model.state.borrow_mut().tabs[self.index].report = Some(report);
        let assigned: Vec<String> = {
            let state = self.model.state.borrow();
            state
                .chats
                .iter()
                .filter(|c| c.audit_tab == Some(self.index))
                .filter_map(|c| c.id.clone())
                .collect()
        };
        for chat in assigned {
            let history = self.read_full_history(&chat).await;
            self.model
                .state
                .borrow_mut()
                .histories
                .insert(chat, history);
        }
        self.model.state.borrow_mut().tabs[self.index].audited = true;
        self.trace("audited");
    }

    /// `GET /api/chats` at the audit, retried until answered (the server is up and quiet).
    async fn list_until_answered(&self) -> Vec<Value> {
        for _ in 0..HISTORY_PAGES_MAX {
            if let Some(chats) = self.list_chats().await {
                return chats;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Vec::new()
    }

    async fn read_full_history(&self, chat: &str) -> Vec<MessageFacts> {
        let token = self.token();
        let mut history = Vec::new();
        let mut after = 0;
        let limit = self.rng.borrow_mut().random_range(7..=HISTORY_LIMIT_MAX);
        for _ in 0..HISTORY_PAGES_MAX {
            let path = format!("/api/messages/chat/{chat}?after={after}&limit={limit}");
            let page =
                match net::rest(Method::GET, &path, token.as_deref(), None, REST_TIMEOUT).await {
                    Ok((StatusCode::OK, Value::Array(page))) => page,
                    other => {
                        self.trace(format!("history read failed: {other:?}; retrying"));
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
            let count = page.len();
            for message in &page {
                if let Some(facts) = oracle::parse_history_message(&self.model, message) {
                    after = after.max(facts.seq);
                    history.push(facts);
                }
            }
            if (count as u64) < limit {
                break;
            }
        }
        history
    }
}
