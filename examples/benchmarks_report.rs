//! Regenerates `BENCHMARKS.md` and `benchmarks.svg` from the results of
//! `cargo bench` (criterion's JSON under `target/criterion`, the memory
//! figures in `target/bench-memory.json`) and from plans computed here.
//!
//! ```sh
//! cargo bench --bench planner && cargo bench --bench memory
//! cargo run --release --example benchmarks_report
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use vdpa_iova_planner::{
    Cost, DeviceCaps, Event, Gpa, Hva, IdentityPlanner, QemuPlanner, RegionSpec, Strategy,
    SvqConfig,
};

const GIB: u64 = 1 << 30;

/// Per-byte and per-message costs measured on vdpa_sim (use_va=0) under a
/// 6.12 kernel on this kind of machine (`../shared/docs/vhost-vdpa-facts.md`):
/// 512 MiB pinned in 80 ms, unpinned in 27 ms, a 12 KiB map in 0.15 ms.
const PIN_S_PER_GIB: f64 = 0.080 * 2.0;
const UNPIN_S_PER_GIB: f64 = 0.027 * 2.0;
const S_PER_MESSAGE: f64 = 0.000_15;

fn estimate_s(c: &Cost) -> f64 {
    c.critical_pinned_bytes as f64 / GIB as f64 * PIN_S_PER_GIB
        + c.critical_unpinned_bytes as f64 / GIB as f64 * UNPIN_S_PER_GIB
        + c.critical_messages as f64 * S_PER_MESSAGE
}

/// Criterion's mean estimates, by "group/function/parameter", in ns.
fn criterion_results(root: &Path) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.ends_with("new/benchmark.json") {
                let b: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                let est: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(p.with_file_name("estimates.json")).unwrap(),
                )
                .unwrap();
                let id = b["full_id"].as_str().unwrap_or_default().to_string();
                if let Some(ns) = est["mean"]["point_estimate"].as_f64() {
                    out.insert(id, ns);
                }
            }
        }
    }
    out
}

fn ns(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} ms", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.2} µs", v / 1e3)
    } else {
        format!("{v:.1} ns")
    }
}

/// `x` as a ratio: one decimal below 10, none above.
fn ratio(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.1}x")
    } else {
        format!("{x:.0}x")
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}, {rustc}", kernel.trim())
}

struct Quality {
    guest: u64,
    regions: u64,
    /// (strategy, switch cost, failback cost)
    rows: Vec<(&'static str, Cost, Cost)>,
}

fn quality(guest: u64, regions: u64) -> Quality {
    let per = guest / regions;
    let rs: Vec<RegionSpec> = (0..regions)
        .map(|i| RegionSpec {
            // Leave a 1 GiB hole after the first region, as the PCI hole.
            gpa: Gpa(i * per + if i > 0 { GIB } else { 0 }),
            size: per,
            hva: Hva(0x1000_0000_0000 + i * per),
            readonly: false,
        })
        .collect();
    let svq = SvqConfig {
        queues: 17,
        queue_size: 256,
        hva: Hva(0x7e00_0000_0000),
    };
    let caps = DeviceCaps {
        address_spaces: 2,
        desc_asid: true,
        ..DeviceCaps::default()
    };
    let mut rows = Vec::new();
    let strategies: Vec<Box<dyn Strategy>> = vec![
        Box::new(IdentityPlanner::new(caps, Some(1 << 46)).unwrap()),
        Box::new(
            IdentityPlanner::builder(caps)
                .max_gpa(1 << 46)
                .separate_vring_asid(true)
                .build()
                .unwrap(),
        ),
        Box::new(QemuPlanner::new(caps).unwrap()),
    ];
    for mut s in strategies {
        s.apply(&Event::Boot(rs.clone())).unwrap();
        s.apply(&Event::SvqPrepare(svq)).unwrap();
        let sw = *s.apply(&Event::SvqSwitch(None)).unwrap().cost();
        let fb = *s.apply(&Event::Failback).unwrap().cost();
        rows.push((s.name(), sw, fb));
    }
    Quality {
        guest,
        regions,
        rows,
    }
}

fn bytes(n: u64) -> String {
    if n == 0 {
        "0".into()
    } else if n >= GIB {
        format!("{:.0} GiB", n as f64 / GIB as f64)
    } else {
        format!("{:.0} KiB", n as f64 / 1024.0)
    }
}

/// One strategy at one guest size, from the rig's bench output.
struct RigRow {
    /// Guest size as printed ("256 MiB").
    guest: String,
    /// Guest size in GiB.
    gib: f64,
    repeats: u32,
    strategy: String,
    /// Median, min, max in ms: switch, then failback.
    switch: [f64; 3],
    failback: [f64; 3],
    /// "pinned while stopped" as printed.
    pinned: String,
}

/// Parses `vdpa-adapter bench` output: a `guest ...` header line, then one
/// line per strategy, `name | med [min, max] | med [min, max] pinned ...`;
/// with `--migration`, a `migration downtime` line, then one line per
/// strategy for the stop-and-copy and the start (second list; `switch`
/// holds the stop-and-copy, `failback` the start, `pinned` what the
/// downtime sends).
fn rig_rows(text: &str) -> (Vec<RigRow>, Vec<RigRow>) {
    let mut out = Vec::new();
    let mut downtime = Vec::new();
    let mut in_downtime = false;
    let mut guest: Option<(String, f64, u32)> = None;
    let cell = |c: &str| -> Option<[f64; 3]> {
        let n: Vec<f64> = c
            .split(|ch: char| ch.is_whitespace() || "[],".contains(ch))
            .filter_map(|w| w.parse().ok())
            .collect();
        (n.len() >= 3).then(|| [n[0], n[1], n[2]])
    };
    for l in text.lines() {
        if l.starts_with("migration downtime") {
            in_downtime = true;
            continue;
        }
        if let Some(rest) = l.strip_prefix("guest ") {
            in_downtime = false;
            let w: Vec<&str> = rest.split_whitespace().collect();
            let n = w.first().and_then(|n| n.parse::<f64>().ok());
            let gib = match (n, w.get(1).copied()) {
                (Some(n), Some("MiB")) => Some(n / 1024.0),
                (Some(n), Some("GiB")) => Some(n),
                _ => None,
            };
            let repeats = w
                .windows(2)
                .find(|p| p[1].starts_with("repeats"))
                .and_then(|p| p[0].parse().ok())
                .unwrap_or(1);
            let huge = rest.contains("huge pages");
            guest = gib.map(|g| {
                let label = format!(
                    "{} {}{}",
                    w[0],
                    w[1],
                    if huge { ", huge pages" } else { "" }
                );
                (label, g, repeats)
            });
        } else if let (Some((label, gib, repeats)), Some((name, rest))) =
            (&guest, l.split_once('|'))
        {
            let cols: Vec<&str> = rest.split('|').collect();
            let (Some(sw), Some(fb)) = (
                cols.first().and_then(|c| cell(c)),
                cols.get(1).and_then(|c| cell(c)),
            ) else {
                continue;
            };
            let tag = if in_downtime {
                "in the downtime:"
            } else {
                "pinned while stopped:"
            };
            let pinned = cols[1]
                .split_once(tag)
                .map_or("", |p| p.1)
                .trim()
                .to_string();
            let list = if in_downtime { &mut downtime } else { &mut out };
            list.push(RigRow {
                guest: label.clone(),
                gib: *gib,
                repeats: *repeats,
                strategy: name.trim().to_string(),
                switch: sw,
                failback: fb,
                pinned,
            });
        }
    }
    (out, downtime)
}

/// The rig's rows as a Markdown table whose header is `head` (the columns
/// after guest and strategy).
fn rows_table(head: &str, rows: &[RigRow]) -> String {
    let mut t = format!("| guest | strategy | {head} |\n|---|---|---|---|---|\n");
    let ms = |c: &[f64; 3]| format!("{:.1} [{:.1}, {:.1}]", c[0], c[1], c[2]);
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} |",
            r.guest,
            r.strategy,
            ms(&r.switch),
            ms(&r.failback),
            r.pinned
        );
    }
    t
}

/// The rig's switch and failback rows.
fn rig_table(rows: &[RigRow]) -> String {
    rows_table("SVQ switch, ms: median [min, max] | failback, ms: median [min, max] | pinned while stopped (switch / failback)", rows)
}

/// The rig's downtime rows.
fn downtime_table(rows: &[RigRow]) -> String {
    rows_table("source stop-and-copy, ms: median [min, max] | destination start, ms: median [min, max] | sent inside the downtime (stop-and-copy / start)", rows)
}

/// Published figures for QEMU on hardware (`../shared/docs/qemu-today.md`):
/// (label, guest GiB, seconds low, seconds high).
const PUBLISHED: [(&str, f64, f64, f64); 7] = [
    ("SVQ switch, 2x mlx5 (Dec 2023)", 128.0, 20.0, 30.0),
    ("stop-and-copy, 2x mlx5 (Dec 2023)", 128.0, 20.0, 20.0),
    ("destination start, CX-6 Dx (QEMU < 10.1)", 39.0, 4.72, 4.72),
    (
        "destination start, CX-6 Dx (QEMU < 10.1)",
        128.0,
        14.72,
        14.72,
    ),
    ("pinning (Jun 2025)", 50.0, 7.8, 7.8),
    ("pinning (Jun 2025)", 100.0, 8.8, 8.8),
    ("pinning (Jun 2025)", 200.0, 10.8, 10.8),
];

/// Three panels, every axis linear (a linear cost stays a straight line,
/// and zero is a visible line, not hidden by a log scale): what the plans
/// pin while the device is stopped (computed), what the rig measured on
/// vdpa_sim (every window, both strategies), and QEMU's published hardware
/// figures beside this library's zero.
fn chart(path: &Path, qs: &[Quality], rig: &[RigRow], downtime: &[RigRow]) {
    let root = SVGBackend::new(path, (1500, 480)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let panels = root.split_evenly((1, 3));
    let zero_style = BLUE.stroke_width(4);
    // 1. Computed: bytes pinned while stopped, switch + failback.
    {
        let series = |name: &str| -> Vec<(f64, f64)> {
            qs.iter()
                .filter(|q| q.regions == 16)
                .map(|q| {
                    let (_, sw, fb) = q.rows.iter().find(|r| r.0 == name).unwrap();
                    (
                        (q.guest / GIB) as f64,
                        (sw.critical_pinned_bytes + fb.critical_pinned_bytes) as f64 / GIB as f64,
                    )
                })
                .collect()
        };
        let q = series("qemu");
        let xmax = q.iter().map(|p| p.0).fold(1.0, f64::max) * 1.05;
        let ymax = q.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
        let mut c = ChartBuilder::on(&panels[0])
            .caption(
                "Pinned while the device is stopped (computed)",
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax, -ymax * 0.03..ymax)
            .unwrap();
        c.configure_mesh()
            .x_desc("guest memory, GiB (16 regions)")
            .y_desc("GiB pinned, switch + failback")
            .draw()
            .unwrap();
        c.draw_series(LineSeries::new(q.clone(), RED.stroke_width(2)))
            .unwrap()
            .label("qemu: all guest memory, twice")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
        c.draw_series(q.iter().map(|&p| Circle::new(p, 3, RED.filled())))
            .unwrap();
        let id = series("identity");
        let ida = series("identity-asid");
        assert!(
            id.iter().chain(&ida).all(|p| p.1 == 0.0),
            "the chart says zero"
        );
        c.draw_series(LineSeries::new(id.clone(), zero_style))
            .unwrap()
            .label("identity and identity-asid: 0 at every size")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE.stroke_width(4)));
        c.draw_series(id.iter().map(|&p| Circle::new(p, 4, BLUE.filled())))
            .unwrap();
        c.configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .unwrap();
    }
    // 2. Measured on the rig: every window, qemu's medians, identity's.
    {
        let pts = |rows: &[RigRow], strategy: &str, first: bool| -> Vec<(f64, f64)> {
            let mut v: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.strategy == strategy && !r.guest.contains("huge"))
                .map(|r| (r.gib, if first { r.switch[0] } else { r.failback[0] }))
                .collect();
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            v
        };
        let lines = [
            ("SVQ switch", pts(rig, "qemu", true), RED),
            ("failback", pts(rig, "qemu", false), MAGENTA),
            ("source stop-and-copy", pts(downtime, "qemu", true), CYAN),
            ("destination start", pts(downtime, "qemu", false), BLACK),
        ];
        let xmax = lines
            .iter()
            .flat_map(|l| l.1.iter().map(|p| p.0))
            .fold(1.0, f64::max)
            * 1.1;
        let ymax = lines
            .iter()
            .flat_map(|l| l.1.iter().map(|p| p.1))
            .fold(1.0, f64::max)
            * 1.15;
        let mut c = ChartBuilder::on(&panels[1])
            .caption(
                "Measured: vdpa_sim, Linux 6.12 (TCG VM)",
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax, -ymax * 0.03..ymax)
            .unwrap();
        c.configure_mesh()
            .x_desc("guest memory, GiB (one region, memfd 4 KiB pages)")
            .y_desc("critical phase, ms (median)")
            .draw()
            .unwrap();
        for (name, p, color) in lines {
            if p.is_empty() {
                continue;
            }
            c.draw_series(LineSeries::new(p.clone(), color.stroke_width(2)))
                .unwrap()
                .label(format!("qemu, {name}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            c.draw_series(p.iter().map(|&q| Cross::new(q, 5, color.stroke_width(2))))
                .unwrap();
        }
        let id: Vec<(f64, f64)> = pts(rig, "identity", true)
            .into_iter()
            .chain(pts(rig, "identity", false))
            .chain(pts(downtime, "identity", true))
            .chain(pts(downtime, "identity", false))
            .collect();
        if !id.is_empty() {
            let mut line: Vec<(f64, f64)> = id.iter().map(|p| (p.0, 0.0)).collect();
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
            line.dedup();
            c.draw_series(LineSeries::new(line, zero_style))
                .unwrap()
                .label(format!(
                    "identity, every window: {:.1} ms at most, 0 messages",
                    id.iter().map(|p| p.1).fold(0.0, f64::max)
                ))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE.stroke_width(4)));
            c.draw_series(id.iter().map(|&p| Circle::new(p, 4, BLUE.filled())))
                .unwrap();
        }
        c.configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .unwrap();
    }
    // 3. Published hardware figures for QEMU, and this library's zero.
    {
        let mut c = ChartBuilder::on(&panels[2])
            .caption("Published: QEMU on mlx5 hardware", ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..220f64, -1.5f64..46f64)
            .unwrap();
        c.configure_mesh()
            .x_desc("guest memory, GiB")
            .y_desc("seconds")
            .draw()
            .unwrap();
        let colors = [RED, CYAN, BLACK, MAGENTA];
        let mut seen: Vec<&str> = Vec::new();
        for (label, gib, lo, hi) in PUBLISHED {
            let i = seen.iter().position(|l| *l == label).unwrap_or_else(|| {
                seen.push(label);
                seen.len() - 1
            });
            let color = colors[i % colors.len()];
            let first = PUBLISHED.iter().position(|p| p.0 == label).unwrap()
                == PUBLISHED
                    .iter()
                    .position(|p| p.0 == label && p.1 == gib)
                    .unwrap();
            let s = c
                .draw_series(std::iter::once(Cross::new(
                    (gib, (lo + hi) / 2.0),
                    6,
                    color.stroke_width(2),
                )))
                .unwrap();
            if first {
                s.label(label)
                    .legend(move |(x, y)| Cross::new((x + 8, y), 4, color.stroke_width(2)));
            }
            if hi > lo {
                c.draw_series(LineSeries::new(
                    vec![(gib, lo), (gib, hi)],
                    color.stroke_width(2),
                ))
                .unwrap();
            }
        }
        // What the rig's per-GiB switch cost would give, labelled as such.
        let per_gib: Vec<f64> = rig
            .iter()
            .filter(|r| r.strategy == "qemu" && r.gib >= 1.0 && !r.guest.contains("huge"))
            .map(|r| r.switch[0] / 1e3 / r.gib)
            .collect();
        if !per_gib.is_empty() {
            let k = per_gib.iter().sum::<f64>() / per_gib.len() as f64;
            c.draw_series(DashedLineSeries::new(
                vec![(0.0, 0.0), (200.0, 200.0 * k)],
                6,
                4,
                RED.mix(0.6).stroke_width(1),
            ))
            .unwrap()
            .label(format!(
                "estimate: vdpa_sim's measured switch, {:.0} ms/GiB, extended linearly",
                k * 1e3
            ))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED.mix(0.6)));
        }
        c.draw_series(LineSeries::new(vec![(0.0, 0.0), (220.0, 0.0)], zero_style))
            .unwrap()
            .label("this library: 0 pinned, 0 messages in every window (computed)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE.stroke_width(4)));
        c.configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 11))
            .draw()
            .unwrap();
    }
    root.present().unwrap();
}

/// What the translate table compares, and how it was made.
const TRANSLATE_INTRO: &str = "\
The baseline is QEMU 10.2.2's own lookup: for each guest buffer a shadow virtqueue forwards, \
`vhost_svq_translate_addr` (hw/virtio/vhost-shadow-virtqueue.c) calls `vhost_iova_tree_find_gpa` \
(hw/virtio/vhost-iova-tree.c), which calls `iova_tree_find_iova` (util/iova-tree.c): a \
`g_tree_foreach` from the lowest guest address that stops at the first overlap. \
`benches/qemu-translate/run.sh` compiles those files (the function extracted at build time from the \
pinned source the rig caches) with QEMU's compiler flags, QEMU's headers and the system glib, into one \
C program with `libvdpa_iova.so` as `capi/install.sh` builds it. Both sides get the same sections, \
mapped as in shadow-virtqueue mode (QEMU: first-fit IOVAs after the shadow vrings; ours: the identity \
planner after the switch), and the same 4,096 buffers of 1,500 bytes; before timing, every buffer \
must reach the same host byte with the same permission on both sides through each side's own \
device mappings (0 mismatches, or the harness fails). Timing: many rounds (301 by default), each \
running every side in turn on the same stretch of buffers for about 50 µs; the median per lookup.\n\n\
Our columns: *inline* is `vdpa_iova_translator_translate_inline` from `vdpa_iova.h`: in a table of \
at most 8 entries (every real layout) it answers a buffer in one entry without a call, by \
counting the published first addresses at or below it (eight compares and no branch on the \
address: a last-hit check first was tried and cost a misprediction at every change of section, \
11.5 ns on the random pattern against 4.6 ns without it); otherwise, and for \
larger tables at once, it calls `vdpa_iova_translator_translate` (*call*, the same function called \
directly: last hit, then a branch-free binary search over the first addresses); \
`vdpa_iova_translate` is the planner-wide call; *empty call* is `vdpa_iova_version()`, the cost of \
entering the library and coming back. Ratio: QEMU / inline.\n\n\
Layouts: the sections QEMU's vhost-vdpa listener maps for a pc or q35 guest once SeaBIOS has run: \
RAM below the VGA window, the option ROMs (read-only) and the rest of the upper memory area, the \
shadowed BIOS (read-only), RAM from 1 MiB to the below-4G split, RAM above 4 GiB, and the BIOS ROM \
under 4 GiB: six for 256 MiB (the count QEMU 10.2.2 mapped in the rig; the option ROMs' end at \
0xc4000 is an assumption, one 16 KiB PAM block), seven above the split. The \
split is hw/i386/pc_piix.c's (all RAM below 4 GiB up to 3.5 GiB, else 3 GiB below) and \
pc_q35.c's (up to 2.75 GiB, else 2 GiB below); RAM above it starts at 4 GiB. Then 16 to 4,096 \
regions of 2 MiB, 4 MiB apart (the Rust benches' layout). Patterns: random (any section, any \
offset), sequential (the sections in order, page after page), ring-like (90% in the previous \
buffer's section at +64..+4096 bytes, 10% a random jump), uniform over guest bytes (mostly the big \
RAM section; the same as random when all regions have one size).\n";

/// What the Rust table compares.
const TRANSLATE_RUST: &str = "\
The Rust API, from `cargo bench --bench planner -- translate` (criterion means, 64-byte lookups, \
16 to 4,096 regions): a per-queue `Translator` and the planner's `Strategy::translate`, against a \
second, Rust-only baseline: an imitation of QEMU's walk over a `LinkedList`, which runs about 3x \
faster than QEMU's real GTree walk (above).\n";

/// The line from which `BENCHMARKS.md` is written by hand (the real QEMU
/// runs: their rigs print tables, but what a run was and what it showed is
/// prose); everything from it on is kept as it is.
const HAND_WRITTEN: &str = "<!-- From here on BENCHMARKS.md is written by hand from rig runs; \
benchmarks_report keeps it as it is. -->";

/// The hand-written tail of the current `BENCHMARKS.md`, marker included.
/// A file without the marker has its generated part only: refuse to
/// regenerate over it rather than drop what cannot be computed again.
fn hand_written(repo: &Path) -> String {
    let path = repo.join("BENCHMARKS.md");
    let Ok(old) = std::fs::read_to_string(&path) else {
        return format!("\n{HAND_WRITTEN}\n");
    };
    match old.find(HAND_WRITTEN) {
        Some(at) => format!("\n{}", &old[at..]),
        None => panic!(
            "{} has no line `{HAND_WRITTEN}`: its hand-written sections would be lost",
            path.display()
        ),
    }
}

fn main() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let crit = criterion_results(&repo.join("target/criterion"));
    let mem: Option<serde_json::Value> =
        std::fs::read_to_string(repo.join("target/bench-memory.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok());
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Regenerate with `cargo bench --bench planner && cargo bench --bench memory && benches/qemu-translate/run.sh && cargo run --release --example benchmarks_report`.\n\nMachine: {}. Absolute times are from that machine; the text quotes ratios, each against a baseline measured in the same run.\n",
        machine()
    );
    let get = |k: &str| crit.get(k).copied();
    // translate
    let _ = writeln!(md, "## translate(): the SVQ per-descriptor lookup\n");
    let _ = writeln!(md, "{TRANSLATE_INTRO}");
    match std::fs::read_to_string(repo.join("target/qemu-translate/table.md")) {
        Ok(t) => {
            let _ = writeln!(md, "{}", t.trim_end());
        }
        Err(_) => {
            let _ = writeln!(
                md,
                "Run `benches/qemu-translate/run.sh` first: it leaves the table in `target/qemu-translate/table.md`."
            );
        }
    }
    let _ = writeln!(md, "\n{TRANSLATE_RUST}");
    let _ = writeln!(md, "| regions | pattern | `Translator::translate` | `Strategy::translate` | Rust imitation of QEMU's walk | imitation / Translator |\n|---:|---|---:|---:|---:|---:|");
    for n in [16, 256, 1024, 4096] {
        for pat in ["random", "sequential"] {
            if let (Some(t), Some(a), Some(b)) = (
                get(&format!("translate/translator/{pat}/{n}")),
                get(&format!("translate/planner/{pat}/{n}")),
                get(&format!("translate/qemu_linear/{pat}/{n}")),
            ) {
                let _ = writeln!(
                    md,
                    "| {n} | {pat} | {} | {} | {} | {} |",
                    ns(t),
                    ns(a),
                    ns(b),
                    ratio(b / t)
                );
            }
        }
    }
    // allocator
    let _ = writeln!(
        md,
        "\n## The IOVA allocator: one free + alloc pair under churn\n"
    );
    let _ = writeln!(md, "| live allocations | IovaAllocator (best fit, O(log n)) | vm-allocator (first match) | first fit, linear | vs vm-allocator | vs first fit |\n|---:|---:|---:|---:|---:|---:|");
    for n in [1000, 10000, 100000] {
        if let (Some(a), Some(v), Some(f)) = (
            get(&format!("alloc_churn/iova_allocator/{n}")),
            get(&format!("alloc_churn/vm_allocator/{n}")),
            get(&format!("alloc_churn/first_fit_linear/{n}")),
        ) {
            let _ = writeln!(
                md,
                "| {n} | {} | {} | {} | {} | {} |",
                ns(a),
                ns(v),
                ns(f),
                ratio(v / a),
                ratio(f / a)
            );
        }
    }
    // planning
    let _ = writeln!(md, "\n## Planning latency\n");
    let _ = writeln!(md, "| regions / queues | prepared switch | failback | hotplug in SVQ mode |\n|---|---:|---:|---:|");
    for id in ["16r/3q", "256r/17q", "1024r/65q", "4096r/256q"] {
        let cell = |f: &str| get(&format!("plan/{f}/{id}")).map_or("-".into(), ns);
        let _ = writeln!(
            md,
            "| {id} | {} | {} | {} |",
            cell("prepared_switch"),
            cell("failback"),
            cell("hotplug_svq")
        );
    }
    if let Some(m) = &mem {
        let _ = writeln!(
            md,
            "\n## Memory\n\nPlanner state: {} bytes per guest region, {} bytes per shadow vring ({} bytes for one region and one queue), live heap bytes counted by dhat (`cargo bench --bench memory`).",
            m["per_region_bytes"], m["per_vring_bytes"], m["base_bytes"]
        );
    }
    // plan quality
    let mut qs = Vec::new();
    for guest in [4 * GIB, 64 * GIB, 512 * GIB, 4096 * GIB] {
        for regions in [1, 16, 256, 4096] {
            qs.push(quality(guest, regions));
        }
    }
    let _ = writeln!(md, "\n## Plan quality (computed, no device)\n");
    let _ = writeln!(md, "Critical phase (device stopped) of the SVQ switch and of the failback, 17 shadow vrings, a device with two address spaces and `desc_asid`. Estimated time uses the per-GiB pin and unpin times and per-message time measured on vdpa_sim under a 6.12 kernel (80 ms per 512 MiB pinned, 27 ms unpinned, 0.15 ms a message).\n");
    let _ = writeln!(md, "| guest | regions | strategy | switch: msgs, pinned | failback: msgs, pinned | estimate from vdpa_sim's TCG timings, not hardware (switch + failback) |\n|---:|---:|---|---|---|---:|");
    for q in &qs {
        for (name, sw, fb) in &q.rows {
            let _ = writeln!(
                md,
                "| {} | {} | {name} | {}, {} | {}, {} | {:.3} s |",
                bytes(q.guest),
                q.regions,
                sw.critical_messages,
                bytes(sw.critical_pinned_bytes),
                fb.critical_messages,
                bytes(fb.critical_pinned_bytes),
                estimate_s(sw) + estimate_s(fb)
            );
        }
    }
    let (rig, rig_downtime) =
        rig_rows(&std::fs::read_to_string(repo.join("target/rig-bench.txt")).unwrap_or_default());
    chart(&repo.join("benchmarks.svg"), &qs, &rig, &rig_downtime);
    let _ = writeln!(md, "\n![bytes pinned while stopped (computed), every critical window measured on vdpa_sim, and QEMU's published hardware figures, all on linear axes](benchmarks.svg)\n");
    let _ = writeln!(
        md,
        "## Real kernel: vdpa_sim (use_va=0, pins like a NIC) on Linux 6.12 under qemu TCG\n"
    );
    if rig.is_empty() {
        let _ = writeln!(
            md,
            "Run `.ci/rig/run` first: it leaves the table in `target/rig-bench.txt`."
        );
    } else {
        let repeats = rig.iter().map(|r| r.repeats).min().unwrap_or(1);
        let per_gib = |huge: bool| -> Option<f64> {
            let v: Vec<f64> = rig
                .iter()
                .filter(|r| r.strategy == "qemu" && r.gib >= 1.0)
                .filter(|r| r.guest.contains("huge") == huge)
                .map(|r| r.switch[0] / r.gib)
                .collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        let _ = writeln!(
            md,
            "From `.ci/rig/run` (the end-to-end rig, which runs `vdpa-adapter bench` inside the VM): critical-phase wall time of the SVQ switch and the failback on the device, identity against qemu, median [min, max] of {repeats} runs, one region, 3 queues, memfd memory. The identity strategy sends no message while the device is stopped, at every size{}{}.\n\n{}",
            per_gib(false).map_or(String::new(), |ms| format!(
                "; QEMU's switch costs {ms:.0} ms per GiB of guest memory here"
            )),
            per_gib(true).map_or(String::new(), |ms| format!(
                " ({ms:.0} ms per GiB on huge pages)"
            )),
            rig_table(&rig)
        );
        if !rig_downtime.is_empty() {
            let _ = writeln!(
                md,
                "\n### A completed migration's downtime, on the device\n\nThe same runs with `--migration`: the source's stop-and-copy (`complete`: QEMU unmaps the rings and all guest memory while the guest is paused) and the destination's start after a reset while it waited for the stream (QEMU maps all guest memory again after the stream has ended). Critical-phase wall time, median [min, max].\n\n{}",
                downtime_table(&rig_downtime)
            );
        }
    }
    md.push_str(&hand_written(&repo));
    std::fs::write(repo.join("BENCHMARKS.md"), md).unwrap();
    println!(
        "wrote BENCHMARKS.md and benchmarks.svg ({} criterion results)",
        crit.len()
    );
}
