//! The tables read back with a small reader of our own (not the guest
//! kernel's parser, which has tests of its own in `guest_parser.rs`), so a
//! mistake shared by the writer and the guest cannot hide.
use super::*;
use crate::memory::GuestRam;

/// A table as the reader found it.
struct Table<'a> {
    sig: [u8; 4],
    revision: u8,
    body: &'a [u8],
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}
fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |s, &x| s.wrapping_add(x))
}

/// Reads the table at `gpa` out of `image` (which starts at ACPI_START),
/// checking that it lies inside the image and sums to zero.
fn table(image: &[u8], gpa: u64) -> Table<'_> {
    assert!(
        (ACPI_START..ACPI_END).contains(&gpa),
        "table at {gpa:#x} outside the ACPI area"
    );
    let off = (gpa - ACPI_START) as usize;
    assert_eq!(off % TABLE_ALIGN, 0, "table at {gpa:#x} unaligned");
    let len = u32_at(image, off + 4) as usize;
    assert!(len >= 36 && off + len <= image.len(), "length {len}");
    let body = &image[off..off + len];
    assert_eq!(sum(body), 0, "checksum of {:?}", &body[..4]);
    Table {
        sig: body[..4].try_into().unwrap(),
        revision: body[8],
        body,
    }
}

/// Everything a guest would take from the tables.
#[derive(Debug, Default, PartialEq)]
struct Found {
    /// (uid, apic id) of each enabled local APIC in the MADT.
    lapics: Vec<(u8, u8)>,
    /// (address, GSI base) of each IOAPIC.
    ioapics: Vec<(u32, u32)>,
    /// (apic id, proximity domain) from the SRAT.
    cpu_pxm: Vec<(u8, u32)>,
    /// (proximity domain, base, size) of each enabled memory range.
    mem_pxm: Vec<(u32, u64, u64)>,
    /// The SLIT, row-major.
    slit: Vec<u8>,
}

fn read_back(image: &[u8]) -> Found {
    let rsdp = &image[..36];
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum");
    assert_eq!(rsdp[15], 2, "RSDP revision");
    assert_eq!(u32_at(rsdp, 20), 36, "RSDP length");
    assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
    let xsdt = table(image, u64_at(rsdp, 24));
    assert_eq!(&xsdt.sig, b"XSDT");
    assert_eq!((xsdt.body.len() - 36) % 8, 0);
    let mut sigs = Vec::new();
    let mut f = Found::default();
    for e in xsdt.body[36..].chunks_exact(8) {
        let t = table(image, u64::from_le_bytes(e.try_into().unwrap()));
        sigs.push(t.sig);
        match &t.sig {
            b"FACP" => {
                let flags = u32_at(t.body, 112);
                assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
                assert_eq!(t.revision, 6);
                assert_eq!(u32_at(t.body, 40), 0, "32-bit DSDT pointer unused");
                let dsdt = table(image, u64_at(t.body, 140));
                assert_eq!(&dsdt.sig, b"DSDT");
                assert_eq!(u16_at(t.body, 109) & (1 << 2), 1 << 2, "no VGA");
            }
            b"APIC" => {
                assert_eq!(u32_at(t.body, 36), 0xfee0_0000);
                let mut off = 44;
                while off < t.body.len() {
                    let (kind, len) = (t.body[off], t.body[off + 1] as usize);
                    assert!(len >= 2 && off + len <= t.body.len());
                    match kind {
                        0 => {
                            assert_eq!(len, 8);
                            assert_eq!(u32_at(t.body, off + 4), 1, "enabled");
                            f.lapics.push((t.body[off + 2], t.body[off + 3]));
                        }
                        1 => {
                            assert_eq!(len, 12);
                            f.ioapics
                                .push((u32_at(t.body, off + 4), u32_at(t.body, off + 8)));
                        }
                        k => panic!("unexpected MADT entry type {k}"),
                    }
                    off += len;
                }
            }
            b"SRAT" => {
                assert_eq!(u32_at(t.body, 36), 1, "reserved 1");
                assert!(t.revision >= 2, "32-bit processor domains");
                let mut off = 48;
                while off < t.body.len() {
                    let (kind, len) = (t.body[off], t.body[off + 1] as usize);
                    assert!(len >= 2 && off + len <= t.body.len());
                    let e = &t.body[off..off + len];
                    match kind {
                        0 => {
                            assert_eq!(len, 16);
                            assert_eq!(u32_at(e, 4) & 1, 1, "enabled");
                            let pxm = u32::from_le_bytes([e[2], e[9], e[10], e[11]]);
                            f.cpu_pxm.push((e[3], pxm));
                        }
                        1 => {
                            assert_eq!(len, 40);
                            assert_eq!(u32_at(e, 28) & 1, 1, "enabled");
                            f.mem_pxm.push((u32_at(e, 2), u64_at(e, 8), u64_at(e, 16)));
                        }
                        k => panic!("unexpected SRAT entry type {k}"),
                    }
                    off += len;
                }
            }
            b"SLIT" => {
                let n = u64_at(t.body, 36) as usize;
                assert_eq!(t.body.len(), 44 + n * n);
                f.slit = t.body[44..].to_vec();
            }
            s => panic!("unexpected table {s:?}"),
        }
    }
    assert_eq!(sigs, [*b"FACP", *b"APIC", *b"SRAT", *b"SLIT"]);
    f
}

#[test]
fn one_node_tables_read_back() {
    let ram = [(0u64, 256u64 << 20)];
    let cpus = [0, 1];
    let nodes = [AcpiNode {
        ram: &ram,
        vcpus: &cpus,
    }];
    let f = read_back(&build(2, &nodes, &[10]).unwrap());
    assert_eq!(f.lapics, [(0, 0), (1, 1)]);
    assert_eq!(f.ioapics, [(0xfec0_0000, 0)]);
    assert_eq!(f.cpu_pxm, [(0, 0), (1, 0)]);
    assert_eq!(f.mem_pxm, [(0, 0, 256 << 20)]);
    assert_eq!(f.slit, [10]);
}

#[test]
fn nodes_get_their_cpus_ranges_and_distances() {
    let (r0, r1, r2) = (
        [(0u64, 2u64 << 30)],
        [(2u64 << 30, 1u64 << 30), (4 << 30, 1 << 30)],
        [(5u64 << 30, 1u64 << 30)],
    );
    let nodes = [
        AcpiNode {
            ram: &r0,
            vcpus: &[2, 0],
        },
        AcpiNode {
            ram: &r1,
            vcpus: &[1],
        },
        AcpiNode {
            ram: &r2,
            vcpus: &[],
        },
    ];
    let d = [10, 20, 30, 20, 10, 40, 30, 40, 10];
    let f = read_back(&build(3, &nodes, &d).unwrap());
    assert_eq!(f.lapics, [(0, 0), (1, 1), (2, 2)]);
    assert_eq!(f.cpu_pxm, [(2, 0), (0, 0), (1, 1)]);
    assert_eq!(
        f.mem_pxm,
        [
            (0, 0, 2 << 30),
            (1, 2 << 30, 1 << 30),
            (1, 4 << 30, 1 << 30),
            (2, 5 << 30, 1 << 30)
        ]
    );
    assert_eq!(f.slit, d);
}

#[test]
fn tables_go_to_guest_memory_at_the_rsdp_address() {
    let ram = GuestRam::new(32 << 20).unwrap();
    let r = [(0u64, 32u64 << 20)];
    let nodes = [AcpiNode {
        ram: &r,
        vcpus: &[0],
    }];
    let rsdp = write_tables(ram.memory(), 1, &nodes, &[10]).unwrap();
    assert_eq!(rsdp, ACPI_START);
    let want = build(1, &nodes, &[10]).unwrap();
    let mut got = vec![0u8; want.len()];
    ram.memory()
        .read_slice(&mut got, GuestAddress(rsdp))
        .unwrap();
    assert_eq!(got, want);
    read_back(&got);
}

#[test]
fn the_largest_vm_fits_and_too_many_nodes_do_not() {
    // 255 vCPUs over 8 nodes of 2 ranges each: well inside the area.
    let ranges: Vec<[(u64, u64); 2]> = (0..8u64)
        .map(|i| [(i << 32, 1 << 30), ((i << 32) + (2 << 30), 1 << 30)])
        .collect();
    let cpus: Vec<Vec<u32>> = (0..8u32)
        .map(|n| (0..255).filter(|c| c % 8 == n).collect())
        .collect();
    let nodes: Vec<AcpiNode> = (0..8)
        .map(|i| AcpiNode {
            ram: &ranges[i],
            vcpus: &cpus[i],
        })
        .collect();
    let d: Vec<u8> = (0..64).map(|i| if i % 9 == 0 { 10 } else { 20 }).collect();
    let f = read_back(&build(255, &nodes, &d).unwrap());
    assert_eq!(f.lapics.len(), 255);
    assert_eq!(f.mem_pxm.len(), 16);
    // 400 nodes need a 160,000-byte SLIT: more than the area holds.
    let one: Vec<[(u64, u64); 1]> = (0..400u64).map(|i| [(i << 30, 1 << 30)]).collect();
    let mut nodes: Vec<AcpiNode> = one
        .iter()
        .map(|r| AcpiNode { ram: r, vcpus: &[] })
        .collect();
    nodes[0].vcpus = &[0];
    let d: Vec<u8> = (0..400 * 400)
        .map(|i| if i % 401 == 0 { 10 } else { 20 })
        .collect();
    let e = build(1, &nodes, &d).unwrap_err();
    assert!(
        matches!(e, AcpiError::TooBig { need, have: 0x20000 } if need > 160_000),
        "{e}"
    );
    assert!(e.to_string().contains("0xe0000"), "{e}");
}

#[test]
fn bad_topologies_are_refused_naming_the_value() {
    let r = [(0u64, 64u64 << 20)];
    let r2 = [(32u64 << 20, 64u64 << 20)];
    let one = |cpus: &'static [u32]| AcpiNode {
        ram: &[],
        vcpus: cpus,
    };
    let node = |ram, vcpus| AcpiNode { ram, vcpus };
    let cases: Vec<(u32, Vec<AcpiNode>, Vec<u8>, &str)> = vec![
        (1, vec![], vec![], "no NUMA nodes"),
        (0, vec![one(&[])], vec![10], "0 vCPUs"),
        (256, vec![one(&[])], vec![10], "256 vCPUs"),
        (
            2,
            vec![one(&[0, 2])],
            vec![10],
            "vCPU 2, but the VM has vCPUs 0 to 1",
        ),
        (
            2,
            vec![one(&[0, 1]), one(&[1])],
            vec![10, 20, 20, 10],
            "vCPU 1 is in node 0 and node 1",
        ),
        (2, vec![one(&[0])], vec![10], "vCPU 1 is in no node"),
        (
            1,
            vec![node(&[(4096, 0)], &[0])],
            vec![10],
            "RAM range 0x1000+0x0",
        ),
        (
            1,
            vec![node(&[(u64::MAX, 2)], &[0])],
            vec![10],
            "0xffffffffffffffff+0x2",
        ),
        (
            1,
            vec![node(&r, &[0]), node(&r2, &[])],
            vec![10, 20, 20, 10],
            "node 1's RAM 0x2000000+0x4000000 overlaps node 0's 0x0+0x4000000",
        ),
        (
            1,
            vec![one(&[0])],
            vec![10, 20],
            "2 entries; 1 nodes need 1x1",
        ),
        (1, vec![one(&[0])], vec![0], "node 0 to itself is 0"),
        (
            1,
            vec![one(&[0]), one(&[])],
            vec![10, 10, 10, 10],
            "node 0 to node 1 is 10",
        ),
        (
            1,
            vec![one(&[0]), one(&[])],
            vec![10, 20, 30, 10],
            "node 0 to node 1 is 20 but from 1 to 0 is 30",
        ),
    ];
    for (vcpus, nodes, d, want) in cases {
        let e = build(vcpus, &nodes, &d).unwrap_err().to_string();
        assert!(e.contains(want), "{e:?} lacks {want:?}");
    }
}
