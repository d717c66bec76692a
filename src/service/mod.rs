//! The use cases: accounts, chats, messages, group membership, read state and presence, each
//! in a file of its own.
//!
//! The service owns no protocol details: it takes plain values (commands), applies the domain
//! rules, reads and writes storage, and returns plain data or refusals. The transport decodes
//! client input into commands and turns the answers into HTTP bodies, acks and emits. A storage
//! failure is logged once, here, and answered as what it is: "Storage unavailable" on REST, the
//! event's own failure message on a socket, never "not found".

mod accounts;
pub mod admin;
pub mod auth;
pub mod cache;
mod chats;
mod members;
mod messages;
mod presence;
mod reads;
pub mod views;

use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::clock::Clock;
use crate::config::Config;
use crate::domain::address::{AddressWindows, LoginBounds, LoginThrottle};
use crate::domain::ids::IdMinter;
use crate::domain::rate::{BucketShape, KeyedLimiter};
use crate::domain::validate::{FieldError, MessageError};
use crate::limits::*;
use crate::metrics::Metrics;
use crate::storage::{Store, StoreError, StoreWriter};
use auth::Tokens;
use cache::ClearingCache;
use views::PublicUser;

pub use crate::domain::presence::PresenceScope;
pub use messages::{Delivery, FiledSend, SendMessage, Sent};
pub use presence::{Announcement, Audience, PresenceDesk, PresenceRules, Transition};
pub use reads::FiledRead;

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
    #[error("Too many registrations from this address, try again later")]
    TooManyRegistrations,
    #[error("Email already registered")]
    EmailTaken,
    /// `--registration closed`: accounts come from `palaver user add` (or the external provider).
    #[error("Registration is closed")]
    RegistrationClosed,
    /// The operator disabled the account (`palaver user disable`).
    #[error("Account disabled")]
    AccountDisabled,
    #[error("{0}")]
    NotFound(&'static str),
    /// The caller may not do that (a group change only its owner may make).
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    Refused(Refusal),
    /// Storage failed (I/O or a corrupt record); the request may succeed later.
    #[error("Storage unavailable")]
    Unavailable,
    /// Every password-hashing slot is taken and the queue for them is full, or the wait for one
    /// ran out.
    #[error("Server busy")]
    Busy,
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Unavailable => ApiError::Unavailable,
            other => ApiError::Refused(other),
        }
    }
}

/// Why a socket event (or the REST message routes) was refused. The `Display` text is the exact
/// refusal message of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("Chat not found")]
    ChatNotFound,
    #[error("Invalid payload")]
    InvalidPayload,
    #[error("Message is empty")]
    MessageEmpty,
    #[error("Message too long")]
    MessageTooLong,
    #[error("Rate limited")]
    RateLimited,
    /// A send that storage could not complete.
    #[error("Failed to send message")]
    SendFailed,
    /// A read (join, sync) that storage could not complete.
    #[error("Storage unavailable")]
    Unavailable,
    /// The socket has more events waiting to be handled than it may queue.
    #[error("Server busy")]
    Busy,
    /// The user reads (`sync`, history) faster than `READS_PER_SEC`.
    #[error("Too many requests")]
    TooManyRequests,
}

impl From<MessageError> for Refusal {
    fn from(e: MessageError) -> Self {
        match e {
            MessageError::Empty => Refusal::MessageEmpty,
            MessageError::TooLong => Refusal::MessageTooLong,
            MessageError::ClientMsgIdTooLong => Refusal::InvalidPayload,
        }
    }
}

/// Why a token did not authenticate a socket or request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("Unauthorized")]
    Unauthorized,
    #[error("User not found!")]
    UserNotFound,
    #[error("Storage unavailable")]
    Unavailable,
    /// The user has `max_sockets_per_user` sockets open already.
    #[error("Too many connections")]
    TooManySockets,
}

/// Logs a storage failure (its table and key when a record is corrupt) and answers `answer`:
/// the one place where storage errors become what a client is told.
pub(crate) fn storage_failed<E>(answer: E) -> impl FnOnce(StoreError) -> E {
    move |error| {
        tracing::error!(%error, "storage failure");
        answer
    }
}

/// Settings the service applies, taken from `Config`.
#[derive(Debug, Clone)]
pub struct Policy {
    pub max_text_chars: usize,
    pub send: BucketShape,
    pub presence: PresenceRules,
    /// Registrations per client address per `REGISTRATION_WINDOW_MS`.
    pub registrations_per_address: u32,
    pub max_sockets_per_user: u32,
    /// Whether `register` creates accounts (`--registration open`).
    pub registration_open: bool,
}

impl From<&Config> for Policy {
    fn from(config: &Config) -> Self {
        Self {
            max_text_chars: config.max_text_chars,
            send: BucketShape {
                per_sec: config.send_rate_per_sec,
                burst: config.send_burst,
            },
            presence: PresenceRules {
                grace: config.presence_grace,
                tick: config.presence_tick,
                scope: config.presence_scope,
            },
            registrations_per_address: config.registrations_per_address,
            max_sockets_per_user: config.max_sockets_per_user,
            registration_open: config.registration_open,
        }
    }
}

pub struct App {
    store: Store,
    writer: StoreWriter,
    clock: Arc<dyn Clock>,
    ids: Mutex<IdMinter>,
    tokens: Tokens,
    policy: Policy,
    /// Held across the presence broadcast (a tokio mutex, so it may be held over `.await`), so
    /// that transitions reach every observer in the order they happened.
    presence: tokio::sync::Mutex<presence::PresenceBook>,
    send_limiter: Mutex<KeyedLimiter>,
    /// `GET /api/users` per caller: each search may scan the whole users table.
    search_limiter: Mutex<KeyedLimiter>,
    /// `sync` and history reads per user.
    read_limiter: Mutex<KeyedLimiter>,
    /// `typing` `true`s shown per user, over all of their sockets.
    typing_limiter: Mutex<KeyedLimiter>,
    profiles: ClearingCache<PublicUser>,
    login_throttle: Mutex<LoginThrottle>,
    registrations: Mutex<AddressWindows>,
    /// Bounds concurrent argon2 runs (memory and CPU).
    hashing: Semaphore,
    /// Bounds the requests running or waiting for `hashing`.
    hashing_queue: Semaphore,
    /// Verified against when a login names an unknown email, so that the answer takes as long as
    /// for a known one and does not reveal which emails exist.
    decoy_hash: String,
    metrics: Metrics,
}

impl App {
    pub fn new(
        store: Store,
        writer: StoreWriter,
        clock: Arc<dyn Clock>,
        mut ids: IdMinter,
        tokens: Tokens,
        policy: Policy,
        metrics: Metrics,
    ) -> Self {
        let decoy_hash = auth::hash_password("decoy password", &ids.bytes());
        let grace_ms = u64::try_from(policy.presence.grace.as_millis()).unwrap_or(u64::MAX);
        let registrations = AddressWindows::new(
            policy.registrations_per_address,
            REGISTRATION_WINDOW_MS,
            REGISTRATION_TRACKED_ADDRESSES_MAX,
        );
        Self {
            store,
            writer,
            clock,
            ids: Mutex::new(ids),
            tokens,
            send_limiter: Mutex::new(KeyedLimiter::new(policy.send, SEND_BUCKETS_MAX)),
            search_limiter: Mutex::new(KeyedLimiter::new(
                BucketShape {
                    per_sec: USER_SEARCHES_PER_SEC,
                    burst: USER_SEARCH_BURST,
                },
                SEND_BUCKETS_MAX,
            )),
            read_limiter: Mutex::new(KeyedLimiter::new(
                BucketShape {
                    per_sec: READS_PER_SEC,
                    burst: READS_BURST,
                },
                SEND_BUCKETS_MAX,
            )),
            typing_limiter: Mutex::new(KeyedLimiter::new(
                BucketShape {
                    per_sec: TYPING_PER_USER_PER_SEC,
                    burst: TYPING_PER_USER_PER_SEC,
                },
                SEND_BUCKETS_MAX,
            )),
            profiles: ClearingCache::new(PROFILES_CACHED_MAX),
            policy,
            presence: tokio::sync::Mutex::new(presence::PresenceBook::new(grace_ms)),
            login_throttle: Mutex::new(LoginThrottle::new(LoginBounds {
                failures_per_account: LOGIN_FAILURES_MAX,
                failures_per_address: LOGIN_ADDRESS_FAILURES_MAX,
                window_ms: LOGIN_WINDOW_MS,
                tracked_keys: LOGIN_TRACKED_KEYS_MAX,
            })),
            registrations: Mutex::new(registrations),
            hashing: Semaphore::new(PASSWORD_HASHES_CONCURRENT),
            hashing_queue: Semaphore::new(PASSWORD_HASHES_CONCURRENT + PASSWORD_HASH_WAITERS_MAX),
            decoy_hash,
            metrics,
        }
    }

    /// The server's metric handles (no-ops without a metrics listener).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The token issuer and verifier (tests and tools issue tokens for existing users).
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// Takes one of `user`'s tokens for showing a `typing` `true`.
    pub fn take_typing(&self, user: &str) -> bool {
        let now = self.now_ms();
        let mut limiter = self.typing_limiter.lock().expect("never poisoned");
        limiter.try_take(user, now)
    }

    fn mint_id(&self) -> String {
        let now = self.now_ms();
        self.ids.lock().expect("id minter never poisoned").mint(now)
    }

    /// Runs CPU-heavy work (argon2) off the async workers on a multi-threaded runtime; inline on
    /// a current-thread runtime (the simulation), where `spawn_blocking` would stall its clock.
    /// `Busy` when the queue for a hashing slot is full or the wait for one runs out.
    async fn cpu<R: Send + 'static>(
        &self,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, ApiError> {
        let _queued = self
            .hashing_queue
            .try_acquire()
            .map_err(|_| ApiError::Busy)?;
        let _permit = tokio::time::timeout(PASSWORD_HASH_WAIT, self.hashing.acquire())
            .await
            .map_err(|_| ApiError::Busy)?
            .expect("semaphore never closed");
        Ok(match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => work(),
            _ => tokio::task::spawn_blocking(work)
                .await
                .expect("password hashing does not panic"),
        })
    }
}
