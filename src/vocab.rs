//! The words every layer uses: device access, the phase of an operation,
//! the mode of a device, and the address spaces. Depends on nothing.

use core::fmt;

/// The address space guest memory is mapped in.
pub const GUEST_ASID: u32 = 0;
/// The address space the vrings go to when the device can put them apart.
pub const VRING_ASID: u32 = 1;
/// The address space of an isolated control virtqueue
/// ([`DeviceCaps::cvq_isolated`](crate::DeviceCaps::cvq_isolated)): its
/// shadow vring and buffers, and nothing else.
pub const CVQ_ASID: u32 = 1;

/// Access the device is given to a mapping (the kernel's `VHOST_ACCESS_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Perm {
    /// The device may only read (`VHOST_ACCESS_RO` = 1).
    Ro,
    /// The device may only write (`VHOST_ACCESS_WO` = 2).
    Wo,
    /// The device may read and write (`VHOST_ACCESS_RW` = 3).
    Rw,
}

impl Perm {
    /// The value of the `perm` byte in `struct vhost_iotlb_msg`.
    pub const fn to_kernel(self) -> u8 {
        match self {
            Perm::Ro => 1,
            Perm::Wo => 2,
            Perm::Rw => 3,
        }
    }

    /// Parses the `perm` byte; `None` for anything but 1, 2, 3.
    pub fn from_kernel(v: u8) -> Option<Self> {
        match v {
            1 => Some(Perm::Ro),
            2 => Some(Perm::Wo),
            3 => Some(Perm::Rw),
            _ => None,
        }
    }

    /// Lower-case name, as in the JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Perm::Ro => "ro",
            Perm::Wo => "wo",
            Perm::Rw => "rw",
        }
    }
}

/// When an operation runs relative to the device being stopped.
///
/// Ops of a plan are ordered by phase: every `Prepare` op, then every
/// `Critical` op, then every `Background` op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Phase {
    /// While the device still runs, before the event takes effect (before a
    /// switch stops the device; before hot-plugged memory is announced to
    /// the guest; before unplugged memory is freed).
    Prepare,
    /// While the device is stopped: this is the downtime the guest sees.
    Critical,
    /// After the device runs again; may be deferred.
    Background,
}

impl Phase {
    /// Lower-case name, as in the JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::Critical => "critical",
            Phase::Background => "background",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the device is in its migration life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Mode {
    /// The device runs on the guest's own virtqueues, addresses are GPAs.
    Passthrough,
    /// Still passthrough, with the shadow vrings already mapped.
    Prepared,
    /// The device runs on the shadow virtqueues.
    Svq,
    /// Migration completed: this device is done and holds no mapping.
    Completed,
    /// A migration's destination waiting for the stream: guest memory is
    /// known (and, for the identity strategy, mapped), the guest is not
    /// running yet; [`crate::Event::Switchover`] or [`crate::Event::Start`]
    /// ends it.
    Incoming,
    /// A migration's destination after the source stopped
    /// ([`crate::Event::Switchover`]): the guest is paused until
    /// [`crate::Event::Start`], so everything sent now is inside the
    /// downtime.
    Switchover,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Passthrough => "passthrough",
            Mode::Prepared => "prepared",
            Mode::Svq => "svq",
            Mode::Completed => "completed",
            Mode::Incoming => "incoming",
            Mode::Switchover => "switchover",
        })
    }
}

/// What a strategy is asked to do, by kind: the column of the order of
/// events ([`Mode::admits`]). A boot and a hot-plug are both
/// [`EventKind::Hotplug`]: the same call, and the same rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Guest memory added (`add_regions`: a boot or a hot-plug).
    Hotplug,
    /// A region removed (`remove_region`).
    Unplug,
    /// The shadow vrings mapped ahead of the switch.
    SvqPrepare,
    /// The device switched to the shadow virtqueues.
    SvqSwitch,
    /// Back to the guest's own virtqueues.
    Failback,
    /// The migration completed.
    Complete,
    /// A migration's destination, its guest memory known.
    Incoming,
    /// The source stopped: the destination's downtime begins.
    Switchover,
    /// The destination's guest starts.
    Start,
    /// The device was reset.
    Reset,
    /// Host buffers the device may reach.
    HostBuffers,
    /// The guest's vIOMMU mapped.
    ViommuMap,
    /// The guest's vIOMMU unmapped.
    ViommuUnmap,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 13] = [
        EventKind::Hotplug,
        EventKind::Unplug,
        EventKind::SvqPrepare,
        EventKind::SvqSwitch,
        EventKind::Failback,
        EventKind::Complete,
        EventKind::Incoming,
        EventKind::Switchover,
        EventKind::Start,
        EventKind::Reset,
        EventKind::HostBuffers,
        EventKind::ViommuMap,
        EventKind::ViommuUnmap,
    ];

    /// The name errors give it (`PlanError::OutOfOrder`'s `event`).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Hotplug => "hotplug",
            EventKind::Unplug => "unplug",
            EventKind::SvqPrepare => "svq_prepare",
            EventKind::SvqSwitch => "svq_switch",
            EventKind::Failback => "failback",
            EventKind::Complete => "complete",
            EventKind::Incoming => "incoming",
            EventKind::Switchover => "switchover",
            EventKind::Start => "start",
            EventKind::Reset => "reset",
            EventKind::HostBuffers => "host_buffers",
            EventKind::ViommuMap => "viommu_map",
            EventKind::ViommuUnmap => "viommu_unmap",
        }
    }
}

impl Mode {
    /// Whether `event` may happen in this mode: the one table of the order
    /// of events, for every strategy. A strategy may refuse more (an
    /// incoming on a planner that already holds memory), never less.
    pub fn admits(self, event: EventKind) -> bool {
        use EventKind as E;
        use Mode as M;
        match event {
            E::Hotplug | E::Unplug | E::ViommuMap | E::ViommuUnmap => self != M::Completed,
            E::SvqPrepare | E::Incoming => self == M::Passthrough,
            E::SvqSwitch => matches!(self, M::Passthrough | M::Prepared),
            E::Failback => matches!(self, M::Svq | M::Prepared),
            E::Complete => self == M::Svq,
            E::Switchover => self == M::Incoming,
            E::Start => matches!(self, M::Incoming | M::Switchover),
            E::Reset => true,
            E::HostBuffers => matches!(self, M::Passthrough | M::Incoming | M::Switchover),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names the JSON output, the tables and error messages use.
    #[test]
    fn names_as_printed() {
        let perms = [(Perm::Ro, "ro"), (Perm::Wo, "wo"), (Perm::Rw, "rw")];
        for (p, name) in perms {
            assert_eq!(p.as_str(), name);
        }
        for (p, name) in [
            (Phase::Prepare, "prepare"),
            (Phase::Critical, "critical"),
            (Phase::Background, "background"),
        ] {
            assert_eq!(p.as_str(), name);
            assert_eq!(p.to_string(), name);
        }
        let modes = [
            (Mode::Passthrough, "passthrough"),
            (Mode::Prepared, "prepared"),
            (Mode::Svq, "svq"),
            (Mode::Completed, "completed"),
            (Mode::Incoming, "incoming"),
            (Mode::Switchover, "switchover"),
        ];
        for (m, name) in modes {
            assert_eq!(m.to_string(), name);
        }
    }
}
