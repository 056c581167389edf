//! Workloads chosen with `workload=NAME` on the command line. Each runs on
//! every CPU at once; CPU 0 reports the result line and returns the verdict.
mod alloc;
mod balloon;
mod balloon_hostile;
mod dirty;
mod entropy;
mod flood;
mod memtest;
mod numa;
mod ptrepl;
mod touch;

pub use numa::parse_pages as parse_numa_pages;
pub use ptrepl::OPTIONS as PTREPL_OPTIONS;

pub struct Workload {
    pub name: &'static str,
    /// Called on every CPU with (cpu, ncpus); CPU 0's return value decides
    /// the exit status.
    pub run: fn(usize, usize) -> bool,
}

pub const DEFAULT: &str = "memtest";

pub static ALL: &[Workload] = &[
    Workload {
        name: "memtest",
        run: memtest::run,
    },
    Workload {
        name: "alloc",
        run: alloc::run,
    },
    Workload {
        name: "entropy",
        run: entropy::run,
    },
    Workload {
        name: "boot",
        run: boot,
    },
    Workload {
        name: "dirty",
        run: dirty::run,
    },
    Workload {
        name: "fault",
        run: fault,
    },
    Workload {
        name: "flood",
        run: flood::run,
    },
    Workload {
        name: "reset",
        run: reset,
    },
    Workload {
        name: "idle",
        run: idle,
    },
    Workload {
        name: "spin",
        run: spin,
    },
    Workload {
        name: "balloon-hold",
        run: balloon::hold,
    },
    Workload {
        name: "balloon-hostile",
        run: balloon_hostile::run,
    },
    Workload {
        name: "touch",
        run: touch::run,
    },
    Workload {
        name: "numa",
        run: numa::run,
    },
    Workload {
        name: "ptrepl",
        run: ptrepl::run,
    },
];

/// Every vCPU halts (CPL0 `hlt`, interrupts off) until the VMM ends the
/// run (signal, timeout or API): an idle guest, its vCPUs asleep in KVM and
/// no host core spent on them, for `memvisor bench api` and runtime
/// experiments.
fn idle(_cpu: usize, _ncpus: usize) -> bool {
    crate::syscall::halt()
}

/// Every vCPU spins at CPL3 until the VMM ends the run: a busy guest, always
/// inside KVM_RUN and on a host core.
fn spin(_cpu: usize, _ncpus: usize) -> bool {
    loop {
        core::hint::spin_loop();
    }
}

/// Resets the machine the way Linux reboots: the i8042's "pulse reset line"
/// command (0xfe to port 0x64). The VMM ends the run with status "reset".
fn reset(cpu: usize, _ncpus: usize) -> bool {
    if cpu == 0 {
        crate::arch::cpu::outb(0x64, 0xfe);
    }
    loop {
        core::hint::spin_loop();
    }
}

/// Boot only: report ready, then exit. What `memvisor bench boot` times.
fn boot(cpu: usize, _ncpus: usize) -> bool {
    if cpu == 0 {
        let mut l = crate::hostio::LINE.lock();
        l.begin(crate::abi::RECORD_JSON);
        l.raw("{\"event\":\"workload\",\"name\":\"boot\",\"ok\":true}");
        crate::hostio::send(l.finish());
    }
    true
}

/// The workload names, comma-separated, for error messages.
pub struct Names;

impl core::fmt::Display for Names {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, w) in ALL.iter().enumerate() {
            write!(f, "{}{}", if i == 0 { "" } else { ", " }, w.name)?;
        }
        Ok(())
    }
}

pub fn find(name: &str) -> Option<&'static Workload> {
    ALL.iter().find(|w| w.name == name)
}

impl Workload {
    pub fn index(&self) -> u32 {
        ALL.iter().position(|w| core::ptr::eq(w, self)).unwrap_or(0) as u32
    }
}

/// Unmapped: above every RAM the boot identity map can cover.
const UNMAPPED: u64 = 0x7f00_0000_0000;

/// A deliberate page fault at CPL3, to exercise the exception path end to
/// end: the CPL0 dump names vector 14, RIP and CR2, and the VM exits 3.
fn fault(cpu: usize, _ncpus: usize) -> bool {
    if cpu == 0 {
        // SAFETY: not safe by design: this read faults and never returns.
        unsafe { core::ptr::read_volatile(UNMAPPED as *const u64) };
    }
    true
}
