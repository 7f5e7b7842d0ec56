//! Rules of the core checked one by one through the public API, each named
//! after the rule it states (many were found by mutation testing: see
//! `.ci/mutants-diff`).

mod common;

use common::*;
use vdpa_iova_planner::{
    DeviceCaps, Event, Gpa, Hva, IdentityPlanner, Iova, Perm, PlanError, RegionSpec, StrategyKind,
    StrategyOptions,
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
/// right before it (adjacent HVAs) does not hold it. Both strategies.
#[test]
fn unplug_is_refused_only_for_memory_a_guest_map_reaches() {
    let options = StrategyOptions {
        viommu_last: Some((1 << 40) - 1),
        ..StrategyOptions::default()
    };
    for kind in [
        StrategyKind::Identity {
            separate_vring_asid: false,
        },
        StrategyKind::Qemu,
    ] {
        let mut p = kind.build(DeviceCaps::default(), &options).unwrap();
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
        assert!(
            matches!(
                p.apply(&Event::Unplug(Gpa(0))),
                Err(PlanError::RegionInUse { .. })
            ),
            "{}",
            p.name()
        );
        p.apply(&Event::Unplug(Gpa(GIB)))
            .unwrap_or_else(|e| panic!("{}: no guest map reaches B's host memory: {e}", p.name()));
    }
}

fn setmap_unbatched(first: u64, last: u64) -> DeviceCaps {
    DeviceCaps {
        range: vdpa_iova_planner::DeviceRange::new(first, last).unwrap(),
        batching: false,
        ..DeviceCaps::default()
    }
}

/// The update of a reset plan on an unbatched set_map device, if any.
fn reset_update(id: &mut Rig<IdentityPlanner>) -> Vec<(u64, u64, u64)> {
    let (p, _) = id.step(Event::Reset);
    p.ops()
        .iter()
        .filter_map(|o| match o.kind {
            vdpa_iova_planner::OpKind::Update { iova, hva, .. } => {
                Some((iova.first().0, iova.size(), hva.0))
            }
            _ => None,
        })
        .collect()
}

/// Rule: a reset on an unbatched set_map device is restored by a one-page
/// read-only map of memory already pinned, from the *smallest* entry, at
/// the *first* free page of the device range (never IOVA 0), then its
/// unmap: two table pushes, one page pinned.
#[test]
fn reset_restore_maps_the_smallest_entry_at_the_first_free_page() {
    let mut id = identity(setmap_unbatched(0, (1 << 30) - 1), None);
    // Entries: 16 KiB at 0x1000, 4 KiB at 0x8000; free: 0x5000.. and 0x9000..
    id.step(Event::Boot(vec![
        region(0x1000, 0x4000, 0x7000_0000_0000),
        region(0x8000, 0x1000, 0x7100_0000_0000),
    ]));
    assert_eq!(
        reset_update(&mut id),
        vec![(0x5000, 0x1000, 0x7100_0000_0000)]
    );
    // The smallest entry is the first one now; the first free page moves.
    let mut id = identity(setmap_unbatched(0, (1 << 30) - 1), None);
    id.step(Event::Boot(vec![
        region(0x1000, 0x1000, 0x7200_0000_0000),
        region(0x2000, 0x8000, 0x7300_0000_0000),
    ]));
    assert_eq!(
        reset_update(&mut id),
        vec![(0xa000, 0x1000, 0x7200_0000_0000)]
    );
}

/// Rule: the free page may be the device range's last page, and when no
/// page is free the smallest entry itself is unmapped and mapped again.
#[test]
fn reset_restore_takes_the_last_page_or_remaps_the_smallest_entry() {
    // Range [0x1000, 0x7fff]: mapped but for its last page.
    let mut id = identity(setmap_unbatched(0x1000, 0x7fff), None);
    id.step(Event::Boot(vec![
        region(0x1000, 0x4000, 0x7000_0000_0000),
        region(0x5000, 0x2000, 0x7100_0000_0000),
    ]));
    assert_eq!(
        reset_update(&mut id),
        vec![(0x7000, 0x1000, 0x7100_0000_0000)]
    );
    // Fully mapped: the smallest entry (8 KiB) is re-mapped whole.
    let mut id = identity(setmap_unbatched(0x1000, 0x7fff), None);
    id.step(Event::Boot(vec![
        region(0x1000, 0x5000, 0x7000_0000_0000),
        region(0x6000, 0x2000, 0x7100_0000_0000),
    ]));
    assert_eq!(
        reset_update(&mut id),
        vec![(0x6000, 0x2000, 0x7100_0000_0000)]
    );
}

/// Rule: `region_count` counts the guest regions the planner holds, as
/// regions come and go (and not the pieces they are mapped in).
#[test]
fn region_count_follows_boot_hotplug_and_unplug() {
    let mut id = identity(DeviceCaps::default(), Some(64 * GIB));
    assert_eq!(id.s.region_count(), 0);
    id.step(Event::Boot(vec![ram(0, 2 * GIB), ram(4 * GIB, 2 * GIB)]));
    assert_eq!(id.s.region_count(), 2);
    id.step(Event::Hotplug(ram(8 * GIB, GIB)));
    assert_eq!(id.s.region_count(), 3);
    id.step(Event::Unplug(Gpa(0)));
    assert_eq!(id.s.region_count(), 2);
}
