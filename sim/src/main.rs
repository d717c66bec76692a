//! `palaver-sim`: runs one seed or sweeps a range of seeds, prints each run's trace hash, and
//! on failure the violated invariant, the command that replays it and the end of the trace.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use palaver_sim::plan::Plan;
use palaver_sim::report;
use palaver_sim::runner::{self, Outcome, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "palaver-sim",
    about = "Deterministic simulation of the palaver server"
)]
struct Cli {
    /// Run this one seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Sweep seeds A..B (B excluded); exits non-zero if any fails.
    #[arg(long, value_parser = parse_range)]
    seeds: Option<(u64, u64)>,
    /// Simulated clients (browser tabs), each on a host of its own.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Users; client i belongs to user i mod users.
    #[arg(long, default_value_t = 16)]
    users: usize,
    /// Simulated seconds of the safety phase (faults); liveness and audit follow.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Replay only these faults of the schedule (indices, as printed), e.g. `--faults 3,7`.
    #[arg(long, value_delimiter = ',', conflicts_with = "plan")]
    faults: Option<Vec<usize>>,
    /// Run this plan (JSON, as `--plan-out` or the shrinker writes it) instead of the one the
    /// seed generates; the seed still drives the network, the server's ids and the tabs' draws.
    #[arg(long, requires = "seed", conflicts_with_all = ["clients", "users"])]
    plan: Option<std::path::PathBuf>,
    /// Write the plan of a single-seed run (with `--minimize`, the shrunk plan) to this file.
    #[arg(long)]
    plan_out: Option<std::path::PathBuf>,
    /// Run seeds on this many threads.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// On failure, shrink the plan (faults, tabs' steps, single steps) to a smaller one that
    /// still fails the same way, and write it to `--plan-out` (or a file in the temp dir).
    #[arg(long)]
    minimize: bool,
    /// Write the whole trace of a single-seed run to this file.
    #[arg(long)]
    trace_out: Option<std::path::PathBuf>,
    /// Print the fault schedule of a single-seed run.
    #[arg(long)]
    show_schedule: bool,
    /// Run the server with this presence scope instead of the one each seed draws (half the
    /// seeds run `all`, half `contacts`).
    #[arg(long, value_enum)]
    presence_scope: Option<palaver_sim::plan::PresenceScope>,
    /// Model a server that does not fsync its data directory after creating the database: the
    /// first power cut loses the whole file.
    #[arg(long)]
    no_dir_fsync: bool,
    /// Plant a known bug in the server (built with `--features sim-faults`): ack-before-commit,
    /// join-without-membership, presence-without-counting, duplicate-fan-out,
    /// seq-reuse-after-restart, fan-out-in-wake-order, fan-out-to-former-members,
    /// silent-introductions (with `--presence-scope contacts`).
    #[cfg(feature = "sim-faults")]
    #[arg(long, value_parser = parse_planted)]
    plant: Option<palaver::faults::PlantedFault>,
}

#[cfg(feature = "sim-faults")]
fn parse_planted(name: &str) -> Result<palaver::faults::PlantedFault, String> {
    palaver_sim::planted_by_name(name).ok_or_else(|| format!("no planted bug called {name:?}"))
}

/// `println!` that ignores a closed stdout (`palaver-sim … | head`).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let (a, b) = text
        .split_once("..")
        .ok_or_else(|| format!("{text:?} is not a range like 0..100"))?;
    let a: u64 = a.parse().map_err(|_| format!("bad start in {text:?}"))?;
    let b: u64 = b.parse().map_err(|_| format!("bad end in {text:?}"))?;
    if a >= b {
        return Err(format!("{text:?} is empty"));
    }
    Ok((a, b))
}

fn read_plan(path: &std::path::Path) -> Result<Plan, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let plan: Plan = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a plan: {e}", path.display()))?;
    plan.validate()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(plan)
}

fn write_plan(path: &std::path::Path, plan: &Plan) {
    let text = serde_json::to_string_pretty(plan).expect("a plan serializes");
    if let Err(error) = std::fs::write(path, text + "\n") {
        eprintln!("palaver-sim: cannot write {}: {error}", path.display());
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut given_plan = match cli.plan.as_deref().map(read_plan).transpose() {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("palaver-sim: {error}");
            return ExitCode::from(2);
        }
    };
    let mut settings = Settings {
        users: cli.users,
        clients: cli.clients,
        duration: Duration::from_secs(cli.duration),
        faults: cli
            .faults
            .as_ref()
            .map(|f| f.iter().copied().collect::<BTreeSet<_>>()),
        presence_scope: cli.presence_scope,
        keep_trace: cli.trace_out.is_some(),
        sync_dir_entries: !cli.no_dir_fsync,
        #[cfg(feature = "sim-faults")]
        planted: cli.plant,
        ..Settings::default()
    };
    if let (Some(plan), Some(scope)) = (&mut given_plan, cli.presence_scope) {
        plan.presence_scope = scope;
    }
    if let Some(plan) = &given_plan {
        settings.users = plan.users;
        settings.clients = plan.tabs.len();
    }
    if settings.users < 2 || settings.clients < settings.users {
        eprintln!("palaver-sim: need --users >= 2 and --clients >= --users");
        return ExitCode::from(2);
    }
    let seeds: Vec<u64> = match (cli.seed, cli.seeds) {
        (Some(seed), _) => vec![seed],
        (None, Some((a, b))) => (a..b).collect(),
        (None, None) => vec![0],
    };
    let plan_file = cli.plan.as_deref();
    let show = |outcome: &Outcome| {
        say!("{}", report::summary_line(outcome));
        if !outcome.passed() {
            say!("{}", report::failure_report(outcome, &settings, plan_file));
        }
    };
    let started = Instant::now();
    let outcomes = match &given_plan {
        Some(plan) => {
            let outcome = runner::run_plan_guarded(&settings, seeds[0], plan);
            show(&outcome);
            vec![outcome]
        }
        None => runner::sweep(&settings, &seeds, cli.jobs, show),
    };
    if seeds.len() == 1 {
        single_seed_extras(&cli, &settings, given_plan, &outcomes[0]);
    }
    let failed: Vec<u64> = outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| o.seed)
        .collect();
    say!(
        "{} seeds, {} failed{}, {:.1}s",
        outcomes.len(),
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" ({failed:?})")
        },
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What a single-seed run can do besides running: show its faults, write its trace and plan,
/// shrink it.
fn single_seed_extras(cli: &Cli, settings: &Settings, plan: Option<Plan>, outcome: &Outcome) {
    let plan = plan.unwrap_or_else(|| runner::plan_for(settings, outcome.seed));
    if cli.show_schedule {
        for scheduled in &plan.faults {
            say!(
                "  #{:<3} at {:>6}ms  {}",
                scheduled.index,
                scheduled.at.as_millis(),
                scheduled.fault
            );
        }
    }
    if let (Some(path), Some(trace)) = (&cli.trace_out, &outcome.full_trace)
        && let Err(error) = std::fs::write(path, trace.join("\n") + "\n")
    {
        eprintln!("palaver-sim: cannot write {}: {error}", path.display());
    }
    if cli.minimize && !outcome.passed() {
        let shrunk = palaver_sim::shrink::shrink(settings, outcome.seed, &plan, outcome, |line| {
            say!("  shrink: {line}");
        });
        let path = cli.plan_out.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("palaver-sim-seed-{}.plan.json", outcome.seed))
        });
        write_plan(&path, &shrunk.plan);
        say!("{}", report::shrunk_report(&shrunk, settings, &path));
    } else if let Some(path) = &cli.plan_out {
        write_plan(path, &plan);
    }
}
