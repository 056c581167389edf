//! A small SLUB-style slab allocator and `kmalloc` for the guest kernel's
//! own objects (seed 2.3, checklist row 57).
//!
//! Slabs buy pages wholesale from the page allocator (through
//! [`PageProvider`]) and sell objects retail. The shape follows SLUB:
//!
//! * Each [`KmemCache`] carves naturally aligned blocks of `2^order` pages
//!   into equal objects. The order is the smallest `<= SLAB_MAX_ORDER` that
//!   wastes at most 1/8 of the slab, like `calculate_order`.
//! * Every CPU has an *active* slab (`kmem_cache_cpu`) that it allocates
//!   from without touching the shared list lock, and a short per-CPU
//!   *partial* list of slabs that recently got a free object back.
//! * Slabs that no CPU owns and that have free objects sit on the shared
//!   (node) partial list under a [`SpinLock`]. Completely used slabs are on
//!   no list at all, as in SLUB without debugging; the first free moves them
//!   to the freeing CPU's partial list.
//! * Free objects are chained through a freelist stored in their first
//!   eight bytes. Empty slabs beyond [`NODE_EMPTY_MAX`] on the shared list
//!   go back to the page provider; [`KmemCache::shrink`] returns all of
//!   them.
//!
//! # Slab header
//!
//! There is no `struct page` to hang slab metadata on, so each slab starts
//! with a [`SlabHeader`] followed by an in-use bitmap, and objects start at
//! the first suitably aligned offset after it. Because slabs are naturally
//! aligned, `obj & !(slab_bytes - 1)` finds the header of a cache's object.
//! The header carries a magic (xored with the slab address, so a copied
//! header does not validate elsewhere), the owning cache's id and, for
//! kmalloc caches, the size-class index so [`Kmalloc::kfree`] can find the
//! cache without being told. The bitmap is authoritative: a free is checked
//! against it, so double frees are detected exactly, in release builds too,
//! and a freelist damaged by a use-after-free write is rebuilt from it
//! instead of handing out an object twice.
//!
//! # Concurrency
//!
//! Everything is usable from a `static` and from several CPUs at once.
//! Callers pass the index of the CPU they run on. Each per-CPU slot is its
//! own [`SpinLock`] rather than an `UnsafeCell` with an "only the owning CPU
//! touches this" contract: only the owning CPU (and the rare
//! [`KmemCache::shrink`]) takes it, so it is uncontended and costs one
//! atomic swap, and in exchange the whole API is safe - a caller passing the
//! wrong index gets contention, not memory corruption. The slot is padded to
//! a cache line so CPUs do not false-share.
//!
//! Each slab additionally has a lock word in its header that guards its
//! freelist, bitmap, `inuse` and state, so a CPU can free an object into a
//! slab that another CPU is allocating from. Lock order is
//! `per-CPU slot -> shared partial list -> slab`, and no path holds two slab
//! locks. A slab's list links are protected by the lock of the list it is
//! on: the owning CPU's slot for per-CPU partial lists, the shared lock for
//! the node list.
//!
//! Slab states (in the header, under the slab lock):
//!
//! * `0..MAX_CPUS` - *frozen*: the active slab or on the per-CPU partial
//!   list of that CPU. Frees only update the freelist; the owner decides
//!   where the slab goes when it lets go of it.
//! * `STATE_PARTIAL` - on the shared partial list. Empty slabs are kept at
//!   the tail and counted, so allocation prefers partially used slabs.
//! * `STATE_FULL` - every object in use, on no list.
//!
//! # Limits of free-time validation
//!
//! A pointer that never came from the allocator can only be rejected if the
//! memory where its header would be is readable. Both entry points first
//! check that the pointer lies within the span of blocks the allocator ever
//! received from the provider, so pointers elsewhere are rejected without
//! reading anything. [`Kmalloc::kfree`] does not know the slab order of the
//! object, so it probes the naturally aligned block start for orders
//! `0..=SLAB_MAX_ORDER` and takes the first one carrying a valid header; for
//! an object in page `i > 0` of a multi-page slab the lower-order probes
//! read the first word of a page inside the same slab (possibly the start of
//! a neighbouring live object). Those reads are aligned atomic loads whose
//! value is only compared with the magic, so they cannot tear or fault; they
//! are nevertheless racy reads of memory another CPU may be writing, the
//! same trade Linux makes when `kfree` inspects `struct page`.
//! [`KmemCache::free`] knows the order and needs no probing. Two CPUs
//! freeing the same object at the same time is a caller bug that this
//! allocator cannot make safe (the slab may be released to the provider in
//! between).

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::addr::{align_up, PhysAddr, PAGE_SIZE};
use crate::mmzone::MAX_ORDER;
use crate::phys::PhysMemory;
use crate::sync::SpinLock;

#[cfg(test)]
mod tests;

/// CPUs the per-CPU slots are sized for; callers pass `cpu < MAX_CPUS`.
pub const MAX_CPUS: usize = 64;
/// Highest slab order considered (SLUB's default `slub_max_order`); higher
/// orders are costly for the buddy allocator (seed 3.2).
pub const SLAB_MAX_ORDER: u32 = 3;
/// Slabs a CPU keeps on its partial list before handing them all to the
/// shared list (SLUB's `cpu_partial`, here counted in slabs).
pub const CPU_PARTIAL_MAX: u32 = 4;
/// Empty slabs kept on the shared partial list (SLUB's `min_partial`, here
/// counting only empty ones); more are returned to the page provider.
pub const NODE_EMPTY_MAX: u32 = 2;
/// Smallest kmalloc size class; also the smallest object any cache hands
/// out, since a free object must hold the freelist link.
pub const KMALLOC_MIN_SIZE: usize = 8;
/// Largest kmalloc size served from a slab; larger requests go to the page
/// provider directly.
pub const KMALLOC_MAX_CACHE_SIZE: usize = 4096;
/// Number of power-of-two kmalloc size classes, 8..=4096.
pub const KMALLOC_CLASSES: usize = 10;
/// Large (page-provider) kmalloc allocations live at the same time; the
/// table that lets `kfree` recognise them has this many entries.
pub const MAX_LARGE: usize = 128;
/// Largest object a [`KmemCache`] can hold: one that fits in a slab of
/// [`SLAB_MAX_ORDER`] next to the header.
pub const MAX_OBJECT_SIZE: usize = (PAGE_SIZE as usize) << SLAB_MAX_ORDER;

/// Smallest object alignment: the in-object freelist link is a `u64`.
const MIN_ALIGN: u64 = 8;
/// End of a list or freelist. Not 0: a slab or object may sit at physical
/// address 0. `u64::MAX` is never 8-aligned, so never a valid object.
const NIL: u64 = u64::MAX;
/// Xored with the slab address to form the header magic. Its low 12 bits
/// are non-zero, so a cleared magic (0) never validates.
const SLAB_MAGIC: u64 = 0x51AB_C0DE_F00D_5A5A;
/// `class` of caches that are not kmalloc caches.
const NO_CLASS: u64 = 0xFFFF;
/// Slab state: on the shared partial list.
const STATE_PARTIAL: u32 = u32::MAX - 1;
/// Slab state: every object in use, on no list.
const STATE_FULL: u32 = u32::MAX - 2;
/// Large-table entry claimed while its pages are being allocated; not
/// page-aligned, so it never matches a pointer passed to `kfree`.
const LARGE_RESERVED: u64 = u64::MAX - 1;

/// Source of unique cache ids (0 means "not assigned yet").
static NEXT_CACHE_ID: AtomicU32 = AtomicU32::new(1);

/// Where slabs get their pages: the buddy allocator in the guest, a test
/// double on the host.
pub trait PageProvider {
    /// 2^order contiguous pages, naturally aligned to their size (buddy
    /// blocks are); `reclaimable` asks for a RECLAIMABLE-pageblock
    /// allocation (GFP_RECLAIMABLE), otherwise UNMOVABLE.
    fn alloc_pages(&self, cpu: usize, order: u32, reclaimable: bool) -> Option<PhysAddr>;
    /// Returns a block obtained from [`PageProvider::alloc_pages`] with the
    /// same `order`. A provider that finds it is not such a block refuses
    /// it, changing nothing, so a slab bug shows up in every build instead
    /// of corrupting the provider's free lists.
    fn free_pages(&self, cpu: usize, addr: PhysAddr, order: u32) -> Result<(), BadPageFree>;
}

/// A block the page provider refused to take back: not one it handed out,
/// or not with this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPageFree {
    pub addr: PhysAddr,
    pub order: u32,
}

/// Why a slab operation was refused. Nothing is changed when one is
/// returned (counters included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlabError {
    /// The page provider had no block to give.
    OutOfMemory,
    /// Size 0, or too large for a slab (caches) or for the largest buddy
    /// block (kmalloc).
    InvalidSize,
    /// Alignment is not a power of two or exceeds a page.
    InvalidAlign,
    /// `cpu >= MAX_CPUS`.
    InvalidCpu,
    /// The page provider returned a block that is not naturally aligned,
    /// which would make headers unfindable; the block was given back.
    MisalignedBlock,
    /// All [`MAX_LARGE`] large-allocation slots are in use.
    LargeTableFull,
    /// No slab header where the pointer's slab would start: not an object
    /// from this allocator (or its slab has been released).
    NotSlabObject,
    /// The pointer lies in a slab of another cache.
    WrongCache,
    /// Inside a slab, but not at the start of an object (inside one, or in
    /// the header).
    NotObjectStart,
    /// The object is already free.
    DoubleFree,
    /// The page provider refused the block back (see [`BadPageFree`]); the
    /// allocation stays live.
    PageFreeRefused,
}

impl fmt::Display for SlabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SlabError::OutOfMemory => "page provider is out of memory",
            SlabError::InvalidSize => "invalid object size",
            SlabError::InvalidAlign => "invalid object alignment",
            SlabError::InvalidCpu => "cpu index out of range",
            SlabError::MisalignedBlock => "page provider returned a misaligned block",
            SlabError::LargeTableFull => "too many large kmalloc allocations",
            SlabError::NotSlabObject => "pointer is not a slab object",
            SlabError::WrongCache => "object belongs to another cache",
            SlabError::NotObjectStart => "pointer is not the start of an object",
            SlabError::DoubleFree => "object is already free",
            SlabError::PageFreeRefused => "page provider refused the block back",
        })
    }
}

/// How a cache lays out a slab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    order: u32,
    /// Distance between objects: the size rounded up to the alignment.
    stride: u64,
    /// Offset of the first object: header and bitmap, rounded up to the
    /// alignment.
    first: u64,
    /// Objects per slab.
    nr: u64,
}

/// Start of every slab. Fields other than the atomically accessed ones are
/// protected by `lock`, except `next`/`prev`, which belong to whichever
/// list the slab is on (see the module docs). The in-use bitmap follows
/// directly, `ceil(nr / 64)` words.
#[repr(C)]
struct SlabHeader {
    /// `SLAB_MAGIC ^ slab address`; 0 once released. Atomic.
    magic: u64,
    /// Cache id (bits 0..32), kmalloc class (32..48), order (48..64). Atomic,
    /// written once before the slab is published.
    info: u64,
    /// Slab lock: 0 free, 1 held. Atomic.
    lock: u32,
    /// CPU that froze it, `STATE_PARTIAL` or `STATE_FULL`.
    state: u32,
    /// Objects in use.
    inuse: u32,
    _pad: u32,
    /// First free object, or `NIL`.
    freelist: u64,
    /// List links (`NIL` terminated); per-CPU lists use only `next`.
    next: u64,
    prev: u64,
}

const HDR_BYTES: u64 = core::mem::size_of::<SlabHeader>() as u64;

const fn info_word(id: u32, class: u64, order: u32) -> u64 {
    id as u64 | (class & 0xFFFF) << 32 | (order as u64) << 48
}
const fn info_id(info: u64) -> u32 {
    info as u32
}
const fn info_class(info: u64) -> u64 {
    (info >> 32) & 0xFFFF
}
const fn info_order(info: u64) -> u32 {
    (info >> 48) as u32
}

/// Layout of a slab of `order` for objects of `size` aligned to `align`
/// (both multiples of 8, `align` a power of two); `None` if not even one
/// object fits.
const fn geometry(size: u64, align: u64, order: u32) -> Option<Geometry> {
    let slab = PAGE_SIZE << order;
    let Some(stride) = align_up(size, align) else {
        return None;
    };
    let mut nr = slab / stride;
    // The bitmap grows with `nr`, so shrink `nr` until header, bitmap and
    // objects fit; each step frees `stride >= 8` bytes, so this ends fast.
    while nr > 0 {
        let words = nr.div_ceil(64);
        let Some(first) = align_up(HDR_BYTES + words * 8, align) else {
            return None;
        };
        if first + nr * stride <= slab {
            return Some(Geometry {
                order,
                stride,
                first,
                nr,
            });
        }
        nr -= 1;
    }
    None
}

/// SLUB's `calculate_order`: the smallest order whose unused space (header
/// plus tail) is at most 1/8 of the slab, so small caches stay at order 0
/// and big objects get enough pages not to waste most of them. If no order
/// up to [`SLAB_MAX_ORDER`] achieves that, the one wasting the smallest
/// fraction.
const fn calculate_order(size: u64, align: u64) -> Option<Geometry> {
    let mut best: Option<Geometry> = None;
    let mut order = 0;
    while order <= SLAB_MAX_ORDER {
        if let Some(g) = geometry(size, align, order) {
            let slab = PAGE_SIZE << order;
            let waste = slab - g.nr * g.stride;
            if waste * 8 <= slab {
                return Some(g);
            }
            best = match best {
                // Keep the earlier (smaller) order unless `g` wastes a
                // smaller fraction: waste_b / slab_b <= waste / slab.
                Some(b)
                    if ((PAGE_SIZE << b.order) - b.nr * b.stride) * slab
                        <= waste * (PAGE_SIZE << b.order) =>
                {
                    Some(b)
                }
                _ => Some(g),
            };
        }
        order += 1;
    }
    best
}

/// Lock-free statistics; `Relaxed` because they are reported, not used for
/// synchronisation. Only successful operations count.
struct Counters {
    allocs: AtomicU64,
    frees: AtomicU64,
    bytes_requested: AtomicU64,
    bytes_allocated: AtomicU64,
    slabs: AtomicU64,
    slabs_created: AtomicU64,
    slabs_released: AtomicU64,
    freelist_repairs: AtomicU64,
    bad_page_frees: AtomicU64,
}

impl Counters {
    const fn new() -> Self {
        Counters {
            allocs: AtomicU64::new(0),
            frees: AtomicU64::new(0),
            bytes_requested: AtomicU64::new(0),
            bytes_allocated: AtomicU64::new(0),
            slabs: AtomicU64::new(0),
            slabs_created: AtomicU64::new(0),
            slabs_released: AtomicU64::new(0),
            freelist_repairs: AtomicU64::new(0),
            bad_page_frees: AtomicU64::new(0),
        }
    }

    /// Gives a block back, counting a refusal: on the paths with nobody to
    /// return an error to (releasing empty slabs, undoing a misaligned
    /// allocation) the block is leaked rather than freed twice, and the
    /// count is what reports it.
    fn give_back(&self, pages: &dyn PageProvider, cpu: usize, addr: PhysAddr, order: u32) {
        if pages.free_pages(cpu, addr, order).is_err() {
            self.bad_page_frees.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn note_alloc(&self, requested: u64, allocated: u64) {
        self.allocs.fetch_add(1, Ordering::Relaxed);
        self.bytes_requested.fetch_add(requested, Ordering::Relaxed);
        self.bytes_allocated.fetch_add(allocated, Ordering::Relaxed);
    }
}

/// A snapshot of a cache's counters. Taken without locks, so it is exact
/// only while no CPU is using the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Objects handed out and not freed (`allocs - frees`).
    pub objects_in_use: u64,
    /// Slabs currently held from the page provider (for the large-kmalloc
    /// statistics: live large allocations).
    pub slabs: u64,
    /// Pages currently held from the page provider.
    pub pages: u64,
    /// Successful allocations, ever.
    pub allocs: u64,
    /// Successful frees, ever.
    pub frees: u64,
    /// Bytes callers asked for, summed over all allocations ever. `kfree`
    /// is not told the size, so this is cumulative rather than live.
    pub bytes_requested: u64,
    /// Bytes handed out (object stride, or the power-of-two class for
    /// kmalloc; whole pages for large kmalloc), summed over all allocations.
    pub bytes_allocated: u64,
    /// Slabs ever obtained from / returned to the page provider.
    pub slabs_created: u64,
    pub slabs_released: u64,
    /// Times a freelist damaged by a write to a free object was rebuilt
    /// from the in-use bitmap.
    pub freelist_repairs: u64,
    /// Blocks the page provider refused to take back (a bookkeeping bug;
    /// the pages stay out of use rather than risk a double free).
    pub bad_page_frees: u64,
}

impl CacheStats {
    /// Internal fragmentation so far: bytes handed out beyond what was
    /// asked for (for kmalloc, the power-of-two rounding; seed 2.3's
    /// "worst-case waste ~50%").
    pub const fn waste(&self) -> u64 {
        self.bytes_allocated - self.bytes_requested
    }
}

/// SLUB's `kmem_cache_cpu`. Protected by its slot's lock.
struct CpuSlab {
    /// Slab objects are taken from, or `NIL`.
    active: u64,
    /// Head of this CPU's partial list (linked through `next`), or `NIL`.
    partial: u64,
    nr_partial: u32,
}

/// One CPU's slot, on its own cache line so CPUs do not false-share.
#[repr(align(64))]
struct CpuSlot(SpinLock<CpuSlab>);

impl CpuSlot {
    const fn new() -> Self {
        CpuSlot(SpinLock::new(CpuSlab {
            active: NIL,
            partial: NIL,
            nr_partial: 0,
        }))
    }
}

/// The shared ("node") partial list, doubly linked through the headers so a
/// slab can be taken out of the middle when it becomes empty.
struct NodePartial {
    head: u64,
    tail: u64,
    nr_partial: u32,
    /// Empty slabs on the list (kept at the tail).
    nr_empty: u32,
}

impl NodePartial {
    fn push_front(&mut self, slab: &SlabRef<'_>) {
        slab.set_prev(NIL);
        slab.set_next(self.head);
        if self.head == NIL {
            self.tail = slab.base.0;
        } else {
            SlabRef::new(slab.mem, PhysAddr(self.head)).set_prev(slab.base.0);
        }
        self.head = slab.base.0;
        self.nr_partial += 1;
    }

    fn push_back(&mut self, slab: &SlabRef<'_>) {
        slab.set_next(NIL);
        slab.set_prev(self.tail);
        if self.tail == NIL {
            self.head = slab.base.0;
        } else {
            SlabRef::new(slab.mem, PhysAddr(self.tail)).set_next(slab.base.0);
        }
        self.tail = slab.base.0;
        self.nr_partial += 1;
    }

    fn remove(&mut self, slab: &SlabRef<'_>) {
        let (prev, next) = (slab.prev(), slab.next());
        if prev == NIL {
            self.head = next;
        } else {
            SlabRef::new(slab.mem, PhysAddr(prev)).set_next(next);
        }
        if next == NIL {
            self.tail = prev;
        } else {
            SlabRef::new(slab.mem, PhysAddr(next)).set_prev(prev);
        }
        self.nr_partial -= 1;
    }
}

/// A slab's header as reached through a [`PhysMemory`].
///
/// Contract for every `SlabRef` except the probes in
/// [`Kmalloc::find_slab`] and [`KmemCache::free`] (which only read the
/// magic): `base` is a slab block this allocator obtained from the page
/// provider and has not released, so by the [`PhysMemory`] contract `hdr`
/// is valid for the slab's first page, 8-aligned (the block is
/// page-aligned), and nobody outside this module writes the header.
/// Header and bitmap (at most `56 + 512` bytes) lie in that first page.
#[derive(Clone, Copy)]
struct SlabRef<'m> {
    mem: &'m dyn PhysMemory,
    base: PhysAddr,
    hdr: *mut SlabHeader,
}

macro_rules! header_field {
    ($get:ident, $set:ident, $field:ident, $ty:ty) => {
        fn $get(&self) -> $ty {
            // SAFETY: `hdr` is valid and aligned (type contract); callers
            // hold the lock that protects this field, so no one writes it
            // concurrently.
            unsafe { (&raw const (*self.hdr).$field).read() }
        }
        fn $set(&self, v: $ty) {
            // SAFETY: as for the getter; holding the protecting lock makes
            // this the only access.
            unsafe { (&raw mut (*self.hdr).$field).write(v) }
        }
    };
}

impl<'m> SlabRef<'m> {
    fn new(mem: &'m dyn PhysMemory, base: PhysAddr) -> Self {
        SlabRef {
            mem,
            base,
            hdr: mem.phys_to_ptr(base).cast(),
        }
    }

    fn magic(&self) -> &'m AtomicU64 {
        // SAFETY: `hdr` is 8-aligned and readable (type contract, or for
        // probes: inside the span of blocks the provider gave us, see the
        // module docs); the magic word is only ever accessed atomically.
        unsafe { AtomicU64::from_ptr(&raw mut (*self.hdr).magic) }
    }

    fn info(&self) -> &'m AtomicU64 {
        // SAFETY: as for `magic`; `info` is read only after the magic
        // validated, and is only ever accessed atomically.
        unsafe { AtomicU64::from_ptr(&raw mut (*self.hdr).info) }
    }

    fn has_magic(&self) -> bool {
        // Acquire pairs with the Release store that publishes a new slab.
        self.magic().load(Ordering::Acquire) == SLAB_MAGIC ^ self.base.0
    }

    /// Takes the slab lock (test-and-test-and-set, like [`SpinLock`]).
    fn lock(&self) -> SlabGuard<'m> {
        // SAFETY: type contract (valid, 4-aligned); the lock word is only
        // ever accessed atomically while the slab exists.
        let lock = unsafe { AtomicU32::from_ptr(&raw mut (*self.hdr).lock) };
        loop {
            if lock.swap(1, Ordering::Acquire) == 0 {
                return SlabGuard { lock };
            }
            while lock.load(Ordering::Relaxed) != 0 {
                core::hint::spin_loop();
            }
        }
    }

    header_field!(state, set_state, state, u32);
    header_field!(inuse, set_inuse, inuse, u32);
    header_field!(freelist, set_freelist, freelist, u64);
    header_field!(next, set_next, next, u64);
    header_field!(prev, set_prev, prev, u64);

    fn bitmap_word(&self, w: u64) -> *mut u64 {
        // The bitmap follows the header; `w < ceil(nr / 64)` keeps it in
        // the header page (geometry puts the first object after it).
        self.hdr
            .wrapping_add(1)
            .cast::<u64>()
            .wrapping_add(w as usize)
    }

    fn bit(&self, idx: u64) -> bool {
        // SAFETY: `idx < nr`, so the word is inside the bitmap in the
        // header page (type contract); the slab lock is held.
        unsafe { self.bitmap_word(idx / 64).read() & (1 << (idx % 64)) != 0 }
    }

    fn set_bit(&self, idx: u64, value: bool) {
        let p = self.bitmap_word(idx / 64);
        // SAFETY: as in `bit`; holding the slab lock makes this the only
        // access.
        unsafe {
            let w = p.read();
            p.write(if value {
                w | 1 << (idx % 64)
            } else {
                w & !(1 << (idx % 64))
            });
        }
    }

    /// The freelist link stored in the free object at `obj`.
    fn link(&self, obj: u64) -> u64 {
        let p = self.mem.phys_to_ptr(PhysAddr(obj)).cast::<u64>();
        // SAFETY: `obj` is an object start inside this slab (checked by the
        // caller), 8-aligned because `first` and `stride` are multiples of
        // the alignment (>= 8); the object is free, so it is ours, and the
        // slab lock is held.
        unsafe { p.read() }
    }

    fn set_link(&self, obj: u64, next: u64) {
        let p = self.mem.phys_to_ptr(PhysAddr(obj)).cast::<u64>();
        // SAFETY: as in `link`.
        unsafe { p.write(next) }
    }
}

/// Releases a slab lock when dropped.
struct SlabGuard<'m> {
    lock: &'m AtomicU32,
}

impl Drop for SlabGuard<'_> {
    fn drop(&mut self) {
        // Release publishes our header writes to the next holder.
        self.lock.store(0, Ordering::Release);
    }
}

/// `[lo, hi)` of the slab blocks ever obtained from the provider: a pointer
/// outside it is rejected without reading memory.
struct Span {
    lo: AtomicU64,
    hi: AtomicU64,
}

impl Span {
    const fn new() -> Self {
        Span {
            lo: AtomicU64::new(u64::MAX),
            hi: AtomicU64::new(0),
        }
    }

    fn note(&self, base: u64, bytes: u64) {
        // Cheap common case: already covered, two loads and no write.
        if base < self.lo.load(Ordering::Relaxed) {
            self.lo.fetch_min(base, Ordering::Relaxed);
        }
        if base + bytes > self.hi.load(Ordering::Relaxed) {
            self.hi.fetch_max(base + bytes, Ordering::Relaxed);
        }
    }

    /// `Relaxed` is enough: a valid pointer reached the freeing CPU through
    /// some synchronisation after the allocation that widened the span.
    fn get(&self) -> (u64, u64) {
        (
            self.lo.load(Ordering::Relaxed),
            self.hi.load(Ordering::Relaxed),
        )
    }
}

/// A cache of equal-sized objects (`struct kmem_cache`).
///
/// `const` constructible, so it can be a `static`; all methods take
/// `&self`. The memory and page provider are passed on every call, since
/// the cache itself holds no pointers (it may be moved while it has slabs).
pub struct KmemCache {
    name: &'static str,
    size: u64,
    align: u64,
    geo: Geometry,
    reclaimable: bool,
    /// kmalloc size-class index (0..2 * KMALLOC_CLASSES) or `NO_CLASS`.
    class: u64,
    /// Unique id stored in slab headers, assigned with the first slab (a
    /// `const fn` cannot draw from a global counter).
    id: AtomicU32,
    span: Span,
    cpus: [CpuSlot; MAX_CPUS],
    node: SpinLock<NodePartial>,
    counters: Counters,
}

impl fmt::Debug for KmemCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmemCache")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("align", &self.align)
            .field("order", &self.geo.order)
            .field("objects_per_slab", &self.geo.nr)
            .field("reclaimable", &self.reclaimable)
            .finish()
    }
}

impl KmemCache {
    /// A cache for objects of `size` bytes aligned to `align` (a power of
    /// two up to a page; raised to 8). `reclaimable` caches take their
    /// slabs from RECLAIMABLE pageblocks (`SLAB_RECLAIM_ACCOUNT`).
    pub const fn try_new(
        name: &'static str,
        size: usize,
        align: usize,
        reclaimable: bool,
    ) -> Result<Self, SlabError> {
        Self::build(name, size, align, reclaimable, NO_CLASS)
    }

    /// [`KmemCache::try_new`] for `static`s: invalid parameters are a
    /// compile-time error there (a panic at run time elsewhere).
    pub const fn new(name: &'static str, size: usize, align: usize, reclaimable: bool) -> Self {
        match Self::try_new(name, size, align, reclaimable) {
            Ok(c) => c,
            Err(_) => panic!("invalid KmemCache size or alignment"),
        }
    }

    const fn build(
        name: &'static str,
        size: usize,
        align: usize,
        reclaimable: bool,
        class: u64,
    ) -> Result<Self, SlabError> {
        if size == 0 || size > MAX_OBJECT_SIZE {
            return Err(SlabError::InvalidSize);
        }
        if !align.is_power_of_two() || align as u64 > PAGE_SIZE {
            return Err(SlabError::InvalidAlign);
        }
        let align = if (align as u64) < MIN_ALIGN {
            MIN_ALIGN
        } else {
            align as u64
        };
        let Some(geo) = calculate_order(size as u64, align) else {
            return Err(SlabError::InvalidSize);
        };
        Ok(KmemCache {
            name,
            size: size as u64,
            align,
            geo,
            reclaimable,
            class,
            id: AtomicU32::new(0),
            span: Span::new(),
            cpus: [const { CpuSlot::new() }; MAX_CPUS],
            node: SpinLock::new(NodePartial {
                head: NIL,
                tail: NIL,
                nr_partial: 0,
                nr_empty: 0,
            }),
            counters: Counters::new(),
        })
    }

    pub const fn name(&self) -> &'static str {
        self.name
    }
    /// Object size as requested at creation.
    pub const fn object_size(&self) -> usize {
        self.size as usize
    }
    /// Object alignment (at least 8).
    pub const fn align(&self) -> usize {
        self.align as usize
    }
    /// Distance between objects: the size rounded up to the alignment.
    pub const fn stride(&self) -> usize {
        self.geo.stride as usize
    }
    /// Slab order chosen by `calculate_order`.
    pub const fn order(&self) -> u32 {
        self.geo.order
    }
    pub const fn slab_bytes(&self) -> u64 {
        PAGE_SIZE << self.geo.order
    }
    pub const fn objects_per_slab(&self) -> usize {
        self.geo.nr as usize
    }
    /// Offset of the first object in a slab (header and bitmap before it).
    pub const fn first_object_offset(&self) -> u64 {
        self.geo.first
    }
    pub const fn is_reclaimable(&self) -> bool {
        self.reclaimable
    }

    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        let allocs = c.allocs.load(Ordering::Relaxed);
        let frees = c.frees.load(Ordering::Relaxed);
        let slabs = c.slabs.load(Ordering::Relaxed);
        CacheStats {
            objects_in_use: allocs.saturating_sub(frees),
            slabs,
            pages: slabs << self.geo.order,
            allocs,
            frees,
            bytes_requested: c.bytes_requested.load(Ordering::Relaxed),
            bytes_allocated: c.bytes_allocated.load(Ordering::Relaxed),
            slabs_created: c.slabs_created.load(Ordering::Relaxed),
            slabs_released: c.slabs_released.load(Ordering::Relaxed),
            freelist_repairs: c.freelist_repairs.load(Ordering::Relaxed),
            bad_page_frees: c.bad_page_frees.load(Ordering::Relaxed),
        }
    }

    /// The id, assigning one on first use. A CAS settles races between CPUs
    /// creating their first slabs at the same time.
    fn id_or_assign(&self) -> u32 {
        let id = self.id.load(Ordering::Acquire);
        if id != 0 {
            return id;
        }
        let new = NEXT_CACHE_ID.fetch_add(1, Ordering::Relaxed);
        match self
            .id
            .compare_exchange(0, new, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => new,
            Err(existing) => existing,
        }
    }

    /// `kmem_cache_alloc`: one object, from `cpu`'s active slab when it has
    /// room.
    pub fn alloc(
        &self,
        mem: &dyn PhysMemory,
        pages: &dyn PageProvider,
        cpu: usize,
    ) -> Result<PhysAddr, SlabError> {
        self.alloc_bytes(mem, pages, cpu, self.size)
    }

    fn alloc_bytes(
        &self,
        mem: &dyn PhysMemory,
        pages: &dyn PageProvider,
        cpu: usize,
        requested: u64,
    ) -> Result<PhysAddr, SlabError> {
        let Some(slot) = self.cpus.get(cpu) else {
            return Err(SlabError::InvalidCpu);
        };
        let mut c = slot.0.lock();
        loop {
            if c.active != NIL {
                let slab = SlabRef::new(mem, PhysAddr(c.active));
                let guard = slab.lock();
                if let Some(obj) = self.take_object(&slab) {
                    drop(guard);
                    drop(c);
                    self.counters.note_alloc(requested, self.geo.stride);
                    return Ok(PhysAddr(obj));
                }
                // Exhausted: it belongs on no list until a free makes it
                // partial again (SLUB deactivates a full cpu slab the same
                // way).
                slab.set_state(STATE_FULL);
                drop(guard);
                c.active = NIL;
            }
            if c.partial != NIL {
                let slab = SlabRef::new(mem, PhysAddr(c.partial));
                c.partial = slab.next();
                c.nr_partial -= 1;
                c.active = slab.base.0;
                continue;
            }
            if let Some(base) = self.take_from_node(mem, cpu) {
                c.active = base;
                continue;
            }
            c.active = self.new_slab(mem, pages, cpu)?;
        }
    }

    /// Pops the freelist of a locked slab. The popped object is validated
    /// against the bitmap; a damaged freelist is rebuilt rather than trusted.
    fn take_object(&self, slab: &SlabRef<'_>) -> Option<u64> {
        let inuse = u64::from(slab.inuse());
        if inuse >= self.geo.nr {
            return None;
        }
        let mut head = slab.freelist();
        if !self.is_free_object(slab, head) {
            self.counters
                .freelist_repairs
                .fetch_add(1, Ordering::Relaxed);
            head = self.rebuild_freelist(slab)?;
        }
        let idx = (head - slab.base.0 - self.geo.first) / self.geo.stride;
        slab.set_freelist(slab.link(head));
        slab.set_bit(idx, true);
        slab.set_inuse(slab.inuse() + 1);
        Some(head)
    }

    fn is_free_object(&self, slab: &SlabRef<'_>, obj: u64) -> bool {
        matches!(self.index_of(slab.base, obj), Ok(idx) if !slab.bit(idx))
    }

    /// Re-chains every object whose bitmap bit is clear, lowest address
    /// first, and recounts `inuse` from the bitmap; returns the new head.
    fn rebuild_freelist(&self, slab: &SlabRef<'_>) -> Option<u64> {
        let mut head = NIL;
        let mut used = 0;
        for idx in (0..self.geo.nr).rev() {
            if slab.bit(idx) {
                used += 1;
            } else {
                let obj = slab.base.0 + self.geo.first + idx * self.geo.stride;
                slab.set_link(obj, head);
                head = obj;
            }
        }
        slab.set_freelist(head);
        slab.set_inuse(used);
        (head != NIL).then_some(head)
    }

    /// Index of the object starting at `obj` in the slab at `base`.
    fn index_of(&self, base: PhysAddr, obj: u64) -> Result<u64, SlabError> {
        let start = base.0 + self.geo.first;
        let off = obj.wrapping_sub(start);
        if obj < start
            || off >= self.geo.nr * self.geo.stride
            || !off.is_multiple_of(self.geo.stride)
        {
            return Err(SlabError::NotObjectStart);
        }
        Ok(off / self.geo.stride)
    }

    /// Takes a slab off the shared partial list (partially used ones first,
    /// empty ones are at the tail) and freezes it for `cpu`.
    fn take_from_node(&self, mem: &dyn PhysMemory, cpu: usize) -> Option<u64> {
        let mut n = self.node.lock();
        if n.head == NIL {
            return None;
        }
        let slab = SlabRef::new(mem, PhysAddr(n.head));
        n.remove(&slab);
        let _guard = slab.lock();
        if slab.inuse() == 0 {
            n.nr_empty -= 1;
        }
        slab.set_state(cpu as u32);
        Some(slab.base.0)
    }

    /// A fresh slab from the provider, frozen for `cpu`, every object free.
    fn new_slab(
        &self,
        mem: &dyn PhysMemory,
        pages: &dyn PageProvider,
        cpu: usize,
    ) -> Result<u64, SlabError> {
        let order = self.geo.order;
        let Some(base) = pages.alloc_pages(cpu, order, self.reclaimable) else {
            return Err(SlabError::OutOfMemory);
        };
        if !base.is_aligned(self.slab_bytes()) {
            self.counters.give_back(pages, cpu, base, order);
            return Err(SlabError::MisalignedBlock);
        }
        let id = self.id_or_assign();
        let slab = SlabRef::new(mem, base);
        // The slab is not reachable by anyone else until `magic` is
        // published, so the lock is not needed for initialisation.
        slab.info()
            .store(info_word(id, self.class, order), Ordering::Relaxed);
        // SAFETY: type contract of `SlabRef` (we own the new block); the
        // lock word is accessed atomically from now on.
        unsafe { AtomicU32::from_ptr(&raw mut (*slab.hdr).lock) }.store(0, Ordering::Relaxed);
        slab.set_state(cpu as u32);
        slab.set_inuse(0);
        slab.set_next(NIL);
        slab.set_prev(NIL);
        for w in 0..self.geo.nr.div_ceil(64) {
            // SAFETY: `w` is within the bitmap in the header page, which
            // we own exclusively until the slab is published.
            unsafe { slab.bitmap_word(w).write(0) };
        }
        let mut head = NIL;
        for idx in (0..self.geo.nr).rev() {
            let obj = base.0 + self.geo.first + idx * self.geo.stride;
            slab.set_link(obj, head);
            head = obj;
        }
        slab.set_freelist(head);
        slab.magic().store(SLAB_MAGIC ^ base.0, Ordering::Release);
        self.span.note(base.0, self.slab_bytes());
        self.counters.slabs.fetch_add(1, Ordering::Relaxed);
        self.counters.slabs_created.fetch_add(1, Ordering::Relaxed);
        Ok(base.0)
    }

    /// `kmem_cache_free`. Validates that `obj` is a live object of this
    /// cache and returns an error (changing nothing) if it is not.
    pub fn free(
        &self,
        mem: &dyn PhysMemory,
        pages: &dyn PageProvider,
        cpu: usize,
        obj: PhysAddr,
    ) -> Result<(), SlabError> {
        if cpu >= MAX_CPUS {
            return Err(SlabError::InvalidCpu);
        }
        let base = PhysAddr(obj.0 & !(self.slab_bytes() - 1));
        let (lo, hi) = self.span.get();
        if base.0 < lo || base.0 >= hi {
            return Err(SlabError::NotSlabObject);
        }
        let slab = SlabRef::new(mem, base);
        // Check before locking: the lock word of a page that is not a slab
        // belongs to someone else.
        if !slab.has_magic() {
            return Err(SlabError::NotSlabObject);
        }
        self.free_in_slab(mem, pages, cpu, &slab, obj.0)
    }

    /// Validation of a free under the slab lock: still a slab, of this
    /// cache, `obj` an object start, and in use.
    fn check_free(&self, slab: &SlabRef<'_>, obj: u64) -> Result<u64, SlabError> {
        if !slab.has_magic() {
            return Err(SlabError::NotSlabObject);
        }
        let info = slab.info().load(Ordering::Relaxed);
        let id = self.id.load(Ordering::Acquire);
        if id == 0 || info_id(info) != id || info_order(info) != self.geo.order {
            return Err(SlabError::WrongCache);
        }
        let idx = self.index_of(slab.base, obj)?;
        if !slab.bit(idx) {
            return Err(SlabError::DoubleFree);
        }
        Ok(idx)
    }

    /// Pushes a validated object onto a locked slab's freelist.
    fn put_object(&self, slab: &SlabRef<'_>, obj: u64, idx: u64) {
        slab.set_link(obj, slab.freelist());
        slab.set_freelist(obj);
        slab.set_bit(idx, false);
        slab.set_inuse(slab.inuse() - 1);
    }

    /// Frees `obj` in `slab`, whose magic has been seen.
    fn free_in_slab(
        &self,
        mem: &dyn PhysMemory,
        pages: &dyn PageProvider,
        cpu: usize,
        slab: &SlabRef<'_>,
        obj: u64,
    ) -> Result<(), SlabError> {
        // Fast path, slab lock only: the slab is frozen (its owner will
        // place it), or it stays a non-empty partial slab.
        {
            let _guard = slab.lock();
            let idx = self.check_free(slab, obj)?;
            let state = slab.state();
            if (state as usize) < MAX_CPUS || (state == STATE_PARTIAL && slab.inuse() > 1) {
                self.put_object(slab, obj, idx);
                self.counters.frees.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        // Slow path: the slab changes lists. Take the locks in order and
        // re-check, since the slab may have changed state in between.
        let mut c = self.cpus[cpu].0.lock();
        let mut n = self.node.lock();
        let mut discard = NIL;
        {
            let _guard = slab.lock();
            let idx = self.check_free(slab, obj)?;
            self.put_object(slab, obj, idx);
            let state = slab.state();
            if state == STATE_PARTIAL && slab.inuse() == 0 {
                // Became empty on the shared list: move it to the empty
                // tail, or release it if enough empty slabs are kept.
                n.remove(slab);
                self.place_unfrozen(&mut n, slab, &mut discard);
            } else if state == STATE_FULL {
                if slab.inuse() == 0 {
                    self.place_unfrozen(&mut n, slab, &mut discard);
                } else {
                    // put_cpu_partial: a slab that just got a free object
                    // goes to the freeing CPU, which is likely to allocate
                    // again soon.
                    slab.set_state(cpu as u32);
                    slab.set_next(c.partial);
                    c.partial = slab.base.0;
                    c.nr_partial += 1;
                }
            }
        }
        if c.nr_partial > CPU_PARTIAL_MAX {
            self.drain_cpu_partial(mem, &mut c, &mut n, &mut discard, true);
        }
        drop(n);
        drop(c);
        self.counters.frees.fetch_add(1, Ordering::Relaxed);
        self.release(mem, pages, cpu, discard);
        Ok(())
    }

    /// Decides where a locked slab that no CPU owns any more goes: no list
    /// if full, the shared list otherwise, or the `discard` chain if empty
    /// and the shared list already keeps enough empty slabs. Needs the
    /// shared-list lock (`n`).
    fn place_unfrozen(&self, n: &mut NodePartial, slab: &SlabRef<'_>, discard: &mut u64) {
        let inuse = u64::from(slab.inuse());
        if inuse == self.geo.nr {
            slab.set_state(STATE_FULL);
        } else if inuse == 0 && n.nr_empty >= NODE_EMPTY_MAX {
            // Unpublish first: after this no free can validate against it.
            slab.magic().store(0, Ordering::Release);
            slab.set_next(*discard);
            *discard = slab.base.0;
        } else if inuse == 0 {
            slab.set_state(STATE_PARTIAL);
            n.push_back(slab);
            n.nr_empty += 1;
        } else {
            slab.set_state(STATE_PARTIAL);
            n.push_front(slab);
        }
    }

    /// Unfreezes a CPU's partial slabs onto the shared list
    /// (`unfreeze_partials`), keeping the head if `keep_head`.
    fn drain_cpu_partial(
        &self,
        mem: &dyn PhysMemory,
        c: &mut CpuSlab,
        n: &mut NodePartial,
        discard: &mut u64,
        keep_head: bool,
    ) {
        if c.partial == NIL {
            return;
        }
        let head = SlabRef::new(mem, PhysAddr(c.partial));
        let mut cur = if keep_head { head.next() } else { c.partial };
        while cur != NIL {
            let slab = SlabRef::new(mem, PhysAddr(cur));
            // Read the link before `place_unfrozen` reuses it.
            cur = slab.next();
            let _guard = slab.lock();
            self.place_unfrozen(n, &slab, discard);
        }
        if keep_head {
            head.set_next(NIL);
            c.nr_partial = 1;
        } else {
            c.partial = NIL;
            c.nr_partial = 0;
        }
    }

    /// Returns the slabs on a `discard` chain to the provider. Called with
    /// no locks held; the slabs are unpublished and on no list, so they are
    /// ours alone.
    fn release(
        &self,
        mem: &dyn PhysMemory,
        pages: &dyn PageProvider,
        cpu: usize,
        mut discard: u64,
    ) {
        while discard != NIL {
            let slab = SlabRef::new(mem, PhysAddr(discard));
            discard = slab.next();
            self.counters
                .give_back(pages, cpu, slab.base, self.geo.order);
            self.counters.slabs.fetch_sub(1, Ordering::Relaxed);
            self.counters.slabs_released.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Unfreezes `target`'s active and partial slabs (`flush_slab` plus
    /// `unfreeze_partials`). `cpu` is the CPU running this, passed to the
    /// provider for the slabs it releases.
    pub fn flush_cpu(
        &self,
        mem: &dyn PhysMemory,
        pages: &dyn PageProvider,
        cpu: usize,
        target: usize,
    ) -> Result<(), SlabError> {
        if cpu >= MAX_CPUS || target >= MAX_CPUS {
            return Err(SlabError::InvalidCpu);
        }
        let mut c = self.cpus[target].0.lock();
        let mut n = self.node.lock();
        let mut discard = NIL;
        if c.active != NIL {
            let slab = SlabRef::new(mem, PhysAddr(c.active));
            let _guard = slab.lock();
            self.place_unfrozen(&mut n, &slab, &mut discard);
            c.active = NIL;
        }
        self.drain_cpu_partial(mem, &mut c, &mut n, &mut discard, false);
        drop(n);
        drop(c);
        self.release(mem, pages, cpu, discard);
        Ok(())
    }

    /// `kmem_cache_shrink`: flushes every CPU and returns all empty slabs to
    /// the provider. Returns how many slabs were released. CPUs may keep
    /// allocating meanwhile; they just refill.
    pub fn shrink(
        &self,
        mem: &dyn PhysMemory,
        pages: &dyn PageProvider,
        cpu: usize,
    ) -> Result<u64, SlabError> {
        let before = self.counters.slabs_released.load(Ordering::Relaxed);
        for target in 0..MAX_CPUS {
            self.flush_cpu(mem, pages, cpu, target)?;
        }
        let mut discard = NIL;
        {
            let mut n = self.node.lock();
            let mut cur = n.head;
            while cur != NIL {
                let slab = SlabRef::new(mem, PhysAddr(cur));
                cur = slab.next();
                let _guard = slab.lock();
                if slab.inuse() == 0 {
                    n.remove(&slab);
                    n.nr_empty -= 1;
                    slab.magic().store(0, Ordering::Release);
                    slab.set_next(discard);
                    discard = slab.base.0;
                }
            }
        }
        self.release(mem, pages, cpu, discard);
        Ok(self.counters.slabs_released.load(Ordering::Relaxed) - before)
    }
}

/// Names of the kmalloc caches, by class.
const KMALLOC_NAMES: [&str; 2 * KMALLOC_CLASSES] = [
    "kmalloc-8",
    "kmalloc-16",
    "kmalloc-32",
    "kmalloc-64",
    "kmalloc-128",
    "kmalloc-256",
    "kmalloc-512",
    "kmalloc-1k",
    "kmalloc-2k",
    "kmalloc-4k",
    "kmalloc-rcl-8",
    "kmalloc-rcl-16",
    "kmalloc-rcl-32",
    "kmalloc-rcl-64",
    "kmalloc-rcl-128",
    "kmalloc-rcl-256",
    "kmalloc-rcl-512",
    "kmalloc-rcl-1k",
    "kmalloc-rcl-2k",
    "kmalloc-rcl-4k",
];

/// The power-of-two size class serving `size` bytes (8..=4096), or `None`
/// for 0 and for sizes that go to the page provider.
pub const fn kmalloc_class(size: usize) -> Option<usize> {
    match kmalloc_index(size) {
        Some(i) => Some(KMALLOC_MIN_SIZE << i),
        None => None,
    }
}

const fn kmalloc_index(size: usize) -> Option<usize> {
    if size == 0 || size > KMALLOC_MAX_CACHE_SIZE {
        None
    } else if size <= KMALLOC_MIN_SIZE {
        Some(0)
    } else {
        Some(
            (size.next_power_of_two().trailing_zeros() - KMALLOC_MIN_SIZE.trailing_zeros())
                as usize,
        )
    }
}

/// The kmalloc cache for class index `i` (normal classes first, then the
/// reclaimable twins). Power-of-two objects are naturally aligned, as Linux
/// guarantees since 5.4, so kmalloc also serves aligned buffers.
const fn kmalloc_cache(i: usize) -> KmemCache {
    let size = KMALLOC_MIN_SIZE << (i % KMALLOC_CLASSES);
    match KmemCache::build(KMALLOC_NAMES[i], size, size, i >= KMALLOC_CLASSES, i as u64) {
        Ok(c) => c,
        Err(_) => panic!("kmalloc cache geometry"),
    }
}

#[derive(Clone, Copy)]
struct LargeEntry {
    /// Block address, `NIL` when the slot is free, `LARGE_RESERVED` while
    /// its pages are being allocated.
    addr: u64,
    order: u32,
}

/// Large kmalloc allocations, so `kfree` can tell them from slab objects
/// (Linux uses `struct page` for that). A fixed table keeps it heap-free;
/// the linear scan is fine for a kernel that makes few such allocations.
struct LargeTable {
    entries: [LargeEntry; MAX_LARGE],
}

impl LargeTable {
    fn find(&self, addr: u64) -> Option<usize> {
        self.entries.iter().position(|e| e.addr == addr)
    }
}

/// `kmalloc`/`kfree`: power-of-two caches `kmalloc-8` ... `kmalloc-4k`, their
/// `kmalloc-rcl-*` twins (seed 2.3, 4.20) whose slabs come from RECLAIMABLE
/// pageblocks, and page-provider allocations above 4 KiB.
///
/// `const` constructible for a `static`. Its size is dominated by the
/// per-CPU slots (20 caches x 64 CPUs x 64 bytes = 80 KiB).
pub struct Kmalloc {
    caches: [KmemCache; 2 * KMALLOC_CLASSES],
    large: SpinLock<LargeTable>,
    large_counters: Counters,
    large_pages: AtomicU64,
    /// Span of all kmalloc slabs, to filter pointers before probing.
    span: Span,
}

impl Default for Kmalloc {
    fn default() -> Self {
        Self::new()
    }
}

impl Kmalloc {
    pub const fn new() -> Self {
        Kmalloc {
            caches: [
                kmalloc_cache(0),
                kmalloc_cache(1),
                kmalloc_cache(2),
                kmalloc_cache(3),
                kmalloc_cache(4),
                kmalloc_cache(5),
                kmalloc_cache(6),
                kmalloc_cache(7),
                kmalloc_cache(8),
                kmalloc_cache(9),
                kmalloc_cache(10),
                kmalloc_cache(11),
                kmalloc_cache(12),
                kmalloc_cache(13),
                kmalloc_cache(14),
                kmalloc_cache(15),
                kmalloc_cache(16),
                kmalloc_cache(17),
                kmalloc_cache(18),
                kmalloc_cache(19),
            ],
            large: SpinLock::new(LargeTable {
                entries: [LargeEntry {
                    addr: NIL,
                    order: 0,
                }; MAX_LARGE],
            }),
            large_counters: Counters::new(),
            large_pages: AtomicU64::new(0),
            span: Span::new(),
        }
    }

    /// All slab caches: `kmalloc-*` in rising size, then `kmalloc-rcl-*`.
    pub fn caches(&self) -> &[KmemCache] {
        &self.caches
    }

    /// The cache serving `size` bytes, if a slab serves it.
    pub fn cache_for(&self, size: usize, reclaimable: bool) -> Option<&KmemCache> {
        let i = kmalloc_index(size)?;
        Some(&self.caches[i + if reclaimable { KMALLOC_CLASSES } else { 0 }])
    }

    /// Statistics of the large allocations: `slabs` and `objects_in_use`
    /// both count live allocations, `pages` the pages they hold.
    pub fn large_stats(&self) -> CacheStats {
        let c = &self.large_counters;
        let allocs = c.allocs.load(Ordering::Relaxed);
        let frees = c.frees.load(Ordering::Relaxed);
        CacheStats {
            objects_in_use: allocs.saturating_sub(frees),
            slabs: allocs.saturating_sub(frees),
            pages: self.large_pages.load(Ordering::Relaxed),
            allocs,
            frees,
            bytes_requested: c.bytes_requested.load(Ordering::Relaxed),
            bytes_allocated: c.bytes_allocated.load(Ordering::Relaxed),
            bad_page_frees: c.bad_page_frees.load(Ordering::Relaxed),
            ..CacheStats::default()
        }
    }

    /// `kmalloc(size, GFP_KERNEL | (reclaimable ? __GFP_RECLAIMABLE : 0))`.
    /// Objects up to 4 KiB come from the smallest fitting power-of-two cache
    /// and are aligned to that power of two; larger requests get
    /// `2^ceil(log2(pages))` pages from the provider.
    pub fn kmalloc(
        &self,
        mem: &dyn PhysMemory,
        pages: &dyn PageProvider,
        cpu: usize,
        size: usize,
        reclaimable: bool,
    ) -> Result<PhysAddr, SlabError> {
        if cpu >= MAX_CPUS {
            return Err(SlabError::InvalidCpu);
        }
        if size == 0 {
            return Err(SlabError::InvalidSize);
        }
        let Some(cache) = self.cache_for(size, reclaimable) else {
            return self.kmalloc_large(pages, cpu, size, reclaimable);
        };
        let obj = cache.alloc_bytes(mem, pages, cpu, size as u64)?;
        let bytes = cache.slab_bytes();
        self.span.note(obj.0 & !(bytes - 1), bytes);
        Ok(obj)
    }

    fn kmalloc_large(
        &self,
        pages: &dyn PageProvider,
        cpu: usize,
        size: usize,
        reclaimable: bool,
    ) -> Result<PhysAddr, SlabError> {
        let nr_pages = (size as u64).div_ceil(PAGE_SIZE);
        let order = nr_pages.next_power_of_two().trailing_zeros();
        if order as usize > MAX_ORDER {
            return Err(SlabError::InvalidSize);
        }
        // Claim a slot first so a full table fails before taking pages, and
        // do not hold the lock across the provider.
        let slot = {
            let mut t = self.large.lock();
            let Some(slot) = t.find(NIL) else {
                return Err(SlabError::LargeTableFull);
            };
            t.entries[slot].addr = LARGE_RESERVED;
            slot
        };
        let block = match pages.alloc_pages(cpu, order, reclaimable) {
            Some(b) if b.is_aligned(PAGE_SIZE) => Ok(b),
            Some(b) => {
                self.large_counters.give_back(pages, cpu, b, order);
                Err(SlabError::MisalignedBlock)
            }
            None => Err(SlabError::OutOfMemory),
        };
        let mut t = self.large.lock();
        match block {
            Ok(b) => {
                t.entries[slot] = LargeEntry { addr: b.0, order };
                drop(t);
                self.large_pages.fetch_add(1 << order, Ordering::Relaxed);
                self.large_counters
                    .note_alloc(size as u64, PAGE_SIZE << order);
                Ok(b)
            }
            Err(e) => {
                t.entries[slot].addr = NIL;
                Err(e)
            }
        }
    }

    /// `kfree`. Returns an error, changing nothing, for pointers that are
    /// not live kmalloc allocations (see the module docs for what can be
    /// detected).
    pub fn kfree(
        &self,
        mem: &dyn PhysMemory,
        pages: &dyn PageProvider,
        cpu: usize,
        ptr: PhysAddr,
    ) -> Result<(), SlabError> {
        if cpu >= MAX_CPUS {
            return Err(SlabError::InvalidCpu);
        }
        // Page-aligned kmalloc-1k..4k objects are common; skip the global
        // table lock when no large allocation is live. `Relaxed` suffices:
        // a live block's count reached this CPU with the pointer.
        if ptr.is_aligned(PAGE_SIZE) && self.large_pages.load(Ordering::Relaxed) != 0 {
            let mut t = self.large.lock();
            if let Some(slot) = t.find(ptr.0) {
                let order = t.entries[slot].order;
                // Keep the slot claimed, not the lock, across the provider.
                t.entries[slot].addr = LARGE_RESERVED;
                drop(t);
                if pages.free_pages(cpu, ptr, order).is_err() {
                    // Back in the table as it was: nothing changed.
                    self.large.lock().entries[slot].addr = ptr.0;
                    return Err(SlabError::PageFreeRefused);
                }
                self.large.lock().entries[slot].addr = NIL;
                self.large_pages.fetch_sub(1 << order, Ordering::Relaxed);
                self.large_counters.frees.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        let (slab, info) = self.find_slab(mem, ptr)?;
        let class = info_class(info) as usize;
        let Some(cache) = self.caches.get(class) else {
            return Err(SlabError::WrongCache);
        };
        cache.free_in_slab(mem, pages, cpu, &slab, ptr.0)
    }

    /// Finds the header of the slab containing `ptr` by probing the
    /// naturally aligned block starts of orders `0..=SLAB_MAX_ORDER` (see
    /// the module docs on why this is sound for valid pointers and only
    /// best effort for others).
    fn find_slab<'m>(
        &self,
        mem: &'m dyn PhysMemory,
        ptr: PhysAddr,
    ) -> Result<(SlabRef<'m>, u64), SlabError> {
        let (lo, hi) = self.span.get();
        if ptr.0 < lo || ptr.0 >= hi {
            return Err(SlabError::NotSlabObject);
        }
        for order in 0..=SLAB_MAX_ORDER {
            let base = ptr.0 & !((PAGE_SIZE << order) - 1);
            if base < lo {
                break;
            }
            let slab = SlabRef::new(mem, PhysAddr(base));
            if slab.has_magic() {
                let info = slab.info().load(Ordering::Relaxed);
                let slab_order = info_order(info);
                if slab_order <= SLAB_MAX_ORDER && ptr.0 < base + (PAGE_SIZE << slab_order) {
                    return Ok((slab, info));
                }
            }
        }
        Err(SlabError::NotSlabObject)
    }

    /// `kmem_cache_shrink` on every kmalloc cache; returns slabs released.
    pub fn shrink(
        &self,
        mem: &dyn PhysMemory,
        pages: &dyn PageProvider,
        cpu: usize,
    ) -> Result<u64, SlabError> {
        let mut released = 0;
        for cache in &self.caches {
            released += cache.shrink(mem, pages, cpu)?;
        }
        Ok(released)
    }
}
