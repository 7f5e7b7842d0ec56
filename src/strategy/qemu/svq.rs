//! The baseline's shadow virtqueue cycle: the switch, the failback, the
//! completion and a device reset, and the IOVA tree they allocate from.

use super::*;

impl QemuPlanner {
    /// First fit over the gaps of `tree`, as `iova_tree_alloc_map` does.
    pub(super) fn first_fit(
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
        let lo = lo.ok_or_else(err)?;
        let free = gaps(tree.iter().map(|(&f, &l)| (f, l)), lo, hi);
        fit(free, size, Fit::First)
            .map(|f| Span::trusted(f, size))
            .ok_or_else(err)
    }

    /// `vhost_vdpa_net_cvq_stop`: the control queue's buffers are unmapped
    /// after the device stopped (after the guest memory batch), one message each.
    pub(super) fn buffer_unmaps(&self, ops: &mut Vec<Op>, phase: Phase) {
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
    pub(super) fn cvq_alone_maps(
        &self,
        ops: &mut Vec<Op>,
        phase: Phase,
    ) -> Result<Vec<Span<Iova>>, PlanError> {
        if !self.guest.caps.cvq_isolated {
            return Ok(Vec::new());
        }
        self.map_buffers(&mut BTreeMap::new(), CVQ_ASID, phase, ops)
    }

    /// Every host buffer at a first-fit IOVA of `tree` (`vhost_vdpa_cvq_map_buf`,
    /// `vhost_iova_tree_map_alloc`), one UPDATE each in `asid`. Returns their IOVAs.
    pub(super) fn map_buffers(
        &self,
        tree: &mut BTreeMap<u64, u64>,
        asid: u32,
        phase: Phase,
        ops: &mut Vec<Op>,
    ) -> Result<Vec<Span<Iova>>, PlanError> {
        let mut iovas = Vec::with_capacity(self.buffers.len());
        for b in &self.buffers {
            let i = Self::first_fit(&self.guest.caps, tree, b.size, "host buffers")?;
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
    pub(super) fn cvq_alone_unmaps(&self, ops: &mut Vec<Op>, phase: Phase) {
        ops.extend(self.cvq_alone.iter().map(|&iova| Op {
            phase,
            asid: CVQ_ASID,
            kind: OpKind::Invalidate { iova },
        }));
    }

    pub(super) fn ring_unmaps(&self, ops: &mut Vec<Op>, phase: Phase) {
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

    /// `vhost_vdpa_dev_start`: with a vIOMMU and shadow virtqueues it fails
    /// at device start (no migration blocker stops the migration before).
    pub(super) fn no_svq_with_viommu(&self) -> Result<(), PlanError> {
        match self.guest.viommu {
            Some(_) => Err(PlanError::Unsupported {
                what: "QEMU's vhost_vdpa_dev_start fails at device start with a vIOMMU \
                       (\"SVQ can not work while IOMMU enable\"): the device stays down",
            }),
            None => Ok(()),
        }
    }

    pub(super) fn plan_svq_prepare(&mut self, cfg: SvqConfig) -> Result<Plan, PlanError> {
        self.guest.admit(EventKind::SvqPrepare)?;
        cfg.layout(self.guest.caps.page_size)?;
        self.prepared = Some(cfg);
        self.guest.mode = Mode::Prepared;
        Ok(Plan::default())
    }

    pub(super) fn plan_svq_switch(&mut self, cfg: Option<SvqConfig>) -> Result<Plan, PlanError> {
        self.no_svq_with_viommu()?;
        self.guest.admit(EventKind::SvqSwitch)?;
        let cfg = match (self.guest.mode, self.prepared, cfg) {
            (Mode::Prepared, Some(c), _) => c,
            (Mode::Passthrough, _, Some(c)) => c,
            (Mode::Passthrough, _, None) => return Err(PlanError::MissingSvqConfig),
            _ => return Err(self.out_of_order("svq_switch")),
        };
        let layout = cfg.layout(self.guest.caps.page_size)?;
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
        let cvq = if self.guest.caps.cvq_isolated {
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
            let d = Self::first_fit(&self.guest.caps, &tree, layout.ro(), "shadow vrings")?;
            tree.insert(d.first().raw(), d.last().raw());
            let u = Self::first_fit(&self.guest.caps, &tree, layout.device, "shadow vrings")?;
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
        for r in self.guest.units.values() {
            if !self.in_range(&r.gpa) {
                continue;
            }
            let i = Self::first_fit(&self.guest.caps, &tree, r.gpa.size(), "guest memory")?;
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
            self.set_iova(k, Some(i));
        }
        self.prepared = None;
        self.guest.mode = Mode::Svq;
        Ok(self.finish(ops))
    }

    pub(super) fn plan_failback(&mut self) -> Result<Plan, PlanError> {
        self.guest.admit(EventKind::Failback)?;
        if self.guest.mode == Mode::Prepared {
            self.prepared = None;
            self.guest.mode = Mode::Passthrough;
            return Ok(Plan::default());
        }
        let phase = Phase::Critical;
        let mut ops = Vec::new();
        self.ring_unmaps(&mut ops, phase);
        self.batch(&mut ops, phase, self.unmap_guest());
        self.buffer_unmaps(&mut ops, phase);
        let cvq_alone = self.cvq_alone_maps(&mut ops, phase)?;
        let maps: Vec<OpKind> = self
            .guest
            .units
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
        let keys: Vec<u64> = self.guest.units.keys().copied().collect();
        for k in keys {
            let g = self.guest.units[&k].gpa;
            let identity = Span::trusted(g.first().raw(), g.size());
            self.set_iova(k, self.in_range(&g).then_some(identity));
        }
        self.guest.mode = Mode::Passthrough;
        Ok(self.finish(ops))
    }

    pub(super) fn plan_complete(&mut self) -> Result<Plan, PlanError> {
        self.guest.admit(EventKind::Complete)?;
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
        for r in self.guest.units.values_mut() {
            r.iova = None;
        }
        self.guest.table.clear();
        self.guest.mode = Mode::Completed;
        Ok(self.finish(ops))
    }

    pub(super) fn plan_reset(&mut self) -> Result<Plan, PlanError> {
        // QEMU never acks IOTLB_PERSIST and unregisters the listener at every
        // device stop or reset, whatever the device is: every map is
        // invalidated (one batch) and mapped again at the next start.
        // An isolated control queue shadowed alone is stopped and started
        // with the device: its address space 1 maps go too, one message each.
        let phase = reset_phase(self.guest.mode);
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
}
