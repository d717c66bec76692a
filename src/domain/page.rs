//! Pagination arithmetic: which `seq` range a history query or a `sync` reads.
//!
//! Messages of a chat are numbered 1..=last_seq with no gaps, so every page is one contiguous
//! range, read from storage as one range scan.

use std::ops::Range;

/// Where a history page is anchored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// The newest `limit` messages.
    Newest,
    /// The `limit` messages just below this seq.
    Before(u64),
    /// The `limit` messages just above this seq.
    After(u64),
}

/// A requested page size clamped into `1..=max`; absent means `default`.
pub fn clamp_limit(requested: Option<u64>, default: u32, max: u32) -> u32 {
    match requested {
        None => default,
        Some(n) => u32::try_from(n).unwrap_or(max).clamp(1, max),
    }
}

/// The seqs to read, ascending, for a chat whose newest message is `last_seq`.
pub fn seq_range(anchor: Anchor, limit: u32, last_seq: u64) -> Range<u64> {
    let limit = u64::from(limit);
    let end = last_seq + 1; // exclusive
    match anchor {
        Anchor::Newest => end.saturating_sub(limit).max(1)..end,
        Anchor::Before(seq) => {
            let hi = seq.min(end).max(1);
            hi.saturating_sub(limit).max(1)..hi
        }
        Anchor::After(seq) => {
            let lo = seq.saturating_add(1).min(end);
            lo..lo.saturating_add(limit).min(end)
        }
    }
}

/// True when messages exist beyond the end of `range` (for `sync`'s `hasMore`).
pub fn has_more_after(range: &Range<u64>, last_seq: u64) -> bool {
    range.end <= last_seq
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert_eq!(seq_range(Anchor::Newest, 100, 250), 151..251);
        assert_eq!(seq_range(Anchor::Newest, 100, 0), 1..1);
        assert_eq!(seq_range(Anchor::Before(151), 100, 250), 51..151);
        assert_eq!(seq_range(Anchor::Before(51), 100, 250), 1..51);
        assert_eq!(seq_range(Anchor::Before(1), 100, 250), 1..1);
        assert_eq!(seq_range(Anchor::Before(1000), 10, 250), 241..251);
        assert_eq!(seq_range(Anchor::After(0), 10, 250), 1..11);
        assert_eq!(seq_range(Anchor::After(245), 10, 250), 246..251);
        assert_eq!(seq_range(Anchor::After(250), 10, 250), 251..251);
        assert_eq!(seq_range(Anchor::After(u64::MAX), 10, 250), 251..251);
    }

    #[test]
    fn limits_clamp() {
        assert_eq!(clamp_limit(None, 100, 500), 100);
        assert_eq!(clamp_limit(Some(0), 100, 500), 1);
        assert_eq!(clamp_limit(Some(10), 100, 500), 10);
        assert_eq!(clamp_limit(Some(501), 100, 500), 500);
        assert_eq!(clamp_limit(Some(u64::MAX), 100, 500), 500);
    }

    proptest! {
        /// Every page lies inside 1..=last_seq, holds at most `limit` seqs, and sits exactly
        /// where its anchor says (the model is a filter over the whole history).
        #[test]
        fn ranges_match_a_filter_over_history(
            last_seq in 0u64..300, limit in 1u32..50, n in 0u64..320, kind in 0u8..3,
        ) {
            let anchor = match kind { 0 => Anchor::Newest, 1 => Anchor::Before(n), _ => Anchor::After(n) };
            let range = seq_range(anchor, limit, last_seq);
            let all: Vec<u64> = (1..=last_seq).collect();
            let expected: Vec<u64> = match anchor {
                Anchor::Newest => all.iter().rev().take(limit as usize).rev().copied().collect(),
                Anchor::Before(b) => {
                    let below: Vec<u64> = all.iter().copied().filter(|&s| s < b).collect();
                    below[below.len().saturating_sub(limit as usize)..].to_vec()
                }
                Anchor::After(a) => all.iter().filter(|&&s| s > a).take(limit as usize).copied().collect(),
            };
            prop_assert_eq!(range.clone().collect::<Vec<_>>(), expected);
            if let Anchor::After(a) = anchor {
                let above = all.iter().filter(|&&s| s > a).count();
                prop_assert_eq!(has_more_after(&range, last_seq), above > limit as usize);
            }
        }
    }
}
