//! Table layout. Keys are chosen so every query of the contract is a point lookup or one range
//! scan: a history page is a range over `(chat, seq)` (and the same range of the system
//! messages), a user's chats a range over `(user, chat)`, the 1:1 pair a point lookup on the
//! sorted pair, a member's read position a point lookup on `(user, chat)`.
//!
//! Groups live beside the chats of format 1 without changing them: a chat with an entry in
//! `groups` is a group, one without is a 1:1 chat, so a database of 1:1 chats written by an
//! earlier build opens unchanged (its new tables start empty) and is then marked format 2, which
//! that build refuses instead of misreading groups as 1:1 chats. A system message is an ordinary
//! message record (its sender is who made the change, its text describes it) plus an entry in
//! `system_messages` at the same `(chat, seq)`. Unread counts read two entries, never history:
//! the chat's last system message (how many system messages there are) and the member's read
//! position (see `domain::reads`).

use redb::{Database, ReadableTable, TableDefinition};

use super::records::{ChatRecord, ReadRecord, decode, encode};
use super::{FORMAT_VERSION, StoreError};
// What `check_consistency` reads; it is test support (feature `testing`).
#[cfg(any(test, feature = "testing"))]
use {
    super::records::{MemberRecord, MessageRecord, SystemRecord, UserRecord},
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
/// chat id → GroupRecord: the chats that are groups (and their names).
pub const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
/// (chat id, user id) → MemberRecord: a group's current members (the order is the chat
/// record's).
pub const GROUP_MEMBERS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("group_members");
/// (chat id, seq) → SystemRecord: which messages are system messages, and the running count.
pub const SYSTEM_MESSAGES: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("system_messages");
/// (user id, chat id) → ReadRecord: how far a user has read a chat; absent means nothing yet.
/// Kept when a member leaves, so that a member added again finds their position.
pub const READS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("reads");

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
            Some(FORMAT_VERSION) => {}
            // Format 1 is format 2 without groups: its tables stay as they are, the new ones
            // start empty, every member has read their chats so far (see
            // `read_everything_so_far`), and the new number keeps older builds away from it.
            Some(_) => {
                meta.insert(FORMAT_KEY, [FORMAT_VERSION].as_slice())?;
                read_everything_so_far(&tx)?;
            }
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
        tx.open_table(GROUPS)?;
        tx.open_table(GROUP_MEMBERS)?;
        tx.open_table(SYSTEM_MESSAGES)?;
        tx.open_table(READS)?;
    }
    tx.commit().map_err(redb::Error::from)?;
    Ok(())
}

/// The upgrade from format 1: read state did not exist, so nothing says which messages a member
/// sent (those count as read) short of scanning every chat's history. Every member's position
/// starts at their chat's last seq instead: unread counts begin at the upgrade. One pass over
/// the chats (format 1 has no system messages, so every message up to there counts).
pub(super) fn read_everything_so_far(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    let chats = tx.open_table(CHATS)?;
    let mut reads = tx.open_table(READS)?;
    for entry in chats.iter()? {
        let (id, bytes) = entry?;
        let chat: ChatRecord =
            decode(bytes.value()).map_err(StoreError::corrupt("chats", id.value()))?;
        let position = encode(&ReadRecord {
            last_read_seq: chat.last_seq,
            counted: chat.last_seq,
        });
        for member in &chat.members {
            reads.insert((member.as_str(), chat.id.as_str()), position.as_slice())?;
        }
    }
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
        check_group(&tx, &chat, &mut problems)?;
        check_reads_of(&tx, &chat, &mut problems)?;
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
    for entry in tx.open_table(GROUPS)?.iter()? {
        let id = entry?.0.value().to_owned();
        if chats.get(id.as_str())?.is_none() {
            problems.push(format!("group {id} has no chat"));
        }
    }
    Ok(problems)
}

/// A group's member entries are exactly its members; a 1:1 chat has two members and none of
/// the group tables' entries. System messages count up one by one, each on a message.
#[cfg(any(test, feature = "testing"))]
fn check_group(
    tx: &redb::ReadTransaction,
    chat: &ChatRecord,
    problems: &mut Vec<String>,
) -> Result<(), StoreError> {
    let id = chat.id.as_str();
    let is_group = tx.open_table(GROUPS)?.get(id)?.is_some();
    let mut listed = Vec::new();
    for entry in tx
        .open_table(GROUP_MEMBERS)?
        .range((id, "")..=(id, ID_UPPER_BOUND))?
    {
        let (key, bytes) = entry?;
        let user = key.value().1.to_owned();
        decode::<MemberRecord>(bytes.value()).map_err(StoreError::corrupt(
            "group_members",
            format!("({id}, {user})"),
        ))?;
        listed.push(user);
    }
    let mut members = chat.members.clone();
    members.sort();
    let unique = members.windows(2).all(|pair| pair[0] != pair[1]);
    if !unique || members.len() > crate::limits::CHAT_MEMBERS_MAX {
        problems.push(format!("chat {id}: members repeated or over the bound"));
    }
    if is_group && listed != members {
        problems.push(format!(
            "group {id}: member entries {listed:?} but members {members:?}"
        ));
    }
    if !is_group && (!listed.is_empty() || chat.members.len() != 2) {
        problems.push(format!("1:1 chat {id} with {} members", chat.members.len()));
    }
    let messages = tx.open_table(MESSAGES)?;
    let mut count = 0;
    for entry in tx
        .open_table(SYSTEM_MESSAGES)?
        .range((id, 0)..=(id, u64::MAX))?
    {
        let (key, bytes) = entry?;
        let seq = key.value().1;
        let system: SystemRecord = decode(bytes.value()).map_err(StoreError::corrupt(
            "system_messages",
            format!("({id}, {seq})"),
        ))?;
        count += 1;
        if !is_group || system.systems_through != count || messages.get((id, seq))?.is_none() {
            problems.push(format!("chat {id}: system message {seq} out of step"));
        }
    }
    Ok(())
}

/// Every member's read position is within the chat and counts what lies below it.
#[cfg(any(test, feature = "testing"))]
fn check_reads_of(
    tx: &redb::ReadTransaction,
    chat: &ChatRecord,
    problems: &mut Vec<String>,
) -> Result<(), StoreError> {
    let id = chat.id.as_str();
    let reads = tx.open_table(READS)?;
    let systems = tx.open_table(SYSTEM_MESSAGES)?;
    for member in &chat.members {
        let Some(bytes) = reads.get((member.as_str(), id))? else {
            continue;
        };
        let read: ReadRecord = decode(bytes.value())
            .map_err(StoreError::corrupt("reads", format!("({member}, {id})")))?;
        let below = systems.range((id, 0)..=(id, read.last_read_seq))?.count() as u64;
        if read.last_read_seq > chat.last_seq || read.counted + below != read.last_read_seq {
            problems.push(format!(
                "{member}'s read position in chat {id} is {read:?} with {below} system messages below"
            ));
        }
    }
    Ok(())
}
