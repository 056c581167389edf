use super::*;
use crate::phys::sim::SimMemory;
use proptest::prelude::*;

fn r(base: u64, end: u64) -> Region {
    Region {
        base: PhysAddr(base),
        size: end - base,
    }
}

fn add(mb: &mut Memblock, mem: &SimMemory, base: u64, size: u64) -> Result<(), MemblockError> {
    // SAFETY: nothing lives in simulated RAM, and SimMemory panics instead of
    // touching anything outside its own buffer.
    unsafe { mb.add(mem, PhysAddr(base), size) }
}

fn reserve(mb: &mut Memblock, mem: &SimMemory, base: u64, size: u64) {
    mb.reserve(mem, PhysAddr(base), size).unwrap();
}

/// Memory nothing is ever expected to be written to: any write panics.
fn no_mem() -> SimMemory {
    SimMemory::new(PhysAddr(0), 0)
}

/// Sorted, non-empty, non-overlapping and non-adjacent.
fn assert_canonical(list: &[Region]) {
    for x in list {
        assert!(x.size > 0, "{list:?}");
    }
    for w in list.windows(2) {
        assert!(w[0].end().0 < w[1].base.0, "{list:?}");
    }
}

fn frees(mb: &Memblock) -> Vec<(u64, u64)> {
    mb.free_ranges().map(|(s, e)| (s.0, e.0)).collect()
}

#[test]
fn merges_adjacent() {
    let (mut mb, m) = (Memblock::new(), no_mem());
    add(&mut mb, &m, 0x2000, 0x1000).unwrap();
    add(&mut mb, &m, 0x3000, 0x1000).unwrap();
    add(&mut mb, &m, 0x1000, 0x1000).unwrap();
    assert_eq!(mb.memory(), &[r(0x1000, 0x4000)]);
}

#[test]
fn merges_overlapping_and_contained() {
    let (mut mb, m) = (Memblock::new(), no_mem());
    add(&mut mb, &m, 0x1000, 0x2000).unwrap();
    add(&mut mb, &m, 0x2000, 0x3000).unwrap();
    assert_eq!(mb.memory(), &[r(0x1000, 0x5000)]);
    add(&mut mb, &m, 0x1800, 0x100).unwrap();
    assert_eq!(mb.memory(), &[r(0x1000, 0x5000)]);
    add(&mut mb, &m, 0x8000, 0x1000).unwrap();
    add(&mut mb, &m, 0xa000, 0x1000).unwrap();
    // One range swallowing several.
    add(&mut mb, &m, 0x800, 0x10000).unwrap();
    assert_eq!(mb.memory(), &[r(0x800, 0x10800)]);
}

#[test]
fn many_disjoint_sorted_then_bridged() {
    let (mut mb, m) = (Memblock::new(), no_mem());
    for i in (0..100u64).rev() {
        add(&mut mb, &m, i * 0x3000, 0x1000).unwrap();
    }
    assert_eq!(mb.memory().len(), 100);
    assert_canonical(mb.memory());
    assert_eq!(mb.memory()[7], r(7 * 0x3000, 7 * 0x3000 + 0x1000));
    add(&mut mb, &m, 0x1000, 99 * 0x3000).unwrap();
    assert_eq!(mb.memory(), &[r(0, 99 * 0x3000 + 0x1000)]);
}

#[test]
fn zero_size_and_overflow() {
    let (mut mb, m) = (Memblock::new(), no_mem());
    add(&mut mb, &m, 0x1000, 0).unwrap();
    mb.reserve(&m, PhysAddr(0x1000), 0).unwrap();
    assert!(mb.memory().is_empty() && mb.reserved().is_empty());
    assert_eq!(
        add(&mut mb, &m, u64::MAX - 10, 11),
        Err(MemblockError::Overflow)
    );
    assert_eq!(
        mb.reserve(&m, PhysAddr(u64::MAX), 2),
        Err(MemblockError::Overflow)
    );
    add(&mut mb, &m, u64::MAX - 10, 10).unwrap();
    assert_eq!(mb.memory(), &[r(u64::MAX - 10, u64::MAX)]);
    assert_eq!(mb.total_pages(), 0);
    assert_eq!(mb.free_pages(), 0);
}

#[test]
fn reserve_merges_and_may_lie_outside_memory() {
    let (mut mb, m) = (Memblock::new(), no_mem());
    add(&mut mb, &m, 0x10000, 0x10000).unwrap();
    reserve(&mut mb, &m, 0x11000, 0x1000);
    reserve(&mut mb, &m, 0x13000, 0x1000);
    reserve(&mut mb, &m, 0x11800, 0x2000);
    assert_eq!(mb.reserved(), &[r(0x11000, 0x14000)]);
    reserve(&mut mb, &m, 0x100000, 0x1000);
    assert_eq!(mb.reserved().len(), 2);
    assert_eq!(mb.memory(), &[r(0x10000, 0x20000)]);
    assert_eq!(frees(&mb), vec![(0x10000, 0x11000), (0x14000, 0x20000)]);
}

#[test]
fn alloc_alignment_and_min() {
    let (mut mb, m) = (Memblock::new(), no_mem());
    add(&mut mb, &m, 0x10000, 0x10000).unwrap();
    reserve(&mut mb, &m, 0x10000, 0x1000);
    let a = |mb: &mut Memblock, size, align, min| mb.alloc(&m, size, align, PhysAddr(min));
    assert_eq!(a(&mut mb, 0x100, 0x1000, 0), Ok(PhysAddr(0x11000)));
    assert_eq!(a(&mut mb, 0x10, 0x10, 0), Ok(PhysAddr(0x11100)));
    assert_eq!(a(&mut mb, 0x100, 0x1000, 0x15001), Ok(PhysAddr(0x16000)));
    assert_eq!(mb.reserved(), &[r(0x10000, 0x11110), r(0x16000, 0x16100)]);
    // First fit skips a hole that is too small.
    assert_eq!(a(&mut mb, 0x5000, 8, 0), Ok(PhysAddr(0x16100)));
    assert_eq!(a(&mut mb, 0x10000, 8, 0), Err(MemblockError::NoMemory));
    assert_eq!(a(&mut mb, 8, 8, 0x20000), Err(MemblockError::NoMemory));
    assert_eq!(a(&mut mb, 8, 3, 0), Err(MemblockError::InvalidAlign));
    assert_eq!(a(&mut mb, 8, 0, 0), Err(MemblockError::InvalidAlign));
    assert_eq!(a(&mut mb, 0, 8, 0), Err(MemblockError::InvalidSize));
    assert_eq!(a(&mut mb, 0x4ef0, 1, 0), Ok(PhysAddr(0x11110)));
}

#[test]
fn free_ranges_shrink_to_pages() {
    let (mut mb, m) = (Memblock::new(), no_mem());
    add(&mut mb, &m, 0x1800, 0x5000).unwrap(); // [0x1800, 0x6800)
    assert_eq!(mb.total_pages(), 4);
    reserve(&mut mb, &m, 0x3100, 0x100);
    assert_eq!(frees(&mb), vec![(0x2000, 0x3000), (0x4000, 0x6000)]);
    assert_eq!(mb.free_pages(), 3);
    // A reservation spanning a hole between two memory ranges.
    add(&mut mb, &m, 0x8000, 0x4000).unwrap();
    reserve(&mut mb, &m, 0x5000, 0x4000);
    assert_eq!(
        frees(&mb),
        vec![(0x2000, 0x3000), (0x4000, 0x5000), (0x9000, 0xc000)]
    );
    assert_eq!(mb.total_pages(), 8);
    assert_eq!(mb.free_pages(), 5);
}

#[test]
fn grows_memory_beyond_128_and_256() {
    let m = SimMemory::new(PhysAddr(0), 0x100000);
    let mut mb = Memblock::new();
    add(&mut mb, &m, 0, 0x100000).unwrap();
    let n = 600u64;
    for i in 0..n {
        add(&mut mb, &m, 0x200000 + i * 0x2000, 0x1000).unwrap();
    }
    assert_eq!(mb.memory().len(), n as usize + 1);
    assert_canonical(mb.memory());
    for i in 0..n {
        let b = 0x200000 + i * 0x2000;
        assert_eq!(mb.memory()[i as usize + 1], r(b, b + 0x1000));
    }
    // 128 -> 256 (one page) -> 512 (two) -> 1024 (four): each old grown
    // array was released, leaving only the current one.
    assert_eq!(mb.reserved(), &[r(0x3000, 0x7000)]);
    assert_eq!(mb.memory.cap, 1024);
    assert_eq!(mb.total_pages(), 256 + n);
    assert_eq!(mb.free_pages(), 256 - 4 + n);
    // Merges still work in grown storage.
    add(&mut mb, &m, 0x200000, n * 0x2000).unwrap();
    assert_eq!(mb.memory().len(), 2);
}

#[test]
fn grows_reserved_beyond_256() {
    let m = SimMemory::new(PhysAddr(0), 0x100000);
    let mut mb = Memblock::new();
    add(&mut mb, &m, 0, 0x100000).unwrap();
    for i in 0..300u64 {
        reserve(&mut mb, &m, 0x400000 + i * 0x2000, 0x1000);
    }
    let res = mb.reserved();
    assert_eq!(res.len(), 301);
    assert_canonical(res);
    assert_eq!(res[0], r(0x1000, 0x3000)); // 512-entry array; 256 one freed
    assert_eq!(
        res[300],
        r(0x400000 + 299 * 0x2000, 0x400000 + 299 * 0x2000 + 0x1000)
    );
    let got = mb.alloc(&m, 0x1000, 0x1000, PhysAddr(0)).unwrap();
    assert_eq!(got, PhysAddr(0));
    assert_eq!(mb.reserved()[0], r(0, 0x3000));
}

#[test]
fn growth_avoids_range_being_reserved() {
    let m = SimMemory::new(PhysAddr(0), 0x10000);
    let mut mb = Memblock::new();
    add(&mut mb, &m, 0, 0x10000).unwrap();
    for i in 0..INIT_REGIONS as u64 {
        reserve(&mut mb, &m, 0x100000 + i * 0x2000, 0x1000);
    }
    // Needs a new slot in a full list; the new array must not land on the
    // range itself (the lowest free page).
    reserve(&mut mb, &m, 0, 0x1000);
    assert_eq!(mb.reserved()[0], r(0, 0x2000));
    assert_eq!(mb.reserved().len(), INIT_REGIONS + 1);
}

#[test]
fn growth_failure_changes_nothing() {
    let m = no_mem();
    let mut mb = Memblock::new();
    reserve(&mut mb, &m, 0, 1 << 40);
    for i in 0..INIT_REGIONS as u64 {
        add(&mut mb, &m, i * 0x2000, 0x1000).unwrap();
    }
    let before: Vec<Region> = mb.memory().to_vec();
    assert_eq!(
        add(&mut mb, &m, 0x1_0000_0000, 0x1000),
        Err(MemblockError::NoRegionSpace)
    );
    assert_eq!(mb.memory(), &before[..]);
    assert_eq!(mb.reserved(), &[r(0, 1 << 40)]);
    // Merging needs no slot, so it still works when full.
    add(&mut mb, &m, 0x1000, 0x1000).unwrap();
    assert_eq!(mb.memory().len(), INIT_REGIONS - 1);
}

#[test]
fn usable_from_a_static() {
    use crate::sync::SpinLock;
    static MB: SpinLock<Memblock> = SpinLock::new(Memblock::new());
    let m = no_mem();
    let mut mb = MB.lock();
    add(&mut mb, &m, 0x1000, 0x1000).unwrap();
    assert_eq!(mb.total_pages(), 1);
}

// ---- property tests against a byte-unit model ----

/// Model granularity: fine enough to create partially reserved pages.
const UNIT: u64 = 256;
/// Units in the randomly mutated window.
const UNITS: usize = 2048;
/// The window lives above an arena that only memblock's own arrays use, so
/// the model does not have to predict where they go.
const WIN: u64 = 0x100000;
const ARENA: u64 = 0x40000;
const UNITS_PER_PAGE: usize = (PAGE_SIZE / UNIT) as usize;

#[derive(Debug, Clone)]
enum Op {
    Add(usize, usize),
    Reserve(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    // Mostly short ranges on a grid with gaps, so that hundreds of separate
    // regions build up and both lists have to grow (twice, in some cases);
    // some free-form ranges to overlap, touch and merge across them.
    let sparse = (0..UNITS / 3, 1..=2usize).prop_map(|(k, l)| (k * 3, l));
    let free_form = (0..UNITS, 1..16usize);
    prop_oneof![
        8 => sparse.clone().prop_map(|(b, l)| Op::Add(b, l)),
        4 => sparse.prop_map(|(b, l)| Op::Reserve(b, l)),
        2 => free_form.clone().prop_map(|(b, l)| Op::Add(b, l)),
        1 => free_form.prop_map(|(b, l)| Op::Reserve(b, l)),
    ]
}

/// Maximal runs of `true` as window regions.
fn runs(units: &[bool]) -> Vec<Region> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < units.len() {
        if !units[i] {
            i += 1;
            continue;
        }
        let s = i;
        while i < units.len() && units[i] {
            i += 1;
        }
        out.push(r(WIN + s as u64 * UNIT, WIN + i as u64 * UNIT));
    }
    out
}

fn in_list(list: &[Region], s: u64, e: u64, whole: bool) -> bool {
    list.iter().any(|x| {
        if whole {
            x.base.0 <= s && e <= x.end().0
        } else {
            x.base.0 < e && s < x.end().0
        }
    })
}

/// Pages of RAM that some reservation touches, computed page by page from
/// memblock's own lists.
fn reserved_pages_in_memory(mb: &Memblock) -> u64 {
    let end = mb.memory().last().map_or(0, |x| x.end().0);
    (0..end / PAGE_SIZE)
        .map(|p| (p * PAGE_SIZE, (p + 1) * PAGE_SIZE))
        .filter(|&(s, e)| in_list(mb.memory(), s, e, true) && in_list(mb.reserved(), s, e, false))
        .count() as u64
}

proptest! {
    #[test]
    fn matches_model(ops in prop::collection::vec(op(), 0..1000)) {
        let sim = SimMemory::new(PhysAddr(0), ARENA);
        let mut mb = Memblock::new();
        add(&mut mb, &sim, 0, ARENA).unwrap();
        let mut mem = vec![false; UNITS];
        let mut res = vec![false; UNITS];
        for op in &ops {
            let (b, l, model) = match *op {
                Op::Add(b, l) => (b, l, &mut mem),
                Op::Reserve(b, l) => (b, l, &mut res),
            };
            let l = l.min(UNITS - b);
            let (base, size) = (WIN + b as u64 * UNIT, l as u64 * UNIT);
            match op {
                Op::Add(..) => add(&mut mb, &sim, base, size).unwrap(),
                Op::Reserve(..) => reserve(&mut mb, &sim, base, size),
            }
            model[b..b + l].iter_mut().for_each(|u| *u = true);
        }
        assert_canonical(mb.memory());
        assert_canonical(mb.reserved());
        let win = |l: &[Region]| l.iter().copied().filter(|x| x.base.0 >= WIN).collect::<Vec<_>>();
        prop_assert_eq!(win(mb.memory()), runs(&mem));
        prop_assert_eq!(win(mb.reserved()), runs(&res));
        // Arena: one memory region; only page-aligned grown arrays reserved.
        prop_assert_eq!(mb.memory()[0], r(0, ARENA));
        let arena_res: Vec<Region> =
            mb.reserved().iter().copied().filter(|x| x.base.0 < WIN).collect();
        for x in &arena_res {
            prop_assert!(x.base.is_aligned(PAGE_SIZE) && x.size % PAGE_SIZE == 0);
        }
        let arena_res_pages: u64 = arena_res.iter().map(|x| x.size / PAGE_SIZE).sum();

        // Window pages, from the model.
        let pages = |f: &dyn Fn(usize) -> bool| (0..UNITS / UNITS_PER_PAGE).filter(|&p| f(p)).count() as u64;
        let units = |p: usize| p * UNITS_PER_PAGE..(p + 1) * UNITS_PER_PAGE;
        let win_total = pages(&|p| units(p).all(|u| mem[u]));
        let win_free = pages(&|p| units(p).all(|u| mem[u] && !res[u]));
        let arena_pages = ARENA / PAGE_SIZE;
        prop_assert_eq!(mb.total_pages(), arena_pages + win_total);
        prop_assert_eq!(mb.free_pages(), arena_pages - arena_res_pages + win_free);
        let model_free: Vec<(u64, u64)> = (0..UNITS / UNITS_PER_PAGE)
            .filter(|&p| units(p).all(|u| mem[u] && !res[u]))
            .map(|p| (WIN + p as u64 * PAGE_SIZE, WIN + (p as u64 + 1) * PAGE_SIZE))
            .collect();
        let got_free: Vec<(u64, u64)> = frees(&mb)
            .into_iter()
            .filter(|x| x.0 >= WIN)
            .flat_map(|(s, e)| (s / PAGE_SIZE..e / PAGE_SIZE).map(|p| (p * PAGE_SIZE, (p + 1) * PAGE_SIZE)))
            .collect();
        prop_assert_eq!(got_free, model_free);
        prop_assert_eq!(mb.free_pages() + reserved_pages_in_memory(&mb), mb.total_pages());

        // Hand-off, as the page allocator's init walks it: the free ranges
        // hold exactly the free pages, every one whole RAM untouched by any
        // reservation, so handed-off + memblock-reserved == total.
        let mut seen = std::collections::BTreeSet::new();
        for (s, e) in mb.free_ranges() {
            for p in s.0.div_ceil(PAGE_SIZE)..e.0 / PAGE_SIZE {
                let (s, e) = (p * PAGE_SIZE, (p + 1) * PAGE_SIZE);
                prop_assert!(in_list(mb.memory(), s, e, true));
                prop_assert!(!in_list(mb.reserved(), s, e, false));
                prop_assert!(seen.insert(p));
            }
        }
        prop_assert_eq!(seen.len() as u64, mb.free_pages());
        prop_assert_eq!(seen.len() as u64 + reserved_pages_in_memory(&mb), mb.total_pages());
    }
}
