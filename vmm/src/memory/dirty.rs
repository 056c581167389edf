//! Dirty logging of guest RAM (`--dirty-log off|bitmap|ring`): which pages
//! were written, by the guest's vCPUs (KVM's log) and by the VMM itself
//! (vm-memory's bitmap in every region, see [`super::RamOwner`]).
//!
//! Why two sources: KVM learns of a write only when a vCPU makes it through
//! stage-2 (a write-protection fault on a logged page); a device that fills
//! a guest buffer writes through the VMM's own mapping and KVM never sees
//! it. The dirty set is the union, so a device write is never missing.
//!
//! Why off by default: logging write-protects every logged page, so the
//! first write to a page after each harvest costs a fault and an exit into
//! KVM, and logged memory is mapped with 4 KiB pages in stage-2 (no 2 MiB
//! mappings while a slot is logged). README gives the cost measured here.
//!
//! `bitmap`: every memslot carries KVM_MEM_LOG_DIRTY_PAGES and the VM has
//! KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, so KVM_GET_DIRTY_LOG only reads the
//! log and KVM_CLEAR_DIRTY_LOG re-protects just the pages it names. The log
//! is not KVM_DIRTY_LOG_INITIALLY_SET: that flag saves the up-front
//! write-protection of memory that is already mapped, but the slots here
//! are registered before the guest has touched anything (nothing to
//! protect), and an initially-set log would report all of RAM dirty until
//! the first clear, where the report means "written since boot".
//!
//! `ring`: KVM_CAP_DIRTY_LOG_RING_ACQ_REL (or KVM_CAP_DIRTY_LOG_RING) is
//! enabled before any vCPU exists (KVM refuses it later), each vCPU's ring
//! is mapped from its fd at KVM_DIRTY_LOG_PAGE_OFFSET, entries are
//! collected with an acquire load of their flags and handed back with a
//! release store of RESET, then KVM_RESET_DIRTY_RINGS lets KVM re-protect
//! the pages and reuse the entries. A vCPU whose ring is full exits with
//! KVM_EXIT_DIRTY_RING_FULL; its thread harvests and re-enters.
//!
//! Harvests happen on the vCPU threads (the guest's dirty-window marks, a
//! full ring) and once at the end of the run, all under one lock. The
//! window marks let a guest have the log cleared and read at points of its
//! choosing while it is quiescent (`workload=dirty`).
use super::{GuestMemory, RamRegion};
use kvm_bindings::{
    kvm_clear_dirty_log, kvm_dirty_gfn, kvm_enable_cap, KVM_CAP_DIRTY_LOG_RING,
    KVM_CAP_DIRTY_LOG_RING_ACQ_REL, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
    KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, KVM_DIRTY_LOG_PAGE_OFFSET,
};
use kvm_ioctls::{VcpuFd, VmFd};
use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// Guest page size the logs count in.
pub const PAGE_SIZE: u64 = 4096;
pub const PAGE_SIZE_NZ: NonZeroUsize = NonZeroUsize::new(PAGE_SIZE as usize).unwrap();
/// Bytes of ring per vCPU asked for (KVM may offer less): 4096 entries of
/// 16 bytes. Smaller rings mean more KVM_EXIT_DIRTY_RING_FULL exits, larger
/// ones more memory pinned per vCPU.
pub const RING_BYTES: u32 = 64 << 10;
/// `kvm_dirty_gfn.flags` bits (include/uapi/linux/kvm.h).
const GFN_DIRTY: u32 = 1 << 0;
const GFN_RESET: u32 = 1 << 1;

vmm_sys_util::ioctl_iowr_nr!(
    KVM_CLEAR_DIRTY_LOG,
    kvm_bindings::KVMIO,
    0xc0,
    kvm_clear_dirty_log
);
vmm_sys_util::ioctl_io_nr!(KVM_RESET_DIRTY_RINGS, kvm_bindings::KVMIO, 0xc7);

/// `--dirty-log`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DirtyMode {
    #[default]
    Off,
    Bitmap,
    Ring,
}

#[derive(Debug, thiserror::Error)]
pub enum DirtyError {
    #[error("--dirty-log ring: this host's KVM offers neither KVM_CAP_DIRTY_LOG_RING_ACQ_REL nor KVM_CAP_DIRTY_LOG_RING (use --dirty-log bitmap)")]
    RingUnsupported,
    #[error("--dirty-log ring: KVM's largest dirty ring is {0} bytes, below one page of entries")]
    RingTooSmall(i32),
    #[error("--dirty-log bitmap: this host's KVM lacks KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (use --dirty-log ring, or off)")]
    ManualProtectUnsupported,
    #[error("dirty log: {what} failed")]
    Ioctl {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn last_err(what: &'static str) -> DirtyError {
    DirtyError::Ioctl {
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// The ring capability to enable and its size in bytes, from what KVM says
/// of each (KVM_CHECK_EXTENSION: the largest ring in bytes, 0 if none).
/// ACQ_REL is preferred: it is the one whose protocol (acquire/release on
/// the entry flags) is defined on every architecture.
pub fn choose_ring(acq_rel_max: i32, plain_max: i32) -> Result<(u32, u32), DirtyError> {
    let (cap, max) = if acq_rel_max > 0 {
        (KVM_CAP_DIRTY_LOG_RING_ACQ_REL, acq_rel_max)
    } else if plain_max > 0 {
        (KVM_CAP_DIRTY_LOG_RING, plain_max)
    } else {
        return Err(DirtyError::RingUnsupported);
    };
    if (max as u64) < PAGE_SIZE {
        return Err(DirtyError::RingTooSmall(max));
    }
    // A power of two no larger than KVM's bound.
    let size = RING_BYTES.min(1 << (31 - (max as u32).leading_zeros()));
    Ok((cap, size))
}

/// Turns on what `mode` needs on a fresh VM, before its memslots and vCPUs;
/// returns the memslot flags to register RAM with.
pub fn enable(vm: &VmFd, mode: DirtyMode) -> Result<(u32, Option<u32>), DirtyError> {
    let mut cap = kvm_enable_cap::default();
    let ring = match mode {
        DirtyMode::Off => return Ok((0, None)),
        DirtyMode::Bitmap => {
            let offered = vm.check_extension_raw(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2.into());
            if offered & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE as i32 == 0 {
                return Err(DirtyError::ManualProtectUnsupported);
            }
            cap.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2;
            cap.args[0] = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE as u64;
            None
        }
        DirtyMode::Ring => {
            let (c, size) = choose_ring(
                vm.check_extension_raw(KVM_CAP_DIRTY_LOG_RING_ACQ_REL.into()),
                vm.check_extension_raw(KVM_CAP_DIRTY_LOG_RING.into()),
            )?;
            cap.cap = c;
            cap.args[0] = size as u64;
            Some(size)
        }
    };
    vm.enable_cap(&cap).map_err(|e| DirtyError::Ioctl {
        what: "KVM_ENABLE_CAP (dirty logging)",
        source: e.into(),
    })?;
    Ok((kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES, ring))
}

/// A set of guest pages, one bit per page of each memslot.
#[derive(Clone, Debug, Default)]
pub struct PageSet {
    /// Index for index with the slots: (guest base, bit words).
    slots: Vec<(u64, Vec<u64>)>,
}

impl PageSet {
    fn for_regions(regions: &[RamRegion]) -> Self {
        PageSet {
            slots: regions
                .iter()
                .map(|r| {
                    (
                        r.guest_base,
                        vec![0; (r.size / PAGE_SIZE).div_ceil(64) as usize],
                    )
                })
                .collect(),
        }
    }

    fn or_words(&mut self, slot: usize, words: &[u64]) {
        if let Some((_, mine)) = self.slots.get_mut(slot) {
            for (m, w) in mine.iter_mut().zip(words) {
                *m |= w;
            }
        }
    }

    /// Sets page `page` of `slot`; false if it is outside the slot.
    fn set(&mut self, slot: usize, page: u64) -> bool {
        let Some((_, w)) = self.slots.get_mut(slot) else {
            return false;
        };
        match w.get_mut((page / 64) as usize) {
            Some(word) => {
                *word |= 1 << (page % 64);
                true
            }
            None => false,
        }
    }

    /// Sets the page holding guest-physical `gpa`; false if not in RAM.
    pub fn insert_gpa(&mut self, gpa: u64) -> bool {
        let Some(i) = self
            .slots
            .iter()
            .position(|(base, w)| gpa >= *base && (gpa - base) / PAGE_SIZE < 64 * w.len() as u64)
        else {
            return false;
        };
        self.set(i, (gpa - self.slots[i].0) / PAGE_SIZE)
    }

    pub fn contains_gpa(&self, gpa: u64) -> bool {
        self.slots.iter().any(|(base, w)| {
            gpa >= *base && {
                let p = (gpa - base) / PAGE_SIZE;
                w.get((p / 64) as usize)
                    .is_some_and(|word| word & (1 << (p % 64)) != 0)
            }
        })
    }

    pub fn len(&self) -> u64 {
        self.slots
            .iter()
            .flat_map(|(_, w)| w)
            .map(|w| w.count_ones() as u64)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn union(&self, other: &PageSet) -> PageSet {
        let mut u = self.clone();
        u.add_all(other);
        u
    }

    /// Adds every page of `other` (a set over the same RAM).
    pub fn add_all(&mut self, other: &PageSet) {
        for (i, (_, w)) in other.slots.iter().enumerate() {
            self.or_words(i, w);
        }
    }

    /// Guest-physical addresses of the pages in `self` and not in `other`.
    pub fn minus<'a>(&'a self, other: &'a PageSet) -> impl Iterator<Item = u64> + 'a {
        self.slots
            .iter()
            .enumerate()
            .flat_map(move |(i, (base, w))| {
                w.iter().enumerate().flat_map(move |(k, &word)| {
                    let theirs = other.slots.get(i).and_then(|o| o.1.get(k)).copied();
                    let mut left = word & !theirs.unwrap_or(0);
                    std::iter::from_fn(move || {
                        (left != 0).then(|| {
                            let b = left.trailing_zeros() as u64;
                            left &= left - 1;
                            base + (64 * k as u64 + b) * PAGE_SIZE
                        })
                    })
                })
            })
    }
}

/// An empty set over `regions`.
pub fn page_set_for(regions: &[RamRegion]) -> PageSet {
    PageSet::for_regions(regions)
}

/// One vCPU's dirty ring, mapped from its fd.
struct Ring {
    gfns: *mut kvm_dirty_gfn,
    entries: u32,
    /// Next entry to look at (free-running; modulo `entries`).
    fetch: u32,
    bytes: usize,
}

// SAFETY: the mapping is owned by the Ring (unmapped on drop) and only
// touched under DirtyLog's lock; KVM's side of it is designed for another
// thread (the vCPU) writing concurrently.
unsafe impl Send for Ring {}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: our own mapping of `bytes` bytes.
        unsafe { libc::munmap(self.gfns.cast(), self.bytes) };
    }
}

/// What a guest-chosen window saw: KVM's and the VMM's pages.
#[derive(Clone, Debug, Default)]
pub struct Window {
    pub guest: PageSet,
    pub vmm: PageSet,
}

struct State {
    rings: Vec<Ring>,
    total: Window,
    open: Option<Window>,
    last: Option<Window>,
    harvests: u64,
    ring_full: u64,
}

/// The dirty log of one VM.
pub struct DirtyLog {
    mode: DirtyMode,
    vm: Arc<VmFd>,
    regions: Vec<RamRegion>,
    /// For the VMM-write bitmaps in its regions.
    mem: GuestMemory,
    ring_bytes: u32,
    state: Mutex<State>,
}

/// The summary's line on the dirty log.
pub fn summary_line(d: &DirtyReport) -> String {
    let mode = match d.mode {
        DirtyMode::Off => "off",
        DirtyMode::Bitmap => "bitmap",
        DirtyMode::Ring => "ring",
    };
    let mut s = format!(
        "  dirty log ({mode}): {} pages written ({} by vCPUs, {} by the VMM), {} harvests, {} ring-full exits",
        d.pages_dirty, d.guest_pages, d.vmm_pages, d.harvests, d.ring_full_exits
    );
    if let Some(c) = &d.check {
        s += &match &c.error {
            Some(e) => format!("; check FAILED: {e}"),
            None => format!(
                "; check {}: {} expected, {} found, {} missing, {} extra",
                if c.ok { "ok" } else { "FAILED" },
                c.expected,
                c.found,
                c.missing,
                c.extra
            ),
        };
    }
    s + "\n"
}

/// The dirty log's state at the end of a run.
pub struct Final {
    pub report: DirtyReport,
    pub window: Option<Window>,
    /// An empty set over the VM's RAM, for the expected pages.
    pub empty: PageSet,
    /// The last harvest's failure, if it failed.
    pub error: Option<String>,
}

/// The report's `memory.dirty`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DirtyReport {
    pub mode: DirtyMode,
    pub harvests: u64,
    pub ring_full_exits: u64,
    /// Distinct pages written during the run, by anyone.
    pub pages_dirty: u64,
    /// Of which KVM logged (vCPU writes) and the VMM wrote (devices, boot).
    pub guest_pages: u64,
    pub vmm_pages: u64,
    /// The guest's last dirty window (marks), if it opened and closed one.
    pub window: Option<WindowReport>,
    /// For `workload=dirty`: the window against the pages it says it wrote.
    pub check: Option<DirtyCheck>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct WindowReport {
    pub pages: u64,
    pub guest_pages: u64,
    pub vmm_pages: u64,
}

/// The window's pages against the pages expected in it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DirtyCheck {
    pub ok: bool,
    pub expected: u64,
    pub found: u64,
    pub missing: u64,
    pub extra: u64,
    /// The first few of each, as guest-physical addresses.
    pub missing_sample: Vec<u64>,
    pub extra_sample: Vec<u64>,
    /// Why there was nothing to compare, if so.
    pub error: Option<String>,
}

const SAMPLE: usize = 8;

impl DirtyCheck {
    pub fn compare(expected: &PageSet, found: &PageSet) -> DirtyCheck {
        let missing: Vec<u64> = expected.minus(found).collect();
        let extra: Vec<u64> = found.minus(expected).collect();
        DirtyCheck {
            ok: missing.is_empty() && extra.is_empty(),
            expected: expected.len(),
            found: found.len(),
            missing: missing.len() as u64,
            extra: extra.len() as u64,
            missing_sample: missing.into_iter().take(SAMPLE).collect(),
            extra_sample: extra.into_iter().take(SAMPLE).collect(),
            error: None,
        }
    }

    pub fn failed(error: String) -> DirtyCheck {
        DirtyCheck {
            ok: false,
            expected: 0,
            found: 0,
            missing: 0,
            extra: 0,
            missing_sample: Vec::new(),
            extra_sample: Vec::new(),
            error: Some(error),
        }
    }
}

impl DirtyLog {
    /// The log of a VM whose RAM `enable` prepared and registered. `ring`:
    /// the ring size `enable` chose.
    pub fn new(
        mode: DirtyMode,
        vm: Arc<VmFd>,
        regions: &[RamRegion],
        mem: GuestMemory,
        ring: Option<u32>,
    ) -> Self {
        DirtyLog {
            mode,
            vm,
            regions: regions.to_vec(),
            mem,
            ring_bytes: ring.unwrap_or(0),
            state: Mutex::new(State {
                rings: Vec::new(),
                total: Window {
                    guest: PageSet::for_regions(regions),
                    vmm: PageSet::for_regions(regions),
                },
                open: None,
                last: None,
                harvests: 0,
                ring_full: 0,
            }),
        }
    }

    pub fn mode(&self) -> DirtyMode {
        self.mode
    }

    /// An empty set over this VM's RAM.
    pub fn empty_set(&self) -> PageSet {
        page_set_for(&self.regions)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Maps `vcpu`'s dirty ring (ring mode; nothing otherwise).
    pub fn add_vcpu(&self, vcpu: &VcpuFd) -> Result<(), DirtyError> {
        if self.mode != DirtyMode::Ring {
            return Ok(());
        }
        let bytes = self.ring_bytes as usize;
        // SAFETY: a fresh shared mapping of the vCPU fd's dirty-ring pages,
        // at the offset KVM documents; checked for failure below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                KVM_DIRTY_LOG_PAGE_OFFSET as libc::off_t * PAGE_SIZE as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(last_err("mapping a vCPU's dirty ring"));
        }
        self.lock().rings.push(Ring {
            gfns: p.cast(),
            entries: (bytes / std::mem::size_of::<kvm_dirty_gfn>()) as u32,
            fetch: 0,
            bytes,
        });
        Ok(())
    }

    /// Collects what KVM and the VMM logged since the last harvest, and
    /// re-arms the logging of those pages.
    fn harvest_locked(&self, st: &mut State) -> Result<(), DirtyError> {
        let mut guest = PageSet::for_regions(&self.regions);
        match self.mode {
            DirtyMode::Off => return Ok(()),
            DirtyMode::Bitmap => {
                for (i, r) in self.regions.iter().enumerate() {
                    let bits = self
                        .vm
                        .get_dirty_log(r.slot, r.size as usize)
                        .map_err(|e| DirtyError::Ioctl {
                            what: "KVM_GET_DIRTY_LOG",
                            source: e.into(),
                        })?;
                    if bits.iter().all(|&w| w == 0) {
                        continue;
                    }
                    guest.or_words(i, &bits);
                    let clear = kvm_clear_dirty_log {
                        slot: r.slot,
                        num_pages: (r.size / PAGE_SIZE) as u32,
                        first_page: 0,
                        __bindgen_anon_1: kvm_bindings::kvm_clear_dirty_log__bindgen_ty_1 {
                            dirty_bitmap: bits.as_ptr() as *mut libc::c_void,
                        },
                    };
                    // SAFETY: KVM reads one kvm_clear_dirty_log and the
                    // bitmap it points at, which covers the whole slot.
                    let rc = unsafe {
                        vmm_sys_util::ioctl::ioctl_with_ref(
                            &*self.vm,
                            KVM_CLEAR_DIRTY_LOG(),
                            &clear,
                        )
                    };
                    if rc < 0 {
                        return Err(last_err("KVM_CLEAR_DIRTY_LOG"));
                    }
                }
            }
            DirtyMode::Ring => {
                let mut any = false;
                for ring in &mut st.rings {
                    loop {
                        // SAFETY: an entry of the ring we mapped (index
                        // reduced modulo its length).
                        let e = unsafe { ring.gfns.add((ring.fetch % ring.entries) as usize) };
                        // SAFETY: `flags` is an aligned u32 KVM writes
                        // concurrently: read it as an atomic, with acquire
                        // so the slot and offset it publishes are seen.
                        let flags =
                            unsafe { &*(std::ptr::addr_of_mut!((*e).flags) as *const AtomicU32) };
                        if flags.load(Ordering::Acquire) & GFN_DIRTY == 0 {
                            break;
                        }
                        // SAFETY: published by the acquire above; KVM does
                        // not touch a dirty entry until we reset it.
                        let (slot, offset) = unsafe {
                            (
                                std::ptr::read_volatile(std::ptr::addr_of!((*e).slot)),
                                std::ptr::read_volatile(std::ptr::addr_of!((*e).offset)),
                            )
                        };
                        // The high half of `slot` is the address space: 0.
                        if slot >> 16 == 0 {
                            if let Some(i) = self.regions.iter().position(|r| r.slot == slot) {
                                guest.set(i, offset);
                            }
                        }
                        // Hands the entry back; KVM_RESET_DIRTY_RINGS
                        // collects it.
                        flags.store(GFN_RESET, Ordering::Release);
                        ring.fetch = ring.fetch.wrapping_add(1);
                        any = true;
                    }
                }
                if any {
                    // SAFETY: an ioctl without arguments on our VM fd.
                    let rc =
                        unsafe { vmm_sys_util::ioctl::ioctl(&*self.vm, KVM_RESET_DIRTY_RINGS()) };
                    if rc < 0 {
                        return Err(last_err("KVM_RESET_DIRTY_RINGS"));
                    }
                }
            }
        }
        let mut vmm = PageSet::for_regions(&self.regions);
        for region in self.mem.iter() {
            let owner: &super::RamOwner = std::ops::Deref::deref(region).bitmap();
            let Some(bits) = owner.vmm_writes() else {
                continue;
            };
            let base = region.start_addr().0;
            if let Some(i) = self.regions.iter().position(|r| r.guest_base == base) {
                vmm.or_words(i, &bits.get_and_reset());
            }
        }
        st.harvests += 1;
        st.total.guest.add_all(&guest);
        st.total.vmm.add_all(&vmm);
        if let Some(w) = st.open.as_mut() {
            w.guest.add_all(&guest);
            w.vmm.add_all(&vmm);
        }
        Ok(())
    }

    /// Harvests now (the end of the run, or any time).
    pub fn harvest(&self) -> Result<(), DirtyError> {
        let mut st = self.lock();
        self.harvest_locked(&mut st)
    }

    /// KVM_EXIT_DIRTY_RING_FULL: empties the rings so the vCPU can go on.
    pub fn ring_full(&self) -> Result<(), DirtyError> {
        let mut st = self.lock();
        st.ring_full += 1;
        self.harvest_locked(&mut st)
    }

    /// The guest's start mark: everything logged so far goes to the run's
    /// totals, and a new window starts empty.
    pub fn window_start(&self) -> Result<(), DirtyError> {
        let mut st = self.lock();
        self.harvest_locked(&mut st)?;
        st.open = Some(Window {
            guest: PageSet::for_regions(&self.regions),
            vmm: PageSet::for_regions(&self.regions),
        });
        Ok(())
    }

    /// The guest's end mark: the window takes what was logged since its
    /// start, and is kept for the report. Without a start, nothing.
    pub fn window_end(&self) -> Result<(), DirtyError> {
        let mut st = self.lock();
        if st.open.is_none() {
            return Ok(());
        }
        self.harvest_locked(&mut st)?;
        st.last = st.open.take();
        Ok(())
    }

    /// The last closed window.
    pub fn last_window(&self) -> Option<Window> {
        self.lock().last.clone()
    }

    /// The last harvest, once the vCPUs have stopped: what the report
    /// needs, with no reference to the VM left.
    pub fn finish(&self) -> Final {
        let error = self.harvest().err().map(|e| e.to_string());
        Final {
            report: self.report(),
            window: self.last_window(),
            empty: self.empty_set(),
            error,
        }
    }

    /// The figures now, for `GET /vm/memory`: a harvest first (safe while
    /// the vCPUs run; an open window keeps what it takes), then the report.
    pub fn live_report(&self) -> DirtyReport {
        if let Err(e) = self.harvest() {
            log::debug!("dirty log: {e}");
        }
        self.report()
    }

    /// The figures for the report (harvest first for the final state).
    pub fn report(&self) -> DirtyReport {
        let st = self.lock();
        DirtyReport {
            mode: self.mode,
            harvests: st.harvests,
            ring_full_exits: st.ring_full,
            pages_dirty: st.total.guest.union(&st.total.vmm).len(),
            guest_pages: st.total.guest.len(),
            vmm_pages: st.total.vmm.len(),
            window: st.last.as_ref().map(|w| WindowReport {
                pages: w.guest.union(&w.vmm).len(),
                guest_pages: w.guest.len(),
                vmm_pages: w.vmm.len(),
            }),
            check: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions() -> Vec<RamRegion> {
        vec![
            RamRegion {
                guest_base: 0,
                size: 1 << 20,
                host_addr: 0,
                slot: 0,
            },
            RamRegion {
                guest_base: 1 << 32,
                size: 1 << 20,
                host_addr: 0,
                slot: 1,
            },
        ]
    }

    #[test]
    fn page_sets_count_compare_and_refuse_what_is_not_ram() {
        let mut a = PageSet::for_regions(&regions());
        let mut b = PageSet::for_regions(&regions());
        assert!(a.insert_gpa(0x1000) && a.insert_gpa(0x1fff) && a.insert_gpa((1 << 32) + 0x3000));
        assert!(!a.insert_gpa(1 << 20), "the gap is not RAM");
        assert!(!a.insert_gpa((1 << 32) + (1 << 20)), "past the end");
        assert_eq!(a.len(), 2);
        assert!(b.insert_gpa(0x1000) && b.insert_gpa(0x5000));
        let c = DirtyCheck::compare(&a, &b);
        assert_eq!((c.expected, c.found, c.missing, c.extra), (2, 2, 1, 1));
        assert_eq!(c.missing_sample, vec![(1 << 32) + 0x3000]);
        assert_eq!(c.extra_sample, vec![0x5000]);
        assert!(!c.ok);
        assert!(DirtyCheck::compare(&a, &a.clone()).ok);
        assert_eq!(a.union(&b).len(), 3);
        assert!(a.contains_gpa(0x1234) && !a.contains_gpa(0x5000));
    }

    /// Every vm-memory write marks its pages when tracked, nothing when
    /// not; a clone of the memory shares the one bitmap (a device's clone
    /// marks what the dirty log reads) and still owns the mapping.
    #[test]
    fn vmm_writes_are_marked_in_the_region_bitmap_only_when_tracked() {
        use crate::memory::backing::BackingConfig;
        use crate::memory::GuestRam;
        use vm_memory::{Bytes, GuestAddress};
        let marked = |m: &GuestMemory| -> Vec<u64> {
            let r = m.iter().next().unwrap();
            let owner: &super::super::RamOwner = std::ops::Deref::deref(r).bitmap();
            owner.vmm_writes().map_or(Vec::new(), |b| {
                (0..b.len() as u64)
                    .filter(|&p| b.is_bit_set(p as usize))
                    .collect()
            })
        };
        let ram = GuestRam::with_vmm_write_tracking(16 << 20, BackingConfig::default()).unwrap();
        let m = ram.memory().clone();
        drop(ram);
        m.write_obj(1u64, GuestAddress(0x3000)).unwrap();
        m.write_slice(&[7u8; 4098], GuestAddress(0x5fff)).unwrap();
        assert_eq!(marked(&m), vec![3, 5, 6, 7]);
        // The Bitmap calls themselves, as other vm-memory paths make them.
        {
            use vm_memory::bitmap::Bitmap;
            let r = m.iter().next().unwrap();
            let owner: &super::super::RamOwner = std::ops::Deref::deref(r).bitmap();
            owner.mark_dirty(0x9000, 1);
            assert!(owner.dirty_at(0x9000) && !owner.dirty_at(0xa000));
        }
        assert_eq!(marked(&m), vec![3, 5, 6, 7, 9]);
        assert_eq!(m.read_obj::<u64>(GuestAddress(0x3000)).unwrap(), 1);
        let off = GuestRam::new(16 << 20).unwrap();
        off.memory().write_obj(1u64, GuestAddress(0x3000)).unwrap();
        assert!(marked(off.memory()).is_empty());
    }

    #[test]
    fn ring_choice_prefers_acq_rel_and_names_what_is_missing() {
        assert_eq!(
            choose_ring(1 << 20, 1 << 20).unwrap(),
            (KVM_CAP_DIRTY_LOG_RING_ACQ_REL, RING_BYTES)
        );
        assert_eq!(
            choose_ring(0, 1 << 20).unwrap(),
            (KVM_CAP_DIRTY_LOG_RING, RING_BYTES)
        );
        // KVM's bound, rounded down to a power of two, when it is smaller.
        assert_eq!(choose_ring(48 << 10, 0).unwrap().1, 32 << 10);
        let e = choose_ring(0, 0).unwrap_err().to_string();
        assert!(
            e.contains("KVM_CAP_DIRTY_LOG_RING_ACQ_REL") && e.contains("KVM_CAP_DIRTY_LOG_RING"),
            "{e}"
        );
        assert!(matches!(
            choose_ring(0, 2048),
            Err(DirtyError::RingTooSmall(2048))
        ));
    }
}
