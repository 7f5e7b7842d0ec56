//! The baseline: what QEMU master's vhost-vdpa backend does today
//! (`hw/virtio/vhost-vdpa.c`, `net/vhost-vdpa.c`; checked against commit
//! ece408818d27, 10.2.50), reproduced message for message so every
//! comparison runs against the real thing.
//!
//! * Passthrough: each RAM section is mapped at IOVA == GPA, inside one
//!   memory-listener transaction (a batch, when the device batches). A
//!   section is skipped ("RAM section out of device range",
//!   `vhost_vdpa_listener_skipped_section`) unless it starts at or above the
//!   range's first IOVA and its *exclusive* end does not pass the range's
//!   last: a section whose last byte is the last IOVA is skipped too.
//! * Switch to SVQ (`vhost_vdpa_net_log_global_enable`: the device is stopped
//!   and started again): the listener unregisters (every guest map
//!   invalidated, one batch), then the shadow vrings are mapped one message
//!   each (driver area read-only, device area read-write:
//!   `vhost_vdpa_svq_map_rings`), then the listener registers again and
//!   re-maps every section at an IOVA from QEMU's IOVA tree: first fit, from
//!   `max(first, page size)`. Every guest page is unpinned and pinned again
//!   while the device is stopped.
//! * Failback: ring unmaps, every guest map invalidated, every section mapped
//!   at identity again: all pinned again, device stopped.
//! * Completion (`migration_stop_vm` -> `vm_stop` -> `vhost_net_stop`): ring
//!   unmaps and all guest memory (one batch) while the source is paused for
//!   stop-and-copy: critical.
//! * Destination: the listener is registered when the netdev is created
//!   (`vhost_vdpa_set_owner`: every section mapped), the machine-creation
//!   reset unregisters it (`vhost_vdpa_reset_device`: every section
//!   invalidated), and `vhost_vdpa_dev_start` maps everything again when the
//!   guest starts after the stream: inside the downtime.
//! * Hotplug and unplug: one listener transaction each.
//! * QEMU has no prepare step: `svq_prepare` only records the parameters.
//! * Device reset: QEMU never acks `IOTLB_PERSIST` (`vhost_vdpa_set_backend_cap`)
//!   and unregisters the listener at every stop or reset, whatever the
//!   device: every map is invalidated and mapped again while it is stopped.
//! * A guest vIOMMU: each guest map is one UPDATE at the guest IOVA, each
//!   guest unmap one INVALIDATE of exactly the guest's range
//!   (`vhost_vdpa_iommu_map_notify`; ranges past the device range are
//!   skipped, for maps and unmaps). The kernel drops every entry that range
//!   touches **whole**, so when the guest unmaps part of a map, the rest of
//!   it is lost to the device while QEMU believes it mapped (replay such
//!   plans on [`KernelIotlb::permissive`](crate::KernelIotlb::permissive)).
//!   There is no migration blocker: the shadow start fails at the switch
//!   (`vhost_vdpa_dev_start`: "SVQ can not work while IOMMU enable") with
//!   [`PlanError::Unsupported`], and the device stays down.
//!
//! * The control virtqueue's two host buffers (command out, read-only;
//!   status, read-write; one page each, declared with
//!   [`Event::HostBuffers`](crate::Event::HostBuffers)) are mapped at each
//!   shadow start after the data queues' rings and before the control
//!   queue's own (`vhost_vdpa_net_cvq_start`, one message each), and
//!   unmapped at each stop after the guest memory batch
//!   (`vhost_vdpa_net_cvq_stop`).
//!
//! * An isolated control virtqueue ([`DeviceCaps::cvq_isolated`], found by
//!   `vhost_vdpa_probe_cvq_isolation`): at every passthrough start
//!   (`vhost_vdpa_net_cvq_start`, after `VHOST_VDPA_SET_GROUP_ASID` binds
//!   the CVQ's group to address space 1) QEMU shadows the control queue
//!   alone there: its buffers (`vhost_vdpa_cvq_map_buf`) and its rings
//!   (`vhost_vdpa_svq_map_rings`), declared here as host buffers, one
//!   unbatched UPDATE each in address space 1, at first-fit IOVAs of an
//!   IOVA tree that holds no guest memory in passthrough; guest memory
//!   stays in address space 0 (`vhost_vdpa_listener_region_add`). Every
//!   stop (`vhost_vdpa_svqs_stop`, `vhost_vdpa_net_cvq_stop`) unmaps them,
//!   one INVALIDATE each. So the switch to SVQ unmaps them (the shadowed
//!   control queue then moves to address space 0 with the data queues,
//!   after their rings: `shadow_data`), and the failback, a reset and the
//!   destination's start map them again (the start inside the downtime,
//!   before DRIVER_OK: `vhost_vdpa_net_load` replays the device state
//!   through the control queue). The SVQ config then counts the data
//!   queues only. One simplification: QEMU unmaps the control queue's
//!   rings before the guest memory batch and its buffers after; the
//!   baseline unmaps all of them after it (the same messages and bytes).
//!   With a vIOMMU the shadow start fails (`vhost_vdpa_dev_start`).
//!
//! # Held to real QEMU
//!
//! Stock QEMU 10.2.2 (Debian's `1:10.2.2+ds-1`) was recorded on
//! vdpa_sim_net (`use_va=0`, two address spaces, an isolated control queue;
//! and a guest without a control queue) through a guest's boot, a cancelled
//! migration and a completed one, source and destination, at 256 MiB and
//! 1 GiB (`.ci/rig/qemu/`, recordings in `.ci/rig/qemu/recordings/`). The
//! rig's `vdpa-rig-tools` converts each recording into its events (QEMU
//! creates and resets the device the same way on a source and a
//! destination, so each starts with [`Event::Incoming`](crate::Event::Incoming)
//! and [`Event::Start`](crate::Event::Start)) and QEMU's messages, feeds the
//! events to this planner and compares step by step, message by message
//! (`.ci/rig/tools/tests/qemu_recordings.rs`, in `cargo test`; the rig runs
//! the same check on fresh recordings). Everything matches but for these
//! differences, each pinned by that test at the steps where it appears:
//!
//! * `board-build`: QEMU's listener is registered at netdev creation
//!   (`vhost_vdpa_set_owner`), before the board exists, so it follows the
//!   board as `machine_run_board_init` builds it: a batch per memory
//!   transaction, and low RAM mapped whole, then unmapped and mapped again
//!   in pieces when the BIOS and option ROM pieces overlay it
//!   (`vhost_vdpa_listener_region_add`/`_del`). [`Strategy::incoming`] is
//!   given the finished board and maps its sections once, in one batch; the
//!   test holds QEMU's messages there to their net effect (whole batches,
//!   every INVALIDATE exactly a live entry, no overlap) before the
//!   machine-creation reset's batch, which compares as is. None of it is in
//!   a downtime. (The firmware then changes the memory map while the
//!   listener is away: SeaBIOS's PAM setup turns the BIOS area into RAM
//!   pieces. The test feeds that as unplugs and hotplugs before the first
//!   start, which send nothing here as in QEMU.)
//! * `cvq-rings-first`: at every stop (the switch, the failback, the
//!   completion) QEMU unmaps the control queue's shadow vring first
//!   (`vhost_vdpa_svqs_stop` on the control queue's vhost_dev), then the
//!   guest memory batch (`vhost_vdpa_reset_device`), then the control
//!   queue's two buffers (`vhost_vdpa_net_cvq_stop`); the baseline sends the
//!   four host buffers' INVALIDATEs together after the batch. Same messages,
//!   same bytes, other order.

use std::collections::BTreeMap;

use smallvec::smallvec;

use crate::addr::{Address, Gpa, Hva, Iova, Span};
use crate::alloc::{fit, gaps, Fit};
use crate::caps::DeviceCaps;
use crate::entry::Entry;
use crate::error::PlanError;
use crate::event::{HostBuffer, RegionSpec};
use crate::plan::{plan_from_ops, plan_with_unpins, Op, OpKind, Plan};
use crate::strategy::guest::{Guest, Unit};
use crate::strategy::shared::{reset_phase, validate_regions, GuestMemory};
use crate::strategy::{Piece, Placement, Segments, Strategy};
use crate::svq::{areas, AreaKind, QueueLayout, SvqConfig, VringArea};
use crate::vocab::{EventKind, Mode, Perm, Phase, CVQ_ASID};

mod listener;
mod svq;
mod viommu;

const ASID: u32 = 0;

#[derive(Clone, Debug)]
struct QRegion {
    gpa: Span<Gpa>,
    hva: Hva,
    perm: Perm,
    iova: Option<Span<Iova>>,
}

impl Unit for QRegion {
    fn span(&self) -> Span<Gpa> {
        self.gpa
    }

    fn hva(&self) -> Hva {
        self.hva
    }
}

#[derive(Clone, Debug)]
struct QSvq {
    cfg: SvqConfig,
    layout: QueueLayout,
    /// Per queue: driver area (desc + avail) and device area IOVAs.
    rings: Vec<(Span<Iova>, Span<Iova>)>,
    /// The host buffers' IOVAs (the CVQ's command and status buffers).
    bufs: Vec<Span<Iova>>,
}

/// QEMU's behaviour today. See the [module documentation](self).
#[derive(Clone, Debug)]
pub struct QemuPlanner {
    /// Caps, mode, guest regions (or a vIOMMU guest's maps) and the
    /// translation table.
    guest: Guest<QRegion>,
    prepared: Option<SvqConfig>,
    svq: Option<QSvq>,
    /// QEMU's IOVA tree in SVQ mode: allocated `first -> last`.
    tree: BTreeMap<u64, u64>,
    /// Host buffers: with a control virtqueue, its command and status buffers.
    buffers: Vec<HostBuffer>,
    /// With an isolated control virtqueue in passthrough: where each host
    /// buffer is mapped in address space 1 (empty while stopped or in SVQ).
    cvq_alone: Vec<Span<Iova>>,
    /// Whether a plan has sent an UPDATE or BATCH_BEGIN, which creates the
    /// kernel's address space: an INVALIDATE before that is refused (EINVAL).
    space_created: bool,
}

impl QemuPlanner {
    /// A baseline planner for a device with `caps`.
    ///
    /// # Errors
    /// Capabilities that fail [`DeviceCaps::validate`].
    pub fn new(caps: DeviceCaps) -> Result<Self, PlanError> {
        caps.validate()?;
        Ok(QemuPlanner {
            guest: Guest::new(caps, None),
            prepared: None,
            svq: None,
            tree: BTreeMap::new(),
            buffers: Vec::new(),
            cvq_alone: Vec::new(),
            space_created: false,
        })
    }

    /// A baseline planner for a guest with a vIOMMU whose highest guest
    /// IOVA is `viommu_last`.
    ///
    /// # Errors
    /// As [`QemuPlanner::new`].
    pub fn with_viommu(caps: DeviceCaps, viommu_last: u64) -> Result<Self, PlanError> {
        let mut q = QemuPlanner::new(caps)?;
        q.guest.viommu = Some(GuestMemory::new(viommu_last));
        Ok(q)
    }

    /// The plan of `ops`, noting whether it creates the address space.
    /// Publishes the translation table's changes.
    fn finish(&mut self, ops: Vec<Op>) -> Plan {
        self.guest.table.publish();
        self.space_created |= ops
            .iter()
            .any(|o| matches!(o.kind, OpKind::Update { .. } | OpKind::BatchBegin));
        self.guest.in_mode(plan_from_ops(ops, &self.guest.caps))
    }

    fn out_of_order(&self, event: &'static str) -> PlanError {
        PlanError::OutOfOrder {
            event,
            mode: self.guest.mode,
        }
    }
}

impl Strategy for QemuPlanner {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn caps(&self) -> &DeviceCaps {
        &self.guest.caps
    }

    fn mode(&self) -> Mode {
        self.guest.mode
    }

    fn add_regions(&mut self, specs: &[RegionSpec]) -> Result<Plan, PlanError> {
        self.plan_add_regions(specs)
    }

    fn remove_region(&mut self, gpa: Gpa) -> Result<Plan, PlanError> {
        self.plan_remove_region(gpa)
    }

    fn svq_prepare(&mut self, cfg: SvqConfig) -> Result<Plan, PlanError> {
        self.plan_svq_prepare(cfg)
    }

    fn svq_switch(&mut self, cfg: Option<SvqConfig>) -> Result<Plan, PlanError> {
        self.plan_svq_switch(cfg)
    }

    fn failback(&mut self) -> Result<Plan, PlanError> {
        self.plan_failback()
    }

    fn complete(&mut self) -> Result<Plan, PlanError> {
        self.plan_complete()
    }

    fn reset(&mut self) -> Result<Plan, PlanError> {
        self.plan_reset()
    }

    fn host_buffers(&mut self, bufs: &[HostBuffer]) -> Result<Plan, PlanError> {
        self.guest.check_buffers(bufs)?;
        if !self.guest.caps.cvq_isolated || bufs.is_empty() {
            self.buffers.extend_from_slice(bufs);
            return Ok(Plan::default());
        }
        self.no_svq_with_viommu()?;
        // The control queue is shadowed alone from the device's start: in
        // passthrough its maps are (re)made now, the old ones unmapped
        // first (a stop and start); a destination waiting for the stream
        // maps them at its start.
        let mut next = self.clone();
        next.buffers.extend_from_slice(bufs);
        let mut ops = Vec::new();
        if next.guest.mode == Mode::Passthrough {
            next.cvq_alone_unmaps(&mut ops, Phase::Prepare);
            next.cvq_alone = next.cvq_alone_maps(&mut ops, Phase::Prepare)?;
        }
        let plan = next.finish(ops);
        *self = next;
        Ok(plan)
    }

    fn buffer_entries(&self) -> Vec<(u32, Entry)> {
        let (asid, iovas) = match &self.svq {
            Some(s) => (ASID, &s.bufs),
            None => (CVQ_ASID, &self.cvq_alone),
        };
        iovas
            .iter()
            .zip(&self.buffers)
            .map(|(&iova, b)| {
                (
                    asid,
                    Entry {
                        iova,
                        hva: b.hva,
                        perm: b.perm,
                    },
                )
            })
            .collect()
    }

    fn incoming(&mut self, regions: &[RegionSpec]) -> Result<Plan, PlanError> {
        self.plan_incoming(regions)
    }

    fn switchover(&mut self) -> Result<Plan, PlanError> {
        self.guest.admit(EventKind::Switchover)?;
        // QEMU's destination does nothing for the device until
        // vhost_vdpa_dev_start: the stream's last sections only load state.
        self.guest.mode = Mode::Switchover;
        Ok(Plan::default())
    }

    fn start(&mut self) -> Result<Plan, PlanError> {
        self.plan_start()
    }

    fn viommu_map(
        &mut self,
        giova: Iova,
        size: u64,
        gpa: Gpa,
        perm: Perm,
    ) -> Result<Plan, PlanError> {
        self.plan_viommu_map(giova, size, gpa, perm)
    }

    fn viommu_unmap(&mut self, giova: Iova, size: u64) -> Result<Plan, PlanError> {
        self.plan_viommu_unmap(giova, size)
    }

    fn mapped(&self) -> Vec<(u32, Entry)> {
        let mut v: Vec<(u32, Entry)> = self
            .guest
            .units
            .values()
            .filter_map(|r| {
                r.iova.map(|iova| {
                    (
                        ASID,
                        Entry {
                            iova,
                            hva: r.hva,
                            perm: r.perm,
                        },
                    )
                })
            })
            .collect();
        for a in self.vring_areas() {
            match a.area {
                AreaKind::Desc => v.push((
                    ASID,
                    Entry {
                        iova: a.iova,
                        hva: a.hva,
                        perm: Perm::Ro,
                    },
                )),
                // QEMU maps desc and driver areas as one entry.
                AreaKind::Driver => {
                    let (_, e) = v.last_mut().expect("desc comes first");
                    e.iova = Span::trusted(e.iova.first().raw(), e.iova.size() + a.iova.size());
                }
                AreaKind::Device => v.push((
                    ASID,
                    Entry {
                        iova: a.iova,
                        hva: a.hva,
                        perm: Perm::Rw,
                    },
                )),
            }
        }
        v.extend(self.buffer_entries());
        v
    }

    fn placements(&self) -> Vec<Placement> {
        self.guest
            .units
            .values()
            .map(|r| Placement {
                gpa: r.gpa,
                hva: r.hva,
                perm: r.perm,
                pieces: match r.iova {
                    Some(iova) => smallvec![Piece { gpa: r.gpa, iova }],
                    None => smallvec![],
                },
            })
            .collect()
    }

    fn vring_areas(&self) -> Vec<VringArea> {
        let Some(s) = &self.svq else {
            return Vec::new();
        };
        s.rings
            .iter()
            .enumerate()
            .flat_map(|(vq, (d, u))| {
                let mut a = areas(&s.cfg, &s.layout, ASID, vq as u32, d.first().raw());
                // QEMU's device area is allocated on its own.
                a[2].iova = *u;
                a
            })
            .collect()
    }

    fn epoch(&self) -> Option<&crate::strategy::Epoch> {
        Some(self.guest.table.epoch())
    }

    fn translate(&self, gpa: Gpa, len: u64) -> Result<Segments, PlanError> {
        self.guest.translate(gpa, len)
    }
}
