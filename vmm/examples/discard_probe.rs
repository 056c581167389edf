//! What scattered discards cost the host: the balloon's 4k mode in an aged
//! guest hands the device runs of one or two pages spread through every
//! 2 MiB block, so each becomes its own discard inside a transparent huge
//! page. This times that pattern (8 KiB of every 12 KiB of 512 MiB of
//! THP-backed anonymous memory) with one `madvise(MADV_DONTNEED)` per range
//! and with `process_madvise` on ourselves in batches of 1024 ranges (the
//! kernel's UIO_MAXIOV), to tell whether the host's discard or the guest's
//! side limits the aged 4k reclaim speed.
//!
//! `cargo run --release -p memvisor --example discard_probe [ROUNDS]`
use std::time::Instant;

const LEN: usize = 512 << 20;
const HUGE: usize = 2 << 20;
const STRIDE: usize = 12 << 10;
const RANGE: usize = 8 << 10;
const BATCH: usize = 1024;

/// 512 MiB, 2 MiB aligned, THP-advised and written in full.
fn fresh() -> (*mut u8, usize) {
    let map_len = LEN + HUGE;
    // SAFETY: an anonymous private mapping; unmapped by `release`.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap");
    let base = (p as usize).next_multiple_of(HUGE) as *mut u8;
    // SAFETY: base..base+LEN lies inside the mapping.
    unsafe {
        libc::madvise(base.cast(), LEN, libc::MADV_HUGEPAGE);
        std::ptr::write_bytes(base, 1, LEN);
    }
    (p.cast(), map_len)
}

fn release((p, len): (*mut u8, usize)) {
    // SAFETY: the mapping `fresh` made.
    unsafe { libc::munmap(p.cast(), len) };
}

fn ranges(base: *mut u8) -> Vec<libc::iovec> {
    (0..LEN / STRIDE)
        .map(|i| libc::iovec {
            // SAFETY: inside the 512 MiB region.
            iov_base: unsafe { base.add(i * STRIDE) }.cast(),
            iov_len: RANGE,
        })
        .collect()
}

/// GiB/s of discarded bytes.
fn one(batched: bool) -> f64 {
    let m = fresh();
    let base = (m.0 as usize).next_multiple_of(HUGE) as *mut u8;
    let iov = ranges(base);
    let pidfd = if batched {
        // SAFETY: pidfd_open on our own pid.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
        assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        fd as i32
    } else {
        -1
    };
    let t = Instant::now();
    let mut bytes = 0usize;
    if batched {
        for chunk in iov.chunks(BATCH) {
            // SAFETY: every range lies in our own mapping.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_process_madvise,
                    pidfd,
                    chunk.as_ptr(),
                    chunk.len(),
                    libc::MADV_DONTNEED,
                    0,
                )
            };
            assert!(
                r >= 0,
                "process_madvise(MADV_DONTNEED): {} (this kernel may not allow it)",
                std::io::Error::last_os_error()
            );
            bytes += r as usize;
        }
    } else {
        for v in &iov {
            // SAFETY: as above.
            let r = unsafe { libc::madvise(v.iov_base, v.iov_len, libc::MADV_DONTNEED) };
            assert_eq!(r, 0, "madvise: {}", std::io::Error::last_os_error());
            bytes += v.iov_len;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    if pidfd >= 0 {
        // SAFETY: the pidfd opened above.
        unsafe { libc::close(pidfd) };
    }
    release(m);
    bytes as f64 / secs / (1u64 << 30) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("ROUNDS: a whole number"))
        .unwrap_or(5);
    let n = LEN / STRIDE;
    let (mut single, mut batched) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        single.push(one(false));
        batched.push(one(true));
    }
    println!(
        "{n} discards of {} KiB in 512 MiB of THP memory, median of {} rounds:",
        RANGE >> 10,
        single.len()
    );
    println!(
        "  madvise per range:             {:.2} GiB/s",
        median(single)
    );
    println!(
        "  process_madvise, {BATCH} per call: {:.2} GiB/s",
        median(batched)
    );
}
