//! The crate's one error type.

use core::fmt;

use crate::vocab::Mode;

/// Why the planner refused an input.
///
/// Every refusal leaves the planner exactly as it was before the call: an
/// event either returns a whole plan and commits it, or returns one of these
/// and changes nothing. Addresses print as hex.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlanError {
    /// A page size that is not a power of two of at least 4 KiB.
    BadPageSize {
        /// The offending size.
        size: u64,
    },
    /// A device IOVA range whose last address is below its first.
    BadDeviceRange {
        /// First IOVA.
        first: u64,
        /// Last IOVA.
        last: u64,
    },
    /// A device that claims zero address spaces.
    NoAddressSpaces,
    /// A range of size zero.
    ZeroSize {
        /// Address kind ("gpa", "iova", "hva").
        kind: &'static str,
        /// Where it started.
        first: u64,
    },
    /// A range that would pass `2^64 - 1`.
    Wraps {
        /// Address kind.
        kind: &'static str,
        /// Where it started.
        first: u64,
        /// Its size (0 when given as a reversed or full-space inclusive range).
        size: u64,
    },
    /// A range not aligned to the device's page size.
    Unaligned {
        /// Address kind.
        kind: &'static str,
        /// Where it started.
        first: u64,
        /// Its size.
        size: u64,
        /// The page size it must be a multiple of.
        page: u64,
    },
    /// A new guest region overlaps one already present (or another one of the same event).
    RegionOverlap {
        /// The new region `[first, last]`.
        new: (u64, u64),
        /// The region it overlaps `[first, last]`.
        existing: (u64, u64),
    },
    /// No guest region starts at this GPA.
    UnknownRegion {
        /// The GPA given.
        gpa: u64,
    },
    /// An event that makes no sense in the planner's current mode.
    OutOfOrder {
        /// The event.
        event: &'static str,
        /// The mode the planner is in.
        mode: Mode,
    },
    /// Shadow virtqueue parameters that cannot describe a vring.
    BadSvqConfig {
        /// Number of queues asked for.
        queues: u32,
        /// Queue size asked for.
        queue_size: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// `svq_switch` without a prior `svq_prepare` and without parameters.
    MissingSvqConfig,
    /// No free IOVA range of the size needed.
    OutOfIova {
        /// Bytes needed in one contiguous range.
        needed: u64,
        /// What it was for.
        purpose: &'static str,
        /// The IOVA window searched `[first, last]`, if one was chosen.
        window: Option<(u64, u64)>,
        /// The largest free range in it, in bytes.
        largest_free: u64,
        /// Every free range `[first, last]` that was searched, by address:
        /// the window, then (in SVQ mode) the free holes of the rest of the
        /// device range. Empty when nothing was free.
        considered: Vec<(u64, u64)>,
    },
    /// `translate` was asked for an address that is not guest memory.
    NotGuestMemory {
        /// The first GPA that is not guest memory.
        gpa: u64,
    },
    /// `translate` was asked for guest memory the device cannot reach now
    /// (outside the device's IOVA range while in passthrough).
    Unreachable {
        /// The first unreachable GPA.
        gpa: u64,
    },
    /// A vIOMMU event for a planner built without a guest vIOMMU, or a
    /// memory event that needs one.
    NoViommu {
        /// The event.
        event: &'static str,
    },
    /// A guest vIOMMU map the planner cannot honour.
    BadGuestMap {
        /// Guest IOVA of the map.
        giova: u64,
        /// Guest-physical address it maps.
        gpa: u64,
        /// Bytes.
        size: u64,
        /// Why.
        reason: &'static str,
    },
    /// A guest vIOMMU map overlapping a live one (the guest must unmap first).
    GuestMapOverlap {
        /// The new map `[first, last]` (guest IOVAs).
        new: (u64, u64),
        /// The live map it overlaps.
        existing: (u64, u64),
    },
    /// A guest vIOMMU unmap of a range where nothing is mapped.
    NotMapped {
        /// First guest IOVA of the unmap.
        first: u64,
        /// Last guest IOVA.
        last: u64,
    },
    /// Unplug of a region the guest's vIOMMU still maps.
    RegionInUse {
        /// The region's first GPA.
        gpa: u64,
        /// A guest IOVA still mapping into it.
        giova: u64,
    },
    /// Something this strategy does not do (QEMU's refusals, reproduced).
    Unsupported {
        /// What.
        what: &'static str,
    },
    /// A [`crate::Translator`] whose snapshot an event has made stale
    /// (hot-plug, unplug, a guest vIOMMU change, a switch or a failback):
    /// refresh it from its planner.
    StaleTranslator,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::BadPageSize { size } => {
                write!(f, "page size {size:#x} is not a power of two of at least 4 KiB")
            }
            PlanError::BadDeviceRange { first, last } => {
                write!(f, "device IOVA range [{first:#x}, {last:#x}] ends before it starts")
            }
            PlanError::NoAddressSpaces => write!(f, "device has no address space"),
            PlanError::ZeroSize { kind, first } => {
                write!(f, "{kind} range at {first:#x} has size zero")
            }
            PlanError::Wraps { kind, first, size } => {
                write!(f, "{kind} range at {first:#x} of size {size:#x} wraps past 2^64-1")
            }
            PlanError::Unaligned { kind, first, size, page } => write!(
                f,
                "{kind} range at {first:#x} of size {size:#x} is not aligned to the page size {page:#x}"
            ),
            PlanError::RegionOverlap { new, existing } => write!(
                f,
                "guest region [{:#x}, {:#x}] overlaps region [{:#x}, {:#x}]",
                new.0, new.1, existing.0, existing.1
            ),
            PlanError::UnknownRegion { gpa } => write!(f, "no guest region starts at gpa {gpa:#x}"),
            PlanError::OutOfOrder { event, mode } => {
                write!(f, "event {event} is not allowed in mode {mode}")
            }
            PlanError::BadSvqConfig { queues, queue_size, reason } => write!(
                f,
                "shadow virtqueues ({queues} queues of size {queue_size}): {reason}"
            ),
            PlanError::MissingSvqConfig => {
                write!(f, "svq_switch without svq_prepare needs queues, queue_size and hva")
            }
            PlanError::OutOfIova { needed, purpose, window, largest_free, considered } => {
                write!(f, "out of IOVA space: {purpose} needs {needed:#x} contiguous bytes")?;
                match window {
                    Some((a, b)) => write!(
                        f,
                        " in window [{a:#x}, {b:#x}], whose largest free range is {largest_free:#x} bytes"
                    )?,
                    None => write!(f, " and the device range has no free hole that large")?,
                }
                if !considered.is_empty() {
                    const SHOWN: usize = 8;
                    write!(f, "; free ranges considered:")?;
                    for (a, b) in considered.iter().take(SHOWN) {
                        write!(f, " [{a:#x}, {b:#x}]")?;
                    }
                    if considered.len() > SHOWN {
                        write!(f, " and {} more", considered.len() - SHOWN)?;
                    }
                }
                Ok(())
            }
            PlanError::NotGuestMemory { gpa } => write!(f, "gpa {gpa:#x} is not guest memory"),
            PlanError::Unreachable { gpa } => write!(
                f,
                "gpa {gpa:#x} is guest memory outside the device's IOVA range and not mapped now"
            ),
            PlanError::NoViommu { event } => {
                write!(f, "event {event} needs a planner built with a guest vIOMMU")
            }
            PlanError::BadGuestMap { giova, gpa, size, reason } => write!(
                f,
                "guest map of {size:#x} bytes at giova {giova:#x} to gpa {gpa:#x}: {reason}"
            ),
            PlanError::GuestMapOverlap { new, existing } => write!(
                f,
                "guest map [{:#x}, {:#x}] overlaps the live guest map [{:#x}, {:#x}]",
                new.0, new.1, existing.0, existing.1
            ),
            PlanError::NotMapped { first, last } => {
                write!(f, "guest unmap [{first:#x}, {last:#x}]: nothing is mapped there")
            }
            PlanError::RegionInUse { gpa, giova } => write!(
                f,
                "region at gpa {gpa:#x} is still mapped by the guest's vIOMMU (at giova {giova:#x})"
            ),
            PlanError::Unsupported { what } => write!(f, "not supported: {what}"),
            PlanError::StaleTranslator => write!(
                f,
                "the translator's snapshot is stale (the planner changed since): refresh it"
            ),
        }
    }
}

impl std::error::Error for PlanError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Out of IOVA names at most eight free ranges, then how many more.
    #[test]
    fn out_of_iova_lists_eight_free_ranges_then_counts_the_rest() {
        let err = |n: u64| {
            PlanError::OutOfIova {
                needed: 0x3000,
                purpose: "shadow vrings",
                window: Some((0x1000, 0xffff_ffff)),
                largest_free: 0x2000,
                considered: (0..n)
                    .map(|i| (i * 0x10000, i * 0x10000 + 0x1fff))
                    .collect(),
            }
            .to_string()
        };
        let eight = err(8);
        assert!(eight.ends_with("[0x70000, 0x71fff]"), "{eight}");
        assert!(!eight.contains("more"), "{eight}");
        let nine = err(9);
        assert!(nine.ends_with("[0x70000, 0x71fff] and 1 more"), "{nine}");
        assert!(!nine.contains("0x80000"), "{nine}");
        assert!(err(0).ends_with("largest free range is 0x2000 bytes"));
    }
}
