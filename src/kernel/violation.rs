//! The rules a message can break, as the model reports them.

use core::fmt;

use crate::addr::DeviceRange;
use crate::entry::Entry;

/// A rule a message broke.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// `asid` is not below the number of address spaces (EINVAL).
    AsidOutOfRange {
        /// Asid of the message.
        asid: u32,
        /// Address spaces the device has.
        address_spaces: u32,
    },
    /// INVALIDATE or BATCH_END for an address space never created by an
    /// UPDATE or BATCH_BEGIN (EINVAL).
    NoAddressSpace {
        /// Asid of the message.
        asid: u32,
    },
    /// A message for another asid inside a batch (EINVAL).
    BatchAsidMismatch {
        /// Asid the open batch belongs to.
        batch: u32,
        /// Asid of the message.
        asid: u32,
    },
    /// UPDATE of size 0 (EINVAL).
    ZeroSize,
    /// UPDATE whose `iova + size` wraps past `2^64` (EINVAL).
    Wraps {
        /// `iova` field.
        iova: u64,
        /// `size` field.
        size: u64,
    },
    /// UPDATE with bytes outside the device range (EINVAL).
    OutsideRange {
        /// First IOVA of the update.
        first: u64,
        /// Last IOVA of the update.
        last: u64,
        /// The device range.
        range: DeviceRange,
    },
    /// UPDATE overlapping a live entry (EEXIST).
    Overlap {
        /// The first live entry it overlaps.
        existing: Entry,
    },
    /// UPDATE into an address space that already holds as many entries as
    /// the kernel allows (ENOSPC; see [`KernelIotlb::with_entry_limit`](super::KernelIotlb::with_entry_limit)).
    EntryLimit {
        /// Asid of the message.
        asid: u32,
        /// Entries allowed per address space.
        limit: usize,
    },
    /// Strict: UPDATE with a perm other than RO, WO, RW (the kernel maps it anyway).
    BadPerm {
        /// `perm` field.
        perm: u8,
    },
    /// Strict: INVALIDATE of size 0 (the kernel computes `iova - 1` as the
    /// last address; at iova 0 that removes every entry).
    InvalidateZeroSize {
        /// `iova` field.
        iova: u64,
    },
    /// Strict: INVALIDATE whose range wraps past `2^64`.
    InvalidateWraps {
        /// `iova` field.
        iova: u64,
        /// `size` field.
        size: u64,
    },
    /// Strict: INVALIDATE that covers only part of an entry (the kernel
    /// drops the whole entry, or on pinning devices some of its pieces).
    PartialInvalidate {
        /// First IOVA of the invalidate.
        first: u64,
        /// Last IOVA of the invalidate.
        last: u64,
        /// The entry it cuts.
        entry: Entry,
    },
    /// Strict: BATCH_BEGIN while a batch is open.
    BatchAlreadyOpen {
        /// Asid of the open batch.
        batch: u32,
    },
    /// Strict: BATCH_END with no batch open.
    BatchNotOpen,
}

impl Violation {
    /// The errno the kernel's message handler returns (userspace sees EFAULT
    /// for all of them), or `None` for the strict rules the kernel does not enforce.
    pub fn kernel_errno(&self) -> Option<i32> {
        const EINVAL: i32 = 22;
        const EEXIST: i32 = 17;
        const ENOSPC: i32 = 28;
        match self {
            Violation::AsidOutOfRange { .. }
            | Violation::NoAddressSpace { .. }
            | Violation::BatchAsidMismatch { .. }
            | Violation::ZeroSize
            | Violation::Wraps { .. }
            | Violation::OutsideRange { .. } => Some(EINVAL),
            Violation::Overlap { .. } => Some(EEXIST),
            Violation::EntryLimit { .. } => Some(ENOSPC),
            _ => None,
        }
    }
}

impl Violation {
    /// What `write(2)` of the message returns to userspace: EINVAL for an
    /// UPDATE of size 0 (refused by `vhost_chr_write_iter` before the
    /// vhost-vdpa handler), EFAULT for every refusal of the handler, `None`
    /// for the strict rules the kernel does not enforce.
    pub fn user_errno(&self) -> Option<i32> {
        const EINVAL: i32 = 22;
        const EFAULT: i32 = 14;
        match self {
            Violation::ZeroSize => Some(EINVAL),
            v => v.kernel_errno().map(|_| EFAULT),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::AsidOutOfRange {
                asid,
                address_spaces,
            } => {
                write!(
                    f,
                    "asid {asid} but the device has {address_spaces} address spaces (EINVAL)"
                )
            }
            Violation::NoAddressSpace { asid } => {
                write!(
                    f,
                    "asid {asid} was never created by an update or batch begin (EINVAL)"
                )
            }
            Violation::BatchAsidMismatch { batch, asid } => {
                write!(
                    f,
                    "message for asid {asid} inside a batch of asid {batch} (EINVAL)"
                )
            }
            Violation::ZeroSize => write!(f, "update of size 0 (EINVAL)"),
            Violation::Wraps { iova, size } => {
                write!(
                    f,
                    "update at {iova:#x} of size {size:#x} wraps past 2^64 (EINVAL)"
                )
            }
            Violation::OutsideRange { first, last, range } => write!(
                f,
                "update [{first:#x}, {last:#x}] is not inside the device range {range} (EINVAL)"
            ),
            Violation::Overlap { existing } => write!(
                f,
                "update overlaps the live entry {} -> {:#x} (EEXIST)",
                existing.iova, existing.hva.0
            ),
            Violation::EntryLimit { asid, limit } => write!(
                f,
                "address space {asid} already holds {limit} entries, the most the kernel allows (ENOSPC)"
            ),
            Violation::BadPerm { perm } => write!(f, "update with perm {perm} (strict)"),
            Violation::InvalidateZeroSize { iova } => {
                write!(f, "invalidate at {iova:#x} of size 0 (strict)")
            }
            Violation::InvalidateWraps { iova, size } => {
                write!(
                    f,
                    "invalidate at {iova:#x} of size {size:#x} wraps (strict)"
                )
            }
            Violation::PartialInvalidate { first, last, entry } => write!(
                f,
                "invalidate [{first:#x}, {last:#x}] cuts through the entry {} (strict)",
                entry.iova
            ),
            Violation::BatchAlreadyOpen { batch } => {
                write!(
                    f,
                    "batch begin while the batch of asid {batch} is open (strict)"
                )
            }
            Violation::BatchNotOpen => write!(f, "batch end with no batch open (strict)"),
        }
    }
}

impl std::error::Error for Violation {}
