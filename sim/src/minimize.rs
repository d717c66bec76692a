//! The minimizer: shrinks the fault schedule of a failing seed to a smaller one that still
//! fails with the same invariant, by removing chunks of faults (halves, then quarters, down to
//! single faults) and keeping every removal after which the run still fails that way.
//!
//! The clients' own behaviour comes from the seed and does not change, but their timing does
//! once faults are removed, so the smaller schedule is a lead to the cause, not a proof that
//! each remaining fault is needed.

use crate::model::Invariant;
use crate::report::run_guarded;
use crate::run::{Outcome, Settings};
use crate::schedule::Scheduled;

/// Runs the minimizer may make.
const RUNS_MAX: usize = 64;

pub struct Minimized {
    pub seed: u64,
    pub invariant: Invariant,
    /// Faults in the schedule it started from.
    pub original: usize,
    pub kept: Vec<Scheduled>,
    pub runs: usize,
}

/// Shrinks the schedule of `failing` (a run of `settings`).
pub fn minimize(settings: &Settings, failing: &Outcome, mut log: impl FnMut(&str)) -> Minimized {
    let invariant = failing
        .first_violation()
        .map_or(Invariant::Contract, |v| v.invariant);
    let mut kept: Vec<Scheduled> = failing
        .schedule
        .iter()
        .filter(|s| {
            settings
                .faults
                .as_ref()
                .is_none_or(|keep| keep.contains(&s.index))
        })
        .cloned()
        .collect();
    let original = kept.len();
    let mut runs = 0;
    let still_fails = |subset: &[Scheduled], runs: &mut usize| -> bool {
        *runs += 1;
        let mut trial = settings.clone();
        trial.faults = Some(subset.iter().map(|s| s.index).collect());
        trial.keep_trace = false;
        run_guarded(&trial, failing.seed)
            .violated()
            .contains(&invariant)
    };
    let mut chunk = kept.len().div_ceil(2).max(1);
    'shrinking: loop {
        let mut start = 0;
        while start < kept.len() {
            if runs >= RUNS_MAX {
                log(&format!("stopped after {RUNS_MAX} runs"));
                break 'shrinking;
            }
            let end = (start + chunk).min(kept.len());
            let candidate: Vec<Scheduled> =
                kept[..start].iter().chain(&kept[end..]).cloned().collect();
            if still_fails(&candidate, &mut runs) {
                log(&format!(
                    "without faults {:?}: still fails ({} left)",
                    kept[start..end].iter().map(|s| s.index).collect::<Vec<_>>(),
                    candidate.len()
                ));
                kept = candidate;
            } else {
                start = end;
            }
        }
        if chunk == 1 {
            break;
        }
        chunk = chunk.div_ceil(2);
    }
    Minimized {
        seed: failing.seed,
        invariant,
        original,
        kept,
        runs,
    }
}
