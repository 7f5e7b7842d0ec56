//! The GPA -> IOVA translation table both strategies keep for `translate`,
//! the per-descriptor hot path of the shadow virtqueues.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rangemap::RangeInclusiveMap;
use smallvec::smallvec;

use crate::addr::{Address, Gpa, Iova};
use crate::error::PlanError;
use crate::strategy::{Segment, Segments};
use crate::vocab::Perm;

/// How one range of guest addresses translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Xlate {
    /// `iova - gpa`, wrapping: storing the offset rather than the IOVA keeps
    /// the range map from merging neighbours that translate differently.
    pub(crate) delta: u64,
    pub(crate) perm: Perm,
}

/// The generation of a planner's translation table, which every
/// [`crate::Translator`] made from it watches.
///
/// The table's owner bumps it on every change (and when it is dropped or
/// replaced); a translator compares it with the value it saw when it took
/// its snapshot, so a snapshot an event has made stale is never used. A
/// clone is a new table with a counter of its own: changing a cloned
/// planner does not disturb the translators of the original.
#[derive(Debug)]
pub struct Epoch(Arc<AtomicU64>);

impl Epoch {
    /// The table changed: every translator made before is stale.
    pub(crate) fn bump(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }

    /// Makes every translator of this table stale, as a change would: for
    /// an embedding that can no longer trust its planner (an event that
    /// panicked half-way).
    pub fn invalidate(&self) {
        self.bump();
    }

    /// The counter, shared with the translators.
    pub(crate) fn counter(&self) -> &Arc<AtomicU64> {
        &self.0
    }
}

impl Default for Epoch {
    fn default() -> Self {
        Epoch(Arc::new(AtomicU64::new(0)))
    }
}

impl Clone for Epoch {
    /// A counter of its own: the clone is another table.
    fn clone(&self) -> Self {
        Epoch::default()
    }
}

impl Drop for Epoch {
    /// A table dropped or replaced leaves its translators stale.
    fn drop(&mut self) {
        self.bump();
    }
}

/// The translation table as sorted arrays: first addresses apart from the
/// rest, so the binary search touches 8 bytes an entry (a 1,024-region
/// table's keys fit in L1).
#[derive(Clone, Debug, Default)]
pub(crate) struct Flat {
    pub(crate) firsts: Vec<u64>,
    pub(crate) rest: Vec<(u64, Xlate)>,
    /// Bumped by whoever rebuilds the arrays.
    pub(crate) epoch: Epoch,
}

impl Flat {
    /// The entry holding `addr`: its last address and translation.
    pub(crate) fn lookup(&self, addr: u64) -> Option<(u64, Xlate)> {
        let i = self.firsts.partition_point(|&f| f <= addr).checked_sub(1)?;
        let (end, x) = self.rest[i];
        (end >= addr).then_some((end, x))
    }
}

/// The translation walk shared by the strategies, over a `lookup` giving
/// the entry that holds an address (its last address and translation).
pub(crate) fn translate_with(
    lookup: impl Fn(u64) -> Option<(u64, Xlate)>,
    gpa: Gpa,
    len: u64,
    is_guest: impl Fn(u64) -> bool,
) -> Result<Segments, PlanError> {
    if len == 0 {
        return Err(PlanError::ZeroSize {
            kind: "gpa",
            first: gpa.raw(),
        });
    }
    let last = gpa.raw().checked_add(len - 1).ok_or(PlanError::Wraps {
        kind: "gpa",
        first: gpa.raw(),
        size: len,
    })?;
    let mut out: Segments = smallvec![];
    let mut cur = gpa.raw();
    loop {
        match lookup(cur) {
            Some((end, x)) => {
                let end = end.min(last);
                out.push(Segment {
                    iova: Iova(cur.wrapping_add(x.delta)),
                    len: end - cur + 1,
                    perm: x.perm,
                });
                if end == last {
                    return Ok(out);
                }
                cur = end + 1;
            }
            None if is_guest(cur) => return Err(PlanError::Unreachable { gpa: cur }),
            None => return Err(PlanError::NotGuestMemory { gpa: cur }),
        }
    }
}

/// The GPA -> IOVA translation table of a strategy: a range map that
/// changes take effect in, and its [`Flat`] copy that `translate` reads.
///
/// Changes ([`Table::set`], [`Table::remove`], [`Table::clear`]) reach
/// lookups only at [`Table::publish`], which rebuilds the arrays (O(n))
/// and bumps the [`Epoch`]: an event publishes once, however many ranges
/// it changed. A lookup of an unpublished table is a bug (checked in debug
/// builds).
#[derive(Clone, Debug, Default)]
pub(crate) struct Table {
    map: RangeInclusiveMap<u64, Xlate>,
    flat: Flat,
    dirty: bool,
}

impl Table {
    /// Guest addresses `[first, last]` translate by `delta` with `perm`.
    pub(crate) fn set(&mut self, first: u64, last: u64, delta: u64, perm: Perm) {
        self.map.insert(first..=last, Xlate { delta, perm });
        self.dirty = true;
    }

    /// Guest addresses `[first, last]` no longer translate.
    pub(crate) fn remove(&mut self, first: u64, last: u64) {
        self.map.remove(first..=last);
        self.dirty = true;
    }

    /// Nothing translates.
    pub(crate) fn clear(&mut self) {
        self.map = RangeInclusiveMap::new();
        self.dirty = true;
    }

    /// Makes the changes since the last publish visible to lookups (the
    /// arrays are rebuilt only when something changed), and every
    /// translator made before stale: an event that publishes invalidates
    /// translators even when it changed nothing, which costs a refresh and
    /// never a wrong answer.
    pub(crate) fn publish(&mut self) {
        if self.dirty {
            self.flat.firsts.clear();
            self.flat.rest.clear();
            for (r, x) in self.map.iter() {
                self.flat.firsts.push(*r.start());
                self.flat.rest.push((*r.end(), *x));
            }
            self.dirty = false;
        }
        self.flat.epoch.bump();
    }

    /// The entry holding `addr`: its last address and translation.
    pub(crate) fn lookup(&self, addr: u64) -> Option<(u64, Xlate)> {
        debug_assert!(!self.dirty, "a translation table changed but not published");
        self.flat.lookup(addr)
    }

    /// The table's generation, which translators watch.
    pub(crate) fn epoch(&self) -> &Epoch {
        &self.flat.epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(entries: &[(u64, u64, u64)]) -> Flat {
        let mut f = Flat::default();
        for &(first, last, delta) in entries {
            f.firsts.push(first);
            f.rest.push((
                last,
                Xlate {
                    delta,
                    perm: Perm::Rw,
                },
            ));
        }
        f
    }

    #[test]
    fn lookup_finds_the_entry_holding_an_address() {
        let f = flat(&[(0x1000, 0x1fff, 0), (0x3000, 0x5fff, 0x100)]);
        assert_eq!(f.lookup(0x1800).map(|(l, _)| l), Some(0x1fff));
        assert_eq!(f.lookup(0x3000).map(|(_, x)| x.delta), Some(0x100));
        assert_eq!(f.lookup(0x5fff).map(|(l, _)| l), Some(0x5fff));
        assert!(f.lookup(0x2000).is_none(), "between entries");
        assert!(f.lookup(0x0).is_none(), "below the first");
        assert!(f.lookup(0x6000).is_none(), "above the last");
    }

    #[test]
    fn translate_walks_segments_and_names_the_first_gap() {
        let f = flat(&[(0x1000, 0x1fff, 0), (0x2000, 0x2fff, 0x10000)]);
        let segs = translate_with(|a| f.lookup(a), Gpa(0x1800), 0x1000, |_| true).unwrap();
        assert_eq!(segs.len(), 2);
        assert_eq!((segs[0].iova, segs[0].len), (Iova(0x1800), 0x800));
        assert_eq!((segs[1].iova, segs[1].len), (Iova(0x12000), 0x800));
        assert_eq!(
            translate_with(|a| f.lookup(a), Gpa(0x2800), 0x1000, |_| false),
            Err(PlanError::NotGuestMemory { gpa: 0x3000 })
        );
        assert_eq!(
            translate_with(|a| f.lookup(a), Gpa(0x2800), 0x1000, |_| true),
            Err(PlanError::Unreachable { gpa: 0x3000 })
        );
        assert!(matches!(
            translate_with(|a| f.lookup(a), Gpa(u64::MAX), 2, |_| true),
            Err(PlanError::Wraps { .. })
        ));
    }
}
