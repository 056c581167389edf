//! KVM's binary statistics of a VM (KVM_GET_STATS_FD), read by name.
//!
//! Why by name: the file describes itself (Documentation/virt/kvm/api.rst,
//! "KVM_GET_STATS_FD"): a header gives the offsets of an id string, of a
//! block of descriptors (flags, exponent, size, offset, bucket size, then a
//! name of `name_size` bytes) and of the data; each descriptor says where
//! its values are in the data block. Which statistics exist, and in what
//! order, differs between kernels and architectures (PVM's `kvm_pvm` adds
//! its own), so an index that is right here is wrong on the next host.
//!
//! The statistics kept are the stage-2 (or, under PVM, shadow) mapping
//! sizes `pages_4k`/`pages_2m`/`pages_1g` (instant values: what is mapped
//! now), `remote_tlb_flush`, `nx_lpage_splits` and every `mmu_*` counter
//! this KVM has: what guest memory costs KVM, beside what it costs the host
//! (smaps).
use kvm_bindings::{
    kvm_stats_desc, kvm_stats_header, KVMIO, KVM_STATS_TYPE_LINEAR_HIST, KVM_STATS_TYPE_LOG_HIST,
    KVM_STATS_TYPE_MASK,
};
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;

vmm_sys_util::ioctl_io_nr!(KVM_GET_STATS_FD, KVMIO, 0xce);

const HEADER_LEN: usize = std::mem::size_of::<kvm_stats_header>();
const DESC_LEN: usize = std::mem::size_of::<kvm_stats_desc>();
/// A sane bound on what a stats file may claim, so a broken one cannot make
/// us allocate without limit (real ones: ~100 descriptors, names < 64 B).
const MAX_DESCS: usize = 4096;
const MAX_NAME: usize = 4096;
/// Most `mmu_*` counters reported: bounds the report and `GET /vm/memory`.
const MAX_MMU_STATS: usize = 64;

/// Statistics reported under fixed names (each absent where KVM lacks it).
const NAMED: [&str; 5] = [
    "pages_4k",
    "pages_2m",
    "pages_1g",
    "remote_tlb_flush",
    "nx_lpage_splits",
];

#[derive(Debug, thiserror::Error)]
pub enum KvmStatsError {
    #[error("KVM_GET_STATS_FD failed")]
    Open(#[source] io::Error),
    #[error("reading the KVM stats file")]
    Read(#[source] io::Error),
    #[error("malformed KVM stats file: {0}")]
    Malformed(String),
}

/// KVM's memory statistics of one VM.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KvmMemStats {
    pub pages_4k: Option<u64>,
    pub pages_2m: Option<u64>,
    pub pages_1g: Option<u64>,
    pub remote_tlb_flush: Option<u64>,
    pub nx_lpage_splits: Option<u64>,
    /// Every `mmu_*` statistic, by its KVM name.
    #[serde(flatten)]
    pub mmu: BTreeMap<String, u64>,
}

/// One single-valued statistic: its name and where its value is in the
/// data block.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Desc {
    name: String,
    offset: u64,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The header's (name_size, num_desc, desc_offset, data_offset).
fn parse_header(b: &[u8]) -> Result<(usize, usize, u64, u64), KvmStatsError> {
    if b.len() < HEADER_LEN {
        return Err(KvmStatsError::Malformed("short header".into()));
    }
    let name_size = u32_at(b, 4) as usize;
    let num_desc = u32_at(b, 8) as usize;
    if name_size > MAX_NAME || num_desc > MAX_DESCS {
        return Err(KvmStatsError::Malformed(format!(
            "{num_desc} descriptors with names of {name_size} bytes"
        )));
    }
    Ok((
        name_size,
        num_desc,
        u32_at(b, 16).into(),
        u32_at(b, 20).into(),
    ))
}

/// The descriptors we report, found by name in the descriptor block. Each
/// descriptor is a `kvm_stats_desc` (flags u32, exponent s16, size u16,
/// offset u32, bucket_size u32) followed by `name_size` bytes of name.
fn parse_descs(block: &[u8], name_size: usize, num: usize) -> Result<Vec<Desc>, KvmStatsError> {
    let stride = DESC_LEN + name_size;
    if block.len() < stride * num {
        return Err(KvmStatsError::Malformed("short descriptor block".into()));
    }
    let mut out = Vec::new();
    let mut mmu = 0;
    for d in block.chunks_exact(stride).take(num) {
        let flags = u32_at(d, 0);
        let size = u16::from_le_bytes([d[6], d[7]]);
        let offset = u32_at(d, 8);
        let raw = &d[DESC_LEN..];
        let name =
            String::from_utf8_lossy(&raw[..raw.iter().position(|&c| c == 0).unwrap_or(raw.len())])
                .into_owned();
        let kind = flags & KVM_STATS_TYPE_MASK;
        // Histograms are many values; the statistics we want are one each.
        if size != 1 || kind == KVM_STATS_TYPE_LINEAR_HIST || kind == KVM_STATS_TYPE_LOG_HIST {
            continue;
        }
        let wanted = NAMED.contains(&name.as_str())
            || (name.starts_with("mmu_") && {
                mmu += 1;
                mmu <= MAX_MMU_STATS
            });
        if wanted {
            out.push(Desc {
                name,
                offset: offset.into(),
            });
        }
    }
    Ok(out)
}

/// The values of `descs` in a data block.
fn values(descs: &[Desc], data: &[u8]) -> Result<KvmMemStats, KvmStatsError> {
    let mut s = KvmMemStats::default();
    for d in descs {
        let at = d.offset as usize;
        let v = data
            .get(at..at + 8)
            .ok_or_else(|| KvmStatsError::Malformed(format!("{} lies past the data", d.name)))?;
        let v = u64::from_le_bytes(v.try_into().expect("8 bytes"));
        match d.name.as_str() {
            "pages_4k" => s.pages_4k = Some(v),
            "pages_2m" => s.pages_2m = Some(v),
            "pages_1g" => s.pages_1g = Some(v),
            "remote_tlb_flush" => s.remote_tlb_flush = Some(v),
            "nx_lpage_splits" => s.nx_lpage_splits = Some(v),
            name => {
                s.mmu.insert(name.to_string(), v);
            }
        }
    }
    Ok(s)
}

/// An open stats file of a VM, its descriptors parsed.
pub struct KvmStats {
    file: File,
    descs: Vec<Desc>,
    data_offset: u64,
    data_len: usize,
}

impl KvmStats {
    /// Opens the VM's stats file and reads its descriptors (they never
    /// change for the VM's life; the values are read by [`Self::read`]).
    pub fn open(vm: &kvm_ioctls::VmFd) -> Result<Self, KvmStatsError> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd.
        let fd = unsafe { vmm_sys_util::ioctl::ioctl(vm, KVM_GET_STATS_FD()) };
        if fd < 0 {
            return Err(KvmStatsError::Open(io::Error::last_os_error()));
        }
        // SAFETY: a fresh fd that nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        Self::from_file(file)
    }

    fn from_file(file: File) -> Result<Self, KvmStatsError> {
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, 0)
            .map_err(KvmStatsError::Read)?;
        let (name_size, num, desc_offset, data_offset) = parse_header(&header)?;
        let mut block = vec![0u8; (DESC_LEN + name_size) * num];
        file.read_exact_at(&mut block, desc_offset)
            .map_err(KvmStatsError::Read)?;
        let descs = parse_descs(&block, name_size, num)?;
        let data_len = descs
            .iter()
            .map(|d| d.offset as usize + 8)
            .max()
            .unwrap_or(0);
        Ok(KvmStats {
            file,
            descs,
            data_offset,
            data_len,
        })
    }

    /// The statistics now.
    pub fn read(&self) -> Result<KvmMemStats, KvmStatsError> {
        let mut data = vec![0u8; self.data_len];
        self.file
            .read_exact_at(&mut data, self.data_offset)
            .map_err(KvmStatsError::Read)?;
        values(&self.descs, &data)
    }

    /// Opens, reads once, closes: for a look now and then (an API request,
    /// the report), where keeping an fd per VM open buys nothing.
    pub fn read_vm(vm: &kvm_ioctls::VmFd) -> Result<KvmMemStats, KvmStatsError> {
        Self::open(vm)?.read()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A stats file laid out as api.rst says: header, id, descriptors,
    /// data; the names in an order of our choosing.
    fn file_with(stats: &[(&str, u32, u16, u64)]) -> File {
        let name_size = 48usize;
        let id = b"kvm-1234\0";
        let desc_offset = (HEADER_LEN + name_size) as u32;
        let data_offset = desc_offset + ((DESC_LEN + name_size) * stats.len()) as u32;
        let mut b = Vec::new();
        for w in [
            0,
            name_size as u32,
            stats.len() as u32,
            HEADER_LEN as u32,
            desc_offset,
            data_offset,
        ] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        let mut idb = id.to_vec();
        idb.resize(name_size, 0);
        b.extend_from_slice(&idb);
        let mut data = Vec::new();
        for &(name, flags, size, value) in stats {
            b.extend_from_slice(&flags.to_le_bytes());
            b.extend_from_slice(&0i16.to_le_bytes());
            b.extend_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&(data.len() as u32).to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            let mut n = name.as_bytes().to_vec();
            n.resize(name_size, 0);
            b.extend_from_slice(&n);
            for i in 0..size as u64 {
                data.extend_from_slice(&(value + i).to_le_bytes());
            }
        }
        b.extend_from_slice(&data);
        let mut f = tempfile();
        f.write_all(&b).unwrap();
        f
    }

    fn tempfile() -> File {
        let p = std::env::temp_dir().join(format!(
            "memvisor-kvmstats-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        std::fs::remove_file(&p).unwrap();
        f
    }

    const INSTANT: u32 = kvm_bindings::KVM_STATS_TYPE_INSTANT;
    const CUMULATIVE: u32 = kvm_bindings::KVM_STATS_TYPE_CUMULATIVE;

    #[test]
    fn statistics_are_found_by_name_whatever_their_order() {
        let stats = [
            ("mmu_shadow_zapped", CUMULATIVE, 1, 11),
            ("remote_tlb_flush_requests", CUMULATIVE, 1, 99),
            ("pages_1g", INSTANT, 1, 3),
            ("halt_poll_fail_hist", KVM_STATS_TYPE_LOG_HIST, 32, 500),
            ("pages_2m", INSTANT, 1, 33),
            ("mmu_cache_miss", CUMULATIVE, 1, 7),
            ("remote_tlb_flush", CUMULATIVE, 1, 5),
            ("pages_4k", INSTANT, 1, 400),
            ("mmu_histogram", KVM_STATS_TYPE_LINEAR_HIST, 4, 1),
        ];
        let s = KvmStats::from_file(file_with(&stats))
            .unwrap()
            .read()
            .unwrap();
        assert_eq!(s.pages_4k, Some(400));
        assert_eq!(s.pages_2m, Some(33));
        assert_eq!(s.pages_1g, Some(3));
        assert_eq!(s.remote_tlb_flush, Some(5));
        assert_eq!(s.nx_lpage_splits, None, "absent here");
        assert_eq!(
            s.mmu,
            BTreeMap::from([
                ("mmu_cache_miss".to_string(), 7),
                ("mmu_shadow_zapped".to_string(), 11)
            ]),
            "histograms and other names left out"
        );
        // The same statistics in another order read the same.
        let mut rev = stats;
        rev.reverse();
        let r = KvmStats::from_file(file_with(&rev))
            .unwrap()
            .read()
            .unwrap();
        assert_eq!(r, s);
    }

    #[test]
    fn a_file_claiming_too_much_or_pointing_past_its_end_is_refused() {
        let mut h = [0u8; HEADER_LEN];
        h[8..12].copy_from_slice(&(MAX_DESCS as u32 + 1).to_le_bytes());
        assert!(parse_header(&h).is_err());
        assert!(parse_header(&h[..10]).is_err());
        let d = [Desc {
            name: "pages_4k".into(),
            offset: 16,
        }];
        assert!(values(&d, &[0u8; 20]).is_err());
        assert!(parse_descs(&[0u8; 10], 48, 1).is_err());
    }

    /// This host's KVM, where it is present: the named statistics are there
    /// and an empty VM maps nothing.
    #[test]
    fn a_real_vm_has_the_mapping_statistics() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            assert!(
                std::env::var("REQUIRE_KVM").map_or(true, |v| v != "1"),
                "no /dev/kvm, and REQUIRE_KVM=1 makes that a failure"
            );
            eprintln!("skipping: no /dev/kvm");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        let s = KvmStats::read_vm(&vm).unwrap();
        assert_eq!(s.pages_4k, Some(0), "{s:?}");
        assert_eq!(s.pages_2m, Some(0), "{s:?}");
        assert!(s.remote_tlb_flush.is_some(), "{s:?}");
        eprintln!("KVM memory statistics here: {s:?}");
    }
}
