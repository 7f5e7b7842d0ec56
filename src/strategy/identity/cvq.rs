//! An isolated control virtqueue ([`DeviceCaps::cvq_isolated`]): its host
//! buffers (command and status buffers, and its shadow vring declared as
//! buffers) live in address space 1, where guest memory never is. They are
//! mapped once, when declared, while the device runs, and stay mapped
//! through every switch, failback, hot-plug and reset restore: nothing ever
//! collides with them, so nothing ever moves them. Only a completed
//! migration unmaps them, after the stop-and-copy.

use super::*;
use crate::addr::PageSize;
use crate::vocab::CVQ_ASID;

#[derive(Clone, Debug)]
pub(super) struct CvqSpace {
    /// Address space 1's free IOVAs (the whole device range at first).
    alloc: IovaAllocator,
    /// Each declared buffer and where it is mapped, in declaration order.
    mapped: Vec<(HostBuffer, Span<Iova>)>,
}

impl CvqSpace {
    /// Address space 1 over the usable device range `[first, last]`.
    pub(super) fn new(first: u64, last: u64, page: PageSize) -> Option<Self> {
        Some(CvqSpace {
            alloc: IovaAllocator::new(first, last, page)?,
            mapped: Vec::new(),
        })
    }

    /// Maps `bufs` (already validated) in address space 1, one UPDATE each,
    /// in the prepare phase. All or nothing: out of IOVA leaves `self` as it was.
    pub(super) fn declare(
        &mut self,
        bufs: &[HostBuffer],
        caps: &DeviceCaps,
    ) -> Result<Plan, PlanError> {
        let mut next = self.clone();
        let mut b = PlanBuilder::new();
        for buf in bufs {
            let iova = next
                .alloc
                .alloc(buf.size)
                .ok_or_else(|| PlanError::OutOfIova {
                    needed: buf.size,
                    purpose: "the isolated control virtqueue's host buffers",
                    window: None,
                    largest_free: next.alloc.largest_free(),
                    considered: next
                        .alloc
                        .free_ranges()
                        .map(|s| (s.first().raw(), s.last().raw()))
                        .collect(),
                })?;
            b.update(Phase::Prepare, CVQ_ASID, iova, buf.hva, buf.perm);
            next.mapped.push((*buf, iova));
        }
        *self = next;
        Ok(b.finish(caps))
    }

    /// The buffers' entries, as `(asid, entry)`.
    pub(super) fn entries(&self) -> impl Iterator<Item = (u32, Entry)> + '_ {
        self.mapped.iter().map(|(buf, iova)| {
            (
                CVQ_ASID,
                Entry {
                    iova: *iova,
                    hva: buf.hva,
                    perm: buf.perm,
                },
            )
        })
    }

    /// Keeps another allocator of address space 1 off the buffers.
    pub(super) fn carve_from(&self, a: &mut IovaAllocator) {
        for (_, iova) in &self.mapped {
            a.carve(iova.first().raw(), iova.last().raw());
        }
    }

    /// Unmaps every buffer in `phase` and forgets them.
    pub(super) fn teardown(&mut self, b: &mut PlanBuilder, phase: Phase) {
        for (_, iova) in self.mapped.drain(..) {
            b.invalidate(phase, CVQ_ASID, iova);
            self.alloc.free(iova);
        }
    }
}
