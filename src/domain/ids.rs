//! Ids: what a valid one looks like, and how new ones are minted.
//!
//! Ids are opaque to clients but must be URL-safe (`[0-9A-Za-z_-]`, at most 32 characters). Ours
//! look like MongoDB ObjectIds (24 hex digits: 4 bytes of seconds, 8 random bytes), which is what
//! the seed application's clients were used to seeing. The random part comes from a seeded ChaCha
//! generator owned by the caller: the server seeds it from the OS once, the simulation from its seed.

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use crate::limits::ID_CHARS_MAX;

/// True when `s` is an id a client may send us: 1–32 characters of `[0-9A-Za-z_-]`.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= ID_CHARS_MAX
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Mints ids and secrets from a seeded generator.
pub struct IdMinter {
    rng: ChaCha20Rng,
}

impl IdMinter {
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            rng: ChaCha20Rng::from_seed(seed),
        }
    }

    /// A new 24-hex-digit id; ids minted later in time sort after earlier ones.
    pub fn mint(&mut self, now_ms: u64) -> String {
        let secs = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX);
        format!("{secs:08x}{:016x}", self.rng.next_u64())
    }

    /// Fresh random bytes, e.g. a password salt or a token secret.
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        self.rng.fill_bytes(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn minted_ids_are_valid_unique_and_time_ordered() {
        let mut minter = IdMinter::from_seed([7; 32]);
        let a = minter.mint(1_700_000_000_000);
        let b = minter.mint(1_700_000_000_000);
        let c = minter.mint(1_700_000_001_000);
        assert_eq!(a.len(), 24);
        assert!(is_valid_id(&a) && is_valid_id(&b) && is_valid_id(&c));
        assert_ne!(a, b);
        assert!(a[..8] < c[..8]);
    }

    #[test]
    fn same_seed_same_ids() {
        let mut one = IdMinter::from_seed([1; 32]);
        let mut two = IdMinter::from_seed([1; 32]);
        assert_eq!(one.mint(5), two.mint(5));
    }

    #[test]
    fn rejects_unsafe_ids() {
        for bad in [
            "",
            "a/b",
            "a b",
            "é",
            "x".repeat(33).as_str(),
            "../x",
            "a?b",
        ] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
        assert!(is_valid_id(&"x".repeat(32)));
        assert!(is_valid_id("user_ext-123"));
    }

    proptest! {
        #[test]
        fn valid_ids_are_url_path_safe(s in ".{0,40}") {
            if is_valid_id(&s) {
                prop_assert!(s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
                prop_assert!(!s.is_empty() && s.len() <= 32);
            }
        }

        #[test]
        fn minted_ids_always_valid(seed in any::<[u8; 32]>(), now in any::<u64>()) {
            prop_assert!(is_valid_id(&IdMinter::from_seed(seed).mint(now)));
        }
    }
}
