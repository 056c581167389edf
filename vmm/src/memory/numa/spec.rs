//! Parsing one `--numa` spec and the CPU lists in it. Nothing here looks
//! at other nodes or the host: [`super::NumaConfig`] does that.
use super::{NumaError, LOCAL_DISTANCE, MAX_CPU_ID, MAX_DISTANCE};
use crate::resources::{parse_size, MEMORY_ALIGN};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

const KEYS: &str = "node, size, cpus, host-node, host-cpus, distance";

/// A set of CPU (or vCPU) numbers, sorted and without repeats, written as a
/// Linux cpulist (`0-3,8`) and serialised as a list of numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CpuList(Vec<u32>);

impl CpuList {
    pub fn new(mut ids: Vec<u32>) -> Self {
        ids.sort_unstable();
        ids.dedup();
        CpuList(ids)
    }

    /// Parses a cpulist (`0-3,8`, `5`); the empty string is the empty set
    /// (sysfs writes a CPU-less node's cpulist so).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut ids = Vec::new();
        for item in s.trim().split(',').filter(|i| !i.is_empty()) {
            let (a, b) = match item.split_once('-') {
                Some((a, b)) => (cpu_number(a)?, cpu_number(b)?),
                None => (cpu_number(item)?, cpu_number(item)?),
            };
            if a > b {
                return Err(format!("{item}: a range runs from low to high (e.g. 0-3)"));
            }
            ids.extend(a..=b);
        }
        Ok(CpuList::new(ids))
    }

    pub fn ids(&self) -> &[u32] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, id: u32) -> bool {
        self.0.binary_search(&id).is_ok()
    }
}

fn cpu_number(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if n <= MAX_CPU_ID => Ok(n),
        _ => Err(format!(
            "{s}: not a CPU number (valid: 0 to {MAX_CPU_ID}, as a list like 0-3,8)"
        )),
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut i = 0;
        while i < self.0.len() {
            let start = self.0[i];
            let mut end = start;
            while i + 1 < self.0.len() && self.0[i + 1] == end + 1 {
                i += 1;
                end += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
            i += 1;
        }
        Ok(())
    }
}

/// One `--numa` spec, parsed but not yet checked against the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumaNode {
    /// The spec as given, for messages and to pass it on (`bench boot`).
    pub spec: String,
    pub id: u32,
    pub size: u64,
    /// The guest's vCPUs on this node.
    pub cpus: CpuList,
    pub host_node: u32,
    /// Host CPUs to pin this node's vCPUs to, instead of the host node's.
    pub host_cpus: Option<CpuList>,
    /// `distance=N@D` as given: node N is at distance D.
    pub distances: BTreeMap<u32, u8>,
}

impl NumaNode {
    /// Parses `node=0,size=256M,cpus=0-1,host-node=0[,host-cpus=0-3][,distance=1@20]`.
    /// A part without `=` continues the list before it, so `cpus=0,2-3` and
    /// `distance=1@20,2@30` read as written; `cpus`, `host-cpus` and
    /// `distance` may also repeat (their values join).
    pub fn parse(spec: &str) -> Result<Self, NumaError> {
        let bad = |part: &str, why: String| NumaError::Spec {
            spec: spec.to_string(),
            part: part.to_string(),
            why,
        };
        let (mut id, mut size, mut host_node) = (None, None, None);
        let mut cpus: Option<Vec<u32>> = None;
        let mut host_cpus: Option<Vec<u32>> = None;
        let mut distances = BTreeMap::new();
        let mut list_key: Option<&str> = None;
        for part in spec.split(',') {
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k.trim(), v.trim()),
                None => match list_key {
                    Some(k) if !part.trim().is_empty() => (k, part.trim()),
                    _ => return Err(bad(part, format!("expected key=value (keys: {KEYS})"))),
                },
            };
            list_key = None;
            let once = |slot: bool| {
                if slot {
                    Err(bad(part, format!("`{key}=` is given twice")))
                } else {
                    Ok(())
                }
            };
            match key {
                "node" => {
                    once(id.is_some())?;
                    id = Some(value.parse::<u32>().map_err(|_| {
                        bad(part, "the node id is a number from 0 (e.g. node=0)".into())
                    })?);
                }
                "size" => {
                    once(size.is_some())?;
                    let s = parse_size(value).map_err(|e| bad(part, e.to_string()))?;
                    if s == 0 || !s.is_multiple_of(MEMORY_ALIGN) {
                        return Err(bad(
                            part,
                            "a node's size is a positive multiple of 2M (guest RAM is mapped in 2 MiB pages), e.g. size=128M".into(),
                        ));
                    }
                    size = Some(s);
                }
                "host-node" => {
                    once(host_node.is_some())?;
                    host_node = Some(value.parse::<u32>().map_err(|_| {
                        bad(
                            part,
                            "a host node number, as in /sys/devices/system/node/nodeN".into(),
                        )
                    })?);
                }
                "cpus" | "host-cpus" => {
                    let list = CpuList::parse(value).map_err(|e| bad(part, e))?;
                    let slot = if key == "cpus" {
                        &mut cpus
                    } else {
                        &mut host_cpus
                    };
                    slot.get_or_insert_with(Vec::new).extend(list.ids());
                    list_key = Some(if key == "cpus" { "cpus" } else { "host-cpus" });
                }
                "distance" => {
                    let (n, d) = parse_distance(value).map_err(|e| bad(part, e))?;
                    if distances.insert(n, d).is_some() {
                        return Err(bad(
                            part,
                            format!("the distance to node {n} is given twice"),
                        ));
                    }
                    list_key = Some("distance");
                }
                _ => return Err(bad(part, format!("unknown key (valid keys: {KEYS})"))),
            }
        }
        let missing = |k: &str| {
            bad(
                spec,
                format!("no `{k}=`: a node needs node=, size=, cpus= and host-node="),
            )
        };
        let id = id.ok_or_else(|| missing("node"))?;
        let cpus = CpuList::new(cpus.ok_or_else(|| missing("cpus"))?);
        if cpus.is_empty() {
            return Err(bad(
                "cpus=",
                "a node needs at least one vCPU (e.g. cpus=0)".into(),
            ));
        }
        let host_cpus = host_cpus.map(CpuList::new);
        if host_cpus.as_ref().is_some_and(CpuList::is_empty) {
            return Err(bad("host-cpus=", "an empty set of host CPUs pins to nothing; give CPUs (e.g. host-cpus=0-3) or leave host-cpus out".into()));
        }
        for (&n, &d) in &distances {
            let ok = if n == id {
                d == LOCAL_DISTANCE
            } else {
                (LOCAL_DISTANCE + 1..=MAX_DISTANCE).contains(&d)
            };
            if !ok {
                return Err(bad(
                    &format!("distance={n}@{d}"),
                    format!(
                        "a node is at distance {LOCAL_DISTANCE} from itself and {} to {MAX_DISTANCE} from another node",
                        LOCAL_DISTANCE + 1
                    ),
                ));
            }
        }
        Ok(NumaNode {
            spec: spec.to_string(),
            id,
            size: size.ok_or_else(|| missing("size"))?,
            cpus,
            host_node: host_node.ok_or_else(|| missing("host-node"))?,
            host_cpus,
            distances,
        })
    }
}

/// `N@D`: node N, distance D.
fn parse_distance(v: &str) -> Result<(u32, u8), String> {
    let err = || {
        format!(
            "expected NODE@DISTANCE, e.g. distance=1@20 (distance {} to {MAX_DISTANCE})",
            LOCAL_DISTANCE + 1
        )
    };
    let (n, d) = v.split_once('@').ok_or_else(err)?;
    let n = n.trim().parse::<u32>().map_err(|_| err())?;
    let d = d.trim().parse::<u8>().map_err(|_| err())?;
    Ok((n, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    const M: u64 = 1 << 20;

    fn node(spec: &str) -> NumaNode {
        NumaNode::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"))
    }

    fn spec_err(spec: &str) -> String {
        match NumaNode::parse(spec) {
            Err(e @ NumaError::Spec { .. }) => e.to_string(),
            other => panic!("{spec}: expected a spec error, got {other:?}"),
        }
    }

    #[test]
    fn cpulists_parse_and_print_as_linux_does() {
        let l = CpuList::parse("3,0-1,8-10,2").unwrap();
        assert_eq!(l.ids(), &[0, 1, 2, 3, 8, 9, 10]);
        assert_eq!(l.to_string(), "0-3,8-10");
        assert_eq!(CpuList::parse("\n").unwrap(), CpuList::default());
        assert_eq!(CpuList::parse("5").unwrap().to_string(), "5");
        for bad in ["3-1", "a", "0-", "-1", "0-8192", "4294967295"] {
            assert!(CpuList::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_full_spec_parses() {
        let n = node("node=1,size=256M,cpus=0-1,3,host-node=0,host-cpus=0-3,distance=0@21,2@30");
        assert_eq!(n.id, 1);
        assert_eq!(n.size, 256 * M);
        assert_eq!(n.cpus.ids(), &[0, 1, 3]);
        assert_eq!(n.host_node, 0);
        assert_eq!(n.host_cpus.unwrap().ids(), &[0, 1, 2, 3]);
        assert_eq!(n.distances, BTreeMap::from([(0, 21), (2, 30)]));
        // Repeated list keys join; a distance to itself of 10 is allowed.
        let n = node("cpus=2,node=0,size=2M,host-node=0,cpus=0,distance=0@10");
        assert_eq!(n.cpus.ids(), &[0, 2]);
    }

    #[test]
    fn bad_specs_name_the_bad_part_and_what_is_valid() {
        let cases = [
            ("node=0,size=256M,cpus=0", "no `host-node=`"),
            ("size=256M,cpus=0,host-node=0", "no `node=`"),
            ("node=0,cpus=0,host-node=0", "no `size=`"),
            ("node=0,size=256M,host-node=0", "no `cpus=`"),
            ("node=x,size=2M,cpus=0,host-node=0", "`node=x`"),
            (
                "node=0,size=3M,cpus=0,host-node=0",
                "`size=3M`: a node's size is a positive multiple of 2M",
            ),
            ("node=0,size=0,cpus=0,host-node=0", "`size=0`"),
            ("node=0,size=12X,cpus=0,host-node=0", "`size=12X`"),
            ("node=0,size=2M,cpus=1-0,host-node=0", "`cpus=1-0`"),
            ("node=0,size=2M,cpus=0,host-node=-1", "`host-node=-1`"),
            (
                "node=0,size=2M,cpus=0,host-node=0,host-cpus=x",
                "`host-cpus=x`",
            ),
            (
                "node=0,size=2M,cpus=0,host-node=0,colour=red",
                "unknown key (valid keys: node, size",
            ),
            (
                "node=0,node=1,size=2M,cpus=0,host-node=0",
                "`node=1`: `node=` is given twice",
            ),
            (
                "node=0,size=2M,cpus=0,host-node=0,distance=1",
                "expected NODE@DISTANCE",
            ),
            (
                "node=0,size=2M,cpus=0,host-node=0,distance=1@10",
                "`distance=1@10`: a node is at distance 10 from itself and 11 to 254",
            ),
            (
                "node=0,size=2M,cpus=0,host-node=0,distance=1@255",
                "`distance=1@255`",
            ),
            (
                "node=0,size=2M,cpus=0,host-node=0,distance=1@300",
                "`distance=1@300`",
            ),
            (
                "node=0,size=2M,cpus=0,host-node=0,distance=0@20",
                "`distance=0@20`",
            ),
            (
                "node=0,size=2M,cpus=0,host-node=0,distance=1@20,1@30",
                "distance to node 1 is given twice",
            ),
            ("node=0,size=2M,cpus=0,host-node=0,,", "expected key=value"),
            ("", "expected key=value"),
        ];
        for (spec, want) in cases {
            let m = spec_err(spec);
            assert!(m.contains(want), "{spec}: {m:?} lacks {want:?}");
            assert!(m.starts_with(&format!("--numa {spec}: ")), "{m}");
        }
    }
}
