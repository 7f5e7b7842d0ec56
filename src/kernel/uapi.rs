//! The kernel's words for IOTLB messages and backend features, from
//! `include/uapi/linux/vhost_types.h` (Linux 6.12), defined once here beside
//! the model that gives them their meaning.
//!
//! The adapter's codec and the C ABI use these values; the adapter's
//! `tests/uapi_header.rs` checks each one against the recorded 6.12 values
//! and the installed kernel headers.

/// Outer `type` of a v1 message (`VHOST_IOTLB_MSG`).
pub const VHOST_IOTLB_MSG: u32 = 1;
/// Outer `type` of a v2 message (`VHOST_IOTLB_MSG_V2`).
pub const VHOST_IOTLB_MSG_V2: u32 = 2;

/// `struct vhost_iotlb_msg`'s `type` values (`VHOST_IOTLB_*`).
pub mod iotlb {
    /// Device to userspace: a translation is missing.
    pub const MISS: u8 = 1;
    /// Map.
    pub const UPDATE: u8 = 2;
    /// Unmap.
    pub const INVALIDATE: u8 = 3;
    /// Device to userspace: an access was refused.
    pub const ACCESS_FAIL: u8 = 4;
    /// Open a batch.
    pub const BATCH_BEGIN: u8 = 5;
    /// Close a batch.
    pub const BATCH_END: u8 = 6;
}

/// Backend feature **bit numbers** (`VHOST_BACKEND_F_*`); the mask is `1 << bit`.
pub mod backend {
    /// `vhost_msg_v2` messages.
    pub const IOTLB_MSG_V2: u32 = 1;
    /// BATCH_BEGIN / BATCH_END.
    pub const IOTLB_BATCH: u32 = 2;
    /// The `asid` field of v2 messages.
    pub const IOTLB_ASID: u32 = 3;
    /// `VHOST_VDPA_SUSPEND`.
    pub const SUSPEND: u32 = 4;
    /// `VHOST_VDPA_RESUME`.
    pub const RESUME: u32 = 5;
    /// Rings may be enabled after DRIVER_OK.
    pub const ENABLE_AFTER_DRIVER_OK: u32 = 6;
    /// Descriptor rings in an address space of their own.
    pub const DESC_ASID: u32 = 7;
    /// Maps survive a device reset.
    pub const IOTLB_PERSIST: u32 = 8;
}
