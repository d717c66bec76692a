//! Running many seeds and reporting them: the one-line summary of a run, and for a failure the
//! violated invariants, the command that replays it, and the end of its trace.

use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use crate::minimize::Minimized;
use crate::model::{Invariant, Violation};
use crate::run::{Outcome, Settings, Stats, run_seed_traced};
use crate::trace::Trace;

/// Violations listed in a failure report beyond the first.
const MORE_VIOLATIONS_SHOWN: usize = 8;

/// Runs one seed; a panic anywhere in it becomes a failed outcome rather than ending a sweep.
pub fn run_guarded(settings: &Settings, seed: u64) -> Outcome {
    let trace = Trace::new(settings.keep_trace);
    let traced = trace.clone();
    match catch_unwind(AssertUnwindSafe(|| run_seed_traced(settings, seed, traced))) {
        Ok(outcome) => outcome,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown panic".into());
            Outcome {
                seed,
                trace_hash: "-".into(),
                violations: vec![Violation {
                    invariant: Invariant::Contract,
                    at_ms: 0,
                    detail: format!("the run panicked: {message}"),
                }],
                tail: trace.tail(),
                full_trace: trace.full(),
                schedule: Vec::new(),
                stats: Stats::default(),
            }
        }
    }
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

/// `seed N trace <hash>` plus the run's figures.
pub fn summary_line(outcome: &Outcome) -> String {
    let s = &outcome.stats;
    format!(
        "seed {} trace {} {} ({} sends, {} acked, {} boots, {:.0}s simulated, {:.1}s wall)",
        outcome.seed,
        outcome.trace_hash,
        if outcome.passed() { "ok" } else { "FAILED" },
        s.sends,
        s.acked,
        s.server_boots,
        s.simulated.as_secs_f64(),
        s.wall.as_secs_f64()
    )
}

/// The command line that replays a run with these settings.
pub fn replay_command(settings: &Settings, seed: u64) -> String {
    let defaults = Settings::default();
    let mut command = String::from("cargo run --release -p palaver-sim");
    #[cfg(feature = "sim-faults")]
    if settings.planted.is_some() {
        command.push_str(" --features sim-faults");
    }
    let _ = write!(command, " -- --seed {seed}");
    if settings.clients != defaults.clients {
        let _ = write!(command, " --clients {}", settings.clients);
    }
    if settings.users != defaults.users {
        let _ = write!(command, " --users {}", settings.users);
    }
    if settings.duration != defaults.duration {
        let _ = write!(command, " --duration {}", settings.duration.as_secs());
    }
    if !settings.sync_dir_entries {
        command.push_str(" --no-dir-fsync");
    }
    if let Some(faults) = &settings.faults {
        let list: Vec<String> = faults.iter().map(usize::to_string).collect();
        let _ = write!(command, " --faults {}", list.join(","));
    }
    #[cfg(feature = "sim-faults")]
    if let Some(planted) = settings.planted {
        let _ = write!(command, " --plant {}", crate::planted_name(planted));
    }
    command
}

/// What a failed run prints: the violations, the replay command, the end of the trace.
pub fn failure_report(outcome: &Outcome, settings: &Settings) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "FAILED seed {}", outcome.seed);
    if let Some(first) = outcome.first_violation() {
        let _ = writeln!(
            out,
            "  {} at {}ms: {}",
            first.invariant, first.at_ms, first.detail
        );
    }
    for v in outcome
        .violations
        .iter()
        .skip(1)
        .take(MORE_VIOLATIONS_SHOWN)
    {
        let _ = writeln!(out, "  also {} at {}ms: {}", v.invariant, v.at_ms, v.detail);
    }
    if outcome.violations.len() > MORE_VIOLATIONS_SHOWN + 1 {
        let _ = writeln!(out, "  ... {} violations in all", outcome.violations.len());
    }
    let replay = replay_command(settings, outcome.seed);
    let _ = writeln!(out, "  replay:   {replay}");
    let _ = writeln!(out, "  minimize: {replay} --minimize");
    let _ = writeln!(out, "  trace tail:");
    for line in &outcome.tail {
        let _ = writeln!(out, "    {line}");
    }
    out
}

/// What the minimizer found.
pub fn minimized_report(minimal: &Minimized, settings: &Settings) -> String {
    let mut out = String::new();
    let mut reduced = settings.clone();
    reduced.faults = Some(minimal.kept.iter().map(|s| s.index).collect());
    let _ = writeln!(
        out,
        "minimized: {} of {} faults still fail with {} ({} runs)",
        minimal.kept.len(),
        minimal.original,
        minimal.invariant,
        minimal.runs
    );
    for scheduled in &minimal.kept {
        let _ = writeln!(
            out,
            "  #{:<3} at {:>6}ms  {}",
            scheduled.index,
            scheduled.at.as_millis(),
            scheduled.fault
        );
    }
    let _ = writeln!(out, "  replay: {}", replay_command(&reduced, minimal.seed));
    out
}
