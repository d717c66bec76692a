//! Transport: the only code that knows HTTP, Socket.IO and JSON.
//!
//! `rest` maps the contract's routes onto service calls, `socket` its events, `payload` decodes
//! client events into typed commands (shared with the fuzz targets), `wire` names the fields of
//! the contract's objects, and [`deliver`] fans committed messages out, in commit order, from the
//! writer's commit feed: a REST POST and a socket `send-message` alike only append and answer.
//! `web` serves the embedded web client.

pub mod client_addr;
pub mod connections;
pub mod payload;
pub mod request_head;
pub mod rest;
pub mod socket;
pub mod web;
mod wire;

use std::sync::Arc;

use socketioxide::SocketIo;

use crate::service::{ApiError, App, Delivery};
use crate::storage::CommitSubscriber;

/// What every handler needs: the service and the Socket.IO handle (to fan out from REST too).
#[derive(Clone)]
pub struct Shared {
    pub app: Arc<App>,
    pub io: SocketIo,
    /// Peers whose `X-Forwarded-For` names the client (`client_addr`).
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
}

/// The room of every socket of one user.
pub fn user_room(user_id: &str) -> String {
    format!("user:{user_id}")
}

/// The room of the sockets that joined one chat.
pub fn chat_room(chat_id: &str) -> String {
    format!("chat:{chat_id}")
}

/// Revokes every token of `user` issued so far (durably, before it returns) and closes every
/// socket of the user: `POST /api/auth/logout`, and whatever disables an account. A handshake
/// racing with it checks its token again once it is in the user's room (`socket::authenticate`),
/// so it is either refused or closed here.
pub async fn revoke_sessions(app: &App, io: &SocketIo, user: &str) -> Result<(), ApiError> {
    app.revoke_tokens(user).await?;
    for socket in io.to(user_room(user)).sockets() {
        socket::force_close(&socket);
    }
    Ok(())
}

/// Every authenticated socket, for presence broadcasts (presence scope `all`).
pub const PRESENCE_ROOM: &str = "presence";

/// The sockets of one user that hear presence (scope `contacts`). Apart from `user_room`: a
/// socket joins it only once its snapshot is sent, so that no transition overtakes it.
pub fn presence_room(user_id: &str) -> String {
    format!("presence:{user_id}")
}

/// Delivers the committed messages of one shard of the commit feed, in the order they were
/// committed, until the writer stops: every socket thus receives a chat's messages in
/// ascending seq.
pub async fn deliver(io: SocketIo, app: Arc<App>, mut committed: CommitSubscriber) {
    while let Some(message) = committed.recv().await {
        #[cfg(feature = "sim-faults")]
        if crate::faults::is_planted(crate::faults::PlantedFault::FanOutInWakeOrder) {
            continue;
        }
        if let Some(delivery) = app.delivery(message) {
            let started = std::time::Instant::now();
            fan_out(&io, &delivery).await;
            app.metrics().fanned_out(started);
        }
    }
}

/// Delivers a newly committed message once to every socket of every member and every socket in
/// the chat's room: one emit to the union of the rooms, which socketioxide deduplicates per
/// socket. A socket whose outgoing buffer is full misses the event; its client sees the gap in
/// `seq` and recovers it with `sync`.
pub async fn fan_out(io: &SocketIo, delivery: &Delivery) {
    #[cfg(feature = "sim-faults")]
    if crate::faults::is_planted(crate::faults::PlantedFault::DuplicateFanOut) {
        let _ = io
            .to(chat_room(&delivery.message.chat))
            .emit("new-message", &delivery.message)
            .await;
        for member in delivery.members.iter() {
            let _ = io
                .to(user_room(member))
                .emit("new-message", &delivery.message)
                .await;
        }
        return;
    }
    let mut rooms = Vec::with_capacity(delivery.members.len() + 1);
    rooms.push(chat_room(&delivery.message.chat));
    rooms.extend(delivery.members.iter().map(|m| user_room(m)));
    if let Err(error) = io.to(rooms).emit("new-message", &delivery.message).await {
        tracing::debug!(%error, chat = %delivery.message.chat, "new-message not delivered to every socket");
    }
}
