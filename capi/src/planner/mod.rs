//! The planner handle, its events, and the plans they return: the handles,
//! their construction and the conversions every entry point shares here;
//! the events in [`events`], what a VMM reads of a planner or a plan in
//! [`queries`].
//!
//! cbindgen writes the functions in the order it reads them, this file's
//! first, then each submodule's in the order declared: the header's order.

use core::ffi::c_int;
use std::ptr;

use ::vdpa_iova_planner::kernel::RawMsg;
use ::vdpa_iova_planner::{
    DeviceCaps, DeviceRange, Hva, MapStyle, Mode, PageSize, Phase, Plan, Strategy, StrategyKind,
    StrategyOptions, SvqConfig,
};

use crate::error::{guard, guard_free, Error};
use crate::ptr::{as_ref, write};
use crate::types::*;

mod events;
mod queries;

pub use events::{
    vdpa_iova_add_regions, vdpa_iova_complete, vdpa_iova_failback, vdpa_iova_host_buffers,
    vdpa_iova_incoming, vdpa_iova_remove_region, vdpa_iova_reset, vdpa_iova_start,
    vdpa_iova_svq_prepare, vdpa_iova_svq_switch, vdpa_iova_switchover, vdpa_iova_viommu_map,
    vdpa_iova_viommu_unmap,
};
pub use queries::{
    vdpa_iova_buffer_entries, vdpa_iova_mapped, vdpa_iova_plan_cost, vdpa_iova_plan_free,
    vdpa_iova_plan_ops, vdpa_iova_svq_size, vdpa_iova_translate, vdpa_iova_version,
};

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

/// The core's SVQ parameters of the C ones.
fn svq_config(c: &vdpa_iova_svq_config) -> SvqConfig {
    SvqConfig {
        queues: c.queues,
        queue_size: c.queue_size,
        hva: Hva(c.hva),
    }
}
