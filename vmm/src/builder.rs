//! Ordering only: resources → KVM → VM and RAM → interrupt controllers →
//! devices → kernel and boot tables → vCPUs. The one place that knows the
//! order, and why each step comes where it does.
use crate::boot::acpi::{self, AcpiError, AcpiNode};
use crate::boot::{self, pagetables, params, regs, BootError, KernelFormat};
use crate::clock::{now_ns, since_origin_us};
use crate::devices::console::Console;
use crate::devices::manager::{DeviceError, DeviceManager};
use crate::firmware;
use crate::guest::events::VmEvents;
use crate::memory::layout::{e820_map, E820Entry, CMDLINE_MAX};
use crate::report::Phases;
use crate::resources::{self, ConfigError, HostLimits, KernelSource, VmResources};
use crate::vstate::kvm::{self, KvmError};
use crate::vstate::vcpu::{self, BootState, ExitCounters, VcpuContext, VcpuError, VcpuHandle};
use crate::vstate::vm::{IrqchipMode, PrefaultMethod, Vm, VmError};
use linux_loader::cmdline::Cmdline;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything that can stop a VM from being set up. All of them are the
/// user's input or the host's state, reported with exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("cannot read kernel {path}: {source}")]
    KernelRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Devices(#[from] DeviceError),
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Backing(#[from] crate::memory::backing::BackingError),
    #[error("{what}: {source}")]
    Host {
        what: &'static str,
        source: std::io::Error,
    },
}

/// A built VM, ready to run. Field order is teardown order: vCPU threads
/// stop first, then devices go, then the VM fd and its RAM.
pub struct BuiltVm {
    pub vcpus: Vec<VcpuHandle>,
    pub devices: DeviceManager,
    pub vm: Vm,
    pub counters: Arc<ExitCounters>,
    pub kernel_format: KernelFormat,
    pub kernel_name: String,
    pub cmdline: String,
    pub e820: Vec<E820Entry>,
    pub tsc_khz: Option<u32>,
    /// With `--prefault`: how, and how long it took (µs).
    pub prefault: Option<(PrefaultMethod, f64)>,
}

pub fn kernel_name(k: &KernelSource) -> String {
    match k {
        KernelSource::Bundled => "bundled".into(),
        KernelSource::Path(p) => p.display().to_string(),
    }
}

fn mark(p: &mut Option<f64>) {
    *p = Some(since_origin_us(now_ns()));
}

/// Builds the VM `res` describes and starts its vCPUs.
pub fn build(
    res: &VmResources,
    console: Console,
    events: &Arc<VmEvents>,
    phases: &mut Phases,
) -> Result<BuiltVm, BuildError> {
    let host_err = |what| move |source| BuildError::Host { what, source };
    let kvm = kvm::open_kvm(&kvm::kvm_device_path())?;
    let host = HostLimits {
        max_vcpus: kvm::max_vcpus(&kvm),
        mem_total: resources::host_mem_total().map_err(host_err("reading /proc/meminfo"))?,
    };
    res.validate(&host)?;
    // Host memory facts (shared-memory THP, the hugetlb pool) before
    // anything is mapped, so a refusal names them and costs nothing.
    crate::memory::backing::check_host(res.backing_config(), res.memory)?;
    // Host nodes and CPUs too; the answer is where each guest node's vCPU
    // threads run.
    let pins = match &res.numa {
        Some(n) => Some(n.check_this_host(res.backing).map_err(ConfigError::from)?),
        None => None,
    };
    let what = kernel_name(&res.kernel);
    // A kernel read from disk is needed only until it is in guest RAM.
    let mut owned = Vec::new();
    let image: &[u8] = match &res.kernel {
        KernelSource::Bundled => firmware::BUNDLED,
        KernelSource::Path(p) => {
            let read_err = |source| BuildError::KernelRead {
                path: p.clone(),
                source,
            };
            owned = resources::read_kernel_file(p, res.memory).map_err(read_err)??;
            &owned
        }
    };
    boot::detect_format(image, &what)?;
    mark(&mut phases.kvm_opened);
    log::debug!(
        "KVM opened; building a VM of {} bytes, {} vCPUs",
        res.memory,
        res.vcpus
    );

    // Memslots before the irqchip: the first memslot costs ~4.8 ms once an
    // in-kernel irqchip exists on the hosts measured (HOST_FACTS).
    let vm = Vm::new(&kvm, &res.ram_plan(), res.backing_config(), res.dirty_log)?;
    mark(&mut phases.vm_created);
    let irqchip = res.irqchip();
    vm.add_interrupt_controllers(irqchip)?;
    mark(&mut phases.memory_ready);

    // Devices need the irqchip (irqfds) and add their command-line tokens,
    // so they come before the boot parameters are written.
    let mut devices = DeviceManager::new()?;
    if irqchip == IrqchipMode::Split {
        devices.add_ioapic(&vm.fd)?;
    }
    devices.add_legacy(&vm.fd, vm.memory(), events, console, vm.dirty().cloned())?;
    if let Some(results) = &devices.results {
        let walker = crate::guest::ptwalk::PtWalker::for_vm(
            vm.memory().clone(),
            vm.ram().regions().to_vec(),
            res.numa.as_ref(),
            res.vcpus,
            pins.clone(),
        );
        let _ = results.ptwalk.set(Arc::new(walker));
    }
    let mut cl = Cmdline::new(CMDLINE_MAX).map_err(|e| DeviceError::Cmdline(e.to_string()))?;
    cl.insert_str(&res.cmdline)
        .map_err(|e| DeviceError::Cmdline(format!("{e} ({} bytes)", res.cmdline.len())))?;
    if let Some(cfg) = &res.entropy {
        devices.add_entropy(cfg, &vm.fd, vm.memory(), &mut cl)?;
    }
    if let Some(cfg) = &res.balloon {
        devices.add_balloon(cfg, &vm.fd, vm.shared_ram(), &mut cl)?;
    }
    let cmdline = cl
        .as_cstring()
        .map_err(|e| DeviceError::Cmdline(e.to_string()))?
        .into_string()
        .map_err(|e| DeviceError::Cmdline(e.to_string()))?;
    log::debug!("devices on the bus; kernel command line: {cmdline}");

    let mem = vm.memory();
    let kernel = boot::load_kernel(mem, vm.ram().end(), image, &what)?;
    if res.kernel == KernelSource::Bundled {
        firmware::release_bundled_pages();
    }
    drop(owned);
    regs::write_boot_tables(mem)?;
    let cr3 = pagetables::build_identity_map(mem, vm.ram().end())?;
    let e820 = e820_map(res.memory);
    // SRAT and SLIT: `--numa`'s nodes (RAM ranges from the same layout as
    // the memslots), or one node holding all RAM and every vCPU.
    let topology = res.guest_topology();
    let nodes: Vec<AcpiNode> = topology
        .nodes
        .iter()
        .map(|n| AcpiNode {
            ram: &n.ram,
            vcpus: &n.vcpus,
        })
        .collect();
    let rsdp = acpi::write_tables(mem, res.vcpus, &nodes, &topology.distance)?;
    let zero_page = params::write_boot_params(mem, &kernel, &cmdline, &e820, rsdp)?;
    mark(&mut phases.kernel_loaded);
    log::debug!(
        "kernel {what} loaded ({:?}), entry {:#x}",
        kernel.format,
        kernel.entry
    );

    let cpuid = kvm::supported_cpuid(&kvm)?;
    let boot_state = BootState {
        entry: kernel.entry,
        boot_params: zero_page,
        cr3,
        smp_entry: kernel.smp_entry,
        count: res.vcpus,
    };
    let fds = (0..res.vcpus)
        .map(|id| vcpu::create_vcpu(&vm.fd, id, &cpuid, &boot_state))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(d) = vm.dirty() {
        for fd in &fds {
            d.add_vcpu(fd).map_err(VmError::from)?;
        }
    }
    mark(&mut phases.vcpus_created);
    // KVM_PRE_FAULT_MEMORY is a vCPU ioctl: prefault once one exists.
    let prefault = match (res.prefault, fds.first()) {
        (true, Some(vcpu)) => {
            let t = now_ns();
            let method = vm.prefault(vcpu)?;
            Some((method, now_ns().saturating_sub(t) as f64 / 1000.0))
        }
        _ => None,
    };
    let tsc_khz = fds.first().and_then(|v| v.get_tsc_khz().ok());

    vcpu::install_kick_handler().map_err(host_err("installing the vCPU kick handler"))?;
    let counters = Arc::new(ExitCounters::default());
    let ctx = Arc::new(VcpuContext {
        bus: devices.bus(),
        events: events.clone(),
        counters: counters.clone(),
        dirty: vm.dirty().cloned(),
    });
    let mut vcpus = Vec::with_capacity(fds.len());
    for (id, fd) in fds.into_iter().enumerate() {
        // On failure the handles spawned so far stop and join on drop.
        let pin = pins.as_ref().zip(res.numa.as_ref()).and_then(|(p, n)| {
            n.node_of_vcpu(id as u32)
                .and_then(|node| p.get(node as usize).cloned())
        });
        let h = VcpuHandle::spawn(fd, id as u32, ctx.clone(), pin)
            .map_err(host_err("spawning a vCPU thread"))?;
        vcpus.push(h);
    }
    log::debug!("{} vCPU threads running", vcpus.len());
    Ok(BuiltVm {
        vcpus,
        devices,
        vm,
        counters,
        kernel_format: kernel.format,
        kernel_name: what,
        cmdline,
        e820,
        tsc_khz,
        prefault,
    })
}
