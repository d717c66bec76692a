//! The use cases: register, log in, list and open chats, read history, send, sync, presence.
//!
//! The service owns no protocol details: it takes plain values, applies the domain rules, reads
//! and writes storage, and returns views or refusals. The transport turns those into HTTP answers,
//! acks and emits. Fan-out is the transport's job too, but the service tells it who to reach.

pub mod auth;
pub mod members;
pub mod views;

use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::clock::Clock;
use crate::config::Config;
use crate::domain::ids::{IdMinter, is_valid_id};
use crate::domain::page::{Anchor, clamp_limit, has_more_after, seq_range};
use crate::domain::presence::Presence;
use crate::domain::rate::{BucketShape, FailureThrottle, KeyedLimiter};
use crate::domain::validate::{self, FieldError, Refusal};
use crate::limits::*;
use crate::storage::writer::CreateUserOutcome;
use crate::storage::{
    AppendOutcome, ChatRecord, MessageRecord, NewMessage, NewUser, Store, StoreError, StoreWriter,
    UserRecord,
};
use auth::{ExternalClaims, Identity, Tokens};
use members::{Members, MembersCache};
use views::{ChatView, MessageView, PublicUser, UserView};

/// A failed REST request; the transport maps each to a status and a `{ message }` body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("Unauthorized")]
    Unauthorized,
    #[error("Invalid credentials")]
    InvalidCredentials,
    #[error("Too many attempts, try again later")]
    TooManyAttempts,
    #[error("Email already registered")]
    EmailTaken,
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Refused(Refusal),
    #[error("Internal server error")]
    Internal,
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        ApiError::Refused(r)
    }
}

/// Why a token did not authenticate a socket or request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("Unauthorized")]
    Unauthorized,
    #[error("User not found!")]
    UserNotFound,
}

fn internal(error: impl std::fmt::Display) -> ApiError {
    tracing::error!(%error, "storage failure");
    ApiError::Internal
}

/// A message that was accepted by `send`: the view to ack and, if it was new, to fan out.
#[derive(Debug, Clone)]
pub struct Sent {
    pub message: MessageView,
    /// False when the send was an idempotent retry: nothing new to fan out.
    pub created: bool,
    pub members: Members,
}

/// Settings the service applies, taken from `Config`.
#[derive(Debug, Clone)]
pub struct Policy {
    pub max_text_chars: usize,
    pub send: BucketShape,
}

impl From<&Config> for Policy {
    fn from(config: &Config) -> Self {
        Self {
            max_text_chars: config.max_text_chars,
            send: BucketShape {
                per_sec: config.send_rate_per_sec,
                burst: config.send_burst,
            },
        }
    }
}

pub struct App {
    pub store: Store,
    writer: StoreWriter,
    clock: Arc<dyn Clock>,
    ids: Mutex<IdMinter>,
    pub tokens: Tokens,
    policy: Policy,
    /// Held across the presence broadcast (a tokio mutex, so it may be held over `.await`), so
    /// that transitions reach every observer in the order they happened.
    pub presence: tokio::sync::Mutex<Presence>,
    send_limiter: Mutex<KeyedLimiter>,
    members: MembersCache,
    login_throttle: Mutex<FailureThrottle>,
    /// Bounds concurrent argon2 runs (memory and CPU).
    hashing: Semaphore,
    /// Verified against when a login names an unknown email, so that the answer takes as long as
    /// for a known one and does not reveal which emails exist.
    decoy_hash: String,
}

impl App {
    pub fn new(
        store: Store,
        writer: StoreWriter,
        clock: Arc<dyn Clock>,
        mut ids: IdMinter,
        tokens: Tokens,
        policy: Policy,
    ) -> Self {
        let decoy_hash = auth::hash_password("decoy password", &ids.bytes());
        Self {
            store,
            writer,
            clock,
            ids: Mutex::new(ids),
            tokens,
            send_limiter: Mutex::new(KeyedLimiter::new(policy.send, SEND_BUCKETS_MAX)),
            members: MembersCache::new(MEMBERSHIP_CACHED_CHATS_MAX),
            policy,
            presence: tokio::sync::Mutex::new(Presence::default()),
            login_throttle: Mutex::new(FailureThrottle::new(
                LOGIN_FAILURES_MAX,
                LOGIN_WINDOW_MS,
                LOGIN_TRACKED_EMAILS_MAX,
            )),
            hashing: Semaphore::new(PASSWORD_HASHES_CONCURRENT),
            decoy_hash,
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn mint_id(&self) -> String {
        let now = self.now_ms();
        self.ids.lock().expect("id minter never poisoned").mint(now)
    }

    /// Runs CPU-heavy work (argon2) off the async workers on a multi-threaded runtime; inline on
    /// a current-thread runtime (the simulation), where `spawn_blocking` would stall its clock.
    async fn cpu<R: Send + 'static>(&self, work: impl FnOnce() -> R + Send + 'static) -> R {
        let _permit = self
            .hashing
            .acquire()
            .await
            .expect("semaphore never closed");
        match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => work(),
            _ => tokio::task::spawn_blocking(work)
                .await
                .expect("password hashing does not panic"),
        }
    }

    // ---- accounts ----

    pub async fn register(
        &self,
        name: &str,
        email: &str,
        password: &str,
    ) -> Result<(String, UserView), ApiError> {
        let name = validate::name(name)?;
        let email = validate::email(email)?;
        validate::password(password)?;
        if self
            .store
            .user_id_by_email(&email)
            .map_err(internal)?
            .is_some()
        {
            return Err(ApiError::EmailTaken);
        }
        let salt: [u8; 16] = self.ids.lock().expect("never poisoned").bytes();
        let password = password.to_owned();
        let hash = self
            .cpu(move || auth::hash_password(&password, &salt))
            .await;
        let now = self.now_ms();
        let new = NewUser {
            id: self.mint_id(),
            name,
            email,
            avatar: String::new(),
            password_hash: Some(hash),
            external_id: None,
            now_ms: now,
        };
        match self.writer.create_user(new).await.map_err(internal)? {
            CreateUserOutcome::Created(user) => {
                Ok((self.tokens.issue(&user.id, now), UserView::from(&user)))
            }
            CreateUserOutcome::EmailTaken | CreateUserOutcome::ExistingExternal(_) => {
                Err(ApiError::EmailTaken)
            }
        }
    }

    pub async fn login(&self, email: &str, password: &str) -> Result<(String, UserView), ApiError> {
        let key = email.trim().to_lowercase();
        let now = self.now_ms();
        if self
            .login_throttle
            .lock()
            .expect("never poisoned")
            .is_blocked(&key, now)
        {
            return Err(ApiError::TooManyAttempts);
        }
        let user = match self.store.user_id_by_email(&key).map_err(internal)? {
            Some(id) => self.store.user(&id).map_err(internal)?,
            None => None,
        };
        let phc = user
            .as_ref()
            .and_then(|u| u.password_hash.clone())
            .unwrap_or_else(|| self.decoy_hash.clone());
        let attempt = password
            .chars()
            .take(PASSWORD_CHARS_MAX + 1)
            .collect::<String>();
        let matches = self
            .cpu(move || auth::verify_password(&attempt, &phc))
            .await;
        match user {
            Some(user) if matches && user.password_hash.is_some() => {
                Ok((self.tokens.issue(&user.id, now), UserView::from(&user)))
            }
            _ => {
                self.login_throttle
                    .lock()
                    .expect("never poisoned")
                    .record_failure(&key, now);
                Err(ApiError::InvalidCredentials)
            }
        }
    }

    /// The user a token speaks for.
    pub async fn authenticate(&self, token: &str) -> Result<UserRecord, AuthFailure> {
        let identity = self
            .tokens
            .verify(token, self.now_ms())
            .await
            .ok_or(AuthFailure::Unauthorized)?;
        let id = match identity {
            Identity::Local(id) => Some(id),
            Identity::External(claims) => {
                self.store.user_id_by_external(&claims.sub).map_err(|e| {
                    tracing::error!(error = %e, "storage failure");
                    AuthFailure::Unauthorized
                })?
            }
        };
        let user = match id {
            Some(id) if is_valid_id(&id) => self.store.user(&id).map_err(|e| {
                tracing::error!(error = %e, "storage failure");
                AuthFailure::Unauthorized
            })?,
            _ => None,
        };
        user.ok_or(AuthFailure::UserNotFound)
    }

    /// `POST /api/auth/callback`: the external provider's user, created on first call.
    pub async fn external_callback(&self, token: &str) -> Result<UserView, ApiError> {
        let Some(Identity::External(claims)) = self.tokens.verify(token, self.now_ms()).await
        else {
            return Err(ApiError::Unauthorized);
        };
        if let Some(id) = self
            .store
            .user_id_by_external(&claims.sub)
            .map_err(internal)?
            && let Some(user) = self.store.user(&id).map_err(internal)?
        {
            return Ok(UserView::from(&user));
        }
        let new = self.new_external_user(&claims)?;
        match self.writer.create_user(new).await.map_err(internal)? {
            CreateUserOutcome::Created(user) | CreateUserOutcome::ExistingExternal(user) => {
                Ok(UserView::from(&user))
            }
            CreateUserOutcome::EmailTaken => Err(ApiError::EmailTaken),
        }
    }

    fn new_external_user(&self, claims: &ExternalClaims) -> Result<NewUser, ApiError> {
        if claims.sub.chars().count() > 255 {
            return Err(ApiError::BadRequest("Token subject too long".into()));
        }
        let email = match &claims.email {
            Some(email) => validate::email(email)?,
            None => validate::email(&format!("{}@external.invalid", claims.sub.to_lowercase()))
                .map_err(|_| ApiError::BadRequest("Token has no usable email".into()))?,
        };
        let full_name = [&claims.given_name, &claims.family_name]
            .into_iter()
            .flatten()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let local_part = email.split('@').next().unwrap_or_default().to_owned();
        let raw_name = claims
            .name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .or(Some(full_name).filter(|n| !n.is_empty()))
            .unwrap_or(local_part);
        let name = validate::name(&raw_name.chars().take(NAME_CHARS_MAX).collect::<String>())?;
        let avatar = claims
            .picture
            .clone()
            .filter(|p| p.len() <= AVATAR_CHARS_MAX)
            .unwrap_or_default();
        Ok(NewUser {
            id: self.mint_id(),
            name,
            email,
            avatar,
            password_hash: None,
            external_id: Some(claims.sub.clone()),
            now_ms: self.now_ms(),
        })
    }

    pub fn search_users(
        &self,
        caller: &str,
        query: Option<&str>,
        limit: Option<u64>,
    ) -> Result<Vec<PublicUser>, ApiError> {
        let limit = clamp_limit(limit, USERS_PAGE_DEFAULT, USERS_PAGE_MAX) as usize;
        let query = query
            .map(str::trim)
            .filter(|q| !q.is_empty())
            .map(str::to_lowercase);
        let users = self
            .store
            .search_users(caller, query.as_deref(), limit)
            .map_err(internal)?;
        Ok(users.iter().map(PublicUser::from).collect())
    }

    // ---- chats ----

    fn public_user(&self, id: &str) -> Result<PublicUser, StoreError> {
        let user = self.store.user(id)?;
        Ok(user
            .as_ref()
            .map_or_else(|| PublicUser::unknown(id), PublicUser::from))
    }

    fn public_users(&self, ids: &[String]) -> Result<Vec<PublicUser>, StoreError> {
        ids.iter().map(|id| self.public_user(id)).collect()
    }

    fn chat_view(&self, chat: &ChatRecord, viewer: &str) -> Result<ChatView, StoreError> {
        let members = self.public_users(&chat.members)?;
        let last = match chat.last_seq {
            0 => None,
            seq => self.store.messages(&chat.id, seq..seq + 1)?.pop(),
        };
        let last = last.map(|m| {
            let sender = members
                .iter()
                .find(|u| u.id == m.sender)
                .cloned()
                .unwrap_or_else(|| PublicUser::unknown(&m.sender));
            MessageView::new(m, sender)
        });
        Ok(ChatView::new(chat, viewer, members, last))
    }

    /// The caller's chats, newest `lastMessageAt` first.
    pub fn chats_of(&self, caller: &str) -> Result<Vec<ChatView>, ApiError> {
        let mut chats = self
            .store
            .chats_of(caller, CHATS_LIST_MAX)
            .map_err(internal)?;
        chats.sort_by(|a, b| {
            b.last_message_ms
                .cmp(&a.last_message_ms)
                .then_with(|| b.id.cmp(&a.id))
        });
        chats
            .iter()
            .map(|chat| self.chat_view(chat, caller).map_err(internal))
            .collect()
    }

    pub async fn open_chat_with(&self, caller: &str, other: &str) -> Result<ChatView, ApiError> {
        if other == caller {
            return Err(ApiError::BadRequest("You cannot chat with yourself".into()));
        }
        if !is_valid_id(other) || self.store.user(other).map_err(internal)?.is_none() {
            return Err(ApiError::NotFound("User not found"));
        }
        let chat = self
            .writer
            .get_or_create_chat(
                self.mint_id(),
                caller.to_owned(),
                other.to_owned(),
                self.now_ms(),
            )
            .await
            .map_err(internal)?;
        self.chat_view(&chat, caller).map_err(internal)
    }

    /// The chat, if `user` is one of its members; the same refusal whether it does not exist or
    /// the user is an outsider, so outsiders learn nothing.
    pub fn member_chat(&self, user: &str, chat_id: &str) -> Result<ChatRecord, Refusal> {
        if !is_valid_id(chat_id) {
            return Err(Refusal::ChatNotFound);
        }
        match self.store.chat(chat_id) {
            Ok(Some(chat)) if chat.has_member(user) => Ok(chat),
            Ok(_) => Err(Refusal::ChatNotFound),
            Err(error) => {
                tracing::error!(%error, "storage failure");
                Err(Refusal::ChatNotFound)
            }
        }
    }

    /// The members of the chat, if `user` is one of them (refused as [`member_chat`] refuses),
    /// from memory when the chat was seen before. A storage failure is logged and answered
    /// with `on_storage_failure`.
    ///
    /// [`member_chat`]: Self::member_chat
    pub fn chat_members(
        &self,
        user: &str,
        chat_id: &str,
        on_storage_failure: Refusal,
    ) -> Result<Members, Refusal> {
        if !is_valid_id(chat_id) {
            return Err(Refusal::ChatNotFound);
        }
        let members = match self.members.get(chat_id) {
            Some(members) => members,
            None => match self.store.chat(chat_id) {
                Ok(Some(chat)) => {
                    let members: Members = chat.members.into();
                    self.members.insert(chat_id, Arc::clone(&members));
                    members
                }
                Ok(None) => return Err(Refusal::ChatNotFound),
                Err(error) => {
                    tracing::error!(%error, "storage failure");
                    return Err(on_storage_failure);
                }
            },
        };
        if members.iter().any(|m| m == user) {
            Ok(members)
        } else {
            Err(Refusal::ChatNotFound)
        }
    }

    // ---- messages ----

    /// Views of `records`, all of `chat`. Senders are members, whose public profiles are read
    /// once per page rather than once per message.
    fn message_views(
        &self,
        chat: &ChatRecord,
        records: Vec<MessageRecord>,
    ) -> Result<Vec<MessageView>, StoreError> {
        let members = self.public_users(&chat.members)?;
        records
            .into_iter()
            .map(|m| {
                let sender = match members.iter().find(|u| u.id == m.sender) {
                    Some(member) => member.clone(),
                    None => self.public_user(&m.sender)?,
                };
                Ok(MessageView::new(m, sender))
            })
            .collect()
    }

    /// A history page, ascending by seq.
    pub fn history(
        &self,
        caller: &str,
        chat_id: &str,
        anchor: Anchor,
        limit: Option<u64>,
    ) -> Result<Vec<MessageView>, ApiError> {
        let chat = self
            .member_chat(caller, chat_id)
            .map_err(|_| ApiError::NotFound("Chat not found"))?;
        let limit = clamp_limit(limit, PAGE_DEFAULT, PAGE_MAX);
        let records = self
            .store
            .messages(&chat.id, seq_range(anchor, limit, chat.last_seq))
            .map_err(internal)?;
        self.message_views(&chat, records).map_err(internal)
    }

    /// `sync`: the messages above `after_seq`, and whether there are more.
    pub fn sync(
        &self,
        caller: &str,
        chat_id: &str,
        after_seq: u64,
        limit: Option<u64>,
    ) -> Result<(Vec<MessageView>, bool), Refusal> {
        let chat = self.member_chat(caller, chat_id)?;
        let limit = clamp_limit(limit, PAGE_DEFAULT, PAGE_MAX);
        let range = seq_range(Anchor::After(after_seq), limit, chat.last_seq);
        let has_more = has_more_after(&range, chat.last_seq);
        let fail = |error: StoreError| {
            tracing::error!(%error, "storage failure");
            Refusal::SendFailed
        };
        let records = self.store.messages(&chat.id, range).map_err(fail)?;
        Ok((self.message_views(&chat, records).map_err(fail)?, has_more))
    }

    /// Validates, deduplicates, rate-limits and durably appends a message.
    pub async fn send(
        &self,
        sender: &UserRecord,
        chat_id: &str,
        text: &str,
        client_msg_id: Option<&str>,
    ) -> Result<Sent, Refusal> {
        let client_msg_id = validate::client_msg_id(client_msg_id)?;
        let members = self.chat_members(&sender.id, chat_id, Refusal::SendFailed)?;
        let text = validate::text(text, self.policy.max_text_chars)?;
        let storage_failed = |error: &dyn std::fmt::Display| {
            tracing::error!(%error, "send failed in storage");
            Refusal::SendFailed
        };
        let now = self.now_ms();
        let limiter = || self.send_limiter.lock().expect("never poisoned");
        if !limiter().try_take(&sender.id, now) {
            // A retry of a committed send answers with the original and is not rate limited.
            // Only refused sends look for one here; the writer finds the others (below).
            let Some(cmid) = &client_msg_id else {
                return Err(Refusal::RateLimited);
            };
            let original = self
                .store
                .message_by_client_id(chat_id, &sender.id, cmid)
                .map_err(|e| storage_failed(&e))?
                .ok_or(Refusal::RateLimited)?;
            return self
                .sent(&members, original, false, sender)
                .map_err(|e| storage_failed(&e));
        }
        let new = NewMessage {
            id: self.mint_id(),
            chat: chat_id.to_owned(),
            sender: sender.id.clone(),
            text,
            client_msg_id,
            now_ms: now,
        };
        match self
            .writer
            .append_message(new)
            .await
            .map_err(|e| storage_failed(&e))?
        {
            AppendOutcome::Appended(message) => self
                .sent(&members, message, true, sender)
                .map_err(|e| storage_failed(&e)),
            AppendOutcome::Duplicate(message) => {
                limiter().give_back(&sender.id);
                self.sent(&members, message, false, sender)
                    .map_err(|e| storage_failed(&e))
            }
            AppendOutcome::NotMember => Err(Refusal::ChatNotFound),
        }
    }

    fn sent(
        &self,
        members: &Members,
        message: MessageRecord,
        created: bool,
        sender: &UserRecord,
    ) -> Result<Sent, StoreError> {
        let sender_view = if message.sender == sender.id {
            PublicUser::from(sender)
        } else {
            self.public_user(&message.sender)?
        };
        Ok(Sent {
            message: MessageView::new(message, sender_view),
            created,
            members: Arc::clone(members),
        })
    }
}
