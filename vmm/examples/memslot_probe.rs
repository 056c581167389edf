//! What does changing a KVM memslot cost, at boot and at runtime? A
//! measurement tool, not part of the VMM: the balloon and memory hot-plug
//! may add, remove or re-flag slots while the guest runs, and this host's
//! first slot after KVM_CREATE_IRQCHIP was measured at ~4.8 ms against
//! ~0.25 ms before it (HOST_FACTS), which is why the builder sets every slot
//! before the interrupt controller.
//!
//! ```sh
//! cargo run --release -p memvisor --example memslot_probe           # 20 runs
//! cargo run --release -p memvisor --example memslot_probe -- 50
//! ```
//!
//! Each run builds a fresh VM with 256 MiB of THP-advised RAM in slot 0 and
//! times KVM_SET_USER_MEMORY_REGION for: slot 0 itself (`boot slot`); then,
//! under each interrupt-controller mode (none, split, full), adding a 2 MiB
//! slot 1 and deleting it again with no vCPU (`idle add`, `idle delete`);
//! and the same while a vCPU thread runs a guest loop that exits to
//! userspace on every iteration (`running add`, `running delete`: KVM must
//! get every vCPU out of the old memslot generation first).
use kvm_bindings::{kvm_enable_cap, kvm_userspace_memory_region, KVM_CAP_SPLIT_IRQCHIP};
use kvm_ioctls::{Kvm, VcpuExit, VmFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

const RAM: usize = 256 << 20;
const EXTRA: usize = 2 << 20;
const EXTRA_GPA: u64 = 1 << 30;
/// Real-mode loop at 0x1000: `1: out 0x80, al; jmp 1b`, an exit per turn.
const CODE: [u8; 4] = [0xe6, 0x80, 0xeb, 0xfc];
const CODE_AT: u64 = 0x1000;

#[derive(Clone, Copy, PartialEq)]
enum Chip {
    None,
    Split,
    Full,
}

fn map(len: usize) -> *mut u8 {
    // SAFETY: a fresh private anonymous mapping, ours alone.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap");
    // SAFETY: the mapping above.
    unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) };
    p as *mut u8
}

/// Sets (or deletes, with size 0) a slot and returns the ioctl's time in ms.
fn set_slot(vm: &VmFd, slot: u32, gpa: u64, size: usize, host: *mut u8) -> f64 {
    let region = kvm_userspace_memory_region {
        slot,
        guest_phys_addr: gpa,
        memory_size: size as u64,
        userspace_addr: host as u64,
        flags: 0,
    };
    let t = Instant::now();
    // SAFETY: every mapping outlives the VM (unmapped after it is closed).
    unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");
    t.elapsed().as_secs_f64() * 1e3
}

struct Sample {
    boot: f64,
    idle_add: f64,
    idle_delete: f64,
    running_add: f64,
    running_delete: f64,
    exits_during: u64,
}

fn one_run(kvm: &Kvm, chip: Chip, ram: *mut u8, extra: *mut u8) -> Sample {
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let boot = set_slot(&vm, 0, 0, RAM, ram);
    match chip {
        Chip::None => {}
        Chip::Split => {
            let mut cap = kvm_enable_cap {
                cap: KVM_CAP_SPLIT_IRQCHIP,
                ..Default::default()
            };
            cap.args[0] = 24;
            vm.enable_cap(&cap).expect("KVM_ENABLE_CAP(SPLIT_IRQCHIP)");
        }
        Chip::Full => {
            vm.set_tss_address(0xfffb_d000).expect("KVM_SET_TSS_ADDR");
            vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
        }
    }
    let idle_add = set_slot(&vm, 1, EXTRA_GPA, EXTRA, extra);
    let idle_delete = set_slot(&vm, 1, EXTRA_GPA, 0, extra);

    let mut vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    let mut sregs = vcpu.get_sregs().expect("KVM_GET_SREGS");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).expect("KVM_SET_SREGS");
    let regs = kvm_bindings::kvm_regs {
        rip: CODE_AT,
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).expect("KVM_SET_REGS");
    let stop = Arc::new(AtomicBool::new(false));
    let running = Arc::new(AtomicBool::new(false));
    let (s, r) = (stop.clone(), running.clone());
    let thread = std::thread::spawn(move || {
        let mut exits = 0u64;
        while !s.load(Ordering::Relaxed) {
            match vcpu.run().expect("KVM_RUN") {
                VcpuExit::IoOut(0x80, _) => exits += 1,
                other => panic!("unexpected exit {other:?}"),
            }
            if exits == 100 {
                r.store(true, Ordering::Release);
            }
        }
        exits
    });
    while !running.load(Ordering::Acquire) {
        std::hint::spin_loop();
    }
    let running_add = set_slot(&vm, 1, EXTRA_GPA, EXTRA, extra);
    let running_delete = set_slot(&vm, 1, EXTRA_GPA, 0, extra);
    stop.store(true, Ordering::Relaxed);
    let exits_during = thread.join().expect("vCPU thread");
    Sample {
        boot,
        idle_add,
        idle_delete,
        running_add,
        running_delete,
        exits_during,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("runs: a count"))
        .unwrap_or(20);
    let kvm = Kvm::new().expect("open /dev/kvm");
    let ram = map(RAM);
    let extra = map(EXTRA);
    // SAFETY: inside the RAM mapping; the code page.
    unsafe { std::ptr::copy_nonoverlapping(CODE.as_ptr(), ram.add(CODE_AT as usize), CODE.len()) };
    println!("memslot_probe: {runs} runs per mode, medians in ms (256 MiB slot 0, 2 MiB slot 1)");
    println!(
        "{:<6} {:>10} {:>10} {:>12} {:>12} {:>15}",
        "chip", "boot slot", "idle add", "idle delete", "running add", "running delete"
    );
    for (name, chip) in [
        ("none", Chip::None),
        ("split", Chip::Split),
        ("full", Chip::Full),
    ] {
        let samples: Vec<Sample> = (0..runs).map(|_| one_run(&kvm, chip, ram, extra)).collect();
        let col = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
        println!(
            "{:<6} {:>10.3} {:>10.3} {:>12.3} {:>12.3} {:>15.3}",
            name,
            col(|s| s.boot),
            col(|s| s.idle_add),
            col(|s| s.idle_delete),
            col(|s| s.running_add),
            col(|s| s.running_delete),
        );
        let exits: u64 = samples.iter().map(|s| s.exits_during).sum();
        assert!(
            exits >= 100 * runs as u64,
            "the vCPU ran while the slots changed"
        );
    }
}
