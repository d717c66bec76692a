//! palaver: a self-hosted real-time chat server.
//!
//! One process serves the REST API and Socket.IO on one port and keeps users, chats and messages
//! in an embedded redb database. Modules in reading order: `limits` (every bound), `domain` (pure
//! rules), `storage` (redb, group commit), `service` (the use cases), `transport` (HTTP and
//! Socket.IO), `server` (wiring, `run`), `config` (settings), `admin` (the operator's commands
//! and the admin socket), `logs` and `metrics` (what an operator watches). See ARCHITECTURE.md.

pub mod admin;
pub mod clock;
pub mod config;
pub mod domain;
#[cfg(feature = "sim-faults")]
pub mod faults;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod server;
pub mod service;
pub mod storage;
pub mod transport;
