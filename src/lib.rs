//! Plans the vhost-vdpa IOTLB operations that take a vDPA device through live
//! migration without re-pinning guest memory.
//!
//! To migrate, a VMM switches a vDPA device to **shadow virtqueues (SVQ)**: its
//! own vrings sit between guest and device so it can track dirty pages. Those
//! vrings need device addresses (IOVAs). QEMU today unmaps all guest memory
//! and maps it again next to the vrings while the device is stopped, which
//! unpins and re-pins every page: seconds of downtime for large guests, and
//! the same again on failback.
//!
//! This crate keeps guest memory mapped at IOVA == GPA for the VM's whole life
//! and puts the vrings in a reserved IOVA window above guest memory, mapped
//! before the device stops. The switch then costs no operation at all. It
//! handles what naive designs get wrong: memory hot-plugged into the window,
//! devices whose IOVA range is smaller than guest memory, a guest vIOMMU,
//! vrings in an address space of their own, device resets, and a failback
//! that the kernel accepts message by message.
//!
//! The crate is pure: no I/O, no unsafe, no clocks. A [`Strategy`] takes VMM
//! events and returns [`Plan`]s (ordered, batched operations tagged by
//! [`Phase`], with a [`Cost`]); the `vdpa-adapter` crate writes them to
//! `/dev/vhost-vdpa-N`. [`KernelIotlb`] models the kernel's rules for every
//! message, and [`layout::check`] verifies a device table byte for byte.
//!
//! ```
//! use vdpa_iova_planner::{
//!     DeviceCaps, Event, Gpa, GuestView, Hva, KernelIotlb, Phase, IdentityPlanner, RegionSpec, Strategy,
//!     SvqConfig,
//! };
//!
//! let caps = DeviceCaps::default(); // pinning, batching, IOVA range [0, 2^64-1]
//! let mut planner = IdentityPlanner::new(caps, Some(1 << 40))?; // memory never above 1 TiB
//! let mut device = KernelIotlb::new(&caps);
//!
//! // Boot: 4 GiB of RAM, mapped identity.
//! let ram = RegionSpec { gpa: Gpa(0), size: 4 << 30, hva: Hva(0x7f00_0000_0000), readonly: false };
//! let boot = planner.add_regions(&[ram])?;
//! device.apply_all(boot.ops()).unwrap();
//!
//! // Migration starts: map 8 shadow vrings while the device still runs...
//! let svq = SvqConfig { queues: 8, queue_size: 256, hva: Hva(0x7e00_0000_0000) };
//! let prep = planner.svq_prepare(svq)?;
//! assert!(prep.ops().iter().all(|op| op.phase == Phase::Prepare));
//! device.apply_all(prep.ops()).unwrap();
//!
//! // ...so the switch, while the device is stopped, costs nothing.
//! let switch = planner.svq_switch(None)?;
//! assert_eq!(switch.cost().critical_messages, 0);
//!
//! // The SVQ data path translates guest addresses for every descriptor.
//! let segs = planner.translate(Gpa(0x1000), 64)?;
//! assert_eq!(segs[0].iova.0, 0x1000);
//!
//! // Migration fails: back to passthrough, no guest memory touched.
//! let back = planner.failback()?;
//! assert_eq!(back.cost().critical_pinned_bytes, 0);
//! device.apply_all(back.ops()).unwrap();
//!
//! // Every byte the device can reach is what it should reach.
//! let mut guest = GuestView::new(false);
//! guest.track(&Event::Boot(vec![ram]));
//! vdpa_iova_planner::layout::check(&device.device_tables(), &planner, &guest).unwrap();
//! # Ok::<(), vdpa_iova_planner::PlanError>(())
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

// Layers, each importing only from those above it in this list.
pub mod addr;
pub mod alloc;
pub mod caps;
pub mod entry;
pub mod error;
pub mod event;
pub mod kernel;
pub mod plan;
pub mod strategy;
pub mod svq;
pub mod verify;
pub mod vocab;

pub use addr::{Address, DeviceRange, Gpa, Hva, Iova, PageSize, Span};
pub use alloc::IovaAllocator;
pub use caps::{DeviceCaps, MapStyle};
pub use entry::Entry;
pub use error::PlanError;
pub use event::{Event, HostBuffer, RegionSpec};
pub use kernel::{KernelIotlb, Violation};
pub use plan::{Cost, Op, OpKind, Plan};
pub use strategy::identity::{IdentityPlanner, IdentityPlannerBuilder};
pub use strategy::qemu::QemuPlanner;
pub use strategy::translator::Translator;
pub use strategy::{
    Epoch, Piece, Placement, Segment, Segments, Strategy, StrategyKind, StrategyOptions,
};
pub use svq::{AreaKind, SvqConfig, VringArea};
pub use verify::{layout, GuestUnit, GuestView};
pub use vocab::{EventKind, Mode, Perm, Phase, CVQ_ASID, GUEST_ASID, VRING_ASID};
