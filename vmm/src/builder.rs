//! The one place that wires a VM together and runs it to the end:
//! KVM → VM → memory → kernel → vCPUs → devices, then the event loop.
use crate::boot::{self, pagetables, params, regs, BootError};
use crate::clock::{self, now_ns, since_origin_us};
use crate::config::{self, ConfigError, HostLimits, KernelSource, VmConfig};
use crate::devices::console::Console;
use crate::devices::results::RecordKind;
use crate::devices::serial::{SerialDevice, COM1_IRQ};
use crate::memory::layout::{e820_map, e820_ram_bytes, e820_ram_pages};
use crate::memory::{rss, GuestRam, MemoryError};
use crate::report::{ConfigReport, ExitCounts, ExitKind, ExitReport, MemoryReport, Phases, Report};
use crate::vstate::vcpu::{self, BootState, VcpuError, VcpuShared, VcpuThread, VmEvent};
use crate::vstate::vm::{self, Vm, VmError};
use crate::{abi, firmware};
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

/// Everything that can stop a VM from being set up. All of them are the
/// user's input or the host's state, reported with exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Kvm(#[from] VmError),
    #[error("cannot read kernel {path}: {source}")]
    KernelRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("{what}: {source}")]
    Host {
        what: &'static str,
        source: std::io::Error,
    },
}

const MAX_CPUID_ENTRIES: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;
/// Upper bound on guest lines kept in the report.
const MAX_GUEST_LINES: usize = 10_000;
const POLL: Duration = Duration::from_millis(20);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes Ctrl-C end the VM cleanly (exit status 130) instead of killing us.
pub fn install_sigint_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGINT, on_sigint)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

fn kernel_name(k: &KernelSource) -> String {
    match k {
        KernelSource::Bundled => "bundled".into(),
        KernelSource::Path(p) => p.display().to_string(),
    }
}

/// Builds the VM described by `config`, runs it until the guest exits,
/// crashes, times out or is interrupted, tears it down and reports.
pub fn run_vm(config: &VmConfig, console: Console) -> Result<Report, BuildError> {
    let mut phases = Phases {
        vmm_main: Some(since_origin_us(clock::main_ns())),
        ..Default::default()
    };
    let mark = |p: &mut Option<f64>| *p = Some(since_origin_us(now_ns()));

    let kvm = vm::open_kvm(&vm::kvm_device_path())?;
    let host = HostLimits {
        max_vcpus: vm::max_vcpus(&kvm),
        mem_total: config::host_mem_total().map_err(|source| BuildError::Host {
            what: "reading /proc/meminfo",
            source,
        })?,
    };
    config.validate(&host)?;
    let what = kernel_name(&config.kernel);
    // A kernel read from disk is needed only until it is in guest RAM.
    let mut owned = Vec::new();
    let image: &[u8] = match &config.kernel {
        KernelSource::Bundled => firmware::BUNDLED,
        KernelSource::Path(p) => {
            owned = std::fs::read(p).map_err(|source| BuildError::KernelRead {
                path: p.clone(),
                source,
            })?;
            &owned
        }
    };
    boot::detect_format(image, &what)?;
    mark(&mut phases.kvm_opened);

    let vm = Vm::new(&kvm)?;
    mark(&mut phases.vm_created);

    let ram = Arc::new(GuestRam::new(config.memory)?);
    ram.register(&vm.fd)?;
    vm.add_interrupt_controllers()?;
    mark(&mut phases.memory_ready);

    let mem = ram.memory();
    let kernel = boot::load_kernel(mem, ram.end(), image, &what)?;
    if config.kernel == KernelSource::Bundled {
        firmware::release_bundled_pages();
    }
    drop(owned);
    regs::write_boot_tables(mem)?;
    let cr3 = pagetables::build_identity_map(mem, ram.end())?;
    let e820 = e820_map(config.memory);
    let zero_page = params::write_boot_params(mem, &kernel, &config.cmdline, &e820)?;
    mark(&mut phases.kernel_loaded);

    let host_err = |what| move |source| BuildError::Host { what, source };
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(host_err("eventfd"))?;
    vm.fd
        .register_irqfd(&irq, COM1_IRQ)
        .map_err(|e| BuildError::Host {
            what: "KVM_IRQFD",
            source: e.into(),
        })?;
    let cpuid = kvm
        .get_supported_cpuid(MAX_CPUID_ENTRIES)
        .map_err(|e| BuildError::Host {
            what: "KVM_GET_SUPPORTED_CPUID",
            source: e.into(),
        })?;
    let boot_state = BootState {
        entry: kernel.entry,
        boot_params: zero_page,
        cr3,
        smp_entry: kernel.smp_entry,
        count: config.vcpus,
    };
    let vcpus = (0..config.vcpus)
        .map(|id| vcpu::create_vcpu(&vm.fd, id, &cpuid, &boot_state))
        .collect::<Result<Vec<_>, _>>()?;
    mark(&mut phases.vcpus_created);
    let tsc_khz = vcpus.first().and_then(|v| v.get_tsc_khz().ok());

    vcpu::install_kick_handler().map_err(host_err("installing the vCPU kick handler"))?;
    let (tx, rx) = channel();
    let shared = Arc::new(VcpuShared {
        ram: ram.clone(),
        serial: SerialDevice::new(irq, console.clone()),
        events: tx,
        stop: AtomicBool::new(false),
        exits: Default::default(),
    });
    let mut threads = Vec::new();
    for (id, fd) in vcpus.into_iter().enumerate() {
        match VcpuThread::spawn(fd, id as u32, shared.clone()) {
            Ok(t) => threads.push(t),
            Err(source) => {
                stop_all(&shared, threads);
                return Err(BuildError::Host {
                    what: "spawning a vCPU thread",
                    source,
                });
            }
        }
    }

    let mut run = RunState {
        phases,
        guest: Vec::new(),
        warnings: Vec::new(),
        console,
    };
    let exit = run.event_loop(&rx, config.timeout);
    let usage = rss::measure(&ram.host_ranges()).unwrap_or_default();
    stop_all(&shared, threads);
    mark(&mut run.phases.teardown_done);

    let c = &shared.exits;
    let exits = ExitCounts {
        io: c.io.load(Ordering::Relaxed),
        mmio: c.mmio.load(Ordering::Relaxed),
        records: c.records.load(Ordering::Relaxed),
        bad_records: c.bad_records.load(Ordering::Relaxed),
        kicks: c.kicks.load(Ordering::Relaxed),
    };
    let regions = ram.regions().to_vec();
    // Closing the VM is where KVM tears it down (~20 ms on PVM hosts with
    // an in-kernel irqchip); time it as a phase of its own.
    drop(shared);
    drop(vm);
    drop(ram);
    mark(&mut run.phases.vm_closed);
    Ok(Report {
        memvisor_version: env!("CARGO_PKG_VERSION"),
        config: ConfigReport {
            kernel: what,
            kernel_format: Some(kernel.format),
            cmdline: config.cmdline.clone(),
            vcpus: config.vcpus,
            memory_bytes: config.memory,
            timeout_s: config.timeout.as_secs_f64(),
        },
        clock_origin: clock::origin().1,
        tsc_khz,
        phases_us: run.phases,
        memory: MemoryReport {
            e820_ram_bytes: e820_ram_bytes(&e820),
            e820_ram_pages: e820_ram_pages(&e820),
            e820,
            regions,
            usage,
        },
        exits,
        exit,
        guest: run.guest,
        warnings: run.warnings,
    })
}

fn stop_all(shared: &VcpuShared, threads: Vec<VcpuThread>) {
    shared.stop.store(true, Ordering::Release);
    for t in &threads {
        t.kick();
    }
    for t in threads {
        t.join();
    }
}

struct RunState {
    phases: Phases,
    guest: Vec<Value>,
    warnings: Vec<String>,
    console: Console,
}

impl RunState {
    fn event_loop(
        &mut self,
        rx: &std::sync::mpsc::Receiver<VmEvent>,
        timeout: Duration,
    ) -> ExitReport {
        let deadline = Instant::now() + timeout;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now()).min(POLL);
            match rx.recv_timeout(wait) {
                Ok(ev) => {
                    if let Some(exit) = self.on_event(ev) {
                        return exit;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return self.ended(
                        ExitKind::Crash,
                        None,
                        "every vCPU stopped without an exit status".into(),
                        None,
                        None,
                    );
                }
            }
            if INTERRUPTED.load(Ordering::SeqCst) {
                return self.ended(
                    ExitKind::Interrupted,
                    None,
                    "interrupted (SIGINT)".into(),
                    None,
                    None,
                );
            }
            if Instant::now() >= deadline {
                let last = self
                    .guest
                    .last()
                    .and_then(|v| v.get("event"))
                    .map(|e| e.to_string());
                let reason = format!(
                    "no exit within {} s (last guest event: {})",
                    timeout.as_secs_f64(),
                    last.unwrap_or_else(|| "none".into())
                );
                return self.ended(ExitKind::Timeout, None, reason, None, None);
            }
        }
    }

    fn ended(
        &mut self,
        status: ExitKind,
        guest_status: Option<u32>,
        reason: String,
        vcpu: Option<u32>,
        rip: Option<u64>,
    ) -> ExitReport {
        let _ = self.console.flush();
        ExitReport {
            status,
            code: status.code(),
            guest_status,
            reason,
            vcpu,
            rip,
        }
    }

    fn on_event(&mut self, ev: VmEvent) -> Option<ExitReport> {
        match ev {
            VmEvent::FirstRun { at_ns } => self.phases.first_kvm_run = Some(since_origin_us(at_ns)),
            VmEvent::Mark { value, at_ns, .. } => {
                if value == abi::MARK_FIRST_INSTRUCTION
                    && self.phases.first_guest_instruction.is_none()
                {
                    self.phases.first_guest_instruction = Some(since_origin_us(at_ns));
                }
            }
            VmEvent::Record {
                vcpu,
                kind: RecordKind::Console,
                payload,
                ..
            } => {
                let _ = self.console.write_all(&payload);
                let _ = vcpu;
            }
            VmEvent::Record {
                vcpu,
                kind: RecordKind::Json,
                payload,
                at_ns,
            } => self.guest_line(vcpu, &payload, at_ns),
            VmEvent::BadRecord { vcpu, error, .. } => {
                self.warnings.push(format!("vCPU {vcpu}: {error}"))
            }
            VmEvent::GuestExit {
                vcpu,
                status,
                at_ns,
            } => {
                self.phases.guest_exit = Some(since_origin_us(at_ns));
                let (kind, reason) = match status {
                    abi::GUEST_EXIT_SUCCESS => {
                        (ExitKind::Success, "the guest reported success".to_string())
                    }
                    abi::GUEST_EXIT_CRASH => (ExitKind::Crash, self.guest_crash_reason()),
                    s => (ExitKind::Failure, self.guest_failure_reason(s)),
                };
                return Some(self.ended(kind, Some(status), reason, Some(vcpu), None));
            }
            VmEvent::Crash {
                vcpu,
                crash,
                rip,
                at_ns,
            } => {
                self.phases.guest_exit = Some(since_origin_us(at_ns));
                let at = rip.map(|r| format!(" at rip {r:#x}")).unwrap_or_default();
                return Some(self.ended(
                    ExitKind::Crash,
                    None,
                    format!("vCPU {vcpu}: {crash}{at}"),
                    Some(vcpu),
                    rip,
                ));
            }
            VmEvent::Failed { vcpu, error, at_ns } => {
                self.phases.guest_exit = Some(since_origin_us(at_ns));
                return Some(self.ended(
                    ExitKind::Crash,
                    None,
                    format!("vCPU {vcpu}: {error}"),
                    Some(vcpu),
                    None,
                ));
            }
        }
        None
    }

    fn guest_line(&mut self, vcpu: u32, payload: &[u8], at_ns: u64) {
        if self.guest.len() >= MAX_GUEST_LINES {
            return;
        }
        let at_us = since_origin_us(at_ns);
        let mut v = serde_json::from_slice::<Value>(payload).unwrap_or_else(|e| {
            let raw: String = String::from_utf8_lossy(payload).chars().take(200).collect();
            json!({"event": "invalid_json", "error": e.to_string(), "raw": raw})
        });
        if let Value::Object(m) = &mut v {
            m.insert("vcpu".into(), vcpu.into());
            m.insert("at_us".into(), at_us.into());
        } else {
            v = json!({"event": "invalid_json", "error": "not a JSON object", "vcpu": vcpu, "at_us": at_us});
        }
        match v.get("event").and_then(Value::as_str) {
            Some("ready") if self.phases.guest_ready.is_none() => {
                self.phases.guest_ready = Some(at_us)
            }
            Some("workload") if self.phases.workload_done.is_none() => {
                self.phases.workload_done = Some(at_us)
            }
            _ => {}
        }
        self.guest.push(v);
    }

    fn last_event(&self, names: &[&str]) -> Option<&Value> {
        self.guest.iter().rev().find(|v| {
            v.get("event")
                .and_then(Value::as_str)
                .is_some_and(|e| names.contains(&e))
        })
    }

    fn guest_crash_reason(&self) -> String {
        match self.last_event(&["exception", "panic"]) {
            Some(v) if v["event"] == "exception" => format!(
                "guest exception {} ({}) at rip {} (error code {}, cr2 {}, cpl {})",
                v["vector"],
                v["name"].as_str().unwrap_or("?"),
                v["rip"].as_str().unwrap_or("?"),
                v["error_code"].as_str().unwrap_or("?"),
                v["cr2"].as_str().unwrap_or("?"),
                v["cpl"]
            ),
            Some(v) => format!(
                "guest panic: {} at {}:{}",
                v["message"].as_str().unwrap_or("?"),
                v["file"].as_str().unwrap_or("?"),
                v["line"]
            ),
            None => "the guest reported a crash".into(),
        }
    }

    fn guest_failure_reason(&self, status: u32) -> String {
        match self.last_event(&["error", "workload"]) {
            Some(v) if v["event"] == "error" => {
                format!("guest error: {}", v["message"].as_str().unwrap_or("?"))
            }
            Some(v) => format!("workload {} failed (guest exit status {status})", v["name"]),
            None => format!("guest exit status {status}"),
        }
    }
}
