//! The order of events is one table, `Mode::admits`: every (mode, event)
//! pair is walked on both strategies, and each refuses an event as out of
//! order, without a change, exactly where the table does not admit it.

use vdpa_iova_planner::{
    DeviceCaps, EventKind, Gpa, HostBuffer, Hva, Iova, Mode, Perm, Plan, PlanError, RegionSpec,
    Strategy, StrategyKind, StrategyOptions, SvqConfig,
};

const MIB: u64 = 1 << 20;
const MODES: [Mode; 6] = [
    Mode::Passthrough,
    Mode::Prepared,
    Mode::Svq,
    Mode::Completed,
    Mode::Incoming,
    Mode::Switchover,
];
const KINDS: [StrategyKind; 2] = [
    StrategyKind::Identity {
        separate_vring_asid: false,
    },
    StrategyKind::Qemu,
];

fn ram(gpa: u64) -> [RegionSpec; 1] {
    [RegionSpec {
        gpa: Gpa(gpa),
        size: MIB,
        hva: Hva(0x1000_0000_0000 + gpa),
        readonly: false,
    }]
}

fn cfg() -> SvqConfig {
    SvqConfig {
        queues: 2,
        queue_size: 256,
        hva: Hva(0x7e00_0000_0000),
    }
}

/// A strategy brought to `mode`, or `None` where it cannot get there
/// (QEMU with a vIOMMU never runs on shadow virtqueues).
fn in_mode(kind: StrategyKind, viommu: bool, mode: Mode) -> Option<Box<dyn Strategy + Send>> {
    let o = StrategyOptions {
        viommu_last: viommu.then_some((1 << 39) - 1),
        ..StrategyOptions::default()
    };
    let mut s = kind.build(DeviceCaps::default(), &o).unwrap();
    let steps: Result<(), PlanError> = (|| {
        match mode {
            Mode::Passthrough => {}
            Mode::Prepared => {
                s.add_regions(&ram(0))?;
                s.svq_prepare(cfg())?;
            }
            Mode::Svq | Mode::Completed => {
                s.add_regions(&ram(0))?;
                s.svq_switch(Some(cfg()))?;
                if mode == Mode::Completed {
                    s.complete()?;
                }
            }
            Mode::Incoming | Mode::Switchover => {
                s.incoming(&ram(0))?;
                if mode == Mode::Switchover {
                    s.switchover()?;
                }
            }
        }
        Ok(())
    })();
    steps.ok()?;
    assert_eq!(s.mode(), mode, "{kind:?}");
    Some(s)
}

fn call(s: &mut dyn Strategy, e: EventKind) -> Result<Plan, PlanError> {
    match e {
        EventKind::Hotplug => s.add_regions(&ram(1 << 32)),
        EventKind::Unplug => s.remove_region(Gpa(0)),
        EventKind::SvqPrepare => s.svq_prepare(cfg()),
        EventKind::SvqSwitch => s.svq_switch(Some(cfg())),
        EventKind::Failback => s.failback(),
        EventKind::Complete => s.complete(),
        EventKind::Incoming => s.incoming(&ram(1 << 33)),
        EventKind::Switchover => s.switchover(),
        EventKind::Start => s.start(),
        EventKind::Reset => s.reset(),
        EventKind::HostBuffers => s.host_buffers(&[HostBuffer {
            hva: Hva(0x7f00_0000_0000),
            size: 4096,
            perm: Perm::Rw,
        }]),
        EventKind::ViommuMap => s.viommu_map(Iova(0), 4096, Gpa(0), Perm::Rw),
        EventKind::ViommuUnmap => s.viommu_unmap(Iova(0), 4096),
    }
}

#[test]
fn every_strategy_refuses_exactly_what_the_mode_does_not_admit() {
    let mut walked = 0;
    for kind in KINDS {
        for mode in MODES {
            for e in EventKind::ALL {
                // The vIOMMU's events need a vIOMMU (without one they are
                // refused as such in every mode); the others are walked
                // without, where every mode is reachable.
                let viommu = matches!(e, EventKind::ViommuMap | EventKind::ViommuUnmap);
                let Some(mut s) = in_mode(kind, viommu, mode) else {
                    assert!(viommu, "{kind:?} reaches {mode:?}");
                    continue;
                };
                let before = (s.mapped(), s.placements());
                let r = call(s.as_mut(), e);
                if mode.admits(e) {
                    assert!(
                        !matches!(r, Err(PlanError::OutOfOrder { .. })),
                        "{kind:?} refuses {e:?} in {mode:?}, which admits it: {r:?}"
                    );
                } else {
                    assert_eq!(
                        r,
                        Err(PlanError::OutOfOrder {
                            event: e.name(),
                            mode
                        }),
                        "{kind:?}, {e:?} in {mode:?}"
                    );
                    assert_eq!(s.mode(), mode);
                    assert_eq!((s.mapped(), s.placements()), before);
                }
                walked += 1;
            }
        }
    }
    // QEMU with a vIOMMU cannot reach svq or completed: two events each.
    assert_eq!(walked, 2 * 6 * 13 - 4);
}

#[test]
fn the_table_names_each_event_as_errors_do() {
    let names: Vec<&str> = EventKind::ALL.iter().map(|e| e.name()).collect();
    assert_eq!(
        names,
        [
            "hotplug",
            "unplug",
            "svq_prepare",
            "svq_switch",
            "failback",
            "complete",
            "incoming",
            "switchover",
            "start",
            "reset",
            "host_buffers",
            "viommu_map",
            "viommu_unmap"
        ]
    );
}
