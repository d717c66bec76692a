//! The driver of one run: steps the simulation, applies the plan's faults when they are due,
//! restarts a server that stopped, and moves the run through its phases. The bounds of the
//! phases (setup, settling, the audit) are reported to the oracle when they do not hold.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use palaver::limits::{PRESENCE_GRACE_DEFAULT, PRESENCE_TICK_DEFAULT};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use turmoil::Sim;

use crate::model::{Invariant, Model, Phase};
use crate::net::SERVER_HOST;
use crate::oracle;
use crate::schedule::{Direction, Fault, Scheduled, Target};
use crate::server_host::ServerState;
use crate::trace::Trace;

use super::tab::{Command, TabControl};

/// Latency of every link when no fault changes it.
pub(super) const BASE_LATENCY: Duration = Duration::from_millis(8);
/// Setup (registering, opening chats) must finish within this much simulated time.
const SETUP_MAX: Duration = Duration::from_secs(120);
/// After the clients settle, the run waits this long before the audit: for the last events in
/// flight to arrive, and for the presence of users who left to end (the server's offline grace
/// period and the tick that announces it; the model expects a user online exactly while they
/// hold a connection).
const QUIET: Duration = Duration::from_millis(
    3_000 + PRESENCE_GRACE_DEFAULT.as_millis() as u64 + PRESENCE_TICK_DEFAULT.as_millis() as u64,
);
/// The liveness bound: every client must have settled this long after healing.
const LIVENESS_MAX: Duration = Duration::from_secs(120);
const AUDIT_MAX: Duration = Duration::from_secs(60);

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
enum Timer {
    /// Heal these tabs' links.
    Heal(Vec<usize>),
    /// Give these tabs' links the base latency again.
    EndLatency(Vec<usize>),
    Restart,
}

pub(super) fn tab_host(tab: usize) -> String {
    format!("t{tab}")
}

pub(super) struct Driver<'a> {
    sim: Sim<'a>,
    model: Model,
    trace: Trace,
    controls: Vec<Rc<TabControl>>,
    server: Rc<RefCell<ServerState>>,
    schedule: VecDeque<Scheduled>,
    timers: BTreeMap<(u64, u64), Timer>,
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

impl<'a> Driver<'a> {
    /// A driver for `sim`, whose tabs it reaches through `controls`; `rng` draws its own
    /// delays (restarting a server that stopped by itself).
    pub(super) fn new(
        sim: Sim<'a>,
        model: Model,
        controls: Vec<Rc<TabControl>>,
        server: Rc<RefCell<ServerState>>,
        faults: Vec<Scheduled>,
        users: usize,
        rng: ChaCha8Rng,
    ) -> Self {
        Self {
            trace: model.trace.clone(),
            links: vec![Link::Healthy; controls.len()],
            sim,
            model,
            controls,
            server,
            schedule: faults.into(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            users,
            rng,
            server_down: false,
            stopping_noted: false,
            safety_start_ms: 0,
            heal_ms: 0,
            settled_ms: None,
            audit_start_ms: 0,
        }
    }

    /// Simulated time so far.
    pub(super) fn elapsed(&self) -> Duration {
        self.sim.elapsed()
    }

    /// Server boots so far.
    pub(super) fn server_boots(&self) -> u32 {
        self.server.borrow().boots
    }

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

    fn later(&mut self, after: Duration, timer: Timer) {
        let at = self.now_ms() + u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq), timer);
    }

    pub(super) fn run(&mut self, duration: Duration) {
        let duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
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
                        oracle::on_bound_exceeded(
                            &self.model,
                            Invariant::Contract,
                            "setup did not finish in time".into(),
                        );
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
                        oracle::on_bound_exceeded(&self.model, invariant, detail);
                        self.audit_start_ms = now;
                        self.set_phase(Phase::Audit);
                    }
                }
                Phase::Audit => {
                    let done = self.model.state.borrow().tabs.iter().all(|t| t.audited);
                    if done {
                        self.set_phase(Phase::Done);
                    } else if now - self.audit_start_ms >= AUDIT_MAX.as_millis() as u64 {
                        oracle::on_bound_exceeded(
                            &self.model,
                            Invariant::Convergence,
                            "the audit did not finish in time".into(),
                        );
                        self.set_phase(Phase::Done);
                    }
                }
                Phase::Done => {}
            }
            match self.sim.step() {
                Ok(true) => return,
                Ok(false) => {}
                Err(error) => {
                    oracle::on_bound_exceeded(
                        &self.model,
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
                self.later(*lasts, Timer::Heal(tabs));
                applied
            }
            Fault::Hold { target, lasts } => {
                let tabs = self.healthy_tabs(*target);
                for &tab in &tabs {
                    self.sim.hold(SERVER_HOST, tab_host(tab).as_str());
                    self.links[tab] = Link::Held;
                }
                let applied = !tabs.is_empty();
                self.later(*lasts, Timer::Heal(tabs));
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
                self.later(*lasts, Timer::EndLatency(tabs));
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
                    self.later(*down_for, Timer::Restart);
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

    fn act(&mut self, timer: Timer) {
        match timer {
            Timer::Heal(tabs) => {
                for tab in tabs {
                    self.heal_link(tab);
                }
            }
            Timer::EndLatency(tabs) => {
                for tab in tabs {
                    self.sim
                        .set_link_latency(SERVER_HOST, tab_host(tab).as_str(), BASE_LATENCY);
                }
            }
            Timer::Restart => self.restart(),
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
        self.later(delay, Timer::Restart);
    }

    /// The liveness phase begins: every link healthy, base latency, no armed disk fault, the
    /// server up.
    fn heal_all(&mut self) {
        self.schedule.clear();
        let restart_pending = self.timers.values().any(|a| *a == Timer::Restart);
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
    pub(super) fn shut_down(&mut self) {
        if let Some(disk) = self.server.borrow().disk.clone() {
            disk.power_off();
        }
        self.sim.crash(SERVER_HOST);
    }
}
