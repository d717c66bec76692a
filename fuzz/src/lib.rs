//! Shared harness for palaver's fuzz targets: an in-memory server with a clock the target drives.
//!
//! Each case builds its own server (fresh in-memory database, fixed seed, fixed clock), so a
//! crash reproduces from its input alone. That is affordable because cargo-fuzz builds with
//! `--cfg fuzzing`, under which palaver hashes passwords with argon2's cheapest parameters.

use std::sync::Arc;
use std::time::Duration;

use palaver::clock::{Clock, ManualClock};
use palaver::config::Config;
use palaver::server::Service;
use palaver::service::App;
use palaver::storage::writer::CreateUserOutcome;
use palaver::storage::{self, NewUser, Store, StoreWriter, UserRecord};

/// 2027-01-15T08:00:00Z: a fixed "now", so ids and token expiries do not depend on the wall clock.
pub const START_MS: u64 = 1_800_000_000_000;

/// The contract's refusal messages (docs/protocol.md, "Refusal messages").
pub const REFUSALS: [&str; 6] = [
    "Chat not found",
    "Invalid payload",
    "Message is empty",
    "Message too long",
    "Rate limited",
    "Failed to send message",
];

/// Runs `case` on a fixture built by `build` and reused for `every` cases, then rebuilt: building
/// a server costs milliseconds under the sanitizer, a case microseconds. Reuse means a case may
/// see what earlier ones stored; the targets' oracles read that state rather than assume a fresh
/// server, and the periodic rebuild bounds memory.
pub fn with_fixture<T: 'static, B, C>(every: u32, build: B, case: C)
where
    B: AsyncFnOnce() -> T,
    C: AsyncFnOnce(&T),
{
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = runtime();
        static FIXTURE: std::cell::RefCell<Option<(Box<dyn std::any::Any>, u32)>> =
            const { std::cell::RefCell::new(None) };
    }
    RUNTIME.with(|rt| {
        let mut slot = FIXTURE.with(|f| f.borrow_mut().take());
        if slot
            .as_ref()
            .is_none_or(|(fixture, uses)| *uses >= every || !fixture.is::<T>())
        {
            // Drop the old fixture first, inside the runtime, so its writer task ends.
            drop(slot.take());
            slot = Some((Box::new(rt.block_on(build())), 0));
        }
        let (fixture, uses) = slot.as_mut().expect("just built");
        *uses += 1;
        rt.block_on(case(fixture.downcast_ref::<T>().expect("fixture type")));
        FIXTURE.with(|f| *f.borrow_mut() = slot);
    });
}

/// A single-threaded runtime: deterministic scheduling, and `App` runs argon2 inline on it.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
}

/// The settings every target starts from: a fixed secret (no generated one to store) and a long
/// token lifetime; targets adjust the rest.
pub fn config() -> Config {
    Config {
        jwt_secret: Some("fuzz-secret-fuzz-secret-fuzz-sec".into()),
        token_ttl: Duration::from_secs(30 * 86_400),
        // Targets register from one address far more often than a person would.
        registrations_per_address: palaver::limits::REGISTRATIONS_PER_ADDRESS_CEILING,
        // Presence announced at once, so a target's model sees each transition as it happens
        // (no ticker runs without a served server). The grace period and the ticks are checked
        // against a model in `domain::presence`'s property test and by the simulation.
        presence_grace: Duration::ZERO,
        presence_tick: Duration::ZERO,
        // The web client's files are served by memory-serve, which leaks its assets once per
        // process on purpose; LeakSanitizer would report that on every target's first input.
        // The targets fuzz the API, not static files.
        web: false,
        ..Config::default()
    }
}

/// A palaver service on a fresh in-memory database. Must be called inside `runtime()`: it spawns
/// the storage writer there, which stops when the runtime is dropped.
pub struct Server {
    pub app: Arc<App>,
    pub store: Store,
    pub writer: StoreWriter,
    pub clock: Arc<ManualClock>,
    /// Keeps the writer running for as long as the fixture lives.
    _service: Service,
}

impl Server {
    pub async fn start(config: &Config) -> Self {
        let clock = Arc::new(ManualClock::at(START_MS));
        let service = palaver::server::Server::builder(config.clone())
            .database(storage::open_in_memory().expect("in-memory database"))
            .clock(Arc::clone(&clock) as Arc<dyn Clock>)
            .seed([7; 32])
            .writer_on_callers_runtime()
            .build()
            .await
            .expect("service");
        Self {
            app: Arc::clone(&service.app),
            store: service.store.clone(),
            writer: service.writer.clone(),
            clock,
            _service: service,
        }
    }

    pub fn clock_now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// A user created straight through storage (no password), for targets that need a caller.
    pub async fn user(&self, id: &str, name: &str) -> UserRecord {
        let outcome = self
            .writer
            .create_user(NewUser {
                id: id.into(),
                name: name.into(),
                email: format!("{}@example.com", name.to_lowercase()),
                avatar: String::new(),
                password_hash: None,
                external_id: None,
                now_ms: START_MS,
            })
            .await
            .expect("create user");
        match outcome {
            CreateUserOutcome::Created(user) => user,
            other => panic!("fixture user not created: {other:?}"),
        }
    }
}
