//! Checks of the CPL0 paging calls that the timed runs cannot show: a
//! root that is not (or no longer) registered is refused, and a flush
//! really drops the old translation (on a shadow-paging host too: there
//! KVM syncs its shadow of a changed leaf table on the guest's `invlpg`).
//! The flush counters say whether a range went out as `invlpg`s or as a
//! CR3 reload (`arch::mmu::FLUSH_CEILING_PAGES`).
use super::update::flush_counts;
use crate::hostio::{self, LINE};
use crate::vm_space::{self, VmSpace};
use crate::{abi, syscall};
use guest_mm::pgtable::PageSize;
use guest_mm::{PhysAddr, PAGE_SIZE};

/// Past the update measurement's page table.
const VA: u64 = super::update::VA + (1 << 30);
const OLD: u64 = 0xaaaa_aaaa_aaaa_aaaa;
const NEW: u64 = 0xbbbb_bbbb_bbbb_bbbb;

/// CPU 0, every other CPU off the spaces involved. False if any check
/// failed (the record says which).
pub fn run() -> bool {
    let (remap, root, invlpg, full) = match remap_probe() {
        Ok(r) => r,
        Err(e) => {
            super::error(format_args!("ptrepl probe: {e}"));
            return false;
        }
    };
    // A root that was registered and has been torn down, and one that is
    // not even a page address: both refused, CR3 unchanged.
    let stale_refused = refused(root);
    let bad_refused = refused(root | 0x123);
    let mut l = LINE.lock();
    l.begin(abi::RECORD_JSON);
    l.fmt(format_args!(
        "{{\"event\":\"ptrepl_probe\",\"remap_seen\":{remap},\"stale_root_refused\":{stale_refused},\
         \"bad_root_refused\":{bad_refused},\"invlpg_pages\":{invlpg},\"full_flushes\":{full}}}"
    ));
    hostio::send(l.finish());
    remap && stale_refused && bad_refused
}

/// Whether SYS_LOAD_CR3 refuses `root`; if it took it, the kernel's map
/// is loaded again at once (nothing else runs meanwhile).
fn refused(root: u64) -> bool {
    if syscall::call1(syscall::SYS_LOAD_CR3, root) == syscall::EINVAL {
        return true;
    }
    vm_space::leave(0);
    false
}

/// Maps a page, reads it (so the TLB, or KVM's shadow, holds it), points
/// it at another frame with one flush and reads again: (the new frame was
/// seen, the space's root, invlpg'd pages and full flushes the remap
/// took).
fn remap_probe() -> Result<(bool, u64, u64, u64), &'static str> {
    let mut space = VmSpace::new(0, 0).map_err(|_| "no memory for the address space")?;
    let root = space.root(0);
    let r = remap(&mut space);
    let left = vm_space::leave(0);
    if space.teardown().is_err() || !left {
        return Err("could not leave and tear down the probe space");
    }
    r.map(|(seen, i, f)| (seen, root, i, f))
}

fn remap(space: &mut VmSpace) -> Result<(bool, u64, u64), &'static str> {
    // The anchor keeps the page table (and KVM's shadow of it) alive.
    space
        .map_region(VA, PAGE_SIZE, PageSize::Size4K, 0)
        .map_err(|_| "no memory for the anchor")?;
    let a = space.alloc().alloc_frames(0, 0).ok_or("no memory")?;
    let Some(b) = space.alloc().alloc_frames(0, 0) else {
        space.alloc().free_frames(a, 0);
        return Err("no memory");
    };
    let put = |pa: PhysAddr, v: u64| {
        // SAFETY: a frame we own, identity mapped.
        unsafe { (pa.0 as *mut u64).write_volatile(v) }
    };
    put(a, OLD);
    put(b, NEW);
    let page = VA + PAGE_SIZE;
    let read = || {
        // SAFETY: mapped in the loaded space while this runs.
        unsafe { (page as *const u64).read_volatile() }
    };
    let mut result = Err("map failed");
    if space.map_frames(page, &[a]).is_ok() {
        result = Err("SYS_LOAD_CR3 refused the probe space");
        if vm_space::load(0, space.root(0)) {
            let first = read();
            let before = flush_counts();
            let replaced = space.replace_frame(page, b);
            let after = flush_counts();
            let second = read();
            vm_space::leave(0);
            result = match replaced {
                Ok(_) => Ok((
                    first == OLD && second == NEW,
                    after.0 - before.0,
                    after.1 - before.1,
                )),
                Err(_) => Err("replace failed"),
            };
            let _ = space.unmap_frames(page, 1);
        }
    }
    space.alloc().free_frames(a, 0);
    space.alloc().free_frames(b, 0);
    result
}
