//! Hands the e820 map to guest-mm: memblock first, then the frame allocator.
//!
//! The first megabyte (zero page, the VMM's page tables, command line, BIOS
//! holes) and the kernel image are reserved, the way Linux reserves its low
//! memory and `_text.._end` before it frees anything to the page allocator.
use crate::bootinfo::{BootInfo, E820_RAM};
use guest_mm::{FrameAllocator, IdentityMap, Memblock, PhysAddr, SpinLock};

extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

pub static MEMBLOCK: SpinLock<Memblock> = SpinLock::new(Memblock::new());
pub static FRAMES: SpinLock<Option<FrameAllocator>> = SpinLock::new(None);

pub struct MmSummary {
    pub total_pages: u64,
    pub reserved_pages: u64,
    pub free_pages: u64,
    pub kernel_start: u64,
    pub kernel_end: u64,
}

pub fn init(boot: &BootInfo) -> Result<MmSummary, &'static str> {
    let mem = IdentityMap;
    let mut mb = MEMBLOCK.lock();
    let (ks, ke) = (
        &raw const __kernel_start as u64,
        &raw const __kernel_end as u64,
    );
    // Live memory is reserved before any RAM is added, so memblock never
    // places its own arrays on it.
    mb.reserve(&mem, PhysAddr(0), 0x10_0000)
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
    let frames =
        FrameAllocator::from_memblock(&mut mb, &mem).map_err(|_| "frame allocator setup failed")?;
    let free_pages = frames.free_pages();
    *FRAMES.lock() = Some(frames);
    Ok(MmSummary {
        total_pages,
        reserved_pages: total_pages - free_pages,
        free_pages,
        kernel_start: ks,
        kernel_end: ke,
    })
}
