//! `bench`: the SVQ switch and the failback on a device, identity against
//! QEMU's strategy in the same run, several repeats, median and spread.

use std::time::Duration;

use vdpa_iova_planner::{
    DeviceCaps, Event, Gpa, Hva, IdentityPlanner, QemuPlanner, RegionSpec, Strategy, SvqConfig,
};

use crate::apply::{Applier, Limits, Mapping};
use crate::error::AdapterError;
use crate::runner::StrategyKind;
use crate::sink::MsgSink;
use crate::uapi::MsgFormat;

/// What to measure.
#[derive(Clone, Copy, Debug)]
pub struct BenchConfig {
    /// Guest memory, split evenly over `regions`.
    pub guest_mem: u64,
    /// Shadow virtqueues.
    pub queues: u32,
    /// Regions.
    pub regions: u32,
    /// Repeats per strategy.
    pub repeats: u32,
}

impl BenchConfig {
    /// The shadow virtqueues measured: `queues` of 256 descriptors, their
    /// buffer at `hva` ([`SvqConfig::queue_bytes`] each).
    pub fn svq(&self, hva: Hva) -> SvqConfig {
        SvqConfig {
            queues: self.queues,
            queue_size: 256,
            hva,
        }
    }
}

/// Measured critical-phase times of one strategy.
#[derive(Clone, Debug)]
pub struct BenchRow {
    /// Strategy.
    pub strategy: StrategyKind,
    /// Critical phase of each switch.
    pub switch: Vec<Duration>,
    /// Critical phase of each failback.
    pub failback: Vec<Duration>,
    /// Bytes pinned while stopped, switch then failback (from the plans).
    pub critical_pinned: (u64, u64),
}

/// Median, min and max.
pub fn stats(v: &[Duration]) -> (Duration, Duration, Duration) {
    let mut s = v.to_vec();
    s.sort();
    match s.len() {
        0 => (Duration::ZERO, Duration::ZERO, Duration::ZERO),
        n => (s[n / 2], s[0], s[n - 1]),
    }
}

/// Runs the benchmark on `dev`; `(guest_hva, svq_hva)` are where the guest
/// memory and the vring buffer start in this process.
///
/// # Safety
/// `[guest_hva, guest_hva + cfg.guest_mem)` and the vring buffer (as large
/// as [`BenchConfig::svq`] needs) must be memory of this process
/// that stays mapped until this function returns; the device is left with
/// nothing mapped.
///
/// # Errors
/// A plan the device refuses (rolled back), or the pre-checks.
pub unsafe fn bench<D: MsgSink>(
    dev: &mut D,
    caps: DeviceCaps,
    format: MsgFormat,
    cfg: &BenchConfig,
    (guest_hva, svq_hva): (u64, u64),
    maps: Option<&[Mapping]>,
    mut progress: impl FnMut(&str),
) -> Result<Vec<BenchRow>, AdapterError> {
    let per = cfg.guest_mem / u64::from(cfg.regions.max(1));
    let regions: Vec<RegionSpec> = (0..u64::from(cfg.regions.max(1)))
        .map(|i| RegionSpec {
            gpa: Gpa(i * per),
            size: per,
            hva: Hva(guest_hva + i * per),
            readonly: false,
        })
        .collect();
    let svq = cfg.svq(Hva(svq_hva));
    let mut rows = Vec::new();
    for kind in [StrategyKind::Identity, StrategyKind::Qemu] {
        let mut row = BenchRow {
            strategy: kind,
            switch: Vec::new(),
            failback: Vec::new(),
            critical_pinned: (0, 0),
        };
        for r in 0..cfg.repeats {
            let mut s: Box<dyn Strategy> = match kind {
                StrategyKind::Qemu => {
                    Box::new(QemuPlanner::new(caps).map_err(|e| refused(0, "setup", kind, e))?)
                }
                _ => Box::new(
                    IdentityPlanner::new(caps, Some(cfg.guest_mem))
                        .map_err(|e| refused(0, "setup", kind, e))?,
                ),
            };
            let mut a = Applier::new(&mut *dev, caps, format);
            let mut events = vec![
                Event::Boot(regions.clone()),
                Event::SvqPrepare(svq),
                Event::SvqSwitch(None),
                Event::Failback,
            ];
            events.extend(regions.iter().map(|r| Event::Unplug(r.gpa)));
            for (i, ev) in events.iter().enumerate() {
                progress(&format!(
                    "{kind:?} run {}/{}: {}",
                    r + 1,
                    cfg.repeats,
                    ev.name()
                ));
                // A planner refusal is about the inputs (guest size, queues,
                // the device's range), not the environment.
                let plan = s.apply(ev).map_err(|e| refused(i, ev.name(), kind, e))?;
                // SAFETY: the caller guarantees every HVA used here (regions
                // and vring buffer) stays mapped; the unplug steps unmap all.
                let rep = unsafe { a.apply(&plan, &Limits::current(), maps) }.map_err(|e| {
                    AdapterError::Apply {
                        device: "bench".into(),
                        step: i,
                        event: ev.name(),
                        source: Box::new(e),
                    }
                })?;
                match ev {
                    Event::SvqSwitch(_) => {
                        row.switch.push(rep.critical);
                        row.critical_pinned.0 = plan.cost().critical_pinned_bytes;
                    }
                    Event::Failback => {
                        row.failback.push(rep.critical);
                        row.critical_pinned.1 = plan.cost().critical_pinned_bytes;
                    }
                    _ => {}
                }
            }
            debug_assert!(a.committed().is_empty());
        }
        rows.push(row);
    }
    Ok(rows)
}

fn refused(
    step: usize,
    event: &'static str,
    kind: StrategyKind,
    e: vdpa_iova_planner::PlanError,
) -> AdapterError {
    AdapterError::Refused {
        file: "bench".into(),
        step,
        event,
        strategy: format!("{kind:?}").to_lowercase(),
        source: Box::new(e),
    }
}
