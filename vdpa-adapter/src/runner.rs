//! Runs a scenario through a strategy against the kernel model, checking
//! every plan and the resulting layout after every step.

use vdpa_iova_planner::kernel::KernelIotlb;
use vdpa_iova_planner::layout;
use vdpa_iova_planner::{Cost, Mode, Op, Planner, QemuPlanner, RegionSpec, Strategy, VringArea};

use crate::error::AdapterError;
use crate::scenario::{step_error, Scenario};

/// Which strategy plans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StrategyKind {
    /// Guest memory stays identity-mapped; vrings in a reserved window.
    Identity,
    /// What QEMU does today: unmap and re-map everything at each switch.
    Qemu,
}

impl StrategyKind {
    /// Builds the strategy for a scenario.
    ///
    /// # Errors
    /// Capabilities the planner refuses.
    pub fn build(self, scn: &Scenario, file: &str) -> Result<Box<dyn Strategy>, AdapterError> {
        let r = match self {
            StrategyKind::Identity => {
                Planner::new(scn.caps, scn.max_gpa).map(|p| Box::new(p) as Box<dyn Strategy>)
            }
            StrategyKind::Qemu => {
                QemuPlanner::new(scn.caps).map(|p| Box::new(p) as Box<dyn Strategy>)
            }
        };
        r.map_err(|e| AdapterError::Scenario {
            file: file.to_string(),
            what: format!("[device]: {e}"),
        })
    }
}

/// A region mapped away from its GPA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Displaced {
    /// First GPA.
    pub gpa: u64,
    /// Where the device sees it.
    pub iova: u64,
    /// Bytes.
    pub size: u64,
}

/// What one step did.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// The event.
    pub event: &'static str,
    /// The plan's operations.
    pub ops: Vec<Op>,
    /// The plan's cost.
    pub cost: Cost,
    /// Vring areas mapped after the step.
    pub svq: Vec<VringArea>,
    /// Guest memory mapped away from its GPA after the step.
    pub displaced: Vec<Displaced>,
    /// Guest bytes the device cannot reach after the step.
    pub unreachable_bytes: u64,
    /// Mode after the step.
    pub mode: Mode,
}

/// A whole scenario under one strategy.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// Scenario name.
    pub name: String,
    /// Strategy name.
    pub strategy: &'static str,
    /// Boot, then one per event.
    pub steps: Vec<StepReport>,
}

/// Plans every step of `scn` with `kind`, replays each plan on the kernel
/// model and checks the layout after each step.
///
/// # Errors
/// The first step the planner refuses, or (a planner bug) a plan the kernel
/// model refuses or a layout that does not match.
pub fn run(scn: &Scenario, file: &str, kind: StrategyKind) -> Result<RunReport, AdapterError> {
    let mut s = kind.build(scn, file)?;
    let mut k = KernelIotlb::new(&scn.caps);
    let mut regions: Vec<RegionSpec> = Vec::new();
    let mut steps = Vec::new();
    for (i, ev) in scn.steps().enumerate() {
        let plan = s
            .apply(&ev)
            .map_err(|e| step_error(file, i, &ev, s.name(), e))?;
        if let Err((op, violation)) = k.apply_all(plan.ops()) {
            return Err(AdapterError::KernelRule {
                file: file.to_string(),
                step: i,
                event: ev.name(),
                strategy: s.name().to_string(),
                op,
                violation: Box::new(violation),
            });
        }
        ev.track_regions(&mut regions);
        let rep = layout::check(k.entries(0), s.as_ref(), &regions).map_err(|e| {
            AdapterError::Layout {
                file: file.to_string(),
                step: i,
                event: ev.name(),
                strategy: s.name().to_string(),
                what: e.to_string(),
            }
        })?;
        let displaced = s
            .placements()
            .iter()
            .flat_map(|p| {
                p.pieces
                    .iter()
                    .filter(|x| !x.is_identity())
                    .copied()
                    .collect::<Vec<_>>()
            })
            .map(|x| Displaced {
                gpa: x.gpa.first().0,
                iova: x.iova.first().0,
                size: x.gpa.size(),
            })
            .collect();
        steps.push(StepReport {
            event: ev.name(),
            cost: *plan.cost(),
            ops: plan.into_ops(),
            svq: s.vring_areas(),
            displaced,
            unreachable_bytes: rep.unreachable_bytes,
            mode: s.mode(),
        });
    }
    Ok(RunReport {
        name: scn.name.clone(),
        strategy: s.name(),
        steps,
    })
}
