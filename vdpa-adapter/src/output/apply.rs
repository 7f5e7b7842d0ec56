//! What `apply` prints: a heading and one line per step as the steps run
//! (text), or one JSON document at the end.

use std::path::Path;

use serde_json::json;
use vdpa_iova_planner::DeviceCaps;

use super::{bytes, dec, describe, document, SCHEMA_VERSION};
use crate::runner::StrategyKind;
use crate::scenario::Host;
use crate::session::StepOutcome;

/// The text's first line: the device (`None`: the kernel model of a dry
/// run) and what the planner sees of it.
pub fn heading(device: Option<&Path>, caps: &DeviceCaps) -> String {
    match device {
        Some(d) => format!("{}: {}", d.display(), describe(caps)),
        None => format!("dry run on the kernel model: {}", describe(caps)),
    }
}

/// The text's line for step `i`, printed as soon as the step went through.
pub fn step_line(i: usize, o: &StepOutcome) -> String {
    format!(
        "{i:<4} {:<12} {:>8} msgs {:>15} pinned  critical: {:>4} msgs {:>15} pinned {:>10.3} ms  total {:>10.3} ms",
        o.event,
        o.messages,
        bytes(o.pinned),
        o.critical_messages,
        bytes(o.critical_pinned),
        o.critical.as_secs_f64() * 1e3,
        o.total.as_secs_f64() * 1e3
    )
}

/// The JSON document of `apply`: the device, then per step what was sent
/// and how long the critical phase took.
pub fn json(
    device: &str,
    caps: &DeviceCaps,
    kind: StrategyKind,
    host: Host,
    steps: &[StepOutcome],
) -> String {
    let v = json!({
        "schema_version": SCHEMA_VERSION,
        "device": device,
        "device_view": describe(caps),
        "strategy": format!("{kind:?}").to_lowercase(),
        "host": host.name(),
        "steps": steps.iter().map(|o| json!({
            "event": o.event,
            "messages": o.messages,
            "critical_messages": o.critical_messages,
            "pinned_bytes": dec(o.pinned),
            "critical_pinned_bytes": dec(o.critical_pinned),
            "critical_ms": o.critical.as_secs_f64() * 1e3,
            "total_ms": o.total.as_secs_f64() * 1e3,
        })).collect::<Vec<_>>(),
    });
    document(&v)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn outcome() -> StepOutcome {
        StepOutcome {
            event: "svq_switch",
            messages: 12,
            critical_messages: 3,
            pinned: 1 << 30,
            critical_pinned: 8192,
            critical: Duration::from_micros(1500),
            total: Duration::from_millis(20),
        }
    }

    /// The heading names the device, or the kernel model of a dry run.
    #[test]
    fn heading_names_the_device_or_the_model() {
        let caps = DeviceCaps::default();
        assert_eq!(
            heading(Some(Path::new("/dev/vhost-vdpa-0")), &caps),
            format!("/dev/vhost-vdpa-0: {}", describe(&caps))
        );
        assert_eq!(
            heading(None, &caps),
            format!("dry run on the kernel model: {}", describe(&caps))
        );
    }

    /// A step's line: its number, event, messages, bytes and times in
    /// fixed columns.
    #[test]
    fn step_line_has_fixed_columns() {
        assert_eq!(
            step_line(7, &outcome()),
            "7    svq_switch         12 msgs           1 GiB pinned  critical:    3 msgs           8 KiB pinned      1.500 ms  total     20.000 ms"
        );
    }

    /// The document: the device, the strategy and host by name, each step's
    /// counts with byte counts as strings.
    #[test]
    fn apply_json_carries_every_step() {
        let j: serde_json::Value = serde_json::from_str(&json(
            "kernel model",
            &DeviceCaps::default(),
            StrategyKind::Qemu,
            Host::SOURCE,
            &[outcome()],
        ))
        .unwrap();
        assert_eq!(j["schema_version"], SCHEMA_VERSION);
        assert_eq!(j["device"], "kernel model");
        assert_eq!(j["device_view"], describe(&DeviceCaps::default()));
        assert_eq!(j["strategy"], "qemu");
        assert_eq!(j["host"], "source");
        let s = &j["steps"][0];
        assert_eq!(s["event"], "svq_switch");
        assert_eq!(s["messages"], 12);
        assert_eq!(s["critical_messages"], 3);
        assert_eq!(s["pinned_bytes"], "1073741824");
        assert_eq!(s["critical_pinned_bytes"], "8192");
        assert_eq!(s["critical_ms"], 1.5);
        assert_eq!(s["total_ms"], 20.0);
    }
}
