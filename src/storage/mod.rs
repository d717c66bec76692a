//! Storage: users, chats and messages in an embedded redb database.
//!
//! Reads open a short read transaction on the caller's task (redb reads are lock-free snapshots
//! that touch the page cache, not the disk, in the common case). Every write goes through the one
//! writer task in [`writer`], which group-commits: it takes whatever requests are queued, applies
//! them in one transaction, commits once with the configured durability, and only then answers
//! each request. So an answer means "durable", and concurrent requests see each other's effects
//! in order, which is what makes `seq` gapless and get-or-create single.
//!
//! Chats' member lists are read through an in-memory copy that the writer keeps exact
//! ([`members`]); unread counts come from kept counts, never from scanning history
//! (`tables`, `domain::reads`).
//!
//! The whole crate reaches redb only through this module. The same code runs on a file (the
//! server), on redb's in-memory backend (tests, fuzzing) and on a simulated disk (the simulation).

mod accounts;
pub mod backup;
mod error;
pub mod export;
pub mod feed;
pub mod members;
mod private;
pub mod records;
mod tables;
pub mod writer;

use std::ops::Bound::Unbounded;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use redb::{BackendError, Database, ReadableDatabase, ReadableTable, StorageBackend};

pub use accounts::Standing;
pub use error::StoreError;
pub use feed::{CommitFeed, CommitSubscriber, Committed};
pub use members::Members;
pub use records::{
    ChatRecord, GroupRecord, MemberRecord, MessageRecord, ReadRecord, SystemEvent, SystemKind,
    UserRecord,
};
pub use writer::{
    AppendOutcome, Change, Filed, GroupChange, GroupOutcome, GroupState, NewGroup, NewMessage,
    NewUser, ReadOutcome, StoreWriter, WriterExit, WriterTask,
};

use crate::domain::reads::{ReadPosition, counted_through};
use crate::limits::{
    DB_CACHE_MB_DEFAULT, MEMBERSHIP_CACHED_CHATS_MAX, MEMBERSHIP_CACHED_IDS_MAX,
    PAGE_PREALLOCATED_MAX,
};
use members::MembersCache;
use records::{SystemRecord, decode};
use tables::*;

/// The database format this build writes (the layout of tables and keys). A data directory
/// written by a newer build is refused at open rather than misread.
pub const FORMAT_VERSION: u8 = 2;

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "palaver.redb";

/// How commits reach the disk. `Immediate` (fsync on every commit) is the only setting that
/// keeps the contract's promise; `None` exists to measure what durability costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Immediate,
    None,
}

/// Read access to the database. Cheap to clone; all clones share one `Database`.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    members: Arc<MembersCache>,
}

/// A chat as one member sees it, read in one snapshot: its record, its group fields (`None` for
/// a 1:1 chat), the member's read position and the chat's non-system messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatState {
    pub chat: ChatRecord,
    pub group: Option<GroupRecord>,
    pub read: ReadPosition,
    pub counted: u64,
}

/// One member of a chat as `GET /api/chats/:chatId/members` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDetail {
    pub user: String,
    pub joined_ms: u64,
    pub last_read_seq: u64,
}

/// Opens (or creates) the database in `dir` with the default page cache
/// ([`DB_CACHE_MB_DEFAULT`]). Runs redb's repair if the last process died without closing it.
pub fn open_dir(dir: &Path) -> Result<Database, StoreError> {
    open_dir_with_cache(dir, DB_CACHE_MB_DEFAULT as usize * 1024 * 1024)
}

/// [`open_dir`] with a page cache of `cache_bytes` (the server's `--db-cache-mb`).
pub fn open_dir_with_cache(dir: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    private::create_dir(dir).map_err(StoreError::data_dir(dir))?;
    // What `Builder::create(path)` does, with the backend in our hands first.
    let path = dir.join(DB_FILE);
    let file = private::open_file(&path).map_err(StoreError::data_dir(&path))?;
    let backend = redb::backends::FileBackend::new(file).map_err(redb::Error::from)?;
    let db = open_backend_with_cache(backend, cache_bytes)?;
    // A new file survives a power cut only once the directory entry naming it is durable, which
    // takes an fsync of its directory (and a new directory's, of its parent); fsyncing the file
    // is not enough. Without this, a power cut soon after the first start can lose the whole
    // database, acknowledged messages included (found by the simulation, sim/README.md).
    let parent = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    sync_dir(dir)
        .and_then(|()| sync_dir(parent))
        .map_err(StoreError::data_dir(dir))?;
    Ok(db)
}

/// Makes the entries of directory `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Opens (or creates) a database on any redb storage backend (a file, in-memory, a simulated
/// or crash-testing disk).
pub fn open_backend(backend: impl StorageBackend) -> Result<Database, StoreError> {
    open_backend_with_cache(backend, DB_CACHE_MB_DEFAULT as usize * 1024 * 1024)
}

/// [`open_backend`] with a page cache of `cache_bytes`.
pub fn open_backend_with_cache(
    backend: impl StorageBackend,
    cache_bytes: usize,
) -> Result<Database, StoreError> {
    if restart_interrupted_creation(&backend)? {
        tracing::warn!(
            "the database file was left half-created by a first start that was cut short; creating it again"
        );
    }
    Ok(Database::builder()
        .set_cache_size(cache_bytes)
        .set_repair_callback(|session| {
            tracing::warn!(
                progress = session.progress(),
                "repairing database after unclean shutdown"
            );
        })
        .create_with_backend(backend)
        .map_err(redb::Error::from)?)
}

/// Length of redb's magic number at the start of every database file.
const REDB_MAGIC_LEN: usize = 9;

/// redb creates a database by sizing the file, writing its header without the magic number and
/// syncing, and only then writing the magic number and syncing again. A power cut in between
/// leaves a file whose first bytes are still zero, and redb refuses to open it ("magic number
/// mismatch"), so the server could never start again. Nothing can have been stored in such a
/// file: it is emptied, and redb creates the database afresh. Returns whether that happened.
/// A file that starts with anything else is left alone for redb to accept or refuse.
fn restart_interrupted_creation(backend: &impl StorageBackend) -> Result<bool, StoreError> {
    // Only under a lock of the whole file: a process that has the database open, or is creating
    // it this very moment, holds a lock on part of it, and then the file is not ours to touch
    // (redb refuses the second open). In-memory and simulated disks have no locks and no other
    // process.
    let locked = match backend.try_lock_range(Unbounded, Unbounded) {
        Ok(true) => true,
        Ok(false) => return Ok(false),
        Err(BackendError::Unsupported) => false,
        Err(error) => return Err(storage_error(error)),
    };
    let restarted = empty_if_creation_was_interrupted(backend);
    if locked {
        backend
            .unlock_range(Unbounded, Unbounded)
            .map_err(storage_error)?;
    }
    restarted
}

fn empty_if_creation_was_interrupted(backend: &impl StorageBackend) -> Result<bool, StoreError> {
    let io = |error: std::io::Error| storage_error(error.into());
    let len = backend.len().map_err(io)?;
    let mut head = [0u8; REDB_MAGIC_LEN];
    let head = &mut head[..len.min(REDB_MAGIC_LEN as u64) as usize];
    backend.read(0, head).map_err(io)?;
    if !creation_was_interrupted(len, head) {
        return Ok(false);
    }
    backend.set_len(0).map_err(io)?;
    backend.sync_data().map_err(io)?;
    Ok(true)
}

fn storage_error(error: BackendError) -> StoreError {
    redb::StorageError::from(error).into()
}

/// Whether a file of `len` bytes starting with `head` is a database creation that never
/// reached its magic number.
fn creation_was_interrupted(len: u64, head: &[u8]) -> bool {
    len > 0 && head.iter().all(|&byte| byte == 0)
}

/// The messages of `chat` with seq in `seqs`, ascending: one range scan.
fn messages_in(
    tx: &ReadTx,
    chat: &str,
    seqs: Range<u64>,
) -> Result<Vec<MessageRecord>, StoreError> {
    let messages = tx.open_table(MESSAGES)?;
    let mut found = Vec::with_capacity(
        usize::try_from(seqs.end.saturating_sub(seqs.start))
            .unwrap_or(0)
            .min(PAGE_PREALLOCATED_MAX),
    );
    for entry in messages.range((chat, seqs.start)..(chat, seqs.end))? {
        let (key, bytes) = entry?;
        let key = key.value();
        let record = decode(bytes.value()).map_err(StoreError::corrupt(
            "messages",
            format!("({}, {})", key.0, key.1),
        ))?;
        found.push(record);
    }
    Ok(found)
}

/// An in-memory database, for tests and fuzzing.
#[cfg(any(test, feature = "testing"))]
pub fn open_in_memory() -> Result<Database, StoreError> {
    open_backend(redb::backends::InMemoryBackend::new())
}

/// Prepares a freshly opened database (creates tables, checks the format version) and splits
/// it into the shared read handle, the write handle, and the writer task that must be run.
pub fn start(
    db: Database,
    durability: Durability,
) -> Result<(Store, StoreWriter, WriterTask), StoreError> {
    tables::prepare(&db)?;
    let db = Arc::new(db);
    let members = Arc::new(MembersCache::new(
        MEMBERSHIP_CACHED_CHATS_MAX,
        MEMBERSHIP_CACHED_IDS_MAX,
    ));
    let (writer, task) = writer::channel(Arc::clone(&db), durability, Arc::clone(&members));
    Ok((Store { db, members }, writer, task))
}

type ReadTx = redb::ReadTransaction;

fn chat_in(tx: &ReadTx, id: &str) -> Result<Option<ChatRecord>, StoreError> {
    let chats = tx.open_table(CHATS)?;
    let found = chats.get(id)?;
    found
        .map(|bytes| decode(bytes.value()).map_err(StoreError::corrupt("chats", id)))
        .transpose()
}

/// The system messages of `chat` at or below `seq`.
fn systems_through_in(tx: &ReadTx, chat: &str, seq: u64) -> Result<u64, StoreError> {
    systems_through(&tx.open_table(SYSTEM_MESSAGES)?, chat, seq)
}

/// The system messages of `chat` at or below `seq`, from the running count kept with the last
/// of them: for readers and the writer alike.
fn systems_through(
    systems: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    chat: &str,
    seq: u64,
) -> Result<u64, StoreError> {
    let Some(entry) = systems.range((chat, 0)..=(chat, seq))?.next_back() else {
        return Ok(0);
    };
    let (key, bytes) = entry?;
    let record: SystemRecord = decode(bytes.value()).map_err(StoreError::corrupt(
        "system_messages",
        format!("({chat}, {})", key.value().1),
    ))?;
    Ok(record.systems_through)
}

/// The seq of the chat's last system message (0 before any): its member list's version.
fn members_version_in(tx: &ReadTx, chat: &str) -> Result<u64, StoreError> {
    let systems = tx.open_table(SYSTEM_MESSAGES)?;
    let last = systems.range((chat, 0)..=(chat, u64::MAX))?.next_back();
    Ok(match last {
        Some(entry) => entry?.0.value().1,
        None => 0,
    })
}

fn read_in(tx: &ReadTx, user: &str, chat: &str) -> Result<ReadPosition, StoreError> {
    let reads = tx.open_table(READS)?;
    let found = reads.get((user, chat))?;
    let record: Option<ReadRecord> = found
        .map(|b| {
            decode(b.value()).map_err(StoreError::corrupt("reads", format!("({user}, {chat})")))
        })
        .transpose()?;
    Ok(record.map_or_else(ReadPosition::default, |r| ReadPosition {
        seq: r.last_read_seq,
        counted: r.counted,
    }))
}

fn group_in(tx: &ReadTx, chat: &str) -> Result<Option<GroupRecord>, StoreError> {
    let groups = tx.open_table(GROUPS)?;
    let found = groups.get(chat)?;
    found
        .map(|b| decode(b.value()).map_err(StoreError::corrupt("groups", chat)))
        .transpose()
}

fn state_in(tx: &ReadTx, chat: ChatRecord, viewer: &str) -> Result<ChatState, StoreError> {
    let group = group_in(tx, &chat.id)?;
    let read = read_in(tx, viewer, &chat.id)?;
    let counted = counted_through(
        chat.last_seq,
        systems_through_in(tx, &chat.id, chat.last_seq)?,
    );
    Ok(ChatState {
        chat,
        group,
        read,
        counted,
    })
}

impl Store {
    pub fn user(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let users = tx.open_table(USERS)?;
        let found = users.get(id)?;
        found
            .map(|bytes| decode(bytes.value()).map_err(StoreError::corrupt("users", id)))
            .transpose()
    }

    /// The user's token generation and when it was last raised (ms); `(0, 0)` for a user whose
    /// tokens were never revoked.
    pub fn token_revocation(&self, user: &str) -> Result<(u64, u64), StoreError> {
        let tx = self.db.begin_read()?;
        let revocations = tx.open_table(TOKEN_REVOCATIONS)?;
        let found = revocations.get(user)?;
        Ok(found.map_or((0, 0), |entry| entry.value()))
    }

    pub fn user_id_by_email(&self, email: &str) -> Result<Option<String>, StoreError> {
        let tx = self.db.begin_read()?;
        let found = tx
            .open_table(USER_EMAILS)?
            .get(email)?
            .map(|id| id.value().to_owned());
        Ok(found)
    }

    pub fn user_id_by_external(&self, external_id: &str) -> Result<Option<String>, StoreError> {
        let tx = self.db.begin_read()?;
        let found = tx
            .open_table(USER_EXTERNALS)?
            .get(external_id)?
            .map(|id| id.value().to_owned());
        Ok(found)
    }

    /// Users other than `exclude` whose name contains `query` (already lower-case) or whose
    /// email is `query`, at most `limit`, in id order (creation order). A full scan of the users
    /// table, stopped at `limit` matches. Emails match only whole, so that a search cannot
    /// harvest them piece by piece.
    pub fn search_users(
        &self,
        exclude: &str,
        query: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let users = tx.open_table(USERS)?;
        let mut found = Vec::new();
        for entry in users.iter()? {
            let (id, bytes) = entry?;
            if id.value() == exclude {
                continue;
            }
            let user: UserRecord =
                decode(bytes.value()).map_err(StoreError::corrupt("users", id.value()))?;
            let matches =
                query.is_none_or(|q| user.email == q || user.name.to_lowercase().contains(q));
            if matches {
                found.push(user);
                if found.len() == limit {
                    break;
                }
            }
        }
        Ok(found)
    }

    pub fn chat(&self, id: &str) -> Result<Option<ChatRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let chats = tx.open_table(CHATS)?;
        let found = chats.get(id)?;
        found
            .map(|bytes| decode(bytes.value()).map_err(StoreError::corrupt("chats", id)))
            .transpose()
    }

    /// The members of `chat` in joining order, `None` if there is no such chat: from memory
    /// when seen before, exact under concurrent changes (see [`members`]).
    pub fn members_of(&self, chat: &str) -> Result<Option<Members>, StoreError> {
        if let Some(members) = self.members.get(chat) {
            return Ok(Some(members));
        }
        let generation = self.members.generation();
        let tx = self.db.begin_read()?;
        let Some(record) = chat_in(&tx, chat)? else {
            return Ok(None);
        };
        let version = members_version_in(&tx, chat)?;
        let members = Members::from(record.members);
        self.members
            .fill(chat, generation, version, Arc::clone(&members));
        Ok(Some(members))
    }

    /// `chat` as `viewer` sees it, if there is such a chat (membership is the caller's check).
    pub fn chat_state(&self, chat: &str, viewer: &str) -> Result<Option<ChatState>, StoreError> {
        let tx = self.db.begin_read()?;
        chat_in(&tx, chat)?
            .map(|record| state_in(&tx, record, viewer))
            .transpose()
    }

    /// The chats of `user` as they see them, at most `limit`, in one snapshot.
    pub fn chat_states_of(&self, user: &str, limit: usize) -> Result<Vec<ChatState>, StoreError> {
        let tx = self.db.begin_read()?;
        let index = tx.open_table(USER_CHATS)?;
        let mut found = Vec::new();
        for entry in index
            .range((user, "")..=(user, ID_UPPER_BOUND))?
            .take(limit)
        {
            let key = entry?.0;
            if let Some(record) = chat_in(&tx, key.value().1)? {
                found.push(state_in(&tx, record, user)?);
            }
        }
        Ok(found)
    }

    /// The members of `chat` with when they joined (a 1:1 chat's members joined at its
    /// creation) and how far each has read.
    pub fn member_details(&self, chat: &ChatRecord) -> Result<Vec<MemberDetail>, StoreError> {
        let tx = self.db.begin_read()?;
        let group_members = tx.open_table(GROUP_MEMBERS)?;
        let mut found = Vec::with_capacity(chat.members.len());
        for user in &chat.members {
            let joined_ms = match group_members.get((chat.id.as_str(), user.as_str()))? {
                Some(bytes) => {
                    let record: MemberRecord = decode(bytes.value()).map_err(
                        StoreError::corrupt("group_members", format!("({}, {user})", chat.id)),
                    )?;
                    record.joined_ms
                }
                None => chat.created_ms,
            };
            found.push(MemberDetail {
                user: user.clone(),
                joined_ms,
                last_read_seq: read_in(&tx, user, &chat.id)?.seq,
            });
        }
        Ok(found)
    }

    /// The messages of `chat` with seq in `seqs`, ascending, each with its system event if it
    /// is a system message: two range scans of one snapshot.
    pub fn messages_with_events(
        &self,
        chat: &str,
        seqs: Range<u64>,
    ) -> Result<Vec<(MessageRecord, Option<SystemEvent>)>, StoreError> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let tx = self.db.begin_read()?;
        let mut events = std::collections::BTreeMap::new();
        for entry in tx
            .open_table(SYSTEM_MESSAGES)?
            .range((chat, seqs.start)..(chat, seqs.end))?
        {
            let (key, bytes) = entry?;
            let seq = key.value().1;
            let record: SystemRecord = decode(bytes.value()).map_err(StoreError::corrupt(
                "system_messages",
                format!("({chat}, {seq})"),
            ))?;
            events.insert(seq, record.event);
        }
        let messages = messages_in(&tx, chat, seqs)?;
        Ok(messages
            .into_iter()
            .map(|m| {
                let event = events.remove(&m.seq);
                (m, event)
            })
            .collect())
    }

    /// The chats `user` is a member of (through the per-user index), at most `limit`.
    pub fn chats_of(&self, user: &str, limit: usize) -> Result<Vec<ChatRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let index = tx.open_table(USER_CHATS)?;
        let chats = tx.open_table(CHATS)?;
        let mut found = Vec::new();
        for entry in index
            .range((user, "")..=(user, ID_UPPER_BOUND))?
            .take(limit)
        {
            let (key, ()) = (entry?.0, ());
            let chat_id = key.value().1;
            if let Some(bytes) = chats.get(chat_id)? {
                found.push(decode(bytes.value()).map_err(StoreError::corrupt("chats", chat_id))?);
            }
        }
        Ok(found)
    }

    /// The messages of `chat` with seq in `seqs`, ascending: one range scan.
    pub fn messages(&self, chat: &str, seqs: Range<u64>) -> Result<Vec<MessageRecord>, StoreError> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let tx = self.db.begin_read()?;
        messages_in(&tx, chat, seqs)
    }

    /// The message `sender` already sent to `chat` with this idempotency key, if any.
    pub fn message_by_client_id(
        &self,
        chat: &str,
        sender: &str,
        client_msg_id: &str,
    ) -> Result<Option<MessageRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let Some(seq) = tx
            .open_table(CLIENT_IDS)?
            .get((chat, sender, client_msg_id))?
            .map(|s| s.value())
        else {
            return Ok(None);
        };
        let messages = tx.open_table(MESSAGES)?;
        let found = messages.get((chat, seq))?;
        found
            .map(|bytes| {
                decode(bytes.value())
                    .map_err(StoreError::corrupt("messages", format!("({chat}, {seq})")))
            })
            .transpose()
    }

    /// Checks that every index agrees with the tables it indexes and that every chat's seqs
    /// are exactly 1..=last_seq. Used by tests and the crash-consistency checks; a full scan.
    #[cfg(any(test, feature = "testing"))]
    pub fn check_consistency(&self) -> Result<Vec<String>, StoreError> {
        tables::check_consistency(&self.db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::backends::InMemoryBackend;

    fn backend_with(bytes: &[u8]) -> InMemoryBackend {
        let backend = InMemoryBackend::new();
        backend.set_len(bytes.len() as u64).unwrap();
        backend.write(0, bytes).unwrap();
        backend
    }

    #[test]
    fn a_creation_cut_short_is_started_again() {
        // What a power cut between redb's two creation syncs leaves: sized, no magic number.
        let db = open_backend(backend_with(&[0; 4096])).expect("reopens as a new database");
        let (store, _writer, _task) = start(db, Durability::None).unwrap();
        assert!(store.check_consistency().unwrap().is_empty());
    }

    #[test]
    fn a_file_that_is_not_a_database_is_left_alone() {
        let mut bytes = vec![0u8; 4096];
        bytes[..5].copy_from_slice(b"hello");
        let backend = backend_with(&bytes);
        assert!(!restart_interrupted_creation(&backend).unwrap());
        let mut kept = vec![0u8; 4096];
        backend.read(0, &mut kept).unwrap();
        assert_eq!(kept, bytes);
        assert!(open_backend(backend).is_err(), "redb refuses it");
    }

    #[test]
    fn a_half_created_file_on_disk_is_created_again() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), [0u8; 8192]).unwrap();
        let db = open_dir(dir.path()).expect("opens");
        let (store, _writer, _task) = start(db, Durability::None).unwrap();
        assert!(store.check_consistency().unwrap().is_empty());
    }

    #[test]
    fn a_database_open_in_another_handle_is_neither_touched_nor_opened_twice() {
        let dir = tempfile::tempdir().unwrap();
        let first = open_dir(dir.path()).unwrap();
        let before = std::fs::read(dir.path().join(DB_FILE)).unwrap();
        assert!(open_dir(dir.path()).is_err(), "redb refuses a second open");
        assert_eq!(std::fs::read(dir.path().join(DB_FILE)).unwrap(), before);
        let (store, _writer, _task) = start(first, Durability::None).unwrap();
        assert!(store.check_consistency().unwrap().is_empty());
    }

    fn message(chat: &str, seq: u64, sender: &str) -> MessageRecord {
        MessageRecord {
            id: format!("m{seq}"),
            chat: chat.into(),
            seq,
            sender: sender.into(),
            text: "hi".into(),
            client_msg_id: None,
            created_ms: seq,
        }
    }

    /// What a build of format 1 left: its tables only, a 1:1 chat with three messages.
    fn format_one_database() -> Database {
        let db = open_in_memory().unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut meta = tx.open_table(META).unwrap();
            meta.insert(tables::FORMAT_KEY, [1u8].as_slice()).unwrap();
            let chat = ChatRecord {
                id: "c1".into(),
                members: vec!["a".into(), "b".into()],
                created_ms: 1,
                last_seq: 3,
                last_message_ms: 3,
            };
            let mut chats = tx.open_table(CHATS).unwrap();
            chats
                .insert("c1", records::encode(&chat).as_slice())
                .unwrap();
            let mut user_chats = tx.open_table(USER_CHATS).unwrap();
            user_chats.insert(("a", "c1"), ()).unwrap();
            user_chats.insert(("b", "c1"), ()).unwrap();
            let mut messages = tx.open_table(MESSAGES).unwrap();
            for (seq, sender) in [(1, "a"), (2, "b"), (3, "b")] {
                let record = records::encode(&message("c1", seq, sender));
                messages.insert(("c1", seq), record.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
        db
    }

    #[tokio::test]
    async fn a_format_one_database_opens_with_its_chats_read_so_far() {
        let (store, writer, task) = start(format_one_database(), Durability::None).unwrap();
        tokio::spawn(task.run(std::future::pending()));
        let format = {
            let tx = store.db.begin_read().unwrap();
            let meta = tx.open_table(META).unwrap();
            meta.get(tables::FORMAT_KEY).unwrap().unwrap().value()[0]
        };
        assert_eq!(format, FORMAT_VERSION);
        let states = store.chat_states_of("a", 10).unwrap();
        assert_eq!(states.len(), 1);
        assert_eq!(states[0].group, None, "a chat of format 1 is 1:1");
        assert_eq!(states[0].read.seq, 3);
        assert_eq!(
            crate::domain::reads::unread(states[0].counted, states[0].read),
            0
        );
        assert!(store.check_consistency().unwrap().is_empty());
        // It works on: b writes, a has one unread, b none.
        let appended = writer
            .append_message(NewMessage {
                id: "m4".into(),
                chat: "c1".into(),
                sender: "b".into(),
                text: "again".into(),
                client_msg_id: None,
                now_ms: 4,
            })
            .await
            .unwrap();
        assert!(matches!(appended, AppendOutcome::Appended(ref m) if m.seq == 4));
        let a = store.chat_state("c1", "a").unwrap().unwrap();
        let b = store.chat_state("c1", "b").unwrap().unwrap();
        assert_eq!(crate::domain::reads::unread(a.counted, a.read), 1);
        assert_eq!(crate::domain::reads::unread(b.counted, b.read), 0);
        assert!(store.check_consistency().unwrap().is_empty());
    }

    async fn users(writer: &StoreWriter, ids: &[&str]) {
        for id in ids {
            writer
                .create_user(NewUser {
                    id: id.to_string(),
                    name: id.to_uppercase(),
                    email: format!("{id}@example.com"),
                    avatar: String::new(),
                    password_hash: None,
                    external_id: None,
                    now_ms: 1,
                })
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn group_changes_take_seqs_and_the_member_copy_follows_each_answer() {
        let (store, writer, task) = start(open_in_memory().unwrap(), Durability::None).unwrap();
        tokio::spawn(task.run(std::future::pending()));
        users(&writer, &["a", "b", "c"]).await;
        let created = writer
            .create_group(NewGroup {
                id: "g1".into(),
                owner: "a".into(),
                name: "Team".into(),
                others: vec!["b".into()],
                now_ms: 2,
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(created.chat.members, ["a", "b"]);
        assert_eq!(store.members_of("g1").unwrap().unwrap()[..], ["a", "b"]);
        let change = |by: &str, change: Change| GroupChange {
            chat: "g1".into(),
            by: by.into(),
            change,
            message_ids: vec!["s1".into(), "s2".into()],
            now_ms: 3,
        };
        let refused = writer
            .change_group(change("b", Change::Add(vec!["c".into()])))
            .await
            .unwrap();
        assert_eq!(
            refused,
            Err(crate::domain::membership::MembershipError::NotOwner)
        );
        let added = writer
            .change_group(change("a", Change::Add(vec!["c".into(), "b".into()])))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(added.system.len(), 1, "b was a member already");
        assert_eq!(added.system[0].0.seq, 1);
        assert_eq!(added.system[0].0.text, "A added C");
        // The copy read before the change is replaced before the answer came.
        assert_eq!(
            store.members_of("g1").unwrap().unwrap()[..],
            ["a", "b", "c"]
        );
        let left = writer
            .change_group(change("a", Change::Remove("a".into())))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            left.chat.members,
            ["b", "c"],
            "b, the longest-standing, owns it now"
        );
        assert_eq!(store.members_of("g1").unwrap().unwrap()[..], ["b", "c"]);
        let page = store.messages_with_events("g1", 1..3).unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(page[1].1.as_ref().map(|e| e.kind), Some(SystemKind::Left));
        // The new member has nothing unread; the system messages count for nobody.
        let c = store.chat_state("g1", "c").unwrap().unwrap();
        assert_eq!(
            (c.read.seq, crate::domain::reads::unread(c.counted, c.read)),
            (1, 0)
        );
        let b = store.chat_state("g1", "b").unwrap().unwrap();
        assert_eq!(crate::domain::reads::unread(b.counted, b.read), 0);
        assert!(store.check_consistency().unwrap().is_empty());
    }

    #[tokio::test]
    async fn mark_reads_of_one_batch_are_coalesced_and_move_forward_only() {
        let (store, writer, task) = start(open_in_memory().unwrap(), Durability::None).unwrap();
        let (feed, mut shards) = super::feed::CommitFeed::new(1, 64);
        tokio::spawn(task.with_feed(feed).run(std::future::pending()));
        users(&writer, &["a", "b"]).await;
        writer
            .get_or_create_chat("c1".into(), "a".into(), "b".into(), 1)
            .await
            .unwrap();
        // Filed without waiting: on this single-threaded runtime the writer runs only when the
        // answers are awaited, and then takes them all as one batch.
        let mut appends = Vec::new();
        for i in 1..=5 {
            let new = NewMessage {
                id: format!("m{i}"),
                chat: "c1".into(),
                sender: "b".into(),
                text: "hi".into(),
                client_msg_id: None,
                now_ms: 2,
            };
            appends.push(writer.file_append(new).await.unwrap());
        }
        let mut reads = Vec::new();
        for seq in [2, 4, 3, 99] {
            reads.push(writer.file_mark_read("a", "c1", seq).await.unwrap());
        }
        for append in appends {
            append.answer().await.unwrap();
        }
        let mut positions = Vec::new();
        for read in reads {
            positions.push(read.answer().await.unwrap());
        }
        use super::writer::ReadOutcome::Read;
        assert_eq!(positions, [Read(2), Read(4), Read(4), Read(5)]);
        let a = store.chat_state("c1", "a").unwrap().unwrap();
        assert_eq!(a.read.seq, 5);
        // One `read` for the batch, after its messages.
        tokio::task::yield_now().await;
        let mut published = Vec::new();
        while let Ok(item) = shards[0].try_recv() {
            published.push(match item {
                Committed::Read { last_read_seq, .. } => format!("read {last_read_seq}"),
                Committed::Message { message, .. } => format!("message {}", message.seq),
                Committed::ChatCreated { .. } => "created".into(),
            });
        }
        let expected: Vec<String> = (1..=5)
            .map(|seq| format!("message {seq}"))
            .chain(["read 5".to_string()])
            .collect();
        assert_eq!(published, expected);
        assert!(store.check_consistency().unwrap().is_empty());
    }

    #[test]
    fn only_zeroed_non_empty_files_count_as_interrupted() {
        assert!(creation_was_interrupted(4096, &[0; REDB_MAGIC_LEN]));
        assert!(creation_was_interrupted(3, &[0; 3]));
        assert!(!creation_was_interrupted(0, &[]));
        assert!(!creation_was_interrupted(4096, b"redb\x1a\n\xa9\r\n"));
    }
}
