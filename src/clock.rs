//! The clock the server reads, passed in so the simulation can drive time.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch. The server reads time only through this trait.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to, and optionally by a fixed step at every reading (so
/// that consecutive messages get distinct times). For tests, fuzzing and benchmarks.
#[derive(Debug)]
pub struct ManualClock {
    now_ms: std::sync::atomic::AtomicU64,
    step_per_reading_ms: u64,
}

impl ManualClock {
    /// Stands still at `now_ms` until advanced.
    pub fn at(now_ms: u64) -> Self {
        Self::ticking(now_ms, 0)
    }

    /// Starts at `now_ms` and moves `step_ms` on at every reading.
    pub fn ticking(now_ms: u64, step_ms: u64) -> Self {
        Self {
            now_ms: now_ms.into(),
            step_per_reading_ms: step_ms,
        }
    }

    pub fn advance(&self, ms: u64) {
        self.now_ms
            .fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.fetch_add(
            self.step_per_reading_ms,
            std::sync::atomic::Ordering::SeqCst,
        )
    }
}
