//! What a VMM reads: a planner's entries and translations, the vrings'
//! size, a plan's ops and cost (and its release), the library's version.

use core::ffi::{c_char, c_int};

use ::vdpa_iova_planner::{Gpa, PageSize, Strategy};

#[cfg(doc)]
use super::vdpa_iova_svq_prepare;
use super::{live, svq_config, vdpa_iova_plan, vdpa_iova_planner};
use crate::error::{guard, guard_free, guard_ptr, Error};
use crate::ptr::{as_mut, as_ref, fill, write};
use crate::types::*;

/// The IOTLB entries of the host buffers mapped now (find a buffer's IOVA by
/// its `uaddr`), as [`vdpa_iova_mapped`] gives every entry; none outside
/// SVQ (and prepared) mode.
///
/// # Errors
/// `-ENOBUFS` when more than `cap` (`*n` is the count needed); `-EFAULT`
/// for NULL pointers.
///
/// # Safety
/// As [`vdpa_iova_mapped`].
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_buffer_entries(
    planner: *const vdpa_iova_planner,
    entries: *mut vdpa_iova_entry,
    cap: usize,
    n: *mut usize,
) -> c_int {
    // SAFETY: as this function's contract.
    unsafe {
        copy_entries(
            "vdpa_iova_buffer_entries",
            "the buffer entries",
            planner,
            entries,
            cap,
            n,
            |s| s.buffer_entries(),
        )
    }
}

/// The body of the entry listings: `list`'s entries of a live planner,
/// sorted by address space and IOVA, copied into the caller's array.
///
/// # Safety
/// As [`vdpa_iova_mapped`].
unsafe fn copy_entries(
    func: &'static str,
    what: &'static str,
    planner: *const vdpa_iova_planner,
    entries: *mut vdpa_iova_entry,
    cap: usize,
    n: *mut usize,
    list: impl Fn(&(dyn Strategy + Send)) -> Vec<(u32, ::vdpa_iova_planner::Entry)>,
) -> c_int {
    guard(func, || {
        // SAFETY: the caller promises a non-NULL n is writable.
        let n = unsafe { as_mut(n, "n") }?;
        *n = 0;
        // SAFETY: the caller promises a live planner.
        let p = unsafe { live(planner) }?;
        if cap > 0 && entries.is_null() {
            return Err(Error::null("entries"));
        }
        let mut m = list(p.inner.as_ref());
        m.sort_by_key(|(asid, e)| (*asid, e.iova.first().0));
        if m.len() > cap {
            *n = m.len();
            return Err(Error::no_bufs(what, m.len(), cap));
        }
        let items = m.iter().map(|(asid, e)| crate::types::entry(*asid, e));
        // SAFETY: the caller promises cap writable entries at a non-NULL entries.
        unsafe { fill(entries, cap, "entries", items) }?;
        *n = m.len();
        Ok(0)
    })
}

/// Device addresses of `len` bytes of guest memory at `gpa` (with a vIOMMU:
/// at guest IOVA `gpa`), for the SVQ data path. Writes at most `cap`
/// segments to `segs` and their count to `*n`; `segs` may be NULL when
/// `cap` is 0 (to ask for the count).
///
/// Allocation-free, on its error paths too, for any translation of at most
/// two segments: the core returns a `SmallVec` with two inline slots, and a
/// buffer in one region (or crossing one boundary) is one or two segments.
/// A range crossing two or more boundaries between differently translated
/// pieces makes that `SmallVec` spill: one heap allocation, freed before
/// the call returns. O(log n) in the number of pieces.
///
/// # Errors
/// `-ENOBUFS` when more than `cap` segments are needed: `*n` is then the
/// count needed and `segs` is untouched; `-ENOENT` for an address that is
/// not guest memory (or not mapped by the guest's vIOMMU); `-ERANGE` for
/// guest memory the device cannot reach now; `-EINVAL` for `len` 0 or a
/// range wrapping past `2^64 - 1`; `-EFAULT` for NULL `planner` or `n`, or
/// NULL `segs` with a non-zero `cap`. On every error but `-ENOBUFS`, `*n` is 0.
///
/// # Safety
/// `planner` live, with no event running on it concurrently; a non-NULL
/// `segs` must be writable for `cap` segments; a non-NULL `n` writable.
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_translate(
    planner: *const vdpa_iova_planner,
    gpa: u64,
    len: u64,
    segs: *mut vdpa_iova_segment,
    cap: usize,
    n: *mut usize,
) -> c_int {
    guard("vdpa_iova_translate", || {
        // SAFETY: the caller promises a non-NULL n is writable.
        let n = unsafe { as_mut(n, "n") }?;
        *n = 0;
        // SAFETY: the caller promises a live planner.
        let p = unsafe { live(planner) }?;
        if cap > 0 && segs.is_null() {
            return Err(Error::null("segs"));
        }
        let t = p.inner.translate(Gpa(gpa), len)?;
        if t.len() > cap {
            *n = t.len();
            return Err(Error::no_bufs("the translation", t.len(), cap));
        }
        let items = t.iter().map(|s| vdpa_iova_segment {
            iova: s.iova.0,
            len: s.len,
            perm: s.perm.to_kernel(),
            reserved: [0; 7],
        });
        // SAFETY: the caller promises cap writable segments at a non-NULL segs.
        unsafe { fill(segs, cap, "segs", items) }?;
        *n = t.len();
        Ok(0)
    })
}

/// Every IOTLB entry the planner has mapped now (what the device's table
/// must hold), by address space then IOVA; at most `cap` written to
/// `entries`, the count to `*n`. `entries` may be NULL when `cap` is 0.
/// Allocates; not for a hot path.
///
/// # Errors
/// `-ENOBUFS` when more than `cap` are mapped (`*n` is the count needed);
/// `-EFAULT` for NULL pointers.
///
/// # Safety
/// `planner` live with no event running; a non-NULL `entries` writable for
/// `cap` entries; a non-NULL `n` writable.
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_mapped(
    planner: *const vdpa_iova_planner,
    entries: *mut vdpa_iova_entry,
    cap: usize,
    n: *mut usize,
) -> c_int {
    // SAFETY: as this function's contract.
    unsafe {
        copy_entries(
            "vdpa_iova_mapped",
            "the mapped entries",
            planner,
            entries,
            cap,
            n,
            |s| s.mapped(),
        )
    }
}

/// Bytes of host memory the shadow vrings of `config` take at `config->hva`
/// on a device with pages of `page_size`: what the VMM must allocate
/// (page-aligned, shared memory) before [`vdpa_iova_svq_prepare`].
///
/// # Errors
/// `-EINVAL` for bad parameters (as `vdpa_iova_svq_prepare` would refuse
/// them) or page size; `-EFAULT` for NULL pointers.
///
/// # Safety
/// A non-NULL `config` readable, a non-NULL `bytes` writable.
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_svq_size(
    config: *const vdpa_iova_svq_config,
    page_size: u64,
    bytes: *mut u64,
) -> c_int {
    guard("vdpa_iova_svq_size", || {
        // SAFETY: the caller promises a non-NULL config is readable.
        let c = svq_config(unsafe { as_ref(config, "config") }?);
        let page = PageSize::new(page_size)?;
        let total = c.host_bytes(page)?;
        // SAFETY: the caller promises a non-NULL bytes is writable.
        unsafe { write(bytes, "bytes", total) }?;
        Ok(0)
    })
}

/// The ops of a plan, in the order to write them, as an array of `*n`
/// elements owned by the plan (valid until [`vdpa_iova_plan_free`]). Never
/// NULL for a valid plan, even an empty one.
///
/// Returns NULL (and `*n` = 0 when `n` is not NULL) if `plan` or `n` is NULL.
///
/// # Safety
/// A non-NULL `plan` must come from an event and not be freed; a non-NULL
/// `n` writable.
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_plan_ops(
    plan: *const vdpa_iova_plan,
    n: *mut usize,
) -> *const vdpa_iova_op {
    guard_ptr("vdpa_iova_plan_ops", || {
        // SAFETY: the caller promises a non-NULL n is writable.
        let n = unsafe { as_mut(n, "n") }?;
        *n = 0;
        // SAFETY: the caller promises a live plan.
        let plan = unsafe { as_ref(plan, "plan") }?;
        *n = plan.ops.len();
        Ok(plan.ops.as_ptr())
    })
}

/// What a plan costs (pinned and unpinned bytes, messages, in total and
/// while the device is stopped).
///
/// # Errors
/// `-EFAULT` for NULL pointers.
///
/// # Safety
/// A non-NULL `plan` must come from an event and not be freed; a non-NULL
/// `cost` writable.
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_plan_cost(
    plan: *const vdpa_iova_plan,
    cost: *mut vdpa_iova_cost,
) -> c_int {
    guard("vdpa_iova_plan_cost", || {
        // SAFETY: the caller promises a live plan.
        let plan = unsafe { as_ref(plan, "plan") }?;
        // SAFETY: the caller promises a non-NULL cost is writable.
        unsafe { write(cost, "cost", plan.cost) }?;
        Ok(0)
    })
}

/// Releases a plan (its ops array with it). NULL does nothing.
///
/// # Safety
/// A non-NULL `plan` must come from an event and not be used (or freed) again.
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_plan_free(plan: *mut vdpa_iova_plan) {
    guard_free("vdpa_iova_plan_free", || {
        if !plan.is_null() {
            // SAFETY: the caller gives back ownership of a Box made by an event.
            drop(unsafe { Box::from_raw(plan) });
        }
    });
}

/// The library's version, `"MAJOR.MINOR.PATCH"`; a static string.
#[no_mangle]
pub extern "C" fn vdpa_iova_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
