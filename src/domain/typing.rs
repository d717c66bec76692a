//! Typing indicators of one socket: which chats it is shown typing in, and when that ends.
//!
//! The other members must never see "… is typing" stuck on. So the rate limit applies to
//! `isTyping: true` only; a `false` is always let through once for every `true` that was shown
//! (and never otherwise, which bounds it); and a chat whose last shown `true` is older than the
//! stale bound, or that the socket leaves, or every chat when it disconnects, ends with a `false`
//! the server sends itself. Times come in as arguments: the state reads no clock.

use std::collections::HashMap;

use super::rate::SlidingWindow;

#[derive(Debug)]
pub struct Typing {
    /// Chats where a `true` was shown, with when it was last confirmed.
    shown: HashMap<String, u64>,
    trues: SlidingWindow,
    stale_ms: u64,
    max_chats: usize,
}

impl Typing {
    /// At most `trues_per_sec` `true`s a second are shown, in at most `max_chats` chats at a time;
    /// one not confirmed for `stale_ms` ends.
    pub fn new(trues_per_sec: usize, stale_ms: u64, max_chats: usize) -> Self {
        Self {
            shown: HashMap::new(),
            trues: SlidingWindow::new(trues_per_sec, 1000),
            stale_ms,
            max_chats,
        }
    }

    /// A `true` for `chat`: whether to show it. One over the rate still confirms a `true`
    /// already shown (the user is still typing), without sending anything.
    pub fn start(&mut self, chat: &str, now_ms: u64) -> bool {
        self.start_if(chat, now_ms, || true)
    }

    /// [`start`](Self::start) under a second limit (the user's, over all of their sockets):
    /// `user_allows` is asked only for a `true` this socket would show, and a refusal counts
    /// like this socket's own rate.
    pub fn start_if(
        &mut self,
        chat: &str,
        now_ms: u64,
        user_allows: impl FnOnce() -> bool,
    ) -> bool {
        let already = self.shown.contains_key(chat);
        if !already && self.shown.len() >= self.max_chats {
            return false;
        }
        if !(self.trues.allows(now_ms) && user_allows()) {
            if let Some(confirmed) = self.shown.get_mut(chat) {
                *confirmed = now_ms;
            }
            return false;
        }
        self.trues.record(now_ms);
        self.shown.insert(chat.to_owned(), now_ms);
        true
    }

    /// A `false` for `chat` (from the client, or because the socket left it): whether to show it,
    /// which is whenever a `true` is showing.
    pub fn stop(&mut self, chat: &str) -> bool {
        self.shown.remove(chat).is_some()
    }

    /// When the oldest shown `true` goes stale, if any is showing.
    pub fn next_stale_at(&self) -> Option<u64> {
        self.shown.values().min().map(|t| t + self.stale_ms)
    }

    /// Ends every `true` that went stale by `now_ms`; the chats to send `false` to.
    pub fn expire(&mut self, now_ms: u64) -> Vec<String> {
        let stale: Vec<String> = self
            .shown
            .iter()
            .filter(|(_, t)| now_ms >= *t + self.stale_ms)
            .map(|(chat, _)| chat.clone())
            .collect();
        stale.iter().for_each(|chat| {
            self.shown.remove(chat);
        });
        stale
    }

    /// Ends every `true` (the socket is closing); the chats to send `false` to.
    pub fn stop_all(&mut self) -> Vec<String> {
        self.shown.drain().map(|(chat, _)| chat).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_false_after_a_burst_of_trues_is_never_dropped() {
        let mut typing = Typing::new(5, 5000, 8);
        let shown = (0..10).filter(|i| typing.start("c", 1000 + i)).count();
        assert_eq!(shown, 5, "the rate limit holds back trues");
        assert!(typing.stop("c"), "the false goes through");
        assert!(!typing.stop("c"), "a second false has nothing to end");
    }

    #[test]
    fn a_false_without_a_shown_true_is_not_sent() {
        let mut typing = Typing::new(5, 5000, 8);
        assert!(!typing.stop("c"));
    }

    #[test]
    fn a_stale_true_ends_and_confirmations_keep_it_alive() {
        let mut typing = Typing::new(1, 5000, 8);
        assert!(typing.start("c", 0));
        assert!(!typing.start("c", 500), "over the rate, but confirms");
        assert_eq!(typing.next_stale_at(), Some(5500));
        assert!(typing.expire(5499).is_empty());
        assert_eq!(typing.expire(5500), vec!["c".to_string()]);
        assert_eq!(typing.next_stale_at(), None);
    }

    #[test]
    fn closing_ends_every_chat_and_the_chats_are_bounded() {
        let mut typing = Typing::new(100, 5000, 2);
        assert!(typing.start("a", 0));
        assert!(typing.start("b", 0));
        assert!(!typing.start("c", 0), "a third chat is past the bound");
        let mut ended = typing.stop_all();
        ended.sort();
        assert_eq!(ended, vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn a_true_the_user_limit_refuses_is_not_shown_and_needs_no_false() {
        let mut typing = Typing::new(5, 5_000, 2);
        assert!(!typing.start_if("c", 0, || false));
        assert!(!typing.stop("c"), "nothing shown, nothing to end");
        assert!(typing.start_if("c", 10, || true));
        assert!(
            !typing.start_if("c", 20, || false),
            "confirms the shown true"
        );
        assert_eq!(typing.next_stale_at(), Some(5_020));
        assert!(typing.stop("c"), "the shown true still ends");
    }
}
