//! Presence as a use case: counting a connection, retiring it, the snapshot a new socket gets,
//! and reconciling the count with the sockets that really exist.
//!
//! The service decides which transitions to announce; the transport announces them. It does so
//! while holding the [`PresenceDesk`], so every observer sees a user's `user-online` and
//! `user-offline` alternate, in the order they happened.

use std::collections::HashSet;

use tokio::sync::MutexGuard;

use super::App;
use crate::domain::presence::Presence;

/// A change of a user's presence, to announce to the other sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Online(String),
    Offline(String),
}

/// Exclusive use of the presence count, held while transitions are announced.
pub struct PresenceDesk<'a> {
    presence: MutexGuard<'a, Presence>,
    sockets_per_user: u32,
}

impl App {
    /// Waits for the presence count; hold the desk while announcing what it answers.
    pub async fn presence(&self) -> PresenceDesk<'_> {
        PresenceDesk {
            presence: self.presence.lock().await,
            sockets_per_user: self.policy.max_sockets_per_user,
        }
    }

    /// Connections counted, if the count is free this instant (the simulation's probe).
    #[cfg(any(test, feature = "testing"))]
    pub fn counted_connections(&self) -> Option<usize> {
        let presence = self.presence.try_lock().ok()?;
        Some(presence.connection_count())
    }
}

impl PresenceDesk<'_> {
    /// Whether `user` has as many connections as one user may have (`max_sockets_per_user`).
    pub fn is_full(&self, user: &str) -> bool {
        self.presence.connections_of(user) >= self.sockets_per_user
    }

    /// Counts connection `conn` of `user`; `Online` when it is the user's first.
    pub fn connect(&mut self, conn: &str, user: &str) -> Option<Transition> {
        self.presence
            .connect(conn, user)
            .then(|| Transition::Online(user.to_owned()))
    }

    /// Retires connection `conn`; `Offline` when it was its user's last. Idempotent.
    pub fn disconnect(&mut self, conn: &str) -> Option<Transition> {
        match self.presence.disconnect(conn)? {
            (user, true) => Some(Transition::Offline(user)),
            (_, false) => None,
        }
    }

    /// The counts as they stand (for checks against a model).
    pub fn state(&self) -> &Presence {
        &self.presence
    }

    /// Every online user but `user`: the snapshot a new socket of `user` is sent.
    pub fn online_except(&self, user: &str) -> Vec<String> {
        self.presence.online_except(user)
    }

    /// Retires the counted connections that are missing from `live` for the second sweep in a
    /// row (a single miss can be a socket between its handshake and its entry into the
    /// namespace). `suspects` carries the first misses from one sweep to the next.
    pub fn sweep(
        &mut self,
        live: &HashSet<String>,
        suspects: &mut HashSet<String>,
    ) -> Vec<Transition> {
        let missing: HashSet<String> = self
            .presence
            .connections()
            .into_iter()
            .filter(|c| !live.contains(c))
            .collect();
        let mut transitions = Vec::new();
        for stale in missing.intersection(suspects) {
            tracing::warn!(connection = %stale, "retiring a connection that vanished without a disconnect");
            transitions.extend(self.disconnect(stale));
        }
        *suspects = missing.difference(suspects).cloned().collect();
        transitions
    }
}
