//! A seed replays exactly: the same seed run twice in a row gives the same trace hash, and
//! the seeds that found server bugs stay as regression tests.

use std::time::Duration;

use std::collections::BTreeMap;

use palaver_sim::model::{Delivered, Invariant};
use palaver_sim::plan::{
    Action, ChatPair, GroupAction, GroupPlan, Plan, PresenceScope, Step, TabPlan,
};
use palaver_sim::report::failure_report;
use palaver_sim::runner::{Settings, run_guarded, run_plan_guarded};

/// The default world of a sweep, shortened to keep the test quick.
fn settings() -> Settings {
    Settings {
        duration: Duration::from_secs(30),
        ..Settings::default()
    }
}

#[test]
fn same_seed_same_trace_twice_in_a_row() {
    let settings = settings();
    let mut scopes = Vec::new();
    // Seeds 3 and 1,000,003 draw presence scope `all`, seed 4 `contacts`.
    for seed in [3, 4, 1_000_003] {
        let first = run_guarded(&settings, seed);
        let second = run_guarded(&settings, seed);
        scopes.push(first.presence_scope);
        assert!(
            first.passed(),
            "{}",
            failure_report(&first, &settings, None)
        );
        assert!(first.stats.acked > 0, "the run sent nothing");
        assert_eq!(
            first.trace_hash, second.trace_hash,
            "seed {seed} did not replay: {} then {}",
            first.trace_hash, second.trace_hash
        );
    }
    assert_eq!(
        scopes,
        [
            PresenceScope::All,
            PresenceScope::Contacts,
            PresenceScope::All
        ]
    );
}

#[test]
fn different_seeds_different_traces() {
    let settings = settings();
    let a = run_guarded(&settings, 11);
    let b = run_guarded(&settings, 12);
    assert_ne!(a.trace_hash, b.trace_hash);
}

/// Seed 0 guards the data directory's fsync: a server that creates its database file without
/// fsyncing the directory loses the whole file, acknowledged messages included, at the first
/// power cut. The server fsyncs it; `sync_dir_entries: false` (`--no-dir-fsync`) models one
/// that does not, and the run must then fail with durability.
#[test]
fn regression_seed_0_power_cut_after_first_start_keeps_the_database() {
    let fixed = settings();
    let outcome = run_guarded(&fixed, 0);
    assert!(
        outcome.passed(),
        "{}",
        failure_report(&outcome, &fixed, None)
    );
    assert!(
        outcome.stats.server_boots > 1,
        "seed 0 must restart the server"
    );

    let before_the_fix = Settings {
        sync_dir_entries: false,
        ..settings()
    };
    let outcome = run_guarded(&before_the_fix, 0);
    let first = outcome
        .first_violation()
        .expect("the lost database is noticed");
    assert_eq!(first.invariant, Invariant::Durability, "{}", first.detail);
}

/// Seed 141 found it: the handshake middleware joined the socket to the presence room and the
/// `online-users` snapshot came later, so a `user-offline` broadcast in between reached the
/// client before its snapshot. The socket joins the room with its snapshot, under one lock.
/// The test checks that ordering on every connection of the run's recorded events: no
/// presence transition before the connection's snapshot. (Which seed hits the race depends on
/// what the tabs do; seed 141 is kept for the history, and every connection it opens is
/// checked.)
#[test]
fn regression_seed_141_presence_events_follow_the_snapshot() {
    let settings = Settings {
        keep_deliveries: true,
        ..Settings::default()
    };
    let outcome = run_guarded(&settings, 141);
    assert!(
        outcome.passed(),
        "{}",
        failure_report(&outcome, &settings, None)
    );
    let deliveries = outcome.deliveries.expect("kept");
    let mut snapshot_seen: BTreeMap<(usize, u32), bool> = BTreeMap::new();
    let mut transitions = 0;
    for delivery in &deliveries {
        let seen = snapshot_seen
            .entry((delivery.tab, delivery.conn))
            .or_default();
        match &delivery.event {
            Delivered::OnlineUsers(_) => *seen = true,
            Delivered::UserOnline(user) | Delivered::UserOffline(user) => {
                transitions += 1;
                assert!(
                    *seen,
                    "t{}#{} got {:?} for {user} at {}ms before its online-users snapshot",
                    delivery.tab, delivery.conn, delivery.event, delivery.at_ms
                );
            }
            _ => {}
        }
    }
    let connections = snapshot_seen.len();
    assert!(
        connections > 100 && transitions > 100,
        "the run must exercise presence: {connections} connections, {transitions} transitions"
    );
}

/// Seed 309 found it (on the groups sweep): a disk error stops the server, which closes
/// Socket.IO and so removes its namespace; a socket still ending a typing indicator then called
/// `io.to`, which panics without the namespace, and the simulated host died with it. The
/// indicator's end is dropped instead. Seed 309 of the default world must pass, with a restart.
#[test]
fn regression_seed_309_typing_after_socket_io_closed_does_not_panic() {
    let settings = Settings::default();
    let outcome = run_guarded(&settings, 309);
    assert!(
        outcome.passed(),
        "{}",
        failure_report(&outcome, &settings, None)
    );
    assert!(
        outcome.stats.server_boots > 1,
        "seed 309 must restart the server"
    );
}

/// A hand-made world for presence scope `contacts`: users 0..4, 1:1 chats 0-1, 0-3, 1-2, 2-3,
/// and group c4 of u1 (owner), u3 and u0, so that u1 and u3 are contacts only through the
/// group. u3 leaves it; `u1` and `u3` then take the given steps, with no fault.
fn left_contacts_plan(u1_steps: Vec<Step>, u3_steps: Vec<Step>, u3_ends_offline: bool) -> Plan {
    let tab = |user: usize, steps: Vec<Step>, ends_offline: bool| TabPlan {
        user,
        registers: true,
        ends_offline,
        steps,
    };
    Plan {
        users: 4,
        presence_scope: PresenceScope::Contacts,
        chats: [(0, 1), (0, 3), (1, 2), (2, 3)]
            .into_iter()
            .map(|(a, b)| ChatPair { a, b })
            .collect(),
        groups: vec![GroupPlan {
            owner: 1,
            members: vec![3, 0],
            candidates: Vec::new(),
        }],
        tabs: vec![
            tab(0, Vec::new(), false),
            tab(1, u1_steps, false),
            tab(2, Vec::new(), false),
            tab(3, u3_steps, u3_ends_offline),
        ],
        faults: Vec::new(),
    }
}

fn step(think_ms: u64, action: Action) -> Step {
    Step {
        think: Duration::from_millis(think_ms),
        action,
    }
}

fn away(back_after_ms: u64) -> Action {
    Action::Disconnect {
        clean: true,
        back_after: Duration::from_millis(back_after_ms),
    }
}

/// u3 leaves the group (then a turn for the tab's probe of the group it left).
fn leaves(think_ms: u64) -> Vec<Step> {
    vec![
        step(
            think_ms,
            Action::Group {
                group: 0,
                change: GroupAction::Leave,
            },
        ),
        step(500, Action::ListChats),
    ]
}

fn run_left_contacts(plan: &Plan) {
    let settings = Settings {
        users: plan.users,
        clients: plan.tabs.len(),
        duration: Duration::from_secs(40),
        ..Settings::default()
    };
    plan.validate().expect("a valid plan");
    let outcome = run_plan_guarded(&settings, 1, plan);
    assert!(
        outcome.passed(),
        "{}",
        failure_report(&outcome, &settings, None)
    );
}

/// Found by the hand-made plans of presence scope `contacts`: after u3 left the group, u1 went
/// offline (announced) and came back. u1's contacts were loaded anew, without u3, so its new
/// connection's snapshot left u3 out; but u3's contacts still held u1, so u3's `user-offline`
/// reached that connection, which had never been told u3 was online (invariant 8,
/// alternation). A contact ends on both sides when either of the two is announced offline.
#[test]
fn regression_contacts_end_for_both_when_the_one_left_behind_goes_offline() {
    let u1 = vec![step(8000, away(8000))];
    let mut u3 = leaves(5000);
    u3.push(step(15000, away(8000)));
    run_left_contacts(&left_contacts_plan(u1, u3, false));
}

/// The other side of the same bug: after u3 left the group, u3 went offline (announced) and
/// came back, with contacts loaded anew, without u1; but u1's contacts still held u3, so a new
/// connection of u1 listed u3 in its snapshot, and never heard of u3 again: at the audit it
/// sees u3 online, whether u3 closed for good (then u3 is offline) or not (then u3 is no
/// contact any more: u0 heard u3 go offline after the leave).
#[test]
fn regression_contacts_end_for_both_when_the_leaver_goes_offline() {
    for u3_ends_offline in [true, false] {
        let u1 = vec![step(16000, away(1000))];
        let mut u3 = leaves(10000);
        u3.push(step(1000, away(8000)));
        run_left_contacts(&left_contacts_plan(u1, u3, u3_ends_offline));
    }
}

/// A third case of one-sided contacts: u1 connected while u3 was offline, and loaded u3 (a
/// member of its group) as a contact; u1 removed u3 from the group before u3 came back, with
/// contacts loaded without u1. A new connection of u1 listed u3 in its snapshot and never
/// heard u3 go offline for good. A contact list holds connected (or leaving) users only.
#[test]
fn regression_contacts_of_a_member_removed_while_offline_end() {
    let u1 = vec![
        step(
            10000,
            Action::Group {
                group: 0,
                change: GroupAction::Remove { user: 3 },
            },
        ),
        step(5000, away(1000)),
    ];
    let u3 = vec![step(1000, away(20000))];
    run_left_contacts(&left_contacts_plan(u1, u3, true));
}
