//! The SVQ window: where vrings and displaced memory are allocated (window,
//! holes, claims, and an exact search when greedy placement runs out).

use super::*;
use crate::addr::overlapping;
use crate::alloc::{fit, Fit};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SvqEntry {
    /// A queue's block: desc+driver (ro) then device (rw).
    Queue { vq: u32, last: u64 },
    /// Guest memory mapped away from its GPA.
    Displaced { region: u64, piece: Piece },
    /// Host buffer `idx` (see [`HostBuffer`]).
    Buffer { idx: u32, last: u64 },
}

#[derive(Clone, Debug)]
pub(super) struct SvqState {
    pub(super) cfg: SvqConfig,
    pub(super) layout: QueueLayout,
    /// Address space of the vrings.
    pub(super) ring_asid: u32,
    /// With vrings in their own address space: their allocator, over the
    /// whole device range (nothing else lives there). `None`: vrings share
    /// `alloc` and `entries` with displaced memory.
    pub(super) rings: Option<IovaAllocator>,
    /// The window of the guest's address space: vrings (when shared) and
    /// displaced memory.
    pub(super) alloc: IovaAllocator,
    /// The free IOVAs of the device range below a window chosen above
    /// `max_gpa` (`None` when the window already spans the whole range):
    /// what nothing mapped keeps, used only when the window is full.
    pub(super) rest: Option<IovaAllocator>,
    /// Identity ranges `first -> last` of memory displaced in SVQ mode,
    /// kept free so that its failback maps it home without moving anything.
    pub(super) claims: BTreeMap<u64, u64>,
    /// The free bytes of `claims`: the last resort when the window and the
    /// rest of the range are full (their owner's failback then moves
    /// whatever was put there, while the device is stopped).
    pub(super) spare: Option<IovaAllocator>,
    /// Sizes the next allocations will ask for, to be placed together by an
    /// exact search at the first of them (set when greedy placement failed).
    pub(super) pending: Option<Vec<u64>>,
    /// Placements chosen by that search, handed out in order.
    pub(super) forced: std::collections::VecDeque<Span<Iova>>,
    /// IOVA of each queue's block.
    pub(super) queues: Vec<u64>,
    /// The host buffers, and the IOVA of each.
    pub(super) bufs: Vec<HostBuffer>,
    pub(super) buf_iovas: Vec<u64>,
    /// Everything mapped in the window, by first IOVA.
    pub(super) entries: BTreeMap<u64, SvqEntry>,
}

impl SvqEntry {
    /// The entry's last IOVA.
    pub(super) fn last(&self) -> u64 {
        match self {
            SvqEntry::Queue { last, .. } | SvqEntry::Buffer { last, .. } => *last,
            SvqEntry::Displaced { piece, .. } => piece.iova.last().raw(),
        }
    }
}

impl SvqState {
    pub(super) fn entry_last(&self, first: u64, e: &SvqEntry) -> u64 {
        debug_assert!(
            !matches!(e, SvqEntry::Displaced { piece, .. } if piece.iova.first().raw() != first),
            "a displaced piece is keyed by its first IOVA"
        );
        e.last()
    }

    /// The entry at `at` unmapped: one INVALIDATE in its address space.
    pub(super) fn unmap_entry(&self, b: &mut PlanBuilder, phase: Phase, at: u64, e: &SvqEntry) {
        match *e {
            SvqEntry::Queue { .. } => self.unmap_queue(b, phase, at),
            SvqEntry::Buffer { idx, .. } => self.unmap_buffer(b, phase, idx, at),
            SvqEntry::Displaced { piece, .. } => b.invalidate(phase, ASID, piece.iova),
        }
    }

    /// The bytes the entry maps.
    pub(super) fn entry_size(&self, e: &SvqEntry) -> u64 {
        match *e {
            SvqEntry::Queue { .. } => self.layout.total(),
            SvqEntry::Buffer { idx, .. } => self.bufs[idx as usize].size,
            SvqEntry::Displaced { piece, .. } => piece.gpa.size(),
        }
    }

    /// Entries overlapping `[f, l]`, by IOVA.
    pub(super) fn overlapping(&self, f: u64, l: u64) -> SmallVec<[(u64, SvqEntry); 4]> {
        overlapping(&self.entries, |k, e| self.entry_last(k, e), f, l)
            .map(|(k, e)| (k, *e))
            .collect()
    }

    /// Allocates `size` bytes: best fit in the window, else best fit in the
    /// free holes of the rest of the device range.
    pub(super) fn alloc(
        &mut self,
        size: u64,
        purpose: &'static str,
    ) -> Result<Span<Iova>, PlanError> {
        if let Some(sizes) = self.pending.take() {
            match pack(&self.merged_free(), &sizes) {
                Some(spans) => self.forced = spans.into(),
                None => return Err(self.out_of_iova(size, purpose)),
            }
        }
        if let Some(sp) = self.forced.pop_front() {
            debug_assert_eq!(sp.size(), size, "requests follow unit_requests");
            self.carve(sp.first().raw(), sp.last().raw());
            return Ok(sp);
        }
        if let Some(s) = self.alloc.alloc(size) {
            return Ok(s);
        }
        if let Some(s) = self.rest.as_mut().and_then(|r| r.alloc(size)) {
            return Ok(s);
        }
        if let Some(s) = self.spare.as_mut().and_then(|r| r.alloc(size)) {
            return Ok(s);
        }
        // Last: free ranges of different allocators may touch (a claim next
        // to the window's free space): best fit over their union.
        if let Some(f) = fit(self.merged_free(), size, Fit::Best) {
            self.carve(f, f + (size - 1));
            return Ok(Span::trusted(f, size));
        }
        Err(self.out_of_iova(size, purpose))
    }

    /// Every free range of the window, the rest and the spare, adjacent
    /// ones merged, by address.
    pub(super) fn merged_free(&self) -> Vec<(u64, u64)> {
        let mut all: Vec<(u64, u64)> = self.alloc.free_bounds().collect();
        for r in [&self.rest, &self.spare].into_iter().flatten() {
            all.extend(r.free_bounds());
        }
        all.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(all.len());
        for (f, l) in all {
            match merged.last_mut() {
                Some(m) if m.1.checked_add(1) == Some(f) => m.1 = l,
                _ => merged.push((f, l)),
            }
        }
        merged
    }

    pub(super) fn out_of_iova(&self, size: u64, purpose: &'static str) -> PlanError {
        PlanError::OutOfIova {
            needed: size,
            purpose,
            window: Some(self.alloc.window_bounds()),
            largest_free: self.alloc.largest_free(),
            considered: self.merged_free(),
        }
    }

    /// Gives `span` back to whichever allocator owns each of its bytes:
    /// the spare where a claim covers them, the window or the rest elsewhere.
    pub(super) fn free(&mut self, span: Span<Iova>) -> bool {
        let (f, l) = span.bounds();
        let mut ok = true;
        let mut cur = Some(f);
        let hit: SmallVec<[(u64, u64); 2]> = claims_in(&self.claims, f, l).collect();
        for (cf, cl) in hit {
            let (a, z) = (cf.max(f), cl.min(l));
            if let Some(c) = cur.filter(|&c| c < a) {
                ok &= self.free_plain(Span::trusted(c, a - c));
            }
            if let Some(sp) = &mut self.spare {
                ok &= sp.free(Span::trusted(a, z - a + 1));
            }
            cur = z.checked_add(1);
        }
        if let Some(c) = cur.filter(|&c| c <= l) {
            ok &= self.free_plain(Span::trusted(c, l - c + 1));
        }
        ok
    }

    pub(super) fn free_plain(&mut self, span: Span<Iova>) -> bool {
        let a = self.alloc.free(span);
        let b = self.rest.as_mut().map_or(true, |r| r.free(span));
        a && b
    }

    /// Takes `[f, l]` out of the free space (memory mapped there now).
    pub(super) fn carve(&mut self, f: u64, l: u64) {
        self.alloc.carve(f, l);
        for r in [&mut self.rest, &mut self.spare].into_iter().flatten() {
            r.carve(f, l);
        }
    }

    /// Keeps `[f, l]`, the identity range of memory just displaced, for its
    /// owner: its free bytes (all but `hits`, what is mapped there) move to
    /// the spare.
    pub(super) fn claim(&mut self, f: u64, l: u64, hits: &[(u64, SvqEntry)]) {
        self.carve(f, l);
        let spare = self.spare.get_or_insert_with(|| {
            let w = self.alloc.window_bounds();
            let (lo, hi) = match &self.rest {
                Some(r) => (r.window_bounds().0.min(w.0), w.1),
                None => w,
            };
            let mut sp =
                IovaAllocator::new(lo, hi, self.alloc.page()).expect("the window holds a page");
            sp.carve(lo, hi);
            sp
        });
        let mut cur = Some(f);
        let mut spans: SmallVec<[Span<Iova>; 4]> = SmallVec::new();
        for (at, e) in hits {
            let el = e.last();
            if let Some(c) = cur.filter(|&c| c < *at) {
                spans.push(Span::trusted(c, at - c));
            }
            cur = el.checked_add(1).map(|n| n.max(cur.unwrap_or(n)));
        }
        if let Some(c) = cur.filter(|&c| c <= l) {
            spans.push(Span::trusted(c, l - c + 1));
        }
        for sp in spans {
            let freed = spare.free(sp);
            debug_assert!(freed, "a claimed range starts carved");
        }
        self.claims.insert(f, l);
    }

    /// Drops the claims inside `[f, l]` (their owner is gone): their free
    /// bytes go back to the window or the rest.
    pub(super) fn release(&mut self, f: u64, l: u64) {
        let gone: SmallVec<[(u64, u64); 2]> = claims_in(&self.claims, f, l).collect();
        for (cf, cl) in gone {
            self.claims.remove(&cf);
            let free: SmallVec<[(u64, u64); 4]> = self
                .spare
                .iter()
                .flat_map(|sp| sp.free_bounds())
                .filter_map(|(a, z)| {
                    let (x, y) = (a.max(cf), z.min(cl));
                    (x <= y).then_some((x, y))
                })
                .collect();
            if let Some(sp) = &mut self.spare {
                sp.carve(cf, cl);
            }
            for (x, y) in free {
                let freed = self.free_plain(Span::trusted(x, y - x + 1));
                debug_assert!(freed, "claimed bytes were carved from the window");
            }
        }
    }

    /// Allocates and records host buffer `idx`, next to the vrings.
    pub(super) fn place_buffer(
        &mut self,
        idx: u32,
        purpose: &'static str,
    ) -> Result<u64, PlanError> {
        let size = self.bufs[idx as usize].size;
        let f = self.place_block(size, purpose, |last| SvqEntry::Buffer { idx, last })?;
        set_slot(&mut self.buf_iovas, idx, f);
        Ok(f)
    }

    /// Allocates `size` bytes for a vring block or host buffer: from the
    /// vrings' own address space when they have one, else from the window
    /// (recorded in `entries` as `entry(last)`, where collisions see it).
    fn place_block(
        &mut self,
        size: u64,
        purpose: &'static str,
        entry: impl FnOnce(u64) -> SvqEntry,
    ) -> Result<u64, PlanError> {
        let blk = match &mut self.rings {
            Some(r) => r.alloc(size).ok_or_else(|| PlanError::OutOfIova {
                needed: size,
                purpose,
                window: Some(r.window_bounds()),
                largest_free: r.largest_free(),
                considered: r.free_bounds().collect(),
            })?,
            None => {
                let blk = self.alloc(size, purpose)?;
                self.entries
                    .insert(blk.first().raw(), entry(blk.last().raw()));
                blk
            }
        };
        Ok(blk.first().raw())
    }

    /// The entry of host buffer `idx` at `iova`.
    pub(super) fn buffer_entry(&self, idx: u32, iova: u64) -> Entry {
        let b = &self.bufs[idx as usize];
        Entry {
            iova: Span::trusted(iova, b.size),
            hva: b.hva,
            perm: b.perm,
        }
    }

    /// Every host buffer's entry now, as `(asid, entry)`.
    pub(super) fn buffer_entries(&self) -> impl Iterator<Item = (u32, Entry)> + '_ {
        self.buf_iovas
            .iter()
            .enumerate()
            .map(|(i, &f)| (self.ring_asid, self.buffer_entry(i as u32, f)))
    }

    pub(super) fn map_buffer(&self, b: &mut PlanBuilder, phase: Phase, idx: u32, iova: u64) {
        let e = self.buffer_entry(idx, iova);
        b.update(phase, self.ring_asid, e.iova, e.hva, e.perm);
    }

    pub(super) fn unmap_buffer(&self, b: &mut PlanBuilder, phase: Phase, idx: u32, iova: u64) {
        b.invalidate(phase, self.ring_asid, self.buffer_entry(idx, iova).iova);
    }

    /// Allocates and records the block of queue `vq`.
    pub(super) fn place_queue(&mut self, vq: u32, purpose: &'static str) -> Result<u64, PlanError> {
        let size = self.layout.total();
        let f = self.place_block(size, purpose, |last| SvqEntry::Queue { vq, last })?;
        set_slot(&mut self.queues, vq, f);
        Ok(f)
    }

    /// Maps `gpa` (part of region `r`, keyed `key`) at a free IOVA of the window.
    pub(super) fn displace(
        &mut self,
        b: &mut PlanBuilder,
        phase: Phase,
        key: u64,
        r: &mut Region,
        gpa: Span<Gpa>,
        purpose: &'static str,
    ) -> Result<(), PlanError> {
        let iova = self.alloc(gpa.size(), purpose)?;
        let piece = Piece { gpa, iova };
        self.entries.insert(
            iova.first().raw(),
            SvqEntry::Displaced { region: key, piece },
        );
        IdentityPlanner::map_piece(b, phase, r, &piece);
        r.pieces.push(piece);
        Ok(())
    }

    /// The two entries of queue `vq` at `iova`: descriptor table and driver
    /// area read-only, device area read-write.
    pub(super) fn queue_entries(&self, vq: u32, iova: u64) -> [Entry; 2] {
        let [desc, _, dev] = areas(&self.cfg, &self.layout, self.ring_asid, vq, iova);
        [
            Entry {
                iova: Span::trusted(iova, self.layout.ro()),
                hva: desc.hva,
                perm: Perm::Ro,
            },
            Entry {
                iova: dev.iova,
                hva: dev.hva,
                perm: Perm::Rw,
            },
        ]
    }

    pub(super) fn map_queue(&self, b: &mut PlanBuilder, phase: Phase, vq: u32, iova: u64) {
        for e in self.queue_entries(vq, iova) {
            b.update(phase, self.ring_asid, e.iova, e.hva, e.perm);
        }
    }

    pub(super) fn unmap_queue(&self, b: &mut PlanBuilder, phase: Phase, iova: u64) {
        b.invalidate(phase, self.ring_asid, Span::trusted(iova, self.layout.ro()));
        b.invalidate(
            phase,
            self.ring_asid,
            Span::trusted(iova + self.layout.ro(), self.layout.device),
        );
    }
}

impl IdentityPlanner {
    /// Chooses the window and lays out vrings plus displaced memory for
    /// every part of a region outside the device range.
    pub(super) fn setup_svq(
        &self,
        cfg: SvqConfig,
        phase: Phase,
    ) -> Result<(Plan, SvqState, BTreeMap<u64, Region>), PlanError> {
        let layout = cfg.layout(self.guest.caps.page_size)?;
        let p = self.guest.caps.page_size;
        let (uf, ul) = self.usable;
        // (window, rest of the device range below it)
        let mut candidates: SmallVec<[(IovaAllocator, Option<IovaAllocator>); 2]> = SmallVec::new();
        if let Some(floor) = p.align_up(self.max_gpa().max(uf)) {
            if let Some(mut a) = IovaAllocator::new(floor, ul, p) {
                for r in self.guest.units.values().rev() {
                    if r.gpa.last().raw() < floor {
                        break;
                    }
                    a.carve(r.gpa.first().raw(), r.gpa.last().raw());
                }
                let mut rest = floor
                    .checked_sub(1)
                    .and_then(|below| IovaAllocator::new(uf, below, p));
                if let Some(rest) = &mut rest {
                    for r in self.guest.units.values() {
                        if r.gpa.first().raw() >= floor {
                            break;
                        }
                        for piece in &r.pieces {
                            rest.carve(piece.iova.first().raw(), piece.iova.last().raw());
                        }
                    }
                }
                candidates.push((a, rest));
            }
        }
        if let Some(mut a) = IovaAllocator::new(uf, ul, p) {
            for r in self.guest.units.values() {
                a.carve(r.gpa.first().raw(), r.gpa.last().raw());
            }
            candidates.push((a, None));
        }
        let mut last_err = PlanError::OutOfIova {
            needed: layout.total(),
            purpose: "shadow vrings",
            window: None,
            largest_free: 0,
            considered: Vec::new(),
        };
        for (alloc, rest) in candidates {
            let mut s = SvqState {
                cfg,
                layout,
                ring_asid: self.ring_asid,
                rings: (self.ring_asid != GUEST_ASID)
                    .then(|| IovaAllocator::new(uf, ul, p))
                    .flatten()
                    .map(|mut a| {
                        // An isolated control queue's buffers share the
                        // vrings' address space.
                        if let Some(c) = &self.cvq {
                            c.carve_from(&mut a);
                        }
                        a
                    }),
                alloc,
                rest,
                claims: BTreeMap::new(),
                spare: None,
                pending: None,
                forced: Default::default(),
                queues: Vec::new(),
                bufs: self.buffers.clone(),
                buf_iovas: Vec::new(),
                entries: BTreeMap::new(),
            };
            // The vrings are laid out in the window alone (the next
            // candidate is every hole); the rest of the range is only for
            // memory displaced later, when the window is full.
            let rest = s.rest.take();
            match self.fill_svq(&mut s, phase) {
                Ok((plan, staged)) => {
                    // Memory displaced at setup went to the window too
                    // (the rest was taken out above), which lies above the
                    // rest: nothing of the rest is mapped.
                    s.rest = rest;
                    return Ok((plan, s, staged));
                }
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    pub(super) fn fill_svq(
        &self,
        s: &mut SvqState,
        phase: Phase,
    ) -> Result<(Plan, BTreeMap<u64, Region>), PlanError> {
        let mut b = PlanBuilder::new();
        s.queues.reserve(s.cfg.queues as usize);
        for vq in 0..s.cfg.queues {
            let f = s.place_queue(vq, "shadow vrings")?;
            s.map_queue(&mut b, phase, vq, f);
        }
        for idx in 0..s.bufs.len() as u32 {
            let f = s.place_buffer(idx, "host buffers")?;
            s.map_buffer(&mut b, phase, idx, f);
        }
        let mut staged = BTreeMap::new();
        for (&k, r) in &self.guest.units {
            let (_, outs) = self.split(r.gpa);
            if outs.is_empty() {
                continue;
            }
            let mut nr = r.clone();
            for o in outs {
                s.displace(
                    &mut b,
                    phase,
                    k,
                    &mut nr,
                    o,
                    "guest memory outside the device range",
                )?;
            }
            nr.pieces.sort();
            staged.insert(k, nr);
        }
        Ok((b.finish(&self.guest.caps), staged))
    }

    /// Unmaps every svq entry except those in `skip`, in `phase`.
    pub(super) fn teardown_svq(
        s: &SvqState,
        b: &mut PlanBuilder,
        phase: Phase,
        skip: &BTreeMap<u64, ()>,
    ) {
        if s.rings.is_some() {
            for &q in &s.queues {
                s.unmap_queue(b, phase, q);
            }
            for (i, &f) in s.buf_iovas.iter().enumerate() {
                s.unmap_buffer(b, phase, i as u32, f);
            }
        }
        for (&f, e) in &s.entries {
            if skip.contains_key(&f) {
                continue;
            }
            s.unmap_entry(b, phase, f, e);
        }
    }
}

/// Records `f` as slot `i` of `v`: a new one at the end, or a moved one.
fn set_slot(v: &mut Vec<u64>, i: u32, f: u64) {
    match v.get_mut(i as usize) {
        Some(q) => *q = f,
        None => v.push(f),
    }
}

/// Places every size of `sizes` whole in one of the free ranges `free`
/// (inclusive, disjoint), or `None` when no placement exists: an exhaustive
/// search, largest piece first, that tries each distinct remaining hole
/// size once per piece. Bounded to 100,000 steps (far beyond the few pieces
/// one event moves); past that it answers `None`. Returns the spans in the
/// order of `sizes`.
fn pack(free: &[(u64, u64)], sizes: &[u64]) -> Option<Vec<Span<Iova>>> {
    fn go(
        order: &[usize],
        sizes: &[u64],
        room: &mut [u128],
        pick: &mut [usize],
        budget: &mut u32,
    ) -> bool {
        let Some((&i, rest)) = order.split_first() else {
            return true;
        };
        let need = u128::from(sizes[i]);
        let mut tried: SmallVec<[u128; 8]> = SmallVec::new();
        for h in 0..room.len() {
            let r = room[h];
            if r < need || tried.contains(&r) {
                continue;
            }
            if *budget == 0 {
                return false;
            }
            *budget -= 1;
            tried.push(r);
            room[h] = r - need;
            pick[i] = h;
            let ok = go(rest, sizes, room, pick, budget);
            room[h] = r;
            if ok {
                return true;
            }
        }
        false
    }
    if sizes.contains(&0) {
        return None;
    }
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| core::cmp::Reverse(sizes[i]));
    // Bytes left in each hole (a hole may span all 2^64 addresses).
    let mut room: Vec<u128> = free.iter().map(|&(f, l)| u128::from(l - f) + 1).collect();
    let mut pick = vec![0usize; sizes.len()];
    let mut budget = 100_000u32;
    if !go(&order, sizes, &mut room, &mut pick, &mut budget) {
        return None;
    }
    // Lay the pieces of each hole out from its start, in search order.
    let mut next: Vec<u64> = free.iter().map(|&(f, _)| f).collect();
    let mut out = vec![Span::trusted(0, 1); sizes.len()];
    for &i in &order {
        let h = pick[i];
        out[i] = Span::trusted(next[h], sizes[i]);
        next[h] = next[h].wrapping_add(sizes[i]);
    }
    Some(out)
}

/// The claims (`first -> last`) overlapping `[f, l]`, by address.
fn claims_in(claims: &BTreeMap<u64, u64>, f: u64, l: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
    overlapping(claims, |_, &cl| cl, f, l).map(|(a, &b)| (a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{DeviceRange, Hva};
    use crate::strategy::Strategy;

    const G: u64 = 1 << 30;

    fn ram(gpa: u64, size: u64) -> RegionSpec {
        RegionSpec {
            gpa: Gpa(gpa),
            size,
            hva: Hva(0x7f00_0000_0000 + gpa),
            readonly: false,
        }
    }

    fn cfg() -> SvqConfig {
        SvqConfig {
            queues: 2,
            queue_size: 256,
            hva: Hva(0x7e00_0000_0000),
        }
    }

    #[test]
    fn the_window_goes_above_max_gpa_when_the_range_reaches_past_it() {
        let mut p = IdentityPlanner::new(DeviceCaps::default(), Some(64 * G)).unwrap();
        p.add_regions(&[ram(0, 2 * G), ram(4 * G, 4 * G)]).unwrap();
        p.svq_prepare(cfg()).unwrap();
        let f = p.window().unwrap().first().0;
        assert_eq!(f, 64 * G);
        assert!(p.vring_areas().iter().all(|a| a.iova.first().0 >= 64 * G));
    }

    #[test]
    fn without_room_above_memory_the_vrings_take_the_smallest_hole() {
        // RAM up to the range's end: the PCI hole (2 GiB) and a 64 KiB gap
        // between two regions; best fit is the gap.
        let caps = DeviceCaps {
            range: DeviceRange::new(0, 8 * G - 1).unwrap(),
            ..DeviceCaps::default()
        };
        let mut p = IdentityPlanner::new(caps, None).unwrap();
        p.add_regions(&[
            ram(0, 2 * G),
            ram(4 * G, G),
            ram(5 * G + (1 << 20), 3 * G - (1 << 20)),
        ])
        .unwrap();
        p.svq_prepare(SvqConfig { queues: 1, ..cfg() }).unwrap();
        let a = p.vring_areas();
        assert!(a
            .iter()
            .all(|a| a.iova.first().0 >= 5 * G && a.iova.last().0 < 5 * G + (1 << 20)));
    }

    #[test]
    fn pack_finds_a_placement_greedy_best_fit_misses() {
        // Holes of 6 and 5 pages; pieces 3, 3 and 5: best fit in arrival
        // order puts the first 3 in the 5-page hole and strands the 5.
        let free = [(0x1000, 0x6fff), (0x10000, 0x14fff)];
        let got = pack(&free, &[0x3000, 0x3000, 0x5000]).unwrap();
        assert_eq!(got[2], Span::trusted(0x10000, 0x5000));
        assert_eq!(got[0], Span::trusted(0x1000, 0x3000));
        assert_eq!(got[1], Span::trusted(0x4000, 0x3000));
        assert!(pack(&free, &[0x6000, 0x6000]).is_none());
        assert!(pack(&free, &[0]).is_none());
        // A hole spanning the whole 64-bit space does not overflow.
        assert!(pack(&[(0, u64::MAX)], &[u64::MAX]).is_some());
    }

    /// The exact search gives up after its budget of steps: a hopeless
    /// instance (one page more than the holes hold, holes of ten distinct
    /// sizes, so little is pruned) answers `None` at once instead of
    /// walking an exponential tree.
    #[test]
    fn pack_gives_up_within_its_budget() {
        let free: Vec<(u64, u64)> = (1..=10u64)
            .map(|k| (k << 32, (k << 32) + k * 0x1000 - 1))
            .collect();
        let sizes = vec![0x1000; 56];
        assert!(pack(&free, &sizes).is_none());
        // One page fewer fits exactly: every hole full.
        let got = pack(&free, &sizes[..55]).unwrap();
        assert_eq!(got.len(), 55);
    }

    #[test]
    fn claims_in_finds_the_claim_reaching_in_from_below() {
        let claims: BTreeMap<u64, u64> = [(0x1000, 0x4fff), (0x8000, 0x8fff)].into();
        let v: Vec<_> = claims_in(&claims, 0x3000, 0x8000).collect();
        assert_eq!(v, vec![(0x1000, 0x4fff), (0x8000, 0x8fff)]);
        assert_eq!(claims_in(&claims, 0x5000, 0x7fff).count(), 0);
    }
}
