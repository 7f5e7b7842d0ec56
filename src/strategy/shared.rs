//! What both strategies share beside their [`Guest`](super::guest::Guest):
//! vIOMMU guest memory, region validation, the mode's rules and the
//! cheapest correct restore after a device reset.

use std::collections::BTreeMap;

use crate::addr::{Address, Gpa, Hva, Iova, Span};
use crate::alloc::{fit, gaps, Fit};
use crate::caps::{DeviceCaps, MapStyle};
use crate::entry::Entry;
use crate::error::PlanError;
use crate::event::RegionSpec;
use crate::plan::{plan_from_ops, Op, OpKind, Plan, PlanBuilder};
use crate::vocab::{EventKind, Mode, Perm, Phase};

/// Guest memory of a vIOMMU guest: declared, not mapped until the guest maps it.
#[derive(Clone, Debug)]
pub(crate) struct GuestMemory {
    /// The highest guest IOVA the guest can use.
    pub(crate) last: u64,
    /// Regions by first GPA.
    map: BTreeMap<u64, (Span<Gpa>, Hva, Perm)>,
}

impl GuestMemory {
    pub(crate) fn new(last: u64) -> Self {
        GuestMemory {
            last,
            map: BTreeMap::new(),
        }
    }

    /// Whether no region was declared.
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Validates and adds regions (all or nothing).
    pub(crate) fn add(&mut self, caps: &DeviceCaps, specs: &[RegionSpec]) -> Result<(), PlanError> {
        let specs = validate_regions(caps, specs, |f, l| {
            let (_, (g, _, _)) = self.map.range(..=l).next_back()?;
            (g.last().raw() >= f).then(|| g.bounds())
        })?;
        for (g, spec) in specs {
            self.map.insert(g.first().raw(), (g, spec.hva, spec.perm()));
        }
        Ok(())
    }

    /// Removes the region at `gpa` unless a guest map (`units`: guest
    /// address and host range) still uses its host memory.
    pub(crate) fn remove(
        &mut self,
        gpa: Gpa,
        mut units: impl Iterator<Item = (u64, Hva, u64)>,
    ) -> Result<(), PlanError> {
        let &(g, hva, _) = self
            .map
            .get(&gpa.raw())
            .ok_or(PlanError::UnknownRegion { gpa: gpa.raw() })?;
        let (hf, hl) = (hva.raw(), hva.raw() + (g.size() - 1));
        if let Some((giova, _, _)) =
            units.find(|&(_, h, size)| h.raw() <= hl && h.raw() + (size - 1) >= hf)
        {
            return Err(PlanError::RegionInUse {
                gpa: gpa.raw(),
                giova,
            });
        }
        self.map.remove(&gpa.raw());
        Ok(())
    }

    /// Checks a guest map and resolves it to (guest IOVA span, host address),
    /// leaving overlap with live maps to the caller.
    pub(crate) fn resolve(
        &self,
        caps: &DeviceCaps,
        giova: Iova,
        size: u64,
        gpa: Gpa,
        perm: Perm,
    ) -> Result<(Span<Gpa>, Hva), PlanError> {
        let gi = Span::new(giova, size, caps.page_size)?;
        let m = Span::new(gpa, size, caps.page_size)?;
        let bad = |reason| PlanError::BadGuestMap {
            giova: giova.raw(),
            gpa: gpa.raw(),
            size,
            reason,
        };
        if gi.last().raw() > self.last {
            return Err(bad("beyond the guest's highest IOVA (viommu_last)"));
        }
        let (rg, rhva, rperm) = match self.map.range(..=gpa.raw()).next_back() {
            Some((_, &(g, h, p))) if g.last() >= m.last() => (g, h, p),
            _ => return Err(bad("not inside one guest memory region")),
        };
        if rperm == Perm::Ro && perm != Perm::Ro {
            return Err(bad("device write access to read-only memory"));
        }
        Ok((
            Span::trusted(giova.raw(), size),
            Hva(rhva.raw() + (gpa.raw() - rg.first().raw())),
        ))
    }
}

/// Validates new regions against each other and against `existing`
/// (an overlap lookup: the present region overlapping `[first, last]`).
pub(crate) fn validate_regions(
    caps: &DeviceCaps,
    regions: &[RegionSpec],
    existing: impl Fn(u64, u64) -> Option<(u64, u64)>,
) -> Result<Vec<(Span<Gpa>, RegionSpec)>, PlanError> {
    let mut out: Vec<(Span<Gpa>, RegionSpec)> = Vec::with_capacity(regions.len());
    for r in regions {
        let g = Span::new(r.gpa, r.size, caps.page_size)?;
        Span::new(r.hva, r.size, caps.page_size)?;
        if let Some(e) = existing(g.first().raw(), g.last().raw()) {
            return Err(PlanError::RegionOverlap {
                new: g.bounds(),
                existing: e,
            });
        }
        out.push((g, *r));
    }
    out.sort_by_key(|(g, _)| g.first());
    for w in out.windows(2) {
        if w[0].0.overlaps(&w[1].0) {
            return Err(PlanError::RegionOverlap {
                new: w[1].0.bounds(),
                existing: w[0].0.bounds(),
            });
        }
    }
    Ok(out)
}

/// The cheapest correct plan restoring a device after a reset, given every
/// entry mapped (`(asid, entry)`), for the device's map style (see
/// [`crate::kernel`]): nothing when maps persist or live in the platform
/// IOMMU; on a `set_map` device an empty batch per address space (a table
/// push, nothing pinned again) or, without batching, a one-page map of
/// memory already mapped at a free IOVA and its unmap (each unbatched
/// message pushes the whole table; only when no page is free, or the
/// address space already holds the device's `max_entries`, the smallest
/// entry unmapped and mapped again: the table never holds more entries than
/// before); on a
/// `dma_map` device every entry unmapped and mapped again. The ops run in
/// `phase`: critical for a running device, prepare on a destination waiting
/// for the stream (no guest runs, no downtime has begun).
pub(crate) fn reset_plan(
    caps: &DeviceCaps,
    max_entries: Option<u64>,
    mapped: &[(u32, Entry)],
    phase: Phase,
) -> Plan {
    if caps.persist || caps.map_style == MapStyle::Platform {
        return Plan::default();
    }
    let mut b = PlanBuilder::new();
    match caps.map_style {
        MapStyle::SetMap => {
            let mut smallest: std::collections::BTreeMap<u32, Entry> = Default::default();
            for &(asid, e) in mapped {
                let s = smallest.entry(asid).or_insert(e);
                if e.iova.size() < s.iova.size() {
                    *s = e;
                }
            }
            if caps.batching {
                let mut ops = Vec::with_capacity(2 * smallest.len());
                for &asid in smallest.keys() {
                    for kind in [OpKind::BatchBegin, OpKind::BatchEnd] {
                        ops.push(Op { phase, asid, kind });
                    }
                }
                return plan_from_ops(ops, caps);
            }
            for (&asid, e) in &smallest {
                let mut taken: Vec<Span<Iova>> = mapped
                    .iter()
                    .filter(|(a, _)| *a == asid)
                    .map(|(_, e)| e.iova)
                    .collect();
                taken.sort_unstable();
                // A one-page map beside the others needs one entry more
                // than the table holds: not where the table is full.
                let full = max_entries.is_some_and(|n| taken.len() as u64 >= n);
                match free_page(caps, &taken).filter(|_| !full) {
                    // A one-page read-only map of memory already pinned,
                    // and its unmap: two table pushes, one page pinned.
                    Some(page) => {
                        b.update(phase, asid, page, e.hva, Perm::Ro);
                        b.invalidate(phase, asid, page);
                    }
                    // The whole range is mapped, or the table is full:
                    // re-map the smallest entry.
                    None => {
                        b.invalidate(phase, asid, e.iova);
                        b.update(phase, asid, e.iova, e.hva, e.perm);
                    }
                }
            }
        }
        MapStyle::DmaMap => {
            let mut by_asid = mapped.to_vec();
            by_asid.sort_by_key(|(a, e)| (*a, e.iova.first()));
            for (asid, e) in by_asid {
                b.invalidate(phase, asid, e.iova);
                b.update(phase, asid, e.iova, e.hva, e.perm);
            }
        }
        MapStyle::Platform => {}
    }
    b.finish(caps)
}

/// The first free page of the device range (never IOVA 0) given the sorted
/// entries of one address space.
fn free_page(caps: &DeviceCaps, taken: &[Span<Iova>]) -> Option<Span<Iova>> {
    let p = caps.page_size;
    let lo = p.align_up(caps.range.first().max(p.get()))?;
    let free = gaps(taken.iter().map(Span::bounds), lo, caps.range.last());
    fit(free, p.get(), Fit::First).map(|f| Span::trusted(f, p.get()))
}

/// The phase of what a reset's plan sends: prepare on a destination still
/// waiting for the stream, critical everywhere else (a destination after
/// the source stopped included: the guest is paused).
pub(crate) fn reset_phase(mode: Mode) -> Phase {
    match mode {
        Mode::Incoming => Phase::Prepare,
        _ => Phase::Critical,
    }
}

/// `plan` as sent in `mode`: on a destination after the source stopped
/// ([`Mode::Switchover`]) the guest is paused, so every operation is inside
/// the downtime, whatever phase the event would give it on a running guest.
pub(crate) fn in_mode(mode: Mode, plan: Plan) -> Plan {
    match mode {
        Mode::Switchover => plan.in_downtime(),
        _ => plan,
    }
}

/// The guard of every event: refused, without a change, in a mode that
/// does not admit it ([`Mode::admits`]).
pub(crate) fn admit(mode: Mode, event: EventKind) -> Result<(), PlanError> {
    if mode.admits(event) {
        Ok(())
    } else {
        Err(PlanError::OutOfOrder {
            event: event.name(),
            mode,
        })
    }
}
