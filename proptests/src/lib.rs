//! Model-based property tests for `vdpa-iova-planner`.
//!
//! The tests live in `tests/`; this crate holds the simple reference models
//! they compare the planner's data structures against. The models are written
//! to be obviously right, not fast.

/// Cases per property: `PROPTEST_CASES` when set, 1,000 otherwise.
pub fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// A best-fit allocator over a sorted `Vec` of free holes,
/// scanned linearly: the reference the O(log n) `IovaAllocator` must agree with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NaiveAllocator {
    /// Free holes `(first, last)`, sorted, coalesced.
    pub free: Vec<(u64, u64)>,
}

impl NaiveAllocator {
    /// Free space `[first, last]`, which the caller has page aligned and cleared of page 0.
    pub fn new(first: u64, last: u64) -> Self {
        NaiveAllocator {
            free: vec![(first, last)],
        }
    }

    /// Best fit: the smallest hole of at least `size` bytes, the lowest such hole on ties,
    /// allocated at its start.
    pub fn alloc(&mut self, size: u64) -> Option<(u64, u64)> {
        let mut best: Option<usize> = None;
        for (i, &(f, l)) in self.free.iter().enumerate() {
            if l - f >= size - 1 {
                match best {
                    Some(b) if self.free[b].1 - self.free[b].0 <= l - f => {}
                    _ => best = Some(i),
                }
            }
        }
        let i = best?;
        let (f, l) = self.free[i];
        if l - f == size - 1 {
            self.free.remove(i);
        } else {
            self.free[i].0 = f + size;
        }
        Some((f, f + (size - 1)))
    }

    /// Returns `[f, l]`; `false` if any byte of it is free already.
    pub fn free(&mut self, f: u64, l: u64) -> bool {
        if self.free.iter().any(|&(a, b)| a <= l && f <= b) {
            return false;
        }
        self.free.push((f, l));
        self.free.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (a, b) in self.free.drain(..) {
            match out.last_mut() {
                Some(last) if last.1.checked_add(1) == Some(a) => last.1 = b,
                _ => out.push((a, b)),
            }
        }
        self.free = out;
        true
    }
}
