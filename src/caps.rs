//! What the device can do, as far as IOVA planning is concerned.

use crate::addr::{DeviceRange, PageSize};
use crate::error::PlanError;

/// The device's capabilities, as probed from `/dev/vhost-vdpa-N`
/// (the adapter's `probe` fills this in) or written in a scenario.
///
/// Every field is already validated by its type except `address_spaces`,
/// which [`DeviceCaps::validate`] checks and every planner constructor calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct DeviceCaps {
    /// IOVAs the device accepts (`VHOST_VDPA_GET_IOVA_RANGE`, inclusive).
    pub range: DeviceRange,
    /// Page size every mapping is aligned to.
    pub page_size: PageSize,
    /// `VHOST_BACKEND_F_IOTLB_BATCH` negotiated.
    pub batching: bool,
    /// `VHOST_VDPA_GET_AS_NUM` (1 when `VHOST_BACKEND_F_IOTLB_ASID` is absent).
    pub address_spaces: u32,
    /// `VHOST_BACKEND_F_DESC_ASID` negotiated: vring descriptors can live in
    /// an address space of their own.
    pub desc_asid: bool,
    /// `VHOST_BACKEND_F_IOTLB_PERSIST` negotiated: maps survive a device reset.
    pub persist: bool,
    /// Mapping pins host pages (`use_va == false`: real NICs behind an IOMMU,
    /// vdpa_sim with `use_va=0`). VDUSE and `use_va` devices do not pin.
    pub pinning: bool,
}

impl Default for DeviceCaps {
    /// A pinning, batching device with one address space, the full 64-bit
    /// range and 4 KiB pages: the defaults of the scenario format.
    fn default() -> Self {
        DeviceCaps {
            range: DeviceRange::FULL,
            page_size: PageSize::SIZE_4K,
            batching: true,
            address_spaces: 1,
            desc_asid: false,
            persist: false,
            pinning: true,
        }
    }
}

impl DeviceCaps {
    /// Checks what the types cannot.
    ///
    /// # Errors
    /// [`PlanError::NoAddressSpaces`] when `address_spaces == 0`;
    /// [`PlanError::BadDeviceRange`] when the range is narrower than one page
    /// once aligned (nothing could ever be mapped).
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.address_spaces == 0 {
            return Err(PlanError::NoAddressSpaces);
        }
        let first = self.page_size.align_up(self.range.first());
        let ok = match first {
            Some(f) => f
                .checked_add(self.page_size.get() - 1)
                .is_some_and(|l| l <= self.range.last()),
            None => false,
        };
        if !ok {
            return Err(PlanError::BadDeviceRange {
                first: self.range.first(),
                last: self.range.last(),
            });
        }
        Ok(())
    }
}
