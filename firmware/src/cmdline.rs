//! Kernel command line: `key=value` words, the last occurrence wins (as Linux).
//!
//! Keys this kernel does not know are ignored: a Linux-style command line
//! carries `console=ttyS0`, `virtio_mmio.device=...` and the like. A key it
//! does know must carry a value it accepts, in every occurrence: a typo is
//! reported (see [`check`]) instead of quietly replaced by the default.
use core::fmt;

pub fn get<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .rev()
        .filter_map(|w| w.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// An option this kernel reads.
pub struct Opt {
    pub key: &'static str,
    /// The valid values, for the error message ("valid {what}: {valid}").
    pub what: &'static str,
    pub valid: &'static (dyn fmt::Display + Sync),
    pub accepts: fn(&str) -> bool,
}

/// Every option the kernel reads. Add new ones here (or, for a workload
/// with many, in its own list chained in [`check`]), so that they are
/// validated before anything runs.
pub static OPTIONS: &[Opt] = &[
    Opt {
        key: "workload",
        what: "workloads",
        valid: &crate::workloads::Names,
        accepts: |v| crate::workloads::find(v).is_some(),
    },
    Opt {
        key: "mobility_grouping",
        what: "values",
        valid: &"on, off or auto",
        accepts: |v| parse_grouping(v).is_some(),
    },
    Opt {
        key: "balloon_mode",
        what: "values",
        valid: &"4k or 2m",
        accepts: |v| crate::virtio::balloon::Mode::parse(v).is_some(),
    },
    Opt {
        key: "alloc_iters",
        what: "values",
        valid: &"a whole number from 1 to 1000000000",
        accepts: |v| parse_alloc_iters(v).is_some(),
    },
    Opt {
        key: "dirty_pages",
        what: "values",
        valid: &"a whole number from 1 to 262144",
        accepts: |v| parse_dirty_pages(v).is_some(),
    },
    Opt {
        key: "dirty_stride",
        what: "values",
        valid: &"a whole number from 1 to 1024",
        accepts: |v| parse_dirty_stride(v).is_some(),
    },
    Opt {
        key: "touch_mib",
        what: "values",
        valid: &"a whole number of MiB from 1 to 16384",
        accepts: |v| parse_touch_mib(v).is_some(),
    },
    Opt {
        key: "numa_pages",
        what: "values",
        valid: &"a whole number from 1 to 65536",
        accepts: |v| crate::workloads::parse_numa_pages(v).is_some(),
    },
    Opt {
        key: "kmap",
        what: "values",
        valid: &"2m, 1g or boot",
        accepts: |v| crate::vm_space::KmapMode::parse(v).is_some(),
    },
];

/// `dirty_pages=N`: pages `workload=dirty` writes (at most 1 GiB of them).
pub fn parse_dirty_pages(v: &str) -> Option<u64> {
    v.parse().ok().filter(|n| (1..=262_144).contains(n))
}

/// `dirty_stride=K`: `workload=dirty` writes every K-th page.
pub fn parse_dirty_stride(v: &str) -> Option<u64> {
    v.parse().ok().filter(|n| (1..=1024).contains(n))
}

/// `mobility_grouping=on|off|auto`: Some(Some(on)), or Some(None) for auto
/// (the seed's size cutoff decides).
pub fn parse_grouping(v: &str) -> Option<Option<bool>> {
    match v {
        "on" => Some(Some(true)),
        "off" => Some(Some(false)),
        "auto" => Some(None),
        _ => None,
    }
}

/// `alloc_iters=N`: requests per CPU in the alloc workload's stress phase.
/// Zero would skip the stress the workload exists for; the cap keeps a typo
/// from running for hours.
pub fn parse_alloc_iters(v: &str) -> Option<u64> {
    v.parse().ok().filter(|n| (1..=1_000_000_000).contains(n))
}

/// `touch_mib=N`: MiB the touch workload faults in. The cap is what it can
/// hold (4096 blocks of 4 MiB); more than the guest has free fails at run
/// time, naming both.
pub fn parse_touch_mib(v: &str) -> Option<u64> {
    v.parse().ok().filter(|n| (1..=16384).contains(n))
}

/// A known option with a value it does not accept (`value` None: the bare
/// key, without `=`).
pub struct BadOption<'a> {
    pub opt: &'static Opt,
    pub value: Option<&'a str>,
}

impl fmt::Display for BadOption<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.opt;
        match self.value {
            Some(v) => write!(f, "bad value '{v}' for option {}", o.key)?,
            None => write!(f, "option {0} needs a value ({0}=VALUE)", o.key)?,
        }
        write!(f, "; valid {}: {}", o.what, o.valid)
    }
}

/// The first word of `cmdline` that gives a known option a value it does
/// not accept, if any. Unknown keys pass.
pub fn check(cmdline: &str) -> Result<(), BadOption<'_>> {
    for w in cmdline.split_ascii_whitespace() {
        let (k, v) = match w.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (w, None),
        };
        let mut known = OPTIONS.iter().chain(&crate::workloads::PTREPL_OPTIONS);
        let Some(opt) = known.find(|o| o.key == k) else {
            continue;
        };
        if !v.is_some_and(opt.accepts) {
            return Err(BadOption { opt, value: v });
        }
    }
    Ok(())
}
