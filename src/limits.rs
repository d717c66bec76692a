//! Every bound palaver enforces, in one place.
//!
//! A queue, map, page or payload without a limit is a bug waiting for a hostile client, so each
//! one is named here with the reason for its size. Defaults that operators may change (send rate,
//! text length) live in `config.rs`; these are the fixed ceilings behind them.

/// Longest id we accept from a client (`[0-9A-Za-z_-]`, URL-safe). Ours are 24 characters.
pub const ID_CHARS_MAX: usize = 32;
/// `name`: 1–64 characters after trimming.
pub const NAME_CHARS_MAX: usize = 64;
/// RFC 5321 limit on a forward path.
pub const EMAIL_CHARS_MAX: usize = 254;
pub const PASSWORD_CHARS_MIN: usize = 8;
/// Bounds the argon2 input and so the cost of a hostile login.
pub const PASSWORD_CHARS_MAX: usize = 128;
/// Default and hard ceiling for `PALAVER_MAX_TEXT_CHARS` (Unicode scalar values).
pub const TEXT_CHARS_DEFAULT: usize = 4000;
pub const TEXT_CHARS_CEILING: usize = 10_000;
pub const CLIENT_MSG_ID_CHARS_MAX: usize = 64;
/// Avatar URLs from an external provider are cut to this length.
pub const AVATAR_CHARS_MAX: usize = 2048;

/// REST request bodies and single Socket.IO / WebSocket messages.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// Packets queued towards one socket; beyond it socketioxide refuses further emits to that
/// socket (the client recovers missed messages with `sync`, its seqs show the gap). A burst of
/// group-committed messages to a user with many tabs must fit; the queue is allocated as it
/// fills, so idle sockets do not pay for the bound.
pub const SOCKET_BUFFER_MAX: usize = 1024;
/// Bytes a WebSocket reads from its connection at a time; a longer message takes more reads.
/// Every connection holds a buffer of this size for its lifetime, idle or not: 1 KiB holds a
/// typical chat event whole and saves 3 KiB per connection over socketioxide's 4 KiB default.
pub const WS_READ_BUFFER_BYTES: usize = 1024;

/// History pages (`limit` query) and `sync`.
pub const PAGE_DEFAULT: u32 = 100;
pub const PAGE_MAX: u32 = 500;
/// `GET /api/users`.
pub const USERS_PAGE_DEFAULT: u32 = 50;
pub const USERS_PAGE_MAX: u32 = 200;
/// A user's chat list is read whole; this caps the work of one `GET /api/chats`.
pub const CHATS_LIST_MAX: usize = 10_000;

/// Write requests waiting for the writer task; senders wait (backpressure) when it is full.
pub const WRITE_QUEUE_MAX: usize = 4096;
/// Write requests committed in one redb transaction (one fsync).
pub const WRITE_BATCH_MAX: usize = 512;

/// Failed logins per email within `LOGIN_WINDOW_MS` before answering 429.
pub const LOGIN_FAILURES_MAX: usize = 10;
pub const LOGIN_WINDOW_MS: u64 = 60_000;
/// Emails tracked by the login throttle; the oldest windows are dropped past this.
pub const LOGIN_TRACKED_EMAILS_MAX: usize = 100_000;
/// `typing` events per socket per second.
pub const TYPING_PER_SEC: usize = 5;
/// Users whose send bucket is remembered; idle buckets are full and can be forgotten.
pub const SEND_BUCKETS_MAX: usize = 1_000_000;
/// Chats whose members are kept in memory for the membership check of sends and typing events
/// (about 150 bytes each, so at most ~10 MB); when full, the cache is emptied and refills.
pub const MEMBERSHIP_CACHED_CHATS_MAX: usize = 65_536;
/// Concurrent argon2 computations (each takes ~19 MiB and tens of milliseconds of CPU).
pub const PASSWORD_HASHES_CONCURRENT: usize = 4;

/// Users in one chat (the contract is 1:1).
pub const CHAT_MEMBERS_MAX: usize = 2;

const _: () = assert!(TEXT_CHARS_DEFAULT <= TEXT_CHARS_CEILING);
// The largest text (4 bytes per scalar) plus its envelope must fit in one Socket.IO message.
const _: () = assert!(TEXT_CHARS_DEFAULT * 4 + 1024 <= BODY_BYTES_MAX);
const _: () = assert!(PAGE_DEFAULT <= PAGE_MAX && USERS_PAGE_DEFAULT <= USERS_PAGE_MAX);
const _: () = assert!(WRITE_BATCH_MAX <= WRITE_QUEUE_MAX);
