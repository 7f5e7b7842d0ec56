//! The per-queue translator: what a shadow virtqueue calls for every
//! descriptor it forwards.
//!
//! [`vdpa_iova_translator_translate`] is the data path. It keeps every
//! check [`crate::vdpa_iova_translate`] makes (pointers, lengths, the
//! errno and message of each failure) but not its wrapper: the success path
//! writes the one segment straight into the caller's array, with no
//! intermediate `Result` of the library's error type to copy, and every
//! failure is recorded out of line.
//!
//! A translator starts with a [`vdpa_iova_translator_hint`]: a small
//! snapshot whole and the epoch it holds for, which the header's inline
//! `vdpa_iova_translator_translate_inline` reads to answer a descriptor in
//! one entry without a call. Nothing on the data path writes the hint; a
//! refresh rewrites it.

use core::ffi::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use ::vdpa_iova_planner::{Gpa, PlanError, Segment, Translator};

use crate::error::{fail, guard, guard_free, panicked, Error};
use crate::planner::{live, vdpa_iova_planner};
use crate::ptr::{as_mut, fill, write};
use crate::types::vdpa_iova_segment;

/// A shadow virtqueue's own translator: a snapshot of its planner's
/// GPA -> IOVA table with the queue's last hit. Opaque; created by
/// [`vdpa_iova_translator_new`], one per queue.
///
/// It never answers from a table an event has changed since the snapshot
/// (hot-plug, unplug, a guest vIOMMU map or unmap, a switch, a failback, a
/// reset, the planner freed, an event that failed with `-EIO`):
/// [`vdpa_iova_translator_translate`] then returns `-ESTALE`, and
/// [`vdpa_iova_translator_refresh`] takes a new snapshot.
pub struct vdpa_iova_translator {
    inner: Translator,
    /// The planner it was made from, compared (never dereferenced) by
    /// `refresh`.
    planner: *const vdpa_iova_planner,
}

/// The first bytes of every translator, which the header's inline fast path
/// reads (a `struct vdpa_iova_translator *` points to them): for a small
/// table, the whole snapshot, valid while `*epoch == seen`. Written by the
/// library only when it takes a snapshot (`_new`, `_refresh`); a translate
/// call writes nothing here, so the inline path's reads never wait on a
/// store.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct vdpa_iova_translator_hint {
    /// The planner's generation counter (a 64-bit atomic, bumped by every
    /// event that changes its table); valid while the translator lives.
    pub epoch: *const u64,
    /// The counter's value at the snapshot.
    pub seen: u64,
    /// Entries of the whole snapshot below, when it has at most
    /// [`VDPA_IOVA_HINT_ENTRIES`] (a real guest's sections); 0 otherwise
    /// (the inline path then calls the library at once).
    pub entries: u64,
    /// First guest address of each entry, ascending; `2^64 - 1` in the
    /// slots past `entries` (no entry starts there: entries are whole
    /// pages), so that a search may compare all of them without a branch.
    pub firsts: [u64; VDPA_IOVA_HINT_ENTRIES],
    /// Last guest address of each entry.
    pub lasts: [u64; VDPA_IOVA_HINT_ENTRIES],
    /// `iova - gpa` of each entry, wrapping.
    pub deltas: [u64; VDPA_IOVA_HINT_ENTRIES],
    /// `VDPA_IOVA_PERM_*` of each entry.
    pub perms: [u8; VDPA_IOVA_HINT_ENTRIES],
}

/// Entries a [`vdpa_iova_translator_hint`] carries of a small snapshot: the
/// header's inline path searches them without a call.
pub const VDPA_IOVA_HINT_ENTRIES: usize = 8;

/// What a translator handle points to: the hint first, at offset 0.
#[repr(C)]
struct Slot {
    hint: vdpa_iova_translator_hint,
    t: vdpa_iova_translator,
}

impl Slot {
    /// A translator with its hint.
    fn new(t: vdpa_iova_translator) -> Box<Slot> {
        Box::new(Slot {
            hint: hint(&t.inner),
            t,
        })
    }

    /// Rewrites the hint: after a new snapshot.
    fn publish(&mut self) {
        self.hint = hint(&self.t.inner);
    }
}

/// The hint of `t`'s snapshot.
fn hint(t: &Translator) -> vdpa_iova_translator_hint {
    let (counter, seen) = t.epoch();
    let mut hint = vdpa_iova_translator_hint {
        epoch: counter.as_ptr().cast_const(),
        seen,
        entries: 0,
        firsts: [u64::MAX; VDPA_IOVA_HINT_ENTRIES],
        lasts: [0; VDPA_IOVA_HINT_ENTRIES],
        deltas: [0; VDPA_IOVA_HINT_ENTRIES],
        perms: [0; VDPA_IOVA_HINT_ENTRIES],
    };
    let all = t.entries();
    if all.len() <= VDPA_IOVA_HINT_ENTRIES {
        hint.entries = all.len() as u64;
        for (i, (f, l, d, p)) in all.enumerate() {
            hint.firsts[i] = f;
            hint.lasts[i] = l;
            hint.deltas[i] = d;
            hint.perms[i] = p.to_kernel();
        }
    }
    hint
}

fn segment(s: &Segment) -> vdpa_iova_segment {
    vdpa_iova_segment {
        iova: s.iova.0,
        len: s.len,
        perm: s.perm.to_kernel(),
        reserved: [0; 7],
    }
}

/// Creates a translator over `planner`'s table as it is now; `*out` is set
/// to it (NULL on failure). Allocates; call it when the queue starts, not
/// per descriptor.
///
/// # Errors
/// `-EFAULT` for NULL pointers; `-EIO` for a planner an internal error left
/// unusable.
///
/// # Safety
/// `planner` live with no event running on it; a non-NULL `out` writable.
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_translator_new(
    planner: *const vdpa_iova_planner,
    out: *mut *mut vdpa_iova_translator,
) -> c_int {
    guard("vdpa_iova_translator_new", || {
        // SAFETY: the caller promises a non-NULL out is writable.
        unsafe { write(out, "out", ptr::null_mut()) }?;
        // SAFETY: the caller promises a live planner.
        let p = unsafe { live(planner) }?;
        let t = vdpa_iova_translator {
            inner: Translator::new(p.strategy())?,
            planner,
        };
        let slot = Slot::new(t);
        let handle = Box::into_raw(slot).cast::<vdpa_iova_translator>();
        // SAFETY: out was checked writable above.
        unsafe { write(out, "out", handle) }?;
        Ok(0)
    })
}

/// Takes a new snapshot of the planner's table, after `-ESTALE`. Allocates
/// only if the table grew.
///
/// # Errors
/// `-EFAULT` for NULL pointers; `-EINVAL` when `planner` is not the one the
/// translator was made from; `-EIO` for a planner an internal error left
/// unusable. The translator is unchanged then.
///
/// # Safety
/// `translator` from [`vdpa_iova_translator_new`], not freed, used by no
/// other thread during the call; `planner` live with no event running on it.
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_translator_refresh(
    translator: *mut vdpa_iova_translator,
    planner: *const vdpa_iova_planner,
) -> c_int {
    guard("vdpa_iova_translator_refresh", || {
        // SAFETY: the caller promises a translator from _new, which points
        // to a Slot, and that it alone uses it now.
        let slot = unsafe { as_mut(translator.cast::<Slot>(), "translator") }?;
        // SAFETY: the caller promises a live planner.
        let p = unsafe { live(planner) }?;
        let t = &mut slot.t;
        if !ptr::eq(planner, t.planner) {
            return Err(Error::arg(
                "planner",
                planner as u64,
                "must be the planner the translator was made from",
            ));
        }
        t.inner.refresh(p.strategy())?;
        slot.publish();
        Ok(0)
    })
}

/// Frees a translator; NULL does nothing. It may outlive its planner.
///
/// # Safety
/// A non-NULL `translator` from [`vdpa_iova_translator_new`], not freed before.
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_translator_free(translator: *mut vdpa_iova_translator) {
    guard_free("vdpa_iova_translator_free", || {
        if !translator.is_null() {
            // SAFETY: the caller gives back ownership of the Box of a Slot
            // made by _new.
            drop(unsafe { Box::from_raw(translator.cast::<Slot>()) });
        }
    });
}

const FUNC: &str = "vdpa_iova_translator_translate";

/// Device addresses of `len` bytes of guest memory at `gpa` (with a guest
/// vIOMMU: at guest IOVA `gpa`), as [`crate::vdpa_iova_translate`] gives
/// them for the planner's table at the translator's snapshot: at most `cap`
/// segments written to `segs`, their count to `*n`. `segs` may be NULL when
/// `cap` is 0 (to ask for the count).
///
/// The SVQ data path: no allocation and no write to memory shared with
/// other queues for a translation of at most two segments; the queue's
/// last hit is tried first, then a search of the snapshot.
///
/// # Errors
/// `-ESTALE` when an event changed the planner's table since the snapshot
/// (nothing is translated: refresh, then call again); otherwise as
/// [`crate::vdpa_iova_translate`]: `-ENOBUFS` when more than `cap`
/// segments are needed (`*n` is the count needed, `segs` untouched),
/// `-ENOENT`, `-ERANGE`, `-EINVAL`, `-EFAULT`. On every error but
/// `-ENOBUFS`, `*n` is 0.
///
/// # Safety
/// `translator` from [`vdpa_iova_translator_new`], not freed, used by no
/// other thread during the call (its planner need not be live); a non-NULL
/// `segs` writable for `cap` segments; a non-NULL `n` writable.
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_translator_translate(
    translator: *mut vdpa_iova_translator,
    gpa: u64,
    len: u64,
    segs: *mut vdpa_iova_segment,
    cap: usize,
    n: *mut usize,
) -> c_int {
    // SAFETY: this function's contract is `hot`'s.
    match catch_unwind(AssertUnwindSafe(|| unsafe {
        hot(translator, gpa, len, segs, cap, n)
    })) {
        Ok(rc) => rc,
        Err(payload) => panicked(FUNC, payload),
    }
}

/// The body of [`vdpa_iova_translator_translate`].
///
/// # Safety
/// As [`vdpa_iova_translator_translate`].
#[inline(always)]
unsafe fn hot(
    translator: *mut vdpa_iova_translator,
    gpa: u64,
    len: u64,
    segs: *mut vdpa_iova_segment,
    cap: usize,
    n: *mut usize,
) -> c_int {
    // Every pointer check at once (`|`, not `||`: one branch); which one
    // failed is worked out off the hot path.
    let used = cap > 0;
    if n.is_null()
        | !n.is_aligned()
        | translator.is_null()
        | !translator.cast::<Slot>().is_aligned()
        | (used & (segs.is_null() | !segs.is_aligned()))
    {
        // SAFETY: as this function's contract.
        return unsafe { bad_pointer(translator, segs, cap, n) };
    }
    // SAFETY: checked non-NULL and aligned; a translator from _new (a
    // Slot) that no other thread uses, per the caller's promise.
    let slot = unsafe { &mut *translator.cast::<Slot>() };
    let r = slot.t.inner.translate_single(Gpa(gpa), len);
    match r {
        Ok(Some(s)) if used => {
            // SAFETY: both checked non-NULL and aligned (segs as cap > 0);
            // the caller promises them writable, segs for cap >= 1 segments.
            unsafe {
                segs.write(segment(&s));
                n.write(1);
            }
            0
        }
        Ok(_) => {
            // SAFETY: as this function's contract; n checked.
            unsafe { several(&mut slot.t, gpa, len, segs, cap, n) }
        }
        Err(e) => {
            // SAFETY: checked non-NULL and aligned.
            unsafe { n.write(0) };
            fail_plan(e)
        }
    }
}

/// The error for the first bad pointer, in the order the arguments are
/// checked by [`crate::vdpa_iova_translate`]: `n`, the handle, `segs`.
///
/// # Safety
/// As [`vdpa_iova_translator_translate`].
#[cold]
#[inline(never)]
unsafe fn bad_pointer(
    translator: *mut vdpa_iova_translator,
    segs: *mut vdpa_iova_segment,
    cap: usize,
    n: *mut usize,
) -> c_int {
    if n.is_null() || !n.is_aligned() {
        return fail(FUNC, bad_ptr(n, "n"));
    }
    // SAFETY: checked non-NULL and aligned; writable per the caller's promise.
    unsafe { n.write(0) };
    if translator.is_null() || !translator.cast::<Slot>().is_aligned() {
        return fail(FUNC, bad_ptr(translator, "translator"));
    }
    debug_assert!(cap > 0);
    fail(FUNC, bad_ptr(segs, "segs"))
}

/// The failure path for a refusal of the core: the conversion to the
/// boundary's error and its message stay out of the hot function's frame.
#[cold]
#[inline(never)]
fn fail_plan(e: PlanError) -> c_int {
    fail(FUNC, e.into())
}

#[cold]
fn bad_ptr<T>(p: *const T, name: &'static str) -> Error {
    if p.is_null() {
        Error::null(name)
    } else {
        Error::misaligned(name)
    }
}

/// Everything but one segment that fits: several segments, a gap, or
/// `cap` 0. The general walk, then the copy.
///
/// # Safety
/// As [`vdpa_iova_translator_translate`], `n` checked writable.
#[cold]
#[inline(never)]
unsafe fn several(
    t: &mut vdpa_iova_translator,
    gpa: u64,
    len: u64,
    segs: *mut vdpa_iova_segment,
    cap: usize,
    n: *mut usize,
) -> c_int {
    // SAFETY: checked writable by the caller of this function.
    unsafe { n.write(0) };
    let tr = match t.inner.translate(Gpa(gpa), len) {
        Ok(tr) => tr,
        Err(e) => return fail_plan(e),
    };
    if tr.len() > cap {
        // SAFETY: checked writable by the caller of this function.
        unsafe { n.write(tr.len()) };
        return fail(FUNC, Error::no_bufs("the translation", tr.len(), cap));
    }
    // SAFETY: the caller promises cap writable segments at a non-NULL segs.
    if let Err(e) = unsafe { fill(segs, cap, "segs", tr.iter().map(segment)) } {
        return fail(FUNC, e);
    }
    // SAFETY: as above.
    unsafe { n.write(tr.len()) };
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::*;
    use crate::types::*;

    /// A planner with the pc layout's six sections mapped.
    unsafe fn pc(strategy: u32) -> *mut vdpa_iova_planner {
        let mut caps = vdpa_iova_caps::default();
        let mut opts = vdpa_iova_options::default();
        let mut p = ptr::null_mut();
        let mut plan = ptr::null_mut();
        let rs = [
            (0u64, 0xc_0000u64, 0u8),
            (0xc_0000, 0x2_0000, 1),
            (0xe_0000, 0x2_0000, 1),
            (0x10_0000, 0xff0_0000, 0),
            (0xfffc_0000, 0x4_0000, 1),
        ]
        .map(|(gpa, size, readonly)| vdpa_iova_region {
            gpa,
            size,
            hva: 0x7f00_0000_0000 + gpa,
            readonly,
            ..Default::default()
        });
        // SAFETY: valid pointers throughout.
        unsafe {
            assert_eq!(vdpa_iova_caps_default(&mut caps), 0);
            assert_eq!(vdpa_iova_options_default(&mut opts), 0);
            opts.strategy = strategy;
            assert_eq!(vdpa_iova_planner_new(&caps, &opts, &mut p), 0);
            assert_eq!(
                vdpa_iova_add_regions(p, rs.as_ptr(), rs.len(), &mut plan),
                0
            );
            vdpa_iova_plan_free(plan);
        }
        p
    }

    /// Both translate paths, as (rc, n, segments written).
    unsafe fn both(
        p: *mut vdpa_iova_planner,
        t: *mut vdpa_iova_translator,
        gpa: u64,
        len: u64,
        cap: usize,
    ) -> [(c_int, usize, Vec<vdpa_iova_segment>); 2] {
        let run = |f: &dyn Fn(*mut vdpa_iova_segment, *mut usize) -> c_int| {
            let mut segs = vec![vdpa_iova_segment::default(); cap];
            let mut n = 99;
            let rc = f(segs.as_mut_ptr(), &mut n);
            (rc, n, segs)
        };
        // SAFETY: live handles, cap writable segments, a writable n.
        unsafe {
            [
                run(&|s, n| vdpa_iova_translate(p, gpa, len, s, cap, n)),
                run(&|s, n| vdpa_iova_translator_translate(t, gpa, len, s, cap, n)),
            ]
        }
    }

    #[test]
    fn the_handle_answers_as_vdpa_iova_translate_and_refuses_when_stale() {
        for strategy in [VDPA_IOVA_STRATEGY_IDENTITY, VDPA_IOVA_STRATEGY_QEMU] {
            // SAFETY: valid pointers throughout; each handle freed once.
            unsafe {
                let p = pc(strategy);
                let mut t = ptr::null_mut();
                assert_eq!(vdpa_iova_translator_new(p, &mut t), 0);
                for gpa in [
                    0,
                    0xbffff,
                    0xc_0000,
                    0xfffff,
                    0x1234_5678,
                    0x1000_0000,
                    0xfffc_0000,
                ] {
                    for len in [0, 1, 64, 0x1000, 0x4_0000, u64::MAX] {
                        for cap in [0, 1, 2, 4] {
                            let [a, b] = both(p, t, gpa, len, cap);
                            assert_eq!(a, b, "{strategy} at {gpa:#x} len {len:#x} cap {cap}");
                        }
                    }
                }
                // A hot-plugged DIMM: the old snapshot refuses, also for
                // addresses the event did not touch.
                let dimm = vdpa_iova_region {
                    gpa: 1 << 32,
                    size: 1 << 30,
                    hva: 0x7e00_0000_0000,
                    ..Default::default()
                };
                let mut plan = ptr::null_mut();
                assert_eq!(vdpa_iova_add_regions(p, &dimm, 1, &mut plan), 0);
                vdpa_iova_plan_free(plan);
                for gpa in [0x1000, 1 << 32] {
                    let [_, (rc, n, segs)] = both(p, t, gpa, 64, 1);
                    assert_eq!((rc, n), (-libc::ESTALE, 0));
                    assert_eq!(segs[0], vdpa_iova_segment::default(), "nothing written");
                }
                // Refreshed from another planner: refused, still stale.
                let q = pc(strategy);
                assert_eq!(vdpa_iova_translator_refresh(t, q), -libc::EINVAL);
                assert_eq!(both(p, t, 0x1000, 64, 1)[1].0, -libc::ESTALE);
                assert_eq!(vdpa_iova_translator_refresh(t, p), 0);
                let [a, b] = both(p, t, 1 << 32, 64, 1);
                assert_eq!((a.0, a.1), (0, 1));
                assert_eq!(a, b);
                // The planner freed: the handle can only refuse.
                vdpa_iova_planner_free(p);
                assert_eq!(
                    vdpa_iova_translator_translate(t, 0x1000, 64, ptr::null_mut(), 0, &mut 0),
                    -libc::ESTALE
                );
                vdpa_iova_translator_free(t);
                vdpa_iova_planner_free(q);
            }
        }
    }

    #[test]
    fn null_and_misaligned_pointers_are_refused() {
        // SAFETY: the pointers passed are NULL or misaligned on purpose; the
        // library checks them before any access.
        unsafe {
            let p = pc(VDPA_IOVA_STRATEGY_IDENTITY);
            let mut t = ptr::null_mut();
            assert_eq!(vdpa_iova_translator_new(p, ptr::null_mut()), -libc::EFAULT);
            assert_eq!(vdpa_iova_translator_new(ptr::null(), &mut t), -libc::EFAULT);
            assert!(t.is_null());
            assert_eq!(vdpa_iova_translator_new(p, &mut t), 0);
            let mut n = 7;
            let rc = vdpa_iova_translator_translate(t, 0, 64, ptr::null_mut(), 0, ptr::null_mut());
            assert_eq!(rc, -libc::EFAULT);
            let rc =
                vdpa_iova_translator_translate(ptr::null_mut(), 0, 64, ptr::null_mut(), 0, &mut n);
            assert_eq!((rc, n), (-libc::EFAULT, 0));
            let rc = vdpa_iova_translator_translate(t, 0, 64, ptr::null_mut(), 1, &mut n);
            assert_eq!((rc, n), (-libc::EFAULT, 0));
            let mut buf = [0u64; 8];
            let odd = buf
                .as_mut_ptr()
                .cast::<u8>()
                .add(1)
                .cast::<vdpa_iova_segment>();
            let rc = vdpa_iova_translator_translate(t, 0, 64, odd, 1, &mut n);
            assert_eq!((rc, n), (-libc::EFAULT, 0));
            assert_eq!(
                vdpa_iova_translator_refresh(ptr::null_mut(), p),
                -libc::EFAULT
            );
            assert_eq!(vdpa_iova_translator_refresh(t, ptr::null()), -libc::EFAULT);
            vdpa_iova_translator_free(t);
            vdpa_iova_translator_free(ptr::null_mut());
            vdpa_iova_planner_free(p);
        }
    }
}
