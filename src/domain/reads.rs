//! Read state: how far a member has read a chat, and how many messages they have not read.
//!
//! A member's position is the seq they have read up to (`lastReadSeq`). It only moves forward,
//! never past the chat's last seq, and it moves to the seq of every message the member sends
//! (their own messages count as read) and of the system message that adds them (a new member
//! starts with nothing unread, though they can read the whole history). So a member's unread
//! messages are exactly the non-system messages above their position.
//!
//! That count is kept, not scanned for (Mattermost's `total_msg_count - msg_count`): the chat
//! counts its system messages as they are committed (each system message remembers how many
//! there are up to and including it), so the non-system messages up to any seq are that seq
//! minus the system messages up to it. A position remembers that count as of its seq
//! ([`ReadPosition::counted`]), and unread is the chat's count now minus the position's.

/// How far a member has read a chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadPosition {
    /// The seq read up to; 0 before anything was read.
    pub seq: u64,
    /// The non-system messages with a seq at or below `seq`.
    pub counted: u64,
}

/// The non-system messages at or below `seq`, given the system messages at or below it.
pub fn counted_through(seq: u64, systems_through: u64) -> u64 {
    seq.saturating_sub(systems_through)
}

/// The seq a request to mark `requested` read moves `current` to: forward only and capped at the
/// chat's `last_seq`; `None` when the position stays where it is.
pub fn advance(current: ReadPosition, requested: u64, last_seq: u64) -> Option<u64> {
    let target = requested.min(last_seq);
    (target > current.seq).then_some(target)
}

/// The messages a member at `position` has not read, when the chat holds `counted_total`
/// non-system messages.
pub fn unread(counted_total: u64, position: ReadPosition) -> u64 {
    counted_total.saturating_sub(position.counted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashMap};

    #[test]
    fn positions_move_forward_only_and_stop_at_the_last_seq() {
        let at = |seq| ReadPosition { seq, counted: seq };
        assert_eq!(advance(at(0), 5, 10), Some(5));
        assert_eq!(advance(at(5), 3, 10), None, "backwards is a no-op");
        assert_eq!(advance(at(5), 5, 10), None);
        assert_eq!(advance(at(5), 99, 10), Some(10), "capped at the last seq");
        assert_eq!(advance(at(10), 99, 10), None);
    }

    #[test]
    fn unread_leaves_out_system_messages() {
        // seqs 1, 2 messages, 3 system, 4 message: 3 counted in all.
        let total = counted_through(4, 1);
        assert_eq!(total, 3);
        let read_to_two = ReadPosition {
            seq: 2,
            counted: counted_through(2, 0),
        };
        assert_eq!(unread(total, read_to_two), 1);
        assert_eq!(unread(total, ReadPosition::default()), 3);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Send(usize),
        /// A membership change of the user (a system message; an add also moves the added
        /// user's position to it).
        Change(usize, bool),
        MarkRead(usize, u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0usize..4).prop_map(Step::Send),
            1 => (0usize..4, any::<bool>()).prop_map(|(u, add)| Step::Change(u, add)),
            3 => (0usize..4, 0u64..40).prop_map(|(u, seq)| Step::MarkRead(u, seq)),
        ]
    }

    /// What the server keeps: the system messages' running count by seq and each position.
    #[derive(Default)]
    struct Kept {
        last_seq: u64,
        systems: BTreeMap<u64, u64>,
        positions: HashMap<usize, ReadPosition>,
    }

    impl Kept {
        fn systems_through(&self, seq: u64) -> u64 {
            self.systems
                .range(..=seq)
                .next_back()
                .map_or(0, |(_, n)| *n)
        }

        fn move_to(&mut self, user: usize, requested: u64) {
            let current = self.positions.get(&user).copied().unwrap_or_default();
            if let Some(seq) = advance(current, requested, self.last_seq) {
                let counted = counted_through(seq, self.systems_through(seq));
                self.positions.insert(user, ReadPosition { seq, counted });
            }
        }

        fn unread(&self, user: usize) -> u64 {
            let total = counted_through(self.last_seq, self.systems_through(self.last_seq));
            unread(
                total,
                self.positions.get(&user).copied().unwrap_or_default(),
            )
        }
    }

    proptest! {
        /// The kept counts equal the brute-force count: non-system messages above the user's
        /// last read seq that the user did not send.
        #[test]
        fn kept_unread_counts_equal_the_brute_force_count(steps in prop::collection::vec(step(), 0..120)) {
            let mut kept = Kept::default();
            // (sender, system) by seq - 1
            let mut history: Vec<(usize, bool)> = Vec::new();
            for step in steps {
                match step {
                    Step::Send(user) => {
                        history.push((user, false));
                        kept.last_seq += 1;
                        kept.move_to(user, kept.last_seq);
                    }
                    Step::Change(user, add) => {
                        history.push((user, true));
                        kept.last_seq += 1;
                        let total = kept.systems_through(kept.last_seq) + 1;
                        kept.systems.insert(kept.last_seq, total);
                        if add {
                            kept.move_to(user, kept.last_seq);
                        }
                    }
                    Step::MarkRead(user, seq) => {
                        let before = kept.positions.get(&user).map_or(0, |p| p.seq);
                        kept.move_to(user, seq);
                        let after = kept.positions.get(&user).map_or(0, |p| p.seq);
                        prop_assert!(after >= before, "read state is monotonic");
                        prop_assert!(after <= kept.last_seq);
                    }
                }
                for user in 0..4 {
                    let read = kept.positions.get(&user).map_or(0, |p| p.seq);
                    let brute = history
                        .iter()
                        .enumerate()
                        .filter(|(i, (sender, system))| {
                            *i as u64 + 1 > read && !system && *sender != user
                        })
                        .count() as u64;
                    prop_assert_eq!(kept.unread(user), brute, "user {}", user);
                }
            }
        }
    }
}
