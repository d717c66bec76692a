//! Events from the server: each goes to the oracle (and to the trace) as it arrives, and a
//! `new-message` of one of the user's chats into the tab's view (a gap in it makes the tab
//! `sync` that chat). Membership events change which groups the tab believes its user is in,
//! and `read` events its user's read positions.

use std::rc::Rc;

use palaver_client::Event;
use tokio::sync::mpsc;

use super::Tab;
use crate::oracle::{self, Receiver};

impl Tab {
    /// Handles one server event on connection `no`.
    fn on_event(&self, no: u32, event: Event) {
        let data = event.data();
        let to = Receiver {
            tab: self.index,
            user: self.user,
            conn: no,
        };
        match event.name.as_str() {
            "new-message" => {
                self.trace(format!(
                    "#{no} new-message {} seq {} id {}",
                    self.model
                        .chat_label(data["chat"].as_str().unwrap_or_default()),
                    data["seq"],
                    data["_id"].as_str().unwrap_or_default()
                ));
                let Some(facts) = oracle::on_new_message(&self.model, to, &data) else {
                    return;
                };
                let chat = facts.chat.clone();
                let seq = facts.seq;
                self.add_to_view(facts);
                if seq > self.contiguous(&chat) + 1 {
                    self.state.borrow_mut().gaps.insert(chat);
                }
            }
            "typing" => {
                self.trace(format!(
                    "#{no} typing {} from {} {}",
                    self.model
                        .chat_label(data["chatId"].as_str().unwrap_or_default()),
                    self.model
                        .user_label(data["userId"].as_str().unwrap_or_default()),
                    data["isTyping"]
                ));
                oracle::on_typing(&self.model, to, &data);
            }
            "online-users" => {
                let mut ids: Vec<String> = data["userIds"]
                    .as_array()
                    .map(|ids| {
                        ids.iter()
                            .filter_map(|id| id.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                // The snapshot's order is not part of the contract (nor deterministic).
                ids.sort();
                let mut users: Vec<Option<usize>> =
                    ids.iter().map(|id| self.model.user_index(id)).collect();
                users.sort();
                let labels: Vec<String> = users
                    .iter()
                    .map(|u| u.map_or_else(|| "u?".to_owned(), |u| format!("u{u}")))
                    .collect();
                self.trace(format!("#{no} online-users {}", labels.join(",")));
                oracle::on_online_users(&self.model, to, &ids);
            }
            "user-online" | "user-offline" => {
                let online = event.name == "user-online";
                let user = data["userId"].as_str().unwrap_or_default();
                self.trace(format!(
                    "#{no} {} {}",
                    event.name,
                    self.model.user_label(user)
                ));
                oracle::on_presence(&self.model, to, &data, online);
            }
            "read" => {
                self.trace(format!(
                    "#{no} read {} by {} up to {}",
                    self.model
                        .chat_label(data["chatId"].as_str().unwrap_or_default()),
                    self.model
                        .user_label(data["userId"].as_str().unwrap_or_default()),
                    data["lastReadSeq"]
                ));
                if let Some((chat, user, seq)) = oracle::on_read_event(&self.model, to, &data)
                    && user == self.own_id()
                {
                    self.read_up_to(&chat, seq);
                }
            }
            "member-added" | "member-removed" => {
                let chat = data["chatId"].as_str().unwrap_or_default().to_owned();
                let user = match event.name.as_str() {
                    "member-added" => data["user"]["_id"].as_str(),
                    _ => data["userId"].as_str(),
                }
                .unwrap_or_default()
                .to_owned();
                self.trace(format!(
                    "#{no} {} {} {}",
                    event.name,
                    self.model.chat_label(&chat),
                    self.model.user_label(&user)
                ));
                let name = if event.name == "member-added" {
                    "member-added"
                } else {
                    "member-removed"
                };
                oracle::on_group_event(&self.model, to, &chat, name);
                if user == self.own_id() {
                    if name == "member-added" {
                        self.joined_group(&chat);
                    } else {
                        self.removed_from(&chat);
                    }
                }
            }
            "chat-created" | "chat-updated" => {
                let chat = data["_id"].as_str().unwrap_or_default().to_owned();
                self.trace(format!(
                    "#{no} {} {}",
                    event.name,
                    self.model.chat_label(&chat)
                ));
                let name = if event.name == "chat-created" {
                    "chat-created"
                } else {
                    "chat-updated"
                };
                oracle::on_group_event(&self.model, to, &chat, name);
                let own = self.own_id();
                let listed = data["participants"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|u| u["_id"].as_str() == Some(own.as_str())));
                if listed {
                    self.joined_group(&chat);
                }
            }
            "socket-error" => {
                self.trace(format!("#{no} socket-error {}", data["message"]));
            }
            other => self.trace(format!("#{no} event {other}")),
        }
    }
}

/// Moves the events of connection `no` into the tab, until the connection ends.
pub(super) async fn pump_events(tab: Rc<Tab>, no: u32, mut events: mpsc::Receiver<Event>) {
    while let Some(event) = events.recv().await {
        tab.on_event(no, event);
    }
    let ended = {
        let mut state = tab.state.borrow_mut();
        match &state.live {
            Some(live) if live.no == no => state.live.take(),
            _ => None,
        }
    };
    if ended.is_some() {
        tab.publish_connected();
        tab.trace(format!("conn {no} closed"));
    }
}
