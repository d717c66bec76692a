//! The event trace of a run: every fault, client action and observation, in simulated-time
//! order, hashed as it is written.
//!
//! The hash is the run's fingerprint: the same seed on the same commit must give the same hash.
//! Only things that are deterministic for a seed go in: simulated times, our own ids and
//! counters, message ids and seqs minted from the seeded server. Socket.IO session ids (random
//! in socketioxide) never do, and sets whose order is not part of the contract (such as
//! `online-users`) are sorted before they are written. The last lines are kept for failure
//! reports; the whole trace only when asked for.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::rc::Rc;

use sha2::{Digest, Sha256};

/// Lines kept for the failure report.
const TAIL_LINES: usize = 60;

struct Log {
    hash: Sha256,
    lines: u64,
    tail: VecDeque<String>,
    full: Option<Vec<String>>,
}

/// A shared handle on the run's trace. Cheap to clone; single-threaded like the simulation.
#[derive(Clone)]
pub struct Trace {
    log: Rc<RefCell<Log>>,
    now_ms: Rc<Cell<u64>>,
}

impl Trace {
    pub fn new(keep_full: bool) -> Self {
        Self {
            log: Rc::new(RefCell::new(Log {
                hash: Sha256::new(),
                lines: 0,
                tail: VecDeque::with_capacity(TAIL_LINES),
                full: keep_full.then(Vec::new),
            })),
            now_ms: Rc::new(Cell::new(0)),
        }
    }

    /// Sets the simulated time stamped on the following lines (the driver, once per step).
    pub fn set_now(&self, ms: u64) {
        self.now_ms.set(ms);
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms.get()
    }

    /// Appends one line.
    pub fn record(&self, event: impl AsRef<str>) {
        let mut line = String::with_capacity(event.as_ref().len() + 12);
        let _ = write!(line, "{:>7} {}", self.now_ms.get(), event.as_ref());
        let mut log = self.log.borrow_mut();
        log.hash.update(line.as_bytes());
        log.hash.update(b"\n");
        log.lines += 1;
        if log.tail.len() == TAIL_LINES {
            log.tail.pop_front();
        }
        log.tail.push_back(line.clone());
        if let Some(full) = &mut log.full {
            full.push(line);
        }
    }

    /// The hash of everything recorded so far, in hex.
    pub fn hash_hex(&self) -> String {
        let digest = self.log.borrow().hash.clone().finalize();
        digest.iter().fold(String::with_capacity(64), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
    }

    pub fn line_count(&self) -> u64 {
        self.log.borrow().lines
    }

    /// The last lines recorded.
    pub fn tail(&self) -> Vec<String> {
        self.log.borrow().tail.iter().cloned().collect()
    }

    /// The whole trace, if it was kept.
    pub fn full(&self) -> Option<Vec<String>> {
        self.log.borrow().full.clone()
    }
}
