//! Table layout. Keys are chosen so every query of the contract is a point lookup or one range
//! scan: a history page is a range over `(chat, seq)`, a user's chats a range over
//! `(user, chat)`, the 1:1 pair a point lookup on the sorted pair.

use redb::{Database, ReadableTable, TableDefinition};

use super::{FORMAT_VERSION, StoreError};
// What `check_consistency` reads; it is test support (feature `testing`).
#[cfg(any(test, feature = "testing"))]
use {
    super::records::{ChatRecord, MessageRecord, UserRecord, decode},
    redb::{ReadableDatabase, ReadableTableMetadata},
    std::collections::HashSet,
};

/// Small settings: `format` (one byte), `jwt_secret`.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// user id → UserRecord
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// lower-case email → user id (unique)
pub const USER_EMAILS: TableDefinition<&str, &str> = TableDefinition::new("user_emails");
/// external provider `sub` → user id (unique)
pub const USER_EXTERNALS: TableDefinition<&str, &str> = TableDefinition::new("user_externals");
/// chat id → ChatRecord
pub const CHATS: TableDefinition<&str, &[u8]> = TableDefinition::new("chats");
/// (smaller user id, larger user id) → chat id: the one 1:1 chat of a pair
pub const CHAT_PAIRS: TableDefinition<(&str, &str), &str> = TableDefinition::new("chat_pairs");
/// (user id, chat id) → (): the chats of a user
pub const USER_CHATS: TableDefinition<(&str, &str), ()> = TableDefinition::new("user_chats");
/// (chat id, seq) → MessageRecord
pub const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
/// (chat id, sender id, clientMsgId) → seq: idempotent sends
pub const CLIENT_IDS: TableDefinition<(&str, &str, &str), u64> = TableDefinition::new("client_ids");

/// user id → (token generation, when it was last raised in ms): a user's tokens of an earlier
/// generation, and provider tokens issued before that time, are refused. A table of its own, so
/// the user records keep their layout and older databases open unchanged; a user without an
/// entry is at generation 0.
pub const TOKEN_REVOCATIONS: TableDefinition<&str, (u64, u64)> =
    TableDefinition::new("token_revocations");

/// user id → when the operator disabled the account (ms). A disabled user's tokens are refused
/// and their logins too; their messages stay. A table of its own like `TOKEN_REVOCATIONS`.
pub const DISABLED_USERS: TableDefinition<&str, u64> = TableDefinition::new("disabled_users");

/// Sorts after every valid id (ids are `[0-9A-Za-z_-]`, all below `~`), closing prefix ranges.
pub const ID_UPPER_BOUND: &str = "~";

pub const FORMAT_KEY: &str = "format";

/// Creates missing tables and records or checks the format version, in one durable commit.
pub fn prepare(db: &Database) -> Result<(), StoreError> {
    let mut tx = db.begin_write()?;
    // Like every commit of the writer: record the allocator state, so that a process killed
    // before its first write still reopens without a full repair (1 s at 1,000,000 messages,
    // growing with the file; see BENCHMARKS.md).
    tx.set_quick_repair(true);
    {
        let mut meta = tx.open_table(META)?;
        let stored = meta
            .get(FORMAT_KEY)?
            .map(|v| v.value().first().copied().unwrap_or(0));
        match stored {
            Some(found) if found > FORMAT_VERSION => return Err(StoreError::NewerFormat { found }),
            Some(_) => {}
            None => {
                meta.insert(FORMAT_KEY, [FORMAT_VERSION].as_slice())?;
            }
        }
        tx.open_table(USERS)?;
        tx.open_table(USER_EMAILS)?;
        tx.open_table(USER_EXTERNALS)?;
        tx.open_table(CHATS)?;
        tx.open_table(CHAT_PAIRS)?;
        tx.open_table(USER_CHATS)?;
        tx.open_table(MESSAGES)?;
        tx.open_table(CLIENT_IDS)?;
        tx.open_table(TOKEN_REVOCATIONS)?;
        tx.open_table(DISABLED_USERS)?;
    }
    tx.commit().map_err(redb::Error::from)?;
    Ok(())
}

/// Every disagreement between the tables, as readable lines; empty when consistent.
#[cfg(any(test, feature = "testing"))]
pub fn check_consistency(db: &Database) -> Result<Vec<String>, StoreError> {
    let tx = db.begin_read()?;
    let mut problems = Vec::new();

    let users = tx.open_table(USERS)?;
    for entry in users.iter()? {
        let (id, bytes) = entry?;
        let user: UserRecord =
            decode(bytes.value()).map_err(StoreError::corrupt("users", id.value()))?;
        if tx
            .open_table(USER_EMAILS)?
            .get(user.email.as_str())?
            .map(|v| v.value().to_owned())
            != Some(id.value().to_owned())
        {
            problems.push(format!("user {} missing from the email index", id.value()));
        }
    }
    if tx.open_table(USER_EMAILS)?.len()? != users.len()? {
        problems.push("email index has entries for missing users".into());
    }

    let chats = tx.open_table(CHATS)?;
    let messages = tx.open_table(MESSAGES)?;
    let user_chats = tx.open_table(USER_CHATS)?;
    let mut memberships = 0;
    for entry in chats.iter()? {
        let (id, bytes) = entry?;
        let chat: ChatRecord =
            decode(bytes.value()).map_err(StoreError::corrupt("chats", id.value()))?;
        for member in &chat.members {
            memberships += 1;
            if user_chats.get((member.as_str(), id.value()))?.is_none() {
                problems.push(format!(
                    "chat {} missing from {member}'s chat index",
                    chat.id
                ));
            }
        }
        let mut expected_seq = 1;
        let mut seen_client_ids = HashSet::new();
        for entry in messages.range((chat.id.as_str(), 0)..=(chat.id.as_str(), u64::MAX))? {
            let (key, bytes) = entry?;
            let (chat_id, seq) = key.value();
            let message: MessageRecord = decode(bytes.value()).map_err(StoreError::corrupt(
                "messages",
                format!("({chat_id}, {seq})"),
            ))?;
            if key.value().1 != expected_seq || message.seq != expected_seq {
                problems.push(format!(
                    "chat {}: seq {} where {expected_seq} was due",
                    chat.id, message.seq
                ));
            }
            if let Some(cmid) = &message.client_msg_id
                && !seen_client_ids.insert((message.sender.clone(), cmid.clone()))
            {
                problems.push(format!("chat {}: clientMsgId {cmid} used twice", chat.id));
            }
            expected_seq = message.seq + 1;
        }
        if expected_seq - 1 != chat.last_seq {
            problems.push(format!(
                "chat {}: last_seq {} but {} messages",
                chat.id,
                chat.last_seq,
                expected_seq - 1
            ));
        }
    }
    if user_chats.len()? != memberships {
        problems.push("chat index has entries for missing chats".into());
    }
    Ok(problems)
}
