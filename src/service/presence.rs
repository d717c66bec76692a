//! Presence as a use case: counting a connection, retiring it, the snapshot a new socket gets,
//! the periodic flush that announces what changed, and reconciling the count with the sockets
//! that really exist.
//!
//! The service decides which transitions to announce (`domain::presence`: an offline grace
//! period, and changes coalesced per tick); the transport announces them. It does so while
//! holding the [`PresenceDesk`], and new sockets get their snapshot under it too, so every
//! observer sees a user's `user-online` and `user-offline` alternate, from its snapshot on.
//!
//! Scope: with [`PresenceScope::All`] (the default, as the seed did) every socket hears of every
//! user. With [`PresenceScope::Contacts`] a user's changes go only to the users who share a
//! chat with them, and the snapshot lists only those, so a connection costs in proportion to a
//! user's contacts instead of to everyone. Two users who first share a chat are introduced:
//! each online one is announced to the other ([`PresenceDesk::introduce`]), under the desk, so
//! it is ordered against snapshots and transitions like every other announcement.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::MutexGuard;

use super::{App, AuthFailure, storage_failed};
use crate::domain::contacts::Contacts;
use crate::domain::presence::{Change, Presence, PresenceScope};
use crate::limits::{CHATS_LIST_MAX, CONTACTS_LOAD_ATTEMPTS, ONLINE_USERS_SNAPSHOT_MAX};
use crate::storage::StoreError;

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
    pub scope: PresenceScope,
}

/// Whom a transition is announced to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// Every socket but the user's own.
    Everyone,
    /// The sockets of these users (the contacts of the user whose presence changed).
    Users(Vec<String>),
}

/// A transition and whom to tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub transition: Transition,
    pub audience: Audience,
}

/// What the presence lock guards: the count, and (scope `Contacts`) the contacts it needs.
#[derive(Debug)]
pub(super) struct PresenceBook {
    presence: Presence,
    contacts: Contacts,
}

impl PresenceBook {
    pub(super) fn new(grace_ms: u64) -> Self {
        Self {
            presence: Presence::new(grace_ms),
            contacts: Contacts::default(),
        }
    }
}

/// Exclusive use of the presence count, held while transitions are announced.
pub struct PresenceDesk<'a> {
    book: MutexGuard<'a, PresenceBook>,
    now_ms: u64,
    at_once: bool,
    scope: PresenceScope,
    sockets_per_user: u32,
}

impl App {
    /// Waits for the presence count; hold the desk while announcing what it answers.
    pub async fn presence(&self) -> PresenceDesk<'_> {
        let book = self.presence.lock().await;
        PresenceDesk {
            book,
            now_ms: self.now_ms(),
            at_once: self.policy.presence.tick.is_zero(),
            scope: self.policy.presence.scope,
            sockets_per_user: self.policy.max_sockets_per_user,
        }
    }

    /// The desk, with `user`'s contacts loaded when presence is scoped to contacts. They are
    /// read from storage without the lock held; a list that an introduction may have overtaken
    /// meanwhile is read again (at last under the lock, so this always ends).
    /// A storage failure is logged and answered `Unavailable`.
    pub async fn presence_for(&self, user: &str) -> Result<PresenceDesk<'_>, AuthFailure> {
        if self.policy.presence.scope == PresenceScope::All {
            return Ok(self.presence().await);
        }
        for _ in 0..CONTACTS_LOAD_ATTEMPTS {
            let generation = {
                let desk = self.presence().await;
                if desk.book.contacts.knows(user) {
                    return Ok(desk);
                }
                desk.book.contacts.generation()
            };
            let loaded = self
                .contacts_in_storage(user)
                .map_err(storage_failed(AuthFailure::Unavailable))?;
            let mut desk = self.presence().await;
            if desk.book.contacts.knows(user) {
                return Ok(desk);
            }
            if desk.book.contacts.generation() == generation {
                desk.book.contacts.learn(user, loaded);
                return Ok(desk);
            }
        }
        let mut desk = self.presence().await;
        if !desk.book.contacts.knows(user) {
            let loaded = self
                .contacts_in_storage(user)
                .map_err(storage_failed(AuthFailure::Unavailable))?;
            desk.book.contacts.learn(user, loaded);
        }
        Ok(desk)
    }

    /// Everyone who shares a chat with `user`, as storage has it.
    fn contacts_in_storage(&self, user: &str) -> Result<HashSet<String>, StoreError> {
        let chats = self.store.chats_of(user, CHATS_LIST_MAX)?;
        Ok(chats.into_iter().flat_map(|chat| chat.members).collect())
    }

    /// How often the transport should call [`PresenceDesk::tick`].
    pub fn presence_tick(&self) -> Duration {
        self.policy.presence.tick
    }

    /// Connections counted, if the count is free this instant (the simulation's probe).
    #[cfg(any(test, feature = "testing"))]
    pub fn counted_connections(&self) -> Option<usize> {
        let book = self.presence.try_lock().ok()?;
        Some(book.presence.connection_count())
    }
}

impl PresenceDesk<'_> {
    /// Whether `user` has as many connections as one user may have (`max_sockets_per_user`).
    pub fn is_full(&self, user: &str) -> bool {
        self.book.presence.connections_of(user) >= self.sockets_per_user
    }

    /// Counts connection `conn` of `user` (whose contacts [`App::presence_for`] loaded, with
    /// scope `Contacts`). Announced at once only without a tick.
    pub fn connect(&mut self, conn: &str, user: &str) -> Vec<Announcement> {
        self.book.presence.connect(conn, user);
        self.announce_at_once()
    }

    /// Retires connection `conn` (idempotent). Its user's grace period begins when it was
    /// their last; announced at once only without a tick.
    pub fn disconnect(&mut self, conn: &str) -> Vec<Announcement> {
        self.book.presence.disconnect(conn, self.now_ms);
        self.announce_at_once()
    }

    /// What changed since the last tick (grace periods that ended included), to announce.
    pub fn tick(&mut self) -> Vec<Announcement> {
        if !self.book.presence.has_pending() {
            return Vec::new();
        }
        self.flush()
    }

    fn announce_at_once(&mut self) -> Vec<Announcement> {
        if self.at_once {
            self.flush()
        } else {
            Vec::new()
        }
    }

    fn flush(&mut self) -> Vec<Announcement> {
        let changes = self.book.presence.flush(self.now_ms);
        let announcements = changes
            .into_iter()
            .map(|change| self.addressed(Transition::from(change)))
            .collect();
        self.forget_the_departed();
        announcements
    }

    fn addressed(&self, transition: Transition) -> Announcement {
        let audience = match self.scope {
            PresenceScope::All => Audience::Everyone,
            PresenceScope::Contacts => {
                let contacts = self.book.contacts.of(transition.user());
                let mut users: Vec<String> = contacts.into_iter().flatten().cloned().collect();
                users.sort_unstable();
                Audience::Users(users)
            }
        };
        Announcement {
            transition,
            audience,
        }
    }

    /// Drops the contacts of users no longer present and announced offline: nothing will be
    /// announced for them until they connect again, which loads their contacts anew.
    fn forget_the_departed(&mut self) {
        if self.scope == PresenceScope::All || self.book.contacts.is_empty() {
            return;
        }
        let presence = &self.book.presence;
        let departed: Vec<String> = self
            .book
            .contacts
            .users()
            .filter(|user| !presence.is_present(user) && !presence.is_announced(user))
            .cloned()
            .collect();
        for user in departed {
            self.book.contacts.forget(&user);
        }
    }

    /// Two users now share a chat: each announced online is announced to the other, if the
    /// other did not know them yet (scope `Contacts`; nothing with scope `All`).
    pub fn introduce(&mut self, first: &str, second: &str) -> Vec<Announcement> {
        if self.scope == PresenceScope::All {
            return Vec::new();
        }
        let introduced = self.book.contacts.introduce(first, second);
        #[cfg(feature = "sim-faults")]
        if crate::faults::is_planted(crate::faults::PlantedFault::SilentIntroductions) {
            return Vec::new();
        }
        let presence = &self.book.presence;
        let mut announcements = Vec::new();
        for (learned, observer, observed) in [
            (introduced.first_learned, first, second),
            (introduced.second_learned, second, first),
        ] {
            if learned && presence.is_announced(observed) {
                announcements.push(Announcement {
                    transition: Transition::Online(observed.to_owned()),
                    audience: Audience::Users(vec![observer.to_owned()]),
                });
            }
        }
        announcements
    }

    pub fn scope(&self) -> PresenceScope {
        self.scope
    }

    /// The counts as they stand (for checks against a model).
    pub fn state(&self) -> &Presence {
        &self.book.presence
    }

    /// The users announced online that `user` may see (everyone but `user`, or their contacts),
    /// at most [`ONLINE_USERS_SNAPSHOT_MAX`]: the snapshot a new socket of `user` is sent.
    pub fn online_except(&self, user: &str) -> Vec<String> {
        match self.scope {
            PresenceScope::All => self
                .book
                .presence
                .announced_except(user, ONLINE_USERS_SNAPSHOT_MAX),
            PresenceScope::Contacts => {
                let contacts = self.book.contacts.of(user).into_iter().flatten();
                let mut online: Vec<String> = contacts
                    .filter(|contact| self.book.presence.is_announced(contact))
                    .cloned()
                    .collect();
                online.sort_unstable();
                online.truncate(ONLINE_USERS_SNAPSHOT_MAX);
                online
            }
        }
    }

    /// Retires the counted connections that are missing from `live` for the second sweep in a
    /// row (a single miss can be a socket between its handshake and its entry into the
    /// namespace). `suspects` carries the first misses from one sweep to the next.
    pub fn sweep(
        &mut self,
        live: &HashSet<String>,
        suspects: &mut HashSet<String>,
    ) -> Vec<Announcement> {
        let missing: HashSet<String> = self
            .book
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
