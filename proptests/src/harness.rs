//! Drives the identity planner with one event at a time, replays every plan
//! on the strict kernel model and checks the device page by page against the
//! [`PageModel`]. Shared by the state-machine property test, the fuzz targets
//! and the corpus replay test. Every failed check panics with what differs.

use std::collections::BTreeMap;

use vdpa_iova_planner::verify::replay::{self, StepError};
use vdpa_iova_planner::{
    DeviceCaps, Entry, Event, Gpa, GuestView, IdentityPlanner, KernelIotlb, Mode, Perm, Phase,
    Placement, PlanError, Strategy, VringArea, GUEST_ASID,
};

use crate::model::{Expect, ModelMode, PageModel, PAGE};

/// How the planner under test is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    /// The device.
    pub caps: DeviceCaps,
    /// `max_gpa` given to the planner.
    pub max_gpa: Option<u64>,
    /// `Some(viommu_last)` for a vIOMMU guest.
    pub viommu_last: Option<u64>,
    /// Vrings in their own address space (only when the caps allow it).
    pub separate_asid: bool,
}

impl Setup {
    /// Builds the planner.
    pub fn build(&self) -> IdentityPlanner {
        let mut b = IdentityPlanner::builder(self.caps).separate_vring_asid(self.separate_asid);
        if let Some(m) = self.max_gpa {
            b = b.max_gpa(m);
        }
        if let Some(l) = self.viommu_last {
            b = b.viommu(l);
        }
        b.build().expect("setups are valid")
    }
}

/// The planner, the kernel model it programs, and the reference.
#[derive(Clone, Debug)]
pub struct Harness {
    /// The planner under test.
    pub planner: IdentityPlanner,
    /// The kernel's IOTLB.
    pub kernel: KernelIotlb,
    /// The reference.
    pub model: PageModel,
    /// What the device must reach, for the layout check of the replay loop.
    pub guest: GuestView,
    /// Events applied, refused, and refused for lack of IOVA space.
    pub stats: (u64, u64, u64),
}

type Snapshot = (
    Vec<Placement>,
    Vec<VringArea>,
    Mode,
    Vec<(u32, Entry)>,
    KernelIotlb,
);

impl Harness {
    /// A fresh planner on an empty device.
    pub fn new(setup: &Setup) -> Self {
        Harness {
            planner: setup.build(),
            kernel: KernelIotlb::new(&setup.caps),
            model: PageModel::new(setup.caps, setup.viommu_last),
            guest: GuestView::new(setup.viommu_last.is_some()),
            stats: (0, 0, 0),
        }
    }

    fn snapshot(&self) -> Snapshot {
        let s = &self.planner;
        (
            s.placements(),
            s.vring_areas(),
            s.mode(),
            s.mapped(),
            self.kernel.clone(),
        )
    }

    /// Feeds one event through the replay loop and checks everything.
    pub fn step(&mut self, ev: &Event) {
        let expect = self.model.expect(ev);
        let before = self.snapshot();
        let prepared_switch =
            matches!(ev, Event::SvqSwitch(_)) && self.model.mode == ModelMode::Prepared;
        let paused = self.model.mode == ModelMode::Switchover;
        let step = replay::step(&mut self.planner, &mut self.kernel, &mut self.guest, ev);
        match (step, expect) {
            (Err(StepError::Plan(e)), Expect::Refuse) => self.refused(ev, e, before, false),
            (
                Err(StepError::Plan(e @ PlanError::OutOfIova { .. })),
                Expect::AcceptUnlessOutOfIova,
            ) => {
                self.refused(ev, e, before, true);
                self.assert_nothing_fits(ev);
            }
            (Err(StepError::Plan(e)), _) => panic!("{ev:?} refused but the model accepts it: {e}"),
            (Err(e), _) => panic!("{ev:?}: {e}"),
            (Ok(s), Expect::Refuse) => {
                panic!("{ev:?} accepted but the model refuses it: {:?}", s.plan)
            }
            (Ok(s), _) => {
                self.stats.0 += 1;
                self.model.apply(ev);
                let plan = &s.plan;
                if let Some(i) = s.outcome.dropped.iter().position(|&n| n != 1) {
                    panic!("{ev:?}: invalidate {i} must drop exactly one entry: {plan:?}");
                }
                assert_eq!(self.kernel.open_batch(), None, "{ev:?} leaves a batch open");
                assert_eq!(
                    (s.outcome.unpinned_bytes, s.outcome.critical_unpinned_bytes),
                    (
                        plan.cost().unpinned_bytes,
                        plan.cost().critical_unpinned_bytes
                    ),
                    "{ev:?}: reported unpinned bytes differ from what the kernel model unpinned"
                );
                if prepared_switch {
                    assert!(plan.is_empty(), "a prepared switch must be free: {plan:?}");
                }
                // Between the source's stop and the start the guest is
                // paused: whatever is sent is inside the downtime.
                if paused {
                    assert!(
                        plan.ops().iter().all(|o| o.phase == Phase::Critical),
                        "{ev:?} while the guest is paused must be booked in the downtime: {plan:?}"
                    );
                }
                self.check();
            }
        }
    }

    fn refused(&mut self, ev: &Event, e: PlanError, before: Snapshot, oom: bool) {
        self.stats.1 += 1;
        self.stats.2 += u64::from(oom);
        assert!(!e.to_string().is_empty());
        assert!(
            before == self.snapshot(),
            "{ev:?} was refused ({e}) but changed the planner's state"
        );
    }

    /// The device, page by page, equals the reference plus the vrings the
    /// planner reports, and `translate` agrees with both.
    pub fn check(&self) {
        let s = &self.planner;
        let m = &self.model;
        let range = m.caps.range;
        let mut want: BTreeMap<(u32, u64), (u64, Perm)> = BTreeMap::new();
        for (&g, &(hva, perm)) in &m.pages {
            let in_range = range.contains_bounds(g, g + (PAGE - 1));
            // Prepared, memory outside the range is already displaced (so the
            // switch costs nothing) or not yet: both are fine; in passthrough
            // it is unreachable; in SVQ mode everything is reachable.
            match (s.translate(Gpa(g), PAGE), m.mode) {
                (
                    Err(PlanError::Unreachable { .. }),
                    ModelMode::Passthrough
                    | ModelMode::Prepared
                    | ModelMode::Incoming
                    | ModelMode::Switchover,
                ) if !in_range => {}
                (Ok(seg), ModelMode::Prepared) if !in_range => {
                    assert_eq!(seg.len(), 1);
                    assert_eq!(seg[0].perm, perm);
                    let iova = seg[0].iova.0;
                    assert!(range.contains_bounds(iova, iova + (PAGE - 1)));
                    assert!(want.insert((GUEST_ASID, iova), (hva, perm)).is_none());
                }
                (
                    Ok(seg),
                    ModelMode::Passthrough
                    | ModelMode::Prepared
                    | ModelMode::Incoming
                    | ModelMode::Switchover,
                ) if in_range => {
                    assert_eq!(seg.len(), 1);
                    assert_eq!(
                        seg[0].iova.0, g,
                        "passthrough memory at {g:#x} must be identity"
                    );
                    assert_eq!(seg[0].perm, perm);
                    assert!(want.insert((GUEST_ASID, g), (hva, perm)).is_none());
                }
                (Ok(seg), ModelMode::Svq) => {
                    assert_eq!(seg.len(), 1);
                    assert_eq!(seg[0].perm, perm);
                    let iova = seg[0].iova.0;
                    assert!(range.contains_bounds(iova, iova + (PAGE - 1)));
                    assert!(
                        want.insert((GUEST_ASID, iova), (hva, perm)).is_none(),
                        "two guest pages at iova {iova:#x}"
                    );
                }
                (Err(_), ModelMode::Completed) => {}
                (r, mode) => panic!("translate({g:#x}) in {mode:?} (in range: {in_range}): {r:?}"),
            }
        }
        let areas = s.vring_areas();
        let busy = matches!(m.mode, ModelMode::Prepared | ModelMode::Svq);
        assert_eq!(
            areas.len() as u64,
            if busy { 3 * u64::from(m.queues) } else { 0 },
            "vring areas in {:?}",
            m.mode
        );
        for (asid, e) in s.buffer_entries() {
            for i in 0..e.iova.size() / PAGE {
                let k = (asid, e.iova.first().0 + i * PAGE);
                assert!(
                    want.insert(k, (e.hva.0 + i * PAGE, e.perm)).is_none(),
                    "host buffer page {k:x?} also maps something else"
                );
            }
        }
        for a in &areas {
            for i in 0..a.iova.size() / PAGE {
                let k = (a.asid, a.iova.first().0 + i * PAGE);
                assert!(
                    want.insert(k, (a.hva.0 + i * PAGE, a.perm())).is_none(),
                    "vring page {k:x?} also maps guest memory"
                );
            }
        }
        let mut have: BTreeMap<(u32, u64), (u64, Perm)> = BTreeMap::new();
        for (asid, table) in self.kernel.device_tables().iter().enumerate() {
            for e in table {
                for i in 0..e.iova.size() / PAGE {
                    have.insert(
                        (asid as u32, e.iova.first().0 + i * PAGE),
                        (e.hva.0 + i * PAGE, e.perm),
                    );
                }
            }
        }
        if want != have {
            let diff = want
                .iter()
                .find(|(k, v)| have.get(k) != Some(v))
                .map(|(k, v)| (*k, Some(*v), have.get(k).copied()))
                .or_else(|| {
                    have.iter()
                        .find(|(k, _)| !want.contains_key(k))
                        .map(|(k, v)| (*k, None, Some(*v)))
                });
            panic!("device differs from the reference at (asid, iova, want, have) {diff:x?}");
        }
        // Addresses the guest does not own are refused.
        for probe in [
            0,
            PAGE,
            1 << 32,
            u64::MAX - (PAGE - 1),
            m.caps.range.last() & !(PAGE - 1),
        ] {
            if !m.pages.contains_key(&probe)
                && !m
                    .regions
                    .iter()
                    .any(|r| m.viommu_last.is_none() && probe >= r.0 && probe - r.0 < r.1)
            {
                assert!(
                    matches!(
                        s.translate(Gpa(probe), 1),
                        Err(PlanError::NotGuestMemory { .. })
                    ),
                    "translate({probe:#x}) of no guest memory: {:?}",
                    s.translate(Gpa(probe), 1)
                );
            }
        }
    }
}

/// Free ranges `[first, last]` of `[lo, hi]` once `taken` (any order,
/// possibly overlapping) is removed.
fn holes_of(lo: u64, hi: u64, taken: &mut [(u64, u64)]) -> Vec<(u64, u64)> {
    taken.sort_unstable();
    let mut out = Vec::new();
    let mut cur = Some(lo);
    for &(f, l) in taken.iter() {
        let Some(c) = cur else { break };
        if l < c {
            continue;
        }
        if f > c {
            out.push((c, (f - 1).min(hi)));
        }
        cur = l.checked_add(1);
    }
    if let Some(c) = cur.filter(|&c| c <= hi) {
        out.push((c, hi));
    }
    out.retain(|&(f, l)| f <= l && f <= hi);
    out
}

/// Whether `pieces` (sizes) can all be placed in `holes` (sizes), each
/// piece whole in one hole: an exhaustive search.
fn fits(pieces: &[u64], holes: &mut [u64]) -> bool {
    let Some((&p, rest)) = pieces.split_first() else {
        return true;
    };
    for i in 0..holes.len() {
        if holes[i] >= p {
            holes[i] -= p;
            let ok = fits(rest, holes);
            holes[i] += p;
            if ok {
                return true;
            }
        }
    }
    false
}

impl Harness {
    /// The planner said "out of IOVA" for `ev`: checks by exhaustive search
    /// over the free holes of the device's table that no placement of what
    /// the event needs exists. Events with one new unit are searched
    /// exactly; an SVQ setup is checked against its sum fitting one hole.
    pub fn assert_nothing_fits(&self, ev: &Event) {
        let caps = *self.planner.caps();
        let page = caps.page_size.get();
        // Guest memory may be identity at IOVA 0; nothing is allocated there.
        let ulo = caps.range.first().next_multiple_of(page);
        let lo = ulo.max(page);
        let hi = match caps.range.last().checked_add(1) {
            Some(end) => end / page * page - 1,
            None => u64::MAX,
        };
        if lo > hi {
            return;
        }
        let shared = self.planner.vring_asid() == GUEST_ASID;
        let table: Vec<(u64, u64)> = self
            .kernel
            .entries(GUEST_ASID)
            .map(|e| (e.iova.first().0, e.iova.last().0))
            .collect();
        let split = |f: u64, size: u64| {
            let l = f + (size - 1);
            let mut outs = Vec::new();
            if f < ulo {
                outs.push(ulo.min(l + 1) - f);
            }
            if l > hi {
                outs.push(if f > hi { l - f + 1 } else { l - hi });
            }
            let inside = (l >= ulo && f <= hi).then(|| (f.max(ulo), l.min(hi)));
            (inside, outs)
        };
        let unit = match ev {
            Event::Hotplug(r) => Some((r.gpa.0, r.size)),
            Event::Boot(r) if r.len() == 1 => Some((r[0].gpa.0, r[0].size)),
            Event::ViommuMap { giova, size, .. } => Some((giova.0, *size)),
            _ => None,
        };
        if let Some((f, size)) = unit {
            let (inside, mut pieces) = split(f, size);
            // Blocks in the guest's address space that may move or be in the way.
            let mut blocks: Vec<(u64, u64)> = Vec::new();
            if shared {
                let areas = self.planner.vring_areas();
                for q in areas.chunks(3) {
                    blocks.push((q[0].iova.first().0, q[2].iova.last().0));
                }
                // Host buffers live beside the vrings and move with them
                // (unless an isolated control queue keeps them in address
                // space 1).
                blocks.extend(
                    self.planner
                        .buffer_entries()
                        .into_iter()
                        .filter(|(asid, _)| *asid == vdpa_iova_planner::GUEST_ASID)
                        .map(|(_, e)| (e.iova.first().0, e.iova.last().0)),
                );
            }
            blocks.extend(
                self.planner
                    .displaced()
                    .iter()
                    .map(|p| (p.iova.first().0, p.iova.last().0)),
            );
            let mut taken = table.clone();
            if let Some((a, z)) = inside {
                let hits: Vec<(u64, u64)> = blocks
                    .iter()
                    .copied()
                    .filter(|&(bf, bl)| bf <= z && bl >= a)
                    .collect();
                match self.planner.mode() {
                    Mode::Svq if !hits.is_empty() => pieces.push(z - a + 1),
                    Mode::Prepared if !hits.is_empty() => {
                        taken
                            .retain(|&(tf, tl)| !hits.iter().any(|&(bf, bl)| bf <= tf && tl <= bl));
                        taken.push((a, z));
                        pieces.extend(hits.iter().map(|&(bf, bl)| bl - bf + 1));
                    }
                    _ => taken.push((a, z)),
                }
            }
            let mut holes: Vec<u64> = holes_of(lo, hi, &mut taken)
                .iter()
                .map(|&(f, l)| l - f + 1)
                .collect();
            pieces.sort_unstable_by(|a, b| b.cmp(a));
            if pieces.len() <= 4 && holes.len() <= 64 {
                assert!(
                    !fits(&pieces, &mut holes),
                    "{ev:?}: out of IOVA, but pieces {pieces:#x?} fit the free holes {:#x?}",
                    holes_of(lo, hi, &mut taken)
                );
            } else {
                let total: u64 = pieces.iter().sum();
                assert!(
                    holes.iter().all(|&h| h < total),
                    "{ev:?}: out of IOVA, but everything ({total:#x} bytes) fits one free hole"
                );
            }
        }
        if let (Event::SvqPrepare(c) | Event::SvqSwitch(Some(c)), true) = (ev, shared) {
            let Ok(rings) = c.host_bytes(caps.page_size) else {
                return;
            };
            let buffers = if caps.cvq_isolated {
                0
            } else {
                self.model.buffers.iter().sum::<u64>()
            };
            let mut total = rings + buffers;
            for p in self.planner.placements() {
                let (_, outs) = split(p.gpa.first().0, p.gpa.size());
                total += outs.iter().sum::<u64>();
            }
            let mut taken = table;
            let holes = holes_of(lo, hi, &mut taken);
            assert!(
                holes.iter().all(|&(f, l)| l - f + 1 < total),
                "{ev:?}: out of IOVA, but everything ({total:#x} bytes) fits the hole {:#x?}",
                holes.iter().find(|&&(f, l)| l - f + 1 >= total)
            );
        }
    }
}
