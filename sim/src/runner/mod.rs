//! The runner: executes a plan on turmoil. It builds the simulated world (the server host and
//! a host per tab), lets each tab take its steps (`tab`), and drives the run through its phases
//! while applying the plan's faults (`driver`). What happens goes to the model, and the oracle
//! judges it as it happens, at every server boot and at the end. A run is a pure function of
//! the seed and the plan.
//!
//! Also here: running a seed with a panic turned into a failed outcome, and sweeping seeds on
//! several threads.

mod driver;
pub mod tab;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::model::{ChatSlot, Delivery, GroupSlot, Invariant, Model, UserSlot, Violation};
use crate::net::SERVER_HOST;
use crate::oracle;
use crate::plan::{self, Plan, PresenceScope, Shape, mix};
use crate::server_host::{self, ServerSetup, ServerState};
use crate::trace::Trace;
use driver::{BASE_LATENCY, Driver, tab_host};
use tab::{Tab, TabControl};

/// The simulated wall clock starts here (2026-01-01T00:00:00Z), whatever the host's clock says.
const EPOCH_SECS: u64 = 1_767_225_600;
/// turmoil's listen backlog and socket buffers, in segments (its default is 64).
const TCP_CAPACITY: usize = 4096;

/// How a run is shaped.
#[derive(Debug, Clone)]
pub struct Settings {
    pub users: usize,
    /// Simulated tabs (Socket.IO clients), each on a host of its own.
    pub clients: usize,
    /// Length of the safety phase (simulated).
    pub duration: Duration,
    /// Simulated time per step.
    pub tick: Duration,
    /// Keep only these faults of the generated plan (by index); all when `None`.
    pub faults: Option<BTreeSet<usize>>,
    /// Run with this presence scope instead of the one the seed draws (`--presence-scope`).
    pub presence_scope: Option<PresenceScope>,
    /// Keep the whole trace (for `--trace-out`).
    pub keep_trace: bool,
    /// Keep every event the sockets receive (in the outcome's `deliveries`).
    pub keep_deliveries: bool,
    /// Model the server fsyncing the data directory after creating its database (`false`
    /// models a server that does not, whose first power cut loses the whole file).
    pub sync_dir_entries: bool,
    /// The planted bug to run with (feature `sim-faults`).
    #[cfg(feature = "sim-faults")]
    pub planted: Option<palaver::faults::PlantedFault>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            users: 16,
            clients: 50,
            duration: Duration::from_secs(60),
            tick: Duration::from_millis(20),
            faults: None,
            presence_scope: None,
            keep_trace: false,
            keep_deliveries: false,
            sync_dir_entries: true,
            #[cfg(feature = "sim-faults")]
            planted: None,
        }
    }
}

impl Settings {
    fn shape(&self) -> Shape {
        Shape {
            users: self.users,
            clients: self.clients,
            duration: self.duration,
        }
    }
}

/// Figures of a run.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub simulated: Duration,
    pub wall: Duration,
    pub trace_lines: u64,
    pub sends: usize,
    pub acked: usize,
    pub server_boots: u32,
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub seed: u64,
    pub presence_scope: PresenceScope,
    pub trace_hash: String,
    /// In order of simulated time.
    pub violations: Vec<Violation>,
    pub tail: Vec<String>,
    pub full_trace: Option<Vec<String>>,
    /// Every event the sockets received, if the settings keep them.
    pub deliveries: Option<Vec<Delivery>>,
    pub stats: Stats,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The first violation in time (the one that names the bug, usually).
    pub fn first_violation(&self) -> Option<&Violation> {
        self.violations.first()
    }

    pub fn violated(&self) -> BTreeSet<Invariant> {
        self.violations.iter().map(|v| v.invariant).collect()
    }

    /// The outcome of a run that panicked.
    fn panicked(seed: u64, presence_scope: PresenceScope, message: String, trace: &Trace) -> Self {
        Outcome {
            seed,
            presence_scope,
            trace_hash: "-".into(),
            violations: vec![Violation {
                invariant: Invariant::Contract,
                at_ms: 0,
                detail: format!("the run panicked: {message}"),
            }],
            tail: trace.tail(),
            full_trace: trace.full(),
            deliveries: None,
            stats: Stats::default(),
        }
    }
}

/// The plan `settings` give for `seed`: generated, then only the faults `settings.faults` keeps,
/// with the presence scope `settings` force.
pub fn plan_for(settings: &Settings, seed: u64) -> Plan {
    let mut plan = plan::generate(seed, settings.shape());
    if let Some(keep) = &settings.faults {
        plan.faults.retain(|s| keep.contains(&s.index));
    }
    if let Some(scope) = settings.presence_scope {
        plan.presence_scope = scope;
    }
    plan
}

/// Runs one seed; a panic anywhere in it becomes a failed outcome rather than ending a sweep.
pub fn run_guarded(settings: &Settings, seed: u64) -> Outcome {
    run_plan_guarded(settings, seed, &plan_for(settings, seed))
}

/// Runs `plan` with `seed`; a panic becomes a failed outcome.
pub fn run_plan_guarded(settings: &Settings, seed: u64, plan: &Plan) -> Outcome {
    let trace = Trace::new(settings.keep_trace);
    let traced = trace.clone();
    match catch_unwind(AssertUnwindSafe(|| run_plan(settings, seed, plan, traced))) {
        Ok(outcome) => outcome,
        Err(panic) => {
            #[cfg(feature = "sim-faults")]
            palaver::faults::plant(None);
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown panic".into());
            Outcome::panicked(seed, plan.presence_scope, message, &trace)
        }
    }
}

/// Runs `plan` with `seed` (turmoil's network, the server's ids and the tabs' own draws),
/// recording into `trace` (which the caller keeps if the run panics).
pub fn run_plan(settings: &Settings, seed: u64, plan: &Plan, trace: Trace) -> Outcome {
    let started = Instant::now();
    #[cfg(feature = "sim-faults")]
    palaver::faults::plant(settings.planted);
    // Named only when it is not the default, so that runs with scope `all` trace as before.
    if plan.presence_scope != PresenceScope::All {
        trace.record(format!("presence scope {}", plan.presence_scope));
    }
    let model = world_model(plan, trace.clone(), settings.keep_deliveries);

    let mut builder = turmoil::Builder::new();
    builder
        .rng_seed(seed)
        .epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_SECS))
        .tick_duration(settings.tick)
        .simulation_duration(Duration::from_secs(24 * 3600))
        .min_message_latency(BASE_LATENCY)
        .max_message_latency(BASE_LATENCY)
        // The listen backlog and socket buffers, in segments. When a hold ends, every SYN the
        // held tabs sent meanwhile arrives at once (a user-wide hold: dozens), and turmoil
        // panics when a backlog overflows where a kernel would drop the SYN.
        .tcp_capacity(TCP_CAPACITY);
    let mut sim = builder.build();

    let server = Rc::new(RefCell::new(ServerState::default()));
    let setup = ServerSetup {
        seed,
        state: Rc::clone(&server),
        model: model.clone(),
        sync_dir_entries: settings.sync_dir_entries,
        presence_scope: plan.presence_scope.server(),
    };
    sim.host(SERVER_HOST, move || server_host::boot(setup.clone()));

    // Each tab is a host of its own: socketioxide writes to its sockets in hash order, so two
    // sockets behind one host's link would see their packets interleave differently from run
    // to run; one link per socket keeps every run of a seed identical.
    let mut controls = Vec::with_capacity(plan.tabs.len());
    for (t, tab_plan) in plan.tabs.iter().enumerate() {
        let control = Rc::new(TabControl::default());
        controls.push(Rc::clone(&control));
        let tab = Tab::new(
            t,
            tab_plan.clone(),
            mix(seed, &format!("tab {t}")),
            model.clone(),
            control,
        );
        sim.client(tab_host(t), async move { tab.run().await });
    }

    let mut driver = Driver::new(
        sim,
        model.clone(),
        controls,
        server,
        plan.faults.clone(),
        plan.users,
        ChaCha8Rng::seed_from_u64(mix(seed, "driver")),
    );
    driver.run(settings.duration);
    let simulated = driver.elapsed();
    let server_boots = driver.server_boots();
    driver.shut_down();
    drop(driver);

    oracle::final_check(&model);
    #[cfg(feature = "sim-faults")]
    palaver::faults::plant(None);

    let mut state = model.state.borrow_mut();
    let mut violations = state.violations.clone();
    violations.sort_by_key(|v| v.at_ms);
    let stats = Stats {
        simulated,
        wall: started.elapsed(),
        trace_lines: trace.line_count(),
        sends: state.sends.values().filter(|s| s.valid).count(),
        acked: state.sends.values().filter(|s| s.acked().is_some()).count(),
        server_boots,
    };
    Outcome {
        seed,
        presence_scope: plan.presence_scope,
        trace_hash: trace.hash_hex(),
        violations,
        tail: trace.tail(),
        full_trace: trace.full(),
        deliveries: state.deliveries.take(),
        stats,
    }
}

/// The model of `plan`'s world before it starts: its users and chats, not yet created.
fn world_model(plan: &Plan, trace: Trace, keep_deliveries: bool) -> Model {
    let users: Vec<UserSlot> = (0..plan.users)
        .map(|u| UserSlot {
            name: format!("User {u}"),
            email: format!("u{u}@sim.test"),
            ..UserSlot::default()
        })
        .collect();
    // User u's first tab is tab u; it opens the chats it is `a` of and creates the groups it
    // owns and, at the audit, reads back their history.
    let direct = plan.chats.iter().map(|pair| ChatSlot {
        a: pair.a,
        b: pair.b,
        id: None,
        audit_tab: Some(pair.a),
        group: None,
    });
    let groups = plan.groups.iter().map(|group| ChatSlot {
        a: group.owner,
        b: group.owner,
        id: None,
        audit_tab: Some(group.owner),
        group: Some(GroupSlot {
            owner: group.owner,
            initial: group.initial(),
            users: group.users(),
        }),
    });
    let chats = direct.chain(groups).collect();
    let model = Model::new(trace, users, chats, plan.tabs.len(), keep_deliveries);
    model.state.borrow_mut().presence_scope = plan.presence_scope;
    for (status, tab) in model.state.borrow_mut().tabs.iter_mut().zip(&plan.tabs) {
        status.ends_offline = tab.ends_offline;
    }
    model
}

/// Runs `seeds` on `jobs` threads; `each` sees every outcome as it completes. Returns the
/// outcomes in seed order.
pub fn sweep(
    settings: &Settings,
    seeds: &[u64],
    jobs: usize,
    mut each: impl FnMut(&Outcome),
) -> Vec<Outcome> {
    let next = AtomicUsize::new(0);
    let (done_tx, done_rx) = mpsc::sync_channel::<Outcome>(jobs.max(1));
    let mut outcomes = Vec::with_capacity(seeds.len());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            let done_tx = done_tx.clone();
            let next = &next;
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&seed) = seeds.get(i) else { break };
                    if done_tx.send(run_guarded(settings, seed)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        for outcome in done_rx {
            each(&outcome);
            outcomes.push(outcome);
        }
    });
    outcomes.sort_by_key(|o| o.seed);
    outcomes
}
