//! What one VMM write to guest RAM costs through vm-memory (the path every
//! device write takes: virtio-rng buffers, used rings), with the dirty
//! bitmap off (`--dirty-log off`) and on (`tracked`). Prints ns per write;
//! under `valgrind --tool=callgrind --toggle-collect='*measured_loop*'` the
//! instruction count per write is exact, whatever the host's load.
//!
//!   cargo run --release -p memvisor --example guest_write_cost -- [off|tracked] [writes] [bytes]
use memvisor::memory::backing::BackingConfig;
use memvisor::memory::{GuestMemory, GuestRam};
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress};

const RAM: u64 = 64 << 20;

#[inline(never)]
fn measured_loop(mem: &GuestMemory, writes: u64, buf: &[u8]) {
    for i in 0..writes {
        let at = (i * 4096) % RAM;
        mem.write_slice(buf, GuestAddress(at)).expect("inside RAM");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("off", String::as_str);
    let writes: u64 = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let bytes: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(64);
    let ram = match mode {
        "off" => GuestRam::with_backing(RAM, BackingConfig::default()),
        "tracked" => GuestRam::with_vmm_write_tracking(RAM, BackingConfig::default()),
        other => {
            eprintln!("guest_write_cost: mode {other:?}: expected off or tracked");
            std::process::exit(2);
        }
    }
    .expect("mapping guest RAM");
    let buf = vec![0x5au8; bytes];
    // Every page touched once first, so the loop measures no page faults.
    measured_loop(ram.memory(), RAM / 4096, &buf);
    let t = Instant::now();
    measured_loop(ram.memory(), writes, &buf);
    let ns = t.elapsed().as_nanos() as f64 / writes as f64;
    println!("{mode}: {writes} writes of {bytes} bytes, {ns:.1} ns per write");
}
