//! The NUMA topology from ACPI: RSDP → XSDT (or RSDT) → SRAT and SLIT.
//!
//! The tables come from outside the kernel and are treated as hostile: the
//! parser reads memory only through [`Phys`], which hands out a range only
//! when all of it lies in memory the caller vouches for (the BIOS area
//! below 1 MiB and e820 RAM); every length is checked against the table
//! holding it before anything is read, every table's checksum is verified
//! (an RSDP's both), tables longer than [`MAX_TABLE_LEN`] and root tables
//! listing more than [`MAX_ROOT_ENTRIES`] are refused, so the work done is
//! bounded whatever the bytes say. Anything wrong is a [`Fault`]: the
//! kernel then runs as one node and says why, rather than trusting half a
//! table.
//!
//! What is taken: each proximity domain named by an enabled SRAT entry
//! becomes a node (ids in ascending domain order), with the span of its
//! memory ranges and its CPUs (APIC id = CPU index, as the VMM creates its
//! vCPUs); the SLIT, if any, gives the distances (else 10 local, 20
//! remote, as Linux assumes). The result must be usable as it is: every
//! CPU in exactly one domain, node spans disjoint (one span per node is
//! what the page allocator's zones take), every RAM range the caller lists
//! covered by SRAT memory, a SLIT that Linux's `slit_valid` would accept.
//!
//! Pure and `no_std`: the VMM's unit tests compile this file too and feed
//! it the tables the VMM writes, and garbage.
use guest_mm::mmzone::MAX_NUMNODES;
use guest_mm::page_alloc::{Topology, MAX_CPUS};
use guest_mm::zonelist::{Distances, LOCAL_DISTANCE, REMOTE_DISTANCE};

/// Where to scan for the RSDP (abi.rs: the BIOS area the VMM writes to).
pub const SCAN_START: u64 = crate::abi::ACPI_AREA_START;
pub const SCAN_END: u64 = crate::abi::ACPI_AREA_END;
/// The longest table read: the whole scan area (a SLIT for 8 nodes is 108
/// bytes, an SRAT for 64 CPUs ~1 KiB).
pub const MAX_TABLE_LEN: usize = (SCAN_END - SCAN_START) as usize;
/// Tables a root table may list (each one is checksummed).
pub const MAX_ROOT_ENTRIES: usize = 32;
/// SRAT memory ranges kept.
pub const MAX_MEM_RANGES: usize = 64;

const RSDP_SIG: &[u8; 8] = b"RSD PTR ";
const RSDP_V1_LEN: usize = 20;
const RSDP_V2_LEN: usize = 36;
const HEADER_LEN: usize = 36;
const SRAT_ENTRIES: usize = 48;
const SLIT_ENTRIES: usize = 44;
const ENABLED: u32 = 1;

/// Memory the parser may read.
pub trait Phys {
    /// The `len` bytes at `addr`, if all of them lie in readable memory.
    fn bytes(&self, addr: u64, len: usize) -> Option<&[u8]>;
}

/// Readable memory, as [start, end) windows: what a [`Phys`] over an
/// identity map checks before it makes a slice.
#[derive(Clone, Copy)]
pub struct Windows {
    w: [(u64, u64); MAX_WINDOWS],
    n: usize,
}

/// Windows kept: the BIOS area and the e820 ranges a VMM gives (ours gives
/// three); a range past this many is simply not readable.
pub const MAX_WINDOWS: usize = 16;

impl Windows {
    pub const fn new() -> Windows {
        Windows {
            w: [(0, 0); MAX_WINDOWS],
            n: 0,
        }
    }

    pub fn add(&mut self, start: u64, end: u64) {
        if start < end && self.n < MAX_WINDOWS {
            self.w[self.n] = (start, end);
            self.n += 1;
        }
    }

    /// All of `len` bytes at `addr` lie inside one window.
    pub fn covers(&self, addr: u64, len: usize) -> bool {
        let Some(end) = addr.checked_add(len as u64) else {
            return false;
        };
        self.w[..self.n].iter().any(|&(s, e)| s <= addr && end <= e)
    }
}

/// Where the RSDP was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RsdpFrom {
    /// boot_params.acpi_rsdp_addr.
    ZeroPage,
    /// The scan of [`SCAN_START`]..[`SCAN_END`].
    Scan,
}

impl RsdpFrom {
    pub fn name(self) -> &'static str {
        match self {
            RsdpFrom::ZeroPage => "zero_page",
            RsdpFrom::Scan => "scan",
        }
    }
}

/// Why the tables were not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    NoRsdp,
    RootTable,
    RootEntries,
    Table,
    NoSrat,
    SratEntry,
    RangeWraps,
    TooManyDomains,
    TooManyRanges,
    CpuTwice,
    CpuMissing,
    SpansOverlap,
    RamUncovered,
    SlitShort,
    SlitInvalid,
}

impl Fault {
    /// For the ready line.
    pub fn reason(self) -> &'static str {
        match self {
            Fault::NoRsdp => "no valid RSDP at boot_params.acpi_rsdp_addr or in 0xe0000-0xfffff",
            Fault::RootTable => "XSDT/RSDT outside memory, too long or with a bad checksum",
            Fault::RootEntries => "root table lists more than 32 tables",
            Fault::Table => "a listed table is outside memory, too long or has a bad checksum",
            Fault::NoSrat => "no SRAT",
            Fault::SratEntry => "SRAT entry with a bad length",
            Fault::RangeWraps => "SRAT memory range wraps around",
            Fault::TooManyDomains => "more proximity domains than the 8 nodes supported",
            Fault::TooManyRanges => "more than 64 SRAT memory ranges",
            Fault::CpuTwice => "a CPU has two SRAT entries",
            Fault::CpuMissing => "a CPU has no SRAT entry",
            Fault::SpansOverlap => "two nodes' memory interleaves",
            Fault::RamUncovered => "RAM outside every SRAT memory range",
            Fault::SlitShort => "SLIT shorter than its localities or the domains",
            Fault::SlitInvalid => "SLIT distance invalid (local not 10 or remote 10 or less)",
        }
    }
}

/// The topology found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Numa {
    pub nr_nodes: usize,
    /// Each node's proximity domain.
    pub pxm: [u32; MAX_NUMNODES],
    /// Each node's memory, [start, end); (0, 0) for a node without any.
    pub span: [(u64, u64); MAX_NUMNODES],
    /// `distance[a][b]`: from node a to node b.
    pub distance: [[u8; MAX_NUMNODES]; MAX_NUMNODES],
    pub cpu_node: [u8; MAX_CPUS],
    pub rsdp: RsdpFrom,
    /// Distances from a SLIT (else the defaults).
    pub slit: bool,
}

impl Numa {
    /// The page allocator's view: one node per proximity domain, each CPU
    /// on its domain's node, zonelists ordered by the whole distance
    /// matrix (asymmetric if the SLIT is).
    pub fn topology(&self, ncpus: usize) -> Topology {
        let mut t = Topology::single(ncpus);
        t.nr_nodes = self.nr_nodes;
        t.node_range = self.span;
        t.cpu_node = self.cpu_node;
        t.distances = Distances {
            table: self.distance,
            nr_nodes: self.nr_nodes,
        };
        t
    }
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |s, &x| s.wrapping_add(x))
}

// The callers check lengths first; out-of-range offsets read as 0 rather
// than panic all the same.
fn u32_at(b: &[u8], off: usize) -> u32 {
    match b.get(off..off + 4) {
        Some(w) => u32::from_le_bytes([w[0], w[1], w[2], w[3]]),
        None => 0,
    }
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from(u32_at(b, off)) | u64::from(u32_at(b, off + 4)) << 32
}

/// A valid RSDP at `addr`: signature, the ACPI 1.0 checksum, and for
/// revision 2 and later its length and extended checksum.
fn rsdp_at(phys: &dyn Phys, addr: u64) -> Option<&[u8]> {
    let v1 = phys.bytes(addr, RSDP_V1_LEN)?;
    if &v1[..8] != RSDP_SIG || sum(v1) != 0 {
        return None;
    }
    if v1[15] < 2 {
        return Some(v1);
    }
    let len = u32_at(phys.bytes(addr, RSDP_V2_LEN)?, 20) as usize;
    if !(RSDP_V2_LEN..=MAX_TABLE_LEN).contains(&len) {
        return None;
    }
    let full = phys.bytes(addr, len)?;
    (sum(full) == 0).then_some(full)
}

fn find_rsdp(phys: &dyn Phys, hint: u64) -> Option<(&[u8], RsdpFrom)> {
    if hint != 0 {
        if let Some(r) = rsdp_at(phys, hint) {
            return Some((r, RsdpFrom::ZeroPage));
        }
    }
    (SCAN_START..SCAN_END)
        .step_by(16)
        .find_map(|a| rsdp_at(phys, a))
        .map(|r| (r, RsdpFrom::Scan))
}

/// The table at `addr` with its length bounded and its checksum right, or
/// `fault`.
fn table(phys: &dyn Phys, addr: u64, fault: Fault) -> Result<&[u8], Fault> {
    let head = phys.bytes(addr, HEADER_LEN).ok_or(fault)?;
    let len = u32_at(head, 4) as usize;
    if !(HEADER_LEN..=MAX_TABLE_LEN).contains(&len) {
        return Err(fault);
    }
    let t = phys.bytes(addr, len).ok_or(fault)?;
    if sum(t) != 0 {
        return Err(fault);
    }
    Ok(t)
}

/// What the SRAT says, by proximity domain.
struct Srat {
    pxm: [u32; MAX_NUMNODES],
    nr: usize,
    /// (domain, start, end).
    ranges: [(u32, u64, u64); MAX_MEM_RANGES],
    nr_ranges: usize,
    cpu_pxm: [Option<u32>; MAX_CPUS],
}

impl Srat {
    fn domain(&mut self, pxm: u32) -> Result<(), Fault> {
        if self.pxm[..self.nr].contains(&pxm) {
            return Ok(());
        }
        if self.nr == MAX_NUMNODES {
            return Err(Fault::TooManyDomains);
        }
        self.pxm[self.nr] = pxm;
        self.nr += 1;
        Ok(())
    }

    fn cpu(&mut self, apic_id: u32, pxm: u32, ncpus: usize) -> Result<(), Fault> {
        // A CPU this VM does not have (hot-pluggable, say) places nothing.
        let Some(slot) = self
            .cpu_pxm
            .get_mut(apic_id as usize)
            .filter(|_| apic_id < ncpus as u32)
        else {
            return Ok(());
        };
        if slot.is_some() {
            return Err(Fault::CpuTwice);
        }
        *slot = Some(pxm);
        self.domain(pxm)
    }

    fn memory(&mut self, pxm: u32, base: u64, len: u64) -> Result<(), Fault> {
        if len == 0 {
            return Ok(());
        }
        let end = base.checked_add(len).ok_or(Fault::RangeWraps)?;
        if self.nr_ranges == MAX_MEM_RANGES {
            return Err(Fault::TooManyRanges);
        }
        self.ranges[self.nr_ranges] = (pxm, base, end);
        self.nr_ranges += 1;
        self.domain(pxm)
    }

    fn parse(t: &[u8], ncpus: usize) -> Result<Srat, Fault> {
        let mut s = Srat {
            pxm: [0; MAX_NUMNODES],
            nr: 0,
            ranges: [(0, 0, 0); MAX_MEM_RANGES],
            nr_ranges: 0,
            cpu_pxm: [None; MAX_CPUS],
        };
        let revision = t[8];
        let mut off = SRAT_ENTRIES;
        while off < t.len() {
            let (Some(&kind), Some(&len)) = (t.get(off), t.get(off + 1)) else {
                return Err(Fault::SratEntry);
            };
            let len = len as usize;
            let Some(e) = t.get(off..off + len).filter(|_| len >= 2) else {
                return Err(Fault::SratEntry);
            };
            let need = match kind {
                0 => 16,
                1 => 40,
                2 => 24,
                _ => 2,
            };
            if len < need {
                return Err(Fault::SratEntry);
            }
            match kind {
                // Processor local APIC: domain bits 31:8 count from revision 2.
                0 if u32_at(e, 4) & ENABLED != 0 => {
                    let hi = if revision >= 2 {
                        u32::from_le_bytes([0, e[9], e[10], e[11]])
                    } else {
                        0
                    };
                    s.cpu(u32::from(e[3]), hi | u32::from(e[2]), ncpus)?;
                }
                1 if u32_at(e, 28) & ENABLED != 0 => {
                    s.memory(u32_at(e, 2), u64_at(e, 8), u64_at(e, 16))?
                }
                // Processor local x2APIC.
                2 if u32_at(e, 12) & ENABLED != 0 => s.cpu(u32_at(e, 8), u32_at(e, 4), ncpus)?,
                _ => {}
            }
            off += len;
        }
        Ok(s)
    }
}

/// Reads the topology: the RSDP at `hint` (boot_params.acpi_rsdp_addr, 0
/// for none) or found by scanning, for a machine of `ncpus` CPUs whose
/// RAM `ram` (the (base, size) ranges the kernel will manage) must all
/// belong to some node.
pub fn discover(
    phys: &dyn Phys,
    hint: u64,
    ncpus: usize,
    ram: &[(u64, u64)],
) -> Result<Numa, Fault> {
    let ncpus = ncpus.min(MAX_CPUS);
    let (rsdp, from) = find_rsdp(phys, hint).ok_or(Fault::NoRsdp)?;
    let (root_addr, entry) = if rsdp[15] >= 2 && u64_at(rsdp, 24) != 0 {
        (u64_at(rsdp, 24), 8)
    } else {
        (u64::from(u32_at(rsdp, 16)), 4)
    };
    let root = table(phys, root_addr, Fault::RootTable)?;
    let entries = &root[HEADER_LEN..];
    if entries.len() % entry != 0 {
        return Err(Fault::RootTable);
    }
    if entries.len() / entry > MAX_ROOT_ENTRIES {
        return Err(Fault::RootEntries);
    }
    let (mut srat, mut slit) = (None, None);
    for e in entries.chunks_exact(entry) {
        let addr = if entry == 8 {
            u64_at(e, 0)
        } else {
            u64::from(u32_at(e, 0))
        };
        let t = table(phys, addr, Fault::Table)?;
        match &t[..4] {
            b"SRAT" if srat.is_none() => srat = Some(t),
            b"SLIT" if slit.is_none() => slit = Some(t),
            b"FACP" => check_dsdt(phys, t)?,
            _ => {}
        }
    }
    let s = Srat::parse(srat.ok_or(Fault::NoSrat)?, ncpus)?;
    numa(&s, slit, from, ncpus, ram)
}

/// The DSDT the FADT points at (X_DSDT where the FADT is long enough to
/// hold it and it is set, else DSDT) is a table like the others.
fn check_dsdt(phys: &dyn Phys, fadt: &[u8]) -> Result<(), Fault> {
    let x = if fadt.len() >= 148 {
        u64_at(fadt, 140)
    } else {
        0
    };
    let addr = if x != 0 {
        x
    } else {
        u64::from(u32_at(fadt, 40))
    };
    if addr != 0 {
        table(phys, addr, Fault::Table)?;
    }
    Ok(())
}

fn numa(
    s: &Srat,
    slit: Option<&[u8]>,
    rsdp: RsdpFrom,
    ncpus: usize,
    ram: &[(u64, u64)],
) -> Result<Numa, Fault> {
    let mut pxm = s.pxm;
    let nr = s.nr;
    pxm[..nr].sort_unstable();
    let node_of = |p: u32| pxm[..nr].iter().position(|&q| q == p).unwrap_or(0);
    let mut n = Numa {
        nr_nodes: nr,
        pxm,
        span: [(0, 0); MAX_NUMNODES],
        distance: [[REMOTE_DISTANCE; MAX_NUMNODES]; MAX_NUMNODES],
        cpu_node: [0; MAX_CPUS],
        rsdp,
        slit: slit.is_some(),
    };
    for (cpu, p) in s.cpu_pxm.iter().take(ncpus).enumerate() {
        n.cpu_node[cpu] = node_of(p.ok_or(Fault::CpuMissing)?) as u8;
    }
    let ranges = &s.ranges[..s.nr_ranges];
    for &(p, start, end) in ranges {
        let sp = &mut n.span[node_of(p)];
        *sp = if sp.0 == sp.1 {
            (start, end)
        } else {
            (sp.0.min(start), sp.1.max(end))
        };
    }
    for a in 0..nr {
        for b in a + 1..nr {
            let (x, y) = (n.span[a], n.span[b]);
            if x.0 < x.1 && y.0 < y.1 && x.0 < y.1 && y.0 < x.1 {
                return Err(Fault::SpansOverlap);
            }
        }
    }
    for &(base, size) in ram {
        let end = base.saturating_add(size);
        let mut at = base;
        // Each step moves past one range, so at most one per range.
        for _ in 0..ranges.len() {
            match ranges.iter().find(|r| r.1 <= at && at < r.2) {
                Some(r) if at < end => at = r.2,
                _ => break,
            }
        }
        if at < end {
            return Err(Fault::RamUncovered);
        }
    }
    for a in 0..MAX_NUMNODES {
        n.distance[a][a] = LOCAL_DISTANCE;
    }
    if let Some(t) = slit {
        let k = u64_at(t, 36);
        let entries = &t[SLIT_ENTRIES.min(t.len())..];
        let Some(kk) = k.checked_mul(k).filter(|&kk| kk <= entries.len() as u64) else {
            return Err(Fault::SlitShort);
        };
        let k = k as usize;
        if pxm[..nr].iter().any(|&p| p as u64 >= k as u64) {
            return Err(Fault::SlitShort);
        }
        for (i, &d) in entries[..kk as usize].iter().enumerate() {
            let local = i / k == i % k;
            if (local && d != LOCAL_DISTANCE) || (!local && d <= LOCAL_DISTANCE) {
                return Err(Fault::SlitInvalid);
            }
        }
        for a in 0..nr {
            for b in 0..nr {
                n.distance[a][b] = entries[pxm[a] as usize * k + pxm[b] as usize];
            }
        }
    }
    Ok(n)
}
