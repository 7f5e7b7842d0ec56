//! QEMU's own recordings of its vhost-vdpa messages (`.ci/rig/qemu/`):
//! the trace lines ([`parse`]), the scenario and plan they imply
//! ([`convert`]), the baseline held to them ([`compare`]), and the
//! figures they give ([`measure`]).
//!
//! A recording set is a folder per run (`256M/`, `1G/`, `nocvq/`), each
//! with a source QEMU's trace files (`a-boot.trace`, `b-cancel.trace`,
//! `c-source.trace`: one process, read in name order) and, for a completed
//! migration, the destination's (`c-destination.trace`), plus the
//! monitors' transcripts (`src.monitor`, `dst.monitor`).

pub mod compare;
pub mod convert;
pub mod measure;
pub mod parse;

use std::fs;
use std::path::{Path, PathBuf};

use convert::{Role, Scenario};

/// A recording on disk: a run folder and one QEMU process of it.
#[derive(Clone, Debug)]
pub struct Recording {
    /// `RUN/source` or `RUN/destination`.
    pub name: String,
    /// Which process.
    pub role: Role,
    /// Its trace files, in order.
    pub files: Vec<PathBuf>,
}

/// The recordings of a folder of runs: per run, the source (every
/// `*.trace` but the destination's, in name order) and the destination.
///
/// # Errors
/// A folder that cannot be read, or holds no run.
pub fn recordings(dir: &Path) -> Result<Vec<Recording>, String> {
    let rd = |p: &Path| fs::read_dir(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut runs: Vec<PathBuf> = rd(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    runs.sort();
    let mut out = Vec::new();
    for run in runs {
        let mut traces: Vec<PathBuf> = rd(&run)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "trace"))
            .collect();
        traces.sort();
        let (dst, src): (Vec<PathBuf>, Vec<PathBuf>) = traces.into_iter().partition(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains("destination"))
        });
        let run_name = run
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned());
        if !src.is_empty() {
            out.push(Recording {
                name: format!("{run_name}/source"),
                role: Role::Source,
                files: src,
            });
        }
        if !dst.is_empty() {
            out.push(Recording {
                name: format!("{run_name}/destination"),
                role: Role::Destination,
                files: dst,
            });
        }
    }
    if out.is_empty() {
        return Err(format!("{}: no recording (no RUN/*.trace)", dir.display()));
    }
    Ok(out)
}

/// The trace lines of a recording's files, in order (line numbers count
/// across the files).
///
/// # Errors
/// A file that cannot be read or a line that does not parse.
pub fn read_lines(rec: &Recording) -> Result<Vec<parse::Line>, String> {
    let mut text = String::new();
    for f in &rec.files {
        text.push_str(&fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?);
        if !text.ends_with('\n') && !text.is_empty() {
            text.push('\n');
        }
    }
    parse::parse_trace(&text).map_err(|e| format!("{}: {e}", rec.name))
}

/// Reads and converts a recording.
///
/// # Errors
/// As [`read_lines`] and [`convert::convert`].
pub fn load(rec: &Recording) -> Result<(Vec<parse::Line>, Scenario), String> {
    let lines = read_lines(rec)?;
    let sc = convert::convert(&rec.name, rec.role, &lines).map_err(|e| e.to_string())?;
    Ok((lines, sc))
}
