//! The IOVA allocator for the SVQ window: best fit, O(log n) per operation.
//!
//! Free space is kept twice: by start address (to coalesce on free and to
//! carve out ranges) and by `(length, start)` (to find the smallest hole
//! that fits in one ordered-set lookup). Every operation is a constant number
//! of B-tree operations, except [`IovaAllocator::carve`], which costs
//! O(k log n) for the k holes it touches.
//!
//! All sizes and addresses are multiples of the page size, and IOVA 0 is
//! never handed out (QEMU avoids it too: some devices treat a 0 address as
//! "not set"). Holes are stored inclusive, so a window may end at `2^64 - 1`.

use std::collections::{BTreeMap, BTreeSet};

use crate::addr::{overlapping, Iova, PageSize, Span};

/// Best-fit allocator over one inclusive IOVA window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IovaAllocator {
    window: (u64, u64),
    page: PageSize,
    /// start -> last (inclusive)
    by_start: BTreeMap<u64, u64>,
    /// (last - start, start)
    by_len: BTreeSet<(u64, u64)>,
}

impl IovaAllocator {
    /// An allocator owning the page-aligned part of `[first, last]`, minus
    /// page 0. Returns `None` when no whole page is left.
    pub fn new(first: u64, last: u64, page: PageSize) -> Option<Self> {
        let f = page.align_up(first.max(page.get()))?;
        // last + 1 rounded down, minus one; careful at 2^64 - 1.
        let l = match last.checked_add(1) {
            Some(end) => page.align_down(end).checked_sub(1)?,
            None => u64::MAX,
        };
        if l < f || l - f < page.get() - 1 {
            return None;
        }
        let mut a = IovaAllocator {
            window: (f, l),
            page,
            by_start: BTreeMap::new(),
            by_len: BTreeSet::new(),
        };
        a.insert_hole(f, l);
        Some(a)
    }

    /// The window `[first, last]` this allocator owns.
    pub fn window(&self) -> Span<Iova> {
        Span::trusted(self.window.0, self.window.1 - self.window.0 + 1)
    }

    /// [`IovaAllocator::window`] as inclusive bounds.
    pub(crate) fn window_bounds(&self) -> (u64, u64) {
        self.window
    }

    /// The page size every address and size is a multiple of.
    pub fn page(&self) -> PageSize {
        self.page
    }

    /// Size in bytes of the largest free range (0 when full).
    pub fn largest_free(&self) -> u64 {
        self.by_len
            .iter()
            .next_back()
            .map_or(0, |&(len_m1, _)| len_m1.saturating_add(1))
    }

    /// Total free bytes (saturating at `u64::MAX`).
    pub fn free_bytes(&self) -> u64 {
        self.by_len
            .iter()
            .fold(0u64, |acc, &(l, _)| acc.saturating_add(l).saturating_add(1))
    }

    /// Number of free holes.
    pub fn holes(&self) -> usize {
        self.by_start.len()
    }

    /// Iterates the free holes `(first, last)` by address.
    pub fn free_ranges(&self) -> impl Iterator<Item = Span<Iova>> + '_ {
        self.free_bounds().map(|(f, l)| Span::trusted(f, l - f + 1))
    }

    /// [`IovaAllocator::free_ranges`] as inclusive bounds.
    pub(crate) fn free_bounds(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.by_start.iter().map(|(&f, &l)| (f, l))
    }

    fn insert_hole(&mut self, f: u64, l: u64) {
        self.by_start.insert(f, l);
        self.by_len.insert((l - f, f));
    }

    fn remove_hole(&mut self, f: u64, l: u64) {
        self.by_start.remove(&f);
        self.by_len.remove(&(l - f, f));
    }

    /// Allocates `size` bytes (a non-zero multiple of the page size) from the
    /// smallest hole that fits, at that hole's lowest address (the crate's
    /// best-fit policy), answered by the length index in O(log n): the
    /// same answer as that policy over [`IovaAllocator::free_ranges`],
    /// which walks them all.
    pub fn alloc(&mut self, size: u64) -> Option<Span<Iova>> {
        if size == 0 || !self.page.is_aligned(size) {
            return None;
        }
        let &(len_m1, f) = self.by_len.range((size - 1, 0)..).next()?;
        let l = f + len_m1;
        self.remove_hole(f, l);
        if len_m1 > size - 1 {
            self.insert_hole(f + size, l);
        }
        Some(Span::trusted(f, size))
    }

    /// Returns a range to the free space, merging it with its neighbours.
    /// Only the part inside the window is taken back.
    ///
    /// Returns `false` (and changes nothing) when the range overlaps free
    /// space already, which would be a double free.
    pub fn free(&mut self, span: Span<Iova>) -> bool {
        let (sf, sl) = span.bounds();
        let Some((mut f, mut l)) = clip(self.window, sf, sl) else {
            return true;
        };
        if self.overlaps_free(f, l) {
            return false;
        }
        if let Some((&pf, &pl)) = self.by_start.range(..f).next_back() {
            if pl.checked_add(1) == Some(f) {
                self.remove_hole(pf, pl);
                f = pf;
            }
        }
        if let Some(next) = l.checked_add(1) {
            if let Some(&nl) = self.by_start.get(&next) {
                self.remove_hole(next, nl);
                l = nl;
            }
        }
        self.insert_hole(f, l);
        true
    }

    /// Whether any byte of `[f, l]` is free.
    pub fn overlaps_free(&self, f: u64, l: u64) -> bool {
        if let Some((_, &pl)) = self.by_start.range(..=l).next_back() {
            return pl >= f;
        }
        false
    }

    /// Removes `[first, last]` from the free space wherever it is free (used
    /// when guest memory lands inside the window). Allocated parts are left alone.
    pub fn carve(&mut self, first: u64, last: u64) {
        let Some((f, l)) = clip(self.window, first, last) else {
            return;
        };
        // Collect the holes overlapping [f, l]: the one starting before f
        // that may reach in, and every one starting inside.
        let hit: Vec<(u64, u64)> = overlapping(&self.by_start, |_, &hl| hl, f, l)
            .map(|(a, &b)| (a, b))
            .collect();
        for (hf, hl) in hit {
            self.remove_hole(hf, hl);
            if hf < f {
                self.insert_hole(hf, f - 1);
            }
            if hl > l {
                self.insert_hole(l + 1, hl);
            }
        }
    }
}

/// Where an allocation goes among free ranges: the policy, as data, of
/// every IOVA allocation in the crate. (Exact placement is
/// [`IovaAllocator::carve`]: memory that lands where it lands.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fit {
    /// The smallest free range that holds it, at that range's lowest
    /// address; among equal ranges the lowest (the identity planner's
    /// window).
    Best,
    /// The lowest address that holds it (QEMU's `iova_tree_alloc_map`;
    /// a free page beside the live entries for a reset's restore).
    First,
}

/// The first address of `size` bytes (non-zero) placed in `free` by
/// `policy`. `free` holds inclusive ranges `(first, last)` by address, none
/// touching another.
pub(crate) fn fit(
    free: impl IntoIterator<Item = (u64, u64)>,
    size: u64,
    policy: Fit,
) -> Option<u64> {
    let need = size.checked_sub(1)?;
    let mut holding = free.into_iter().filter(|&(f, l)| l - f >= need);
    match policy {
        Fit::First => holding.next().map(|(f, _)| f),
        Fit::Best => holding.min_by_key(|&(f, l)| (l - f, f)).map(|(f, _)| f),
    }
}

/// The free ranges of `[lo, hi]` around `taken`: inclusive ranges by
/// address that do not overlap one another (they may reach outside
/// `[lo, hi]`).
pub(crate) fn gaps(
    taken: impl IntoIterator<Item = (u64, u64)>,
    lo: u64,
    hi: u64,
) -> impl Iterator<Item = (u64, u64)> {
    // The next free address (`None` once past 2^64 - 1).
    let mut cur = Some(lo);
    let mut taken = taken.into_iter();
    core::iter::from_fn(move || loop {
        let c = cur.filter(|&c| c <= hi)?;
        match taken.next() {
            Some((_, l)) if l < c => {}
            Some((f, l)) => {
                cur = l.checked_add(1);
                if f > c {
                    return Some((c, (f - 1).min(hi)));
                }
            }
            None => {
                cur = None;
                return Some((c, hi));
            }
        }
    })
}

fn clip(window: (u64, u64), f: u64, l: u64) -> Option<(u64, u64)> {
    let a = f.max(window.0);
    let b = l.min(window.1);
    (a <= b).then_some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: PageSize = PageSize::SIZE_4K;

    #[test]
    fn never_hands_out_zero_and_is_best_fit() {
        let mut a = IovaAllocator::new(0, 0xf_ffff, P).unwrap();
        assert_eq!(a.window_bounds(), (0x1000, 0xf_ffff));
        let x = a.alloc(0x1000).unwrap();
        assert_eq!(x.first(), Iova(0x1000));
        let y = a.alloc(0x3000).unwrap();
        let z = a.alloc(0x1000).unwrap();
        assert_eq!((y.first(), z.first()), (Iova(0x2000), Iova(0x5000)));
        // Free y: a 3-page hole. A 1-page request takes it (smallest fit),
        // a 4-page request goes to the big hole above.
        assert!(a.free(y));
        assert!(!a.free(y), "double free is refused");
        assert_eq!(a.alloc(0x4000).unwrap().first(), Iova(0x6000));
        assert_eq!(a.alloc(0x1000).unwrap().first(), Iova(0x2000));
    }

    #[test]
    fn frees_coalesce() {
        let mut a = IovaAllocator::new(0x1000, 0x8fff, P).unwrap();
        let v: Vec<_> = (0..8).map(|_| a.alloc(0x1000).unwrap()).collect();
        assert!(a.alloc(0x1000).is_none());
        for s in [v[1], v[3], v[2]] {
            assert!(a.free(s));
        }
        assert_eq!(a.holes(), 1);
        assert_eq!(a.largest_free(), 0x3000);
    }

    #[test]
    fn window_at_the_top_of_the_space() {
        let mut a = IovaAllocator::new(u64::MAX - 0x3fff, u64::MAX, P).unwrap();
        let s = a.alloc(0x4000).unwrap();
        assert_eq!(s.last(), Iova(u64::MAX));
        assert!(a.free(s));
        assert_eq!(a.largest_free(), 0x4000);
        assert!(
            IovaAllocator::new(0, 0xfff, P).is_none(),
            "page 0 alone is nothing"
        );
        assert!(IovaAllocator::new(0x1001, 0x1fff, P).is_none());
    }

    #[test]
    fn carve_splits_holes() {
        let mut a = IovaAllocator::new(0x1000, 0xf_ffff, P).unwrap();
        a.carve(0x4000, 0x7fff);
        assert_eq!(
            a.free_bounds().collect::<Vec<_>>(),
            vec![(0x1000, 0x3fff), (0x8000, 0xf_ffff)]
        );
        a.carve(0x0, 0x1fff);
        a.carve(0xf_0000, 0x10_0000_0000);
        assert_eq!(
            a.free_bounds().collect::<Vec<_>>(),
            vec![(0x2000, 0x3fff), (0x8000, 0xe_ffff)]
        );
        assert!(!a.overlaps_free(0x4000, 0x7fff));
        assert!(a.overlaps_free(0x3000, 0x4fff));
    }

    /// Rule: `free_bytes` is the sum of every free hole and `holes` their
    /// number, down to zero of each when the window is full.
    #[test]
    fn rule_free_bytes_sums_every_hole_and_holes_counts_them() {
        let mut a = IovaAllocator::new(0x1000, 0x8fff, P).unwrap();
        assert_eq!((a.free_bytes(), a.holes()), (0x8000, 1));
        let x = a.alloc(0x1000).unwrap();
        let y = a.alloc(0x2000).unwrap();
        assert!(a.free(x));
        // [0x1000, 0x1fff] and [0x4000, 0x8fff] are free.
        assert_eq!((a.free_bytes(), a.holes()), (0x6000, 2));
        assert!(a.alloc(0x1000).is_some());
        assert!(a.alloc(0x5000).is_some());
        assert_eq!((a.free_bytes(), a.holes(), a.largest_free()), (0, 0, 0));
        assert!(a.free(y));
        assert_eq!((a.free_bytes(), a.holes()), (0x2000, 1));
    }

    /// Rule: `alloc` refuses a size of zero and any size that is not a
    /// multiple of the page size, and changes nothing when it does.
    #[test]
    fn rule_alloc_refuses_zero_and_unaligned_sizes() {
        let mut a = IovaAllocator::new(0x1000, 0xf_ffff, P).unwrap();
        let before = a.clone();
        for size in [0, 1, 0x800, 0x1800, 0x1001] {
            assert_eq!(a.alloc(size), None, "{size:#x}");
        }
        assert_eq!(a, before);
        assert_eq!(a.alloc(0x2000).map(|s| s.size()), Some(0x2000));
    }

    #[test]
    fn gaps_are_the_free_ranges_between_taken_ones() {
        let taken = [
            (0x0, 0xfff),
            (0x3000, 0x3fff),
            (0x4000, 0x5fff),
            (0x9000, 0xffff),
        ];
        let v: Vec<_> = gaps(taken, 0x1000, 0xcfff).collect();
        assert_eq!(v, [(0x1000, 0x2fff), (0x6000, 0x8fff)]);
        let v: Vec<_> = gaps(taken, 0x1000, 0x1_ffff).collect();
        assert_eq!(
            v,
            [(0x1000, 0x2fff), (0x6000, 0x8fff), (0x1_0000, 0x1_ffff)]
        );
        assert_eq!(gaps([], 0x5000, 0x4fff).count(), 0, "an empty range");
        let v: Vec<_> = gaps([(0x0, 0xfff), (0x2000, 0x2fff)], 0x5000, 0x8fff).collect();
        assert_eq!(
            v,
            [(0x5000, 0x8fff)],
            "entries wholly below lo are passed over"
        );
        let v: Vec<_> = gaps([(0x0, 0x5000), (0x7000, 0x7fff)], 0x5000, 0x8fff).collect();
        assert_eq!(
            v,
            [(0x5001, 0x6fff), (0x8000, 0x8fff)],
            "an entry ending at lo"
        );
        assert_eq!(gaps([(0, u64::MAX)], 0, u64::MAX).count(), 0, "all taken");
        let v: Vec<_> = gaps([(0x1000, u64::MAX)], 0, u64::MAX).collect();
        assert_eq!(v, [(0, 0xfff)], "ends at 2^64 - 1 without wrapping");
    }

    #[test]
    fn fit_places_by_policy() {
        let free = [(0x1000, 0x4fff), (0x6000, 0x6fff), (0x8000, 0x9fff)];
        assert_eq!(fit(free, 0x1000, Fit::First), Some(0x1000));
        assert_eq!(fit(free, 0x1000, Fit::Best), Some(0x6000));
        assert_eq!(fit(free, 0x2000, Fit::Best), Some(0x8000));
        assert_eq!(fit(free, 0x2000, Fit::First), Some(0x1000));
        assert_eq!(fit(free, 0x5000, Fit::First), None);
        assert_eq!(fit(free, 0, Fit::First), None, "no zero-size allocation");
        assert_eq!(fit([(0, u64::MAX)], u64::MAX, Fit::Best), Some(0));
    }

    /// The length index answers best fit exactly as the policy over the
    /// holes by address does, and the free space stays exactly what a page
    /// bitmap says, through any sequence of allocations and frees.
    #[test]
    fn the_index_the_walk_and_a_bitmap_agree() {
        const PAGES: u64 = 1024;
        let mut a = IovaAllocator::new(0, PAGES * P.get() - 1, P).unwrap();
        // Page 0 is never handed out.
        let mut used = vec![false; PAGES as usize];
        used[0] = true;
        let mut live: Vec<Span<Iova>> = Vec::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for step in 0..4000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let size = ((x >> 8) % 16 + 1) * P.get();
            if x % 3 == 0 && !live.is_empty() {
                let s = live.swap_remove((x >> 20) as usize % live.len());
                assert!(a.free(s));
                for p in s.first().0 / P.get()..=s.last().0 / P.get() {
                    used[p as usize] = false;
                }
            } else {
                let want = fit(a.free_bounds(), size, Fit::Best);
                let got = a.alloc(size);
                assert_eq!(got.map(|s| s.first().0), want, "step {step}: {size:#x}");
                if let Some(s) = got {
                    for p in s.first().0 / P.get()..=s.last().0 / P.get() {
                        assert!(!used[p as usize], "step {step}: page {p} handed out twice");
                        used[p as usize] = true;
                    }
                    live.push(s);
                }
            }
            let taken = (0..PAGES)
                .filter(|&p| used[p as usize])
                .map(|p| (p * P.get(), (p + 1) * P.get() - 1));
            let model: Vec<(u64, u64)> = gaps(taken, 0, PAGES * P.get() - 1).collect();
            let holes: Vec<(u64, u64)> = a.free_bounds().collect();
            assert_eq!(holes, model, "step {step}");
        }
    }
}
