//! The events: one entry point per event a VMM feeds, each returning the
//! plan of the messages it needs (or an error, and nothing changed).

use core::ffi::c_int;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::ptr;

use ::vdpa_iova_planner::{Gpa, HostBuffer, Hva, Iova, Perm, Plan, RegionSpec, Strategy};

#[cfg(doc)]
use super::vdpa_iova_buffer_entries;
use super::{flag, svq_config, vdpa_iova_plan, vdpa_iova_planner, zeroed};
use crate::error::{guard, Error};
use crate::ptr::{as_mut, as_ref, as_slice, write};
use crate::types::*;

/// Runs one event: checks `out` (set to NULL) and the planner, applies `f`,
/// and on success hands the plan to the caller.
///
/// # Safety
/// A non-NULL `planner` must come from `vdpa_iova_planner_new`, not freed,
/// not used elsewhere during the call; a non-NULL `out` must be writable.
unsafe fn event(
    func: &'static str,
    planner: *mut vdpa_iova_planner,
    out: *mut *mut vdpa_iova_plan,
    f: impl FnOnce(&mut dyn Strategy) -> Result<Plan, Error>,
) -> c_int {
    guard(func, || {
        // SAFETY: the caller promises a non-NULL out is writable.
        unsafe { write(out, "out", ptr::null_mut()) }?;
        // SAFETY: the caller promises a live planner used by no one else.
        let p = unsafe { as_mut(planner, "planner") }?;
        if p.poisoned {
            return Err(Error::poisoned());
        }
        // Cleared unless f panics, which leaves the state unknown: then no
        // translator may trust its snapshot either.
        p.poisoned = true;
        let r = match catch_unwind(AssertUnwindSafe(|| f(p.inner.as_mut()))) {
            Ok(r) => r,
            Err(payload) => {
                if let Some(e) = p.inner.epoch() {
                    e.invalidate();
                }
                resume_unwind(payload)
            }
        };
        p.poisoned = false;
        let plan = Box::into_raw(Box::new(vdpa_iova_plan::new(&r?)));
        // SAFETY: out was checked writable above.
        unsafe { write(out, "out", plan) }?;
        Ok(0)
    })
}

fn region(r: &vdpa_iova_region) -> Result<RegionSpec, Error> {
    zeroed(&r.reserved, "region->reserved")?;
    Ok(RegionSpec {
        gpa: Gpa(r.gpa),
        size: r.size,
        hva: Hva(r.hva),
        readonly: flag(r.readonly, "region->readonly")?,
    })
}

/// Guest memory regions appeared together: the sections of one memory
/// transaction (boot, or a hot-plug). `regions` may be NULL when `n` is 0.
///
/// # Errors
/// `-EFAULT` for NULL pointers; `-EINVAL` for an empty, unaligned or
/// wrapping region, one overlapping another; `-ENOSPC` when no IOVA is free
/// for memory that must move (hot-plug into the vring window in SVQ mode);
/// `-EPROTO` after completion. Nothing changes on error.
///
/// # Safety
/// `planner` as for every event; a non-NULL `regions` must point to `n`
/// readable regions; a non-NULL `out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_add_regions(
    planner: *mut vdpa_iova_planner,
    regions: *const vdpa_iova_region,
    n: usize,
    out: *mut *mut vdpa_iova_plan,
) -> c_int {
    let f = |s: &mut dyn Strategy| {
        // SAFETY: the caller promises n readable regions at a non-NULL regions.
        let regions = unsafe { as_slice(regions, n, "regions") }?;
        let specs = regions.iter().map(region).collect::<Result<Vec<_>, _>>()?;
        Ok(s.add_regions(&specs)?)
    };
    // SAFETY: the caller's promises, as documented.
    unsafe { event("vdpa_iova_add_regions", planner, out, f) }
}

/// On a migration's destination, first event: the guest's regions are
/// known (QEMU: the memory listener's first commit, before the migration
/// stream arrives) and the device waits for the guest to start. The
/// identity strategy maps guest memory now, while nothing runs, so that
/// [`vdpa_iova_start`] at switchover writes nothing. The planner is then in
/// `VDPA_IOVA_MODE_INCOMING`. `regions` may be NULL when `n` is 0.
///
/// # Errors
/// As [`vdpa_iova_add_regions`]; `-EPROTO` when anything was declared or
/// mapped before. Nothing changes on error.
///
/// # Safety
/// As [`vdpa_iova_add_regions`].
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_incoming(
    planner: *mut vdpa_iova_planner,
    regions: *const vdpa_iova_region,
    n: usize,
    out: *mut *mut vdpa_iova_plan,
) -> c_int {
    let f = |s: &mut dyn Strategy| {
        // SAFETY: the caller promises n readable regions at a non-NULL regions.
        let regions = unsafe { as_slice(regions, n, "regions") }?;
        let specs = regions.iter().map(region).collect::<Result<Vec<_>, _>>()?;
        Ok(s.incoming(&specs)?)
    };
    // SAFETY: the caller's promises, as documented.
    unsafe { event("vdpa_iova_incoming", planner, out, f) }
}

/// On a migration's destination waiting for the stream: the source has
/// stopped and the rest of the stream (device state, a vIOMMU's maps)
/// arrives now (QEMU: the switchover, when the source enters
/// stop-and-copy). Every plan from now until [`vdpa_iova_start`] is inside
/// the downtime and is booked so: a vIOMMU's maps replayed with
/// [`vdpa_iova_viommu_map`], a reset's restore. The planner is then in
/// `VDPA_IOVA_MODE_SWITCHOVER`.
///
/// # Errors
/// `-EPROTO` unless in `VDPA_IOVA_MODE_INCOMING`. Nothing changes on error.
///
/// # Safety
/// As [`vdpa_iova_failback`].
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_switchover(
    planner: *mut vdpa_iova_planner,
    out: *mut *mut vdpa_iova_plan,
) -> c_int {
    // SAFETY: the caller's promises, as documented.
    unsafe {
        event(
            "vdpa_iova_switchover",
            planner,
            out,
            |s| Ok(s.switchover()?),
        )
    }
}

/// On a migration's destination: the guest starts at switchover (write the
/// plan before the device's DRIVER_OK). The planner is then in passthrough:
/// the host runs the VM, and can be the source of the next migration.
///
/// # Errors
/// `-EPROTO` unless in `VDPA_IOVA_MODE_INCOMING` or
/// `VDPA_IOVA_MODE_SWITCHOVER`. Nothing changes on error.
///
/// # Safety
/// As [`vdpa_iova_failback`].
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_start(
    planner: *mut vdpa_iova_planner,
    out: *mut *mut vdpa_iova_plan,
) -> c_int {
    // SAFETY: the caller's promises, as documented.
    unsafe { event("vdpa_iova_start", planner, out, |s| Ok(s.start()?)) }
}

/// The guest memory region starting at `gpa` went away (a section deleted).
///
/// # Errors
/// `-ENOENT` when no region starts there; `-EBUSY` when the guest's vIOMMU
/// still maps it; `-EPROTO` after completion. Nothing changes on error.
///
/// # Safety
/// As [`vdpa_iova_add_regions`].
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_remove_region(
    planner: *mut vdpa_iova_planner,
    gpa: u64,
    out: *mut *mut vdpa_iova_plan,
) -> c_int {
    // SAFETY: the caller's promises, as documented.
    unsafe {
        event("vdpa_iova_remove_region", planner, out, |s| {
            Ok(s.remove_region(Gpa(gpa))?)
        })
    }
}

/// Migration is starting: map the shadow vrings while the device still
/// runs (every op is in the prepare phase). The VMM must have allocated
/// `vdpa_iova_svq_size` bytes at `config->hva`.
///
/// # Errors
/// `-EINVAL` for bad parameters; `-ENOSPC` when the vrings fit nowhere;
/// `-EPROTO` unless in passthrough; `-EOPNOTSUPP` where the strategy does
/// not shadow (QEMU with a vIOMMU). Nothing changes on error.
///
/// # Safety
/// As [`vdpa_iova_add_regions`]; a non-NULL `config` must be readable.
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_svq_prepare(
    planner: *mut vdpa_iova_planner,
    config: *const vdpa_iova_svq_config,
    out: *mut *mut vdpa_iova_plan,
) -> c_int {
    let f = |s: &mut dyn Strategy| {
        // SAFETY: the caller promises a non-NULL config is readable.
        let c = svq_config(unsafe { as_ref(config, "config") }?);
        Ok(s.svq_prepare(c)?)
    };
    // SAFETY: the caller's promises, as documented.
    unsafe { event("vdpa_iova_svq_prepare", planner, out, f) }
}

/// The device stops and switches to the shadow virtqueues. `config` may be
/// NULL after [`vdpa_iova_svq_prepare`] (its parameters are kept); without a
/// prepare it is required.
///
/// # Errors
/// As [`vdpa_iova_svq_prepare`]; `-EPROTO` without a prepare and without
/// `config`, or when already in SVQ mode.
///
/// # Safety
/// As [`vdpa_iova_svq_prepare`].
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_svq_switch(
    planner: *mut vdpa_iova_planner,
    config: *const vdpa_iova_svq_config,
    out: *mut *mut vdpa_iova_plan,
) -> c_int {
    let f = |s: &mut dyn Strategy| {
        let c = if config.is_null() {
            None
        } else {
            // SAFETY: the caller promises a non-NULL config is readable.
            Some(svq_config(unsafe { as_ref(config, "config") }?))
        };
        Ok(s.svq_switch(c)?)
    };
    // SAFETY: the caller's promises, as documented.
    unsafe { event("vdpa_iova_svq_switch", planner, out, f) }
}

/// Migration failed: back to passthrough (also undoes a prepare).
///
/// # Errors
/// `-EPROTO` in passthrough or after completion. Nothing changes on error.
///
/// # Safety
/// `planner` live and used by no one else during the call; a non-NULL `out`
/// writable.
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_failback(
    planner: *mut vdpa_iova_planner,
    out: *mut *mut vdpa_iova_plan,
) -> c_int {
    // SAFETY: the caller's promises, as documented.
    unsafe { event("vdpa_iova_failback", planner, out, |s| Ok(s.failback()?)) }
}

/// Migration completed: unmap everything; the planner then refuses every event.
///
/// # Errors
/// `-EPROTO` when already completed. Nothing changes on error.
///
/// # Safety
/// As [`vdpa_iova_failback`].
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_complete(
    planner: *mut vdpa_iova_planner,
    out: *mut *mut vdpa_iova_plan,
) -> c_int {
    // SAFETY: the caller's promises, as documented.
    unsafe { event("vdpa_iova_complete", planner, out, |s| Ok(s.complete()?)) }
}

/// The device was reset (`VHOST_VDPA_SET_STATUS` 0): the plan restores
/// what the device forgot, at the cheapest correct cost for its map style
/// and `persist` (often nothing, or an empty batch). Write it after the reset.
///
/// # Errors
/// `-EPROTO` after completion. Nothing changes on error.
///
/// # Safety
/// As [`vdpa_iova_failback`].
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_reset(
    planner: *mut vdpa_iova_planner,
    out: *mut *mut vdpa_iova_plan,
) -> c_int {
    // SAFETY: the caller's promises, as documented.
    unsafe { event("vdpa_iova_reset", planner, out, |s| Ok(s.reset()?)) }
}

/// The guest's vIOMMU mapped `size` bytes of guest memory at `gpa` to guest
/// IOVA `giova`, with `perm` (`VDPA_IOVA_PERM_*`).
///
/// # Errors
/// `-EOPNOTSUPP` for a planner without a vIOMMU; `-EINVAL` for a bad
/// range or permission, memory that is not one guest region, a map beyond
/// `viommu_last`, writable on read-only memory, or overlapping a live map;
/// `-ENOSPC` when it must move and nothing is free. Nothing changes on error.
///
/// # Safety
/// As [`vdpa_iova_failback`].
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_viommu_map(
    planner: *mut vdpa_iova_planner,
    giova: u64,
    size: u64,
    gpa: u64,
    perm: u8,
    out: *mut *mut vdpa_iova_plan,
) -> c_int {
    // SAFETY: the caller's promises, as documented.
    unsafe {
        event("vdpa_iova_viommu_map", planner, out, |s| {
            let perm = Perm::from_kernel(perm).ok_or_else(|| {
                Error::arg("perm", perm.into(), "must be VDPA_IOVA_PERM_RO, _WO or _RW")
            })?;
            Ok(s.viommu_map(Iova(giova), size, Gpa(gpa), perm)?)
        })
    }
}

/// The guest's vIOMMU unmapped `size` bytes at guest IOVA `giova`.
///
/// # Errors
/// `-EOPNOTSUPP` without a vIOMMU; `-EINVAL` for a bad range; `-ENOENT`
/// when nothing is mapped there. Nothing changes on error.
///
/// # Safety
/// As [`vdpa_iova_failback`].
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_viommu_unmap(
    planner: *mut vdpa_iova_planner,
    giova: u64,
    size: u64,
    out: *mut *mut vdpa_iova_plan,
) -> c_int {
    // SAFETY: the caller's promises, as documented.
    unsafe {
        event("vdpa_iova_viommu_unmap", planner, out, |s| {
            Ok(s.viommu_unmap(Iova(giova), size)?)
        })
    }
}

fn host_buffer(b: &vdpa_iova_host_buffer) -> Result<HostBuffer, Error> {
    zeroed(&b.reserved, "buffer->reserved")?;
    let perm = Perm::from_kernel(b.perm).ok_or_else(|| {
        Error::arg(
            "buffer->perm",
            b.perm.into(),
            "must be VDPA_IOVA_PERM_RO, _WO or _RW",
        )
    })?;
    Ok(HostBuffer {
        hva: Hva(b.hva),
        size: b.size,
        perm,
    })
}

/// Declares host buffers the device must reach while it runs on shadow
/// virtqueues (the control virtqueue's command and status buffers): they
/// are mapped with the shadow vrings from the next [`vdpa_iova_svq_prepare`]
/// (or unprepared [`vdpa_iova_svq_switch`]) on, and unmapped with them. Their
/// IOVAs: [`vdpa_iova_buffer_entries`]. `bufs` may be NULL when `n` is 0.
///
/// # Errors
/// `-EINVAL` for a buffer that is not whole pages or a bad permission;
/// `-EPROTO` once the shadow vrings are mapped, or after completion.
/// Nothing changes on error.
///
/// # Safety
/// As [`vdpa_iova_add_regions`], with `n` readable buffers at a non-NULL `bufs`.
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_host_buffers(
    planner: *mut vdpa_iova_planner,
    bufs: *const vdpa_iova_host_buffer,
    n: usize,
    out: *mut *mut vdpa_iova_plan,
) -> c_int {
    let f = |s: &mut dyn Strategy| {
        // SAFETY: the caller promises n readable buffers at a non-NULL bufs.
        let bufs = unsafe { as_slice(bufs, n, "bufs") }?;
        let specs = bufs
            .iter()
            .map(host_buffer)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(s.host_buffers(&specs)?)
    };
    // SAFETY: the caller's promises, as documented.
    unsafe { event("vdpa_iova_host_buffers", planner, out, f) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::{
        vdpa_iova_caps_default, vdpa_iova_mapped, vdpa_iova_mode, vdpa_iova_plan_free,
        vdpa_iova_planner_free, vdpa_iova_planner_new, vdpa_iova_translate,
    };

    #[test]
    fn a_panicking_event_poisons_the_planner() {
        let mut caps = vdpa_iova_caps::default();
        let mut p = ptr::null_mut();
        let mut out = ptr::null_mut();
        let mut n = 0;
        // SAFETY: valid pointers throughout; the planner is freed once.
        unsafe {
            assert_eq!(vdpa_iova_caps_default(&mut caps), 0);
            assert_eq!(vdpa_iova_planner_new(&caps, ptr::null(), &mut p), 0);
            assert_eq!(vdpa_iova_mode(p), VDPA_IOVA_MODE_PASSTHROUGH as c_int);
            let rc = event("vdpa_iova_test", p, &mut out, |_| {
                panic!("half-way through")
            });
            assert_eq!(rc, -libc::EIO);
            assert!(out.is_null());
            assert!((*p).poisoned);
            // Every later call refuses the planner instead of trusting it.
            assert_eq!(vdpa_iova_mode(p), -libc::EIO);
            assert_eq!(vdpa_iova_failback(p, &mut out), -libc::EIO);
            let rc = vdpa_iova_translate(p, 0, 64, ptr::null_mut(), 0, &mut n);
            assert_eq!((rc, n), (-libc::EIO, 0));
            assert_eq!(vdpa_iova_mapped(p, ptr::null_mut(), 0, &mut n), -libc::EIO);
            vdpa_iova_planner_free(p);
        }
    }

    #[test]
    fn a_refused_event_does_not_poison() {
        let mut caps = vdpa_iova_caps::default();
        let mut p = ptr::null_mut();
        let mut out = ptr::null_mut();
        // SAFETY: valid pointers throughout; the planner is freed once.
        unsafe {
            assert_eq!(vdpa_iova_caps_default(&mut caps), 0);
            assert_eq!(vdpa_iova_planner_new(&caps, ptr::null(), &mut p), 0);
            assert_eq!(vdpa_iova_failback(p, &mut out), -libc::EPROTO);
            assert!(!(*p).poisoned);
            assert_eq!(vdpa_iova_reset(p, &mut out), 0);
            vdpa_iova_plan_free(out);
            vdpa_iova_planner_free(p);
        }
    }
}
