//! dirty: writes a reproducible set of pages between two marks the VMM acts
//! on, and reports exactly which guest-physical pages it wrote there, so
//! the VMM can check its dirty log (`--dirty-log`): these pages, plus the
//! pages a device wrote, and nothing else.
//!
//! `dirty_pages=N` pages (default 256), `dirty_stride=K` pages apart
//! (default 1), counted through order-10 blocks taken from the page
//! allocator (at most 256 blocks, 1 GiB). With a virtio-rng device
//! announced (`--entropy`), eight 4 KiB entropy buffers are also handed to
//! the device inside the window: the VMM's writes (buffers, used ring) must
//! appear in the log too.
//!
//! What makes the window exact: at the start mark (`abi::MARK_DIRTY_START`)
//! the VMM harvests and so clears its log, at the end mark it harvests
//! again, both on this vCPU's exit, before the `out` completes. Between
//! them the only code that runs is one `asm!` block that uses no stack and
//! stores to the target pages, the avail index (the ring page) and the
//! device's QueueNotify register (MMIO, not RAM), and otherwise only reads.
//! Everything else the guest must write (the run table, descriptors, the
//! interrupt suppression in `used_event`, the page allocator's books) is
//! written before the start mark. Each target page is written once before
//! the window too (the timed first touch), which also sets the Accessed
//! and Dirty bits of the guest's own page-table entries, so the MMU (or
//! KVM's shadow of it) has nothing to write to them inside the window. The
//! other vCPUs spin in a loop that only reads, entered before the window.
use crate::hostio::{self, LINE};
use crate::virtio::rng::{self, Staged, VirtioRng};
use crate::virtio::VirtioError;
use crate::{abi, arch::cpu, cmdline, mm, user};
use core::arch::asm;
use core::ptr::addr_of_mut;
use core::sync::atomic::{AtomicU32, Ordering};
use guest_mm::gfp::Gfp;
use guest_mm::mmzone::MAX_ORDER;
use guest_mm::{Pfn, PAGE_SIZE};

pub const DEFAULT_PAGES: u64 = 256;
pub const DEFAULT_STRIDE: u64 = 1;
const BLOCK_PAGES: u64 = 1 << MAX_ORDER;
const MAX_BLOCKS: usize = 256;
/// One run per block at most, plus the ring page.
const MAX_RUNS: usize = MAX_BLOCKS + 1;
/// Written at first touch, then at the re-write inside the window.
const FIRST: u64 = 0x6469_7274_7930_0001;
const AGAIN: u64 = 0x6469_7274_7930_0002;
/// Longest wait inside the window for the device (cycles; seconds here).
const DEVICE_WAIT_CYCLES: u64 = 10_000_000_000;
const GFP: Gfp = Gfp::MOVABLE.union(Gfp::NOWARN);

/// Pages `first + i * stride` (bytes) for `i < count`, as the window's
/// assembly reads them.
#[repr(C)]
#[derive(Clone, Copy)]
struct Run {
    first: u64,
    count: u64,
    stride: u64,
}

/// What the window's assembly reads, at fixed offsets.
#[repr(C)]
struct Params {
    runs: u64,
    nruns: u64,
    pattern: u64,
    /// 0: no device in the window.
    avail_idx_addr: u64,
    avail_idx: u64,
    notify_addr: u64,
    queue: u64,
    used_idx_addr: u64,
    used_idx: u64,
    timeout: u64,
}

static mut RUNS: [Run; MAX_RUNS] = [Run {
    first: 0,
    count: 0,
    stride: 0,
}; MAX_RUNS];
static mut BLOCKS: [u64; MAX_BLOCKS] = [0; MAX_BLOCKS];
static mut PARAMS: Params = Params {
    runs: 0,
    nruns: 0,
    pattern: 0,
    avail_idx_addr: 0,
    avail_idx: 0,
    notify_addr: 0,
    queue: 0,
    used_idx_addr: 0,
    used_idx: 0,
    timeout: 0,
};
/// CPUs other than 0 that are in their read-only wait.
static PARKED: AtomicU32 = AtomicU32::new(0);
static RELEASE: AtomicU32 = AtomicU32::new(0);

/// Other CPUs: count in, then wait reading only, until the window is over.
fn park() {
    // SAFETY: atomics on statics; the loop stores nothing after the
    // increment (and keeps everything in registers).
    unsafe {
        asm!(
            "lock inc dword ptr [{parked}]",
            "2:",
            "pause",
            "cmp dword ptr [{release}], 0",
            "je 2b",
            parked = in(reg) PARKED.as_ptr(),
            release = in(reg) RELEASE.as_ptr(),
            options(nostack),
        );
    }
}

fn option(key: &str, parse: fn(&str) -> Option<u64>, default: u64) -> u64 {
    // cmdline::check accepted every value before the workload ran.
    cmdline::get(user::cmdline(), key)
        .and_then(parse)
        .unwrap_or(default)
}

/// The window: start mark, re-write every page of the runs, hand the
/// staged buffers to the device and wait for them, end mark. Returns the
/// TSC at the start, after the pages, and at the end, and whether the
/// device timed out.
///
/// # Safety
/// `p` describes runs of pages this CPU owns and, if `avail_idx_addr` is
/// set, a staged virtqueue (see `VirtioRng::stage`).
unsafe fn window(p: *const Params) -> (u64, u64, u64, bool) {
    let (t0, t1, t2, timed_out): (u64, u64, u64, u64);
    // SAFETY: per the caller; no stack is used, and the only stores are to
    // the run pages, the avail index and the QueueNotify register.
    unsafe {
        asm!(
            "mov eax, {start}",
            "mov edx, {port}",
            "out dx, eax",
            "rdtsc",
            "shl rdx, 32",
            "or rax, rdx",
            "mov r8, rax",
            "mov rsi, [rdi]",
            "mov rcx, [rdi + 8]",
            "mov r12, [rdi + 16]",
            "2:",
            "test rcx, rcx",
            "jz 5f",
            "mov r13, [rsi]",
            "mov r14, [rsi + 8]",
            "mov r15, [rsi + 16]",
            "3:",
            "test r14, r14",
            "jz 4f",
            "mov rax, r13",
            "xor rax, r12",
            "mov [r13], rax",
            "add r13, r15",
            "dec r14",
            "jmp 3b",
            "4:",
            "add rsi, 24",
            "dec rcx",
            "jmp 2b",
            "5:",
            "rdtsc",
            "shl rdx, 32",
            "or rax, rdx",
            "mov r9, rax",
            "xor r11d, r11d",
            "mov rsi, [rdi + 24]",
            "test rsi, rsi",
            "jz 8f",
            "mov rax, [rdi + 32]",
            "mov word ptr [rsi], ax",
            "mfence",
            "mov rsi, [rdi + 40]",
            "mov rax, [rdi + 48]",
            "mov dword ptr [rsi], eax",
            "mov rsi, [rdi + 56]",
            "mov rcx, [rdi + 64]",
            "mov r13, r9",
            "add r13, [rdi + 72]",
            "6:",
            "movzx eax, word ptr [rsi]",
            "cmp ax, cx",
            "je 8f",
            "pause",
            "rdtsc",
            "shl rdx, 32",
            "or rax, rdx",
            "cmp rax, r13",
            "jb 6b",
            "mov r11d, 1",
            "8:",
            "rdtsc",
            "shl rdx, 32",
            "or rax, rdx",
            "mov r10, rax",
            "mov eax, {end}",
            "mov edx, {port}",
            "out dx, eax",
            start = const abi::MARK_DIRTY_START,
            end = const abi::MARK_DIRTY_END,
            port = const abi::MARK_PORT,
            in("rdi") p,
            out("rax") _, out("rcx") _, out("rdx") _, out("rsi") _,
            out("r8") t0, out("r9") t1, out("r10") t2, out("r11") timed_out,
            out("r12") _, out("r13") _, out("r14") _, out("r15") _,
            options(nostack),
        );
    }
    (t0, t1, t2, timed_out != 0)
}

/// Appends page `pfn` to the runs, extending the last one when `pfn`
/// continues its progression.
fn push_page(runs: &mut [Run; MAX_RUNS], n: &mut usize, pfn: u64, stride: u64) {
    let addr = pfn * PAGE_SIZE;
    if *n > 0 {
        let r = &mut runs[*n - 1];
        if r.first + r.count * r.stride == addr {
            r.count += 1;
            return;
        }
    }
    runs[*n] = Run {
        first: addr,
        count: 1,
        stride: stride * PAGE_SIZE,
    };
    *n += 1;
}

pub fn run(cpu: usize, ncpus: usize) -> bool {
    if cpu != 0 {
        park();
        return true;
    }
    let pages = option("dirty_pages", cmdline::parse_dirty_pages, DEFAULT_PAGES);
    let stride = option("dirty_stride", cmdline::parse_dirty_stride, DEFAULT_STRIDE);
    let span = (pages - 1) * stride + 1;
    let nblocks = span.div_ceil(BLOCK_PAGES) as usize;
    if nblocks > MAX_BLOCKS {
        user::fail(format_args!(
            "dirty: dirty_pages={pages} dirty_stride={stride} spans {span} pages; at most {} fit",
            MAX_BLOCKS as u64 * BLOCK_PAGES
        ));
    }
    // SAFETY: only CPU 0 runs this, once; the other CPUs are parked.
    let (blocks, runs, params) = unsafe {
        (
            &mut *addr_of_mut!(BLOCKS),
            &mut *addr_of_mut!(RUNS),
            &mut *addr_of_mut!(PARAMS),
        )
    };
    let alloc = mm::allocator();
    for (i, block) in blocks.iter_mut().enumerate().take(nblocks) {
        match alloc.alloc_pages(cpu, GFP, MAX_ORDER) {
            Some(Pfn(p)) => *block = p,
            None => user::fail(format_args!(
                "dirty: no free order-{MAX_ORDER} block for block {i} of {nblocks}"
            )),
        }
    }
    let mut nruns = 0;
    for j in 0..pages {
        let idx = j * stride;
        let pfn = blocks[(idx / BLOCK_PAGES) as usize] + idx % BLOCK_PAGES;
        push_page(runs, &mut nruns, pfn, stride);
    }
    let page_runs = nruns;

    // A device to write inside the window, if one is announced.
    let mut dev = match VirtioRng::init(user::cmdline(), cpu) {
        Ok(d) => Some(d),
        Err(VirtioError::NotFound { .. }) => None,
        Err(e) => user::fail(format_args!("dirty: virtio-rng: {e}")),
    };
    let staged: Option<Staged> = dev.as_mut().map(|d| d.stage(rng::BATCH));

    // First touch, timed; it also sets the page-table Accessed/Dirty bits.
    let t_first = cpu::rdtsc();
    for r in &runs[..page_runs] {
        for i in 0..r.count {
            let a = r.first + i * r.stride;
            // SAFETY: a page of our own blocks, identity mapped.
            unsafe { core::ptr::write_volatile(a as *mut u64, a ^ FIRST) };
        }
    }
    let first_cycles = cpu::rdtsc() - t_first;

    *params = Params {
        runs: runs.as_ptr() as u64,
        nruns: page_runs as u64,
        pattern: AGAIN,
        avail_idx_addr: staged.map_or(0, |s| s.avail_idx_addr),
        avail_idx: staged.map_or(0, |s| s.avail_idx as u64),
        notify_addr: staged.map_or(0, |s| s.notify_addr),
        queue: staged.map_or(0, |s| s.queue as u64),
        used_idx_addr: staged.map_or(0, |s| s.used_idx_addr),
        used_idx: staged.map_or(0, |s| s.used_idx as u64),
        timeout: DEVICE_WAIT_CYCLES,
    };
    while (PARKED.load(Ordering::Acquire) as usize) < ncpus - 1 {
        core::hint::spin_loop();
    }
    // SAFETY: PARAMS describes our blocks and the staged queue.
    let (t0, t1, t2, timed_out) = unsafe { window(&raw const *params) };
    RELEASE.store(1, Ordering::Release);

    // The ring page is the guest's (the avail index), and the device's too.
    if let Some(s) = &staged {
        push_page(runs, &mut nruns, s.avail_idx_addr / PAGE_SIZE, 1);
    }
    let mut errors = 0u64;
    for r in &runs[..page_runs] {
        for i in 0..r.count {
            let a = r.first + i * r.stride;
            // SAFETY: as at the first touch.
            if unsafe { core::ptr::read_volatile(a as *const u64) } != a ^ AGAIN {
                errors += 1;
            }
        }
    }
    let device_bytes = match (dev.as_mut(), &staged) {
        (Some(d), Some(s)) if !timed_out => d.unstage(s).unwrap_or(0),
        _ => 0,
    };
    let shutdown_ok = dev.is_none_or(|d| d.shutdown().is_ok());
    for &b in &blocks[..nblocks] {
        let _ = alloc.free_pages(cpu, Pfn(b), MAX_ORDER);
    }
    let want_bytes = staged.map_or(0, |s| (s.buffers * rng::BUF_SIZE) as u64);
    let ok = errors == 0 && !timed_out && shutdown_ok && device_bytes == want_bytes;

    let mut l = LINE.lock();
    l.begin(abi::RECORD_JSON);
    l.fmt(format_args!(
        "{{\"event\":\"workload\",\"name\":\"dirty\",\"ok\":{ok},\"pages\":{pages},\"stride\":{stride},\
         \"blocks\":{nblocks},\"errors\":{errors},\"first_touch_cycles\":{first_cycles},\
         \"rewrite_cycles\":{},\"device_cycles\":{},\"device_timed_out\":{timed_out},\
         \"device_bytes\":{device_bytes},\"runs\":[",
        t1 - t0,
        t2 - t1
    ));
    for (i, r) in runs[..nruns].iter().enumerate() {
        l.fmt(format_args!(
            "{}[{},{},{}]",
            if i == 0 { "" } else { "," },
            r.first / PAGE_SIZE,
            r.count,
            r.stride / PAGE_SIZE
        ));
    }
    l.raw("],\"device_runs\":[");
    if let Some(s) = &staged {
        // The buffers, the used index and the used elements it covers.
        let used = [s.used_idx_addr, s.used_elems.0, s.used_elems.1];
        l.fmt(format_args!("[{},{},1]", s.bufs / PAGE_SIZE, s.buffers));
        let mut last = u64::MAX;
        for a in used {
            if a / PAGE_SIZE != last {
                last = a / PAGE_SIZE;
                l.fmt(format_args!(",[{last},1,1]"));
            }
        }
    }
    l.raw("]}");
    hostio::send(l.finish());
    ok
}
