//! Export and import: the database as JSON Lines, for moving palaver's data or keeping it in a
//! form any tool reads.
//!
//! The file is a `version` line, then (with secrets) the token secret, then every user, chat,
//! chat member, message and read position, one object per line with a `type`, in key order,
//! each section whole before the next. A group's chat line carries its `group` name, its member
//! lines their `joinedMs` (in joining order, the owner first), and a system message its `event`;
//! the indexes derived from them (pairs of 1:1 chats, a chat's running count of system
//! messages, the counts kept with read positions) are rebuilt on import. An export reads one read transaction and writes as it goes, so its
//! memory does not grow with the database. Without `include_secrets` users carry no password
//! hash (they sign in again after `palaver user set-password`). Members are lines of their own
//! (`{"type":"member","chat","user"}`), so that a member can grow a role or a join time.
//!
//! An import writes a new database file beside the data directory's (`palaver.redb.importing`)
//! in transactions of `COPY_ROWS_PER_COMMIT` lines, rebuilding every index from the rows, and
//! renames it into place once it is whole and durable. It refuses a data directory whose
//! database has accounts or chats, and a file whose lines are out of order, refer to what is not
//! there, or break a chat's gapless seqs. Export, import, export gives the same file.

use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use redb::backends::FileBackend;
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};

use super::backup::BackupError;
use super::records::{
    ChatRecord, GroupRecord, MemberRecord, MessageRecord, ReadRecord, SystemEvent, SystemKind,
    SystemRecord, UserRecord, decode, encode,
};
use super::tables::*;
use super::{DB_FILE, FORMAT_VERSION, StoreError, private, sync_dir};
use crate::domain::reads;
use crate::limits::{
    CHAT_MEMBERS_MAX, COPY_CACHE_BYTES, COPY_ROWS_PER_COMMIT, EXPORT_LINE_BYTES_MAX,
};

/// The version of the export format (the lines' shapes), in its first line.
/// Version 2 added groups, system messages and read positions; version 1 files still import.
pub const EXPORT_VERSION: u32 = 2;

/// Meta key of the token secret (the server's `JWT_SECRET_KEY`).
const JWT_SECRET_KEY: &str = "jwt_secret";

/// One line of an export file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Line {
    #[serde(rename_all = "camelCase")]
    Version {
        export: u32,
        /// The database format the rows come from.
        format: u8,
        secrets: bool,
    },
    /// The token secret, as hex; only with secrets.
    #[serde(rename_all = "camelCase")]
    Secret {
        jwt_secret: String,
    },
    User(UserLine),
    #[serde(rename_all = "camelCase")]
    Chat {
        id: String,
        created_ms: u64,
        last_seq: u64,
        last_message_ms: u64,
        /// A group's name; absent for a 1:1 chat.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    Member {
        chat: String,
        user: String,
        /// When a group member joined; absent for a 1:1 chat's members.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        joined_ms: Option<u64>,
    },
    #[serde(rename_all = "camelCase")]
    Message {
        chat: String,
        seq: u64,
        id: String,
        sender: String,
        text: String,
        client_msg_id: Option<String>,
        created_ms: u64,
        /// What a system message records; absent for a message a user sent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<EventLine>,
    },
    /// How far a user has read a chat (kept for former members too).
    #[serde(rename_all = "camelCase")]
    Read {
        user: String,
        chat: String,
        last_read_seq: u64,
    },
}

/// A system message's event, spelled as the contract spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventLine {
    #[serde(rename = "type")]
    kind: String,
    user_id: String,
    by: String,
}

impl From<SystemEvent> for EventLine {
    fn from(event: SystemEvent) -> Self {
        Self {
            kind: event.kind.as_str().to_owned(),
            user_id: event.user,
            by: event.by,
        }
    }
}

impl TryFrom<EventLine> for SystemEvent {
    type Error = String;

    fn try_from(line: EventLine) -> Result<Self, String> {
        let kind = match line.kind.as_str() {
            "added" => SystemKind::Added,
            "removed" => SystemKind::Removed,
            "left" => SystemKind::Left,
            "renamed" => SystemKind::Renamed,
            other => return Err(format!("unknown event type {other:?}")),
        };
        Ok(SystemEvent {
            kind,
            user: line.user_id,
            by: line.by,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserLine {
    id: String,
    name: String,
    email: String,
    avatar: String,
    external_id: Option<String>,
    created_ms: u64,
    updated_ms: u64,
    token_generation: u64,
    tokens_revoked_ms: u64,
    disabled_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_hash: Option<String>,
}

impl Line {
    /// Sections in file order; a line may not come after one of a later section.
    fn section(&self) -> u8 {
        match self {
            Line::Version { .. } => 0,
            Line::Secret { .. } => 1,
            Line::User(_) => 2,
            Line::Chat { .. } => 3,
            Line::Member { .. } => 4,
            Line::Message { .. } => 5,
            Line::Read { .. } => 6,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the export: {0}")]
    Write(std::io::Error),
    #[error("reading the import: {0}")]
    Read(std::io::Error),
    #[error("line {line}: {reason}")]
    Invalid { line: u64, reason: String },
}

macro_rules! from_redb_for_transfer {
    ($($error:ty),*) => {$(
        impl From<$error> for TransferError {
            fn from(e: $error) -> Self {
                Self::Store(StoreError::from(e))
            }
        }
    )*};
}

from_redb_for_transfer!(
    redb::StorageError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError,
    redb::DatabaseError,
    redb::SetDurabilityError
);

/// What an export or import went through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferSummary {
    pub users: u64,
    pub chats: u64,
    pub messages: u64,
}

/// Opens the database file at `path` (it must exist) to export it; redb repairs it if its last
/// writer died.
pub fn open_for_export(path: &Path) -> Result<Database, TransferError> {
    let named = |e: std::io::Error| {
        TransferError::Read(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        ))
    };
    if !path.exists() {
        return Err(named(std::io::ErrorKind::NotFound.into()));
    }
    let file = private::open_file(path).map_err(named)?;
    let backend = FileBackend::new(file)?;
    Ok(Database::builder()
        .set_cache_size(COPY_CACHE_BYTES)
        .create_with_backend(backend)?)
}

/// Rows an export will write (users, chats and messages), for a progress bar.
pub fn rows_to_export(db: &impl ReadableDatabase) -> Result<u64, TransferError> {
    let tx = db.begin_read()?;
    Ok(tx.open_table(USERS)?.len()?
        + tx.open_table(CHATS)?.len()?
        + tx.open_table(MESSAGES)?.len()?)
}

/// Writes the database as JSON Lines to `out`, calling `progress` with the rows written so far.
pub fn export(
    db: &impl ReadableDatabase,
    out: &mut impl Write,
    include_secrets: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<TransferSummary, TransferError> {
    let tx = db.begin_read()?;
    let meta = tx.open_table(META)?;
    let format = meta
        .get(FORMAT_KEY)?
        .and_then(|v| v.value().first().copied())
        .unwrap_or(FORMAT_VERSION);
    let mut written = Writer {
        out,
        rows: 0,
        progress,
    };
    written.line(&Line::Version {
        export: EXPORT_VERSION,
        format,
        secrets: include_secrets,
    })?;
    if include_secrets && let Some(secret) = meta.get(JWT_SECRET_KEY)? {
        written.line(&Line::Secret {
            jwt_secret: hex(secret.value()),
        })?;
    }
    let mut summary = TransferSummary::default();
    let revocations = tx.open_table(TOKEN_REVOCATIONS)?;
    let disabled = tx.open_table(DISABLED_USERS)?;
    for entry in tx.open_table(USERS)?.iter()? {
        let (id, bytes) = entry?;
        let user: UserRecord =
            decode(bytes.value()).map_err(StoreError::corrupt("users", id.value()))?;
        let (token_generation, tokens_revoked_ms) =
            revocations.get(id.value())?.map_or((0, 0), |e| e.value());
        let disabled_ms = disabled.get(id.value())?.map(|e| e.value());
        written.row(&Line::User(UserLine {
            id: user.id,
            name: user.name,
            email: user.email,
            avatar: user.avatar,
            external_id: user.external_id,
            created_ms: user.created_ms,
            updated_ms: user.updated_ms,
            token_generation,
            tokens_revoked_ms,
            disabled_ms,
            password_hash: user.password_hash.filter(|_| include_secrets),
        }))?;
        summary.users += 1;
    }
    summary.chats = export_chats(&tx, &mut written)?;
    export_members(&tx, &mut written)?;
    summary.messages = export_messages(&tx, &mut written)?;
    export_reads(&tx, &mut written)?;
    written.out.flush().map_err(TransferError::Write)?;
    Ok(summary)
}

fn chat_record(id: &str, bytes: &[u8]) -> Result<ChatRecord, StoreError> {
    decode(bytes).map_err(StoreError::corrupt("chats", id))
}

fn export_chats<W: Write>(
    tx: &ReadTransaction,
    written: &mut Writer<'_, W>,
) -> Result<u64, TransferError> {
    let groups = tx.open_table(GROUPS)?;
    let mut chats = 0;
    for entry in tx.open_table(CHATS)?.iter()? {
        let (id, bytes) = entry?;
        let chat = chat_record(id.value(), bytes.value())?;
        let group = match groups.get(id.value())? {
            Some(bytes) => {
                let record: GroupRecord =
                    decode(bytes.value()).map_err(StoreError::corrupt("groups", id.value()))?;
                Some(record.name)
            }
            None => None,
        };
        written.row(&Line::Chat {
            id: chat.id,
            created_ms: chat.created_ms,
            last_seq: chat.last_seq,
            last_message_ms: chat.last_message_ms,
            group,
        })?;
        chats += 1;
    }
    Ok(chats)
}

/// Each chat's members in the chat record's order (a group's owner first, then by joining).
fn export_members<W: Write>(
    tx: &ReadTransaction,
    written: &mut Writer<'_, W>,
) -> Result<(), TransferError> {
    let group_members = tx.open_table(GROUP_MEMBERS)?;
    for entry in tx.open_table(CHATS)?.iter()? {
        let (id, bytes) = entry?;
        let chat = chat_record(id.value(), bytes.value())?;
        for user in chat.members {
            let joined_ms = match group_members.get((chat.id.as_str(), user.as_str()))? {
                Some(bytes) => {
                    let record: MemberRecord = decode(bytes.value()).map_err(
                        StoreError::corrupt("group_members", format!("({}, {user})", chat.id)),
                    )?;
                    Some(record.joined_ms)
                }
                None => None,
            };
            written.line(&Line::Member {
                chat: chat.id.clone(),
                user,
                joined_ms,
            })?;
        }
    }
    Ok(())
}

fn export_messages<W: Write>(
    tx: &ReadTransaction,
    written: &mut Writer<'_, W>,
) -> Result<u64, TransferError> {
    let systems = tx.open_table(SYSTEM_MESSAGES)?;
    let mut messages = 0;
    for entry in tx.open_table(MESSAGES)?.iter()? {
        let (key, bytes) = entry?;
        let (chat, seq) = key.value();
        let where_ = || format!("({chat}, {seq})");
        let message: MessageRecord =
            decode(bytes.value()).map_err(StoreError::corrupt("messages", where_()))?;
        let event = match systems.get((chat, seq))? {
            Some(bytes) => {
                let record: SystemRecord = decode(bytes.value())
                    .map_err(StoreError::corrupt("system_messages", where_()))?;
                Some(EventLine::from(record.event))
            }
            None => None,
        };
        written.row(&Line::Message {
            chat: message.chat,
            seq: message.seq,
            id: message.id,
            sender: message.sender,
            text: message.text,
            client_msg_id: message.client_msg_id,
            created_ms: message.created_ms,
            event,
        })?;
        messages += 1;
    }
    Ok(messages)
}

fn export_reads<W: Write>(
    tx: &ReadTransaction,
    written: &mut Writer<'_, W>,
) -> Result<(), TransferError> {
    for entry in tx.open_table(READS)?.iter()? {
        let (key, bytes) = entry?;
        let (user, chat) = key.value();
        let read: ReadRecord = decode(bytes.value())
            .map_err(StoreError::corrupt("reads", format!("({user}, {chat})")))?;
        written.line(&Line::Read {
            user: user.to_owned(),
            chat: chat.to_owned(),
            last_read_seq: read.last_read_seq,
        })?;
    }
    Ok(())
}

struct Writer<'a, W: Write> {
    out: &'a mut W,
    rows: u64,
    progress: &'a mut dyn FnMut(u64),
}

impl<W: Write> Writer<'_, W> {
    fn line(&mut self, line: &Line) -> Result<(), TransferError> {
        serde_json::to_writer(&mut *self.out, line).map_err(|e| TransferError::Write(e.into()))?;
        self.out.write_all(b"\n").map_err(TransferError::Write)
    }

    /// A line that counts towards the progress.
    fn row(&mut self, line: &Line) -> Result<(), TransferError> {
        self.line(line)?;
        self.rows += 1;
        if self.rows.is_multiple_of(1024) {
            (self.progress)(self.rows);
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Imports an export file into the data directory `dir` (see the module's paragraph), calling
/// `progress` with the bytes read so far.
pub fn import(
    input: &mut impl BufRead,
    dir: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<TransferSummary, TransferError> {
    private::create_dir(dir).map_err(TransferError::Read)?;
    let target = dir.join(DB_FILE);
    // Held open (locked against a server starting) until the import is in place.
    let existing = super::backup::open_empty_target(&target, dir)?;
    let incoming = dir.join(format!("{DB_FILE}.importing"));
    let _ = std::fs::remove_file(&incoming);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(private::FILE_MODE)
        .open(&incoming)
        .map_err(TransferError::Read)?;
    let imported = fill(input, file, progress);
    let summary = match imported {
        Ok(summary) => summary,
        Err(error) => {
            let _ = std::fs::remove_file(&incoming);
            return Err(error);
        }
    };
    std::fs::rename(&incoming, &target).map_err(TransferError::Read)?;
    sync_dir(dir).map_err(TransferError::Read)?;
    drop(existing);
    Ok(summary)
}

fn fill(
    input: &mut impl BufRead,
    file: std::fs::File,
    progress: &mut dyn FnMut(u64),
) -> Result<TransferSummary, TransferError> {
    let db = Database::builder()
        .set_cache_size(COPY_CACHE_BYTES)
        .create_with_backend(FileBackend::new(file)?)?;
    super::tables::prepare(&db)?;
    let mut reader = Lines {
        input,
        number: 0,
        bytes: 0,
    };
    let source_format = match reader.read_line()? {
        Some(Line::Version { export, format, .. })
            if (1..=EXPORT_VERSION).contains(&export) && format <= FORMAT_VERSION =>
        {
            format
        }
        Some(Line::Version { export, format, .. }) => {
            return Err(reader.invalid(format!(
                "export version {export} of database format {format}: this build reads export version {EXPORT_VERSION} up to format {FORMAT_VERSION}"
            )));
        }
        _ => return Err(reader.invalid("the first line must be the version line".into())),
    };
    let mut state = ImportState::default();
    loop {
        let mut tx = db.begin_write()?;
        tx.set_durability(redb::Durability::None)?;
        let mut ended = false;
        {
            let mut tables = ImportTables::open(&tx)?;
            for _ in 0..COPY_ROWS_PER_COMMIT {
                let Some(line) = reader.read_line()? else {
                    ended = true;
                    break;
                };
                tables
                    .apply(line, &mut state)
                    .map_err(|reason| match reason {
                        Refused::Invalid(reason) => reader.invalid(reason),
                        Refused::Store(error) => TransferError::Store(error),
                    })?;
            }
        }
        tx.commit()?;
        progress(reader.bytes);
        if ended {
            break;
        }
    }
    // The earlier commits were not made durable; this one makes them all so, with the read
    // positions a database of format 1 gets when it is opened (it had none).
    let tx = db.begin_write()?;
    if source_format < FORMAT_VERSION {
        super::tables::read_everything_so_far(&tx)?;
    }
    tx.commit()?;
    Ok(state.summary)
}

/// The bounded lines of an import file.
struct Lines<'a, R: BufRead> {
    input: &'a mut R,
    number: u64,
    bytes: u64,
}

impl<R: BufRead> Lines<'_, R> {
    fn read_line(&mut self) -> Result<Option<Line>, TransferError> {
        let mut line = Vec::new();
        let limit = EXPORT_LINE_BYTES_MAX as u64 + 1;
        std::io::Read::take(&mut *self.input, limit)
            .read_until(b'\n', &mut line)
            .map_err(TransferError::Read)?;
        if line.is_empty() {
            return Ok(None);
        }
        self.number += 1;
        self.bytes += line.len() as u64;
        if line.last() != Some(&b'\n') && line.len() > EXPORT_LINE_BYTES_MAX {
            return Err(self.invalid(format!("longer than {EXPORT_LINE_BYTES_MAX} bytes")));
        }
        serde_json::from_slice(&line)
            .map(Some)
            .map_err(|e| self.invalid(e.to_string()))
    }

    fn invalid(&self, reason: String) -> TransferError {
        TransferError::Invalid {
            line: self.number,
            reason,
        }
    }
}

/// Why an import line was refused.
enum Refused {
    Invalid(String),
    Store(StoreError),
}

impl From<StoreError> for Refused {
    fn from(error: StoreError) -> Self {
        Refused::Store(error)
    }
}

impl From<redb::StorageError> for Refused {
    fn from(error: redb::StorageError) -> Self {
        Refused::Store(error.into())
    }
}

/// What an import carries from line to line: the section reached, the message last seen (and
/// the system messages of its chat so far), and the read position last seen.
#[derive(Default)]
struct ImportState {
    section: u8,
    last_message: Option<(String, u64)>,
    systems: u64,
    last_read: Option<(String, String)>,
    summary: TransferSummary,
}

struct ImportTables<'tx> {
    meta: Table<'tx, &'static str, &'static [u8]>,
    users: Table<'tx, &'static str, &'static [u8]>,
    emails: Table<'tx, &'static str, &'static str>,
    externals: Table<'tx, &'static str, &'static str>,
    chats: Table<'tx, &'static str, &'static [u8]>,
    pairs: Table<'tx, (&'static str, &'static str), &'static str>,
    user_chats: Table<'tx, (&'static str, &'static str), ()>,
    messages: Table<'tx, (&'static str, u64), &'static [u8]>,
    client_ids: Table<'tx, (&'static str, &'static str, &'static str), u64>,
    revocations: Table<'tx, &'static str, (u64, u64)>,
    disabled: Table<'tx, &'static str, u64>,
    groups: Table<'tx, &'static str, &'static [u8]>,
    group_members: Table<'tx, (&'static str, &'static str), &'static [u8]>,
    systems: Table<'tx, (&'static str, u64), &'static [u8]>,
    reads: Table<'tx, (&'static str, &'static str), &'static [u8]>,
}

impl<'tx> ImportTables<'tx> {
    fn open(tx: &'tx WriteTransaction) -> Result<Self, TransferError> {
        Ok(Self {
            meta: tx.open_table(META)?,
            users: tx.open_table(USERS)?,
            emails: tx.open_table(USER_EMAILS)?,
            externals: tx.open_table(USER_EXTERNALS)?,
            chats: tx.open_table(CHATS)?,
            pairs: tx.open_table(CHAT_PAIRS)?,
            user_chats: tx.open_table(USER_CHATS)?,
            messages: tx.open_table(MESSAGES)?,
            client_ids: tx.open_table(CLIENT_IDS)?,
            revocations: tx.open_table(TOKEN_REVOCATIONS)?,
            disabled: tx.open_table(DISABLED_USERS)?,
            groups: tx.open_table(GROUPS)?,
            group_members: tx.open_table(GROUP_MEMBERS)?,
            systems: tx.open_table(SYSTEM_MESSAGES)?,
            reads: tx.open_table(READS)?,
        })
    }

    fn apply(&mut self, line: Line, state: &mut ImportState) -> Result<(), Refused> {
        let section = line.section();
        if section < state.section || section == 0 {
            return Err(Refused::Invalid(
                "out of order: version, secret, users, chats, members, messages, reads".into(),
            ));
        }
        state.section = section;
        match line {
            Line::Version { .. } => unreachable!("refused above"),
            Line::Secret { jwt_secret } => {
                let secret = unhex(&jwt_secret)
                    .ok_or_else(|| Refused::Invalid("the secret is not hex".into()))?;
                self.meta.insert(JWT_SECRET_KEY, secret.as_slice())?;
            }
            Line::User(user) => {
                self.user(user)?;
                state.summary.users += 1;
            }
            Line::Chat {
                id,
                created_ms,
                last_seq,
                last_message_ms,
                group,
            } => {
                let chat = ChatRecord {
                    id,
                    members: Vec::new(),
                    created_ms,
                    last_seq,
                    last_message_ms,
                };
                self.new_chat(chat, group)?;
                state.summary.chats += 1;
            }
            Line::Member {
                chat,
                user,
                joined_ms,
            } => self.member(&chat, &user, joined_ms)?,
            Line::Message {
                chat,
                seq,
                id,
                sender,
                text,
                client_msg_id,
                created_ms,
                event,
            } => {
                let message = MessageRecord {
                    id,
                    chat,
                    seq,
                    sender,
                    text,
                    client_msg_id,
                    created_ms,
                };
                self.message(message, event, state)?;
                state.summary.messages += 1;
            }
            Line::Read {
                user,
                chat,
                last_read_seq,
            } => {
                let key = (user, chat);
                if state.last_read.as_ref().is_some_and(|last| *last >= key) {
                    return Err(Refused::Invalid(format!(
                        "read position of {} in chat {} out of order or twice",
                        key.0, key.1
                    )));
                }
                self.read(&key.0, &key.1, last_read_seq)?;
                state.last_read = Some(key);
            }
        }
        Ok(())
    }

    fn new_chat(&mut self, chat: ChatRecord, group: Option<String>) -> Result<(), Refused> {
        let id = chat.id.as_str();
        if self.chats.insert(id, encode(&chat).as_slice())?.is_some() {
            return Err(Refused::Invalid(format!("chat {id} twice")));
        }
        if let Some(name) = group {
            self.groups
                .insert(id, encode(&GroupRecord { name }).as_slice())?;
        }
        Ok(())
    }

    fn is_group(&self, chat: &str) -> Result<bool, Refused> {
        Ok(self.groups.get(chat)?.is_some())
    }

    fn message(
        &mut self,
        message: MessageRecord,
        event: Option<EventLine>,
        state: &mut ImportState,
    ) -> Result<(), Refused> {
        let (chat, seq) = (message.chat.clone(), message.seq);
        let same_chat = matches!(&state.last_message, Some((last, _)) if *last == chat);
        let expected = match &state.last_message {
            Some((_, last_seq)) if same_chat => last_seq + 1,
            _ => 1,
        };
        if seq != expected {
            return Err(Refused::Invalid(format!(
                "chat {chat}: seq {seq} where {expected} was due"
            )));
        }
        if !same_chat {
            state.systems = 0;
        }
        let record = self
            .chat(&chat)?
            .ok_or_else(|| Refused::Invalid(format!("no chat {chat}")))?;
        let is_group = self.is_group(&chat)?;
        // A group's earlier members may have left; a 1:1 chat's members never change.
        let sender_known = if is_group {
            self.users.get(message.sender.as_str())?.is_some()
        } else {
            record.has_member(&message.sender)
        };
        if !sender_known || seq > record.last_seq {
            return Err(Refused::Invalid(format!(
                "chat {chat}: message {seq} from an unknown sender or beyond its last seq"
            )));
        }
        if let Some(event) = event {
            if !is_group {
                return Err(Refused::Invalid(format!(
                    "chat {chat}: a system message in a 1:1 chat"
                )));
            }
            let event = SystemEvent::try_from(event)
                .map_err(|reason| Refused::Invalid(format!("chat {chat}, seq {seq}: {reason}")))?;
            state.systems += 1;
            let system = SystemRecord {
                event,
                systems_through: state.systems,
            };
            self.systems
                .insert((chat.as_str(), seq), encode(&system).as_slice())?;
        }
        if let Some(cmid) = &message.client_msg_id {
            let key = (
                message.chat.as_str(),
                message.sender.as_str(),
                cmid.as_str(),
            );
            if self.client_ids.insert(key, seq)?.is_some() {
                return Err(Refused::Invalid(format!("clientMsgId {cmid} used twice")));
            }
        }
        self.messages
            .insert((chat.as_str(), seq), encode(&message).as_slice())?;
        state.last_message = Some((chat, seq));
        Ok(())
    }

    /// A read position, with the count kept beside it rebuilt from the chat's system messages.
    fn read(&mut self, user: &str, chat: &str, last_read_seq: u64) -> Result<(), Refused> {
        let record = self
            .chat(chat)?
            .ok_or_else(|| Refused::Invalid(format!("no chat {chat}")))?;
        if self.users.get(user)?.is_none() {
            return Err(Refused::Invalid(format!("no user {user}")));
        }
        if last_read_seq > record.last_seq {
            return Err(Refused::Invalid(format!(
                "{user}'s read position {last_read_seq} in chat {chat} beyond its last seq"
            )));
        }
        let systems = super::systems_through(&self.systems, chat, last_read_seq)?;
        let position = ReadRecord {
            last_read_seq,
            counted: reads::counted_through(last_read_seq, systems),
        };
        self.reads
            .insert((user, chat), encode(&position).as_slice())?;
        Ok(())
    }

    fn user(&mut self, user: UserLine) -> Result<(), Refused> {
        let record = UserRecord {
            id: user.id,
            name: user.name,
            email: user.email,
            avatar: user.avatar,
            password_hash: user.password_hash,
            external_id: user.external_id,
            created_ms: user.created_ms,
            updated_ms: user.updated_ms,
        };
        let id = record.id.as_str();
        if self.emails.insert(record.email.as_str(), id)?.is_some() {
            return Err(Refused::Invalid(format!("email {} twice", record.email)));
        }
        if self.users.insert(id, encode(&record).as_slice())?.is_some() {
            return Err(Refused::Invalid(format!("user {id} twice")));
        }
        if let Some(external) = &record.external_id
            && self.externals.insert(external.as_str(), id)?.is_some()
        {
            return Err(Refused::Invalid(format!("external id {external} twice")));
        }
        if (user.token_generation, user.tokens_revoked_ms) != (0, 0) {
            self.revocations
                .insert(id, (user.token_generation, user.tokens_revoked_ms))?;
        }
        if let Some(disabled_ms) = user.disabled_ms {
            self.disabled.insert(id, disabled_ms)?;
        }
        Ok(())
    }

    fn chat(&self, id: &str) -> Result<Option<ChatRecord>, Refused> {
        let found = self.chats.get(id)?;
        Ok(found
            .map(|b| decode(b.value()).map_err(StoreError::corrupt("chats", id)))
            .transpose()?)
    }

    fn member(&mut self, chat: &str, user: &str, joined_ms: Option<u64>) -> Result<(), Refused> {
        let mut record = self
            .chat(chat)?
            .ok_or_else(|| Refused::Invalid(format!("no chat {chat}")))?;
        if self.users.get(user)?.is_none() {
            return Err(Refused::Invalid(format!("no user {user}")));
        }
        if record.has_member(user) {
            return Err(Refused::Invalid(format!("{user} twice in chat {chat}")));
        }
        record.members.push(user.to_owned());
        match (self.is_group(chat)?, joined_ms) {
            (true, Some(joined_ms)) if record.members.len() <= CHAT_MEMBERS_MAX => {
                let joined = encode(&MemberRecord { joined_ms });
                self.group_members.insert((chat, user), joined.as_slice())?;
            }
            (true, Some(_)) => {
                return Err(Refused::Invalid(format!(
                    "group {chat} has more than {CHAT_MEMBERS_MAX} members"
                )));
            }
            (true, None) => {
                return Err(Refused::Invalid(format!(
                    "{user} in group {chat} without joinedMs"
                )));
            }
            (false, Some(_)) => {
                return Err(Refused::Invalid(format!(
                    "joinedMs of {user} in 1:1 chat {chat}"
                )));
            }
            (false, None) => self.pair(chat, &record.members)?,
        }
        self.chats.insert(chat, encode(&record).as_slice())?;
        self.user_chats.insert((user, chat), ())?;
        Ok(())
    }

    /// A 1:1 chat has two members and is the one chat of its pair.
    fn pair(&mut self, chat: &str, members: &[String]) -> Result<(), Refused> {
        match members {
            [_] => Ok(()),
            [a, b] => {
                let pair = if a <= b {
                    (a.as_str(), b.as_str())
                } else {
                    (b.as_str(), a.as_str())
                };
                if self.pairs.insert(pair, chat)?.is_some() {
                    return Err(Refused::Invalid(format!("a second chat of {a} and {b}")));
                }
                Ok(())
            }
            _ => Err(Refused::Invalid(format!(
                "1:1 chat {chat} with more than two members"
            ))),
        }
    }
}
