//! Planning strategies: the [`Strategy`] trait every one implements, what a
//! strategy reports about where guest memory and vrings are mapped, and the
//! strategies themselves: [`identity`] (this crate's) and [`qemu`] (the
//! baseline).

use smallvec::SmallVec;

use crate::addr::{Address, Gpa, Hva, Iova, Span};
use crate::caps::DeviceCaps;
use crate::entry::Entry;
use crate::error::PlanError;
use crate::event::{Event, HostBuffer, RegionSpec};
use crate::plan::Plan;
use crate::svq::{SvqConfig, VringArea};
use crate::vocab::{Mode, Perm};

pub(crate) mod guest;
pub mod identity;
mod kind;
pub mod qemu;
pub(crate) mod shared;
pub mod translator;
pub(crate) mod xlate;

pub use kind::{StrategyKind, StrategyOptions};
pub use xlate::Epoch;

/// A part of a region mapped by one IOTLB entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Piece {
    /// The guest memory it maps.
    pub gpa: Span<Gpa>,
    /// Where the device sees it.
    pub iova: Span<Iova>,
}

impl Piece {
    /// Whether the device sees this memory at its guest-physical address.
    pub fn is_identity(&self) -> bool {
        self.gpa.first().raw() == self.iova.first().raw()
    }
}

/// Where one region is mapped now. With a guest vIOMMU there is one
/// placement per guest map, and `gpa` holds its guest IOVAs: the addresses
/// the guest's descriptors carry.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Placement {
    /// The region's guest memory.
    pub gpa: Span<Gpa>,
    /// Its host memory.
    pub hva: Hva,
    /// Device access.
    pub perm: Perm,
    /// Its mapped pieces, by GPA; bytes of the region in no piece are
    /// unreachable by the device now.
    pub pieces: SmallVec<[Piece; 2]>,
}

impl Placement {
    /// Host address of guest address `gpa` (which must lie in the region).
    pub fn hva_of(&self, gpa: Gpa) -> Hva {
        Hva(self.hva.raw() + (gpa.raw() - self.gpa.first().raw()))
    }

    /// The parts of the region that no piece maps.
    pub fn unreachable(&self) -> SmallVec<[Span<Gpa>; 2]> {
        let mut out = SmallVec::new();
        // `None` once a piece reaches 2^64 - 1: nothing can follow it.
        let mut next = Some(self.gpa.first().raw());
        for p in &self.pieces {
            let (f, l) = p.gpa.bounds();
            if let Some(n) = next.filter(|&n| f > n) {
                out.push(Span::trusted(n, f - n));
            }
            next = l.checked_add(1);
        }
        let end = self.gpa.last().raw();
        if let Some(n) = next.filter(|&n| n <= end) {
            out.push(Span::trusted(n, end - n + 1));
        }
        out
    }
}

/// A guest address range translated to device addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Device address of the first byte.
    pub iova: Iova,
    /// Bytes.
    pub len: u64,
    /// Device access.
    pub perm: Perm,
}

/// Segments returned by `translate`: almost always one.
pub type Segments = SmallVec<[Segment; 2]>;

/// A planning strategy: a state machine fed by VMM events, returning plans.
///
/// Every event either returns a plan and commits the new state, or returns
/// an error and leaves the state exactly as it was.
pub trait Strategy {
    /// Short name ("identity", "qemu").
    fn name(&self) -> &'static str;
    /// The device's capabilities.
    fn caps(&self) -> &DeviceCaps;
    /// Current mode.
    fn mode(&self) -> Mode;
    /// Maps regions present at boot, or hot-plugged together.
    ///
    /// # Errors
    /// Bad or overlapping regions, or an event out of order.
    fn add_regions(&mut self, regions: &[RegionSpec]) -> Result<Plan, PlanError>;
    /// Unmaps the region starting at `gpa`.
    ///
    /// # Errors
    /// [`PlanError::UnknownRegion`], or an event out of order.
    fn remove_region(&mut self, gpa: Gpa) -> Result<Plan, PlanError>;
    /// Maps the shadow vrings while the device runs.
    ///
    /// # Errors
    /// Bad config, no IOVA space, or an event out of order.
    fn svq_prepare(&mut self, cfg: SvqConfig) -> Result<Plan, PlanError>;
    /// Switches to the shadow virtqueues.
    ///
    /// # Errors
    /// As `svq_prepare`; [`PlanError::MissingSvqConfig`] when not prepared and `cfg` is `None`.
    fn svq_switch(&mut self, cfg: Option<SvqConfig>) -> Result<Plan, PlanError>;
    /// Back to passthrough after a failed migration.
    ///
    /// # Errors
    /// An event out of order.
    fn failback(&mut self) -> Result<Plan, PlanError>;
    /// Migration done: unmap everything.
    ///
    /// # Errors
    /// An event out of order.
    fn complete(&mut self) -> Result<Plan, PlanError>;
    /// On a migration's destination, first: the guest's regions are known
    /// and the VMM waits for the stream. Leaves the strategy in
    /// [`Mode::Incoming`].
    ///
    /// # Errors
    /// Bad or overlapping regions; an event out of order (anything was
    /// mapped or declared before).
    fn incoming(&mut self, regions: &[RegionSpec]) -> Result<Plan, PlanError>;
    /// On a migration's destination waiting for the stream: the source
    /// stopped, and the guest stays paused until [`Strategy::start`].
    /// Leaves the strategy in [`Mode::Switchover`], where everything it
    /// plans (a reset's restore, a vIOMMU's maps arriving with the stream)
    /// is inside the downtime.
    ///
    /// # Errors
    /// An event out of order (not [`Mode::Incoming`]).
    fn switchover(&mut self) -> Result<Plan, PlanError>;
    /// On a migration's destination: the guest starts, after the stream
    /// ended. Leaves the strategy in [`Mode::Passthrough`]: the host runs
    /// the VM now, and can be the source of the next migration.
    ///
    /// # Errors
    /// An event out of order (not [`Mode::Incoming`] or [`Mode::Switchover`]).
    fn start(&mut self) -> Result<Plan, PlanError>;
    /// Where each region is mapped now, by GPA.
    fn placements(&self) -> Vec<Placement>;
    /// The vring areas mapped now.
    fn vring_areas(&self) -> Vec<VringArea>;
    /// Device addresses of `len` bytes of guest memory at `gpa` (with a guest
    /// vIOMMU: at guest IOVA `gpa`, as the guest's descriptors carry them).
    ///
    /// # Errors
    /// [`PlanError::NotGuestMemory`] or [`PlanError::Unreachable`] for the
    /// first byte that cannot be translated; `ZeroSize`/`Wraps` for bad lengths.
    fn translate(&self, gpa: Gpa, len: u64) -> Result<Segments, PlanError>;

    /// The device was reset: restores what it forgot, at the cheapest
    /// correct cost for its [`crate::MapStyle`] and `persist`.
    ///
    /// # Errors
    /// An event out of order.
    fn reset(&mut self) -> Result<Plan, PlanError>;
    /// The guest's vIOMMU mapped guest memory at a guest IOVA.
    ///
    /// # Errors
    /// [`PlanError::NoViommu`], a bad or overlapping map, or no IOVA space.
    fn viommu_map(
        &mut self,
        giova: Iova,
        size: u64,
        gpa: Gpa,
        perm: Perm,
    ) -> Result<Plan, PlanError>;
    /// The guest's vIOMMU unmapped a guest IOVA range.
    ///
    /// # Errors
    /// [`PlanError::NoViommu`], a bad range, or [`PlanError::NotMapped`].
    fn viommu_unmap(&mut self, giova: Iova, size: u64) -> Result<Plan, PlanError>;
    /// Declares host buffers (see [`HostBuffer`]), mapped with the shadow
    /// vrings from the next `svq_prepare` (or unprepared `svq_switch`) on.
    ///
    /// # Errors
    /// A buffer that is not whole pages; an event out of order (the shadow
    /// vrings are mapped already, or the migration completed).
    fn host_buffers(&mut self, bufs: &[HostBuffer]) -> Result<Plan, PlanError>;
    /// The IOTLB entries of the host buffers mapped now, as `(asid, entry)`.
    fn buffer_entries(&self) -> Vec<(u32, Entry)> {
        Vec::new()
    }
    /// The IOVA window shadow vrings and displaced memory are allocated
    /// from now, if the strategy keeps one (for pictures and reports; `None`
    /// by default).
    fn window(&self) -> Option<Span<Iova>> {
        None
    }
    /// Every IOTLB entry the strategy has mapped now, as `(asid, entry)`.
    fn mapped(&self) -> Vec<(u32, Entry)>;
    /// The generation of the table [`Strategy::translate`] reads, bumped by
    /// every change to it: what a [`translator::Translator`] watches.
    /// `None` (the default) for a strategy that keeps none, which then has
    /// no per-queue translator.
    fn epoch(&self) -> Option<&Epoch> {
        None
    }

    /// Feeds one event.
    ///
    /// # Errors
    /// As the event's method.
    fn apply(&mut self, ev: &Event) -> Result<Plan, PlanError> {
        match ev {
            Event::Boot(r) => self.add_regions(r),
            Event::Hotplug(r) => self.add_regions(core::slice::from_ref(r)),
            Event::Unplug(g) => self.remove_region(*g),
            Event::SvqPrepare(c) => self.svq_prepare(*c),
            Event::SvqSwitch(c) => self.svq_switch(*c),
            Event::Failback => self.failback(),
            Event::Complete => self.complete(),
            Event::Incoming(r) => self.incoming(r),
            Event::Switchover => self.switchover(),
            Event::Start => self.start(),
            Event::Reset => self.reset(),
            Event::HostBuffers(b) => self.host_buffers(b),
            Event::ViommuMap {
                giova,
                size,
                gpa,
                perm,
            } => self.viommu_map(*giova, *size, *gpa, *perm),
            Event::ViommuUnmap { giova, size } => self.viommu_unmap(*giova, *size),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Hva;

    #[test]
    fn regression_unreachable_of_unmapped_region_at_gpa_zero() {
        // A region at GPA 0 with no piece (after `complete`) was reported as
        // fully reachable: the end-of-walk check mistook 0 for a wrap.
        let p = Placement {
            gpa: Span::trusted(0, 0x2000),
            hva: Hva(0x1000),
            perm: Perm::Rw,
            pieces: SmallVec::new(),
        };
        assert_eq!(p.unreachable().as_slice(), &[Span::trusted(0, 0x2000)]);
        // A piece ending at 2^64 - 1 leaves nothing after it.
        let top = Span::<Gpa>::trusted(u64::MAX - 0x1fff, 0x2000);
        let p = Placement {
            gpa: top,
            hva: Hva(0x1000),
            perm: Perm::Rw,
            pieces: smallvec::smallvec![Piece {
                gpa: Span::trusted(u64::MAX - 0xfff, 0x1000),
                iova: Span::trusted(0x1000, 0x1000)
            }],
        };
        assert_eq!(
            p.unreachable().as_slice(),
            &[Span::trusted(u64::MAX - 0x1fff, 0x1000)]
        );
    }
}
