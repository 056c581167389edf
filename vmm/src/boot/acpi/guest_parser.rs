//! The guest kernel's ACPI parser (firmware/src/acpi.rs, compiled here as
//! it is into the guest) against the tables this VMM writes, and against
//! the same tables broken every way a hostile or buggy VMM could break
//! them: it must find exactly what was written, refuse the rest with the
//! right reason, and never panic or read outside the memory it was given.
use super::*;
use proptest::prelude::*;

#[path = "../../../../firmware/src/acpi.rs"]
#[allow(dead_code)]
mod parser;

use parser::{discover, Fault, Numa, Phys, RsdpFrom, Windows, SCAN_END, SCAN_START};

/// Guest memory as the guest kernel sees it: the ACPI area and nothing
/// else readable.
struct Mem {
    image: Vec<u8>,
    windows: Windows,
}

impl Mem {
    fn new(tables: &[u8]) -> Mem {
        let mut image = vec![0u8; (ACPI_END - ACPI_START) as usize];
        image[..tables.len()].copy_from_slice(tables);
        let mut windows = Windows::new();
        windows.add(SCAN_START, SCAN_END);
        Mem { image, windows }
    }

    fn off(gpa: u64) -> usize {
        (gpa - ACPI_START) as usize
    }

    /// Image offset of the table the XSDT lists with signature `sig`.
    fn table_off(&self, sig: &[u8; 4]) -> usize {
        let xsdt = Mem::off(u64::from_le_bytes(self.image[24..32].try_into().unwrap()));
        let len = u32::from_le_bytes(self.image[xsdt + 4..xsdt + 8].try_into().unwrap()) as usize;
        self.image[xsdt + 36..xsdt + len]
            .chunks_exact(8)
            .map(|e| Mem::off(u64::from_le_bytes(e.try_into().unwrap())))
            .find(|&o| &self.image[o..o + 4] == sig)
            .expect("table listed")
    }

    /// Recomputes the checksum of the table at image offset `off`, as a
    /// VMM that means harm would.
    fn fix(&mut self, off: usize) {
        let len = u32::from_le_bytes(self.image[off + 4..off + 8].try_into().unwrap()) as usize;
        let len = len.min(self.image.len() - off);
        self.image[off + 9] = 0;
        let s = self.image[off..off + len]
            .iter()
            .fold(0u8, |a, &b| a.wrapping_add(b));
        self.image[off + 9] = s.wrapping_neg();
    }

    fn discover(&self, ncpus: usize, ram: &[(u64, u64)]) -> Result<Numa, Fault> {
        discover(self, ACPI_START, ncpus, ram)
    }
}

impl Phys for Mem {
    fn bytes(&self, addr: u64, len: usize) -> Option<&[u8]> {
        if !self.windows.covers(addr, len) {
            return None;
        }
        self.image.get(Mem::off(addr)..Mem::off(addr) + len)
    }
}

const MIB: u64 = 1 << 20;
/// The RAM the guest kernel manages in a 256 MiB VM (above its reserved
/// first MiB).
const RAM: [(u64, u64); 1] = [(MIB, 255 * MIB)];

fn one_node(vcpus: u32) -> Mem {
    let ram = [(0, 256 * MIB)];
    let cpus: Vec<u32> = (0..vcpus).collect();
    let nodes = [AcpiNode {
        ram: &ram,
        vcpus: &cpus,
    }];
    Mem::new(&build(vcpus, &nodes, &[10]).unwrap())
}

/// Two 128 MiB nodes, CPU 0 on node 0 and CPU 1 on node 1, distance 20.
fn two_nodes() -> Mem {
    let (r0, r1) = ([(0, 128 * MIB)], [(128 * MIB, 128 * MIB)]);
    let nodes = [
        AcpiNode {
            ram: &r0,
            vcpus: &[0],
        },
        AcpiNode {
            ram: &r1,
            vcpus: &[1],
        },
    ];
    Mem::new(&build(2, &nodes, &[10, 20, 20, 10]).unwrap())
}

#[test]
fn one_node_is_found_through_the_zero_page() {
    let n = one_node(4).discover(4, &RAM).unwrap();
    assert_eq!(n.nr_nodes, 1);
    assert_eq!(n.pxm[0], 0);
    assert_eq!(n.span[0], (0, 256 * MIB));
    assert_eq!(n.cpu_node[..4], [0; 4]);
    assert_eq!(n.distance[0][0], 10);
    assert_eq!((n.rsdp, n.slit), (RsdpFrom::ZeroPage, true));
}

#[test]
fn a_missing_or_wrong_pointer_falls_back_to_the_scan() {
    let m = two_nodes();
    let want = m.discover(2, &RAM).unwrap();
    for hint in [0, ACPI_START + 16, 0x1000, u64::MAX - 4, ACPI_END - 8] {
        let n = discover(&m, hint, 2, &RAM).unwrap();
        assert_eq!(n.rsdp, RsdpFrom::Scan, "hint {hint:#x}");
        assert_eq!(
            Numa {
                rsdp: want.rsdp,
                ..n
            },
            want
        );
    }
    // An RSDP moved to the last 16-byte slot of the area is still found.
    let mut m = two_nodes();
    let rsdp: Vec<u8> = m.image[..36].to_vec();
    m.image[..36].fill(0);
    let at = m.image.len() - 48;
    m.image[at..at + 36].copy_from_slice(&rsdp);
    assert_eq!(discover(&m, 0, 2, &RAM).unwrap().rsdp, RsdpFrom::Scan);
    // Nothing anywhere: one node, and why.
    m.image[at..at + 36].fill(0);
    assert_eq!(discover(&m, 0, 2, &RAM), Err(Fault::NoRsdp));
}

#[test]
fn two_nodes_their_cpus_memory_and_distances() {
    let n = two_nodes().discover(2, &RAM).unwrap();
    assert_eq!(n.nr_nodes, 2);
    assert_eq!(n.span[..2], [(0, 128 * MIB), (128 * MIB, 256 * MIB)]);
    assert_eq!(n.cpu_node[..2], [0, 1]);
    assert_eq!(n.distance[0][..2], [10, 20]);
    assert_eq!(n.distance[1][..2], [20, 10]);
}

#[test]
fn distances_are_read_by_domain_not_by_entry_order() {
    // Node 2 lists first in the SRAT (its CPU comes first) but is domain 2:
    // node ids follow the domains, and each SLIT cell lands where it
    // belongs.
    let (r0, r1, r2) = (
        [(0, 64 * MIB)],
        [(64 * MIB, 64 * MIB)],
        [(128 * MIB, 128 * MIB)],
    );
    let nodes = [
        AcpiNode {
            ram: &r0,
            vcpus: &[1],
        },
        AcpiNode {
            ram: &r1,
            vcpus: &[2],
        },
        AcpiNode {
            ram: &r2,
            vcpus: &[0],
        },
    ];
    let d = [10, 30, 15, 30, 10, 20, 15, 20, 10];
    let n = Mem::new(&build(3, &nodes, &d).unwrap())
        .discover(3, &RAM)
        .unwrap();
    assert_eq!(n.cpu_node[..3], [2, 0, 1]);
    for a in 0..3 {
        assert_eq!(n.distance[a][..3], d[a * 3..a * 3 + 3], "row {a}");
    }
    assert_eq!(n.span[2], (128 * MIB, 256 * MIB));
}

#[test]
fn any_flipped_bit_in_any_table_is_refused() {
    // Every byte of every table is under a checksum: a parser that skips
    // one lets this fail.
    let good = two_nodes();
    let used = build(
        2,
        &[
            AcpiNode {
                ram: &[(0, 128 * MIB)],
                vcpus: &[0],
            },
            AcpiNode {
                ram: &[(128 * MIB, 128 * MIB)],
                vcpus: &[1],
            },
        ],
        &[10, 20, 20, 10],
    )
    .unwrap()
    .len();
    let want = good.discover(2, &RAM).unwrap();
    let mut refused = 0;
    for off in 0..used {
        for bit in [0, 3, 7] {
            let mut m = Mem::new(&good.image[..used]);
            m.image[off] ^= 1 << bit;
            match m.discover(2, &RAM) {
                Ok(n) => {
                    // Only padding between tables may change unnoticed.
                    assert_eq!(n, want, "byte {off:#x} bit {bit} changed the result");
                    assert_eq!(good.image[off], 0, "byte {off:#x} is not padding");
                }
                Err(_) => refused += 1,
            }
        }
    }
    assert!(refused > used, "{refused} refusals over {used} bytes");
}

/// Makes the RSDP's two checksums right again.
fn fix_rsdp(m: &mut Mem, at: usize) {
    for (field, len) in [(8, 20), (32, 36)] {
        m.image[at + field] = 0;
        let s = m.image[at..at + len]
            .iter()
            .fold(0u8, |a, &b| a.wrapping_add(b));
        m.image[at + field] = s.wrapping_neg();
    }
}

#[test]
fn both_rsdp_checksums_count() {
    // A wrong ACPI 1.0 checksum is refused even when the extended one,
    // over all 36 bytes, is right.
    let mut m = two_nodes();
    m.image[8] ^= 1;
    let s = m.image[..36].iter().fold(0u8, |a, &b| a.wrapping_add(b));
    m.image[32] = m.image[32].wrapping_sub(s);
    assert_eq!(discover(&m, 0, 2, &RAM), Err(Fault::NoRsdp));
    // An ACPI 1.0 RSDP (revision 0, 20 bytes) leads to an RSDT of 32-bit
    // pointers; its checksum is the only one it has.
    let mut m = two_nodes();
    let listed: Vec<u32> = [b"FACP", b"APIC", b"SRAT", b"SLIT"]
        .iter()
        .map(|s| (ACPI_START + m.table_off(s) as u64) as u32)
        .collect();
    let rsdt = m.image.len() - 4096;
    let len = 36 + 4 * listed.len();
    m.image[rsdt..rsdt + 4].copy_from_slice(b"RSDT");
    m.image[rsdt + 4..rsdt + 8].copy_from_slice(&(len as u32).to_le_bytes());
    for (i, a) in listed.iter().enumerate() {
        m.image[rsdt + 36 + 4 * i..rsdt + 40 + 4 * i].copy_from_slice(&a.to_le_bytes());
    }
    m.fix(rsdt);
    m.image[15] = 0;
    m.image[16..20].copy_from_slice(&((ACPI_START as usize + rsdt) as u32).to_le_bytes());
    m.image[20..36].fill(0);
    fix_rsdp(&mut m, 0);
    let n = discover(&m, ACPI_START, 2, &RAM).unwrap();
    assert_eq!((n.nr_nodes, n.rsdp), (2, RsdpFrom::ZeroPage));
    m.image[12] ^= 0x40;
    assert_eq!(discover(&m, ACPI_START, 2, &RAM), Err(Fault::NoRsdp));
}

#[test]
fn a_root_table_lists_at_most_32_tables() {
    // A new XSDT near the end of the area: the four real tables, then the
    // FADT again and again. Each listed table costs a checksum pass, so the
    // count is bounded.
    for (copies, want) in [(28, Ok(2)), (29, Err(Fault::RootEntries))] {
        let mut m = two_nodes();
        let mut listed: Vec<u64> = [b"FACP", b"APIC", b"SRAT", b"SLIT"]
            .iter()
            .map(|s| ACPI_START + m.table_off(s) as u64)
            .collect();
        listed.extend(std::iter::repeat_n(listed[0], copies));
        let xsdt = m.image.len() - 4096;
        m.image[xsdt..xsdt + 4].copy_from_slice(b"XSDT");
        let len = 36 + 8 * listed.len();
        m.image[xsdt + 4..xsdt + 8].copy_from_slice(&(len as u32).to_le_bytes());
        for (i, a) in listed.iter().enumerate() {
            m.image[xsdt + 36 + 8 * i..xsdt + 44 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        m.fix(xsdt);
        m.image[24..32].copy_from_slice(&(ACPI_START + xsdt as u64).to_le_bytes());
        fix_rsdp(&mut m, 0);
        let got = m.discover(2, &RAM).map(|n| n.nr_nodes);
        assert_eq!(got, want, "{} tables", listed.len());
    }
}

#[test]
fn lengths_that_lie_are_refused() {
    for sig in [b"XSDT", b"SRAT", b"SLIT", b"APIC", b"FACP"] {
        for len in [0u32, 35, 0x2_0001, u32::MAX, 0x1_ffff] {
            let mut m = two_nodes();
            let off = if sig == b"XSDT" {
                Mem::off(u64::from_le_bytes(m.image[24..32].try_into().unwrap()))
            } else {
                m.table_off(sig)
            };
            m.image[off + 4..off + 8].copy_from_slice(&len.to_le_bytes());
            m.fix(off);
            let e = m.discover(2, &RAM).unwrap_err();
            let want = if sig == b"XSDT" {
                Fault::RootTable
            } else {
                Fault::Table
            };
            assert_eq!(e, want, "{sig:?} length {len:#x}");
        }
    }
    // The RSDP's own length.
    let mut m = two_nodes();
    m.image[20..24].copy_from_slice(&0x10_0000u32.to_le_bytes());
    m.image[32] = 0;
    let s = m.image[..36].iter().fold(0u8, |a, &b| a.wrapping_add(b));
    m.image[32] = s.wrapping_neg();
    assert_eq!(m.discover(2, &RAM), Err(Fault::NoRsdp));
}

#[test]
fn tables_outside_readable_memory_are_refused() {
    // The XSDT lists an SRAT at 2 MiB, outside every window: never read.
    let mut m = two_nodes();
    let xsdt = Mem::off(u64::from_le_bytes(m.image[24..32].try_into().unwrap()));
    let srat = m.table_off(b"SRAT");
    let entry = (36..68)
        .step_by(8)
        .find(|e| {
            Mem::off(u64::from_le_bytes(
                m.image[xsdt + e..xsdt + e + 8].try_into().unwrap(),
            )) == srat
        })
        .unwrap();
    for addr in [2 * MIB, ACPI_END - 20, u64::MAX - 8] {
        m.image[xsdt + entry..xsdt + entry + 8].copy_from_slice(&addr.to_le_bytes());
        m.fix(xsdt);
        assert_eq!(m.discover(2, &RAM), Err(Fault::Table), "{addr:#x}");
    }
}

#[test]
fn what_the_tables_say_must_be_usable() {
    // No SRAT at all: one node.
    let mut m = two_nodes();
    let srat = m.table_off(b"SRAT");
    m.image[srat..srat + 4].copy_from_slice(b"XXXX");
    m.fix(srat);
    assert_eq!(m.discover(2, &RAM), Err(Fault::NoSrat));
    // No SLIT: the default distances.
    let mut m = two_nodes();
    let slit = m.table_off(b"SLIT");
    m.image[slit..slit + 4].copy_from_slice(b"XXXX");
    m.fix(slit);
    let n = m.discover(2, &RAM).unwrap();
    assert!(!n.slit);
    assert_eq!(n.distance[0][..2], [10, 20]);
    // A SLIT Linux would not accept, and one too small for the domains.
    for (cell, value, fault) in [
        (0, 11, Fault::SlitInvalid),
        (1, 10, Fault::SlitInvalid),
        (2, 0, Fault::SlitInvalid),
    ] {
        let mut m = two_nodes();
        let slit = m.table_off(b"SLIT");
        m.image[slit + 44 + cell] = value;
        m.fix(slit);
        assert_eq!(m.discover(2, &RAM), Err(fault), "cell {cell} = {value}");
    }
    let mut m = two_nodes();
    let slit = m.table_off(b"SLIT");
    m.image[slit + 36] = 1;
    m.fix(slit);
    assert_eq!(m.discover(2, &RAM), Err(Fault::SlitShort));
    m.image[slit + 36..slit + 44].copy_from_slice(&u64::MAX.to_le_bytes());
    m.fix(slit);
    assert_eq!(m.discover(2, &RAM), Err(Fault::SlitShort));
    // A third CPU the tables do not place.
    assert_eq!(two_nodes().discover(3, &RAM), Err(Fault::CpuMissing));
    // RAM beyond the SRAT's ranges.
    assert_eq!(
        two_nodes().discover(2, &[(MIB, 300 * MIB)]),
        Err(Fault::RamUncovered)
    );
    assert_eq!(
        two_nodes().discover(2, &[(MIB, 10 * MIB), (256 * MIB, 4096)]),
        Err(Fault::RamUncovered)
    );
    // The same CPU twice: node 1's CPU entry made CPU 0's.
    let mut m = two_nodes();
    let srat = m.table_off(b"SRAT");
    let cpu1 = (srat + 48..)
        .step_by(1)
        .find(|&o| m.image[o] == 0 && m.image[o + 1] == 16 && m.image[o + 3] == 1)
        .unwrap();
    m.image[cpu1 + 3] = 0;
    m.fix(srat);
    assert_eq!(m.discover(2, &RAM), Err(Fault::CpuTwice));
    // The last entry (node 1's memory) cut to 24 bytes, the table with it:
    // too short for a memory entry, refused as such rather than read short.
    let mut m = two_nodes();
    let srat = m.table_off(b"SRAT");
    let len = u32::from_le_bytes(m.image[srat + 4..srat + 8].try_into().unwrap()) as usize;
    assert_eq!(
        (m.image[srat + len - 40], m.image[srat + len - 39]),
        (1, 40)
    );
    m.image[srat + len - 39] = 24;
    m.image[srat + 4..srat + 8].copy_from_slice(&(len as u32 - 16).to_le_bytes());
    m.fix(srat);
    assert_eq!(m.discover(2, &RAM), Err(Fault::SratEntry));
    // An entry whose length runs past the table, or is too short to hold
    // what its type needs.
    for len in [0u8, 1, 15, 200] {
        let mut m = two_nodes();
        let srat = m.table_off(b"SRAT");
        m.image[srat + 49] = len;
        m.fix(srat);
        assert_eq!(m.discover(2, &RAM), Err(Fault::SratEntry), "length {len}");
    }
}

#[test]
fn topologies_the_allocator_cannot_take_are_refused() {
    // Nine domains: more than guest-mm's nodes.
    let ranges: Vec<[(u64, u64); 1]> = (0..9).map(|i| [(i * 16 * MIB, 16 * MIB)]).collect();
    let mut nodes: Vec<AcpiNode> = ranges
        .iter()
        .map(|r| AcpiNode { ram: r, vcpus: &[] })
        .collect();
    nodes[0].vcpus = &[0];
    let d: Vec<u8> = (0..81).map(|i| if i % 10 == 0 { 10 } else { 20 }).collect();
    let m = Mem::new(&build(1, &nodes, &d).unwrap());
    assert_eq!(
        m.discover(1, &[(MIB, 143 * MIB)]),
        Err(Fault::TooManyDomains)
    );
    // Eight is the most.
    let m = Mem::new(&build(1, &nodes[..8], &eight(&d)).unwrap());
    assert_eq!(m.discover(1, &[(MIB, 127 * MIB)]).unwrap().nr_nodes, 8);
    // Node 0 on both sides of node 1: their spans interleave.
    let (r0, r1) = (
        [(0, 64 * MIB), (128 * MIB, 64 * MIB)],
        [(64 * MIB, 64 * MIB)],
    );
    let nodes = [
        AcpiNode {
            ram: &r0,
            vcpus: &[0],
        },
        AcpiNode {
            ram: &r1,
            vcpus: &[],
        },
    ];
    let m = Mem::new(&build(1, &nodes, &[10, 20, 20, 10]).unwrap());
    assert_eq!(m.discover(1, &[(MIB, 191 * MIB)]), Err(Fault::SpansOverlap));
    // A node with CPUs and no memory is a memoryless node, not an error.
    let r = [(0, 256 * MIB)];
    let nodes = [
        AcpiNode {
            ram: &r,
            vcpus: &[0],
        },
        AcpiNode {
            ram: &[],
            vcpus: &[1],
        },
    ];
    let n = Mem::new(&build(2, &nodes, &[10, 20, 20, 10]).unwrap())
        .discover(2, &RAM)
        .unwrap();
    assert_eq!((n.nr_nodes, n.span[1], n.cpu_node[1]), (2, (0, 0), 1));
}

#[test]
fn zonelists_follow_the_slit() {
    // Three nodes where node 0's nearest other node is 2 (15) and node 1's
    // is 2 (20): the allocator built from the tables walks its fallback
    // zonelists in that order, a SLIT ignored would give id order.
    use guest_mm::page_alloc::PageAllocator;
    use guest_mm::phys::sim::SimMemory;
    use guest_mm::{Memblock, PhysAddr};
    let (r0, r1, r2) = (
        [(0, 32 * MIB)],
        [(32 * MIB, 32 * MIB)],
        [(64 * MIB, 32 * MIB)],
    );
    let nodes = [
        AcpiNode {
            ram: &r0,
            vcpus: &[0],
        },
        AcpiNode {
            ram: &r1,
            vcpus: &[1],
        },
        AcpiNode {
            ram: &r2,
            vcpus: &[2],
        },
    ];
    let d = [10, 30, 15, 30, 10, 20, 15, 20, 10];
    let numa = Mem::new(&build(3, &nodes, &d).unwrap())
        .discover(3, &[(MIB, 95 * MIB)])
        .unwrap();
    let mem = SimMemory::new(PhysAddr(0), 96 * MIB);
    let mut mb = Memblock::new();
    mb.reserve(&mem, PhysAddr(0), MIB).unwrap();
    // SAFETY: simulated RAM, its first MiB reserved first.
    unsafe { mb.add(&mem, PhysAddr(0), 96 * MIB).unwrap() };
    let mut a = Box::new(PageAllocator::EMPTY);
    a.init(&mut mb, &mem, numa.topology(3)).unwrap();
    let order = |node: usize| -> Vec<usize> {
        let mut v: Vec<usize> = Vec::new();
        for z in a.zonelist(node, false).as_slice() {
            if v.last() != Some(&z.node()) {
                v.push(z.node());
            }
        }
        v
    };
    assert_eq!(order(0), [0, 2, 1]);
    assert_eq!(order(1), [1, 2, 0]);
    assert_eq!(order(2), [2, 0, 1]);
    assert_eq!(a.topology().cpu_node[..3], [0, 1, 2]);
    for (node, range) in [(0, r0[0]), (1, r1[0]), (2, r2[0])] {
        let pfn = range.0 / 4096 + 300;
        assert_eq!(a.node_of(guest_mm::Pfn(pfn)), Some(node));
    }
}

/// The top-left 8x8 of a 9x9 matrix.
fn eight(d: &[u8]) -> Vec<u8> {
    (0..64).map(|i| d[(i / 8) * 9 + i % 8]).collect()
}

#[test]
fn windows_cover_only_what_was_added() {
    let mut w = Windows::new();
    w.add(0x1000, 0x2000);
    w.add(5, 5);
    assert!(w.covers(0x1000, 0x1000));
    assert!(!w.covers(0x1000, 0x1001));
    assert!(!w.covers(0xfff, 2));
    assert!(!w.covers(u64::MAX, 2));
    assert!(!w.covers(5, 0), "an empty window holds nothing");
    for i in 0..parser::MAX_WINDOWS as u64 {
        w.add(0x10_0000 * (i + 1), 0x10_0000 * (i + 1) + 8);
    }
    assert!(!w.covers(0x10_0000 * parser::MAX_WINDOWS as u64, 8), "full");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random writes into valid tables, checksums then made right again:
    /// whatever the parser makes of it, it does not panic, and what it
    /// accepts is a topology the page allocator takes.
    #[test]
    fn garbage_with_good_checksums_never_yields_a_bad_topology(
        writes in proptest::collection::vec((0usize..1024, any::<u8>()), 1..16),
        ncpus in 1usize..4,
    ) {
        let mut m = two_nodes();
        for (off, v) in writes {
            m.image[off] = v;
        }
        // Every checksum made right again, innermost first.
        let xsdt_gpa = u64::from_le_bytes(m.image[24..32].try_into().unwrap());
        if (ACPI_START..ACPI_END - 36).contains(&xsdt_gpa) {
            let xsdt = Mem::off(xsdt_gpa);
            let len = u32::from_le_bytes(m.image[xsdt + 4..xsdt + 8].try_into().unwrap()) as usize;
            let end = xsdt.saturating_add(len).min(m.image.len());
            let listed: Vec<usize> = m.image[(xsdt + 36).min(end)..end]
                .chunks_exact(8)
                .map(|e| u64::from_le_bytes(e.try_into().unwrap()))
                .filter(|gpa| (ACPI_START..ACPI_END - 36).contains(gpa))
                .map(Mem::off)
                .collect();
            for o in listed {
                m.fix(o);
            }
            m.fix(xsdt);
        }
        m.image[8] = 0;
        let s = m.image[..20].iter().fold(0u8, |a, &b| a.wrapping_add(b));
        m.image[8] = s.wrapping_neg();
        m.image[32] = 0;
        let s = m.image[..36].iter().fold(0u8, |a, &b| a.wrapping_add(b));
        m.image[32] = s.wrapping_neg();
        if let Ok(n) = m.discover(ncpus, &RAM) {
            use guest_mm::page_alloc::Topology;
            let mut t = Topology::single(ncpus);
            t.nr_nodes = n.nr_nodes;
            t.node_range[..n.nr_nodes].copy_from_slice(&n.span[..n.nr_nodes]);
            t.cpu_node = n.cpu_node;
            prop_assert_eq!(t.check(), Ok(()));
            for a in 0..n.nr_nodes {
                for b in 0..n.nr_nodes {
                    prop_assert_eq!(n.distance[a][b] == 10, a == b);
                }
            }
        }
    }
}

/// Writes `body` as a table `sig` at image offset `at` (header with a
/// right length and checksum) and makes the XSDT entry that listed `sig`
/// point at it.
fn replace_table(m: &mut Mem, sig: &[u8; 4], at: usize, revision: u8, body: &[u8]) {
    let old = ACPI_START + m.table_off(sig) as u64;
    let len = 36 + body.len();
    m.image[at..at + 4].copy_from_slice(sig);
    m.image[at + 4..at + 8].copy_from_slice(&(len as u32).to_le_bytes());
    m.image[at + 8] = revision;
    m.image[at + 36..at + len].copy_from_slice(body);
    m.fix(at);
    let xsdt = Mem::off(u64::from_le_bytes(m.image[24..32].try_into().unwrap()));
    for e in (xsdt + 36..xsdt + 68).step_by(8) {
        if u64::from_le_bytes(m.image[e..e + 8].try_into().unwrap()) == old {
            m.image[e..e + 8].copy_from_slice(&(ACPI_START + at as u64).to_le_bytes());
        }
    }
    m.fix(xsdt);
}

/// One SRAT entry: mostly well-formed CPU and memory entries with small
/// ids and plausible ranges (so some tables are accepted), sometimes a
/// wrong length or an unknown type.
fn srat_entry() -> impl Strategy<Value = Vec<u8>> {
    let small = prop_oneof![0u32..3, Just(0x100), any::<u32>()];
    let addr = prop_oneof![
        Just(0u64),
        Just(MIB),
        Just(2 * MIB),
        Just(4 * MIB),
        any::<u64>()
    ];
    let flags = prop_oneof![Just(1u32), Just(0), any::<u32>()];
    let lapic = (small.clone(), 0u8..4, flags.clone()).prop_map(|(pxm, apic, fl)| {
        let p = pxm.to_le_bytes();
        let mut e = vec![0, 16, p[0], apic];
        e.extend_from_slice(&fl.to_le_bytes());
        e.extend_from_slice(&[0, p[1], p[2], p[3], 0, 0, 0, 0]);
        e
    });
    let memory = (small.clone(), addr.clone(), addr, flags.clone()).prop_map(|(pxm, b, l, fl)| {
        let mut e = vec![1, 40];
        e.extend_from_slice(&pxm.to_le_bytes());
        e.extend_from_slice(&[0, 0]);
        e.extend_from_slice(&b.to_le_bytes());
        e.extend_from_slice(&l.to_le_bytes());
        e.extend_from_slice(&[0; 4]);
        e.extend_from_slice(&fl.to_le_bytes());
        e.extend_from_slice(&[0; 8]);
        e
    });
    let x2apic = (small, 0u32..4, flags).prop_map(|(pxm, id, fl)| {
        let mut e = vec![2, 24, 0, 0];
        e.extend_from_slice(&pxm.to_le_bytes());
        e.extend_from_slice(&id.to_le_bytes());
        e.extend_from_slice(&fl.to_le_bytes());
        e.extend_from_slice(&[0; 8]);
        e
    });
    let raw = (
        any::<u8>(),
        0u8..48,
        proptest::collection::vec(any::<u8>(), 46),
    )
        .prop_map(|(kind, len, payload)| {
            let mut e = vec![kind, len];
            e.extend_from_slice(&payload[..(len as usize).saturating_sub(2)]);
            e
        });
    prop_oneof![4 => lapic, 4 => memory, 1 => x2apic, 1 => raw]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// SRATs of random entries and random SLITs, with right checksums: no
    /// panic, and anything accepted is a topology the page allocator
    /// takes, every CPU placed.
    #[test]
    fn random_srat_and_slit_entries_never_yield_a_bad_topology(
        entries in proptest::collection::vec(srat_entry(), 0..8),
        localities in prop_oneof![1u64..4, any::<u64>()],
        slit in proptest::collection::vec(prop_oneof![Just(10u8), Just(20u8), any::<u8>()], 0..20),
        ncpus in 1usize..4,
        revision in 0u8..4,
        sane_start in any::<bool>(),
    ) {
        let mut m = two_nodes();
        let mut srat = vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        if sane_start {
            // Every CPU and the RAM on domain 0, so what follows decides.
            for apic in 0..ncpus as u8 {
                srat.extend_from_slice(&[0, 16, 0, apic, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            }
            let mut e = vec![1, 40, 0, 0, 0, 0, 0, 0];
            e.extend_from_slice(&0u64.to_le_bytes());
            e.extend_from_slice(&(4 * MIB).to_le_bytes());
            e.extend_from_slice(&[0, 0, 0, 0, 1, 0, 0, 0]);
            e.extend_from_slice(&[0; 8]);
            srat.extend_from_slice(&e);
        }
        for e in &entries {
            srat.extend_from_slice(e);
        }
        let at = m.image.len() - 8192;
        replace_table(&mut m, b"SRAT", at, revision, &srat);
        let mut body = localities.to_le_bytes().to_vec();
        body.extend_from_slice(&slit);
        let at = m.image.len() - 4096;
        replace_table(&mut m, b"SLIT", at, 1, &body);
        let ram = [(MIB, 3 * MIB)];
        if let Ok(n) = m.discover(ncpus, &ram) {
            let t = n.topology(ncpus);
            prop_assert_eq!(t.check(), Ok(()));
            prop_assert!(n.nr_nodes >= 1);
            for a in 0..n.nr_nodes {
                for b in 0..n.nr_nodes {
                    prop_assert_eq!(n.distance[a][b] == 10, a == b);
                }
            }
        }
    }
}
