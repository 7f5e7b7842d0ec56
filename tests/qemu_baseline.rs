//! Rules of the QEMU baseline that mutation testing found unchecked, each
//! named after the QEMU behaviour it reproduces.

mod common;

use common::*;
use vdpa_iova_planner::{
    DeviceCaps, DeviceRange, Event, Gpa, Iova, KernelIotlb, Mode, OpKind, Perm, PlanError,
    QemuPlanner, Strategy,
};

const PAGE: u64 = 4096;

fn range(last: u64) -> DeviceCaps {
    DeviceCaps {
        range: DeviceRange::new(0, last).unwrap(),
        ..DeviceCaps::default()
    }
}

/// The IOVAs a plan maps, in order.
fn mapped_at(plan: &vdpa_iova_planner::Plan) -> Vec<u64> {
    plan.ops()
        .iter()
        .filter_map(|o| match o.kind {
            OpKind::Update { iova, .. } => Some(iova.first().0),
            _ => None,
        })
        .collect()
}

/// `iova_tree_alloc_map` (hw/virtio/vhost-iova-tree.c): first fit from
/// `max(range.first, page)`, an exact fit taken, a hole too small skipped.
/// In SVQ mode an unplug leaves a hole in QEMU's IOVA tree.
#[test]
fn qemu_allocates_first_fit_in_the_holes_of_its_iova_tree() {
    let mut q = qemu(DeviceCaps::default());
    q.step(Event::Boot(vec![ram(0, 16 * MIB), ram(GIB, 16 * MIB)]));
    let (sw, _) = q.step(Event::SvqSwitch(Some(svq(1))));
    // One queue: driver area (2 pages) at 0x1000, device area at 0x3000,
    // then the regions by GPA.
    assert_eq!(
        mapped_at(&sw),
        vec![0x1000, 0x3000, 0x4000, 0x4000 + 16 * MIB]
    );
    q.step(Event::Unplug(Gpa(0)));
    // 8 MiB: at the start of the 16 MiB hole.
    let (c, _) = q.step(Event::Hotplug(ram(2 * GIB, 8 * MIB)));
    assert_eq!(mapped_at(&c), vec![0x4000]);
    // 16 MiB: the 8 MiB left of the hole is too small; after the last entry.
    let (d, _) = q.step(Event::Hotplug(ram(3 * GIB, 16 * MIB)));
    assert_eq!(mapped_at(&d), vec![0x4000 + 32 * MIB]);
    // 8 MiB again: the rest of the hole, exactly.
    let (e, _) = q.step(Event::Hotplug(ram(4 * GIB, 8 * MIB)));
    assert_eq!(mapped_at(&e), vec![0x4000 + 8 * MIB]);
}

/// The last allocation may end on the range's last IOVA; one page more is
/// out of IOVA, and the switch is refused with nothing changed.
#[test]
fn qemu_fills_the_device_range_to_its_last_iova_and_no_further() {
    // Rings take 0x1000..=0x3fff; one page of guest memory fits exactly.
    let mut q = qemu(range(5 * PAGE - 1));
    q.step(Event::Boot(vec![ram(0, PAGE)]));
    let (sw, _) = q.step(Event::SvqSwitch(Some(svq(1))));
    assert_eq!(mapped_at(&sw), vec![0x1000, 0x3000, 0x4000]);
    let mut q = qemu(range(4 * PAGE - 1));
    q.step(Event::Boot(vec![ram(0, PAGE)]));
    let e = q.refuse(Event::SvqSwitch(Some(svq(1))));
    assert!(matches!(e, PlanError::OutOfIova { .. }), "{e}");
}

/// `vhost_vdpa_net_log_global_enable` with nothing prepared: QEMU needs the
/// shadow virtqueues' parameters; a failback before the switch (the
/// migration failed during setup) undoes the prepare and sends nothing.
#[test]
fn qemu_switch_needs_a_config_and_a_prepared_failback_sends_nothing() {
    let mut q = qemu(DeviceCaps::default());
    q.step(Event::Boot(vec![ram(0, GIB)]));
    assert_eq!(
        q.refuse(Event::SvqSwitch(None)),
        PlanError::MissingSvqConfig
    );
    q.step(Event::SvqPrepare(svq(2)));
    assert_eq!(q.s.mode(), Mode::Prepared);
    let (fb, _) = q.step(Event::Failback);
    assert!(fb.ops().is_empty());
    assert_eq!(q.s.mode(), Mode::Passthrough);
    // Not prepared any more: the switch needs its config again.
    assert_eq!(
        q.refuse(Event::SvqSwitch(None)),
        PlanError::MissingSvqConfig
    );
}

/// `vhost_vdpa_listener_skipped_section` on the destination too: a section
/// outside the device range is not mapped at `vhost_vdpa_dev_start`.
#[test]
fn qemu_destination_start_skips_sections_outside_the_range() {
    let mut q = qemu(range(4 * GIB - 1));
    q.step(Event::Incoming(vec![ram(0, GIB), ram(8 * GIB, GIB)]));
    let (start, _) = q.step(Event::Start);
    assert_eq!(mapped_at(&start), vec![0]);
}

/// `vhost_vdpa_iommu_map_notify`: no INVALIDATE before an UPDATE created
/// the address space (the kernel answers EINVAL); once it exists, an unmap
/// past the device range is sent only when it hits a live map.
#[test]
fn qemu_viommu_unmaps_are_sent_only_where_the_kernel_takes_them() {
    let caps = range(4 * GIB - 1);
    let mut q = Rig::new(QemuPlanner::with_viommu(caps, (1 << 39) - 1).unwrap(), true);
    q.k = KernelIotlb::permissive(&caps);
    q.step(Event::Boot(vec![ram(0, GIB)]));
    // A map across the range's end is skipped whole (nothing sent); an
    // unmap of its part inside the range is not sent either: no UPDATE
    // ever created the address space.
    let (m, _) = q.step(Event::ViommuMap {
        giova: Iova(4 * GIB - 2 * MIB),
        size: 4 * MIB,
        gpa: Gpa(0),
        perm: Perm::Rw,
    });
    assert!(m.is_empty());
    let (u, _) = q.step(Event::ViommuUnmap {
        giova: Iova(4 * GIB - 2 * MIB),
        size: 2 * MIB,
    });
    assert!(u.is_empty(), "{:?}", u.ops());
    q.step(Event::ViommuMap {
        giova: Iova(GIB),
        size: 2 * MIB,
        gpa: Gpa(0),
        perm: Perm::Rw,
    });
    // The address space exists now. Past the range, hitting only the
    // skipped rest of that first map (nothing the kernel holds): not sent.
    let (u, _) = q.step(Event::ViommuUnmap {
        giova: Iova(4 * GIB),
        size: 2 * MIB,
    });
    assert!(u.is_empty(), "{:?}", u.ops());
    q.step(Event::ViommuMap {
        giova: Iova(4 * GIB - 2 * MIB),
        size: 2 * MIB,
        gpa: Gpa(0),
        perm: Perm::Rw,
    });
    // Across the range's end, hitting the live map: sent, and it unpins it.
    let (u, _) = q.step(Event::ViommuUnmap {
        giova: Iova(4 * GIB - 2 * MIB),
        size: 4 * MIB,
    });
    assert_eq!(u.ops().len(), 1);
    assert_eq!(u.cost().unpinned_bytes, 2 * MIB);
}
