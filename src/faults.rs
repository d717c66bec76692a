//! Planted bugs, compiled only with the `sim-faults` feature, so that the simulation (`sim/`) can
//! prove its oracle is not vacuous: each planted bug must be reported with the invariant it
//! breaks.
//!
//! The selector is thread-local rather than a process-wide static: the simulation runs every
//! simulated host of one run on the thread that steps it, and the test harness runs several
//! runs on parallel threads, each with a different bug planted. A build without the feature
//! contains none of this, nor any of the hooks that consult it.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The bugs the simulation knows how to plant, each a defect the seed application had or a
/// plausible regression of the durability design.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlantedFault {
    /// The writer answers a batch before its commit, so a failed commit loses acknowledged
    /// messages.
    AckBeforeCommit,
    /// `join-chat` joins any chat's room, member or not.
    JoinWithoutMembership,
    /// Presence marks a user offline when any one tab closes and online on every connect.
    PresenceWithoutCounting,
    /// `new-message` goes to the chat room and to each member's room in separate emits, so a
    /// socket in both gets it twice.
    DuplicateFanOut,
    /// After a restart, the first message appended to each chat reuses the chat's last seq.
    SeqReuseAfterRestart,
    /// Each sender's task fans its own message out after the group commit, in whatever order
    /// the tasks wake, instead of the commit feed delivering in commit order.
    FanOutInWakeOrder,
    /// A chat's messages (its system messages included) are fanned out to everyone who was ever
    /// a member of it, as if from a member list copied before the removals: a removed member
    /// keeps receiving the chat.
    FanOutToFormerMembers,
    /// With presence scoped to contacts, two users who first share a chat become contacts but
    /// are not announced to each other: an observer hears of its new contact only at the
    /// contact's next transition (its first `user-offline`, unmatched by any `user-online`).
    SilentIntroductions,
}

thread_local! {
    static PLANTED: Cell<Option<PlantedFault>> = const { Cell::new(None) };
    /// Chats the current writer has appended to since it started (for `SeqReuseAfterRestart`).
    static APPENDED_SINCE_START: RefCell<HashSet<String>> = RefCell::new(HashSet::new());
    /// Per chat, everyone the fan-out has seen as a member (for `FanOutToFormerMembers`).
    static FORMER_MEMBERS: RefCell<HashMap<String, Vec<String>>> = RefCell::new(HashMap::new());
}

/// Plants `fault` (or none) for everything that runs on this thread from now on.
pub fn plant(fault: Option<PlantedFault>) {
    PLANTED.with(|p| p.set(fault));
    FORMER_MEMBERS.with(|f| f.borrow_mut().clear());
}

/// True when `fault` is planted on this thread.
pub fn is_planted(fault: PlantedFault) -> bool {
    PLANTED.with(|p| p.get()) == Some(fault)
}

/// Called when a storage writer starts (every server start).
pub fn writer_started() {
    APPENDED_SINCE_START.with(|s| s.borrow_mut().clear());
}

/// With `SeqReuseAfterRestart` planted: true for the first append to `chat` since the writer
/// started when the chat already has messages, i.e. when the bug should reuse its last seq.
pub fn reuse_seq(chat: &str, last_seq: u64) -> bool {
    if !is_planted(PlantedFault::SeqReuseAfterRestart) {
        return false;
    }
    let first = APPENDED_SINCE_START.with(|s| s.borrow_mut().insert(chat.to_owned()));
    first && last_seq > 0
}

/// With `FanOutToFormerMembers` planted: the members to fan a message of `chat` out to become
/// everyone seen as a member of it so far, removed members included. Otherwise `members`.
pub fn former_members(chat: &str, members: Arc<[String]>) -> Arc<[String]> {
    if !is_planted(PlantedFault::FanOutToFormerMembers) {
        return members;
    }
    FORMER_MEMBERS.with(|f| {
        let mut former = f.borrow_mut();
        let seen = former.entry(chat.to_owned()).or_default();
        for member in members.iter() {
            if !seen.contains(member) {
                seen.push(member.clone());
            }
        }
        Arc::from(seen.as_slice())
    })
}
