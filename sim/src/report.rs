//! Reporting runs: the one-line summary of a run, for a failure the violated invariants, the
//! command that replays it and the end of its trace, and what the shrinker found.

use std::fmt::Write as _;
use std::path::Path;

use crate::runner::{Outcome, Settings};
use crate::shrink::Shrunk;

/// Violations listed in a failure report beyond the first.
const MORE_VIOLATIONS_SHOWN: usize = 8;

/// `seed N trace <hash>` plus the run's figures.
pub fn summary_line(outcome: &Outcome) -> String {
    let s = &outcome.stats;
    format!(
        "seed {} trace {} {} (scope {}, {} sends, {} acked, {} boots, {:.0}s simulated, {:.1}s wall)",
        outcome.seed,
        outcome.trace_hash,
        if outcome.passed() { "ok" } else { "FAILED" },
        outcome.presence_scope,
        s.sends,
        s.acked,
        s.server_boots,
        s.simulated.as_secs_f64(),
        s.wall.as_secs_f64()
    )
}

/// The command line that replays a run with these settings (and the plan in `plan_file`, when
/// the run's plan came from one).
pub fn replay_command(settings: &Settings, seed: u64, plan_file: Option<&Path>) -> String {
    let defaults = Settings::default();
    // From sim/, a workspace of its own; the planted bugs are compiled in by default.
    let mut command = String::from("cargo run --release");
    let _ = write!(command, " -- --seed {seed}");
    if let Some(file) = plan_file {
        let _ = write!(command, " --plan {}", file.display());
    } else {
        if settings.clients != defaults.clients {
            let _ = write!(command, " --clients {}", settings.clients);
        }
        if settings.users != defaults.users {
            let _ = write!(command, " --users {}", settings.users);
        }
    }
    if settings.duration != defaults.duration {
        let _ = write!(command, " --duration {}", settings.duration.as_secs());
    }
    if !settings.sync_dir_entries {
        command.push_str(" --no-dir-fsync");
    }
    if let Some(scope) = settings.presence_scope {
        let _ = write!(command, " --presence-scope {scope}");
    }
    if let (Some(faults), None) = (&settings.faults, plan_file) {
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
pub fn failure_report(outcome: &Outcome, settings: &Settings, plan_file: Option<&Path>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "FAILED seed {} (presence scope {})",
        outcome.seed, outcome.presence_scope
    );
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
    let replay = replay_command(settings, outcome.seed, plan_file);
    let _ = writeln!(out, "  replay:   {replay}");
    let _ = writeln!(out, "  minimize: {replay} --minimize");
    let _ = writeln!(out, "  trace tail:");
    for line in &outcome.tail {
        let _ = writeln!(out, "    {line}");
    }
    out
}

/// What the shrinker found; its plan is in `plan_file`.
pub fn shrunk_report(shrunk: &Shrunk, settings: &Settings, plan_file: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "shrunk: {} of {} faults, {} of {} steps ({} of {} tabs acting) still fail with {} ({} runs)",
        shrunk.plan.faults.len(),
        shrunk.original.faults.len(),
        shrunk.plan.step_count(),
        shrunk.original.step_count(),
        busy_tabs(&shrunk.plan),
        busy_tabs(&shrunk.original),
        shrunk.invariant,
        shrunk.runs
    );
    for scheduled in &shrunk.plan.faults {
        let _ = writeln!(
            out,
            "  #{:<3} at {:>6}ms  {}",
            scheduled.index,
            scheduled.at.as_millis(),
            scheduled.fault
        );
    }
    for (t, tab) in shrunk.plan.tabs.iter().enumerate() {
        for step in &tab.steps {
            let _ = writeln!(
                out,
                "  t{t:<3} after {:>5}ms  {}",
                step.think.as_millis(),
                step.action
            );
        }
    }
    let _ = writeln!(
        out,
        "  replay: {}",
        replay_command(settings, shrunk.seed, Some(plan_file))
    );
    out
}

fn busy_tabs(plan: &crate::plan::Plan) -> usize {
    plan.tabs.iter().filter(|t| !t.steps.is_empty()).count()
}
