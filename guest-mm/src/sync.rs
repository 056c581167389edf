//! A minimal spin lock for state shared before (or beneath) any scheduler.
//!
//! Early memory management has no threads to block on and no allocator to
//! build a queue with, so a busy-waiting lock is the only option. It does
//! not disable interrupts: the guest kernel runs this code at CPL3 and takes
//! no interrupts that re-enter memory management.

use core::cell::UnsafeCell;
use core::hint::spin_loop;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

/// Mutual exclusion by spinning; `const fn new` so it can guard a `static`.
pub struct SpinLock<T: ?Sized> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `T` to one CPU at a time, which only
// requires that `T` may move between CPUs (`Send`), like `std::sync::Mutex`.
unsafe impl<T: ?Sized + Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// An unlocked lock around `value`.
    pub const fn new(value: T) -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// The protected value; no locking needed when the lock is owned.
    pub fn into_inner(self) -> T {
        self.value.into_inner()
    }
}

impl<T: ?Sized> SpinLock<T> {
    /// Spins until the lock is free, then takes it.
    ///
    /// Test-and-test-and-set: waiters spin on a plain load so the cache line
    /// stays shared until the holder releases it, instead of bouncing it
    /// between CPUs with a failed atomic write per iteration.
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        loop {
            if let Some(guard) = self.try_lock() {
                return guard;
            }
            while self.locked.load(Ordering::Relaxed) {
                spin_loop();
            }
        }
    }

    /// Takes the lock if it is free right now.
    pub fn try_lock(&self) -> Option<SpinLockGuard<'_, T>> {
        // Acquire pairs with the Release in `drop`, so the previous holder's
        // writes are visible to us.
        if self.locked.swap(true, Ordering::Acquire) {
            None
        } else {
            Some(SpinLockGuard {
                lock: self,
                _not_send: PhantomData,
            })
        }
    }

    /// Direct access; `&mut self` already proves exclusivity.
    pub fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }
}

/// Proof of holding a [`SpinLock`]; releases it when dropped.
pub struct SpinLockGuard<'a, T: ?Sized> {
    lock: &'a SpinLock<T>,
    /// Opts out of the auto traits: sharing a guard must require `T: Sync`
    /// (see below), which the auto impl via `&SpinLock<T>` would not.
    _not_send: PhantomData<*mut ()>,
}

// SAFETY: a shared guard only yields `&T`, so sharing it across CPUs is
// exactly sharing `&T`, which needs `T: Sync`.
unsafe impl<T: ?Sized + Sync> Sync for SpinLockGuard<'_, T> {}

impl<T: ?Sized> Deref for SpinLockGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while `locked` is held by us, so no
        // other reference to the value is live.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T: ?Sized> DerefMut for SpinLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only access
        // through the guard.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T: ?Sized> Drop for SpinLockGuard<'_, T> {
    fn drop(&mut self) {
        // Release publishes our writes to the next holder's Acquire.
        self.lock.locked.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn excludes_and_releases() {
        let l = SpinLock::new(1);
        let g = l.lock();
        assert!(l.try_lock().is_none());
        drop(g);
        *l.try_lock().unwrap() += 1;
        assert_eq!(l.into_inner(), 2);
    }

    #[test]
    fn static_and_threads() {
        static COUNTER: SpinLock<u64> = SpinLock::new(0);
        let shared = Arc::new(SpinLock::new(Vec::new()));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        // Non-atomic read-modify-write: lost updates would
                        // show if exclusion failed.
                        let mut c = COUNTER.lock();
                        let v = *c;
                        *c = v + 1;
                        drop(c);
                        if i % 1000 == 0 {
                            shared.lock().push(t);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(*COUNTER.lock(), 40_000);
        assert_eq!(shared.lock().len(), 40);
    }
}
