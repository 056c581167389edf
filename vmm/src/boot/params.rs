//! The Linux boot_params "zero page" and the command line.
use super::{BootError, LoadedKernel};
use crate::memory::layout::{E820Entry, CMDLINE, CMDLINE_MAX, ZERO_PAGE};
use crate::memory::GuestMemory;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use vm_memory::{Bytes, GuestAddress};

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

/// Writes the command line and boot_params, with `acpi_rsdp` (the RSDP's
/// address, 0 for none) so the kernel need not scan for it; returns the
/// zero page address.
pub fn write_boot_params(
    mem: &GuestMemory,
    kernel: &LoadedKernel,
    cmdline: &str,
    e820: &[E820Entry],
    acpi_rsdp: u64,
) -> Result<u64, BootError> {
    if cmdline.contains('\0') {
        return Err(BootError::CmdlineNul);
    }
    // A bzImage states how long a command line it accepts.
    let max = match kernel.setup_header {
        Some(h) if h.cmdline_size > 0 => (h.cmdline_size as usize).min(CMDLINE_MAX - 1),
        _ => CMDLINE_MAX - 1,
    };
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE))?;

    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.cmdline_size = cmdline.len() as u32 + 1;
    let n = e820.len().min(params.e820_table.len());
    for (slot, e) in params.e820_table.iter_mut().zip(&e820[..n]) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = n as u8;
    params.acpi_rsdp_addr = acpi_rsdp;
    mem.write_obj(params, GuestAddress(ZERO_PAGE))?;
    Ok(ZERO_PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::KernelFormat;
    use crate::memory::layout::e820_map;

    fn kernel() -> LoadedKernel {
        LoadedKernel {
            format: KernelFormat::Elf,
            entry: 0x10_0000,
            kernel_end: 0x20_0000,
            smp_entry: true,
            setup_header: None,
        }
    }

    #[test]
    fn zero_page_carries_e820_and_cmdline() {
        let ram = crate::memory::GuestRam::new(32 << 20).unwrap();
        let map = e820_map(32 << 20);
        write_boot_params(ram.memory(), &kernel(), "workload=memtest", &map, 0xe0000).unwrap();
        let mem = ram.memory();
        let bp: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE)).unwrap();
        assert_eq!(bp.e820_entries as usize, map.len());
        let e = bp.e820_table[1];
        assert_eq!((e.addr, e.size, e.r#type), (map[1].addr, map[1].size, 1));
        let ptr = bp.hdr.cmd_line_ptr as u64;
        let mut buf = [0u8; 17];
        mem.read_slice(&mut buf, GuestAddress(ptr)).unwrap();
        assert_eq!(&buf, b"workload=memtest\0");
        // The firmware reads these fixed offsets (bootparam.h).
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(ZERO_PAGE + 0x1e8)).unwrap() as usize,
            map.len()
        );
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(ZERO_PAGE + 0x228))
                .unwrap() as u64,
            CMDLINE
        );
        // Linux's and our kernel's acpi_rsdp_addr (bootparam.h offset 0x070).
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(ZERO_PAGE + 0x070))
                .unwrap(),
            0xe0000
        );
    }

    #[test]
    fn overlong_or_nul_cmdline_is_refused() {
        let ram = crate::memory::GuestRam::new(32 << 20).unwrap();
        let long = "x".repeat(CMDLINE_MAX);
        let e = write_boot_params(ram.memory(), &kernel(), &long, &[], 0).unwrap_err();
        assert!(
            matches!(
                e,
                BootError::CmdlineTooLong {
                    len: 4096,
                    max: 4095
                }
            ),
            "{e}"
        );
        assert!(matches!(
            write_boot_params(ram.memory(), &kernel(), "a\0b", &[], 0),
            Err(BootError::CmdlineNul)
        ));
    }
}
