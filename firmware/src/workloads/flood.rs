//! A hostile guest on purpose: every CPU sends `records=N` JSON records of
//! `size=BYTES` each (default 1000 × 64 KiB, the most the VMM accepts) as
//! fast as it can, then CPU 0 reports. It exists to show that guest input
//! cannot grow the VMM's memory or its report without a bound: the VMM must
//! keep its RSS and the report within the limits it states.
use crate::abi;
use crate::hostio;
use crate::mm;
use crate::smp::Barrier;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use guest_mm::gfp::Gfp;
use guest_mm::Pfn;

const PAGE: usize = 4096;
/// 64 KiB payload + header fit in an order-5 block.
const ORDER: usize = 5;
static SENT: AtomicU64 = AtomicU64::new(0);
static BARRIER: Barrier = Barrier::new();

fn option(key: &str, default: u64, max: u64) -> u64 {
    match crate::cmdline::get(crate::user::cmdline(), key) {
        None => default,
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n >= 1 && n <= max => n,
            _ => crate::user::fail(format_args!(
                "bad option {key}={v}: expected a number from 1 to {max}"
            )),
        },
    }
}

pub fn run(cpu: usize, ncpus: usize) -> bool {
    let records = option("records", 1000, 1 << 32);
    let size = option(
        "size",
        abi::RECORD_MAX_LEN as u64,
        abi::RECORD_MAX_LEN as u64,
    ) as usize;
    let Some(Pfn(p)) = mm::allocator().alloc_pages(cpu, Gfp::KERNEL, ORDER) else {
        crate::user::fail(format_args!("flood: no memory for a record buffer"));
    };
    let base = (p as usize) * PAGE;
    let hdr = abi::RECORD_HEADER_LEN as usize;
    // SAFETY: the block is ours (order 5 = 128 KiB) and identity mapped.
    let buf = unsafe { core::slice::from_raw_parts_mut(base as *mut u8, hdr + size) };
    let words = [abi::RECORD_MAGIC, abi::RECORD_JSON, size as u32, 0];
    for (i, w) in words.iter().enumerate() {
        buf[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    // {"event":"flood","pad":"xxxx...x"}
    let open = b"{\"event\":\"flood\",\"pad\":\"";
    let payload = &mut buf[hdr..];
    payload.fill(b'x');
    let n = open.len().min(size);
    payload[..n].copy_from_slice(&open[..n]);
    if size >= open.len() + 2 {
        payload[size - 2..].copy_from_slice(b"\"}");
    }
    for _ in 0..records {
        hostio::send(&buf[..]);
        SENT.fetch_add(1, Relaxed);
    }
    BARRIER.wait(ncpus);
    let _ = mm::allocator().free_pages(cpu, Pfn(p), ORDER);
    if cpu == 0 {
        let mut l = hostio::LINE.lock();
        l.begin(abi::RECORD_JSON);
        l.fmt(format_args!(
            "{{\"event\":\"workload\",\"name\":\"flood\",\"ok\":true,\"records_sent\":{},\"record_bytes\":{size}}}",
            SENT.load(Relaxed)
        ));
        hostio::send(l.finish());
    }
    true
}
