//! Differential test: the O(log n) window allocator against a sorted Vec
//! scanned linearly, over random alloc/free sequences.

use proptest::prelude::*;
use proptests::NaiveAllocator;
use vdpa_iova_planner::{IovaAllocator, PageSize};

const PAGE: u64 = 4096;

#[derive(Clone, Debug)]
enum Step {
    Alloc(u64),
    /// Free the n-th live allocation (modulo the count).
    Free(usize),
    /// Free a range that may or may not be free already (double-free check).
    FreeRaw(u64, u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u64..=16).prop_map(|p| Step::Alloc(p * PAGE)),
        3 => any::<usize>().prop_map(Step::Free),
        1 => (0u64..64, 1u64..4).prop_map(|(p, n)| Step::FreeRaw(p * PAGE, n * PAGE)),
    ]
}

/// Windows that start at 0 (page 0 excluded), in the middle, or end at 2^64-1.
fn window() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        Just((0, 64 * PAGE - 1)),
        Just((0x1000_0000, 0x1000_0000 + 48 * PAGE - 1)),
        Just((u64::MAX - 64 * PAGE + 1, u64::MAX)),
    ]
}

proptest! {
    // 1,000 cases by default; PROPTEST_CASES raises it.
    #![proptest_config(ProptestConfig { cases: proptests::cases(), ..ProptestConfig::default() })]

    #[test]
    fn allocator_matches_the_naive_reference((wf, wl) in window(), steps in prop::collection::vec(step(), 1..128)) {
        let mut fast = IovaAllocator::new(wf, wl, PageSize::SIZE_4K).unwrap();
        let (f0, l0) = (fast.window().first().0, fast.window().last().0);
        prop_assert_eq!(f0, wf.max(PAGE));
        let mut slow = NaiveAllocator::new(f0, l0);
        let mut live: Vec<(u64, u64)> = Vec::new();
        for s in steps {
            match s {
                Step::Alloc(size) => {
                    let a = fast.alloc(size).map(|s| s.bounds());
                    let b = slow.alloc(size);
                    prop_assert_eq!(a, b);
                    if let Some(r) = a {
                        prop_assert!(r.0 != 0);
                        live.push(r);
                    }
                }
                Step::Free(i) if !live.is_empty() => {
                    let (f, l) = live.swap_remove(i % live.len());
                    let span = vdpa_iova_planner::Span::new(vdpa_iova_planner::Iova(f), l - f + 1, PageSize::SIZE_4K).unwrap();
                    prop_assert!(fast.free(span));
                    prop_assert!(slow.free(f, l));
                }
                Step::Free(_) => {}
                Step::FreeRaw(off, size) => {
                    let Some(f) = f0.checked_add(off) else { continue };
                    if f.checked_add(size - 1).is_some_and(|l| l <= l0) {
                        let l = f + (size - 1);
                        // Only free what no live allocation holds, so both sides see a free or a double free.
                        if live.iter().all(|&(a, b)| b < f || l < a) {
                            let span = vdpa_iova_planner::Span::new(vdpa_iova_planner::Iova(f), size, PageSize::SIZE_4K).unwrap();
                            prop_assert_eq!(fast.free(span), slow.free(f, l));
                        }
                    }
                }
            }
            let holes: Vec<(u64, u64)> = fast
                .free_ranges()
                .map(|s| (s.first().0, s.last().0))
                .collect();
            prop_assert_eq!(&holes, &slow.free);
            let largest = slow.free.iter().map(|&(a, b)| b - a + 1).max().unwrap_or(0);
            prop_assert_eq!(fast.largest_free(), largest);
        }
    }
}
