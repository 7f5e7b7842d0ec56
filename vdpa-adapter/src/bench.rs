//! `bench`: the SVQ switch and the failback on a device, identity against
//! QEMU's strategy in the same run, several repeats, median and spread; with
//! `migration`, also the two windows of a completed migration's downtime:
//! the source's stop-and-copy and the destination's start (after a reset
//! while it waited for the stream, as QEMU's machine creation does).

use std::time::Duration;

use vdpa_iova_planner::{
    DeviceCaps, Event, Gpa, Hva, RegionSpec, Strategy, StrategyOptions, SvqConfig,
};

use crate::apply::Applier;
use crate::error::AdapterError;
use crate::host::procfs::{Limits, Mapping};
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
    /// Also measure a completed migration's downtime windows.
    pub migration: bool,
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
    /// Critical phase of each source stop-and-copy (`complete`).
    pub stop_and_copy: Vec<Duration>,
    /// Critical phase of each destination start.
    pub start: Vec<Duration>,
    /// Messages and bytes pinned and unpinned inside the downtime: the
    /// stop-and-copy's, then the start's (from the plans).
    pub downtime: [(u64, u64, u64); 2],
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
            stop_and_copy: Vec::new(),
            start: Vec::new(),
            downtime: [(0, 0, 0); 2],
        };
        for r in 0..cfg.repeats {
            let mut sequences = vec![vec![
                Event::Boot(regions.clone()),
                Event::SvqPrepare(svq),
                Event::SvqSwitch(None),
                Event::Failback,
            ]];
            if cfg.migration {
                // The source of a completed migration; then a destination
                // on the same device (one host at a time).
                sequences.push(vec![
                    Event::Boot(regions.clone()),
                    Event::SvqPrepare(svq),
                    Event::SvqSwitch(None),
                    Event::Complete,
                ]);
                sequences.push(vec![
                    Event::Incoming(regions.clone()),
                    Event::Reset,
                    Event::Start,
                ]);
            }
            for events in sequences {
                let mut s = new_strategy(kind, caps, cfg)?;
                let mut a = Applier::new(&mut *dev, caps, format);
                let mut events = events;
                if !matches!(events.last(), Some(Event::Complete)) {
                    events.extend(regions.iter().map(|r| Event::Unplug(r.gpa)));
                }
                run_sequence(&mut *s, &mut a, kind, &events, maps, &mut row, |ev| {
                    progress(&format!("{kind:?} run {}/{}: {ev}", r + 1, cfg.repeats))
                })?;
                debug_assert!(a.committed().is_empty());
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

fn new_strategy(
    kind: StrategyKind,
    caps: DeviceCaps,
    cfg: &BenchConfig,
) -> Result<Box<dyn Strategy>, AdapterError> {
    let options = StrategyOptions {
        max_gpa: Some(cfg.guest_mem),
        ..StrategyOptions::default()
    };
    Ok(kind
        .core()
        .build(caps, &options)
        .map_err(|e| refused(0, "setup", kind, e))?)
}

/// Plans and applies `events` in order, recording the critical phase of
/// the measured ones in `row`.
///
/// # Safety
/// As [`bench`]: every HVA the events name stays mapped.
fn run_sequence<D: MsgSink>(
    s: &mut dyn Strategy,
    a: &mut Applier<D>,
    kind: StrategyKind,
    events: &[Event],
    maps: Option<&[Mapping]>,
    row: &mut BenchRow,
    mut progress: impl FnMut(&str),
) -> Result<(), AdapterError> {
    for (i, ev) in events.iter().enumerate() {
        progress(ev.name());
        // A planner refusal is about the inputs (guest size, queues,
        // the device's range), not the environment.
        let plan = s.apply(ev).map_err(|e| refused(i, ev.name(), kind, e))?;
        if *ev == Event::Reset {
            a.device_reset().map_err(|e| AdapterError::Device {
                device: "bench".into(),
                what: "reset (VHOST_VDPA_SET_STATUS 0)".into(),
                source: Some(e),
            })?;
        }
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
            Event::Complete | Event::Start => {
                let c = plan.cost();
                let w = usize::from(*ev == Event::Start);
                row.downtime[w] = (
                    c.critical_messages,
                    c.critical_pinned_bytes,
                    c.critical_unpinned_bytes,
                );
                if w == 0 {
                    row.stop_and_copy.push(rep.critical);
                } else {
                    row.start.push(rep.critical);
                }
            }
            // Not measured: the steps that set up and tear down each run.
            Event::Boot(_)
            | Event::Hotplug(_)
            | Event::Unplug(_)
            | Event::SvqPrepare(_)
            | Event::Incoming(_)
            | Event::Switchover
            | Event::Reset
            | Event::HostBuffers(_)
            | Event::ViommuMap { .. }
            | Event::ViommuUnmap { .. } => {}
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::ModelDevice;
    use vdpa_iova_planner::PageSize;

    /// The identity strategy is told where guest memory ends, not only
    /// where the regions booted so far end: the window goes above it all.
    #[test]
    fn the_identity_window_is_above_all_the_guest_memory() {
        let cfg = BenchConfig {
            guest_mem: 1 << 32,
            queues: 1,
            regions: 1,
            repeats: 1,
            migration: false,
        };
        let mut s = new_strategy(StrategyKind::Identity, DeviceCaps::default(), &cfg).unwrap();
        s.add_regions(&[RegionSpec {
            gpa: Gpa(0),
            size: 1 << 20,
            hva: Hva(1 << 40),
            readonly: false,
        }])
        .unwrap();
        s.svq_prepare(cfg.svq(Hva(1 << 41))).unwrap();
        let w = s.window().expect("identity has a window");
        assert!(w.first().0 >= cfg.guest_mem, "{w:?}");
    }

    /// The whole bench on the kernel model: every measured step of every
    /// repeat is recorded for both strategies, and the costs read from the
    /// plans are the ones each strategy is known for.
    #[test]
    fn bench_on_the_kernel_model_records_every_measured_step() {
        let cfg = BenchConfig {
            guest_mem: 4 << 20,
            queues: 1,
            regions: 2,
            repeats: 2,
            migration: true,
        };
        let caps = DeviceCaps::default();
        let page = 4096u64;
        let rings = crate::memory::svq_bytes(&cfg.svq(Hva(0)), PageSize::SIZE_4K).unwrap();
        // Memory of this process, as bench's contract asks (the model
        // device never touches it), page aligned.
        let guest = vec![0u8; (cfg.guest_mem + page) as usize];
        let vrings = vec![0u8; (rings + page) as usize];
        let aligned = |p: *const u8| (p as u64).next_multiple_of(page);
        let format = MsgFormat::V2 { asid: true };
        let mut dev = ModelDevice::new(&caps, format);
        // SAFETY: both buffers live until the end of the test, and each
        // holds the bytes the bench names from its aligned start.
        let rows = unsafe {
            bench(
                &mut dev,
                caps,
                format,
                &cfg,
                (aligned(guest.as_ptr()), aligned(vrings.as_ptr())),
                None,
                |_| {},
            )
        }
        .unwrap();
        assert_eq!(rows.len(), 2);
        for r in &rows {
            let counts = [
                r.switch.len(),
                r.failback.len(),
                r.stop_and_copy.len(),
                r.start.len(),
            ];
            // The completed migration's source switches too.
            assert_eq!(counts, [4, 2, 2, 2], "{:?}", r.strategy);
        }
        let (id, qemu) = (&rows[0], &rows[1]);
        assert_eq!(
            (id.strategy, qemu.strategy),
            (StrategyKind::Identity, StrategyKind::Qemu)
        );
        // Identity: nothing pinned while stopped, nothing in the downtime.
        assert_eq!(id.critical_pinned, (0, 0));
        assert_eq!(id.downtime, [(0, 0, 0); 2]);
        // QEMU: all guest memory pinned again at the switch (with the
        // vrings) and the failback, unpinned at the stop-and-copy, pinned
        // at the start.
        assert_eq!(qemu.critical_pinned, (cfg.guest_mem + rings, cfg.guest_mem));
        assert_eq!(
            qemu.downtime[0].2,
            cfg.guest_mem + rings,
            "{:?}",
            qemu.downtime
        );
        assert_eq!(qemu.downtime[1].1, cfg.guest_mem, "{:?}", qemu.downtime);
        assert!(qemu.downtime.iter().all(|d| d.0 > 0));
    }
}
