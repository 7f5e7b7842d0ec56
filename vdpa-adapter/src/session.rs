//! A scenario run on a device (or on the kernel model for `--dry-run`):
//! real memory for every region and vring buffer, every step's plan applied
//! with the pre-checks and rollback of [`crate::apply`], and the device's
//! committed table checked against the planner after every step.

use std::collections::BTreeMap;
use std::time::Duration;

use vdpa_iova_planner::verify::replay::{self, StepError, Target};
use vdpa_iova_planner::{
    DeviceCaps, Entry, Event, GuestView, Hva, PageSize, Plan, RegionSpec, SvqConfig,
};

use crate::apply::{Applier, ApplyError, ApplyReport};
use crate::error::AdapterError;
use crate::host::procfs::{self, parse_maps, Limits, Mapping};
use crate::memory::{svq_bytes, Backing, Mem};
use crate::runner::StrategyKind;
use crate::scenario::{layout_error, step_error, Host, Scenario};
use crate::sink::MsgSink;

/// What one step did on the device.
#[derive(Clone, Debug)]
pub struct StepOutcome {
    /// The event.
    pub event: &'static str,
    /// Messages written.
    pub messages: usize,
    /// Of those, messages written while the device was stopped.
    pub critical_messages: u64,
    /// Bytes the plan pinned (0 on devices that do not pin).
    pub pinned: u64,
    /// Of those, bytes pinned while the device was stopped.
    pub critical_pinned: u64,
    /// Wall time of the critical phase.
    pub critical: Duration,
    /// Wall time of the whole plan.
    pub total: Duration,
}

/// Host memory standing in for the scenario's: each region and vring
/// buffer gets its own mapping, and every HVA of the scenario is replaced.
#[derive(Debug, Default)]
pub struct HostMemory {
    backing: Option<Backing>,
    /// Live mappings by scenario HVA.
    maps: BTreeMap<u64, Mem>,
}

/// The tag written at the start of every guest page (after its address).
pub const TAG_MAGIC: u64 = 0x7664_7061_5441_4721; // "vdpaTAG!"

impl HostMemory {
    /// `None`: keep the scenario's HVAs (dry runs without memory).
    pub fn new(backing: Option<Backing>) -> Self {
        HostMemory {
            backing,
            maps: BTreeMap::new(),
        }
    }

    fn real(&mut self, hva: Hva, size: u64, gpa: Option<u64>) -> Result<Hva, AdapterError> {
        let Some(b) = self.backing else {
            return Ok(hva);
        };
        if let Some(m) = self.maps.get(&hva.0) {
            if m.len() >= size {
                return Ok(Hva(m.addr()));
            }
        }
        let mut m = Mem::new(size, b, "vdpa-guest").map_err(|source| AdapterError::Memory {
            what: format!("{size:#x} bytes for scenario hva {:#x}", hva.0),
            source,
        })?;
        if let Some(g) = gpa {
            m.tag_pages(g, 4096, TAG_MAGIC);
        }
        let real = Hva(m.addr());
        self.maps.insert(hva.0, m);
        Ok(real)
    }

    /// Checks, before anything is allocated, that the host can give every
    /// region and vring buffer of `events` real memory on a device with
    /// pages of `page` (the vring buffers' size depends on it): `MemAvailable`
    /// for memfd and anonymous memory, free huge pages for huge pages.
    /// Memory shared by several events (one HVA) counts once, at its
    /// largest size.
    ///
    /// # Errors
    /// [`AdapterError::HostMemory`] naming what is needed and what is there.
    pub fn check_room(
        &self,
        events: impl IntoIterator<Item = Event>,
        page: PageSize,
    ) -> Result<(), AdapterError> {
        let Some(b) = self.backing else {
            return Ok(());
        };
        let mut by_hva: BTreeMap<u64, u64> = BTreeMap::new();
        let mut need = |hva: u64, size: u64| {
            let e = by_hva.entry(hva).or_insert(0);
            *e = (*e).max(size);
        };
        for ev in events {
            match ev {
                Event::Boot(rs) | Event::Incoming(rs) => {
                    rs.iter().for_each(|r| need(r.hva.0, r.size))
                }
                Event::Hotplug(r) => need(r.hva.0, r.size),
                Event::HostBuffers(bs) => bs.iter().for_each(|b| need(b.hva.0, b.size)),
                Event::SvqPrepare(c) | Event::SvqSwitch(Some(c)) => {
                    // A configuration the planner refuses needs nothing: the
                    // run stops at it.
                    if let Ok(n) = svq_bytes(&c, page) {
                        need(c.hva.0, n);
                    }
                }
                // No host memory of their own.
                Event::Unplug(_)
                | Event::SvqSwitch(None)
                | Event::Failback
                | Event::Complete
                | Event::Switchover
                | Event::Start
                | Event::Reset
                | Event::ViommuMap { .. }
                | Event::ViommuUnmap { .. } => {}
            }
        }
        let needed = by_hva.values().fold(0u64, |a, &n| a.saturating_add(n));
        let (what, available) = match b {
            Backing::Hugepages => ("free huge pages", procfs::free_huge_pages()),
            Backing::Memfd | Backing::Anon => ("memory", procfs::mem_available()),
        };
        match available {
            Some(avail) if avail < needed => Err(AdapterError::HostMemory {
                what,
                needed: crate::output::bytes(needed),
                available: crate::output::bytes(avail),
            }),
            _ => Ok(()),
        }
    }

    /// The event with real HVAs.
    ///
    /// # Errors
    /// Memory that cannot be allocated.
    pub fn rewrite(&mut self, ev: &Event, page: u64) -> Result<Event, AdapterError> {
        let region = |me: &mut Self, r: &RegionSpec| -> Result<RegionSpec, AdapterError> {
            Ok(RegionSpec {
                hva: me.real(r.hva, r.size, Some(r.gpa.0))?,
                ..*r
            })
        };
        let svq = |me: &mut Self, c: &SvqConfig| -> Result<SvqConfig, AdapterError> {
            // A configuration the planner will refuse still gets a page per
            // queue, so that the planner, not the allocation, says why.
            let bytes = PageSize::new(page)
                .ok()
                .and_then(|p| svq_bytes(c, p).ok())
                .unwrap_or(page.saturating_mul(u64::from(c.queues)));
            Ok(SvqConfig {
                hva: me.real(c.hva, bytes, None)?,
                ..*c
            })
        };
        Ok(match ev {
            Event::Boot(rs) => Event::Boot(
                rs.iter()
                    .map(|r| region(self, r))
                    .collect::<Result<_, _>>()?,
            ),
            Event::Incoming(rs) => Event::Incoming(
                rs.iter()
                    .map(|r| region(self, r))
                    .collect::<Result<_, _>>()?,
            ),
            Event::Hotplug(r) => Event::Hotplug(region(self, r)?),
            Event::HostBuffers(bs) => Event::HostBuffers(
                bs.iter()
                    .map(|b| {
                        Ok(vdpa_iova_planner::HostBuffer {
                            hva: self.real(b.hva, b.size, None)?,
                            ..*b
                        })
                    })
                    .collect::<Result<_, AdapterError>>()?,
            ),
            Event::SvqPrepare(c) => Event::SvqPrepare(svq(self, c)?),
            Event::SvqSwitch(Some(c)) => Event::SvqSwitch(Some(svq(self, c)?)),
            // No host address to replace.
            e @ (Event::Unplug(_)
            | Event::SvqSwitch(None)
            | Event::Failback
            | Event::Complete
            | Event::Switchover
            | Event::Start
            | Event::Reset
            | Event::ViommuMap { .. }
            | Event::ViommuUnmap { .. }) => e.clone(),
        })
    }

    /// `/proc/self/maps`, when real memory is in use.
    pub fn mappings(&self) -> Option<Vec<Mapping>> {
        self.backing?;
        std::fs::read_to_string("/proc/self/maps")
            .ok()
            .map(|t| parse_maps(&t))
    }
}

/// A device behind an [`Applier`], as a target of the replay loop: plans go
/// through the applier's pre-checks and rollback, and the tables checked are
/// what it committed. Only `run_on_device` builds one, over events whose HVAs
/// `memory` rewrote.
struct DeviceTarget<'a, D: MsgSink> {
    applier: &'a mut Applier<D>,
    limits: Option<Limits>,
    memory: &'a HostMemory,
}

/// Why a device step failed.
#[derive(Debug, thiserror::Error)]
enum DeviceStepError {
    #[error("reset (VHOST_VDPA_SET_STATUS 0): {0}")]
    Reset(std::io::Error),
    #[error(transparent)]
    Apply(ApplyError),
}

impl<D: MsgSink> Target for DeviceTarget<'_, D> {
    type Outcome = ApplyReport;
    type Error = DeviceStepError;

    fn reset(&mut self) -> Result<(), DeviceStepError> {
        self.applier.device_reset().map_err(DeviceStepError::Reset)
    }

    fn apply_plan(&mut self, plan: &Plan) -> Result<ApplyReport, DeviceStepError> {
        let maps = self.memory.mappings();
        // SAFETY: every UPDATE maps memory `memory` owns: the scenario's
        // HVAs were replaced by mappings that live until `memory` is dropped,
        // after the caller has unmapped them from the device (or, for a dry
        // run without memory, the model device never touches an HVA).
        unsafe {
            self.applier.apply(
                plan,
                &self.limits.unwrap_or_else(Limits::current),
                maps.as_deref(),
            )
        }
        .map_err(DeviceStepError::Apply)
    }

    fn tables(&self) -> Vec<Vec<Entry>> {
        self.applier.committed().device_tables()
    }
}

/// A scenario to run on a device.
#[derive(Clone, Copy, Debug)]
pub struct DeviceRun<'a> {
    /// The scenario.
    pub scn: &'a Scenario,
    /// Its file, for errors.
    pub file: &'a str,
    /// The device's name, for errors.
    pub device: &'a str,
    /// The device's capabilities (probed, or the scenario's for a dry run).
    pub caps: DeviceCaps,
    /// The strategy.
    pub kind: StrategyKind,
    /// Fixed limits (a dry run has none), or `None` to read this process's
    /// before every step.
    pub limits: Option<Limits>,
    /// Which host's steps to run (a device plays one host of a migration).
    pub host: Host,
}

/// Runs every step of the scenario on `applier`; a reset event resets the
/// device before its plan is applied.
///
/// # Errors
/// The first step the planner refuses, the pre-checks stop, or the device
/// refuses (after rolling the step back).
pub fn run_on_device<D: MsgSink>(
    run: DeviceRun<'_>,
    applier: &mut Applier<D>,
    memory: &mut HostMemory,
    mut on_step: impl FnMut(usize, &StepOutcome),
) -> Result<Vec<StepOutcome>, AdapterError> {
    let DeviceRun {
        scn,
        file,
        device,
        caps,
        kind,
        limits,
        host,
    } = run;
    let on_device = Scenario {
        caps,
        ..scn.clone()
    };
    let mut s = kind.build(&on_device, file)?;
    let mut guest = GuestView::new(scn.viommu_last.is_some());
    let mut out = Vec::new();
    for (i, ev) in scn.steps_on(host).enumerate() {
        let ev = memory.rewrite(&ev, caps.page_size.get())?;
        let mut target = DeviceTarget {
            applier: &mut *applier,
            limits,
            memory,
        };
        let step = match replay::step(s.as_mut(), &mut target, &mut guest, &ev) {
            Ok(step) => step,
            Err(StepError::Plan(e)) => return Err(step_error(file, i, &ev, s.name(), e)),
            Err(StepError::Target(DeviceStepError::Reset(e))) => {
                return Err(AdapterError::Device {
                    device: device.to_string(),
                    what: "reset (VHOST_VDPA_SET_STATUS 0)".into(),
                    source: Some(e),
                })
            }
            Err(StepError::Target(DeviceStepError::Apply(e))) => {
                return Err(AdapterError::Apply {
                    device: device.to_string(),
                    step: i,
                    event: ev.name(),
                    source: Box::new(e),
                })
            }
            Err(e @ (StepError::Layout(_) | StepError::Shape(_))) => {
                return Err(layout_error(file, i, &ev, s.name(), e))
            }
        };
        let (plan, rep) = (step.plan, step.outcome);
        let o = StepOutcome {
            event: ev.name(),
            messages: rep.messages,
            critical_messages: plan.cost().critical_messages,
            pinned: plan.cost().pinned_bytes,
            critical_pinned: plan.cost().critical_pinned_bytes,
            critical: rep.critical,
            total: rep.total,
        };
        on_step(i, &o);
        out.push(o);
    }
    Ok(out)
}
