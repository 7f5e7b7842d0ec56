//! Plans: ordered IOTLB operations tagged by phase, and what they cost.

use crate::addr::{Hva, Iova, Span};
use crate::caps::DeviceCaps;
use crate::vocab::{Perm, Phase};

/// One IOTLB message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum OpKind {
    /// `VHOST_IOTLB_BATCH_BEGIN`.
    BatchBegin,
    /// `VHOST_IOTLB_BATCH_END`: on devices with a whole-table `set_map`, the
    /// table is pushed to the device here.
    BatchEnd,
    /// `VHOST_IOTLB_UPDATE`: map `iova` to `hva` with `perm`.
    Update {
        /// Device addresses.
        iova: Span<Iova>,
        /// Start of the host memory behind them.
        hva: Hva,
        /// Device access.
        perm: Perm,
    },
    /// `VHOST_IOTLB_INVALIDATE`: unmap exactly one entry previously mapped by
    /// an `Update` of the same range (the kernel drops whole entries).
    Invalidate {
        /// The entry's device addresses.
        iova: Span<Iova>,
    },
}

impl OpKind {
    /// Lower-case name, as in the JSON output.
    pub fn as_str(&self) -> &'static str {
        match self {
            OpKind::BatchBegin => "batch_begin",
            OpKind::BatchEnd => "batch_end",
            OpKind::Update { .. } => "update",
            OpKind::Invalidate { .. } => "invalidate",
        }
    }
}

/// An operation of a plan: one message to write to `/dev/vhost-vdpa-N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Op {
    /// When it runs.
    pub phase: Phase,
    /// Address space it applies to.
    pub asid: u32,
    /// What it does.
    pub kind: OpKind,
}

/// What a plan costs. Bytes count only on devices that pin (for `use_va`
/// devices mapping pins nothing, so pinned bytes are zero).
///
/// Unpinned bytes are what the kernel unpins: an INVALIDATE drops (and
/// unpins) every **whole** entry its range overlaps, and one that overlaps
/// nothing unpins nothing, whatever size it names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Cost {
    /// Bytes pinned by the plan's UPDATEs.
    pub pinned_bytes: u64,
    /// Of those, bytes pinned while the device is stopped.
    pub critical_pinned_bytes: u64,
    /// Bytes unpinned by the plan's INVALIDATEs: the whole entries they drop.
    pub unpinned_bytes: u64,
    /// Of those, bytes unpinned while the device is stopped.
    pub critical_unpinned_bytes: u64,
    /// Messages written, batch markers included.
    pub messages: u64,
    /// Of those, messages written while the device is stopped.
    pub critical_messages: u64,
    /// BATCH_END messages while the device is stopped: on a device with a
    /// whole-table `set_map` (mlx5, vdpa_sim, VDUSE) each is a full table push.
    pub critical_batch_ends: u64,
}

impl Cost {
    /// Adds up the cost of `ops` on a device that pins (`pinning`) or not,
    /// where every INVALIDATE names exactly one live entry (as every plan of
    /// the identity strategy does; the kernel model refuses anything else
    /// when it replays them strictly).
    pub fn of(ops: &[Op], pinning: bool) -> Cost {
        Cost::of_with(ops, pinning, |op| match op.kind {
            OpKind::Invalidate { iova } => iova.size(),
            _ => 0,
        })
    }

    /// Like [`Cost::of`], with `unpinned` giving the bytes each INVALIDATE
    /// really unpins (the sizes of the whole entries it drops).
    pub fn of_with(ops: &[Op], pinning: bool, mut unpinned: impl FnMut(&Op) -> u64) -> Cost {
        let mut c = Cost::default();
        for op in ops {
            let crit = op.phase == Phase::Critical;
            c.messages += 1;
            c.critical_messages += u64::from(crit);
            match op.kind {
                OpKind::Update { iova, .. } if pinning => {
                    c.pinned_bytes += iova.size();
                    if crit {
                        c.critical_pinned_bytes += iova.size();
                    }
                }
                OpKind::Invalidate { .. } if pinning => {
                    let n = unpinned(op);
                    c.unpinned_bytes += n;
                    if crit {
                        c.critical_unpinned_bytes += n;
                    }
                }
                OpKind::BatchEnd if crit => c.critical_batch_ends += 1,
                // Nothing pinned or unpinned: a non-pinning device, a batch
                // marker, or a batch end outside the downtime.
                OpKind::Update { .. }
                | OpKind::Invalidate { .. }
                | OpKind::BatchBegin
                | OpKind::BatchEnd => {}
            }
        }
        c
    }

    /// Sum of two costs (saturating; sums of u64 byte counts of real plans never saturate).
    pub fn add(&self, o: &Cost) -> Cost {
        Cost {
            pinned_bytes: self.pinned_bytes.saturating_add(o.pinned_bytes),
            critical_pinned_bytes: self
                .critical_pinned_bytes
                .saturating_add(o.critical_pinned_bytes),
            unpinned_bytes: self.unpinned_bytes.saturating_add(o.unpinned_bytes),
            critical_unpinned_bytes: self
                .critical_unpinned_bytes
                .saturating_add(o.critical_unpinned_bytes),
            messages: self.messages + o.messages,
            critical_messages: self.critical_messages + o.critical_messages,
            critical_batch_ends: self.critical_batch_ends + o.critical_batch_ends,
        }
    }
}

/// An ordered list of operations and its cost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Plan {
    ops: Vec<Op>,
    cost: Cost,
}

impl Plan {
    /// The operations, in the order they must be written.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// What the plan costs.
    pub fn cost(&self) -> &Cost {
        &self.cost
    }

    /// Whether the plan has no operation at all.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The operations of one phase.
    pub fn phase(&self, phase: Phase) -> impl Iterator<Item = &Op> + '_ {
        self.ops.iter().filter(move |o| o.phase == phase)
    }

    /// Consumes the plan, giving its operations.
    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }

    /// The same operations, every one in [`Phase::Critical`]: for a plan
    /// sent while the guest is paused anyway (a destination between the
    /// source's stop and its own start), where no phase is outside the
    /// downtime. The cost moves with the ops; what each INVALIDATE unpins
    /// is kept as the plan counted it.
    pub(crate) fn in_downtime(mut self) -> Plan {
        for op in &mut self.ops {
            op.phase = Phase::Critical;
        }
        let c = &mut self.cost;
        c.critical_pinned_bytes = c.pinned_bytes;
        c.critical_unpinned_bytes = c.unpinned_bytes;
        c.critical_messages = c.messages;
        c.critical_batch_ends = self
            .ops
            .iter()
            .filter(|o| o.kind == OpKind::BatchEnd)
            .count() as u64;
        self
    }
}

/// Collects the map and unmap operations of one event, then orders them by
/// phase and adds batch markers where the device batches.
#[derive(Clone, Debug, Default)]
pub(crate) struct PlanBuilder {
    ops: Vec<Op>,
}

impl PlanBuilder {
    pub(crate) fn new() -> Self {
        PlanBuilder { ops: Vec::new() }
    }

    pub(crate) fn update(
        &mut self,
        phase: Phase,
        asid: u32,
        iova: Span<Iova>,
        hva: Hva,
        perm: Perm,
    ) {
        self.ops.push(Op {
            phase,
            asid,
            kind: OpKind::Update { iova, hva, perm },
        });
    }

    pub(crate) fn invalidate(&mut self, phase: Phase, asid: u32, iova: Span<Iova>) {
        self.ops.push(Op {
            phase,
            asid,
            kind: OpKind::Invalidate { iova },
        });
    }

    /// Orders the ops by phase (stable: the order within a phase is the
    /// order they were added), then wraps each run of two or more ops of
    /// the same phase and asid in a batch when the device batches.
    ///
    /// A single op is never wrapped: on a `set_map` device an unbatched op
    /// pushes the table once, exactly like a batch of one, with two fewer
    /// messages. A batch never spans two phases, because the device is
    /// stopped or started between them, nor two address spaces, which the
    /// kernel refuses.
    pub(crate) fn finish(mut self, caps: &DeviceCaps) -> Plan {
        self.ops.sort_by_key(|o| o.phase);
        let ops = if caps.batching {
            let mut out = Vec::with_capacity(self.ops.len() + 4);
            let mut i = 0;
            while i < self.ops.len() {
                let (phase, asid) = (self.ops[i].phase, self.ops[i].asid);
                let mut j = i + 1;
                while j < self.ops.len() && self.ops[j].phase == phase && self.ops[j].asid == asid {
                    j += 1;
                }
                let wrap = j - i >= 2;
                if wrap {
                    out.push(Op {
                        phase,
                        asid,
                        kind: OpKind::BatchBegin,
                    });
                }
                out.extend_from_slice(&self.ops[i..j]);
                if wrap {
                    out.push(Op {
                        phase,
                        asid,
                        kind: OpKind::BatchEnd,
                    });
                }
                i = j;
            }
            out
        } else {
            self.ops
        };
        let cost = Cost::of(&ops, caps.pinning);
        Plan { ops, cost }
    }
}

/// Builds a plan from explicit ops (for strategies that control batching themselves).
pub(crate) fn plan_from_ops(ops: Vec<Op>, caps: &DeviceCaps) -> Plan {
    let cost = Cost::of(&ops, caps.pinning);
    Plan { ops, cost }
}

/// Builds a plan whose INVALIDATEs may cut or miss entries: `unpinned`
/// gives the bytes each one really unpins.
pub(crate) fn plan_with_unpins(
    ops: Vec<Op>,
    caps: &DeviceCaps,
    unpinned: impl FnMut(&Op) -> u64,
) -> Plan {
    let cost = Cost::of_with(&ops, caps.pinning, unpinned);
    Plan { ops, cost }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{Hva, Span};

    /// Rule: each message kind has the lower-case name the JSON output uses.
    #[test]
    fn op_kinds_have_their_json_names() {
        let iova = Span::trusted(0x1000, 0x1000);
        assert_eq!(OpKind::BatchBegin.as_str(), "batch_begin");
        assert_eq!(OpKind::BatchEnd.as_str(), "batch_end");
        assert_eq!(
            OpKind::Update {
                iova,
                hva: Hva(0x7000),
                perm: Perm::Rw
            }
            .as_str(),
            "update"
        );
        assert_eq!(OpKind::Invalidate { iova }.as_str(), "invalidate");
    }

    /// Rule: adding two costs adds every field.
    #[test]
    fn costs_add_field_by_field() {
        let a = Cost {
            pinned_bytes: 1,
            critical_pinned_bytes: 2,
            unpinned_bytes: 3,
            critical_unpinned_bytes: 4,
            messages: 5,
            critical_messages: 6,
            critical_batch_ends: 7,
        };
        let b = Cost {
            pinned_bytes: 10,
            critical_pinned_bytes: 20,
            unpinned_bytes: 30,
            critical_unpinned_bytes: 40,
            messages: 50,
            critical_messages: 60,
            critical_batch_ends: 70,
        };
        assert_eq!(
            a.add(&b),
            Cost {
                pinned_bytes: 11,
                critical_pinned_bytes: 22,
                unpinned_bytes: 33,
                critical_unpinned_bytes: 44,
                messages: 55,
                critical_messages: 66,
                critical_batch_ends: 77,
            }
        );
        let max = Cost {
            pinned_bytes: u64::MAX,
            ..Cost::default()
        };
        assert_eq!(max.add(&a).pinned_bytes, u64::MAX, "byte counts saturate");
    }

    /// Rule: a plan is empty exactly when it has no operation, and
    /// `into_ops` gives its operations in order.
    #[test]
    fn plans_know_their_operations() {
        assert!(Plan::default().is_empty());
        let mut b = PlanBuilder::new();
        b.invalidate(Phase::Critical, 0, Span::trusted(0x1000, 0x1000));
        b.update(
            Phase::Prepare,
            0,
            Span::trusted(0x2000, 0x1000),
            Hva(0x7000),
            Perm::Ro,
        );
        let plan = b.finish(&DeviceCaps {
            batching: false,
            ..DeviceCaps::default()
        });
        assert!(!plan.is_empty());
        let ops = plan.clone().into_ops();
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].phase, Phase::Prepare, "ordered by phase");
        assert_eq!(ops, plan.ops());
    }

    /// Rule: on a batching device each run of two or more ops of one phase
    /// and address space is wrapped in one batch; a single op never is.
    #[test]
    fn runs_are_batched_and_single_ops_are_not() {
        let mut b = PlanBuilder::new();
        for i in 0..3u64 {
            b.update(
                Phase::Prepare,
                0,
                Span::trusted(0x1000 * (i + 1), 0x1000),
                Hva(0x7000),
                Perm::Rw,
            );
        }
        b.invalidate(Phase::Critical, 0, Span::trusted(0x9000, 0x1000));
        let kinds: Vec<&str> = b
            .finish(&DeviceCaps::default())
            .ops()
            .iter()
            .map(|o| o.kind.as_str())
            .collect();
        assert_eq!(
            kinds,
            [
                "batch_begin",
                "update",
                "update",
                "update",
                "batch_end",
                "invalidate"
            ]
        );
    }
}
