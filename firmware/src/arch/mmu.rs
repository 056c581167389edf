//! CR3 loads and TLB invalidation: the only page-table work that must run at
//! CPL0. Building, changing and checking page tables is guest-mm's `pgtable`
//! code at CPL3 (`crate::vm_space`); this file is what it calls through the
//! system-call gate.
//!
//! Every instruction here is emulated on PVM hosts (~250 ns each), so the
//! paths are a few instructions: a short scan of the root registry before a
//! CR3 load, and one `invlpg` per page of a small range.
//!
//! # Which roots may be loaded
//!
//! `SYS_LOAD_CR3` accepts only a root that `crate::vm_space` registered
//! when it built an address space, and unregistered before it freed the
//! tables: loading a freed or stray page as a PML4 would crash the vCPU (or,
//! worse, run on tables that are being reused). Our kernel proper runs at
//! CPL3 on user-accessible mappings, so the registry is a guard against
//! mistakes in our own code, not a wall against it.
//!
//! # TLB shootdown without IPIs
//!
//! A flush acts on the calling CPU only. Code that unmaps or changes
//! mappings another CPU may have cached must first have every other CPU
//! leave the address space (load the kernel's root, which flushes its
//! non-global TLB entries: we map nothing global) or park at a barrier and
//! flush its own TLB after the change, before it touches the space again.
//! `workloads::ptrepl` follows the first form; this is the only cross-CPU
//! rule, and it holds because nothing here uses PCIDs or global pages.
use core::arch::asm;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Roots registered at once, at most: the kernel's, and a few per
/// workload address space (one per replica node).
pub const MAX_ROOTS: usize = 32;
/// Linux's `tlb_single_page_flush_ceiling`: past this many pages one CR3
/// reload is cheaper than `invlpg` per page (and here each `invlpg` is an
/// emulated instruction plus a shadow-page invalidation).
pub const FLUSH_CEILING_PAGES: u64 = 33;
const PAGE: u64 = 4096;

/// Pages invalidated one by one, and full flushes (CR3 reloads), ever, on
/// all CPUs: so a test can see which way a flush went.
pub static INVLPG_PAGES: AtomicU64 = AtomicU64::new(0);
pub static FULL_FLUSHES: AtomicU64 = AtomicU64::new(0);

/// Registered roots; 0 marks a free slot.
static ROOTS: [AtomicU64; MAX_ROOTS] = [const { AtomicU64::new(0) }; MAX_ROOTS];
/// Slots in use are all below this: the CPL0 scan stops there.
static HIGH_WATER: AtomicUsize = AtomicUsize::new(0);
/// Serialises registration (CPL3); the CPL0 reader needs no lock.
static REGISTERING: guest_mm::SpinLock<()> = guest_mm::SpinLock::new(());

/// Makes `root` loadable (CPL3). False when it is not a page address or
/// the registry is full.
pub fn register_root(root: u64) -> bool {
    if root == 0 || !root.is_multiple_of(PAGE) {
        return false;
    }
    let _g = REGISTERING.lock();
    let Some(i) = ROOTS.iter().position(|r| r.load(Ordering::Relaxed) == 0) else {
        return false;
    };
    ROOTS[i].store(root, Ordering::Release);
    HIGH_WATER.fetch_max(i + 1, Ordering::Release);
    true
}

/// Makes `root` unloadable again (CPL3), before its page is freed. No CPU
/// may still have it in CR3 (see the module doc).
pub fn unregister_root(root: u64) {
    let _g = REGISTERING.lock();
    for r in &ROOTS {
        if r.load(Ordering::Relaxed) == root {
            r.store(0, Ordering::Release);
        }
    }
}

/// System-call body: loads `root` into CR3 if it is registered; false
/// (nothing changed) otherwise.
#[link_section = ".text.cpl0"]
pub fn load_cr3(root: u64) -> bool {
    let n = HIGH_WATER.load(Ordering::Acquire);
    let mut i = 0;
    while i < n {
        if root != 0 && ROOTS[i].load(Ordering::Acquire) == root {
            // SAFETY: CPL0; a registered root maps this code, the stacks and
            // all RAM exactly as the kernel's identity map does
            // (`vm_space`), so execution continues at the next instruction.
            unsafe { asm!("mov cr3, {}", in(reg) root, options(nostack, preserves_flags)) };
            return true;
        }
        i += 1;
    }
    false
}

/// System-call body: invalidates this CPU's TLB entries for the pages of
/// [start, end), or all of them past the ceiling; false for an empty or
/// inverted range.
#[link_section = ".text.cpl0"]
pub fn flush_range(start: u64, end: u64) -> bool {
    if end <= start {
        return false;
    }
    let first = start & !(PAGE - 1);
    if (end - first).div_ceil(PAGE) > FLUSH_CEILING_PAGES {
        flush_all();
        return true;
    }
    INVLPG_PAGES.fetch_add((end - first).div_ceil(PAGE), Ordering::Relaxed);
    let mut va = first;
    while va < end {
        // SAFETY: CPL0; invlpg has no effect beyond this CPU's TLB.
        unsafe { asm!("invlpg [{}]", in(reg) va, options(nostack, preserves_flags)) };
        va += PAGE;
    }
    true
}

/// System-call body: drops every TLB entry of this CPU (no global pages
/// exist, so a CR3 reload is a full flush).
#[link_section = ".text.cpl0"]
pub fn flush_all() {
    FULL_FLUSHES.fetch_add(1, Ordering::Relaxed);
    // SAFETY: CPL0; reloading the current CR3 changes no mapping.
    unsafe {
        asm!(
            "mov {t}, cr3",
            "mov cr3, {t}",
            t = out(reg) _,
            options(nostack, preserves_flags)
        )
    };
}
