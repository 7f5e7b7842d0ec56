//! An isolated control virtqueue (`DeviceCaps::cvq_isolated`): shadowed alone
//! in address space 1 for the VM's life. The identity strategy maps its
//! buffers and vring once, while the device runs, and never touches them
//! again until a completed migration; QEMU's baseline maps them at every
//! passthrough start and unmaps them at every stop (each rule names the
//! QEMU function it reproduces).

mod common;

use common::*;
use vdpa_iova_planner::{
    DeviceCaps, DeviceRange, Event, HostBuffer, Hva, IdentityPlanner, MapStyle, Mode, Op, OpKind,
    Perm, Phase, PlanError, Strategy, CVQ_ASID, GUEST_ASID,
};

const PAGE: u64 = 4096;

fn caps() -> DeviceCaps {
    DeviceCaps {
        range: DeviceRange::new(0, (1 << 48) - 1).unwrap(),
        address_spaces: 2,
        cvq_isolated: true,
        ..DeviceCaps::default()
    }
}

fn guest() -> Vec<vdpa_iova_planner::RegionSpec> {
    vec![ram(0, 2 * GIB), ram(4 * GIB, 2 * GIB)]
}

/// The control queue's command buffer (RO), status buffer (RW), and its
/// shadow vring of 64 descriptors: driver area (RO) and device area (RW),
/// one page each.
fn cvq_alone() -> Vec<HostBuffer> {
    [Perm::Ro, Perm::Rw, Perm::Ro, Perm::Rw]
        .iter()
        .enumerate()
        .map(|(i, &perm)| HostBuffer {
            hva: Hva(0x7d00_0000_0000 + i as u64 * PAGE),
            size: PAGE,
            perm,
        })
        .collect()
}

fn asid1(ops: &[Op]) -> Vec<Op> {
    ops.iter().copied().filter(|o| o.asid == CVQ_ASID).collect()
}

#[test]
fn an_isolated_control_queue_needs_two_address_spaces() {
    let one = DeviceCaps {
        address_spaces: 1,
        ..caps()
    };
    assert!(matches!(one.validate(), Err(PlanError::Unsupported { .. })));
    assert!(matches!(
        IdentityPlanner::new(one, None),
        Err(PlanError::Unsupported { .. })
    ));
    assert!(caps().validate().is_ok());
}

/// Mapped once when declared (prepare phase, device running), in address
/// space 1 only; the switch, a hot-plug into any IOVA, the failback and a
/// reset restore never move them; the completed migration unmaps them after
/// the stop-and-copy (background).
#[test]
fn identity_maps_the_control_queue_once_for_the_vms_life() {
    for map_style in [MapStyle::SetMap, MapStyle::DmaMap, MapStyle::Platform] {
        let c = DeviceCaps {
            map_style,
            ..caps()
        };
        let mut id = identity(c, Some(64 * GIB));
        id.step(Event::Boot(guest()));
        let (p, rep) = id.step(Event::HostBuffers(cvq_alone()));
        assert_eq!(updates(p.ops()).len(), 4, "{map_style:?}");
        assert!(p
            .ops()
            .iter()
            .all(|o| o.asid == CVQ_ASID && o.phase == Phase::Prepare));
        assert_eq!(rep.buffer_bytes, 4 * PAGE);
        let placed = id.s.buffer_entries();
        assert!(placed.iter().all(|(a, _)| *a == CVQ_ASID));
        // A guest address never reaches them (address space 0 holds guest memory).
        for (_, e) in &placed {
            assert!(id
                .s
                .translate(vdpa_iova_planner::Gpa(e.iova.first().0), 1)
                .is_ok());
        }

        for ev in [
            Event::SvqPrepare(svq(16)),
            Event::SvqSwitch(None),
            // Hot-plugged at the buffers' own IOVAs: no collision, another
            // address space.
            Event::Hotplug(ram(8 * GIB, GIB)),
            Event::Failback,
            Event::Reset,
            Event::SvqPrepare(svq(16)),
            Event::SvqSwitch(None),
        ] {
            let (p, _) = id.step(ev.clone());
            if ev == Event::Reset && map_style != MapStyle::Platform {
                // The device forgot address space 1 too: restored (for
                // free on set_map: nothing pinned again).
                assert!(!asid1(p.ops()).is_empty());
                if map_style == MapStyle::SetMap {
                    assert_eq!(p.cost().pinned_bytes, 0);
                }
            } else {
                assert!(
                    asid1(p.ops()).is_empty(),
                    "{map_style:?} {ev:?} touched address space 1"
                );
            }
            assert_eq!(id.s.buffer_entries(), placed, "{ev:?} moved the buffers");
            if ev != Event::Reset {
                assert_eq!(p.cost().critical_messages, 0, "{map_style:?} {ev:?}");
            }
        }
        // The vrings are in address space 0's window, not in address space 1.
        assert!(id.s.vring_areas().iter().all(|a| a.asid == GUEST_ASID));
        let (p, _) = id.step(Event::Complete);
        let gone: Vec<Op> = asid1(p.ops())
            .into_iter()
            .filter(|o| matches!(o.kind, OpKind::Invalidate { .. }))
            .collect();
        assert_eq!(gone.len(), 4);
        assert!(asid1(p.ops()).iter().all(|o| o.phase == Phase::Background));
        assert!(id.s.buffer_entries().is_empty());
    }
}

/// With the vrings in their own address space too (`desc_asid`), both
/// share address space 1 and never overlap (the kernel model refuses an
/// overlapping UPDATE with EEXIST).
#[test]
fn identity_keeps_vrings_and_the_control_queue_apart_in_address_space_1() {
    let c = DeviceCaps {
        desc_asid: true,
        ..caps()
    };
    let s = IdentityPlanner::builder(c)
        .max_gpa(64 * GIB)
        .separate_vring_asid(true)
        .build()
        .unwrap();
    let mut id = Rig::new(s, false);
    id.step(Event::Boot(guest()));
    id.step(Event::HostBuffers(cvq_alone()));
    id.step(Event::SvqPrepare(svq(16)));
    id.step(Event::SvqSwitch(None));
    let bufs = id.s.buffer_entries();
    for a in id.s.vring_areas() {
        assert_eq!(a.asid, CVQ_ASID);
        for (_, e) in &bufs {
            assert!(a.iova.last() < e.iova.first() || e.iova.last() < a.iova.first());
        }
    }
    id.step(Event::Failback);
    assert_eq!(id.s.buffer_entries(), bufs);
}

/// The destination maps the control queue while it waits (a reset during
/// start-up restored for free or before the stream ends); its start sends
/// nothing.
#[test]
fn identity_destination_maps_the_control_queue_while_waiting() {
    let mut id = identity(caps(), Some(64 * GIB));
    id.step(Event::Incoming(guest()));
    let (p, _) = id.step(Event::HostBuffers(cvq_alone()));
    assert_eq!(p.cost().critical_messages, 0);
    assert_eq!(updates(p.ops()).len(), 4);
    let (p, _) = id.step(Event::Reset);
    assert_eq!(p.cost().critical_messages, 0);
    let (p, _) = id.step(Event::Start);
    assert!(p.ops().is_empty());
    assert_eq!(id.s.mode(), Mode::Passthrough);
    assert_eq!(id.s.buffer_entries().len(), 4);
}

/// Running out of address space 1 leaves everything as it was.
#[test]
fn identity_refuses_buffers_address_space_1_cannot_hold() {
    let small = DeviceCaps {
        // Page 0 is never handed out: three pages are free in address space 1.
        range: DeviceRange::new(0, 4 * PAGE - 1).unwrap(),
        ..caps()
    };
    let mut id = identity(small, None);
    id.step(Event::Boot(vec![ram(0, 2 * PAGE)]));
    let e = id.refuse(Event::HostBuffers(cvq_alone()));
    assert!(matches!(e, PlanError::OutOfIova { .. }), "{e}");
    assert!(id.s.buffer_entries().is_empty());
    // Three pages fit.
    let (p, _) = id.step(Event::HostBuffers(cvq_alone()[..3].to_vec()));
    assert_eq!(updates(p.ops()).len(), 3);
}

fn updates(ops: &[Op]) -> Vec<(u64, u64, Perm)> {
    ops.iter()
        .filter_map(|o| match o.kind {
            OpKind::Update { iova, hva, perm } if o.asid == CVQ_ASID => {
                Some((iova.first().0, hva.0, perm))
            }
            _ => None,
        })
        .collect()
}

/// `vhost_vdpa_net_cvq_start` (passthrough, isolated CVQ: after
/// `VHOST_VDPA_SET_GROUP_ASID`): the buffers (`vhost_vdpa_cvq_map_buf`:
/// command out RO, status RW) then the CVQ's rings (`vhost_vdpa_svq_map_rings`:
/// driver area RO, device area RW), one unbatched UPDATE each in address
/// space 1, first fit from max(range.first, page) in an IOVA tree that holds
/// no guest memory in passthrough (`vhost_iova_tree_map_alloc`).
#[test]
fn qemu_shadows_an_isolated_control_queue_alone_in_address_space_1() {
    let mut q = qemu(caps());
    let (boot, _) = q.step(Event::Boot(guest()));
    assert!(boot.ops().iter().all(|o| o.asid == GUEST_ASID));
    let (p, _) = q.step(Event::HostBuffers(cvq_alone()));
    assert_eq!(
        updates(p.ops()),
        vec![
            (0x1000, 0x7d00_0000_0000, Perm::Ro),
            (0x2000, 0x7d00_0000_1000, Perm::Rw),
            (0x3000, 0x7d00_0000_2000, Perm::Ro),
            (0x4000, 0x7d00_0000_3000, Perm::Rw),
        ]
    );
    // Single messages: QEMU batches only in the memory listener, in address space 0.
    assert_eq!(p.ops().len(), 4);
}

/// The switch stops the device (`vhost_vdpa_svqs_stop`,
/// `vhost_vdpa_net_cvq_stop`: address space 1 unmapped) and starts it with
/// `shadow_data`: the control queue goes to address space 0 with the data
/// queues, its buffers and rings after their rings. The failback stops in
/// address space 0 and starts the control queue alone in address space 1
/// again, at the same IOVAs (an empty tree again).
#[test]
fn qemu_moves_the_control_queue_at_every_switch_and_failback() {
    let mut q = qemu(caps());
    q.step(Event::Boot(guest()));
    let (first, _) = q.step(Event::HostBuffers(cvq_alone()));
    let (sw, _) = q.step(Event::SvqSwitch(Some(svq(16))));
    let inv1 = asid1(sw.ops());
    assert_eq!(inv1.len(), 4);
    assert!(inv1
        .iter()
        .all(|o| o.phase == Phase::Critical && matches!(o.kind, OpKind::Invalidate { .. })));
    // In address space 0 now: after the 16 data queues' 32 ring maps.
    let a0: Vec<(u64, Perm)> = sw
        .ops()
        .iter()
        .filter_map(|o| match o.kind {
            OpKind::Update { hva, perm, .. } if o.asid == GUEST_ASID => Some((hva.0, perm)),
            _ => None,
        })
        .collect();
    let bufs: Vec<(u64, Perm)> = cvq_alone().iter().map(|b| (b.hva.0, b.perm)).collect();
    assert_eq!(a0[32..36], bufs[..]);
    assert!(q.s.buffer_entries().iter().all(|(a, _)| *a == GUEST_ASID));
    let (fb, _) = q.step(Event::Failback);
    assert_eq!(updates(fb.ops()), updates(first.ops()));
    assert!(fb.ops().iter().all(|o| o.phase == Phase::Critical));
    assert!(q.s.buffer_entries().iter().all(|(a, _)| *a == CVQ_ASID));
    // A reset (a guest reboot: a stop and a start) moves them again.
    let (r, _) = q.step(Event::Reset);
    assert_eq!(asid1(r.ops()).len(), 8);
}

/// On the destination the control queue must be mapped before DRIVER_OK
/// (`vhost_vdpa_net_load` replays the device state through it): QEMU maps
/// it at `vhost_vdpa_dev_start`, inside the downtime, with guest memory.
#[test]
fn qemu_destination_maps_the_control_queue_inside_the_downtime() {
    let mut q = qemu(caps());
    q.step(Event::Incoming(guest()));
    let (p, _) = q.step(Event::HostBuffers(cvq_alone()));
    assert!(p.ops().is_empty());
    let (start, _) = q.step(Event::Start);
    let cvq = asid1(start.ops());
    assert_eq!(cvq.len(), 4);
    assert!(cvq.iter().all(|o| o.phase == Phase::Critical));
    // Before the guest memory batch.
    let first_guest = start
        .ops()
        .iter()
        .position(|o| o.asid == GUEST_ASID)
        .unwrap();
    assert!(start.ops()[..first_guest]
        .iter()
        .all(|o| o.asid == CVQ_ASID));
}

/// With a vIOMMU, `vhost_vdpa_dev_start` refuses any shadow virtqueue, the
/// control queue's too.
#[test]
fn qemu_refuses_an_isolated_control_queue_with_a_viommu() {
    let s = vdpa_iova_planner::QemuPlanner::with_viommu(caps(), (1 << 40) - 1).unwrap();
    let mut q = Rig::new(s, true);
    let e = q.refuse(Event::HostBuffers(cvq_alone()));
    assert!(matches!(e, PlanError::Unsupported { .. }), "{e}");
}

/// An empty declaration changes nothing (no restart of the control queue),
/// and without isolation buffers only wait for the shadow start, vIOMMU or
/// not.
#[test]
fn qemu_buffers_declared_empty_or_without_isolation_send_nothing() {
    let mut q = qemu(caps());
    q.step(Event::Boot(guest()));
    q.step(Event::HostBuffers(cvq_alone()));
    let (p, _) = q.step(Event::HostBuffers(Vec::new()));
    assert!(p.ops().is_empty());
    let plain = DeviceCaps {
        cvq_isolated: false,
        ..caps()
    };
    let s = vdpa_iova_planner::QemuPlanner::with_viommu(plain, (1 << 40) - 1).unwrap();
    let mut q = Rig::new(s, true);
    let (p, _) = q.step(Event::HostBuffers(cvq_alone()[..2].to_vec()));
    assert!(p.ops().is_empty());
    let s = vdpa_iova_planner::QemuPlanner::with_viommu(caps(), (1 << 40) - 1).unwrap();
    let mut q = Rig::new(s, true);
    let (p, _) = q.step(Event::HostBuffers(Vec::new()));
    assert!(p.ops().is_empty());
}
