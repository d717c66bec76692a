//! The driver of one run: builds the simulated world from the seed, steps it, applies the fault
//! schedule, moves the run through its phases, and hands the record to the oracle.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use turmoil::Sim;

use crate::model::{ChatSlot, Invariant, Model, Phase, UserSlot, Violation};
use crate::net::SERVER_HOST;
use crate::oracle;
use crate::schedule::{self, Direction, Fault, Scheduled, Target};
use crate::server_host::{self, ServerSetup, ServerState};
use crate::tab::{Command, Tab, TabControl};
use crate::trace::Trace;

/// The simulated wall clock starts here (2026-01-01T00:00:00Z), whatever the host's clock says.
const EPOCH_SECS: u64 = 1_767_225_600;
/// Latency of every link when no fault changes it.
const BASE_LATENCY: Duration = Duration::from_millis(8);
/// turmoil's listen backlog and socket buffers, in segments (its default is 64).
const TCP_CAPACITY: usize = 4096;
/// Setup (registering, opening chats) must finish within this much simulated time.
const SETUP_MAX: Duration = Duration::from_secs(120);
/// After the clients settle, the run waits this long before the audit, for the last events in
/// flight to arrive.
const QUIET: Duration = Duration::from_secs(3);
/// The liveness bound: every client must have settled this long after healing.
const LIVENESS_MAX: Duration = Duration::from_secs(120);
const AUDIT_MAX: Duration = Duration::from_secs(60);

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
    /// Replay only these faults of the schedule (by index); all when `None`.
    pub faults: Option<BTreeSet<usize>>,
    /// Keep the whole trace (for `--trace-out`).
    pub keep_trace: bool,
    /// Model the server fsyncing the data directory after creating its database (it does since
    /// the simulation found that it did not).
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
            keep_trace: false,
            sync_dir_entries: true,
            #[cfg(feature = "sim-faults")]
            planted: None,
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
    pub trace_hash: String,
    pub violations: Vec<Violation>,
    pub tail: Vec<String>,
    pub full_trace: Option<Vec<String>>,
    pub schedule: Vec<Scheduled>,
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
}

/// The state of a client's link to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Healthy,
    Partitioned(Direction),
    Held,
    /// Partitioned by a silent power cut, until the server restarts.
    Cut,
}

/// Things the driver does later.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// Heal these tabs' links.
    Heal(Vec<usize>),
    /// Give these tabs' links the base latency again.
    EndLatency(Vec<usize>),
    Restart,
}

fn tab_host(tab: usize) -> String {
    format!("t{tab}")
}

fn mix(seed: u64, salt: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(seed.to_le_bytes())
        .chain_update(salt.as_bytes())
        .finalize();
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

struct Driver<'a> {
    sim: Sim<'a>,
    model: Model,
    trace: Trace,
    controls: Vec<Rc<TabControl>>,
    server: Rc<RefCell<ServerState>>,
    schedule: VecDeque<Scheduled>,
    timers: BTreeMap<(u64, u64), Action>,
    timer_seq: u64,
    /// The link of each tab's host to the server.
    links: Vec<Link>,
    users: usize,
    rng: ChaCha8Rng,
    server_down: bool,
    /// The trace has a line for the current boot's storage failure.
    stopping_noted: bool,
    safety_start_ms: u64,
    heal_ms: u64,
    /// Since when the liveness phase has been settled, if it is.
    settled_ms: Option<u64>,
    audit_start_ms: u64,
}

/// Runs one seed.
pub fn run_seed(settings: &Settings, seed: u64) -> Outcome {
    run_seed_traced(settings, seed, Trace::new(settings.keep_trace))
}

/// Runs one seed, recording into `trace` (which the caller keeps if the run panics).
pub fn run_seed_traced(settings: &Settings, seed: u64, trace: Trace) -> Outcome {
    let started = Instant::now();
    #[cfg(feature = "sim-faults")]
    palaver::faults::plant(settings.planted);
    assert!(
        settings.users >= 2 && settings.clients >= settings.users,
        "need at least two users and a client per user"
    );

    let mut plan_rng = ChaCha8Rng::seed_from_u64(mix(seed, "plan"));
    let users: Vec<UserSlot> = (0..settings.users)
        .map(|u| UserSlot {
            name: format!("User {u}"),
            email: format!("u{u}@sim.test"),
            ..UserSlot::default()
        })
        .collect();
    let chats = plan_chats(settings.users, &mut plan_rng);
    let model = Model::new(trace.clone(), users, chats, settings.clients);
    {
        // Tab t belongs to user t % users, so user u's first tab is tab u; it registers the
        // user and, at the audit, reads back the history of the chats it opened.
        let mut state = model.state.borrow_mut();
        for chat in &mut state.chats {
            chat.audit_tab = Some(chat.a);
        }
        for (t, status) in state.tabs.iter_mut().enumerate() {
            status.ends_offline = t >= settings.users && plan_rng.random_bool(0.15);
        }
    }
    let full_schedule =
        schedule::generate(seed, settings.clients, settings.users, settings.duration);
    let schedule: VecDeque<Scheduled> = full_schedule
        .iter()
        .filter(|s| {
            settings
                .faults
                .as_ref()
                .is_none_or(|keep| keep.contains(&s.index))
        })
        .cloned()
        .collect();

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
    };
    sim.host(SERVER_HOST, move || server_host::boot(setup.clone()));

    // Each tab is a host of its own: socketioxide writes to its sockets in hash order, so two
    // sockets behind one host's link would see their packets interleave differently from run
    // to run; one link per socket keeps every run of a seed identical.
    let mut controls = Vec::with_capacity(settings.clients);
    for t in 0..settings.clients {
        let control = Rc::new(TabControl::default());
        controls.push(Rc::clone(&control));
        let tab = Tab::new(
            t,
            t % settings.users,
            t < settings.users,
            mix(seed, &format!("tab {t}")),
            model.clone(),
            control,
        );
        sim.client(tab_host(t), async move { tab.run().await });
    }

    let mut driver = Driver {
        sim,
        model: model.clone(),
        trace: trace.clone(),
        controls,
        server,
        schedule,
        timers: BTreeMap::new(),
        timer_seq: 0,
        links: vec![Link::Healthy; settings.clients],
        users: settings.users,
        rng: ChaCha8Rng::seed_from_u64(mix(seed, "driver")),
        server_down: false,
        stopping_noted: false,
        safety_start_ms: 0,
        heal_ms: 0,
        settled_ms: None,
        audit_start_ms: 0,
    };
    driver.run(settings);
    let simulated = driver.sim.elapsed();
    let server_boots = driver.server.borrow().boots;
    driver.shut_down();
    drop(driver);

    oracle::final_check(&model);
    #[cfg(feature = "sim-faults")]
    palaver::faults::plant(None);

    let state = model.state.borrow();
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
        trace_hash: trace.hash_hex(),
        violations,
        tail: trace.tail(),
        full_trace: trace.full(),
        schedule: full_schedule,
        stats,
    }
}

/// A ring of chats (each user talks to the next) plus a few random extra pairs.
fn plan_chats(users: usize, rng: &mut ChaCha8Rng) -> Vec<ChatSlot> {
    let mut pairs = BTreeSet::new();
    for u in 0..users {
        let v = (u + 1) % users;
        pairs.insert((u.min(v), u.max(v)));
    }
    for _ in 0..users / 2 {
        let a = rng.random_range(0..users);
        let b = rng.random_range(0..users);
        if a != b {
            pairs.insert((a.min(b), a.max(b)));
        }
    }
    pairs
        .into_iter()
        .map(|(a, b)| ChatSlot {
            a,
            b,
            id: None,
            audit_tab: None,
        })
        .collect()
}

impl Driver<'_> {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.sim.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn set_phase(&mut self, phase: Phase) {
        self.trace.record(format!("phase {phase:?}"));
        self.model.state.borrow_mut().phase = Some(phase);
        for control in &self.controls {
            control.send(Command::Phase);
        }
    }

    fn later(&mut self, after: Duration, action: Action) {
        let at = self.now_ms() + u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq), action);
    }

    fn run(&mut self, settings: &Settings) {
        let duration_ms = u64::try_from(settings.duration.as_millis()).unwrap_or(u64::MAX);
        loop {
            let now = self.now_ms();
            self.trace.set_now(now);
            match self.model.phase() {
                Phase::Setup => {
                    let ready = self.model.state.borrow().tabs.iter().all(|t| t.ready);
                    if ready {
                        self.safety_start_ms = now;
                        self.set_phase(Phase::Safety);
                    } else if now > SETUP_MAX.as_millis() as u64 {
                        self.model
                            .violate(Invariant::Contract, "setup did not finish in time");
                        return;
                    }
                }
                Phase::Safety => {
                    self.apply_due(now);
                    self.watch_server();
                    if now >= self.safety_start_ms + duration_ms {
                        self.heal_all();
                        self.heal_ms = now;
                        self.set_phase(Phase::Liveness);
                    }
                }
                Phase::Liveness => {
                    self.watch_server();
                    let unsettled: Vec<usize> = self
                        .model
                        .state
                        .borrow()
                        .tabs
                        .iter()
                        .enumerate()
                        .filter(|(_, t)| !t.settled)
                        .map(|(i, _)| i)
                        .collect();
                    // Settled means every client is done and the server counts exactly the
                    // connections the clients hold: it has timed out every connection that
                    // died during the faults (its heartbeat takes up to 25 s + 20 s).
                    let since_heal = now - self.heal_ms;
                    let connected = self
                        .model
                        .state
                        .borrow()
                        .tabs
                        .iter()
                        .filter(|t| t.connected)
                        .count();
                    let counted = self.server.borrow().counted_connections();
                    let settled = unsettled.is_empty() && counted == Some(connected);
                    match (settled, self.settled_ms) {
                        (true, None) => self.settled_ms = Some(now),
                        (false, Some(_)) => self.settled_ms = None,
                        _ => {}
                    }
                    if self
                        .settled_ms
                        .is_some_and(|at| now - at >= QUIET.as_millis() as u64)
                    {
                        self.trace.record(format!(
                            "settled {}ms after healing",
                            self.settled_ms.unwrap_or(now) - self.heal_ms
                        ));
                        self.audit_start_ms = now;
                        self.set_phase(Phase::Audit);
                    } else if since_heal >= LIVENESS_MAX.as_millis() as u64 {
                        let detail = if unsettled.is_empty() {
                            format!(
                                "{}s after healing the server still counts {counted:?} connections for the {connected} the clients hold",
                                LIVENESS_MAX.as_secs()
                            )
                        } else {
                            format!(
                                "not settled {}s after healing: clients {unsettled:?}",
                                LIVENESS_MAX.as_secs()
                            )
                        };
                        let invariant = if unsettled.is_empty() {
                            Invariant::Presence
                        } else {
                            Invariant::Convergence
                        };
                        self.model.violate(invariant, detail);
                        self.audit_start_ms = now;
                        self.set_phase(Phase::Audit);
                    }
                }
                Phase::Audit => {
                    let done = self.model.state.borrow().tabs.iter().all(|t| t.audited);
                    if done {
                        self.set_phase(Phase::Done);
                    } else if now - self.audit_start_ms >= AUDIT_MAX.as_millis() as u64 {
                        self.model
                            .violate(Invariant::Convergence, "the audit did not finish in time");
                        self.set_phase(Phase::Done);
                    }
                }
                Phase::Done => {}
            }
            match self.sim.step() {
                Ok(true) => return,
                Ok(false) => {}
                Err(error) => {
                    self.model.violate(
                        Invariant::Contract,
                        format!("a simulated host failed: {error}"),
                    );
                    return;
                }
            }
        }
    }

    /// Applies the scheduled faults and timers that are due.
    fn apply_due(&mut self, now: u64) {
        while let Some(next) = self.schedule.front() {
            let at = self.safety_start_ms + u64::try_from(next.at.as_millis()).unwrap_or(0);
            if at > now {
                break;
            }
            let scheduled = self.schedule.pop_front().expect("peeked");
            self.apply(scheduled);
        }
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let action = entry.remove();
            self.act(action);
        }
    }

    fn apply(&mut self, scheduled: Scheduled) {
        let Scheduled { index, fault, .. } = scheduled;
        let applied = match &fault {
            Fault::Partition {
                target,
                direction,
                lasts,
            } => {
                let tabs = self.healthy_tabs(*target);
                for &tab in &tabs {
                    let host = tab_host(tab);
                    match direction {
                        Direction::Both => self.sim.partition(SERVER_HOST, host.as_str()),
                        Direction::ToServer => {
                            self.sim.partition_oneway(host.as_str(), SERVER_HOST)
                        }
                        Direction::FromServer => {
                            self.sim.partition_oneway(SERVER_HOST, host.as_str())
                        }
                    }
                    self.links[tab] = Link::Partitioned(*direction);
                }
                let applied = !tabs.is_empty();
                self.later(*lasts, Action::Heal(tabs));
                applied
            }
            Fault::Hold { target, lasts } => {
                let tabs = self.healthy_tabs(*target);
                for &tab in &tabs {
                    self.sim.hold(SERVER_HOST, tab_host(tab).as_str());
                    self.links[tab] = Link::Held;
                }
                let applied = !tabs.is_empty();
                self.later(*lasts, Action::Heal(tabs));
                applied
            }
            Fault::Latency {
                target,
                latency,
                lasts,
            } => {
                let tabs = self.tabs_of(*target);
                for &tab in &tabs {
                    self.sim
                        .set_link_latency(SERVER_HOST, tab_host(tab).as_str(), *latency);
                }
                self.later(*lasts, Action::EndLatency(tabs));
                true
            }
            Fault::DropClient { tab, back_after } => {
                self.controls[*tab].send(Command::Drop {
                    back_after: *back_after,
                });
                true
            }
            Fault::CloseClient { tab, back_after } => {
                self.controls[*tab].send(Command::Close {
                    back_after: *back_after,
                });
                true
            }
            Fault::PowerCut { silent, down_for } => {
                let ok = !self.server_down;
                if ok {
                    if *silent {
                        for tab in 0..self.links.len() {
                            if self.links[tab] == Link::Healthy {
                                self.sim.partition(SERVER_HOST, tab_host(tab).as_str());
                                self.links[tab] = Link::Cut;
                            }
                        }
                    }
                    self.cut_power();
                    self.later(*down_for, Action::Restart);
                }
                ok
            }
            Fault::DiskError { failure } => {
                let disk = self.server.borrow().disk.clone();
                match disk {
                    Some(disk) if !self.server_down => {
                        disk.arm(*failure);
                        true
                    }
                    _ => false,
                }
            }
        };
        self.trace.record(format!(
            "fault #{index}: {fault}{}",
            if applied { "" } else { " (skipped)" }
        ));
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Heal(tabs) => {
                for tab in tabs {
                    self.heal_link(tab);
                }
            }
            Action::EndLatency(tabs) => {
                for tab in tabs {
                    self.sim
                        .set_link_latency(SERVER_HOST, tab_host(tab).as_str(), BASE_LATENCY);
                }
            }
            Action::Restart => self.restart(),
        }
    }

    /// The tabs a fault aims at.
    fn tabs_of(&self, target: Target) -> Vec<usize> {
        match target {
            Target::Tab(tab) => vec![tab],
            Target::User(user) => (0..self.links.len())
                .filter(|t| t % self.users == user)
                .collect(),
        }
    }

    /// The tabs a link fault aims at whose links have no other fault.
    fn healthy_tabs(&self, target: Target) -> Vec<usize> {
        self.tabs_of(target)
            .into_iter()
            .filter(|&t| self.links[t] == Link::Healthy)
            .collect()
    }

    fn heal_link(&mut self, tab: usize) {
        let host = tab_host(tab);
        match self.links[tab] {
            Link::Healthy | Link::Cut => return,
            Link::Partitioned(Direction::Both) => self.sim.repair(SERVER_HOST, host.as_str()),
            Link::Partitioned(Direction::ToServer) => {
                self.sim.repair_oneway(host.as_str(), SERVER_HOST)
            }
            Link::Partitioned(Direction::FromServer) => {
                self.sim.repair_oneway(SERVER_HOST, host.as_str())
            }
            Link::Held => self.sim.release(SERVER_HOST, host.as_str()),
        }
        self.links[tab] = Link::Healthy;
        self.trace.record(format!("heal t{tab}"));
    }

    /// Power off: the disk refuses everything from now on, then the host dies.
    fn cut_power(&mut self) {
        if let Some(disk) = self.server.borrow().disk.clone() {
            disk.power_off();
        }
        self.sim.crash(SERVER_HOST);
        self.server_down = true;
        self.trace.record("server crashed");
    }

    fn restart(&mut self) {
        for tab in 0..self.links.len() {
            if self.links[tab] == Link::Cut {
                self.sim.repair(SERVER_HOST, tab_host(tab).as_str());
                self.links[tab] = Link::Healthy;
            }
        }
        self.sim.bounce(SERVER_HOST);
        self.server_down = false;
        self.stopping_noted = false;
        self.model
            .state
            .borrow()
            .server_stopping
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.trace.record("server restarting");
    }

    /// Notices a server that stopped on its own (its storage failed) and restarts it, as a
    /// supervisor would, after a power cycle of its disk (a failed fsync may have dropped the
    /// dirty pages too).
    fn watch_server(&mut self) {
        if self.server_down {
            return;
        }
        if self.model.server_stopping() && !self.stopping_noted {
            self.stopping_noted = true;
            self.trace
                .record("server storage failed: draining connections");
        }
        if self.sim.is_host_running(SERVER_HOST) {
            return;
        }
        let reason = self.server.borrow().stopped.clone().unwrap_or_default();
        self.trace
            .record(format!("server stopped by itself: {reason}"));
        self.cut_power();
        let delay = Duration::from_millis(self.rng.random_range(300..=3000));
        self.later(delay, Action::Restart);
    }

    /// The liveness phase begins: every link healthy, base latency, no armed disk fault, the
    /// server up.
    fn heal_all(&mut self) {
        self.schedule.clear();
        let restart_pending = self.timers.values().any(|a| *a == Action::Restart);
        self.timers.clear();
        for tab in 0..self.links.len() {
            self.heal_link(tab);
            self.sim
                .set_link_latency(SERVER_HOST, tab_host(tab).as_str(), BASE_LATENCY);
        }
        if let Some(disk) = self.server.borrow().disk.clone() {
            disk.disarm();
        }
        if restart_pending || self.server_down {
            self.restart();
        }
        self.trace.record("healed everything");
    }

    /// Ends the run: the server's disk is powered off and the host crashed while the
    /// simulation still exists (dropping it later would close the database outside of it).
    fn shut_down(&mut self) {
        if let Some(disk) = self.server.borrow().disk.clone() {
            disk.power_off();
        }
        self.sim.crash(SERVER_HOST);
    }
}
