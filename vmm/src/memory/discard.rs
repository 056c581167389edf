//! Giving guest RAM back to the host: one range ([`GuestRam::discard`]) or
//! a balloon pass's worth ([`GuestRam::discard_many`]).
//!
//! Why batch: an aged guest's 4 KiB balloon hands the device tens of
//! thousands of one- or two-page runs per inflate, scattered through every
//! 2 MiB block. One `madvise` each costs a syscall, the mmap lock and a TLB
//! flush per run, and while the vCPU thread runs on another core every
//! flush interrupts it. So anonymous RAM goes through `process_madvise(2)`
//! on our own pidfd, [`IOV_MAX`] ranges a call. A kernel that refuses
//! MADV_DONTNEED there (older ones allow only a few advices), or a seccomp
//! filter that refuses the call, makes us fall back for good to one
//! `madvise` per range, as a lone [`GuestRam::discard`] does. memfd RAM
//! has a hole punched per range: `fallocate` has no vector form.
use super::backing::HostMapping;
use super::{GuestRam, Located, MemoryError};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;
use vm_memory::GuestAddress;

/// Most ranges one `process_madvise` takes (the kernel's UIO_MAXIOV).
pub const IOV_MAX: usize = libc::UIO_MAXIOV as usize;

/// Whether ranges can go to the kernel in batches, found out on first use.
#[derive(Default)]
pub(super) struct Batcher(Mutex<State>);

#[derive(Default)]
enum State {
    #[default]
    Untried,
    /// A pidfd for `pid`: a forked child must not advise its parent.
    Open {
        pid: libc::pid_t,
        fd: OwnedFd,
    },
    Refused,
}

impl Batcher {
    /// Sends `iov` (all in our own mappings) as one MADV_DONTNEED; the
    /// bytes the kernel advised, or None if it cannot batch at all.
    fn advise(&self, iov: &[libc::iovec]) -> Option<io::Result<usize>> {
        let mut st = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let open = match &*st {
            State::Open { pid: p, .. } => *p != pid,
            State::Untried => true,
            State::Refused => false,
        };
        if open {
            // SAFETY: pidfd_open on our own pid; the fd is owned below.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            *st = if fd < 0 {
                State::Refused
            } else {
                // SAFETY: a fresh fd nothing else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
                State::Open { pid, fd }
            };
        }
        let State::Open { fd, .. } = &*st else {
            return None;
        };
        // SAFETY: every iovec lies inside a mapping of ours (the caller
        // located it), and MADV_DONTNEED there is what the guest asked.
        let r = unsafe {
            libc::syscall(
                libc::SYS_process_madvise,
                fd.as_raw_fd(),
                iov.as_ptr(),
                iov.len(),
                libc::MADV_DONTNEED,
                0,
            )
        };
        if r >= 0 {
            return Some(Ok(r as usize));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // No such call, advice not taken there, or filtered: never
            // again in this process.
            Some(libc::ENOSYS | libc::EINVAL | libc::EPERM) => {
                *st = State::Refused;
                None
            }
            _ => Some(Err(e)),
        }
    }

    #[cfg(test)]
    pub(super) fn refuse(&self) {
        *self.0.lock().unwrap() = State::Refused;
    }

    #[cfg(test)]
    fn batching(&self) -> bool {
        matches!(*self.0.lock().unwrap(), State::Open { .. })
    }
}

/// A range located in an anonymous mapping, waiting for its batch.
struct Pending<'a> {
    gpa: u64,
    len: u64,
    at: Located<'a>,
}

impl GuestRam {
    /// Gives the host back the memory of `[gpa, gpa + len)`: the guest
    /// reads zeros there afterwards, and Rss falls by `len`. Anonymous RAM
    /// is dropped with MADV_DONTNEED, memfd RAM has a hole punched in its
    /// file (MADV_DONTNEED would only unmap the shared pages). The range
    /// must lie wholly inside RAM and be aligned to the backing's page
    /// (4 KiB, or 2 MiB for hugetlb); else nothing is done. A range across
    /// regions that follow each other (guest NUMA nodes) is done a region
    /// at a time.
    pub fn discard(&self, gpa: GuestAddress, len: u64) -> Result<(), MemoryError> {
        let mut r = Ok(());
        self.pieces(gpa.0, len, &mut |g, l, at| {
            if r.is_ok() {
                r = one(at.map, at.offset, l).map_err(|e| advice_error(g, l, e));
                if r.is_ok() {
                    self.counters.discarded(l);
                }
            }
        })?;
        r
    }

    /// Calls `f(gpa, len, where)` for each piece of `[gpa, gpa + len)` that
    /// lies in one region: the whole range mostly, but guest NUMA nodes'
    /// regions follow each other with no gap, so a balloon's run of
    /// consecutive pages (or a reported free range) can run from one
    /// node's mapping into the next, and is RAM all the same. The range
    /// is checked whole first (aligned, non-empty, every byte in RAM):
    /// refused, `f` is never called. The cut walk visits each region at
    /// most once, so it is bounded by the regions, not by `len`.
    fn pieces<'a>(
        &'a self,
        gpa: u64,
        len: u64,
        f: &mut dyn FnMut(u64, u64, Located<'a>),
    ) -> Result<(), MemoryError> {
        let align = self.config.backing.page_size();
        let outside = match self.locate(gpa, len, align) {
            Ok(at) => {
                f(gpa, len, at);
                return Ok(());
            }
            Err(e @ MemoryError::OutsideRam { .. }) if len > 0 => e,
            Err(e) => return Err(e),
        };
        let Some(end) = gpa.checked_add(len) else {
            return Err(outside);
        };
        let mut cuts = Vec::new();
        let mut at = gpa;
        while at < end {
            let Some(r) = self
                .regions
                .iter()
                .find(|r| at >= r.guest_base && at - r.guest_base < r.size)
            else {
                return Err(outside);
            };
            let piece_end = end.min(r.guest_base + r.size);
            cuts.push((at, piece_end - at));
            at = piece_end;
        }
        for (g, l) in cuts {
            // Regions start and end on the backing's page, so each piece
            // is aligned and inside its region: located.
            f(g, l, self.locate(g, l, align)?);
        }
        Ok(())
    }

    /// [`Self::discard`] for each of `ranges`, as few system calls as the
    /// host allows; `done(gpa, len, result)` hears of every range once
    /// (a refused one at once, the others as their batch ends), or of
    /// each of its pieces where it runs from one region into the next
    /// (see [`Self::pieces`]). Each range is checked as `discard` checks
    /// it, and a refused one changes nothing.
    pub fn discard_many(
        &self,
        ranges: &[(u64, u64)],
        done: &mut dyn FnMut(u64, u64, Result<(), MemoryError>),
    ) {
        let mut pending: Vec<Pending> = Vec::with_capacity(ranges.len().min(IOV_MAX));
        for &(gpa, len) in ranges {
            let r = self.pieces(gpa, len, &mut |gpa, len, at| {
                if at.map.fd.is_some() {
                    let r = one(at.map, at.offset, len).map_err(|e| advice_error(gpa, len, e));
                    self.finish(gpa, len, r, done);
                    return;
                }
                pending.push(Pending { gpa, len, at });
                if pending.len() == IOV_MAX {
                    self.send(&pending, done);
                    pending.clear();
                }
            });
            if let Err(e) = r {
                done(gpa, len, Err(e));
            }
        }
        self.send(&pending, done);
    }

    /// One batch: what the kernel advised is done; whatever it did not get
    /// to (a refusal, an error part way) goes one range at a time, so each
    /// range gets its own result.
    fn send(&self, batch: &[Pending], done: &mut dyn FnMut(u64, u64, Result<(), MemoryError>)) {
        if batch.is_empty() {
            return;
        }
        let iov: Vec<libc::iovec> = batch
            .iter()
            .map(|p| libc::iovec {
                // SAFETY: `locate` put the offset inside the mapping.
                iov_base: unsafe { p.at.map.addr.add(p.at.offset as usize) }.cast(),
                iov_len: p.len as usize,
            })
            .collect();
        let mut advised = match self.batch.advise(&iov) {
            Some(Ok(bytes)) => bytes as u64,
            Some(Err(_)) | None => 0,
        };
        for p in batch {
            if advised >= p.len {
                advised -= p.len;
                self.finish(p.gpa, p.len, Ok(()), done);
                continue;
            }
            advised = 0;
            // A range the batch advised in part is advised again, which
            // changes nothing more.
            let r = one(p.at.map, p.at.offset, p.len).map_err(|e| advice_error(p.gpa, p.len, e));
            self.finish(p.gpa, p.len, r, done);
        }
    }

    fn finish(
        &self,
        gpa: u64,
        len: u64,
        r: Result<(), MemoryError>,
        done: &mut dyn FnMut(u64, u64, Result<(), MemoryError>),
    ) {
        if r.is_ok() {
            self.counters.discarded(len);
        }
        done(gpa, len, r);
    }
}

/// One range of a mapping, already located and aligned.
fn one(map: &HostMapping, offset: u64, len: u64) -> io::Result<()> {
    let rc = match &map.fd {
        // SAFETY: punching a hole in our own memfd, inside its size.
        Some(fd) => unsafe {
            libc::fallocate(
                fd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        },
        // SAFETY: the range lies inside our own mapping; the guest sees
        // zero pages there afterwards, as it asked.
        None => unsafe {
            libc::madvise(
                map.addr.add(offset as usize).cast(),
                len as usize,
                libc::MADV_DONTNEED,
            )
        },
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn advice_error(gpa: u64, len: u64, source: io::Error) -> MemoryError {
    MemoryError::Advice {
        what: "discard",
        gpa,
        len,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{byte, smaps, touch, MIB};
    use super::super::{backing::tests::pool_free_backings, layout};
    use super::*;

    /// 8 KiB of every 12 KiB, as an aged guest's 4k balloon sends them,
    /// plus ranges that must be refused, in one call: the same outcome
    /// batched and one at a time.
    fn scattered_with_bad(size: u64) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = (0..size / (12 << 10))
            .map(|i| (i * (12 << 10), 8 << 10))
            .collect();
        v.insert(7, (size, 4096)); // past the end
        v.insert(300, (4096, 4095)); // unaligned
        v.push((size - 4096, 8192)); // straddles the end
        v
    }

    fn run(ram: &GuestRam, ranges: &[(u64, u64)]) -> (u64, Vec<(u64, u64)>) {
        let mut ok = 0;
        let mut refused = Vec::new();
        let mut seen = Vec::new();
        ram.discard_many(ranges, &mut |gpa, len, r| {
            seen.push((gpa, len));
            match r {
                Ok(()) => ok += len,
                Err(_) => refused.push((gpa, len)),
            }
        });
        let mut want = ranges.to_vec();
        want.sort_unstable();
        seen.sort_unstable();
        assert_eq!(seen, want, "every range heard of once");
        refused.sort_unstable();
        (ok, refused)
    }

    #[test]
    fn many_ranges_batched_or_not_drop_exactly_them_and_refuse_the_bad() {
        let size = 32 * MIB;
        let ranges = scattered_with_bad(size);
        assert!(ranges.len() > 2 * IOV_MAX, "several batches");
        for batched in [true, false] {
            for cfg in pool_free_backings() {
                let ram = GuestRam::with_backing(size, cfg).unwrap();
                if !batched {
                    ram.batch.refuse();
                }
                touch(&ram, size);
                let before = smaps(&ram).rss;
                let (ok, refused) = run(&ram, &ranges);
                let anon = ram.mappings.iter().all(|m| m.fd.is_none());
                if batched && anon && !ram.batch.batching() {
                    eprintln!("{cfg:?}: this kernel refuses process_madvise(MADV_DONTNEED)");
                }
                assert!(batched || !ram.batch.batching());
                assert_eq!(refused, [(4096, 4095), (size - 4096, 8192), (size, 4096)]);
                let good = (ranges.len() - 3) as u64 * (8 << 10);
                assert_eq!(ok, good, "{cfg:?} batched={batched}");
                assert_eq!(before - smaps(&ram).rss, good, "{cfg:?} batched={batched}");
                assert_eq!(ram.counters.snapshot().discarded_bytes, good);
                for i in [0, 1, 500, size / (12 << 10) - 1] {
                    let at = i * (12 << 10);
                    assert_eq!(byte(&ram, at), 0, "{cfg:?}: {at:#x} discarded");
                    assert_eq!(byte(&ram, at + 4096), 0);
                    assert_eq!(byte(&ram, at + 8192), 0xa5, "{cfg:?}: {at:#x} kept");
                }
            }
        }
    }

    #[test]
    fn ranges_either_side_of_the_mmio_gap_go_in_one_call() {
        // Two regions; a range across the gap is refused, each side done.
        let size = layout::MMIO_GAP_START + 4 * MIB;
        let ram = GuestRam::new(size).unwrap();
        let gap = layout::MMIO_GAP_START;
        let end = layout::MMIO_GAP_END;
        for gpa in [gap - 4096, end] {
            ram.memory().write_obj(0x5au8, GuestAddress(gpa)).unwrap();
        }
        let ranges = [(gap - 4096, 4096), (gap - 4096, 8192), (end, 4096)];
        let (ok, refused) = run(&ram, &ranges);
        assert_eq!((ok, refused), (8192, vec![(gap - 4096, 8192)]));
        assert_eq!(byte(&ram, gap - 4096), 0);
        assert_eq!(byte(&ram, end), 0);
    }

    /// The kernel caps one vector call at MAX_RW_COUNT (2 GiB - 4 KiB),
    /// cutting the iovec it reaches and dropping the rest: it returns
    /// less than asked with no error, and the rest must still go.
    #[test]
    fn a_batch_past_the_kernels_2g_cap_is_finished_one_range_at_a_time() {
        let size = layout::MMIO_GAP_START;
        let ram = GuestRam::new(size).unwrap();
        let (a, b) = (size / 2, size / 2 - 2 * MIB);
        let ends = [0, a - 4096, a, a + b - 4096, a + b];
        for gpa in ends {
            ram.memory().write_obj(0x5au8, GuestAddress(gpa)).unwrap();
        }
        let (ok, refused) = run(&ram, &[(0, a), (a, b)]);
        assert_eq!((ok, refused), (a + b, vec![]));
        for gpa in &ends[..4] {
            assert_eq!(byte(&ram, *gpa), 0, "{gpa:#x}");
        }
        assert_eq!(byte(&ram, a + b), 0x5a);
    }

    /// Guest NUMA nodes' regions follow each other with no gap, so a
    /// balloon run of consecutive pages crosses from one node's mapping
    /// into the next: it is RAM, and must be discarded, not refused.
    #[test]
    fn a_range_across_two_nodes_regions_is_discarded_in_pieces() {
        let node = |size| super::super::numa::NodeRam {
            size,
            host_node: None,
        };
        for cfg in pool_free_backings() {
            let ram = GuestRam::with_nodes(&[node(8 * MIB), node(8 * MIB)], cfg, false).unwrap();
            assert_eq!(ram.regions().len(), 2);
            touch(&ram, 16 * MIB);
            let before = smaps(&ram).rss;
            // 6 MiB, 2 MiB-aligned (hugetlb), across the 8 MiB cut; and a
            // zero-length one, still refused.
            let (ok, refused) = {
                let mut ok = Vec::new();
                let mut refused = Vec::new();
                ram.discard_many(
                    &[(6 * MIB, 6 * MIB), (4 * MIB, 0)],
                    &mut |g, l, r| match r {
                        Ok(()) => ok.push((g, l)),
                        Err(_) => refused.push((g, l)),
                    },
                );
                (ok, refused)
            };
            assert_eq!(ok, [(6 * MIB, 2 * MIB), (8 * MIB, 4 * MIB)], "{cfg:?}");
            assert_eq!(refused, [(4 * MIB, 0)], "{cfg:?}");
            assert_eq!(before - smaps(&ram).rss, 6 * MIB, "{cfg:?}");
            assert_eq!(byte(&ram, 6 * MIB - 4096), 0xa5);
            assert_eq!(byte(&ram, 8 * MIB - 4096), 0, "{cfg:?}");
            assert_eq!(byte(&ram, 8 * MIB), 0, "{cfg:?}");
            assert_eq!(byte(&ram, 12 * MIB), 0xa5);
            // One range, likewise; then past the end of RAM, refused whole.
            touch(&ram, 16 * MIB);
            ram.discard(GuestAddress(6 * MIB), 4 * MIB).unwrap();
            assert_eq!(byte(&ram, 9 * MIB), 0, "{cfg:?}");
            assert!(ram.discard(GuestAddress(6 * MIB), 12 * MIB).is_err());
            assert_eq!(
                byte(&ram, 12 * MIB),
                0xa5,
                "a refused range changes nothing"
            );
        }
    }

    use vm_memory::Bytes;
}
