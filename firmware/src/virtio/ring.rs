//! Split-virtqueue arithmetic (virtio 1.2 §2.7): where the three areas sit
//! in one contiguous allocation, and the event-index rule that decides
//! whether a ring update must be signalled.
//!
//! Ring indices are free-running u16 counters; a slot is `idx % size` with
//! `size` a power of two, so every comparison below is in wrapping
//! arithmetic. Pure code: also compiled into the VMM's test build to run
//! the tests below on the host (see `cmdline.rs`).

/// Bytes of one descriptor (addr u64, len u32, flags u16, next u16).
pub const DESC_SIZE: usize = 16;
/// Largest queue this driver sets up: 256 descriptors fit the rings in two
/// pages and keep the in-flight bookkeeping small.
pub const MAX_QUEUE_SIZE: u16 = 256;

/// Byte offsets of the descriptor table, driver area (avail ring) and
/// device area (used ring) from the start of the allocation, and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub desc: usize,
    pub avail: usize,
    pub used: usize,
    pub bytes: usize,
}

impl Layout {
    /// `size` descriptors. The spec asks for 16-, 2- and 4-byte alignment;
    /// the used ring starts on its own 64-byte line so that the device's
    /// writes do not share a cache line with the driver's.
    pub const fn new(size: u16) -> Layout {
        let n = size as usize;
        let desc = 0;
        let avail = desc + DESC_SIZE * n;
        // flags, idx, ring[n], used_event
        let avail_len = 2 + 2 + 2 * n + 2;
        let used = (avail + avail_len).next_multiple_of(64);
        // flags, idx, ring[n] of (id u32, len u32), avail_event
        let used_len = 2 + 2 + 8 * n + 2;
        Layout {
            desc,
            avail,
            used,
            bytes: used + used_len,
        }
    }

    /// Offset of `used_event` (the last field of the avail ring).
    pub const fn used_event(&self, size: u16) -> usize {
        self.avail + 4 + 2 * size as usize
    }

    /// Offset of `avail_event` (the last field of the used ring).
    pub const fn avail_event(&self, size: u16) -> usize {
        self.used + 4 + 8 * size as usize
    }
}

/// The queue size to ask for: the largest power of two not above either
/// the device's QueueNumMax or `want`; None if the device offers none.
pub fn queue_size(device_max: u32, want: u16) -> Option<u16> {
    let n = device_max.min(want as u32).min(MAX_QUEUE_SIZE as u32);
    (n > 0).then(|| 1u16 << (31 - n.leading_zeros()))
}

/// `vring_need_event` (§2.7.10): after moving an index from `old` to `new`,
/// must the other side be told, given that it asked to hear once the index
/// passes `event`? True iff `event` lies in [old, new) in wrapping terms.
pub const fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Entries between two free-running indices (`ahead` at or past `behind`).
pub const fn distance(ahead: u16, behind: u16) -> u16 {
    ahead.wrapping_sub(behind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_fits_and_aligns() {
        for size in [1u16, 2, 8, 64, 128, 256] {
            let l = Layout::new(size);
            assert_eq!(l.desc % 16, 0);
            assert_eq!(l.avail % 2, 0);
            assert_eq!(l.used % 4, 0);
            assert!(l.avail >= l.desc + 16 * size as usize);
            assert!(l.used >= l.used_event(size) + 2);
            assert_eq!(l.avail_event(size) + 2, l.bytes);
        }
        assert!(Layout::new(128).bytes <= 4096);
        assert!(Layout::new(256).bytes <= 8192);
    }

    #[test]
    fn queue_size_is_a_power_of_two_within_both_limits() {
        assert_eq!(queue_size(256, 64), Some(64));
        assert_eq!(queue_size(100, 256), Some(64));
        assert_eq!(queue_size(32768, 1024), Some(256));
        assert_eq!(queue_size(1, 8), Some(1));
        assert_eq!(queue_size(0, 8), None);
        assert_eq!(queue_size(8, 0), None);
    }

    #[test]
    fn need_event_matches_the_spec_formula() {
        // The other side asked to hear when the index passes 5.
        assert!(need_event(5, 6, 5));
        assert!(need_event(5, 8, 3));
        assert!(!need_event(5, 5, 3)); // 5 not yet passed
        assert!(!need_event(5, 9, 6)); // passed before this update
        assert!(!need_event(5, 5, 5)); // nothing moved
                                       // Across the u16 wrap.
        assert!(need_event(65535, 1, 65534));
        assert!(need_event(0, 2, 65535));
        assert!(!need_event(3, 2, 65535));
        // Exhaustive against the definition on a small window.
        for old in [0u16, 100, 65530] {
            for step in 0u16..20 {
                let new = old.wrapping_add(step);
                for off in 0u16..24 {
                    let event = old.wrapping_add(off).wrapping_sub(2);
                    let in_window = distance(event, old) < step;
                    assert_eq!(
                        need_event(event, new, old),
                        in_window,
                        "{event} {new} {old}"
                    );
                }
            }
        }
    }

    #[test]
    fn distance_wraps() {
        assert_eq!(distance(3, 65534), 5);
        assert_eq!(distance(7, 7), 0);
    }
}
