//! Where does KVM's VM teardown time go? A measurement tool, not part of the
//! VMM: it builds VMs of growing completeness with raw kvm-ioctls calls and
//! times creating them and closing them, then times whole processes that
//! end in different ways.
//!
//! ```sh
//! cargo run --release -p memvisor --example teardown_probe            # both parts, 20 runs
//! cargo run --release -p memvisor --example teardown_probe -- inproc 20
//! cargo run --release -p memvisor --example teardown_probe -- inproc 50 irqchip mem+split
//! cargo run --release -p memvisor --example teardown_probe -- process 20
//! cargo run --release -p memvisor --example teardown_probe -- process 30 close split-close
//! # one process ending one way (for an outside timer such as /usr/bin/time):
//! target/release/examples/teardown_probe child close
//! ```
//!
//! In-process variants (each run: KVM_CREATE_VM .. close of every fd; the
//! guest RAM is 256 MiB of anonymous memory with MADV_HUGEPAGE, unmapped
//! after the VM is closed and timed apart):
//! `empty`, `mem`, `mem-touched` (the host wrote every page first),
//! `irqchip` (no memslot), `mem+irqchip`, `mem+irqchip+pit`,
//! `mem+irqchip+pit+vcpu` (one vCPU ran a few real-mode instructions up to
//! a port write), `mem+irqchip+pit+irqfd+vcpu` (plus an irqfd on GSI 4:
//! what memvisor builds), `mem+vcpu` (no interrupt controller), `mem+split`
//! (KVM_CAP_SPLIT_IRQCHIP: LAPIC in the kernel, PIC/IOAPIC/PIT not),
//! `mem+split+vcpu`, `mem+split+ioeventfd+vcpu` (one ioeventfd: an io-bus
//! device, like a virtio-mmio doorbell). A suffix `@MS` sleeps that long between building and
//! closing (`irqchip@100`): a VM that lived longer closes faster.
//!
//! Process variants (spawn → reaped, as `memvisor bench boot` times; every
//! child builds mem+irqchip+pit+vcpu (or mem+split+vcpu) and ran its vCPU):
//! `close` (close every fd, then exit), `exit` (exit without closing: the
//! kernel closes them in exit), `thread` (a thread closes the fds, the
//! process exits at once), `fork` (a forked child keeps the fds and closes
//! them after the parent has exited), `nopit-close` (mem+irqchip+vcpu, no
//! PIT), `split-close` (mem+split+vcpu), `none` (no VM at all: the cost of
//! spawning this binary). TEARDOWN_PROBE_GAP_MS=N pauses between spawns.
use kvm_bindings::{
    kvm_enable_cap, kvm_pit_config, kvm_reinject_control, kvm_userspace_memory_region,
    KVM_CAP_SPLIT_IRQCHIP, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VcpuExit, VcpuFd, VmFd};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

const RAM: usize = 256 << 20;
/// Real-mode code at 0x1000: `mov dx,0x3f8; mov al,'x'; out dx,al; hlt`.
const CODE: [u8; 7] = [0xba, 0xf8, 0x03, 0xb0, b'x', 0xee, 0xf4];
const CODE_AT: u64 = 0x1000;

#[derive(Clone, Copy, Default)]
struct Parts {
    mem: bool,
    touch: bool,
    irqchip: bool,
    pit: bool,
    /// KVM_REINJECT_CONTROL(pit_reinject = 0) right after KVM_CREATE_PIT2.
    noreinject: bool,
    split: bool,
    /// One ioeventfd (a virtio-mmio doorbell): another io-bus device.
    ioeventfd: bool,
    /// An irqfd on GSI 4 (memvisor's COM1 line into the in-kernel IOAPIC).
    irqfd: bool,
    vcpu: bool,
    /// Sleep this long between building and closing (`@MS` suffix).
    age_ms: u64,
}

fn parts(name: &str) -> Parts {
    let mut p = Parts::default();
    let name = match name.split_once('@') {
        Some((n, age)) => {
            p.age_ms = age.parse().expect("@MS: milliseconds");
            n
        }
        None => name,
    };
    for w in name.split('+') {
        match w {
            "empty" => {}
            "mem" => p.mem = true,
            "mem-touched" => (p.mem, p.touch) = (true, true),
            "irqchip" => p.irqchip = true,
            "pit" => p.pit = true,
            "noreinject" => p.noreinject = true,
            "split" => p.split = true,
            "vcpu" => p.vcpu = true,
            "ioeventfd" => p.ioeventfd = true,
            "irqfd" => p.irqfd = true,
            _ => panic!("unknown part {w:?} in {name:?}"),
        }
    }
    p
}

struct Ram(*mut u8);
// SAFETY: only the mapping's address moves between threads; whoever holds
// the Ram unmaps it.
unsafe impl Send for Ram {}

impl Ram {
    fn new(touch: bool) -> Ram {
        // SAFETY: a fresh private anonymous mapping, ours alone.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RAM,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        // SAFETY: the mapping above.
        unsafe {
            libc::madvise(p, RAM, libc::MADV_HUGEPAGE);
            libc::madvise(p, RAM, libc::MADV_DONTFORK);
        }
        let p = p as *mut u8;
        if touch {
            for off in (0..RAM).step_by(4096) {
                // SAFETY: inside the mapping.
                unsafe { p.add(off).write_volatile(1) };
            }
        }
        // SAFETY: inside the mapping; the code page.
        unsafe {
            std::ptr::copy_nonoverlapping(CODE.as_ptr(), p.add(CODE_AT as usize), CODE.len())
        };
        Ram(p)
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new().
        unsafe { libc::munmap(self.0 as *mut _, RAM) };
    }
}

struct Built {
    vm: VmFd,
    vcpu: Option<VcpuFd>,
    ram: Option<Ram>,
    evt: Option<EventFd>,
    irq: Option<EventFd>,
}

fn build(kvm: &Kvm, p: Parts) -> Built {
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let ram = p.mem.then(|| Ram::new(p.touch));
    if let Some(r) = &ram {
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: RAM as u64,
            userspace_addr: r.0 as u64,
            flags: 0,
        };
        // SAFETY: the region lives until after the VM is closed.
        unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");
    }
    if p.irqchip {
        vm.set_tss_address(0xfffb_d000).expect("KVM_SET_TSS_ADDR");
        vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
    }
    if p.pit {
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).expect("KVM_CREATE_PIT2");
    }
    if p.noreinject {
        // KVM_REINJECT_CONTROL = _IO(KVMIO, 0x71), not wrapped by kvm-ioctls.
        let ctl = kvm_reinject_control::default();
        // SAFETY: a VM fd and a struct of the size the ioctl reads.
        let r = unsafe { libc::ioctl(vm.as_raw_fd(), 0xae71, &ctl) };
        assert_eq!(
            r,
            0,
            "KVM_REINJECT_CONTROL: {}",
            std::io::Error::last_os_error()
        );
    }
    if p.split {
        let mut cap = kvm_enable_cap {
            cap: KVM_CAP_SPLIT_IRQCHIP,
            ..Default::default()
        };
        cap.args[0] = 24;
        vm.enable_cap(&cap).expect("KVM_ENABLE_CAP(SPLIT_IRQCHIP)");
    }
    let evt = p.ioeventfd.then(|| {
        let e = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        vm.register_ioevent(&e, &IoEventAddress::Mmio(0xd000_0050), NoDatamatch)
            .expect("KVM_IOEVENTFD");
        e
    });
    let irq = p.irqfd.then(|| {
        let e = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        vm.register_irqfd(&e, 4).expect("KVM_IRQFD");
        e
    });
    let vcpu = p.vcpu.then(|| {
        let mut v = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
        let mut s = v.get_sregs().expect("KVM_GET_SREGS");
        s.cs.base = 0;
        s.cs.selector = 0;
        v.set_sregs(&s).expect("KVM_SET_SREGS");
        let mut r = v.get_regs().expect("KVM_GET_REGS");
        r.rip = CODE_AT;
        r.rflags = 2;
        v.set_regs(&r).expect("KVM_SET_REGS");
        if p.mem {
            match v.run().expect("KVM_RUN") {
                VcpuExit::IoOut(0x3f8, b"x") => {}
                e => panic!("unexpected exit {e:?}"),
            }
        }
        v
    });
    Built {
        vm,
        vcpu,
        ram,
        evt,
        irq,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

const INPROC: &[&str] = &[
    "empty",
    "mem",
    "mem-touched",
    "irqchip",
    "mem+irqchip",
    "mem+irqchip+pit",
    "mem+irqchip+pit+vcpu",
    "mem+irqchip+pit+irqfd+vcpu",
    "mem+vcpu",
    "mem+split",
    "mem+split+vcpu",
    "mem+split+ioeventfd+vcpu",
    "irqchip@100",
    "mem+irqchip+vcpu@100",
    "mem+irqchip+pit+vcpu@100",
];

fn inproc(runs: usize, only: &[String]) {
    let kvm = Kvm::new().expect("/dev/kvm");
    let names: Vec<&str> = if only.is_empty() {
        INPROC.to_vec()
    } else {
        only.iter().map(String::as_str).collect()
    };
    // [variant] -> (create, close, munmap) samples; variants interleaved so
    // that load from other processes spreads over all of them.
    let mut t: Vec<[Vec<f64>; 3]> = vec![Default::default(); names.len()];
    for _ in 0..runs {
        for (i, name) in names.iter().enumerate() {
            let p = parts(name);
            let t0 = Instant::now();
            let b = build(&kvm, p);
            let t1 = Instant::now();
            std::thread::sleep(Duration::from_millis(p.age_ms));
            let t1b = Instant::now();
            drop(b.vcpu);
            drop(b.evt);
            drop(b.irq);
            drop(b.vm);
            let t2 = Instant::now();
            drop(b.ram);
            let t3 = Instant::now();
            t[i][0].push(ms(t1 - t0));
            t[i][1].push(ms(t2 - t1b));
            t[i][2].push(ms(t3 - t2));
        }
    }
    println!("in-process, {runs} runs each (interleaved), medians in ms");
    println!("| variant | create+set-up | close vCPU+VM fds | close min..max | munmap RAM |");
    println!("|---|---|---|---|---|");
    for (name, [create, close, unmap]) in names.iter().zip(t) {
        let (lo, hi) = (
            close.iter().cloned().fold(f64::MAX, f64::min),
            close.iter().cloned().fold(0.0, f64::max),
        );
        println!(
            "| {name} | {:.2} | {:.2} | {lo:.2}..{hi:.2} | {:.2} |",
            median(create),
            median(close),
            median(unmap)
        );
    }
}

/// One child process: build, then end as `how` says.
fn child(how: &str) -> ! {
    if how == "none" {
        std::process::exit(0);
    }
    let kvm = Kvm::new().expect("/dev/kvm");
    let full = if how.starts_with("split") {
        "mem+split+vcpu"
    } else if how.starts_with("nopit") {
        "mem+irqchip+vcpu"
    } else {
        "mem+irqchip+pit+vcpu"
    };
    let b = build(&kvm, parts(full));
    match how {
        "close" | "nopit-close" | "split-close" => {
            drop(b);
            drop(kvm);
            std::process::exit(0)
        }
        "exit" => {
            // SAFETY: ends the process; the kernel closes every fd.
            unsafe { libc::_exit(0) }
        }
        "thread" => {
            std::thread::spawn(move || {
                drop(b);
                drop(kvm);
            });
            // SAFETY: ends the process while the thread may still be closing.
            unsafe { libc::_exit(0) }
        }
        "fork" => {
            // SAFETY: the child only closes fds and exits (async-signal-safe).
            match unsafe { libc::fork() } {
                0 => {
                    // The parent's pipes must not stay open here.
                    // SAFETY: plain fd closes and exit in the forked child.
                    unsafe {
                        libc::close(0);
                        libc::close(1);
                        libc::close(2);
                        // Let the parent exit first, then tear down.
                        libc::usleep(1000);
                    }
                    drop(b.vcpu);
                    drop(b.vm);
                    // SAFETY: as above.
                    unsafe { libc::_exit(0) }
                }
                -1 => panic!("fork failed"),
                // The RAM is MADV_DONTFORK and the VM fd lives on in the
                // child: this process just exits.
                // SAFETY: ends the process.
                _ => unsafe { libc::_exit(0) },
            }
        }
        _ => panic!("unknown child variant {how:?}"),
    }
}

const PROCESS: &[&str] = &[
    "none",
    "close",
    "exit",
    "thread",
    "fork",
    "nopit-close",
    "split-close",
];

fn process(runs: usize, only: &[String]) {
    let names: Vec<&str> = if only.is_empty() {
        PROCESS.to_vec()
    } else {
        only.iter().map(String::as_str).collect()
    };
    let me = std::env::current_exe().expect("current_exe");
    // Pause between spawns: TEARDOWN_PROBE_GAP_MS, default 0 (back to back,
    // as `memvisor bench boot` spawns; a fork variant's teardown then
    // overlaps the next spawn). After a 100 ms pause every VM variant was
    // slower here (split-close median 2.8 → 8.3 ms).
    let gap_ms: u64 = std::env::var("TEARDOWN_PROBE_GAP_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    println!(
        "\nwhole process, spawn → reaped, {runs} runs each (interleaved, {gap_ms} ms apart), ms"
    );
    println!("| variant | median | min | max |");
    println!("|---|---|---|---|");
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for _ in 0..runs {
        for (i, how) in names.iter().enumerate() {
            let t0 = Instant::now();
            let st = Command::new(&me)
                .args(["child", how])
                .stdin(Stdio::null())
                .status()
                .expect("spawning the child");
            let t = ms(t0.elapsed());
            assert!(st.success(), "child {how} failed: {st}");
            times[i].push(t);
            std::thread::sleep(Duration::from_millis(gap_ms));
        }
    }
    for (how, t) in names.iter().zip(times) {
        let (lo, hi) = (
            t.iter().cloned().fold(f64::MAX, f64::min),
            t.iter().cloned().fold(0.0, f64::max),
        );
        println!("| {how} | {:.2} | {lo:.2} | {hi:.2} |", median(t));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs = |i: usize| args.get(i).map_or(20, |s| s.parse().expect("runs"));
    match args.first().map(String::as_str) {
        Some("child") => child(args.get(1).expect("child VARIANT")),
        Some("inproc") => inproc(runs(1), args.get(2..).unwrap_or_default()),
        Some("process") => process(runs(1), args.get(2..).unwrap_or_default()),
        None => {
            inproc(20, &[]);
            process(20, &[]);
        }
        Some(a) => {
            panic!("usage: teardown_probe [inproc|process [RUNS]] | child VARIANT (got {a:?})")
        }
    }
}
