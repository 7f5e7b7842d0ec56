//! Drives the identity planner with one event at a time, replays every plan
//! on the strict kernel model and checks the device page by page against the
//! [`PageModel`]. Shared by the state-machine property test, the fuzz targets
//! and the corpus replay test. Every failed check panics with what differs.

use std::collections::BTreeMap;

use vdpa_iova_planner::kernel::Applied;
use vdpa_iova_planner::{
    Cost, DeviceCaps, Entry, Event, Gpa, KernelIotlb, Mode, OpKind, Perm, Phase, Placement, Plan,
    PlanError, Planner, Strategy, VringArea, GUEST_ASID,
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
    pub fn build(&self) -> Planner {
        let mut b = Planner::builder(self.caps).separate_vring_asid(self.separate_asid);
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
    pub planner: Planner,
    /// The kernel's IOTLB.
    pub kernel: KernelIotlb,
    /// The reference.
    pub model: PageModel,
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

    /// Feeds one event and checks everything.
    pub fn step(&mut self, ev: &Event) {
        let expect = self.model.expect(ev);
        let before = self.snapshot();
        match (self.planner.apply(ev), expect) {
            (Err(e), Expect::Refuse) => self.refused(ev, e, before, false),
            (Err(e @ PlanError::OutOfIova { .. }), Expect::AcceptUnlessOutOfIova) => {
                self.refused(ev, e, before, true)
            }
            (Err(e), _) => panic!("{ev:?} refused but the model accepts it: {e}"),
            (Ok(p), Expect::Refuse) => panic!("{ev:?} accepted but the model refuses it: {p:?}"),
            (Ok(plan), _) => {
                self.stats.0 += 1;
                let prepared_switch =
                    matches!(ev, Event::SvqSwitch(_)) && self.model.mode == ModelMode::Prepared;
                self.model.apply(ev);
                self.replay(ev, &plan);
                if prepared_switch {
                    assert!(plan.is_empty(), "a prepared switch must be free: {plan:?}");
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

    fn replay(&mut self, ev: &Event, plan: &Plan) {
        let caps = *self.planner.caps();
        check_shape(plan, &caps);
        if *ev == Event::Reset {
            self.kernel.reset_device();
        }
        for (i, op) in plan.ops().iter().enumerate() {
            match self.kernel.apply(op) {
                Ok(Applied::Unmapped(gone)) => {
                    assert_eq!(
                        gone.len(),
                        1,
                        "{ev:?}: op {i} {op:?} must drop exactly one entry"
                    )
                }
                Ok(_) => {}
                Err(v) => panic!("{ev:?}: op {i} {op:?} refused by the kernel model: {v}"),
            }
        }
        assert_eq!(self.kernel.open_batch(), None, "{ev:?} leaves a batch open");
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
                    ModelMode::Passthrough | ModelMode::Prepared,
                ) if !in_range => {}
                (Ok(seg), ModelMode::Prepared) if !in_range => {
                    assert_eq!(seg.len(), 1);
                    assert_eq!(seg[0].perm, perm);
                    let iova = seg[0].iova.0;
                    assert!(range.contains_bounds(iova, iova + (PAGE - 1)));
                    assert!(want.insert((GUEST_ASID, iova), (hva, perm)).is_none());
                }
                (Ok(seg), ModelMode::Passthrough | ModelMode::Prepared) if in_range => {
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

/// Phases in order, batches only when the device batches and never across a
/// phase or an asid, and the cost what the ops add up to, recounted here.
pub fn check_shape(plan: &Plan, caps: &DeviceCaps) {
    let ops = plan.ops();
    assert!(
        ops.windows(2).all(|w| w[0].phase <= w[1].phase),
        "phases out of order: {ops:?}"
    );
    let mut open: Option<(Phase, u32)> = None;
    let mut c = Cost::default();
    for op in ops {
        let crit = op.phase == Phase::Critical;
        c.messages += 1;
        c.critical_messages += u64::from(crit);
        match op.kind {
            OpKind::BatchBegin => {
                assert!(caps.batching && open.is_none(), "bad batch begin: {ops:?}");
                open = Some((op.phase, op.asid));
            }
            OpKind::BatchEnd => {
                assert_eq!(
                    open.take(),
                    Some((op.phase, op.asid)),
                    "bad batch end: {ops:?}"
                );
                c.critical_batch_ends += u64::from(crit);
            }
            OpKind::Update { iova, .. } | OpKind::Invalidate { iova } => {
                if let Some(o) = open {
                    assert_eq!(
                        o,
                        (op.phase, op.asid),
                        "batch spans phases or asids: {ops:?}"
                    );
                }
                if caps.pinning {
                    let n = iova.size();
                    if matches!(op.kind, OpKind::Update { .. }) {
                        c.pinned_bytes += n;
                        c.critical_pinned_bytes += if crit { n } else { 0 };
                    } else {
                        c.unpinned_bytes += n;
                        c.critical_unpinned_bytes += if crit { n } else { 0 };
                    }
                }
            }
        }
    }
    assert!(open.is_none(), "unclosed batch");
    assert_eq!(&c, plan.cost(), "reported cost differs from the ops");
}
