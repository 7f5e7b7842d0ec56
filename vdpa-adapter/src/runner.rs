//! Runs a scenario through a strategy against the kernel model, checking
//! every plan and the resulting layout after every step.

use vdpa_iova_planner::kernel::{KernelIotlb, Violation};
use vdpa_iova_planner::verify::replay::{self, Refusal, StepError};
use vdpa_iova_planner::{
    Cost, GuestView, Mode, Op, Placement, PlanError, Strategy, StrategyOptions, VringArea,
};

use crate::error::AdapterError;
use crate::scenario::{layout_error, step_error, Host, Migration, Scenario};

/// Which strategy plans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StrategyKind {
    /// Guest memory stays identity-mapped; vrings in a reserved window.
    Identity,
    /// Identity, with the vrings in address space 1 (needs `desc_asid` and
    /// two address spaces).
    #[value(name = "identity-asid")]
    IdentityAsid,
    /// What QEMU does today: unmap and re-map everything at each switch.
    Qemu,
}

impl StrategyKind {
    /// The strategies a scenario's device allows, ours first, QEMU last.
    pub fn available(scn: &Scenario) -> Vec<StrategyKind> {
        let mut v = vec![StrategyKind::Identity];
        if scn.caps.desc_asid && scn.caps.address_spaces >= 2 {
            v.push(StrategyKind::IdentityAsid);
        }
        v.push(StrategyKind::Qemu);
        v
    }

    /// The core's kind this names.
    pub fn core(self) -> vdpa_iova_planner::StrategyKind {
        match self {
            StrategyKind::Identity => vdpa_iova_planner::StrategyKind::Identity {
                separate_vring_asid: false,
            },
            StrategyKind::IdentityAsid => vdpa_iova_planner::StrategyKind::Identity {
                separate_vring_asid: true,
            },
            StrategyKind::Qemu => vdpa_iova_planner::StrategyKind::Qemu,
        }
    }

    /// Builds the strategy for a scenario.
    ///
    /// # Errors
    /// Capabilities the planner refuses.
    pub fn build(self, scn: &Scenario, file: &str) -> Result<Box<dyn Strategy>, AdapterError> {
        let options = StrategyOptions {
            max_gpa: scn.max_gpa,
            viommu_last: scn.viommu_last,
            max_entries: scn.max_entries,
        };
        let r = self
            .core()
            .build(scn.caps, &options)
            .map(|p| p as Box<dyn Strategy>);
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
    /// The host it happened on.
    pub host: Host,
    /// The event.
    pub event: &'static str,
    /// Whether the scenario file wrote it (`false`: implied by a migration).
    pub written: bool,
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
    /// The most entries one address space held at any point of the step's
    /// plan (what vhost-vdpa's `max_iotlb_entries` must allow; one per
    /// UPDATE, more on pinning devices with scattered memory).
    pub peak_entries: usize,
    /// Mode after the step.
    pub mode: Mode,
    /// Where every region (or guest map) is mapped after the step.
    pub placements: Vec<Placement>,
    /// The strategy's IOVA window after the step, if it keeps one.
    pub window: Option<vdpa_iova_planner::Span<vdpa_iova_planner::Iova>>,
    /// Host buffers mapped after the step, as `(asid, entry)`.
    pub buffers: Vec<(u32, vdpa_iova_planner::Entry)>,
    /// What the kernel did that the plan did not mean (only for plans
    /// replayed permissively: QEMU's partial unmaps).
    pub quirks: Vec<String>,
}

/// Why a run stopped before the end of the scenario.
#[derive(Clone, Debug)]
pub struct Stop {
    /// The step the strategy refused.
    pub step: usize,
    /// Its event.
    pub event: &'static str,
    /// The strategy's reason.
    pub reason: String,
}

/// A whole scenario under one strategy.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// Scenario name.
    pub name: String,
    /// Strategy name.
    pub strategy: &'static str,
    /// Boot, then one per event, up to `stopped`.
    pub steps: Vec<StepReport>,
    /// The scenario's migrations, in order.
    pub migrations: Vec<Migration>,
    /// The step the strategy cannot plan (unsupported, as QEMU with a
    /// vIOMMU, or out of IOVA space), if any.
    pub stopped: Option<Stop>,
}

/// Plans every step of `scn` with `kind`, replays each plan on the kernel
/// model and checks the layout after each step.
///
/// # Errors
/// The first step the planner refuses, or (a planner bug) a plan the kernel
/// model refuses or a layout that does not match.
pub fn run(scn: &Scenario, file: &str, kind: StrategyKind) -> Result<RunReport, AdapterError> {
    // One per host, each a strategy of the same kind on its own device;
    // a destination's is created at its `incoming`.
    let mut sides = vec![Side::new(scn, file, kind)?];
    let name = sides[0].s.name();
    let mut steps = Vec::new();
    let mut stopped = None;
    let written = std::iter::once(true).chain(scn.written.iter().copied());
    for (i, ((host, ev), written)) in scn.host_steps().zip(written).enumerate() {
        while sides.len() <= host.index() {
            sides.push(Side::new(scn, file, kind)?);
        }
        let side = &mut sides[host.index()];
        let Side { s, k, guest } = side;
        let step = match replay::step(s.as_mut(), k, guest, &ev) {
            Ok(step) => step,
            // What the strategy cannot do on this device ends its run; the
            // comparison shows where. Bad input is an error.
            Err(StepError::Plan(
                e @ (PlanError::Unsupported { .. } | PlanError::OutOfIova { .. }),
            )) => {
                stopped = Some(Stop {
                    step: i,
                    event: ev.name(),
                    reason: e.to_string(),
                });
                break;
            }
            Err(StepError::Plan(e)) => return Err(step_error(file, i, &ev, s.name(), e)),
            // The device's entry limit is a limit of the device, like its
            // IOVA range: the run stops there, and the comparison shows where.
            Err(StepError::Target(Refusal {
                op,
                violation: Violation::EntryLimit { asid, limit },
            })) => {
                stopped = Some(Stop {
                    step: i,
                    event: ev.name(),
                    reason: format!(
                        "operation {op} would put more than the device's {limit} entries (max_entries) in address space {asid}"
                    ),
                });
                break;
            }
            Err(StepError::Target(Refusal { op, violation })) => {
                return Err(AdapterError::KernelRule {
                    file: file.to_string(),
                    step: i,
                    event: ev.name(),
                    strategy: s.name().to_string(),
                    op,
                    violation: Box::new(violation),
                })
            }
            Err(e @ (StepError::Layout(_) | StepError::Shape(_))) => {
                return Err(layout_error(file, i, &ev, s.name(), e))
            }
        };
        let (plan, outcome, rep) = (step.plan, step.outcome, step.layout);
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
            host,
            event: ev.name(),
            written,
            cost: *plan.cost(),
            ops: plan.into_ops(),
            svq: s.vring_areas(),
            displaced,
            unreachable_bytes: rep.unreachable_bytes,
            peak_entries: outcome.peak_entries,
            mode: s.mode(),
            placements: s.placements(),
            window: s.window(),
            buffers: s.buffer_entries(),
            quirks: outcome.quirks.iter().map(ToString::to_string).collect(),
        });
    }
    Ok(RunReport {
        name: scn.name.clone(),
        strategy: name,
        steps,
        migrations: scn.migrations.clone(),
        stopped,
    })
}

/// One host's strategy, the kernel model of its device, and its guest.
struct Side {
    s: Box<dyn Strategy>,
    k: KernelIotlb,
    guest: GuestView,
}

impl Side {
    fn new(scn: &Scenario, file: &str, kind: StrategyKind) -> Result<Side, AdapterError> {
        // Our plans must pass the strict model; QEMU's are replayed as the
        // kernel takes them, so what they lose shows.
        let limit = scn
            .max_entries
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let k = match kind {
            StrategyKind::Qemu => KernelIotlb::permissive(&scn.caps),
            StrategyKind::Identity | StrategyKind::IdentityAsid => KernelIotlb::new(&scn.caps),
        }
        .with_entry_limit(limit);
        Ok(Side {
            s: kind.build(scn, file)?,
            k,
            guest: GuestView::new(scn.viommu_last.is_some()),
        })
    }
}
