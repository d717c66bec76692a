//! The commit feed: everything a commit changed that sockets are told of, in commit order.
//!
//! The writer publishes each appended message (system messages included), each group it
//! created and each read position a `mark-read` moved, only after the transaction holding it
//! has committed, in the order of the commits and, within one, of the requests (read positions,
//! coalesced per member and chat, at the end of their batch). Each item carries the chat's
//! members as of its commit, so fan-out never goes to a stale list. Items are spread over shards
//! by chat, so one chat's items always travel through the same shard, in seq order, while
//! different chats are delivered in parallel. This is what lets every socket receive a chat's
//! messages in ascending seq, and lets a removed member's sockets leave the chat's room before
//! anything committed after the removal is delivered: delivery follows the commit, not the
//! wake-up order of the tasks that asked for the writes.

use std::hash::{Hash, Hasher};

use tokio::sync::mpsc;

use super::members::Members;
use super::records::{MessageRecord, SystemEvent};

/// One committed change to deliver.
#[derive(Debug, Clone)]
pub enum Committed {
    /// A message; `system` for a membership change or rename (for a removal, `members` no
    /// longer holds the removed user).
    Message {
        message: MessageRecord,
        system: Option<SystemEvent>,
        members: Members,
    },
    /// A group was created with these members.
    ChatCreated { chat: String, members: Members },
    /// `user` has read `chat` up to `last_read_seq` (a `mark-read` that moved it).
    Read {
        chat: String,
        user: String,
        last_read_seq: u64,
        members: Members,
    },
}

impl Committed {
    /// A message a user sent (not a system message): what `palaver_messages_total` counts.
    pub fn is_user_message(&self) -> bool {
        matches!(self, Committed::Message { system: None, .. })
    }

    pub fn chat(&self) -> &str {
        match self {
            Committed::Message { message, .. } => &message.chat,
            Committed::ChatCreated { chat, .. } | Committed::Read { chat, .. } => chat,
        }
    }
}

/// The writer's end: publishes committed messages.
#[derive(Clone)]
pub struct CommitFeed {
    shards: Vec<mpsc::Sender<Committed>>,
}

/// One shard's end: a chat's committed changes arrive here in commit order.
pub type CommitSubscriber = mpsc::Receiver<Committed>;

impl CommitFeed {
    /// A feed of `shards` shards (at least one), each holding at most `capacity` messages not
    /// yet taken; when a shard is full the writer waits (backpressure on writes, not memory).
    pub fn new(shards: usize, capacity: usize) -> (Self, Vec<CommitSubscriber>) {
        let (senders, receivers) = (0..shards.max(1))
            .map(|_| mpsc::channel(capacity.max(1)))
            .unzip();
        (Self { shards: senders }, receivers)
    }

    /// Hands `item` to its chat's shard. A shard whose subscriber is gone drops it.
    pub async fn publish(&self, item: Committed) {
        let shard = &self.shards[self.shard_of(item.chat())];
        let _ = shard.send(item).await;
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

    fn message(chat: &str, seq: u64) -> Committed {
        let message = MessageRecord {
            id: format!("m{seq}"),
            chat: chat.into(),
            seq,
            sender: "u".into(),
            text: "t".into(),
            client_msg_id: None,
            created_ms: 0,
        };
        Committed::Message {
            message,
            system: None,
            members: Members::from(vec!["u".to_string()]),
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
            while let Some(item) = shard.recv().await {
                let Committed::Message { message: m, .. } = item else {
                    unreachable!("only messages were published")
                };
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
