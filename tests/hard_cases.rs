//! The hard cases: vrings in their own address space, device resets on every
//! kind of device, and a guest vIOMMU. Every plan is replayed on the kernel
//! model and the device's own view is checked after every step.

mod common;

use common::*;
use vdpa_iova_planner::layout;
use vdpa_iova_planner::{
    DeviceCaps, DeviceRange, Event, Gpa, Hva, IdentityPlanner, Iova, MapStyle, Mode, OpKind, Perm,
    Phase, PlanError, QemuPlanner, RegionSpec, Strategy, GUEST_ASID, VRING_ASID,
};

fn asid_caps() -> DeviceCaps {
    DeviceCaps {
        address_spaces: 2,
        desc_asid: true,
        ..DeviceCaps::default()
    }
}

fn separate(caps: DeviceCaps) -> Rig<IdentityPlanner> {
    Rig::new(
        IdentityPlanner::builder(caps)
            .separate_vring_asid(true)
            .build()
            .unwrap(),
        false,
    )
}

#[test]
fn separate_asid_vrings_never_meet_guest_memory() {
    // A 4 GiB device range that guest memory fills but for one hole: in one
    // address space the vrings would have to share the hole with hot-plugged
    // memory; in their own they never meet it.
    let caps = DeviceCaps {
        range: DeviceRange::new(0, 4 * GIB - 1).unwrap(),
        ..asid_caps()
    };
    let mut id = separate(caps);
    assert_eq!(id.s.name(), "identity-asid");
    assert_eq!(id.s.vring_asid(), VRING_ASID);
    assert_eq!(
        IdentityPlanner::new(caps, None).unwrap().vring_asid(),
        GUEST_ASID
    );
    id.step(Event::Boot(vec![ram(0, 2 * GIB), ram(3 * GIB, GIB)]));
    let (prep, _) = id.step(Event::SvqPrepare(svq(9)));
    assert!(prep.ops().iter().all(|o| o.asid == VRING_ASID));
    assert!(id.s.vring_areas().iter().all(|a| a.asid == VRING_ASID));
    let (sw, _) = id.step(Event::SvqSwitch(None));
    assert!(sw.is_empty());
    // Memory plugged into the hole, in SVQ mode, stays identity.
    let (hp, rep) = id.step(Event::Hotplug(ram(2 * GIB, GIB)));
    assert_eq!(rep.displaced_bytes, 0);
    assert!(hp.ops().iter().all(|o| o.asid == GUEST_ASID));
    assert!(id.s.displaced().is_empty());
    // Failback: nothing while stopped; the vrings go afterwards, in asid 1.
    let (fb, _) = id.step(Event::Failback);
    assert_eq!(fb.cost().critical_messages, 0);
    assert!(fb
        .ops()
        .iter()
        .all(|o| o.asid == VRING_ASID && o.phase == Phase::Background));
    id.step(Event::SvqSwitch(Some(svq(2))));
    id.step(Event::Unplug(Gpa(2 * GIB)));
    id.step(Event::Complete);
    assert!(id.k.is_empty());
}

#[test]
fn separate_asid_needs_the_device_to_allow_it() {
    for caps in [
        DeviceCaps::default(),
        DeviceCaps {
            address_spaces: 2,
            ..DeviceCaps::default()
        },
        DeviceCaps {
            desc_asid: true,
            ..DeviceCaps::default()
        },
    ] {
        let e = IdentityPlanner::builder(caps)
            .separate_vring_asid(true)
            .build()
            .unwrap_err();
        assert!(matches!(e, PlanError::Unsupported { .. }), "{e}");
    }
}

/// Every kind of device the facts describe, with and without persistent
/// maps and batching, reset in every mode: afterwards the device holds
/// exactly what the planner says, at the cheapest cost for its kind.
#[test]
fn reset_restores_every_kind_of_device_in_every_mode() {
    for style in [MapStyle::SetMap, MapStyle::DmaMap, MapStyle::Platform] {
        for persist in [false, true] {
            for batching in [true, false] {
                for separate_asid in [false, true] {
                    for stage in 0..4 {
                        let caps = DeviceCaps {
                            map_style: style,
                            persist,
                            batching,
                            ..asid_caps()
                        };
                        let s = IdentityPlanner::builder(caps)
                            .separate_vring_asid(separate_asid)
                            .build()
                            .unwrap();
                        let mut id = Rig::new(s, false);
                        let mut q = Rig::new(QemuPlanner::new(caps).unwrap(), false);
                        let guest = vec![ram(0, 2 * GIB), ram(4 * GIB, GIB)];
                        let mapped_guest = 3 * GIB;
                        for r in [&mut id as &mut dyn RigDyn, &mut q] {
                            r.step_dyn(Event::Boot(guest.clone()));
                            if stage >= 1 {
                                r.step_dyn(Event::SvqPrepare(svq(3)));
                            }
                            if stage >= 2 {
                                r.step_dyn(Event::SvqSwitch(None));
                            }
                            if stage >= 3 {
                                r.step_dyn(Event::Failback);
                            }
                        }
                        let what = format!(
                            "{style:?} persist={persist} batching={batching} asid={separate_asid} stage={stage}"
                        );
                        let (p, _) = id.step(Event::Reset);
                        let (qp, _) = q.step(Event::Reset);
                        let c = p.cost();
                        if persist || style == MapStyle::Platform {
                            assert!(p.is_empty(), "{what}");
                            // QEMU never acks IOTLB_PERSIST, and its reset
                            // unregisters the listener whatever the device:
                            // every map invalidated and mapped again
                            // (vhost_vdpa_reset_device, vhost_vdpa_dev_start).
                            let mapped = q.s.mapped().len() as u64;
                            let markers = if batching { 4 } else { 0 };
                            assert_eq!(qp.cost().messages, 2 * mapped + markers, "{what}");
                            assert_eq!(qp.cost().critical_pinned_bytes, qp.cost().pinned_bytes);
                            continue;
                        }
                        let vrings =
                            id.s.vring_areas()
                                .iter()
                                .map(|a| a.iova.size())
                                .sum::<u64>();
                        let spaces = 1 + u64::from(separate_asid && !id.s.vring_areas().is_empty());
                        match (style, batching) {
                            (MapStyle::SetMap, true) => {
                                assert_eq!(c.pinned_bytes, 0, "{what}");
                                assert_eq!(c.critical_messages, 2 * spaces, "{what}");
                            }
                            (MapStyle::SetMap, false) => {
                                // One page per address space, mapped and unmapped.
                                assert_eq!(c.pinned_bytes, spaces * 4096, "{what}");
                                assert_eq!(c.critical_messages, 2 * spaces, "{what}");
                            }
                            _ => {
                                assert_eq!(
                                    c.critical_pinned_bytes,
                                    mapped_guest + vrings,
                                    "{what}"
                                );
                            }
                        }
                        // QEMU re-maps everything, whatever the device.
                        assert!(qp.cost().critical_pinned_bytes >= mapped_guest, "{what}");
                    }
                }
            }
        }
    }
}

#[test]
fn a_reset_without_its_plan_leaves_the_device_wrong() {
    // The check that the tests above rely on does fail when the restore is
    // skipped: the device lost its maps while the vhost table kept them.
    let mut id = identity(DeviceCaps::default(), None);
    id.step(Event::Boot(vec![ram(0, GIB)]));
    id.k.reset_device();
    let e = layout::check(&id.k.device_tables(), &id.s, &id.guest).unwrap_err();
    assert!(e.to_string().contains("the device has nothing"), "{e}");
}

fn viommu(caps: DeviceCaps, last: u64) -> Rig<IdentityPlanner> {
    Rig::new(
        IdentityPlanner::builder(caps).viommu(last).build().unwrap(),
        true,
    )
}

fn gmap(giova: u64, size: u64, gpa: u64) -> Event {
    Event::ViommuMap {
        giova: Iova(giova),
        size,
        gpa: Gpa(gpa),
        perm: Perm::Rw,
    }
}

fn gunmap(giova: u64, size: u64) -> Event {
    Event::ViommuUnmap {
        giova: Iova(giova),
        size,
    }
}

const VIOMMU_LAST: u64 = (1 << 39) - 1;

#[test]
fn viommu_guest_maps_are_identity_at_the_guest_iova() {
    let mut id = viommu(DeviceCaps::default(), VIOMMU_LAST);
    let (boot, _) = id.step(Event::Boot(vec![ram(0, 4 * GIB)]));
    assert!(
        boot.is_empty(),
        "nothing is mapped before the guest maps it"
    );
    let (p, rep) = id.step(gmap(0x10_0000_0000, 2 * MIB, 0x2000_0000));
    assert_eq!(p.ops().len(), 1);
    assert_eq!(rep.identity_bytes, 2 * MIB);
    let OpKind::Update { iova, hva, .. } = p.ops()[0].kind else {
        panic!("{p:?}")
    };
    assert_eq!(iova.first(), Iova(0x10_0000_0000));
    assert_eq!(hva, Hva(ram(0, GIB).hva.0 + 0x2000_0000));
    let seg = id.s.translate(Gpa(0x10_0000_0000 + 64), 64).unwrap();
    assert_eq!(seg[0].iova, Iova(0x10_0000_0000 + 64));
    // The GPA itself is not a device address under a vIOMMU.
    assert!(matches!(
        id.s.translate(Gpa(0x2000_0000), 1),
        Err(PlanError::NotGuestMemory { .. })
    ));
}

#[test]
fn viommu_partial_unmap_keeps_the_rest_reachable() {
    // The guest maps 16 MiB and unmaps 4 MiB from its middle. The kernel
    // drops whole entries, so the planner unmaps the entry and maps the two
    // remaining parts again at the same IOVAs (12 MiB pinned again, counted).
    let base = 0x40_0000_0000;
    for caps in [
        DeviceCaps::default(),
        DeviceCaps {
            batching: false,
            ..DeviceCaps::default()
        },
    ] {
        let mut id = viommu(caps, VIOMMU_LAST);
        let mut q = Rig::new(QemuPlanner::with_viommu(caps, VIOMMU_LAST).unwrap(), true);
        q.k = vdpa_iova_planner::KernelIotlb::permissive(&caps);
        for r in [&mut id as &mut dyn RigDyn, &mut q] {
            r.step_dyn(Event::Boot(vec![ram(0, 4 * GIB)]));
            r.step_dyn(gmap(base, 16 * MIB, GIB));
        }
        let (p, rep) = id.step(gunmap(base + 4 * MIB, 4 * MIB));
        assert_eq!(p.cost().unpinned_bytes, 16 * MIB);
        assert_eq!(p.cost().pinned_bytes, 12 * MIB);
        assert_eq!(rep.identity_bytes, 12 * MIB);
        assert_eq!(rep.unreachable_bytes, 0);
        assert_eq!(id.s.placements().len(), 2);
        // QEMU sends the guest's range as is: the kernel drops the whole
        // 16 MiB entry, and 12 MiB the guest still maps are lost.
        let (qp, qrep) = q.step(gunmap(base + 4 * MIB, 4 * MIB));
        assert_eq!(qp.ops().len(), 1);
        assert_eq!(qrep.unreachable_bytes, 12 * MIB);
        assert_eq!(q.k.quirks().len(), 1);
        // Unmapping the rest in one go covers both remainders.
        let (p, _) = id.step(gunmap(base, 16 * MIB));
        assert_eq!(p.cost().unpinned_bytes, 12 * MIB);
        assert!(id.k.is_empty());
    }
}

#[test]
fn viommu_svq_window_goes_above_viommu_last() {
    let mut id = viommu(DeviceCaps::default(), VIOMMU_LAST);
    id.step(Event::Boot(vec![ram(0, 4 * GIB)]));
    id.step(gmap(VIOMMU_LAST + 1 - 2 * MIB, 2 * MIB, 0));
    id.step(Event::SvqPrepare(svq(5)));
    assert!(id.s.window().unwrap().first().0 > VIOMMU_LAST);
    let (sw, _) = id.step(Event::SvqSwitch(None));
    assert!(sw.is_empty());
    // Guest maps during migration stay identity: nothing can collide.
    let (p, rep) = id.step(gmap(VIOMMU_LAST + 1 - 8 * MIB, 4 * MIB, 64 * MIB));
    assert_eq!(rep.displaced_bytes, 0);
    assert_eq!(p.cost().critical_messages, 0);
    id.step(gunmap(VIOMMU_LAST + 1 - 2 * MIB, 2 * MIB));
    let (fb, _) = id.step(Event::Failback);
    assert_eq!(fb.cost().critical_messages, 0);
    id.step(Event::SvqPrepare(svq(5)));
    id.step(Event::SvqSwitch(None));
    id.step(Event::Complete);
    assert!(id.k.is_empty());
}

#[test]
fn viommu_maps_colliding_with_the_window_are_displaced_and_restored() {
    // The device reaches 4 GiB but the guest may use 64 GiB of IOVA: no room
    // above viommu_last, so the window shares the guest's space.
    let caps = DeviceCaps {
        range: DeviceRange::new(0, 4 * GIB - 1).unwrap(),
        ..DeviceCaps::default()
    };
    let mut id = viommu(caps, 64 * GIB - 1);
    id.step(Event::Boot(vec![ram(0, 8 * GIB)]));
    id.step(gmap(0x1000_0000, 16 * MIB, 0));
    // A guest map beyond the device range is unreachable in passthrough...
    let (p, rep) = id.step(gmap(8 * GIB, 2 * MIB, 32 * MIB));
    assert!(p.is_empty());
    assert_eq!(rep.unreachable_bytes, 2 * MIB);
    id.step(Event::SvqPrepare(svq(3)));
    // ...and displaced into the range once in SVQ mode.
    let (_, rep) = id.step(Event::SvqSwitch(None));
    assert_eq!(rep.unreachable_bytes, 0);
    assert_eq!(rep.displaced_bytes, 2 * MIB);
    // The guest now maps right where a vring sits: displaced.
    let ring = id.s.vring_areas()[0].iova.first().0;
    let (p, rep) = id.step(gmap(ring, 4096, 48 * MIB));
    assert_eq!(rep.displaced_bytes, 2 * MIB + 4096);
    assert_eq!(p.cost().critical_messages, 0);
    let seg = id.s.translate(Gpa(ring), 4096).unwrap();
    assert_ne!(seg[0].iova.0, ring);
    // Failback: the vring block in the way goes while stopped, the guest map
    // is identity again; the beyond-range map is unreachable again.
    let (fb, rep) = id.step(Event::Failback);
    assert_eq!(rep.displaced_bytes, 0);
    assert_eq!(rep.unreachable_bytes, 2 * MIB);
    assert!(fb.cost().critical_messages >= 3);
    assert_eq!(fb.cost().critical_pinned_bytes, 4096);
    assert!(id.s.translate(Gpa(ring), 4096).unwrap()[0].iova.0 == ring);
}

#[test]
fn viommu_bad_events_are_refused_and_change_nothing() {
    let mut id = viommu(DeviceCaps::default(), VIOMMU_LAST);
    id.step(Event::Boot(vec![
        ram(0, 4 * GIB),
        RegionSpec {
            readonly: true,
            ..ram(8 * GIB, GIB)
        },
    ]));
    id.step(gmap(0x1_0000_0000, 4 * MIB, 0));
    for (ev, want) in [
        (
            gmap(0x2_0000_0000, 4096, 5 * GIB),
            "not inside one guest memory region",
        ),
        (
            gmap(0x2_0000_0000, 8192, 4 * GIB - 4096),
            "not inside one guest memory region",
        ),
        (
            gmap(VIOMMU_LAST + 1 - 4096, 8192, 0),
            "beyond the guest's highest IOVA",
        ),
        (
            gmap(0x2_0000_0000, 4096, 8 * GIB),
            "write access to read-only",
        ),
        (
            gmap(0x1_0000_0000 + 4 * MIB - 4096, 8192, 0),
            "overlaps the live guest map",
        ),
        (gmap(0x2_0000_0001, 4096, 0), "not aligned"),
        (gmap(0x2_0000_0000, 0, 0), "size zero"),
        (gmap(u64::MAX - 4095, 8192, 0), "wraps"),
        (gunmap(0x3_0000_0000, 4096), "nothing is mapped there"),
        (gunmap(0x1_0000_0000, 0), "size zero"),
        (Event::Unplug(Gpa(0)), "still mapped by the guest's vIOMMU"),
        (Event::Unplug(Gpa(4096)), "no guest region starts"),
    ] {
        let e = id.refuse(ev.clone());
        assert!(e.to_string().contains(want), "{ev:?}: {e}");
    }
    // A read-only map of read-only memory is fine.
    id.step(Event::ViommuMap {
        giova: Iova(0x2_0000_0000),
        size: 4096,
        gpa: Gpa(8 * GIB),
        perm: Perm::Ro,
    });
    // Once nothing maps it, the region can go.
    id.step(gunmap(0x1_0000_0000, 4 * MIB));
    id.step(Event::Unplug(Gpa(0)));
    // Without a vIOMMU, the events are refused.
    let mut plain = identity(DeviceCaps::default(), None);
    plain.step(Event::Boot(vec![ram(0, GIB)]));
    let e = plain.refuse(gmap(0x1000, 4096, 0));
    assert!(matches!(e, PlanError::NoViommu { .. }), "{e}");
    let e = plain.refuse(gunmap(0x1000, 4096));
    assert!(matches!(e, PlanError::NoViommu { .. }), "{e}");
}

#[test]
fn qemu_fails_svq_with_a_viommu_at_device_start() {
    // No migration blocker: QEMU has no prepare step, so that is accepted;
    // vhost_vdpa_dev_start fails at the switch ("SVQ can not work while
    // IOMMU enable") and the device stays down.
    let caps = DeviceCaps::default();
    let mut q = Rig::new(QemuPlanner::with_viommu(caps, VIOMMU_LAST).unwrap(), true);
    q.step(Event::Boot(vec![ram(0, GIB)]));
    q.step(gmap(0x1000_0000, 2 * MIB, 0));
    let (p, _) = q.step(Event::SvqPrepare(svq(2)));
    assert!(p.is_empty());
    let e = q.refuse(Event::SvqSwitch(None));
    assert!(matches!(e, PlanError::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("device start"), "{e}");
    assert_eq!(q.s.mode(), Mode::Prepared);
}
