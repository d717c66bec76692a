//! Presence: who is online, counted per connection.
//!
//! A user is online while at least one of their sockets is connected. The seed marked a user
//! offline when any one tab closed; counting connections fixes that. Transitions are returned to
//! the caller, which broadcasts `user-online` only on the first connection and `user-offline`
//! only when the last one closes.

use std::collections::HashMap;

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
}

impl Presence {
    /// Counts connection `conn` of `user`; true when it is the user's first (the user came
    /// online). Counting a connection already counted changes nothing and returns false.
    pub fn connect(&mut self, conn: &str, user: &str) -> bool {
        if self.users_by_connection.contains_key(conn) {
            return false;
        }
        #[cfg(feature = "sim-faults")]
        if crate::faults::is_planted(crate::faults::PlantedFault::PresenceWithoutCounting) {
            self.users_by_connection
                .insert(conn.to_owned(), user.to_owned());
            self.connections.insert(user.to_owned(), 1);
            return true;
        }
        self.users_by_connection
            .insert(conn.to_owned(), user.to_owned());
        let count = self.connections.entry(user.to_owned()).or_insert(0);
        *count += 1;
        *count == 1
    }

    /// Retires connection `conn`. Returns its user and whether it was the user's last
    /// connection (the user went offline); `None` if the connection was not counted.
    pub fn disconnect(&mut self, conn: &str) -> Option<(String, bool)> {
        let user = self.users_by_connection.remove(conn)?;
        #[cfg(feature = "sim-faults")]
        if crate::faults::is_planted(crate::faults::PlantedFault::PresenceWithoutCounting) {
            self.connections.remove(&user);
            return Some((user, true));
        }
        let count = self
            .connections
            .get_mut(&user)
            .expect("a counted connection has a user entry");
        *count -= 1;
        let went_offline = *count == 0;
        if went_offline {
            self.connections.remove(&user);
        }
        Some((user, went_offline))
    }

    #[cfg(any(test, feature = "testing"))]
    pub fn is_online(&self, user: &str) -> bool {
        self.connections.contains_key(user)
    }

    pub fn connections_of(&self, user: &str) -> u32 {
        self.connections.get(user).copied().unwrap_or(0)
    }

    /// Every online user but `user`, sorted so the answer does not depend on hash order.
    pub fn online_except(&self, user: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .connections
            .keys()
            .filter(|id| id.as_str() != user)
            .cloned()
            .collect();
        ids.sort_unstable();
        ids
    }

    #[cfg(any(test, feature = "testing"))]
    pub fn online_count(&self) -> usize {
        self.connections.len()
    }

    #[cfg(any(test, feature = "testing"))]
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

    #[test]
    fn second_tab_does_not_announce_and_first_close_does_not_retire() {
        let mut presence = Presence::default();
        assert!(presence.connect("tab1", "ada"));
        assert!(!presence.connect("tab2", "ada"));
        assert_eq!(presence.disconnect("tab1"), Some(("ada".into(), false)));
        assert!(presence.is_online("ada"));
        assert_eq!(presence.disconnect("tab2"), Some(("ada".into(), true)));
        assert!(!presence.is_online("ada"));
    }

    #[test]
    fn counting_is_idempotent_per_connection() {
        let mut presence = Presence::default();
        assert!(presence.connect("tab1", "ada"));
        assert!(!presence.connect("tab1", "ada"));
        assert_eq!(presence.connections_of("ada"), 1);
        assert_eq!(presence.disconnect("tab1"), Some(("ada".into(), true)));
        assert_eq!(presence.disconnect("tab1"), None);
        assert_eq!(presence.disconnect("never"), None);
        assert_eq!(presence.connection_count(), 0);
    }

    #[test]
    fn online_except_excludes_caller_and_is_sorted() {
        let mut presence = Presence::default();
        for user in ["c", "a", "b"] {
            presence.connect(user, user);
        }
        assert_eq!(presence.online_except("b"), vec!["a", "c"]);
    }

    proptest! {
        /// Against a model (a set of live connections per user): counts agree, and a transition
        /// is reported exactly when a user's count crosses between zero and one.
        #[test]
        fn counts_match_model(ops in prop::collection::vec((0u8..12, any::<bool>()), 0..300)) {
            let mut presence = Presence::default();
            let mut live: std::collections::BTreeMap<u8, u8> = Default::default(); // conn -> user
            let user_of = |conn: u8| (conn % 3).to_string();
            for (conn, is_connect) in ops {
                let user = user_of(conn);
                let before = live.values().filter(|&&u| u.to_string() == user).count();
                if is_connect {
                    let came_online = presence.connect(&conn.to_string(), &user);
                    let fresh = live.insert(conn, conn % 3).is_none();
                    prop_assert_eq!(came_online, fresh && before == 0);
                } else {
                    let retired = presence.disconnect(&conn.to_string());
                    match live.remove(&conn) {
                        Some(_) => prop_assert_eq!(retired, Some((user.clone(), before == 1))),
                        None => prop_assert_eq!(retired, None),
                    }
                }
                let after = live.values().filter(|&&u| u.to_string() == user).count();
                prop_assert_eq!(presence.connections_of(&user) as usize, after);
                prop_assert_eq!(presence.is_online(&user), after > 0);
            }
            prop_assert_eq!(presence.connection_count(), live.len());
        }
    }
}
