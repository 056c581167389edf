//! One descriptor chain of a balloon queue, read straight from the
//! descriptor table and checked before anything is done with it.
//!
//! Why not virtio-queue's `DescriptorChain` iterator (which the entropy
//! device uses): it ends a looping or over-long chain silently and follows
//! an indirect table we never offered, so the device could neither refuse
//! such a chain nor say why. virtio-queue still pops the heads off the
//! avail ring (wrap-around, event-idx); this file walks from the head.
//!
//! A chain is refused whole, with the first [`Reject`] found, when a `next`
//! runs off the table, an index comes back (a loop, or a chain longer than
//! the queue), a descriptor is indirect, points the wrong way, has a length
//! its queue does not take, lies outside guest RAM, or overlaps another of
//! the chain. Memory is bounded by the queue size: the walker keeps one
//! visited bit and one buffer per descriptor, reused across chains.
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{Reject, BALLOON_PAGE, STAT_ENTRY_SIZE};
use crate::memory::GuestMemory;

const F_NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
const F_WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
const F_INDIRECT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;

/// Most bytes of PFNs one chain may carry: 1 Mi PFNs, 4 GiB of guest
/// memory, so one chain is bounded work for the event loop.
pub const MAX_PFN_BYTES_PER_CHAIN: u64 = 4 << 20;
/// Most stats entries one buffer may carry (Linux sends 10; newer kernels
/// a few more).
pub const MAX_STATS_PER_BUFFER: u32 = 64;

/// What a queue's buffers hold, which fixes their direction and lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// le32 PFNs, device-readable (inflate, deflate).
    Pfns,
    /// 10-byte stats entries, device-readable.
    Stats,
    /// Free ranges given by address and length, device-writable as Linux's
    /// page_reporting adds them (`virtqueue_add_inbuf`), whole 4 KiB pages.
    Ranges,
}

/// One checked buffer: inside guest RAM, of a length its payload takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
}

/// Walks chains; keeps its scratch between them so a pass allocates
/// nothing once warm.
#[derive(Default)]
pub struct ChainWalker {
    visited: Vec<u64>,
    bufs: Vec<Buf>,
    sorted: Vec<Buf>,
}

impl ChainWalker {
    /// Checks the chain at `head` of a queue of `size` descriptors whose
    /// table is at `table`; returns its buffers in chain order.
    pub fn walk(
        &mut self,
        mem: &GuestMemory,
        table: u64,
        size: u16,
        head: u16,
        payload: Payload,
    ) -> Result<&[Buf], Reject> {
        if head >= size {
            return Err(Reject::HeadOutOfRange);
        }
        let words = usize::from(size).div_ceil(64);
        self.visited.clear();
        self.visited.resize(words, 0);
        self.bufs.clear();
        let mut idx = head;
        let mut total: u64 = 0;
        loop {
            let (w, b) = (usize::from(idx) / 64, idx % 64);
            if self.visited[w] & (1 << b) != 0 {
                return Err(Reject::ChainLoop);
            }
            self.visited[w] |= 1 << b;
            // The table was checked to lie in RAM when the queue was made
            // ready; a failed read still refuses rather than trusts.
            let raw: [u8; 16] = mem
                .read_obj(GuestAddress(table + 16 * u64::from(idx)))
                .map_err(|_| Reject::NextOutOfRange)?;
            let addr = u64::from_le_bytes(raw[0..8].try_into().unwrap());
            let len = u32::from_le_bytes(raw[8..12].try_into().unwrap());
            let flags = u16::from_le_bytes([raw[12], raw[13]]);
            let next = u16::from_le_bytes([raw[14], raw[15]]);
            if flags & F_INDIRECT != 0 {
                return Err(Reject::Indirect);
            }
            let writable = flags & F_WRITE != 0;
            if writable != (payload == Payload::Ranges) {
                return Err(Reject::WrongDirection);
            }
            let len_ok = match payload {
                Payload::Pfns => len > 0 && len.is_multiple_of(4),
                Payload::Stats => len > 0 && len.is_multiple_of(STAT_ENTRY_SIZE),
                Payload::Ranges => {
                    len > 0
                        && u64::from(len).is_multiple_of(BALLOON_PAGE)
                        && addr.is_multiple_of(BALLOON_PAGE)
                }
            };
            total += u64::from(len);
            let cap_ok = match payload {
                Payload::Pfns => total <= MAX_PFN_BYTES_PER_CHAIN,
                Payload::Stats => total <= u64::from(MAX_STATS_PER_BUFFER * STAT_ENTRY_SIZE),
                Payload::Ranges => true,
            };
            if !len_ok || !cap_ok {
                return Err(Reject::BadLength);
            }
            if !GuestMemoryBackend::check_range(mem, GuestAddress(addr), len as usize) {
                return Err(Reject::BufferOutsideRam);
            }
            self.bufs.push(Buf { addr, len });
            if flags & F_NEXT == 0 {
                break;
            }
            if next >= size {
                return Err(Reject::NextOutOfRange);
            }
            idx = next;
        }
        self.sorted.clear();
        self.sorted.extend_from_slice(&self.bufs);
        self.sorted.sort_unstable_by_key(|b| b.addr);
        // In RAM, so addr + len cannot overflow.
        if self
            .sorted
            .windows(2)
            .any(|w| w[0].addr + u64::from(w[0].len) > w[1].addr)
        {
            return Err(Reject::Overlap);
        }
        Ok(&self.bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;

    const TABLE: u64 = 0x1000;
    const MEM: u64 = 4 << 20;

    fn put(mem: &GuestMemory, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_obj(raw, GuestAddress(TABLE + 16 * u64::from(i)))
            .unwrap();
    }

    fn walk(mem: &GuestMemory, head: u16, p: Payload) -> Result<Vec<Buf>, Reject> {
        ChainWalker::default()
            .walk(mem, TABLE, 16, head, p)
            .map(<[Buf]>::to_vec)
    }

    fn mem() -> GuestMemory {
        GuestRam::new(MEM).unwrap().memory().clone()
    }

    #[test]
    fn a_good_chain_gives_its_buffers_in_order() {
        let m = mem();
        put(&m, 0, 0x10_0000, 8, F_NEXT, 3);
        put(&m, 3, 0x20_0000, 4, 0, 0);
        assert_eq!(
            walk(&m, 0, Payload::Pfns),
            Ok(vec![
                Buf {
                    addr: 0x10_0000,
                    len: 8
                },
                Buf {
                    addr: 0x20_0000,
                    len: 4
                }
            ])
        );
        put(&m, 5, 0x10_0000, 20, 0, 0);
        assert!(walk(&m, 5, Payload::Stats).is_ok());
        put(&m, 6, 0x20_0000, 0x20_0000, F_WRITE, 0);
        assert!(walk(&m, 6, Payload::Ranges).is_ok());
    }

    #[test]
    fn each_bad_chain_is_refused_with_its_kind() {
        let m = mem();
        assert_eq!(walk(&m, 16, Payload::Pfns), Err(Reject::HeadOutOfRange));
        put(&m, 0, 0x10_0000, 8, F_NEXT, 16);
        assert_eq!(walk(&m, 0, Payload::Pfns), Err(Reject::NextOutOfRange));
        // 0 → 1 → 0
        put(&m, 0, 0x10_0000, 8, F_NEXT, 1);
        put(&m, 1, 0x10_1000, 8, F_NEXT, 0);
        assert_eq!(walk(&m, 0, Payload::Pfns), Err(Reject::ChainLoop));
        // A self-loop.
        put(&m, 2, 0x10_0000, 8, F_NEXT, 2);
        assert_eq!(walk(&m, 2, Payload::Pfns), Err(Reject::ChainLoop));
        put(&m, 0, 0x10_0000, 16, F_INDIRECT, 0);
        assert_eq!(walk(&m, 0, Payload::Pfns), Err(Reject::Indirect));
        put(&m, 0, 0x10_0000, 8, F_WRITE, 0);
        assert_eq!(walk(&m, 0, Payload::Pfns), Err(Reject::WrongDirection));
        assert_eq!(walk(&m, 0, Payload::Stats), Err(Reject::WrongDirection));
        put(&m, 0, 0x20_0000, 0x1000, 0, 0);
        assert_eq!(walk(&m, 0, Payload::Ranges), Err(Reject::WrongDirection));
        for (len, p) in [(6, Payload::Pfns), (0, Payload::Pfns), (12, Payload::Stats)] {
            put(&m, 0, 0x10_0000, len, 0, 0);
            assert_eq!(walk(&m, 0, p), Err(Reject::BadLength), "{len} {p:?}");
        }
        put(&m, 0, 0x20_0000, 0x800, F_WRITE, 0);
        assert_eq!(walk(&m, 0, Payload::Ranges), Err(Reject::BadLength));
        put(&m, 0, 0x20_0800, 0x1000, F_WRITE, 0);
        assert_eq!(walk(&m, 0, Payload::Ranges), Err(Reject::BadLength));
        put(&m, 0, 0x10_0000, (MAX_PFN_BYTES_PER_CHAIN + 4) as u32, 0, 0);
        assert_eq!(walk(&m, 0, Payload::Pfns), Err(Reject::BadLength));
        put(
            &m,
            0,
            0x10_0000,
            STAT_ENTRY_SIZE * (MAX_STATS_PER_BUFFER + 1),
            0,
            0,
        );
        assert_eq!(walk(&m, 0, Payload::Stats), Err(Reject::BadLength));
        for addr in [MEM - 4, MEM, u64::MAX - 3, 3 << 30] {
            put(&m, 0, addr, 8, 0, 0);
            assert_eq!(walk(&m, 0, Payload::Pfns), Err(Reject::BufferOutsideRam));
        }
        put(&m, 0, 0x10_0000, 8, F_NEXT, 1);
        put(&m, 1, 0x10_0004, 8, 0, 0);
        assert_eq!(walk(&m, 0, Payload::Pfns), Err(Reject::Overlap));
        // Adjacent is not overlapping.
        put(&m, 1, 0x10_0008, 8, 0, 0);
        assert!(walk(&m, 0, Payload::Pfns).is_ok());
    }
}
