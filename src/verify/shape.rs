//! The shape every plan must have, whatever strategy made it: phases in
//! order, batches only on devices that batch and never across a phase or an
//! address space, and a reported cost equal to what the operations add up
//! to. The replay loop checks it for every plan.

use core::fmt;

use crate::caps::DeviceCaps;
use crate::plan::{Cost, OpKind, Plan};
use crate::vocab::Phase;

/// How a plan breaks its shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShapeError {
    /// Operation `index` runs in an earlier phase than the one before it.
    PhasesOutOfOrder {
        /// Index of the operation.
        index: usize,
    },
    /// A batch marker on a device that does not batch.
    BatchWithoutBatching {
        /// Index of the operation.
        index: usize,
    },
    /// A BATCH_BEGIN inside a batch, or a BATCH_END outside one or closing
    /// a batch of another phase or address space.
    BadBatchMarker {
        /// Index of the operation.
        index: usize,
    },
    /// An operation inside a batch of another phase or address space.
    BatchSpans {
        /// Index of the operation.
        index: usize,
    },
    /// The plan ends with a batch open.
    UnclosedBatch,
    /// The reported cost is not what the operations add up to (unpinned
    /// bytes aside: they depend on what each INVALIDATE drops, which the
    /// kernel model tells).
    CostMismatch {
        /// What the plan reports.
        reported: Cost,
        /// What its operations add up to.
        recounted: Cost,
    },
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShapeError::PhasesOutOfOrder { index } => {
                write!(
                    f,
                    "operation {index} runs in an earlier phase than the one before"
                )
            }
            ShapeError::BatchWithoutBatching { index } => {
                write!(
                    f,
                    "operation {index} is a batch marker on a device that does not batch"
                )
            }
            ShapeError::BadBatchMarker { index } => {
                write!(f, "operation {index} is a batch marker out of place")
            }
            ShapeError::BatchSpans { index } => write!(
                f,
                "operation {index} lies in a batch of another phase or address space"
            ),
            ShapeError::UnclosedBatch => write!(f, "the plan ends with a batch open"),
            ShapeError::CostMismatch {
                reported,
                recounted,
            } => write!(
                f,
                "reported cost {reported:?} differs from the operations' {recounted:?}"
            ),
        }
    }
}

impl std::error::Error for ShapeError {}

/// Checks the shape of `plan` for a device with `caps`.
///
/// # Errors
/// The first [`ShapeError`].
pub fn check(plan: &Plan, caps: &DeviceCaps) -> Result<(), ShapeError> {
    let ops = plan.ops();
    let mut open: Option<(Phase, u32)> = None;
    let mut c = Cost::default();
    for (index, op) in ops.iter().enumerate() {
        if index > 0 && ops[index - 1].phase > op.phase {
            return Err(ShapeError::PhasesOutOfOrder { index });
        }
        let crit = op.phase == Phase::Critical;
        c.messages += 1;
        c.critical_messages += u64::from(crit);
        match op.kind {
            OpKind::BatchBegin | OpKind::BatchEnd if !caps.batching => {
                return Err(ShapeError::BatchWithoutBatching { index })
            }
            OpKind::BatchBegin => {
                if open.is_some() {
                    return Err(ShapeError::BadBatchMarker { index });
                }
                open = Some((op.phase, op.asid));
            }
            OpKind::BatchEnd => {
                if open.take() != Some((op.phase, op.asid)) {
                    return Err(ShapeError::BadBatchMarker { index });
                }
                c.critical_batch_ends += u64::from(crit);
            }
            OpKind::Update { iova, .. } | OpKind::Invalidate { iova } => {
                if open.is_some_and(|o| o != (op.phase, op.asid)) {
                    return Err(ShapeError::BatchSpans { index });
                }
                if caps.pinning && matches!(op.kind, OpKind::Update { .. }) {
                    c.pinned_bytes += iova.size();
                    c.critical_pinned_bytes += if crit { iova.size() } else { 0 };
                }
            }
        }
    }
    if open.is_some() {
        return Err(ShapeError::UnclosedBatch);
    }
    c.unpinned_bytes = plan.cost().unpinned_bytes;
    c.critical_unpinned_bytes = plan.cost().critical_unpinned_bytes;
    if c != *plan.cost() {
        return Err(ShapeError::CostMismatch {
            reported: *plan.cost(),
            recounted: c,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{Hva, Span};
    use crate::plan::{plan_from_ops, Op};
    use crate::vocab::Perm;
    use Phase::{Background, Critical, Prepare};

    fn op(phase: Phase, asid: u32, kind: OpKind) -> Op {
        Op { phase, asid, kind }
    }

    fn map() -> OpKind {
        OpKind::Update {
            iova: Span::trusted(0x1000, 0x1000),
            hva: Hva(0x7000_0000),
            perm: Perm::Rw,
        }
    }

    fn shape(ops: Vec<Op>, caps: &DeviceCaps) -> Result<(), ShapeError> {
        check(&plan_from_ops(ops, caps), caps)
    }

    /// Rule: prepare, then critical, then background; never back.
    #[test]
    fn phases_never_go_back() {
        let caps = DeviceCaps::default();
        let ops = vec![
            op(Prepare, 0, map()),
            op(Critical, 0, map()),
            op(Critical, 0, map()),
            op(Background, 0, map()),
        ];
        assert_eq!(shape(ops, &caps), Ok(()));
        let back = vec![
            op(Prepare, 0, map()),
            op(Critical, 0, map()),
            op(Prepare, 0, map()),
        ];
        assert_eq!(
            shape(back, &caps),
            Err(ShapeError::PhasesOutOfOrder { index: 2 })
        );
    }

    /// Rule: batch markers only on a device that batches; a batch opens
    /// once, closes in its own phase and address space, holds nothing of
    /// another, and is closed by the end of the plan.
    #[test]
    fn batches_are_well_formed() {
        let caps = DeviceCaps::default();
        let (b, e) = (OpKind::BatchBegin, OpKind::BatchEnd);
        let good = vec![op(Prepare, 0, b), op(Prepare, 0, map()), op(Prepare, 0, e)];
        assert_eq!(shape(good.clone(), &caps), Ok(()));
        let single = DeviceCaps {
            batching: false,
            ..caps
        };
        assert_eq!(
            shape(good, &single),
            Err(ShapeError::BatchWithoutBatching { index: 0 })
        );
        let cases = [
            (
                vec![op(Prepare, 0, b), op(Prepare, 0, b)],
                ShapeError::BadBatchMarker { index: 1 },
            ),
            (
                vec![op(Prepare, 0, e)],
                ShapeError::BadBatchMarker { index: 0 },
            ),
            (
                vec![op(Prepare, 0, b), op(Prepare, 1, e)],
                ShapeError::BadBatchMarker { index: 1 },
            ),
            (
                vec![op(Prepare, 0, b), op(Prepare, 1, map()), op(Prepare, 0, e)],
                ShapeError::BatchSpans { index: 1 },
            ),
            (
                vec![
                    op(Prepare, 0, b),
                    op(Critical, 0, map()),
                    op(Critical, 0, e),
                ],
                ShapeError::BatchSpans { index: 1 },
            ),
            (
                vec![op(Prepare, 0, b), op(Prepare, 0, map())],
                ShapeError::UnclosedBatch,
            ),
        ];
        for (ops, want) in cases {
            assert_eq!(shape(ops.clone(), &caps), Err(want), "{ops:?}");
        }
    }

    /// Rule: the reported cost is what the ops add up to: a plan costed for
    /// a device that does not pin reports nothing pinned, which is wrong for
    /// one that does.
    #[test]
    fn the_cost_must_add_up() {
        let pins = DeviceCaps::default();
        let no_pin = DeviceCaps {
            pinning: false,
            ..pins
        };
        let plan = plan_from_ops(vec![op(Critical, 0, map())], &no_pin);
        assert_eq!(check(&plan, &no_pin), Ok(()));
        match check(&plan, &pins) {
            Err(ShapeError::CostMismatch {
                reported,
                recounted,
            }) => {
                assert_eq!(reported.pinned_bytes, 0);
                assert_eq!(recounted.pinned_bytes, 0x1000);
                assert_eq!(recounted.critical_pinned_bytes, 0x1000);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_say_which_operation() {
        assert_eq!(
            ShapeError::PhasesOutOfOrder { index: 3 }.to_string(),
            "operation 3 runs in an earlier phase than the one before"
        );
        assert!(ShapeError::BatchWithoutBatching { index: 1 }
            .to_string()
            .contains("device that does not batch"));
        assert!(ShapeError::BadBatchMarker { index: 2 }
            .to_string()
            .starts_with("operation 2 is a batch marker"));
        assert!(ShapeError::BatchSpans { index: 4 }
            .to_string()
            .starts_with("operation 4 lies in a batch"));
        assert_eq!(
            ShapeError::UnclosedBatch.to_string(),
            "the plan ends with a batch open"
        );
    }
}
