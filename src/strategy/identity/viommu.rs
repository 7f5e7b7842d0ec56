//! A guest vIOMMU: guest maps at identity of their guest IOVA, and partial
//! unmaps that keep the rest of a map reachable.

use super::*;

impl IdentityPlanner {
    pub(super) fn plan_viommu_map(
        &mut self,
        giova: Iova,
        size: u64,
        gpa: Gpa,
        perm: Perm,
    ) -> Result<Plan, PlanError> {
        let (gi, hva) = self.guest.guest_map(giova, size, gpa, perm)?;
        self.add_units(vec![(gi, hva, perm)])
    }

    pub(super) fn plan_viommu_unmap(&mut self, giova: Iova, size: u64) -> Result<Plan, PlanError> {
        let (span, hit) = self.guest.guest_unmap(giova, size)?;
        let (f, l) = span.bounds();
        // The kernel drops whole entries: every entry of a cut map is
        // unmapped, and what stays mapped is mapped again at the same IOVAs
        // (pinned again: counted in the cost). On a set_map device the batch
        // makes the swap atomic for the device.
        let mut b = PlanBuilder::new();
        let mut keep: SmallVec<[Region; 2]> = SmallVec::new();
        for k in &hit {
            let u = &self.guest.units[k];
            for p in &u.pieces {
                b.invalidate(Phase::Prepare, ASID, p.iova);
            }
            let (uf, ul) = u.gpa.bounds();
            let sides = [(uf < f).then(|| (uf, f - 1)), (ul > l).then(|| (l + 1, ul))];
            for (a, z) in sides.into_iter().flatten() {
                let mut nr = Region {
                    gpa: Span::trusted(a, z - a + 1),
                    hva: u.hva_of(a),
                    perm: u.perm,
                    pieces: SmallVec::new(),
                };
                for p in &u.pieces {
                    if let Some(c) = clip_piece(p, a, z) {
                        Self::map_piece(&mut b, Phase::Prepare, &nr, &c);
                        nr.pieces.push(c);
                    }
                }
                keep.push(nr);
            }
        }
        let plan = b.finish(&self.guest.caps);
        // Nothing below can fail: commit.
        for k in &hit {
            let u = self.guest.units.remove(k).expect("found above");
            let (cf, cl) = (u.gpa.first().raw().max(f), u.gpa.last().raw().min(l));
            self.guest.table.remove(cf, cl);
            if let Some(s) = &mut self.svq {
                for p in &u.pieces {
                    if !p.is_identity() {
                        s.entries.remove(&p.iova.first().raw());
                    }
                    // The unmapped part's IOVAs are free again.
                    if let Some(cut) = clip_piece(p, cf, cl) {
                        let freed = s.free(cut.iova);
                        debug_assert!(freed, "a mapped piece is not free space");
                    }
                }
                let (uf, ul) = u.gpa.bounds();
                s.release(uf, ul);
            }
        }
        let mut staged = BTreeMap::new();
        for nr in keep {
            let key = nr.gpa.first().raw();
            if let Some(s) = &mut self.svq {
                for p in nr.pieces.iter().filter(|p| !p.is_identity()) {
                    s.entries.insert(
                        p.iova.first().raw(),
                        SvqEntry::Displaced {
                            region: key,
                            piece: *p,
                        },
                    );
                }
            }
            staged.insert(key, nr);
        }
        self.commit_regions(staged);
        Ok(plan)
    }
}

/// The part of `p` mapping guest addresses `[a, z]`, at the same offset.
fn clip_piece(p: &Piece, a: u64, z: u64) -> Option<Piece> {
    let (pf, pl) = p.gpa.bounds();
    let (x, y) = (pf.max(a), pl.min(z));
    (x <= y).then(|| Piece {
        gpa: Span::trusted(x, y - x + 1),
        iova: Span::trusted(p.iova.first().raw() + (x - pf), y - x + 1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_a_piece_keeps_its_offset() {
        let p = Piece {
            gpa: Span::trusted(0x10000, 0x4000),
            iova: Span::trusted(0x90000, 0x4000),
        };
        let c = clip_piece(&p, 0x11000, 0x12fff).unwrap();
        assert_eq!(c.gpa, Span::trusted(0x11000, 0x2000));
        assert_eq!(c.iova, Span::trusted(0x91000, 0x2000));
        // Clipped by a range larger than the piece: the piece itself.
        assert_eq!(clip_piece(&p, 0, u64::MAX), Some(p));
        assert_eq!(clip_piece(&p, 0x14000, 0x20000), None);
    }
}
