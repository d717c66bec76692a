//! Transport: the only code that knows HTTP, Socket.IO and JSON.
//!
//! `rest` maps the contract's routes onto service calls, `socket` its events, `payload` decodes
//! client events into typed commands (shared with the fuzz targets), `wire` names the fields of
//! the contract's objects, and [`deliver`] fans committed changes out, in commit order, from the
//! writer's commit feed: a REST POST and a socket `send-message` alike only append and answer,
//! and so do the group changes and `mark-read`s; their events (`member-added`, `read`, …) are
//! sent from the feed too, so they follow the commits' order.
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

use serde_json::json;
use socketioxide::SocketIo;
use socketioxide::adapter::LocalAdapter;
use socketioxide::operators::BroadcastOperators;

use crate::domain::membership::Role;
use crate::service::{ApiError, App, Delivery};
use crate::storage::{CommitSubscriber, Committed, Members, SystemEvent, SystemKind};

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
    if let Some(sockets) = namespace(io) {
        for socket in sockets.to(user_room(user)).sockets() {
            socket::force_close(&socket);
        }
    }
    Ok(())
}

/// The default namespace, to broadcast on; `None` once Socket.IO is closed (a shutdown, or a
/// storage failure), where `io.to` would panic on the missing namespace (sim seed 309): nobody
/// is left to tell then.
pub fn namespace(io: &SocketIo) -> Option<BroadcastOperators<LocalAdapter>> {
    io.of("/")
}

/// Every authenticated socket, for presence broadcasts (presence scope `all`).
pub const PRESENCE_ROOM: &str = "presence";

/// The sockets of one user that hear presence (scope `contacts`). Apart from `user_room`: a
/// socket joins it only once its snapshot is sent, so that no transition overtakes it.
pub fn presence_room(user_id: &str) -> String {
    format!("presence:{user_id}")
}

/// Delivers the committed changes of one shard of the commit feed, in the order they were
/// committed, until the writer stops: every socket thus receives a chat's messages in
/// ascending seq, and a removed member's sockets leave the chat's room before anything
/// committed after the removal is fanned out.
pub async fn deliver(io: SocketIo, app: Arc<App>, mut committed: CommitSubscriber) {
    while let Some(item) = committed.recv().await {
        match item {
            Committed::Message {
                message,
                system,
                members,
            } => {
                #[cfg(feature = "sim-faults")]
                if system.is_none()
                    && crate::faults::is_planted(crate::faults::PlantedFault::FanOutInWakeOrder)
                {
                    continue;
                }
                #[cfg(feature = "sim-faults")]
                let members = crate::faults::former_members(&message.chat, members);
                deliver_message(&io, &app, message, system, members).await;
            }
            Committed::ChatCreated { chat, members } => {
                announce_chat(&io, &app, "chat-created", &chat, &members).await;
                for (index, member) in members.iter().enumerate() {
                    socket::introduce_to(&io, &app, member, &members[index + 1..]).await;
                }
            }
            Committed::Read {
                chat,
                user,
                last_read_seq,
                members,
            } => {
                let event = json!({ "chatId": chat, "userId": user, "lastReadSeq": last_read_seq });
                let rooms: Vec<String> = members.iter().map(|m| user_room(m)).collect();
                if let Some(sockets) = namespace(&io) {
                    let _ = sockets.to(rooms).emit("read", &event).await;
                }
            }
        }
    }
}

async fn deliver_message(
    io: &SocketIo,
    app: &App,
    message: crate::storage::MessageRecord,
    system: Option<SystemEvent>,
    members: Members,
) {
    let Some(sockets) = namespace(io) else {
        return;
    };
    let chat = message.chat.clone();
    if let Some(event) = &system
        && matches!(event.kind, SystemKind::Removed | SystemKind::Left)
    {
        // At once, and before any later message of the chat is fanned out (same shard).
        let _ = sockets
            .clone()
            .to(user_room(&event.user))
            .leave(chat_room(&chat))
            .await;
    }
    let Some(delivery) = app.delivery(message, system.clone(), members) else {
        return;
    };
    let started = std::time::Instant::now();
    fan_out(io, &delivery).await;
    app.metrics().fanned_out(started);
    let Some(event) = system else {
        return;
    };
    let members = &delivery.members;
    let mut rooms: Vec<String> = members.iter().map(|m| user_room(m)).collect();
    match event.kind {
        SystemKind::Added => {
            let body = json!({
                "chatId": chat,
                "user": app.profile(&event.user),
                "role": Role::Member.as_str(),
            });
            let _ = sockets.to(rooms).emit("member-added", &body).await;
            socket::introduce_to(io, app, &event.user, members).await;
            // The chat appears in the added user's list.
            announce_chat(
                io,
                app,
                "chat-updated",
                &chat,
                std::slice::from_ref(&event.user),
            )
            .await;
        }
        SystemKind::Removed | SystemKind::Left => {
            rooms.push(user_room(&event.user));
            let body = json!({
                "chatId": chat,
                "userId": event.user,
                "ownerId": members.first(),
            });
            let _ = sockets.to(rooms).emit("member-removed", &body).await;
        }
        SystemKind::Renamed => announce_chat(io, app, "chat-updated", &chat, members).await,
    }
}

/// Sends each of `members` the chat as they see it (a Chat object is per viewer: its
/// `participant`, `lastReadSeq` and `unreadCount` are theirs).
async fn announce_chat(io: &SocketIo, app: &App, event: &str, chat: &str, members: &[String]) {
    let Some(sockets) = namespace(io) else {
        return;
    };
    for member in members {
        if let Some(view) = app.chat_for(chat, member) {
            let _ = sockets
                .clone()
                .to(user_room(member))
                .emit(event, &view)
                .await;
        }
    }
}

/// Delivers a newly committed message once to every socket of every member and every socket in
/// the chat's room: one emit to the union of the rooms, which socketioxide deduplicates per
/// socket. A socket whose outgoing buffer is full misses the event; its client sees the gap in
/// `seq` and recovers it with `sync`.
pub async fn fan_out(io: &SocketIo, delivery: &Delivery) {
    let Some(sockets) = namespace(io) else {
        return;
    };
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
    if let Err(error) = sockets
        .to(rooms)
        .emit("new-message", &delivery.message)
        .await
    {
        tracing::debug!(%error, chat = %delivery.message.chat, "new-message not delivered to every socket");
    }
}
