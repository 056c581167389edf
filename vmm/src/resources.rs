//! The validated description of one VM: machine (vCPUs, memory), boot source
//! (kernel, command line) and run limits. The CLI fills it, and the API's
//! pre-boot requests (PUT /machine-config, /boot-source) change it.
//!
//! Everything a user can get wrong is checked here, before any resource is
//! taken, with a message that names the bad value and what would be valid.
use crate::memory::backing::{Backing, BackingConfig, Thp};
use crate::vstate::vm::IrqchipMode;
use std::path::PathBuf;
use std::time::Duration;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
/// Below this the guest has no room for its image, stacks and page tables.
pub const MIN_MEMORY: u64 = 16 * MIB;
/// Guest RAM is backed by transparent huge pages: keep it whole 2 MiB pages.
pub const MEMORY_ALIGN: u64 = 2 * MIB;
pub const DEFAULT_MEMORY: u64 = 256 * MIB;
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 workload=memtest";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelSource {
    /// The guest kernel built with this binary.
    Bundled,
    Path(PathBuf),
}

#[derive(Clone, Debug)]
pub struct VmResources {
    pub kernel: KernelSource,
    pub cmdline: String,
    pub vcpus: u32,
    pub memory: u64,
    pub timeout: Duration,
    /// Bytes of guest JSON lines kept in the report (`--record-budget`).
    pub record_budget: usize,
    /// A virtio-rng device (`--entropy`, `PUT /entropy`).
    pub entropy: Option<crate::devices::virtio::rng::EntropyConfig>,
    /// `--irqchip`; unset means the kernel's default ([`Self::irqchip`]).
    pub irqchip: Option<IrqchipMode>,
    /// `--backing`: what host memory backs guest RAM.
    pub backing: Backing,
    /// `--thp`: transparent huge pages for anon and memfd RAM.
    pub thp: Thp,
    /// `--prefault`: populate all of guest RAM before the guest runs.
    pub prefault: bool,
    /// A virtio-balloon device (`--balloon`, `PUT /balloon`).
    pub balloon: Option<crate::devices::virtio::balloon::BalloonConfig>,
    /// `--dirty-log`: which pages of guest RAM were written.
    pub dirty_log: crate::memory::dirty::DirtyMode,
}

impl Default for VmResources {
    fn default() -> Self {
        VmResources {
            kernel: KernelSource::Bundled,
            cmdline: DEFAULT_CMDLINE.to_string(),
            vcpus: 1,
            memory: DEFAULT_MEMORY,
            timeout: Duration::from_secs(60),
            record_budget: crate::guest::log::DEFAULT_BUDGET,
            entropy: None,
            irqchip: None,
            backing: Backing::Anon,
            thp: Thp::On,
            prefault: false,
            balloon: None,
            dirty_log: Default::default(),
        }
    }
}

/// What the host allows, read once from KVM and /proc/meminfo.
#[derive(Clone, Copy, Debug)]
pub struct HostLimits {
    pub max_vcpus: u32,
    pub mem_total: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "invalid size '{0}': expected a number with an optional K, M or G suffix, e.g. 256M or 1G"
    )]
    BadSize(String),
    #[error("--memory {0}: at least {min} MiB is needed", min = MIN_MEMORY / MIB)]
    MemoryTooSmall(String),
    #[error("--memory {0}: must be a multiple of 2 MiB (guest RAM is backed by 2 MiB transparent huge pages)")]
    MemoryUnaligned(String),
    #[error("--memory {0}: more than this host's {host} MiB of memory", host = .1 / MIB)]
    MemoryTooLarge(String, u64),
    #[error("--vcpus 0: at least 1 vCPU is needed (valid: 1 to {0})")]
    NoVcpus(u32),
    #[error("--vcpus {0}: this host's KVM allows at most {1}")]
    TooManyVcpus(u32, u32),
    #[error("--vcpus {0}: the bundled guest kernel supports at most {1} (boot another kernel with --kernel for more)")]
    TooManyVcpusForBundled(u32, usize),
    #[error("--thp off with --backing {0}: hugetlb memory is always 2 MiB pages; drop --thp off, or use --backing anon or --backing memfd for 4 KiB pages")]
    ThpOffWithHugetlb(&'static str),
    #[error("--timeout {0}: must be a number of seconds above 0 and below 1e9")]
    BadTimeout(String),
    #[error("--balloon amount_mib={0}: more than the guest's {1} MiB of memory (valid: 0 to {1})")]
    BalloonTooLarge(u32, u64),
    #[error("--kernel {0}: not a regular file (a kernel image is an ELF or bzImage file)")]
    KernelNotFile(String),
    #[error("--kernel {path}: {size} bytes is larger than the guest's {memory} of RAM")]
    KernelTooLarge {
        path: String,
        size: u64,
        memory: String,
    },
}

/// Parses `256M`, `1G`, `512K`, `1048576` (bytes). Suffixes are binary.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let t = s.trim();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, c)) if c.eq_ignore_ascii_case(&'k') => (&t[..i], 1u64 << 10),
        Some((i, c)) if c.eq_ignore_ascii_case(&'m') => (&t[..i], MIB),
        Some((i, c)) if c.eq_ignore_ascii_case(&'g') => (&t[..i], GIB),
        _ => (t, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| ConfigError::BadSize(s.to_string()))
}

/// Human form of a byte count, as a user would write it back.
pub fn format_size(bytes: u64) -> String {
    if bytes.is_multiple_of(GIB) && bytes > 0 {
        format!("{}G", bytes / GIB)
    } else if bytes.is_multiple_of(MIB) && bytes > 0 {
        format!("{}M", bytes / MIB)
    } else if bytes.is_multiple_of(1024) && bytes > 0 {
        format!("{}K", bytes / 1024)
    } else {
        bytes.to_string()
    }
}

pub fn parse_timeout(s: &str) -> Result<Duration, ConfigError> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() && v < 1e9 => Ok(Duration::from_secs_f64(v)),
        _ => Err(ConfigError::BadTimeout(s.to_string())),
    }
}

impl VmResources {
    /// The checks that need no host facts (usable before KVM is opened).
    pub fn validate_static(&self) -> Result<(), ConfigError> {
        let m = format_size(self.memory);
        if self.memory < MIN_MEMORY {
            return Err(ConfigError::MemoryTooSmall(m));
        }
        if !self.memory.is_multiple_of(MEMORY_ALIGN) {
            return Err(ConfigError::MemoryUnaligned(m));
        }
        if self.backing.is_hugetlb() && self.thp == Thp::Off {
            return Err(ConfigError::ThpOffWithHugetlb(self.backing.name()));
        }
        if let Some(b) = &self.balloon {
            if u64::from(b.amount_mib) * MIB > self.memory {
                return Err(ConfigError::BalloonTooLarge(
                    b.amount_mib,
                    self.memory / MIB,
                ));
            }
        }
        if self.kernel == KernelSource::Bundled && self.vcpus as usize > crate::abi::MAX_VCPUS {
            return Err(ConfigError::TooManyVcpusForBundled(
                self.vcpus,
                crate::abi::MAX_VCPUS,
            ));
        }
        Ok(())
    }

    /// How guest RAM is to be backed.
    pub fn backing_config(&self) -> BackingConfig {
        BackingConfig {
            backing: self.backing,
            thp: self.thp,
        }
    }

    /// The most vCPUs this kernel can have on this host.
    pub fn max_vcpus(&self, host: &HostLimits) -> u32 {
        match self.kernel {
            KernelSource::Bundled => host.max_vcpus.min(crate::abi::MAX_VCPUS as u32),
            KernelSource::Path(_) => host.max_vcpus,
        }
    }

    /// The interrupt controllers to build: as asked, else split for the
    /// bundled kernel (it needs no PIC or PIT, and a split VM closes ~20 ms
    /// sooner) and full for any other kernel (Linux without ACPI tables
    /// looks for the PIC and PIT).
    pub fn irqchip(&self) -> IrqchipMode {
        self.irqchip.unwrap_or(match self.kernel {
            KernelSource::Bundled => IrqchipMode::Split,
            KernelSource::Path(_) => IrqchipMode::Full,
        })
    }

    pub fn validate(&self, host: &HostLimits) -> Result<(), ConfigError> {
        let m = format_size(self.memory);
        if self.vcpus == 0 {
            return Err(ConfigError::NoVcpus(self.max_vcpus(host)));
        }
        if self.vcpus > host.max_vcpus {
            return Err(ConfigError::TooManyVcpus(self.vcpus, host.max_vcpus));
        }
        self.validate_static()?;
        if self.memory > host.mem_total {
            return Err(ConfigError::MemoryTooLarge(m, host.mem_total));
        }
        Ok(())
    }
}

/// Checks a kernel file before it is read: a device or FIFO (`/dev/zero`)
/// would be read forever, and an image larger than guest RAM cannot load.
pub fn check_kernel_file(
    path: &std::path::Path,
    memory: u64,
) -> std::io::Result<Result<(), ConfigError>> {
    let meta = std::fs::metadata(path)?;
    let p = path.display().to_string();
    if !meta.is_file() {
        return Ok(Err(ConfigError::KernelNotFile(p)));
    }
    if meta.len() > memory {
        return Ok(Err(ConfigError::KernelTooLarge {
            path: p,
            size: meta.len(),
            memory: format_size(memory),
        }));
    }
    Ok(Ok(()))
}

/// Reads a kernel file checked as `check_kernel_file` does, on the opened
/// file itself and with the read capped at `memory + 1` bytes: a file that
/// is swapped or grows between the check and the read is still refused
/// rather than read without bound.
pub fn read_kernel_file(
    path: &std::path::Path,
    memory: u64,
) -> std::io::Result<Result<Vec<u8>, ConfigError>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let p = path.display().to_string();
    if !meta.is_file() {
        return Ok(Err(ConfigError::KernelNotFile(p)));
    }
    let mut image = Vec::with_capacity(meta.len().min(memory) as usize);
    file.take(memory + 1).read_to_end(&mut image)?;
    let size = image.len() as u64;
    if size > memory {
        return Ok(Err(ConfigError::KernelTooLarge {
            path: p,
            size: size.max(meta.len()),
            memory: format_size(memory),
        }));
    }
    Ok(Ok(image))
}

/// MemTotal from /proc/meminfo, in bytes.
pub fn host_mem_total() -> std::io::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| std::io::Error::other("no MemTotal line in /proc/meminfo"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: HostLimits = HostLimits {
        max_vcpus: 8,
        mem_total: 4 * GIB,
    };

    #[test]
    fn bundled_kernel_caps_vcpus() {
        let big = HostLimits {
            max_vcpus: 1024,
            mem_total: 4 * GIB,
        };
        let mut c = VmResources {
            vcpus: 65,
            ..Default::default()
        };
        assert_eq!(
            c.validate(&big),
            Err(ConfigError::TooManyVcpusForBundled(65, 64))
        );
        c.kernel = KernelSource::Path("/boot/vmlinuz".into());
        assert!(c.validate(&big).is_ok());
        c.vcpus = 64;
        c.kernel = KernelSource::Bundled;
        assert!(c.validate(&big).is_ok());
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("256M"), Ok(256 * MIB));
        assert_eq!(parse_size("1g"), Ok(GIB));
        assert_eq!(parse_size("512K"), Ok(512 * 1024));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "M", "12X", "-1M", "1.5G", "99999999999999999999G"] {
            assert_eq!(
                parse_size(bad),
                Err(ConfigError::BadSize(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn format_size_round_trips() {
        for s in ["256M", "1G", "3K", "5"] {
            assert_eq!(format_size(parse_size(s).unwrap()), s);
        }
    }

    #[test]
    fn memory_bounds_are_enforced() {
        let mut c = VmResources::default();
        assert!(c.validate(&HOST).is_ok());
        c.memory = 8 * MIB;
        assert_eq!(
            c.validate(&HOST),
            Err(ConfigError::MemoryTooSmall("8M".into()))
        );
        c.memory = 17 * MIB;
        assert_eq!(
            c.validate(&HOST),
            Err(ConfigError::MemoryUnaligned("17M".into()))
        );
        c.memory = 8 * GIB;
        assert!(matches!(
            c.validate(&HOST),
            Err(ConfigError::MemoryTooLarge(..))
        ));
        c.memory = 4 * GIB;
        assert!(c.validate(&HOST).is_ok());
    }

    #[test]
    fn hugetlb_backings_refuse_thp_off() {
        let mut c = VmResources {
            backing: Backing::Hugetlbfs,
            thp: Thp::Off,
            ..Default::default()
        };
        let e = c.validate_static().unwrap_err();
        assert_eq!(e, ConfigError::ThpOffWithHugetlb("hugetlbfs"));
        assert!(e.to_string().contains("--thp off with --backing hugetlbfs"));
        c.thp = Thp::On;
        assert!(c.validate_static().is_ok());
        c.backing = Backing::Memfd;
        c.thp = Thp::Off;
        assert!(c.validate_static().is_ok());
    }

    #[test]
    fn vcpu_bounds_are_enforced() {
        let mut c = VmResources {
            vcpus: 0,
            ..Default::default()
        };
        assert_eq!(c.validate(&HOST), Err(ConfigError::NoVcpus(8)));
        let big = HostLimits {
            max_vcpus: 1024,
            mem_total: 4 * GIB,
        };
        assert_eq!(
            c.validate(&big),
            Err(ConfigError::NoVcpus(64)),
            "the bundled kernel's limit, not KVM's"
        );
        c.vcpus = 9;
        assert_eq!(c.validate(&HOST), Err(ConfigError::TooManyVcpus(9, 8)));
        c.vcpus = 8;
        assert!(c.validate(&HOST).is_ok());
    }

    #[test]
    fn error_messages_name_value_and_valid_range() {
        let e = ConfigError::TooManyVcpus(9, 8).to_string();
        assert!(e.contains('9') && e.contains("at most 8"), "{e}");
        let e = ConfigError::MemoryTooSmall("8M".into()).to_string();
        assert!(e.contains("8M") && e.contains("16 MiB"), "{e}");
        assert!(parse_timeout("0").is_err() && parse_timeout("abc").is_err());
        assert_eq!(parse_timeout("1.5").unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn kernel_read_is_capped_and_refuses_non_files() {
        let dir = std::env::temp_dir().join(format!("memvisor-kread-{}", std::process::id()));
        std::fs::write(&dir, vec![7u8; 5000]).unwrap();
        let ok = read_kernel_file(&dir, 5000).unwrap().unwrap();
        assert_eq!(ok.len(), 5000);
        match read_kernel_file(&dir, 4999).unwrap() {
            Err(ConfigError::KernelTooLarge { size, .. }) => assert_eq!(size, 5000),
            other => panic!("a file one byte over was not refused: {other:?}"),
        }
        std::fs::remove_file(&dir).unwrap();
        assert!(matches!(
            read_kernel_file(std::path::Path::new("/dev/zero"), 1 << 20).unwrap(),
            Err(ConfigError::KernelNotFile(_))
        ));
    }
}
