//! Presence as a use case: counting a connection, retiring it, the snapshot a new socket gets,
//! the periodic flush that announces what changed, and reconciling the count with the sockets
//! that really exist.
//!
//! The service decides which transitions to announce (`domain::presence`: an offline grace
//! period, and changes coalesced per tick); the transport announces them. It does so while
//! holding the [`PresenceDesk`], and new sockets get their snapshot under it too, so every
//! observer sees a user's `user-online` and `user-offline` alternate, from its snapshot on.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::MutexGuard;

use super::App;
use crate::domain::presence::{Change, Presence};
use crate::limits::ONLINE_USERS_SNAPSHOT_MAX;

/// A change of a user's presence, to announce to the other sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Online(String),
    Offline(String),
}

impl Transition {
    /// The user whose presence changed.
    pub fn user(&self) -> &str {
        match self {
            Transition::Online(user) | Transition::Offline(user) => user,
        }
    }
}

impl From<Change> for Transition {
    fn from(change: Change) -> Self {
        if change.online {
            Transition::Online(change.user)
        } else {
            Transition::Offline(change.user)
        }
    }
}

/// How presence is announced, from `Config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceRules {
    /// How long a user stays online after their last socket closed.
    pub grace: Duration,
    /// How often changes are gathered and announced; zero announces each change at once.
    pub tick: Duration,
}

/// Exclusive use of the presence count, held while transitions are announced.
pub struct PresenceDesk<'a> {
    presence: MutexGuard<'a, Presence>,
    now_ms: u64,
    at_once: bool,
    sockets_per_user: u32,
}

impl App {
    /// Waits for the presence count; hold the desk while announcing what it answers.
    pub async fn presence(&self) -> PresenceDesk<'_> {
        let presence = self.presence.lock().await;
        PresenceDesk {
            presence,
            now_ms: self.now_ms(),
            at_once: self.policy.presence.tick.is_zero(),
            sockets_per_user: self.policy.max_sockets_per_user,
        }
    }

    /// How often the transport should call [`PresenceDesk::tick`].
    pub fn presence_tick(&self) -> Duration {
        self.policy.presence.tick
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

    /// Counts connection `conn` of `user`. Announced at once only without a tick.
    pub fn connect(&mut self, conn: &str, user: &str) -> Vec<Transition> {
        self.presence.connect(conn, user);
        self.announce_at_once()
    }

    /// Retires connection `conn` (idempotent). Its user's grace period begins when it was
    /// their last; announced at once only without a tick.
    pub fn disconnect(&mut self, conn: &str) -> Vec<Transition> {
        self.presence.disconnect(conn, self.now_ms);
        self.announce_at_once()
    }

    /// What changed since the last tick (grace periods that ended included), to announce.
    pub fn tick(&mut self) -> Vec<Transition> {
        if !self.presence.has_pending() {
            return Vec::new();
        }
        self.flush()
    }

    fn announce_at_once(&mut self) -> Vec<Transition> {
        if self.at_once {
            self.flush()
        } else {
            Vec::new()
        }
    }

    fn flush(&mut self) -> Vec<Transition> {
        let changes = self.presence.flush(self.now_ms);
        changes.into_iter().map(Transition::from).collect()
    }

    /// The counts as they stand (for checks against a model).
    pub fn state(&self) -> &Presence {
        &self.presence
    }

    /// Every user announced online but `user` (at most [`ONLINE_USERS_SNAPSHOT_MAX`]): the
    /// snapshot a new socket of `user` is sent.
    pub fn online_except(&self, user: &str) -> Vec<String> {
        self.presence
            .announced_except(user, ONLINE_USERS_SNAPSHOT_MAX)
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
