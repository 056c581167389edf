//! API requests applied to the VMM, on the event-loop thread (the only one
//! that touches the VM), as Firecracker's `rpc_interface.rs` does: the API
//! thread parses, this file acts.
//!
//! Pre-boot requests edit the [`VmResources`]; a whole new description is
//! validated before it replaces the old one, so a refused request changes
//! nothing. `InstanceStart` is answered only once the VM runs (or failed to
//! build), so a script's next request sees it started.
use crate::api::{
    ActionType, ApiMessage, ApiRequest, ApiResponse, BootSource, CpuTemplate, HugePages,
    InstanceInfo, MachineConfig, VmConfig, VmState,
};
use crate::memory::backing::{Backing, Thp};
use crate::memory::dirty::DirtyMode;
use crate::resources::{KernelSource, VmResources, MIB};
use crate::vmm::Vmm;
use std::time::Instant;

/// Firecracker's default instance id.
pub const INSTANCE_ID: &str = "anonymous-instance";

/// What the event loop must do after a request: usually nothing more.
pub enum Followup {
    None,
    /// Build and start the VM, then answer this message.
    Start(ApiMessage),
}

fn machine_config(r: &VmResources) -> MachineConfig {
    MachineConfig {
        vcpu_count: r.vcpus.min(u8::MAX as u32) as u8,
        mem_size_mib: r.memory / MIB,
        huge_pages: huge_pages(r.backing, r.thp),
        track_dirty_pages: r.dirty_log != DirtyMode::Off,
        ..MachineConfig::default()
    }
}

/// Firecracker's name for a backing: hugetlb memory is "2M", THP-advised
/// memory "Transparent", 4 KiB pages "None".
fn huge_pages(backing: Backing, thp: Thp) -> HugePages {
    match (backing.is_hugetlb(), thp) {
        (true, _) => HugePages::Hugetlbfs2M,
        (false, Thp::On) => HugePages::Transparent,
        (false, Thp::Off) => HugePages::None,
    }
}

/// The backing Firecracker's `huge_pages` asks for, keeping a memfd a memfd
/// (`--backing memfd` chose shared memory; only the page size changes).
/// "None" means 4 KiB pages as in Firecracker, so a script that omits the
/// field gets what it gets there, not this VMM's THP default.
fn backing_for(h: HugePages, now: Backing) -> (Backing, Thp) {
    match (h, now.is_memfd()) {
        (HugePages::None, false) => (Backing::Anon, Thp::Off),
        (HugePages::None, true) => (Backing::Memfd, Thp::Off),
        (HugePages::Transparent, false) => (Backing::Anon, Thp::On),
        (HugePages::Transparent, true) => (Backing::Memfd, Thp::On),
        (HugePages::Hugetlbfs2M, false) => (Backing::Hugetlbfs, Thp::On),
        (HugePages::Hugetlbfs2M, true) => (Backing::MemfdHugetlb, Thp::On),
    }
}

/// The resources a machine config describes, or why it is refused.
fn with_machine(r: &VmResources, m: &MachineConfig) -> Result<VmResources, String> {
    if m.smt {
        return Err("smt: simultaneous multithreading is not supported (valid: false)".into());
    }
    if !matches!(m.cpu_template, None | Some(CpuTemplate::NoTemplate)) {
        return Err("cpu_template: CPU templates are not supported (valid: \"None\")".into());
    }
    let mut next = r.clone();
    // Firecracker's dirty-page tracking is KVM's dirty log: the bitmap,
    // unless `--dirty-log ring` chose the ring already.
    next.dirty_log = match (m.track_dirty_pages, r.dirty_log) {
        (false, _) => DirtyMode::Off,
        (true, DirtyMode::Off) => DirtyMode::Bitmap,
        (true, mode) => mode,
    };
    (next.backing, next.thp) = backing_for(m.huge_pages, r.backing);
    crate::memory::backing::check_host(next.backing_config(), next.memory)
        .map_err(|e| format!("huge_pages {:?}: {e}", m.huge_pages))?;
    next.vcpus = m.vcpu_count as u32;
    next.memory = m
        .mem_size_mib
        .checked_mul(MIB)
        .ok_or_else(|| format!("mem_size_mib {}: too large", m.mem_size_mib))?;
    next.validate_static().map_err(|e| e.to_string())?;
    if next.vcpus == 0 {
        return Err("vcpu_count 0: at least 1 vCPU is needed".into());
    }
    Ok(next)
}

fn with_boot_source(r: &VmResources, b: &BootSource) -> Result<VmResources, String> {
    if b.initrd_path.is_some() {
        return Err(
            "initrd_path: initrds are not supported (the guest kernel boots without one)".into(),
        );
    }
    let path = std::path::PathBuf::from(&b.kernel_image_path);
    match crate::resources::check_kernel_file(&path, r.memory) {
        Err(e) => return Err(format!("kernel_image_path {}: {e}", b.kernel_image_path)),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(())) => {}
    }
    let mut next = r.clone();
    next.kernel = KernelSource::Path(path);
    if let Some(args) = &b.boot_args {
        next.cmdline = args.clone();
    }
    Ok(next)
}

impl Vmm {
    /// Applies one request; answers it unless the answer must wait.
    pub fn handle_api(&mut self, msg: ApiMessage) -> Followup {
        if let Err(refused) = msg.request.allowed_in(self.state()) {
            msg.respond(refused);
            return Followup::None;
        }
        log::debug!("API request {:?}", msg.request);
        let r = &self.resources;
        let answer = match &msg.request {
            ApiRequest::GetInstanceInfo => {
                ApiResponse::ok_json(&InstanceInfo::new(INSTANCE_ID, self.state()))
            }
            ApiRequest::GetMachineConfig => ApiResponse::ok_json(&machine_config(r)),
            ApiRequest::GetVmConfig => ApiResponse::ok_json(&VmConfig {
                boot_source: Some(BootSource {
                    kernel_image_path: match &r.kernel {
                        KernelSource::Bundled => "bundled".into(),
                        KernelSource::Path(p) => p.display().to_string(),
                    },
                    boot_args: Some(r.cmdline.clone()),
                    initrd_path: None,
                }),
                machine_config: machine_config(r),
                entropy: r.entropy,
            }),
            ApiRequest::PutMachineConfig(m) => self.replace(with_machine(r, m)),
            ApiRequest::PatchMachineConfig(u) => {
                let m = u.applied_to(&machine_config(r));
                self.replace(with_machine(r, &m))
            }
            ApiRequest::PutBootSource(b) => self.replace(with_boot_source(r, b)),
            ApiRequest::PutEntropy(e) => match e.validate() {
                Ok(()) => {
                    self.resources.entropy = Some(*e);
                    ApiResponse::no_content()
                }
                Err(err) => ApiResponse::bad_request(format!("rate_limiter: {err}")),
            },
            ApiRequest::PutBalloon(_)
            | ApiRequest::PatchBalloon(_)
            | ApiRequest::GetBalloon
            | ApiRequest::GetBalloonStats
            | ApiRequest::PatchBalloonStats(_) => self.balloon_request(&msg.request),
            ApiRequest::PatchVm(state) => {
                let t = Instant::now();
                let done = match state {
                    VmState::Paused => self.pause(),
                    VmState::Resumed => self.resume(),
                };
                match done {
                    Ok(replies) => {
                        log::debug!("{state:?} {} vCPUs in {:?}", replies.len(), t.elapsed());
                        ApiResponse::no_content()
                    }
                    Err(e) => ApiResponse::fault(500, e.to_string()),
                }
            }
            // allowed_in let it through: the VM is built.
            ApiRequest::GetVmMemory => match &self.built {
                Some(b) => ApiResponse::ok_json(&VmMemory {
                    accounting: b.vm.accounting(),
                    dirty: b.vm.dirty().map(|d| d.live_report()),
                }),
                None => ApiResponse::bad_request(crate::api::NOT_SUPPORTED_PRE_BOOT),
            },
            ApiRequest::Action(ActionType::InstanceStart) => return Followup::Start(msg),
            ApiRequest::Action(a) => ApiResponse::bad_request(format!(
                "{a:?} is not supported by memvisor (supported actions: InstanceStart)"
            )),
        };
        msg.respond(answer);
        Followup::None
    }

    /// The balloon's endpoints, with Firecracker's answers: pre-boot they
    /// edit the resources, afterwards they go to the device.
    fn balloon_request(&mut self, req: &ApiRequest) -> ApiResponse {
        use crate::devices::virtio::balloon::BalloonError;
        let bad = |e: BalloonError| ApiResponse::bad_request(e.to_string());
        if let ApiRequest::PutBalloon(cfg) = req {
            return match cfg.validate(self.resources.memory) {
                Ok(()) => {
                    self.resources.balloon = Some(*cfg);
                    ApiResponse::no_content()
                }
                Err(e) => bad(e),
            };
        }
        let dev = self.built.as_ref().and_then(|b| b.devices.balloon.clone());
        let Some(dev) = dev else {
            return match (req, self.resources.balloon) {
                (ApiRequest::GetBalloon, Some(cfg)) if self.built.is_none() => {
                    ApiResponse::ok_json(&cfg)
                }
                _ => bad(BalloonError::DeviceNotFound),
            };
        };
        let mut b = dev.lock().unwrap_or_else(|p| p.into_inner());
        let done = match req {
            ApiRequest::GetBalloon => return ApiResponse::ok_json(&b.config()),
            ApiRequest::GetBalloonStats if !b.stats_enabled() => Err(BalloonError::StatsNotFound),
            ApiRequest::GetBalloonStats => return ApiResponse::ok_json(&b.report()),
            ApiRequest::PatchBalloon(u) => b.update_target(u.amount_mib),
            ApiRequest::PatchBalloonStats(u) => b.update_stats_interval(u.stats_polling_interval_s),
            _ => Ok(()),
        };
        match done {
            Ok(()) => ApiResponse::no_content(),
            Err(e) => bad(e),
        }
    }

    fn replace(&mut self, next: Result<VmResources, String>) -> ApiResponse {
        match next {
            Ok(n) => {
                self.resources = n;
                ApiResponse::no_content()
            }
            Err(e) => ApiResponse::bad_request(e),
        }
    }
}

/// `GET /vm/memory`: the accounting, and with `--dirty-log` the dirty log
/// as of now, as the report's `memory` section has them.
#[derive(serde::Serialize)]
struct VmMemory {
    #[serde(flatten)]
    accounting: crate::memory::accounting::MemoryAccounting,
    dirty: Option<crate::memory::dirty::DirtyReport>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_names_the_backing_both_ways() {
        use Backing::*;
        for now in [Anon, Memfd, MemfdHugetlb, Hugetlbfs] {
            for h in [
                HugePages::None,
                HugePages::Transparent,
                HugePages::Hugetlbfs2M,
            ] {
                let (b, t) = backing_for(h, now);
                assert_eq!(huge_pages(b, t), h, "{h:?} from {now:?}");
                assert_eq!(b.is_memfd(), now.is_memfd(), "a memfd stays a memfd");
            }
        }
        assert_eq!(backing_for(HugePages::None, Anon), (Anon, Thp::Off));
        assert_eq!(
            backing_for(HugePages::Hugetlbfs2M, Anon),
            (Hugetlbfs, Thp::On)
        );
    }

    #[test]
    fn track_dirty_pages_is_the_dirty_log() {
        let mut r = VmResources::default();
        let mut m = machine_config(&r);
        assert!(!m.track_dirty_pages);
        m.track_dirty_pages = true;
        r = with_machine(&r, &m).unwrap();
        assert_eq!(r.dirty_log, DirtyMode::Bitmap);
        assert!(machine_config(&r).track_dirty_pages);
        r.dirty_log = DirtyMode::Ring;
        assert_eq!(with_machine(&r, &m).unwrap().dirty_log, DirtyMode::Ring);
        m.track_dirty_pages = false;
        assert_eq!(with_machine(&r, &m).unwrap().dirty_log, DirtyMode::Off);
    }

    #[test]
    fn machine_config_reports_the_backing_in_force() {
        let mut r = VmResources::default();
        assert_eq!(machine_config(&r).huge_pages, HugePages::Transparent);
        r.thp = Thp::Off;
        assert_eq!(machine_config(&r).huge_pages, HugePages::None);
        r.backing = Backing::Hugetlbfs;
        r.thp = Thp::On;
        assert_eq!(machine_config(&r).huge_pages, HugePages::Hugetlbfs2M);
    }
}
