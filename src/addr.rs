//! Addresses and ranges.
//!
//! Three address spaces meet in a vhost-vdpa IOTLB: the guest's physical
//! addresses ([`Gpa`]), the device's I/O virtual addresses ([`Iova`]) and the
//! VMM's own virtual addresses ([`Hva`]). Each has its own newtype so one can
//! never be passed where another is expected, and none offers raw arithmetic:
//! only checked offsets, as `vm-memory`'s `GuestAddress` does.
//!
//! Ranges are inclusive (`[first, last]`), as the kernel and QEMU speak them,
//! so a range ending at `2^64 - 1` is representable. A [`Span`] (a range that
//! is mapped or allocated) always has a non-zero size that fits in a `u64`;
//! a [`DeviceRange`] (what `VHOST_VDPA_GET_IOVA_RANGE` returns) may cover the
//! whole 64-bit space.

use core::fmt;
use std::collections::BTreeMap;

use crate::error::PlanError;

/// An address kind: a transparent `u64` newtype.
pub trait Address: Copy + Ord + fmt::Debug + fmt::LowerHex {
    /// Short name used in error messages ("iova", "gpa", "hva").
    const KIND: &'static str;
    /// Wraps a raw value.
    fn new(raw: u64) -> Self;
    /// The raw value.
    fn raw(self) -> u64;
    /// `self + off`, or `None` when it would wrap past `2^64 - 1`.
    fn checked_add(self, off: u64) -> Option<Self> {
        self.raw().checked_add(off).map(Self::new)
    }
    /// `self - earlier`, or `None` when `earlier > self`.
    fn offset_from(self, earlier: Self) -> Option<u64> {
        self.raw().checked_sub(earlier.raw())
    }
}

macro_rules! address {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
        #[cfg_attr(feature = "serde", serde(transparent))]
        #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
        pub struct $name(pub u64);

        impl Address for $name {
            const KIND: &'static str = $kind;
            #[inline]
            fn new(raw: u64) -> Self {
                Self(raw)
            }
            #[inline]
            fn raw(self) -> u64 {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($kind, "({:#x})"), self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

address!(
    /// An I/O virtual address: what the device puts on the bus.
    Iova,
    "iova"
);
address!(
    /// A guest-physical address.
    Gpa,
    "gpa"
);
address!(
    /// A host virtual address in the VMM's (the vhost owner's) address space.
    Hva,
    "hva"
);

/// A validated page size: a power of two of at least 4 KiB.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PageSize(u64);

impl PageSize {
    /// 4 KiB, the base page of x86-64 and most arm64 hosts.
    pub const SIZE_4K: PageSize = PageSize(4096);

    /// Validates a page size.
    ///
    /// # Errors
    /// [`PlanError::BadPageSize`] unless `size` is a power of two `>= 4096`.
    pub fn new(size: u64) -> Result<Self, PlanError> {
        if size.is_power_of_two() && size >= 4096 {
            Ok(PageSize(size))
        } else {
            Err(PlanError::BadPageSize { size })
        }
    }

    /// The size in bytes.
    #[inline]
    pub fn get(self) -> u64 {
        self.0
    }

    /// Whether `v` is a multiple of the page size.
    #[inline]
    pub fn is_aligned(self, v: u64) -> bool {
        v & (self.0 - 1) == 0
    }

    /// `v` rounded down to a page boundary.
    #[inline]
    pub fn align_down(self, v: u64) -> u64 {
        v & !(self.0 - 1)
    }

    /// `v` rounded up to a page boundary, or `None` past `2^64 - 1`.
    #[inline]
    pub fn align_up(self, v: u64) -> Option<u64> {
        v.checked_add(self.0 - 1).map(|x| x & !(self.0 - 1))
    }
}

impl fmt::Debug for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageSize({:#x})", self.0)
    }
}

/// A non-empty, non-wrapping, page-aligned inclusive range of addresses of kind `A`.
///
/// Fields are private: the only ways in are the checked constructors, so a
/// `Span` in hand is always something the kernel's UPDATE size rules accept.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Span<A: Address> {
    first: A,
    last: A,
}

impl<A: Address> Span<A> {
    /// `[first, first + size - 1]`, checked.
    ///
    /// # Errors
    /// [`PlanError::ZeroSize`] for `size == 0`, [`PlanError::Wraps`] when the
    /// range would pass `2^64 - 1`, [`PlanError::Unaligned`] when `first` or
    /// `size` is not a multiple of `page`.
    pub fn new(first: A, size: u64, page: PageSize) -> Result<Self, PlanError> {
        if size == 0 {
            return Err(PlanError::ZeroSize {
                kind: A::KIND,
                first: first.raw(),
            });
        }
        let last = first.raw().checked_add(size - 1).ok_or(PlanError::Wraps {
            kind: A::KIND,
            first: first.raw(),
            size,
        })?;
        if !page.is_aligned(first.raw()) || !page.is_aligned(size) {
            return Err(PlanError::Unaligned {
                kind: A::KIND,
                first: first.raw(),
                size,
                page: page.get(),
            });
        }
        Ok(Span {
            first,
            last: A::new(last),
        })
    }

    /// `[first, last]`, checked like [`Span::new`]. `last == 2^64 - 1` is fine
    /// as long as the size (`last - first + 1`) fits in a `u64`.
    ///
    /// # Errors
    /// As [`Span::new`]; [`PlanError::Wraps`] also when `last < first` or the
    /// range is the whole 64-bit space.
    pub fn from_inclusive(first: A, last: A, page: PageSize) -> Result<Self, PlanError> {
        let len_m1 = last.offset_from(first).ok_or(PlanError::Wraps {
            kind: A::KIND,
            first: first.raw(),
            size: 0,
        })?;
        let size = len_m1.checked_add(1).ok_or(PlanError::Wraps {
            kind: A::KIND,
            first: first.raw(),
            size: 0,
        })?;
        Self::new(first, size, page)
    }

    /// Internal constructor for ranges already known to be valid.
    pub(crate) fn trusted(first: u64, size: u64) -> Self {
        debug_assert!(size > 0 && first.checked_add(size - 1).is_some());
        Span {
            first: A::new(first),
            last: A::new(first + (size - 1)),
        }
    }

    /// First address.
    #[inline]
    pub fn first(&self) -> A {
        self.first
    }

    /// Last address (inclusive).
    #[inline]
    pub fn last(&self) -> A {
        self.last
    }

    /// Size in bytes (never zero).
    #[inline]
    pub fn size(&self) -> u64 {
        self.last.raw() - self.first.raw() + 1
    }

    /// Whether `a` lies inside.
    #[inline]
    pub fn contains(&self, a: A) -> bool {
        self.first <= a && a <= self.last
    }

    /// Whether the two ranges share at least one address.
    #[inline]
    pub fn overlaps(&self, other: &Self) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    /// The raw inclusive bounds.
    #[inline]
    pub fn bounds(&self) -> (u64, u64) {
        (self.first.raw(), self.last.raw())
    }
}

/// The entries of `map` that overlap `[f, l]` (`f <= l`), by address.
///
/// `map` is keyed by each entry's first address, and its entries do not
/// overlap one another; `last` gives an entry's last address from its key
/// and value. Only the entry starting below `f` needs it: every entry
/// starting inside `[f, l]` overlaps. O(log n + k) for k entries found.
pub(crate) fn overlapping<'a, V>(
    map: &'a BTreeMap<u64, V>,
    last: impl Fn(u64, &V) -> u64,
    f: u64,
    l: u64,
) -> impl Iterator<Item = (u64, &'a V)> + 'a {
    let before = map
        .range(..f)
        .next_back()
        .filter(|&(&k, v)| last(k, v) >= f)
        .map(|(&k, v)| (k, v));
    before
        .into_iter()
        .chain(map.range(f..=l).map(|(&k, v)| (k, v)))
}

impl<A: Address> fmt::Debug for Span<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}[{:#x}, {:#x}]",
            A::KIND,
            self.first.raw(),
            self.last.raw()
        )
    }
}

impl<A: Address> fmt::Display for Span<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x}]", self.first.raw(), self.last.raw())
    }
}

/// The inclusive IOVA range a device accepts (`VHOST_VDPA_GET_IOVA_RANGE`).
///
/// Unlike a [`Span`] it may cover the whole 64-bit space, so it has no `size()`
/// method that could overflow; ask [`DeviceRange::contains_span`] instead.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct DeviceRange {
    first: u64,
    last: u64,
}

impl DeviceRange {
    /// The full range `[0, 2^64 - 1]`, what vdpa_sim and VDUSE report.
    pub const FULL: DeviceRange = DeviceRange {
        first: 0,
        last: u64::MAX,
    };

    /// `[first, last]`.
    ///
    /// # Errors
    /// [`PlanError::BadDeviceRange`] when `last < first`.
    pub fn new(first: u64, last: u64) -> Result<Self, PlanError> {
        if last < first {
            return Err(PlanError::BadDeviceRange { first, last });
        }
        Ok(DeviceRange { first, last })
    }

    /// First accepted IOVA.
    #[inline]
    pub fn first(&self) -> u64 {
        self.first
    }

    /// Last accepted IOVA (inclusive).
    #[inline]
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Whether every byte of `[first, last]` is accepted.
    #[inline]
    pub fn contains_bounds(&self, first: u64, last: u64) -> bool {
        self.first <= first && last <= self.last
    }

    /// Whether `span` (taken as IOVAs) lies wholly inside.
    #[inline]
    pub fn contains_span<A: Address>(&self, span: &Span<A>) -> bool {
        self.contains_bounds(span.first.raw(), span.last.raw())
    }

    /// The part of `[first, last]` inside the device range, if any.
    #[inline]
    pub fn clip(&self, first: u64, last: u64) -> Option<(u64, u64)> {
        let f = first.max(self.first);
        let l = last.min(self.last);
        (f <= l).then_some((f, l))
    }
}

impl fmt::Debug for DeviceRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceRange[{:#x}, {:#x}]", self.first, self.last)
    }
}

impl fmt::Display for DeviceRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x}]", self.first, self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: PageSize = PageSize::SIZE_4K;

    /// Address arithmetic never wraps silently: past `2^64 - 1` is `None`.
    #[test]
    fn addresses_add_and_subtract_without_wrapping() {
        assert_eq!(Gpa(0x1000).checked_add(0x1000), Some(Gpa(0x2000)));
        assert_eq!(Iova(u64::MAX - 1).checked_add(1), Some(Iova(u64::MAX)));
        assert_eq!(Iova(u64::MAX).checked_add(1), None);
        assert_eq!(Hva(0x3000).offset_from(Hva(0x1000)), Some(0x2000));
        assert_eq!(Hva(0x1000).offset_from(Hva(0x3000)), None);
    }

    /// What error messages and test failures print: the kind and the
    /// inclusive bounds in hex.
    #[test]
    fn debug_output_names_kind_and_bounds() {
        assert_eq!(format!("{P:?}"), "PageSize(0x1000)");
        let s = Span::new(Iova(0x1000), 0x2000, P).unwrap();
        assert_eq!(format!("{s:?}"), "iova[0x1000, 0x2fff]");
        let g = Span::new(Gpa(0), 0x1000, P).unwrap();
        assert_eq!(format!("{g:?}"), "gpa[0x0, 0xfff]");
        let r = DeviceRange::new(0x1000, 0xffff).unwrap();
        assert_eq!(format!("{r:?}"), "DeviceRange[0x1000, 0xffff]");
        assert_eq!(format!("{r}"), "[0x1000, 0xffff]");
    }

    #[test]
    fn span_checks_size_wrap_and_alignment() {
        assert!(matches!(
            Span::new(Iova(0), 0, P),
            Err(PlanError::ZeroSize { .. })
        ));
        assert!(matches!(
            Span::new(Iova(u64::MAX - 4095), 8192, P),
            Err(PlanError::Wraps { .. })
        ));
        assert!(matches!(
            Span::new(Iova(1), 4096, P),
            Err(PlanError::Unaligned { .. })
        ));
        assert!(matches!(
            Span::new(Iova(0), 4097, P),
            Err(PlanError::Unaligned { .. })
        ));
        let top = Span::new(Iova(u64::MAX - 4095), 4096, P).unwrap();
        assert_eq!(top.last(), Iova(u64::MAX));
        assert_eq!(top.size(), 4096);
    }

    #[test]
    fn from_inclusive_rejects_reversed_and_full_space() {
        assert!(Span::from_inclusive(Gpa(8192), Gpa(4095), P).is_err());
        assert!(Span::from_inclusive(Gpa(0), Gpa(u64::MAX), P).is_err());
        let s = Span::from_inclusive(Gpa(4096), Gpa(8191), P).unwrap();
        assert_eq!(s.size(), 4096);
    }

    #[test]
    fn device_range_can_be_full() {
        let r = DeviceRange::FULL;
        assert!(r.contains_bounds(0, u64::MAX));
        assert_eq!(r.clip(5, 7), Some((5, 7)));
        let small = DeviceRange::new(0x1000, 0xffff).unwrap();
        assert_eq!(small.clip(0, 0x1fff), Some((0x1000, 0x1fff)));
        assert_eq!(small.clip(0x10000, 0x20000), None);
        assert!(DeviceRange::new(2, 1).is_err());
    }

    #[test]
    fn page_size_validation() {
        assert!(PageSize::new(4096).is_ok());
        assert!(PageSize::new(2 << 20).is_ok());
        assert!(PageSize::new(0).is_err());
        assert!(PageSize::new(512).is_err());
        assert!(PageSize::new(12288).is_err());
        assert_eq!(P.align_up(u64::MAX), None);
        assert_eq!(P.align_up(1), Some(4096));
    }
}
