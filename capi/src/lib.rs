//! C ABI of `vdpa-iova-planner`, for a VMM written in C (QEMU).
//!
//! The conventions are libblkio's:
//!
//! * **Opaque handles** created by `*_new` and released by `*_free`:
//!   [`vdpa_iova_planner`] (one per vhost-vdpa device), [`vdpa_iova_plan`]
//!   (the messages one event needs) and [`vdpa_iova_model`] (the kernel's
//!   IOTLB rules, to replay plans without a device). `*_free(NULL)` does
//!   nothing.
//! * **Every call returns `0` or a negative errno**, and on failure
//!   [`vdpa_iova_last_error`] describes it in one line that names the
//!   function, ready for QEMU's `error_setg(errp, "%s", ...)`:
//!
//!   | errno | meaning |
//!   |---|---|
//!   | `-EFAULT` | a required pointer is NULL or misaligned |
//!   | `-EINVAL` | bad input: an unaligned, empty or wrapping range, overlapping regions, bad capabilities or options, non-zero reserved bytes |
//!   | `-ENOSPC` | no placement exists in the device's IOVA range |
//!   | `-ENOENT` | no region starts at that GPA, the address is not guest memory, nothing is mapped there |
//!   | `-ERANGE` | guest memory the device cannot reach now (outside its IOVA range in passthrough) |
//!   | `-EPROTO` | an event out of order (a switch before boot, a failback in passthrough...) |
//!   | `-EOPNOTSUPP` | something the chosen strategy or device does not do |
//!   | `-EBUSY` | unplugging memory the guest's vIOMMU still maps |
//!   | `-ENOBUFS` | `vdpa_iova_translate`/`vdpa_iova_mapped`: the array is too small (`*n` says how large it must be) |
//!   | `-EIO` | an internal error (a Rust panic, caught at the boundary); the planner handle is then unusable |
//!
//! * **Nothing changes on failure**: an event either returns a plan and
//!   commits it, or fails and leaves the planner as it was.
//! * **No panic crosses the boundary**: every entry point catches unwinding
//!   and returns `-EIO`.
//! * **Threads**: a handle may move between threads but must not be used by
//!   two at once (QEMU holds the BQL for every event; the SVQ data path's
//!   `vdpa_iova_translate` takes a `const` handle and may run concurrently
//!   with other `vdpa_iova_translate` calls on it, never with an event).
//!
//! A VMM feeds one event per call (boot, hot-plug, SVQ prepare and switch,
//! failback, completion, device reset, guest vIOMMU map and unmap, and on a
//! migration's destination the incoming memory and the start) and writes
//! the ops of the plan it gets, in order, one `struct vhost_msg_v2` per
//! `write(2)` on `/dev/vhost-vdpa-N`. See `capi/README.md` and the C example
//! `capi/c/vmm.c`.

#![deny(missing_docs)]
// The C names of the ABI are kept on the Rust side, as cbindgen copies them.
#![allow(non_camel_case_types)]

mod error;
mod model;
mod planner;
mod ptr;
mod translator;
mod types;

pub use error::vdpa_iova_last_error;
pub use model::{
    vdpa_iova_model, vdpa_iova_model_apply_op, vdpa_iova_model_entries, vdpa_iova_model_free,
    vdpa_iova_model_lookup, vdpa_iova_model_new, vdpa_iova_model_reset_device,
};
pub use planner::{
    vdpa_iova_add_regions, vdpa_iova_buffer_entries, vdpa_iova_caps_default, vdpa_iova_complete,
    vdpa_iova_failback, vdpa_iova_host_buffers, vdpa_iova_incoming, vdpa_iova_mapped,
    vdpa_iova_mode, vdpa_iova_options_default, vdpa_iova_plan, vdpa_iova_plan_cost,
    vdpa_iova_plan_free, vdpa_iova_plan_ops, vdpa_iova_planner, vdpa_iova_planner_free,
    vdpa_iova_planner_new, vdpa_iova_remove_region, vdpa_iova_reset, vdpa_iova_start,
    vdpa_iova_svq_prepare, vdpa_iova_svq_size, vdpa_iova_svq_switch, vdpa_iova_switchover,
    vdpa_iova_translate, vdpa_iova_version, vdpa_iova_viommu_map, vdpa_iova_viommu_unmap,
};
pub use translator::{
    vdpa_iova_translator, vdpa_iova_translator_free, vdpa_iova_translator_hint,
    vdpa_iova_translator_new, vdpa_iova_translator_refresh, vdpa_iova_translator_translate,
    VDPA_IOVA_HINT_ENTRIES,
};
pub use types::*;
