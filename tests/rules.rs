//! Rules of the core checked one by one through the public API, each named
//! after the rule it states (many were found by mutation testing: see
//! `.ci/mutants-diff`).

mod common;

use common::*;
use vdpa_iova_planner::{
    DeviceCaps, Event, Gpa, Hva, IdentityPlanner, Iova, Perm, PlanError, RegionSpec, Strategy,
};

fn region(gpa: u64, size: u64, hva: u64) -> RegionSpec {
    RegionSpec {
        gpa: Gpa(gpa),
        size,
        hva: Hva(hva),
        readonly: false,
    }
}

/// Rule: with a vIOMMU, a region can be unplugged unless a live guest map
/// reaches its host memory; a map of the region whose host memory ends
/// right before it (adjacent HVAs) does not hold it.
#[test]
fn unplug_is_refused_only_for_memory_a_guest_map_reaches() {
    let mut p = IdentityPlanner::builder(DeviceCaps::default())
        .viommu((1 << 40) - 1)
        .build()
        .unwrap();
    // B's host memory starts where A's ends.
    let a = region(0, 4 * MIB, 0x7000_0000_0000);
    let b = region(GIB, 4 * MIB, 0x7000_0000_0000 + 4 * MIB);
    p.apply(&Event::Boot(vec![a, b])).unwrap();
    // A guest map of A's last page.
    p.apply(&Event::ViommuMap {
        giova: Iova(0x10_0000_0000),
        size: 0x1000,
        gpa: Gpa(4 * MIB - 0x1000),
        perm: Perm::Rw,
    })
    .unwrap();
    assert!(matches!(
        p.apply(&Event::Unplug(Gpa(0))),
        Err(PlanError::RegionInUse { .. })
    ));
    p.apply(&Event::Unplug(Gpa(GIB)))
        .expect("no guest map reaches B's host memory");
}
