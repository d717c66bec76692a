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
}

impl Presence {
    /// Counts a new connection; true when it is the user's first (the user came online).
    pub fn connect(&mut self, user: &str) -> bool {
        let count = self.connections.entry(user.to_owned()).or_insert(0);
        *count += 1;
        *count == 1
    }

    /// Counts a closed connection; true when it was the user's last (the user went offline).
    /// A disconnect without a matching connect is ignored rather than driving the count negative.
    pub fn disconnect(&mut self, user: &str) -> bool {
        match self.connections.get_mut(user) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            Some(_) => {
                self.connections.remove(user);
                true
            }
            None => false,
        }
    }

    pub fn is_online(&self, user: &str) -> bool {
        self.connections.contains_key(user)
    }

    pub fn connections_of(&self, user: &str) -> u32 {
        self.connections.get(user).copied().unwrap_or(0)
    }

    /// Every online user but `user`, sorted so the answer does not depend on hash order.
    pub fn online_except(&self, user: &str) -> Vec<String> {
        let mut ids: Vec<String> =
            self.connections.keys().filter(|id| id.as_str() != user).cloned().collect();
        ids.sort_unstable();
        ids
    }

    pub fn online_count(&self) -> usize {
        self.connections.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn second_tab_does_not_announce_and_first_close_does_not_retire() {
        let mut presence = Presence::default();
        assert!(presence.connect("ada"));
        assert!(!presence.connect("ada"));
        assert!(!presence.disconnect("ada"));
        assert!(presence.is_online("ada"));
        assert!(presence.disconnect("ada"));
        assert!(!presence.is_online("ada"));
    }

    #[test]
    fn unmatched_disconnect_is_ignored() {
        let mut presence = Presence::default();
        assert!(!presence.disconnect("ghost"));
        assert!(presence.connect("ghost"));
    }

    #[test]
    fn online_except_excludes_caller_and_is_sorted() {
        let mut presence = Presence::default();
        for user in ["c", "a", "b"] {
            presence.connect(user);
        }
        assert_eq!(presence.online_except("b"), vec!["a", "c"]);
    }

    proptest! {
        /// Against a model: the count equals connects minus disconnects (never below zero), and a
        /// transition is reported exactly when the count crosses between zero and one.
        #[test]
        fn counts_match_model(ops in prop::collection::vec((0u8..4, any::<bool>()), 0..200)) {
            let mut presence = Presence::default();
            let mut model = [0u32; 4];
            for (user, is_connect) in ops {
                let id = user.to_string();
                let i = usize::from(user);
                if is_connect {
                    let came_online = presence.connect(&id);
                    prop_assert_eq!(came_online, model[i] == 0);
                    model[i] += 1;
                } else {
                    let went_offline = presence.disconnect(&id);
                    prop_assert_eq!(went_offline, model[i] == 1);
                    model[i] = model[i].saturating_sub(1);
                }
                prop_assert_eq!(presence.connections_of(&id), model[i]);
                prop_assert_eq!(presence.is_online(&id), model[i] > 0);
            }
            prop_assert_eq!(presence.online_count(), model.iter().filter(|&&c| c > 0).count());
        }
    }
}
