//! Proof that the oracle is not vacuous: with each known bug planted in the server (feature
//! `sim-faults`), a sweep of at most 50 seeds must fail, and its first violation must be the
//! invariant that bug breaks.
//!
//! Run with `cargo test --release -p palaver-sim --features sim-faults planted`.

#![cfg(feature = "sim-faults")]

use std::time::Duration;

use palaver::faults::PlantedFault;
use palaver_sim::model::Invariant;
use palaver_sim::plan::PresenceScope;
use palaver_sim::report::failure_report;
use palaver_sim::runner::{Settings, run_guarded};

/// Seeds a planted bug gets to show itself in.
const SEEDS_MAX: u64 = 50;

/// A smaller world than the default sweep's, so that the tests stay quick; every fault
/// kind still occurs in every run.
fn settings(planted: PlantedFault) -> Settings {
    Settings {
        users: 8,
        clients: 20,
        duration: Duration::from_secs(40),
        planted: Some(planted),
        ..Settings::default()
    }
}

/// Sweeps seeds until one fails; its first violation must be `expected`.
fn caught(planted: PlantedFault, expected: Invariant) {
    caught_with(settings(planted), expected);
}

/// Sweeps seeds with `settings` until one fails; its first violation must be `expected`.
fn caught_with(settings: Settings, expected: Invariant) {
    let planted = settings.planted.expect("a planted bug");
    for seed in 0..SEEDS_MAX {
        let outcome = run_guarded(&settings, seed);
        let Some(first) = outcome.first_violation() else {
            continue;
        };
        assert_eq!(
            first.invariant,
            expected,
            "{planted:?} was reported as another invariant:\n{}",
            failure_report(&outcome, &settings, None)
        );
        eprintln!(
            "{planted:?} caught at seed {seed} as {expected}: {}",
            first.detail
        );
        return;
    }
    panic!("{planted:?} went unnoticed in {SEEDS_MAX} seeds");
}

#[test]
fn planted_ack_before_commit_breaks_durability() {
    caught(PlantedFault::AckBeforeCommit, Invariant::Durability);
}

#[test]
fn planted_join_without_membership_breaks_authorization() {
    caught(
        PlantedFault::JoinWithoutMembership,
        Invariant::Authorization,
    );
}

#[test]
fn planted_presence_without_counting_breaks_presence() {
    caught(PlantedFault::PresenceWithoutCounting, Invariant::Presence);
}

#[test]
fn planted_duplicate_fan_out_breaks_exactly_once() {
    caught(PlantedFault::DuplicateFanOut, Invariant::ExactlyOnce);
}

#[test]
fn planted_seq_reuse_after_restart_breaks_seq_order() {
    caught(PlantedFault::SeqReuseAfterRestart, Invariant::SeqContiguous);
}

#[test]
fn planted_fan_out_in_wake_order_breaks_delivery_order() {
    caught(PlantedFault::FanOutInWakeOrder, Invariant::DeliveryOrder);
}

#[test]
fn planted_fan_out_to_former_members_breaks_authorization() {
    caught(
        PlantedFault::FanOutToFormerMembers,
        Invariant::Authorization,
    );
}

/// Only presence scope `contacts` introduces users, and only a group's additions do so during a
/// run (the 1:1 chats are opened before any tab connects), so this one runs the default world,
/// whose groups add users who share no chat yet with some members (the small world's 8 users
/// mostly do already: its first catch is seed 47, the default world's seed 2).
#[test]
fn planted_silent_introductions_break_presence_under_contacts() {
    caught_with(
        Settings {
            presence_scope: Some(PresenceScope::Contacts),
            planted: Some(PlantedFault::SilentIntroductions),
            ..Settings::default()
        },
        Invariant::Presence,
    );
}
