//! What the balloon holds: a stack of the units it took from the page
//! allocator (single 4 KiB pages, or whole 2 MiB pageblocks), kept as the
//! very arrays of le32 PFNs the virtio balloon sends (virtio 1.2 §5.5.6),
//! so inflating and deflating copy nothing: a buffer handed to the device
//! is a range of one of these list pages.
//!
//! Why list pages instead of linking the balloon's pages through their own
//! memory, or through the frame descriptors as Linux does (`page->lru`):
//! the host discards inflated pages, so their contents are gone, and the
//! descriptors belong to guest-mm. A list page holds [`PFNS_PER_PAGE`]
//! PFNs (the 4 KiB buffer of 1024 PFNs the driver sends), all of one unit
//! order: 1024 single pages, or two pageblocks as two runs of 512
//! consecutive PFNs. The chunks (list page address, entries used, order)
//! live in an array the driver sizes for all of RAM at start.
//!
//! Pushes append; deflating pops from the top (LIFO, as Linux's balloon
//! list), so the most recently inflated memory comes back first. Batches
//! are described by positions: what was pushed since a position is the
//! inflate batch, what lies above a position the deflate batch.
//!
//! Pure code over memory it is handed: the VMM's test build compiles this
//! file too and runs the tests below on the host.

/// PFNs one list page holds: a 4 KiB page of le32 PFNs.
pub const PFNS_PER_PAGE: usize = 1024;
/// Order of a 2 MiB unit (a pageblock of 4 KiB pages).
pub const HUGE_ORDER: u8 = 9;

/// One list page: where it is, how many PFN entries are used, and the
/// order of the units it holds (each unit takes 2^order entries).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Chunk {
    /// Guest-physical (identity-mapped) address of the list page.
    pub page: u64,
    pub len: u32,
    pub order: u32,
}

/// A place in the stack: chunks below `chunk` whole, and the first
/// `entry` entries of chunk `chunk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub chunk: usize,
    pub entry: usize,
}

/// Why a unit could not be pushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError {
    /// A new list page was needed and none could be had.
    NoListPage,
    /// The chunk array is full.
    NoChunk,
    /// A unit order the list does not hold (above [`HUGE_ORDER`]).
    Order,
}

pub struct PfnStack<'a> {
    chunks: &'a mut [Chunk],
    n: usize,
    /// 4 KiB pages held in units (not counting the list pages).
    pages: u64,
}

impl<'a> PfnStack<'a> {
    pub fn new(chunks: &'a mut [Chunk]) -> Self {
        PfnStack {
            chunks,
            n: 0,
            pages: 0,
        }
    }

    /// 4 KiB pages the units hold.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// List pages in use.
    pub fn list_pages(&self) -> usize {
        self.n
    }

    pub fn end(&self) -> Pos {
        match self.n {
            0 => Pos { chunk: 0, entry: 0 },
            n => Pos {
                chunk: n - 1,
                entry: self.chunks[n - 1].len as usize,
            },
        }
    }

    fn slot(page: u64, entry: usize) -> *mut u32 {
        (page as usize + 4 * entry) as *mut u32
    }

    /// Appends the unit of 2^order pages at `pfn` (for order 9, its 512
    /// PFNs). `new_page` gives a zeroed-or-not 4 KiB list page when the top
    /// one is full or of another order.
    pub fn push(
        &mut self,
        pfn: u32,
        order: u8,
        new_page: impl FnOnce() -> Option<u64>,
    ) -> Result<(), PushError> {
        if order > HUGE_ORDER {
            return Err(PushError::Order);
        }
        let per = 1usize << order;
        if !self.fits_top(order) {
            if self.n == self.chunks.len() {
                return Err(PushError::NoChunk);
            }
            let page = new_page().ok_or(PushError::NoListPage)?;
            self.chunks[self.n] = Chunk {
                page,
                len: 0,
                order: order as u32,
            };
            self.n += 1;
        }
        let c = &mut self.chunks[self.n - 1];
        for i in 0..per {
            // SAFETY: the list page is ours, 4 KiB, and len + per fits.
            unsafe {
                Self::slot(c.page, c.len as usize + i).write_volatile((pfn + i as u32).to_le())
            };
        }
        c.len += per as u32;
        self.pages += per as u64;
        Ok(())
    }

    /// The buffers (address, bytes) holding the entries from `from` to
    /// `to` (from at or below to), one per list page touched.
    pub fn ranges(&self, from: Pos, to: Pos) -> impl Iterator<Item = (u64, u32)> + '_ {
        let last = if self.n == 0 {
            0
        } else {
            to.chunk.min(self.n - 1)
        };
        (from.chunk..=last).filter_map(move |c| {
            if self.n == 0 {
                return None;
            }
            let ch = &self.chunks[c];
            let s = if c == from.chunk { from.entry } else { 0 };
            let e = if c == to.chunk {
                to.entry
            } else {
                ch.len as usize
            };
            (e > s).then(|| (ch.page + 4 * s as u64, (4 * (e - s)) as u32))
        })
    }

    /// List pages the entries from `from` to the end touch.
    pub fn chunks_since(&self, from: Pos) -> usize {
        self.ranges(from, self.end()).count()
    }

    /// Where popping would stop to give back at most `want` pages in at
    /// most `max_chunks` list pages, whole units only; with the pages it
    /// gives. A unit larger than what is still wanted stops the walk (the
    /// balloon stays up to one unit above its target rather than below).
    pub fn pop_position(&self, want: u64, max_chunks: usize) -> (Pos, u64) {
        let mut pos = self.end();
        let mut got = 0u64;
        let mut touched = 0;
        let mut c = self.n;
        while c > 0 && touched < max_chunks {
            c -= 1;
            let ch = &self.chunks[c];
            let per = 1usize << ch.order;
            let mut e = ch.len as usize;
            touched += 1;
            while e >= per && got + per as u64 <= want {
                e -= per;
                got += per as u64;
            }
            pos = Pos { chunk: c, entry: e };
            if e > 0 {
                break;
            }
        }
        (pos, got)
    }

    /// Whether a unit of `order` goes into the top list page (else the
    /// push takes a new one).
    pub fn fits_top(&self, order: u8) -> bool {
        self.n > 0 && {
            let c = &self.chunks[self.n - 1];
            c.order == order as u32 && c.len as usize + (1 << order) <= PFNS_PER_PAGE
        }
    }

    /// Pages in the topmost unit (0 when empty).
    pub fn top_unit_pages(&self) -> u64 {
        match self.n {
            0 => 0,
            n => 1 << self.chunks[n - 1].order,
        }
    }

    /// Pops everything above `to`, handing `f` each unit (topmost first)
    /// and each list page emptied.
    pub fn truncate(&mut self, to: Pos, mut f: impl FnMut(Popped)) {
        while self.n > 0 {
            let top = self.n - 1;
            let keep = match top.cmp(&to.chunk) {
                core::cmp::Ordering::Greater => 0,
                core::cmp::Ordering::Equal => to.entry,
                core::cmp::Ordering::Less => break,
            };
            let ch = self.chunks[top];
            let per = 1usize << ch.order;
            let mut e = ch.len as usize;
            while e >= keep + per {
                e -= per;
                // SAFETY: an entry of our list page, below len.
                let pfn = u32::from_le(unsafe { Self::slot(ch.page, e).read_volatile() });
                f(Popped::Unit {
                    pfn,
                    order: ch.order as u8,
                });
                self.pages -= per as u64;
            }
            self.chunks[top].len = e as u32;
            if e == 0 {
                f(Popped::ListPage(ch.page));
                self.n -= 1;
            }
            if top == to.chunk {
                break;
            }
        }
    }
}

/// What [`PfnStack::truncate`] gives back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Popped {
    Unit {
        pfn: u32,
        order: u8,
    },
    /// The address of a list page no longer used.
    ListPage(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(4096))]
    struct Page([u8; 4096]);

    /// List pages from a pool; records which come back.
    struct Pool {
        pages: Vec<Box<Page>>,
        next: usize,
    }

    impl Pool {
        fn new(n: usize) -> Pool {
            Pool {
                pages: (0..n).map(|_| Box::new(Page([0xee; 4096]))).collect(),
                next: 0,
            }
        }
        fn take(&mut self) -> Option<u64> {
            let p = self.pages.get(self.next)?.0.as_ptr() as u64;
            self.next += 1;
            Some(p)
        }
    }

    fn pfns(addr: u64, bytes: u32) -> Vec<u32> {
        (0..bytes as usize / 4)
            .map(|i| unsafe { ((addr as usize + 4 * i) as *const u32).read() })
            .collect()
    }

    #[test]
    fn small_pages_fill_list_pages_of_1024_and_batches_are_ranges() {
        let mut pool = Pool::new(4);
        let mut chunks = [Chunk::default(); 4];
        let mut s = PfnStack::new(&mut chunks);
        for p in 0..1000u32 {
            s.push(5000 + p, 0, || pool.take()).unwrap();
        }
        let mark = s.end();
        for p in 1000..1500u32 {
            s.push(5000 + p, 0, || pool.take()).unwrap();
        }
        assert_eq!((s.pages(), s.list_pages()), (1500, 2));
        let r: Vec<_> = s.ranges(mark, s.end()).collect();
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(r[0].1, 4 * 24);
        assert_eq!(r[1].1, 4 * 476);
        let all: Vec<u32> = r.iter().flat_map(|&(a, b)| pfns(a, b)).collect();
        assert_eq!(all, (6000..6500).collect::<Vec<_>>());
        assert_eq!(s.chunks_since(mark), 2);
    }

    #[test]
    fn huge_units_are_aligned_runs_of_512_two_per_list_page() {
        let mut pool = Pool::new(4);
        let mut chunks = [Chunk::default(); 4];
        let mut s = PfnStack::new(&mut chunks);
        for b in 0..3u32 {
            s.push(512 * (10 + b), HUGE_ORDER, || pool.take()).unwrap();
        }
        assert_eq!((s.pages(), s.list_pages()), (1536, 2));
        assert!(s.fits_top(HUGE_ORDER) && !s.fits_top(0));
        assert_eq!(s.top_unit_pages(), 512);
        let r: Vec<_> = s.ranges(Pos { chunk: 0, entry: 0 }, s.end()).collect();
        assert_eq!(r.iter().map(|x| x.1).collect::<Vec<_>>(), [4096, 2048]);
        let all: Vec<u32> = r.iter().flat_map(|&(a, b)| pfns(a, b)).collect();
        assert_eq!(all, (5120..5120 + 1536).collect::<Vec<_>>());
        // A single page after them starts a list page of its own order.
        s.push(7, 0, || pool.take()).unwrap();
        assert_eq!(s.list_pages(), 3);
        assert_eq!(s.push(0, 10, || pool.take()), Err(PushError::Order));
    }

    #[test]
    fn pop_is_lifo_by_whole_units_and_never_below_the_want() {
        let mut pool = Pool::new(8);
        let mut chunks = [Chunk::default(); 8];
        let mut s = PfnStack::new(&mut chunks);
        s.push(1024, HUGE_ORDER, || pool.take()).unwrap();
        s.push(1536, HUGE_ORDER, || pool.take()).unwrap();
        s.push(2048, HUGE_ORDER, || pool.take()).unwrap();
        for p in 0..10 {
            s.push(100 + p, 0, || pool.take()).unwrap();
        }
        // 300 pages wanted: the ten single pages only (the next unit is
        // 512).
        let (pos, got) = s.pop_position(300, 8);
        assert_eq!(got, 10);
        let r: Vec<_> = s.ranges(pos, s.end()).collect();
        assert_eq!(pfns(r[0].0, r[0].1), (100..110).collect::<Vec<_>>());
        // 1100 pages: ten singles and two pageblocks.
        let (pos, got) = s.pop_position(1100, 8);
        assert_eq!(got, 1034);
        let mut units = Vec::new();
        let mut freed_lists = 0;
        s.truncate(pos, |p| match p {
            Popped::Unit { pfn, order } => units.push((pfn, order)),
            Popped::ListPage(_) => freed_lists += 1,
        });
        assert_eq!(units[0], (109, 0), "topmost first");
        assert_eq!(units[10..], [(2048, 9), (1536, 9)]);
        assert_eq!(
            freed_lists, 2,
            "the single pages' list and the last pageblocks' list"
        );
        assert_eq!((s.pages(), s.list_pages()), (512, 1));
        // The rest, one chunk at most per call.
        let (pos, got) = s.pop_position(u64::MAX, 1);
        assert_eq!(got, 512);
        s.truncate(pos, |p| {
            freed_lists += matches!(p, Popped::ListPage(_)) as i32
        });
        assert_eq!((s.pages(), s.list_pages(), freed_lists), (0, 0, 3));
        assert_eq!(s.pop_position(10, 4), (Pos { chunk: 0, entry: 0 }, 0));
    }

    #[test]
    fn a_full_chunk_array_or_no_list_page_stops_the_push() {
        let mut chunks = [Chunk::default(); 1];
        let mut s = PfnStack::new(&mut chunks);
        assert_eq!(s.push(1, 0, || None), Err(PushError::NoListPage));
        let mut pool = Pool::new(2);
        for p in 0..1024 {
            s.push(p, 0, || pool.take()).unwrap();
        }
        assert_eq!(s.push(5, 0, || pool.take()), Err(PushError::NoChunk));
        assert_eq!(s.pages(), 1024);
    }

    #[test]
    fn pushes_and_pops_in_any_mix_keep_the_books() {
        // A deterministic walk: random-ish pushes of both orders and pops,
        // checked against a model Vec.
        let mut pool = Pool::new(512);
        let mut chunks = [Chunk::default(); 512];
        let mut s = PfnStack::new(&mut chunks);
        let mut model: Vec<(u32, u8)> = Vec::new();
        let mut free_pages: Vec<u64> = Vec::new();
        let mut x = 12345u64;
        let mut next_pfn = 1u32 << 20;
        for _ in 0..4000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if !(x >> 33).is_multiple_of(3) {
                let order = if (x >> 40).is_multiple_of(4) {
                    HUGE_ORDER
                } else {
                    0
                };
                let pfn = next_pfn;
                next_pfn += 1 << order;
                let got = s.push(pfn, order, || free_pages.pop().or_else(|| pool.take()));
                if got.is_ok() {
                    model.push((pfn, order));
                }
            } else {
                let want = (x >> 20) % 2000;
                let (pos, got) = s.pop_position(want, 3);
                let mut popped = Vec::new();
                s.truncate(pos, |p| match p {
                    Popped::Unit { pfn, order } => popped.push((pfn, order)),
                    Popped::ListPage(pg) => free_pages.push(pg),
                });
                assert_eq!(popped.iter().map(|u| 1u64 << u.1).sum::<u64>(), got);
                for u in popped {
                    assert_eq!(model.pop(), Some(u));
                }
            }
            assert_eq!(s.pages(), model.iter().map(|u| 1u64 << u.1).sum::<u64>());
        }
        let all: Vec<u32> = s
            .ranges(Pos { chunk: 0, entry: 0 }, s.end())
            .flat_map(|(a, b)| pfns(a, b))
            .collect();
        let want: Vec<u32> = model.iter().flat_map(|&(p, o)| p..p + (1 << o)).collect();
        assert_eq!(all, want);
    }
}
