//! The guest kernel built from `firmware/` by build.rs, embedded so that
//! `memvisor run` needs no file on disk.
pub static BUNDLED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/memvisor-guest"));

/// Drops the resident pages of the embedded image once it has been copied
/// into guest RAM: it is needed once per run, and its ~260 KiB would
/// otherwise count against the VMM's own memory for the VM's lifetime. The
/// bytes stay readable (a later read faults them back in from the binary).
pub fn release_bundled_pages() {
    let page = 4096usize;
    let start = (BUNDLED.as_ptr() as usize).next_multiple_of(page);
    let end = (BUNDLED.as_ptr() as usize + BUNDLED.len()) & !(page - 1);
    if end > start {
        // SAFETY: whole pages inside our own read-only, file-backed image
        // mapping; MADV_DONTNEED on such a private mapping only discards
        // the resident copies, which are re-read from the file on access.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

#[cfg(test)]
#[allow(dead_code)]
#[path = "../../firmware/src/virtio/balloon_list.rs"]
mod guest_balloon_list;
/// The guest's virtio helpers that need no hardware (command-line parsing,
/// ring arithmetic, the split virtqueue over plain memory), compiled here
/// only to run their unit tests on the host: the freestanding guest crate
/// has no test harness.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../firmware/src/virtio/cmdline.rs"]
mod guest_virtio_cmdline;
/// Named `ring`'s sibling as in the guest, where it says `super::ring`.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../firmware/src/virtio/queue.rs"]
mod queue;
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../firmware/src/virtio/ring.rs"]
mod ring;

#[cfg(test)]
mod tests {
    use super::{release_bundled_pages, BUNDLED};

    #[test]
    fn released_image_reads_back_identical() {
        let before: Vec<u8> = BUNDLED.to_vec();
        release_bundled_pages();
        assert_eq!(BUNDLED, &before[..]);
    }
    use std::process::Command;

    fn symbol(nm: &str, name: &str) -> u64 {
        let line = nm
            .lines()
            .find(|l| l.ends_with(&format!(" {name}")))
            .unwrap_or_else(|| panic!("no symbol {name}"));
        u64::from_str_radix(line.split_whitespace().next().unwrap(), 16).unwrap()
    }

    /// CPL0 code is emulated on PVM hosts and the emulator rejects SSE
    /// instructions (HOST_FACTS), so nothing linked into `.text.cpl0` (entry,
    /// bring-up, exception dump, system-call gate) may touch an XMM register.
    /// The compiler emits SSE for innocent-looking array initialisers, so this
    /// is checked on the built image, with binutils' objdump.
    #[test]
    fn cpl0_code_uses_no_sse() {
        let path = std::env::temp_dir().join(format!("memvisor-guest-{}", std::process::id()));
        std::fs::write(&path, BUNDLED).unwrap();
        let nm = Command::new("nm")
            .arg(&path)
            .output()
            .expect("nm (binutils) is needed");
        let nm = String::from_utf8_lossy(&nm.stdout).to_string();
        let (start, end) = (symbol(&nm, "_start"), symbol(&nm, "__cpl0_text_end"));
        let out = Command::new("objdump")
            .args([
                "-d",
                "-M",
                "intel",
                &format!("--start-address={start:#x}"),
                &format!("--stop-address={end:#x}"),
            ])
            .arg(&path)
            .output()
            .expect("objdump (binutils) is needed");
        std::fs::remove_file(&path).ok();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines().count() > 100,
            "disassembly looks empty:\n{text}"
        );
        let sse: Vec<&str> = text.lines().filter(|l| l.contains("xmm")).collect();
        assert!(sse.is_empty(), "SSE in CPL0 code:\n{}", sse.join("\n"));
    }
}
