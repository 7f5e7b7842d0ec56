//! The identity planner: guest memory stays mapped at IOVA == GPA for the
//! VM's whole life, and the shadow vrings live in a reserved IOVA window.
//!
//! # The window
//! At `svq_prepare` (or an unprepared `svq_switch`) the planner picks the
//! IOVA window the vrings (and any displaced memory) are allocated from:
//!
//! 1. **Above `max_gpa`** when the device range reaches past it: the
//!    addresses above the highest GPA memory can ever occupy can never be
//!    claimed by guest memory, so nothing there ever collides.
//! 2. Otherwise **every free hole** of the device range (the range minus guest
//!    memory and page 0), allocated best fit: the vrings go to the smallest hole
//!    that holds them. Small holes between regions are where the machine keeps
//!    firmware and MMIO (the PCI hole below 4 GiB, gaps between DIMM slots),
//!    which RAM is not plugged into; the large open space at the top of RAM is
//!    where hot-plugged DIMMs land, so it is used last. A collision remains
//!    possible and is handled as below.
//!
//! # Collisions
//! * **Prepared, not switched**: the guest still uses GPAs, so hot-plugged
//!   memory must be identity. Vrings (small, not in use yet) and displaced
//!   memory in the way are moved, never the guest memory.
//! * **In SVQ mode**: hot-plugged memory whose identity range is taken by a
//!   vring or displaced memory, and memory outside the device range, is
//!   **displaced**: mapped at a free IOVA of the window; `translate` follows
//!   it. Moving the vrings instead would need the device stopped again.
//!   Memory whose identity range is free is mapped identity even inside the
//!   window, which makes its failback free.
//! * **Where displaced memory goes**: the window first; when it is full, the
//!   free holes of the device range below it, best fit; then the free bytes
//!   of other displaced memory's identity ranges (otherwise kept free so its
//!   failback moves nothing); then best fit over the union of those free
//!   ranges. When this greedy order cannot place every piece a new region
//!   needs, an exhaustive search over all free ranges does:
//!   [`PlanError::OutOfIova`] means no placement exists.
//! * **Failback** moves displaced memory back to identity. Only what stands
//!   in the way of an identity map (vrings, displaced entries) is unmapped
//!   while the device is stopped; everything else is torn down after the
//!   device runs on the guest's rings again.
//!
//! # Cost
//! A prepared switch is O(1) and emits no operation. `translate` is a
//! binary search over a sorted array, O(log n) in the number of regions.
//! Hotplug and unplug plan in O(log n) (plus the vrings or displaced entries a
//! collision moves) and then rebuild that array, O(n): they are rare, while
//! `translate` runs for every descriptor. Failback is O(d log n) in the number
//! of displaced entries.

use std::collections::BTreeMap;

use smallvec::SmallVec;

use crate::addr::{Address, Gpa, Hva, Iova, Span};
use crate::alloc::IovaAllocator;
use crate::caps::DeviceCaps;
use crate::entry::Entry;
use crate::error::PlanError;
use crate::event::{HostBuffer, RegionSpec};
use crate::plan::{Plan, PlanBuilder};
use crate::strategy::guest::{Guest, Unit};
use crate::strategy::shared::{in_mode, reset_phase, reset_plan};
use crate::strategy::{Piece, Placement, Segments, Strategy};
use crate::svq::{areas, QueueLayout, SvqConfig, VringArea};

mod cvq;
mod failback;
mod hotplug;
mod viommu;
mod window;

use crate::vocab::{EventKind, Mode, Perm, Phase, GUEST_ASID, VRING_ASID};
use cvq::CvqSpace;
use window::{SvqEntry, SvqState};

/// The address space of guest memory (and of the vrings, unless they have
/// their own).
const ASID: u32 = GUEST_ASID;

#[derive(Clone, Debug)]
struct Region {
    gpa: Span<Gpa>,
    hva: Hva,
    perm: Perm,
    pieces: SmallVec<[Piece; 2]>,
}

impl Unit for Region {
    fn span(&self) -> Span<Gpa> {
        self.gpa
    }

    fn hva(&self) -> Hva {
        self.hva
    }
}

impl Region {
    fn hva_of(&self, gpa: u64) -> Hva {
        Hva(self.hva.raw() + (gpa - self.gpa.first().raw()))
    }
}

/// The identity planner. See the [module documentation](self).
#[derive(Clone, Debug)]
pub struct IdentityPlanner {
    /// Caps, mode, guest regions (or a vIOMMU guest's maps) and the
    /// translation table.
    guest: Guest<Region>,
    /// The device range shrunk to whole pages.
    usable: (u64, u64),
    max_gpa: Option<u64>,
    /// The device's limit of entries per address space, when known.
    max_entries: Option<u64>,
    ring_asid: u32,
    /// Host buffers mapped with the shadow vrings.
    buffers: Vec<HostBuffer>,
    /// With an isolated control virtqueue: address space 1, where the host
    /// buffers live instead (mapped when declared, for the VM's life).
    cvq: Option<CvqSpace>,
    svq: Option<SvqState>,
}

/// Builds a [`IdentityPlanner`] for a device and a guest.
#[derive(Clone, Copy, Debug)]
pub struct IdentityPlannerBuilder {
    caps: DeviceCaps,
    max_gpa: Option<u64>,
    max_entries: Option<u64>,
    viommu_last: Option<u64>,
    separate_vrings: bool,
}

impl IdentityPlannerBuilder {
    /// The exclusive end of guest-physical memory: no region will ever
    /// reach it (QEMU: the end of the device-memory area sized by `maxmem`).
    /// Without it, the end of the highest region present when the window is
    /// chosen is taken, which leaves memory hot-plugged above it to the
    /// collision handling.
    pub fn max_gpa(mut self, end: u64) -> Self {
        self.max_gpa = Some(end);
        self
    }

    /// The device holds at most `n` entries per address space (vhost_vdpa's
    /// `max_iotlb_entries`). The planner then never plans a restore that
    /// needs an entry more than the table holds: after a reset of an
    /// unbatched `set_map` device with a full table, the smallest entry is
    /// unmapped and mapped again instead of a one-page map beside it.
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = Some(n);
        self
    }

    /// The guest has a vIOMMU whose highest usable guest IOVA is `last`:
    /// the device sees guest IOVAs, nothing is mapped until the guest maps
    /// it, and the window goes above `last` when the device range allows.
    pub fn viommu(mut self, last: u64) -> Self {
        self.viommu_last = Some(last);
        self
    }

    /// Puts the vrings in address space [`VRING_ASID`], apart from guest
    /// memory: no window in the guest's address space, so nothing collides
    /// with them. Needs `desc_asid` and two address spaces.
    pub fn separate_vring_asid(mut self, yes: bool) -> Self {
        self.separate_vrings = yes;
        self
    }

    /// The planner, with nothing mapped yet.
    ///
    /// # Errors
    /// Capabilities that fail [`DeviceCaps::validate`];
    /// [`PlanError::Unsupported`] for a separate vring address space on a
    /// device without `desc_asid` and two address spaces.
    pub fn build(self) -> Result<IdentityPlanner, PlanError> {
        let caps = self.caps;
        caps.validate()?;
        if self.separate_vrings && !(caps.desc_asid && caps.address_spaces > VRING_ASID) {
            return Err(PlanError::Unsupported {
                what: "vrings in their own address space need desc_asid and two address spaces",
            });
        }
        let p = caps.page_size;
        let first = p
            .align_up(caps.range.first())
            .ok_or(PlanError::BadDeviceRange {
                first: caps.range.first(),
                last: caps.range.last(),
            })?;
        let last = match caps.range.last().checked_add(1) {
            Some(end) => p.align_down(end) - 1,
            None => u64::MAX,
        };
        Ok(IdentityPlanner {
            guest: Guest::new(caps, self.viommu_last),
            usable: (first, last),
            max_gpa: self.max_gpa,
            max_entries: self.max_entries,
            ring_asid: if self.separate_vrings {
                VRING_ASID
            } else {
                GUEST_ASID
            },
            buffers: Vec::new(),
            cvq: caps
                .cvq_isolated
                .then(|| CvqSpace::new(first, last, p))
                .flatten(),
            svq: None,
        })
    }
}

impl IdentityPlanner {
    /// A planner for a device with `caps`, with nothing mapped yet; see
    /// [`IdentityPlannerBuilder::max_gpa`] for `max_gpa`. [`IdentityPlanner::builder`] gives
    /// the other options.
    ///
    /// # Errors
    /// Capabilities that fail [`DeviceCaps::validate`].
    pub fn new(caps: DeviceCaps, max_gpa: Option<u64>) -> Result<Self, PlanError> {
        let b = IdentityPlanner::builder(caps);
        match max_gpa {
            Some(m) => b.max_gpa(m),
            None => b,
        }
        .build()
    }

    /// A builder for a planner with a vIOMMU or separate vring address space.
    pub fn builder(caps: DeviceCaps) -> IdentityPlannerBuilder {
        IdentityPlannerBuilder {
            caps,
            max_gpa: None,
            max_entries: None,
            viommu_last: None,
            separate_vrings: false,
        }
    }

    /// The address space the vrings are mapped in.
    pub fn vring_asid(&self) -> u32 {
        self.ring_asid
    }

    /// The IOVA window the vrings are allocated from, while one is in use.
    pub fn window(&self) -> Option<Span<Iova>> {
        self.svq.as_ref().map(|s| s.alloc.window())
    }

    /// The pieces of guest memory mapped away from their GPA.
    pub fn displaced(&self) -> Vec<Piece> {
        self.svq
            .as_ref()
            .map(|s| {
                s.entries
                    .values()
                    .filter_map(|e| match e {
                        SvqEntry::Displaced { piece, .. } => Some(*piece),
                        SvqEntry::Queue { .. } | SvqEntry::Buffer { .. } => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Number of guest regions.
    pub fn region_count(&self) -> usize {
        self.guest.units.len()
    }

    /// The effective `max_gpa` now: the exclusive end of the guest's device
    /// addresses (with a vIOMMU, `viommu_last + 1`).
    pub fn max_gpa(&self) -> u64 {
        if let Some(v) = &self.guest.viommu {
            return v.last.saturating_add(1);
        }
        self.max_gpa.unwrap_or_else(|| {
            self.guest
                .units
                .values()
                .next_back()
                .map_or(0, |r| r.gpa.last().raw().saturating_add(1))
        })
    }

    /// Splits a GPA range into the part inside the device range and the parts outside.
    fn split(&self, g: Span<Gpa>) -> (Option<Span<Gpa>>, SmallVec<[Span<Gpa>; 2]>) {
        let (f, l) = g.bounds();
        let (uf, ul) = self.usable;
        let mut outs = SmallVec::new();
        let inside = if l < uf || f > ul {
            outs.push(g);
            None
        } else {
            let a = f.max(uf);
            let b = l.min(ul);
            if f < a {
                outs.push(Span::trusted(f, a - f));
            }
            if b < l {
                outs.push(Span::trusted(b + 1, l - b));
            }
            Some(Span::trusted(a, b - a + 1))
        };
        (inside, outs)
    }

    fn identity(g: Span<Gpa>) -> Piece {
        Piece {
            gpa: g,
            iova: Span::trusted(g.first().raw(), g.size()),
        }
    }

    fn map_piece(b: &mut PlanBuilder, phase: Phase, r: &Region, p: &Piece) {
        b.update(phase, ASID, p.iova, r.hva_of(p.gpa.first().raw()), r.perm);
    }

    fn lookup_region<'a>(
        &'a self,
        staged: &'a BTreeMap<u64, Region>,
        gpa: u64,
    ) -> Option<&'a Region> {
        staged.get(&gpa).or_else(|| self.guest.units.get(&gpa))
    }

    fn commit_regions(&mut self, staged: BTreeMap<u64, Region>) {
        for (k, r) in staged {
            let (f, l) = r.gpa.bounds();
            self.guest.table.remove(f, l);
            for p in &r.pieces {
                let (pf, pl) = p.gpa.bounds();
                let delta = p.iova.first().raw().wrapping_sub(pf);
                self.guest.table.set(pf, pl, delta, r.perm);
            }
            self.guest.units.insert(k, r);
        }
        self.guest.table.publish();
    }

    fn out_of_order(&self, event: &'static str) -> PlanError {
        PlanError::OutOfOrder {
            event,
            mode: self.guest.mode,
        }
    }
}

impl Strategy for IdentityPlanner {
    fn name(&self) -> &'static str {
        if self.ring_asid == GUEST_ASID {
            "identity"
        } else {
            "identity-asid"
        }
    }

    fn caps(&self) -> &DeviceCaps {
        &self.guest.caps
    }

    fn mode(&self) -> Mode {
        self.guest.mode
    }

    fn add_regions(&mut self, specs: &[RegionSpec]) -> Result<Plan, PlanError> {
        let Some(specs) = self.guest.declare(specs)? else {
            return Ok(Plan::default());
        };
        let units = specs
            .into_iter()
            .map(|(g, spec)| (g, spec.hva, spec.perm()))
            .collect();
        let mode = self.guest.mode;
        self.add_units(units).map(|p| in_mode(mode, p))
    }

    fn remove_region(&mut self, gpa: Gpa) -> Result<Plan, PlanError> {
        if self.guest.undeclare(gpa)? {
            return Ok(Plan::default());
        }
        let mode = self.guest.mode;
        self.remove_unit(gpa).map(|p| in_mode(mode, p))
    }
    fn svq_prepare(&mut self, cfg: SvqConfig) -> Result<Plan, PlanError> {
        self.guest.admit(EventKind::SvqPrepare)?;
        let (plan, s, staged) = self.setup_svq(cfg, Phase::Prepare)?;
        self.svq = Some(s);
        self.commit_regions(staged);
        self.guest.mode = Mode::Prepared;
        Ok(plan)
    }

    fn svq_switch(&mut self, cfg: Option<SvqConfig>) -> Result<Plan, PlanError> {
        self.guest.admit(EventKind::SvqSwitch)?;
        if self.guest.mode == Mode::Prepared {
            // Everything is mapped already: the switch itself is free.
            self.guest.mode = Mode::Svq;
            return Ok(Plan::default());
        }
        let cfg = cfg.ok_or(PlanError::MissingSvqConfig)?;
        let (plan, s, staged) = self.setup_svq(cfg, Phase::Critical)?;
        self.svq = Some(s);
        self.commit_regions(staged);
        self.guest.mode = Mode::Svq;
        Ok(plan)
    }

    fn failback(&mut self) -> Result<Plan, PlanError> {
        self.plan_failback()
    }

    fn complete(&mut self) -> Result<Plan, PlanError> {
        self.plan_complete()
    }

    fn reset(&mut self) -> Result<Plan, PlanError> {
        // Nothing changes on the planner's side: the plan makes the device
        // hold again what the planner has mapped (while a destination waits
        // for the stream, before any downtime).
        Ok(reset_plan(
            &self.guest.caps,
            self.max_entries,
            &self.mapped(),
            reset_phase(self.guest.mode),
        ))
    }

    fn incoming(&mut self, regions: &[RegionSpec]) -> Result<Plan, PlanError> {
        self.guest.check_fresh()?;
        // Guest memory is mapped now, while the VMM waits for the stream:
        // nothing is left for the downtime.
        let plan = self.add_regions(regions)?;
        self.guest.mode = Mode::Incoming;
        Ok(plan)
    }

    fn switchover(&mut self) -> Result<Plan, PlanError> {
        self.guest.admit(EventKind::Switchover)?;
        // Guest memory was mapped while the stream ran: nothing to send.
        // What arrives from now on (a vIOMMU's maps, a reset's restore) is
        // planned as it comes, inside the downtime.
        self.guest.mode = Mode::Switchover;
        Ok(Plan::default())
    }

    fn start(&mut self) -> Result<Plan, PlanError> {
        self.guest.admit(EventKind::Start)?;
        // Everything the device needs is mapped (and restored after any
        // reset): the start sends nothing.
        self.guest.mode = Mode::Passthrough;
        Ok(Plan::default())
    }

    fn viommu_map(
        &mut self,
        giova: Iova,
        size: u64,
        gpa: Gpa,
        perm: Perm,
    ) -> Result<Plan, PlanError> {
        let mode = self.guest.mode;
        self.plan_viommu_map(giova, size, gpa, perm)
            .map(|p| in_mode(mode, p))
    }

    fn viommu_unmap(&mut self, giova: Iova, size: u64) -> Result<Plan, PlanError> {
        let mode = self.guest.mode;
        self.plan_viommu_unmap(giova, size)
            .map(|p| in_mode(mode, p))
    }

    fn window(&self) -> Option<Span<Iova>> {
        IdentityPlanner::window(self)
    }

    fn host_buffers(&mut self, bufs: &[HostBuffer]) -> Result<Plan, PlanError> {
        self.guest.check_buffers(bufs)?;
        if let Some(cvq) = &mut self.cvq {
            return cvq
                .declare(bufs, &self.guest.caps)
                .map(|p| self.guest.in_mode(p));
        }
        self.buffers.extend_from_slice(bufs);
        Ok(Plan::default())
    }

    fn buffer_entries(&self) -> Vec<(u32, Entry)> {
        let mut v: Vec<(u32, Entry)> = self
            .svq
            .as_ref()
            .map(|s| s.buffer_entries().collect())
            .unwrap_or_default();
        if let Some(c) = &self.cvq {
            v.extend(c.entries());
        }
        v
    }

    fn mapped(&self) -> Vec<(u32, Entry)> {
        let mut v = Vec::new();
        for r in self.guest.units.values() {
            for p in &r.pieces {
                v.push((
                    ASID,
                    Entry {
                        iova: p.iova,
                        hva: r.hva_of(p.gpa.first().raw()),
                        perm: r.perm,
                    },
                ));
            }
        }
        if let Some(s) = &self.svq {
            for (vq, &q) in s.queues.iter().enumerate() {
                v.extend(s.queue_entries(vq as u32, q).map(|e| (s.ring_asid, e)));
            }
        }
        v.extend(self.buffer_entries());
        v
    }

    fn placements(&self) -> Vec<Placement> {
        self.guest
            .units
            .values()
            .map(|r| Placement {
                gpa: r.gpa,
                hva: r.hva,
                perm: r.perm,
                pieces: r.pieces.clone(),
            })
            .collect()
    }

    fn vring_areas(&self) -> Vec<VringArea> {
        let Some(s) = &self.svq else {
            return Vec::new();
        };
        s.queues
            .iter()
            .enumerate()
            .flat_map(|(vq, &iova)| areas(&s.cfg, &s.layout, s.ring_asid, vq as u32, iova))
            .collect()
    }

    fn epoch(&self) -> Option<&crate::strategy::Epoch> {
        Some(self.guest.table.epoch())
    }

    fn translate(&self, gpa: Gpa, len: u64) -> Result<Segments, PlanError> {
        self.guest.translate(gpa, len)
    }
}
