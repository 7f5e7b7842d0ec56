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
