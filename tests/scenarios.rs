//! Scenario tests: every event in every mode, for both strategies. Every plan
//! is replayed on the kernel model, and the device's table is checked byte
//! for byte against what the strategy reports after every step.

mod common;

use common::*;
use vdpa_iova_planner::{
    DeviceCaps, DeviceRange, Event, Gpa, Hva, Mode, OpKind, Phase, PlanError, RegionSpec, Strategy,
    SvqConfig,
};

#[test]
fn prepared_switch_is_free_for_any_guest_size() {
    for size in [GIB, 1 << 40] {
        let guest = vec![ram(0, 2 * GIB.min(size)), ram(4 * GIB, size)];
        let mut id = identity(DeviceCaps::default(), Some(8 << 40));
        let mut q = qemu(DeviceCaps::default());
        id.step(Event::Boot(guest.clone()));
        q.step(Event::Boot(guest.clone()));
        let (prep, _) = id.step(Event::SvqPrepare(svq(17)));
        assert_eq!(prep.cost().critical_messages, 0);
        assert_eq!(prep.cost().pinned_bytes, 17 * 3 * 4096);
        q.step(Event::SvqPrepare(svq(17)));
        let (sw, rep) = id.step(Event::SvqSwitch(None));
        assert!(sw.is_empty());
        assert_eq!(rep.displaced_bytes, 0);
        let (qsw, _) = q.step(Event::SvqSwitch(None));
        let total: u64 = guest.iter().map(|r| r.size).sum();
        assert_eq!(qsw.cost().critical_pinned_bytes, total + 17 * 3 * 4096);
        assert_eq!(qsw.cost().critical_unpinned_bytes, total);
        let (fb, _) = id.step(Event::Failback);
        assert_eq!(fb.cost().critical_messages, 0);
        assert_eq!(
            guest_ops(&fb, &guest),
            0,
            "failback touches no guest memory"
        );
        let (qfb, _) = q.step(Event::Failback);
        assert_eq!(qfb.cost().critical_pinned_bytes, total);
        // Second migration completes.
        id.step(Event::SvqPrepare(svq(17)));
        id.step(Event::SvqSwitch(None));
        let (done, _) = id.step(Event::Complete);
        assert!(done.ops().iter().all(|o| o.phase == Phase::Background));
        assert!(id.k.is_empty());
        assert_eq!(id.s.mode(), Mode::Completed);
        id.refuse(Event::Hotplug(ram(64 << 40, GIB)));
        id.refuse(Event::SvqPrepare(svq(1)));
    }
}

#[test]
fn unprepared_switch_maps_only_the_vrings_while_stopped() {
    let mut id = identity(DeviceCaps::default(), None);
    id.step(Event::Boot(vec![ram(0, 4 * GIB)]));
    id.refuse(Event::SvqSwitch(None));
    let (sw, rep) = id.step(Event::SvqSwitch(Some(svq(4))));
    assert_eq!(sw.cost().critical_pinned_bytes, 4 * 3 * 4096);
    assert_eq!(rep.vring_bytes, 4 * 3 * 4096);
    // Window is right above memory.
    assert_eq!(id.s.window().unwrap().first().0, 4 * GIB);
    id.step(Event::Failback);
}

#[test]
fn vrings_never_at_iova_zero_and_translate_refuses_host_memory() {
    // No memory at all: the window starts at page 1, not 0.
    let mut id = identity(DeviceCaps::default(), None);
    id.step(Event::SvqPrepare(svq(2)));
    let areas = id.s.vring_areas();
    assert!(areas.iter().all(|a| a.iova.first().0 >= 4096));
    id.step(Event::Hotplug(ram(64 * GIB, GIB)));
    id.step(Event::SvqSwitch(None));
    for a in id.s.vring_areas() {
        let e = id.s.translate(Gpa(a.iova.first().0), 1).unwrap_err();
        assert!(matches!(e, PlanError::NotGuestMemory { .. }), "{e}");
    }
    assert!(
        matches!(id.s.translate(Gpa(65 * GIB - 8), 16), Err(PlanError::NotGuestMemory { gpa }) if gpa == 65 * GIB)
    );
    assert!(matches!(
        id.s.translate(Gpa(64 * GIB), 0),
        Err(PlanError::ZeroSize { .. })
    ));
    assert!(matches!(
        id.s.translate(Gpa(u64::MAX), 2),
        Err(PlanError::Wraps { .. })
    ));
}

#[test]
fn hotplug_and_unplug_in_passthrough() {
    for batching in [true, false] {
        let caps = DeviceCaps {
            batching,
            ..DeviceCaps::default()
        };
        let mut id = identity(caps, Some(64 * GIB));
        let mut q = qemu(caps);
        for r in [&mut id as &mut dyn RigDyn, &mut q] {
            r.step_dyn(Event::Boot(vec![ram(0, 2 * GIB), ram(4 * GIB, 2 * GIB)]));
            let p = r.step_dyn(Event::Hotplug(ram(8 * GIB, GIB)));
            assert!(p.ops().iter().all(|o| o.phase == Phase::Prepare));
            assert!(
                batching
                    || p.ops()
                        .iter()
                        .all(|o| !matches!(o.kind, OpKind::BatchBegin | OpKind::BatchEnd))
            );
            r.step_dyn(Event::Unplug(Gpa(4 * GIB)));
            r.step_dyn(Event::Hotplug(ram(4 * GIB, GIB)));
        }
    }
}

/// Lets one loop drive both strategies.
#[test]
fn hotplug_while_prepared_moves_the_vrings_not_the_memory() {
    // max_gpa unknown: the window starts right where RAM ends.
    let mut id = identity(DeviceCaps::default(), None);
    id.step(Event::Boot(vec![ram(0, 2 * GIB)]));
    id.step(Event::SvqPrepare(svq(8)));
    let before = id.s.vring_areas();
    assert!(before
        .iter()
        .all(|a| a.iova.first().0 >= 2 * GIB && a.iova.last().0 < 2 * GIB + MIB));
    let (p, rep) = id.step(Event::Hotplug(ram(2 * GIB, GIB)));
    assert_eq!(rep.displaced_bytes, 0, "prepared: memory stays identity");
    assert!(p.ops().iter().all(|o| o.phase == Phase::Prepare));
    let after = id.s.vring_areas();
    assert!(
        after.iter().all(|a| a.iova.first().0 >= 3 * GIB),
        "vrings moved out of the new memory"
    );
    // 8 queues x 2 entries invalidated, 16 re-mapped, plus the memory itself.
    let inv = p
        .ops()
        .iter()
        .filter(|o| matches!(o.kind, OpKind::Invalidate { .. }))
        .count();
    assert_eq!(inv, 16);
    id.step(Event::SvqSwitch(None));
    let (fb, _) = id.step(Event::Failback);
    assert_eq!(fb.cost().critical_messages, 0);
}

#[test]
fn regression_upstream_hotplug_into_vring_window_then_failback() {
    // The sequence from the upstream discussion: vrings placed just above
    // guest memory, memory hot-plugged right there during migration, the
    // migration fails, back to passthrough. Every byte of the hot-plugged
    // memory must be reachable at its GPA, and nothing else mapped.
    let mut id = identity(DeviceCaps::default(), None);
    let low = ram(0, 4 * GIB);
    id.step(Event::Boot(vec![low]));
    id.step(Event::SvqPrepare(svq(16)));
    id.step(Event::SvqSwitch(None));
    let vr = id.s.vring_areas();
    assert_eq!(
        vr.iter().map(|a| a.iova.first().0).min(),
        Some(4 * GIB),
        "vrings just above memory"
    );
    let plugged = ram(4 * GIB, GIB);
    let (hp, rep) = id.step(Event::Hotplug(plugged));
    assert_eq!(
        rep.displaced_bytes, GIB,
        "colliding memory is displaced in SVQ mode"
    );
    assert!(hp.ops().iter().all(|o| o.phase == Phase::Prepare));
    // The SVQ data path reaches the hot-plugged memory at its displaced IOVA.
    let seg = id.s.translate(Gpa(4 * GIB + 0x1234), 8).unwrap();
    let d = id.s.displaced();
    assert_eq!(d.len(), 1);
    assert_eq!(seg[0].iova.0, d[0].iova.first().0 + 0x1234);
    let (fb, rep) = id.step(Event::Failback);
    assert_eq!(rep.displaced_bytes, 0);
    assert_eq!(rep.identity_bytes, 5 * GIB);
    // While stopped: unmap what is in the way, map the identity: nothing of the old memory.
    let crit: Vec<_> = fb.phase(Phase::Critical).collect();
    assert!(crit.iter().any(|o| matches!(o.kind, OpKind::Update { iova, .. } if iova.first().0 == 4 * GIB && iova.size() == GIB)));
    assert_eq!(fb.cost().critical_pinned_bytes, GIB);
    // Every byte of the plugged memory is at its GPA; nothing else is mapped.
    for off in (0..GIB).step_by(64 * MIB as usize) {
        let e =
            id.k.lookup(0, vdpa_iova_planner::Iova(4 * GIB + off))
                .unwrap();
        assert_eq!(
            e.hva.0 + (4 * GIB + off - e.iova.first().0),
            plugged.hva.0 + off
        );
    }
    let mapped: u64 = id.k.entries(0).map(|e| e.iova.size()).sum();
    assert_eq!(mapped, 5 * GIB);
}

#[test]
fn svq_hotplug_with_free_identity_range_stays_identity() {
    let mut id = identity(DeviceCaps::default(), Some(64 * GIB));
    id.step(Event::Boot(vec![ram(0, 4 * GIB)]));
    id.step(Event::SvqPrepare(svq(4)));
    id.step(Event::SvqSwitch(None));
    let (_, rep) = id.step(Event::Hotplug(ram(8 * GIB, 4 * GIB)));
    assert_eq!(rep.displaced_bytes, 0);
    // Unplug in SVQ mode of identity and (below) displaced memory.
    id.step(Event::Unplug(Gpa(8 * GIB)));
    let (fb, _) = id.step(Event::Failback);
    assert_eq!(fb.cost().critical_messages, 0);
}

#[test]
fn unplug_of_displaced_memory_frees_its_iova() {
    let mut id = identity(DeviceCaps::default(), None);
    id.step(Event::Boot(vec![ram(0, GIB)]));
    id.step(Event::SvqSwitch(Some(svq(2))));
    id.step(Event::Hotplug(ram(GIB, GIB)));
    assert_eq!(id.s.displaced().len(), 1);
    let (p, _) = id.step(Event::Unplug(Gpa(GIB)));
    assert_eq!(p.ops().len(), 1);
    assert!(id.s.displaced().is_empty());
    // Plug it again: displaced again, into the freed space.
    id.step(Event::Hotplug(ram(GIB, GIB)));
    let (fb, _) = id.step(Event::Failback);
    assert_eq!(fb.cost().critical_pinned_bytes, GIB);
    let err = id.refuse(Event::Unplug(Gpa(3 * GIB)));
    assert_eq!(err, PlanError::UnknownRegion { gpa: 3 * GIB });
    id.refuse(Event::Unplug(Gpa(GIB + 4096)));
}

#[test]
fn memory_outside_the_device_range() {
    // A device that addresses 8 GiB; the guest has 4 GiB low and 4 GiB at 16 GiB,
    // and a region straddling the top of the range.
    let caps = DeviceCaps {
        range: DeviceRange::new(0, 8 * GIB - 1).unwrap(),
        ..DeviceCaps::default()
    };
    let guest = vec![ram(0, 2 * GIB), ram(7 * GIB, 2 * GIB), ram(16 * GIB, GIB)];
    let mut id = identity(caps, Some(32 * GIB));
    let (_, rep) = id.step(Event::Boot(guest.clone()));
    assert_eq!(
        rep.unreachable_bytes,
        2 * GIB,
        "reported, not silently dropped"
    );
    assert!(matches!(
        id.s.translate(Gpa(16 * GIB), 8),
        Err(PlanError::Unreachable { .. })
    ));
    assert!(id.s.translate(Gpa(7 * GIB), 8).is_ok());
    assert!(matches!(
        id.s.translate(Gpa(8 * GIB), 8),
        Err(PlanError::Unreachable { .. })
    ));
    // No room above max_gpa: the window is the device range's holes.
    let (prep, rep) = id.step(Event::SvqPrepare(svq(8)));
    assert_eq!(
        rep.unreachable_bytes, 0,
        "displaced into the range while in SVQ mode"
    );
    assert_eq!(rep.displaced_bytes, 2 * GIB);
    assert!(prep.ops().iter().all(|o| o.phase == Phase::Prepare));
    id.step(Event::SvqSwitch(None));
    assert!(id.s.translate(Gpa(16 * GIB), GIB).is_ok());
    let (fb, rep) = id.step(Event::Failback);
    assert_eq!(
        fb.cost().critical_messages,
        0,
        "nothing to restore: the memory was unreachable before"
    );
    assert_eq!(rep.unreachable_bytes, 2 * GIB);

    // QEMU skips the sections that are not wholly in range, in every mode.
    let mut q = qemu(caps);
    q.step(Event::Boot(guest));
    q.step(Event::SvqPrepare(svq(8)));
    let (_, rep) = q.step(Event::SvqSwitch(None));
    assert_eq!(rep.unreachable_bytes, 3 * GIB);
}

#[test]
fn out_of_iova_space_is_an_error_that_changes_nothing() {
    let caps = DeviceCaps {
        range: DeviceRange::new(0, 4 * GIB + 64 * 1024 - 1).unwrap(),
        ..DeviceCaps::default()
    };
    let mut id = identity(caps, None);
    id.step(Event::Boot(vec![ram(4096, 4 * GIB - 4096)]));
    // 64 KiB left above memory: 5 queues of 12 KiB fit, 6 do not.
    let e = id.refuse(Event::SvqPrepare(svq(6)));
    assert!(
        matches!(e, PlanError::OutOfIova { needed: 12288, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("0x3000"), "{e}");
    id.step(Event::SvqPrepare(svq(5)));
    id.step(Event::SvqSwitch(None));
    // A hotplug that must be displaced but cannot: refused, nothing changes.
    let e = id.refuse(Event::Hotplug(ram(4 * GIB, 8192)));
    assert!(matches!(e, PlanError::OutOfIova { .. }), "{e}");
}

#[test]
fn bad_input_is_refused_without_changes() {
    let mut id = identity(DeviceCaps::default(), None);
    id.step(Event::Boot(vec![ram(0, GIB)]));
    let mut bad = ram(2 * GIB, 0);
    assert!(matches!(
        id.refuse(Event::Hotplug(bad)),
        PlanError::ZeroSize { .. }
    ));
    bad.size = 4097;
    assert!(matches!(
        id.refuse(Event::Hotplug(bad)),
        PlanError::Unaligned { .. }
    ));
    bad = ram(u64::MAX - 4095, 8192);
    assert!(matches!(
        id.refuse(Event::Hotplug(bad)),
        PlanError::Wraps { .. }
    ));
    bad = RegionSpec {
        hva: Hva(u64::MAX - 4095),
        ..ram(2 * GIB, 8192)
    };
    assert!(matches!(
        id.refuse(Event::Hotplug(bad)),
        PlanError::Wraps { .. }
    ));
    assert!(matches!(
        id.refuse(Event::Hotplug(ram(GIB - 4096, 8192))),
        PlanError::RegionOverlap { .. }
    ));
    assert!(matches!(
        id.refuse(Event::Boot(vec![
            ram(4 * GIB, GIB),
            ram(5 * GIB - 4096, GIB)
        ])),
        PlanError::RegionOverlap { .. }
    ));
    assert!(matches!(
        id.refuse(Event::Failback),
        PlanError::OutOfOrder { .. }
    ));
    assert!(matches!(
        id.refuse(Event::Complete),
        PlanError::OutOfOrder { .. }
    ));
    assert!(matches!(
        id.refuse(Event::SvqPrepare(SvqConfig {
            queue_size: 100,
            ..svq(1)
        })),
        PlanError::BadSvqConfig { .. }
    ));
    id.step(Event::SvqPrepare(svq(2)));
    assert!(matches!(
        id.refuse(Event::SvqPrepare(svq(2))),
        PlanError::OutOfOrder { .. }
    ));
    assert!(matches!(
        id.refuse(Event::Complete),
        PlanError::OutOfOrder { .. }
    ));
    id.step(Event::SvqSwitch(None));
    assert!(matches!(
        id.refuse(Event::SvqSwitch(None)),
        PlanError::OutOfOrder { .. }
    ));
    // A region at the very top of the 64-bit space is fine.
    id.step(Event::Hotplug(ram(u64::MAX - 2 * 4096 + 1, 2 * 4096)));
    id.step(Event::Failback);
}

#[test]
fn failback_from_prepared_cancels_in_the_background() {
    let caps = DeviceCaps {
        range: DeviceRange::new(0, 4 * GIB - 1).unwrap(),
        ..DeviceCaps::default()
    };
    let mut id = identity(caps, None);
    id.step(Event::Boot(vec![ram(0, 2 * GIB), ram(4 * GIB, GIB)]));
    id.step(Event::SvqPrepare(svq(2)));
    let (fb, rep) = id.step(Event::Failback);
    assert!(fb.ops().iter().all(|o| o.phase == Phase::Background));
    assert_eq!(rep.unreachable_bytes, GIB);
    assert!(id.s.vring_areas().is_empty());
}

#[test]
fn non_pinning_devices_cost_no_pins() {
    let caps = DeviceCaps {
        pinning: false,
        batching: false,
        ..DeviceCaps::default()
    };
    let mut q = qemu(caps);
    q.step(Event::Boot(vec![ram(0, GIB)]));
    let (sw, _) = q.step(Event::SvqSwitch(Some(svq(1))));
    assert_eq!(sw.cost().pinned_bytes, 0);
    assert_eq!(
        sw.cost().critical_messages,
        4,
        "invalidate + 2 rings + map, no batch markers"
    );
}

#[test]
fn readonly_memory_is_mapped_read_only_everywhere() {
    let rom = RegionSpec {
        readonly: true,
        ..ram(0xfff0_0000, MIB)
    };
    let mut id = identity(DeviceCaps::default(), None);
    id.step(Event::Boot(vec![ram(0, GIB), rom]));
    id.step(Event::SvqSwitch(Some(svq(1))));
    let seg = id.s.translate(Gpa(0xfff0_0000), 16).unwrap();
    assert_eq!(seg[0].perm, vdpa_iova_planner::Perm::Ro);
    let mut q = qemu(DeviceCaps::default());
    q.step(Event::Boot(vec![ram(0, GIB), rom]));
    q.step(Event::SvqSwitch(Some(svq(1))));
    assert_eq!(
        q.s.translate(Gpa(0xfff0_0000), 16).unwrap()[0].perm,
        vdpa_iova_planner::Perm::Ro
    );
}
