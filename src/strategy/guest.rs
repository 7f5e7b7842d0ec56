//! The guest as both strategies see it: the device's capabilities, the
//! mode, the guest's memory (regions, or with a vIOMMU its declared memory
//! and the guest's maps) and the translation table, with the guards every
//! event passes before a strategy decides anything.
//!
//! A strategy owns one [`Guest`] and keeps beside it only its own
//! decisions: where each unit is mapped and in which order messages go.

use std::collections::BTreeMap;

use smallvec::SmallVec;

use crate::addr::{overlapping, Address, Gpa, Hva, Iova, Span};
use crate::caps::DeviceCaps;
use crate::error::PlanError;
use crate::event::{HostBuffer, RegionSpec};
use crate::plan::Plan;
use crate::strategy::shared::{admit, in_mode, validate_regions, GuestMemory};
use crate::strategy::xlate::{translate_with, Table};
use crate::strategy::Segments;
use crate::vocab::{EventKind, Mode, Perm};

/// What a strategy maps for the guest: a region of guest memory, or with a
/// vIOMMU one of the guest's maps.
pub(crate) trait Unit {
    /// The guest addresses the unit covers (GPAs, or guest IOVAs).
    fn span(&self) -> Span<Gpa>;
    /// The host address of the unit's first byte.
    fn hva(&self) -> Hva;
}

/// Validated new regions, sorted by GPA.
pub(crate) type ValidRegions = Vec<(Span<Gpa>, RegionSpec)>;

/// The guest's side of a planner. See the [module documentation](self).
#[derive(Clone, Debug)]
pub(crate) struct Guest<U> {
    pub(crate) caps: DeviceCaps,
    pub(crate) mode: Mode,
    /// With a vIOMMU: the guest memory declared, which `units` maps only
    /// where the guest maps it.
    pub(crate) viommu: Option<GuestMemory>,
    /// What the guest's device addresses map, by first address.
    pub(crate) units: BTreeMap<u64, U>,
    /// Guest address -> IOVA, for `translate`.
    pub(crate) table: Table,
}

impl<U: Unit> Guest<U> {
    /// A guest with nothing declared, in passthrough; `viommu_last` is the
    /// highest guest IOVA of a vIOMMU guest.
    pub(crate) fn new(caps: DeviceCaps, viommu_last: Option<u64>) -> Self {
        Guest {
            caps,
            mode: Mode::Passthrough,
            viommu: viommu_last.map(GuestMemory::new),
            units: BTreeMap::new(),
            table: Table::default(),
        }
    }

    /// Refuses `event`, changing nothing, in a mode that does not admit it.
    pub(crate) fn admit(&self, event: EventKind) -> Result<(), PlanError> {
        admit(self.mode, event)
    }

    /// `plan` as sent in the present mode (see [`in_mode`]).
    pub(crate) fn in_mode(&self, plan: Plan) -> Plan {
        in_mode(self.mode, plan)
    }

    /// The unit holding guest address `g`, if any.
    pub(crate) fn unit_at(&self, g: u64) -> Option<&U> {
        let (_, u) = self.units.range(..=g).next_back()?;
        u.span().contains(Gpa(g)).then_some(u)
    }

    /// The guard of `add_regions`: refused where the mode does not admit a
    /// hotplug; with a vIOMMU the regions are only declared (`Ok(None)`);
    /// otherwise validated against each other and the present units, sorted.
    pub(crate) fn declare(
        &mut self,
        specs: &[RegionSpec],
    ) -> Result<Option<ValidRegions>, PlanError> {
        self.admit(EventKind::Hotplug)?;
        if let Some(v) = &mut self.viommu {
            // Guest memory is only declared: the guest maps it through its vIOMMU.
            v.add(&self.caps, specs)?;
            return Ok(None);
        }
        let units = &self.units;
        validate_regions(&self.caps, specs, |f, l| {
            let (_, u) = units.range(..=l).next_back()?;
            let s = u.span();
            (s.last().raw() >= f).then(|| s.bounds())
        })
        .map(Some)
    }

    /// The guard of `remove_region`: refused where the mode does not admit
    /// an unplug; with a vIOMMU the region is removed from the declared
    /// memory unless a guest map still uses it (`true`: done, nothing to
    /// unmap).
    pub(crate) fn undeclare(&mut self, gpa: Gpa) -> Result<bool, PlanError> {
        self.admit(EventKind::Unplug)?;
        let Some(v) = &mut self.viommu else {
            return Ok(false);
        };
        v.remove(
            gpa,
            self.units
                .values()
                .map(|u| (u.span().first().raw(), u.hva(), u.span().size())),
        )?;
        Ok(true)
    }

    /// The guard of `viommu_map`: a vIOMMU guest, a mode that admits it, a
    /// map of memory inside one region with an allowed perm, overlapping no
    /// live map. Gives the guest IOVA span and the host address of its
    /// first byte.
    pub(crate) fn guest_map(
        &self,
        giova: Iova,
        size: u64,
        gpa: Gpa,
        perm: Perm,
    ) -> Result<(Span<Gpa>, Hva), PlanError> {
        let Some(v) = &self.viommu else {
            return Err(PlanError::NoViommu {
                event: "viommu_map",
            });
        };
        self.admit(EventKind::ViommuMap)?;
        let (gi, hva) = v.resolve(&self.caps, giova, size, gpa, perm)?;
        let (f, l) = gi.bounds();
        if let Some((_, u)) = overlapping(&self.units, |_, u| u.span().last().raw(), f, l).next() {
            return Err(PlanError::GuestMapOverlap {
                new: (f, l),
                existing: u.span().bounds(),
            });
        }
        Ok((gi, hva))
    }

    /// The guard of `viommu_unmap`: a vIOMMU guest, a mode that admits it,
    /// a valid range that hits at least one live map. Gives the range and
    /// the keys of the maps it hits.
    pub(crate) fn guest_unmap(
        &self,
        giova: Iova,
        size: u64,
    ) -> Result<(Span<Iova>, SmallVec<[u64; 2]>), PlanError> {
        if self.viommu.is_none() {
            return Err(PlanError::NoViommu {
                event: "viommu_unmap",
            });
        }
        self.admit(EventKind::ViommuUnmap)?;
        let span = Span::new(giova, size, self.caps.page_size)?;
        let (f, l) = span.bounds();
        let hit: SmallVec<[u64; 2]> = overlapping(&self.units, |_, u| u.span().last().raw(), f, l)
            .map(|(k, _)| k)
            .collect();
        if hit.is_empty() {
            return Err(PlanError::NotMapped { first: f, last: l });
        }
        Ok((span, hit))
    }

    /// The guard of `host_buffers`: whole pages, in a mode that admits them
    /// (no shadow vring mapped yet).
    pub(crate) fn check_buffers(&self, bufs: &[HostBuffer]) -> Result<(), PlanError> {
        self.admit(EventKind::HostBuffers)?;
        for b in bufs {
            Span::new(b.hva, b.size, self.caps.page_size)?;
        }
        Ok(())
    }

    /// The guard of `incoming`: nothing declared or mapped before.
    pub(crate) fn check_fresh(&self) -> Result<(), PlanError> {
        self.admit(EventKind::Incoming)?;
        if !self.units.is_empty() || self.viommu.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(PlanError::OutOfOrder {
                event: EventKind::Incoming.name(),
                mode: self.mode,
            });
        }
        Ok(())
    }

    /// The IOVA segments `[gpa, gpa + len)` is reachable at, through the
    /// published table.
    pub(crate) fn translate(&self, gpa: Gpa, len: u64) -> Result<Segments, PlanError> {
        translate_with(
            |a| self.table.lookup(a),
            gpa,
            len,
            |g| self.unit_at(g).is_some(),
        )
    }
}
