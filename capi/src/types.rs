//! The plain structs and constants of the ABI, laid out for C.
//!
//! Every struct is `#[repr(C)]` with explicit `reserved` bytes where C would
//! put padding, so that no byte of a struct crossing the boundary is
//! uninitialised. Reserved bytes of structs passed **in** must be zero
//! (`-EINVAL` otherwise): later versions may give them a meaning. Flags are
//! `uint8_t` 0 or 1, and enumerations are `uint32_t`/`uint8_t` with `#define`d
//! values, so that no value a C caller can write is undefined behaviour on the
//! Rust side; anything else is refused with `-EINVAL`.

/// Strategy: keep guest memory at IOVA == GPA for the VM's whole life and put
/// the shadow vrings in a reserved window (this library's strategy).
pub const VDPA_IOVA_STRATEGY_IDENTITY: u32 = 0;
/// Strategy: what QEMU does today (re-map all guest memory at the switch);
/// the baseline, for comparisons.
pub const VDPA_IOVA_STRATEGY_QEMU: u32 = 1;

/// The parent driver pushes the whole table with `set_map` (mlx5,
/// vdpa_sim, VDUSE).
pub const VDPA_IOVA_MAP_STYLE_SET_MAP: u32 = 0;
/// The parent driver programs each entry with `dma_map`/`dma_unmap`
/// (vdpa_sim with `batch_mapping=0`).
pub const VDPA_IOVA_MAP_STYLE_DMA_MAP: u32 = 1;
/// The kernel maps into a platform IOMMU domain (ifcvf, octeon_ep, pds).
pub const VDPA_IOVA_MAP_STYLE_PLATFORM: u32 = 2;

/// `VHOST_IOTLB_UPDATE`: map `size` bytes at `iova` to `uaddr` with `perm`.
pub const VDPA_IOVA_OP_UPDATE: u8 = 2;
/// `VHOST_IOTLB_INVALIDATE`: unmap exactly the entry mapped at `iova`, `size`.
pub const VDPA_IOVA_OP_INVALIDATE: u8 = 3;
/// `VHOST_IOTLB_BATCH_BEGIN`.
pub const VDPA_IOVA_OP_BATCH_BEGIN: u8 = 5;
/// `VHOST_IOTLB_BATCH_END`.
pub const VDPA_IOVA_OP_BATCH_END: u8 = 6;

/// `VHOST_ACCESS_RO`: the device may only read.
pub const VDPA_IOVA_PERM_RO: u8 = 1;
/// `VHOST_ACCESS_WO`: the device may only write.
pub const VDPA_IOVA_PERM_WO: u8 = 2;
/// `VHOST_ACCESS_RW`: the device may read and write.
pub const VDPA_IOVA_PERM_RW: u8 = 3;

// The C ABI passes the kernel's own values, converted by the core's
// `MsgType::code`/`from_code` and `Perm::to_kernel`/`from_kernel`; cbindgen
// needs the literals above, so the compiler checks that they agree.
const _: () = {
    use vdpa_iova_planner::kernel::uapi::iotlb;
    use vdpa_iova_planner::Perm;
    assert!(VDPA_IOVA_OP_UPDATE == iotlb::UPDATE);
    assert!(VDPA_IOVA_OP_INVALIDATE == iotlb::INVALIDATE);
    assert!(VDPA_IOVA_OP_BATCH_BEGIN == iotlb::BATCH_BEGIN);
    assert!(VDPA_IOVA_OP_BATCH_END == iotlb::BATCH_END);
    assert!(VDPA_IOVA_PERM_RO == Perm::Ro.to_kernel());
    assert!(VDPA_IOVA_PERM_WO == Perm::Wo.to_kernel());
    assert!(VDPA_IOVA_PERM_RW == Perm::Rw.to_kernel());
};

/// Write while the device still runs (before a switch stops it, before
/// hot-plugged memory is announced to the guest, before unplugged memory is
/// freed).
pub const VDPA_IOVA_PHASE_PREPARE: u8 = 0;
/// Write while the device is stopped: the guest's downtime.
pub const VDPA_IOVA_PHASE_CRITICAL: u8 = 1;
/// Write after the device runs again; may be deferred.
pub const VDPA_IOVA_PHASE_BACKGROUND: u8 = 2;

/// Passthrough: the device runs on the guest's own virtqueues.
pub const VDPA_IOVA_MODE_PASSTHROUGH: u32 = 0;
/// Passthrough, with the shadow vrings already mapped.
pub const VDPA_IOVA_MODE_PREPARED: u32 = 1;
/// The device runs on the shadow virtqueues.
pub const VDPA_IOVA_MODE_SVQ: u32 = 2;
/// Migration completed: nothing is mapped any more.
pub const VDPA_IOVA_MODE_COMPLETED: u32 = 3;
/// A migration's destination waiting for the stream: guest memory is known
/// (and, with the identity strategy, mapped); `vdpa_iova_switchover` or
/// `vdpa_iova_start` ends it.
pub const VDPA_IOVA_MODE_INCOMING: u32 = 4;
/// A migration's destination after the source stopped: the guest is paused
/// until `vdpa_iova_start`, and every plan is inside the downtime.
pub const VDPA_IOVA_MODE_SWITCHOVER: u32 = 5;

/// What the device can do (`VHOST_VDPA_GET_IOVA_RANGE`, the negotiated
/// backend features, `VHOST_VDPA_GET_AS_NUM`). `vdpa_iova_caps_default()`
/// fills in a pinning, batching device with the full 64-bit range.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vdpa_iova_caps {
    /// First IOVA the device accepts (`struct vhost_vdpa_iova_range.first`).
    pub range_first: u64,
    /// Last IOVA the device accepts, inclusive (`.last`).
    pub range_last: u64,
    /// Page size every mapping is aligned to: a power of two, at least 4096.
    pub page_size: u64,
    /// Address spaces (`VHOST_VDPA_GET_AS_NUM`; 1 without `IOTLB_ASID`).
    pub address_spaces: u32,
    /// `VDPA_IOVA_MAP_STYLE_*`: how the parent driver programs the device.
    pub map_style: u32,
    /// 1: `VHOST_BACKEND_F_IOTLB_BATCH` negotiated.
    pub batching: u8,
    /// 1: `VHOST_BACKEND_F_DESC_ASID` negotiated.
    pub desc_asid: u8,
    /// 1: `VHOST_BACKEND_F_IOTLB_PERSIST` negotiated.
    pub persist: u8,
    /// 1: mapping pins host pages (real NICs; 0 for VDUSE and `use_va` devices).
    pub pinning: u8,
    /// 1: the control virtqueue is alone in its virtqueue group and the
    /// device has two address spaces (what QEMU's
    /// `vhost_vdpa_probe_cvq_isolation` finds). The control queue is then
    /// shadowed alone in address space 1 for the VM's life: declare its
    /// buffers and shadow vring areas with `vdpa_iova_host_buffers`, bind
    /// its group to address space 1 with `VHOST_VDPA_SET_GROUP_ASID` at
    /// every device start, and count only the data queues in the SVQ config.
    pub cvq_isolated: u8,
    /// Must be zero.
    pub reserved: [u8; 3],
}

/// How the planner is built. `vdpa_iova_options_default()` (or a
/// zeroed struct) gives the identity strategy with no option set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vdpa_iova_options {
    /// `VDPA_IOVA_STRATEGY_*`.
    pub strategy: u32,
    /// 1: the guest has a vIOMMU whose highest guest IOVA is `viommu_last`;
    /// guest memory is then mapped only through `vdpa_iova_viommu_map`.
    pub viommu: u8,
    /// 1: put the shadow vrings in address space 1, apart from guest memory
    /// (identity strategy; needs `desc_asid` and two address spaces).
    pub separate_vring_asid: u8,
    /// Must be zero.
    pub reserved: [u8; 2],
    /// Exclusive end of guest-physical memory, hot-plug area included
    /// (QEMU: the end of the device-memory area sized by `maxmem`); 0: not
    /// known. The identity strategy puts the vrings above it. The QEMU
    /// strategy does not use it.
    pub max_gpa: u64,
    /// With `viommu`: the highest guest IOVA. Must be 0 without `viommu`.
    pub viommu_last: u64,
}

/// A guest memory region (a RAM or ROM `MemoryRegionSection`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vdpa_iova_region {
    /// First guest-physical address (page aligned).
    pub gpa: u64,
    /// Bytes (a non-zero multiple of the page size).
    pub size: u64,
    /// Host virtual address of the first byte, in the process that owns the
    /// vhost-vdpa fd (page aligned).
    pub hva: u64,
    /// 1: ROM-like, the device may only read it.
    pub readonly: u8,
    /// Must be zero.
    pub reserved: [u8; 7],
}

/// The shadow virtqueues: `queues` split vrings of `queue_size` descriptors,
/// back to back in host memory from `hva` (`vdpa_iova_svq_size` bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vdpa_iova_svq_config {
    /// Virtqueues shadowed (data queues and the control queue), 1 to 65536.
    pub queues: u32,
    /// Descriptors per queue: a power of two, at most 32768.
    pub queue_size: u32,
    /// Host address of the first queue's descriptor table (page aligned).
    pub hva: u64,
}

/// One IOTLB message of a plan. The fields map one to one onto
/// `struct vhost_msg_v2`: `asid`, `iotlb.type`, `iotlb.perm`, `iotlb.iova`,
/// `iotlb.size`, `iotlb.uaddr` (with `vhost_msg_v2.type =
/// VHOST_IOTLB_MSG_V2`); `phase` says when to write it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vdpa_iova_op {
    /// Address space.
    pub asid: u32,
    /// `VDPA_IOVA_OP_*` (the `VHOST_IOTLB_*` values).
    pub r#type: u8,
    /// `VDPA_IOVA_PERM_*` (the `VHOST_ACCESS_*` values) for an update, 0 otherwise.
    pub perm: u8,
    /// `VDPA_IOVA_PHASE_*`.
    pub phase: u8,
    /// Zero.
    pub reserved: u8,
    /// First IOVA (0 for batch markers).
    pub iova: u64,
    /// Bytes (0 for batch markers).
    pub size: u64,
    /// Host address of the first byte (updates only, 0 otherwise).
    pub uaddr: u64,
}

/// What a plan costs. Bytes count only on pinning devices.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vdpa_iova_cost {
    /// Bytes pinned by the plan's updates.
    pub pinned_bytes: u64,
    /// Of those, bytes pinned while the device is stopped.
    pub critical_pinned_bytes: u64,
    /// Bytes unpinned by the plan's invalidates.
    pub unpinned_bytes: u64,
    /// Of those, bytes unpinned while the device is stopped.
    pub critical_unpinned_bytes: u64,
    /// Messages, batch markers included.
    pub messages: u64,
    /// Of those, messages written while the device is stopped.
    pub critical_messages: u64,
    /// Batch ends while the device is stopped (a whole-table push each on
    /// `set_map` devices).
    pub critical_batch_ends: u64,
}

/// A guest range translated to device addresses (the SVQ data path).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vdpa_iova_segment {
    /// Device address of the first byte.
    pub iova: u64,
    /// Bytes.
    pub len: u64,
    /// `VDPA_IOVA_PERM_*`.
    pub perm: u8,
    /// Zero.
    pub reserved: [u8; 7],
}

/// One live IOTLB entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vdpa_iova_entry {
    /// Address space.
    pub asid: u32,
    /// `VDPA_IOVA_PERM_*`.
    pub perm: u8,
    /// Zero.
    pub reserved: [u8; 3],
    /// First IOVA.
    pub iova: u64,
    /// Bytes.
    pub size: u64,
    /// Host address of the first byte.
    pub uaddr: u64,
}

/// Host memory the device needs that is neither guest memory nor a vring:
/// the control virtqueue's command buffer (read-only) and status buffer
/// (writable), QEMU's `cvq_cmd_out_buffer` and `status`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vdpa_iova_host_buffer {
    /// Host address of the first byte (page aligned).
    pub hva: u64,
    /// Bytes (a non-zero multiple of the page size).
    pub size: u64,
    /// `VDPA_IOVA_PERM_*`: what the device may do with it.
    pub perm: u8,
    /// Must be zero.
    pub reserved: [u8; 7],
}

/// The C view of one IOTLB entry of address space `asid`.
pub(crate) fn entry(asid: u32, e: &vdpa_iova_planner::Entry) -> vdpa_iova_entry {
    vdpa_iova_entry {
        asid,
        perm: e.perm.to_kernel(),
        reserved: [0; 3],
        iova: e.iova.first().0,
        size: e.iova.size(),
        uaddr: e.hva.0,
    }
}
