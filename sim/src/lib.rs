//! palaver-sim: a deterministic simulation of the palaver server.
//!
//! The real server (the `palaver` library's `build_app` and `run`, with real redb storage) runs
//! on a turmoil host, on a simulated network and a simulated disk, with a simulated clock.
//! Simulated clients behave like the real app's tabs over Socket.IO and REST. A seeded
//! schedule injects faults (partitions, held links, latency, dropped clients, power cuts, disk
//! errors) during a safety phase, then heals everything for a liveness phase, and an oracle
//! checks the invariants of the contract. The same seed replays the same run: each run prints
//! the hash of its event trace.
//!
//! Modules in reading order: `model` (what the simulation knows), `trace`, `disk`, `net`,
//! `server_host`.

pub mod disk;
pub mod minimize;
pub mod model;
pub mod net;
pub mod oracle;
pub mod report;
pub mod run;
pub mod schedule;
pub mod server_host;
pub mod tab;
pub mod trace;

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
    }
}

/// The planted bug named `name` (see [`planted_name`]).
#[cfg(feature = "sim-faults")]
pub fn planted_by_name(name: &str) -> Option<palaver::faults::PlantedFault> {
    use palaver::faults::PlantedFault::*;
    [
        AckBeforeCommit,
        JoinWithoutMembership,
        PresenceWithoutCounting,
        DuplicateFanOut,
        SeqReuseAfterRestart,
    ]
    .into_iter()
    .find(|f| planted_name(*f) == name)
}
