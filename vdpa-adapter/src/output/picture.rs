//! Pictures of the device's IOVA space (`plan --svg`): one SVG per step,
//! one row per strategy and address space, so strategies stand side by side.
//!
//! A row shows the device range, the strategy's window (dashed), guest
//! memory mapped at identity (blue), displaced memory (orange, with an arrow
//! to where its GPA is), the shadow vrings (green), guest memory the device
//! cannot reach (red, at its GPA), and what the step mapped (a bar above the
//! row) and unmapped (a bar below), critical operations in red.
//!
//! A 4 KiB vring next to a 64 GiB region cannot share a linear axis, and a
//! log axis hides zero. The axis is broken instead: every address where
//! something begins or ends is a mark, and the span between two marks is
//! drawn with a width that grows with the logarithm of its size, linear
//! inside the span. The picture says so.

use std::collections::BTreeSet;

use svg::node::element::{Definitions, Group, Line, Marker, Path, Rectangle, Text, Title};
use svg::Document;
use vdpa_iova_planner::{DeviceCaps, OpKind, Phase};

use super::bytes;
use crate::runner::{RunReport, StepReport};

const LEFT: f64 = 150.0;
const ROW: f64 = 70.0;
const BAR: f64 = 22.0;
const TOP: f64 = 70.0;

/// The broken axis: marks and the x of each.
struct Axis {
    marks: Vec<u64>,
    xs: Vec<f64>,
}

impl Axis {
    fn new(points: BTreeSet<u64>) -> Axis {
        let marks: Vec<u64> = points.into_iter().collect();
        let mut xs = Vec::with_capacity(marks.len());
        let mut x = LEFT;
        for (i, &m) in marks.iter().enumerate() {
            xs.push(x);
            if let Some(&next) = marks.get(i + 1) {
                x += Self::width(next - m);
            }
        }
        Axis { marks, xs }
    }

    /// Width of a span of `size` bytes: at least 10 px for a page, growing
    /// with log2 of the size.
    fn width(size: u64) -> f64 {
        10.0 + 7.0 * ((size as f64) / 4096.0 + 1.0).log2()
    }

    fn x(&self, a: u64) -> f64 {
        let i = self.marks.partition_point(|&m| m <= a).saturating_sub(1);
        let (m, x) = (self.marks[i], self.xs[i]);
        match self.marks.get(i + 1) {
            Some(&next) => x + (a - m) as f64 / (next - m) as f64 * (self.xs[i + 1] - x),
            None => x,
        }
    }

    fn end(&self) -> f64 {
        *self.xs.last().unwrap_or(&LEFT)
    }
}

fn rect(x0: f64, x1: f64, y: f64, h: f64, fill: &str, title: String) -> Rectangle {
    Rectangle::new()
        .set("x", x0)
        .set("y", y)
        .set("width", (x1 - x0).max(1.5))
        .set("height", h)
        .set("fill", fill)
        .set("stroke", "#333")
        .set("stroke-width", 0.4)
        .add(Title::new(title))
}

fn text(x: f64, y: f64, size: f64, s: String) -> Text {
    Text::new(s)
        .set("x", x)
        .set("y", y)
        .set("font-family", "monospace")
        .set("font-size", size)
}

/// The picture of step `step` of `runs` (one run per strategy, same scenario).
pub fn step_svg(caps: &DeviceCaps, runs: &[RunReport], step: usize) -> String {
    let steps: Vec<(&RunReport, &StepReport)> = runs
        .iter()
        .filter_map(|r| r.steps.get(step).map(|s| (r, s)))
        .collect();
    // Marks: the device range's ends, and every edge of everything drawn.
    let mut points = BTreeSet::new();
    points.insert(caps.range.first());
    let mut top = 0u64;
    let mut edge = |points: &mut BTreeSet<u64>, f: u64, l: u64| {
        points.insert(f);
        if let Some(e) = l.checked_add(1) {
            points.insert(e);
            top = top.max(e);
        } else {
            points.insert(l);
            top = u64::MAX;
        }
    };
    for (_, s) in &steps {
        for p in &s.placements {
            edge(&mut points, p.gpa.first().0, p.gpa.last().0);
            for piece in &p.pieces {
                edge(&mut points, piece.iova.first().0, piece.iova.last().0);
            }
        }
        for a in &s.svq {
            edge(&mut points, a.iova.first().0, a.iova.last().0);
        }
        for (_, e) in &s.buffers {
            edge(&mut points, e.iova.first().0, e.iova.last().0);
        }
        if let Some(w) = s.window {
            edge(&mut points, w.first().0, w.last().0);
        }
        for op in &s.ops {
            if let OpKind::Update { iova, .. } | OpKind::Invalidate { iova } = op.kind {
                edge(&mut points, iova.first().0, iova.last().0);
            }
        }
    }
    // The range's end closes the axis, however far above the rest it is.
    let end = caps.range.last().saturating_add(1);
    points.insert(end.max(top));
    points.retain(|&p| p >= caps.range.first());
    let axis = Axis::new(points);
    let mut rows: Vec<(String, &StepReport, u32)> = Vec::new();
    for (r, s) in &steps {
        let mut asids: BTreeSet<u32> = [0].into();
        asids.extend(s.svq.iter().map(|a| a.asid));
        asids.extend(s.buffers.iter().map(|b| b.0));
        asids.extend(s.ops.iter().map(|o| o.asid));
        for a in asids {
            rows.push((format!("{} asid {a}", r.strategy), s, a));
        }
    }
    let width = axis.end() + 40.0;
    let height = TOP + rows.len() as f64 * ROW + 90.0;
    let event = steps.first().map_or("", |(_, s)| s.event);
    let mut doc = Document::new()
        .set("viewBox", (0.0, 0.0, width, height))
        .set("width", width)
        .set("height", height)
        .add(
            Definitions::new().add(
                Marker::new()
                    .set("id", "arrow")
                    .set("markerWidth", 8)
                    .set("markerHeight", 8)
                    .set("refX", 6)
                    .set("refY", 3)
                    .set("orient", "auto")
                    .add(Path::new().set("d", "M0,0 L6,3 L0,6 z").set("fill", "#c60")),
            ),
        )
        .add(
            Rectangle::new()
                .set("width", "100%")
                .set("height", "100%")
                .set("fill", "white"),
        )
        .add(text(
            10.0,
            20.0,
            13.0,
            format!("step {step}: {event} — the device's IOVA space after the step"),
        ))
        .add(text(
            10.0,
            38.0,
            10.0,
            "broken axis: each span between two marks is drawn with a width that grows with log2 of its size (linear inside it)".into(),
        ))
        .add(text(
            10.0,
            52.0,
            10.0,
            "blue: guest memory at identity; orange: displaced (arrow to its GPA); green: shadow vrings; purple: host buffers; red: unreachable guest memory; dashed: window; above: mapped by the step, below: unmapped (red: critical)".into(),
        ));
    for (i, (label, s, asid)) in rows.iter().enumerate() {
        let y = TOP + i as f64 * ROW + 14.0;
        let mut g = Group::new().add(text(4.0, y + 15.0, 11.0, label.clone()));
        g = g.add(rect(
            axis.x(caps.range.first()),
            axis.end(),
            y,
            BAR,
            "#f2f2f2",
            format!("device range {}", caps.range),
        ));
        if let (Some(w), true) = (s.window, *asid == 0) {
            let (f, l) = (w.first().0, w.last().0);
            g = g.add(
                rect(
                    axis.x(f),
                    axis.x(l.saturating_add(1).max(l)),
                    y - 3.0,
                    BAR + 6.0,
                    "none",
                    format!("window [{f:#x}, {l:#x}]"),
                )
                .set("stroke-dasharray", "4,3")
                .set("stroke-width", 1.2),
            );
        }
        if *asid == 0 {
            for p in &s.placements {
                g = g.add(text(
                    axis.x(p.gpa.first().0) + 1.0,
                    y - 5.0,
                    8.0,
                    format!("gpa {:#x}", p.gpa.first().0),
                ));
                for piece in &p.pieces {
                    let (f, l) = piece.iova.bounds();
                    let x0 = axis.x(f);
                    let x1 = axis.x(l.saturating_add(1));
                    if piece.is_identity() {
                        g = g.add(rect(
                            x0,
                            x1,
                            y,
                            BAR,
                            "#5b8def",
                            format!(
                                "gpa {} at identity ({})",
                                piece.gpa,
                                bytes(piece.gpa.size())
                            ),
                        ));
                    } else {
                        let to = axis.x(piece.gpa.first().0);
                        g = g
                            .add(rect(
                                x0,
                                x1,
                                y,
                                BAR,
                                "#f0a030",
                                format!(
                                    "gpa {} displaced to iova {} ({})",
                                    piece.gpa,
                                    piece.iova,
                                    bytes(piece.gpa.size())
                                ),
                            ))
                            .add(
                                Path::new()
                                    .set(
                                        "d",
                                        format!(
                                            "M{},{} Q{},{} {},{}",
                                            (x0 + x1) / 2.0,
                                            y + BAR,
                                            ((x0 + x1) / 2.0 + to) / 2.0,
                                            y + BAR + 26.0,
                                            to,
                                            y + BAR
                                        ),
                                    )
                                    .set("fill", "none")
                                    .set("stroke", "#c60")
                                    .set("marker-end", "url(#arrow)"),
                            );
                    }
                }
                for u in p.unreachable() {
                    g = g.add(rect(
                        axis.x(u.first().0),
                        axis.x(u.last().0.saturating_add(1).max(u.last().0)),
                        y + 4.0,
                        BAR - 8.0,
                        "#e03030",
                        format!("gpa {u} unreachable ({})", bytes(u.size())),
                    ));
                }
            }
        }
        for a in s.svq.iter().filter(|a| a.asid == *asid) {
            let (f, l) = a.iova.bounds();
            g = g.add(rect(
                axis.x(f),
                axis.x(l.saturating_add(1)),
                y,
                BAR,
                "#3cb371",
                format!("vq {} {} at {}", a.vq, a.area.as_str(), a.iova),
            ));
        }
        for (_, e) in s.buffers.iter().filter(|b| b.0 == *asid) {
            let (f, l) = e.iova.bounds();
            g = g.add(rect(
                axis.x(f),
                axis.x(l.saturating_add(1)),
                y,
                BAR,
                "#9370db",
                format!("host buffer at {} ({})", e.iova, e.perm.as_str()),
            ));
        }
        for op in s.ops.iter().filter(|o| o.asid == *asid) {
            let (iova, above) = match op.kind {
                OpKind::Update { iova, .. } => (iova, true),
                OpKind::Invalidate { iova } => (iova, false),
                OpKind::BatchBegin | OpKind::BatchEnd => continue,
            };
            let color = if op.phase == Phase::Critical {
                "#e03030"
            } else {
                "#555"
            };
            let yy = if above { y - 3.5 } else { y + BAR + 1.5 };
            g = g.add(
                Line::new()
                    .set("x1", axis.x(iova.first().0))
                    .set(
                        "x2",
                        axis.x(iova.last().0.saturating_add(1).max(iova.last().0))
                            .max(axis.x(iova.first().0) + 1.5),
                    )
                    .set("y1", yy)
                    .set("y2", yy)
                    .set("stroke", color)
                    .set("stroke-width", 2.5)
                    .add(Title::new(format!(
                        "{} {} {} ({})",
                        op.phase.as_str(),
                        op.kind.as_str(),
                        iova,
                        bytes(iova.size())
                    ))),
            );
        }
        doc = doc.add(g);
    }
    // The marks, under the last row.
    let ybase = TOP + rows.len() as f64 * ROW + 10.0;
    let mut last_x = f64::MIN;
    for (&m, &x) in axis.marks.iter().zip(&axis.xs) {
        doc = doc.add(
            Line::new()
                .set("x1", x)
                .set("x2", x)
                .set("y1", TOP)
                .set("y2", ybase)
                .set("stroke", "#ccc")
                .set("stroke-width", 0.5),
        );
        if x - last_x > 12.0 {
            doc = doc.add(
                text(x, ybase + 8.0, 8.0, format!("{m:#x}"))
                    .set("transform", format!("rotate(40 {x} {})", ybase + 8.0)),
            );
            last_x = x;
        }
    }
    doc.to_string()
}

/// One picture per step, named `step-NN-EVENT.svg`.
pub fn pictures(caps: &DeviceCaps, runs: &[RunReport]) -> Vec<(String, String)> {
    let n = runs.iter().map(|r| r.steps.len()).max().unwrap_or(0);
    (0..n)
        .map(|i| {
            let event = runs
                .iter()
                .find_map(|r| r.steps.get(i))
                .map_or("step", |s| s.event);
            (format!("step-{i:02}-{event}.svg"), step_svg(caps, runs, i))
        })
        .collect()
}
