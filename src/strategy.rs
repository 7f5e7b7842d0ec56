//! What every planning strategy shares: the events a VMM feeds in, the
//! modes a device goes through, and what a strategy reports about where
//! guest memory and vrings are mapped.

use core::fmt;
use std::collections::BTreeMap;

use smallvec::SmallVec;

use crate::addr::{Address, Gpa, Hva, Iova, Span};
use crate::caps::DeviceCaps;
use crate::error::PlanError;
use crate::kernel::Entry;
use crate::plan::{Perm, Plan};
use crate::svq::{SvqConfig, VringArea};

/// Where the device is in its migration life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Mode {
    /// The device runs on the guest's own virtqueues, addresses are GPAs.
    Passthrough,
    /// Still passthrough, with the shadow vrings already mapped.
    Prepared,
    /// The device runs on the shadow virtqueues.
    Svq,
    /// Migration completed: this device is done and holds no mapping.
    Completed,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Passthrough => "passthrough",
            Mode::Prepared => "prepared",
            Mode::Svq => "svq",
            Mode::Completed => "completed",
        })
    }
}

/// A guest memory region as the VMM declares it: `size` bytes of guest
/// memory at `gpa`, backed by the VMM's memory at `hva`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RegionSpec {
    /// First guest-physical address.
    pub gpa: Gpa,
    /// Size in bytes (a non-zero multiple of the page size).
    pub size: u64,
    /// Host virtual address of the first byte.
    pub hva: Hva,
    /// ROM-like memory: the device may only read it.
    pub readonly: bool,
}

impl RegionSpec {
    /// The device access this region gets.
    pub fn perm(&self) -> Perm {
        if self.readonly {
            Perm::Ro
        } else {
            Perm::Rw
        }
    }
}

/// An event a VMM feeds to a strategy.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Event {
    /// Regions present at boot (all or nothing).
    Boot(Vec<RegionSpec>),
    /// One region hot-plugged.
    Hotplug(RegionSpec),
    /// The region starting at this GPA unplugged.
    Unplug(Gpa),
    /// Map the shadow vrings while the device still runs.
    SvqPrepare(SvqConfig),
    /// Switch the device to the shadow virtqueues (config needed only when not prepared).
    SvqSwitch(Option<SvqConfig>),
    /// Migration failed: back to passthrough.
    Failback,
    /// Migration completed: unmap everything.
    Complete,
    /// The device was reset (status 0): restore what it forgot.
    Reset,
    /// The guest's vIOMMU mapped `size` bytes of guest memory at `gpa` to
    /// guest IOVA `giova`, with `perm` for the device.
    ViommuMap {
        /// Guest IOVA.
        giova: Iova,
        /// Bytes.
        size: u64,
        /// Guest-physical address mapped.
        gpa: Gpa,
        /// Device access the guest grants.
        perm: Perm,
    },
    /// The guest's vIOMMU unmapped `[giova, giova + size)`: every live guest
    /// map in it goes; parts of maps outside it stay.
    ViommuUnmap {
        /// Guest IOVA.
        giova: Iova,
        /// Bytes.
        size: u64,
    },
}

impl Event {
    /// Short name, as in the scenario format.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Boot(_) => "boot",
            Event::Hotplug(_) => "hotplug",
            Event::Unplug(_) => "unplug",
            Event::SvqPrepare(_) => "svq_prepare",
            Event::SvqSwitch(_) => "svq_switch",
            Event::Failback => "failback",
            Event::Complete => "complete",
            Event::Reset => "reset",
            Event::ViommuMap { .. } => "viommu_map",
            Event::ViommuUnmap { .. } => "viommu_unmap",
        }
    }
}

/// One range of the device's untranslated address space a strategy must
/// keep reachable: a guest region (its GPAs), or with a guest vIOMMU one
/// guest map (its guest IOVAs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GuestUnit {
    /// The addresses the guest hands the device.
    pub addr: Span<Gpa>,
    /// Host address of the first byte.
    pub hva: Hva,
    /// Device access.
    pub perm: Perm,
}

/// What the device must be able to reach, tracked from accepted events
/// alone with plain vectors, independently of any strategy's data
/// structures: what [`crate::layout::check`] compares a strategy with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestView {
    viommu: bool,
    memory: Vec<RegionSpec>,
    maps: Vec<GuestUnit>,
}

impl GuestView {
    /// An empty view; `viommu` when the guest has a vIOMMU.
    pub fn new(viommu: bool) -> Self {
        GuestView {
            viommu,
            ..GuestView::default()
        }
    }

    /// Whether the guest has a vIOMMU.
    pub fn viommu(&self) -> bool {
        self.viommu
    }

    /// Guest memory regions.
    pub fn memory(&self) -> &[RegionSpec] {
        &self.memory
    }

    /// Updates the view for an event the strategy **accepted**.
    pub fn track(&mut self, ev: &Event) {
        match ev {
            Event::Boot(r) => self.memory.extend(r),
            Event::Hotplug(r) => self.memory.push(*r),
            Event::Unplug(g) => self.memory.retain(|r| r.gpa != *g),
            Event::ViommuMap {
                giova,
                size,
                gpa,
                perm,
            } => {
                let r = self
                    .memory
                    .iter()
                    .find(|r| r.gpa.raw() <= gpa.raw() && gpa.raw() - r.gpa.raw() < r.size)
                    .expect("an accepted guest map lies in guest memory");
                self.maps.push(GuestUnit {
                    addr: Span::trusted(giova.raw(), *size),
                    hva: Hva(r.hva.raw() + (gpa.raw() - r.gpa.raw())),
                    perm: *perm,
                });
            }
            Event::ViommuUnmap { giova, size } => {
                let (f, l) = (giova.raw(), giova.raw() + (size - 1));
                let mut out = Vec::with_capacity(self.maps.len() + 1);
                for m in self.maps.drain(..) {
                    let (mf, ml) = m.addr.bounds();
                    if ml < f || mf > l {
                        out.push(m);
                        continue;
                    }
                    if mf < f {
                        out.push(GuestUnit {
                            addr: Span::trusted(mf, f - mf),
                            ..m
                        });
                    }
                    if ml > l {
                        out.push(GuestUnit {
                            addr: Span::trusted(l + 1, ml - l),
                            hva: Hva(m.hva.raw() + (l + 1 - mf)),
                            perm: m.perm,
                        });
                    }
                }
                self.maps = out;
            }
            _ => {}
        }
    }

    /// What must be reachable, sorted: the regions, or the guest maps.
    pub fn units(&self) -> Vec<GuestUnit> {
        let mut v: Vec<GuestUnit> = if self.viommu {
            self.maps.clone()
        } else {
            self.memory
                .iter()
                .map(|r| GuestUnit {
                    addr: Span::trusted(r.gpa.raw(), r.size),
                    hva: r.hva,
                    perm: r.perm(),
                })
                .collect()
        };
        v.sort_unstable();
        v
    }
}

/// A part of a region mapped by one IOTLB entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Piece {
    /// The guest memory it maps.
    pub gpa: Span<Gpa>,
    /// Where the device sees it.
    pub iova: Span<Iova>,
}

impl Piece {
    /// Whether the device sees this memory at its guest-physical address.
    pub fn is_identity(&self) -> bool {
        self.gpa.first().raw() == self.iova.first().raw()
    }
}

/// Where one region is mapped now. With a guest vIOMMU there is one
/// placement per guest map, and `gpa` holds its guest IOVAs: the addresses
/// the guest's descriptors carry.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Placement {
    /// The region's guest memory.
    pub gpa: Span<Gpa>,
    /// Its host memory.
    pub hva: Hva,
    /// Device access.
    pub perm: Perm,
    /// Its mapped pieces, by GPA; bytes of the region in no piece are
    /// unreachable by the device now.
    pub pieces: SmallVec<[Piece; 2]>,
}

impl Placement {
    /// Host address of guest address `gpa` (which must lie in the region).
    pub fn hva_of(&self, gpa: Gpa) -> Hva {
        Hva(self.hva.raw() + (gpa.raw() - self.gpa.first().raw()))
    }

    /// The parts of the region that no piece maps.
    pub fn unreachable(&self) -> SmallVec<[Span<Gpa>; 2]> {
        let mut out = SmallVec::new();
        // `None` once a piece reaches 2^64 - 1: nothing can follow it.
        let mut next = Some(self.gpa.first().raw());
        for p in &self.pieces {
            let (f, l) = p.gpa.bounds();
            if let Some(n) = next.filter(|&n| f > n) {
                out.push(Span::trusted(n, f - n));
            }
            next = l.checked_add(1);
        }
        let end = self.gpa.last().raw();
        if let Some(n) = next.filter(|&n| n <= end) {
            out.push(Span::trusted(n, end - n + 1));
        }
        out
    }
}

/// A guest address range translated to device addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Device address of the first byte.
    pub iova: Iova,
    /// Bytes.
    pub len: u64,
    /// Device access.
    pub perm: Perm,
}

/// Segments returned by `translate`: almost always one.
pub type Segments = SmallVec<[Segment; 2]>;

/// A planning strategy: a state machine fed by VMM events, returning plans.
///
/// Every event either returns a plan and commits the new state, or returns
/// an error and leaves the state exactly as it was.
pub trait Strategy {
    /// Short name ("identity", "qemu").
    fn name(&self) -> &'static str;
    /// The device's capabilities.
    fn caps(&self) -> &DeviceCaps;
    /// Current mode.
    fn mode(&self) -> Mode;
    /// Maps regions present at boot, or hot-plugged together.
    ///
    /// # Errors
    /// Bad or overlapping regions, or an event out of order.
    fn add_regions(&mut self, regions: &[RegionSpec]) -> Result<Plan, PlanError>;
    /// Unmaps the region starting at `gpa`.
    ///
    /// # Errors
    /// [`PlanError::UnknownRegion`], or an event out of order.
    fn remove_region(&mut self, gpa: Gpa) -> Result<Plan, PlanError>;
    /// Maps the shadow vrings while the device runs.
    ///
    /// # Errors
    /// Bad config, no IOVA space, or an event out of order.
    fn svq_prepare(&mut self, cfg: SvqConfig) -> Result<Plan, PlanError>;
    /// Switches to the shadow virtqueues.
    ///
    /// # Errors
    /// As `svq_prepare`; [`PlanError::MissingSvqConfig`] when not prepared and `cfg` is `None`.
    fn svq_switch(&mut self, cfg: Option<SvqConfig>) -> Result<Plan, PlanError>;
    /// Back to passthrough after a failed migration.
    ///
    /// # Errors
    /// An event out of order.
    fn failback(&mut self) -> Result<Plan, PlanError>;
    /// Migration done: unmap everything.
    ///
    /// # Errors
    /// An event out of order.
    fn complete(&mut self) -> Result<Plan, PlanError>;
    /// Where each region is mapped now, by GPA.
    fn placements(&self) -> Vec<Placement>;
    /// The vring areas mapped now.
    fn vring_areas(&self) -> Vec<VringArea>;
    /// Device addresses of `len` bytes of guest memory at `gpa` (with a guest
    /// vIOMMU: at guest IOVA `gpa`, as the guest's descriptors carry them).
    ///
    /// # Errors
    /// [`PlanError::NotGuestMemory`] or [`PlanError::Unreachable`] for the
    /// first byte that cannot be translated; `ZeroSize`/`Wraps` for bad lengths.
    fn translate(&self, gpa: Gpa, len: u64) -> Result<Segments, PlanError>;

    /// The device was reset: restores what it forgot, at the cheapest
    /// correct cost for its [`crate::MapStyle`] and `persist`.
    ///
    /// # Errors
    /// An event out of order.
    fn reset(&mut self) -> Result<Plan, PlanError>;
    /// The guest's vIOMMU mapped guest memory at a guest IOVA.
    ///
    /// # Errors
    /// [`PlanError::NoViommu`], a bad or overlapping map, or no IOVA space.
    fn viommu_map(
        &mut self,
        giova: Iova,
        size: u64,
        gpa: Gpa,
        perm: Perm,
    ) -> Result<Plan, PlanError>;
    /// The guest's vIOMMU unmapped a guest IOVA range.
    ///
    /// # Errors
    /// [`PlanError::NoViommu`], a bad range, or [`PlanError::NotMapped`].
    fn viommu_unmap(&mut self, giova: Iova, size: u64) -> Result<Plan, PlanError>;
    /// Every IOTLB entry the strategy has mapped now, as `(asid, entry)`.
    fn mapped(&self) -> Vec<(u32, Entry)>;

    /// Feeds one event.
    ///
    /// # Errors
    /// As the event's method.
    fn apply(&mut self, ev: &Event) -> Result<Plan, PlanError> {
        match ev {
            Event::Boot(r) => self.add_regions(r),
            Event::Hotplug(r) => self.add_regions(core::slice::from_ref(r)),
            Event::Unplug(g) => self.remove_region(*g),
            Event::SvqPrepare(c) => self.svq_prepare(*c),
            Event::SvqSwitch(c) => self.svq_switch(*c),
            Event::Failback => self.failback(),
            Event::Complete => self.complete(),
            Event::Reset => self.reset(),
            Event::ViommuMap {
                giova,
                size,
                gpa,
                perm,
            } => self.viommu_map(*giova, *size, *gpa, *perm),
            Event::ViommuUnmap { giova, size } => self.viommu_unmap(*giova, *size),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_unreachable_of_unmapped_region_at_gpa_zero() {
        // A region at GPA 0 with no piece (after `complete`) was reported as
        // fully reachable: the end-of-walk check mistook 0 for a wrap.
        let p = Placement {
            gpa: Span::trusted(0, 0x2000),
            hva: Hva(0x1000),
            perm: Perm::Rw,
            pieces: SmallVec::new(),
        };
        assert_eq!(p.unreachable().as_slice(), &[Span::trusted(0, 0x2000)]);
        // A piece ending at 2^64 - 1 leaves nothing after it.
        let top = Span::<Gpa>::trusted(u64::MAX - 0x1fff, 0x2000);
        let p = Placement {
            gpa: top,
            hva: Hva(0x1000),
            perm: Perm::Rw,
            pieces: smallvec::smallvec![Piece {
                gpa: Span::trusted(u64::MAX - 0xfff, 0x1000),
                iova: Span::trusted(0x1000, 0x1000)
            }],
        };
        assert_eq!(
            p.unreachable().as_slice(),
            &[Span::trusted(u64::MAX - 0x1fff, 0x1000)]
        );
    }
}
