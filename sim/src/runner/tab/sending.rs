//! Sending: a new message over the socket or REST, a burst emitted back to back before any
//! ack is awaited, retries of what was never acknowledged (same `clientMsgId`), and sends the
//! server must refuse. Every answer goes to the oracle; the tab keeps what it must resend.

use hyper::{Method, StatusCode};
use palaver_client::PendingAck;
use serde_json::{Value, json};

use super::session::error_kind;
use super::{ACK_TIMEOUT, Failure, PendingSend, REST_TIMEOUT, Tab};
use crate::model::RefusalKind;
use crate::net;
use crate::oracle::{self, SendAnswer, Sent};
use crate::plan::Via;

/// A send emitted on the socket whose ack is still to come.
struct Emitted {
    pending: PendingAck,
    conn: u32,
    emission: u64,
    first_attempt: bool,
}

impl Tab {
    /// Mints a `clientMsgId` and text for a new send to `chat`, pending until acknowledged.
    fn mint_send(&self, chat: &str) -> (String, String) {
        let n = {
            let mut state = self.state.borrow_mut();
            state.sends += 1;
            state.sends
        };
        let cmid = format!("t{}-{n}", self.index);
        let text = format!("m{}-{n}", self.index);
        self.model
            .register_send(self.user, &cmid, chat, &text, true);
        self.state.borrow_mut().pending.insert(
            cmid.clone(),
            PendingSend {
                chat: chat.to_owned(),
                text: text.clone(),
            },
        );
        (cmid, text)
    }

    pub(super) async fn send_new(&self, chat: &str, via: Via) -> Result<(), Failure> {
        let (cmid, text) = self.mint_send(chat);
        match via {
            Via::Socket => self.send_socket(&cmid, chat, &text).await,
            Via::Rest => {
                self.send_rest(&cmid, chat, &text).await;
                Ok(())
            }
        }
    }

    /// New messages emitted back to back, as a user pasting lines quickly: every emit goes out
    /// before any ack is awaited, so the server has them all in flight at once.
    pub(super) async fn burst(&self, chats: &[String]) -> Result<(), Failure> {
        let sends: Vec<(String, &String, String)> = chats
            .iter()
            .map(|chat| {
                let (cmid, text) = self.mint_send(chat);
                (cmid, chat, text)
            })
            .collect();
        self.trace(format!("burst of {}", sends.len()));
        let mut emitted = Vec::with_capacity(sends.len());
        for (cmid, chat, text) in &sends {
            emitted.push((self.emit_send(cmid, chat, text).await?, cmid, chat, text));
        }
        let answers = futures_util::future::join_all(
            emitted
                .into_iter()
                .map(|(emitted, cmid, chat, text)| self.await_ack(emitted, cmid, chat, text)),
        )
        .await;
        answers.into_iter().collect()
    }

    pub(super) async fn send_socket(
        &self,
        cmid: &str,
        chat: &str,
        text: &str,
    ) -> Result<(), Failure> {
        let emitted = self.emit_send(cmid, chat, text).await?;
        self.await_ack(emitted, cmid, chat, text).await
    }

    fn sent<'a>(
        &self,
        emitted: Option<&Emitted>,
        first_attempt: bool,
        cmid: &'a str,
        chat: &'a str,
        text: &'a str,
    ) -> Sent<'a> {
        Sent {
            tab: self.index,
            user: self.user,
            emitted: emitted.map(|e| (e.conn, e.emission)),
            first_attempt,
            client_msg_id: cmid,
            chat,
            text,
            valid: true,
        }
    }

    async fn emit_send(&self, cmid: &str, chat: &str, text: &str) -> Result<Emitted, Failure> {
        let (client, conn) = self.client()?;
        let data = json!({ "chatId": chat, "text": text, "clientMsgId": cmid });
        self.trace(format!("send {cmid} to {}", self.model.chat_label(chat)));
        let first_attempt = self.model.begin_attempt(self.user, cmid);
        let emission = self.model.next_emission(self.index, conn);
        match client.emit_expecting_ack("send-message", &data).await {
            Ok(pending) => Ok(Emitted {
                pending,
                conn,
                emission,
                first_attempt,
            }),
            Err(error) => {
                let kind = error_kind(&error);
                self.trace(format!("send {cmid}: not sent ({kind})"));
                let sent = self.sent(None, first_attempt, cmid, chat, text);
                oracle::on_send_answer(&self.model, sent, SendAnswer::NoAnswer(&kind));
                self.abandon(&format!("send-message: {kind}"));
                Err(Failure::Connection(kind))
            }
        }
    }

    async fn await_ack(
        &self,
        emitted: Emitted,
        cmid: &str,
        chat: &str,
        text: &str,
    ) -> Result<(), Failure> {
        let sent = self.sent(Some(&emitted), emitted.first_attempt, cmid, chat, text);
        match emitted.pending.wait(ACK_TIMEOUT).await {
            Ok(answer) if answer["ok"] == json!(true) => {
                self.acked(sent, &answer["message"]);
                Ok(())
            }
            Ok(answer) => {
                self.refused(sent, answer["error"].as_str().unwrap_or(""));
                Ok(())
            }
            Err(error) => {
                let kind = error_kind(&error);
                self.trace(format!("send {cmid}: no ack ({kind})"));
                oracle::on_send_answer(&self.model, sent, SendAnswer::NoAnswer(&kind));
                self.abandon(&format!("send-message: {kind}"));
                Err(Failure::Connection(kind))
            }
        }
    }

    fn acked(&self, sent: Sent<'_>, message: &Value) {
        let Some(facts) = oracle::on_send_answer(&self.model, sent, SendAnswer::Acked(message))
        else {
            return;
        };
        self.trace(format!(
            "send {}: acked seq {} id {}",
            sent.client_msg_id, facts.seq, facts.id
        ));
        self.add_to_view(facts);
        self.state.borrow_mut().pending.remove(sent.client_msg_id);
    }

    /// A refusal: the send stays pending if a retry may succeed.
    fn refused(&self, sent: Sent<'_>, error: &str) {
        self.trace(format!("send {}: refused {error:?}", sent.client_msg_id));
        oracle::on_send_answer(&self.model, sent, SendAnswer::Refused(error));
        if RefusalKind::of(error) == RefusalKind::Final {
            self.state.borrow_mut().pending.remove(sent.client_msg_id);
        }
        if error == "Chat not found" {
            self.left_group(sent.chat);
        }
    }

    async fn send_rest(&self, cmid: &str, chat: &str, text: &str) {
        let token = self.token();
        self.trace(format!("post {cmid} to {}", self.model.chat_label(chat)));
        let first_attempt = self.model.begin_attempt(self.user, cmid);
        let sent = self.sent(None, first_attempt, cmid, chat, text);
        let body = json!({ "text": text, "clientMsgId": cmid });
        let answer = net::rest(
            Method::POST,
            &format!("/api/messages/chat/{chat}"),
            token.as_deref(),
            Some(&body),
            REST_TIMEOUT,
        )
        .await;
        match answer {
            Ok((StatusCode::CREATED, message)) => self.acked(sent, &message),
            Ok((StatusCode::SERVICE_UNAVAILABLE, _)) => {
                self.refused(sent, "Failed to send message");
            }
            Ok((StatusCode::TOO_MANY_REQUESTS, _)) => self.refused(sent, "Rate limited"),
            Ok((StatusCode::NOT_FOUND, _)) => self.refused(sent, "Chat not found"),
            Ok((status, answer)) => self.refused(sent, &format!("{status} {answer}")),
            Err(error) => {
                self.trace(format!("post {cmid}: no answer ({error})"));
                let why = error.to_string();
                oracle::on_send_answer(&self.model, sent, SendAnswer::NoAnswer(&why));
            }
        }
    }

    /// Resends `cmid` with the same `clientMsgId`, if it is still pending.
    pub(super) async fn retry(&self, cmid: &str) -> Result<(), Failure> {
        let pending = self.state.borrow().pending.get(cmid).cloned();
        let Some(PendingSend { chat, text }) = pending else {
            return Ok(());
        };
        self.trace(format!("retries {cmid}"));
        self.send_socket(cmid, &chat, &text).await
    }

    pub(super) async fn retry_one_pending(&self) -> Result<(), Failure> {
        let first = self.state.borrow().pending.keys().next().cloned();
        match first {
            Some(cmid) => self.retry(&cmid).await,
            None => Ok(()),
        }
    }

    /// A send the server must refuse (to a chat of other users, or an empty text); it must
    /// never appear.
    pub(super) async fn send_refused(&self, chat: &str, text: &str) -> Result<(), Failure> {
        let n = {
            let mut state = self.state.borrow_mut();
            state.sends += 1;
            state.sends
        };
        let cmid = format!("t{}-{n}x", self.index);
        self.model
            .register_send(self.user, &cmid, chat, text, false);
        self.trace(format!(
            "hostile send {cmid} to {}",
            self.model.chat_label(chat)
        ));
        let first_attempt = self.model.begin_attempt(self.user, &cmid);
        let data = json!({ "chatId": chat, "text": text, "clientMsgId": cmid });
        let answer = self.ask("send-message", &data).await?;
        let sent = Sent {
            valid: false,
            ..self.sent(None, first_attempt, &cmid, chat, text)
        };
        if answer["ok"] == json!(true) {
            oracle::on_send_answer(&self.model, sent, SendAnswer::Acked(&answer));
        } else {
            let error = answer["error"].as_str().unwrap_or("");
            self.trace(format!("hostile send {cmid}: refused {error:?}"));
            oracle::on_send_answer(&self.model, sent, SendAnswer::Refused(error));
        }
        Ok(())
    }
}
