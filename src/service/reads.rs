//! Read state: `mark-read` and `POST /api/chats/:chatId/read`.
//!
//! A position is moved by the writer (forward only, capped at the chat's last seq; see
//! `domain::reads`), coalesced per (user, chat) within its batch, so a client that marks every
//! message it scrolls past costs a write per batch, not a commit per message. Like a send, a
//! mark-read comes in two halves, filing and awaiting the commit, so that a socket can pipeline
//! them. The `read` event reaches the members' sockets from the commit feed.

use super::{App, Refusal, storage_failed};
use crate::domain::ids::is_valid_id;
use crate::storage::{Filed, ReadOutcome};

/// A mark-read on its way: refused already, or filed with the writer.
pub struct FiledRead {
    stage: Result<Filed<ReadOutcome>, Refusal>,
}

impl FiledRead {
    /// The caller's read position once the request has committed (the stored one when it
    /// asked for less).
    pub async fn outcome(self) -> Result<u64, Refusal> {
        let answer = self
            .stage?
            .answer()
            .await
            .map_err(storage_failed(Refusal::Unavailable))?;
        match answer {
            ReadOutcome::Read(seq) => Ok(seq),
            ReadOutcome::NotMember => Err(Refusal::ChatNotFound),
        }
    }
}

impl App {
    /// Moves `caller`'s read position in `chat_id` forward to `seq`; the position after it.
    pub async fn mark_read(&self, caller: &str, chat_id: &str, seq: u64) -> Result<u64, Refusal> {
        self.file_mark_read(caller, chat_id, seq)
            .await
            .outcome()
            .await
    }

    /// The first half of [`App::mark_read`]: files the request without waiting for its commit.
    pub async fn file_mark_read(&self, caller: &str, chat_id: &str, seq: u64) -> FiledRead {
        if !is_valid_id(chat_id) {
            return FiledRead {
                stage: Err(Refusal::ChatNotFound),
            };
        }
        let stage = self
            .writer
            .file_mark_read(caller, chat_id, seq)
            .await
            .map_err(storage_failed(Refusal::Unavailable));
        FiledRead { stage }
    }
}
