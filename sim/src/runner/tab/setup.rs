//! Setup, without faults: the user's first tab registers the user, opens the 1:1 chats the user
//! is the first member of and creates the groups the user owns; every tab waits until all users
//! and chats exist, and lists its chats.

use std::time::Duration;

use hyper::Method;
use serde_json::{Value, json};

use super::{REST_TIMEOUT, Tab};
use crate::model::ModelState;
use crate::{net, oracle};

impl Tab {
    pub(super) async fn setup(&self) {
        if self.plan.registers {
            self.register().await;
        }
        self.wait_until(|m| m.users.iter().all(|u| u.id.is_some()))
            .await;
        if self.plan.registers {
            self.open_chats().await;
            self.create_groups().await;
        }
        self.wait_until(|m| m.chats.iter().all(|c| c.id.is_some()))
            .await;
        self.list_chats().await;
        let chats = self.own_chats();
        self.state.borrow_mut().gaps.clear();
        let mut state = self.state.borrow_mut();
        for chat in chats {
            state.views.entry(chat).or_default();
        }
    }

    async fn register(&self) {
        let (name, email) = {
            let state = self.model.state.borrow();
            let slot = &state.users[self.user];
            (slot.name.clone(), slot.email.clone())
        };
        let body =
            json!({ "name": name, "email": email, "password": format!("password-{}", self.user) });
        let answer = self
            .rest_until_ok(Method::POST, "/api/auth/register", None, Some(&body))
            .await;
        let token = answer["token"].as_str().map(str::to_owned);
        let id = answer["user"]["_id"].as_str().map(str::to_owned);
        if token.is_none() || id.is_none() {
            oracle::on_unexpected_answer(&self.model, format!("register answered {answer}"));
        }
        self.trace(format!("registered u{}", self.user));
        let mut state = self.model.state.borrow_mut();
        state.users[self.user].token = token;
        state.users[self.user].id = id;
    }

    async fn open_chats(&self) {
        let partners: Vec<(usize, usize)> = {
            let state = self.model.state.borrow();
            state
                .chats
                .iter()
                .enumerate()
                .filter(|(_, c)| c.group.is_none() && c.a == self.user)
                .map(|(i, c)| (i, c.b))
                .collect()
        };
        for (chat_index, partner) in partners {
            let partner_id = self.model.state.borrow().users[partner]
                .id
                .clone()
                .expect("registered");
            let token = self.token();
            let answer = self
                .rest_until_ok(
                    Method::POST,
                    &format!("/api/chats/with/{partner_id}"),
                    token.as_deref(),
                    None,
                )
                .await;
            let id = answer["_id"].as_str().map(str::to_owned);
            if id.is_none() {
                oracle::on_unexpected_answer(&self.model, format!("open chat answered {answer}"));
            }
            self.trace(format!("opened c{chat_index} with u{partner}"));
            self.model.state.borrow_mut().chats[chat_index].id = id;
        }
    }

    /// Creates the groups this tab's user owns, with their first members; the answer must list
    /// exactly them.
    async fn create_groups(&self) {
        let owned: Vec<(usize, Vec<usize>)> = {
            let state = self.model.state.borrow();
            state
                .chats
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.group.as_ref().map(|g| (i, g)))
                .filter(|(_, g)| g.owner == self.user)
                .map(|(i, g)| (i, g.initial.clone()))
                .collect()
        };
        for (chat_index, initial) in owned {
            let ids: Vec<String> = {
                let state = self.model.state.borrow();
                initial
                    .iter()
                    .filter_map(|&u| state.users[u].id.clone())
                    .collect()
            };
            let body = json!({ "name": format!("c{chat_index}"), "memberIds": ids[1..] });
            let token = self.token();
            let answer = self
                .rest_until_ok(Method::POST, "/api/chats", token.as_deref(), Some(&body))
                .await;
            let mut listed: Vec<String> = answer["participants"]
                .as_array()
                .map(|p| {
                    p.iter()
                        .filter_map(|u| u["_id"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            listed.sort();
            let mut expected = ids.clone();
            expected.sort();
            let id = answer["_id"].as_str().map(str::to_owned);
            if id.is_none() || listed != expected || answer["kind"] != json!("group") {
                oracle::on_unexpected_answer(
                    &self.model,
                    format!("creating group c{chat_index} answered {answer}"),
                );
            }
            self.trace(format!("created group c{chat_index} of {initial:?}"));
            self.model.state.borrow_mut().chats[chat_index].id = id;
        }
    }

    async fn wait_until(&self, ready: impl Fn(&ModelState) -> bool) {
        while !ready(&self.model.state.borrow()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A REST call of the setup: retried until it is answered (no faults run during setup,
    /// but the server may still be starting).
    async fn rest_until_ok(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Value {
        loop {
            match net::rest(method.clone(), path, token, body, REST_TIMEOUT).await {
                Ok((status, answer)) if status.is_success() => return answer,
                Ok((status, answer)) => {
                    oracle::on_unexpected_answer(
                        &self.model,
                        format!("{method} {path} during setup answered {status} {answer}"),
                    );
                    return answer;
                }
                Err(error) => {
                    self.trace(format!("{method} {path} failed: {error}; retrying"));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}
