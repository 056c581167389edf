//! What one RECORD_PTWALK request costs the vCPU thread that carries it:
//! the walk model over 4 KiB page tables mapping `MIB` MiB (tables and data
//! in guest node 0 of two, both written so the host holds them), both
//! views counted, move_pages included. Prints µs per request and ns per
//! sampled walk: the basis of `guest::ptwalk::WALK_BUDGET`.
//!
//!   cargo run --release -p memvisor --example ptwalk_cost -- [samples] [requests] [mib]
use memvisor::abi;
use memvisor::guest::ptwalk::PtWalker;
use memvisor::memory::backing::BackingConfig;
use memvisor::memory::numa::NodeRam;
use memvisor::memory::walk_model::{PTE_ADDR, PTE_PRESENT};
use memvisor::memory::GuestRam;
use std::mem::offset_of;
use vm_memory::{Bytes, GuestAddress};

const MIB: u64 = 1 << 20;
const VA: u64 = 0x7f00_0000_0000;

fn main() {
    let arg = |i: usize, d: u64| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let (samples, requests, mib) = (arg(1, 65536), arg(2, 16), arg(3, 256));
    let node = NodeRam {
        size: mib * MIB + 64 * MIB,
        host_node: None,
    };
    let ram = GuestRam::with_nodes(&[node, node], BackingConfig::default(), false).unwrap();
    let mem = ram.memory();
    // Tables from 1 MiB up, data from 32 MiB up, all of it in node 0.
    let mut next = MIB;
    let mut alloc = || {
        next += 4096;
        next - 4096
    };
    let root = alloc();
    let flags = PTE_PRESENT | 2 | 4;
    for page in 0..mib * MIB / 4096 {
        let va = VA + page * 4096;
        let mut table = root;
        for level in (2..=4).rev() {
            let at = GuestAddress(table + 8 * ((va >> (12 + 9 * (level - 1))) & 511));
            let e: u64 = mem.read_obj(at).unwrap();
            table = if e & PTE_PRESENT != 0 {
                e & PTE_ADDR
            } else {
                let t = alloc();
                mem.write_obj(t | flags, at).unwrap();
                t
            };
        }
        let data = 32 * MIB + page * 4096;
        mem.write_obj(0xa5u8, GuestAddress(data)).unwrap();
        mem.write_obj(data | flags, GuestAddress(table + 8 * ((va >> 12) & 511)))
            .unwrap();
    }
    let w = PtWalker::for_vm(mem.clone(), ram.regions().to_vec(), None, 2, None);
    let mut p = vec![0u8; abi::PTWALK_REQUEST_LEN as usize];
    use abi::PtWalkRequest as R;
    let mut put = |o: usize, v: &[u8]| p[o..o + v.len()].copy_from_slice(v);
    put(offset_of!(R, root), &root.to_le_bytes());
    put(offset_of!(R, start), &VA.to_le_bytes());
    put(offset_of!(R, len), &(mib * MIB).to_le_bytes());
    put(offset_of!(R, samples), &(samples as u32).to_le_bytes());
    put(offset_of!(R, levels), &4u32.to_le_bytes());
    for _ in 0..requests {
        if let Err(e) = w.handle(0, &p) {
            eprintln!("refused: {e}");
        }
    }
    let (results, rejected) = w.report();
    let mut us: Vec<f64> = results.iter().map(|r| r.host_us).collect();
    us.sort_by(f64::total_cmp);
    let r = &results[0];
    println!(
        "{} requests of {} samples over {mib} MiB of 4 KiB pages: median {:.0} µs per request, {:.0} ns per walk; {} walks, {} pages, guest-PT refs {:?}, host view {:?}; walked {} of a {} budget",
        results.len(),
        r.samples,
        us[us.len() / 2],
        us[us.len() / 2] * 1000.0 / r.samples as f64,
        r.ends.walks,
        r.pages,
        r.guest_topology.ept_first_touch.guest_pt,
        r.host_placement.map(|h| h.ept_first_touch.guest_pt),
        rejected.walked,
        rejected.walk_budget,
    );
}
