//! Getting a kernel ready to run: load the image (ELF or bzImage), write the
//! Linux boot_params zero page and the command line, build the identity map,
//! and describe the register state every vCPU starts with.
//!
//! One path serves our own guest kernel and Linux alike: both take the Linux
//! x86-64 64-bit boot protocol (paging on, rsi = zero page).
pub mod acpi;
pub mod elf_note;
pub mod pagetables;
pub mod params;
pub mod regs;

use crate::memory::layout::HIMEM_START;
use crate::memory::GuestMemory;
use linux_loader::loader::{bootparam::setup_header, BzImage, Elf, KernelLoader};
use std::io::Cursor;
use vm_memory::GuestAddress;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{what} is neither an ELF executable nor a Linux bzImage (it starts with {head})")]
    UnknownFormat { what: String, head: String },
    #[error("cannot load ELF kernel {what}: {source:?}")]
    Elf {
        what: String,
        source: linux_loader::loader::Error,
    },
    #[error("cannot load bzImage kernel {what}: {source:?}")]
    BzImage {
        what: String,
        source: linux_loader::loader::Error,
    },
    #[error("kernel {what} ends at {end:#x}, beyond the {ram:#x} bytes of guest RAM")]
    TooBig { what: String, end: u64, ram: u64 },
    #[error("kernel command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("{gib} GiB of address space need more boot page directories than the {max} that fit below 640 KiB")]
    TooMuchMemory { gib: u64, max: u64 },
    #[error("cannot write boot data to guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// Offset of the 64-bit entry point from a bzImage's protected-mode start.
const BZIMAGE_ENTRY_64: u64 = 0x200;

pub fn detect_format(image: &[u8], what: &str) -> Result<KernelFormat, BootError> {
    if image.starts_with(b"\x7fELF") {
        return Ok(KernelFormat::Elf);
    }
    if image.len() > 0x206 && &image[0x202..0x206] == b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    let head: Vec<String> = image.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let head = if head.is_empty() {
        "nothing (empty file)".to_string()
    } else {
        head.join(" ")
    };
    Err(BootError::UnknownFormat {
        what: what.to_string(),
        head,
    })
}

/// What the loader learned about the kernel.
#[derive(Clone, Debug)]
pub struct LoadedKernel {
    pub format: KernelFormat,
    /// 64-bit entry point (guest-physical = virtual under the identity map).
    pub entry: u64,
    pub kernel_end: u64,
    /// Every vCPU may start at `entry` (the memvisor ELF note); otherwise only
    /// the BSP starts and the others wait for INIT/SIPI, as Linux expects.
    pub smp_entry: bool,
    pub setup_header: Option<setup_header>,
}

/// Loads `image` (named `what` in errors) into guest memory.
pub fn load_kernel(
    mem: &GuestMemory,
    ram_end: u64,
    image: &[u8],
    what: &str,
) -> Result<LoadedKernel, BootError> {
    let format = detect_format(image, what)?;
    let himem = Some(GuestAddress(HIMEM_START));
    let mut cursor = Cursor::new(image);
    let loaded = match format {
        KernelFormat::Elf => {
            // Fail early and clearly on segments outside RAM (linux-loader
            // would only report a failed read).
            let end = elf_note::load_end(image).unwrap_or(0);
            if end > ram_end {
                return Err(BootError::TooBig {
                    what: what.into(),
                    end,
                    ram: ram_end,
                });
            }
            let r = Elf::load(mem, None, &mut cursor, himem).map_err(|source| BootError::Elf {
                what: what.into(),
                source,
            })?;
            LoadedKernel {
                format,
                entry: r.kernel_load.0,
                kernel_end: r.kernel_end,
                smp_entry: elf_note::has_smp_entry(image),
                setup_header: None,
            }
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut cursor, himem).map_err(|source| {
                BootError::BzImage {
                    what: what.into(),
                    source,
                }
            })?;
            LoadedKernel {
                format,
                entry: r.kernel_load.0 + BZIMAGE_ENTRY_64,
                kernel_end: r.kernel_end,
                smp_entry: false,
                setup_header: r.setup_header,
            }
        }
    };
    if loaded.kernel_end > ram_end {
        return Err(BootError::TooBig {
            what: what.into(),
            end: loaded.kernel_end,
            ram: ram_end,
        });
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_recognised_by_magic() {
        assert_eq!(
            detect_format(b"\x7fELF\x02\x01", "k").unwrap(),
            KernelFormat::Elf
        );
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect_format(&bz, "k").unwrap(), KernelFormat::BzImage);
        let e = detect_format(b"#!/bin/sh\n", "script.sh")
            .unwrap_err()
            .to_string();
        assert!(e.contains("script.sh") && e.contains("23 21 2f 62"), "{e}");
        assert!(detect_format(b"", "empty")
            .unwrap_err()
            .to_string()
            .contains("empty file"));
    }

    #[test]
    fn bundled_kernel_loads_with_smp_entry() {
        let ram = crate::memory::GuestRam::new(32 << 20).unwrap();
        let k = load_kernel(ram.memory(), ram.end(), crate::firmware::BUNDLED, "bundled").unwrap();
        assert_eq!(k.format, KernelFormat::Elf);
        assert!(k.smp_entry);
        assert!(k.entry >= HIMEM_START && k.entry < k.kernel_end);
    }

    #[test]
    fn kernel_larger_than_ram_is_refused() {
        let ram = crate::memory::GuestRam::new(2 << 20).unwrap();
        let e =
            load_kernel(ram.memory(), ram.end(), crate::firmware::BUNDLED, "bundled").unwrap_err();
        assert!(matches!(e, BootError::TooBig { .. }), "{e}");
    }
}
