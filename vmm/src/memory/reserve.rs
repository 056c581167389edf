//! Reserving 2 MiB hugetlb pages for a while and giving them back: what the
//! hugetlb tests and `memvisor bench memory` do (as root) instead of asking
//! the operator to.
//!
//! The pool is the host's, and test binaries, their threads and a bench may
//! run at once: everyone who changes or counts on the pool holds an
//! exclusive `flock` on [`LOCK_PATH`] while doing so, so one's give-back
//! never shrinks the pool under another's VM.
use super::backing::{BackingError, HugePool};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

pub const LOCK_PATH: &str = "/tmp/memvisor-hugetlb.lock";
const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error("cannot lock {LOCK_PATH}")]
    Lock(#[source] io::Error),
    #[error(transparent)]
    Pool(#[from] BackingError),
    #[error("cannot write {NR_HUGEPAGES} (reserving hugetlb pages needs root)")]
    Write(#[source] io::Error),
    #[error("asked the kernel for {want} free 2 MiB hugetlb pages and it found {got} (memory too fragmented?)")]
    TooFew { want: u64, got: u64 },
}

/// The pool lock, held until dropped.
pub struct PoolLock {
    _file: File,
}

impl PoolLock {
    /// Waits for the lock.
    pub fn take() -> Result<PoolLock, ReserveError> {
        // flock needs no write access: a user who cannot write a lock file
        // root created still takes the lock.
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_PATH)
            .or_else(|_| File::open(LOCK_PATH))
            .map_err(ReserveError::Lock)?;
        loop {
            // SAFETY: flock on our own open file.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(PoolLock { _file: f });
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(ReserveError::Lock(e));
            }
        }
    }
}

/// At least the pages asked for are available while this lives; dropping
/// it puts `nr_hugepages` back and releases the lock.
pub struct Reservation {
    old: u64,
    _lock: PoolLock,
}

fn write_nr(n: u64) -> Result<(), ReserveError> {
    std::fs::write(NR_HUGEPAGES, n.to_string()).map_err(ReserveError::Write)
}

impl Reservation {
    /// Raises nr_hugepages so that `pages` more can be mapped.
    pub fn pages(pages: u64) -> Result<Reservation, ReserveError> {
        let lock = PoolLock::take()?;
        let pool = HugePool::read()?;
        let short = pages.saturating_sub(pool.available());
        if short > 0 {
            write_nr(pool.total + short)?;
        }
        let r = Reservation {
            old: pool.total,
            _lock: lock,
        };
        let got = HugePool::read()?.available();
        if got < pages {
            return Err(ReserveError::TooFew { want: pages, got });
        }
        Ok(r)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Err(e) = write_nr(self.old) {
            log::warn!("giving back hugetlb pages: {e}");
        }
    }
}
