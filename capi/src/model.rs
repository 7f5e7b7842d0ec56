//! The kernel-model handle: replays ops under the kernel's IOTLB rules
//! without a device, so a C program (or its tests) can check each plan.

use core::ffi::c_int;
use std::ptr;

use ::vdpa_iova_planner::kernel::{MsgType, RawMsg};
use ::vdpa_iova_planner::{Iova, KernelIotlb};

use crate::error::{guard, guard_free, Error};
use crate::planner::caps_from;
use crate::ptr::{as_mut, as_ref, fill, write};
use crate::types::*;

/// The kernel's vhost-vdpa IOTLB for one device, as a model (strict: it also
/// refuses messages the kernel accepts but whose effect differs from what
/// they say). Opaque; created by [`vdpa_iova_model_new`].
pub struct vdpa_iova_model {
    iotlb: KernelIotlb,
}

/// Creates an empty model of a device with capabilities `caps` (validated
/// as `vdpa_iova_planner_new` does). `*out` is NULL on failure.
///
/// # Errors
/// `-EFAULT` for NULL pointers; `-EINVAL` for bad capabilities.
///
/// # Safety
/// A non-NULL `caps` readable; a non-NULL `out` writable.
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_model_new(
    caps: *const vdpa_iova_caps,
    out: *mut *mut vdpa_iova_model,
) -> c_int {
    guard("vdpa_iova_model_new", || {
        // SAFETY: the caller promises a non-NULL out is writable.
        unsafe { write(out, "out", ptr::null_mut()) }?;
        // SAFETY: the caller promises a non-NULL caps is readable.
        let caps = caps_from(unsafe { as_ref(caps, "caps") }?)?;
        let m = Box::into_raw(Box::new(vdpa_iova_model {
            iotlb: KernelIotlb::new(&caps),
        }));
        // SAFETY: out was checked writable above.
        unsafe { write(out, "out", m) }?;
        Ok(0)
    })
}

/// Releases a model. NULL does nothing.
///
/// # Safety
/// A non-NULL `model` must come from [`vdpa_iova_model_new`] and not be
/// used (or freed) again.
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_model_free(model: *mut vdpa_iova_model) {
    guard_free("vdpa_iova_model_free", || {
        if !model.is_null() {
            // SAFETY: the caller gives back ownership of a Box made by
            // vdpa_iova_model_new.
            drop(unsafe { Box::from_raw(model) });
        }
    });
}

/// Applies one op as the kernel would receive it (its `phase` and
/// `reserved` are not part of the message and are ignored).
///
/// # Errors
/// The errno the kernel's message handler would return (a real device
/// reports `-EFAULT` for all of them): `-EINVAL` (asid out of range, an
/// address space not created yet, another asid inside a batch, an update of
/// size 0, wrapping, or outside the device range, an unknown `type`),
/// `-EEXIST` (an update overlapping a live entry); `-EPROTO` for a message
/// the kernel accepts but whose effect differs from what it says (an
/// invalidate cutting through an entry, of size 0 or wrapping, a perm other
/// than 1, 2, 3, nested or unopened batches). The model is unchanged on
/// error, except that an update or batch begin creates its address space,
/// as in the kernel.
///
/// # Safety
/// A non-NULL `model` live and used by no one else during the call; a
/// non-NULL `op` readable.
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_model_apply_op(
    model: *mut vdpa_iova_model,
    op: *const vdpa_iova_op,
) -> c_int {
    guard("vdpa_iova_model_apply_op", || {
        // SAFETY: the caller promises a live model used by no one else.
        let m = unsafe { as_mut(model, "model") }?;
        // SAFETY: the caller promises a non-NULL op is readable.
        let op = unsafe { as_ref(op, "op") }?;
        let kind = MsgType::from_code(op.r#type).ok_or_else(|| {
            Error::arg(
                "op->type",
                op.r#type.into(),
                "must be VDPA_IOVA_OP_UPDATE, _INVALIDATE, _BATCH_BEGIN or _BATCH_END",
            )
        })?;
        let msg = RawMsg {
            asid: op.asid,
            kind,
            iova: op.iova,
            size: op.size,
            uaddr: op.uaddr,
            perm: op.perm,
        };
        m.iotlb.apply_raw(&msg)?;
        Ok(0)
    })
}

/// The device was reset (`VHOST_VDPA_SET_STATUS` 0): without `persist`,
/// `set_map` and `dma_map` devices forget their maps while the kernel's
/// table keeps them; an open batch is closed. Apply the planner's
/// `vdpa_iova_reset` plan after this.
///
/// # Errors
/// `-EFAULT` for a NULL `model`.
///
/// # Safety
/// A non-NULL `model` live and used by no one else during the call.
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_model_reset_device(model: *mut vdpa_iova_model) -> c_int {
    guard("vdpa_iova_model_reset_device", || {
        // SAFETY: the caller promises a live model used by no one else.
        unsafe { as_mut(model, "model") }?.iotlb.reset_device();
        Ok(0)
    })
}

/// The entry of address space `asid` that translates `iova`, in `*out`.
///
/// # Errors
/// `-ENOENT` when nothing maps `iova`; `-EFAULT` for NULL pointers.
///
/// # Safety
/// A non-NULL `model` live with no call mutating it concurrently; a
/// non-NULL `out` writable.
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_model_lookup(
    model: *const vdpa_iova_model,
    asid: u32,
    iova: u64,
    out: *mut vdpa_iova_entry,
) -> c_int {
    guard("vdpa_iova_model_lookup", || {
        // SAFETY: the caller promises a live model.
        let m = unsafe { as_ref(model, "model") }?;
        let e = m.iotlb.lookup(asid, Iova(iova)).ok_or(Error {
            errno: libc::ENOENT,
            why: crate::error::Why::Msg("nothing is mapped at that iova in that address space"),
        })?;
        // SAFETY: the caller promises a non-NULL out is writable.
        unsafe { write(out, "out", entry(asid, e)) }?;
        Ok(0)
    })
}

/// The live entries of address space `asid` (the kernel's table), by IOVA:
/// at most `cap` written to `entries`, the count to `*n`. `entries` may be
/// NULL when `cap` is 0.
///
/// # Errors
/// `-ENOBUFS` when there are more than `cap` (`*n` is the count);
/// `-EFAULT` for NULL pointers.
///
/// # Safety
/// A non-NULL `model` live with no call mutating it concurrently; a
/// non-NULL `entries` writable for `cap` entries; a non-NULL `n` writable.
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_model_entries(
    model: *const vdpa_iova_model,
    asid: u32,
    entries: *mut vdpa_iova_entry,
    cap: usize,
    n: *mut usize,
) -> c_int {
    guard("vdpa_iova_model_entries", || {
        // SAFETY: the caller promises a non-NULL n is writable.
        let n = unsafe { as_mut(n, "n") }?;
        *n = 0;
        // SAFETY: the caller promises a live model.
        let m = unsafe { as_ref(model, "model") }?;
        if cap > 0 && entries.is_null() {
            return Err(Error::null("entries"));
        }
        let len = m.iotlb.len(asid);
        if len > cap {
            *n = len;
            return Err(Error::no_bufs("the model's entries", len, cap));
        }
        let items = m.iotlb.entries(asid).map(|e| entry(asid, e));
        // SAFETY: the caller promises cap writable entries at a non-NULL entries.
        unsafe { fill(entries, cap, "entries", ExactLen(items, len)) }?;
        *n = len;
        Ok(0)
    })
}

/// An iterator whose length is known from elsewhere.
struct ExactLen<I>(I, usize);

impl<I: Iterator> Iterator for ExactLen<I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        let v = self.0.next()?;
        self.1 = self.1.saturating_sub(1);
        Some(v)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.1, Some(self.1))
    }
}

impl<I: Iterator> ExactSizeIterator for ExactLen<I> {}
