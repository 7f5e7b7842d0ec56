//! What both strategies share: input guards, vIOMMU guest memory, and the
//! cheapest correct restore after a device reset.

use std::collections::BTreeMap;

use smallvec::SmallVec;

use crate::addr::{Address, Gpa, Hva, Iova, Span};
use crate::caps::{DeviceCaps, MapStyle};
use crate::entry::Entry;
use crate::error::PlanError;
use crate::event::RegionSpec;
use crate::plan::{plan_from_ops, Op, OpKind, Plan, PlanBuilder};
use crate::vocab::{EventKind, Mode, Perm, Phase};

/// Keys of the entries of `map` (keyed by first address, `last` giving each
/// one's last address) that overlap `[f, l]`, in order.
pub(crate) fn overlapping_keys<V>(
    map: &BTreeMap<u64, V>,
    last: impl Fn(&V) -> u64,
    f: u64,
    l: u64,
) -> SmallVec<[u64; 2]> {
    let mut hit = SmallVec::new();
    if let Some((&k, v)) = map.range(..f).next_back() {
        if last(v) >= f {
            hit.push(k);
        }
    }
    hit.extend(map.range(f..=l).map(|(&k, _)| k));
    hit
}

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
    let mut cand = p.align_up(caps.range.first().max(p.get()))?;
    for t in taken {
        let (f, l) = (t.first().0, t.last().0);
        // Entries and `cand` are page aligned: a gap is a page at least.
        if f > cand {
            break;
        }
        if l >= cand {
            cand = l.checked_add(1)?;
        }
    }
    let last = cand.checked_add(p.get() - 1)?;
    (last <= caps.range.last()).then(|| Span::trusted(cand, p.get()))
}

/// Guest units (regions, or guest maps) by first address: what the guards
/// below look through. Both strategies keep one.
pub(crate) trait UnitSpan {
    /// The guest addresses the unit covers.
    fn span(&self) -> Span<Gpa>;
}

/// The guard of `host_buffers`: whole pages, declared while no shadow vring
/// is mapped (passthrough, or a destination waiting for the stream).
pub(crate) fn valid_buffers(
    caps: &DeviceCaps,
    mode: Mode,
    bufs: &[crate::event::HostBuffer],
) -> Result<(), PlanError> {
    admit(mode, EventKind::HostBuffers)?;
    for b in bufs {
        Span::new(b.hva, b.size, caps.page_size)?;
    }
    Ok(())
}

/// The guard of `incoming`: nothing declared or mapped before.
pub(crate) fn fresh<U>(
    mode: Mode,
    viommu: Option<&GuestMemory>,
    units: &BTreeMap<u64, U>,
) -> Result<(), PlanError> {
    admit(mode, EventKind::Incoming)?;
    if !units.is_empty() || viommu.is_some_and(|v| !v.is_empty()) {
        return Err(PlanError::OutOfOrder {
            event: EventKind::Incoming.name(),
            mode,
        });
    }
    Ok(())
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

/// Validated new regions, sorted by GPA.
pub(crate) type ValidRegions = Vec<(Span<Gpa>, RegionSpec)>;

/// The guard of `add_regions`: refused after completion; with a vIOMMU the
/// regions are only declared (`Ok(None)`); otherwise validated against each
/// other and the present units, sorted.
pub(crate) fn new_regions<U: UnitSpan>(
    caps: &DeviceCaps,
    mode: Mode,
    viommu: Option<&mut GuestMemory>,
    units: &BTreeMap<u64, U>,
    specs: &[RegionSpec],
) -> Result<Option<ValidRegions>, PlanError> {
    admit(mode, EventKind::Hotplug)?;
    if let Some(v) = viommu {
        // Guest memory is only declared: the guest maps it through its vIOMMU.
        v.add(caps, specs)?;
        return Ok(None);
    }
    validate_regions(caps, specs, |f, l| {
        let (_, u) = units.range(..=l).next_back()?;
        let s = u.span();
        (s.last().raw() >= f).then(|| s.bounds())
    })
    .map(Some)
}

/// The guard of `remove_region`: refused after completion; with a vIOMMU
/// the region is removed from the declared memory unless a guest map still
/// uses it (`true`: done, nothing to unmap).
pub(crate) fn removed_region<U: UnitSpan>(
    mode: Mode,
    viommu: Option<&mut GuestMemory>,
    units: &BTreeMap<u64, U>,
    hva_of: impl Fn(&U) -> Hva,
    gpa: Gpa,
) -> Result<bool, PlanError> {
    admit(mode, EventKind::Unplug)?;
    let Some(v) = viommu else {
        return Ok(false);
    };
    v.remove(
        gpa,
        units
            .values()
            .map(|u| (u.span().first().raw(), hva_of(u), u.span().size())),
    )?;
    Ok(true)
}

/// The guard of `viommu_map`: a vIOMMU guest, not completed, a map of
/// memory inside one region with an allowed perm, overlapping no live map.
/// Gives the guest IOVA span and the host address of its first byte.
#[allow(clippy::too_many_arguments)]
pub(crate) fn guest_map<U: UnitSpan>(
    caps: &DeviceCaps,
    mode: Mode,
    viommu: Option<&GuestMemory>,
    units: &BTreeMap<u64, U>,
    giova: Iova,
    size: u64,
    gpa: Gpa,
    perm: Perm,
) -> Result<(Span<Gpa>, Hva), PlanError> {
    let Some(v) = viommu else {
        return Err(PlanError::NoViommu {
            event: "viommu_map",
        });
    };
    admit(mode, EventKind::ViommuMap)?;
    let (gi, hva) = v.resolve(caps, giova, size, gpa, perm)?;
    let (f, l) = gi.bounds();
    if let Some(k) = overlapping_keys(units, |u| u.span().last().raw(), f, l).first() {
        return Err(PlanError::GuestMapOverlap {
            new: (f, l),
            existing: units[k].span().bounds(),
        });
    }
    Ok((gi, hva))
}

/// The guard of `viommu_unmap`: a vIOMMU guest, not completed, a valid
/// range that hits at least one live map. Gives the range and the keys of
/// the maps it hits.
pub(crate) fn guest_unmap<U: UnitSpan>(
    caps: &DeviceCaps,
    mode: Mode,
    viommu: bool,
    units: &BTreeMap<u64, U>,
    giova: Iova,
    size: u64,
) -> Result<(Span<Iova>, SmallVec<[u64; 2]>), PlanError> {
    if !viommu {
        return Err(PlanError::NoViommu {
            event: "viommu_unmap",
        });
    }
    admit(mode, EventKind::ViommuUnmap)?;
    let span = Span::new(giova, size, caps.page_size)?;
    let (f, l) = span.bounds();
    let hit = overlapping_keys(units, |u| u.span().last().raw(), f, l);
    if hit.is_empty() {
        return Err(PlanError::NotMapped { first: f, last: l });
    }
    Ok((span, hit))
}
