//! What `plan` prints: the comparison of strategies, one strategy's every
//! operation, and the JSON document of one run.

use std::fmt::Write as _;

use serde_json::{json, Value};
use vdpa_iova_planner::{DeviceCaps, OpKind};

use super::{bytes, dec, describe, hex, SCHEMA_VERSION};
use crate::runner::RunReport;
use crate::scenario::Host;

/// A strategy's column heading in the critical-phase tables.
fn critical_head(strategy: &str) -> String {
    format!(
        " | {:>9} {:>15} {:>15}",
        format!("{strategy} ops"),
        "pinned",
        "unpinned"
    )
}

/// A cost's cell in the critical-phase tables: messages, pinned, unpinned.
fn critical_cell(c: &vdpa_iova_planner::Cost) -> String {
    format!(
        " | {:>9} {:>15} {:>15}",
        c.critical_messages,
        bytes(c.critical_pinned_bytes),
        bytes(c.critical_unpinned_bytes)
    )
}

fn ratio(ours: u64, theirs: u64) -> String {
    match (ours, theirs) {
        (0, 0) => "-".to_string(),
        (0, _) => "inf".to_string(),
        (a, b) => format!("{:.1}x", b as f64 / a as f64),
    }
}

/// The comparison table: per step, the critical phase of every strategy,
/// and the ratio of critical pinned bytes of the last strategy over the first.
pub fn comparison_table(caps: &DeviceCaps, runs: &[RunReport]) -> String {
    let mut out = String::new();
    let first = &runs[0];
    let _ = writeln!(out, "scenario: {}", first.name);
    let _ = writeln!(out, "device:   {}", describe(caps));
    let _ = writeln!(out, "critical phase (device stopped), per step:");
    let _ = writeln!(out);
    let mut head = format!("{:<4} {:<4} {:<12}", "step", "host", "event");
    for r in runs {
        head.push_str(&critical_head(r.strategy));
    }
    let _ = write!(head, " | {:>9}", "ratio");
    let _ = writeln!(out, "{head}");
    let _ = writeln!(out, "{}", "-".repeat(head.len()));
    let last = &runs[runs.len() - 1];
    let pinned = |r: &RunReport, i: usize| r.steps.get(i).map(|s| s.cost.critical_pinned_bytes);
    let longest = runs
        .iter()
        .max_by_key(|r| r.steps.len())
        .expect("at least one run");
    for (i, step) in longest.steps.iter().enumerate() {
        let mut line = format!("{:<4} {:<4} {:<12}", i, step.host.short(), step.event);
        for r in runs {
            match r.steps.get(i) {
                Some(s) => {
                    let c = &s.cost;
                    line.push_str(&critical_cell(c));
                }
                None => {
                    let at_stop = r.stopped.as_ref().is_some_and(|st| st.step == i);
                    let _ = write!(line, " | {:>41}", if at_stop { "refused" } else { "-" });
                }
            }
        }
        let r = match (pinned(first, i), pinned(last, i)) {
            (Some(a), Some(b)) => ratio(a, b),
            _ => "-".to_string(),
        };
        let _ = write!(line, " | {r:>9}");
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out, "{}", "-".repeat(head.len()));
    let mut tot = format!("{:<22}", "total");
    let sum = |r: &RunReport| {
        r.steps
            .iter()
            .fold(Default::default(), |a: vdpa_iova_planner::Cost, s| {
                a.add(&s.cost)
            })
    };
    for r in runs {
        let c = sum(r);
        tot.push_str(&critical_cell(&c));
    }
    let _ = write!(
        tot,
        " | {:>9}",
        ratio(
            sum(first).critical_pinned_bytes,
            sum(last).critical_pinned_bytes
        )
    );
    let _ = writeln!(out, "{tot}");
    let _ = writeln!(
        out,
        "ratio: critical bytes pinned by {} over {} (inf: {} pins nothing while the device is stopped)",
        last.strategy, first.strategy, first.strategy
    );
    let _ = writeln!(out);
    out += &downtime_table(runs);
    for r in runs {
        let c = sum(r);
        let lost = r
            .steps
            .iter()
            // Nothing must be reachable once a migration completed, nor on
            // a destination before its guest starts.
            .filter(|s| {
                !matches!(
                    s.mode,
                    vdpa_iova_planner::Mode::Completed
                        | vdpa_iova_planner::Mode::Incoming
                        | vdpa_iova_planner::Mode::Switchover
                )
            })
            .map(|s| s.unreachable_bytes)
            .max()
            .unwrap_or(0);
        let peak = r.steps.iter().map(|s| s.peak_entries).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "{:<13} all phases: {} messages, {} pinned, {} unpinned; guest memory the device could not reach: {}; at most {peak} entries in one address space",
            r.strategy,
            c.messages,
            bytes(c.pinned_bytes),
            bytes(c.unpinned_bytes),
            bytes(lost)
        );
        let quirks: usize = r.steps.iter().map(|s| s.quirks.len()).sum();
        if quirks > 0 {
            let _ = writeln!(
                out,
                "{:<13} {quirks} message(s) the kernel took differently than meant (partial unmaps dropped whole entries)",
                ""
            );
        }
        if let Some(st) = &r.stopped {
            let _ = writeln!(
                out,
                "{:<13} stopped at step {} ({}): {}",
                "", st.step, st.event, st.reason
            );
        }
    }
    out
}

/// What a run sends on `host` around a migration's pause (the tables show
/// its critical part): on the source its `complete` (stop-and-copy); on the
/// destination its steps up to and including its `start` (to the end of
/// the run if it never starts). A destination sends nothing critical
/// before its `switchover` (the guest still runs on the source), so the
/// critical part is what it sends from the source's stop to its start, a
/// reset's restore or a vIOMMU's maps in between included. `None` when the
/// run has no such step.
fn window_cost(r: &RunReport, host: Host, source: bool) -> Option<vdpa_iova_planner::Cost> {
    let on_host = r.steps.iter().filter(|s| s.host == host);
    let hit: Vec<&crate::runner::StepReport> = if source {
        on_host.filter(|s| s.event == "complete").collect()
    } else {
        on_host
            .scan(false, |done, s| {
                (!*done).then(|| {
                    *done = s.event == "start";
                    s
                })
            })
            .collect()
    };
    if hit.is_empty() {
        return None;
    }
    Some(
        hit.iter()
            .fold(Default::default(), |a: vdpa_iova_planner::Cost, s| {
                a.add(&s.cost)
            }),
    )
}

/// The migrations' downtime windows, where the guest is paused: per
/// migration the source's stop-and-copy (its `complete` step) and the
/// destination's start (from the source's stop to the destination's
/// start, see [`window_cost`]). Per window and strategy, what is sent while
/// the guest waits; empty when the scenario has no migration.
fn downtime_table(runs: &[RunReport]) -> String {
    let migrations = &runs[0].migrations;
    let mut windows: Vec<(String, Host, bool)> = Vec::new();
    for m in migrations {
        windows.push((format!("{} stop-and-copy", m.source), m.source, true));
        windows.push((format!("{} start", m.destination), m.destination, false));
    }
    let any = windows
        .iter()
        .any(|(_, h, src)| runs.iter().any(|r| window_cost(r, *h, *src).is_some()));
    if !any {
        return String::new();
    }
    let width = windows.iter().map(|w| w.0.len()).max().unwrap_or(0).max(22);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "migration downtime (guest paused), what each window sends while the guest waits:"
    );
    let mut head = format!("{:<width$}", "window");
    for r in runs {
        head.push_str(&critical_head(r.strategy));
    }
    let _ = writeln!(out, "{head}");
    let _ = writeln!(out, "{}", "-".repeat(head.len()));
    let mut totals = vec![vdpa_iova_planner::Cost::default(); runs.len()];
    for (label, host, source) in windows {
        let mut line = format!("{label:<width$}");
        for (r, t) in runs.iter().zip(totals.iter_mut()) {
            match window_cost(r, host, source) {
                Some(c) => {
                    *t = t.add(&c);
                    line.push_str(&critical_cell(&c));
                }
                None => {
                    let _ = write!(line, " | {:>41}", "-");
                }
            }
        }
        let _ = writeln!(out, "{line}");
    }
    let mut line = format!("{:<width$}", "total");
    for c in &totals {
        line.push_str(&critical_cell(c));
    }
    let _ = writeln!(out, "{line}");
    let _ = writeln!(out);
    out
}

/// Every operation of every step of one run.
pub fn detail_table(caps: &DeviceCaps, run: &RunReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "scenario: {} ({} strategy)", run.name, run.strategy);
    let _ = writeln!(out, "device:   {}", describe(caps));
    for (i, s) in run.steps.iter().enumerate() {
        let c = &s.cost;
        let _ = writeln!(
            out,
            "\nstep {i}: {}{} -> {} | {} messages ({} critical), pinned {} ({} critical)",
            if s.host == Host::SOURCE {
                String::new()
            } else {
                format!("{} ", s.host)
            },
            s.event,
            s.mode,
            c.messages,
            c.critical_messages,
            bytes(c.pinned_bytes),
            bytes(c.critical_pinned_bytes)
        );
        for op in &s.ops {
            let body = match op.kind {
                OpKind::Update { iova, hva, perm } => {
                    format!(
                        "update     {iova} ({}) -> hva {hva} {}",
                        bytes(iova.size()),
                        perm.as_str()
                    )
                }
                OpKind::Invalidate { iova } => {
                    format!("invalidate {iova} ({})", bytes(iova.size()))
                }
                k @ (OpKind::BatchBegin | OpKind::BatchEnd) => k.as_str().to_string(),
            };
            let _ = writeln!(out, "  {:<10} asid {} {body}", op.phase.as_str(), op.asid);
        }
        for d in &s.displaced {
            let _ = writeln!(
                out,
                "  displaced: gpa {:#x} ({}) at iova {:#x}",
                d.gpa,
                bytes(d.size),
                d.iova
            );
        }
        if s.unreachable_bytes > 0 {
            let _ = writeln!(
                out,
                "  unreachable guest memory: {}",
                bytes(s.unreachable_bytes)
            );
        }
        for q in &s.quirks {
            let _ = writeln!(out, "  kernel: {q}");
        }
    }
    if let Some(st) = &run.stopped {
        let _ = writeln!(
            out,
            "\nstep {}: {} refused: {}",
            st.step, st.event, st.reason
        );
    }
    out
}

/// The JSON document of one run (the format the README documents).
pub fn json(run: &RunReport) -> Value {
    let steps: Vec<Value> = run
        .steps
        .iter()
        .map(|s| {
            let ops: Vec<Value> = s
                .ops
                .iter()
                .map(|op| {
                    let mut o = json!({"kind": op.kind.as_str(), "phase": op.phase.as_str(), "asid": op.asid});
                    match op.kind {
                        OpKind::Update { iova, hva, perm } => {
                            o["iova"] = hex(iova.first().0);
                            o["size"] = hex(iova.size());
                            o["hva"] = hex(hva.0);
                            o["perm"] = json!(perm.as_str());
                        }
                        OpKind::Invalidate { iova } => {
                            o["iova"] = hex(iova.first().0);
                            o["size"] = hex(iova.size());
                        }
                        OpKind::BatchBegin | OpKind::BatchEnd => {}
                    }
                    o
                })
                .collect();
            let c = &s.cost;
            json!({
                "host": s.host.name(),
                "event": s.event,
                "implied": !s.written,
                "mode": s.mode.to_string(),
                "ops": ops,
                "cost": {
                    "pinned_bytes": dec(c.pinned_bytes),
                    "critical_pinned_bytes": dec(c.critical_pinned_bytes),
                    "unpinned_bytes": dec(c.unpinned_bytes),
                    "critical_unpinned_bytes": dec(c.critical_unpinned_bytes),
                    "messages": c.messages,
                    "critical_messages": c.critical_messages,
                    "critical_batch_ends": c.critical_batch_ends,
                },
                "svq": s.svq.iter().map(|a| json!({
                    "asid": a.asid, "vq": a.vq, "area": a.area.as_str(), "iova": hex(a.iova.first().0), "size": hex(a.iova.size()), "hva": hex(a.hva.0),
                })).collect::<Vec<_>>(),
                "displaced": s.displaced.iter().map(|d| json!({"gpa": hex(d.gpa), "iova": hex(d.iova), "size": hex(d.size)})).collect::<Vec<_>>(),
                "host_buffers": s.buffers.iter().map(|(asid, e)| json!({
                    "asid": asid, "iova": hex(e.iova.first().0), "size": hex(e.iova.size()), "perm": e.perm.as_str(), "hva": hex(e.hva.0),
                })).collect::<Vec<_>>(),
                "unreachable_bytes": dec(s.unreachable_bytes),
                "peak_entries": s.peak_entries,
                "kernel_quirks": s.quirks,
            })
        })
        .collect();
    let stopped = run
        .stopped
        .as_ref()
        .map(|st| json!({"step": st.step, "event": st.event, "reason": st.reason}));
    let migrations: Vec<Value> = run
        .migrations
        .iter()
        .map(|m| json!({"source": m.source.name(), "destination": m.destination.name()}))
        .collect();
    json!({"schema_version": SCHEMA_VERSION, "name": run.name, "strategy": run.strategy, "migrations": migrations, "steps": steps, "stopped": stopped})
}
