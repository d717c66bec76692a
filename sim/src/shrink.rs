//! The shrinker: turns a failing plan into a smaller one that still fails with the same
//! invariant. It removes faults, then whole tabs' steps, then single steps, each by chunks
//! (halves, then quarters, down to single items), keeping every removal after which the run
//! still fails that way, within a budget of runs.
//!
//! Timing changes as soon as anything is removed, so the smaller plan is a lead to the cause,
//! not a proof that each remaining fault and step is needed.

use crate::model::Invariant;
use crate::plan::Plan;
use crate::runner::{Outcome, Settings, run_plan_guarded};
use crate::schedule::Scheduled;

/// Runs the shrinker may make.
const RUNS_MAX: usize = 100;

/// What the shrinker found.
pub struct Shrunk {
    pub seed: u64,
    pub invariant: Invariant,
    /// The plan it started from.
    pub original: Plan,
    /// The smallest plan found that still fails with `invariant`.
    pub plan: Plan,
    pub runs: usize,
}

/// Shrinks `plan`, which failed as `failing` when run with `seed` and `settings`; `log` hears
/// of every removal kept.
pub fn shrink(
    settings: &Settings,
    seed: u64,
    plan: &Plan,
    failing: &Outcome,
    mut log: impl FnMut(&str),
) -> Shrunk {
    let invariant = failing
        .first_violation()
        .map_or(Invariant::Contract, |v| v.invariant);
    let mut trial = settings.clone();
    trial.keep_trace = false;
    trial.keep_deliveries = false;
    let mut runs = 0;
    let mut still_fails = |candidate: &Plan| -> bool {
        runs += 1;
        run_plan_guarded(&trial, seed, candidate)
            .violated()
            .contains(&invariant)
    };
    let mut budget = Budget { left: RUNS_MAX };

    let faults = remove_chunks(
        plan.faults.clone(),
        |kept| Plan {
            faults: kept.to_vec(),
            ..plan.clone()
        },
        &mut still_fails,
        &mut budget,
        &mut |removed: &[Scheduled]| {
            let indices: Vec<usize> = removed.iter().map(|s| s.index).collect();
            log(&format!("without faults {indices:?}: still fails"));
        },
    );
    let base = Plan {
        faults,
        ..plan.clone()
    };

    let busy: Vec<usize> = (0..base.tabs.len())
        .filter(|&t| !base.tabs[t].steps.is_empty())
        .collect();
    let quiet_all_but = |kept: &[usize]| {
        let mut candidate = base.clone();
        for (t, tab) in candidate.tabs.iter_mut().enumerate() {
            if !kept.contains(&t) {
                tab.steps.clear();
            }
        }
        candidate
    };
    let busy = remove_chunks(
        busy,
        quiet_all_but,
        &mut still_fails,
        &mut budget,
        &mut |removed: &[usize]| {
            log(&format!(
                "without the steps of tabs {removed:?}: still fails"
            ))
        },
    );
    let base = quiet_all_but(&busy);

    let steps: Vec<(usize, usize)> = base
        .tabs
        .iter()
        .enumerate()
        .flat_map(|(t, tab)| (0..tab.steps.len()).map(move |i| (t, i)))
        .collect();
    let keep_steps = |kept: &[(usize, usize)]| {
        let mut candidate = base.clone();
        for (t, tab) in candidate.tabs.iter_mut().enumerate() {
            let mut i = 0;
            tab.steps.retain(|_| {
                let keep = kept.contains(&(t, i));
                i += 1;
                keep
            });
        }
        candidate
    };
    let steps = remove_chunks(
        steps,
        keep_steps,
        &mut still_fails,
        &mut budget,
        &mut |removed: &[(usize, usize)]| {
            log(&format!("without {} steps: still fails", removed.len()));
        },
    );
    if budget.left == 0 {
        log(&format!("stopped after {RUNS_MAX} runs"));
    }
    Shrunk {
        seed,
        invariant,
        original: plan.clone(),
        plan: keep_steps(&steps),
        runs,
    }
}

struct Budget {
    left: usize,
}

/// Removes chunks of `items` (halves, then quarters, down to single items) as long as the plan
/// built from what is left still fails; returns what is left.
fn remove_chunks<T: Clone>(
    mut items: Vec<T>,
    build: impl Fn(&[T]) -> Plan,
    still_fails: &mut impl FnMut(&Plan) -> bool,
    budget: &mut Budget,
    kept_removal: &mut impl FnMut(&[T]),
) -> Vec<T> {
    let mut chunk = items.len().div_ceil(2).max(1);
    loop {
        let mut start = 0;
        while start < items.len() {
            if budget.left == 0 {
                return items;
            }
            budget.left -= 1;
            let end = (start + chunk).min(items.len());
            let candidate: Vec<T> = items[..start]
                .iter()
                .chain(&items[end..])
                .cloned()
                .collect();
            if still_fails(&build(&candidate)) {
                kept_removal(&items[start..end]);
                items = candidate;
            } else {
                start = end;
            }
        }
        if chunk == 1 {
            return items;
        }
        chunk = chunk.div_ceil(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Shape, generate};
    use std::time::Duration;

    /// The chunk removal on its own: with "fails while items 3 and 7 are left" it must end
    /// with exactly those two.
    #[test]
    fn chunks_shrink_to_what_the_failure_needs() {
        let plan = generate(
            1,
            Shape {
                users: 2,
                clients: 2,
                duration: Duration::from_secs(1),
            },
        );
        let items: Vec<usize> = (0..20).collect();
        let mut budget = Budget { left: 1000 };
        let left = remove_chunks(
            items,
            |kept| {
                let mut candidate = plan.clone();
                candidate.users = kept.iter().filter(|&&i| i == 3 || i == 7).count();
                candidate
            },
            &mut |candidate: &Plan| candidate.users == 2,
            &mut budget,
            &mut |_: &[usize]| {},
        );
        assert_eq!(left, vec![3, 7]);
    }
}
