//! The planner handle, its events, and the plans they return.

use core::ffi::{c_char, c_int};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::ptr;

use ::vdpa_iova_planner::kernel::RawMsg;
use ::vdpa_iova_planner::{
    DeviceCaps, DeviceRange, Gpa, HostBuffer, Hva, Iova, MapStyle, Mode, PageSize, Perm, Phase,
    Plan, PlanError, RegionSpec, Strategy, StrategyKind, StrategyOptions, SvqConfig,
};

use crate::error::{guard, guard_free, guard_ptr, Error};
use crate::ptr::{as_mut, as_ref, as_slice, fill, write};
use crate::types::*;

/// A planner for one vhost-vdpa device: the identity or the QEMU strategy,
/// chosen at creation. Opaque; created by [`vdpa_iova_planner_new`].
pub struct vdpa_iova_planner {
    inner: Box<dyn Strategy + Send>,
    /// Set while an event runs: still set afterwards only if the event
    /// panicked, when the planner's state can no longer be trusted.
    poisoned: bool,
}

impl vdpa_iova_planner {
    /// The strategy, for the translators made from it.
    pub(crate) fn strategy(&self) -> &(dyn Strategy + Send) {
        self.inner.as_ref()
    }
}

/// The messages one event needs, in order, and what they cost. Opaque;
/// independent of the planner that made it (it may outlive it).
pub struct vdpa_iova_plan {
    ops: Vec<vdpa_iova_op>,
    cost: vdpa_iova_cost,
}

fn flag(v: u8, name: &'static str) -> Result<bool, Error> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Error::arg(name, v.into(), "must be 0 or 1")),
    }
}

fn zeroed(bytes: &[u8], name: &'static str) -> Result<(), Error> {
    match bytes.iter().find(|&&b| b != 0) {
        None => Ok(()),
        Some(&b) => Err(Error::arg(name, b.into(), "reserved bytes must be zero")),
    }
}

/// The core's capabilities of the C ones, validated as every planner
/// constructor does.
pub(crate) fn caps_from(c: &vdpa_iova_caps) -> Result<DeviceCaps, Error> {
    zeroed(&c.reserved, "caps->reserved")?;
    let map_style = match c.map_style {
        VDPA_IOVA_MAP_STYLE_SET_MAP => MapStyle::SetMap,
        VDPA_IOVA_MAP_STYLE_DMA_MAP => MapStyle::DmaMap,
        VDPA_IOVA_MAP_STYLE_PLATFORM => MapStyle::Platform,
        v => {
            return Err(Error::arg(
                "caps->map_style",
                v.into(),
                "must be a VDPA_IOVA_MAP_STYLE_* value",
            ))
        }
    };
    let caps = DeviceCaps {
        range: DeviceRange::new(c.range_first, c.range_last)?,
        page_size: PageSize::new(c.page_size)?,
        batching: flag(c.batching, "caps->batching")?,
        address_spaces: c.address_spaces,
        desc_asid: flag(c.desc_asid, "caps->desc_asid")?,
        cvq_isolated: flag(c.cvq_isolated, "caps->cvq_isolated")?,
        persist: flag(c.persist, "caps->persist")?,
        pinning: flag(c.pinning, "caps->pinning")?,
        map_style,
    };
    caps.validate()?;
    Ok(caps)
}

fn strategy(caps: DeviceCaps, o: &vdpa_iova_options) -> Result<Box<dyn Strategy + Send>, Error> {
    zeroed(&o.reserved, "options->reserved")?;
    let viommu = flag(o.viommu, "options->viommu")?;
    let separate = flag(o.separate_vring_asid, "options->separate_vring_asid")?;
    if !viommu && o.viommu_last != 0 {
        return Err(Error::arg(
            "options->viommu_last",
            o.viommu_last,
            "must be 0 unless options->viommu is 1",
        ));
    }
    let kind = match o.strategy {
        VDPA_IOVA_STRATEGY_IDENTITY => StrategyKind::Identity {
            separate_vring_asid: separate,
        },
        VDPA_IOVA_STRATEGY_QEMU => {
            if separate {
                return Err(Error::unsupported(
                    "the QEMU strategy keeps the vrings in the guest's address space: \
                     options->separate_vring_asid needs VDPA_IOVA_STRATEGY_IDENTITY",
                ));
            }
            StrategyKind::Qemu
        }
        v => {
            return Err(Error::arg(
                "options->strategy",
                v.into(),
                "must be a VDPA_IOVA_STRATEGY_* value",
            ))
        }
    };
    let options = StrategyOptions {
        max_gpa: (o.max_gpa != 0).then_some(o.max_gpa),
        viommu_last: viommu.then_some(o.viommu_last),
        max_entries: None,
    };
    Ok(kind.build(caps, &options)?)
}

fn phase_code(p: Phase) -> u8 {
    match p {
        Phase::Prepare => VDPA_IOVA_PHASE_PREPARE,
        Phase::Critical => VDPA_IOVA_PHASE_CRITICAL,
        Phase::Background => VDPA_IOVA_PHASE_BACKGROUND,
    }
}

impl vdpa_iova_plan {
    fn new(plan: &Plan) -> Self {
        let ops = plan
            .ops()
            .iter()
            .map(|op| {
                // The message exactly as the kernel will read it.
                let m = RawMsg::from(op);
                vdpa_iova_op {
                    asid: m.asid,
                    r#type: m.kind.code(),
                    perm: m.perm,
                    phase: phase_code(op.phase),
                    reserved: 0,
                    iova: m.iova,
                    size: m.size,
                    uaddr: m.uaddr,
                }
            })
            .collect();
        let c = plan.cost();
        vdpa_iova_plan {
            ops,
            cost: vdpa_iova_cost {
                pinned_bytes: c.pinned_bytes,
                critical_pinned_bytes: c.critical_pinned_bytes,
                unpinned_bytes: c.unpinned_bytes,
                critical_unpinned_bytes: c.critical_unpinned_bytes,
                messages: c.messages,
                critical_messages: c.critical_messages,
                critical_batch_ends: c.critical_batch_ends,
            },
        }
    }
}

/// Fills `*caps` with the defaults: the full 64-bit IOVA range, 4 KiB pages,
/// batching, one address space, pinning, `set_map`.
///
/// # Errors
/// `-EFAULT` if `caps` is NULL.
///
/// # Safety
/// A non-NULL `caps` must be valid for writes.
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_caps_default(caps: *mut vdpa_iova_caps) -> c_int {
    guard("vdpa_iova_caps_default", || {
        let d = DeviceCaps::default();
        let c = vdpa_iova_caps {
            range_first: d.range.first(),
            range_last: d.range.last(),
            page_size: d.page_size.get(),
            address_spaces: d.address_spaces,
            map_style: VDPA_IOVA_MAP_STYLE_SET_MAP,
            batching: d.batching.into(),
            desc_asid: d.desc_asid.into(),
            persist: d.persist.into(),
            pinning: d.pinning.into(),
            cvq_isolated: d.cvq_isolated.into(),
            reserved: [0; 3],
        };
        // SAFETY: the caller promises a non-NULL caps is writable.
        unsafe { write(caps, "caps", c) }?;
        Ok(0)
    })
}

/// Fills `*options` with the defaults (all zero): the identity strategy, no
/// vIOMMU, `max_gpa` unknown, vrings in the guest's address space.
///
/// # Errors
/// `-EFAULT` if `options` is NULL.
///
/// # Safety
/// A non-NULL `options` must be valid for writes.
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_options_default(options: *mut vdpa_iova_options) -> c_int {
    guard("vdpa_iova_options_default", || {
        // SAFETY: the caller promises a non-NULL options is writable.
        unsafe { write(options, "options", vdpa_iova_options::default()) }?;
        Ok(0)
    })
}

/// Creates a planner for a device with capabilities `caps`, nothing mapped
/// yet. `options` may be NULL for the defaults ([`vdpa_iova_options_default`]).
/// On success `*out` holds the planner, which [`vdpa_iova_planner_free`]
/// releases; on failure it is set to NULL.
///
/// # Errors
/// `-EFAULT` for a NULL `caps` or `out`; `-EINVAL` for capabilities or
/// options out of their domain (a range ending before it starts or narrower
/// than a page, a page size that is not a power of two of at least 4096,
/// zero address spaces, a flag other than 0 or 1, an unknown strategy or map
/// style, `viommu_last` without `viommu`, non-zero reserved bytes);
/// `-EOPNOTSUPP` for a separate vring address space on a device without
/// `desc_asid` and two address spaces, or with the QEMU strategy.
///
/// # Safety
/// Non-NULL pointers must be valid: `caps` and `options` for reads, `out`
/// for a write.
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_planner_new(
    caps: *const vdpa_iova_caps,
    options: *const vdpa_iova_options,
    out: *mut *mut vdpa_iova_planner,
) -> c_int {
    guard("vdpa_iova_planner_new", || {
        // SAFETY: the caller promises a non-NULL out is writable.
        unsafe { write(out, "out", ptr::null_mut()) }?;
        // SAFETY: the caller promises a non-NULL caps is readable.
        let caps = caps_from(unsafe { as_ref(caps, "caps") }?)?;
        let defaults = vdpa_iova_options::default();
        let options = if options.is_null() {
            &defaults
        } else {
            // SAFETY: the caller promises a non-NULL options is readable.
            unsafe { as_ref(options, "options") }?
        };
        let inner = strategy(caps, options)?;
        let p = Box::into_raw(Box::new(vdpa_iova_planner {
            inner,
            poisoned: false,
        }));
        // SAFETY: out was checked writable above.
        unsafe { write(out, "out", p) }?;
        Ok(0)
    })
}

/// Releases a planner. NULL does nothing. Plans it returned stay valid.
///
/// # Safety
/// A non-NULL `planner` must come from [`vdpa_iova_planner_new`] and not be
/// used (or freed) again.
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_planner_free(planner: *mut vdpa_iova_planner) {
    guard_free("vdpa_iova_planner_free", || {
        if !planner.is_null() {
            // SAFETY: the caller gives back ownership of a Box made by
            // vdpa_iova_planner_new.
            drop(unsafe { Box::from_raw(planner) });
        }
    });
}

/// The planner's mode: a `VDPA_IOVA_MODE_*` value (`>= 0`).
///
/// # Errors
/// `-EFAULT` for a NULL `planner`; `-EIO` for a planner an internal error
/// left unusable.
///
/// # Safety
/// A non-NULL `planner` must come from [`vdpa_iova_planner_new`].
#[no_mangle]
pub unsafe extern "C" fn vdpa_iova_mode(planner: *const vdpa_iova_planner) -> c_int {
    guard("vdpa_iova_mode", || {
        // SAFETY: the caller promises a live planner handle.
        let p = unsafe { live(planner) }?;
        Ok(match p.inner.mode() {
            Mode::Passthrough => VDPA_IOVA_MODE_PASSTHROUGH,
            Mode::Prepared => VDPA_IOVA_MODE_PREPARED,
            Mode::Svq => VDPA_IOVA_MODE_SVQ,
            Mode::Completed => VDPA_IOVA_MODE_COMPLETED,
            Mode::Incoming => VDPA_IOVA_MODE_INCOMING,
            Mode::Switchover => VDPA_IOVA_MODE_SWITCHOVER,
        } as c_int)
    })
}

/// A usable planner of the caller's pointer.
///
/// # Safety
/// A non-NULL `p` must come from `vdpa_iova_planner_new` and not be freed,
/// nor mutated during the call.
pub(crate) unsafe fn live<'a>(p: *const vdpa_iova_planner) -> Result<&'a vdpa_iova_planner, Error> {
    // SAFETY: the caller's promise.
    let p = unsafe { as_ref(p, "planner") }?;
    if p.poisoned {
        return Err(Error::poisoned());
    }
    Ok(p)
}

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

fn svq_config(c: &vdpa_iova_svq_config) -> SvqConfig {
    SvqConfig {
        queues: c.queues,
        queue_size: c.queue_size,
        hva: Hva(c.hva),
    }
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
        let per_queue = c.queue_bytes(page)?;
        // queue_bytes checked that the whole block fits below 2^64.
        let total = per_queue
            .checked_mul(u64::from(c.queues))
            .ok_or(PlanError::Wraps {
                kind: "hva",
                first: c.hva.0,
                size: per_queue,
            })?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
