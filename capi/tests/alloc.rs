//! `vdpa_iova_translate` does not allocate for translations of up to two
//! segments, on its error paths either; three or more make the core's
//! `SmallVec` (two inline slots) spill, as documented.

use core::cell::Cell;
use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::{null, null_mut};

use vdpa_iova::*;

/// Counts the allocations of the current thread while `COUNTING` is set.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: defers to the system allocator; the bookkeeping touches only
// const-initialised thread-locals without destructors, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.try_with(Cell::get).unwrap_or(false) {
            let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        }
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr came from System.alloc with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations `f` makes on this thread.
fn allocs(f: impl FnOnce()) -> usize {
    ALLOCS.with(|c| c.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCS.with(Cell::get)
}

const MIB: u64 = 1 << 20;

#[test]
fn translate_allocates_only_past_two_segments() {
    let mut caps = vdpa_iova_caps::default();
    let mut p = null_mut();
    let mut plan = null_mut();
    // RW, RO, RW back to back: a range over all three is three segments.
    let regions: Vec<vdpa_iova_region> = (0..3)
        .map(|i| vdpa_iova_region {
            gpa: i * MIB,
            size: MIB,
            hva: 0x7f00_0000_0000 + i * 0x1000_0000,
            readonly: (i == 1).into(),
            reserved: [0; 7],
        })
        .collect();
    // SAFETY: valid pointers throughout; handles freed once at the end.
    unsafe {
        assert_eq!(vdpa_iova_caps_default(&mut caps), 0);
        assert_eq!(vdpa_iova_planner_new(&caps, null(), &mut p), 0);
        assert_eq!(vdpa_iova_add_regions(p, regions.as_ptr(), 3, &mut plan), 0);
        vdpa_iova_plan_free(plan);
    }
    let mut segs = [vdpa_iova_segment::default(); 4];
    let mut n = 0;
    let mut t = |gpa: u64, len: u64, cap: usize| {
        // SAFETY: cap <= 4 writable segments, a writable n, a live planner.
        unsafe { vdpa_iova_translate(p, gpa, len, segs.as_mut_ptr(), cap, &mut n) }
    };
    let cases = [
        (64, 1500, 4, 0),                   // one segment
        (MIB - 64, 128, 4, 0),              // two
        (MIB - 64, 128, 1, -libc::ENOBUFS), // two, room for one
        (3 * MIB, 64, 4, -libc::ENOENT),    // not guest memory
        (0, 0, 4, -libc::EINVAL),           // zero length
        (4096, u64::MAX, 4, -libc::EINVAL), // wraps
    ];
    for (gpa, len, cap, want) in cases {
        let mut rc = 1;
        let a = allocs(|| rc = t(gpa, len, cap));
        assert_eq!(rc, want, "translate({gpa:#x}, {len:#x})");
        assert_eq!(a, 0, "translate({gpa:#x}, {len:#x}) allocated {a} times");
    }
    // Three segments: the core's SmallVec spills to the heap (documented).
    let mut rc = 1;
    let a = allocs(|| rc = t(0, 3 * MIB, 4));
    assert_eq!((rc, n), (0, 3));
    assert!(
        a >= 1,
        "three segments no longer spill: update the documentation"
    );
    // SAFETY: freed once.
    unsafe { vdpa_iova_planner_free(p) };
}
