//! What a VMM tells a strategy: guest memory regions and the events of a
//! device's life.

use crate::addr::{Gpa, Hva, Iova};
use crate::svq::SvqConfig;
use crate::vocab::Perm;

/// A guest memory region as the VMM declares it: `size` bytes of guest
/// memory at `gpa`, backed by the VMM's memory at `hva`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RegionSpec {
    /// First guest-physical address.
    pub gpa: Gpa,
    /// Size in bytes (a non-zero multiple of the page size).
    pub size: u64,
    /// Host virtual address of the first byte.
    pub hva: Hva,
    /// ROM-like memory: the device may only read it.
    pub readonly: bool,
}

impl RegionSpec {
    /// The device access this region gets.
    pub fn perm(&self) -> Perm {
        if self.readonly {
            Perm::Ro
        } else {
            Perm::Rw
        }
    }
}

/// Host memory the device needs that is neither guest memory nor a shadow
/// vring: the control virtqueue's command buffer (read-only for the device)
/// and status buffer (read-write), say. A strategy maps these with the
/// shadow vrings and never lets guest addresses reach them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct HostBuffer {
    /// Host address of the first byte (page aligned).
    pub hva: Hva,
    /// Bytes (a non-zero multiple of the page size).
    pub size: u64,
    /// Device access.
    pub perm: Perm,
}

/// An event a VMM feeds to a strategy.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Event {
    /// Regions present at boot (all or nothing).
    Boot(Vec<RegionSpec>),
    /// One region hot-plugged.
    Hotplug(RegionSpec),
    /// The region starting at this GPA unplugged.
    Unplug(Gpa),
    /// Map the shadow vrings while the device still runs.
    SvqPrepare(SvqConfig),
    /// Switch the device to the shadow virtqueues (config needed only when not prepared).
    SvqSwitch(Option<SvqConfig>),
    /// Migration failed: back to passthrough.
    Failback,
    /// On the source: the migration completed. The guest was paused for
    /// stop-and-copy and the destination runs it now; everything is
    /// unmapped. What a strategy sends while the source is paused is
    /// critical (downtime), the rest is background.
    Complete,
    /// On a migration's destination, before anything else: the VMM was
    /// created with these regions and waits for the migration stream. The
    /// identity strategy maps them now, outside any downtime.
    Incoming(Vec<RegionSpec>),
    /// On a migration's destination waiting for the stream: the source has
    /// stopped (its [`Event::Complete`] began), the guest is paused, and the
    /// rest of the stream (the devices' state, a vIOMMU's maps) arrives now.
    /// From here to [`Event::Start`] everything a strategy sends is inside
    /// the downtime, whatever event sends it.
    Switchover,
    /// On a migration's destination: the stream has ended and the guest
    /// starts (the device gets DRIVER_OK). What a strategy sends here is
    /// inside the downtime.
    Start,
    /// The device was reset (status 0): restore what it forgot.
    Reset,
    /// Host buffers the shadow data path needs (see [`HostBuffer`]),
    /// declared before the shadow vrings are prepared: mapped with them, at
    /// each shadow start, and unmapped with them.
    HostBuffers(Vec<HostBuffer>),
    /// The guest's vIOMMU mapped `size` bytes of guest memory at `gpa` to
    /// guest IOVA `giova`, with `perm` for the device.
    ViommuMap {
        /// Guest IOVA.
        giova: Iova,
        /// Bytes.
        size: u64,
        /// Guest-physical address mapped.
        gpa: Gpa,
        /// Device access the guest grants.
        perm: Perm,
    },
    /// The guest's vIOMMU unmapped `[giova, giova + size)`: every live guest
    /// map in it goes; parts of maps outside it stay.
    ViommuUnmap {
        /// Guest IOVA.
        giova: Iova,
        /// Bytes.
        size: u64,
    },
}

impl Event {
    /// Short name, as in the scenario format.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Boot(_) => "boot",
            Event::Hotplug(_) => "hotplug",
            Event::Unplug(_) => "unplug",
            Event::SvqPrepare(_) => "svq_prepare",
            Event::SvqSwitch(_) => "svq_switch",
            Event::Failback => "failback",
            Event::Complete => "complete",
            Event::Incoming(_) => "incoming",
            Event::Switchover => "switchover",
            Event::Start => "start",
            Event::Reset => "reset",
            Event::HostBuffers(_) => "host_buffers",
            Event::ViommuMap { .. } => "viommu_map",
            Event::ViommuUnmap { .. } => "viommu_unmap",
        }
    }
}
