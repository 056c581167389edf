//! Hands the e820 map to guest-mm: memblock first, then the page allocator,
//! which manages every free page from then on.
//!
//! The first megabyte (zero page, the VMM's page tables, command line, BIOS
//! holes) and the kernel image are reserved, the way Linux reserves its low
//! memory and `_text.._end` before it frees anything to the page allocator.
use crate::acpi::{Fault, Numa};
use crate::bootinfo::{BootInfo, E820_RAM};
use core::ptr::addr_of_mut;
use core::sync::atomic::{AtomicBool, Ordering};
use guest_mm::page_alloc::PageAllocator;
use guest_mm::{IdentityMap, Memblock, PhysAddr};

extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

static mut MEMBLOCK: Memblock = Memblock::new();
/// Written once by the BSP in `init`, shared read-only afterwards.
static mut PAGE_ALLOC: PageAllocator = PageAllocator::EMPTY;
static READY: AtomicBool = AtomicBool::new(false);
/// Low memory (zero page, boot page tables, command line, BIOS area) stays
/// reserved: nothing below it is handed out.
pub const LOW_RESERVED: u64 = 0x10_0000;

pub struct MmSummary {
    pub total_pages: u64,
    pub reserved_pages: u64,
    pub free_pages: u64,
    pub kernel_start: u64,
    pub kernel_end: u64,
    pub grouping: bool,
    /// The ACPI topology the nodes follow, or why there was none.
    pub numa: Result<Numa, Fault>,
}

/// The page allocator, once `init` has run.
pub fn allocator() -> &'static PageAllocator {
    assert!(
        READY.load(Ordering::Acquire),
        "page allocator used before mm::init"
    );
    // SAFETY: after READY only shared references exist.
    unsafe { &*addr_of_mut!(PAGE_ALLOC) }
}

/// Free pages once every CPU's per-CPU lists are back in the buddy lists:
/// the count a workload must return to. CPUs still inside an allocation
/// burst drain themselves when it ends.
pub fn free_pages_drained() -> u64 {
    let a = allocator();
    a.drain_all_pages(None);
    a.free_pages_buddy()
}

/// BSP only, before any other CPU uses memory management.
pub fn init(
    boot: &BootInfo,
    ncpus: usize,
    grouping: Option<bool>,
) -> Result<MmSummary, &'static str> {
    let mem = IdentityMap;
    // SAFETY: the BSP runs this once before anything else touches MEMBLOCK.
    let mb = unsafe { &mut *addr_of_mut!(MEMBLOCK) };
    let (ks, ke) = (
        &raw const __kernel_start as u64,
        &raw const __kernel_end as u64,
    );
    // Live memory is reserved before any RAM is added, so memblock never
    // places its own arrays on it.
    mb.reserve(&mem, PhysAddr(0), LOW_RESERVED)
        .map_err(|_| "cannot reserve low memory")?;
    mb.reserve(&mem, PhysAddr(ks), ke - ks)
        .map_err(|_| "cannot reserve the kernel image")?;
    for e in boot.e820().filter(|e| e.kind == E820_RAM) {
        // SAFETY: e820 RAM is RAM, identity mapped; everything live in it
        // (low memory, this image with its stacks and statics) is reserved.
        unsafe { mb.add(&mem, PhysAddr(e.addr), e.size) }
            .map_err(|_| "memblock_add failed on an e820 entry")?;
    }
    let total_pages = mb.total_pages();
    // The kernel's own page tables, before the allocator takes the rest.
    crate::vm_space::reserve_kernel_tables(mb, &mem, LOW_RESERVED)?;
    // SAFETY: as for MEMBLOCK; READY is not yet set, so no shared
    // reference to PAGE_ALLOC exists.
    let a = unsafe { &mut *addr_of_mut!(PAGE_ALLOC) };
    // One node per SRAT proximity domain, zonelists by SLIT distance.
    let numa = crate::numa::discover(boot, ncpus, LOW_RESERVED);
    a.init_with(mb, &mem, crate::numa::topology(&numa, ncpus), grouping)
        .map_err(|_| "page allocator setup failed")?;
    // The OOM step deflates the balloon, once there is one.
    a.set_hooks(&crate::virtio::balloon::HOOKS);
    let free_pages = a.free_pages_buddy();
    let grouping = a.grouping_by_mobility();
    READY.store(true, Ordering::Release);
    Ok(MmSummary {
        total_pages,
        reserved_pages: total_pages - free_pages,
        free_pages,
        kernel_start: ks,
        kernel_end: ke,
        grouping,
        numa,
    })
}
