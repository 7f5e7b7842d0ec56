//! `vdpa-adapter`: plan vhost-vdpa IOTLB operations for a scenario, and
//! apply them to a real `/dev/vhost-vdpa-N`.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use vdpa_adapter::apply::Applier;
use vdpa_adapter::bench::{bench, BenchConfig};
use vdpa_adapter::device::VhostVdpa;
use vdpa_adapter::host::procfs::{self, Limits};
use vdpa_adapter::memory::{svq_bytes, Backing, Mem};
use vdpa_adapter::output::show::Show;
use vdpa_adapter::output::{self, bytes, Format};
use vdpa_adapter::scenario::{parse_num, Host};
use vdpa_adapter::session::{run_on_device, DeviceRun, HostMemory, StepOutcome};
use vdpa_adapter::sink::ModelDevice;
use vdpa_adapter::uapi::MsgFormat;
use vdpa_adapter::{run, AdapterError, Scenario, StrategyKind, DEFAULT_SCENARIO};

/// Writes to stdout; a reader that went away (`| head`) ends the process
/// quietly with success, as the tools around it do, instead of a panic.
fn emit(args: fmt::Arguments<'_>, newline: bool) {
    let mut o = std::io::stdout().lock();
    let r = o
        .write_fmt(args)
        .and_then(|()| if newline { o.write_all(b"\n") } else { Ok(()) })
        .and_then(|()| o.flush());
    if let Err(e) = r {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("vdpa-adapter: writing to stdout: {e}");
        std::process::exit(4);
    }
}

macro_rules! outln {
    ($($t:tt)*) => { emit(format_args!($($t)*), true) };
}

macro_rules! out {
    ($($t:tt)*) => { emit(format_args!($($t)*), false) };
}

const EXIT_CODES: &str = "Exit status:
  0  success (also when the reader of stdout goes away, as with | head)
  1  usage error (clap)
  2  bad input: a scenario file that cannot be read or parsed, a step the
     planner refuses
  3  a plan the device or the kernel model refuses, or a layout check that
     fails (a bug: please report it)
  4  environment: no permission, device missing or busy, memlock or the
     device's entry limit too low";

#[derive(Parser)]
#[command(
    version,
    about = "Plans vhost-vdpa IOTLB operations for live migration with shadow virtqueues",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Plan a scenario without any device. With no file, plans the built-in
    /// default (a 64 GiB guest, 8 queue pairs, one failed and one completed
    /// migration) and compares the identity strategy with QEMU's.
    Plan {
        /// Scenario file (TOML). Omit for the built-in default.
        scenario: Option<PathBuf>,
        /// Only this strategy, with every operation listed (table) or as the
        /// JSON document (json; identity when not given).
        #[arg(long, value_enum)]
        strategy: Option<StrategyKind>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Also draw the device's IOVA space after every step, every
        /// strategy side by side: one SVG per step in this directory.
        #[arg(long, value_name = "DIR")]
        svg: Option<PathBuf>,
    },
    /// The vDPA devices of this host, from sysfs (opens nothing).
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// What sysfs and the vdpa netlink view (iproute2's `vdpa`) tell about a
    /// device, without opening it: works while a VM owns it.
    Show {
        /// A vdpa name (vdpa0) or a device node (/dev/vhost-vdpa-0).
        device: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// What a device offers (opens it, becomes its owner, negotiates; fails
    /// with EBUSY while a VM uses it: see `show`).
    Probe {
        /// The device, e.g. /dev/vhost-vdpa-0.
        device: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Run a scenario's plans on a device, with real memory for every region
    /// and vring buffer (each guest page tagged with its GPA), or on the
    /// kernel model with --dry-run.
    Apply {
        /// Scenario file (TOML).
        scenario: PathBuf,
        /// The device (required unless --dry-run).
        #[arg(long, required_unless_present = "dry_run")]
        device: Option<PathBuf>,
        /// Send every plan to the kernel model instead of a device (no
        /// memory is allocated; the scenario's HVAs are used as they are).
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        backing: BackingArgs,
        /// Strategy.
        #[arg(long, value_enum, default_value_t = StrategyKind::Identity)]
        strategy: StrategyKind,
        /// Whether the device pins memory (default: from its driver).
        #[arg(long)]
        pinning: Option<bool>,
        /// Which host of the scenario this device plays: source,
        /// destination, or destination N for the Nth migration's.
        #[arg(long, default_value = "source", value_parser = parse_host)]
        host: Host,
        /// Do not ack VHOST_BACKEND_F_IOTLB_PERSIST even when the device
        /// offers it: a reset then makes a set_map or dma_map device forget
        /// its maps, and the planner restores them (as QEMU always runs).
        #[arg(long)]
        no_persist: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Time the SVQ switch and the failback on a device, identity against
    /// QEMU's strategy, in the same run.
    Bench {
        /// The device.
        #[arg(long)]
        device: PathBuf,
        /// Guest memory, e.g. 4GiB.
        #[arg(long, value_parser = size_arg)]
        guest_mem: u64,
        /// Shadow virtqueues.
        #[arg(long, default_value_t = 3)]
        queues: u32,
        /// Regions the guest memory is split into.
        #[arg(long, default_value_t = 1)]
        regions: u32,
        /// Repeats per strategy.
        #[arg(long, default_value_t = 5)]
        repeats: u32,
        #[command(flatten)]
        backing: BackingArgs,
        /// Whether the device pins memory (default: from its driver).
        #[arg(long)]
        pinning: Option<bool>,
        /// No progress spinner (logs, serial consoles).
        #[arg(long)]
        no_progress: bool,
        /// Also time a completed migration's downtime windows: the source's
        /// stop-and-copy and the destination's start after a reset.
        #[arg(long)]
        migration: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Print a shell completion script, e.g.
    /// `vdpa-adapter completions bash > /etc/bash_completion.d/vdpa-adapter`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g.
    /// `vdpa-adapter man > /usr/local/share/man/man1/vdpa-adapter.1`.
    Man,
}

/// `--host`: a host's name in the scenario format.
fn parse_host(s: &str) -> Result<Host, String> {
    Host::parse(s)
        .ok_or_else(|| format!("{s:?}: expected source, destination, or destination N (N >= 2)"))
}

#[derive(Args, Clone, Copy)]
#[group(multiple = false)]
struct BackingArgs {
    /// Back guest memory with a memfd mapped shared (the default).
    #[arg(long)]
    memfd: bool,
    /// Private anonymous memory (a use_va device would skip it: refused).
    #[arg(long)]
    anon: bool,
    /// A memfd on huge pages.
    #[arg(long)]
    hugepages: bool,
}

impl BackingArgs {
    fn get(self) -> Backing {
        if self.anon {
            Backing::Anon
        } else if self.hugepages {
            Backing::Hugepages
        } else {
            Backing::Memfd
        }
    }
}

fn size_arg(s: &str) -> Result<u64, String> {
    parse_num(s).ok_or_else(|| format!("{s:?} is not a size (4096, 0x1000, 64GiB)"))
}

fn read_scenario(p: &Path) -> Result<(Scenario, String), AdapterError> {
    let origin = p.display().to_string();
    let text = std::fs::read_to_string(p).map_err(|source| AdapterError::ReadScenario {
        file: origin.clone(),
        source,
    })?;
    Ok((Scenario::parse(&text, &origin)?, origin))
}

fn probe_cmd(device: &Path, format: Format) -> Result<String, AdapterError> {
    let mut d = VhostVdpa::open(device)?;
    let p = d.probe()?;
    let caps = p.caps(p.pins_memory())?;
    Ok(match format {
        Format::Json => output::probe::json(&p, &caps),
        Format::Table => output::probe::table(&p, &caps),
    })
}

/// The backend features `apply` must not ack: IOTLB_PERSIST with
/// `--no-persist`.
fn withheld_features(no_persist: bool) -> u64 {
    if no_persist {
        1 << vdpa_adapter::uapi::backend::IOTLB_PERSIST
    } else {
        0
    }
}

/// `apply`'s arguments, as the command line gave them.
struct ApplyOptions<'a> {
    scenario: &'a Path,
    device: Option<&'a Path>,
    dry_run: bool,
    backing: Backing,
    strategy: StrategyKind,
    pinning: Option<bool>,
    host: Host,
    no_persist: bool,
    format: Format,
}

fn apply_cmd(opts: ApplyOptions<'_>) -> Result<String, AdapterError> {
    let ApplyOptions {
        scenario,
        device,
        dry_run,
        backing,
        strategy,
        pinning,
        host,
        no_persist,
        format,
    } = opts;
    let (scn, origin) = read_scenario(scenario)?;
    if host.index() >= scn.host_count() {
        return Err(AdapterError::Scenario {
            file: origin,
            what: format!(
                "--host {host}: the scenario has {} host(s), the last the {}",
                scn.host_count(),
                vdpa_adapter::scenario::Host::nth(scn.host_count() as u32 - 1)
            ),
        });
    }
    let table = format == Format::Table;
    let on_step = |i: usize, o: &StepOutcome| {
        if table {
            outln!("{}", output::apply::step_line(i, o));
        }
    };
    if dry_run {
        let caps = scn.caps;
        let format = MsgFormat::V2 {
            asid: caps.address_spaces > 1,
        };
        let mut a = Applier::new(ModelDevice::new(&caps, format), caps, format);
        let mut mem = HostMemory::new(None);
        if table {
            outln!("{}", output::apply::heading(None, &caps));
        }
        let run = DeviceRun {
            scn: &scn,
            file: &origin,
            device: "kernel model",
            caps,
            kind: strategy,
            // Nothing is pinned on a model: this machine's memlock does not
            // apply; the scenario's entry limit does.
            limits: Some(Limits {
                memlock: None,
                pinned_now: 0,
                max_entries: scn.max_entries,
            }),
            host,
        };
        let steps = run_on_device(run, &mut a, &mut mem, on_step)?;
        return Ok(if table {
            String::new()
        } else {
            output::apply::json("kernel model", &caps, strategy, host, &steps)
        });
    }
    let device = device.expect("clap requires --device without --dry-run");
    // Before the device is opened or any page allocated and tagged: a
    // 64 GiB scenario on a smaller host is refused here, not by the OOM killer.
    HostMemory::new(Some(backing))
        .check_room(scn.steps_on(host), vdpa_adapter::device::PAGE_SIZE)?;
    let mut d = VhostVdpa::open(device)?;
    let p = d.probe_without(withheld_features(no_persist))?;
    let caps = p.caps(pinning.unwrap_or_else(|| p.pins_memory()))?;
    if table {
        outln!("{}", output::apply::heading(Some(device), &caps));
    }
    let name = device.display().to_string();
    let mut mem = HostMemory::new(Some(backing));
    let mut a = Applier::new(&mut d, caps, p.format());
    let run = DeviceRun {
        scn: &scn,
        file: &origin,
        device: &name,
        caps,
        kind: strategy,
        limits: None,
        host,
    };
    let steps = run_on_device(run, &mut a, &mut mem, on_step)?;
    Ok(if table {
        String::new()
    } else {
        output::apply::json(&name, &caps, strategy, host, &steps)
    })
}

fn bench_cmd(
    device: &Path,
    cfg: BenchConfig,
    backing: Backing,
    pinning: Option<bool>,
    progress: bool,
    format: Format,
) -> Result<String, AdapterError> {
    let mut d = VhostVdpa::open(device)?;
    let p = d.probe()?;
    let caps = p.caps(pinning.unwrap_or_else(|| p.pins_memory()))?;
    let memory = |what: &str, size: u64| {
        Mem::new(size, backing, what).map_err(|source| AdapterError::Memory {
            what: format!("{} of {what}", bytes(size)),
            source,
        })
    };
    let mut guest = memory("guest memory", cfg.guest_mem)?;
    guest.tag_pages(0, 4096, vdpa_adapter::session::TAG_MAGIC);
    let svq_bytes = svq_bytes(&cfg.svq(vdpa_iova_planner::Hva(0)), caps.page_size)
        .map_err(|e| AdapterError::device("bench", e.to_string()))?;
    let svq = memory("vring buffers", svq_bytes)?;
    let maps = (!caps.pinning)
        .then(|| std::fs::read_to_string("/proc/self/maps").ok())
        .flatten()
        .map(|t| procfs::parse_maps(&t));
    let bar = if progress {
        indicatif::ProgressBar::new_spinner()
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_message("pinning guest memory");
    // SAFETY: `guest` and `svq` are mappings of this process, large enough
    // for the benchmark's regions and vrings, alive until after `bench`
    // returns with nothing left mapped on the device.
    let rows = unsafe {
        bench(
            &mut d,
            caps,
            p.format(),
            &cfg,
            (guest.addr(), svq.addr()),
            maps.as_deref(),
            |m| {
                bar.set_message(m.to_string());
                bar.tick();
            },
        )
    }?;
    bar.finish_and_clear();
    if format == Format::Json {
        return Ok(output::bench::json(device, &caps, &cfg, backing, &rows));
    }
    let out = output::bench::table(device, &caps, &cfg, backing, &rows);
    drop(svq);
    drop(guest);
    Ok(out)
}

fn plan(
    scenario: Option<PathBuf>,
    strategy: Option<StrategyKind>,
    format: Format,
    svg: Option<&Path>,
) -> Result<String, AdapterError> {
    let (text, origin) = match &scenario {
        Some(p) => {
            let origin = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|source| AdapterError::ReadScenario {
                file: origin.clone(),
                source,
            })?;
            (text, origin)
        }
        None => (
            DEFAULT_SCENARIO.to_string(),
            "built-in default scenario".to_string(),
        ),
    };
    let scn = Scenario::parse(&text, &origin)?;
    if let Some(dir) = svg {
        let kinds = match strategy {
            Some(k) => vec![k],
            None => StrategyKind::available(&scn),
        };
        let runs = kinds
            .into_iter()
            .map(|k| run(&scn, &origin, k))
            .collect::<Result<Vec<_>, _>>()?;
        let write = |name: &str, body: &str| {
            std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(dir.join(name), body))
                .map_err(|source| AdapterError::Memory {
                    what: format!("writing {}", dir.join(name).display()),
                    source,
                })
        };
        for (name, body) in output::picture::pictures(&scn.caps, &runs) {
            write(&name, &body)?;
        }
    }
    Ok(match (format, strategy) {
        (Format::Table, None) => {
            let runs = StrategyKind::available(&scn)
                .into_iter()
                .map(|k| run(&scn, &origin, k))
                .collect::<Result<Vec<_>, _>>()?;
            output::plan::comparison_table(&scn.caps, &runs)
        }
        (Format::Table, Some(k)) => output::plan::detail_table(&scn.caps, &run(&scn, &origin, k)?),
        (Format::Json, k) => {
            let r = run(&scn, &origin, k.unwrap_or(StrategyKind::Identity))?;
            output::document(&output::plan::json(&r))
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Plan {
            scenario,
            strategy,
            format,
            svg,
        } => plan(scenario, strategy, format, svg.as_deref()),
        Cmd::Probe { device, format } => probe_cmd(&device, format),
        Cmd::List { format } => {
            let devs = vdpa_adapter::host::sysfs::vdpa_devices();
            Ok(match format {
                Format::Json => output::list::json(&devs),
                Format::Table => output::list::table(&devs),
            })
        }
        Cmd::Show { device, format } => Show::read(&device).map(|s| match format {
            Format::Json => s.json(),
            Format::Table => s.table(),
        }),
        Cmd::Apply {
            scenario,
            device,
            dry_run,
            backing,
            strategy,
            pinning,
            host,
            no_persist,
            format,
        } => apply_cmd(ApplyOptions {
            scenario: &scenario,
            device: device.as_deref(),
            dry_run,
            backing: backing.get(),
            strategy,
            pinning,
            host,
            no_persist,
            format,
        }),
        Cmd::Bench {
            device,
            guest_mem,
            queues,
            regions,
            repeats,
            backing,
            pinning,
            no_progress,
            migration,
            format,
        } => bench_cmd(
            &device,
            BenchConfig {
                guest_mem,
                queues,
                regions,
                repeats,
                migration,
            },
            backing.get(),
            pinning,
            !no_progress,
            format,
        ),
        Cmd::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "vdpa-adapter",
                &mut buf,
            );
            Ok(String::from_utf8(buf).expect("completion scripts are text"))
        }
        Cmd::Man => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut buf)
                .expect("rendering to memory cannot fail");
            Ok(String::from_utf8(buf).expect("roff is text"))
        }
    };
    match result {
        Ok(out) => {
            out!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vdpa-adapter: {e}");
            // Each cause once: messages that already include their source's
            // text (most of ours do) do not repeat it.
            let mut shown = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                let text = s.to_string();
                if !shown.contains(&text) {
                    eprintln!("  caused by: {text}");
                    shown.push_str(&text);
                }
                src = s.source();
            }
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--no-persist` withholds exactly VHOST_BACKEND_F_IOTLB_PERSIST (bit 8).
    #[test]
    fn no_persist_withholds_the_persist_bit_only() {
        assert_eq!(withheld_features(true), 0x100);
        assert_eq!(withheld_features(false), 0);
    }
}
