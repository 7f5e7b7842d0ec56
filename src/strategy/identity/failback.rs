//! Back to passthrough (failback), and the end of a migration (complete).

use super::*;

impl IdentityPlanner {
    pub(super) fn plan_failback(&mut self) -> Result<Plan, PlanError> {
        self.guest.admit(EventKind::Failback)?;
        let Some(s) = &self.svq else {
            // Not reached: both modes that admit a failback have shadow vrings.
            return Err(self.out_of_order("failback"));
        };
        let mut b = PlanBuilder::new();
        let mut critical: BTreeMap<u64, ()> = BTreeMap::new();
        let mut staged: BTreeMap<u64, Region> = BTreeMap::new();
        // Identity maps to restore: displaced memory inside the device range.
        let mut targets: SmallVec<[(u64, Piece); 4]> = SmallVec::new();
        for e in s.entries.values() {
            if let SvqEntry::Displaced { region, piece } = e {
                let r = &self.guest.units[region];
                staged.entry(*region).or_insert_with(|| {
                    let mut nr = r.clone();
                    nr.pieces.retain(|p| p.is_identity());
                    nr
                });
                if self.split(piece.gpa).1.is_empty() {
                    targets.push((*region, *piece));
                }
            }
        }
        for (_, p) in &targets {
            let (f, l) = p.gpa.bounds();
            for (at, e) in s.overlapping(f, l) {
                if critical.insert(at, ()).is_none() {
                    s.unmap_entry(&mut b, Phase::Critical, at, &e);
                }
            }
        }
        for (region, p) in &targets {
            let nr = staged.get_mut(region).expect("staged above");
            let id = Self::identity(p.gpa);
            Self::map_piece(&mut b, Phase::Critical, nr, &id);
            nr.pieces.push(id);
            nr.pieces.sort();
        }
        // The device runs on the guest's rings again: the rest can wait.
        Self::teardown_svq(s, &mut b, Phase::Background, &critical);
        let plan = b.finish(&self.guest.caps);
        self.svq = None;
        self.commit_regions(staged);
        self.guest.mode = Mode::Passthrough;
        Ok(plan)
    }

    pub(super) fn plan_complete(&mut self) -> Result<Plan, PlanError> {
        self.guest.admit(EventKind::Complete)?;
        let s = self.svq.as_ref().expect("svq mode has svq state");
        let mut b = PlanBuilder::new();
        for r in self.guest.units.values() {
            for p in r.pieces.iter().filter(|p| p.is_identity()) {
                b.invalidate(Phase::Background, ASID, p.iova);
            }
        }
        Self::teardown_svq(s, &mut b, Phase::Background, &BTreeMap::new());
        if let Some(c) = &mut self.cvq {
            c.teardown(&mut b, Phase::Background);
        }
        let plan = b.finish(&self.guest.caps);
        self.svq = None;
        for r in self.guest.units.values_mut() {
            r.pieces.clear();
        }
        self.guest.table.clear();
        self.guest.table.publish();
        self.guest.mode = Mode::Completed;
        Ok(plan)
    }
}
