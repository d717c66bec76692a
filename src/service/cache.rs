//! Small bounded caches of what never changes once stored: a chat's members and a user's public
//! profile.
//!
//! Every `send-message` and `typing` event checks that its sender is a member of the chat, and
//! every delivered message carries its sender's profile. A chat's members never change once it
//! exists (chats are 1:1 and nobody leaves one), and a user's name, email and avatar are never
//! edited, so what was read from storage once answers every later lookup without a read
//! transaction: at 12,000 messages/s the membership read was a tenth of the socket workers' CPU
//! (BENCHMARKS.md). Only what exists is kept; a cache is bounded and, when full, emptied to
//! refill from storage (cheaper and simpler than tracking recency, and correct, since it only
//! ever holds what storage says).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The member ids of one chat, shared with the deliveries that fan out to them.
pub type Members = Arc<[String]>;

/// At most `max` entries by id; emptied when an insert finds it full.
pub struct ClearingCache<V> {
    entries: Mutex<HashMap<String, V>>,
    max: usize,
}

impl<V: Clone> ClearingCache<V> {
    pub fn new(max: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    pub fn get(&self, id: &str) -> Option<V> {
        self.entries
            .lock()
            .expect("never poisoned")
            .get(id)
            .cloned()
    }

    /// Remembers what storage holds for `id`.
    pub fn insert(&self, id: &str, value: V) {
        let mut entries = self.entries.lock().expect("never poisoned");
        if entries.len() >= self.max {
            entries.clear();
        }
        entries.insert(id.to_owned(), value);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().expect("never poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ids: &[&str]) -> Members {
        ids.iter().map(|id| id.to_string()).collect()
    }

    #[test]
    fn remembers_members_by_chat() {
        let cache = ClearingCache::<Members>::new(10);
        assert!(cache.get("c1").is_none());
        cache.insert("c1", members(&["a", "b"]));
        assert_eq!(cache.get("c1").as_deref(), Some(&members(&["a", "b"])[..]));
        assert!(cache.get("c2").is_none());
    }

    #[test]
    fn never_holds_more_than_its_bound() {
        let cache = ClearingCache::<Members>::new(3);
        for i in 0..10 {
            cache.insert(&format!("c{i}"), members(&["a", "b"]));
            assert!(cache.len() <= 3);
        }
        assert!(
            cache.get("c9").is_some(),
            "the newest entry survives a reset"
        );
    }
}
