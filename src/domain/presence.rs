//! Presence: who is online, counted per connection, with an offline grace period and
//! announcements coalesced per tick.
//!
//! A user is *present* while at least one of their sockets is connected, and for a grace period
//! after the last one closed: a phone that drops off the network for a second and comes back
//! is never announced offline. (The seed marked a user offline when any one tab closed;
//! counting connections fixes that.)
//!
//! What observers were told is kept apart from what is true: [`Presence::flush`] compares the
//! two for every user that changed since the last flush and returns one [`Change`] per user
//! whose announced state differs, so a user who left and came back between two flushes
//! produces nothing, and for every user the changes announced alternate online/offline.
//! New sockets get a snapshot of the announced state ([`Presence::announced_except`]), so the
//! changes that follow it also alternate from it.

use std::collections::{BTreeSet, HashMap, HashSet};

/// Who hears of a user's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PresenceScope {
    /// Every connected user.
    #[default]
    All,
    /// The users who share a chat with them.
    Contacts,
}

/// A change of what observers are told about a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub user: String,
    pub online: bool,
}

#[derive(Debug, Default)]
pub struct Presence {
    /// Live connections per user id. A user with no connections has no entry, so the map's size
    /// is bounded by the number of connected users.
    connections: HashMap<String, u32>,
    /// The user of each counted connection. Keyed by connection so that counting is idempotent:
    /// a connection counted twice, or retired twice (the transport can report a close both from
    /// its disconnect handler and from a connect handler that found the socket already gone),
    /// moves the count once.
    users_by_connection: HashMap<String, String>,
    /// Users whose last connection closed, with the time (ms) their grace period ends.
    leaving: HashMap<String, u64>,
    /// Users announced online: what every observer has been told.
    announced: HashSet<String>,
    /// Users whose presence may differ from what was announced, for the next flush. Sorted, so
    /// the order of announcements does not depend on hash order.
    changed: BTreeSet<String>,
    grace_ms: u64,
}

impl Presence {
    /// A user stays present for `grace_ms` after their last connection closed (0: none).
    pub fn new(grace_ms: u64) -> Self {
        Self {
            grace_ms,
            ..Self::default()
        }
    }

    /// Counts connection `conn` of `user`; true when it is the user's first (the user is
    /// connected again). Counting a connection already counted changes nothing and returns false.
    pub fn connect(&mut self, conn: &str, user: &str) -> bool {
        if self.users_by_connection.contains_key(conn) {
            return false;
        }
        self.users_by_connection
            .insert(conn.to_owned(), user.to_owned());
        self.leaving.remove(user);
        self.changed.insert(user.to_owned());
        #[cfg(feature = "sim-faults")]
        if crate::faults::is_planted(crate::faults::PlantedFault::PresenceWithoutCounting) {
            self.connections.insert(user.to_owned(), 1);
            return true;
        }
        let count = self.connections.entry(user.to_owned()).or_insert(0);
        *count += 1;
        *count == 1
    }

    /// Retires connection `conn` at `now_ms`. Returns its user and whether it was the user's
    /// last connection (their grace period begins); `None` if the connection was not counted.
    pub fn disconnect(&mut self, conn: &str, now_ms: u64) -> Option<(String, bool)> {
        let user = self.users_by_connection.remove(conn)?;
        let last = self.uncount(&user);
        if last {
            if self.grace_ms > 0 {
                self.leaving
                    .insert(user.clone(), now_ms.saturating_add(self.grace_ms));
            }
            self.changed.insert(user.clone());
        }
        Some((user, last))
    }

    /// Takes one connection off `user`'s count; true when it was the last.
    fn uncount(&mut self, user: &str) -> bool {
        #[cfg(feature = "sim-faults")]
        if crate::faults::is_planted(crate::faults::PlantedFault::PresenceWithoutCounting) {
            self.connections.remove(user);
            return true;
        }
        let count = self
            .connections
            .get_mut(user)
            .expect("a counted connection has a user entry");
        *count -= 1;
        let last = *count == 0;
        if last {
            self.connections.remove(user);
        }
        last
    }

    /// Ends the grace periods that are over at `now_ms` and returns what observers must be told:
    /// one change per user whose presence differs from what was announced, sorted by user.
    pub fn flush(&mut self, now_ms: u64) -> Vec<Change> {
        let expired: Vec<String> = self
            .leaving
            .iter()
            .filter(|(_, ends)| **ends <= now_ms)
            .map(|(user, _)| user.clone())
            .collect();
        for user in expired {
            self.leaving.remove(&user);
            self.changed.insert(user);
        }
        let mut changes = Vec::new();
        for user in std::mem::take(&mut self.changed) {
            let present = self.is_present(&user);
            if present != self.announced.contains(&user) {
                if present {
                    self.announced.insert(user.clone());
                } else {
                    self.announced.remove(&user);
                }
                changes.push(Change {
                    user,
                    online: present,
                });
            }
        }
        changes
    }

    /// Whether anything may be waiting for [`Presence::flush`] (a change, or a grace period).
    pub fn has_pending(&self) -> bool {
        !self.changed.is_empty() || !self.leaving.is_empty()
    }

    /// Connected, or within the grace period after the last connection closed.
    pub fn is_present(&self, user: &str) -> bool {
        self.connections.contains_key(user) || self.leaving.contains_key(user)
    }

    /// Every user announced online but `user`, sorted, at most `max` of them: the snapshot a
    /// new socket of `user` is sent.
    pub fn announced_except(&self, user: &str, max: usize) -> Vec<String> {
        let mut ids: Vec<String> = self
            .announced
            .iter()
            .filter(|id| id.as_str() != user)
            .cloned()
            .collect();
        ids.sort_unstable();
        ids.truncate(max);
        ids
    }

    /// Whether observers were told `user` is online.
    pub fn is_announced(&self, user: &str) -> bool {
        self.announced.contains(user)
    }

    #[cfg(any(test, feature = "testing"))]
    pub fn is_online(&self, user: &str) -> bool {
        self.announced.contains(user)
    }

    pub fn connections_of(&self, user: &str) -> u32 {
        self.connections.get(user).copied().unwrap_or(0)
    }

    /// Users announced online (the metrics' `palaver_users_online`).
    pub fn online_count(&self) -> usize {
        self.announced.len()
    }

    /// Connections counted (the metrics' `palaver_sockets`).
    pub fn connection_count(&self) -> usize {
        self.users_by_connection.len()
    }

    /// Every counted connection, sorted (for reconciling against the transport's live set).
    pub fn connections(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.users_by_connection.keys().cloned().collect();
        ids.sort_unstable();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GRACE: u64 = 5_000;

    fn online(user: &str) -> Change {
        Change {
            user: user.into(),
            online: true,
        }
    }

    fn offline(user: &str) -> Change {
        Change {
            user: user.into(),
            online: false,
        }
    }

    #[test]
    fn second_tab_does_not_announce_and_first_close_does_not_retire() {
        let mut presence = Presence::new(0);
        assert!(presence.connect("tab1", "ada"));
        assert!(!presence.connect("tab2", "ada"));
        assert_eq!(presence.flush(0), vec![online("ada")]);
        assert_eq!(presence.disconnect("tab1", 0), Some(("ada".into(), false)));
        assert_eq!(presence.flush(0), vec![]);
        assert!(presence.is_online("ada"));
        assert_eq!(presence.disconnect("tab2", 0), Some(("ada".into(), true)));
        assert_eq!(presence.flush(0), vec![offline("ada")]);
        assert!(!presence.is_online("ada"));
    }

    #[test]
    fn counting_is_idempotent_per_connection() {
        let mut presence = Presence::new(0);
        assert!(presence.connect("tab1", "ada"));
        assert!(!presence.connect("tab1", "ada"));
        assert_eq!(presence.connections_of("ada"), 1);
        assert_eq!(presence.disconnect("tab1", 0), Some(("ada".into(), true)));
        assert_eq!(presence.disconnect("tab1", 0), None);
        assert_eq!(presence.disconnect("never", 0), None);
        assert_eq!(presence.connection_count(), 0);
    }

    #[test]
    fn a_reconnect_within_the_grace_period_announces_nothing() {
        let mut presence = Presence::new(GRACE);
        presence.connect("tab1", "ada");
        assert_eq!(presence.flush(0), vec![online("ada")]);
        presence.disconnect("tab1", 1_000);
        assert_eq!(presence.flush(1_000 + GRACE - 1), vec![]);
        assert!(
            presence.is_online("ada"),
            "still announced online in the grace"
        );
        presence.connect("tab2", "ada");
        assert_eq!(presence.flush(1_000 + GRACE), vec![]);
        assert_eq!(presence.flush(100_000), vec![]);
    }

    #[test]
    fn the_grace_period_ends_in_offline() {
        let mut presence = Presence::new(GRACE);
        presence.connect("tab1", "ada");
        presence.flush(0);
        presence.disconnect("tab1", 1_000);
        assert!(presence.has_pending());
        assert_eq!(presence.flush(1_000 + GRACE), vec![offline("ada")]);
        assert!(!presence.has_pending());
        assert_eq!(presence.announced_except("bob", 10), Vec::<String>::new());
    }

    #[test]
    fn a_blip_between_two_flushes_announces_nothing_even_without_grace() {
        let mut presence = Presence::new(0);
        presence.connect("tab1", "ada");
        presence.flush(0);
        presence.disconnect("tab1", 10);
        presence.connect("tab2", "ada");
        assert_eq!(presence.flush(20), vec![]);
        presence.connect("tab1", "bob");
        presence.disconnect("tab1", 30);
        assert_eq!(presence.flush(40), vec![], "bob came and went unseen");
    }

    #[test]
    fn snapshots_are_what_was_announced_sorted_and_bounded() {
        let mut presence = Presence::new(0);
        for user in ["c", "a", "b", "d"] {
            presence.connect(user, user);
        }
        assert_eq!(presence.announced_except("b", 10), Vec::<String>::new());
        presence.flush(0);
        assert_eq!(presence.announced_except("b", 10), vec!["a", "c", "d"]);
        assert_eq!(presence.announced_except("b", 2), vec!["a", "c"]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Connect(u8),
        Disconnect(u8),
        Advance(u64),
        Flush,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..12).prop_map(Op::Connect),
            (0u8..12).prop_map(Op::Disconnect),
            (0u64..3_000).prop_map(Op::Advance),
            Just(Op::Flush),
        ]
    }

    proptest! {
        /// Against a model (live connections per user, and when each user's last one closed):
        /// counts agree; after every flush the announced set is exactly the users connected or
        /// within their grace; and per user the changes alternate, starting from offline.
        #[test]
        fn flushes_match_the_model(grace in prop_oneof![Just(0u64), 1u64..4_000], ops in prop::collection::vec(op(), 0..300)) {
            let mut presence = Presence::new(grace);
            let mut live: std::collections::BTreeMap<u8, String> = Default::default();
            let mut last_closed: HashMap<String, u64> = HashMap::new();
            let mut told: HashMap<String, bool> = HashMap::new();
            let mut now = 0u64;
            let user_of = |conn: u8| (conn % 3).to_string();
            for op in ops {
                match op {
                    Op::Connect(conn) => {
                        let user = user_of(conn);
                        let first = !live.values().any(|u| *u == user);
                        let fresh = !live.contains_key(&conn);
                        prop_assert_eq!(presence.connect(&conn.to_string(), &user), fresh && first);
                        live.insert(conn, user.clone());
                        last_closed.remove(&user);
                    }
                    Op::Disconnect(conn) => {
                        let retired = presence.disconnect(&conn.to_string(), now);
                        match live.remove(&conn) {
                            Some(user) => {
                                let last = !live.values().any(|u| *u == user);
                                prop_assert_eq!(retired, Some((user.clone(), last)));
                                if last {
                                    last_closed.insert(user, now);
                                }
                            }
                            None => prop_assert_eq!(retired, None),
                        }
                    }
                    Op::Advance(ms) => now += ms,
                    Op::Flush => {
                        for change in presence.flush(now) {
                            let before = told.insert(change.user.clone(), change.online).unwrap_or(false);
                            prop_assert_ne!(before, change.online, "changes alternate");
                        }
                        for user in ["0", "1", "2"] {
                            let connected = live.values().any(|u| u == user);
                            let in_grace = last_closed.get(user).is_some_and(|at| at + grace > now);
                            prop_assert_eq!(presence.is_online(user), connected || in_grace);
                            prop_assert_eq!(told.get(user).copied().unwrap_or(false), connected || in_grace);
                        }
                    }
                }
            }
            prop_assert_eq!(presence.connection_count(), live.len());
        }
    }
}
