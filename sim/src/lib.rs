//! palaver-sim: a deterministic simulation of the palaver server.
//!
//! The real server (the `palaver` library's `build_app` and `run`, with real redb storage) runs
//! on a turmoil host, on a simulated network and a simulated disk, with a simulated clock.
//! Simulated tabs behave like the real app's over Socket.IO and REST. The same seed replays the
//! same run: each run prints the hash of its event trace.
//!
//! The simulation is split the way a simulator's parts are:
//! - generation (`plan`, with its fault half in `schedule`): a plan of every tab's steps and
//!   every fault, made from the seed before the run, as plain data;
//! - the model (`model`): what the simulation knows was sent, acknowledged and delivered;
//! - the runner (`runner`, with `runner::tab` for a tab and the driver of the phases): executes
//!   a plan on turmoil, with the server host (`server_host`), the simulated disk (`disk`) and
//!   network (`net`), recording into the trace (`trace`);
//! - the oracle (`oracle`): every invariant, checked in that one module, as events happen, at
//!   every server boot and at the end;
//! - the shrinker (`shrink`): removes faults, tabs' steps and single steps from a failing plan
//!   while it still fails the same way;
//! - reporting (`report`): summary lines, failure reports and replay commands.

pub mod disk;
pub mod model;
pub mod net;
pub mod oracle;
pub mod plan;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod server_host;
pub mod shrink;
pub mod trace;

/// Every bug that can be planted, in the order `--plant` lists them.
#[cfg(feature = "sim-faults")]
pub const PLANTED: [palaver::faults::PlantedFault; 8] = {
    use palaver::faults::PlantedFault::*;
    [
        AckBeforeCommit,
        JoinWithoutMembership,
        PresenceWithoutCounting,
        DuplicateFanOut,
        SeqReuseAfterRestart,
        FanOutInWakeOrder,
        FanOutToFormerMembers,
        SilentIntroductions,
    ]
};

/// The name of a planted bug on the command line (`--plant`).
#[cfg(feature = "sim-faults")]
pub fn planted_name(fault: palaver::faults::PlantedFault) -> &'static str {
    use palaver::faults::PlantedFault::*;
    match fault {
        AckBeforeCommit => "ack-before-commit",
        JoinWithoutMembership => "join-without-membership",
        PresenceWithoutCounting => "presence-without-counting",
        DuplicateFanOut => "duplicate-fan-out",
        SeqReuseAfterRestart => "seq-reuse-after-restart",
        FanOutInWakeOrder => "fan-out-in-wake-order",
        FanOutToFormerMembers => "fan-out-to-former-members",
        SilentIntroductions => "silent-introductions",
    }
}

/// The planted bug named `name` (see [`planted_name`]).
#[cfg(feature = "sim-faults")]
pub fn planted_by_name(name: &str) -> Option<palaver::faults::PlantedFault> {
    PLANTED.into_iter().find(|f| planted_name(*f) == name)
}
