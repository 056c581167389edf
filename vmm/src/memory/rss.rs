//! Resident memory, from /proc: the VMM's own overhead is VmRSS minus what the
//! guest-RAM mappings hold (smaps Rss), as the issue defines it.
use std::io;

#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct MemoryUsage {
    /// VmRSS of the whole process.
    pub vm_rss_bytes: u64,
    /// VmHWM: the process's peak RSS so far (guest RAM included).
    pub vm_peak_rss_bytes: u64,
    /// Rss of the guest-RAM mappings: guest memory actually touched.
    pub guest_rss_bytes: u64,
    /// Of that, backed by transparent huge pages.
    pub guest_anon_huge_bytes: u64,
    /// Hugetlb pages mapped in guest RAM (smaps Private_Hugetlb plus
    /// Shared_Hugetlb): hugetlb memory is not in Rss or VmRSS.
    pub guest_hugetlb_bytes: u64,
    /// VmRSS minus guest Rss: what the VMM itself costs.
    pub vmm_overhead_bytes: u64,
}

fn kb_field(line: &str, name: &str) -> Option<u64> {
    line.strip_prefix(name)?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()
        .map(|k| k * 1024)
}

/// VmRSS of another process (a spawned VMM): cheap enough to poll every
/// few hundred microseconds, unlike smaps, which walks the page tables.
pub fn vm_rss_of(pid: u32) -> io::Result<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| kb_field(l, "VmRSS:"))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS line"))
}

/// Reads VmRSS and the smaps Rss/AnonHugePages of mappings inside `ranges`.
pub fn measure(ranges: &[(u64, u64)]) -> io::Result<MemoryUsage> {
    measure_with(&std::fs::read_to_string("/proc/self/smaps")?, ranges)
}

/// As [`measure`], with smaps already read (so that figures taken from the
/// same text agree).
pub fn measure_with(smaps: &str, ranges: &[(u64, u64)]) -> io::Result<MemoryUsage> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let vm_rss = status
        .lines()
        .find_map(|l| kb_field(l, "VmRSS:"))
        .unwrap_or(0);
    let peak = status
        .lines()
        .find_map(|l| kb_field(l, "VmHWM:"))
        .unwrap_or(0);
    let g = guest_rss_from_smaps(smaps, ranges);
    Ok(MemoryUsage {
        vm_rss_bytes: vm_rss,
        vm_peak_rss_bytes: peak,
        guest_rss_bytes: g.rss,
        guest_anon_huge_bytes: g.anon_huge,
        guest_hugetlb_bytes: g.hugetlb,
        vmm_overhead_bytes: vm_rss.saturating_sub(g.rss),
    })
}

/// What smaps says of some mappings, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmapsSum {
    pub rss: u64,
    pub anon_huge: u64,
    pub hugetlb: u64,
}

/// Sums Rss, AnonHugePages and hugetlb pages of the smaps entries that lie
/// within `ranges`.
pub fn guest_rss_from_smaps(smaps: &str, ranges: &[(u64, u64)]) -> SmapsSum {
    let mut sum = SmapsSum::default();
    for (start, end, s) in smaps_entries(smaps) {
        if ranges.iter().any(|&(a, b)| start >= a && end <= b) {
            sum.rss += s.rss;
            sum.anon_huge += s.anon_huge;
            sum.hugetlb += s.hugetlb;
        }
    }
    sum
}

/// Each smaps entry: its address range and figures.
pub fn smaps_entries(smaps: &str) -> Vec<(u64, u64, SmapsSum)> {
    let mut out: Vec<(u64, u64, SmapsSum)> = Vec::new();
    for line in smaps.lines() {
        let header = line
            .split_once(' ')
            .and_then(|(span, _)| span.split_once('-'))
            .and_then(|(a, b)| {
                Some((
                    u64::from_str_radix(a, 16).ok()?,
                    u64::from_str_radix(b, 16).ok()?,
                ))
            });
        if let Some((start, end)) = header {
            out.push((start, end, SmapsSum::default()));
        } else if let Some((_, _, sum)) = out.last_mut() {
            if let Some(v) = kb_field(line, "Rss:") {
                sum.rss += v;
            } else if let Some(v) = kb_field(line, "AnonHugePages:") {
                sum.anon_huge += v;
            } else if let Some(v) =
                kb_field(line, "Private_Hugetlb:").or_else(|| kb_field(line, "Shared_Hugetlb:"))
            {
                sum.hugetlb += v;
            }
        }
    }
    out
}

/// The smaps figures of `ranges` in this process now.
pub fn smaps_of(ranges: &[(u64, u64)]) -> io::Result<SmapsSum> {
    Ok(guest_rss_from_smaps(
        &std::fs::read_to_string("/proc/self/smaps")?,
        ranges,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_guest_mappings_count() {
        let smaps = "\
7f0000000000-7f0000400000 rw-p 00000000 00:00 0
Size:               4096 kB
Rss:                2048 kB
AnonHugePages:      2048 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:    4096 kB
7f0000400000-7f0000500000 rw-p 00000000 00:00 0
Rss:                 100 kB
AnonHugePages:         0 kB
";
        let r = guest_rss_from_smaps(smaps, &[(0x7f00_0000_0000, 0x7f00_0040_0000)]);
        assert_eq!(
            r,
            SmapsSum {
                rss: 2048 * 1024,
                anon_huge: 2048 * 1024,
                hugetlb: 4096 * 1024
            }
        );
    }

    #[test]
    fn measures_this_process() {
        let u = measure(&[]).unwrap();
        assert!(u.vm_rss_bytes > 0);
        assert_eq!(u.guest_rss_bytes, 0);
        assert_eq!(u.vmm_overhead_bytes, u.vm_rss_bytes);
    }
}
