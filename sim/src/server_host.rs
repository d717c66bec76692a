//! The server host: the real palaver server (the library's `Server::builder`) on the
//! simulated network and disk, with a simulated clock.
//!
//! Each boot opens the database on the simulated disk (redb repairs it after a crash), starts
//! the storage writer as a task of the host, and serves until the writer fails. Then it stops
//! the way the binary does (closing every socket), and the driver restarts it. A power cut or a
//! crash instead kills the host at once; the driver restarts it later on the same disk.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use palaver::clock::Clock;
use palaver::config::Config;
use palaver::server::{Server, ServerExit};
use palaver::storage;
use sha2::{Digest, Sha256};

use crate::disk::{DiskSwitch, SimDisk};
use crate::model::Model;
use crate::net::{SERVER_PORT, SimListener};
use crate::oracle;

/// The simulation's wall clock: a fixed epoch (set on the turmoil builder) plus simulated time.
/// Outside a host's turn (never, in practice) it repeats the last time it read.
#[derive(Debug, Default)]
pub struct SimClock {
    last_ms: AtomicU64,
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        match turmoil::since_epoch() {
            Some(now) => {
                let ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
                self.last_ms.store(ms, Ordering::Relaxed);
                ms
            }
            None => self.last_ms.load(Ordering::Relaxed),
        }
    }
}

/// What the server host shares with the driver.
#[derive(Default)]
pub struct ServerState {
    /// Boots so far (the first is 1).
    pub boots: u32,
    /// The disk switch of the current boot.
    pub disk: Option<DiskSwitch>,
    /// Why the last boot stopped on its own, if it did.
    pub stopped: Option<String>,
    /// The service of the current boot, for the driver to see how many connections it counts.
    pub app: Option<Arc<palaver::service::App>>,
}

impl ServerState {
    /// Connections the server counts for presence, if it is up and the count is not locked.
    pub fn counted_connections(&self) -> Option<usize> {
        self.app.as_ref()?.counted_connections()
    }
}

/// Everything a boot needs; cloned into each boot's future.
#[derive(Clone)]
pub struct ServerSetup {
    pub seed: u64,
    pub state: Rc<RefCell<ServerState>>,
    pub model: Model,
    /// Whether the server fsyncs the data directory after creating the database file.
    pub sync_dir_entries: bool,
    /// Whom the server tells of a user's presence.
    pub presence_scope: palaver::service::PresenceScope,
}

/// The id generator's seed of one boot: distinct per boot, as the binary's OS-random seed is.
fn boot_seed(seed: u64, boot: u32) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"palaver-sim server boot");
    hash.update(seed.to_le_bytes());
    hash.update(boot.to_le_bytes());
    hash.finalize().into()
}

/// One boot of the server, from opening the disk to stopping.
pub async fn boot(setup: ServerSetup) -> turmoil::Result {
    let switch = DiskSwitch::default();
    let boot = {
        let mut state = setup.state.borrow_mut();
        state.boots += 1;
        state.disk = Some(switch.clone());
        state.stopped = None;
        state.app = None;
        state.boots
    };
    setup.model.trace.record(format!("server boot {boot}"));
    setup.model.record_boot();
    let disk = SimDisk::open(switch.clone(), setup.sync_dir_entries)?;
    let db = storage::open_backend(disk)?;
    let clock: Arc<dyn Clock> = Arc::new(SimClock::default());
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", SERVER_PORT)).await?;
    let stopping = Arc::clone(&setup.model.state.borrow().server_stopping);
    stopping.store(false, Ordering::Relaxed);
    let config = Config {
        presence_scope: setup.presence_scope,
        ..Config::default()
    };
    let running = Server::builder(config)
        .on_shutdown(move || stopping.store(true, Ordering::Relaxed))
        .database(db)
        .clock(clock)
        .seed(boot_seed(setup.seed, boot))
        .writer_on_callers_runtime()
        .start(SimListener(listener))
        .await
        .map_err(|e| format!("start: {e}"))?;
    // Durability is checked on what the disk gave back, before the server has served anyone
    // (its serving task has not run yet on this host's single thread).
    oracle::check_recovered(running.store(), &setup.model, boot);
    setup.state.borrow_mut().app = Some(Arc::clone(running.app()));

    let exit = running.exited().await;
    let reason = match exit {
        ServerExit::StorageFailed(error) => error.to_string(),
        other => format!("{other:?}"),
    };
    setup
        .model
        .trace
        .record(format!("server boot {boot} stopped: storage failed"));
    setup.state.borrow_mut().stopped = Some(reason);
    Ok(())
}
