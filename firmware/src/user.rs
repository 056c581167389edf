//! The kernel proper, at CPL3: boot report, then the workload.
use crate::arch::cpu;
use crate::bootinfo::{BootInfo, E820_RAM};
use crate::hostio::{self, LINE};
use crate::{abi, cmdline, mm, smp, syscall, vm_space, workloads, MAX_CPUS};

/// Every CPU arrives here from the iretq in `_start`.
pub extern "C" fn user_main(cpu: u64, boot_params: u64, ncpus: u64) -> ! {
    let cpu = cpu as usize;
    let ncpus = ncpus as usize;
    if cpu == 0 {
        crate::arch::gdt::finish_tables(ncpus);
    }
    let here = 0u8;
    smp::check_in(
        cpu,
        cpu::current_cpl(),
        cpu::rdtsc(),
        &raw const here as u64,
    );
    if cpu == 0 {
        // SAFETY: rsi at entry; the VMM guarantees a zero page there.
        bsp_main(unsafe { BootInfo::new(boot_params) }, ncpus)
    }
    ap_main(cpu, ncpus)
}

/// Reports a guest error (JSON and console) and exits with failure.
pub fn fail(message: core::fmt::Arguments) -> ! {
    let mut l = LINE.lock();
    l.begin(abi::RECORD_JSON);
    l.raw("{\"event\":\"error\",\"message\":");
    l.string_fmt(message);
    l.raw("}");
    hostio::send(l.finish());
    l.begin(abi::RECORD_CONSOLE);
    l.fmt(format_args!("memvisor-guest: {message}\n"));
    hostio::send(l.finish());
    drop(l);
    hostio::exit(abi::GUEST_EXIT_FAILURE)
}

static CMDLINE: core::sync::atomic::AtomicPtr<u8> =
    core::sync::atomic::AtomicPtr::new(core::ptr::null_mut());
static CMDLINE_LEN: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// The kernel command line (empty before the BSP has read it).
pub fn cmdline() -> &'static str {
    use core::sync::atomic::Ordering::Acquire;
    let (p, n) = (CMDLINE.load(Acquire), CMDLINE_LEN.load(Acquire));
    if p.is_null() {
        return "";
    }
    // SAFETY: published by bsp_main from a &'static str.
    unsafe { core::str::from_utf8_unchecked(core::slice::from_raw_parts(p, n)) }
}

fn bsp_main(boot: BootInfo, ncpus: usize) -> ! {
    let cmdline = boot.cmdline();
    CMDLINE_LEN.store(cmdline.len(), core::sync::atomic::Ordering::Release);
    CMDLINE.store(
        cmdline.as_ptr() as *mut u8,
        core::sync::atomic::Ordering::Release,
    );
    if ncpus == 0 || ncpus > MAX_CPUS {
        fail(format_args!(
            "{ncpus} vCPUs, but this kernel supports 1 to {MAX_CPUS}"
        ));
    }
    // Every known option's every value, before anything runs; unknown keys
    // (console=, virtio_mmio.device=, ...) pass.
    if let Err(bad) = cmdline::check(cmdline) {
        fail(format_args!("{bad}"));
    }
    let wl_name = cmdline::get(cmdline, "workload").unwrap_or(workloads::DEFAULT);
    let Some(wl) = workloads::find(wl_name) else {
        fail(format_args!(
            "unknown workload '{wl_name}'; valid workloads: {}",
            workloads::Names
        ));
    };
    let kmap_mode = cmdline::get(cmdline, "kmap")
        .and_then(vm_space::KmapMode::parse)
        .unwrap_or(vm_space::KmapMode::TwoMib);
    if let Err(e) = vm_space::plan_kernel(&boot, kmap_mode) {
        fail(format_args!("{e}"));
    }
    let tsc_mm_start = cpu::rdtsc();
    let grouping = cmdline::get(cmdline, "mobility_grouping")
        .and_then(cmdline::parse_grouping)
        .flatten();
    let mm = match mm::init(&boot, ncpus, grouping) {
        Ok(s) => s,
        Err(e) => fail(format_args!("{e}")),
    };
    let tsc_mm_done = cpu::rdtsc();
    let kmap = match vm_space::init_kernel() {
        Ok(k) => k,
        Err(e) => fail(format_args!("{e}")),
    };
    vm_space::wait_all_entered(ncpus);
    let tsc_kmap_done = cpu::rdtsc();
    smp::wait_all_checked_in(ncpus);
    let tsc_all_in = cpu::rdtsc();
    let gate_ok = syscall::call0(syscall::SYS_NOP) == 0;
    let tsc_gate = cpu::rdtsc();

    {
        let mut l = LINE.lock();
        l.begin(abi::RECORD_JSON);
        l.raw("{\"event\":\"ready\",\"kernel\":\"memvisor-guest\",\"version\":");
        l.string(env!("CARGO_PKG_VERSION"));
        l.fmt(format_args!(",\"vcpus\":{ncpus},\"cmdline\":"));
        l.string(cmdline);
        l.raw(",\"workload\":");
        l.string(wl.name);
        l.raw(",\"e820\":[");
        for (i, e) in boot.e820().enumerate() {
            l.fmt(format_args!(
                "{}{{\"addr\":{},\"size\":{},\"type\":{}}}",
                if i == 0 { "" } else { "," },
                e.addr,
                e.size,
                e.kind
            ));
        }
        let e820_ram: u64 = boot
            .e820()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        l.fmt(format_args!(
            "],\"e820_ram_bytes\":{e820_ram},\"total_pages\":{},\"reserved_pages\":{},\"free_pages\":{},\
             \"kernel_start\":{},\"kernel_end\":{},\"grouping_by_mobility\":{},\"syscall_gate\":{gate_ok},\"cpus\":[",
            mm.total_pages, mm.reserved_pages, mm.free_pages, mm.kernel_start, mm.kernel_end, mm.grouping
        ));
        for (i, c) in smp::CHECKINS.iter().take(ncpus).enumerate() {
            use core::sync::atomic::Ordering::Relaxed;
            l.fmt(format_args!(
                "{}{{\"id\":{i},\"cpl\":{},\"stack\":{},\"tsc\":{}}}",
                if i == 0 { "" } else { "," },
                c.cpl.load(Relaxed),
                c.stack.load(Relaxed),
                c.tsc.load(Relaxed)
            ));
        }
        // SAFETY: written once by the BSP at CPL0 before it got here.
        let entry = unsafe { crate::arch::entry::ENTRY_TSC };
        let cpl3 = smp::CHECKINS[0]
            .tsc
            .load(core::sync::atomic::Ordering::Relaxed);
        l.raw("],");
        crate::numa::write_json(&mut l, &mm.numa, mm::allocator());
        l.fmt(format_args!(
            ",\"kernel_map\":{{\"mode\":\"{}\",\"root\":{},\"leaves_1g\":{},\"leaves_2m\":{},\"pt_pages\":{},\"build_cycles\":{},\"load_cycles\":{},\"cycles\":{}",
            kmap_mode.name(), kmap.root, kmap.leaves_1g, kmap.leaves_2m, kmap.pt_pages, kmap.build_cycles, kmap.load_cycles,
            tsc_kmap_done - tsc_mm_done
        ));
        l.raw(",\"cpu_roots\":[");
        for c in 0..ncpus {
            let sep = if c == 0 { "" } else { "," };
            l.fmt(format_args!("{sep}{}", vm_space::current_root(c)));
        }
        l.raw("]}");
        l.fmt(format_args!(
            ",\"boot_cycles\":{{\"cpl0\":{},\"to_mm\":{},\"mm\":{},\"checkins\":{},\"syscall\":{},\"to_ready\":{}}}}}",
            cpl3.wrapping_sub(entry),
            tsc_mm_start.wrapping_sub(cpl3),
            tsc_mm_done - tsc_mm_start,
            tsc_all_in - tsc_kmap_done,
            tsc_gate - tsc_all_in,
            cpu::rdtsc() - tsc_gate
        ));
        hostio::send(l.finish());
    }

    smp::GO.store(wl.index(), core::sync::atomic::Ordering::Release);
    let ok = (wl.run)(0, ncpus);
    hostio::exit(if ok {
        abi::GUEST_EXIT_SUCCESS
    } else {
        abi::GUEST_EXIT_FAILURE
    })
}

fn ap_main(cpu: usize, ncpus: usize) -> ! {
    use core::sync::atomic::Ordering::Acquire;
    if !vm_space::enter_kernel(cpu) {
        fail(format_args!(
            "cpu {cpu}: SYS_LOAD_CR3 refused the kernel root"
        ));
    }
    let idx = loop {
        match smp::GO.load(Acquire) {
            u32::MAX => core::hint::spin_loop(),
            i => break i as usize,
        }
    };
    (workloads::ALL[idx].run)(cpu, ncpus);
    syscall::halt()
}
