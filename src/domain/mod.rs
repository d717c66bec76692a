//! Pure domain logic: no async, no I/O, no clock reads, no OS randomness.
//!
//! Everything here takes the current time and any randomness as arguments, so it can be unit
//! tested, property tested, fuzzed and run inside the deterministic simulation unchanged.

pub mod address;
pub mod contacts;
pub mod ids;
pub mod membership;
pub mod page;
pub mod presence;
pub mod rate;
pub mod reads;
pub mod time;
pub mod typing;
pub mod validate;
