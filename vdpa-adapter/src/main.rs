//! `vdpa-adapter`: plan vhost-vdpa IOTLB operations for a scenario.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use vdpa_adapter::report::{comparison_table, detail_table, json};
use vdpa_adapter::{run, AdapterError, Scenario, StrategyKind, DEFAULT_SCENARIO};

#[derive(Parser)]
#[command(
    version,
    about = "Plans vhost-vdpa IOTLB operations for live migration with shadow virtqueues"
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
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

fn plan(
    scenario: Option<PathBuf>,
    strategy: Option<StrategyKind>,
    format: Format,
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
    Ok(match (format, strategy) {
        (Format::Table, None) => {
            let runs = StrategyKind::available(&scn)
                .into_iter()
                .map(|k| run(&scn, &origin, k))
                .collect::<Result<Vec<_>, _>>()?;
            comparison_table(&scn.caps, &runs)
        }
        (Format::Table, Some(k)) => detail_table(&scn.caps, &run(&scn, &origin, k)?),
        (Format::Json, k) => {
            let r = run(&scn, &origin, k.unwrap_or(StrategyKind::Identity))?;
            let mut s =
                serde_json::to_string_pretty(&json(&r)).expect("a JSON value always serializes");
            s.push('\n');
            s
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
        } => plan(scenario, strategy, format),
    };
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vdpa-adapter: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                eprintln!("  caused by: {s}");
                src = s.source();
            }
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
