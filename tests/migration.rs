//! Both hosts of a migration: the destination waits with guest memory
//! mapped and starts without sending anything, the source's stop-and-copy
//! sends nothing while the guest is paused; and the QEMU baseline does what
//! QEMU master does at each of those points (each rule names the QEMU
//! function it reproduces).

mod common;

use common::*;
use vdpa_iova_planner::{
    DeviceCaps, DeviceRange, Event, MapStyle, Mode, OpKind, Phase, PlanError, QemuPlanner, Strategy,
};

fn guest() -> Vec<vdpa_iova_planner::RegionSpec> {
    vec![ram(0, 2 * GIB), ram(4 * GIB, 6 * GIB)]
}

fn kinds() -> Vec<DeviceCaps> {
    let mut v = Vec::new();
    for map_style in [MapStyle::SetMap, MapStyle::DmaMap, MapStyle::Platform] {
        for batching in [true, false] {
            for persist in [false, true] {
                v.push(DeviceCaps {
                    map_style,
                    batching,
                    persist,
                    ..DeviceCaps::default()
                });
            }
        }
    }
    v
}

/// The destination maps guest memory while it waits (never critical),
/// restores it after a reset during start-up at the cheapest cost for the
/// device, and its start sends nothing, on every kind of device.
#[test]
fn the_destination_starts_without_a_message_on_every_device() {
    for caps in kinds() {
        let what = format!("{caps:?}");
        let mut d = identity(caps, Some(64 * GIB));
        let (inc, _) = d.step(Event::Incoming(guest()));
        assert_eq!(d.s.mode(), Mode::Incoming);
        assert!(
            inc.ops().iter().all(|o| o.phase == Phase::Prepare),
            "{what}"
        );
        assert_eq!(inc.cost().pinned_bytes, 8 * GIB, "{what}");
        let (rst, _) = d.step(Event::Reset);
        assert_eq!(
            rst.cost().critical_messages,
            0,
            "{what}: a reset while waiting"
        );
        let (start, rep) = d.step(Event::Start);
        assert!(start.is_empty(), "{what}: start sends {:?}", start.ops());
        assert_eq!(rep.identity_bytes, 8 * GIB);
        assert_eq!(d.s.mode(), Mode::Passthrough);
    }
}

/// A reset after the destination started (the guest runs: inside any
/// downtime that is still going on) is critical, and on a dma_map device
/// without persist it re-pins everything: counted, not hidden.
#[test]
fn a_reset_after_start_is_counted_honestly() {
    let caps = DeviceCaps {
        map_style: MapStyle::DmaMap,
        ..DeviceCaps::default()
    };
    let mut d = identity(caps, Some(64 * GIB));
    d.step(Event::Incoming(guest()));
    d.step(Event::Start);
    let (rst, _) = d.step(Event::Reset);
    assert_eq!(rst.cost().critical_pinned_bytes, 8 * GIB);
    assert_eq!(rst.cost().critical_unpinned_bytes, 8 * GIB);
}

/// The source's completion: nothing the device needs goes while the guest
/// is paused; the teardown comes after the destination runs.
#[test]
fn the_source_stop_and_copy_sends_nothing() {
    let mut s = identity(DeviceCaps::default(), Some(64 * GIB));
    s.step(Event::Boot(guest()));
    s.step(Event::SvqPrepare(svq(17)));
    s.step(Event::SvqSwitch(None));
    let (c, _) = s.step(Event::Complete);
    assert_eq!(c.cost().critical_messages, 0);
    assert!(c.ops().iter().all(|o| o.phase == Phase::Background));
    assert_eq!(c.cost().unpinned_bytes, 8 * GIB + 17 * 3 * 4096);
}

/// Destination events out of order are refused and change nothing.
#[test]
fn destination_events_out_of_order_are_refused() {
    let mut d = identity(DeviceCaps::default(), None);
    assert!(matches!(
        d.refuse(Event::Start),
        PlanError::OutOfOrder { event: "start", .. }
    ));
    d.step(Event::Incoming(guest()));
    for ev in [
        Event::Incoming(guest()),
        Event::SvqPrepare(svq(2)),
        Event::SvqSwitch(Some(svq(2))),
        Event::Failback,
        Event::Complete,
    ] {
        assert!(matches!(d.refuse(ev), PlanError::OutOfOrder { .. }));
    }
    d.step(Event::Start);
    assert!(matches!(
        d.refuse(Event::Start),
        PlanError::OutOfOrder { .. }
    ));
    let mut s = identity(DeviceCaps::default(), None);
    s.step(Event::Boot(guest()));
    assert!(matches!(
        s.refuse(Event::Incoming(guest())),
        PlanError::OutOfOrder {
            event: "incoming",
            ..
        }
    ));
    // Bad regions: refused, nothing mapped, still fresh.
    let mut d = identity(DeviceCaps::default(), None);
    d.refuse(Event::Incoming(vec![ram(0, 2 * GIB), ram(GIB, GIB)]));
    d.step(Event::Incoming(guest()));
}

/// QEMU's destination: `vhost_vdpa_set_owner` registers the memory listener
/// at netdev creation (every section mapped, one batch); the machine reset
/// at creation (`qemu_machine_creation_done` -> `vhost_vdpa_reset_device`)
/// unregisters it (one batch of INVALIDATEs); `vhost_vdpa_dev_start` maps
/// everything again after the stream has ended: inside the downtime.
#[test]
fn qemu_destination_maps_guest_memory_inside_the_downtime() {
    let mut q = qemu(DeviceCaps::default());
    let (inc, _) = q.step(Event::Incoming(guest()));
    assert!(inc.ops().iter().all(|o| o.phase == Phase::Prepare));
    assert_eq!(inc.cost().pinned_bytes, 8 * GIB);
    assert_eq!(inc.cost().unpinned_bytes, 8 * GIB);
    assert!(q.s.mapped().is_empty());
    // A reset while nothing is mapped: nothing to unregister.
    let (rst, _) = q.step(Event::Reset);
    assert!(rst.is_empty());
    let (start, _) = q.step(Event::Start);
    assert_eq!(start.cost().critical_pinned_bytes, 8 * GIB);
    assert_eq!(
        start.cost().critical_messages,
        4,
        "one batch of two UPDATEs"
    );
}

/// QEMU's source completion: `migration_stop_vm` -> `vm_stop` ->
/// `vhost_net_stop` -> `vhost_vdpa_svqs_stop` (ring unmaps) and
/// `vhost_vdpa_reset_device` (all guest memory, one batch), while the guest
/// is paused for stop-and-copy: critical.
#[test]
fn qemu_unmaps_everything_while_the_source_is_paused() {
    let mut q = qemu(DeviceCaps::default());
    q.step(Event::Boot(guest()));
    q.step(Event::SvqSwitch(Some(svq(17))));
    let (c, _) = q.step(Event::Complete);
    assert!(c.ops().iter().all(|o| o.phase == Phase::Critical));
    assert_eq!(c.cost().critical_unpinned_bytes, 8 * GIB + 17 * 3 * 4096);
    // 17 x 2 ring unmaps, unbatched, then one batch for the guest.
    assert_eq!(c.cost().critical_messages, 34 + 2 + 2);
}

/// `vhost_vdpa_listener_skipped_section`: a section is skipped when its
/// exclusive end passes `iova_range.last`, so one whose last byte *is* the
/// last IOVA is skipped too (QEMU's off-by-one); the identity strategy maps
/// it.
#[test]
fn qemu_skips_a_section_ending_at_the_last_iova() {
    let caps = DeviceCaps {
        range: DeviceRange::new(0, 4 * GIB - 1).unwrap(),
        ..DeviceCaps::default()
    };
    let regions = vec![ram(0, 2 * GIB), ram(3 * GIB, GIB)];
    let mut q = qemu(caps);
    let (b, rep) = q.step(Event::Boot(regions.clone()));
    assert_eq!(rep.unreachable_bytes, GIB, "the top section is skipped");
    assert!(b.ops().iter().all(|o| match o.kind {
        OpKind::Update { iova, .. } => iova.last().0 < 4 * GIB - 1,
        _ => true,
    }));
    let mut id = identity(caps, None);
    let (_, rep) = id.step(Event::Boot(regions));
    assert_eq!(rep.unreachable_bytes, 0);
}

/// QEMU never acks IOTLB_PERSIST (`vhost_vdpa_set_backend_cap` masks it
/// out): even on a device that offers it, a reset unmaps and maps again.
#[test]
fn qemu_ignores_persist() {
    let caps = DeviceCaps {
        persist: true,
        ..DeviceCaps::default()
    };
    let mut q = Rig::new(QemuPlanner::new(caps).unwrap(), false);
    q.step(Event::Boot(guest()));
    let (r, _) = q.step(Event::Reset);
    assert_eq!(r.cost().critical_pinned_bytes, 8 * GIB);
    let mut id = identity(caps, None);
    id.step(Event::Boot(guest()));
    let (r, _) = id.step(Event::Reset);
    assert!(r.is_empty());
}

fn cvq(hva: u64) -> Vec<vdpa_iova_planner::HostBuffer> {
    use vdpa_iova_planner::{HostBuffer, Hva, Perm};
    vec![
        HostBuffer {
            hva: Hva(hva),
            size: 4096,
            perm: Perm::Ro,
        },
        HostBuffer {
            hva: Hva(hva + 4096),
            size: 4096,
            perm: Perm::Rw,
        },
    ]
}

/// The control virtqueue's buffers: mapped with the vrings while the device
/// runs (prepare phase), never reachable as guest memory, moved out of the
/// way of memory hot-plugged while prepared, torn down after the failback.
#[test]
fn host_buffers_go_with_the_vrings() {
    use vdpa_iova_planner::{Gpa, Perm};
    let mut id = identity(
        DeviceCaps {
            range: DeviceRange::new(0, 8 * GIB - 1).unwrap(),
            ..DeviceCaps::default()
        },
        None,
    );
    id.step(Event::Boot(vec![ram(0, 2 * GIB)]));
    let (hb, _) = id.step(Event::HostBuffers(cvq(0x7d00_0000_0000)));
    assert!(hb.is_empty(), "declared, not mapped yet");
    let (prep, rep) = id.step(Event::SvqPrepare(svq(3)));
    assert!(prep.ops().iter().all(|o| o.phase == Phase::Prepare));
    assert_eq!(rep.buffer_bytes, 8192);
    let bufs = id.s.buffer_entries();
    assert_eq!(bufs.len(), 2);
    assert_eq!((bufs[0].1.perm, bufs[1].1.perm), (Perm::Ro, Perm::Rw));
    for (_, e) in &bufs {
        assert!(matches!(
            id.s.translate(Gpa(e.iova.first().0), 1),
            Err(PlanError::NotGuestMemory { .. })
        ));
    }
    // Memory plugged right over them while prepared: they move, it stays identity.
    let at = bufs.iter().map(|b| b.1.iova.first().0).min().unwrap();
    let (hp, rep) = id.step(Event::Hotplug(ram(at & !(GIB - 1), GIB)));
    assert_eq!(rep.displaced_bytes, 0);
    assert!(hp.cost().critical_messages == 0);
    assert!(id
        .s
        .buffer_entries()
        .iter()
        .all(|(_, e)| e.iova.first().0 >= (at & !(GIB - 1)) + GIB
            || e.iova.last().0 < (at & !(GIB - 1))));
    id.step(Event::SvqSwitch(None));
    let (fb, _) = id.step(Event::Failback);
    assert_eq!(fb.cost().critical_messages, 0);
    assert!(id.s.buffer_entries().is_empty());
    // Declared again while the vrings are mapped: refused.
    id.step(Event::SvqPrepare(svq(3)));
    assert!(matches!(
        id.refuse(Event::HostBuffers(cvq(0x7d00_0001_0000))),
        PlanError::OutOfOrder { .. }
    ));
}

/// With the vrings in their own address space the buffers go there too.
#[test]
fn host_buffers_follow_the_vrings_into_their_address_space() {
    let caps = DeviceCaps {
        address_spaces: 2,
        desc_asid: true,
        ..DeviceCaps::default()
    };
    let s = vdpa_iova_planner::IdentityPlanner::builder(caps)
        .separate_vring_asid(true)
        .build()
        .unwrap();
    let mut id = Rig::new(s, false);
    id.step(Event::Boot(guest()));
    id.step(Event::HostBuffers(cvq(0x7d00_0000_0000)));
    id.step(Event::SvqPrepare(svq(3)));
    assert!(id.s.buffer_entries().iter().all(|(asid, _)| *asid == 1));
    let (c, _) = {
        id.step(Event::SvqSwitch(None));
        id.step(Event::Complete)
    };
    assert_eq!(c.cost().critical_messages, 0);
}

/// `vhost_vdpa_net_cvq_start` maps the CVQ's two buffers after the data
/// queues' rings and before the CVQ's own rings, one message each, at each
/// shadow start; `vhost_vdpa_net_cvq_stop` unmaps them after the guest
/// memory batch, at each stop (the failback's and the source's pause).
#[test]
fn qemu_maps_cvq_buffers_at_each_shadow_start_and_unmaps_them_at_each_stop() {
    use vdpa_iova_planner::Perm;
    let mut q = qemu(DeviceCaps::default());
    q.step(Event::Boot(guest()));
    q.step(Event::HostBuffers(cvq(0x7d00_0000_0000)));
    let (sw, _) = q.step(Event::SvqSwitch(Some(svq(3))));
    let updates: Vec<_> = sw
        .ops()
        .iter()
        .filter_map(|o| match o.kind {
            OpKind::Update { hva, perm, .. } => Some((hva.0, perm)),
            _ => None,
        })
        .collect();
    // Queues 0 and 1 (data): 4 ring maps; then the two buffers; then queue 2 (the CVQ).
    assert_eq!(updates[4], (0x7d00_0000_0000, Perm::Ro));
    assert_eq!(updates[5], (0x7d00_0000_1000, Perm::Rw));
    assert!(sw.ops().iter().all(|o| o.phase == Phase::Critical));
    for ev in [
        Event::Failback,
        Event::SvqSwitch(Some(svq(3))),
        Event::Complete,
    ] {
        let (p, _) = q.step(ev.clone());
        if ev == Event::Failback || ev == Event::Complete {
            let kinds: Vec<_> = p.ops().iter().map(|o| o.kind).collect();
            let last_batch_end = kinds
                .iter()
                .rposition(|k| matches!(k, OpKind::BatchEnd))
                .unwrap();
            let buffer_unmaps: Vec<usize> = kinds
                .iter()
                .enumerate()
                .filter(|(_, k)| matches!(k, OpKind::Invalidate { iova } if iova.size() == 4096 && q.s.buffer_entries().is_empty()))
                .map(|(i, _)| i)
                .collect();
            assert!(
                !buffer_unmaps.is_empty(),
                "{ev:?}: the buffers are unmapped"
            );
            if ev == Event::Complete {
                assert!(buffer_unmaps.iter().any(|&i| i > last_batch_end));
            }
        }
    }
}

/// Bad buffers are refused and change nothing.
#[test]
fn bad_host_buffers_are_refused() {
    use vdpa_iova_planner::{HostBuffer, Hva, Perm};
    let mut id = identity(DeviceCaps::default(), None);
    for b in [
        HostBuffer {
            hva: Hva(0x1001),
            size: 4096,
            perm: Perm::Ro,
        },
        HostBuffer {
            hva: Hva(0x1000),
            size: 0,
            perm: Perm::Ro,
        },
        HostBuffer {
            hva: Hva(0x1000),
            size: 100,
            perm: Perm::Ro,
        },
        HostBuffer {
            hva: Hva(u64::MAX - 4095),
            size: 8192,
            perm: Perm::Rw,
        },
    ] {
        id.refuse(Event::HostBuffers(vec![b]));
    }
}

/// Memory plugged into a QEMU destination while it waits is not mapped then
/// (no listener after the machine-creation reset) and is mapped at start
/// with the rest, once. (Found by the C API's fuzzer: it was mapped twice,
/// EEXIST.)
#[test]
fn qemu_destination_maps_hotplugged_memory_once_at_start() {
    let mut q = qemu(DeviceCaps::default());
    q.step(Event::Incoming(guest()));
    let (hp, _) = q.step(Event::Hotplug(ram(16 * GIB, GIB)));
    assert!(hp.is_empty());
    let (start, _) = q.step(Event::Start);
    assert_eq!(start.cost().critical_pinned_bytes, 9 * GIB);
    let (un, _) = q.step(Event::Unplug(vdpa_iova_planner::Gpa(16 * GIB)));
    assert_eq!(un.cost().unpinned_bytes, GIB);
}

/// Rule: `switchover` comes only on a destination waiting for the stream,
/// once; anywhere else it is refused as out of order and changes nothing,
/// for both strategies. `start` then takes the destination out of it.
#[test]
fn switchover_only_on_a_waiting_destination() {
    let builds: [fn() -> Box<dyn Strategy>; 2] = [
        || Box::new(vdpa_iova_planner::IdentityPlanner::new(DeviceCaps::default(), None).unwrap()),
        || Box::new(QemuPlanner::new(DeviceCaps::default()).unwrap()),
    ];
    for build in builds {
        let mut s = build();
        let refused = |s: &mut Box<dyn Strategy>| {
            let (mode, mapped) = (s.mode(), s.mapped());
            assert_eq!(
                s.switchover(),
                Err(PlanError::OutOfOrder {
                    event: "switchover",
                    mode
                }),
                "{} in {mode}",
                s.name()
            );
            assert_eq!((s.mode(), s.mapped()), (mode, mapped));
        };
        // A fresh planner and a booted source.
        refused(&mut s);
        s.apply(&Event::Boot(guest())).unwrap();
        refused(&mut s);
        // A destination: waiting, then paused, then running.
        let mut d = build();
        d.incoming(&guest()).unwrap();
        assert_eq!(d.switchover().map(|p| p.is_empty()), Ok(true));
        assert_eq!(d.mode(), Mode::Switchover);
        refused(&mut d);
        d.start().unwrap();
        assert_eq!(d.mode(), Mode::Passthrough);
        refused(&mut d);
    }
}
