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

pub mod records;
mod tables;
pub mod writer;

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, StorageBackend};

pub use records::{ChatRecord, MessageRecord, UserRecord};
pub use writer::{
    AppendOutcome, NewMessage, NewUser, StoreWriter, WriteError, WriterExit, WriterTask,
};

use records::{DecodeError, decode};
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

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Storage(#[from] redb::Error),
    #[error("corrupt record in table {table}: {source}")]
    Corrupt {
        table: &'static str,
        source: DecodeError,
    },
    #[error(
        "the data directory was written by a newer palaver (database format {found}; this build reads up to {FORMAT_VERSION})"
    )]
    NewerFormat { found: u8 },
    #[error("cannot create or sync data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}

impl From<redb::StorageError> for StoreError {
    fn from(e: redb::StorageError) -> Self {
        Self::Storage(e.into())
    }
}
impl From<redb::TransactionError> for StoreError {
    fn from(e: redb::TransactionError) -> Self {
        Self::Storage(e.into())
    }
}
impl From<redb::TableError> for StoreError {
    fn from(e: redb::TableError) -> Self {
        Self::Storage(e.into())
    }
}

/// Read access to the database. Cheap to clone; all clones share one `Database`.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

/// Opens (or creates) the database in `dir`. Runs redb's repair if the last process died
/// without closing it.
pub fn open_dir(dir: &Path) -> Result<Database, StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;
    let db = Database::builder()
        .set_repair_callback(|session| {
            tracing::warn!(
                progress = session.progress(),
                "repairing database after unclean shutdown"
            );
        })
        .create(dir.join(DB_FILE))
        .map_err(redb::Error::from)?;
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
        .map_err(|source| StoreError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
    Ok(db)
}

/// Makes the entries of directory `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Opens (or creates) a database on any redb storage backend (in-memory, simulated disk).
pub fn open_backend(backend: impl StorageBackend) -> Result<Database, StoreError> {
    Ok(Database::builder()
        .create_with_backend(backend)
        .map_err(redb::Error::from)?)
}

/// An in-memory database, for tests and fuzzing.
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

fn corrupt(table: &'static str) -> impl FnOnce(DecodeError) -> StoreError {
    move |source| StoreError::Corrupt { table, source }
}

impl Store {
    pub fn user(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let users = tx.open_table(USERS)?;
        let found = users.get(id)?;
        found
            .map(|bytes| decode(bytes.value()).map_err(corrupt("users")))
            .transpose()
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

    /// Users other than `exclude` whose name or email contains `query` (already lower-case),
    /// at most `limit`, in id order (creation order). A full scan of the users table, stopped
    /// at `limit` matches.
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
            let user: UserRecord = decode(bytes.value()).map_err(corrupt("users"))?;
            let matches = query
                .is_none_or(|q| user.email.contains(q) || user.name.to_lowercase().contains(q));
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
            .map(|bytes| decode(bytes.value()).map_err(corrupt("chats")))
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
                found.push(decode(bytes.value()).map_err(corrupt("chats"))?);
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
                .min(1024),
        );
        for entry in messages.range((chat, seqs.start)..(chat, seqs.end))? {
            let (_, bytes) = entry?;
            found.push(decode(bytes.value()).map_err(corrupt("messages"))?);
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
            .map(|bytes| decode(bytes.value()).map_err(corrupt("messages")))
            .transpose()
    }

    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let found = tx.open_table(META)?.get(key)?.map(|v| v.value().to_vec());
        Ok(found)
    }

    /// Checks that every index agrees with the tables it indexes and that every chat's seqs
    /// are exactly 1..=last_seq. Used by tests and the crash-consistency checks; a full scan.
    pub fn check_consistency(&self) -> Result<Vec<String>, StoreError> {
        tables::check_consistency(&self.db)
    }
}
