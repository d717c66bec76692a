//! The server's disk: a redb `StorageBackend` over turmoil's simulated filesystem, with a power
//! switch and injectable I/O errors.
//!
//! turmoil keeps every write pending until `sync_data` and drops pending writes when the host
//! crashes, so a crash loses exactly what redb had not made durable. redb closes the database
//! cleanly when it is dropped (and the tasks holding it are dropped when the host crashes),
//! which a real power cut would never allow; so a power cut first turns the backend off (every
//! later call fails without touching the file), and only then is the host crashed.
//!
//! A disk fault is armed from outside and fires on the next `sync_data`: the sync fails, either
//! before the data reached the disk or after (a failed fsync says nothing about what is
//! durable). From then on the backend refuses all I/O until the server restarts, as a kernel
//! that reported a writeback error would keep doing for that file.

use std::fmt;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use turmoil::fs::shim::std::fs::{File, OpenOptions, create_dir_all, sync_dir};

/// Where the server keeps its database on the simulated disk.
pub const DATA_DIR: &str = "/data";
pub const DB_PATH: &str = "/data/palaver.redb";

/// How an armed disk fault fails the next `sync_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SyncFailure {
    /// The data never reached the disk.
    Lost,
    /// The data reached the disk, but the sync still reports an error.
    Persisted,
}

#[derive(Debug, Default)]
struct SwitchState {
    powered_off: bool,
    armed: Option<SyncFailure>,
    /// A sync failed: every later call fails too.
    failed: bool,
    /// Calls refused so far (for the trace).
    refused: u64,
}

/// The controls of one server boot's disk, shared by the backend and the simulation driver.
#[derive(Debug, Default, Clone)]
pub struct DiskSwitch {
    state: Arc<Mutex<SwitchState>>,
}

impl DiskSwitch {
    /// Cuts the power: the backend refuses every call from now on.
    pub fn power_off(&self) {
        self.lock().powered_off = true;
    }

    /// Makes the next `sync_data` fail in the given way.
    pub fn arm(&self, failure: SyncFailure) {
        self.lock().armed = Some(failure);
    }

    /// Clears a fault that has not fired yet.
    pub fn disarm(&self) {
        self.lock().armed = None;
    }

    /// True once an armed fault has fired.
    pub fn has_failed(&self) -> bool {
        self.lock().failed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SwitchState> {
        self.state.lock().expect("disk switch never poisoned")
    }

    /// Refuses the call if the power is off or the disk has failed, or outside the simulation
    /// (a run that panicked drops its hosts outside of it, and the database with them).
    fn check(&self) -> io::Result<()> {
        if !turmoil::in_simulation() {
            return Err(io::Error::other("outside the simulation"));
        }
        let mut state = self.lock();
        if state.powered_off || state.failed {
            state.refused += 1;
            return Err(io::Error::other(if state.powered_off {
                "simulated power cut"
            } else {
                "simulated disk failure"
            }));
        }
        Ok(())
    }
}

/// The database file of one server boot.
pub struct SimDisk {
    file: File,
    switch: DiskSwitch,
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimDisk")
            .field("switch", &self.switch)
            .finish_non_exhaustive()
    }
}

impl SimDisk {
    /// Opens (creating if needed) the database file the way the server's `open_dir` does: the
    /// data directory, then the file, then (`sync_entries`) an fsync of the directories so that
    /// the new entries survive a power cut. Without that last step a power cut soon after the
    /// first start loses the whole file.
    pub fn open(switch: DiskSwitch, sync_entries: bool) -> io::Result<Self> {
        create_dir_all(DATA_DIR)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .open(DB_PATH)?;
        if sync_entries {
            sync_dir("/")?;
            sync_dir(DATA_DIR)?;
        }
        Ok(Self { file, switch })
    }
}

impl redb::StorageBackend for SimDisk {
    fn len(&self) -> io::Result<u64> {
        self.switch.check()?;
        Ok(self.file.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.switch.check()?;
        let len = self.file.metadata()?.len();
        let end = offset
            .checked_add(out.len() as u64)
            .ok_or_else(|| io::Error::other("read past the end"))?;
        if end > len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read of {}..{end} past the end ({len})", offset),
            ));
        }
        self.file.read_exact_at(out, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.switch.check()?;
        self.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.switch.check()?;
        let armed = self.switch.lock().armed.take();
        match armed {
            None => self.file.sync_data(),
            Some(failure) => {
                if failure == SyncFailure::Persisted {
                    self.file.sync_data()?;
                }
                self.switch.lock().failed = true;
                Err(io::Error::other("simulated fsync failure"))
            }
        }
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.switch.check()?;
        self.file.write_all_at(data, offset)
    }
}
