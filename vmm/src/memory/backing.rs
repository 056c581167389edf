//! How guest RAM is backed on the host (`--backing`, `--thp`), and the host
//! facts that decide whether a backing can work here.
//!
//! | backing | mapping | pages | discard |
//! |---|---|---|---|
//! | `anon` | private anonymous | THP (`--thp on`: MADV_HUGEPAGE) or 4 KiB (`--thp off`: MADV_NOHUGEPAGE) | MADV_DONTNEED |
//! | `memfd` | shared, of a memfd | 4 KiB, unless the host enables shared-memory THP | fallocate punch hole |
//! | `memfd-hugetlb` | shared, of a memfd made with MFD_HUGETLB | 2 MiB hugetlb | fallocate punch hole |
//! | `hugetlbfs` | private anonymous MAP_HUGETLB | 2 MiB hugetlb | MADV_DONTNEED |
//!
//! Why `hugetlbfs` is anonymous MAP_HUGETLB and not a memfd: it needs no
//! file to name, mount or clean up, it is what Firecracker does for its
//! `"2M"` huge pages, and a private mapping cannot be changed behind the
//! guest's back by another process. Whoever needs an fd of hugetlb RAM (to
//! share it with another process, or to punch holes in a file) asks for
//! `memfd-hugetlb`: the same pages from the same pool, through an fd. Both
//! reserve their pages from the pool when mapped (no MAP_NORESERVE), so a
//! shortage is an error at start-up, never a SIGBUS on the guest's first
//! touch.
//!
//! Every mapping is placed at a 2 MiB-aligned host address inside an
//! aligned PROT_NONE reservation (QEMU's `qemu_ram_mmap` does the same), so
//! that each guest 2 MiB page can be one host huge page and stage-2 can map
//! it with one 2M entry.
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A host huge page, and the alignment of every guest RAM mapping.
pub const HUGE: usize = 2 << 20;
pub const PAGE: usize = 4096;

const SHMEM_THP: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";
const SHMEM_THP_2M: &str = "/sys/kernel/mm/transparent_hugepage/hugepages-2048kB/shmem_enabled";
const HUGETLB_POOL: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

/// `--backing`.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Backing {
    /// Private anonymous memory (THP as `--thp` says).
    #[default]
    Anon,
    /// A shared mapping of a memfd (4 KiB pages unless the host's
    /// shared-memory THP is enabled).
    Memfd,
    /// A shared mapping of a memfd of 2 MiB hugetlb pages (MFD_HUGETLB).
    MemfdHugetlb,
    /// Private anonymous 2 MiB hugetlb pages (MAP_HUGETLB).
    Hugetlbfs,
}

impl Backing {
    /// The name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Backing::Anon => "anon",
            Backing::Memfd => "memfd",
            Backing::MemfdHugetlb => "memfd-hugetlb",
            Backing::Hugetlbfs => "hugetlbfs",
        }
    }

    pub fn is_hugetlb(self) -> bool {
        matches!(self, Backing::MemfdHugetlb | Backing::Hugetlbfs)
    }

    pub fn is_memfd(self) -> bool {
        matches!(self, Backing::Memfd | Backing::MemfdHugetlb)
    }

    /// The smallest unit that can be discarded: a hugetlb page cannot be
    /// split, so discards of hugetlb RAM come in whole 2 MiB pages.
    pub fn page_size(self) -> u64 {
        if self.is_hugetlb() {
            HUGE as u64
        } else {
            PAGE as u64
        }
    }
}

/// `--thp`.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Thp {
    /// MADV_HUGEPAGE.
    #[default]
    On,
    /// MADV_NOHUGEPAGE: 4 KiB pages only, also under THP `always`.
    Off,
}

/// How to back guest RAM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackingConfig {
    pub backing: Backing,
    pub thp: Thp,
}

#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    #[error(
        "--backing memfd --thp on: shared-memory THP is off on this host ({path} is `{mode}`), \
         so a memfd would give the guest 4 KiB pages, not the huge pages --thp on asks for; \
         pass --thp off to accept 4 KiB pages, or use --backing memfd-hugetlb (2 MiB hugetlb \
         pages) or --backing anon"
    )]
    ShmemThpOff { path: &'static str, mode: String },
    #[error(
        "--backing {backing}: {needed} huge pages of 2 MiB are needed for {memory} of guest RAM \
         and {available} are available (nr_hugepages {total}, free {free}, reserved {resv}); \
         reserve them as root with `echo {want} > /proc/sys/vm/nr_hugepages`"
    )]
    NotEnoughHugePages {
        backing: &'static str,
        memory: String,
        needed: u64,
        available: u64,
        total: u64,
        free: u64,
        resv: u64,
        /// The nr_hugepages that would make `needed` available.
        want: u64,
    },
    #[error("cannot read {path}")]
    HostFile {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// The 2 MiB hugetlb pool, from sysfs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HugePool {
    pub total: u64,
    pub free: u64,
    /// Promised to mappings, not yet faulted in: not free for us.
    pub resv: u64,
    pub surplus: u64,
    pub overcommit: u64,
}

/// A number from a sysfs file (a hugetlb pool's counts): the file's text,
/// trimmed, or an error (NotFound where the file is absent, InvalidData
/// naming the text).
pub fn sysfs_number(path: &str) -> io::Result<u64> {
    let text = std::fs::read_to_string(path)?;
    text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a number: {text:?}"),
        )
    })
}

impl HugePool {
    pub fn read() -> Result<Self, BackingError> {
        let f = |name: &str| -> Result<u64, BackingError> {
            let path = format!("{HUGETLB_POOL}/{name}");
            sysfs_number(&path).map_err(|source| BackingError::HostFile { path, source })
        };
        Ok(HugePool {
            total: f("nr_hugepages")?,
            free: f("free_hugepages")?,
            resv: f("resv_hugepages")?,
            surplus: f("surplus_hugepages")?,
            overcommit: f("nr_overcommit_hugepages")?,
        })
    }

    /// Pages a new mapping can reserve: the free ones nobody has reserved,
    /// plus the surplus pages overcommit still allows.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.resv) + self.overcommit.saturating_sub(self.surplus)
    }

    /// Refuses `size` bytes of `backing` unless the pool can hold them.
    pub fn check(&self, backing: Backing, size: u64) -> Result<(), BackingError> {
        let needed = size.div_ceil(HUGE as u64);
        let available = self.available();
        if needed <= available {
            return Ok(());
        }
        Err(BackingError::NotEnoughHugePages {
            backing: backing.name(),
            memory: crate::resources::format_size(size),
            needed,
            available,
            total: self.total,
            free: self.free,
            resv: self.resv,
            want: self.total + (needed - available),
        })
    }
}

/// The selected word of a sysfs THP mode file (`always [madvise] never`).
pub fn selected_mode(text: &str) -> Option<&str> {
    let start = text.find('[')?;
    let end = text[start..].find(']')? + start;
    Some(&text[start + 1..end])
}

/// Whether a shmem THP mode lets a memfd get huge pages when asked with
/// MADV_HUGEPAGE.
fn shmem_mode_allows_huge(mode: &str) -> bool {
    matches!(mode, "always" | "within_size" | "advise" | "force")
}

/// The shmem THP mode that governs 2 MiB pages, and the file it came from:
/// the per-size file unless it says `inherit`, then the top-level one.
fn shmem_thp_mode() -> Result<(&'static str, String), BackingError> {
    let read = |path: &'static str| {
        std::fs::read_to_string(path)
            .map(|t| selected_mode(&t).unwrap_or(t.trim()).to_string())
            .map_err(|source| BackingError::HostFile {
                path: path.into(),
                source,
            })
    };
    if let Ok(m) = read(SHMEM_THP_2M) {
        if m != "inherit" {
            return Ok((SHMEM_THP_2M, m));
        }
    }
    Ok((SHMEM_THP, read(SHMEM_THP)?))
}

/// Checks `cfg` against this host before anything is mapped: memfd with
/// THP needs shared-memory THP, hugetlb needs enough reserved pages.
pub fn check_host(cfg: BackingConfig, size: u64) -> Result<(), BackingError> {
    match cfg.backing {
        Backing::Memfd if cfg.thp == Thp::On => {
            let (path, mode) = shmem_thp_mode()?;
            if shmem_mode_allows_huge(&mode) {
                Ok(())
            } else {
                Err(BackingError::ShmemThpOff { path, mode })
            }
        }
        Backing::MemfdHugetlb | Backing::Hugetlbfs => HugePool::read()?.check(cfg.backing, size),
        _ => Ok(()),
    }
}

/// One mapping of guest RAM we own (and the memfd behind it, if any);
/// unmapped when the last reference goes.
#[derive(Debug)]
pub struct HostMapping {
    pub addr: *mut u8,
    pub size: usize,
    pub fd: Option<OwnedFd>,
    /// The flags it was mapped with, for vm-memory's description.
    pub flags: i32,
}

// SAFETY: the mapping is plain memory; access is synchronised by its users
// (vm-memory's volatile accessors and the guest itself).
unsafe impl Send for HostMapping {}
// SAFETY: as above.
unsafe impl Sync for HostMapping {}

impl Drop for HostMapping {
    fn drop(&mut self) {
        // SAFETY: we created exactly this mapping and its guard page, and
        // the last `RamOwner` (hence the last region that points into it)
        // is being dropped.
        unsafe { libc::munmap(self.addr.cast(), self.size + GUARD) };
    }
}

/// A PROT_NONE page kept after every mapping. Two anonymous regions mapped
/// back to back with the same flags would be merged by the kernel into one
/// VMA, whose smaps figures could not be told apart per region
/// (`accounting`); the guard keeps them apart on kernels without
/// CONFIG_ANON_VMA_NAME (this host's), where a VMA name cannot.
const GUARD: usize = PAGE;

/// Reserves `size` bytes of address space at a 2 MiB-aligned address, and
/// a [`GUARD`] page after them (PROT_NONE, nothing committed), and returns
/// that address.
fn reserve_aligned(size: usize) -> io::Result<usize> {
    let span = size + HUGE;
    // SAFETY: a fresh private anonymous reservation; no memory is affected.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let start = raw as usize;
    let aligned = (start + HUGE - 1) & !(HUGE - 1);
    let head = aligned - start;
    // Never negative: head is at most HUGE - PAGE, which leaves room for
    // the guard page.
    let tail = span - head - size - GUARD;
    // SAFETY: trimming the unaligned head and tail of the reservation above.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((aligned + size + GUARD) as *mut libc::c_void, tail);
        }
    }
    Ok(aligned)
}

fn memfd(name: &str, hugetlb: bool) -> io::Result<OwnedFd> {
    let cname = std::ffi::CString::new(name).map_err(io::Error::other)?;
    let mut flags = libc::MFD_CLOEXEC;
    if hugetlb {
        flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
    }
    // MFD_NOEXEC_SEAL (Linux 6.3) keeps the kernel from warning about an
    // executable memfd; older kernels refuse the flag, so retry without.
    for extra in [libc::MFD_NOEXEC_SEAL, 0] {
        // SAFETY: a valid C string and flags; the fd returned is ours.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), flags | extra) };
        if fd >= 0 {
            // SAFETY: a fresh fd nobody else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) || extra == 0 {
            return Err(e);
        }
    }
    unreachable!("the loop returns")
}

/// Names an anonymous mapping (`[anon:NAME]` in smaps), so an operator
/// reading smaps sees which region it is. Kernels without
/// CONFIG_ANON_VMA_NAME (this host's) refuse it: only the name is lost
/// (the guard page, not the name, keeps regions from merging).
fn name_anon(map: &HostMapping, name: &str) {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return;
    };
    // SAFETY: names our own mapping; the kernel copies the string.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_VMA,
            libc::PR_SET_VMA_ANON_NAME,
            map.addr as libc::c_ulong,
            map.size as libc::c_ulong,
            cname.as_ptr(),
        )
    };
    if rc != 0 {
        log::debug!("naming {name}: {}", io::Error::last_os_error());
    }
}

/// Where mapping failed, for [`super::MemoryError`].
#[derive(Debug)]
pub enum MapError {
    Io(&'static str, io::Error),
    Backing(BackingError),
}

/// Maps `size` bytes (a multiple of 2 MiB) of guest RAM backed as `cfg`
/// says, at a 2 MiB-aligned host address.
pub fn map(cfg: BackingConfig, size: usize, name: &str) -> Result<HostMapping, MapError> {
    let io = |what| move |e| MapError::Io(what, e);
    let fd = if cfg.backing.is_memfd() {
        let fd = memfd(name, cfg.backing == Backing::MemfdHugetlb).map_err(io("memfd_create"))?;
        // SAFETY: sizing our own fresh memfd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) } != 0 {
            return Err(MapError::Io("ftruncate", io::Error::last_os_error()));
        }
        Some(fd)
    } else {
        None
    };
    let flags = match cfg.backing {
        Backing::Anon => libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        // No MAP_NORESERVE: hugetlb pages are reserved now, or mmap fails.
        Backing::Hugetlbfs => {
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_HUGE_2MB
        }
        Backing::Memfd | Backing::MemfdHugetlb => libc::MAP_SHARED,
    };
    let at = reserve_aligned(size).map_err(io("mmap (reserving address space)"))?;
    let raw_fd = fd.as_ref().map_or(-1, |f| f.as_raw_fd());
    // SAFETY: replaces our own reservation at `at` (MAP_FIXED) with the
    // real mapping of the same size.
    let addr = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            flags | libc::MAP_FIXED,
            raw_fd,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        let e = io::Error::last_os_error();
        // SAFETY: the range is our reservation (or what is left of it).
        unsafe { libc::munmap(at as *mut libc::c_void, size + GUARD) };
        if cfg.backing.is_hugetlb() && e.raw_os_error() == Some(libc::ENOMEM) {
            // The pool shrank, or others reserved pages, since check_host.
            let pool = HugePool::read().map_err(MapError::Backing)?;
            if let Err(b) = pool.check(cfg.backing, size as u64) {
                return Err(MapError::Backing(b));
            }
        }
        return Err(MapError::Io("mmap", e));
    }
    let map = HostMapping {
        addr: addr.cast(),
        size,
        fd,
        flags,
    };
    if cfg.backing == Backing::Anon {
        name_anon(&map, name);
    }
    if !cfg.backing.is_hugetlb() {
        let advice = match cfg.thp {
            Thp::On => libc::MADV_HUGEPAGE,
            Thp::Off => libc::MADV_NOHUGEPAGE,
        };
        // SAFETY: advice on our own mapping. Failure (THP compiled out)
        // only costs speed.
        unsafe { libc::madvise(map.addr.cast(), size, advice) };
    }
    Ok(map)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Anon THP on and off, and memfd with 4 KiB pages: what needs no
    /// hugetlb pool.
    pub(crate) fn pool_free_backings() -> [BackingConfig; 3] {
        [
            BackingConfig::default(),
            BackingConfig {
                backing: Backing::Anon,
                thp: Thp::Off,
            },
            BackingConfig {
                backing: Backing::Memfd,
                thp: Thp::Off,
            },
        ]
    }

    #[test]
    fn sysfs_modes_parse() {
        assert_eq!(selected_mode("always [madvise] never\n"), Some("madvise"));
        assert_eq!(
            selected_mode("always within_size advise [never] deny force"),
            Some("never")
        );
        assert_eq!(selected_mode("nothing selected"), None);
        assert!(!shmem_mode_allows_huge("never") && !shmem_mode_allows_huge("deny"));
        assert!(shmem_mode_allows_huge("advise") && shmem_mode_allows_huge("always"));
    }

    #[test]
    fn a_short_pool_names_the_pages_needed_and_how_to_reserve_them() {
        let pool = HugePool {
            total: 10,
            free: 8,
            resv: 2,
            surplus: 0,
            overcommit: 0,
        };
        assert!(pool.check(Backing::Hugetlbfs, 12 << 20).is_ok());
        let e = pool.check(Backing::Hugetlbfs, 256 << 20).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("128 huge pages") && m.contains("6 are available"),
            "{m}"
        );
        assert!(
            m.contains("echo 132 > /proc/sys/vm/nr_hugepages"),
            "needs 122 more on top of 10: {m}"
        );
        let over = HugePool {
            overcommit: 200,
            ..pool
        };
        assert!(over.check(Backing::MemfdHugetlb, 256 << 20).is_ok());
    }

    #[test]
    fn cli_names_are_the_report_names() {
        use clap::ValueEnum;
        for b in Backing::value_variants() {
            let cli = b.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(cli, b.name());
            assert_eq!(serde_json::to_value(b).unwrap(), b.name());
        }
        assert_eq!(serde_json::to_value(Thp::Off).unwrap(), "off");
    }

    /// The page after every mapping is a PROT_NONE guard: nothing can be
    /// mapped right after a region, so two regions never merge into one VMA.
    #[test]
    fn every_mapping_has_a_guard_page_after_it() {
        for cfg in pool_free_backings() {
            let m = map(cfg, 4 << 20, "guard-test").unwrap();
            let end = m.addr as usize + m.size;
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            let guard = maps
                .lines()
                .find(|l| l.starts_with(&format!("{end:x}-")))
                .unwrap_or_else(|| panic!("{cfg:?}: nothing mapped at {end:#x}\n{maps}"));
            assert!(
                guard.split_whitespace().nth(1) == Some("---p"),
                "{cfg:?}: {guard}"
            );
        }
    }
}
