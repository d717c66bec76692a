//! Every bound palaver enforces, in one place.
//!
//! A queue, map, page, timeout or payload without a limit is a bug waiting for a hostile client,
//! so each one is named here with the reason for its size, and the compile-time checks at the
//! end hold them together. Settings an operator may change (send rate, text length, token
//! lifetime) have their default and their ceiling here; `config.rs` checks values against the
//! ceilings.

use std::time::Duration;

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
/// Longest avatar URL shown to clients (a longer one, from an external provider, is dropped).
pub const AVATAR_CHARS_MAX: usize = 2048;
/// An external provider's `sub` (the user's external id) longer than this is refused.
pub const EXTERNAL_SUBJECT_CHARS_MAX: usize = 255;

/// REST request bodies and single Socket.IO / WebSocket messages.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// Packets queued towards one socket; beyond it socketioxide refuses further emits to that
/// socket (the client recovers missed messages with `sync`, its seqs show the gap). A burst of
/// group-committed messages to a user with many tabs must fit; the queue is allocated as it
/// fills, so idle sockets do not pay for the bound.
pub const SOCKET_BUFFER_MAX: usize = 1024;
/// Binary attachments of one Socket.IO packet. palaver's events carry none, so a packet that
/// announces any is refused and its socket closed (socketioxide's defaults would wait up to a
/// minute for 10,000 attachments of 10 MB in all). Should one ever be allowed, its attachments
/// are bounded like a message and must follow their packet within a second.
pub const BINARY_ATTACHMENTS_MAX: usize = 0;
pub const BINARY_ATTACHMENT_BYTES_MAX: usize = BODY_BYTES_MAX;
pub const BINARY_PACKET_COMPLETION: Duration = Duration::from_secs(1);
/// Bytes a WebSocket reads from its connection at a time; a longer message takes more reads.
/// Every connection holds a buffer of this size for its lifetime, idle or not: 1 KiB holds a
/// typical chat event whole and saves 3 KiB per connection over socketioxide's 4 KiB default.
pub const WS_READ_BUFFER_BYTES: usize = 1024;

/// History pages (`limit` query) and `sync`.
pub const PAGE_DEFAULT: u32 = 100;
pub const PAGE_MAX: u32 = 500;
/// A `sync` ack or a history page as serialised JSON, escapes included (a control character
/// escapes to 6 bytes, so 4,000 of them make a 24 KB text): a reply stops adding messages at
/// this bound (`sync` then says `hasMore`), but always holds at least one, so a client makes
/// progress. 500 ordinary messages (~300 bytes each) fit.
pub const REPLY_BYTES_MAX: usize = 256 * 1024;
/// `sync` events and history reads (`GET /api/messages/chat/:id`) per user: a token bucket
/// shared by both. A client catching up after a reconnect syncs each chat it shows, page by page;
/// the burst covers that, the rate keeps a flood to REPLY_BYTES_MAX × 20 a second per user.
pub const READS_PER_SEC: u32 = 20;
pub const READS_BURST: u32 = 100;
/// Reply bytes (`sync` acks) one socket may have sent beyond what a client reading at
/// `SOCKET_READ_BYTES_PER_SEC_MIN` would have read; a reply past it disconnects the socket.
/// socketioxide counts a socket's outgoing queue in packets and says nothing of what was flushed,
/// so this leaky bucket is what bounds the bytes a socket that stops reading can pin
/// (docs/security-notes-flood.md). A client that reads catches up below the drain rate.
pub const SOCKET_UNREAD_BYTES_MAX: u32 = 8 * 1024 * 1024;
pub const SOCKET_READ_BYTES_PER_SEC_MIN: u32 = 512 * 1024;
/// `GET /api/users`.
pub const USERS_PAGE_DEFAULT: u32 = 50;
pub const USERS_PAGE_MAX: u32 = 200;
/// Its `q`: a name fragment or a whole email, so no longer than an email.
pub const USER_QUERY_CHARS_MAX: usize = EMAIL_CHARS_MAX;
/// Searches per user: a sustained rate and a burst (a search box sends one per pause in
/// typing). Each search may scan the whole users table.
pub const USER_SEARCHES_PER_SEC: u32 = 2;
pub const USER_SEARCH_BURST: u32 = 20;
/// A user's chat list is read whole; this caps the work of one `GET /api/chats`.
pub const CHATS_LIST_MAX: usize = 10_000;

/// Write requests waiting for the writer task; senders wait (backpressure) when it is full.
pub const WRITE_QUEUE_MAX: usize = 4096;
/// Write requests committed in one redb transaction (one fsync).
pub const WRITE_BATCH_MAX: usize = 512;

/// Client events of one socket waiting to be handled in order; one more is refused with
/// `Server busy`. Sends are rate limited per user well below this, so only a client that floods
/// meets it.
pub const SOCKET_EVENTS_QUEUED_MAX: usize = 256;
/// Sends of one socket filed with the writer and not yet acked; the socket's inbox waits
/// (and then fills) beyond it. Enough to keep a socket's sends in every group commit.
pub const SOCKET_SENDS_IN_FLIGHT_MAX: usize = 32;
/// The writer's commit feed: shards (chats are spread over them; each is delivered in order by
/// a task of its own) and messages waiting per shard before the writer waits for delivery.
pub const COMMIT_FEED_SHARDS: usize = 4;
pub const COMMIT_FEED_QUEUE_MAX: usize = 4096;

/// Failed logins per (client address, account) within `LOGIN_WINDOW_MS` before answering 429.
pub const LOGIN_FAILURES_MAX: usize = 10;
pub const LOGIN_WINDOW_MS: u64 = 60_000;
/// Sockets one user may have open at once (`PALAVER_MAX_SOCKETS_PER_USER`): a user's tabs and
/// devices, far below what would let one account pin the server's memory.
pub const SOCKETS_PER_USER_DEFAULT: u32 = 32;
pub const SOCKETS_PER_USER_CEILING: u32 = 10_000;
/// `typing` `true` events shown per user per second, over all of the user's sockets (each
/// socket also has `TYPING_PER_SEC`), so that many tabs do not multiply what the others see.
pub const TYPING_PER_USER_PER_SEC: u32 = 10;
/// `typing` `true` events shown per socket per second (a `false` is always shown once for a
/// shown `true`).
pub const TYPING_PER_SEC: usize = 5;
/// A `true` not confirmed for this long is ended by the server with a `false`, so a client that
/// lost its stop event still clears.
pub const TYPING_STALE_MS: u64 = 5_000;
/// Chats one socket can be shown typing in at once.
pub const TYPING_CHATS_MAX: usize = 64;
/// Users whose send bucket is remembered; idle buckets are full and can be forgotten.
pub const SEND_BUCKETS_MAX: usize = 1_000_000;
/// Chats whose members are kept in memory for the membership check of sends and typing events,
/// and the member ids held in all (about 50 bytes each, so at most ~50 MB); when either is full,
/// the cache is emptied and refills.
pub const MEMBERSHIP_CACHED_CHATS_MAX: usize = 65_536;
pub const MEMBERSHIP_CACHED_IDS_MAX: usize = 1_048_576;
/// Users whose public profile is kept in memory for deliveries (about 200 bytes each).
pub const PROFILES_CACHED_MAX: usize = 65_536;
/// Concurrent argon2 computations (each takes ~19 MiB and tens of milliseconds of CPU).
pub const PASSWORD_HASHES_CONCURRENT: usize = 4;
/// Logins and registrations waiting for a hashing slot, and how long one waits: beyond either,
/// the answer is 503 `Server busy` at once rather than a queue that grows while every login
/// stalls. Four slots hash about 70 passwords a second on two idle cores, so 32 waiters clear
/// in about half a second, and within the wait on a loaded machine.
pub const PASSWORD_HASH_WAITERS_MAX: usize = 32;
pub const PASSWORD_HASH_WAIT: Duration = Duration::from_secs(1);

/// Users in one chat: a 1:1 chat has two, a group at most this many (a small team's room; every
/// message is fanned out to each member's sockets, and the member list is rewritten with the
/// chat record on each commit).
pub const CHAT_MEMBERS_MAX: usize = 256;
/// User ids in one add (`POST /api/chats/:chatId/members`) or one group creation.
pub const MEMBERS_PER_ADD_MAX: usize = 100;
/// A group's name: 1–64 characters after trimming, like a user's name.
pub const GROUP_NAME_CHARS_MAX: usize = NAME_CHARS_MAX;
/// Messages a history read reserves room for up front (a page may hold more; it grows).
pub const PAGE_PREALLOCATED_MAX: usize = 1024;

/// Engine.IO heartbeat: a ping every interval; a client silent for interval + timeout is gone.
pub const PING_INTERVAL: Duration = Duration::from_secs(25);
pub const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// A client that opens the transport but never sends its Socket.IO CONNECT is dropped after this
/// (default of the configuration's `socket_io_connect_timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often presence is reconciled with the live sockets.
pub const PRESENCE_SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How often the metrics' histogram samples are moved into their buckets (with metrics on):
/// until then each sample is kept, so this bounds them to what arrives in the interval (at
/// 13,000 messages a second, 65,000 samples of 8 bytes for the fan-out histogram).
pub const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// Presence: how long a user stays online after their last socket closed, and how often
/// changes are gathered and announced (`PALAVER_PRESENCE_GRACE`, `PALAVER_PRESENCE_TICK`).
pub const PRESENCE_GRACE_DEFAULT: Duration = Duration::from_secs(5);
pub const PRESENCE_TICK_DEFAULT: Duration = Duration::from_millis(250);
/// The longest grace and tick an operator may set.
pub const PRESENCE_GRACE_CEILING: Duration = Duration::from_secs(600);
pub const PRESENCE_TICK_CEILING: Duration = Duration::from_secs(10);
/// With no tick, how often ended grace periods are looked for.
pub const PRESENCE_GRACE_POLL: Duration = Duration::from_millis(100);
/// Ids in one `online-users` snapshot (sorted; beyond it a client learns of users from their
/// transitions). One snapshot is then at most about 300 KB.
pub const ONLINE_USERS_SNAPSHOT_MAX: usize = 10_000;
/// Times a user's contacts are read from storage outside the presence lock before they are read
/// under it (each retry means a chat was created meanwhile; see `domain::contacts`).
pub const CONTACTS_LOAD_ATTEMPTS: usize = 3;

/// redb's page cache (`--db-cache-mb`), in MiB. redb's own default is 1 GiB, and the cache fills
/// with the pages a server writes, so without a bound the server's memory grows with its
/// database up to that gigabyte (seen as RSS growing under a steady load, BENCHMARKS.md run J).
/// Misses are read from the kernel's page cache, which holds the file's hot pages without
/// counting against the process: under churn with 1,000 messages a second a 1 MiB cache
/// acknowledged as fast as an unbounded one (run J). 64 MiB keeps the B-tree's inner pages and
/// the newest pages of the busy chats.
pub const DB_CACHE_MB_DEFAULT: u32 = 64;
/// Largest `--db-cache-mb` (64 GiB).
pub const DB_CACHE_MB_CEILING: u32 = 65_536;

/// Connections (src/transport/connections.rs); each default can be changed in the configuration.
/// A connection that has sent no byte at all is closed after this.
pub const FIRST_BYTE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// A request head (request line and headers) must arrive whole within this; the same timer
/// runs while a keep-alive connection waits for its next request, so it is also the idle bound.
pub const REQUEST_HEAD_TIMEOUT_DEFAULT: Duration = Duration::from_secs(20);
/// Longest any of the connection timeouts may be configured.
pub const CONNECTION_TIMEOUT_CEILING: Duration = Duration::from_secs(3600);
/// Concurrent connections from one client address (an IPv6 client counts by its /64).
pub const CONNECTIONS_PER_ADDRESS_DEFAULT: u32 = 256;
/// Concurrent connections in all; the server also stays `FDS_RESERVED` below its open-files
/// limit (RLIMIT_NOFILE), whichever is lower.
pub const CONNECTIONS_MAX_DEFAULT: u32 = 1_000_000;
/// The listening socket's accept queue (the kernel caps it at `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u32 = 4096;
/// File descriptors kept free for everything that is not a client connection: the database,
/// the listener, the runtime, an external provider's key fetch.
pub const FDS_RESERVED: u64 = 64;
/// Connections told to close at once to make room on a full server (each still holds its
/// descriptor until its task sees the signal): half the descriptors' reserve.
pub const EVICTIONS_IN_FLIGHT_MAX: usize = FDS_RESERVED as usize / 2;
/// `--trusted-proxies` entries, and `X-Forwarded-For` entries read (right to left) per request.
pub const TRUSTED_PROXIES_MAX: usize = 64;
pub const FORWARDED_HOPS_MAX: usize = 16;

/// Failed logins from one client address (all accounts together) within `LOGIN_WINDOW_MS`
/// before answering 429: slows spraying one password across many accounts.
pub const LOGIN_ADDRESS_FAILURES_MAX: usize = 30;
/// Client addresses (and address-account pairs) tracked by the login throttle.
pub const LOGIN_TRACKED_KEYS_MAX: usize = 100_000;
/// Registrations per client address per `REGISTRATION_WINDOW_MS` (default and ceiling of
/// `PALAVER_REGISTRATIONS_PER_ADDRESS`).
pub const REGISTRATIONS_PER_ADDRESS_DEFAULT: u32 = 30;
pub const REGISTRATIONS_PER_ADDRESS_CEILING: u32 = 1_000_000;
pub const REGISTRATION_WINDOW_MS: u64 = 3_600_000;
/// Client addresses whose registration window is remembered.
pub const REGISTRATION_TRACKED_ADDRESSES_MAX: usize = 100_000;

/// The external provider's JWKS: refetched at most this often (an unknown `kid` asks for it),
/// at most this large, and given up after this long.
pub const JWKS_REFETCH_MIN_MS: u64 = 60_000;
pub const JWKS_BYTES_MAX: usize = 1024 * 1024;
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The JWKS URL is also refetched this often, so that a key the provider withdrew (revoked,
/// rotated out) stops being trusted within this time.
pub const JWKS_RELOAD_EVERY: Duration = Duration::from_secs(300);

/// Operator settings: `PALAVER_SEND_RATE_PER_SEC` and `PALAVER_SEND_BURST` at most this, and
/// tokens living 1 s to `TOKEN_TTL_MAX`.
pub const SEND_RATE_CEILING: u32 = 1_000_000;
pub const SEND_BURST_CEILING: u32 = 1_000_000;
pub const TOKEN_TTL_DEFAULT: Duration = Duration::from_secs(7 * 86_400);
pub const TOKEN_TTL_MAX: Duration = Duration::from_secs(366 * 86_400);
/// The shortest `PALAVER_JWT_SECRET` accepted (HS256 wants at least the hash's 32 bytes).
pub const JWT_SECRET_BYTES_MIN: usize = 32;

/// The admin socket (src/admin/socket.rs): one request line, one reply line, connections served
/// at once (an operator's commands come one at a time), and how long a connection may take to
/// send its request. Replies are bounded by what they carry: a page of `ADMIN_USERS_PAGE_MAX`
/// users (about 400 bytes each) or one token, well below `ADMIN_REPLY_BYTES_MAX`.
pub const ADMIN_REQUEST_BYTES_MAX: usize = 16 * 1024;
pub const ADMIN_REPLY_BYTES_MAX: usize = 1024 * 1024;
pub const ADMIN_CONNECTIONS_MAX: usize = 4;
pub const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the command waits for a running server's answer: a backup of a large database
/// takes a while (6.3 s for 1,000,000 messages on a busy 2-core machine, docs/deploy.md).
pub const ADMIN_REPLY_TIMEOUT: Duration = Duration::from_secs(3600);
/// Users in one `user list` page (the command asks for pages until it has them all).
pub const ADMIN_USERS_PAGE_MAX: usize = 500;
/// Rows a backup or an import copies per write transaction: each transaction's dirty pages
/// stay bounded whatever the database's size; only the last commit is made durable.
pub const COPY_ROWS_PER_COMMIT: usize = 50_000;
/// redb's page cache for a backup's target and an import (its default is 1 GiB).
pub const COPY_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// One line of an export file: a user, chat, member or message as JSON (a message's text of
/// `TEXT_CHARS_CEILING` characters escapes to at most 6 bytes each).
pub const EXPORT_LINE_BYTES_MAX: usize = 256 * 1024;

const _: () = assert!(TEXT_CHARS_DEFAULT <= TEXT_CHARS_CEILING);
// The largest text an operator can allow (4 bytes per scalar) plus its envelope must fit in one
// Socket.IO message.
const _: () = assert!(TEXT_CHARS_CEILING * 4 + 1024 <= BODY_BYTES_MAX);
// A 1:1 chat has two members; the member list of a chat is bounded by this, and a group's
// creator plus one add's worth of users fit in it.
const _: () = assert!(CHAT_MEMBERS_MAX >= 2 && MEMBERS_PER_ADD_MAX < CHAT_MEMBERS_MAX);
const _: () = assert!(MEMBERSHIP_CACHED_IDS_MAX >= CHAT_MEMBERS_MAX);
const _: () = assert!(TOKEN_TTL_DEFAULT.as_secs() <= TOKEN_TTL_MAX.as_secs());
const _: () = assert!(COMMIT_FEED_SHARDS >= 1 && COMMIT_FEED_QUEUE_MAX >= WRITE_BATCH_MAX);
const _: () = assert!(SOCKET_EVENTS_QUEUED_MAX >= TYPING_PER_SEC);
const _: () = assert!(SOCKET_SENDS_IN_FLIGHT_MAX >= 1);
const _: () = assert!(PAGE_DEFAULT <= PAGE_MAX && USERS_PAGE_DEFAULT <= USERS_PAGE_MAX);
const _: () = assert!(WRITE_BATCH_MAX <= WRITE_QUEUE_MAX);
const _: () = assert!(LOGIN_FAILURES_MAX <= LOGIN_ADDRESS_FAILURES_MAX);
const _: () = assert!(
    FIRST_BYTE_TIMEOUT_DEFAULT.as_secs() <= REQUEST_HEAD_TIMEOUT_DEFAULT.as_secs()
        && REQUEST_HEAD_TIMEOUT_DEFAULT.as_secs() <= CONNECTION_TIMEOUT_CEILING.as_secs()
);
const _: () = assert!(CONNECTIONS_PER_ADDRESS_DEFAULT <= CONNECTIONS_MAX_DEFAULT);
const _: () = assert!(SOCKETS_PER_USER_DEFAULT <= SOCKETS_PER_USER_CEILING);
const _: () = assert!(TYPING_PER_USER_PER_SEC as usize >= TYPING_PER_SEC);
// One message of the longest text, every character escaped to 6 bytes, fits in a reply, and a
// socket's budget holds many replies.
const _: () = assert!(TEXT_CHARS_CEILING * 6 + 2048 <= REPLY_BYTES_MAX);
const _: () = assert!(REPLY_BYTES_MAX * 8 <= SOCKET_UNREAD_BYTES_MAX as usize);
const _: () = assert!(TEXT_CHARS_CEILING * 6 + 4096 <= EXPORT_LINE_BYTES_MAX);
const _: () = assert!(ADMIN_USERS_PAGE_MAX * 2048 <= ADMIN_REPLY_BYTES_MAX);
