//! A split virtqueue (virtio 1.2 §2.7) in guest RAM, driver side, with
//! VIRTIO_F_EVENT_IDX.
//!
//! The three areas sit in one block from the page allocator (identity
//! mapped, so the addresses handed to the device are the ones we use).
//! Every exit costs ~70 µs here, so the queue is built around not
//! signalling: buffers are added in batches and published with one index
//! store, [`Virtqueue::publish`] says whether the device asked to be told
//! (its `avail_event`), and [`Virtqueue::interrupt_after`] sets `used_event`
//! so the device interrupts once for a whole batch.
//!
//! Ordering (x86 is TSO, but the compiler is not): descriptors and ring
//! slots are written before the index that publishes them (release fence);
//! the published index is stored before `avail_event` is read, which needs a
//! full fence (a StoreLoad pair, `mfence`); the used index is read before
//! the used elements it covers (acquire fence). All ring fields are
//! accessed with volatile operations because the device writes them.
use super::ring::{self, Layout, MAX_QUEUE_SIZE};
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
/// Avail ring flag (without EVENT_IDX): please do not interrupt.
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag (without EVENT_IDX): no need to notify.
const USED_F_NO_NOTIFY: u16 = 1;

/// One element of a descriptor chain.
#[derive(Clone, Copy)]
pub struct Buffer {
    pub addr: u64,
    pub len: u32,
    /// Device-writable (the device fills it) rather than device-readable.
    pub device_writes: bool,
}

/// A chain the device has finished with.
#[derive(Clone, Copy, Debug)]
pub struct Used {
    /// Head descriptor, as returned by [`Virtqueue::add`].
    pub head: u16,
    /// Bytes the device says it wrote (unchecked: the driver bounds it by
    /// what it offered).
    pub len: u32,
}

/// What the device did wrong in the used ring.
#[derive(Clone, Copy, Debug)]
pub enum UsedError {
    /// A used element named a descriptor that is no chain head in flight.
    BadHead { head: u32 },
    /// The used index moved by more than there are chains in flight.
    TooMany { used_idx: u16, last_used: u16 },
}

pub struct Virtqueue {
    index: u16,
    size: u16,
    base: u64,
    layout: Layout,
    event_idx: bool,
    free_head: u16,
    num_free: u16,
    /// Next avail index to fill (ahead of `published` until `publish`).
    avail_idx: u16,
    published: u16,
    last_used: u16,
    /// Bit per descriptor: heads of chains the device owns.
    in_flight: [u64; MAX_QUEUE_SIZE as usize / 64],
}

impl Virtqueue {
    /// Bytes of guest memory a queue of `size` needs (see [`Virtqueue::new`]).
    pub const fn bytes(size: u16) -> usize {
        Layout::new(size).bytes
    }

    /// # Safety
    /// `base` is the identity-mapped guest-physical address of at least
    /// `bytes(size)` bytes that nothing else uses while the queue lives;
    /// `size` is a power of two, 1..=MAX_QUEUE_SIZE.
    pub unsafe fn new(index: u16, size: u16, base: u64, event_idx: bool) -> Virtqueue {
        debug_assert!(size.is_power_of_two() && size <= MAX_QUEUE_SIZE);
        let layout = Layout::new(size);
        // SAFETY: the caller hands us the whole area.
        unsafe { core::ptr::write_bytes(base as *mut u8, 0, layout.bytes) };
        let q = Virtqueue {
            index,
            size,
            base,
            layout,
            event_idx,
            free_head: 0,
            num_free: size,
            avail_idx: 0,
            published: 0,
            last_used: 0,
            in_flight: [0; MAX_QUEUE_SIZE as usize / 64],
        };
        for i in 0..size {
            q.write_desc(i, 0, 0, 0, i.wrapping_add(1));
        }
        q
    }

    pub fn index(&self) -> u16 {
        self.index
    }
    pub fn size(&self) -> u16 {
        self.size
    }
    #[allow(dead_code)] // for drivers that keep the queue full (balloon)
    pub fn num_free(&self) -> u16 {
        self.num_free
    }
    /// Guest-physical addresses for QueueDesc, QueueDriver, QueueDevice.
    pub fn desc_addr(&self) -> u64 {
        self.base + self.layout.desc as u64
    }
    pub fn avail_addr(&self) -> u64 {
        self.base + self.layout.avail as u64
    }
    pub fn used_addr(&self) -> u64 {
        self.base + self.layout.used as u64
    }

    fn ptr<T>(&self, off: usize) -> *mut T {
        (self.base as usize + off) as *mut T
    }

    fn write_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.layout.desc + ring::DESC_SIZE * i as usize;
        // SAFETY: i < size, inside the area `new` was given.
        unsafe {
            write_volatile(self.ptr::<u64>(d), addr);
            write_volatile(self.ptr::<u32>(d + 8), len);
            write_volatile(self.ptr::<u16>(d + 12), flags);
            write_volatile(self.ptr::<u16>(d + 14), next);
        }
    }

    fn desc_flags_next(&self, i: u16) -> (u16, u16) {
        let d = self.layout.desc + ring::DESC_SIZE * i as usize;
        // SAFETY: as write_desc. The device does not write descriptors.
        unsafe {
            (
                read_volatile(self.ptr::<u16>(d + 12)),
                read_volatile(self.ptr::<u16>(d + 14)),
            )
        }
    }

    fn read_u16(&self, off: usize) -> u16 {
        // SAFETY: offsets come from the layout, inside the area.
        unsafe { read_volatile(self.ptr::<u16>(off)) }
    }

    fn write_u16(&self, off: usize, v: u16) {
        // SAFETY: as read_u16.
        unsafe { write_volatile(self.ptr::<u16>(off), v) }
    }

    /// Adds one chain (not yet visible to the device: see `publish`).
    /// Returns its head, or None if fewer than `bufs.len()` descriptors are
    /// free or `bufs` is empty.
    pub fn add(&mut self, bufs: &[Buffer]) -> Option<u16> {
        let n = u16::try_from(bufs.len()).ok()?;
        if n == 0 || n > self.num_free {
            return None;
        }
        let head = self.free_head;
        let mut i = head;
        for (k, b) in bufs.iter().enumerate() {
            let (_, next) = self.desc_flags_next(i);
            let last = k + 1 == bufs.len();
            let flags = if b.device_writes { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            self.write_desc(i, b.addr, b.len, flags, next);
            if last {
                self.free_head = next;
            } else {
                i = next;
            }
        }
        self.num_free -= n;
        self.in_flight[head as usize / 64] |= 1 << (head % 64);
        let slot = self.layout.avail + 4 + 2 * (self.avail_idx % self.size) as usize;
        self.write_u16(slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Some(head)
    }

    /// Makes every chain added since the last call visible to the device
    /// and says whether it must be notified (QueueNotify): with EVENT_IDX,
    /// only if the new index passed the device's `avail_event`.
    pub fn publish(&mut self) -> bool {
        let (old, new) = (self.published, self.avail_idx);
        if old == new {
            return false;
        }
        fence(Ordering::Release);
        self.write_u16(self.layout.avail + 2, new);
        self.published = new;
        // The index store must be visible before the device's request is read.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let event = self.read_u16(self.layout.avail_event(self.size));
            ring::need_event(event, new, old)
        } else {
            self.read_u16(self.layout.used) & USED_F_NO_NOTIFY == 0
        }
    }

    /// Hands the chains added since the last publish to a caller that
    /// stores the index itself (`workload=dirty`, inside a window where no
    /// other store may happen): the release fence is made here; returns
    /// the address of the avail index and the value to store there. Always
    /// notify after the store: the device's `avail_event` is not consulted.
    pub fn publish_by_hand(&mut self) -> (u64, u16) {
        fence(Ordering::Release);
        self.published = self.avail_idx;
        (self.base + self.layout.avail as u64 + 2, self.avail_idx)
    }

    /// Where the device stores the used index, and the value it will have
    /// once every chain published so far is used.
    pub fn used_idx_when_done(&self) -> (u64, u16) {
        (self.base + self.layout.used as u64 + 2, self.published)
    }

    /// Guest-physical address of used element `n` chains from now.
    pub fn used_elem_addr(&self, n: u16) -> u64 {
        let slot = self.last_used.wrapping_add(n) % self.size;
        self.base + (self.layout.used + 4 + 8 * slot as usize) as u64
    }

    /// Chains the device still holds.
    pub fn in_flight(&self) -> u16 {
        ring::distance(self.published, self.last_used)
    }

    /// Asks for one interrupt once `n` more chains (n >= 1) have been used;
    /// n = 0 asks for none (without EVENT_IDX: none / every one).
    pub fn interrupt_after(&mut self, n: u16) {
        if self.event_idx {
            // With n = 0, an event index just behind the last one used is
            // passed again only after 2^16 completions.
            let event = self.last_used.wrapping_add(n).wrapping_sub(1);
            self.write_u16(self.layout.used_event(self.size), event);
        } else {
            let flags = if n == 0 { AVAIL_F_NO_INTERRUPT } else { 0 };
            self.write_u16(self.layout.avail, flags);
        }
        // The request must be visible before the used index is read again.
        fence(Ordering::SeqCst);
    }

    /// The next chain the device has finished with, its descriptors freed.
    pub fn pop_used(&mut self) -> Result<Option<Used>, UsedError> {
        let used_idx = self.read_u16(self.layout.used + 2);
        if used_idx == self.last_used {
            return Ok(None);
        }
        if ring::distance(used_idx, self.last_used) > self.in_flight() {
            return Err(UsedError::TooMany {
                used_idx,
                last_used: self.last_used,
            });
        }
        // The elements are read only after the index that covers them.
        fence(Ordering::Acquire);
        let e = self.layout.used + 4 + 8 * (self.last_used % self.size) as usize;
        // SAFETY: inside the used ring.
        let (id, len) = unsafe {
            (
                read_volatile(self.ptr::<u32>(e)),
                read_volatile(self.ptr::<u32>(e + 4)),
            )
        };
        let head = u16::try_from(id)
            .ok()
            .filter(|&h| h < self.size && self.in_flight[h as usize / 64] & (1 << (h % 64)) != 0)
            .ok_or(UsedError::BadHead { head: id })?;
        self.in_flight[head as usize / 64] &= !(1 << (head % 64));
        self.last_used = self.last_used.wrapping_add(1);
        // Return the chain to the free list.
        let mut i = head;
        let mut n = 1;
        loop {
            let (flags, next) = self.desc_flags_next(i);
            if flags & F_NEXT == 0 || n == self.size {
                self.write_desc(i, 0, 0, 0, self.free_head);
                break;
            }
            i = next % self.size;
            n += 1;
        }
        self.free_head = head;
        self.num_free += n;
        Ok(Some(Used { head, len }))
    }
}

/// Host tests (run by the VMM's test build, which compiles this file with
/// `ring.rs` next to it): the driver side against a small device model over
/// the same memory, including index wrap-around and a hostile device.
#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(4096))]
    struct Area([u8; 8192]);

    /// The device side of one queue, written from the spec.
    struct Device {
        base: usize,
        size: u16,
        layout: Layout,
        last_avail: u16,
        used_idx: u16,
    }

    impl Device {
        fn new(q: &Virtqueue) -> Device {
            Device {
                base: q.base as usize,
                size: q.size,
                layout: q.layout,
                last_avail: 0,
                used_idx: 0,
            }
        }
        fn r16(&self, off: usize) -> u16 {
            unsafe { read_volatile((self.base + off) as *const u16) }
        }
        fn w16(&self, off: usize, v: u16) {
            unsafe { write_volatile((self.base + off) as *mut u16, v) }
        }
        fn w32(&self, off: usize, v: u32) {
            unsafe { write_volatile((self.base + off) as *mut u32, v) }
        }
        /// (addr, len, flags) of each descriptor of the chain at `head`.
        fn chain(&self, head: u16) -> Vec<(u64, u32, u16)> {
            let mut out = Vec::new();
            let mut i = head;
            loop {
                let d = self.base + self.layout.desc + 16 * i as usize;
                let (addr, len, flags, next) = unsafe {
                    (
                        read_volatile(d as *const u64),
                        read_volatile((d + 8) as *const u32),
                        read_volatile((d + 12) as *const u16),
                        read_volatile((d + 14) as *const u16),
                    )
                };
                out.push((addr, len, flags));
                if flags & F_NEXT == 0 {
                    return out;
                }
                assert!(out.len() <= self.size as usize, "descriptor loop");
                i = next;
            }
        }
        /// Uses up to `max` available chains, each with length `len`;
        /// publishes avail_event = what it has seen. Returns the chains.
        fn serve(&mut self, max: usize, len: u32) -> Vec<Vec<(u64, u32, u16)>> {
            let avail_idx = self.r16(self.layout.avail + 2);
            let mut served = Vec::new();
            while self.last_avail != avail_idx && served.len() < max {
                let slot = self.layout.avail + 4 + 2 * (self.last_avail % self.size) as usize;
                let head = self.r16(slot);
                served.push(self.chain(head));
                let e = self.layout.used + 4 + 8 * (self.used_idx % self.size) as usize;
                self.w32(e, head as u32);
                self.w32(e + 4, len);
                self.used_idx = self.used_idx.wrapping_add(1);
                self.last_avail = self.last_avail.wrapping_add(1);
            }
            self.w16(self.layout.used + 2, self.used_idx);
            self.w16(self.layout.avail_event(self.size), self.last_avail);
            served
        }
        fn used_event(&self) -> u16 {
            self.r16(self.layout.used_event(self.size))
        }
    }

    fn queue(area: &mut Area, size: u16, event_idx: bool) -> Virtqueue {
        assert!(Virtqueue::bytes(size) <= area.0.len());
        // SAFETY: the area outlives the queue in every test.
        unsafe { Virtqueue::new(0, size, area.0.as_mut_ptr() as u64, event_idx) }
    }

    fn w(addr: u64, len: u32) -> Buffer {
        Buffer {
            addr,
            len,
            device_writes: true,
        }
    }

    #[test]
    fn chains_go_round_trip_and_descriptors_come_back() {
        let mut area = Box::new(Area([0; 8192]));
        let mut q = queue(&mut area, 8, true);
        let mut dev = Device::new(&q);
        let r = Buffer {
            addr: 0x1000,
            len: 16,
            device_writes: false,
        };
        let h1 = q.add(&[r, w(0x2000, 100), w(0x3000, 200)]).unwrap();
        let h2 = q.add(&[w(0x4000, 4096)]).unwrap();
        assert_eq!(q.num_free(), 4);
        assert!(q.add(&[w(0, 1); 5]).is_none(), "only 4 free");
        assert!(q.add(&[]).is_none());
        assert!(q.publish(), "first publish passes avail_event 0");
        assert!(!q.publish(), "nothing new");
        let served = dev.serve(8, 7);
        assert_eq!(
            served[0],
            vec![
                (0x1000, 16, F_NEXT),
                (0x2000, 100, F_NEXT | F_WRITE),
                (0x3000, 200, F_WRITE)
            ]
        );
        assert_eq!(served[1], vec![(0x4000, 4096, F_WRITE)]);
        let u1 = q.pop_used().unwrap().unwrap();
        let u2 = q.pop_used().unwrap().unwrap();
        assert_eq!((u1.head, u1.len, u2.head, u2.len), (h1, 7, h2, 7));
        assert!(q.pop_used().unwrap().is_none());
        assert_eq!(q.num_free(), 8);
        assert_eq!(q.in_flight(), 0);
    }

    #[test]
    fn event_idx_notifies_only_when_the_device_asked() {
        let mut area = Box::new(Area([0; 8192]));
        let mut q = queue(&mut area, 16, true);
        let mut dev = Device::new(&q);
        q.add(&[w(0x1000, 8)]).unwrap();
        assert!(q.publish());
        // The device has not looked yet (avail_event still 0): adding more
        // needs no second notification.
        q.add(&[w(0x1000, 8)]).unwrap();
        assert!(!q.publish());
        dev.serve(16, 8); // sees both, asks to hear about index 2 onwards
        q.add(&[w(0x1000, 8)]).unwrap();
        assert!(q.publish());
        // Without EVENT_IDX, only the used ring's NO_NOTIFY flag counts.
        let mut area2 = Box::new(Area([0; 8192]));
        let mut q2 = queue(&mut area2, 16, false);
        let dev2 = Device::new(&q2);
        q2.add(&[w(0x1000, 8)]).unwrap();
        assert!(q2.publish());
        dev2.w16(dev2.layout.used, USED_F_NO_NOTIFY);
        q2.add(&[w(0x1000, 8)]).unwrap();
        assert!(!q2.publish());
    }

    #[test]
    fn used_event_asks_for_one_interrupt_per_batch() {
        let mut area = Box::new(Area([0; 8192]));
        let mut q = queue(&mut area, 16, true);
        let mut dev = Device::new(&q);
        q.interrupt_after(8);
        assert_eq!(dev.used_event(), 7);
        for _ in 0..8 {
            q.add(&[w(0x1000, 8)]).unwrap();
        }
        q.publish();
        let old = dev.used_idx;
        dev.serve(3, 8);
        assert!(!ring::need_event(dev.used_event(), dev.used_idx, old));
        let old = dev.used_idx;
        dev.serve(8, 8);
        assert!(ring::need_event(dev.used_event(), dev.used_idx, old));
        while q.pop_used().unwrap().is_some() {}
        q.interrupt_after(0);
        assert_eq!(dev.used_event(), 7, "n = 0: just behind the last used");
    }

    #[test]
    fn indices_wrap_and_no_descriptor_leaks() {
        let mut area = Box::new(Area([0; 8192]));
        let mut q = queue(&mut area, 8, true);
        let mut dev = Device::new(&q);
        let mut popped = 0u32;
        // 70,000 chains of 1-3 descriptors: the u16 indices wrap.
        for i in 0..70_000u32 {
            let n = 1 + (i % 3) as usize;
            while q.num_free() < n as u16 {
                q.publish();
                dev.serve(2, 1);
                while let Some(u) = q.pop_used().unwrap() {
                    assert!(u.head < 8);
                    popped += 1;
                }
            }
            let bufs: Vec<Buffer> = (0..n).map(|k| w(0x1000 * (k as u64 + 1), i)).collect();
            q.add(&bufs).unwrap();
            if i % 5 == 0 {
                q.publish();
            }
        }
        q.publish();
        dev.serve(usize::MAX, 1);
        while q.pop_used().unwrap().is_some() {
            popped += 1;
        }
        assert_eq!(popped, 70_000);
        assert_eq!(q.num_free(), 8);
        assert_eq!(q.in_flight(), 0);
    }

    #[test]
    fn a_hostile_used_ring_is_refused() {
        let mut area = Box::new(Area([0; 8192]));
        let mut q = queue(&mut area, 8, true);
        let mut dev = Device::new(&q);
        let h = q.add(&[w(0x1000, 8)]).unwrap();
        q.publish();
        // The used index runs ahead of what is in flight.
        dev.w16(dev.layout.used + 2, 2);
        assert!(matches!(
            q.pop_used(),
            Err(UsedError::TooMany {
                used_idx: 2,
                last_used: 0
            })
        ));
        // An id out of range, then one not in flight.
        let e = dev.layout.used + 4;
        dev.w16(dev.layout.used + 2, 1);
        dev.w32(e, 999);
        assert!(matches!(
            q.pop_used(),
            Err(UsedError::BadHead { head: 999 })
        ));
        dev.w32(e, (h + 1) as u32);
        assert!(matches!(q.pop_used(), Err(UsedError::BadHead { .. })));
        // The honest answer still works.
        dev.used_idx = 0;
        dev.last_avail = 0;
        dev.serve(1, 8);
        assert_eq!(q.pop_used().unwrap().unwrap().head, h);
    }
}
