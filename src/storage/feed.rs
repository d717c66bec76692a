//! The commit feed: every appended message, in commit order, to whoever delivers it.
//!
//! The writer publishes each message it appended only after the transaction holding it has
//! committed, in the order of the commits and, within one, of the appends. Messages are spread
//! over shards by chat, so one chat's messages always travel through the same shard, in seq
//! order, while different chats are delivered in parallel. This is what lets every socket
//! receive a chat's messages in ascending seq: delivery follows the commit, not the wake-up
//! order of the tasks that asked for the appends.

use std::hash::{Hash, Hasher};

use tokio::sync::mpsc;

use super::MessageRecord;

/// The writer's end: publishes committed messages.
#[derive(Clone)]
pub struct CommitFeed {
    shards: Vec<mpsc::Sender<MessageRecord>>,
}

/// One shard's end: a chat's committed messages arrive here in seq order.
pub type CommitSubscriber = mpsc::Receiver<MessageRecord>;

impl CommitFeed {
    /// A feed of `shards` shards (at least one), each holding at most `capacity` messages not
    /// yet taken; when a shard is full the writer waits (backpressure on writes, not memory).
    pub fn new(shards: usize, capacity: usize) -> (Self, Vec<CommitSubscriber>) {
        let (senders, receivers) = (0..shards.max(1))
            .map(|_| mpsc::channel(capacity.max(1)))
            .unzip();
        (Self { shards: senders }, receivers)
    }

    /// Hands `message` to its chat's shard. A shard whose subscriber is gone drops it.
    pub async fn publish(&self, message: MessageRecord) {
        let shard = &self.shards[self.shard_of(&message.chat)];
        let _ = shard.send(message).await;
    }

    fn shard_of(&self, chat: &str) -> usize {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        chat.hash(&mut hasher);
        (hasher.finish() % self.shards.len() as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(chat: &str, seq: u64) -> MessageRecord {
        MessageRecord {
            id: format!("m{seq}"),
            chat: chat.into(),
            seq,
            sender: "u".into(),
            text: "t".into(),
            client_msg_id: None,
            created_ms: 0,
        }
    }

    #[tokio::test]
    async fn a_chat_always_goes_through_one_shard_in_order() {
        let (feed, mut shards) = CommitFeed::new(4, 64);
        for seq in 1..=20 {
            for chat in ["a", "b", "c", "d", "e"] {
                feed.publish(message(chat, seq)).await;
            }
        }
        drop(feed);
        let mut seen = std::collections::HashMap::<String, (usize, u64)>::new();
        for (index, shard) in shards.iter_mut().enumerate() {
            while let Some(m) = shard.recv().await {
                let (home, last) = seen.entry(m.chat.clone()).or_insert((index, 0));
                assert_eq!(*home, index, "chat {} seen on two shards", m.chat);
                assert_eq!(m.seq, *last + 1, "chat {} out of order", m.chat);
                *last = m.seq;
            }
        }
        assert_eq!(seen.len(), 5);
        assert!(seen.values().all(|(_, last)| *last == 20));
    }
}
