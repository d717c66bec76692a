//! The writer task: the one owner of write transactions, group-committing queued requests.
//!
//! Requests arrive on a bounded queue (senders wait when it is full: backpressure, not memory
//! growth). The task takes the first request, then whatever else is already queued up to
//! [`WRITE_BATCH_MAX`], applies them in order in one transaction, commits once, and only then
//! answers each. One fsync thus serves a whole batch, and an answer always means "committed".
//! If anything in the batch fails at the storage level, nothing in it was committed and every
//! request in it is answered with the error. A record that does not decode fails only the
//! request that read it (before that request wrote anything); the rest of the batch commits.
//! After the commit, the messages it appended are published on the commit feed, in order.

use std::sync::Arc;

use redb::{Database, ReadableTable, Table, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::feed::CommitFeed;
use super::records::{ChatRecord, DecodeError, MessageRecord, UserRecord, decode, encode};
use super::tables::*;
use super::{Durability, StoreError};
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
}

/// A request applied inside the open transaction, waiting for the commit to be answered.
enum Applied {
    User(Reply<CreateUserOutcome>, CreateUserOutcome),
    Chat(Reply<ChatRecord>, ChatRecord),
    Message(Reply<AppendOutcome>, AppendOutcome),
    Meta(Reply<Vec<u8>>, Vec<u8>),
    Revoked(Reply<u64>, u64),
    Account(Reply<Option<UserRecord>>, Option<UserRecord>),
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
        };
    }
}

impl Applied {
    /// The message this request appended, to publish once committed.
    fn appended(&self) -> Option<&MessageRecord> {
        match self {
            Applied::Message(_, AppendOutcome::Appended(message)) => Some(message),
            _ => None,
        }
    }

    fn answer(self, result: Result<(), StoreError>) {
        let _ = match self {
            Applied::User(reply, value) => reply.send(result.map(|()| value)).is_ok(),
            Applied::Chat(reply, value) => reply.send(result.map(|()| value)).is_ok(),
            Applied::Message(reply, value) => reply.send(result.map(|()| value)).is_ok(),
            Applied::Meta(reply, value) => reply.send(result.map(|()| value)).is_ok(),
            Applied::Revoked(reply, value) => reply.send(result.map(|()| value)).is_ok(),
            Applied::Account(reply, value) => reply.send(result.map(|()| value)).is_ok(),
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
}

pub(super) fn channel(db: Arc<Database>, durability: Durability) -> (StoreWriter, WriterTask) {
    let (tx, rx) = mpsc::channel(WRITE_QUEUE_MAX);
    (
        StoreWriter { requests: tx },
        WriterTask {
            db,
            requests: rx,
            durability,
            feed: None,
            metrics: Metrics::disabled(),
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

    async fn publish(&self, committed: Vec<MessageRecord>) {
        if let Some(feed) = &self.feed {
            for message in committed {
                feed.publish(message).await;
            }
        }
    }

    /// Applies and commits one batch, answers every request in it, and returns the messages it
    /// appended, in order.
    fn commit_batch(&self, batch: Vec<Request>) -> Result<Vec<MessageRecord>, StoreError> {
        let taken = batch.len();
        let started = std::time::Instant::now();
        let mut applied = Vec::with_capacity(taken);
        // Requests answered before the commit: refused on their own (see `settle`).
        let mut answered_early = 0;
        let mut pending = batch.into_iter();
        let outcome = self.begin().and_then(|tx| {
            {
                let mut tables = Tables::open(&tx)?;
                for request in pending.by_ref() {
                    match tables.apply(request)? {
                        Some(done) => applied.push(done),
                        None => answered_early += 1,
                    }
                }
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
                let committed: Vec<MessageRecord> = applied
                    .iter()
                    .filter_map(Applied::appended)
                    .cloned()
                    .collect();
                self.metrics.committed(taken, started, committed.len());
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
        })
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
        Ok(AppendOutcome::Appended(message))
    }
}
