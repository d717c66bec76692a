//! The fault half of a run's plan: generated from the seed, a list of faults at simulated times
//! in the safety phase. Each fault has an index, so a subset of a schedule can be replayed
//! (`--faults 3,7`) and the shrinker can remove faults from a failing plan.

use std::fmt;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::disk::SyncFailure;

/// Which direction of a client's link a partition cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    Both,
    /// Client → server packets are lost.
    ToServer,
    /// Server → client packets are lost.
    FromServer,
}

/// What a link fault hits: one tab's link, or the links of all of a user's tabs (the user's
/// machine goes offline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    Tab(usize),
    User(usize),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tab(tab) => write!(f, "t{tab}"),
            Target::User(user) => write!(f, "u{user}'s tabs"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// Packets between the target and the server are dropped (one or both ways) for a while.
    Partition {
        target: Target,
        direction: Direction,
        lasts: Duration,
    },
    /// Packets between the target and the server are held, then all delivered at once.
    Hold { target: Target, lasts: Duration },
    /// The target's links to the server get a different latency for a while.
    Latency {
        target: Target,
        latency: Duration,
        lasts: Duration,
    },
    /// A client drops its connection without a goodbye (a killed tab).
    DropClient { tab: usize, back_after: Duration },
    /// A client closes its connection cleanly (a closed tab), and comes back later.
    CloseClient { tab: usize, back_after: Duration },
    /// The server loses power (its disk refuses everything from that instant) and restarts.
    /// A silent cut also partitions it first, so no client hears its connections close.
    PowerCut { silent: bool, down_for: Duration },
    /// The server's next fsync fails; the server stops, and is restarted.
    DiskError { failure: SyncFailure },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: &Duration| d.as_millis();
        match self {
            Fault::Partition {
                target,
                direction,
                lasts,
            } => write!(f, "partition {target} {direction:?} for {}ms", ms(lasts)),
            Fault::Hold { target, lasts } => write!(f, "hold {target} for {}ms", ms(lasts)),
            Fault::Latency {
                target,
                latency,
                lasts,
            } => write!(f, "latency {target} {}ms for {}ms", ms(latency), ms(lasts)),
            Fault::DropClient { tab, back_after } => {
                write!(f, "drop t{tab}, back after {}ms", ms(back_after))
            }
            Fault::CloseClient { tab, back_after } => {
                write!(f, "close t{tab}, back after {}ms", ms(back_after))
            }
            Fault::PowerCut { silent, down_for } => write!(
                f,
                "power cut{} for {}ms",
                if *silent { " (silent)" } else { "" },
                ms(down_for)
            ),
            Fault::DiskError { failure } => write!(f, "disk error ({failure:?})"),
        }
    }
}

/// A fault and when it strikes, counted from the start of the safety phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheduled {
    pub index: usize,
    pub at: Duration,
    pub fault: Fault,
}

/// How many of each fault a run gets.
struct Rates {
    /// Per client per minute of safety phase.
    partitions: f64,
    holds: f64,
    latencies: f64,
    drops: f64,
    closes: f64,
}

const RATES: Rates = Rates {
    partitions: 0.25,
    holds: 0.12,
    latencies: 0.25,
    drops: 0.15,
    closes: 0.15,
};

/// The schedule for a run with `clients` clients of `users` users and a safety phase of
/// `duration`.
pub fn generate(seed: u64, clients: usize, users: usize, duration: Duration) -> Vec<Scheduled> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5c4e_d01e_f417_0000);
    let minutes = duration.as_secs_f64() / 60.0;
    let count = |rate: f64, rng: &mut ChaCha8Rng| -> usize {
        let mean = rate * clients as f64 * minutes;
        // Between half and one and a half times the mean, so runs differ in intensity.
        let low = (mean * 0.5).floor() as usize;
        let high = (mean * 1.5).ceil() as usize;
        rng.random_range(low..=high.max(low))
    };
    let span_ms = duration.as_millis().max(1) as u64;
    let mut faults: Vec<(Duration, Fault)> = Vec::new();
    let at = |rng: &mut ChaCha8Rng| Duration::from_millis(rng.random_range(0..span_ms));
    let ms = |rng: &mut ChaCha8Rng, low: u64, high: u64| {
        Duration::from_millis(rng.random_range(low..=high))
    };

    // Mostly one tab; sometimes every tab of a user, as when their machine goes offline.
    let target = |rng: &mut ChaCha8Rng| {
        if rng.random_bool(0.25) {
            Target::User(rng.random_range(0..users))
        } else {
            Target::Tab(rng.random_range(0..clients))
        }
    };
    for _ in 0..count(RATES.partitions, &mut rng) {
        let target = target(&mut rng);
        let direction = match rng.random_range(0..4) {
            0 => Direction::ToServer,
            1 => Direction::FromServer,
            _ => Direction::Both,
        };
        // Mostly short, sometimes longer than the server's heartbeat (25 s + 20 s).
        let lasts = if rng.random_bool(0.2) {
            ms(&mut rng, 45_000, 70_000)
        } else {
            ms(&mut rng, 500, 15_000)
        };
        let when = at(&mut rng);
        faults.push((
            when,
            Fault::Partition {
                target,
                direction,
                lasts,
            },
        ));
    }
    for _ in 0..count(RATES.holds, &mut rng) {
        let target = target(&mut rng);
        let lasts = ms(&mut rng, 300, 12_000);
        let when = at(&mut rng);
        faults.push((when, Fault::Hold { target, lasts }));
    }
    for _ in 0..count(RATES.latencies, &mut rng) {
        let target = target(&mut rng);
        let latency = ms(&mut rng, 30, 600);
        let lasts = ms(&mut rng, 1_000, 20_000);
        let when = at(&mut rng);
        faults.push((
            when,
            Fault::Latency {
                target,
                latency,
                lasts,
            },
        ));
    }
    for _ in 0..count(RATES.drops, &mut rng) {
        let tab = rng.random_range(0..clients);
        let back_after = ms(&mut rng, 100, 8_000);
        let when = at(&mut rng);
        faults.push((when, Fault::DropClient { tab, back_after }));
    }
    for _ in 0..count(RATES.closes, &mut rng) {
        let tab = rng.random_range(0..clients);
        let back_after = ms(&mut rng, 100, 8_000);
        let when = at(&mut rng);
        faults.push((when, Fault::CloseClient { tab, back_after }));
    }
    let cuts = rng.random_range(2..=4);
    for _ in 0..cuts {
        let silent = rng.random_bool(0.4);
        let down_for = ms(&mut rng, 300, 6_000);
        let when = at(&mut rng);
        faults.push((when, Fault::PowerCut { silent, down_for }));
    }
    let disk_errors = rng.random_range(1..=3);
    for _ in 0..disk_errors {
        let failure = if rng.random_bool(0.5) {
            SyncFailure::Lost
        } else {
            SyncFailure::Persisted
        };
        let when = at(&mut rng);
        faults.push((when, Fault::DiskError { failure }));
    }
    faults.sort_by_key(|(when, _)| *when);
    faults
        .into_iter()
        .enumerate()
        .map(|(index, (at, fault))| Scheduled { index, at, fault })
        .collect()
}
