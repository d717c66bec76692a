//! Rate limiting with the time passed in: token buckets for sends, sliding windows for typing
//! events and failed logins.
//!
//! Tokens are counted in thousandths so that refill is exact integer arithmetic: no float drift,
//! and the same inputs always give the same answers (the simulation depends on that).

use std::collections::{HashMap, VecDeque};

/// A token bucket: `burst` tokens at most, refilled at `per_sec` tokens per second.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    milli_tokens: u64,
    updated_ms: u64,
}

/// The shape shared by every bucket of one limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketShape {
    pub per_sec: u32,
    pub burst: u32,
}

impl BucketShape {
    fn capacity(self) -> u64 {
        u64::from(self.burst) * 1000
    }
}

impl TokenBucket {
    pub fn full(shape: BucketShape, now_ms: u64) -> Self {
        Self {
            milli_tokens: shape.capacity(),
            updated_ms: now_ms,
        }
    }

    fn refill(&mut self, shape: BucketShape, now_ms: u64) {
        // A clock that steps back (it should not) refills nothing rather than underflowing.
        let elapsed = now_ms.saturating_sub(self.updated_ms);
        let added = elapsed.saturating_mul(u64::from(shape.per_sec));
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(added)
            .min(shape.capacity());
        self.updated_ms = self.updated_ms.max(now_ms);
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, shape: BucketShape, now_ms: u64) -> bool {
        self.refill(shape, now_ms);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }

    /// Takes `n` tokens if there are that many (a budget of bytes: `n` is a size).
    pub fn try_take_many(&mut self, shape: BucketShape, n: u64, now_ms: u64) -> bool {
        self.refill(shape, now_ms);
        let cost = n.saturating_mul(1000);
        if self.milli_tokens >= cost {
            self.milli_tokens -= cost;
            true
        } else {
            false
        }
    }

    /// Returns one token taken for something that turned out to cost nothing, up to the burst.
    pub fn give_back(&mut self, shape: BucketShape) {
        self.milli_tokens = (self.milli_tokens + 1000).min(shape.capacity());
    }

    /// True when the bucket would be full at `now_ms`, so forgetting it changes nothing.
    fn is_full_at(&self, shape: BucketShape, now_ms: u64) -> bool {
        let mut copy = *self;
        copy.refill(shape, now_ms);
        copy.milli_tokens == shape.capacity()
    }
}

/// One token bucket per key (user id), bounded: when `max_keys` is reached, buckets that have
/// refilled completely are forgotten (they are indistinguishable from new ones). If every bucket
/// is still draining, the new key is refused rather than growing the map.
#[derive(Debug)]
pub struct KeyedLimiter {
    shape: BucketShape,
    buckets: HashMap<String, TokenBucket>,
    max_keys: usize,
}

impl KeyedLimiter {
    pub fn new(shape: BucketShape, max_keys: usize) -> Self {
        Self {
            shape,
            buckets: HashMap::new(),
            max_keys,
        }
    }

    pub fn try_take(&mut self, key: &str, now_ms: u64) -> bool {
        if let Some(bucket) = self.buckets.get_mut(key) {
            return bucket.try_take(self.shape, now_ms);
        }
        if self.buckets.len() >= self.max_keys {
            let shape = self.shape;
            self.buckets
                .retain(|_, bucket| !bucket.is_full_at(shape, now_ms));
            if self.buckets.len() >= self.max_keys {
                return false;
            }
        }
        let mut bucket = TokenBucket::full(self.shape, now_ms);
        let taken = bucket.try_take(self.shape, now_ms);
        self.buckets.insert(key.to_owned(), bucket);
        taken
    }

    /// Returns a token [`try_take`](Self::try_take) gave `key` (a forgotten bucket is full
    /// already).
    pub fn give_back(&mut self, key: &str) {
        if let Some(bucket) = self.buckets.get_mut(key) {
            bucket.give_back(self.shape);
        }
    }

    #[cfg(any(test, feature = "testing"))]
    pub fn tracked_keys(&self) -> usize {
        self.buckets.len()
    }
}

/// At most `max_events` within any `window_ms`: remembers the times of the recent events.
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    events: VecDeque<u64>,
    max_events: usize,
    window_ms: u64,
}

impl SlidingWindow {
    pub fn new(max_events: usize, window_ms: u64) -> Self {
        Self {
            events: VecDeque::with_capacity(max_events),
            max_events,
            window_ms,
        }
    }

    fn expire(&mut self, now_ms: u64) {
        while self
            .events
            .front()
            .is_some_and(|&t| now_ms.saturating_sub(t) >= self.window_ms)
        {
            self.events.pop_front();
        }
    }

    /// True when another event is allowed now (without recording it).
    pub fn allows(&mut self, now_ms: u64) -> bool {
        self.expire(now_ms);
        self.events.len() < self.max_events
    }

    /// Records an event if allowed; returns whether it was.
    pub fn try_record(&mut self, now_ms: u64) -> bool {
        let allowed = self.allows(now_ms);
        if allowed {
            self.events.push_back(now_ms);
        }
        allowed
    }

    /// Records an event unconditionally, dropping the oldest beyond the limit (for counting
    /// failures, where the count only needs to reach the limit).
    pub fn record(&mut self, now_ms: u64) {
        self.expire(now_ms);
        if self.events.len() == self.max_events {
            self.events.pop_front();
        }
        self.events.push_back(now_ms);
    }

    /// True when no event is inside the window any more.
    pub fn is_idle(&mut self, now_ms: u64) -> bool {
        self.expire(now_ms);
        self.events.is_empty()
    }
}

/// Failed logins per key (see `domain::address::LoginThrottle`): after `max_failures` within
/// the window, further attempts are refused until the window slides. Bounded by `max_emails`
/// keys; idle windows are dropped first, then the map is cleared (a flood of distinct keys must
/// not grow memory).
#[derive(Debug)]
pub struct FailureThrottle {
    windows: HashMap<String, SlidingWindow>,
    max_failures: usize,
    window_ms: u64,
    max_emails: usize,
}

impl FailureThrottle {
    pub fn new(max_failures: usize, window_ms: u64, max_emails: usize) -> Self {
        Self {
            windows: HashMap::new(),
            max_failures,
            window_ms,
            max_emails,
        }
    }

    pub fn is_blocked(&mut self, key: &str, now_ms: u64) -> bool {
        self.windows.get_mut(key).is_some_and(|w| !w.allows(now_ms))
    }

    pub fn record_failure(&mut self, key: &str, now_ms: u64) {
        if !self.windows.contains_key(key) && self.windows.len() >= self.max_emails {
            self.windows.retain(|_, w| !w.is_idle(now_ms));
            if self.windows.len() >= self.max_emails {
                self.windows.clear();
            }
        }
        let (max, window) = (self.max_failures, self.window_ms);
        self.windows
            .entry(key.to_owned())
            .or_insert_with(|| SlidingWindow::new(max, window))
            .record(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SHAPE: BucketShape = BucketShape {
        per_sec: 10,
        burst: 30,
    };

    #[test]
    fn a_budget_of_many_tokens_refills_at_its_rate() {
        let mut bucket = TokenBucket::full(SHAPE, 0);
        assert!(bucket.try_take_many(SHAPE, 20, 0));
        assert!(!bucket.try_take_many(SHAPE, 11, 0), "10 left");
        assert!(bucket.try_take_many(SHAPE, 10, 0));
        assert!(!bucket.try_take_many(SHAPE, 5, 400), "4 refilled");
        assert!(bucket.try_take_many(SHAPE, 5, 500));
    }

    #[test]
    fn burst_then_steady_rate() {
        let mut bucket = TokenBucket::full(SHAPE, 0);
        assert_eq!((0..40).filter(|_| bucket.try_take(SHAPE, 0)).count(), 30);
        assert!(!bucket.try_take(SHAPE, 99));
        assert!(bucket.try_take(SHAPE, 100));
        assert!(!bucket.try_take(SHAPE, 100));
        // One second refills ten tokens.
        assert_eq!((0..20).filter(|_| bucket.try_take(SHAPE, 1100)).count(), 10);
    }

    #[test]
    fn keyed_limiter_forgets_full_buckets_only() {
        let mut limiter = KeyedLimiter::new(
            BucketShape {
                per_sec: 1,
                burst: 1,
            },
            2,
        );
        assert!(limiter.try_take("a", 0));
        assert!(limiter.try_take("b", 0));
        assert!(
            !limiter.try_take("c", 0),
            "both buckets are draining: refuse, do not grow"
        );
        assert!(
            limiter.try_take("c", 1000),
            "a and b refilled and were forgotten"
        );
        assert!(limiter.tracked_keys() <= 2);
    }

    #[test]
    fn a_token_given_back_can_be_taken_again_but_never_beyond_the_burst() {
        let mut limiter = KeyedLimiter::new(SHAPE, 10);
        assert_eq!((0..40).filter(|_| limiter.try_take("a", 0)).count(), 30);
        limiter.give_back("a");
        assert!(limiter.try_take("a", 0));
        assert!(!limiter.try_take("a", 0));
        // A full bucket stays at the burst; a key never seen is untouched.
        let mut full = TokenBucket::full(SHAPE, 0);
        full.give_back(SHAPE);
        assert_eq!((0..40).filter(|_| full.try_take(SHAPE, 0)).count(), 30);
        limiter.give_back("unknown");
        assert_eq!(limiter.tracked_keys(), 1);
    }

    #[test]
    fn sliding_window_allows_max_per_window() {
        let mut window = SlidingWindow::new(5, 1000);
        assert_eq!((0..20).filter(|_| window.try_record(0)).count(), 5);
        assert!(!window.try_record(999));
        assert!(window.try_record(1000));
    }

    #[test]
    fn login_throttle_blocks_after_ten_failures_for_a_minute() {
        let mut throttle = FailureThrottle::new(10, 60_000, 100);
        for t in 0..10 {
            assert!(!throttle.is_blocked("a@x.io", t));
            throttle.record_failure("a@x.io", t);
        }
        assert!(throttle.is_blocked("a@x.io", 10));
        assert!(!throttle.is_blocked("b@x.io", 10));
        assert!(!throttle.is_blocked("a@x.io", 60_000));
    }

    #[test]
    fn login_throttle_is_bounded() {
        let mut throttle = FailureThrottle::new(10, 60_000, 3);
        for i in 0..10 {
            throttle.record_failure(&format!("{i}@x.io"), 0);
            assert!(throttle.windows.len() <= 3);
        }
    }

    proptest! {
        /// Over any schedule, a bucket never grants more than burst + rate × elapsed seconds.
        #[test]
        fn bucket_never_exceeds_budget(
            per_sec in 1u32..100, burst in 1u32..100,
            steps in prop::collection::vec(0u64..500, 1..300),
        ) {
            let shape = BucketShape { per_sec, burst };
            let mut bucket = TokenBucket::full(shape, 0);
            let (mut now, mut granted) = (0u64, 0u64);
            for step in steps {
                now += step;
                if bucket.try_take(shape, now) { granted += 1; }
                prop_assert!(granted * 1000 <= u64::from(burst) * 1000 + now * u64::from(per_sec));
            }
        }

        #[test]
        fn window_never_exceeds_max(max in 1usize..10, times in prop::collection::vec(0u64..50, 1..200)) {
            let mut window = SlidingWindow::new(max, 100);
            let (mut now, mut granted) = (0u64, Vec::new());
            for step in times {
                now += step;
                if window.try_record(now) { granted.push(now); }
                let recent = granted.iter().filter(|&&t| now - t < 100).count();
                prop_assert!(recent <= max);
            }
        }
    }
}
