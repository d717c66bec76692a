//! Backups and restores of the whole database.
//!
//! A backup copies one read transaction, table by table, into a fresh redb file beside its
//! target (`FILE.partial`), made durable and then renamed into place, so a target is always
//! either the previous backup or a complete new one. Reads are a snapshot: the server keeps
//! committing while the copy runs, and the copy holds exactly what was committed when it began.
//! Memory stays bounded whatever the database's size: rows go over in transactions of
//! `COPY_ROWS_PER_COMMIT`, not durable until the last, and the target's page cache is
//! `COPY_CACHE_BYTES`. A restore puts a backup file in place as a data directory's database,
//! refusing a database another process holds and, unless forced, one that has accounts.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use redb::backends::FileBackend;
use redb::{
    Database, Key, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, TableHandle, Value,
};

use super::tables::*;
use super::{DB_FILE, FORMAT_VERSION, Store, StoreError, private, sync_dir};
use crate::limits::{COPY_CACHE_BYTES, COPY_ROWS_PER_COMMIT};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{0} exists: another backup to the same file is running, or one was interrupted (then remove it)"
    )]
    PartialExists(String),
    #[error("table {0} is not one this build knows how to copy; refusing an incomplete backup")]
    UnknownTable(String),
    #[error("{0} is not a palaver database: {1}")]
    NotABackup(String, String),
    #[error(
        "the database in {0} is in use by another process (a running palaver server?): stop it first"
    )]
    InUse(String),
    #[error("the database in {dir} already has accounts or chats; {hint}")]
    NotEmpty { dir: String, hint: &'static str },
}

impl BackupError {
    fn file(path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.display().to_string();
        move |source| Self::File { path, source }
    }
}

macro_rules! from_redb_for_backup {
    ($($error:ty),*) => {$(
        impl From<$error> for BackupError {
            fn from(e: $error) -> Self {
                Self::Store(StoreError::from(e))
            }
        }
    )*};
}

from_redb_for_backup!(
    redb::StorageError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError,
    redb::DatabaseError,
    redb::SetDurabilityError
);

/// What a backup wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupSummary {
    /// Rows copied, over every table.
    pub rows: u64,
    /// Size of the backup file.
    pub bytes: u64,
}

impl Store {
    /// Writes a consistent copy of the database to `target` (see the module's paragraph).
    pub fn backup_to(&self, target: &Path) -> Result<BackupSummary, BackupError> {
        let snapshot = self.db.begin_read()?;
        copy_snapshot(&snapshot, target)
    }
}

/// The rows of every table of `snapshot` into a new database at `target`.
fn copy_snapshot(snapshot: &ReadTransaction, target: &Path) -> Result<BackupSummary, BackupError> {
    for table in snapshot.list_tables()? {
        if !TABLE_NAMES.contains(&table.name()) {
            return Err(BackupError::UnknownTable(table.name().to_owned()));
        }
    }
    let partial = partial_path(target);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(private::FILE_MODE)
        .open(&partial)
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::AlreadyExists => {
                BackupError::PartialExists(partial.display().to_string())
            }
            _ => BackupError::file(&partial)(error),
        })?;
    let copied = write_copy(snapshot, file);
    let rows = match copied {
        Ok(rows) => rows,
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(error);
        }
    };
    std::fs::rename(&partial, target).map_err(BackupError::file(target))?;
    sync_dir(parent_of(target)).map_err(BackupError::file(target))?;
    let bytes = std::fs::metadata(target)
        .map_err(BackupError::file(target))?
        .len();
    Ok(BackupSummary { rows, bytes })
}

fn write_copy(snapshot: &ReadTransaction, file: File) -> Result<u64, BackupError> {
    let backend = FileBackend::new(file)
        .map_err(redb::Error::from)
        .map_err(StoreError::from)?;
    let copy = Database::builder()
        .set_cache_size(COPY_CACHE_BYTES)
        .create_with_backend(backend)?;
    let rows = copy_tables(snapshot, &copy)?;
    // Every earlier commit was made without an fsync; this one makes them all durable.
    let tx = copy.begin_write()?;
    tx.commit()?;
    Ok(rows)
}

/// `FILE.partial`, beside `FILE`.
fn partial_path(target: &Path) -> PathBuf {
    let mut name = target.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Every table of the layout, by name: a table found in a database but missing here stops a
/// backup rather than being left out of it.
const TABLE_NAMES: &[&str] = &[
    "meta",
    "users",
    "user_emails",
    "user_externals",
    "chats",
    "chat_pairs",
    "user_chats",
    "messages",
    "client_ids",
    "token_revocations",
    "disabled_users",
    "groups",
    "group_members",
    "system_messages",
    "reads",
];

fn copy_tables(snapshot: &ReadTransaction, copy: &Database) -> Result<u64, BackupError> {
    let mut rows = 0;
    rows += copy_table(snapshot, copy, META)?;
    rows += copy_table(snapshot, copy, USERS)?;
    rows += copy_table(snapshot, copy, USER_EMAILS)?;
    rows += copy_table(snapshot, copy, USER_EXTERNALS)?;
    rows += copy_table(snapshot, copy, CHATS)?;
    rows += copy_table(snapshot, copy, CHAT_PAIRS)?;
    rows += copy_table(snapshot, copy, USER_CHATS)?;
    rows += copy_table(snapshot, copy, MESSAGES)?;
    rows += copy_table(snapshot, copy, CLIENT_IDS)?;
    rows += copy_table(snapshot, copy, TOKEN_REVOCATIONS)?;
    rows += copy_table(snapshot, copy, DISABLED_USERS)?;
    rows += copy_table(snapshot, copy, GROUPS)?;
    rows += copy_table(snapshot, copy, GROUP_MEMBERS)?;
    rows += copy_table(snapshot, copy, SYSTEM_MESSAGES)?;
    rows += copy_table(snapshot, copy, READS)?;
    Ok(rows)
}

/// Copies one table in transactions of `COPY_ROWS_PER_COMMIT` rows, none of them durable (the
/// caller's last commit is). A table missing from the snapshot is created empty.
fn copy_table<K: Key + 'static, V: Value + 'static>(
    snapshot: &ReadTransaction,
    copy: &Database,
    definition: TableDefinition<K, V>,
) -> Result<u64, BackupError> {
    let source = match snapshot.open_table(definition) {
        Ok(table) => Some(table),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(error) => return Err(error.into()),
    };
    let mut rows = match &source {
        Some(table) => Some(table.iter()?),
        None => None,
    };
    let mut copied = 0;
    loop {
        let mut tx = copy.begin_write()?;
        tx.set_durability(redb::Durability::None)?;
        let mut this_round = 0;
        {
            let mut table = tx.open_table(definition)?;
            if let Some(rows) = rows.as_mut() {
                for entry in rows.by_ref().take(COPY_ROWS_PER_COMMIT) {
                    let (key, value) = entry?;
                    table.insert(key.value(), value.value())?;
                    this_round += 1;
                }
            }
        }
        tx.commit()?;
        copied += this_round;
        if this_round < COPY_ROWS_PER_COMMIT as u64 {
            return Ok(copied);
        }
    }
}

/// What a restore put in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreSummary {
    pub bytes: u64,
    /// Whether a database with data was replaced (`force`).
    pub replaced: bool,
}

/// Puts the backup file `backup` in place as the database of data directory `dir` (created
/// 0700 if missing). Refuses a database another process holds, and one with accounts or chats
/// unless `force`.
pub fn restore(backup: &Path, dir: &Path, force: bool) -> Result<RestoreSummary, BackupError> {
    check_backup(backup)?;
    private::create_dir(dir).map_err(BackupError::file(dir))?;
    let target = dir.join(DB_FILE);
    // Held open (and so locked against a server starting) until the new file is in place.
    let existing = open_existing(&target, dir)?;
    let replaced = match &existing {
        Some(db) => has_data(db)?,
        None => false,
    };
    if replaced && !force {
        return Err(BackupError::NotEmpty {
            dir: dir.display().to_string(),
            hint: "restore into an empty data directory, or give --force to replace it",
        });
    }
    let incoming = dir.join(format!("{DB_FILE}.restoring"));
    let bytes = std::fs::copy(backup, &incoming).map_err(BackupError::file(&incoming))?;
    let synced = private::open_file(&incoming).and_then(|file| file.sync_all());
    synced.map_err(BackupError::file(&incoming))?;
    std::fs::rename(&incoming, &target).map_err(BackupError::file(&target))?;
    sync_dir(dir).map_err(BackupError::file(dir))?;
    drop(existing);
    Ok(RestoreSummary { bytes, replaced })
}

/// A file redb opens without repair, holding palaver's format marker of a version this build
/// reads.
fn check_backup(backup: &Path) -> Result<(), BackupError> {
    let not_ours = |reason: String| BackupError::NotABackup(backup.display().to_string(), reason);
    let db = ReadOnlyDatabase::open(backup).map_err(|e| not_ours(e.to_string()))?;
    let tx = db.begin_read().map_err(|e| not_ours(e.to_string()))?;
    let meta = tx.open_table(META).map_err(|e| not_ours(e.to_string()))?;
    let format = meta
        .get(FORMAT_KEY)
        .map_err(|e| not_ours(e.to_string()))?
        .and_then(|v| v.value().first().copied())
        .ok_or_else(|| not_ours("no format marker".into()))?;
    if format > FORMAT_VERSION {
        return Err(StoreError::NewerFormat { found: format }.into());
    }
    Ok(())
}

/// The database at `target`, if there is one, opened (and so locked against a server starting
/// while it is held); refused when it has accounts or chats, or another process holds it.
pub(super) fn open_empty_target(
    target: &Path,
    dir: &Path,
) -> Result<Option<Database>, BackupError> {
    let existing = open_existing(target, dir)?;
    if let Some(db) = &existing
        && has_data(db)?
    {
        return Err(BackupError::NotEmpty {
            dir: dir.display().to_string(),
            hint: "import into an empty data directory",
        });
    }
    Ok(existing)
}

/// The database at `target`, if there is one, opened (and so locked); `InUse` when another
/// process holds it.
fn open_existing(target: &Path, dir: &Path) -> Result<Option<Database>, BackupError> {
    if !target.exists() {
        return Ok(None);
    }
    let file = private::open_file(target).map_err(BackupError::file(target))?;
    let backend = FileBackend::new(file);
    let opened = backend.and_then(|backend| Database::builder().create_with_backend(backend));
    match opened {
        Ok(db) => Ok(Some(db)),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            Err(BackupError::InUse(dir.display().to_string()))
        }
        Err(error) => Err(error.into()),
    }
}

fn has_data(db: &Database) -> Result<bool, BackupError> {
    let tx = db.begin_read()?;
    for table in [USERS, CHATS] {
        match tx.open_table(table) {
            Ok(table) if !table.is_empty()? => return Ok(true),
            Ok(_) | Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(false)
}
