//! The scenario harness shared by the integration tests: a strategy driven
//! against the kernel model, with the guest tracked independently of it.

#![allow(dead_code)]

use vdpa_iova_planner::layout::{self, LayoutReport};
use vdpa_iova_planner::verify::replay;
use vdpa_iova_planner::{
    DeviceCaps, Entry, Event, Gpa, GuestView, Hva, IdentityPlanner, KernelIotlb, OpKind, Plan,
    PlanError, QemuPlanner, RegionSpec, Strategy, SvqConfig,
};

pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;

/// A strategy driven against the kernel model, with the regions tracked
/// independently of the strategy.
pub struct Rig<S: Strategy> {
    pub s: S,
    pub k: KernelIotlb,
    pub guest: GuestView,
}

impl<S: Strategy> Rig<S> {
    pub fn new(s: S, viommu: bool) -> Self {
        let k = KernelIotlb::new(s.caps());
        Rig {
            s,
            k,
            guest: GuestView::new(viommu),
        }
    }
}

pub fn identity(caps: DeviceCaps, max_gpa: Option<u64>) -> Rig<IdentityPlanner> {
    Rig::new(IdentityPlanner::new(caps, max_gpa).unwrap(), false)
}

pub fn qemu(caps: DeviceCaps) -> Rig<QemuPlanner> {
    Rig::new(QemuPlanner::new(caps).unwrap(), false)
}

pub fn ram(gpa: u64, size: u64) -> RegionSpec {
    RegionSpec {
        gpa: Gpa(gpa),
        size,
        hva: Hva(0x1000_0000_0000 + gpa % (1 << 47)),
        readonly: false,
    }
}

pub fn svq(queues: u32) -> SvqConfig {
    SvqConfig {
        queues,
        queue_size: 256,
        hva: Hva(0x7e00_0000_0000),
    }
}

impl<S: Strategy> Rig<S> {
    pub fn step(&mut self, ev: Event) -> (Plan, LayoutReport) {
        let name = self.s.name();
        let step = replay::step(&mut self.s, &mut self.k, &mut self.guest, &ev)
            .unwrap_or_else(|e| panic!("{name}: {ev:?}: {e}"));
        let plan = step.plan;
        // QEMU sends guest unmaps whatever they hit; this crate never does.
        if name != "qemu" {
            if let Some(i) = step.outcome.dropped.iter().position(|&n| n == 0) {
                panic!("{name}: {ev:?}: invalidate {i} drops nothing");
            }
        }
        assert_eq!(self.k.open_batch(), None, "plan leaves a batch open");
        // What the kernel really unpins: the whole entries each INVALIDATE drops.
        assert_eq!(
            (
                step.outcome.unpinned_bytes,
                step.outcome.critical_unpinned_bytes
            ),
            (
                plan.cost().unpinned_bytes,
                plan.cost().critical_unpinned_bytes
            ),
            "{name}: {ev:?}: unpinned bytes reported differ from what the kernel model unpinned"
        );
        let rep = step.layout;
        // What the strategy says it mapped is what the vhost table holds.
        let mut mapped: Vec<(u32, Entry)> = self.s.mapped();
        mapped.sort();
        let mut table: Vec<(u32, Entry)> = (0..self.s.caps().address_spaces.min(4))
            .flat_map(|a| self.k.entries(a).map(move |e| (a, *e)))
            .collect();
        table.sort();
        assert_eq!(mapped, table, "{}: mapped() after {ev:?}", self.s.name());
        (plan, rep)
    }

    /// An event that must be refused and change nothing.
    pub fn refuse(&mut self, ev: Event) -> PlanError {
        let state = |s: &S| (s.placements(), s.vring_areas(), s.mode(), s.mapped());
        let before = state(&self.s);
        let err = self.s.apply(&ev).expect_err("must be refused");
        assert_eq!(before, state(&self.s), "{err} changed state");
        layout::check(&self.k.device_tables(), &self.s, &self.guest).unwrap();
        err
    }
}

pub fn guest_ops(plan: &Plan, guest: &[RegionSpec]) -> usize {
    plan.ops()
        .iter()
        .filter(|op| match op.kind {
            OpKind::Update { hva, .. } => guest
                .iter()
                .any(|r| r.hva.0 <= hva.0 && hva.0 < r.hva.0 + r.size),
            OpKind::Invalidate { iova } => guest
                .iter()
                .any(|r| iova.first().0 < r.gpa.0 + r.size && r.gpa.0 <= iova.last().0),
            _ => false,
        })
        .count()
}

pub trait RigDyn {
    fn step_dyn(&mut self, ev: Event) -> Plan;
}
impl<S: Strategy> RigDyn for Rig<S> {
    fn step_dyn(&mut self, ev: Event) -> Plan {
        self.step(ev).0
    }
}
