//! Figures from a recording: how long the device (or the VM) was stopped in
//! each window, from QEMU's own trace timestamps, and the messages and bytes
//! QEMU sent inside it; and stock QEMU's own `downtime` of a completed
//! migration, from its monitor.

use std::fmt;

use super::convert::{MsgKind, Scenario, Step};
use super::parse::{Line, Record};

/// A window in which the guest (or its device) waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// What it is.
    pub what: &'static str,
    /// Microseconds from its first to its last trace line.
    pub micros: i64,
    /// Messages written inside (BATCH markers included).
    pub msgs: usize,
    /// Bytes mapped (pinned: vdpa_sim with `use_va=0`).
    pub pinned: u64,
    /// Bytes unmapped.
    pub unpinned: u64,
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<34} {:>9.1} ms {:>5} msgs {:>10} pinned {:>10} unpinned",
            self.what,
            self.micros as f64 / 1000.0,
            self.msgs,
            mib(self.pinned),
            mib(self.unpinned)
        )
    }
}

/// Bytes in MiB (or KiB when small), for tables.
pub fn mib(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / f64::from(1 << 20))
    } else {
        format!("{} KiB", b >> 10)
    }
}

fn step_lines<'a>(lines: &'a [Line], st: &Step) -> impl Iterator<Item = &'a Line> {
    let (a, b) = st.lines;
    lines.iter().filter(move |l| l.line >= a && l.line <= b)
}

/// The window of `st` from its first line matching `from` to its last line
/// matching `to`, with the step's messages inside it.
fn window(
    what: &'static str,
    lines: &[Line],
    st: &Step,
    from: impl Fn(&Record) -> bool,
    to: impl Fn(&Record) -> bool,
) -> Option<Window> {
    let l: Vec<&Line> = step_lines(lines, st).collect();
    // The start may be just before the step's first message (a VM start
    // traced before the device starts).
    let start = l.iter().find(|x| from(&x.record)).copied().or_else(|| {
        lines
            .iter()
            .filter(|x| x.line < st.lines.0)
            .rfind(|x| from(&x.record))
    })?;
    let end = l.iter().rev().find(|x| to(&x.record))?;
    let inside = |line: usize| line >= start.line && line <= end.line;
    let msgs: Vec<_> = st.msgs.iter().filter(|m| inside(m.line)).collect();
    Some(Window {
        what,
        micros: end.time_us - start.time_us,
        msgs: msgs.len(),
        pinned: msgs
            .iter()
            .filter(|m| m.kind == MsgKind::Update)
            .map(|m| m.size)
            .sum(),
        unpinned: msgs
            .iter()
            .filter(|m| m.kind == MsgKind::Invalidate)
            .map(|m| m.size)
            .sum(),
    })
}

fn stops(r: &Record) -> bool {
    matches!(
        r,
        Record::Suspend | Record::Reset | Record::DevStart { started: false }
    )
}

fn driver_ok(r: &Record) -> bool {
    matches!(r, Record::AddStatus(s) if s & 0x4 != 0)
}

fn any_msg(r: &Record) -> bool {
    matches!(
        r,
        Record::Map { .. } | Record::Unmap { .. } | Record::BatchBegin | Record::BatchEnd
    )
}

/// The windows of a converted recording: each switch and failback (device
/// stop to DRIVER_OK), the source's stop-and-copy (VM stop to its last
/// message), the destination's start (VM start to DRIVER_OK).
pub fn windows(lines: &[Line], sc: &Scenario) -> Vec<Window> {
    let mut out = Vec::new();
    for st in &sc.steps {
        let w = match st.event.name() {
            "svq_switch" => window("SVQ switch: device stopped", lines, st, stops, driver_ok),
            "failback" => window("failback: device stopped", lines, st, stops, driver_ok),
            "complete" => window(
                "stop-and-copy: VM stop to last msg",
                lines,
                st,
                |r| matches!(r, Record::VmRunning(false)),
                any_msg,
            ),
            "start" if sc.role == super::convert::Role::Destination => window(
                "destination start: VM start to OK",
                lines,
                st,
                |r| matches!(r, Record::VmRunning(true)),
                driver_ok,
            ),
            _ => None,
        };
        out.extend(w);
    }
    out
}

/// Stock QEMU's own figures for the last completed migration in a monitor
/// transcript (`info migrate`'s `Time (ms): total=…, setup=…, down=…`):
/// `(total, setup, downtime)` in milliseconds.
pub fn qemu_times(monitor: &str) -> Option<(u64, Option<u64>, u64)> {
    let line = monitor
        .lines()
        .rfind(|l| l.contains("Time (ms):") && l.contains("down="))?;
    let get = |k: &str| {
        line.split([',', ' ', '\t'])
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some((get("total=")?, get("setup="), get("down=")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_times_from_info_migrate() {
        let m = "Status: \t\tcompleted\nTime (ms): \t\ttotal=5012, setup=88, down=31\n";
        assert_eq!(qemu_times(m), Some((5012, Some(88), 31)));
        assert_eq!(qemu_times("Status: active\n"), None);
    }
}
