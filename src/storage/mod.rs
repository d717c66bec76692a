//! Storage: users, chats and messages in an embedded redb database.
//!
//! Reads open a short read transaction on the caller's task (redb reads are lock-free snapshots
//! that touch the page cache, not the disk, in the common case). Every write goes through the one
//! writer task in [`writer`], which group-commits: it takes whatever requests are queued, applies
//! them in one transaction, commits once with the configured durability, and only then answers
//! each request. So an answer means "durable", and concurrent requests see each other's effects
//! in order, which is what makes `seq` gapless and get-or-create single.
//!
//! The whole crate reaches redb only through this module. The same code runs on a file (the
//! server), on redb's in-memory backend (tests, fuzzing) and on a simulated disk (the simulation).

mod accounts;
pub mod backup;
mod error;
pub mod export;
pub mod feed;
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
pub use feed::{CommitFeed, CommitSubscriber};
pub use records::{ChatRecord, MessageRecord, UserRecord};
pub use writer::{AppendOutcome, Filed, NewMessage, NewUser, StoreWriter, WriterExit, WriterTask};

use crate::limits::PAGE_PREALLOCATED_MAX;
use records::decode;
use tables::*;

/// The database format this build writes (the layout of tables and keys). A data directory
/// written by a newer build is refused at open rather than misread.
pub const FORMAT_VERSION: u8 = 1;

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
}

/// Opens (or creates) the database in `dir`. Runs redb's repair if the last process died
/// without closing it.
pub fn open_dir(dir: &Path) -> Result<Database, StoreError> {
    private::create_dir(dir).map_err(StoreError::data_dir(dir))?;
    // What `Builder::create(path)` does, with the backend in our hands first.
    let path = dir.join(DB_FILE);
    let file = private::open_file(&path).map_err(StoreError::data_dir(&path))?;
    let backend = redb::backends::FileBackend::new(file).map_err(redb::Error::from)?;
    let db = open_backend(backend)?;
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
    if restart_interrupted_creation(&backend)? {
        tracing::warn!(
            "the database file was left half-created by a first start that was cut short; creating it again"
        );
    }
    Ok(Database::builder()
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
    let (writer, task) = writer::channel(Arc::clone(&db), durability);
    Ok((Store { db }, writer, task))
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
        let messages = tx.open_table(MESSAGES)?;
        let mut found = Vec::with_capacity(
            usize::try_from(seqs.end - seqs.start)
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

    #[test]
    fn only_zeroed_non_empty_files_count_as_interrupted() {
        assert!(creation_was_interrupted(4096, &[0; REDB_MAGIC_LEN]));
        assert!(creation_was_interrupted(3, &[0; 3]));
        assert!(!creation_was_interrupted(0, &[]));
        assert!(!creation_was_interrupted(4096, b"redb\x1a\n\xa9\r\n"));
    }
}
