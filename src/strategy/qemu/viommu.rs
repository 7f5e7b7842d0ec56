//! The baseline with a guest vIOMMU: one UPDATE per guest map, one
//! INVALIDATE of exactly the guest's range per unmap.

use super::*;

impl QemuPlanner {
    pub(super) fn plan_viommu_map(
        &mut self,
        giova: Iova,
        size: u64,
        gpa: Gpa,
        perm: Perm,
    ) -> Result<Plan, PlanError> {
        let (gi, hva) = self.guest.guest_map(giova, size, gpa, perm)?;
        let (f, _) = gi.bounds();
        let r = QRegion {
            gpa: gi,
            hva,
            perm,
            // Outside the device range the kernel refuses it: lost.
            // vhost_vdpa_iommu_map_notify checks the inclusive end: no off-by-one.
            // A destination waiting for the stream has no IOMMU notifier
            // (the listener registers it): mapped by the replay at start.
            iova: (self.guest.caps.range.contains_span(&gi) && !self.listener_off())
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
        self.guest.units.insert(f, r);
        Ok(self.finish(ops))
    }

    pub(super) fn plan_viommu_unmap(&mut self, giova: Iova, size: u64) -> Result<Plan, PlanError> {
        let (span, hit) = self.guest.guest_unmap(giova, size)?;
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
            .filter_map(|k| self.guest.units[k].iova)
            .map(|i| i.size())
            .sum();
        let send = self.space_created
            && !self.listener_off()
            && (self.guest.caps.range.contains_span(&span) || unpinned > 0);
        let ops = if send {
            vec![Op {
                phase: Phase::Prepare,
                asid: ASID,
                kind: OpKind::Invalidate { iova: span },
            }]
        } else {
            Vec::new()
        };
        let plan = plan_with_unpins(ops, &self.guest.caps, |_| unpinned);
        for k in hit {
            let u = self.guest.units.remove(&k).expect("found above");
            let (uf, ul) = u.gpa.bounds();
            self.guest.table.remove(uf, ul);
            // The rest of a cut map stays the guest's, but the kernel dropped
            // its entry whole: the device cannot reach it.
            let sides = [(uf < f).then(|| (uf, f - 1)), (ul > l).then(|| (l + 1, ul))];
            for (a, z) in sides.into_iter().flatten() {
                self.guest.units.insert(
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
        self.guest.table.publish();
        Ok(plan)
    }
}
