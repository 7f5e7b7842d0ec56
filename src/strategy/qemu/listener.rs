//! The memory listener's side of the baseline: guest memory mapped and
//! unmapped section by section, on a source and on a destination.

use super::*;

impl QemuPlanner {
    /// `start` with a guest vIOMMU: vhost_vdpa_dev_start registers the
    /// listener, whose region_add for the IOMMU region registers the
    /// notifier and replays the guest's live maps
    /// (vhost_vdpa_iommu_region_add -> memory_region_iommu_replay ->
    /// vhost_vdpa_iommu_map_notify): one unbatched UPDATE per map (the
    /// listener's batch opens only for RAM sections), inside the downtime.
    pub(super) fn start_viommu(&mut self) -> Result<Plan, PlanError> {
        let mut ops = Vec::new();
        let mut mapped = Vec::new();
        for (&k, r) in &self.guest.units {
            if self.guest.caps.range.contains_span(&r.gpa) {
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
            self.set_iova(k, Some(iova));
        }
        self.guest.mode = Mode::Passthrough;
        Ok(self.finish(ops))
    }

    /// `vhost_vdpa_listener_skipped_section`: a RAM section is mapped only
    /// when it starts at or above the range's first address and its
    /// exclusive end does not pass the range's last address. So a section
    /// whose last byte *is* the range's last byte is skipped ("RAM section
    /// out of device range") although the kernel would take it: QEMU's
    /// off-by-one, reproduced.
    pub(super) fn in_range(&self, g: &Span<Gpa>) -> bool {
        g.first().raw() >= self.guest.caps.range.first()
            && g.last().raw() < self.guest.caps.range.last()
    }

    pub(super) fn batch(&self, ops: &mut Vec<Op>, phase: Phase, body: Vec<OpKind>) {
        if body.is_empty() {
            return;
        }
        let wrap = self.guest.caps.batching;
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

    pub(super) fn set_xlate(&mut self, r: &QRegion) {
        let (f, l) = r.gpa.bounds();
        self.guest.table.remove(f, l);
        if let Some(i) = r.iova {
            self.guest
                .table
                .set(f, l, i.first().raw().wrapping_sub(f), r.perm);
        }
    }

    /// Unit `k` is mapped at `iova` now (`None`: not mapped).
    pub(super) fn set_iova(&mut self, k: u64, iova: Option<Span<Iova>>) {
        let r = self.guest.units.get_mut(&k).expect("a present unit");
        r.iova = iova;
        let r = r.clone();
        self.set_xlate(&r);
    }

    pub(super) fn unmap_guest(&self) -> Vec<OpKind> {
        self.guest
            .units
            .values()
            .filter_map(|r| r.iova)
            .map(|iova| OpKind::Invalidate { iova })
            .collect()
    }

    /// Whether the listener is unregistered on a destination waiting for
    /// the stream (the machine-creation reset unregistered it, and
    /// `vhost_vdpa_dev_start` registers it again only at start): nothing
    /// the guest's memory or vIOMMU does reaches the device before then.
    pub(super) fn listener_off(&self) -> bool {
        matches!(self.guest.mode, Mode::Incoming | Mode::Switchover)
    }

    pub(super) fn plan_add_regions(&mut self, specs: &[RegionSpec]) -> Result<Plan, PlanError> {
        let Some(specs) = self.guest.declare(specs)? else {
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
                let iova = if self.guest.mode == Mode::Svq {
                    let i = Self::first_fit(&self.guest.caps, &tree, g.size(), "guest memory")?;
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
            self.guest.units.insert(r.gpa.first().raw(), r);
        }
        Ok(self.finish(ops))
    }

    pub(super) fn plan_remove_region(&mut self, gpa: Gpa) -> Result<Plan, PlanError> {
        if self.guest.undeclare(gpa)? {
            return Ok(Plan::default());
        }
        let r = self
            .guest
            .units
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
        let r = self
            .guest
            .units
            .remove(&gpa.raw())
            .expect("looked up above");
        if let (Some(i), Mode::Svq) = (r.iova, self.guest.mode) {
            self.tree.remove(&i.first().raw());
        }
        let (f, l) = r.gpa.bounds();
        self.guest.table.remove(f, l);
        Ok(self.finish(ops))
    }

    pub(super) fn plan_incoming(&mut self, regions: &[RegionSpec]) -> Result<Plan, PlanError> {
        self.guest.check_fresh()?;
        if let Some(v) = &mut self.guest.viommu {
            v.add(&self.guest.caps, regions)?;
            self.guest.mode = Mode::Incoming;
            return Ok(Plan::default());
        }
        let specs = validate_regions(&self.guest.caps, regions, |_, _| None)?;
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
            self.guest.units.insert(g.first().raw(), r);
        }
        self.cvq_alone.clear();
        self.guest.mode = Mode::Incoming;
        Ok(self.finish(ops))
    }

    pub(super) fn plan_start(&mut self) -> Result<Plan, PlanError> {
        self.guest.admit(EventKind::Start)?;
        // vhost_vdpa_dev_start on the last device registers the listener
        // again, after the stream has ended: every section mapped (pinned)
        // inside the downtime.
        if self.guest.viommu.is_some() {
            return self.start_viommu();
        }
        let maps: Vec<(u64, Span<Iova>, OpKind)> = self
            .guest
            .units
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
            self.set_iova(k, Some(iova));
        }
        self.guest.mode = Mode::Passthrough;
        Ok(self.finish(ops))
    }
}
