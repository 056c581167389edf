//! ACPI tables: how a guest learns its CPUs, interrupt controllers and NUMA
//! topology, the way Linux expects (RSDP → XSDT → FADT + DSDT, MADT, SRAT,
//! SLIT), and how our own guest kernel learns the same.
//!
//! The FADT is hardware-reduced, as Firecracker's and Cloud Hypervisor's
//! are: no PM timer, GPE or SCI hardware to describe, and Linux accepts it
//! with a DSDT that holds no AML. The MADT names one local APIC per vCPU
//! with APIC id = vCPU id (KVM_CREATE_VCPU's id, which our CPUID leaves
//! repeat) and the IOAPIC the VMM provides at its fixed address, GSI base 0.
//! The SRAT gives each vCPU's APIC id and each RAM range a proximity domain
//! (the node's index); the SLIT gives the node-to-node distances.
//!
//! Everything is laid out in one buffer and written with one guest-memory
//! write at [`ACPI_START`], in the BIOS area below 1 MiB that e820 keeps
//! out of RAM; boot_params.acpi_rsdp_addr points at the RSDP so neither
//! Linux nor our kernel has to scan for it.
use crate::devices::legacy::ioapic::IOAPIC_BASE;
use crate::memory::layout::{ACPI_END, ACPI_START};
use crate::memory::GuestMemory;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::slit::SLIT;
use acpi_tables::srat::MemoryAffinity;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress};

/// One guest NUMA node as the tables describe it.
#[derive(Clone, Copy, Debug)]
pub struct AcpiNode<'a> {
    /// Guest-physical (base, size) ranges of RAM on this node.
    pub ram: &'a [(u64, u64)],
    /// vCPU ids (= APIC ids) whose home is this node.
    pub vcpus: &'a [u32],
}

/// SLIT's distance from a node to itself; the spec fixes it at 10.
pub const LOCAL_DISTANCE: u8 = 10;
/// xAPIC ids are 8 bits and 0xff is the broadcast id: more vCPUs would need
/// x2APIC entries, which neither the MADT nor our guest kernel uses.
pub const MAX_XAPIC_VCPUS: u32 = 255;

const OEM_ID: [u8; 6] = *b"MVISOR";
const OEM_TABLE_ID: [u8; 8] = *b"MEMVISOR";
const OEM_REVISION: u32 = 1;
/// The LAPIC's architectural base address (MADT header).
const LOCAL_APIC_ADDRESS: u32 = 0xfee0_0000;
/// SRAT revision 3: the proximity domain of a processor entry is 32 bits.
const SRAT_REVISION: u8 = 3;
const SRAT_HEADER_LEN: u32 = 48;
const SRAT_LAPIC_AFFINITY: u8 = 0;
const SRAT_LAPIC_AFFINITY_LEN: usize = 16;
const SRAT_ENABLED: u32 = 1;
/// DSDT revision 2: 64-bit AML integers.
const DSDT_REVISION: u8 = 2;
const DSDT_HEADER_LEN: u32 = 36;
/// IA-PC boot architecture flags (FADT offset 109): no VGA, no MSI, no
/// CMOS RTC — none of them exists in this VM, so Linux does not probe.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
/// Each table starts on this boundary (the RSDP needs 16).
const TABLE_ALIGN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("no NUMA nodes: the ACPI tables need at least one")]
    NoNodes,
    #[error("{0} vCPUs: MADT and SRAT carry 8-bit APIC ids, so 1 to {MAX_XAPIC_VCPUS} vCPUs fit")]
    Vcpus(u32),
    #[error("node {node} names vCPU {vcpu}, but the VM has vCPUs 0 to {last}")]
    VcpuOutOfRange { node: usize, vcpu: u32, last: u32 },
    #[error("vCPU {vcpu} is in node {first} and node {second}; each vCPU has one home node")]
    VcpuTwice {
        vcpu: u32,
        first: usize,
        second: usize,
    },
    #[error("vCPU {0} is in no node; every vCPU needs a home node")]
    VcpuMissing(u32),
    #[error("node {node}: RAM range {base:#x}+{size:#x} is empty or wraps around")]
    BadRange { node: usize, base: u64, size: u64 },
    #[error(
        "node {node}'s RAM {a_base:#x}+{a_size:#x} overlaps node {other}'s {b_base:#x}+{b_size:#x}"
    )]
    Overlap {
        node: usize,
        a_base: u64,
        a_size: u64,
        other: usize,
        b_base: u64,
        b_size: u64,
    },
    #[error("distance matrix has {got} entries; {nodes} nodes need {nodes}x{nodes}")]
    DistanceShape { got: usize, nodes: usize },
    #[error("distance from node {0} to itself is {1}; SLIT requires {LOCAL_DISTANCE}")]
    LocalDistance(usize, u8),
    #[error("distance from node {from} to node {to} is {value}; remote distances are 11 to 255")]
    RemoteDistance { from: usize, to: usize, value: u8 },
    #[error("distance from node {a} to node {b} is {ab} but from {b} to {a} is {ba}; the SLIT is written symmetric")]
    Asymmetric { a: usize, b: usize, ab: u8, ba: u8 },
    #[error(
        "the ACPI tables need {need} bytes; {have} fit between {ACPI_START:#x} and {ACPI_END:#x}"
    )]
    TooBig { need: usize, have: u64 },
    #[error("cannot write the ACPI tables to guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// Writes RSDP, XSDT, FADT, DSDT, MADT, SRAT and SLIT for `vcpus` vCPUs and
/// `nodes` (proximity domain i = `nodes[i]`), with `distance[i * n + j]`
/// the SLIT distance from node i to node j. Returns the RSDP's address.
pub fn write_tables(
    mem: &GuestMemory,
    vcpus: u32,
    nodes: &[AcpiNode],
    distance: &[u8],
) -> Result<u64, AcpiError> {
    let image = build(vcpus, nodes, distance)?;
    mem.write_slice(&image, GuestAddress(ACPI_START))?;
    Ok(ACPI_START)
}

/// The tables as they go to [`ACPI_START`], RSDP first.
pub fn build(vcpus: u32, nodes: &[AcpiNode], distance: &[u8]) -> Result<Vec<u8>, AcpiError> {
    check_topology(vcpus, nodes, distance)?;
    let dsdt = Sdt::new(
        *b"DSDT",
        DSDT_HEADER_LEN,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    let madt = bytes(&madt(vcpus));
    let srat = srat(nodes).as_slice().to_vec();
    let slit = bytes(&slit(nodes.len(), distance));

    // Offsets first (every size is known but the XSDT's, which is fixed by
    // its entry count), then the tables that point at others.
    let xsdt_len = 36 + 8 * 4;
    let mut at = 0usize;
    let mut place = |len: usize| {
        let off = at.next_multiple_of(TABLE_ALIGN);
        at = off + len;
        off
    };
    let rsdp_off = place(Rsdp::len());
    let xsdt_off = place(xsdt_len);
    let fadt_off = place(acpi_tables::fadt::FADT::len());
    let dsdt_off = place(dsdt.len());
    let madt_off = place(madt.len());
    let srat_off = place(srat.len());
    let slit_off = place(slit.len());
    let need = at;
    let have = ACPI_END - ACPI_START;
    if need as u64 > have {
        return Err(AcpiError::TooBig { need, have });
    }
    let gpa = |off: usize| ACPI_START + off as u64;

    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(gpa(dsdt_off))
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch =
        (IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED | IAPC_CMOS_RTC_NOT_PRESENT).into();
    let fadt = bytes(&fadt.finalize());
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for off in [fadt_off, madt_off, srat_off, slit_off] {
        xsdt.add_entry(gpa(off));
    }
    let xsdt = bytes(&xsdt);
    debug_assert_eq!(xsdt.len(), xsdt_len);
    let rsdp = bytes(&Rsdp::new(OEM_ID, gpa(xsdt_off)));

    let mut image = vec![0u8; need];
    for (off, table) in [
        (rsdp_off, &rsdp[..]),
        (xsdt_off, &xsdt[..]),
        (fadt_off, &fadt[..]),
        (dsdt_off, dsdt.as_slice()),
        (madt_off, &madt[..]),
        (srat_off, &srat[..]),
        (slit_off, &slit[..]),
    ] {
        image[off..off + table.len()].copy_from_slice(table);
    }
    Ok(image)
}

fn bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// What the tables cannot express or a guest would misread: a vCPU in no
/// node or two, ranges that overlap, a SLIT Linux's `slit_valid` rejects.
fn check_topology(vcpus: u32, nodes: &[AcpiNode], distance: &[u8]) -> Result<(), AcpiError> {
    if nodes.is_empty() {
        return Err(AcpiError::NoNodes);
    }
    if vcpus == 0 || vcpus > MAX_XAPIC_VCPUS {
        return Err(AcpiError::Vcpus(vcpus));
    }
    let mut home: Vec<Option<usize>> = vec![None; vcpus as usize];
    for (node, n) in nodes.iter().enumerate() {
        for &vcpu in n.vcpus {
            let slot = home
                .get_mut(vcpu as usize)
                .ok_or(AcpiError::VcpuOutOfRange {
                    node,
                    vcpu,
                    last: vcpus - 1,
                })?;
            if let Some(first) = *slot {
                return Err(AcpiError::VcpuTwice {
                    vcpu,
                    first,
                    second: node,
                });
            }
            *slot = Some(node);
        }
    }
    if let Some(v) = home.iter().position(Option::is_none) {
        return Err(AcpiError::VcpuMissing(v as u32));
    }
    let ranges: Vec<(usize, u64, u64)> = nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.ram.iter().map(move |&(b, s)| (i, b, s)))
        .collect();
    for (i, &(node, base, size)) in ranges.iter().enumerate() {
        if size == 0 || base.checked_add(size).is_none() {
            return Err(AcpiError::BadRange { node, base, size });
        }
        for &(other, b_base, b_size) in &ranges[..i] {
            if base < b_base.saturating_add(b_size) && b_base < base + size {
                return Err(AcpiError::Overlap {
                    node,
                    a_base: base,
                    a_size: size,
                    other,
                    b_base,
                    b_size,
                });
            }
        }
    }
    let n = nodes.len();
    if n.checked_mul(n) != Some(distance.len()) {
        return Err(AcpiError::DistanceShape {
            got: distance.len(),
            nodes: n,
        });
    }
    for a in 0..n {
        for b in 0..n {
            let ab = distance[a * n + b];
            if a == b && ab != LOCAL_DISTANCE {
                return Err(AcpiError::LocalDistance(a, ab));
            }
            if a != b && ab <= LOCAL_DISTANCE {
                return Err(AcpiError::RemoteDistance {
                    from: a,
                    to: b,
                    value: ab,
                });
            }
            let ba = distance[b * n + a];
            if ab != ba {
                return Err(AcpiError::Asymmetric { a, b, ab, ba });
            }
        }
    }
    Ok(())
}

fn madt(vcpus: u32) -> MADT {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LOCAL_APIC_ADDRESS),
    );
    for id in 0..vcpus {
        // check_topology bounds vcpus to 8-bit APIC ids.
        let id = id as u8;
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_BASE as u32, 0));
    madt
}

/// acpi_tables' SRAT type has no processor (local APIC) affinity entry, so
/// the table is assembled on its generic `Sdt`, with its memory entries.
fn srat(nodes: &[AcpiNode]) -> Sdt {
    let mut srat = Sdt::new(
        *b"SRAT",
        SRAT_HEADER_LEN,
        SRAT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    // "Reserved, must be 1" for compatibility with ACPI 1.0 readers.
    srat.write_u32(36, 1);
    for (pxm, n) in nodes.iter().enumerate() {
        let pxm = pxm as u32;
        for &vcpu in n.vcpus {
            srat.append_slice(&lapic_affinity(pxm, vcpu as u8));
        }
        for &(base, size) in n.ram {
            srat.append_slice(&bytes(&MemoryAffinity::new(pxm, base, size).enabled()));
        }
    }
    srat
}

/// SRAT type 0: processor local APIC affinity.
fn lapic_affinity(pxm: u32, apic_id: u8) -> [u8; SRAT_LAPIC_AFFINITY_LEN] {
    let mut e = [0u8; SRAT_LAPIC_AFFINITY_LEN];
    let p = pxm.to_le_bytes();
    e[0] = SRAT_LAPIC_AFFINITY;
    e[1] = SRAT_LAPIC_AFFINITY_LEN as u8;
    e[2] = p[0];
    e[3] = apic_id;
    e[4..8].copy_from_slice(&SRAT_ENABLED.to_le_bytes());
    e[9..12].copy_from_slice(&p[1..4]);
    e
}

fn slit(n: usize, distance: &[u8]) -> SLIT {
    let mut slit = SLIT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION, n as u32);
    for a in 0..n {
        for b in a + 1..n {
            slit.set_distance(a, b, distance[a * n + b]);
        }
    }
    slit
}

#[cfg(test)]
mod guest_parser;
#[cfg(test)]
mod tests;
