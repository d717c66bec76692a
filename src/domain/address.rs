//! Limits per client address: which address a limit counts (an IPv6 client by its /64, since
//! one host holds a whole /64), the login throttle per (address, account) and per address, and
//! a fixed window counting registrations per address.
//!
//! Counting failed logins per account alone let anyone lock a user out by failing on purpose;
//! counted per (address, account), an attacker locks out only themselves, and the per-address
//! count slows one address spraying a password across many accounts.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

use super::rate::FailureThrottle;

/// The address a per-address limit counts: IPv4 as is (an IPv4-mapped IPv6 address as its
/// IPv4), IPv6 by its /64 prefix.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// Failed logins counted per (client address, account) and per client address.
#[derive(Debug)]
pub struct LoginThrottle {
    by_account: FailureThrottle,
    by_address: FailureThrottle,
}

/// The bounds of a [`LoginThrottle`].
#[derive(Debug, Clone, Copy)]
pub struct LoginBounds {
    pub failures_per_account: usize,
    pub failures_per_address: usize,
    pub window_ms: u64,
    pub tracked_keys: usize,
}

impl LoginThrottle {
    pub fn new(bounds: LoginBounds) -> Self {
        Self {
            by_account: FailureThrottle::new(
                bounds.failures_per_account,
                bounds.window_ms,
                bounds.tracked_keys,
            ),
            by_address: FailureThrottle::new(
                bounds.failures_per_address,
                bounds.window_ms,
                bounds.tracked_keys,
            ),
        }
    }

    /// True when a login for `account` from `client` is refused without being tried.
    pub fn is_blocked(&mut self, client: IpAddr, account: &str, now_ms: u64) -> bool {
        let address = address_key(client).to_string();
        self.by_address.is_blocked(&address, now_ms)
            || self
                .by_account
                .is_blocked(&pair_key(&address, account), now_ms)
    }

    pub fn record_failure(&mut self, client: IpAddr, account: &str, now_ms: u64) {
        let address = address_key(client).to_string();
        self.by_account
            .record_failure(&pair_key(&address, account), now_ms);
        self.by_address.record_failure(&address, now_ms);
    }
}

/// An address never contains a space, so the pair key is unambiguous.
fn pair_key(address: &str, account: &str) -> String {
    format!("{address} {account}")
}

/// At most `max_per_window` events per address in each fixed window of `window_ms` (a window
/// starts at an address's first event). Bounded by `max_addresses`: ended windows are dropped
/// first; if every window is still running, the map is cleared, so a flood of addresses costs
/// the limit its memory, never the server its memory.
#[derive(Debug)]
pub struct AddressWindows {
    windows: HashMap<IpAddr, Window>,
    max_per_window: u32,
    window_ms: u64,
    max_addresses: usize,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started_ms: u64,
    count: u32,
}

impl AddressWindows {
    pub fn new(max_per_window: u32, window_ms: u64, max_addresses: usize) -> Self {
        Self {
            windows: HashMap::new(),
            max_per_window,
            window_ms,
            max_addresses,
        }
    }

    /// Counts an event from `client` if its window has room; returns whether it had.
    pub fn try_record(&mut self, client: IpAddr, now_ms: u64) -> bool {
        let key = address_key(client);
        let window_ms = self.window_ms;
        let ended = |w: &Window| now_ms.saturating_sub(w.started_ms) >= window_ms;
        if !self.windows.contains_key(&key) && self.windows.len() >= self.max_addresses {
            self.windows.retain(|_, w| !ended(w));
            if self.windows.len() >= self.max_addresses {
                self.windows.clear();
            }
        }
        let window = self.windows.entry(key).or_insert(Window {
            started_ms: now_ms,
            count: 0,
        });
        if ended(window) {
            *window = Window {
                started_ms: now_ms,
                count: 0,
            };
        }
        if window.count >= self.max_per_window {
            return false;
        }
        window.count += 1;
        true
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.windows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), v4(7));
    }

    const BOUNDS: LoginBounds = LoginBounds {
        failures_per_account: 3,
        failures_per_address: 5,
        window_ms: 1000,
        tracked_keys: 100,
    };

    #[test]
    fn an_attacker_locks_out_only_their_own_address() {
        let mut throttle = LoginThrottle::new(BOUNDS);
        for _ in 0..3 {
            throttle.record_failure(v4(1), "ada@example.com", 0);
        }
        assert!(throttle.is_blocked(v4(1), "ada@example.com", 10));
        assert!(!throttle.is_blocked(v4(2), "ada@example.com", 10));
        assert!(!throttle.is_blocked(v4(1), "bob@example.com", 10));
        assert!(!throttle.is_blocked(v4(1), "ada@example.com", 1000));
    }

    #[test]
    fn spraying_many_accounts_from_one_address_is_slowed() {
        let mut throttle = LoginThrottle::new(BOUNDS);
        for n in 0..5 {
            throttle.record_failure(v4(1), &format!("user{n}@example.com"), 0);
        }
        assert!(throttle.is_blocked(v4(1), "someone-else@example.com", 1));
        assert!(!throttle.is_blocked(v4(2), "someone-else@example.com", 1));
    }

    #[test]
    fn windows_count_per_address_and_restart() {
        let mut windows = AddressWindows::new(2, 1000, 10);
        assert!(windows.try_record(v4(1), 0));
        assert!(windows.try_record(v4(1), 500));
        assert!(!windows.try_record(v4(1), 999));
        assert!(windows.try_record(v4(2), 999));
        assert!(windows.try_record(v4(1), 1000));
    }

    #[test]
    fn windows_stay_bounded() {
        let mut windows = AddressWindows::new(1, 1000, 4);
        for last in 0..50 {
            windows.try_record(v4(last), 0);
            assert!(windows.tracked() <= 4);
        }
        for last in 100..104 {
            assert!(windows.try_record(v4(last), 2000));
        }
        assert_eq!(windows.tracked(), 4, "ended windows were dropped first");
    }
}
