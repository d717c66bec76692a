//! The writer task: the one owner of write transactions, group-committing queued requests.
//!
//! Requests arrive on a bounded queue (senders wait when it is full: backpressure, not memory
//! growth). The task takes the first request, then whatever else is already queued up to
//! [`WRITE_BATCH_MAX`], applies them in order in one transaction, commits once, and only then
//! answers each. One fsync thus serves a whole batch, and an answer always means "committed".
//! If anything in the batch fails at the storage level, nothing in it was committed and every
//! request in it is answered with the error. A record that does not decode fails only the
//! request that read it (before that request wrote anything); the rest of the batch commits.
//! After the commit, what it changed is published on the commit feed, in order.
//!
//! Membership changes are committed like messages: each takes the chat's next seq as a system
//! message, and the writer's check at append (is the sender a member now, in this transaction)
//! stays the authority. After the commit and before anyone is answered, the writer hands each
//! changed member list to the in-memory copy (`members::MembersCache`), so no acknowledged
//! change is ever missed by a lookup. Read positions are coalesced per (user, chat) within a
//! batch (held in memory while it is applied and written once before the commit), so they cost
//! no commit of their own, and a member reading through 1,000 messages whose `mark-read`s meet in
//! one batch costs one write, not 1,000.

use std::collections::BTreeMap;
use std::sync::Arc;

use redb::{Database, ReadableTable, Table, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::feed::{CommitFeed, Committed};
use super::members::{Members, MembersCache};
use super::records::{
    ChatRecord, DecodeError, GroupRecord, MemberRecord, MessageRecord, ReadRecord, SystemEvent,
    SystemKind, SystemRecord, UserRecord, decode, encode,
};
use super::tables::*;
use super::{Durability, StoreError};
use crate::domain::membership::{self, MembershipError};
use crate::domain::reads::{self, ReadPosition};
use crate::limits::{CHAT_MEMBERS_MAX, WRITE_BATCH_MAX, WRITE_QUEUE_MAX};
use crate::metrics::Metrics;

mod accounts;
pub use accounts::AccountChange;

pub struct NewUser {
    pub id: String,
    pub name: String,
    pub email: String,
    pub avatar: String,
    pub password_hash: Option<String>,
    pub external_id: Option<String>,
    pub now_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateUserOutcome {
    Created(UserRecord),
    EmailTaken,
    /// A user with this external id already exists (a concurrent first login): that user.
    ExistingExternal(UserRecord),
}

pub struct NewMessage {
    pub id: String,
    pub chat: String,
    pub sender: String,
    pub text: String,
    pub client_msg_id: Option<String>,
    pub now_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    Appended(MessageRecord),
    /// The `(chat, sender, clientMsgId)` was already used: the original message.
    Duplicate(MessageRecord),
    /// No such chat, or the sender is not a member.
    NotMember,
}

/// A new group: `owner` creates it with `others` (existing users, without the owner).
pub struct NewGroup {
    pub id: String,
    pub owner: String,
    pub name: String,
    pub others: Vec<String>,
    pub now_ms: u64,
}

/// A change to a group's members or name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Add(Vec<String>),
    Remove(String),
    Rename(String),
}

/// `by` changes `chat`; `message_ids` holds an id for each system message the change may take
/// (one per user of an add, else one).
pub struct GroupChange {
    pub chat: String,
    pub by: String,
    pub change: Change,
    pub message_ids: Vec<String>,
    pub now_ms: u64,
}

/// A group as a change or creation left it, with the system messages it appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    pub chat: ChatRecord,
    pub name: String,
    pub system: Vec<(MessageRecord, SystemEvent)>,
}

/// A group change's answer: the group after it, or why the writer refused it.
pub type GroupOutcome = Result<GroupState, MembershipError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The position after the request (unchanged when it asked for less).
    Read(u64),
    /// No such chat, or the user is not a member.
    NotMember,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Request {
    CreateUser(NewUser, Reply<CreateUserOutcome>),
    GetOrCreateChat {
        new_id: String,
        caller: String,
        other: String,
        now_ms: u64,
        reply: Reply<ChatRecord>,
    },
    Append(NewMessage, Reply<AppendOutcome>),
    InitMeta {
        key: String,
        value: Vec<u8>,
        reply: Reply<Vec<u8>>,
    },
    RevokeTokens {
        user: String,
        now_ms: u64,
        reply: Reply<u64>,
    },
    Account(AccountChange, Reply<Option<UserRecord>>),
    CreateGroup(NewGroup, Reply<GroupOutcome>),
    ChangeGroup(GroupChange, Reply<GroupOutcome>),
    MarkRead {
        user: String,
        chat: String,
        seq: u64,
        reply: Reply<ReadOutcome>,
    },
}

/// A request applied inside the open transaction, waiting for the commit to be answered.
enum Applied {
    User(Reply<CreateUserOutcome>, CreateUserOutcome),
    Chat(Reply<ChatRecord>, ChatRecord),
    Message(Reply<AppendOutcome>, AppendOutcome),
    Meta(Reply<Vec<u8>>, Vec<u8>),
    Revoked(Reply<u64>, u64),
    Account(Reply<Option<UserRecord>>, Option<UserRecord>),
    Group(Reply<GroupOutcome>, GroupOutcome),
    Read(Reply<ReadOutcome>, ReadOutcome),
}

impl Request {
    fn fail(self, error: StoreError) {
        // A requester that gave up (its connection closed) no longer listens: nothing to do.
        let _ = match self {
            Request::CreateUser(_, reply) => reply.send(Err(error)).is_ok(),
            Request::GetOrCreateChat { reply, .. } => reply.send(Err(error)).is_ok(),
            Request::Append(_, reply) => reply.send(Err(error)).is_ok(),
            Request::InitMeta { reply, .. } => reply.send(Err(error)).is_ok(),
            Request::RevokeTokens { reply, .. } => reply.send(Err(error)).is_ok(),
            Request::Account(_, reply) => reply.send(Err(error)).is_ok(),
            Request::CreateGroup(_, reply) | Request::ChangeGroup(_, reply) => {
                reply.send(Err(error)).is_ok()
            }
            Request::MarkRead { reply, .. } => reply.send(Err(error)).is_ok(),
        };
    }
}

impl Applied {
    fn answer(self, result: Result<(), StoreError>) {
        let _ = match self {
            Applied::User(reply, value) => reply.send(result.map(|()| value)).is_ok(),
            Applied::Chat(reply, value) => reply.send(result.map(|()| value)).is_ok(),
            Applied::Message(reply, value) => reply.send(result.map(|()| value)).is_ok(),
            Applied::Meta(reply, value) => reply.send(result.map(|()| value)).is_ok(),
            Applied::Revoked(reply, value) => reply.send(result.map(|()| value)).is_ok(),
            Applied::Account(reply, value) => reply.send(result.map(|()| value)).is_ok(),
            Applied::Group(reply, value) => reply.send(result.map(|()| value)).is_ok(),
            Applied::Read(reply, value) => reply.send(result.map(|()| value)).is_ok(),
        };
    }
}

/// Why the writer task ended.
#[derive(Debug, Clone)]
pub enum WriterExit {
    /// Asked to stop, or every handle dropped; everything queued was committed.
    Stopped,
    /// A commit failed; the database must be reopened before anything more is written.
    Failed(StoreError),
}

/// The handle through which the service writes. Cheap to clone.
#[derive(Clone)]
pub struct StoreWriter {
    requests: mpsc::Sender<Request>,
}

/// The writer's loop; run it once, on a task or a thread of its own. It ends when every
/// [`StoreWriter`] is dropped and the queue is drained.
pub struct WriterTask {
    db: Arc<Database>,
    requests: mpsc::Receiver<Request>,
    durability: Durability,
    feed: Option<CommitFeed>,
    metrics: Metrics,
    members: Arc<MembersCache>,
}

pub(super) fn channel(
    db: Arc<Database>,
    durability: Durability,
    members: Arc<MembersCache>,
) -> (StoreWriter, WriterTask) {
    let (tx, rx) = mpsc::channel(WRITE_QUEUE_MAX);
    (
        StoreWriter { requests: tx },
        WriterTask {
            db,
            requests: rx,
            durability,
            feed: None,
            metrics: Metrics::disabled(),
            members,
        },
    )
}

/// A request filed with the writer, whose answer comes after its batch commits. Requests are
/// committed in the order they were filed, so a caller may file several before awaiting any.
pub struct Filed<T> {
    answer: oneshot::Receiver<Result<T, StoreError>>,
}

impl<T> Filed<T> {
    /// The writer's answer: after the commit (durable) or the request's own failure.
    pub async fn answer(self) -> Result<T, StoreError> {
        self.answer.await.map_err(|_| StoreError::Closed)?
    }
}

impl StoreWriter {
    /// Files a request, waiting only for room in the writer's queue (backpressure).
    async fn file<T>(
        &self,
        build: impl FnOnce(Reply<T>) -> Request,
    ) -> Result<Filed<T>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(build(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(Filed { answer })
    }

    async fn call<T>(&self, build: impl FnOnce(Reply<T>) -> Request) -> Result<T, StoreError> {
        self.file(build).await?.answer().await
    }

    pub async fn create_user(&self, user: NewUser) -> Result<CreateUserOutcome, StoreError> {
        self.call(|reply| Request::CreateUser(user, reply)).await
    }

    /// The one chat between `caller` and `other`, created with `new_id` if there is none yet.
    pub async fn get_or_create_chat(
        &self,
        new_id: String,
        caller: String,
        other: String,
        now_ms: u64,
    ) -> Result<ChatRecord, StoreError> {
        self.call(|reply| Request::GetOrCreateChat {
            new_id,
            caller,
            other,
            now_ms,
            reply,
        })
        .await
    }

    pub async fn append_message(&self, message: NewMessage) -> Result<AppendOutcome, StoreError> {
        self.file_append(message).await?.answer().await
    }

    /// Files an append without waiting for its commit: appends filed one after another get
    /// ascending seqs in their chat.
    pub async fn file_append(
        &self,
        message: NewMessage,
    ) -> Result<Filed<AppendOutcome>, StoreError> {
        self.file(|reply| Request::Append(message, reply)).await
    }

    /// Raises `user`'s token generation (durably, like every write); the new generation.
    pub async fn revoke_tokens(&self, user: &str, now_ms: u64) -> Result<u64, StoreError> {
        let user = user.to_owned();
        self.call(|reply| Request::RevokeTokens {
            user,
            now_ms,
            reply,
        })
        .await
    }

    /// Applies an operator's change to an account; the account as changed, `None` if there is
    /// no such user.
    pub async fn change_account(
        &self,
        change: AccountChange,
    ) -> Result<Option<UserRecord>, StoreError> {
        self.call(|reply| Request::Account(change, reply)).await
    }

    /// Creates a group (see [`NewGroup`]); refused when a member is unknown or too many.
    pub async fn create_group(&self, group: NewGroup) -> Result<GroupOutcome, StoreError> {
        self.call(|reply| Request::CreateGroup(group, reply)).await
    }

    /// Applies a change to a group, checked against its members as of this commit.
    pub async fn change_group(&self, change: GroupChange) -> Result<GroupOutcome, StoreError> {
        self.call(|reply| Request::ChangeGroup(change, reply)).await
    }

    /// Moves `user`'s read position in `chat` forward to `seq` (capped at the chat's last
    /// seq); the position after it.
    pub async fn mark_read(
        &self,
        user: &str,
        chat: &str,
        seq: u64,
    ) -> Result<ReadOutcome, StoreError> {
        self.file_mark_read(user, chat, seq).await?.answer().await
    }

    /// Files a `mark-read` without waiting for its commit (a socket pipelines them like sends).
    pub async fn file_mark_read(
        &self,
        user: &str,
        chat: &str,
        seq: u64,
    ) -> Result<Filed<ReadOutcome>, StoreError> {
        let (user, chat) = (user.to_owned(), chat.to_owned());
        self.file(|reply| Request::MarkRead {
            user,
            chat,
            seq,
            reply,
        })
        .await
    }

    /// The stored value of `key`, storing `value` first if there is none.
    pub async fn init_meta(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let key = key.to_owned();
        self.call(|reply| Request::InitMeta { key, value, reply })
            .await
    }
}

impl WriterTask {
    /// Publishes every committed append on `feed` (see [`CommitFeed`]).
    pub fn with_feed(mut self, feed: CommitFeed) -> Self {
        self.feed = Some(feed);
        self
    }

    /// Counts each committed batch and its messages into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Commits batches until every [`StoreWriter`] is gone or `stop` completes. On `stop`, the
    /// queue is closed to new requests, and the ones already queued are committed and answered
    /// before returning: a clean shutdown loses nothing that was handed to the writer.
    ///
    /// A failed commit ends the writer with [`WriterExit::Failed`]: redb refuses every later
    /// write after an I/O error until the database is reopened, and after a failed fsync the
    /// page cache cannot be trusted anyway (PostgreSQL's "fsyncgate"). The process should stop
    /// and restart, which reopens the file and lets redb repair it.
    pub async fn run(mut self, stop: impl Future<Output = ()>) -> WriterExit {
        #[cfg(feature = "sim-faults")]
        crate::faults::writer_started();
        let mut batch = Vec::with_capacity(WRITE_BATCH_MAX);
        let mut stop = std::pin::pin!(stop);
        let mut stopping = false;
        loop {
            let received = if stopping {
                self.requests.recv_many(&mut batch, WRITE_BATCH_MAX).await
            } else {
                tokio::select! {
                    received = self.requests.recv_many(&mut batch, WRITE_BATCH_MAX) => received,
                    () = &mut stop => {
                        stopping = true;
                        self.requests.close();
                        continue;
                    }
                }
            };
            if received == 0 {
                tracing::debug!("storage writer stopped");
                return WriterExit::Stopped;
            }
            match self.commit_batch(std::mem::take(&mut batch)) {
                Ok(committed) => self.publish(committed).await,
                // Whatever is still queued is refused by dropping it: its senders see `Closed`.
                Err(error) => return WriterExit::Failed(error),
            }
        }
    }

    async fn publish(&self, committed: Vec<Committed>) {
        if let Some(feed) = &self.feed {
            for item in committed {
                feed.publish(item).await;
            }
        }
    }

    /// Applies and commits one batch, answers every request in it, and returns what it
    /// changed, in order, for the feed.
    fn commit_batch(&self, batch: Vec<Request>) -> Result<Vec<Committed>, StoreError> {
        let taken = batch.len();
        let started = std::time::Instant::now();
        let mut applied = Vec::with_capacity(taken);
        // Requests answered before the commit: refused on their own (see `settle`).
        let mut answered_early = 0;
        let mut pending = batch.into_iter();
        let mut effects = Effects::default();
        let outcome = self.begin().and_then(|tx| {
            {
                let mut tables = Tables::open(&tx)?;
                for request in pending.by_ref() {
                    match tables.apply(request)? {
                        Some(done) => applied.push(done),
                        None => answered_early += 1,
                    }
                }
                effects = tables.finish()?;
            }
            #[cfg(feature = "sim-faults")]
            if crate::faults::is_planted(crate::faults::PlantedFault::AckBeforeCommit) {
                answered_early += applied.len();
                applied.drain(..).for_each(|a| a.answer(Ok(())));
            }
            tx.commit().map_err(StoreError::from)
        });
        match outcome {
            Ok(()) => {
                // Before anyone is answered: see `members::MembersCache`.
                for (chat, version, members) in effects.membership {
                    self.members.committed(&chat, version, members);
                }
                let committed = effects.published;
                let messages = committed.iter().filter(|c| c.is_user_message()).count();
                self.metrics.committed(taken, started, messages);
                assert_eq!(
                    applied.len() + answered_early,
                    taken,
                    "a batch answers every request it took"
                );
                applied.into_iter().for_each(|a| a.answer(Ok(())));
                Ok(committed)
            }
            Err(error) => {
                // Not acknowledged. After a failed fsync the batch may still turn out durable;
                // clients retry with the same clientMsgId and get the original if so.
                tracing::error!(%error, "write batch failed; none of it was acknowledged");
                applied
                    .into_iter()
                    .for_each(|a| a.answer(Err(error.clone())));
                pending.for_each(|r| r.fail(error.clone()));
                Err(error)
            }
        }
    }

    fn begin(&self) -> Result<WriteTransaction, StoreError> {
        let mut tx = self.db.begin_write()?;
        let durability = match self.durability {
            Durability::Immediate => redb::Durability::Immediate,
            Durability::None => redb::Durability::None,
        };
        tx.set_durability(durability)?;
        // Record allocator state with each commit, so that reopening after a crash repairs in
        // milliseconds instead of walking the whole file.
        tx.set_quick_repair(true);
        Ok(tx)
    }
}

/// The outcome of one applied request: kept for the commit, or answered at once when it failed
/// on its own (see [`StoreError::is_per_request`]).
fn settle<T>(
    result: Result<T, StoreError>,
    reply: Reply<T>,
    applied: fn(Reply<T>, T) -> Applied,
) -> Result<Option<Applied>, StoreError> {
    match result {
        Ok(value) => Ok(Some(applied(reply, value))),
        Err(error) if error.is_per_request() => {
            tracing::error!(%error, "write request refused; the rest of its batch goes on");
            let _ = reply.send(Err(error));
            Ok(None)
        }
        Err(error) => {
            let _ = reply.send(Err(error.clone()));
            Err(error)
        }
    }
}

/// The tables one batch writes, opened once per transaction.
struct Tables<'tx> {
    users: Table<'tx, &'static str, &'static [u8]>,
    emails: Table<'tx, &'static str, &'static str>,
    externals: Table<'tx, &'static str, &'static str>,
    chats: Table<'tx, &'static str, &'static [u8]>,
    pairs: Table<'tx, (&'static str, &'static str), &'static str>,
    user_chats: Table<'tx, (&'static str, &'static str), ()>,
    messages: Table<'tx, (&'static str, u64), &'static [u8]>,
    client_ids: Table<'tx, (&'static str, &'static str, &'static str), u64>,
    meta: Table<'tx, &'static str, &'static [u8]>,
    revocations: Table<'tx, &'static str, (u64, u64)>,
    disabled: Table<'tx, &'static str, u64>,
    groups: Table<'tx, &'static str, &'static [u8]>,
    group_members: Table<'tx, (&'static str, &'static str), &'static [u8]>,
    systems: Table<'tx, (&'static str, u64), &'static [u8]>,
    reads: Table<'tx, (&'static str, &'static str), &'static [u8]>,
    effects: Effects,
}

/// What a batch changed beyond its tables: kept while it is applied, acted on once committed.
#[derive(Default)]
struct Effects {
    /// For the commit feed, in order.
    published: Vec<Committed>,
    /// Member lists changed: (chat, version, members), for the in-memory copy.
    membership: Vec<(String, u64, Members)>,
    /// Read positions moved, by (user, chat): written once each, before the commit.
    reads: BTreeMap<(String, String), PendingRead>,
}

struct PendingRead {
    record: ReadRecord,
    /// Moved by a `mark-read` (announced as `read`), not only by the user's own sends.
    announce: bool,
}

impl<'tx> Tables<'tx> {
    fn open(tx: &'tx WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            users: tx.open_table(USERS)?,
            emails: tx.open_table(USER_EMAILS)?,
            externals: tx.open_table(USER_EXTERNALS)?,
            chats: tx.open_table(CHATS)?,
            pairs: tx.open_table(CHAT_PAIRS)?,
            user_chats: tx.open_table(USER_CHATS)?,
            messages: tx.open_table(MESSAGES)?,
            client_ids: tx.open_table(CLIENT_IDS)?,
            meta: tx.open_table(META)?,
            revocations: tx.open_table(TOKEN_REVOCATIONS)?,
            disabled: tx.open_table(DISABLED_USERS)?,
            groups: tx.open_table(GROUPS)?,
            group_members: tx.open_table(GROUP_MEMBERS)?,
            systems: tx.open_table(SYSTEM_MESSAGES)?,
            reads: tx.open_table(READS)?,
            effects: Effects::default(),
        })
    }

    /// Writes the batch's read positions and hands back its effects; then it may commit.
    fn finish(mut self) -> Result<Effects, StoreError> {
        let mut effects = std::mem::take(&mut self.effects);
        for ((user, chat), pending) in &effects.reads {
            self.reads.insert(
                (user.as_str(), chat.as_str()),
                encode(&pending.record).as_slice(),
            )?;
            if !pending.announce {
                continue;
            }
            // Whoever is a member once the batch is applied hears of it.
            let members = match self.chat(chat) {
                Ok(Some(record)) => Members::from(record.members),
                Ok(None) => continue,
                Err(error) if error.is_per_request() => continue,
                Err(error) => return Err(error),
            };
            effects.published.push(Committed::Read {
                chat: chat.clone(),
                user: user.clone(),
                last_read_seq: pending.record.last_read_seq,
                members,
            });
        }
        Ok(effects)
    }

    /// Applies one request. A per-request failure (a record that does not decode) answers that
    /// request at once and returns `None`; the request wrote nothing, so the batch goes on. Any
    /// other error fails the whole batch.
    fn apply(&mut self, request: Request) -> Result<Option<Applied>, StoreError> {
        match request {
            Request::CreateUser(user, reply) => {
                settle(self.create_user(user), reply, Applied::User)
            }
            Request::GetOrCreateChat {
                new_id,
                caller,
                other,
                now_ms,
                reply,
            } => settle(
                self.get_or_create_chat(new_id, caller, other, now_ms),
                reply,
                Applied::Chat,
            ),
            Request::Append(message, reply) => {
                settle(self.append(message), reply, Applied::Message)
            }
            Request::InitMeta { key, value, reply } => {
                settle(self.init_meta(&key, value), reply, Applied::Meta)
            }
            Request::RevokeTokens {
                user,
                now_ms,
                reply,
            } => settle(self.revoke_tokens(&user, now_ms), reply, Applied::Revoked),
            Request::Account(change, reply) => {
                settle(self.change_account(change), reply, Applied::Account)
            }
            Request::CreateGroup(group, reply) => {
                settle(self.create_group(group), reply, Applied::Group)
            }
            Request::ChangeGroup(change, reply) => {
                settle(self.change_group(change), reply, Applied::Group)
            }
            Request::MarkRead {
                user,
                chat,
                seq,
                reply,
            } => settle(self.mark_read(&user, &chat, seq), reply, Applied::Read),
        }
    }

    fn revoke_tokens(&mut self, user: &str, now_ms: u64) -> Result<u64, StoreError> {
        let current = self
            .revocations
            .get(user)?
            .map_or(0, |entry| entry.value().0);
        let next = current + 1;
        self.revocations.insert(user, (next, now_ms))?;
        Ok(next)
    }

    fn init_meta(&mut self, key: &str, value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let stored = self.meta.get(key)?.map(|v| v.value().to_vec());
        match stored {
            Some(existing) => Ok(existing),
            None => {
                self.meta.insert(key, value.as_slice())?;
                Ok(value)
            }
        }
    }

    fn user(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        let found = self.users.get(id)?;
        found
            .map(|b| decode(b.value()).map_err(StoreError::corrupt("users", id)))
            .transpose()
    }

    fn chat(&self, id: &str) -> Result<Option<ChatRecord>, StoreError> {
        let found = self.chats.get(id)?;
        found
            .map(|b| decode(b.value()).map_err(StoreError::corrupt("chats", id)))
            .transpose()
    }

    fn message(&self, chat: &str, seq: u64) -> Result<MessageRecord, StoreError> {
        let key = || format!("({chat}, {seq})");
        let bytes = self.messages.get((chat, seq))?;
        let bytes =
            bytes.ok_or_else(|| StoreError::corrupt("messages", key())(DecodeError::Missing))?;
        decode(bytes.value()).map_err(StoreError::corrupt("messages", key()))
    }

    fn create_user(&mut self, user: NewUser) -> Result<CreateUserOutcome, StoreError> {
        if let Some(external) = &user.external_id {
            let existing = self
                .externals
                .get(external.as_str())?
                .map(|id| id.value().to_owned());
            if let Some(record) = existing.map(|id| self.user(&id)).transpose()?.flatten() {
                return Ok(CreateUserOutcome::ExistingExternal(record));
            }
        }
        if self.emails.get(user.email.as_str())?.is_some() {
            return Ok(CreateUserOutcome::EmailTaken);
        }
        let record = UserRecord {
            id: user.id,
            name: user.name,
            email: user.email,
            avatar: user.avatar,
            password_hash: user.password_hash,
            external_id: user.external_id,
            created_ms: user.now_ms,
            updated_ms: user.now_ms,
        };
        self.users
            .insert(record.id.as_str(), encode(&record).as_slice())?;
        self.emails
            .insert(record.email.as_str(), record.id.as_str())?;
        if let Some(external) = &record.external_id {
            self.externals
                .insert(external.as_str(), record.id.as_str())?;
        }
        Ok(CreateUserOutcome::Created(record))
    }

    fn get_or_create_chat(
        &mut self,
        new_id: String,
        caller: String,
        other: String,
        now_ms: u64,
    ) -> Result<ChatRecord, StoreError> {
        let pair = if caller <= other {
            (caller.as_str(), other.as_str())
        } else {
            (other.as_str(), caller.as_str())
        };
        let existing = self.pairs.get(pair)?.map(|id| id.value().to_owned());
        if let Some(chat) = existing.map(|id| self.chat(&id)).transpose()?.flatten() {
            return Ok(chat);
        }
        let members = vec![caller.clone(), other.clone()];
        assert!(
            members.len() <= CHAT_MEMBERS_MAX,
            "a chat has at most {CHAT_MEMBERS_MAX} members"
        );
        let chat = ChatRecord {
            id: new_id,
            members,
            created_ms: now_ms,
            last_seq: 0,
            last_message_ms: now_ms,
        };
        self.chats
            .insert(chat.id.as_str(), encode(&chat).as_slice())?;
        self.pairs.insert(pair, chat.id.as_str())?;
        for member in &chat.members {
            self.user_chats
                .insert((member.as_str(), chat.id.as_str()), ())?;
        }
        Ok(chat)
    }

    fn append(&mut self, new: NewMessage) -> Result<AppendOutcome, StoreError> {
        let Some(mut chat) = self.chat(&new.chat)?.filter(|c| c.has_member(&new.sender)) else {
            return Ok(AppendOutcome::NotMember);
        };
        // Read before anything is written: a corrupt record refuses this request alone.
        let systems = self.systems_through(&chat.id, chat.last_seq)?;
        let seq = chat.last_seq + 1;
        if let Some(cmid) = &new.client_msg_id {
            // One lookup instead of a get and then an insert: claim the clientMsgId for the new
            // seq, and put the original back if it was taken (a retry; rare).
            let key = (new.chat.as_str(), new.sender.as_str(), cmid.as_str());
            let taken = self.client_ids.insert(key, seq)?.map(|s| s.value());
            if let Some(original) = taken {
                self.client_ids.insert(key, original)?;
                return Ok(AppendOutcome::Duplicate(self.message(&new.chat, original)?));
            }
        }
        #[cfg(feature = "sim-faults")]
        let seq = if crate::faults::reuse_seq(&chat.id, chat.last_seq) {
            if let Some(cmid) = &new.client_msg_id {
                let key = (new.chat.as_str(), new.sender.as_str(), cmid.as_str());
                self.client_ids.insert(key, seq - 1)?;
            }
            seq - 1
        } else {
            seq
        };
        chat.last_seq = seq;
        // Keep createdAt non-decreasing along seq even if the requests' clocks interleave.
        chat.last_message_ms = chat.last_message_ms.max(new.now_ms);
        let message = MessageRecord {
            id: new.id,
            chat: new.chat,
            seq,
            sender: new.sender,
            text: new.text,
            client_msg_id: new.client_msg_id,
            created_ms: chat.last_message_ms,
        };
        let replaced = self
            .messages
            .insert(
                (message.chat.as_str(), message.seq),
                encode(&message).as_slice(),
            )?
            .is_some();
        #[cfg(feature = "sim-faults")]
        let replaced = replaced
            && !crate::faults::is_planted(crate::faults::PlantedFault::SeqReuseAfterRestart);
        assert!(
            !replaced,
            "chat {}: seq {} was taken; a new seq is always the chat's last seq + 1",
            message.chat, message.seq
        );
        self.chats
            .insert(chat.id.as_str(), encode(&chat).as_slice())?;
        // The sender has read their own message, and everything before it.
        let position = ReadRecord {
            last_read_seq: message.seq,
            counted: reads::counted_through(message.seq, systems),
        };
        self.move_read(&message.sender, &message.chat, position, false);
        self.effects.published.push(Committed::Message {
            message: message.clone(),
            system: None,
            members: Members::from(chat.members),
        });
        Ok(AppendOutcome::Appended(message))
    }

    fn group(&self, chat: &str) -> Result<Option<GroupRecord>, StoreError> {
        let found = self.groups.get(chat)?;
        found
            .map(|b| decode(b.value()).map_err(StoreError::corrupt("groups", chat)))
            .transpose()
    }

    /// The system messages of `chat` at or below `seq` (the running count of the last one).
    fn systems_through(&self, chat: &str, seq: u64) -> Result<u64, StoreError> {
        super::systems_through(&self.systems, chat, seq)
    }

    /// `user`'s read position in `chat`: this batch's, else the stored one.
    fn read_position(&self, user: &str, chat: &str) -> Result<ReadPosition, StoreError> {
        let key = (user.to_owned(), chat.to_owned());
        if let Some(pending) = self.effects.reads.get(&key) {
            return Ok(position_of(pending.record));
        }
        let found = self.reads.get((user, chat))?;
        let record: Option<ReadRecord> = found
            .map(|b| {
                decode(b.value()).map_err(StoreError::corrupt("reads", format!("({user}, {chat})")))
            })
            .transpose()?;
        Ok(record.map(position_of).unwrap_or_default())
    }

    /// Records a moved read position, written once per batch in `finish`.
    fn move_read(&mut self, user: &str, chat: &str, record: ReadRecord, announce: bool) {
        let key = (user.to_owned(), chat.to_owned());
        let announce = announce || self.effects.reads.get(&key).is_some_and(|p| p.announce);
        self.effects
            .reads
            .insert(key, PendingRead { record, announce });
    }

    fn mark_read(&mut self, user: &str, chat: &str, seq: u64) -> Result<ReadOutcome, StoreError> {
        let Some(record) = self.chat(chat)?.filter(|c| c.has_member(user)) else {
            return Ok(ReadOutcome::NotMember);
        };
        let current = self.read_position(user, chat)?;
        let Some(target) = reads::advance(current, seq, record.last_seq) else {
            return Ok(ReadOutcome::Read(current.seq));
        };
        let counted = reads::counted_through(target, self.systems_through(chat, target)?);
        let position = ReadRecord {
            last_read_seq: target,
            counted,
        };
        self.move_read(user, chat, position, true);
        Ok(ReadOutcome::Read(target))
    }

    fn create_group(&mut self, group: NewGroup) -> Result<GroupOutcome, StoreError> {
        let mut members = vec![group.owner.clone()];
        for id in group.others {
            if !members.contains(&id) {
                members.push(id);
            }
        }
        if members.len() > CHAT_MEMBERS_MAX {
            return Ok(Err(MembershipError::TooManyMembers));
        }
        for id in &members {
            if self.user(id)?.is_none() {
                return Ok(Err(MembershipError::UnknownUser));
            }
        }
        let chat = ChatRecord {
            id: group.id,
            members,
            created_ms: group.now_ms,
            last_seq: 0,
            last_message_ms: group.now_ms,
        };
        let record = GroupRecord { name: group.name };
        self.chats
            .insert(chat.id.as_str(), encode(&chat).as_slice())?;
        self.groups
            .insert(chat.id.as_str(), encode(&record).as_slice())?;
        let joined = encode(&MemberRecord {
            joined_ms: group.now_ms,
        });
        for member in &chat.members {
            self.group_members
                .insert((chat.id.as_str(), member.as_str()), joined.as_slice())?;
            self.user_chats
                .insert((member.as_str(), chat.id.as_str()), ())?;
        }
        let members = Members::from(chat.members.clone());
        self.effects
            .membership
            .push((chat.id.clone(), 0, Arc::clone(&members)));
        self.effects.published.push(Committed::ChatCreated {
            chat: chat.id.clone(),
            members,
        });
        Ok(Ok(GroupState {
            chat,
            name: record.name,
            system: Vec::new(),
        }))
    }

    /// A change to a group: everything it reads is read (and checked) before anything is
    /// written, so a refusal or a corrupt record leaves the batch untouched.
    fn change_group(&mut self, request: GroupChange) -> Result<GroupOutcome, StoreError> {
        let Some(chat) = self.chat(&request.chat)? else {
            return Ok(Err(MembershipError::NotMember));
        };
        let group = self.group(&chat.id)?;
        let is_group = group.is_some();
        let by = request.by.as_str();
        let events: Vec<SystemEvent> = match &request.change {
            Change::Add(wanted) => {
                let new = match membership::plan_add(&chat.members, is_group, by, wanted) {
                    Ok(new) => new,
                    Err(refused) => return Ok(Err(refused)),
                };
                for id in &new {
                    if self.user(id)?.is_none() {
                        return Ok(Err(MembershipError::UnknownUser));
                    }
                }
                new.into_iter()
                    .map(|user| SystemEvent {
                        kind: SystemKind::Added,
                        user,
                        by: by.to_owned(),
                    })
                    .collect()
            }
            Change::Remove(target) => {
                if let Err(refused) = membership::check_remove(&chat.members, is_group, by, target)
                {
                    return Ok(Err(refused));
                }
                let kind = if target == by {
                    SystemKind::Left
                } else {
                    SystemKind::Removed
                };
                vec![SystemEvent {
                    kind,
                    user: target.clone(),
                    by: by.to_owned(),
                }]
            }
            Change::Rename(_) => {
                if let Err(refused) = membership::check_rename(&chat.members, is_group, by) {
                    return Ok(Err(refused));
                }
                vec![SystemEvent {
                    kind: SystemKind::Renamed,
                    user: by.to_owned(),
                    by: by.to_owned(),
                }]
            }
        };
        let mut name = group.map(|g| g.name).unwrap_or_default();
        if let Change::Rename(new_name) = &request.change {
            name.clone_from(new_name);
        }
        let prepared = self.prepare_system_messages(&chat, &request, events, &name)?;
        self.write_change(chat, request, prepared, name)
    }

    /// Reads what the system messages of a change need: names for their texts, the running
    /// count of system messages, and the read positions of the users an add brings back.
    fn prepare_system_messages(
        &self,
        chat: &ChatRecord,
        request: &GroupChange,
        events: Vec<SystemEvent>,
        name: &str,
    ) -> Result<PreparedChange, StoreError> {
        let user_name = |tables: &Self, id: &str| -> Result<String, StoreError> {
            Ok(tables.user(id)?.map(|u| u.name).unwrap_or_default())
        };
        let by_name = user_name(self, &request.by)?;
        let mut prepared = PreparedChange {
            systems: self.systems_through(&chat.id, chat.last_seq)?,
            messages: Vec::with_capacity(events.len()),
        };
        for event in events {
            let text =
                membership::describe(event.kind, &user_name(self, &event.user)?, &by_name, name);
            let position = match event.kind {
                SystemKind::Added => Some(self.read_position(&event.user, &chat.id)?),
                _ => None,
            };
            prepared.messages.push((event, text, position));
        }
        Ok(prepared)
    }

    fn write_change(
        &mut self,
        mut chat: ChatRecord,
        request: GroupChange,
        prepared: PreparedChange,
        name: String,
    ) -> Result<GroupOutcome, StoreError> {
        let GroupChange {
            by,
            message_ids,
            now_ms,
            change,
            ..
        } = request;
        let mut message_ids = message_ids.into_iter();
        let mut systems = prepared.systems;
        let mut system = Vec::with_capacity(prepared.messages.len());
        let mut published = Vec::with_capacity(prepared.messages.len());
        for (event, text, position) in prepared.messages {
            let seq = chat.last_seq + 1;
            systems += 1;
            chat.last_seq = seq;
            chat.last_message_ms = chat.last_message_ms.max(now_ms);
            let message = MessageRecord {
                id: message_ids
                    .next()
                    .expect("the service gives an id for each system message a change may take"),
                chat: chat.id.clone(),
                seq,
                sender: by.clone(),
                text,
                client_msg_id: None,
                created_ms: chat.last_message_ms,
            };
            self.messages
                .insert((chat.id.as_str(), seq), encode(&message).as_slice())?;
            let record = SystemRecord {
                event: event.clone(),
                systems_through: systems,
            };
            self.systems
                .insert((chat.id.as_str(), seq), encode(&record).as_slice())?;
            self.apply_event(&mut chat, &event, now_ms)?;
            // A new member starts with nothing unread (an added-back member's position only
            // ever moves forward, and nothing lies above this seq yet).
            if let Some(current) = position
                && reads::advance(current, seq, seq).is_some()
            {
                let moved = ReadRecord {
                    last_read_seq: seq,
                    counted: reads::counted_through(seq, systems),
                };
                self.move_read(&event.user, &chat.id, moved, false);
            }
            published.push(Committed::Message {
                message: message.clone(),
                system: Some(event.clone()),
                members: Members::from(chat.members.clone()),
            });
            system.push((message, event));
        }
        if let Change::Rename(_) = change {
            self.groups.insert(
                chat.id.as_str(),
                encode(&GroupRecord { name: name.clone() }).as_slice(),
            )?;
        }
        if !system.is_empty() {
            self.chats
                .insert(chat.id.as_str(), encode(&chat).as_slice())?;
            self.effects.membership.push((
                chat.id.clone(),
                chat.last_seq,
                Members::from(chat.members.clone()),
            ));
        }
        self.effects.published.extend(published);
        Ok(Ok(GroupState { chat, name, system }))
    }

    /// Applies one add or removal to the member list and its indexes.
    fn apply_event(
        &mut self,
        chat: &mut ChatRecord,
        event: &SystemEvent,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let key = (chat.id.as_str(), event.user.as_str());
        match event.kind {
            SystemKind::Added => {
                chat.members.push(event.user.clone());
                let joined = encode(&MemberRecord { joined_ms: now_ms });
                self.group_members.insert(key, joined.as_slice())?;
                self.user_chats
                    .insert((event.user.as_str(), chat.id.as_str()), ())?;
            }
            SystemKind::Removed | SystemKind::Left => {
                chat.members.retain(|m| *m != event.user);
                self.group_members.remove(key)?;
                self.user_chats
                    .remove((event.user.as_str(), chat.id.as_str()))?;
            }
            SystemKind::Renamed => {}
        }
        Ok(())
    }
}

/// The system messages of one change, ready to write: each event with its text and, for an
/// add, the added user's read position before it.
struct PreparedChange {
    /// The chat's system messages before this change.
    systems: u64,
    messages: Vec<(SystemEvent, String, Option<ReadPosition>)>,
}

fn position_of(record: ReadRecord) -> ReadPosition {
    ReadPosition {
        seq: record.last_read_seq,
        counted: record.counted,
    }
}
