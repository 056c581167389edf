//! What the VMM tells us at boot: the Linux boot_params "zero page" (e820 map,
//! command line), read with the offsets of Linux's bootparam.h.

pub const E820_RAM: u32 = 1;
/// ACPI tables the OS may reclaim once read.
pub const E820_ACPI: u32 = 3;
const ACPI_RSDP_ADDR_OFF: usize = 0x070;
const E820_ENTRIES_OFF: usize = 0x1e8;
const CMD_LINE_PTR_OFF: usize = 0x228;
const CMDLINE_SIZE_OFF: usize = 0x238;
const E820_TABLE_OFF: usize = 0x2d0;
const E820_MAX: usize = 128;

#[derive(Clone, Copy)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

pub struct BootInfo {
    base: *const u8,
}

impl BootInfo {
    /// # Safety
    /// `bp` is the boot_params address the VMM passed in rsi, identity mapped.
    pub unsafe fn new(bp: u64) -> Self {
        BootInfo {
            base: bp as *const u8,
        }
    }

    fn read<T: Copy>(&self, off: usize) -> T {
        // SAFETY: offsets lie inside the 4 KiB zero page (see new()).
        unsafe { core::ptr::read_unaligned(self.base.add(off) as *const T) }
    }

    pub fn e820(&self) -> impl Iterator<Item = E820Entry> + '_ {
        let n = (self.read::<u8>(E820_ENTRIES_OFF) as usize).min(E820_MAX);
        (0..n).map(move |i| {
            let off = E820_TABLE_OFF + 20 * i;
            E820Entry {
                addr: self.read(off),
                size: self.read(off + 8),
                kind: self.read(off + 16),
            }
        })
    }

    /// Where the VMM put the ACPI RSDP (0: not said; scan for it).
    pub fn acpi_rsdp_addr(&self) -> u64 {
        self.read(ACPI_RSDP_ADDR_OFF)
    }

    /// The command line, or "" if absent or not UTF-8.
    pub fn cmdline(&self) -> &'static str {
        let ptr = self.read::<u32>(CMD_LINE_PTR_OFF) as usize;
        if ptr == 0 {
            return "";
        }
        let max = match self.read::<u32>(CMDLINE_SIZE_OFF) {
            0 => 4096,
            n => n as usize,
        };
        // SAFETY: the VMM placed a NUL-terminated string there (identity map);
        // the scan is bounded by cmdline_size.
        unsafe {
            let p = ptr as *const u8;
            let mut len = 0;
            while len < max && *p.add(len) != 0 {
                len += 1;
            }
            core::str::from_utf8(core::slice::from_raw_parts(p, len)).unwrap_or("")
        }
    }
}
