//! `workload=ptrepl`'s command-line keys, each validated at boot by
//! `cmdline::check` so that a bad value fails the run naming it.
use crate::abi;
use crate::cmdline::{self, Opt};

/// Page-table placements, in run order; index = `abi::PTREPL_*`.
pub const CONFIGS: [&str; 3] = ["local", "remote", "replicated"];
pub const THP: [&str; 2] = ["off", "on"];
pub const WORKS: [&str; 2] = ["gups", "chase"];

pub static OPTIONS: [Opt; 6] = [
    Opt {
        key: "ptrepl_mib",
        what: "values",
        valid: &"an even whole number of MiB from 2 to 1024",
        accepts: |v| parse_mib(v).is_some(),
    },
    Opt {
        key: "ptrepl_ops",
        what: "values",
        valid: &"a whole number from 1 to 1000000000",
        accepts: |v| parse_ops(v).is_some(),
    },
    Opt {
        key: "ptrepl_configs",
        what: "values",
        valid: &"a comma-separated list of local, remote, replicated",
        accepts: |v| parse_list(v, &CONFIGS).is_some(),
    },
    Opt {
        key: "ptrepl_thp",
        what: "values",
        valid: &"a comma-separated list of off, on",
        accepts: |v| parse_list(v, &THP).is_some(),
    },
    Opt {
        key: "ptrepl_work",
        what: "values",
        valid: &"a comma-separated list of gups, chase",
        accepts: |v| parse_list(v, &WORKS).is_some(),
    },
    Opt {
        key: "ptrepl_samples",
        what: "values",
        valid: &"a whole number from 1 to 65536",
        accepts: |v| parse_samples(v).is_some(),
    },
];

/// Per running vCPU, per configuration: even, so that a region is whole
/// 2 MiB pages with THP on and the same size with it off.
pub fn parse_mib(v: &str) -> Option<u64> {
    v.parse()
        .ok()
        .filter(|n| (2..=abi::PTREPL_MAX_MIB).contains(n) && n % 2 == 0)
}

pub fn parse_ops(v: &str) -> Option<u64> {
    v.parse().ok().filter(|n| (1..=1_000_000_000).contains(n))
}

/// The VMM caps samples at `PTWALK_MAX_SAMPLES` anyway; asking for more
/// is a typo.
pub fn parse_samples(v: &str) -> Option<u32> {
    v.parse()
        .ok()
        .filter(|n| (1..=abi::PTWALK_MAX_SAMPLES).contains(n))
}

/// A non-empty comma-separated subset of `names`, as a bit mask.
pub fn parse_list(v: &str, names: &[&str]) -> Option<u32> {
    let mut mask = 0;
    for w in v.split(',') {
        mask |= 1 << names.iter().position(|n| *n == w)?;
    }
    Some(mask)
}

/// What one run asks for.
#[derive(Clone, Copy)]
pub struct Params {
    pub mib: u64,
    pub ops: u64,
    pub configs: u32,
    pub thp: u32,
    pub works: u32,
    pub samples: u32,
}

impl Params {
    /// From the command line (already validated; absent keys: defaults).
    pub fn get() -> Params {
        let c = crate::user::cmdline();
        let list = |k, names: &[&str]| {
            cmdline::get(c, k)
                .and_then(|v| parse_list(v, names))
                .unwrap_or((1 << names.len()) - 1)
        };
        Params {
            mib: cmdline::get(c, "ptrepl_mib")
                .and_then(parse_mib)
                .unwrap_or(64),
            ops: cmdline::get(c, "ptrepl_ops")
                .and_then(parse_ops)
                .unwrap_or(1_000_000),
            configs: list("ptrepl_configs", &CONFIGS),
            thp: list("ptrepl_thp", &THP),
            works: list("ptrepl_work", &WORKS),
            samples: cmdline::get(c, "ptrepl_samples")
                .and_then(parse_samples)
                .unwrap_or(4096),
        }
    }
}

const _: () = assert!(abi::PTREPL_LOCAL == 0 && abi::PTREPL_REMOTE == 1);
const _: () = assert!(abi::PTREPL_REPLICATED == 2);
