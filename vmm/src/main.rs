//! The `memvisor` command line.
use clap::{Args, Parser, Subcommand};
use memvisor::bench::api::GuestLoad;
use memvisor::bench::boot::{bench_boot, BootBenchOptions};
use memvisor::devices::console::Console;
use memvisor::memory::backing::{Backing, Thp};
use memvisor::memory::dirty::DirtyMode;
use memvisor::memory::numa::{NumaConfig, NumaNode};
use memvisor::resources::{
    parse_size, parse_timeout, KernelSource, VmResources, DEFAULT_CMDLINE, DEFAULT_MEMORY,
};
use memvisor::vmm::{self, RunOptions, VmmError};
use memvisor::vstate::vm::IrqchipMode;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Exit status for bad input or a VM that could not be set up.
const EXIT_BAD_INPUT: u8 = 2;

#[derive(Parser)]
#[command(
    name = "memvisor",
    version,
    about = "KVM research VMM with a Linux-style guest-memory manager"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a microVM and run it until the guest exits.
    ///
    /// Exit status: 0 the guest reported success (or reset the machine),
    /// 1 it reported failure, 2 bad input (or the VM could not be set up),
    /// 3 the guest crashed, 4 timeout, 130/143/129 ended by SIGINT/SIGTERM/SIGHUP.
    Run(RunArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Drive the balloon of a running memvisor through its API socket
    /// (Firecracker's /balloon endpoints).
    Balloon {
        #[command(subcommand)]
        action: BalloonAction,
        /// The API socket of the running memvisor (`run --api-sock PATH`).
        #[arg(long, value_name = "PATH", global = true)]
        api_sock: Option<PathBuf>,
    },
    /// Write the bundled guest kernel (an ELF) to PATH, e.g. for
    /// `PUT /boot-source {"kernel_image_path": PATH}` or another VMM.
    Kernel {
        /// Where to write it.
        #[arg(long, value_name = "PATH")]
        output: PathBuf,
    },
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Guest kernel: an ELF or a Linux bzImage. Default: the bundled memvisor guest kernel.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Kernel command line. The bundled kernel reads `workload=NAME` (memtest: write and verify every free page from every vCPU; alloc: page/slab allocator stress and fragmentation study, with `alloc_iters=N`; entropy: read `bytes=N` bytes from the virtio-rng device of `--entropy` and check their distribution; dirty: write `dirty_pages=N` pages `dirty_stride=K` apart between two marks and have the VMM check its dirty log against them (with --dirty-log); boot: report ready and exit; fault: a deliberate page fault; touch: time the first touch of `touch_mib=N` MiB; numa: every memory policy from every vCPU, each page's node checked (with --numa); balloon-hold / balloon-hostile: hold memory while the balloon acts, or attack the balloon device (with --balloon); ptrepl: page-table placement and replication, GUPS and pointer chase with the VMM's 2D-walk model, `ptrepl_mib=N` (with two --numa nodes); flood, reset, idle, spin: test and timing helpers; README lists every key) and `mobility_grouping=on|off|auto`.
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Number of vCPUs, 1 to the host's KVM_CAP_MAX_VCPUS (the bundled kernel: at most 64).
    /// Default: 1, or with --numa as many as the nodes' cpus name.
    #[arg(long, value_name = "N")]
    vcpus: Option<u32>,
    /// Guest RAM: at least 16M, a multiple of 2M, at most the host's MemTotal. K/M/G suffixes.
    /// Default: 256M, or with --numa the sum of the nodes' sizes.
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    memory: Option<u64>,
    /// A guest NUMA node, repeated once per node:
    /// `node=ID,size=SIZE,cpus=LIST,host-node=N[,host-cpus=LIST][,distance=NODE@D]...`.
    /// Node ids 0..n-1 once each; sizes multiples of 2M adding up to --memory;
    /// cpus disjoint and covering 0..--vcpus-1; the node's RAM is bound to
    /// host node N (mbind) and its vCPU threads pinned to that node's CPUs
    /// (or host-cpus); distances 11..254 (default 20), symmetric.
    #[arg(long, value_name = "SPEC", value_parser = parse_numa_arg)]
    numa: Vec<NumaNode>,
    /// Write the full JSON report to PATH (`-` for stdout, guest console then goes to stderr).
    #[arg(long, value_name = "PATH")]
    report: Option<PathBuf>,
    /// Stop the guest after SECS seconds (exit status 4).
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_timeout_arg)]
    timeout: Duration,
    /// Print neither the guest console nor the summary (the report is still
    /// written); a failed run still prints one line on stderr.
    #[arg(long)]
    quiet: bool,
    /// Bytes of guest output kept: JSON lines in the report and console
    /// records printed (K/M/G suffixes). Beyond it they are counted in the
    /// report's dropped_records/dropped_bytes.
    #[arg(long, value_name = "SIZE", default_value = "4M", value_parser = parse_budget_arg)]
    record_budget: u64,
    /// Add a virtio-rng entropy device (virtio-mmio; the kernel command line
    /// gets its `virtio_mmio.device=` token).
    #[arg(long)]
    entropy: bool,
    /// Interrupt controllers: `split` (LAPICs in KVM, IOAPIC in memvisor,
    /// no PIC or PIT; tears down ~20 ms faster) or `full` (all in KVM, as
    /// Linux without ACPI tables needs). Default: split for the bundled
    /// kernel, full with --kernel.
    #[arg(long, value_enum, value_name = "MODE")]
    irqchip: Option<IrqchipMode>,
    /// What host memory backs guest RAM: `anon` (private anonymous),
    /// `memfd` (a shared memfd; 4 KiB pages unless the host enables
    /// shared-memory THP; where /sys/kernel/mm/transparent_hugepage/shmem_enabled is
    /// `never` it needs --thp off), `memfd-hugetlb` (a
    /// memfd of 2 MiB hugetlb pages, MFD_HUGETLB) or `hugetlbfs` (private
    /// anonymous 2 MiB hugetlb pages, MAP_HUGETLB). The hugetlb ones need
    /// pages reserved in /proc/sys/vm/nr_hugepages.
    #[arg(long, value_enum, value_name = "KIND", default_value = "anon")]
    backing: Backing,
    /// Transparent huge pages for anon and memfd RAM: `on` (MADV_HUGEPAGE)
    /// or `off` (MADV_NOHUGEPAGE: 4 KiB pages).
    #[arg(long, value_enum, value_name = "on|off", default_value = "on")]
    thp: Thp,
    /// Populate all of guest RAM before the guest runs
    /// (KVM_PRE_FAULT_MEMORY where KVM supports it, else MADV_POPULATE_WRITE).
    #[arg(long)]
    prefault: bool,
    /// Dirty logging of guest RAM: `off`, `bitmap` (KVM_GET_DIRTY_LOG with
    /// manual protect) or `ring` (per-vCPU dirty rings). Either also
    /// records the VMM's own writes; the report's memory.dirty says what
    /// was written. Off by default: every logged page takes a
    /// write-protection fault on its first write after each harvest.
    #[arg(long, value_enum, value_name = "MODE", default_value = "off")]
    dirty_log: DirtyMode,
    /// Serve the Firecracker-style control API (HTTP/1.1 + JSON) on this
    /// Unix socket during the run; the file is removed on exit.
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// With --api-sock: build nothing until configured through the API and
    /// started with PUT /actions {"action_type": "InstanceStart"}.
    #[arg(long)]
    wait_for_start: bool,
    /// Add a virtio-balloon device: comma-separated key=value, every key
    /// optional: amount_mib=N (initial target), deflate_on_oom=on|off,
    /// free_page_reporting=on|off, stats_polling_interval_s=S (0: no
    /// stats queue). E.g. `--balloon amount_mib=0,stats_polling_interval_s=1`.
    #[arg(long, value_name = "KEY=VALUE,...", value_parser = parse_balloon_arg)]
    balloon: Option<memvisor::devices::virtio::balloon::BalloonConfig>,
}

#[derive(Subcommand)]
enum BalloonAction {
    /// Set the target: PATCH /balloon {"amount_mib": N}.
    Set {
        /// Target balloon size in MiB.
        amount_mib: u32,
    },
    /// The configuration in force: GET /balloon.
    Get,
    /// Statistics: GET /balloon/statistics; with --interval, set the
    /// polling interval instead (PATCH /balloon/statistics).
    Stats {
        /// Seconds between the guest's stats updates (1 to 65535).
        #[arg(long, value_name = "S")]
        interval: Option<u16>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Control-API latency against a running guest: p50/p99 of
    /// GET /machine-config, pause→Paused and resume→Running round trips.
    Api {
        /// The guest: `idle` (vCPUs halted in KVM) or `spin` (vCPUs busy at
        /// CPL3, each on a host core).
        #[arg(long, value_enum, default_value = "idle")]
        guest: GuestLoad,
        /// GET requests to time.
        #[arg(long, default_value_t = 1000)]
        requests: u32,
        /// Pause/resume pairs to time.
        #[arg(long, default_value_t = 200)]
        pauses: u32,
        /// vCPUs of the guest.
        #[arg(long, default_value_t = 2)]
        vcpus: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Memory benchmark: guest first-touch bandwidth per backing (THP on,
    /// THP off, hugetlbfs, memfd-hugetlb; the hugetlb pages are reserved
    /// for the run and given back), prefault time, host-side discard and
    /// collapse throughput, and boot with --numa; medians beside the goals.
    Memory {
        /// Runs of each measurement.
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// MiB the guest touches in each run (1 to 16384; guest RAM is this
        /// plus 256 MiB).
        #[arg(long, value_name = "MIB", default_value_t = 512)]
        touch_mib: u64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Balloon benchmark: reclaim and return speed, time to 90% of the Rss
    /// drop (1G guest inflated by 768M, 4G by 3G, `4k` and `2m` modes) and
    /// free page reporting's free → Rss drop; medians beside the goals.
    Balloon {
        /// Runs of each configuration.
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// One 256M guest inflated by 128M instead (a smoke run).
        #[arg(long)]
        quick: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Page-table replication benchmark: `workload=ptrepl` on 2 guest NUMA
    /// nodes (GUPS and pointer chase; page tables local, remote,
    /// replicated; THP off and on): ops/s, cycles/op, the walk model's
    /// local/remote references, replica overhead and update rates with 1
    /// and 2 replicas, beside the goals.
    Ptrepl {
        /// Runs (medians over them), 1 to 100.
        #[arg(long, default_value_t = 1)]
        runs: u32,
        /// Data region per configuration, MiB (`ptrepl_mib`, even, 2 to 1024).
        #[arg(long, value_name = "N", default_value_t = 64)]
        mib: u64,
        /// Timed operations per vCPU (`ptrepl_ops`, 1 to 10^9).
        #[arg(long, value_name = "N", default_value_t = 1_000_000)]
        ops: u64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Boot-time benchmark: spawns `memvisor run` N times and prints
    /// spawn→guest-ready and spawn→exit (min/median/max), each phase's share,
    /// and the VMM's own RSS overhead.
    Boot {
        /// Number of runs.
        #[arg(long, default_value_t = 20)]
        runs: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Guest RAM for each run (default 256M, or the --numa nodes' sum).
        #[arg(long, value_parser = parse_size_arg)]
        memory: Option<u64>,
        /// vCPUs for each run (default 1, or as many as the --numa nodes name).
        #[arg(long)]
        vcpus: Option<u32>,
        /// A guest NUMA node for each run, as `run --numa` takes it (repeat
        /// once per node).
        #[arg(long, value_name = "SPEC", value_parser = parse_numa_arg)]
        numa: Vec<NumaNode>,
        /// Kernel command line for each run (default: boot, report ready, exit).
        #[arg(long, default_value = "workload=boot")]
        cmdline: String,
    },
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn parse_numa_arg(s: &str) -> Result<NumaNode, String> {
    NumaNode::parse(s).map_err(|e| e.to_string())
}

/// `--numa`'s nodes, and the `--memory` and `--vcpus` they imply where those
/// are left out.
fn machine(
    numa: Vec<NumaNode>,
    memory: Option<u64>,
    vcpus: Option<u32>,
) -> (Option<NumaConfig>, u64, u32) {
    let numa = (!numa.is_empty()).then(|| NumaConfig::new(numa));
    let memory = memory
        .or_else(|| numa.as_ref().and_then(NumaConfig::total_size))
        .unwrap_or(DEFAULT_MEMORY);
    let vcpus = vcpus
        .or_else(|| numa.as_ref().map(NumaConfig::vcpu_count))
        .unwrap_or(1);
    (numa, memory, vcpus)
}

fn parse_budget_arg(s: &str) -> Result<u64, String> {
    match parse_size(s) {
        Ok(n) if (4096..=1 << 30).contains(&n) => Ok(n),
        Ok(_) => Err(format!("{s}: the budget must be between 4K and 1G")),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_balloon_arg(s: &str) -> Result<memvisor::devices::virtio::balloon::BalloonConfig, String> {
    memvisor::devices::virtio::balloon::BalloonConfig::from_flag(s)
}

fn parse_timeout_arg(s: &str) -> Result<Duration, String> {
    parse_timeout(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    memvisor::clock::init();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    if matches!(cli.command, Command::Bench(_)) {
        // A bench prints tables as it goes; `| head` closing the pipe ends
        // it the way it ends any Unix filter (SIGPIPE), not with a panic in
        // println!. `run` keeps SIGPIPE ignored: it must still tear down the
        // VM and write its report when stdout goes away.
        // SAFETY: restoring a default disposition before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command {
        Command::Run(args) => run(args),
        Command::Balloon { action, api_sock } => balloon(action, api_sock),
        Command::Kernel { output } => match std::fs::write(&output, memvisor::firmware::BUNDLED) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("memvisor: error: cannot write {}: {e}", output.display());
                ExitCode::from(EXIT_BAD_INPUT)
            }
        },
        Command::Bench(BenchCommand::Api {
            guest,
            requests,
            pauses,
            vcpus,
            json,
        }) => {
            if requests == 0
                || pauses == 0
                || vcpus == 0
                || vcpus as usize > memvisor::abi::MAX_VCPUS
            {
                eprintln!(
                    "memvisor: bench api: error: --requests and --pauses must be at least 1 and --vcpus 1 to {} (got {requests}, {pauses}, {vcpus})",
                    memvisor::abi::MAX_VCPUS
                );
                return ExitCode::from(EXIT_BAD_INPUT);
            }
            let o = memvisor::bench::api::ApiBenchOptions {
                guest,
                requests,
                pauses,
                vcpus,
                json,
            };
            match memvisor::bench::api::bench_api(&o) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("memvisor: bench api: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Bench(BenchCommand::Balloon { runs, quick, json }) => {
            if runs == 0 {
                eprintln!("memvisor: bench balloon: error: --runs must be at least 1 (got 0)");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
            let o = memvisor::bench::balloon::BalloonBenchOptions { runs, quick, json };
            match memvisor::bench::balloon::bench_balloon(&o) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("memvisor: bench balloon: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Bench(BenchCommand::Memory {
            runs,
            touch_mib,
            json,
        }) => {
            if runs == 0 || !(1..=16384).contains(&touch_mib) {
                eprintln!(
                    "memvisor: bench memory: error: --runs must be at least 1 and --touch-mib 1 to 16384 (got {runs} and {touch_mib})"
                );
                return ExitCode::from(EXIT_BAD_INPUT);
            }
            let o = memvisor::bench::memory::MemoryBenchOptions {
                runs,
                json,
                touch_mib,
            };
            match memvisor::bench::memory::bench_memory(&o) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("memvisor: bench memory: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Bench(BenchCommand::Ptrepl {
            runs,
            mib,
            ops,
            json,
        }) => {
            use memvisor::bench::ptrepl::{bench_ptrepl, PtreplBenchOptions};
            let o = PtreplBenchOptions {
                runs,
                json,
                mib,
                ops,
            };
            if let Err(e) = o.check() {
                eprintln!("memvisor: bench ptrepl: error: {e}");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
            match bench_ptrepl(&o) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("memvisor: bench ptrepl: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Bench(BenchCommand::Boot {
            runs,
            json,
            memory,
            vcpus,
            cmdline,
            numa,
        }) => {
            let (numa, memory, vcpus) = machine(numa, memory, vcpus);
            let probe = VmResources {
                memory,
                vcpus,
                numa: numa.clone(),
                ..Default::default()
            };
            if let Err(e) = probe.validate_static() {
                eprintln!("memvisor: bench boot: error: {e}");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
            if runs == 0 || vcpus == 0 {
                eprintln!("memvisor: bench boot: error: --runs and --vcpus must be at least 1 (got {runs} and {vcpus})");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
            match bench_boot(&BootBenchOptions {
                runs,
                json,
                memory,
                vcpus,
                cmdline,
                numa: numa
                    .as_ref()
                    .map_or_else(Vec::new, |n| n.specs().map(String::from).collect()),
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("memvisor: bench boot: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    let (numa, memory, vcpus) = machine(args.numa.clone(), args.memory, args.vcpus);
    let resources = VmResources {
        kernel: args
            .kernel
            .clone()
            .map_or(KernelSource::Bundled, KernelSource::Path),
        cmdline: args.cmdline.clone(),
        vcpus,
        memory,
        timeout: args.timeout,
        record_budget: args.record_budget as usize,
        entropy: args.entropy.then(Default::default),
        irqchip: args.irqchip,
        backing: args.backing,
        thp: args.thp,
        prefault: args.prefault,
        numa,
        balloon: args.balloon,
        dirty_log: args.dirty_log,
    };
    let to_stdout = args.report.as_deref() == Some(std::path::Path::new("-"));
    let console = match (args.quiet, to_stdout) {
        (true, _) => Console::sink(),
        (false, true) => Console::stderr(),
        (false, false) => Console::stdout(),
    };
    // An unwritable report path is bad input: find out before the VM runs.
    let mut report_file = match &args.report {
        Some(p) if p.as_os_str() != "-" => match std::fs::File::create(p) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!(
                    "memvisor: error: cannot create report file {}: {e}",
                    p.display()
                );
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        },
        _ => None,
    };
    let opts = RunOptions {
        console,
        api_sock: args.api_sock.clone(),
        wait_for_start: args.wait_for_start,
    };
    let report = match vmm::run(resources, opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("memvisor: error: {}", error_chain(&e));
            // Leave nothing behind: the report file was created empty.
            if let (Some(f), Some(p)) = (report_file.take(), args.report.as_ref()) {
                drop(f);
                let _ = std::fs::remove_file(p);
            }
            let code = match e {
                VmmError::Build(_) | VmmError::Api(_) | VmmError::WaitWithoutApi => EXIT_BAD_INPUT,
                _ => 1,
            };
            return ExitCode::from(code);
        }
    };
    let code = report.exit.code;
    let json = report.to_json();
    // Writes to stdout may meet a closed pipe (`| head`): that ends our
    // output, not the run, and never a panic.
    if to_stdout {
        // stdout carries the JSON alone; the summary would corrupt it.
        let _ = writeln!(std::io::stdout().lock(), "{json}");
    } else {
        if let Some(f) = report_file.as_mut() {
            if let Err(e) = f.write_all((json + "\n").as_bytes()) {
                eprintln!("memvisor: warning: cannot write the report: {e}");
            }
        }
        if !args.quiet {
            let _ = std::io::stdout()
                .lock()
                .write_all(report.summary().as_bytes());
        }
    }
    if code != 0 && (args.quiet || to_stdout) {
        // Quiet hides the summary, not why a run failed.
        let _ = writeln!(
            std::io::stderr().lock(),
            "memvisor: {} (exit {code}): {}",
            report.exit.status.word(),
            report.exit.reason
        );
    }
    ExitCode::from(code as u8)
}

/// `memvisor balloon …`: one request, the answer's body on stdout; a
/// refusal (4xx) is bad input (exit 2), an unreachable socket exit 1.
fn balloon(action: BalloonAction, sock: Option<PathBuf>) -> ExitCode {
    let Some(sock) = sock else {
        eprintln!("memvisor: balloon: error: --api-sock PATH is required (the socket of `memvisor run --api-sock PATH`)");
        return ExitCode::from(EXIT_BAD_INPUT);
    };
    let set_mib = match action {
        BalloonAction::Set { amount_mib } => Some(amount_mib),
        _ => None,
    };
    let (method, uri, body) = match action {
        BalloonAction::Set { amount_mib } => (
            "PATCH",
            "/balloon",
            Some(format!("{{\"amount_mib\": {amount_mib}}}")),
        ),
        BalloonAction::Get => ("GET", "/balloon", None),
        BalloonAction::Stats { interval: None } => ("GET", "/balloon/statistics", None),
        BalloonAction::Stats { interval: Some(s) } => (
            "PATCH",
            "/balloon/statistics",
            Some(format!("{{\"stats_polling_interval_s\": {s}}}")),
        ),
    };
    match memvisor::api::client::request(&sock, method, uri, body.as_deref()) {
        Ok((status, text)) if (200..300).contains(&status) => {
            if !text.is_empty() {
                let pretty = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| serde_json::to_string_pretty(&v).ok())
                    .unwrap_or(text);
                let _ = writeln!(std::io::stdout().lock(), "{pretty}");
            }
            ExitCode::SUCCESS
        }
        Ok((status, text)) => {
            let msg = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("fault_message")?.as_str().map(str::to_owned))
                .unwrap_or(text);
            let what = set_mib.map_or_else(String::new, |n| too_large(&sock, n, &msg));
            eprintln!("memvisor: balloon: error: {method} {uri} answered {status}: {msg}{what}");
            ExitCode::from(if status < 500 { EXIT_BAD_INPUT } else { 1 })
        }
        Err(e) => {
            eprintln!(
                "memvisor: balloon: error: cannot reach the API at {}: {e}",
                sock.display()
            );
            ExitCode::from(1)
        }
    }
}

/// Firecracker's refusal of a target names neither the amount nor the
/// limit; a user of `balloon set` is told both (the limit from
/// `GET /machine-config`, when it answers).
fn too_large(sock: &std::path::Path, amount_mib: u32, msg: &str) -> String {
    use memvisor::devices::virtio::balloon::BalloonError;
    if msg != BalloonError::TooManyPagesRequested.to_string() {
        return String::new();
    }
    let ram = memvisor::api::client::request(sock, "GET", "/machine-config", None)
        .ok()
        .and_then(|(_, t)| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("mem_size_mib")?.as_u64());
    match ram {
        Some(m) => format!(" (amount {amount_mib} MiB; valid: 0 to {m}, the guest's RAM)"),
        None => format!(" (amount {amount_mib} MiB; valid: 0 to the guest's RAM)"),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s += ": ";
            s += &m;
        }
        cur = c.source();
    }
    s
}
