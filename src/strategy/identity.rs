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

use rangemap::RangeInclusiveMap;
use smallvec::SmallVec;

use crate::addr::{Address, Gpa, Hva, Iova, Span};
use crate::alloc::IovaAllocator;
use crate::caps::DeviceCaps;
use crate::entry::Entry;
use crate::error::PlanError;
use crate::event::RegionSpec;
use crate::plan::{Plan, PlanBuilder};
use crate::strategy::shared::{overlapping_keys, reset_plan, validate_regions, GuestMemory};
use crate::strategy::xlate::{translate_with, Flat, Xlate};
use crate::strategy::{Piece, Placement, Segments, Strategy};
use crate::svq::{areas, QueueLayout, SvqConfig, VringArea};
use crate::vocab::{Mode, Perm, Phase, GUEST_ASID, VRING_ASID};

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

impl Region {
    fn hva_of(&self, gpa: u64) -> Hva {
        Hva(self.hva.raw() + (gpa - self.gpa.first().raw()))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SvqEntry {
    /// A queue's block: desc+driver (ro) then device (rw).
    Queue { vq: u32, last: u64 },
    /// Guest memory mapped away from its GPA.
    Displaced { region: u64, piece: Piece },
}

#[derive(Clone, Debug)]
struct SvqState {
    cfg: SvqConfig,
    layout: QueueLayout,
    /// Address space of the vrings.
    ring_asid: u32,
    /// With vrings in their own address space: their allocator, over the
    /// whole device range (nothing else lives there). `None`: vrings share
    /// `alloc` and `entries` with displaced memory.
    rings: Option<IovaAllocator>,
    /// The window of the guest's address space: vrings (when shared) and
    /// displaced memory.
    alloc: IovaAllocator,
    /// The free IOVAs of the device range below a window chosen above
    /// `max_gpa` (`None` when the window already spans the whole range):
    /// what nothing mapped keeps, used only when the window is full.
    rest: Option<IovaAllocator>,
    /// Identity ranges `first -> last` of memory displaced in SVQ mode,
    /// kept free so that its failback maps it home without moving anything.
    claims: BTreeMap<u64, u64>,
    /// The free bytes of `claims`: the last resort when the window and the
    /// rest of the range are full (their owner's failback then moves
    /// whatever was put there, while the device is stopped).
    spare: Option<IovaAllocator>,
    /// Sizes the next allocations will ask for, to be placed together by an
    /// exact search at the first of them (set when greedy placement failed).
    pending: Option<Vec<u64>>,
    /// Placements chosen by that search, handed out in order.
    forced: std::collections::VecDeque<Span<Iova>>,
    /// IOVA of each queue's block.
    queues: Vec<u64>,
    /// Everything mapped in the window, by first IOVA.
    entries: BTreeMap<u64, SvqEntry>,
}

impl SvqState {
    fn entry_last(&self, first: u64, e: &SvqEntry) -> u64 {
        match e {
            SvqEntry::Queue { last, .. } => *last,
            SvqEntry::Displaced { piece, .. } => {
                debug_assert_eq!(piece.iova.first().raw(), first);
                piece.iova.last().raw()
            }
        }
    }

    /// Entries overlapping `[f, l]`, by IOVA.
    fn overlapping(&self, f: u64, l: u64) -> SmallVec<[(u64, SvqEntry); 4]> {
        let mut out = SmallVec::new();
        if let Some((&s, e)) = self.entries.range(..f).next_back() {
            if self.entry_last(s, e) >= f {
                out.push((s, *e));
            }
        }
        out.extend(self.entries.range(f..=l).map(|(&s, e)| (s, *e)));
        out
    }

    /// Allocates `size` bytes: best fit in the window, else best fit in the
    /// free holes of the rest of the device range.
    fn alloc(&mut self, size: u64, purpose: &'static str) -> Result<Span<Iova>, PlanError> {
        if let Some(sizes) = self.pending.take() {
            match pack(&self.merged_free(), &sizes) {
                Some(spans) => self.forced = spans.into(),
                None => return Err(self.out_of_iova(size, purpose)),
            }
        }
        if let Some(sp) = self.forced.pop_front() {
            debug_assert_eq!(sp.size(), size, "requests follow unit_requests");
            self.carve(sp.first().raw(), sp.last().raw());
            return Ok(sp);
        }
        if let Some(s) = self.alloc.alloc(size) {
            return Ok(s);
        }
        if let Some(s) = self.rest.as_mut().and_then(|r| r.alloc(size)) {
            return Ok(s);
        }
        if let Some(s) = self.spare.as_mut().and_then(|r| r.alloc(size)) {
            return Ok(s);
        }
        // Last: free ranges of different allocators may touch (a claim next
        // to the window's free space): best fit over their union.
        let merged = self.merged_free();
        let best = merged
            .iter()
            .filter(|&&(f, l)| l - f >= size - 1)
            .min_by_key(|&&(f, l)| (l - f, f));
        if let Some(&(f, _)) = best {
            self.carve(f, f + (size - 1));
            return Ok(Span::trusted(f, size));
        }
        Err(self.out_of_iova(size, purpose))
    }

    /// Every free range of the window, the rest and the spare, adjacent
    /// ones merged, by address.
    fn merged_free(&self) -> Vec<(u64, u64)> {
        let mut all: Vec<(u64, u64)> = self.alloc.free_ranges().collect();
        for r in [&self.rest, &self.spare].into_iter().flatten() {
            all.extend(r.free_ranges());
        }
        all.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(all.len());
        for (f, l) in all {
            match merged.last_mut() {
                Some(m) if m.1.checked_add(1) == Some(f) => m.1 = l,
                _ => merged.push((f, l)),
            }
        }
        merged
    }

    fn out_of_iova(&self, size: u64, purpose: &'static str) -> PlanError {
        PlanError::OutOfIova {
            needed: size,
            purpose,
            window: Some(self.alloc.window()),
            largest_free: self.alloc.largest_free(),
            considered: self.merged_free(),
        }
    }

    /// Gives `span` back to whichever allocator owns each of its bytes:
    /// the spare where a claim covers them, the window or the rest elsewhere.
    fn free(&mut self, span: Span<Iova>) -> bool {
        let (f, l) = span.bounds();
        let mut ok = true;
        let mut cur = Some(f);
        let hit: SmallVec<[(u64, u64); 2]> = claims_in(&self.claims, f, l).collect();
        for (cf, cl) in hit {
            let (a, z) = (cf.max(f), cl.min(l));
            if let Some(c) = cur.filter(|&c| c < a) {
                ok &= self.free_plain(Span::trusted(c, a - c));
            }
            if let Some(sp) = &mut self.spare {
                ok &= sp.free(Span::trusted(a, z - a + 1));
            }
            cur = z.checked_add(1);
        }
        if let Some(c) = cur.filter(|&c| c <= l) {
            ok &= self.free_plain(Span::trusted(c, l - c + 1));
        }
        ok
    }

    fn free_plain(&mut self, span: Span<Iova>) -> bool {
        let a = self.alloc.free(span);
        let b = self.rest.as_mut().map_or(true, |r| r.free(span));
        a && b
    }

    /// Takes `[f, l]` out of the free space (memory mapped there now).
    fn carve(&mut self, f: u64, l: u64) {
        self.alloc.carve(f, l);
        for r in [&mut self.rest, &mut self.spare].into_iter().flatten() {
            r.carve(f, l);
        }
    }

    /// Keeps `[f, l]`, the identity range of memory just displaced, for its
    /// owner: its free bytes (all but `hits`, what is mapped there) move to
    /// the spare.
    fn claim(&mut self, f: u64, l: u64, hits: &[(u64, SvqEntry)]) {
        self.carve(f, l);
        let spare = self.spare.get_or_insert_with(|| {
            let w = self.alloc.window();
            let (lo, hi) = match &self.rest {
                Some(r) => (r.window().0.min(w.0), w.1),
                None => w,
            };
            let mut sp =
                IovaAllocator::new(lo, hi, self.alloc.page()).expect("the window holds a page");
            sp.carve(lo, hi);
            sp
        });
        let mut cur = Some(f);
        let mut spans: SmallVec<[Span<Iova>; 4]> = SmallVec::new();
        for (at, e) in hits {
            let el = match e {
                SvqEntry::Queue { last, .. } => *last,
                SvqEntry::Displaced { piece, .. } => piece.iova.last().raw(),
            };
            if let Some(c) = cur.filter(|&c| c < *at) {
                spans.push(Span::trusted(c, at - c));
            }
            cur = el.checked_add(1).map(|n| n.max(cur.unwrap_or(n)));
        }
        if let Some(c) = cur.filter(|&c| c <= l) {
            spans.push(Span::trusted(c, l - c + 1));
        }
        for sp in spans {
            let freed = spare.free(sp);
            debug_assert!(freed, "a claimed range starts carved");
        }
        self.claims.insert(f, l);
    }

    /// Drops the claims inside `[f, l]` (their owner is gone): their free
    /// bytes go back to the window or the rest.
    fn release(&mut self, f: u64, l: u64) {
        let gone: SmallVec<[(u64, u64); 2]> = claims_in(&self.claims, f, l).collect();
        for (cf, cl) in gone {
            self.claims.remove(&cf);
            let free: SmallVec<[(u64, u64); 4]> = self
                .spare
                .iter()
                .flat_map(|sp| sp.free_ranges())
                .filter_map(|(a, z)| {
                    let (x, y) = (a.max(cf), z.min(cl));
                    (x <= y).then_some((x, y))
                })
                .collect();
            if let Some(sp) = &mut self.spare {
                sp.carve(cf, cl);
            }
            for (x, y) in free {
                let freed = self.free_plain(Span::trusted(x, y - x + 1));
                debug_assert!(freed, "claimed bytes were carved from the window");
            }
        }
    }

    /// Allocates and records the block of queue `vq`.
    fn place_queue(&mut self, vq: u32, purpose: &'static str) -> Result<u64, PlanError> {
        let size = self.layout.total();
        let blk = match &mut self.rings {
            Some(r) => r.alloc(size).ok_or_else(|| PlanError::OutOfIova {
                needed: size,
                purpose,
                window: Some(r.window()),
                largest_free: r.largest_free(),
                considered: r.free_ranges().collect(),
            })?,
            None => {
                let blk = self.alloc(size, purpose)?;
                self.entries.insert(
                    blk.first().raw(),
                    SvqEntry::Queue {
                        vq,
                        last: blk.last().raw(),
                    },
                );
                blk
            }
        };
        let f = blk.first().raw();
        if let Some(q) = self.queues.get_mut(vq as usize) {
            *q = f;
        } else {
            self.queues.push(f);
        }
        Ok(f)
    }

    /// Maps `gpa` (part of region `r`, keyed `key`) at a free IOVA of the window.
    fn displace(
        &mut self,
        b: &mut PlanBuilder,
        phase: Phase,
        key: u64,
        r: &mut Region,
        gpa: Span<Gpa>,
        purpose: &'static str,
    ) -> Result<(), PlanError> {
        let iova = self.alloc(gpa.size(), purpose)?;
        let piece = Piece { gpa, iova };
        self.entries.insert(
            iova.first().raw(),
            SvqEntry::Displaced { region: key, piece },
        );
        IdentityPlanner::map_piece(b, phase, r, &piece);
        r.pieces.push(piece);
        Ok(())
    }

    /// The two entries of queue `vq` at `iova`: descriptor table and driver
    /// area read-only, device area read-write.
    fn queue_entries(&self, vq: u32, iova: u64) -> [Entry; 2] {
        let [desc, _, dev] = areas(&self.cfg, &self.layout, self.ring_asid, vq, iova);
        [
            Entry {
                iova: Span::trusted(iova, self.layout.ro()),
                hva: desc.hva,
                perm: Perm::Ro,
            },
            Entry {
                iova: dev.iova,
                hva: dev.hva,
                perm: Perm::Rw,
            },
        ]
    }

    fn map_queue(&self, b: &mut PlanBuilder, phase: Phase, vq: u32, iova: u64) {
        for e in self.queue_entries(vq, iova) {
            b.update(phase, self.ring_asid, e.iova, e.hva, e.perm);
        }
    }

    fn unmap_queue(&self, b: &mut PlanBuilder, phase: Phase, iova: u64) {
        b.invalidate(phase, self.ring_asid, Span::trusted(iova, self.layout.ro()));
        b.invalidate(
            phase,
            self.ring_asid,
            Span::trusted(iova + self.layout.ro(), self.layout.device),
        );
    }
}

/// The identity planner. See the [module documentation](self).
#[derive(Clone, Debug)]
pub struct IdentityPlanner {
    caps: DeviceCaps,
    /// The device range shrunk to whole pages.
    usable: (u64, u64),
    max_gpa: Option<u64>,
    ring_asid: u32,
    viommu: Option<GuestMemory>,
    mode: Mode,
    /// What the guest's device addresses map, by first address: guest
    /// regions, or with a vIOMMU the guest's maps.
    regions: BTreeMap<u64, Region>,
    xlate: RangeInclusiveMap<u64, Xlate>,
    /// `xlate` as a sorted array `(first, last, xlate)`, rebuilt after every
    /// change: `translate`, the per-descriptor hot path, is then a binary
    /// search over contiguous memory instead of a B-tree walk.
    flat: Flat,
    svq: Option<SvqState>,
}

/// Builds a [`IdentityPlanner`] for a device and a guest.
#[derive(Clone, Copy, Debug)]
pub struct IdentityPlannerBuilder {
    caps: DeviceCaps,
    max_gpa: Option<u64>,
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
            caps,
            usable: (first, last),
            max_gpa: self.max_gpa,
            ring_asid: if self.separate_vrings {
                VRING_ASID
            } else {
                GUEST_ASID
            },
            viommu: self.viommu_last.map(GuestMemory::new),
            mode: Mode::Passthrough,
            regions: BTreeMap::new(),
            xlate: RangeInclusiveMap::new(),
            flat: Flat::default(),
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
            viommu_last: None,
            separate_vrings: false,
        }
    }

    /// The address space the vrings are mapped in.
    pub fn vring_asid(&self) -> u32 {
        self.ring_asid
    }

    /// The IOVA window the vrings are allocated from, while one is in use.
    pub fn window(&self) -> Option<(u64, u64)> {
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
                        SvqEntry::Queue { .. } => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Number of guest regions.
    pub fn region_count(&self) -> usize {
        self.regions.len()
    }

    /// The effective `max_gpa` now: the exclusive end of the guest's device
    /// addresses (with a vIOMMU, `viommu_last + 1`).
    pub fn max_gpa(&self) -> u64 {
        if let Some(v) = &self.viommu {
            return v.last.saturating_add(1);
        }
        self.max_gpa.unwrap_or_else(|| {
            self.regions
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
        staged.get(&gpa).or_else(|| self.regions.get(&gpa))
    }

    /// Chooses the window and lays out vrings plus displaced memory for
    /// every part of a region outside the device range.
    fn setup_svq(
        &self,
        cfg: SvqConfig,
        phase: Phase,
    ) -> Result<(Plan, SvqState, BTreeMap<u64, Region>), PlanError> {
        let layout = cfg.layout(self.caps.page_size)?;
        let p = self.caps.page_size;
        let (uf, ul) = self.usable;
        // (window, rest of the device range below it)
        let mut candidates: SmallVec<[(IovaAllocator, Option<IovaAllocator>); 2]> = SmallVec::new();
        if let Some(floor) = p.align_up(self.max_gpa().max(uf)) {
            if let Some(mut a) = IovaAllocator::new(floor, ul, p) {
                for r in self.regions.values().rev() {
                    if r.gpa.last().raw() < floor {
                        break;
                    }
                    a.carve(r.gpa.first().raw(), r.gpa.last().raw());
                }
                let mut rest = floor
                    .checked_sub(1)
                    .and_then(|below| IovaAllocator::new(uf, below, p));
                if let Some(rest) = &mut rest {
                    for r in self.regions.values() {
                        if r.gpa.first().raw() >= floor {
                            break;
                        }
                        for piece in &r.pieces {
                            rest.carve(piece.iova.first().raw(), piece.iova.last().raw());
                        }
                    }
                }
                candidates.push((a, rest));
            }
        }
        if let Some(mut a) = IovaAllocator::new(uf, ul, p) {
            for r in self.regions.values() {
                a.carve(r.gpa.first().raw(), r.gpa.last().raw());
            }
            candidates.push((a, None));
        }
        let mut last_err = PlanError::OutOfIova {
            needed: layout.total(),
            purpose: "shadow vrings",
            window: None,
            largest_free: 0,
            considered: Vec::new(),
        };
        for (alloc, rest) in candidates {
            let mut s = SvqState {
                cfg,
                layout,
                ring_asid: self.ring_asid,
                rings: (self.ring_asid != GUEST_ASID)
                    .then(|| IovaAllocator::new(uf, ul, p))
                    .flatten(),
                alloc,
                rest,
                claims: BTreeMap::new(),
                spare: None,
                pending: None,
                forced: Default::default(),
                queues: Vec::new(),
                entries: BTreeMap::new(),
            };
            // The vrings are laid out in the window alone (the next
            // candidate is every hole); the rest of the range is only for
            // memory displaced later, when the window is full.
            let rest = s.rest.take();
            match self.fill_svq(&mut s, phase) {
                Ok((plan, staged)) => {
                    s.rest = rest;
                    if let Some(staged_rest) = &mut s.rest {
                        // Displaced at setup: mapped in the window, but
                        // never let the rest hand out their bytes either.
                        for r in staged.values() {
                            for piece in r.pieces.iter().filter(|p| !p.is_identity()) {
                                staged_rest
                                    .carve(piece.iova.first().raw(), piece.iova.last().raw());
                            }
                        }
                    }
                    return Ok((plan, s, staged));
                }
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    fn fill_svq(
        &self,
        s: &mut SvqState,
        phase: Phase,
    ) -> Result<(Plan, BTreeMap<u64, Region>), PlanError> {
        let mut b = PlanBuilder::new();
        s.queues.reserve(s.cfg.queues as usize);
        for vq in 0..s.cfg.queues {
            let f = s.place_queue(vq, "shadow vrings")?;
            s.map_queue(&mut b, phase, vq, f);
        }
        let mut staged = BTreeMap::new();
        for (&k, r) in &self.regions {
            let (_, outs) = self.split(r.gpa);
            if outs.is_empty() {
                continue;
            }
            let mut nr = r.clone();
            for o in outs {
                s.displace(
                    &mut b,
                    phase,
                    k,
                    &mut nr,
                    o,
                    "guest memory outside the device range",
                )?;
            }
            nr.pieces.sort();
            staged.insert(k, nr);
        }
        Ok((b.finish(&self.caps), staged))
    }

    /// Rebuilds `flat` from `xlate`.
    fn refresh_flat(&mut self) {
        self.flat.firsts.clear();
        self.flat.rest.clear();
        for (r, x) in self.xlate.iter() {
            self.flat.firsts.push(*r.start());
            self.flat.rest.push((*r.end(), *x));
        }
    }

    fn commit_regions(&mut self, staged: BTreeMap<u64, Region>) {
        for (k, r) in staged {
            let (f, l) = r.gpa.bounds();
            self.xlate.remove(f..=l);
            for p in &r.pieces {
                let (pf, pl) = p.gpa.bounds();
                let delta = p.iova.first().raw().wrapping_sub(pf);
                self.xlate.insert(
                    pf..=pl,
                    Xlate {
                        delta,
                        perm: r.perm,
                    },
                );
            }
            self.regions.insert(k, r);
        }
        self.refresh_flat();
    }

    /// The sizes `place_unit` asks the allocator for, in order.
    fn unit_requests(
        s: &SvqState,
        mode: Mode,
        inside: Option<Span<Gpa>>,
        outs: &[Span<Gpa>],
    ) -> Vec<u64> {
        let mut v = Vec::new();
        if let Some(i) = inside {
            let (f, l) = i.bounds();
            let hits = s.overlapping(f, l);
            if hits.is_empty() || mode == Mode::Prepared {
                let mut sizes: Vec<u64> = hits
                    .iter()
                    .map(|&(_, e)| match e {
                        SvqEntry::Queue { .. } => s.layout.total(),
                        SvqEntry::Displaced { piece, .. } => piece.gpa.size(),
                    })
                    .collect();
                sizes.sort_by_key(|&n| core::cmp::Reverse(n));
                v.extend(sizes);
            } else {
                v.push(i.size());
            }
        }
        v.extend(outs.iter().map(|o| o.size()));
        v
    }

    /// Maps one new unit in SVQ or prepared mode (see the module docs).
    #[allow(clippy::too_many_arguments)]
    fn place_unit(
        &self,
        s: &mut SvqState,
        mode: Mode,
        b: &mut PlanBuilder,
        staged: &mut BTreeMap<u64, Region>,
        r: &mut Region,
        g: Span<Gpa>,
        inside: Option<Span<Gpa>>,
        outs: &[Span<Gpa>],
    ) -> Result<(), PlanError> {
        if let Some(i) = inside {
            let (f, l) = i.bounds();
            let hits = s.overlapping(f, l);
            if hits.is_empty() || mode == Mode::Prepared {
                // Prepared: the guest addresses memory by GPA, so
                // whatever is in the way moves, not the memory.
                // What moves gives its IOVAs back first, so that
                // none of them is lost outside [f, l].
                // Every unmap comes before any map: a moved
                // entry may land where another one was.
                for &(at, e) in &hits {
                    let last = s.entry_last(at, &e);
                    let freed = s.free(Span::trusted(at, last - at + 1));
                    debug_assert!(freed, "svq entries were allocated");
                    s.entries.remove(&at);
                    match e {
                        SvqEntry::Queue { .. } => s.unmap_queue(b, Phase::Prepare, at),
                        SvqEntry::Displaced { piece, .. } => {
                            b.invalidate(Phase::Prepare, ASID, piece.iova)
                        }
                    }
                }
                s.carve(f, l);
                // Largest first: a small block placed first may
                // take the only hole a large one fits.
                let mut hits = hits;
                hits.sort_by_key(|&(at, e)| core::cmp::Reverse(s.entry_last(at, &e) - at));
                for (_, e) in hits {
                    match e {
                        SvqEntry::Queue { vq, .. } => {
                            let nf = s.place_queue(vq, "moving a shadow vring")?;
                            s.map_queue(b, Phase::Prepare, vq, nf);
                        }
                        SvqEntry::Displaced { region, piece } => {
                            let iova = s.alloc(piece.gpa.size(), "moving displaced memory")?;
                            let np = Piece {
                                gpa: piece.gpa,
                                iova,
                            };
                            let mut owner = match self.lookup_region(staged, region) {
                                Some(o) => o.clone(),
                                None => r.clone(),
                            };
                            for q in owner.pieces.iter_mut() {
                                if *q == piece {
                                    *q = np;
                                }
                            }
                            s.entries.insert(
                                iova.first().raw(),
                                SvqEntry::Displaced { region, piece: np },
                            );
                            Self::map_piece(b, Phase::Prepare, &owner, &np);
                            if region == r.gpa.first().raw() {
                                *r = owner;
                            } else {
                                staged.insert(region, owner);
                            }
                        }
                    }
                }
                let piece = Self::identity(i);
                Self::map_piece(b, Phase::Prepare, r, &piece);
                r.pieces.push(piece);
            } else {
                // In SVQ mode: the memory moves. Its identity
                // range stays its own, for a free failback.
                s.claim(f, l, &hits);
                s.displace(
                    b,
                    Phase::Prepare,
                    g.first().raw(),
                    r,
                    i,
                    "displaced hot-plugged memory",
                )?;
            }
        }
        for &o in outs {
            s.displace(
                b,
                Phase::Prepare,
                g.first().raw(),
                r,
                o,
                "guest memory outside the device range",
            )?;
        }
        Ok(())
    }

    /// Maps new units (regions, or guest maps) at identity, displacing or
    /// moving what collides. Validated input only; commits on success.
    fn add_units(&mut self, units: Vec<(Span<Gpa>, Hva, Perm)>) -> Result<Plan, PlanError> {
        let mut b = PlanBuilder::new();
        let mut staged: BTreeMap<u64, Region> = BTreeMap::new();
        let mut svq = self.svq.clone();
        for (g, hva, perm) in units {
            let mut r = Region {
                gpa: g,
                hva,
                perm,
                pieces: SmallVec::new(),
            };
            let (inside, outs) = self.split(g);
            match (&mut svq, self.mode) {
                (None, _) => {
                    if let Some(i) = inside {
                        let piece = Self::identity(i);
                        Self::map_piece(&mut b, Phase::Prepare, &r, &piece);
                        r.pieces.push(piece);
                    }
                }
                (Some(s), mode) => {
                    // Greedy first (window, then holes, best fit); when that
                    // runs out, an exact search over every free range.
                    let saved = (s.clone(), b.clone(), staged.clone(), r.clone());
                    match self.place_unit(s, mode, &mut b, &mut staged, &mut r, g, inside, &outs) {
                        Err(PlanError::OutOfIova { .. }) => {
                            (*s, b, staged, r) = saved;
                            s.pending = Some(Self::unit_requests(s, mode, inside, &outs));
                            self.place_unit(
                                s,
                                mode,
                                &mut b,
                                &mut staged,
                                &mut r,
                                g,
                                inside,
                                &outs,
                            )?;
                            debug_assert!(s.forced.is_empty() && s.pending.is_none());
                        }
                        other => other?,
                    }
                }
            }
            r.pieces.sort();
            staged.insert(g.first().raw(), r);
        }
        let plan = b.finish(&self.caps);
        self.svq = svq;
        self.commit_regions(staged);
        Ok(plan)
    }

    /// Unmaps the unit starting at `gpa`.
    fn remove_unit(&mut self, gpa: Gpa) -> Result<Plan, PlanError> {
        let r = self
            .regions
            .get(&gpa.raw())
            .ok_or(PlanError::UnknownRegion { gpa: gpa.raw() })?;
        let mut b = PlanBuilder::new();
        for p in &r.pieces {
            b.invalidate(Phase::Prepare, ASID, p.iova);
        }
        let plan = b.finish(&self.caps);
        // Nothing below can fail: commit.
        let r = self.regions.remove(&gpa.raw()).expect("looked up above");
        if let Some(s) = &mut self.svq {
            // Every IOVA the region held is free again, identity ones too:
            // a region plugged there later finds its identity range free,
            // and until then displaced memory may use it.
            for p in &r.pieces {
                if !p.is_identity() {
                    s.entries.remove(&p.iova.first().raw());
                }
                let freed = s.free(p.iova);
                debug_assert!(freed, "a mapped piece is not free space");
            }
            s.release(r.gpa.first().raw(), r.gpa.last().raw());
        }
        let (f, l) = r.gpa.bounds();
        self.xlate.remove(f..=l);
        self.refresh_flat();
        Ok(plan)
    }

    fn out_of_order(&self, event: &'static str) -> PlanError {
        PlanError::OutOfOrder {
            event,
            mode: self.mode,
        }
    }

    /// Unmaps every svq entry except those in `skip`, in `phase`.
    fn teardown_svq(s: &SvqState, b: &mut PlanBuilder, phase: Phase, skip: &BTreeMap<u64, ()>) {
        if s.rings.is_some() {
            for &q in &s.queues {
                s.unmap_queue(b, phase, q);
            }
        }
        for (&f, e) in &s.entries {
            if skip.contains_key(&f) {
                continue;
            }
            match e {
                SvqEntry::Queue { .. } => s.unmap_queue(b, phase, f),
                SvqEntry::Displaced { piece, .. } => b.invalidate(phase, ASID, piece.iova),
            }
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
        &self.caps
    }

    fn mode(&self) -> Mode {
        self.mode
    }

    fn add_regions(&mut self, specs: &[RegionSpec]) -> Result<Plan, PlanError> {
        if self.mode == Mode::Completed {
            return Err(self.out_of_order("hotplug"));
        }
        if let Some(v) = &mut self.viommu {
            // Guest memory is only declared: the guest maps it through its vIOMMU.
            v.add(&self.caps, specs)?;
            return Ok(Plan::default());
        }
        let specs = validate_regions(&self.caps, specs, |f, l| {
            let (_, r) = self.regions.range(..=l).next_back()?;
            (r.gpa.last().raw() >= f).then(|| r.gpa.bounds())
        })?;
        let units = specs
            .into_iter()
            .map(|(g, spec)| (g, spec.hva, spec.perm()))
            .collect();
        self.add_units(units)
    }

    fn remove_region(&mut self, gpa: Gpa) -> Result<Plan, PlanError> {
        if self.mode == Mode::Completed {
            return Err(self.out_of_order("unplug"));
        }
        if let Some(v) = &mut self.viommu {
            v.remove(
                gpa,
                self.regions
                    .values()
                    .map(|u| (u.gpa.first().raw(), u.hva, u.gpa.size())),
            )?;
            return Ok(Plan::default());
        }
        self.remove_unit(gpa)
    }
    fn svq_prepare(&mut self, cfg: SvqConfig) -> Result<Plan, PlanError> {
        if self.mode != Mode::Passthrough {
            return Err(self.out_of_order("svq_prepare"));
        }
        let (plan, s, staged) = self.setup_svq(cfg, Phase::Prepare)?;
        self.svq = Some(s);
        self.commit_regions(staged);
        self.mode = Mode::Prepared;
        Ok(plan)
    }

    fn svq_switch(&mut self, cfg: Option<SvqConfig>) -> Result<Plan, PlanError> {
        match self.mode {
            Mode::Prepared => {
                // Everything is mapped already: the switch itself is free.
                self.mode = Mode::Svq;
                Ok(Plan::default())
            }
            Mode::Passthrough => {
                let cfg = cfg.ok_or(PlanError::MissingSvqConfig)?;
                let (plan, s, staged) = self.setup_svq(cfg, Phase::Critical)?;
                self.svq = Some(s);
                self.commit_regions(staged);
                self.mode = Mode::Svq;
                Ok(plan)
            }
            _ => Err(self.out_of_order("svq_switch")),
        }
    }

    fn failback(&mut self) -> Result<Plan, PlanError> {
        let s = match (&self.svq, self.mode) {
            (Some(s), Mode::Svq | Mode::Prepared) => s,
            _ => return Err(self.out_of_order("failback")),
        };
        let mut b = PlanBuilder::new();
        let mut critical: BTreeMap<u64, ()> = BTreeMap::new();
        let mut staged: BTreeMap<u64, Region> = BTreeMap::new();
        // Identity maps to restore: displaced memory inside the device range.
        let mut targets: SmallVec<[(u64, Piece); 4]> = SmallVec::new();
        for e in s.entries.values() {
            if let SvqEntry::Displaced { region, piece } = e {
                let r = &self.regions[region];
                staged.entry(*region).or_insert_with(|| {
                    let mut nr = r.clone();
                    nr.pieces.retain(|p| p.is_identity());
                    nr
                });
                if self.split(piece.gpa).1.is_empty() {
                    targets.push((*region, *piece));
                }
            }
        }
        for (_, p) in &targets {
            let (f, l) = p.gpa.bounds();
            for (at, e) in s.overlapping(f, l) {
                if critical.insert(at, ()).is_none() {
                    match e {
                        SvqEntry::Queue { .. } => s.unmap_queue(&mut b, Phase::Critical, at),
                        SvqEntry::Displaced { piece, .. } => {
                            b.invalidate(Phase::Critical, ASID, piece.iova)
                        }
                    }
                }
            }
        }
        for (region, p) in &targets {
            let nr = staged.get_mut(region).expect("staged above");
            let id = Self::identity(p.gpa);
            Self::map_piece(&mut b, Phase::Critical, nr, &id);
            nr.pieces.push(id);
            nr.pieces.sort();
        }
        // The device runs on the guest's rings again: the rest can wait.
        Self::teardown_svq(s, &mut b, Phase::Background, &critical);
        let plan = b.finish(&self.caps);
        self.svq = None;
        self.commit_regions(staged);
        self.mode = Mode::Passthrough;
        Ok(plan)
    }

    fn complete(&mut self) -> Result<Plan, PlanError> {
        if self.mode != Mode::Svq {
            return Err(self.out_of_order("complete"));
        }
        let s = self.svq.as_ref().expect("svq mode has svq state");
        let mut b = PlanBuilder::new();
        for r in self.regions.values() {
            for p in r.pieces.iter().filter(|p| p.is_identity()) {
                b.invalidate(Phase::Background, ASID, p.iova);
            }
        }
        Self::teardown_svq(s, &mut b, Phase::Background, &BTreeMap::new());
        let plan = b.finish(&self.caps);
        self.svq = None;
        for r in self.regions.values_mut() {
            r.pieces.clear();
        }
        self.xlate = RangeInclusiveMap::new();
        self.refresh_flat();
        self.mode = Mode::Completed;
        Ok(plan)
    }

    fn reset(&mut self) -> Result<Plan, PlanError> {
        // Nothing changes on the planner's side: the plan makes the device
        // hold again what the planner has mapped.
        Ok(reset_plan(&self.caps, &self.mapped()))
    }

    fn viommu_map(
        &mut self,
        giova: Iova,
        size: u64,
        gpa: Gpa,
        perm: Perm,
    ) -> Result<Plan, PlanError> {
        let Some(v) = &self.viommu else {
            return Err(PlanError::NoViommu {
                event: "viommu_map",
            });
        };
        if self.mode == Mode::Completed {
            return Err(self.out_of_order("viommu_map"));
        }
        let (gi, hva) = v.resolve(&self.caps, giova, size, gpa, perm)?;
        let (f, l) = gi.bounds();
        if let Some(k) = overlapping_keys(&self.regions, |u| u.gpa.last().raw(), f, l).first() {
            return Err(PlanError::GuestMapOverlap {
                new: (f, l),
                existing: self.regions[k].gpa.bounds(),
            });
        }
        self.add_units(vec![(gi, hva, perm)])
    }

    fn viommu_unmap(&mut self, giova: Iova, size: u64) -> Result<Plan, PlanError> {
        if self.viommu.is_none() {
            return Err(PlanError::NoViommu {
                event: "viommu_unmap",
            });
        }
        if self.mode == Mode::Completed {
            return Err(self.out_of_order("viommu_unmap"));
        }
        let (f, l) = Span::new(giova, size, self.caps.page_size)?.bounds();
        let hit = overlapping_keys(&self.regions, |u| u.gpa.last().raw(), f, l);
        if hit.is_empty() {
            return Err(PlanError::NotMapped { first: f, last: l });
        }
        // The kernel drops whole entries: every entry of a cut map is
        // unmapped, and what stays mapped is mapped again at the same IOVAs
        // (pinned again: counted in the cost). On a set_map device the batch
        // makes the swap atomic for the device.
        let mut b = PlanBuilder::new();
        let mut keep: SmallVec<[Region; 2]> = SmallVec::new();
        for k in &hit {
            let u = &self.regions[k];
            for p in &u.pieces {
                b.invalidate(Phase::Prepare, ASID, p.iova);
            }
            let (uf, ul) = u.gpa.bounds();
            let sides = [(uf < f).then(|| (uf, f - 1)), (ul > l).then(|| (l + 1, ul))];
            for (a, z) in sides.into_iter().flatten() {
                let mut nr = Region {
                    gpa: Span::trusted(a, z - a + 1),
                    hva: u.hva_of(a),
                    perm: u.perm,
                    pieces: SmallVec::new(),
                };
                for p in &u.pieces {
                    if let Some(c) = clip_piece(p, a, z) {
                        Self::map_piece(&mut b, Phase::Prepare, &nr, &c);
                        nr.pieces.push(c);
                    }
                }
                keep.push(nr);
            }
        }
        let plan = b.finish(&self.caps);
        // Nothing below can fail: commit.
        for k in &hit {
            let u = self.regions.remove(k).expect("found above");
            let (cf, cl) = (u.gpa.first().raw().max(f), u.gpa.last().raw().min(l));
            self.xlate.remove(cf..=cl);
            if let Some(s) = &mut self.svq {
                for p in &u.pieces {
                    if !p.is_identity() {
                        s.entries.remove(&p.iova.first().raw());
                    }
                    // The unmapped part's IOVAs are free again.
                    if let Some(cut) = clip_piece(p, cf, cl) {
                        let freed = s.free(cut.iova);
                        debug_assert!(freed, "a mapped piece is not free space");
                    }
                }
                let (uf, ul) = u.gpa.bounds();
                s.release(uf, ul);
            }
        }
        let mut staged = BTreeMap::new();
        for nr in keep {
            let key = nr.gpa.first().raw();
            if let Some(s) = &mut self.svq {
                for p in nr.pieces.iter().filter(|p| !p.is_identity()) {
                    s.entries.insert(
                        p.iova.first().raw(),
                        SvqEntry::Displaced {
                            region: key,
                            piece: *p,
                        },
                    );
                }
            }
            staged.insert(key, nr);
        }
        self.commit_regions(staged);
        Ok(plan)
    }

    fn mapped(&self) -> Vec<(u32, Entry)> {
        let mut v = Vec::new();
        for r in self.regions.values() {
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
        v
    }

    fn placements(&self) -> Vec<Placement> {
        self.regions
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

    fn translate(&self, gpa: Gpa, len: u64) -> Result<Segments, PlanError> {
        translate_with(
            |a| self.flat.lookup(a),
            gpa,
            len,
            |g| {
                self.regions
                    .range(..=g)
                    .next_back()
                    .is_some_and(|(_, r)| r.gpa.contains(Gpa(g)))
            },
        )
    }
}

/// Places every size of `sizes` whole in one of the free ranges `free`
/// (inclusive, disjoint), or `None` when no placement exists: an exhaustive
/// search, largest piece first, that tries each distinct remaining hole
/// size once per piece. Bounded to 100,000 steps (far beyond the few pieces
/// one event moves); past that it answers `None`. Returns the spans in the
/// order of `sizes`.
fn pack(free: &[(u64, u64)], sizes: &[u64]) -> Option<Vec<Span<Iova>>> {
    fn go(
        order: &[usize],
        sizes: &[u64],
        room: &mut [u128],
        pick: &mut [usize],
        budget: &mut u32,
    ) -> bool {
        let Some((&i, rest)) = order.split_first() else {
            return true;
        };
        let need = u128::from(sizes[i]);
        let mut tried: SmallVec<[u128; 8]> = SmallVec::new();
        for h in 0..room.len() {
            let r = room[h];
            if r < need || tried.contains(&r) {
                continue;
            }
            if *budget == 0 {
                return false;
            }
            *budget -= 1;
            tried.push(r);
            room[h] = r - need;
            pick[i] = h;
            let ok = go(rest, sizes, room, pick, budget);
            room[h] = r;
            if ok {
                return true;
            }
        }
        false
    }
    if sizes.contains(&0) {
        return None;
    }
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| core::cmp::Reverse(sizes[i]));
    // Bytes left in each hole (a hole may span all 2^64 addresses).
    let mut room: Vec<u128> = free.iter().map(|&(f, l)| u128::from(l - f) + 1).collect();
    let mut pick = vec![0usize; sizes.len()];
    let mut budget = 100_000u32;
    if !go(&order, sizes, &mut room, &mut pick, &mut budget) {
        return None;
    }
    // Lay the pieces of each hole out from its start, in search order.
    let mut next: Vec<u64> = free.iter().map(|&(f, _)| f).collect();
    let mut out = vec![Span::trusted(0, 1); sizes.len()];
    for &i in &order {
        let h = pick[i];
        out[i] = Span::trusted(next[h], sizes[i]);
        next[h] = next[h].wrapping_add(sizes[i]);
    }
    Some(out)
}

/// The claims (`first -> last`) overlapping `[f, l]`, by address.
fn claims_in(claims: &BTreeMap<u64, u64>, f: u64, l: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
    let before = claims
        .range(..f)
        .next_back()
        .filter(|(_, &cl)| cl >= f)
        .map(|(&a, &b)| (a, b));
    before
        .into_iter()
        .chain(claims.range(f..=l).map(|(&a, &b)| (a, b)))
}

/// The part of `p` mapping guest addresses `[a, z]`, at the same offset.
fn clip_piece(p: &Piece, a: u64, z: u64) -> Option<Piece> {
    let (pf, pl) = p.gpa.bounds();
    let (x, y) = (pf.max(a), pl.min(z));
    (x <= y).then(|| Piece {
        gpa: Span::trusted(x, y - x + 1),
        iova: Span::trusted(p.iova.first().raw() + (x - pf), y - x + 1),
    })
}
