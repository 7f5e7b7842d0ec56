//! Model-based property tests and fuzz targets for `vdpa-iova-planner`.
//!
//! The tests live in `tests/`, the fuzz targets in the repository's `fuzz/`
//! workspace; both call into this crate, which holds the simple reference
//! models the planner's data structures are compared against ([`model`],
//! [`NaiveAllocator`], [`NaiveKernel`]), the edge-biased input generators
//! ([`gen`]), the checking harness ([`harness`]) and the bodies of the fuzz
//! targets ([`fuzz`]), so a crash found by fuzzing replays under `cargo test`
//! on stable Rust. The models are written to be obviously right, not fast.

pub mod fuzz;
pub mod gen;
pub mod harness;
pub mod kdiff;
pub mod migration;
pub mod model;

use vdpa_iova_planner::kernel::{MsgType, RawMsg};
use vdpa_iova_planner::Perm;

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

/// The kernel's IOTLB rules (and the model's strict ones) over a plain `Vec`
/// of entries scanned linearly: the reference `KernelIotlb` must agree with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NaiveKernel {
    /// Address spaces.
    pub spaces: u32,
    /// Device range `[first, last]`.
    pub range: (u64, u64),
    /// Created address spaces.
    pub created: Vec<u32>,
    /// Open batch.
    pub batch: Option<u32>,
    /// Live entries: (asid, first, last, hva, perm).
    pub entries: Vec<(u32, u64, u64, u64, Perm)>,
    /// Entries allowed per address space, if limited.
    pub limit: Option<usize>,
}

impl NaiveKernel {
    /// An empty table.
    pub fn new(spaces: u32, range: (u64, u64)) -> Self {
        NaiveKernel {
            spaces,
            range,
            ..NaiveKernel::default()
        }
    }

    /// Applies a message; whether it was accepted.
    pub fn apply(&mut self, m: &RawMsg) -> bool {
        // Refused before the address space is looked at (or created).
        if m.kind == MsgType::Update && m.size == 0 {
            return false;
        }
        if m.asid >= self.spaces {
            return false;
        }
        let creates = matches!(m.kind, MsgType::Update | MsgType::BatchBegin);
        if creates {
            if !self.created.contains(&m.asid) {
                self.created.push(m.asid);
            }
        } else if !self.created.contains(&m.asid) {
            return false;
        }
        if self.batch.is_some_and(|b| b != m.asid) {
            return false;
        }
        match m.kind {
            MsgType::BatchBegin => {
                if self.batch.is_some() {
                    return false;
                }
                self.batch = Some(m.asid);
                true
            }
            MsgType::BatchEnd => self.batch.take().is_some(),
            MsgType::Update => {
                let Some(last) = (m.size != 0)
                    .then(|| m.iova.checked_add(m.size - 1))
                    .flatten()
                else {
                    return false;
                };
                let Some(perm) = Perm::from_kernel(m.perm) else {
                    return false;
                };
                if m.iova < self.range.0 || last > self.range.1 {
                    return false;
                }
                if self
                    .entries
                    .iter()
                    .any(|e| e.0 == m.asid && e.1 <= last && m.iova <= e.2)
                {
                    return false;
                }
                let held = self.entries.iter().filter(|e| e.0 == m.asid).count();
                if self.limit.is_some_and(|l| held >= l) {
                    return false;
                }
                self.entries.push((m.asid, m.iova, last, m.uaddr, perm));
                true
            }
            MsgType::Invalidate => {
                let Some(last) = (m.size != 0)
                    .then(|| m.iova.checked_add(m.size - 1))
                    .flatten()
                else {
                    return false;
                };
                let hit =
                    |e: &(u32, u64, u64, u64, Perm)| e.0 == m.asid && e.1 <= last && m.iova <= e.2;
                if self
                    .entries
                    .iter()
                    .any(|e| hit(e) && (e.1 < m.iova || e.2 > last))
                {
                    return false;
                }
                self.entries.retain(|e| !hit(e));
                true
            }
        }
    }
}
