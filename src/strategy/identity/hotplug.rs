//! New memory at identity, and what collides with it: vrings and displaced
//! memory moved while prepared, new memory displaced in SVQ mode.

use super::*;

impl IdentityPlanner {
    /// The sizes `place_unit` asks the allocator for, in order.
    pub(super) fn unit_requests(
        s: &SvqState,
        mode: Mode,
        inside: Option<Span<Gpa>>,
        outs: &[Span<Gpa>],
    ) -> Vec<u64> {
        let mut v = Vec::new();
        if let Some(i) = inside {
            let (f, l) = i.bounds();
            let hits = s.overlapping(f, l);
            if hits.is_empty() || mode == Mode::Prepared {
                let mut sizes: Vec<u64> = hits.iter().map(|(_, e)| s.entry_size(e)).collect();
                sizes.sort_by_key(|&n| core::cmp::Reverse(n));
                v.extend(sizes);
            } else {
                v.push(i.size());
            }
        }
        v.extend(outs.iter().map(|o| o.size()));
        v
    }

    /// Maps new unit `r` (no pieces yet) in SVQ or prepared mode (see the
    /// module docs), staging what moves in `staged`.
    pub(super) fn place_unit(
        &self,
        s: &mut SvqState,
        mode: Mode,
        b: &mut PlanBuilder,
        staged: &mut BTreeMap<u64, Region>,
        r: &mut Region,
    ) -> Result<(), PlanError> {
        let g = r.gpa;
        let (inside, outs) = self.split(g);
        if let Some(i) = inside {
            let (f, l) = i.bounds();
            let hits = s.overlapping(f, l);
            if hits.is_empty() || mode == Mode::Prepared {
                // Prepared: the guest addresses memory by GPA, so
                // whatever is in the way moves, not the memory.
                // What moves gives its IOVAs back first, so that
                // none of them is lost outside [f, l].
                // Every unmap comes before any map: a moved
                // entry may land where another one was.
                for &(at, e) in &hits {
                    let last = s.entry_last(at, &e);
                    let freed = s.free(Span::trusted(at, last - at + 1));
                    debug_assert!(freed, "svq entries were allocated");
                    s.entries.remove(&at);
                    s.unmap_entry(b, Phase::Prepare, at, &e);
                }
                s.carve(f, l);
                // Largest first: a small block placed first may
                // take the only hole a large one fits.
                let mut hits = hits;
                hits.sort_by_key(|&(at, e)| core::cmp::Reverse(s.entry_last(at, &e) - at));
                for (_, e) in hits {
                    match e {
                        SvqEntry::Queue { vq, .. } => {
                            let nf = s.place_queue(vq, "moving a shadow vring")?;
                            s.map_queue(b, Phase::Prepare, vq, nf);
                        }
                        SvqEntry::Buffer { idx, .. } => {
                            let nf = s.place_buffer(idx, "moving a host buffer")?;
                            s.map_buffer(b, Phase::Prepare, idx, nf);
                        }
                        SvqEntry::Displaced { region, piece } => {
                            let iova = s.alloc(piece.gpa.size(), "moving displaced memory")?;
                            let np = Piece {
                                gpa: piece.gpa,
                                iova,
                            };
                            let mut owner = match self.lookup_region(staged, region) {
                                Some(o) => o.clone(),
                                None => r.clone(),
                            };
                            for q in owner.pieces.iter_mut() {
                                if *q == piece {
                                    *q = np;
                                }
                            }
                            s.entries.insert(
                                iova.first().raw(),
                                SvqEntry::Displaced { region, piece: np },
                            );
                            Self::map_piece(b, Phase::Prepare, &owner, &np);
                            if region == r.gpa.first().raw() {
                                *r = owner;
                            } else {
                                staged.insert(region, owner);
                            }
                        }
                    }
                }
                let piece = Self::identity(i);
                Self::map_piece(b, Phase::Prepare, r, &piece);
                r.pieces.push(piece);
            } else {
                // In SVQ mode: the memory moves. Its identity
                // range stays its own, for a free failback.
                s.claim(f, l, &hits);
                s.displace(
                    b,
                    Phase::Prepare,
                    g.first().raw(),
                    r,
                    i,
                    "displaced hot-plugged memory",
                )?;
            }
        }
        for o in outs {
            s.displace(
                b,
                Phase::Prepare,
                g.first().raw(),
                r,
                o,
                "guest memory outside the device range",
            )?;
        }
        Ok(())
    }

    /// Maps new units (regions, or guest maps) at identity, displacing or
    /// moving what collides. Validated input only; commits on success.
    pub(super) fn add_units(
        &mut self,
        units: Vec<(Span<Gpa>, Hva, Perm)>,
    ) -> Result<Plan, PlanError> {
        let mut b = PlanBuilder::new();
        let mut staged: BTreeMap<u64, Region> = BTreeMap::new();
        let mut svq = self.svq.clone();
        for (g, hva, perm) in units {
            let mut r = Region {
                gpa: g,
                hva,
                perm,
                pieces: SmallVec::new(),
            };
            match (&mut svq, self.guest.mode) {
                (None, _) => {
                    if let (Some(i), _) = self.split(g) {
                        let piece = Self::identity(i);
                        Self::map_piece(&mut b, Phase::Prepare, &r, &piece);
                        r.pieces.push(piece);
                    }
                }
                (Some(s), mode) => {
                    // Greedy first (window, then holes, best fit); when that
                    // runs out, an exact search over every free range.
                    let saved = (s.clone(), b.clone(), staged.clone(), r.clone());
                    match self.place_unit(s, mode, &mut b, &mut staged, &mut r) {
                        Err(PlanError::OutOfIova { .. }) => {
                            (*s, b, staged, r) = saved;
                            let (inside, outs) = self.split(g);
                            s.pending = Some(Self::unit_requests(s, mode, inside, &outs));
                            self.place_unit(s, mode, &mut b, &mut staged, &mut r)?;
                            debug_assert!(s.forced.is_empty() && s.pending.is_none());
                        }
                        other => other?,
                    }
                }
            }
            r.pieces.sort();
            staged.insert(g.first().raw(), r);
        }
        let plan = b.finish(&self.guest.caps);
        self.svq = svq;
        self.commit_regions(staged);
        Ok(plan)
    }

    /// Unmaps the unit starting at `gpa`.
    pub(super) fn remove_unit(&mut self, gpa: Gpa) -> Result<Plan, PlanError> {
        let r = self
            .guest
            .units
            .get(&gpa.raw())
            .ok_or(PlanError::UnknownRegion { gpa: gpa.raw() })?;
        let mut b = PlanBuilder::new();
        for p in &r.pieces {
            b.invalidate(Phase::Prepare, ASID, p.iova);
        }
        let plan = b.finish(&self.guest.caps);
        // Nothing below can fail: commit.
        let r = self
            .guest
            .units
            .remove(&gpa.raw())
            .expect("looked up above");
        if let Some(s) = &mut self.svq {
            // Every IOVA the region held is free again, identity ones too:
            // a region plugged there later finds its identity range free,
            // and until then displaced memory may use it.
            for p in &r.pieces {
                if !p.is_identity() {
                    s.entries.remove(&p.iova.first().raw());
                }
                let freed = s.free(p.iova);
                debug_assert!(freed, "a mapped piece is not free space");
            }
            s.release(r.gpa.first().raw(), r.gpa.last().raw());
        }
        let (f, l) = r.gpa.bounds();
        self.guest.table.remove(f, l);
        self.guest.table.publish();
        Ok(plan)
    }
}
