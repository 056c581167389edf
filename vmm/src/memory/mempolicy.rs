//! Host NUMA placement through the raw system calls (no libnuma): binding
//! guest RAM to a host node (mbind), reading the binding back
//! (get_mempolicy with MPOL_F_ADDR), and pinning threads
//! (sched_setaffinity, through pthread_setaffinity_np). Where resident
//! pages are (move_pages in query mode) is sampled in [`super::accounting`].
//!
//! Why the read-backs: on a one-node host every page lands on node 0 with
//! or without a binding, so residency alone proves nothing; the policy the
//! kernel holds for the range is what shows the binding was made. Both go
//! into [`super::accounting::RegionAccounting`], so into the report and
//! `GET /vm/memory`.
//!
//! A region is bound right after it is mapped and before anything touches
//! it, so no page is ever allocated under another policy (nothing has to be
//! migrated, and MPOL_MF_MOVE is not needed). For shared memfd mappings
//! mbind sets the shmem object's shared policy, for hugetlb the mapping's;
//! get_mempolicy reads back whichever applies.
use super::backing::HostMapping;
use super::numa::CpuList;
use serde::Serialize;
use std::io;

/// Bits in the node masks passed to the kernel: Linux's largest
/// MAX_NUMNODES (NODES_SHIFT 10), so any host node fits.
const NODEMASK_BITS: usize = 1024;
type NodeMask = [libc::c_ulong; NODEMASK_BITS / 64];
/// get_mempolicy: return the policy of the mapping at `addr`.
const MPOL_F_ADDR: libc::c_ulong = 1 << 1;
/// Mode flags get_mempolicy may OR into the mode (static, relative nodes,
/// NUMA balancing).
const MPOL_MODE_FLAGS: libc::c_int =
    libc::MPOL_F_STATIC_NODES | libc::MPOL_F_RELATIVE_NODES | libc::MPOL_F_NUMA_BALANCING;
/// The kernel's memory policy of a range, as read back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// `default`, `preferred`, `bind`, `interleave`, `local`,
    /// `preferred_many`, `weighted_interleave` (or `mode N`).
    pub policy: String,
    /// The nodes of the policy's mask (empty for `default` and `local`).
    pub policy_nodes: Vec<u32>,
}

fn mode_name(mode: libc::c_int) -> String {
    match mode & !MPOL_MODE_FLAGS {
        libc::MPOL_DEFAULT => "default".into(),
        libc::MPOL_PREFERRED => "preferred".into(),
        libc::MPOL_BIND => "bind".into(),
        libc::MPOL_INTERLEAVE => "interleave".into(),
        libc::MPOL_LOCAL => "local".into(),
        5 => "preferred_many".into(),
        6 => "weighted_interleave".into(),
        m => format!("mode {m}"),
    }
}

/// Binds all of `map` to host node `node` (MPOL_BIND): pages allocated
/// for it from now on come from that node only.
pub fn bind(map: &HostMapping, node: u32) -> io::Result<()> {
    let node = node as usize;
    if node >= NODEMASK_BITS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut mask: NodeMask = [0; NODEMASK_BITS / 64];
    mask[node / 64] |= 1 << (node % 64);
    // SAFETY: mbind reads `mask` (NODEMASK_BITS bits; the kernel takes
    // maxnode - 1 of them) and changes only the policy of our mapping.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            map.addr,
            map.size,
            libc::MPOL_BIND,
            mask.as_ptr(),
            NODEMASK_BITS + 1,
            0u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The policy the kernel holds for `map` (for its first page: the whole
/// mapping was bound at once).
pub fn policy_of(map: &HostMapping) -> io::Result<Policy> {
    let mut mode: libc::c_int = 0;
    let mut mask: NodeMask = [0; NODEMASK_BITS / 64];
    // SAFETY: get_mempolicy writes one int and at most NODEMASK_BITS bits
    // of mask (maxnode - 1, rounded to whole longs), both ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut mode as *mut libc::c_int,
            mask.as_mut_ptr(),
            NODEMASK_BITS + 1,
            map.addr,
            MPOL_F_ADDR,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let nodes = (0..NODEMASK_BITS)
        .filter(|&n| mask[n / 64] & (1 << (n % 64)) != 0)
        .map(|n| n as u32)
        .collect();
    Ok(Policy {
        policy: mode_name(mode),
        policy_nodes: nodes,
    })
}

fn cpu_set(cpus: &CpuList) -> io::Result<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain bits; all zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus.ids() {
        if c as usize >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "CPU {c} is beyond the {} a cpu_set_t holds",
                    libc::CPU_SETSIZE
                ),
            ));
        }
        // SAFETY: `c` is below CPU_SETSIZE, checked above.
        unsafe { libc::CPU_SET(c as usize, &mut set) };
    }
    Ok(set)
}

fn cpu_list(set: &libc::cpu_set_t) -> CpuList {
    CpuList::new(
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: `c` is below CPU_SETSIZE.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, set) })
            .map(|c| c as u32)
            .collect(),
    )
}

/// Pins thread `t` to `cpus` (sched_setaffinity of its task).
pub fn pin_thread(t: libc::pthread_t, cpus: &CpuList) -> io::Result<()> {
    let set = cpu_set(cpus)?;
    // SAFETY: `t` is a live thread (the caller has not joined it) and the
    // call reads one cpu_set_t of ours.
    let rc = unsafe { libc::pthread_setaffinity_np(t, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// The CPUs thread `t` may run on, as the kernel has them.
pub fn thread_affinity(t: libc::pthread_t) -> io::Result<CpuList> {
    // SAFETY: an empty set, filled by the kernel below.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a live thread (the caller has not joined it) and the
    // call writes one cpu_set_t of ours.
    let rc = unsafe { libc::pthread_getaffinity_np(t, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(cpu_list(&set))
}

#[cfg(test)]
mod tests {
    use super::super::backing::{Backing, BackingConfig, Thp};
    use super::super::numa::NodeRam;
    use super::super::{accounting, GuestRam};
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    const MIB: u64 = 1 << 20;

    #[test]
    fn bound_regions_read_back_bind_and_others_default() {
        for backing in [Backing::Anon, Backing::Memfd] {
            let cfg = BackingConfig {
                backing,
                thp: Thp::Off,
            };
            let nodes = [
                NodeRam {
                    size: 4 * MIB,
                    host_node: Some(0),
                },
                NodeRam {
                    size: 2 * MIB,
                    host_node: None,
                },
            ];
            let ram = GuestRam::with_nodes(&nodes, cfg, false).unwrap();
            for gpa in (0..6 * MIB).step_by(4096) {
                ram.memory().write_obj(1u8, GuestAddress(gpa)).unwrap();
            }
            let p = accounting::measure(&ram, None).regions;
            assert_eq!(p.len(), 2);
            assert_eq!(p[0].policy.as_deref(), Some("bind"), "{backing:?}");
            assert_eq!(p[0].policy_nodes, vec![0], "{backing:?}");
            assert_eq!(p[0].region.node, 0);
            assert_eq!(p[0].region.host_node, Some(0));
            assert_eq!(p[1].policy.as_deref(), Some("default"), "{backing:?}");
            assert!(p[1].policy_nodes.is_empty(), "{backing:?}");
            assert_eq!(p[1].region.node, 1);
            assert_eq!(p[1].region.host_node, None);
            let r = p[0].residency.as_ref().unwrap();
            assert_eq!(r.sampled, 1024);
            assert_eq!(r.resident, 1024, "{backing:?}: all touched");
            assert_eq!(
                r.nodes,
                vec![accounting::NodePages {
                    node: 0,
                    pages: 1024
                }]
            );
        }
    }

    #[test]
    fn a_node_beyond_the_mask_is_refused() {
        let ram = GuestRam::new(16 * MIB).unwrap();
        let m = &ram.mappings[0];
        assert!(bind(m, NODEMASK_BITS as u32).is_err());
        assert_eq!(policy_of(m).unwrap().policy, "default");
    }

    #[test]
    fn pinning_reads_back() {
        let online = super::super::numa::HostNuma::read().unwrap().online;
        let last = CpuList::new(vec![*online.ids().last().unwrap()]);
        let want = last.clone();
        let got = std::thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() };
            pin_thread(me, &last).unwrap();
            thread_affinity(me).unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(got, want);
        assert_eq!(
            mode_name(libc::MPOL_BIND | libc::MPOL_F_STATIC_NODES),
            "bind"
        );
    }
}
