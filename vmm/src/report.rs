//! The JSON report: host-side phase timings and memory figures merged with
//! the guest's own JSON lines, plus the short human summary.
use crate::clock::Origin;
use crate::memory::accounting::MemoryAccounting;
use crate::memory::layout::E820Entry;
use crate::memory::numa::NodeReport;
use serde::Serialize;
use serde_json::Value;

/// How the run ended; `code()` is memvisor's process exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitKind {
    /// The guest wrote 0 to the exit port.
    Success,
    /// The guest wrote another value (its workload failed).
    Failure,
    /// Exception, panic, triple fault, emulation failure, failed KVM_RUN.
    Crash,
    Timeout,
    /// A signal (SIGINT, SIGTERM, SIGHUP) ended the run.
    Interrupted,
    /// The guest reset the machine (i8042 reset, how Linux reboots).
    Reset,
}

impl ExitKind {
    pub fn code(self) -> i32 {
        match self {
            ExitKind::Success => 0,
            ExitKind::Failure => 1,
            ExitKind::Crash => 3,
            ExitKind::Timeout => 4,
            ExitKind::Interrupted => 130,
            ExitKind::Reset => 0,
        }
    }
}

/// Microseconds from the clock origin (see `clock`) to each milestone.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Phases {
    pub vmm_main: Option<f64>,
    pub kvm_opened: Option<f64>,
    pub vm_created: Option<f64>,
    pub memory_ready: Option<f64>,
    pub kernel_loaded: Option<f64>,
    pub vcpus_created: Option<f64>,
    pub first_kvm_run: Option<f64>,
    pub first_guest_instruction: Option<f64>,
    pub guest_ready: Option<f64>,
    pub workload_done: Option<f64>,
    pub guest_exit: Option<f64>,
    pub teardown_done: Option<f64>,
    pub vm_closed: Option<f64>,
}

impl Phases {
    /// (name, µs) in boot order, present ones only.
    pub fn list(&self) -> Vec<(&'static str, f64)> {
        [
            ("vmm_main", self.vmm_main),
            ("kvm_opened", self.kvm_opened),
            ("vm_created", self.vm_created),
            ("memory_ready", self.memory_ready),
            ("kernel_loaded", self.kernel_loaded),
            ("vcpus_created", self.vcpus_created),
            ("first_kvm_run", self.first_kvm_run),
            ("first_guest_instruction", self.first_guest_instruction),
            ("guest_ready", self.guest_ready),
            ("workload_done", self.workload_done),
            ("guest_exit", self.guest_exit),
            ("teardown_done", self.teardown_done),
            ("vm_closed", self.vm_closed),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.map(|v| (n, v)))
        .collect()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ConfigReport {
    pub kernel: String,
    pub kernel_format: Option<crate::boot::KernelFormat>,
    pub cmdline: String,
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub timeout_s: f64,
    pub record_budget_bytes: u64,
    pub irqchip: crate::vstate::vm::IrqchipMode,
    pub backing: crate::memory::backing::Backing,
    pub thp: crate::memory::backing::Thp,
    pub prefault: bool,
    /// `--numa`'s nodes (null without it).
    pub numa: Option<Vec<NodeReport>>,
    pub dirty_log: crate::memory::dirty::DirtyMode,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MemoryReport {
    pub e820: Vec<E820Entry>,
    pub e820_ram_bytes: u64,
    pub e820_ram_pages: u64,
    /// With `--prefault`: how guest RAM was populated, and how long it took.
    pub prefault_method: Option<crate::vstate::vm::PrefaultMethod>,
    pub prefault_us: Option<f64>,
    /// With `--dirty-log`: what was written, and the `workload=dirty` check.
    pub dirty: Option<crate::memory::dirty::DirtyReport>,
    /// The RAM `regions` with what each costs the host, KVM's statistics,
    /// discard/collapse counters and the process's figures: what
    /// `GET /vm/memory` serves, at guest exit.
    #[serde(flatten)]
    pub accounting: MemoryAccounting,
}

#[derive(Clone, Debug, Serialize)]
pub struct VcpuReport {
    pub id: u32,
    pub node: u32,
    /// The host CPUs its thread may run on, as a cpulist (`0-1`); null if
    /// it could not be read.
    pub affinity: Option<String>,
}

impl VcpuReport {
    /// Reads each live vCPU thread's affinity back from the kernel.
    pub fn of(
        vcpus: &[crate::vstate::vcpu::VcpuHandle],
        numa: Option<&crate::memory::numa::NumaConfig>,
    ) -> Vec<Self> {
        vcpus
            .iter()
            .map(|h| VcpuReport {
                id: h.id,
                node: numa.and_then(|n| n.node_of_vcpu(h.id)).unwrap_or(0),
                affinity: match h.affinity() {
                    Some(Ok(cpus)) => Some(cpus.to_string()),
                    Some(Err(e)) => {
                        log::warn!("reading vCPU {} affinity: {e}", h.id);
                        None
                    }
                    None => None,
                },
            })
            .collect()
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ExitCounts {
    pub io: u64,
    pub mmio: u64,
    pub records: u64,
    pub bad_records: u64,
    /// Times a vCPU was pulled out of KVM_RUN (pause, stop).
    pub kicks: u64,
    /// Port and MMIO accesses no device claimed.
    pub unclaimed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExitReport {
    pub status: ExitKind,
    pub code: i32,
    /// The value the guest wrote to the exit port, if it did.
    pub guest_status: Option<u32>,
    pub reason: String,
    pub vcpu: Option<u32>,
    pub rip: Option<u64>,
    /// The signal that ended the run (SIGINT, SIGTERM, SIGHUP).
    pub signal: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub memvisor_version: &'static str,
    pub config: ConfigReport,
    pub clock_origin: Origin,
    /// The guest's TSC frequency, to read cycle counts the guest reports.
    pub tsc_khz: Option<u32>,
    pub phases_us: Phases,
    pub memory: MemoryReport,
    /// Each vCPU's guest node and host CPU affinity, read back at the end.
    pub vcpus: Vec<VcpuReport>,
    pub exits: ExitCounts,
    /// The virtio-balloon (`--balloon`, `PUT /balloon`), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balloon: Option<crate::devices::virtio::balloon::BalloonReport>,
    /// The 2D page-walk model's answers to the guest's RECORD_PTWALK
    /// requests (`guest::ptwalk`), in arrival order, and the requests
    /// refused or cut, by reason.
    pub ptwalk: Vec<crate::guest::ptwalk::PtWalkResult>,
    pub ptwalk_rejected: crate::guest::ptwalk::PtWalkRejected,
    /// Guest records (JSON lines and console text) beyond the budget or the
    /// event queue's limit, and their bytes.
    pub dropped_records: u64,
    pub dropped_bytes: u64,
    pub exit: ExitReport,
    /// The guest's JSON lines in arrival order, each with `vcpu` and `at_us`.
    pub guest: Vec<Value>,
    /// Problems the VMM saw in guest input (bad records), rate-limited.
    pub warnings: Vec<String>,
}

impl Report {
    /// The report as pretty JSON, safe to print on a terminal: serde_json
    /// escapes C0 controls but leaves DEL and the C1 controls (U+0080 to
    /// U+009F, which some terminals obey) raw inside strings, and guest
    /// text reaches those strings. Escaping them keeps the JSON equal.
    pub fn to_json(&self) -> String {
        escape_controls(&serde_json::to_string_pretty(self).expect("a report serialises"))
    }

    /// The first guest line with `"event": name`.
    pub fn guest_event(&self, name: &str) -> Option<&Value> {
        self.guest
            .iter()
            .find(|v| v.get("event").and_then(Value::as_str) == Some(name))
    }

    /// A few lines for humans; the JSON has everything.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let e = &self.exit;
        s += &format!(
            "memvisor: {} (exit {}): {}\n",
            e.status.word(),
            e.code,
            e.reason
        );
        let phases: Vec<String> = self
            .phases_us
            .list()
            .into_iter()
            .filter(|(n, _)| *n != "vmm_main")
            .map(|(n, us)| format!("{n} {:.2}", us / 1000.0))
            .collect();
        let origin = match self.clock_origin {
            Origin::Spawn => "spawn",
            Origin::Main => "main",
        };
        s += &format!("  phases (ms since {origin}): {}\n", phases.join(", "));
        let m = &self.memory;
        s += &format!(
            "  memory: {} MiB guest RAM ({}, THP {}), e820 {} pages; touched {:.1} MiB ({:.1} MiB THP, {:.1} MiB hugetlb); VMM overhead {:.2} MiB (VmRSS {:.1} MiB)\n",
            self.config.memory_bytes >> 20,
            self.config.backing.name(),
            if self.config.thp == crate::memory::backing::Thp::On { "on" } else { "off" },
            m.e820_ram_pages,
            mib(m.accounting.usage.guest_rss_bytes),
            mib(m.accounting.usage.guest_anon_huge_bytes),
            mib(m.accounting.usage.guest_hugetlb_bytes),
            mib(m.accounting.usage.vmm_overhead_bytes),
            mib(m.accounting.usage.vm_rss_bytes),
        );
        if let Some(d) = &m.dirty {
            s += &crate::memory::dirty::summary_line(d);
        }
        if let Some(r) = self.guest_event("ready") {
            s += &format!(
                "  guest ready: {} vCPUs, {} pages total, {} free, workload {}\n",
                r["vcpus"], r["total_pages"], r["free_pages"], r["workload"]
            );
            let n = &r["numa"];
            if n.is_object() {
                let why = n.get("reason").map_or(String::new(), |r| format!(" ({r})"));
                s += &format!(
                    "  guest NUMA: {} node(s) from {}{why}, distances {}\n",
                    n["nr_nodes"], n["source"], n["distance"]
                );
            }
        }
        if let Some(w) = self.guest_event("workload") {
            s += &format!("  workload {}: ok={}", w["name"], w["ok"]);
            if let Some(n) = w.get("pages_written") {
                s += &format!(
                    ", {n} pages written, {} verified, {} errors",
                    w["pages_verified"], w["errors"]
                );
            }
            if let Some(v) = w.get("vmstat") {
                s += &format!(
                    ", pgalloc {} pgfree {}, per-CPU hits {} refills {}",
                    v["pgalloc"], v["pgfree"], v["pcp_alloc_hit"], v["pcp_refill"]
                );
            }
            if let (Some(n), Some(b)) = (w.get("notifications"), w.get("batches")) {
                // The virtio target: with EVENT_IDX, at most one QueueNotify
                // exit per batch of requests.
                let (n, b) = (n.as_u64().unwrap_or(u64::MAX), b.as_u64().unwrap_or(0));
                s += &format!(
                    ", {} bytes in {} requests; {n} notifications for {b} batches \
                     (goal <= 1 per batch: {}), {} interrupts",
                    w["bytes"],
                    w["requests"],
                    crate::bench::verdict(n <= b),
                    w["interrupts"]
                );
            }
            s += "\n";
            if let Some(f) = w.get("fragmentation") {
                s += &format!(
                    "  fragmentation: {} of {} possible order-9 blocks free after freeing the movable pages \
                     (grouping by mobility {})\n",
                    f["free_order9_blocks"],
                    f["max_order9_blocks"],
                    if f["grouping_by_mobility"] == true { "on" } else { "off" }
                );
            }
        }
        let refused = self.ptwalk_rejected.refused();
        if !self.ptwalk.is_empty() || refused > 0 {
            s += &format!(
                "  ptwalk: {} requests answered ({} walks), {refused} refused\n",
                self.ptwalk.len(),
                self.ptwalk_rejected.walked
            );
        }
        if self.dropped_records > 0 {
            s += &format!(
                "  guest output dropped: {} records, {} bytes (budget {} bytes)\n",
                self.dropped_records, self.dropped_bytes, self.config.record_budget_bytes
            );
        }
        for w in &self.warnings {
            s += &format!("  warning: {w}\n");
        }
        // Guest text reaches several lines (workload names, warnings):
        // nothing but the line breaks may act on a terminal.
        s.chars()
            .flat_map(|c| {
                let raw = c == '\n' || !c.is_control();
                let (a, b) = if raw {
                    (Some(c), None)
                } else {
                    (None, Some(c.escape_unicode()))
                };
                a.into_iter().chain(b.into_iter().flatten())
            })
            .collect()
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

impl ExitKind {
    /// A few words for humans.
    pub fn word(self) -> &'static str {
        match self {
            ExitKind::Success => "guest succeeded",
            ExitKind::Failure => "guest reported failure",
            ExitKind::Crash => "guest crashed",
            ExitKind::Timeout => "timed out",
            ExitKind::Interrupted => "interrupted",
            ExitKind::Reset => "guest reset the machine",
        }
    }
}

/// Rewrites DEL and C1 characters in serialised JSON as `\u00XX` escapes.
/// Raw control characters can only stand inside JSON strings, where the
/// escape means the same character.
fn escape_controls(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if ('\u{7f}'..='\u{9f}').contains(&c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn c1_controls_in_guest_text_are_escaped_and_the_json_unchanged() {
        let v = serde_json::json!({"reason": "a\u{9b}2J\u{7f}b\u{1b}[31m\u{a0}"});
        let raw = serde_json::to_string_pretty(&v).unwrap();
        let safe = escape_controls(&raw);
        assert!(
            !safe
                .chars()
                .any(|c| ('\u{7f}'..='\u{9f}').contains(&c) || c == '\u{1b}'),
            "{safe}"
        );
        assert!(safe.contains("\\u009b") && safe.contains("\\u007f") && safe.contains('\u{a0}'));
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, v);
    }

    pub(crate) fn sample() -> Report {
        Report {
            memvisor_version: "test",
            config: ConfigReport {
                kernel: "bundled".into(),
                kernel_format: None,
                cmdline: String::new(),
                vcpus: 1,
                memory_bytes: 1 << 28,
                timeout_s: 1.0,
                record_budget_bytes: 1 << 22,
                irqchip: crate::vstate::vm::IrqchipMode::Split,
                backing: Default::default(),
                thp: Default::default(),
                prefault: false,
                numa: None,
                dirty_log: Default::default(),
            },
            clock_origin: Origin::Main,
            tsc_khz: None,
            phases_us: Phases::default(),
            memory: MemoryReport::default(),
            vcpus: Vec::new(),
            exits: ExitCounts::default(),
            balloon: None,
            ptwalk: Vec::new(),
            ptwalk_rejected: Default::default(),
            dropped_records: 0,
            dropped_bytes: 0,
            exit: ExitReport {
                status: ExitKind::Success,
                code: 0,
                guest_status: None,
                reason: "ok".into(),
                vcpu: None,
                rip: None,
                signal: None,
            },
            guest: Vec::new(),
            warnings: Vec::new(),
        }
    }

    #[test]
    fn the_summary_escapes_guest_controls_but_keeps_line_breaks() {
        let mut r = sample();
        r.warnings.push("evil\u{1b}]0;title\u{7}\u{9b}2J".into());
        let s = r.summary();
        assert!(s.lines().count() >= 2, "{s}");
        assert!(!s.chars().any(|c| c != '\n' && c.is_control()), "{s:?}");
        assert!(s.contains("\\u{1b}]0;title"), "{s}");
    }

    #[test]
    fn exit_codes_are_the_documented_ones() {
        let codes: Vec<i32> = [
            ExitKind::Success,
            ExitKind::Failure,
            ExitKind::Crash,
            ExitKind::Timeout,
            ExitKind::Interrupted,
            ExitKind::Reset,
        ]
        .iter()
        .map(|k| k.code())
        .collect();
        assert_eq!(codes, [0, 1, 3, 4, 130, 0]);
    }

    #[test]
    fn phases_list_in_boot_order() {
        let p = Phases {
            guest_ready: Some(3.0),
            vm_created: Some(1.0),
            ..Default::default()
        };
        assert_eq!(p.list(), vec![("vm_created", 1.0), ("guest_ready", 3.0)]);
    }
}
