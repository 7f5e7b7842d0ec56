//! A per-queue translator: a snapshot of a planner's GPA -> IOVA table that
//! one shadow virtqueue owns and asks for every descriptor it forwards.
//!
//! [`Strategy::translate`] is correct from anywhere but searches the whole
//! table every call. A queue's descriptors come in runs (a ring's buffers
//! sit in a few regions, mostly the big RAM section), and a real guest maps
//! six or seven sections. So a [`Translator`]:
//!
//! * keeps its own copy of the table (no shared writes: the queue's thread
//!   writes only its own cursor; nothing is allocated per call);
//! * in a table of up to [`FANOUT`] entries (a real guest's six or seven
//!   sections fit in one cache line), counts the first addresses at or
//!   below the one asked for: one pass, with no unpredictable branch. A
//!   last-hit check first costs about what the count does, and a
//!   misprediction at every change of section on top;
//! * in a larger table, tries the entry of its last hit first, then
//!   halves a dense array of the first addresses, without a branch on the
//!   address (`partition_point`, which compiles to conditional moves). A
//!   static B-tree of [`FANOUT`]-key nodes was measured against it and lost
//!   at every size: 37 against 24 ns a lookup at 1,024 random entries, 47
//!   against 30 at 4,096;
//! * checks the planner's [`Epoch`] on every call, and refuses with
//!   [`PlanError::StaleTranslator`] once an event (hot-plug, unplug, a guest
//!   vIOMMU map or unmap, a switch, a failback, a reset, the planner dropped)
//!   has changed the table since its snapshot: it never answers from a stale
//!   table. [`Translator::refresh`] takes a new snapshot.
//!
//! Its answers are exactly [`Strategy::translate`]'s, errors included
//! (tested against it after every kind of event).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use smallvec::smallvec;

use crate::addr::{Address, Gpa, Iova};
use crate::error::PlanError;
use crate::strategy::xlate::{translate_with, Epoch, Xlate};
use crate::strategy::{Segment, Segments, Strategy};
use crate::vocab::Perm;

/// The most entries a table may have to be searched by counting (16 first
/// addresses, two cache lines); a larger one is searched by halving.
pub const FANOUT: usize = 16;

/// How many of `node`'s keys are at or below `a`. Scalar compares and adds
/// over a run-time length: a fixed length lets the compiler vectorize the
/// sum into a shuffle and a population count that cost more than the
/// compares (without SSE4.2 there is no 64-bit vector compare).
#[inline(always)]
fn count(node: &[u64], a: u64) -> usize {
    let mut c = 0;
    for &f in node {
        c += usize::from(f <= a);
    }
    c
}

/// One entry of the snapshot: `[first, last]` translates by `delta`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ent {
    first: u64,
    last: u64,
    /// `iova - gpa`, wrapping.
    delta: u64,
    perm: Perm,
}

/// A shadow virtqueue's own translator. See the [module documentation](self).
///
/// ```
/// use vdpa_iova_planner::{
///     DeviceCaps, Event, Gpa, Hva, IdentityPlanner, PlanError, RegionSpec, Strategy, Translator,
/// };
/// let mut p = IdentityPlanner::new(DeviceCaps::default(), Some(1 << 40))?;
/// let ram = RegionSpec { gpa: Gpa(0), size: 1 << 30, hva: Hva(0x7f00_0000_0000), readonly: false };
/// p.apply(&Event::Boot(vec![ram]))?;
/// let mut t = Translator::new(&p)?;
/// assert_eq!(t.translate(Gpa(0x1000), 64)?, p.translate(Gpa(0x1000), 64)?);
/// // An event changes the table: the old snapshot is refused, not used.
/// let dimm = RegionSpec { gpa: Gpa(1 << 32), size: 1 << 30, hva: Hva(0x7e00_0000_0000), readonly: false };
/// p.apply(&Event::Hotplug(dimm))?;
/// assert_eq!(t.translate(Gpa(1 << 32), 64), Err(PlanError::StaleTranslator));
/// t.refresh(&p)?;
/// assert_eq!(t.translate(Gpa(1 << 32), 64)?, p.translate(Gpa(1 << 32), 64)?);
/// # Ok::<(), PlanError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Translator {
    /// The planner's generation counter, and its value at the snapshot.
    epoch: Arc<AtomicU64>,
    seen: u64,
    /// Index of the last hit (0 when the table is empty).
    cursor: usize,
    /// Sorted, coalesced as the planner's table is.
    ents: Vec<Ent>,
    /// A small table's first addresses (at most [`FANOUT`]), padded with
    /// `u64::MAX`; unused for a larger one.
    top: [u64; FANOUT],
    /// Keys of `top` that are not padding. Counting over this run-time
    /// length keeps the count a short scalar loop.
    top_len: usize,
    /// A larger table's first addresses, dense (8 bytes an entry, so the
    /// halving touches a quarter of the cache lines that `ents` would);
    /// empty for a small one.
    firsts: Vec<u64>,
    /// Guest memory (or with a vIOMMU the guest's maps) as sorted
    /// `[first, last]`: tells an unreachable byte from one that is not
    /// guest memory.
    guest: Vec<(u64, u64)>,
}

impl Translator {
    /// A snapshot of `planner`'s table.
    ///
    /// # Errors
    /// [`PlanError::Unsupported`] for a strategy that keeps no [`Epoch`].
    pub fn new<S: Strategy + ?Sized>(planner: &S) -> Result<Self, PlanError> {
        let epoch = Self::epoch_of(planner)?;
        let mut t = Translator {
            seen: epoch.load(Ordering::Acquire),
            epoch: Arc::clone(epoch),
            cursor: 0,
            ents: Vec::new(),
            top: [u64::MAX; FANOUT],
            top_len: 0,
            firsts: Vec::new(),
            guest: Vec::new(),
        };
        t.fill(planner);
        Ok(t)
    }

    fn epoch_of<S: Strategy + ?Sized>(planner: &S) -> Result<&Arc<AtomicU64>, PlanError> {
        planner
            .epoch()
            .map(Epoch::counter)
            .ok_or(PlanError::Unsupported {
                what: "a per-queue translator needs a strategy that keeps an epoch",
            })
    }

    /// Takes a new snapshot of `planner`'s table (in place: allocates only
    /// if the table grew). The translator then watches `planner`.
    ///
    /// # Errors
    /// As [`Translator::new`]; the translator is unchanged then.
    pub fn refresh<S: Strategy + ?Sized>(&mut self, planner: &S) -> Result<(), PlanError> {
        let epoch = Self::epoch_of(planner)?;
        self.seen = epoch.load(Ordering::Acquire);
        if !Arc::ptr_eq(&self.epoch, epoch) {
            self.epoch = Arc::clone(epoch);
        }
        self.fill(planner);
        Ok(())
    }

    fn fill<S: Strategy + ?Sized>(&mut self, planner: &S) {
        self.ents.clear();
        self.guest.clear();
        self.cursor = 0;
        for p in planner.placements() {
            self.guest.push(p.gpa.bounds());
            for piece in &p.pieces {
                let (first, last) = piece.gpa.bounds();
                self.ents.push(Ent {
                    first,
                    last,
                    delta: piece.iova.first().raw().wrapping_sub(first),
                    perm: p.perm,
                });
            }
        }
        self.ents.sort_unstable_by_key(|e| e.first);
        self.guest.sort_unstable();
        // The planner's range map coalesces touching entries that translate
        // alike; so must the snapshot, or a buffer across two of them would
        // come back as two segments instead of one.
        self.ents.dedup_by(|next, prev| {
            let joins = prev.last.checked_add(1) == Some(next.first)
                && prev.delta == next.delta
                && prev.perm == next.perm;
            if joins {
                prev.last = next.last;
            }
            joins
        });
        self.top = [u64::MAX; FANOUT];
        self.top_len = 0;
        self.firsts.clear();
        if self.ents.len() <= FANOUT {
            for (k, e) in self.top.iter_mut().zip(&self.ents) {
                *k = e.first;
            }
            self.top_len = self.ents.len();
        } else {
            self.firsts.extend(self.ents.iter().map(|e| e.first));
        }
    }

    /// Whether an event changed the planner's table since the snapshot.
    #[inline]
    pub fn is_stale(&self) -> bool {
        self.epoch.load(Ordering::Acquire) != self.seen
    }

    /// Every entry of the snapshot, by first address, as
    /// `(first, last, delta, perm)`: `delta` is `iova - gpa`, wrapping. For a
    /// caller's own fast path in front of [`Translator::translate_single`]
    /// (the C header's inline one): valid while [`Translator::epoch`]'s
    /// counter equals its recorded value.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = (u64, u64, u64, Perm)> + '_ {
        self.ents.iter().map(|e| (e.first, e.last, e.delta, e.perm))
    }

    /// The planner's generation counter this translator watches, and the
    /// value it had at the snapshot: the snapshot is current while they
    /// are equal.
    pub fn epoch(&self) -> (&AtomicU64, u64) {
        (&self.epoch, self.seen)
    }

    /// Entries in the snapshot.
    pub fn len(&self) -> usize {
        self.ents.len()
    }

    /// Whether the snapshot maps nothing.
    pub fn is_empty(&self) -> bool {
        self.ents.is_empty()
    }

    /// The entry holding `a`: the last one that starts at or below it, if
    /// it reaches `a`.
    #[inline]
    fn search(&self, a: u64) -> Option<usize> {
        let i = if self.firsts.is_empty() {
            // A padding key of u64::MAX counts only for `a == u64::MAX`;
            // the run-time length leaves the padding out.
            count(&self.top[..self.top_len], a)
        } else {
            self.firsts.partition_point(|&f| f <= a)
        }
        .checked_sub(1)?;
        (self.ents.get(i)?.last >= a).then_some(i)
    }

    /// The entry holding `a`: the last hit's if it does, else searched.
    #[inline]
    fn find(&mut self, a: u64) -> Option<Ent> {
        // A small table is counted at once: the count costs about what the
        // last-hit check costs, and a check that misses (at every change of
        // section) costs a misprediction on top.
        if self.firsts.is_empty() {
            return self.search(a).map(|i| self.ents[i]);
        }
        if let Some(&e) = self.ents.get(self.cursor) {
            if e.first <= a && a <= e.last {
                return Some(e);
            }
        }
        let i = self.search(a)?;
        self.cursor = i;
        Some(self.ents[i])
    }

    /// The common case without building [`Segments`]: `Ok(Some(segment))`
    /// when one entry holds all `len` bytes at `gpa`; `Ok(None)` when they
    /// need several segments or meet a byte that does not translate
    /// ([`Translator::translate`] then gives the segments or the error).
    ///
    /// # Errors
    /// [`PlanError::StaleTranslator`] when the snapshot is stale;
    /// `ZeroSize`/`Wraps` for a bad length.
    #[inline]
    pub fn translate_single(&mut self, gpa: Gpa, len: u64) -> Result<Option<Segment>, PlanError> {
        if self.is_stale() {
            return Err(PlanError::StaleTranslator);
        }
        let a = gpa.raw();
        let Some(last) = len.checked_sub(1).and_then(|l| a.checked_add(l)) else {
            return Err(bad_len(a, len));
        };
        Ok(self.find(a).filter(|e| last <= e.last).map(|e| Segment {
            iova: Iova(a.wrapping_add(e.delta)),
            len,
            perm: e.perm,
        }))
    }

    /// Device addresses of `len` bytes of guest memory at `gpa`, as
    /// [`Strategy::translate`] gives them for the planner's state at the
    /// snapshot. Allocation-free for up to two segments.
    ///
    /// # Errors
    /// [`PlanError::StaleTranslator`] when the snapshot is stale; otherwise
    /// as [`Strategy::translate`].
    pub fn translate(&mut self, gpa: Gpa, len: u64) -> Result<Segments, PlanError> {
        if let Some(s) = self.translate_single(gpa, len)? {
            return Ok(smallvec![s]);
        }
        translate_with(
            |a| {
                let e = self.ents[self.search(a)?];
                Some((
                    e.last,
                    Xlate {
                        delta: e.delta,
                        perm: e.perm,
                    },
                ))
            },
            gpa,
            len,
            |g| {
                let i = self.guest.partition_point(|&(f, _)| f <= g);
                i > 0 && self.guest[i - 1].1 >= g
            },
        )
    }
}

#[cold]
fn bad_len(first: u64, size: u64) -> PlanError {
    if size == 0 {
        PlanError::ZeroSize { kind: "gpa", first }
    } else {
        PlanError::Wraps {
            kind: "gpa",
            first,
            size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Hva;
    use crate::caps::DeviceCaps;
    use crate::event::{Event, RegionSpec};
    use crate::strategy::identity::IdentityPlanner;
    use crate::strategy::qemu::QemuPlanner;
    use crate::svq::SvqConfig;

    const MIB: u64 = 1 << 20;

    fn region(gpa: u64, size: u64, hva: u64, readonly: bool) -> RegionSpec {
        RegionSpec {
            gpa: Gpa(gpa),
            size,
            hva: Hva(hva),
            readonly,
        }
    }

    /// A pc guest's sections: low RAM split by the legacy ROM pieces, RAM
    /// above 4 GiB, and the BIOS.
    fn pc() -> Vec<RegionSpec> {
        vec![
            region(0, 0xc0000, 0x7f00_0000_0000, false),
            region(0xc0000, 0x20000, 0x7f10_0000_0000, true),
            region(0xe0000, 0x20000, 0x7f20_0000_0000, true),
            region(0x100000, 0xbff0_0000, 0x7f00_0010_0000, false),
            region(1 << 32, 1 << 30, 0x7f30_0000_0000, false),
            region(0xfffc_0000, 0x40000, 0x7f40_0000_0000, true),
        ]
    }

    fn svq() -> SvqConfig {
        SvqConfig {
            queues: 3,
            queue_size: 256,
            hva: Hva(0x7e00_0000_0000),
        }
    }

    /// Addresses around every boundary of the snapshot and the planner's
    /// regions, with lengths that stay inside, cross, or end on them.
    fn probes(s: &dyn Strategy) -> Vec<(u64, u64)> {
        let mut at = vec![0, u64::MAX, u64::MAX - 1];
        for p in s.placements() {
            let (f, l) = p.gpa.bounds();
            at.extend([f, l, f.wrapping_sub(1), l.wrapping_add(1), f + (l - f) / 2]);
        }
        let mut out = Vec::new();
        for a in at {
            for len in [0, 1, 64, 0x1000, 0x2_0000, 0x10_0000, u64::MAX] {
                out.push((a, len));
                out.push((a.wrapping_sub(len / 2), len));
            }
        }
        out
    }

    /// The translator agrees with the planner everywhere, errors included.
    fn agrees(s: &dyn Strategy, t: &mut Translator) {
        assert!(!t.is_stale());
        for (a, len) in probes(s) {
            assert_eq!(
                t.translate(Gpa(a), len),
                s.translate(Gpa(a), len),
                "{} at {a:#x} len {len:#x}",
                s.name()
            );
        }
    }

    /// Every event that changes the table leaves the old snapshot refusing
    /// to answer, for the address that changed and every other; a refresh
    /// answers as the planner does.
    fn stale_after_every_event(mut s: Box<dyn Strategy>) {
        let dimm = region(1 << 36, 256 * MIB, 0x7f50_0000_0000, false);
        let events = [
            Event::Boot(pc()),
            Event::Hotplug(dimm),
            Event::SvqPrepare(svq()),
            Event::SvqSwitch(None),
            Event::Unplug(Gpa(1 << 36)),
            Event::Failback,
            Event::SvqSwitch(Some(svq())),
            Event::Reset,
            Event::Complete,
        ];
        let mut t = Translator::new(s.as_ref()).unwrap();
        agrees(s.as_ref(), &mut t);
        for ev in &events {
            let before = s.placements();
            s.apply(ev).unwrap();
            let changed = s.placements() != before;
            if changed {
                assert!(t.is_stale(), "{}: {ev:?} left the snapshot fresh", s.name());
                for (a, len) in probes(s.as_ref()) {
                    assert_eq!(
                        t.translate(Gpa(a), len),
                        Err(PlanError::StaleTranslator),
                        "{}: after {ev:?}, at {a:#x}",
                        s.name()
                    );
                    assert_eq!(
                        t.translate_single(Gpa(a), len),
                        Err(PlanError::StaleTranslator)
                    );
                }
            }
            t.refresh(s.as_ref()).unwrap();
            agrees(s.as_ref(), &mut t);
        }
        // The planner dropped: its translators can only refuse.
        drop(s);
        assert_eq!(
            t.translate(Gpa(0x1000), 64),
            Err(PlanError::StaleTranslator)
        );
    }

    #[test]
    fn a_stale_identity_translator_never_answers() {
        let p = IdentityPlanner::new(DeviceCaps::default(), Some(1 << 40)).unwrap();
        stale_after_every_event(Box::new(p));
    }

    #[test]
    fn a_stale_qemu_translator_never_answers() {
        stale_after_every_event(Box::new(QemuPlanner::new(DeviceCaps::default()).unwrap()));
    }

    #[test]
    fn a_stale_translator_never_answers_after_guest_viommu_changes() {
        let caps = DeviceCaps::default();
        let p = IdentityPlanner::builder(caps)
            .viommu(u64::MAX)
            .build()
            .unwrap();
        let q = QemuPlanner::with_viommu(caps, u64::MAX).unwrap();
        for mut s in [Box::new(p) as Box<dyn Strategy>, Box::new(q)] {
            s.apply(&Event::Boot(pc())).unwrap();
            let mut t = Translator::new(s.as_ref()).unwrap();
            let map = Event::ViommuMap {
                giova: Iova(0x10_0000),
                size: 0x10_0000,
                gpa: Gpa(0x20_0000),
                perm: Perm::Rw,
            };
            s.apply(&map).unwrap();
            assert_eq!(
                t.translate(Gpa(0x10_0000), 64),
                Err(PlanError::StaleTranslator),
                "{}",
                s.name()
            );
            t.refresh(s.as_ref()).unwrap();
            agrees(s.as_ref(), &mut t);
            assert!(t.translate(Gpa(0x10_0000), 64).is_ok());
            s.apply(&Event::ViommuUnmap {
                giova: Iova(0x10_0000),
                size: 0x10_0000,
            })
            .unwrap();
            // The unmapped guest IOVA must not translate from the old
            // snapshot, even though the cursor sits on it.
            assert_eq!(
                t.translate(Gpa(0x10_0000), 64),
                Err(PlanError::StaleTranslator),
                "{}",
                s.name()
            );
            t.refresh(s.as_ref()).unwrap();
            agrees(s.as_ref(), &mut t);
        }
    }

    #[test]
    fn a_clone_has_its_own_epoch() {
        let mut p = IdentityPlanner::new(DeviceCaps::default(), Some(1 << 40)).unwrap();
        p.apply(&Event::Boot(pc())).unwrap();
        let mut t = Translator::new(&p).unwrap();
        let mut c = p.clone();
        c.apply(&Event::Unplug(Gpa(1 << 32))).unwrap();
        assert!(!t.is_stale(), "the clone's event is not the original's");
        assert!(t.translate(Gpa(1 << 32), 64).is_ok());
        drop(p);
        assert!(t.is_stale());
    }

    #[test]
    fn cursor_and_search_agree_on_large_tables() {
        // Searched by halving, at a length that is not a power of two.
        let rs: Vec<_> = (0..(FANOUT as u64 * FANOUT as u64 + 21))
            .map(|i| {
                region(
                    i * 4 * MIB,
                    2 * MIB,
                    0x1000_0000_0000 + i * 2 * MIB,
                    i % 3 == 0,
                )
            })
            .collect();
        let mut p = IdentityPlanner::new(DeviceCaps::default(), Some(1 << 40)).unwrap();
        p.apply(&Event::Boot(rs)).unwrap();
        p.apply(&Event::SvqPrepare(svq())).unwrap();
        p.apply(&Event::SvqSwitch(None)).unwrap();
        let mut t = Translator::new(&p).unwrap();
        assert!(t.len() > FANOUT * FANOUT);
        assert_eq!(t.firsts.len(), t.len());
        agrees(&p, &mut t);
        // Runs of neighbours and jumps, so the cursor both hits and misses.
        for i in 0..4096u64 {
            let a = (i * 7919 % 600) * MIB + (i % 64) * 64;
            assert_eq!(t.translate(Gpa(a), 64), p.translate(Gpa(a), 64), "{a:#x}");
        }
    }

    #[test]
    fn touching_entries_that_translate_alike_are_one_segment() {
        let mut p = IdentityPlanner::new(DeviceCaps::default(), Some(1 << 40)).unwrap();
        p.apply(&Event::Boot(vec![
            region(0, 2 * MIB, 0x1000_0000_0000, false),
            region(2 * MIB, 2 * MIB, 0x2000_0000_0000, false),
        ]))
        .unwrap();
        let mut t = Translator::new(&p).unwrap();
        let want = p.translate(Gpa(MIB), 2 * MIB).unwrap();
        assert_eq!(want.len(), 1);
        assert_eq!(t.translate(Gpa(MIB), 2 * MIB).unwrap(), want);
        assert_eq!(t.len(), 1);
    }
}
