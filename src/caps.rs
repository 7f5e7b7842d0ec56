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
    /// The control virtqueue is alone in its virtqueue group
    /// (`VHOST_VDPA_GET_VRING_GROUP` of the CVQ differs from every data
    /// queue's) and the device has a second address space: the VMM binds
    /// that group to address space 1 (`VHOST_VDPA_SET_GROUP_ASID`, at every
    /// device start: a reset binds every group to 0 again) and shadows the
    /// control queue alone there, for the VM's whole life. Its shadow vring
    /// and buffers are then declared as host buffers
    /// ([`Event::HostBuffers`](crate::Event::HostBuffers)) and mapped in
    /// address space 1, where guest memory never is; the SVQ config counts
    /// the data queues only.
    pub cvq_isolated: bool,
    /// `VHOST_BACKEND_F_IOTLB_PERSIST` negotiated: maps survive a device reset.
    pub persist: bool,
    /// Mapping pins host pages (`use_va == false`: real NICs behind an IOMMU,
    /// vdpa_sim with `use_va=0`). VDUSE and `use_va` devices do not pin.
    pub pinning: bool,
    /// How the parent driver programs the device's translation, which
    /// decides what a device reset loses and how it is restored.
    pub map_style: MapStyle,
}

/// How a vDPA parent driver programs the device's translation (the kernel's
/// `vdpa_config_ops`: `set_map`, `dma_map`, or neither). Not visible through
/// the vhost-vdpa uAPI: the adapter infers it from the parent driver's name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum MapStyle {
    /// A whole-table `set_map` (mlx5, vdpa_sim, VDUSE): every message outside
    /// a batch, and every BATCH_END, pushes the whole table to the device.
    #[default]
    SetMap,
    /// Per-entry `dma_map`/`dma_unmap` (vdpa_sim loaded with
    /// `batch_mapping=0`): each message programs its entry alone, and
    /// BATCH_END pushes nothing.
    DmaMap,
    /// Neither: the kernel maps into the platform IOMMU domain it owns
    /// (ifcvf, octeon_ep, pds). A device reset never touches those maps.
    Platform,
}

impl MapStyle {
    /// Lower-case name, as in the scenario format.
    pub fn as_str(self) -> &'static str {
        match self {
            MapStyle::SetMap => "set_map",
            MapStyle::DmaMap => "dma_map",
            MapStyle::Platform => "platform",
        }
    }
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
            cvq_isolated: false,
            persist: false,
            pinning: true,
            map_style: MapStyle::SetMap,
        }
    }
}

impl DeviceCaps {
    /// Checks what the types cannot.
    ///
    /// # Errors
    /// [`PlanError::NoAddressSpaces`] when `address_spaces == 0`;
    /// [`PlanError::BadDeviceRange`] when the range is narrower than one page
    /// once aligned (nothing could ever be mapped);
    /// [`PlanError::Unsupported`] for an isolated control virtqueue on a
    /// device with one address space.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.address_spaces == 0 {
            return Err(PlanError::NoAddressSpaces);
        }
        if self.cvq_isolated && self.address_spaces <= crate::vocab::CVQ_ASID {
            return Err(PlanError::Unsupported {
                what: "an isolated control virtqueue needs two address spaces",
            });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_styles_have_their_scenario_names() {
        assert_eq!(MapStyle::SetMap.as_str(), "set_map");
        assert_eq!(MapStyle::DmaMap.as_str(), "dma_map");
        assert_eq!(MapStyle::Platform.as_str(), "platform");
    }

    /// A device with no address space, or a range without one whole page
    /// once aligned, is refused; a range of exactly one page is enough.
    #[test]
    fn validate_refuses_devices_nothing_could_be_mapped_on() {
        let caps = |first, last, address_spaces| DeviceCaps {
            range: DeviceRange::new(first, last).unwrap(),
            address_spaces,
            ..DeviceCaps::default()
        };
        assert_eq!(
            caps(0, u64::MAX, 0).validate(),
            Err(PlanError::NoAddressSpaces)
        );
        assert_eq!(caps(0x1000, 0x1fff, 1).validate(), Ok(()));
        assert_eq!(caps(0x1001, 0x2fff, 1).validate(), Ok(()));
        assert_eq!(caps(u64::MAX - 0xfff, u64::MAX, 1).validate(), Ok(()));
        for (first, last) in [
            (0x1001, 0x2ffe),
            (0x1000, 0x1ffe),
            (u64::MAX - 0xffe, u64::MAX),
        ] {
            assert_eq!(
                caps(first, last, 1).validate(),
                Err(PlanError::BadDeviceRange { first, last }),
                "[{first:#x}, {last:#x}]"
            );
        }
    }
}
