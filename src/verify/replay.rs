//! The one replay loop: event -> plan -> target -> check.
//!
//! Every caller that drives a strategy and must know the device is right
//! afterwards goes through [`step`]: the CLI's plan and dry run (on the
//! kernel model), the adapter's device session (on a real device), the
//! scenario tests and the property tests. Each adds its own checks on the
//! [`Step`] it gets back, never a loop of its own.

use core::fmt;

use crate::entry::Entry;
use crate::error::PlanError;
use crate::event::Event;
use crate::kernel::{Applied, KernelIotlb, Violation};
use crate::plan::Plan;
use crate::strategy::Strategy;
use crate::verify::guest::GuestView;
use crate::verify::layout::{self, LayoutError, LayoutReport};
use crate::verify::shape::{self, ShapeError};
use crate::vocab::Phase;

/// What a plan is written to: the kernel model, or a device.
pub trait Target {
    /// What applying a plan tells the caller.
    type Outcome;
    /// Why a plan or a reset was not taken.
    type Error;
    /// The device was reset (status 0), before the reset event's plan.
    ///
    /// # Errors
    /// The reset failed.
    fn reset(&mut self) -> Result<(), Self::Error>;
    /// Writes every operation of `plan`, in order.
    ///
    /// # Errors
    /// The first operation the target refused.
    fn apply_plan(&mut self, plan: &Plan) -> Result<Self::Outcome, Self::Error>;
    /// What the device translates with now, one list per address space
    /// indexed by asid (the input of [`layout::check`]).
    fn tables(&self) -> Vec<Vec<Entry>>;
}

/// One step that went through: the plan, what the target said, and what the
/// checked layout holds.
#[derive(Clone, Debug)]
pub struct Step<O> {
    /// The strategy's plan.
    pub plan: Plan,
    /// What the target reported.
    pub outcome: O,
    /// The layout, checked byte for byte.
    pub layout: LayoutReport,
}

/// Why a step did not go through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepError<E> {
    /// The strategy refused the event (its state is unchanged; so is the
    /// target's and the guest view's).
    Plan(PlanError),
    /// The target refused the plan or the reset.
    Target(E),
    /// The device's table does not hold what the strategy reports: a bug.
    Layout(LayoutError),
    /// The plan is malformed (phases, batches, its cost): a bug.
    Shape(ShapeError),
}

impl<E: fmt::Display> fmt::Display for StepError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepError::Plan(e) => write!(f, "refused: {e}"),
            StepError::Target(e) => write!(f, "not applied: {e}"),
            StepError::Layout(e) => write!(f, "layout check failed: {e}"),
            StepError::Shape(e) => write!(f, "malformed plan: {e}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for StepError<E> {}

/// Feeds `ev` to `strategy`, checks the plan's shape ([`shape::check`]),
/// writes it to `target` (resetting it first
/// for [`Event::Reset`]), tracks the event in `guest`, and checks the
/// target's tables against the strategy and the guest.
///
/// # Errors
/// See [`StepError`]. After [`StepError::Plan`] nothing has changed; after
/// the others the target may hold part of the plan.
pub fn step<S, T>(
    strategy: &mut S,
    target: &mut T,
    guest: &mut GuestView,
    ev: &Event,
) -> Result<Step<T::Outcome>, StepError<T::Error>>
where
    S: Strategy + ?Sized,
    T: Target + ?Sized,
{
    let plan = strategy.apply(ev).map_err(StepError::Plan)?;
    shape::check(&plan, strategy.caps()).map_err(StepError::Shape)?;
    if *ev == Event::Reset {
        target.reset().map_err(StepError::Target)?;
    }
    let outcome = target.apply_plan(&plan).map_err(StepError::Target)?;
    guest.track(ev);
    let layout = layout::check(&target.tables(), strategy, guest).map_err(StepError::Layout)?;
    Ok(Step {
        plan,
        outcome,
        layout,
    })
}

/// What the kernel model did with a plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelOutcome {
    /// Entries each INVALIDATE dropped, in the plan's order.
    pub dropped: Vec<usize>,
    /// Bytes unpinned: the whole entries the INVALIDATEs dropped (zero on a
    /// device that does not pin).
    pub unpinned_bytes: u64,
    /// Of those, bytes unpinned while the device is stopped.
    pub critical_unpinned_bytes: u64,
    /// The most entries one address space held at any point of the plan.
    pub peak_entries: usize,
    /// Messages the model took the way the kernel does rather than as meant
    /// (only on [`KernelIotlb::permissive`]).
    pub quirks: Vec<Violation>,
}

/// A plan the kernel model refused: the index of the operation and the rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Index of the refused operation in the plan.
    pub op: usize,
    /// The rule it broke.
    pub violation: Violation,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "operation {}: {}", self.op, self.violation)
    }
}

impl Target for KernelIotlb {
    type Outcome = ModelOutcome;
    type Error = Refusal;

    fn reset(&mut self) -> Result<(), Refusal> {
        self.reset_device();
        Ok(())
    }

    fn apply_plan(&mut self, plan: &Plan) -> Result<ModelOutcome, Refusal> {
        let quirks_before = self.quirks().len();
        let mut out = ModelOutcome::default();
        for (i, op) in plan.ops().iter().enumerate() {
            match self.apply(op) {
                Ok(Applied::Unmapped(gone)) => {
                    let n: u64 = gone.iter().map(|e| e.iova.size()).sum();
                    out.dropped.push(gone.len());
                    out.unpinned_bytes += n;
                    if op.phase == Phase::Critical {
                        out.critical_unpinned_bytes += n;
                    }
                }
                Ok(_) => {}
                Err(violation) => return Err(Refusal { op: i, violation }),
            }
            out.peak_entries = out.peak_entries.max(self.len(op.asid));
        }
        if !self.pins() {
            // Nothing pinned on this device: nothing is unpinned either.
            out.unpinned_bytes = 0;
            out.critical_unpinned_bytes = 0;
        }
        out.quirks = self.quirks()[quirks_before..].to_vec();
        Ok(out)
    }

    fn tables(&self) -> Vec<Vec<Entry>> {
        self.device_tables()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{Hva, Span};
    use crate::caps::DeviceCaps;
    use crate::plan::{Op, OpKind};
    use crate::vocab::Perm;

    /// Rule: the model as a replay target forgets the device's own maps at
    /// a reset (a `set_map` device without `persist`), while the kernel's
    /// table keeps them.
    #[test]
    fn a_reset_target_forgets_the_device_maps() {
        let caps = DeviceCaps::default();
        let mut k = KernelIotlb::new(&caps);
        let map = Op {
            phase: Phase::Prepare,
            asid: 0,
            kind: OpKind::Update {
                iova: Span::trusted(0x1000, 0x1000),
                hva: Hva(0x7000_0000),
                perm: Perm::Rw,
            },
        };
        k.apply(&map).unwrap();
        assert!(!k.device_stale(0));
        Target::reset(&mut k).unwrap();
        assert!(k.device_stale(0));
        assert_eq!(k.entries(0).count(), 1);
    }

    #[test]
    fn errors_say_what_failed() {
        let r = Refusal {
            op: 3,
            violation: Violation::ZeroSize,
        };
        assert!(r.to_string().starts_with("operation 3: "), "{r}");
        let e: StepError<Refusal> = StepError::Target(r.clone());
        assert_eq!(e.to_string(), format!("not applied: {r}"));
        let e: StepError<Refusal> = StepError::Plan(PlanError::MissingSvqConfig);
        assert!(e.to_string().starts_with("refused: "));
        let e: StepError<Refusal> = StepError::Shape(ShapeError::UnclosedBatch);
        assert_eq!(
            e.to_string(),
            "malformed plan: the plan ends with a batch open"
        );
    }
}
