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
use crate::caps::DeviceCaps;
use crate::entry::Entry;
use crate::error::PlanError;
use crate::event::{HostBuffer, RegionSpec};
use crate::plan::{plan_from_ops, plan_with_unpins, Op, OpKind, Plan};
use crate::strategy::shared::{
    admit, fresh, guest_map, guest_unmap, in_mode, new_regions, removed_region, reset_phase,
    valid_buffers, validate_regions, GuestMemory, UnitSpan,
};
use crate::strategy::xlate::{translate_map, xlate_entry, XlateMap};
use crate::strategy::{Piece, Placement, Segments, Strategy};
use crate::svq::{areas, AreaKind, QueueLayout, SvqConfig, VringArea};
use crate::vocab::{EventKind, Mode, Perm, Phase, CVQ_ASID};

const ASID: u32 = 0;

#[derive(Clone, Debug)]
struct QRegion {
    gpa: Span<Gpa>,
    hva: Hva,
    perm: Perm,
    iova: Option<Span<Iova>>,
}

impl UnitSpan for QRegion {
    fn span(&self) -> Span<Gpa> {
        self.gpa
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
    caps: DeviceCaps,
    mode: Mode,
    regions: BTreeMap<u64, QRegion>,
    xlate: XlateMap,
    prepared: Option<SvqConfig>,
    svq: Option<QSvq>,
    /// QEMU's IOVA tree in SVQ mode: allocated `first -> last`.
    tree: BTreeMap<u64, u64>,
    /// Guest memory behind a guest vIOMMU (`regions` then holds guest maps).
    viommu: Option<GuestMemory>,
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
            caps,
            mode: Mode::Passthrough,
            regions: BTreeMap::new(),
            xlate: XlateMap::new(),
            prepared: None,
            svq: None,
            tree: BTreeMap::new(),
            viommu: None,
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
        q.viommu = Some(GuestMemory::new(viommu_last));
        Ok(q)
    }

    /// `vhost_vdpa_dev_start`: with a vIOMMU and shadow virtqueues it fails
    /// at device start (no migration blocker stops the migration before).
    fn no_svq_with_viommu(&self) -> Result<(), PlanError> {
        match self.viommu {
            Some(_) => Err(PlanError::Unsupported {
                what: "QEMU's vhost_vdpa_dev_start fails at device start with a vIOMMU \
                       (\"SVQ can not work while IOMMU enable\"): the device stays down",
            }),
            None => Ok(()),
        }
    }

    /// The plan of `ops`, noting whether it creates the address space.
    fn finish(&mut self, ops: Vec<Op>) -> Plan {
        self.space_created |= ops
            .iter()
            .any(|o| matches!(o.kind, OpKind::Update { .. } | OpKind::BatchBegin));
        in_mode(self.mode, plan_from_ops(ops, &self.caps))
    }

    /// Whether the listener is unregistered on a destination waiting for
    /// the stream (the machine-creation reset unregistered it, and
    /// `vhost_vdpa_dev_start` registers it again only at start): nothing
    /// the guest's memory or vIOMMU does reaches the device before then.
    fn listener_off(&self) -> bool {
        matches!(self.mode, Mode::Incoming | Mode::Switchover)
    }

    /// `start` with a guest vIOMMU: vhost_vdpa_dev_start registers the
    /// listener, whose region_add for the IOMMU region registers the
    /// notifier and replays the guest's live maps
    /// (vhost_vdpa_iommu_region_add -> memory_region_iommu_replay ->
    /// vhost_vdpa_iommu_map_notify): one unbatched UPDATE per map (the
    /// listener's batch opens only for RAM sections), inside the downtime.
    fn start_viommu(&mut self) -> Result<Plan, PlanError> {
        let mut ops = Vec::new();
        let mut mapped = Vec::new();
        for (&k, r) in &self.regions {
            if self.caps.range.contains_span(&r.gpa) {
                let iova = Span::trusted(r.gpa.first().raw(), r.gpa.size());
                ops.push(Op {
                    phase: Phase::Critical,
                    asid: ASID,
                    kind: OpKind::Update {
                        iova,
                        hva: r.hva,
                        perm: r.perm,
                    },
                });
                mapped.push((k, iova));
            }
        }
        for (k, iova) in mapped {
            let r = self.regions.get_mut(&k).expect("present");
            r.iova = Some(iova);
            let r = r.clone();
            self.set_xlate(&r);
        }
        self.mode = Mode::Passthrough;
        Ok(self.finish(ops))
    }

    fn out_of_order(&self, event: &'static str) -> PlanError {
        PlanError::OutOfOrder {
            event,
            mode: self.mode,
        }
    }

    /// `vhost_vdpa_listener_skipped_section`: a RAM section is mapped only
    /// when it starts at or above the range's first address and its
    /// exclusive end does not pass the range's last address. So a section
    /// whose last byte *is* the range's last byte is skipped ("RAM section
    /// out of device range") although the kernel would take it: QEMU's
    /// off-by-one, reproduced.
    fn in_range(&self, g: &Span<Gpa>) -> bool {
        g.first().raw() >= self.caps.range.first() && g.last().raw() < self.caps.range.last()
    }

    /// First fit over the gaps of `tree`, as `iova_tree_alloc_map` does.
    fn first_fit(
        caps: &DeviceCaps,
        tree: &BTreeMap<u64, u64>,
        size: u64,
        purpose: &'static str,
    ) -> Result<Span<Iova>, PlanError> {
        let p = caps.page_size;
        let lo = p.align_up(caps.range.first().max(p.get()));
        let hi = caps.range.last();
        let err = || PlanError::OutOfIova {
            needed: size,
            purpose,
            window: lo.map(|l| (l, hi)),
            largest_free: 0,
            considered: Vec::new(),
        };
        let mut cur = lo.ok_or_else(err)?;
        for (&f, &l) in tree {
            if f > cur && f - cur >= size {
                break;
            }
            if l >= cur {
                cur = match l.checked_add(1) {
                    Some(c) => c,
                    None => return Err(err()),
                };
            }
        }
        match cur.checked_add(size - 1) {
            Some(last) if last <= hi => Ok(Span::trusted(cur, size)),
            _ => Err(err()),
        }
    }

    fn batch(&self, ops: &mut Vec<Op>, phase: Phase, body: Vec<OpKind>) {
        if body.is_empty() {
            return;
        }
        let wrap = self.caps.batching;
        if wrap {
            ops.push(Op {
                phase,
                asid: ASID,
                kind: OpKind::BatchBegin,
            });
        }
        ops.extend(body.into_iter().map(|kind| Op {
            phase,
            asid: ASID,
            kind,
        }));
        if wrap {
            ops.push(Op {
                phase,
                asid: ASID,
                kind: OpKind::BatchEnd,
            });
        }
    }

    fn set_xlate(&mut self, r: &QRegion) {
        let (f, l) = r.gpa.bounds();
        self.xlate.remove(f..=l);
        if let Some(i) = r.iova {
            self.xlate
                .insert(f..=l, xlate_entry(i.first().raw().wrapping_sub(f), r.perm));
        }
    }

    fn unmap_guest(&self) -> Vec<OpKind> {
        self.regions
            .values()
            .filter_map(|r| r.iova)
            .map(|iova| OpKind::Invalidate { iova })
            .collect()
    }

    /// `vhost_vdpa_net_cvq_stop`: the control queue's buffers are unmapped
    /// after the device stopped (after the guest memory batch), one message each.
    fn buffer_unmaps(&self, ops: &mut Vec<Op>, phase: Phase) {
        if let Some(s) = &self.svq {
            for &iova in &s.bufs {
                ops.push(Op {
                    phase,
                    asid: ASID,
                    kind: OpKind::Invalidate { iova },
                });
            }
        }
    }

    /// `vhost_vdpa_net_cvq_start` in passthrough with an isolated control
    /// queue: its buffers and rings (the host buffers), one UPDATE each in
    /// address space 1, first fit from an empty tree (guest memory is not
    /// in it in passthrough). Returns their IOVAs.
    fn cvq_alone_maps(
        &self,
        ops: &mut Vec<Op>,
        phase: Phase,
    ) -> Result<Vec<Span<Iova>>, PlanError> {
        if !self.caps.cvq_isolated {
            return Ok(Vec::new());
        }
        self.map_buffers(&mut BTreeMap::new(), CVQ_ASID, phase, ops)
    }

    /// Every host buffer at a first-fit IOVA of `tree` (`vhost_vdpa_cvq_map_buf`,
    /// `vhost_iova_tree_map_alloc`), one UPDATE each in `asid`. Returns their IOVAs.
    fn map_buffers(
        &self,
        tree: &mut BTreeMap<u64, u64>,
        asid: u32,
        phase: Phase,
        ops: &mut Vec<Op>,
    ) -> Result<Vec<Span<Iova>>, PlanError> {
        let mut iovas = Vec::with_capacity(self.buffers.len());
        for b in &self.buffers {
            let i = Self::first_fit(&self.caps, tree, b.size, "host buffers")?;
            tree.insert(i.first().raw(), i.last().raw());
            ops.push(Op {
                phase,
                asid,
                kind: OpKind::Update {
                    iova: i,
                    hva: b.hva,
                    perm: b.perm,
                },
            });
            iovas.push(i);
        }
        Ok(iovas)
    }

    /// `vhost_vdpa_svqs_stop` and `vhost_vdpa_net_cvq_stop` of a control
    /// queue shadowed alone: one INVALIDATE each, in address space 1.
    fn cvq_alone_unmaps(&self, ops: &mut Vec<Op>, phase: Phase) {
        ops.extend(self.cvq_alone.iter().map(|&iova| Op {
            phase,
            asid: CVQ_ASID,
            kind: OpKind::Invalidate { iova },
        }));
    }

    fn ring_unmaps(&self, ops: &mut Vec<Op>, phase: Phase) {
        if let Some(s) = &self.svq {
            for (d, u) in &s.rings {
                ops.push(Op {
                    phase,
                    asid: ASID,
                    kind: OpKind::Invalidate { iova: *d },
                });
                ops.push(Op {
                    phase,
                    asid: ASID,
                    kind: OpKind::Invalidate { iova: *u },
                });
            }
        }
    }
}

impl Strategy for QemuPlanner {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn caps(&self) -> &DeviceCaps {
        &self.caps
    }

    fn mode(&self) -> Mode {
        self.mode
    }

    fn add_regions(&mut self, specs: &[RegionSpec]) -> Result<Plan, PlanError> {
        let Some(specs) = new_regions(
            &self.caps,
            self.mode,
            self.viommu.as_mut(),
            &self.regions,
            specs,
        )?
        else {
            return Ok(Plan::default());
        };
        let mut tree = self.tree.clone();
        let mut body = Vec::new();
        let mut new = Vec::new();
        for (g, spec) in specs {
            let mut r = QRegion {
                gpa: g,
                hva: spec.hva,
                perm: spec.perm(),
                iova: None,
            };
            // A destination waiting for the stream has no listener (the
            // machine-creation reset unregistered it): memory plugged then
            // is mapped at start with the rest.
            if self.in_range(&g) && !self.listener_off() {
                let iova = if self.mode == Mode::Svq {
                    let i = Self::first_fit(&self.caps, &tree, g.size(), "guest memory")?;
                    tree.insert(i.first().raw(), i.last().raw());
                    i
                } else {
                    Span::trusted(g.first().raw(), g.size())
                };
                body.push(OpKind::Update {
                    iova,
                    hva: r.hva,
                    perm: r.perm,
                });
                r.iova = Some(iova);
            }
            new.push(r);
        }
        let mut ops = Vec::new();
        self.batch(&mut ops, Phase::Prepare, body);
        self.tree = tree;
        for r in new {
            self.set_xlate(&r);
            self.regions.insert(r.gpa.first().raw(), r);
        }
        Ok(self.finish(ops))
    }

    fn remove_region(&mut self, gpa: Gpa) -> Result<Plan, PlanError> {
        if removed_region(
            self.mode,
            self.viommu.as_mut(),
            &self.regions,
            |u| u.hva,
            gpa,
        )? {
            return Ok(Plan::default());
        }
        let r = self
            .regions
            .get(&gpa.raw())
            .ok_or(PlanError::UnknownRegion { gpa: gpa.raw() })?;
        let mut ops = Vec::new();
        self.batch(
            &mut ops,
            Phase::Prepare,
            r.iova
                .map(|iova| OpKind::Invalidate { iova })
                .into_iter()
                .collect(),
        );
        let r = self.regions.remove(&gpa.raw()).expect("looked up above");
        if let (Some(i), Mode::Svq) = (r.iova, self.mode) {
            self.tree.remove(&i.first().raw());
        }
        let (f, l) = r.gpa.bounds();
        self.xlate.remove(f..=l);
        Ok(self.finish(ops))
    }

    fn svq_prepare(&mut self, cfg: SvqConfig) -> Result<Plan, PlanError> {
        admit(self.mode, EventKind::SvqPrepare)?;
        cfg.layout(self.caps.page_size)?;
        self.prepared = Some(cfg);
        self.mode = Mode::Prepared;
        Ok(Plan::default())
    }

    fn svq_switch(&mut self, cfg: Option<SvqConfig>) -> Result<Plan, PlanError> {
        self.no_svq_with_viommu()?;
        admit(self.mode, EventKind::SvqSwitch)?;
        let cfg = match (self.mode, self.prepared, cfg) {
            (Mode::Prepared, Some(c), _) => c,
            (Mode::Passthrough, _, Some(c)) => c,
            (Mode::Passthrough, _, None) => return Err(PlanError::MissingSvqConfig),
            _ => return Err(self.out_of_order("svq_switch")),
        };
        let layout = cfg.layout(self.caps.page_size)?;
        let phase = Phase::Critical;
        let mut tree = BTreeMap::new();
        let mut rings = Vec::with_capacity(cfg.queues as usize);
        let mut ring_ops = Vec::new();
        let mut bufs = Vec::new();
        // vhost_vdpa_net_cvq_start maps the control queue's buffers after the
        // data queues' rings and before its own: with buffers, the last
        // queue is the control queue. An isolated control queue's rings are
        // host buffers themselves, declared after its buffers: all of them
        // come after every data queue.
        let cvq = if self.caps.cvq_isolated {
            Some(cfg.queues)
        } else {
            (!self.buffers.is_empty()).then(|| cfg.queues.saturating_sub(1))
        };
        for vq in 0..=cfg.queues {
            if Some(vq) == cvq {
                bufs = self.map_buffers(&mut tree, ASID, phase, &mut ring_ops)?;
            }
            if vq == cfg.queues {
                break;
            }
            let [desc, _, dev] = areas(&cfg, &layout, ASID, vq, 0);
            let d = Self::first_fit(&self.caps, &tree, layout.ro(), "shadow vrings")?;
            tree.insert(d.first().raw(), d.last().raw());
            let u = Self::first_fit(&self.caps, &tree, layout.device, "shadow vrings")?;
            tree.insert(u.first().raw(), u.last().raw());
            ring_ops.push(Op {
                phase,
                asid: ASID,
                kind: OpKind::Update {
                    iova: d,
                    hva: desc.hva,
                    perm: Perm::Ro,
                },
            });
            ring_ops.push(Op {
                phase,
                asid: ASID,
                kind: OpKind::Update {
                    iova: u,
                    hva: dev.hva,
                    perm: Perm::Rw,
                },
            });
            rings.push((d, u));
        }
        let mut placed = Vec::new();
        let mut maps = Vec::new();
        for r in self.regions.values() {
            if !self.in_range(&r.gpa) {
                continue;
            }
            let i = Self::first_fit(&self.caps, &tree, r.gpa.size(), "guest memory")?;
            tree.insert(i.first().raw(), i.last().raw());
            maps.push(OpKind::Update {
                iova: i,
                hva: r.hva,
                perm: r.perm,
            });
            placed.push((r.gpa.first().raw(), i));
        }
        let mut ops = Vec::new();
        self.batch(&mut ops, phase, self.unmap_guest());
        self.cvq_alone_unmaps(&mut ops, phase);
        ops.extend(ring_ops);
        self.batch(&mut ops, phase, maps);
        self.cvq_alone.clear();
        self.tree = tree;
        self.svq = Some(QSvq {
            cfg,
            layout,
            rings,
            bufs,
        });
        for (k, i) in placed {
            let r = self.regions.get_mut(&k).expect("present");
            r.iova = Some(i);
            let r = r.clone();
            self.set_xlate(&r);
        }
        self.prepared = None;
        self.mode = Mode::Svq;
        Ok(self.finish(ops))
    }

    fn failback(&mut self) -> Result<Plan, PlanError> {
        admit(self.mode, EventKind::Failback)?;
        if self.mode == Mode::Prepared {
            self.prepared = None;
            self.mode = Mode::Passthrough;
            return Ok(Plan::default());
        }
        let phase = Phase::Critical;
        let mut ops = Vec::new();
        self.ring_unmaps(&mut ops, phase);
        self.batch(&mut ops, phase, self.unmap_guest());
        self.buffer_unmaps(&mut ops, phase);
        let cvq_alone = self.cvq_alone_maps(&mut ops, phase)?;
        let maps: Vec<OpKind> = self
            .regions
            .values()
            .filter(|r| self.in_range(&r.gpa))
            .map(|r| OpKind::Update {
                iova: Span::trusted(r.gpa.first().raw(), r.gpa.size()),
                hva: r.hva,
                perm: r.perm,
            })
            .collect();
        self.batch(&mut ops, phase, maps);
        self.cvq_alone = cvq_alone;
        self.svq = None;
        self.tree.clear();
        let keys: Vec<u64> = self.regions.keys().copied().collect();
        for k in keys {
            let inr = self.in_range(&self.regions[&k].gpa);
            let r = self.regions.get_mut(&k).expect("present");
            r.iova = inr.then(|| Span::trusted(r.gpa.first().raw(), r.gpa.size()));
            let r = r.clone();
            self.set_xlate(&r);
        }
        self.mode = Mode::Passthrough;
        Ok(self.finish(ops))
    }

    fn complete(&mut self) -> Result<Plan, PlanError> {
        admit(self.mode, EventKind::Complete)?;
        // vm_stop -> vhost_net_stop: the rings, then (vhost_vdpa_reset_device
        // unregistering the listener) all guest memory in one batch, while
        // the source is paused for stop-and-copy, before its device state is
        // saved: inside the downtime.
        let phase = Phase::Critical;
        let mut ops = Vec::new();
        self.ring_unmaps(&mut ops, phase);
        self.batch(&mut ops, phase, self.unmap_guest());
        self.buffer_unmaps(&mut ops, phase);
        self.svq = None;
        self.tree.clear();
        for r in self.regions.values_mut() {
            r.iova = None;
        }
        self.xlate = XlateMap::new();
        self.mode = Mode::Completed;
        Ok(self.finish(ops))
    }

    fn reset(&mut self) -> Result<Plan, PlanError> {
        // QEMU never acks IOTLB_PERSIST and unregisters the listener at every
        // device stop or reset, whatever the device is: every map is
        // invalidated (one batch) and mapped again at the next start.
        // An isolated control queue shadowed alone is stopped and started
        // with the device: its address space 1 maps go too, one message each.
        let phase = reset_phase(self.mode);
        let mapped: Vec<(u32, Entry)> = self
            .mapped()
            .into_iter()
            .filter(|(asid, _)| *asid == ASID)
            .collect();
        let mut ops = Vec::new();
        self.batch(
            &mut ops,
            phase,
            mapped
                .iter()
                .map(|(_, e)| OpKind::Invalidate { iova: e.iova })
                .collect(),
        );
        self.cvq_alone_unmaps(&mut ops, phase);
        if !self.cvq_alone.is_empty() {
            self.cvq_alone_maps(&mut ops, phase)?;
        }
        self.batch(
            &mut ops,
            phase,
            mapped
                .iter()
                .map(|(_, e)| OpKind::Update {
                    iova: e.iova,
                    hva: e.hva,
                    perm: e.perm,
                })
                .collect(),
        );
        Ok(self.finish(ops))
    }

    fn host_buffers(&mut self, bufs: &[HostBuffer]) -> Result<Plan, PlanError> {
        valid_buffers(&self.caps, self.mode, bufs)?;
        if !self.caps.cvq_isolated || bufs.is_empty() {
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
        if next.mode == Mode::Passthrough {
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
        fresh(self.mode, self.viommu.as_ref(), &self.regions)?;
        if let Some(v) = &mut self.viommu {
            v.add(&self.caps, regions)?;
            self.mode = Mode::Incoming;
            return Ok(Plan::default());
        }
        let specs = validate_regions(&self.caps, regions, |_, _| None)?;
        // vhost_vdpa_set_owner registers the listener when the netdev is
        // created: every section mapped at identity, one batch. The machine
        // reset at creation (qemu_machine_creation_done -> virtio_reset ->
        // vhost_vdpa_reset_device) unregisters it again: one batch of
        // INVALIDATEs. Nothing stays mapped until vhost_vdpa_dev_start at
        // switchover.
        // The control queue shadowed alone stops with it: mapped again at start.
        let mut ops = Vec::new();
        self.cvq_alone_unmaps(&mut ops, Phase::Prepare);
        let sections: Vec<Span<Gpa>> = specs
            .iter()
            .map(|(g, _)| *g)
            .filter(|g| self.in_range(g))
            .collect();
        self.batch(
            &mut ops,
            Phase::Prepare,
            specs
                .iter()
                .filter(|(g, _)| self.in_range(g))
                .map(|(g, spec)| OpKind::Update {
                    iova: Span::trusted(g.first().raw(), g.size()),
                    hva: spec.hva,
                    perm: spec.perm(),
                })
                .collect(),
        );
        self.batch(
            &mut ops,
            Phase::Prepare,
            sections
                .iter()
                .map(|g| OpKind::Invalidate {
                    iova: Span::trusted(g.first().raw(), g.size()),
                })
                .collect(),
        );
        for (g, spec) in specs {
            let r = QRegion {
                gpa: g,
                hva: spec.hva,
                perm: spec.perm(),
                iova: None,
            };
            self.set_xlate(&r);
            self.regions.insert(g.first().raw(), r);
        }
        self.cvq_alone.clear();
        self.mode = Mode::Incoming;
        Ok(self.finish(ops))
    }

    fn switchover(&mut self) -> Result<Plan, PlanError> {
        admit(self.mode, EventKind::Switchover)?;
        // QEMU's destination does nothing for the device until
        // vhost_vdpa_dev_start: the stream's last sections only load state.
        self.mode = Mode::Switchover;
        Ok(Plan::default())
    }

    fn start(&mut self) -> Result<Plan, PlanError> {
        admit(self.mode, EventKind::Start)?;
        // vhost_vdpa_dev_start on the last device registers the listener
        // again, after the stream has ended: every section mapped (pinned)
        // inside the downtime.
        if self.viommu.is_some() {
            return self.start_viommu();
        }
        let maps: Vec<(u64, Span<Iova>, OpKind)> = self
            .regions
            .values()
            .filter(|r| self.in_range(&r.gpa))
            .map(|r| {
                let iova = Span::trusted(r.gpa.first().raw(), r.gpa.size());
                (
                    r.gpa.first().raw(),
                    iova,
                    OpKind::Update {
                        iova,
                        hva: r.hva,
                        perm: r.perm,
                    },
                )
            })
            .collect();
        // vhost_vdpa_net_cvq_start before the listener: an isolated control
        // queue's maps in address space 1 (the state it replays after
        // DRIVER_OK needs them), inside the downtime too.
        let mut ops = Vec::new();
        self.cvq_alone = self.cvq_alone_maps(&mut ops, Phase::Critical)?;
        self.batch(
            &mut ops,
            Phase::Critical,
            maps.iter().map(|(_, _, k)| *k).collect(),
        );
        for (k, iova, _) in maps {
            let r = self.regions.get_mut(&k).expect("present");
            r.iova = Some(iova);
            let r = r.clone();
            self.set_xlate(&r);
        }
        self.mode = Mode::Passthrough;
        Ok(self.finish(ops))
    }

    fn viommu_map(
        &mut self,
        giova: Iova,
        size: u64,
        gpa: Gpa,
        perm: Perm,
    ) -> Result<Plan, PlanError> {
        let (gi, hva) = guest_map(
            &self.caps,
            self.mode,
            self.viommu.as_ref(),
            &self.regions,
            giova,
            size,
            gpa,
            perm,
        )?;
        let (f, _) = gi.bounds();
        let r = QRegion {
            gpa: gi,
            hva,
            perm,
            // Outside the device range the kernel refuses it: lost.
            // vhost_vdpa_iommu_map_notify checks the inclusive end: no off-by-one.
            // A destination waiting for the stream has no IOMMU notifier
            // (the listener registers it): mapped by the replay at start.
            iova: (self.caps.range.contains_span(&gi) && !self.listener_off())
                .then(|| Span::trusted(f, size)),
        };
        let mut ops = Vec::new();
        if let Some(iova) = r.iova {
            ops.push(Op {
                phase: Phase::Prepare,
                asid: ASID,
                kind: OpKind::Update { iova, hva, perm },
            });
        }
        self.set_xlate(&r);
        self.regions.insert(f, r);
        Ok(self.finish(ops))
    }

    fn viommu_unmap(&mut self, giova: Iova, size: u64) -> Result<Plan, PlanError> {
        let (span, hit) = guest_unmap(
            &self.caps,
            self.mode,
            self.viommu.is_some(),
            &self.regions,
            giova,
            size,
        )?;
        let (f, l) = span.bounds();
        // vhost_vdpa_iommu_map_notify: a range past the device range is
        // skipped, for unmaps as for maps. Otherwise one INVALIDATE of
        // exactly the guest's range, whatever it hits; the kernel drops the
        // whole entries it overlaps. Before any UPDATE created the address
        // space the kernel refuses it (EINVAL) and QEMU only reports the
        // failure: the baseline leaves that message out, so its replay
        // goes on. (A skipped unmap that overlaps a live entry would leave
        // that entry mapped in QEMU; the baseline does not model such a
        // stale map and sends the INVALIDATE then.)
        let unpinned: u64 = hit
            .iter()
            .filter_map(|k| self.regions[k].iova)
            .map(|i| i.size())
            .sum();
        let send = self.space_created
            && !self.listener_off()
            && (self.caps.range.contains_span(&span) || unpinned > 0);
        let ops = if send {
            vec![Op {
                phase: Phase::Prepare,
                asid: ASID,
                kind: OpKind::Invalidate { iova: span },
            }]
        } else {
            Vec::new()
        };
        let plan = plan_with_unpins(ops, &self.caps, |_| unpinned);
        for k in hit {
            let u = self.regions.remove(&k).expect("found above");
            let (uf, ul) = u.gpa.bounds();
            self.xlate.remove(uf..=ul);
            // The rest of a cut map stays the guest's, but the kernel dropped
            // its entry whole: the device cannot reach it.
            let sides = [(uf < f).then(|| (uf, f - 1)), (ul > l).then(|| (l + 1, ul))];
            for (a, z) in sides.into_iter().flatten() {
                self.regions.insert(
                    a,
                    QRegion {
                        gpa: Span::trusted(a, z - a + 1),
                        hva: Hva(u.hva.raw() + (a - uf)),
                        perm: u.perm,
                        iova: None,
                    },
                );
            }
        }
        Ok(plan)
    }

    fn mapped(&self) -> Vec<(u32, Entry)> {
        let mut v: Vec<(u32, Entry)> = self
            .regions
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
        self.regions
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
        Some(self.xlate.epoch())
    }

    fn translate(&self, gpa: Gpa, len: u64) -> Result<Segments, PlanError> {
        translate_map(&self.xlate, gpa, len, |g| {
            self.regions
                .range(..=g)
                .next_back()
                .is_some_and(|(_, r)| r.gpa.contains(Gpa(g)))
        })
    }
}
