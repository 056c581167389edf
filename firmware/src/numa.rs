//! The machine's NUMA topology: found in the ACPI tables (`acpi`), turned
//! into the page allocator's [`Topology`], and reported in the ready line.
//!
//! Runs at CPL3 inside `mm::init`, before the page allocator exists: the
//! tables are read in place through the identity map, and only the memory
//! the boot information vouches for is readable (the BIOS area the ACPI
//! spec has us scan, e820 RAM, and e820 ACPI ranges the map covers), so
//! a wild pointer in a table is refused instead of faulting.
use crate::acpi::{self, Fault, Numa, Phys, Windows};
use crate::bootinfo::{BootInfo, E820_ACPI, E820_RAM};
use crate::json::Line;
use guest_mm::mmzone::{ZoneType, MAX_NUMNODES};
use guest_mm::page_alloc::{PageAllocator, Topology};

/// The VMM's identity map covers at least the first 4 GiB.
const MAPPED_BELOW: u64 = 4 << 30;
/// RAM ranges that must belong to a node: e820 has at most this many.
const MAX_RAM: usize = 128;
/// CPUs listed per node in the ready line (the count is always given).
const CPUS_SHOWN: usize = 16;

/// Identity-mapped memory, readable only inside its windows.
struct Identity(Windows);

impl Phys for Identity {
    fn bytes(&self, addr: u64, len: usize) -> Option<&[u8]> {
        if !self.0.covers(addr, len) {
            return None;
        }
        // SAFETY: every window is mapped (the BIOS area and e820 RAM lie in
        // the VMM's identity map, ACPI ranges only below MAPPED_BELOW), and
        // nothing writes there while the BSP reads it at boot.
        Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
    }
}

/// The topology the tables give, or why there is none; `low_reserved`:
/// memory below it is never handed out, so needs no node.
pub fn discover(boot: &BootInfo, ncpus: usize, low_reserved: u64) -> Result<Numa, Fault> {
    let mut w = Windows::new();
    w.add(acpi::SCAN_START, acpi::SCAN_END);
    let mut ram = [(0u64, 0u64); MAX_RAM];
    let mut nr_ram = 0;
    for e in boot.e820() {
        let end = e.addr.saturating_add(e.size);
        match e.kind {
            E820_RAM => {
                w.add(e.addr, end);
                let start = e.addr.max(low_reserved);
                if start < end && nr_ram < MAX_RAM {
                    ram[nr_ram] = (start, end - start);
                    nr_ram += 1;
                }
            }
            E820_ACPI if end <= MAPPED_BELOW => w.add(e.addr, end),
            _ => {}
        }
    }
    acpi::discover(&Identity(w), boot.acpi_rsdp_addr(), ncpus, &ram[..nr_ram])
}

/// The page allocator's view: the tables' nodes, or all of memory on one
/// node when they were not usable.
pub fn topology(found: &Result<Numa, Fault>, ncpus: usize) -> Topology {
    match found {
        Ok(n) => n.topology(ncpus),
        Err(_) => Topology::single(ncpus),
    }
}

/// `"numa":{...}`: where the topology came from and what it is.
pub fn write_json(l: &mut Line, found: &Result<Numa, Fault>, a: &PageAllocator) {
    let topo = a.topology();
    let nr = topo.nr_nodes.min(MAX_NUMNODES);
    match found {
        Ok(n) => l.fmt(format_args!(
            "\"numa\":{{\"source\":\"acpi\",\"rsdp\":\"{}\",\"slit\":{},",
            n.rsdp.name(),
            n.slit
        )),
        Err(f) => {
            l.raw("\"numa\":{\"source\":\"fallback\",\"reason\":");
            l.string(f.reason());
            l.raw(",");
        }
    }
    l.fmt(format_args!("\"nr_nodes\":{nr},\"nodes\":["));
    for node in 0..nr {
        let pages: u64 = ZoneType::ALL
            .iter()
            .map(|&z| a.zone(node, z).present_pages)
            .sum();
        let free: u64 = ZoneType::ALL
            .iter()
            .map(|&z| a.zone(node, z).free_pages())
            .sum();
        l.fmt(format_args!(
            "{}{{\"id\":{node},",
            if node == 0 { "" } else { "," }
        ));
        if let Ok(n) = found {
            l.fmt(format_args!("\"pxm\":{},", n.pxm[node]));
        }
        let on_node = |c: &usize| topo.cpu_node[*c] as usize == node;
        let count = (0..topo.ncpus).filter(on_node).count();
        l.fmt(format_args!(
            "\"pages\":{pages},\"free_pages\":{free},\"nr_cpus\":{count},\"cpus\":["
        ));
        for (i, c) in (0..topo.ncpus).filter(on_node).take(CPUS_SHOWN).enumerate() {
            l.fmt(format_args!("{}{c}", if i == 0 { "" } else { "," }));
        }
        l.raw("]}");
    }
    l.raw("],\"distance\":[");
    for a in 0..nr {
        l.raw(if a == 0 { "[" } else { ",[" });
        for b in 0..nr {
            l.fmt(format_args!(
                "{}{}",
                if b == 0 { "" } else { "," },
                topo.distances.get(a, b)
            ));
        }
        l.raw("]");
    }
    l.raw("]}");
}
