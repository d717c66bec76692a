//! Chat membership, kept in memory.
//!
//! Every `send-message` and `typing` event checks that its sender is a member of the chat. A
//! chat's members never change once it exists (chats are 1:1 and nobody leaves one), so the
//! members read from storage once answer every later check without a read transaction: at
//! 12,000 messages/s that read was a tenth of the socket workers' CPU (BENCHMARKS.md). Only
//! chats that exist are kept; the cache is bounded and, when full, emptied to refill from
//! storage (cheaper and simpler than tracking recency, and correct, since it only ever holds
//! what storage says).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The member ids of one chat, shared with the sends that fan out to them.
pub type Members = Arc<[String]>;

pub struct MembersCache {
    chats: Mutex<HashMap<String, Members>>,
    max_chats: usize,
}

impl MembersCache {
    pub fn new(max_chats: usize) -> Self {
        Self {
            chats: Mutex::new(HashMap::new()),
            max_chats: max_chats.max(1),
        }
    }

    pub fn get(&self, chat: &str) -> Option<Members> {
        self.chats
            .lock()
            .expect("never poisoned")
            .get(chat)
            .cloned()
    }

    /// Remembers the members of an existing chat.
    pub fn insert(&self, chat: &str, members: Members) {
        let mut chats = self.chats.lock().expect("never poisoned");
        if chats.len() >= self.max_chats {
            chats.clear();
        }
        chats.insert(chat.to_owned(), members);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.chats.lock().expect("never poisoned").len()
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
        let cache = MembersCache::new(10);
        assert!(cache.get("c1").is_none());
        cache.insert("c1", members(&["a", "b"]));
        assert_eq!(cache.get("c1").as_deref(), Some(&members(&["a", "b"])[..]));
        assert!(cache.get("c2").is_none());
    }

    #[test]
    fn never_holds_more_than_its_bound() {
        let cache = MembersCache::new(3);
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
