//! The checkers themselves: `layout::check` must catch a device table that
//! differs from what the strategy reports (and say where), and a `translate`
//! that disagrees with the placements; its report counts what it saw.

mod common;

use common::*;
use vdpa_iova_planner::layout::{self, LayoutError};
use vdpa_iova_planner::{
    DeviceCaps, DeviceRange, Entry, Event, Gpa, HostBuffer, Iova, Mode, Perm, Placement, Plan,
    PlanError, RegionSpec, Segments, Span, Strategy, SvqConfig, VringArea,
};

fn booted() -> Rig<vdpa_iova_planner::IdentityPlanner> {
    let mut id = identity(DeviceCaps::default(), Some(64 * GIB));
    id.step(Event::Boot(vec![ram(0, 16 * MIB), ram(32 * MIB, 16 * MIB)]));
    id
}

fn mismatch(tables: &[Vec<Entry>], id: &Rig<vdpa_iova_planner::IdentityPlanner>) -> LayoutError {
    layout::check(tables, &id.s, &id.guest).expect_err("the tables differ")
}

/// A missing entry, an extra one, one mapping other memory, and one cut
/// short: each reported at the first IOVA that differs, with both sides.
#[test]
fn a_table_that_differs_is_reported_where_it_differs() {
    let id = booted();
    let tables = id.k.device_tables();
    assert!(layout::check(&tables, &id.s, &id.guest).is_ok());
    let good = &tables[0];
    let hva = |gpa: u64| ram(gpa, PAGE).hva.0;

    let missing = vec![vec![good[0]]];
    assert_eq!(
        mismatch(&missing, &id),
        LayoutError::Mismatch {
            asid: 0,
            iova: 32 * MIB,
            expected: Some((hva(32 * MIB), Perm::Rw)),
            actual: None,
        }
    );

    let extra_entry = Entry {
        iova: Span::new(Iova(64 * MIB), PAGE, vdpa_iova_planner::PageSize::SIZE_4K).unwrap(),
        hva: vdpa_iova_planner::Hva(0x5000_0000),
        perm: Perm::Ro,
    };
    let extra = vec![vec![good[0], good[1], extra_entry]];
    assert_eq!(
        mismatch(&extra, &id),
        LayoutError::Mismatch {
            asid: 0,
            iova: 64 * MIB,
            expected: None,
            actual: Some((0x5000_0000, Perm::Ro)),
        }
    );

    // The same range mapping other host memory: reported at its start.
    let mut moved = good.clone();
    moved[1].hva = vdpa_iova_planner::Hva(moved[1].hva.0 + PAGE);
    assert_eq!(
        mismatch(&[moved], &id),
        LayoutError::Mismatch {
            asid: 0,
            iova: 32 * MIB,
            expected: Some((hva(32 * MIB), Perm::Rw)),
            actual: Some((hva(32 * MIB) + PAGE, Perm::Rw)),
        }
    );

    // Cut one page short: reported at the page the device lacks.
    let mut short = good.clone();
    short[0].iova = Span::new(
        Iova(0),
        16 * MIB - PAGE,
        vdpa_iova_planner::PageSize::SIZE_4K,
    )
    .unwrap();
    assert_eq!(
        mismatch(&[short], &id),
        LayoutError::Mismatch {
            asid: 0,
            iova: 16 * MIB - PAGE,
            expected: Some((hva(0) + 16 * MIB - PAGE, Perm::Rw)),
            actual: None,
        }
    );
}

/// The report counts guest memory the device cannot reach, and how much of
/// it lies inside the device range: QEMU skips a section whose last byte is
/// the range's last (`vhost_vdpa_listener_skipped_section`).
#[test]
fn the_report_counts_unreachable_memory_inside_the_range() {
    let caps = DeviceCaps {
        range: DeviceRange::new(0, 4 * GIB - 1).unwrap(),
        ..DeviceCaps::default()
    };
    let mut q = qemu(caps);
    let (_, rep) = q.step(Event::Boot(vec![
        ram(0, GIB),
        ram(3 * GIB, GIB),
        ram(8 * GIB, GIB),
    ]));
    assert_eq!(rep.unreachable_bytes, 2 * GIB);
    assert_eq!(rep.unreachable_in_range_bytes, GIB);
    assert_eq!(rep.identity_bytes, GIB);
}

const PAGE: u64 = 4096;

/// How a [`Skewed`] planner's `translate` lies.
#[derive(Clone, Copy, Debug)]
enum Lie {
    /// One page further.
    Iova,
    /// Read-only.
    Perm,
    /// A page short.
    Short,
    /// Refuses.
    Refuse,
}

/// The identity planner with a wrong `translate`, everything else true.
struct Skewed {
    s: vdpa_iova_planner::IdentityPlanner,
    lie: Option<Lie>,
}

impl Strategy for Skewed {
    fn name(&self) -> &'static str {
        "skewed"
    }
    fn caps(&self) -> &DeviceCaps {
        self.s.caps()
    }
    fn mode(&self) -> Mode {
        self.s.mode()
    }
    fn add_regions(&mut self, r: &[RegionSpec]) -> Result<Plan, PlanError> {
        self.s.add_regions(r)
    }
    fn remove_region(&mut self, gpa: Gpa) -> Result<Plan, PlanError> {
        self.s.remove_region(gpa)
    }
    fn svq_prepare(&mut self, c: SvqConfig) -> Result<Plan, PlanError> {
        self.s.svq_prepare(c)
    }
    fn svq_switch(&mut self, c: Option<SvqConfig>) -> Result<Plan, PlanError> {
        self.s.svq_switch(c)
    }
    fn failback(&mut self) -> Result<Plan, PlanError> {
        self.s.failback()
    }
    fn complete(&mut self) -> Result<Plan, PlanError> {
        self.s.complete()
    }
    fn incoming(&mut self, r: &[RegionSpec]) -> Result<Plan, PlanError> {
        self.s.incoming(r)
    }
    fn switchover(&mut self) -> Result<Plan, PlanError> {
        self.s.switchover()
    }
    fn start(&mut self) -> Result<Plan, PlanError> {
        self.s.start()
    }
    fn placements(&self) -> Vec<Placement> {
        self.s.placements()
    }
    fn vring_areas(&self) -> Vec<VringArea> {
        self.s.vring_areas()
    }
    fn translate(&self, gpa: Gpa, len: u64) -> Result<Segments, PlanError> {
        let mut segs = self.s.translate(gpa, len)?;
        match self.lie {
            None => {}
            Some(Lie::Iova) => segs[0].iova = Iova(segs[0].iova.0 + PAGE),
            Some(Lie::Perm) => segs[0].perm = Perm::Ro,
            Some(Lie::Short) => segs[0].len -= PAGE,
            Some(Lie::Refuse) => return Err(PlanError::NotGuestMemory { gpa: gpa.0 }),
        }
        Ok(segs)
    }
    fn reset(&mut self) -> Result<Plan, PlanError> {
        self.s.reset()
    }
    fn viommu_map(
        &mut self,
        giova: Iova,
        size: u64,
        gpa: Gpa,
        perm: Perm,
    ) -> Result<Plan, PlanError> {
        self.s.viommu_map(giova, size, gpa, perm)
    }
    fn viommu_unmap(&mut self, giova: Iova, size: u64) -> Result<Plan, PlanError> {
        self.s.viommu_unmap(giova, size)
    }
    fn host_buffers(&mut self, b: &[HostBuffer]) -> Result<Plan, PlanError> {
        self.s.host_buffers(b)
    }
    fn mapped(&self) -> Vec<(u32, Entry)> {
        self.s.mapped()
    }
}

/// `translate` must give, for every piece of guest memory, the IOVA and
/// perm it is mapped at, and all of its bytes.
#[test]
fn a_translate_that_disagrees_with_the_placements_is_caught() {
    let id = booted();
    let tables = id.k.device_tables();
    let honest = Skewed {
        s: id.s.clone(),
        lie: None,
    };
    assert!(layout::check(&tables, &honest, &id.guest).is_ok());
    for lie in [Lie::Iova, Lie::Perm, Lie::Short, Lie::Refuse] {
        let s = Skewed {
            s: id.s.clone(),
            lie: Some(lie),
        };
        match layout::check(&tables, &s, &id.guest) {
            Err(LayoutError::Translate { gpa: 0, .. }) => {}
            other => panic!("{lie:?}: {other:?}"),
        }
    }
}
