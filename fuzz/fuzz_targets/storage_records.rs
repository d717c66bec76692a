//! `storage_records`: arbitrary bytes through every record decoder (`storage::records::decode`
//! for users, chats and messages), as if a page of the database file had been corrupted.
//!
//! Decoding must return an error, never panic, and never allocate more than a fixed ceiling plus
//! a small multiple of the input (a record claiming a billion members must not reserve memory for
//! them): a counting global allocator measures the peak during each decode. What decodes must
//! re-encode to at most as many bytes, and decode again to the same record.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;
use palaver::storage::records::{ChatRecord, MessageRecord, UserRecord, decode, encode};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Live bytes allocated through the global allocator, and the peak since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// serde pre-sizes a sequence from its declared length but caps that at 1 MiB ("cautious" size
/// hints); beyond it, allocation must follow the bytes actually present.
const PREALLOC_CEILING: usize = 1024 * 1024;

fn check<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let decoded = decode::<T>(bytes);
    let peak = PEAK.load(Ordering::Relaxed) - before;
    let bound = PREALLOC_CEILING + 64 * bytes.len() + 4096;
    assert!(
        peak <= bound,
        "decoding {} bytes allocated {peak} bytes at peak (bound {bound})",
        bytes.len()
    );
    if let Ok(record) = decoded {
        let again = encode(&record);
        assert!(again.len() <= bytes.len(), "re-encoding grew the record");
        assert_eq!(decode::<T>(&again).as_ref(), Ok(&record));
    }
}

fuzz_target!(|bytes: &[u8]| {
    check::<UserRecord>(bytes);
    check::<ChatRecord>(bytes);
    check::<MessageRecord>(bytes);
});
