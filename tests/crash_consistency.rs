//! Crash consistency: cut the power at every sync point of a stream of sends, reopen, and check
//! that nothing acknowledged was lost and that the server starts and serves.
//!
//! `CrashBackend` is a redb `StorageBackend` with a live image (what the process sees) and a
//! durable image (what survives a power cut), after redb's own `tests/crash_consistency.rs`. It
//! counts `sync_data` calls; at the k-th, the power goes: that sync fails, and so does every later
//! I/O. The writes issued since the last completed sync may or may not have reached the disk, so
//! each cut is checked with four disk images: none of them, all of them (the commit became durable
//! but was never acknowledged), only the header writes (redb's own crash model), and the first
//! half. For each image: redb reopens it (repairing as needed), `Store::check_consistency` finds
//! nothing, every acknowledged message is present at the seq its ack named with its text, the
//! rest of each chat is gapless and holds only messages that were sent but not acknowledged, and
//! the server built on the reopened store answers history and accepts a new message through the
//! real router.
//!
//! Everything runs on a current-thread runtime with a fixed clock and seed, so the sync count of
//! the workload is the same in every run and each cut lands where it was aimed.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use futures_util::future::join_all;
use palaver::clock::ManualClock;
use palaver::config::Config;
use palaver::server::{Server, Service, router};
use palaver::service::SendMessage;
use palaver::storage::{self, NewUser, StoreWriter};
use redb::StorageBackend;
use serde_json::{Value, json};
use tower::ServiceExt;

const NOW_MS: u64 = 1_800_000_000_000;
/// Sends in the stream, issued `CONCURRENT` at a time so that batches of several are committed
/// together (group commit) as well as batches of one.
const SENDS: usize = 24;
const CONCURRENT: [usize; 4] = [1, 3, 2, 5];

#[derive(Debug)]
enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Debug, Default)]
struct DiskState {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Writes and resizes since the last completed sync, in order.
    pending: Vec<Pending>,
    syncs: u64,
    /// The sync at which the power goes.
    cut_at: Option<u64>,
    dead: bool,
}

#[derive(Debug, Clone, Default)]
struct CrashBackend {
    state: Arc<Mutex<DiskState>>,
}

fn power_cut() -> std::io::Error {
    std::io::Error::other("power cut")
}

/// Which of the writes issued since the last completed sync reached the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Survivors {
    None,
    All,
    HeaderOnly,
    FirstHalf,
}

impl CrashBackend {
    fn from_image(image: Vec<u8>) -> Self {
        let backend = Self::default();
        {
            let mut state = backend.state.lock().unwrap();
            state.live = image.clone();
            state.durable = image;
        }
        backend
    }

    fn cut_at(&self, sync: u64) {
        self.state.lock().unwrap().cut_at = Some(sync);
    }

    fn syncs(&self) -> u64 {
        self.state.lock().unwrap().syncs
    }

    fn dead(&self) -> bool {
        self.state.lock().unwrap().dead
    }

    /// The disk after the power cut.
    fn image(&self, survivors: Survivors) -> Vec<u8> {
        let state = self.state.lock().unwrap();
        let mut image = state.durable.clone();
        let keep = match survivors {
            Survivors::None => 0,
            Survivors::FirstHalf => state.pending.len() / 2,
            Survivors::All | Survivors::HeaderOnly => state.pending.len(),
        };
        for op in &state.pending[..keep] {
            match op {
                Pending::SetLen(len) if survivors != Survivors::HeaderOnly => {
                    image.resize(*len as usize, 0)
                }
                Pending::Write(offset, data)
                    if survivors != Survivors::HeaderOnly || *offset == 0 =>
                {
                    let (offset, end) = (*offset as usize, *offset as usize + data.len());
                    if end > image.len() {
                        if survivors == Survivors::HeaderOnly {
                            continue;
                        }
                        image.resize(end, 0);
                    }
                    image[offset..end].copy_from_slice(data);
                }
                _ => {}
            }
        }
        image
    }
}

impl StorageBackend for CrashBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.state.lock().unwrap().live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let state = self.state.lock().unwrap();
        let offset = offset as usize;
        if offset + out.len() > state.live.len() {
            return Err(std::io::Error::from(ErrorKind::UnexpectedEof));
        }
        out.copy_from_slice(&state.live[offset..offset + out.len()]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut state = self.state.lock().unwrap();
        if state.dead {
            return Err(power_cut());
        }
        state.live.resize(len as usize, 0);
        state.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut state = self.state.lock().unwrap();
        if state.dead {
            return Err(power_cut());
        }
        state.syncs += 1;
        if state.cut_at == Some(state.syncs) {
            state.dead = true;
            return Err(power_cut());
        }
        state.durable = state.live.clone();
        state.pending.clear();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut state = self.state.lock().unwrap();
        if state.dead {
            return Err(power_cut());
        }
        let (start, end) = (offset as usize, offset as usize + data.len());
        if end > state.live.len() {
            state.live.resize(end, 0);
        }
        state.live[start..end].copy_from_slice(data);
        state.pending.push(Pending::Write(offset, data.to_vec()));
        Ok(())
    }
}

fn config() -> Config {
    Config {
        jwt_secret: Some("crash-test-secret-crash-test-sec".into()),
        send_burst: 10_000,
        ..Config::default()
    }
}

const ADA: &str = "ada000000000000000000001";
const BOB: &str = "bob000000000000000000002";

/// A send that was acknowledged: the seq and text its ack named.
#[derive(Debug, Clone)]
struct Acked {
    seq: u64,
    id: String,
}

#[derive(Debug, Default)]
struct Outcome {
    chat: Option<String>,
    acked: Vec<Acked>,
    /// Texts of every send attempted, acknowledged or not.
    attempted: Vec<String>,
    /// Syncs redb made to create the empty database file.
    created_at_sync: u64,
}

async fn start_app(db: redb::Database) -> Result<Service, String> {
    Server::builder(config())
        .database(db)
        // Each reading moves a millisecond on, so createdAt differs between messages.
        .clock(Arc::new(ManualClock::ticking(NOW_MS, 1)))
        .seed([9; 32])
        .writer_on_callers_runtime()
        .build()
        .await
        .map_err(|e| e.to_string())
}

async fn create_user(writer: &StoreWriter, id: &str, name: &str) -> Result<(), String> {
    writer
        .create_user(NewUser {
            id: id.into(),
            name: name.into(),
            email: format!("{name}@example.com"),
            avatar: String::new(),
            password_hash: None,
            external_id: None,
            now_ms: NOW_MS,
        })
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Creates the database, two users and their chat, then sends `SENDS` messages in groups. Stops
/// at the first failure, as a client whose server died would; returns what was acknowledged.
async fn workload(backend: CrashBackend) -> Outcome {
    let mut outcome = Outcome::default();
    let Ok(db) = storage::open_backend(backend.clone()) else {
        return outcome;
    };
    outcome.created_at_sync = backend.syncs();
    let Ok(service) = start_app(db).await else {
        return outcome;
    };
    let (app, writer) = (&service.app, &service.writer);
    if create_user(writer, ADA, "ada").await.is_err()
        || create_user(writer, BOB, "bob").await.is_err()
    {
        return outcome;
    }
    let Ok(chat) = app.open_chat_with(ADA, BOB).await else {
        return outcome;
    };
    outcome.chat = Some(chat.id.clone());
    let ada = service.store.user(ADA).unwrap().unwrap();
    let mut sent = 0;
    for round in 0.. {
        let group = CONCURRENT[round % CONCURRENT.len()].min(SENDS - sent);
        if group == 0 {
            break;
        }
        let texts: Vec<String> = (sent..sent + group)
            .map(|i| format!("message {i}"))
            .collect();
        outcome.attempted.extend(texts.iter().cloned());
        let results = join_all(texts.iter().enumerate().map(|(j, text)| {
            let cmid = format!("c{}", sent + j);
            let command = SendMessage {
                chat_id: chat.id.clone(),
                text: text.clone(),
                client_msg_id: Some(cmid),
            };
            let (app, ada) = (&app, &ada);
            async move { app.send(ada, command).await }
        }))
        .await;
        sent += group;
        let mut failed = false;
        for result in results {
            match result {
                Ok(sent) => outcome.acked.push(Acked {
                    seq: sent.message.seq,
                    id: sent.message.id,
                }),
                Err(_) => failed = true,
            }
        }
        if failed {
            break;
        }
    }
    outcome
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn call(router: &axum::Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Reopens `image` and checks everything the contract promises after a crash. Returns how many
/// messages survived that were committed but never acknowledged.
async fn check_recovery(image: Vec<u8>, outcome: &Outcome, what: &str) -> usize {
    let db = storage::open_backend(CrashBackend::from_image(image))
        .unwrap_or_else(|e| panic!("{what}: the database does not reopen: {e}"));
    let service = start_app(db)
        .await
        .unwrap_or_else(|e| panic!("{what}: the server does not start: {e}"));
    let (app, store) = (&service.app, &service.store);
    let problems = store.check_consistency().unwrap();
    assert!(problems.is_empty(), "{what}: {problems:?}");

    let (router, _io) = router(Arc::clone(app), &config());
    let health = Request::get("/health").body(Body::empty()).unwrap();
    assert_eq!(call(&router, health).await.0, StatusCode::OK, "{what}");

    let Some(chat_id) = &outcome.chat else {
        // Nothing was acknowledged before the cut, so nothing is owed.
        return 0;
    };
    let Some(chat) = store.chat(chat_id).unwrap() else {
        panic!("{what}: the acknowledged chat is gone");
    };
    let messages = store.messages(chat_id, 1..chat.last_seq + 1).unwrap();
    assert_eq!(messages.len() as u64, chat.last_seq, "{what}");
    let by_seq: HashMap<u64, _> = messages.iter().map(|m| (m.seq, m)).collect();
    for acked in &outcome.acked {
        let found = by_seq
            .get(&acked.seq)
            .unwrap_or_else(|| panic!("{what}: acknowledged seq {} lost", acked.seq));
        assert_eq!(found.id, acked.id, "{what}: seq {} changed", acked.seq);
    }
    for message in &messages {
        assert!(
            outcome.attempted.contains(&message.text),
            "{what}: a message nobody sent: {message:?}"
        );
    }
    let unacked = messages.len() - outcome.acked.len();
    assert!(
        unacked <= outcome.attempted.len() - outcome.acked.len(),
        "{what}"
    );

    // The server serves: history through the router, then a new message after the survivors.
    let token = app.tokens().issue(ADA, NOW_MS);
    let history = Request::get(format!("/api/messages/chat/{chat_id}"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let (status, body) = call(&router, history).await;
    assert_eq!(status, StatusCode::OK, "{what}: {body}");
    let seqs: Vec<u64> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=chat.last_seq).collect::<Vec<_>>(), "{what}");
    let post = Request::post(format!("/api/messages/chat/{chat_id}"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({ "text": "after the crash", "clientMsgId": "after" }).to_string(),
        ))
        .unwrap();
    let (status, body) = call(&router, post).await;
    assert_eq!(status, StatusCode::CREATED, "{what}: {body}");
    assert_eq!(body["seq"], chat.last_seq + 1, "{what}");
    assert!(store.check_consistency().unwrap().is_empty(), "{what}");
    unacked
}

#[test]
fn every_sync_point_of_a_stream_of_sends_recovers() {
    // Pass 1: the workload without a cut, to count its sync points.
    let probe = CrashBackend::default();
    let full = runtime().block_on(workload(probe.clone()));
    assert_eq!(full.acked.len(), SENDS, "the uncut workload must succeed");
    let total = probe.syncs();
    assert!(total > SENDS as u64 / 5, "too few syncs: {total}");

    // Pass 2: cut at each of them, from the first sync of the brand-new file on. (A cut while
    // redb creates the file leaves it without its magic number; the server must start anyway,
    // see `storage::open_backend`.)
    assert!(full.created_at_sync > 0, "creating the file takes syncs");
    let (mut checked, mut unacked_survivors) = (0, 0);
    for cut in 1..=total {
        let backend = CrashBackend::default();
        backend.cut_at(cut);
        let outcome = runtime().block_on(workload(backend.clone()));
        assert!(backend.dead(), "sync {cut} of {total} was never reached");
        for survivors in [
            Survivors::None,
            Survivors::All,
            Survivors::HeaderOnly,
            Survivors::FirstHalf,
        ] {
            let what = format!(
                "cut at sync {cut}/{total} ({} acknowledged), {survivors:?} of the unsynced writes on disk",
                outcome.acked.len()
            );
            unacked_survivors +=
                runtime().block_on(check_recovery(backend.image(survivors), &outcome, &what));
            checked += 1;
        }
    }
    eprintln!(
        "crash consistency: {total} sync points ({} of them while the file was created), {checked} disk images recovered, {unacked_survivors} committed-but-unacknowledged messages found",
        full.created_at_sync
    );
    // The cuts must include commits that became durable without an ack, or the "plus possibly
    // committed but unacknowledged" half of the check never ran.
    assert!(unacked_survivors > 0);
}
