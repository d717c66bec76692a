//! A small bounded cache of what never changes once stored: a user's public profile.
//!
//! Every delivered message carries its sender's profile, and a user's name, email and avatar
//! are never edited, so what was read from storage once answers every later lookup without a
//! read transaction. Only what exists is kept; the cache is bounded and, when full, emptied to
//! refill from storage (cheaper and simpler than tracking recency, and correct, since it only
//! ever holds what storage says). Chats' members do change (groups); their in-memory copy is
//! kept exact by the writer (`storage::members`).

use std::collections::HashMap;
use std::sync::Mutex;

pub use crate::storage::Members;

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

    #[test]
    fn remembers_by_id() {
        let cache = ClearingCache::<String>::new(10);
        assert!(cache.get("u1").is_none());
        cache.insert("u1", "Ada".into());
        assert_eq!(cache.get("u1").as_deref(), Some("Ada"));
        assert!(cache.get("u2").is_none());
    }

    #[test]
    fn never_holds_more_than_its_bound() {
        let cache = ClearingCache::<String>::new(3);
        for i in 0..10 {
            cache.insert(&format!("c{i}"), "Ada".into());
            assert!(cache.len() <= 3);
        }
        assert!(
            cache.get("c9").is_some(),
            "the newest entry survives a reset"
        );
    }
}
