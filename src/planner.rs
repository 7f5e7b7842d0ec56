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
//! * **Failback** moves displaced memory back to identity. Only what stands
//!   in the way of an identity map (vrings, displaced entries) is unmapped
//!   while the device is stopped; everything else is torn down after the
//!   device runs on the guest's rings again.
//!
//! # Cost
//! A prepared switch is O(1) and emits no operation. Hotplug, unplug and
//! `translate` are O(log n) in the number of regions (plus the vrings or
//! displaced entries a collision moves). Failback is O(d log n) in the number
//! of displaced entries.

use std::collections::BTreeMap;

use rangemap::RangeInclusiveMap;
use smallvec::{smallvec, SmallVec};

use crate::addr::{Address, Gpa, Hva, Iova, Span};
use crate::alloc::IovaAllocator;
use crate::caps::DeviceCaps;
use crate::error::PlanError;
use crate::plan::{Perm, Phase, Plan, PlanBuilder};
use crate::strategy::{
    validate_regions, Mode, Piece, Placement, RegionSpec, Segment, Segments, Strategy,
};
use crate::svq::{areas, QueueLayout, SvqConfig, VringArea};

/// The address space guest memory and vrings use (this planner keeps one).
const ASID: u32 = 0;

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
pub(crate) struct Xlate {
    /// `iova - gpa`, wrapping: storing the offset rather than the IOVA keeps
    /// the range map from merging neighbours that translate differently.
    delta: u64,
    perm: Perm,
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
    alloc: IovaAllocator,
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

    fn alloc(&mut self, size: u64, purpose: &'static str) -> Result<Span<Iova>, PlanError> {
        self.alloc.alloc(size).ok_or(PlanError::OutOfIova {
            needed: size,
            purpose,
            window: Some(self.alloc.window()),
            largest_free: self.alloc.largest_free(),
        })
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
        Planner::map_piece(b, phase, r, &piece);
        r.pieces.push(piece);
        Ok(())
    }

    fn map_queue(&self, b: &mut PlanBuilder, phase: Phase, vq: u32, iova: u64) {
        let [desc, _, dev] = areas(&self.cfg, &self.layout, vq, iova);
        b.update(
            phase,
            ASID,
            Span::trusted(iova, self.layout.ro()),
            desc.hva,
            Perm::Ro,
        );
        b.update(phase, ASID, dev.iova, dev.hva, Perm::Rw);
    }

    fn unmap_queue(&self, b: &mut PlanBuilder, phase: Phase, iova: u64) {
        b.invalidate(phase, ASID, Span::trusted(iova, self.layout.ro()));
        b.invalidate(
            phase,
            ASID,
            Span::trusted(iova + self.layout.ro(), self.layout.device),
        );
    }
}

/// The identity planner. See the [module documentation](self).
#[derive(Clone, Debug)]
pub struct Planner {
    caps: DeviceCaps,
    /// The device range shrunk to whole pages.
    usable: (u64, u64),
    max_gpa: Option<u64>,
    mode: Mode,
    regions: BTreeMap<u64, Region>,
    xlate: RangeInclusiveMap<u64, Xlate>,
    svq: Option<SvqState>,
}

impl Planner {
    /// A planner for a device with `caps`, with nothing mapped yet.
    ///
    /// `max_gpa` is the exclusive end of guest-physical memory: no region will
    /// ever reach it or beyond (QEMU: the end of the device-memory area sized
    /// by `maxmem`). `None` takes the end of the highest region present when
    /// the window is chosen, which leaves memory hot-plugged above it to the
    /// collision handling.
    ///
    /// # Errors
    /// Capabilities that fail [`DeviceCaps::validate`].
    pub fn new(caps: DeviceCaps, max_gpa: Option<u64>) -> Result<Self, PlanError> {
        caps.validate()?;
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
        Ok(Planner {
            caps,
            usable: (first, last),
            max_gpa,
            mode: Mode::Passthrough,
            regions: BTreeMap::new(),
            xlate: RangeInclusiveMap::new(),
            svq: None,
        })
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

    /// The effective `max_gpa` now.
    pub fn max_gpa(&self) -> u64 {
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
        let mut candidates: SmallVec<[IovaAllocator; 2]> = SmallVec::new();
        if let Some(floor) = p.align_up(self.max_gpa().max(uf)) {
            if let Some(mut a) = IovaAllocator::new(floor, ul, p) {
                for r in self.regions.values().rev() {
                    if r.gpa.last().raw() < floor {
                        break;
                    }
                    a.carve(r.gpa.first().raw(), r.gpa.last().raw());
                }
                candidates.push(a);
            }
        }
        if let Some(mut a) = IovaAllocator::new(uf, ul, p) {
            for r in self.regions.values() {
                a.carve(r.gpa.first().raw(), r.gpa.last().raw());
            }
            candidates.push(a);
        }
        let mut last_err = PlanError::OutOfIova {
            needed: layout.total(),
            purpose: "shadow vrings",
            window: None,
            largest_free: 0,
        };
        for alloc in candidates {
            let mut s = SvqState {
                cfg,
                layout,
                alloc,
                queues: Vec::new(),
                entries: BTreeMap::new(),
            };
            match self.fill_svq(&mut s, phase) {
                Ok((plan, staged)) => return Ok((plan, s, staged)),
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
            let blk = s.alloc(s.layout.total(), "shadow vrings")?;
            let f = blk.first().raw();
            s.queues.push(f);
            s.entries.insert(
                f,
                SvqEntry::Queue {
                    vq,
                    last: blk.last().raw(),
                },
            );
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
    }

    fn out_of_order(&self, event: &'static str) -> PlanError {
        PlanError::OutOfOrder {
            event,
            mode: self.mode,
        }
    }

    /// Unmaps every svq entry except those in `skip`, in `phase`.
    fn teardown_svq(s: &SvqState, b: &mut PlanBuilder, phase: Phase, skip: &BTreeMap<u64, ()>) {
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

impl Strategy for Planner {
    fn name(&self) -> &'static str {
        "identity"
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
        let specs = validate_regions(&self.caps, specs, |f, l| {
            let (_, r) = self.regions.range(..=l).next_back()?;
            (r.gpa.last().raw() >= f).then(|| r.gpa.bounds())
        })?;
        let mut b = PlanBuilder::new();
        let mut staged: BTreeMap<u64, Region> = BTreeMap::new();
        let mut svq = self.svq.clone();
        for (g, spec) in specs {
            let mut r = Region {
                gpa: g,
                hva: spec.hva,
                perm: spec.perm(),
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
                    if let Some(i) = inside {
                        let (f, l) = i.bounds();
                        let hits = s.overlapping(f, l);
                        s.alloc.carve(f, l);
                        if hits.is_empty() || mode == Mode::Prepared {
                            // Prepared: the guest addresses memory by GPA, so
                            // whatever is in the way moves, not the memory.
                            for (at, e) in hits {
                                s.entries.remove(&at);
                                match e {
                                    SvqEntry::Queue { vq, .. } => {
                                        s.unmap_queue(&mut b, Phase::Prepare, at);
                                        let blk =
                                            s.alloc(s.layout.total(), "moving a shadow vring")?;
                                        let nf = blk.first().raw();
                                        s.queues[vq as usize] = nf;
                                        s.entries.insert(
                                            nf,
                                            SvqEntry::Queue {
                                                vq,
                                                last: blk.last().raw(),
                                            },
                                        );
                                        s.map_queue(&mut b, Phase::Prepare, vq, nf);
                                    }
                                    SvqEntry::Displaced { region, piece } => {
                                        b.invalidate(Phase::Prepare, ASID, piece.iova);
                                        let iova =
                                            s.alloc(piece.gpa.size(), "moving displaced memory")?;
                                        let np = Piece {
                                            gpa: piece.gpa,
                                            iova,
                                        };
                                        let mut owner = match self.lookup_region(&staged, region) {
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
                                        Self::map_piece(&mut b, Phase::Prepare, &owner, &np);
                                        if region == r.gpa.first().raw() {
                                            r = owner;
                                        } else {
                                            staged.insert(region, owner);
                                        }
                                    }
                                }
                            }
                            let piece = Self::identity(i);
                            Self::map_piece(&mut b, Phase::Prepare, &r, &piece);
                            r.pieces.push(piece);
                        } else {
                            s.displace(
                                &mut b,
                                Phase::Prepare,
                                g.first().raw(),
                                &mut r,
                                i,
                                "displaced hot-plugged memory",
                            )?;
                        }
                    }
                    for o in outs {
                        s.displace(
                            &mut b,
                            Phase::Prepare,
                            g.first().raw(),
                            &mut r,
                            o,
                            "guest memory outside the device range",
                        )?;
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

    fn remove_region(&mut self, gpa: Gpa) -> Result<Plan, PlanError> {
        if self.mode == Mode::Completed {
            return Err(self.out_of_order("unplug"));
        }
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
            for p in r.pieces.iter().filter(|p| !p.is_identity()) {
                s.entries.remove(&p.iova.first().raw());
                let freed = s.alloc.free(p.iova);
                debug_assert!(freed, "displaced memory was allocated from the window");
            }
            // Identity memory inside the window stays carved out until the
            // window is dropped at failback or completion: a region plugged
            // there again finds its identity range free, which is all it needs.
        }
        let (f, l) = r.gpa.bounds();
        self.xlate.remove(f..=l);
        Ok(plan)
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
        self.mode = Mode::Completed;
        Ok(plan)
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
            .flat_map(|(vq, &iova)| areas(&s.cfg, &s.layout, vq as u32, iova))
            .collect()
    }

    fn translate(&self, gpa: Gpa, len: u64) -> Result<Segments, PlanError> {
        translate_map(&self.xlate, gpa, len, |g| {
            self.regions
                .range(..=g)
                .next_back()
                .is_some_and(|(_, r)| r.gpa.contains(Gpa(g)))
        })
    }
}

/// The translation walk shared by the strategies.
pub(crate) fn translate_map(
    xlate: &RangeInclusiveMap<u64, Xlate>,
    gpa: Gpa,
    len: u64,
    is_guest: impl Fn(u64) -> bool,
) -> Result<Segments, PlanError> {
    if len == 0 {
        return Err(PlanError::ZeroSize {
            kind: "gpa",
            first: gpa.raw(),
        });
    }
    let last = gpa.raw().checked_add(len - 1).ok_or(PlanError::Wraps {
        kind: "gpa",
        first: gpa.raw(),
        size: len,
    })?;
    let mut out: Segments = smallvec![];
    let mut cur = gpa.raw();
    loop {
        match xlate.get_key_value(&cur) {
            Some((r, x)) => {
                let end = (*r.end()).min(last);
                out.push(Segment {
                    iova: Iova(cur.wrapping_add(x.delta)),
                    len: end - cur + 1,
                    perm: x.perm,
                });
                if end == last {
                    return Ok(out);
                }
                cur = end + 1;
            }
            None if is_guest(cur) => return Err(PlanError::Unreachable { gpa: cur }),
            None => return Err(PlanError::NotGuestMemory { gpa: cur }),
        }
    }
}

/// The GPA -> IOVA translation map, shared with the baseline strategy.
pub(crate) type XlateMap = RangeInclusiveMap<u64, Xlate>;

pub(crate) fn xlate_entry(delta: u64, perm: Perm) -> Xlate {
    Xlate { delta, perm }
}
