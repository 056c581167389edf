//! balloon-hostile: a guest that abuses its virtio-balloon on purpose, to
//! show the VMM refuses it and keeps serving (the host counts each kind).
//!
//! It brings the device up by the book, then writes its rings by hand:
//! inflate buffers with PFNs past the end of RAM, the largest le32 PFN, PFNs
//! in the MMIO hole (the virtio window, the IOAPIC, the LAPIC), descriptor
//! loops, a `next` off the table (a chain longer than the queue), buffers
//! outside RAM or across its end, device-writable PFN buffers, lengths that
//! are not whole PFNs, an indirect descriptor, an avail entry naming no
//! descriptor; reporting ranges at 2^52 and above, wrapping past 2^64,
//! misaligned, read-only; and a flood of stats buffers of every wrong
//! length, notified over and over. Then it checks the device still works:
//! one honest inflate and deflate of a page must come back through the used
//! ring, and memory it filled before the abuse must be intact. Exit 0 only
//! if both hold.
use crate::arch::cpu;
use crate::hostio::{self, LINE};
use crate::virtio::balloon::{DEVICE_ID, F_REPORTING, F_STATS_VQ};
use crate::virtio::{Pages, Transport, F_VERSION_1};
use crate::{abi, mm, user};
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};
use guest_mm::gfp::Gfp;
use guest_mm::{Pfn, PAGE_SIZE};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const SIZE: u16 = 16;
const CANARY_ORDER: usize = 9;
const PATTERN: u64 = 0x686f_7374_696c_6521;
/// How long the honest requests may take (seconds at any TSC rate here).
const WAIT_CYCLES: u64 = 20_000_000_000;
/// How long a refused chain may take to come back (~0.5 s), before the
/// next case goes ahead anyway.
const CASE_CYCLES: u64 = 1_000_000_000;

/// A queue written by hand: descriptors, avail ring and used index at
/// the addresses the device was given.
#[derive(Clone, Copy)]
struct Raw {
    index: u16,
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
}

impl Raw {
    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.desc + 16 * (i % SIZE) as u64;
        // SAFETY: inside the descriptor table the transport allocated.
        unsafe {
            write_volatile(d as *mut u64, addr);
            write_volatile((d + 8) as *mut u32, len);
            write_volatile((d + 12) as *mut u16, flags);
            write_volatile((d + 14) as *mut u16, next);
        }
    }

    /// Puts `head` (any value, checked or not) on the avail ring.
    fn post(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * (self.avail_idx % SIZE) as u64;
        // SAFETY: inside the avail ring.
        unsafe { write_volatile(slot as *mut u16, head) };
        self.avail_idx = self.avail_idx.wrapping_add(1);
        fence(Ordering::Release);
        // SAFETY: the avail ring's index.
        unsafe { write_volatile((self.avail + 2) as *mut u16, self.avail_idx) };
        fence(Ordering::SeqCst);
    }

    fn used_idx(&self) -> u16 {
        // SAFETY: the used ring's index, which the device writes.
        unsafe { read_volatile((self.used + 2) as *const u16) }
    }
}

fn raw(t: &mut Transport, index: u16) -> Option<(Raw, Pages)> {
    let (q, pages) = t.setup_queue(index, SIZE, false, 0).ok()?;
    if q.size() != SIZE {
        return None;
    }
    let r = Raw {
        index,
        desc: q.desc_addr(),
        avail: q.avail_addr(),
        used: q.used_addr(),
        avail_idx: 0,
    };
    Some((r, pages))
}

fn put_pfns(page: u64, pfns: &[u32]) -> u32 {
    for (i, p) in pfns.iter().enumerate() {
        // SAFETY: our own buffer page.
        unsafe { write_volatile((page + 4 * i as u64) as *mut u32, p.to_le()) };
    }
    4 * pfns.len() as u32
}

/// Waits until the device has used `n` more chains of `q` than `before`.
fn wait_used(q: &Raw, before: u16, n: u16, cycles: u64) -> bool {
    let start = cpu::rdtsc();
    while q.used_idx().wrapping_sub(before) < n {
        if cpu::rdtsc() - start > cycles {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

pub fn run(cpu: usize, _ncpus: usize) -> bool {
    if cpu != 0 {
        return true;
    }
    let a = mm::allocator();
    let mut t = match Transport::find(user::cmdline(), DEVICE_ID) {
        Ok(t) => t,
        Err(e) => user::fail(format_args!(
            "balloon-hostile: virtio-balloon: {e}; memvisor adds one with --balloon"
        )),
    };
    let features = match t.negotiate(F_VERSION_1, F_STATS_VQ | F_REPORTING) {
        Ok(f) => f,
        Err(e) => user::fail(format_args!("balloon-hostile: {e}")),
    };
    let Some((mut infl, _r0)) = raw(&mut t, 0) else {
        user::fail(format_args!(
            "balloon-hostile: inflateq of {SIZE} not available"
        ))
    };
    let Some((mut defl, _r1)) = raw(&mut t, 1) else {
        user::fail(format_args!(
            "balloon-hostile: deflateq of {SIZE} not available"
        ))
    };
    let mut next = 2;
    let stats = if features & F_STATS_VQ != 0 {
        next += 1;
        raw(&mut t, next - 1)
    } else {
        None
    };
    let report = if features & F_REPORTING != 0 {
        raw(&mut t, next)
    } else {
        None
    };
    if let Err(e) = t.driver_ok() {
        user::fail(format_args!("balloon-hostile: {e}"));
    }
    // Memory that must survive whatever the host does with the abuse.
    let Some(Pfn(canary)) = a.alloc_pages(0, Gfp::MOVABLE, CANARY_ORDER) else {
        user::fail(format_args!("balloon-hostile: no memory for the canary"))
    };
    let words = (PAGE_SIZE << CANARY_ORDER) / 8;
    let base = canary * PAGE_SIZE;
    for i in 0..words {
        // SAFETY: the canary block is ours.
        unsafe { write_volatile((base + 8 * i) as *mut u64, (base + 8 * i) ^ PATTERN) };
    }
    let Ok(buf) = Pages::alloc(0, 4 * PAGE_SIZE as usize) else {
        user::fail(format_args!("balloon-hostile: no memory for buffers"))
    };
    let (b0, b1, b2) = (buf.addr, buf.addr + PAGE_SIZE, buf.addr + 2 * PAGE_SIZE);
    let ram_pages = a.mem_map().end_pfn();
    let ram_end = ram_pages * PAGE_SIZE;
    let mut sent = 0u32;

    // Inflate abuse, one chain per case.
    let end = ram_pages as u32;
    let l0 = put_pfns(b0, &[end, end + 100, u32::MAX, end + 1]);
    let l1 = put_pfns(b1, &[0xd0000, 0xfec00, 0xfee00, 0xd0001]);
    // The loop cases carry the canary: a device that followed them would
    // discard memory the guest still uses, and the check below sees it.
    put_pfns(b2, &[canary as u32]);
    let cases: &[(u64, u32, u16, u16)] = &[
        (b0, l0, 0, 0),            // PFNs past the end of RAM, the top le32 PFN
        (b1, l1, 0, 0),            // PFNs in the MMIO hole
        (b2, 4, F_NEXT, 3),        // 2 -> 3 -> 2: a loop
        (b1, 4, F_NEXT, 2),        // (3)
        (b2, 4, F_NEXT, 200),      // next off the table
        (1 << 40, 4096, 0, 0),     // buffer outside RAM
        (ram_end - 4, 4096, 0, 0), // buffer across the end of RAM
        (b2, 4, F_WRITE, 0),       // a PFN buffer the device should write
        (b2, 3, 0, 0),             // not whole PFNs
        (b2, 0, 0, 0),             // empty
        (b2, 16, F_INDIRECT, 0),   // indirect, never negotiated
        (u64::MAX - 3, 8, 0, 0),   // address wrapping past 2^64
    ];
    // One case at a time: the device reads descriptors when it gets to
    // the chain, so each waits to be given back (a refused chain comes
    // back used, length 0) before the table is written again.
    let mut answered = 0u32;
    for (i, &(addr, len, flags, nx)) in cases.iter().enumerate() {
        infl.desc(i as u16, addr, len, flags, nx);
    }
    for head in [0u16, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11] {
        let before = infl.used_idx();
        infl.post(head);
        sent += 1;
        t.notify_index(infl.index);
        answered += wait_used(&infl, before, 1, CASE_CYCLES) as u32;
    }
    // A chain that runs through every descriptor and back: longer than
    // the queue.
    for i in 0..SIZE {
        infl.desc(i, b2 + 4 * i as u64, 4, F_NEXT, (i + 1) % SIZE);
    }
    let before = infl.used_idx();
    infl.post(0);
    sent += 1;
    t.notify_index(infl.index);
    answered += wait_used(&infl, before, 1, CASE_CYCLES) as u32;

    // Reporting abuse.
    if let Some((r, _)) = report.as_ref() {
        let mut r = *r;
        let huge = 2u64 << 20;
        let rcases: &[(u64, u32, u16)] = &[
            (1 << 52, huge as u32, F_WRITE),           // at 2^52
            (!4095, huge as u32, F_WRITE),             // wraps past 2^64
            (ram_end, huge as u32, F_WRITE),           // past the end of RAM
            (canary * PAGE_SIZE + 100, 4096, F_WRITE), // misaligned
            (canary * PAGE_SIZE, huge as u32, 0),      // read-only
        ];
        for (i, &(addr, len, flags)) in rcases.iter().enumerate() {
            let before = r.used_idx();
            r.desc(i as u16, addr, len, flags, 0);
            r.post(i as u16);
            sent += 1;
            t.notify_index(r.index);
            answered += wait_used(&r, before, 1, CASE_CYCLES) as u32;
        }
    }

    // A stats flood: every wrong length, notified again and again.
    if let Some((s, _)) = stats.as_ref() {
        let mut s = *s;
        let lens = [0u32, 7, 9, 11, 1 << 30, 640 + 10, 10, 20];
        for round in 0..64u16 {
            let i = round % SIZE;
            s.desc(i, b0, lens[round as usize % lens.len()], 0, 0);
            s.post(i);
            sent += 1;
            t.notify_index(s.index);
        }
    }

    // An avail entry naming no descriptor (nothing comes back for it).
    infl.post(999);
    sent += 1;

    // Still serving? An honest inflate then deflate of one page.
    let Some(Pfn(page)) = a.alloc_pages(0, Gfp::MOVABLE, 0) else {
        user::fail(format_args!(
            "balloon-hostile: no page for the honest request"
        ))
    };
    let lp = put_pfns(b2, &[page as u32]);
    let before = infl.used_idx();
    infl.desc(0, b2, lp, 0, 0);
    infl.post(0);
    t.notify_index(infl.index);
    // The abuse before it may or may not come back used; the honest chain
    // must, and the used index can only have moved past it.
    let inflate_ok = wait_used(&infl, before, 1, WAIT_CYCLES);
    let before = defl.used_idx();
    defl.desc(0, b2, lp, 0, 0);
    defl.post(0);
    t.notify_index(defl.index);
    let deflate_ok = wait_used(&defl, before, 1, WAIT_CYCLES);
    let status_ok = t.check().is_ok();
    let _ = a.free_pages(0, Pfn(page), 0);

    let mut bad_words = 0u64;
    for i in 0..words {
        // SAFETY: the canary block is ours.
        let v = unsafe { read_volatile((base + 8 * i) as *const u64) };
        bad_words += (v != (base + 8 * i) ^ PATTERN) as u64;
    }
    let _ = a.free_pages(0, Pfn(canary), CANARY_ORDER);
    let reset = t.reset().is_ok();
    drop(buf);
    let ok = inflate_ok && deflate_ok && status_ok && bad_words == 0 && reset;
    let mut l = LINE.lock();
    l.begin(abi::RECORD_JSON);
    l.fmt(format_args!(
        "{{\"event\":\"workload\",\"name\":\"balloon-hostile\",\"ok\":{ok},\"hostile_chains\":{sent},\
         \"features\":{features},\"stats_queue\":{},\"reporting_queue\":{},\"honest_inflate\":{inflate_ok},\
         \"honest_deflate\":{deflate_ok},\"device_status_ok\":{status_ok},\"canary_bad_words\":{bad_words},\
         \"inflate_used\":{},\"answered\":{answered},\"reset\":{reset}}}",
        stats.is_some(),
        report.is_some(),
        infl.used_idx(),
    ));
    hostio::send(l.finish());
    ok
}
