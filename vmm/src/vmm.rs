//! The running VMM: owns the VM, its vCPU handles and the device manager,
//! and is the event loop's subscriber for everything that is not a device:
//! vCPU and device events (one bounded queue, one EventFd), signals
//! (signalfd), the run timeout (timerfd) and API requests.
//!
//! The loop (`run`) blocks in epoll with no timeout: nothing polls.
use crate::abi;
use crate::api::{ApiInbox, ApiMessage, ApiResponse, ApiServer, InstanceState};
use crate::builder::{self, BuildError, BuiltVm};
use crate::clock::{self, now_ns, since_origin_us};
use crate::devices::console::Console;
use crate::guest::events::{VmEvent, VmEvents};
use crate::guest::log::GuestLog;
use crate::guest::record::RecordKind;
use crate::memory::layout::{e820_ram_bytes, e820_ram_pages};
use crate::report::{
    ConfigReport, ExitCounts, ExitKind, ExitReport, MemoryReport, Phases, Report, VcpuReport,
};
use crate::resources::VmResources;
use crate::rpc::Followup;
use crate::signals::{self, SignalFd};
use crate::vstate::vcpu::{self, Reply, VcpuControlError};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

const EV_QUEUE: u32 = 1;
const EV_SIGNAL: u32 = 2;
const EV_TIMER: u32 = 3;
const EV_API: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("event loop: {0}")]
    EventLoop(String),
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    #[error("--wait-for-start needs --api-sock: the VM is configured and started through the API")]
    WaitWithoutApi,
    #[error("{what}: {source}")]
    Host {
        what: &'static str,
        source: std::io::Error,
    },
}

pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// How the VMM was asked to run.
pub struct RunOptions {
    pub console: Console,
    /// Serve the control API on this Unix socket.
    pub api_sock: Option<PathBuf>,
    /// Build nothing until `PUT /actions {"action_type": "InstanceStart"}`.
    pub wait_for_start: bool,
}

pub struct Vmm {
    pub resources: VmResources,
    console: Console,
    events: Arc<VmEvents>,
    signals: SignalFd,
    timer: TimerFd,
    pub built: Option<BuiltVm>,
    pub phases: Phases,
    log: GuestLog,
    exit: Option<ExitReport>,
    console_bytes: usize,
    paused: bool,
    api: Option<ApiInbox>,
    /// An InstanceStart waiting for the loop to build the VM.
    pending_start: Option<ApiMessage>,
}

impl Vmm {
    /// Takes the signals (call before any other thread exists).
    pub fn new(resources: VmResources, console: Console) -> Result<Self, VmmError> {
        let host = |what| move |source| VmmError::Host { what, source };
        let signals = SignalFd::new().map_err(host("signalfd"))?;
        let events = Arc::new(VmEvents::new().map_err(host("eventfd"))?);
        let timer = TimerFd::new().map_err(|e| VmmError::Host {
            what: "timerfd",
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
        // COM1 and console records together print at most the budget.
        console.limit(resources.record_budget);
        Ok(Vmm {
            log: GuestLog::new(resources.record_budget),
            resources,
            console,
            events,
            signals,
            timer,
            built: None,
            phases: Phases {
                vmm_main: Some(since_origin_us(clock::main_ns())),
                ..Default::default()
            },
            exit: None,
            console_bytes: 0,
            paused: false,
            api: None,
            pending_start: None,
        })
    }

    pub fn state(&self) -> InstanceState {
        match (&self.built, self.paused) {
            (None, _) => InstanceState::NotStarted,
            (Some(_), false) => InstanceState::Running,
            (Some(_), true) => InstanceState::Paused,
        }
    }

    pub fn finished(&self) -> bool {
        self.exit.is_some()
    }

    /// Builds and starts the VM; returns the subscribers its devices bring.
    pub fn start(&mut self) -> Result<Vec<Subscriber>, BuildError> {
        let mut built = builder::build(
            &self.resources,
            self.console.clone(),
            &self.events,
            &mut self.phases,
        )?;
        self.timer
            .reset(self.resources.timeout, None)
            .map_err(|e| BuildError::Host {
                what: "arming the run timeout",
                source: std::io::Error::from_raw_os_error(e.errno()),
            })?;
        let subs = std::mem::take(&mut built.devices.subscribers);
        self.built = Some(built);
        Ok(subs)
    }

    /// Pauses every vCPU: returns once all are out of KVM_RUN. Even when it
    /// fails (a vCPU did not answer in time), every vCPU got the message and
    /// the ones that answer are paused: the VM counts as paused, so that
    /// Resumed resumes them rather than leaving them stopped behind a
    /// "Running" state.
    pub fn pause(&mut self) -> Result<Vec<Reply>, VcpuControlError> {
        let Some(b) = self.built.as_mut() else {
            return Ok(Vec::new());
        };
        self.paused = true;
        let r = vcpu::pause_all(&mut b.vcpus)?;
        log::debug!("paused {} vCPUs", r.len());
        Ok(r)
    }

    /// Resumes paused vCPUs; a no-op when not paused. Resume is sent without
    /// a kick (a paused vCPU waits on its channel), so a running vCPU in a
    /// guest loop without exits never read it: the loop waited 2 s per vCPU
    /// for a reply and answered 500, and the late reply then answered the
    /// next pause.
    pub fn resume(&mut self) -> Result<Vec<Reply>, VcpuControlError> {
        let Some(b) = self.built.as_mut().filter(|_| self.paused) else {
            return Ok(Vec::new());
        };
        let r = vcpu::resume_all(&mut b.vcpus)?;
        self.paused = false;
        log::debug!("resumed {} vCPUs", r.len());
        Ok(r)
    }

    fn end(&mut self, status: ExitKind, reason: String, vcpu: Option<u32>, rip: Option<u64>) {
        self.end_with(status, status.code(), None, reason, vcpu, rip, None);
    }

    #[allow(clippy::too_many_arguments)]
    fn end_with(
        &mut self,
        status: ExitKind,
        code: i32,
        guest_status: Option<u32>,
        reason: String,
        vcpu: Option<u32>,
        rip: Option<u64>,
        signal: Option<&'static str>,
    ) {
        if self.exit.is_some() {
            return;
        }
        log::debug!("run ends: {status:?} ({reason})");
        let _ = self.console.flush();
        self.exit = Some(ExitReport {
            status,
            code,
            guest_status,
            reason,
            vcpu,
            rip,
            signal: signal.map(str::to_owned),
        });
    }

    fn on_queue(&mut self) {
        for ev in self.events.drain() {
            self.on_event(ev);
        }
    }

    fn on_event(&mut self, ev: VmEvent) {
        let at = since_origin_us;
        match ev {
            VmEvent::FirstRun { at_ns } => self.phases.first_kvm_run = Some(at(at_ns)),
            VmEvent::Mark { value, at_ns, .. } => {
                if value == abi::MARK_FIRST_INSTRUCTION
                    && self.phases.first_guest_instruction.is_none()
                {
                    self.phases.first_guest_instruction = Some(at(at_ns));
                }
            }
            VmEvent::Record {
                kind: RecordKind::Console,
                payload,
                ..
            } => {
                // Console records share the guest-output budget: a guest must
                // not be able to fill the operator's disk through stdout.
                if self.console_bytes + payload.len() > self.resources.record_budget {
                    self.log.dropped(1, payload.len() as u64);
                } else {
                    self.console_bytes += payload.len();
                    let _ = self.console.write_all(&payload);
                }
            }
            VmEvent::Record {
                vcpu,
                kind: RecordKind::Json,
                payload,
                at_ns,
            } => self.log.line(vcpu, &payload, at_ns),
            // Answered on the vCPU's exit (devices::legacy::hostio).
            VmEvent::Record {
                kind: RecordKind::PtWalk,
                ..
            } => {}
            VmEvent::BadRecord { vcpu, error, .. } => {
                self.log.warn(format!("vCPU {vcpu}: {error}"))
            }
            VmEvent::GuestExit {
                vcpu,
                status,
                at_ns,
            } => {
                self.phases.guest_exit.get_or_insert(at(at_ns));
                let (kind, reason, rip) = match status {
                    abi::GUEST_EXIT_SUCCESS => (
                        ExitKind::Success,
                        "the guest reported success".to_string(),
                        None,
                    ),
                    abi::GUEST_EXIT_CRASH => {
                        let (reason, rip) = self.log.crash_reason();
                        (ExitKind::Crash, reason, rip)
                    }
                    s => (ExitKind::Failure, self.log.failure_reason(s), None),
                };
                self.end_with(
                    kind,
                    kind.code(),
                    Some(status),
                    reason,
                    Some(vcpu),
                    rip,
                    None,
                );
            }
            VmEvent::Reset { vcpu, at_ns } => {
                self.phases.guest_exit.get_or_insert(at(at_ns));
                self.end(
                    ExitKind::Reset,
                    "the guest reset the machine (i8042 reset command)".into(),
                    Some(vcpu),
                    None,
                );
            }
            VmEvent::Crash {
                vcpu,
                crash,
                rip,
                at_ns,
            } => {
                self.phases.guest_exit.get_or_insert(at(at_ns));
                let where_ = rip.map(|r| format!(" at rip {r:#x}")).unwrap_or_default();
                self.end(
                    ExitKind::Crash,
                    format!("vCPU {vcpu}: {crash}{where_}"),
                    Some(vcpu),
                    rip,
                );
            }
            VmEvent::Failed { vcpu, error, at_ns } => {
                self.phases.guest_exit.get_or_insert(at(at_ns));
                self.end(
                    ExitKind::Crash,
                    format!("vCPU {vcpu}: {error}"),
                    Some(vcpu),
                    None,
                );
            }
        }
    }

    fn on_signal(&mut self) {
        while let Some(signo) = self.signals.read() {
            let name = signals::name(signo);
            self.end_with(
                ExitKind::Interrupted,
                128 + signo,
                None,
                format!("interrupted ({name})"),
                None,
                None,
                Some(name),
            );
        }
    }

    fn on_api(&mut self) {
        let msgs = self.api.as_ref().map(ApiInbox::take).unwrap_or_default();
        for m in msgs {
            if let Followup::Start(m) = self.handle_api(m) {
                self.pending_start = Some(m);
            }
        }
    }

    fn on_timer(&mut self) {
        let _ = self.timer.wait();
        if self.built.is_none() {
            return;
        }
        let last = self.log.last_event_name().unwrap_or_else(|| "none".into());
        let reason = format!(
            "no exit within {} s (last guest event: {last})",
            self.resources.timeout.as_secs_f64()
        );
        self.end(ExitKind::Timeout, reason, None, None);
    }

    /// Stops the VM and assembles the report. Teardown order is the
    /// structure's: vCPU threads, then devices, then the VM fd and RAM.
    pub fn into_report(mut self) -> Report {
        self.on_queue();
        let exit = self.exit.take().unwrap_or_else(|| ExitReport {
            status: ExitKind::Crash,
            code: ExitKind::Crash.code(),
            guest_status: None,
            reason: "the VMM stopped without an exit".into(),
            vcpu: None,
            rip: None,
            signal: None,
        });
        let q = &self.events.counters;
        self.log.dropped(
            q.dropped_records.load(Ordering::Relaxed),
            q.dropped_bytes.load(Ordering::Relaxed),
        );
        self.log.dropped(0, self.console.dropped_bytes());
        let mut phases = self.phases.clone();
        let mut memory = MemoryReport::default();
        let mut exits = ExitCounts::default();
        let mut vcpus = Vec::new();
        let mut balloon = None;
        let (mut kernel, mut kernel_format, mut cmdline, mut tsc_khz) = (
            builder::kernel_name(&self.resources.kernel),
            None,
            self.resources.cmdline.clone(),
            None,
        );
        let mut dirty = None;
        let mut ptwalk = Default::default();
        if let Some(mut b) = self.built.take() {
            memory.accounting = b.vm.accounting();
            vcpus = VcpuReport::of(&b.vcpus, self.resources.numa.as_ref());
            vcpu::finish_all(&mut b.vcpus);
            balloon = b.devices.balloon.as_ref().map(|d| {
                let mut d = d.lock().unwrap_or_else(|p| p.into_inner());
                // Pending collapses first, so the report counts them all.
                d.finish_collapses();
                d.report()
            });
            if let Some(w) = b.devices.results.as_ref().and_then(|r| r.ptwalk.get()) {
                ptwalk = w.report();
            }
            phases.teardown_done = Some(since_origin_us(now_ns()));
            dirty = b.vm.dirty().map(|d| d.finish());
            let c = &b.counters;
            exits = ExitCounts {
                io: c.io.load(Ordering::Relaxed),
                mmio: c.mmio.load(Ordering::Relaxed),
                records: b
                    .devices
                    .results
                    .as_ref()
                    .map_or(0, |r| r.records.load(Ordering::Relaxed)),
                bad_records: q.bad_records.load(Ordering::Relaxed),
                kicks: c.kicks.load(Ordering::Relaxed),
                unclaimed: c.unclaimed.load(Ordering::Relaxed),
            };
            memory.e820_ram_bytes = e820_ram_bytes(&b.e820);
            memory.e820_ram_pages = e820_ram_pages(&b.e820);
            memory.e820 = std::mem::take(&mut b.e820);
            memory.prefault_method = b.prefault.map(|p| p.0);
            memory.prefault_us = b.prefault.map(|p| p.1);
            kernel = std::mem::take(&mut b.kernel_name);
            kernel_format = Some(b.kernel_format);
            cmdline = std::mem::take(&mut b.cmdline);
            tsc_khz = b.tsc_khz;
            // Closing the VM is where KVM tears it down (~20 ms on PVM hosts
            // with an in-kernel irqchip); time it as a phase of its own.
            drop(b);
            phases.vm_closed = Some(since_origin_us(now_ns()));
        }
        let mut report = Report {
            memvisor_version: env!("CARGO_PKG_VERSION"),
            config: ConfigReport {
                kernel,
                kernel_format,
                cmdline,
                vcpus: self.resources.vcpus,
                memory_bytes: self.resources.memory,
                timeout_s: self.resources.timeout.as_secs_f64(),
                record_budget_bytes: self.resources.record_budget as u64,
                irqchip: self.resources.irqchip(),
                backing: self.resources.backing,
                thp: self.resources.thp,
                prefault: self.resources.prefault,
                numa: self.resources.numa.as_ref().map(|n| n.report()),
                dirty_log: self.resources.dirty_log,
            },
            clock_origin: clock::origin().1,
            tsc_khz,
            phases_us: Phases {
                guest_ready: self.log.ready_us,
                workload_done: self.log.workload_us,
                ..phases
            },
            memory,
            vcpus,
            exits,
            balloon,
            ptwalk: ptwalk.0,
            ptwalk_rejected: ptwalk.1,
            dropped_records: self.log.dropped_records,
            dropped_bytes: self.log.dropped_bytes,
            exit,
            warnings: self.log.warnings(),
            guest: self.log.into_lines(),
        };
        if let Some(d) = dirty {
            crate::guest::dirty::check_report(&mut report, d);
        }
        report
    }
}

impl MutEventSubscriber for Vmm {
    fn init(&mut self, ops: &mut EventOps) {
        let add = |ops: &mut EventOps, fd: i32, data: u32, what: &str| {
            if let Err(e) = ops.add(Events::with_data_raw(fd, data, EventSet::IN)) {
                log::error!("cannot watch the {what}: {e:?}");
            }
        };
        add(ops, self.events.wake.as_raw_fd(), EV_QUEUE, "event queue");
        add(ops, self.signals.as_raw_fd(), EV_SIGNAL, "signalfd");
        add(ops, self.timer.as_raw_fd(), EV_TIMER, "timerfd");
        if let Some(api) = &self.api {
            add(ops, api.as_raw_fd(), EV_API, "API inbox");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            EV_QUEUE => self.on_queue(),
            EV_SIGNAL => self.on_signal(),
            EV_TIMER => self.on_timer(),
            EV_API => self.on_api(),
            other => log::warn!("event for unknown source {other}"),
        }
    }
}

/// Builds the VM `resources` describes (at once, or when the API says
/// InstanceStart), runs it until the guest exits, crashes, times out or a
/// signal ends it, tears it down and reports.
pub fn run(resources: VmResources, opts: RunOptions) -> Result<Report, VmmError> {
    if opts.wait_for_start && opts.api_sock.is_none() {
        return Err(VmmError::WaitWithoutApi);
    }
    // Vmm::new blocks the handled signals: before any thread is spawned.
    let mut vmm = Vmm::new(resources, opts.console)?;
    let mut api_handle = None;
    if let Some(path) = &opts.api_sock {
        let server = ApiServer::bind(path)?;
        let (inbox, tx, wake) = ApiInbox::new().map_err(|source| VmmError::Host {
            what: "API channel",
            source,
        })?;
        api_handle = Some(server.spawn(tx, wake).map_err(|source| VmmError::Host {
            what: "spawning the API thread",
            source,
        })?);
        vmm.api = Some(inbox);
        log::debug!("API serving on {}", path.display());
    }
    let vmm = Arc::new(Mutex::new(vmm));
    let mut em: EventManager<Subscriber> =
        EventManager::new().map_err(|e| VmmError::EventLoop(format!("{e:?}")))?;
    em.add_subscriber(vmm.clone());
    if !opts.wait_for_start {
        let subs = lock(&vmm).start()?;
        for s in subs {
            em.add_subscriber(s);
        }
    }
    while !lock(&vmm).finished() {
        em.run()
            .map_err(|e| VmmError::EventLoop(format!("{e:?}")))?;
        let pending = lock(&vmm).pending_start.take();
        if let Some(msg) = pending {
            let started = lock(&vmm).start();
            match started {
                Ok(subs) => {
                    for s in subs {
                        em.add_subscriber(s);
                    }
                    msg.respond(ApiResponse::no_content());
                }
                Err(e) => {
                    log::debug!("InstanceStart failed: {e}");
                    msg.respond(ApiResponse::bad_request(format!(
                        "cannot start the microVM: {e}"
                    )));
                }
            }
        }
    }
    drop(em);
    let vmm = Arc::try_unwrap(vmm)
        .map_err(|_| VmmError::EventLoop("the VMM is still shared after the loop".into()))?
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    let report = vmm.into_report();
    // The socket file goes with the API thread.
    drop(api_handle);
    Ok(report)
}

fn lock(v: &Mutex<Vmm>) -> std::sync::MutexGuard<'_, Vmm> {
    v.lock().unwrap_or_else(|p| p.into_inner())
}
