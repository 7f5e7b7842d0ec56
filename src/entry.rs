//! One IOTLB entry: what the kernel's table holds and strategies report.

use crate::addr::{Hva, Iova, Span};
use crate::vocab::Perm;

/// One live IOTLB entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Entry {
    /// Device addresses.
    pub iova: Span<Iova>,
    /// Host address of the first byte.
    pub hva: Hva,
    /// Device access.
    pub perm: Perm,
}
