//! Which pages of a guest range the host holds now (mincore), for callers
//! that must not create memory the guest gave back: MADV_COLLAPSE fills
//! every missing page of the 2 MiB block it rebuilds, so a block the guest
//! handed over (free page reporting discards whole blocks) would come back
//! whole, 2 MiB of Rss for nothing.
//!
//! mincore, not /proc/self/pagemap: one call per range, no file, and for a
//! memfd it answers for the file's pages, where a punched hole is absent
//! as it should be. A page mapped to the zero page (the guest only read
//! it) counts as resident (measured on this host, 6.18: a read of an
//! untouched THP range maps the huge zero page, all 512 pages resident).
use std::io;

use super::{backing, GuestRam, MemoryError};

impl GuestRam {
    /// Pages (4 KiB) of `[gpa, gpa + len)` resident on the host. The range
    /// is checked as for [`GuestRam::discard`]: page-aligned, inside one
    /// region.
    pub fn resident_pages(&self, gpa: u64, len: u64) -> Result<u64, MemoryError> {
        const CHUNK: usize = backing::HUGE / backing::PAGE;
        let at = self.locate(gpa, len, backing::PAGE as u64)?;
        let mut vec = [0u8; CHUNK];
        let mut resident = 0;
        let mut off = 0usize;
        while off < len as usize {
            let bytes = (len as usize - off).min(backing::HUGE);
            // SAFETY: `locate` put the range inside our own live mapping;
            // the kernel writes one byte per page of `bytes` into `vec`,
            // which has room for a chunk's pages.
            let rc = unsafe {
                libc::mincore(
                    at.map.addr.add(at.offset as usize + off).cast(),
                    bytes,
                    vec.as_mut_ptr(),
                )
            };
            if rc != 0 {
                return Err(MemoryError::Advice {
                    what: "residency (mincore)",
                    gpa,
                    len,
                    source: io::Error::last_os_error(),
                });
            }
            let pages = bytes / backing::PAGE;
            resident += vec[..pages].iter().filter(|&&b| b & 1 != 0).count() as u64;
            off += bytes;
        }
        Ok(resident)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    const MIB: u64 = 1 << 20;

    #[test]
    fn touched_pages_are_resident_and_discarded_ones_are_not() {
        let ram = GuestRam::new(8 * MIB).unwrap();
        assert_eq!(ram.resident_pages(2 * MIB, 2 * MIB).unwrap(), 0);
        for a in (2 * MIB..4 * MIB).step_by(4096) {
            ram.memory().write_obj(1u8, GuestAddress(a)).unwrap();
        }
        assert_eq!(ram.resident_pages(2 * MIB, 2 * MIB).unwrap(), 512);
        ram.discard(GuestAddress(2 * MIB + 8192), 3 * 4096).unwrap();
        assert_eq!(ram.resident_pages(2 * MIB, 2 * MIB).unwrap(), 509);
        ram.discard(GuestAddress(2 * MIB), 2 * MIB).unwrap();
        assert_eq!(ram.resident_pages(2 * MIB, 2 * MIB).unwrap(), 0);
        // Longer than a chunk.
        assert_eq!(ram.resident_pages(0, 8 * MIB).unwrap(), 0);
        for a in (0..8 * MIB).step_by(4096) {
            ram.memory().write_obj(1u8, GuestAddress(a)).unwrap();
        }
        assert_eq!(ram.resident_pages(0, 8 * MIB).unwrap(), 2048);
    }

    #[test]
    fn ranges_outside_ram_or_too_long_are_refused() {
        let ram = GuestRam::new(8 * MIB).unwrap();
        assert!(ram.resident_pages(8 * MIB, 4096).is_err());
        assert!(ram.resident_pages(4097, 4096).is_err());
        assert!(ram.resident_pages(6 * MIB, 4 * MIB).is_err());
    }
}
