//! The in-memory copy of chats' member lists, exact although members change.
//!
//! Every `send-message`, `join-chat` and `typing` checks that its user is a member, and at
//! 12,000 messages/s the read transaction for that was a tenth of the socket workers' CPU
//! (BENCHMARKS.md), so the members of the chats in use are kept in memory. Members change (groups),
//! so the copy has to follow storage exactly:
//!
//! - Each entry carries the version it was read at: the seq of the chat's last system message
//!   (0 before any), which grows with every membership change.
//! - The writer hands every membership change it committed to [`MembersCache::committed`]
//!   after the commit and before it answers anyone, so from the moment a change is acknowledged
//!   (or delivered) every lookup sees it.
//! - A reader that missed the cache fills it from a read snapshot; [`MembersCache::fill`] keeps
//!   that only if it is newer than the entry, and only if the cache was not emptied since the
//!   reader began (its snapshot may predate a change whose entry the emptying threw away).
//!
//! The writer's own check at append remains the authority: a send that raced with a removal is
//! refused there. Bounded by chats and by member ids held; when full, the copy is emptied and
//! refills from storage (cheaper and simpler than tracking recency).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The member ids of one chat in joining order, shared with the deliveries that fan out to them.
pub type Members = Arc<[String]>;

pub struct MembersCache {
    inner: Mutex<Inner>,
    max_chats: usize,
    max_ids: usize,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Member ids held over all entries.
    ids: usize,
    /// Raised each time the cache is emptied.
    generation: u64,
}

struct Entry {
    version: u64,
    members: Members,
}

impl MembersCache {
    pub fn new(max_chats: usize, max_ids: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_chats: max_chats.max(1),
            max_ids: max_ids.max(1),
        }
    }

    pub fn get(&self, chat: &str) -> Option<Members> {
        let inner = self.inner.lock().expect("never poisoned");
        inner.entries.get(chat).map(|e| Arc::clone(&e.members))
    }

    /// To be read before a reader's snapshot and handed back to [`Self::fill`].
    pub fn generation(&self) -> u64 {
        self.inner.lock().expect("never poisoned").generation
    }

    /// What a reader found in storage at `version`, having read `generation` before it opened
    /// its snapshot.
    pub fn fill(&self, chat: &str, generation: u64, version: u64, members: Members) {
        let mut inner = self.inner.lock().expect("never poisoned");
        if inner.generation == generation {
            self.put(&mut inner, chat, version, members);
        }
    }

    /// A membership change the writer committed: always the newest state of that chat.
    pub fn committed(&self, chat: &str, version: u64, members: Members) {
        let mut inner = self.inner.lock().expect("never poisoned");
        self.put(&mut inner, chat, version, members);
    }

    fn put(&self, inner: &mut Inner, chat: &str, version: u64, members: Members) {
        if let Some(entry) = inner.entries.get(chat)
            && entry.version > version
        {
            return;
        }
        if let Some(old) = inner.entries.remove(chat) {
            inner.ids -= old.members.len();
        }
        if inner.entries.len() >= self.max_chats || inner.ids + members.len() > self.max_ids {
            inner.entries.clear();
            inner.ids = 0;
            inner.generation += 1;
        }
        inner.ids += members.len();
        inner
            .entries
            .insert(chat.to_owned(), Entry { version, members });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().expect("never poisoned").entries.len()
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
        let cache = MembersCache::new(10, 100);
        assert!(cache.get("c1").is_none());
        cache.fill("c1", cache.generation(), 0, members(&["a", "b"]));
        assert_eq!(cache.get("c1").as_deref(), Some(&members(&["a", "b"])[..]));
        assert!(cache.get("c2").is_none());
    }

    #[test]
    fn an_older_read_never_replaces_a_committed_change() {
        let cache = MembersCache::new(10, 100);
        let generation = cache.generation();
        cache.committed("c", 7, members(&["a"]));
        cache.fill("c", generation, 3, members(&["a", "b"]));
        assert_eq!(cache.get("c").as_deref(), Some(&members(&["a"])[..]));
        cache.committed("c", 9, members(&["a", "c"]));
        assert_eq!(cache.get("c").as_deref(), Some(&members(&["a", "c"])[..]));
    }

    #[test]
    fn a_read_begun_before_the_cache_was_emptied_is_not_kept() {
        let cache = MembersCache::new(2, 100);
        let generation = cache.generation();
        // The change is committed, then thrown away by an emptying...
        cache.committed("c", 7, members(&["a"]));
        cache.committed("x", 0, members(&["a"]));
        cache.committed("y", 0, members(&["a"]));
        assert!(cache.get("c").is_none());
        // ...and a read whose snapshot predates the change must not bring the old list back.
        cache.fill("c", generation, 3, members(&["a", "b"]));
        assert!(cache.get("c").is_none());
        cache.fill("c", cache.generation(), 7, members(&["a"]));
        assert!(cache.get("c").is_some());
    }

    #[test]
    fn never_holds_more_than_its_bounds() {
        let cache = MembersCache::new(3, 100);
        for i in 0..10 {
            cache.committed(&format!("c{i}"), 0, members(&["a", "b"]));
            assert!(cache.len() <= 3);
        }
        assert!(
            cache.get("c9").is_some(),
            "the newest entry survives a reset"
        );
        let by_ids = MembersCache::new(100, 5);
        by_ids.committed("a", 0, members(&["1", "2", "3"]));
        by_ids.committed("b", 0, members(&["1", "2", "3"]));
        assert!(by_ids.get("a").is_none() && by_ids.get("b").is_some());
    }
}
