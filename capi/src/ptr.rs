//! Checked views of the caller's pointers: NULL and misaligned pointers
//! become `-EFAULT` before anything is read or written.
//!
//! A check cannot tell a valid pointer from a dangling one: each function's
//! `# Safety` section says what the caller promises for a non-NULL pointer.

use core::{ptr, slice};

use crate::error::Error;

fn check<T>(p: *const T, name: &'static str) -> Result<(), Error> {
    if p.is_null() {
        Err(Error::null(name))
    } else if !p.is_aligned() {
        Err(Error::misaligned(name))
    } else {
        Ok(())
    }
}

/// `*p`, read-only.
///
/// # Safety
/// A non-NULL, aligned `p` points to a valid `T` that nothing mutates for `'a`.
pub(crate) unsafe fn as_ref<'a, T>(p: *const T, name: &'static str) -> Result<&'a T, Error> {
    check(p, name)?;
    // SAFETY: checked non-NULL and aligned; validity is the caller's promise.
    Ok(unsafe { &*p })
}

/// `*p`, mutable.
///
/// # Safety
/// A non-NULL, aligned `p` points to a valid `T` that nothing else accesses for `'a`.
pub(crate) unsafe fn as_mut<'a, T>(p: *mut T, name: &'static str) -> Result<&'a mut T, Error> {
    check(p, name)?;
    // SAFETY: checked non-NULL and aligned; validity and exclusivity are
    // the caller's promise.
    Ok(unsafe { &mut *p })
}

/// Writes `v` to the caller's `*p` (which need not be initialised).
///
/// # Safety
/// A non-NULL, aligned `p` is valid for a write of a `T`.
pub(crate) unsafe fn write<T>(p: *mut T, name: &'static str, v: T) -> Result<(), Error> {
    check(p, name)?;
    // SAFETY: checked non-NULL and aligned; writable per the caller's promise.
    unsafe { ptr::write(p, v) };
    Ok(())
}

/// The caller's array of `n` elements; NULL is allowed when `n == 0`.
///
/// # Safety
/// When `n > 0`, a non-NULL, aligned `p` points to `n` valid `T`s that
/// nothing mutates for `'a`.
pub(crate) unsafe fn as_slice<'a, T>(
    p: *const T,
    n: usize,
    name: &'static str,
) -> Result<&'a [T], Error> {
    if n == 0 {
        return Ok(&[]);
    }
    check(p, name)?;
    if n.checked_mul(size_of::<T>())
        .map_or(true, |b| b > isize::MAX as usize)
    {
        return Err(Error::arg(
            "n",
            n as u64,
            "an array that large cannot exist in memory",
        ));
    }
    // SAFETY: checked non-NULL, aligned and at most isize::MAX bytes; the
    // caller promises n valid elements.
    Ok(unsafe { slice::from_raw_parts(p, n) })
}

/// The caller's writable array of `cap` elements (which need not be
/// initialised); NULL is allowed when `cap == 0`.
///
/// # Safety
/// When `cap > 0`, a non-NULL, aligned `p` is valid for writes of `cap`
/// `T`s that nothing else accesses during the call.
pub(crate) unsafe fn fill<T: Copy>(
    p: *mut T,
    cap: usize,
    name: &'static str,
    items: impl ExactSizeIterator<Item = T>,
) -> Result<(), Error> {
    debug_assert!(items.len() <= cap);
    if items.len() == 0 {
        return Ok(());
    }
    check(p, name)?;
    for (i, v) in items.take(cap).enumerate() {
        // SAFETY: i < cap, and the caller promises cap writable elements
        // at the checked, aligned p.
        unsafe { ptr::write(p.add(i), v) };
    }
    Ok(())
}
