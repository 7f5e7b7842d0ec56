//! The vhost-vdpa uAPI this adapter speaks: message layout, backend feature
//! bits and ioctl numbers, from `include/uapi/linux/vhost_types.h` and
//! `vhost.h`. `tests/uapi_header.rs` checks every value and offset here
//! against the header installed on the machine, compiled by a C compiler.
//!
//! Encoding and decoding are pure and safe: bytes in, bytes out.

use core::fmt;

use vdpa_iova_planner::kernel::{MsgType, RawMsg};

/// The message numbers and backend feature bits, defined in the core beside
/// its model of the kernel.
pub use vdpa_iova_planner::kernel::uapi::{backend, iotlb, VHOST_IOTLB_MSG, VHOST_IOTLB_MSG_V2};

/// Bytes of one message (`struct vhost_msg` and `struct vhost_msg_v2` alike).
pub const MSG_LEN: usize = 72;
/// Offset of `struct vhost_iotlb_msg` in both message versions.
pub const IOTLB_OFFSET: usize = 8;
/// Offset of `asid` in `struct vhost_msg_v2`.
pub const ASID_OFFSET: usize = 4;
/// Offsets inside `struct vhost_iotlb_msg`.
pub const IOVA_OFFSET: usize = 0;
/// See [`IOVA_OFFSET`].
pub const SIZE_OFFSET: usize = 8;
/// See [`IOVA_OFFSET`].
pub const UADDR_OFFSET: usize = 16;
/// See [`IOVA_OFFSET`].
pub const PERM_OFFSET: usize = 24;
/// See [`IOVA_OFFSET`].
pub const TYPE_OFFSET: usize = 25;

/// ioctl numbers (x86_64 encoding), as `rustix` opcodes.
pub mod ioctl {
    use rustix::ioctl::{opcode, Opcode};

    /// The vhost ioctl group.
    pub const VHOST_VIRTIO: u8 = 0xAF;

    /// `struct vhost_vdpa_iova_range`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct IovaRange {
        /// First IOVA.
        pub first: u64,
        /// Last IOVA (inclusive).
        pub last: u64,
    }

    /// `struct vhost_vring_state`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct VringState {
        /// Queue index.
        pub index: u32,
        /// The value (group, asid...).
        pub num: u32,
    }

    /// `VHOST_SET_OWNER`.
    pub const SET_OWNER: Opcode = opcode::none(VHOST_VIRTIO, 0x01);
    /// `VHOST_GET_FEATURES`.
    pub const GET_FEATURES: Opcode = opcode::read::<u64>(VHOST_VIRTIO, 0x00);
    /// `VHOST_SET_BACKEND_FEATURES`.
    pub const SET_BACKEND_FEATURES: Opcode = opcode::write::<u64>(VHOST_VIRTIO, 0x25);
    /// `VHOST_GET_BACKEND_FEATURES`.
    pub const GET_BACKEND_FEATURES: Opcode = opcode::read::<u64>(VHOST_VIRTIO, 0x26);
    /// `VHOST_VDPA_GET_DEVICE_ID`.
    pub const GET_DEVICE_ID: Opcode = opcode::read::<u32>(VHOST_VIRTIO, 0x70);
    /// `VHOST_VDPA_GET_STATUS`.
    pub const GET_STATUS: Opcode = opcode::read::<u8>(VHOST_VIRTIO, 0x71);
    /// `VHOST_VDPA_SET_STATUS`.
    pub const SET_STATUS: Opcode = opcode::write::<u8>(VHOST_VIRTIO, 0x72);
    /// `VHOST_VDPA_GET_IOVA_RANGE`.
    pub const GET_IOVA_RANGE: Opcode = opcode::read::<IovaRange>(VHOST_VIRTIO, 0x78);
    /// `VHOST_VDPA_GET_AS_NUM`.
    pub const GET_AS_NUM: Opcode = opcode::read::<u32>(VHOST_VIRTIO, 0x7A);
    /// `VHOST_VDPA_GET_VRING_GROUP`.
    pub const GET_VRING_GROUP: Opcode = opcode::read_write::<VringState>(VHOST_VIRTIO, 0x7B);
    /// `VHOST_VDPA_SET_GROUP_ASID`.
    pub const SET_GROUP_ASID: Opcode = opcode::write::<VringState>(VHOST_VIRTIO, 0x7C);
    /// `VHOST_VDPA_GET_VQS_COUNT`.
    pub const GET_VQS_COUNT: Opcode = opcode::read::<u32>(VHOST_VIRTIO, 0x80);
    /// `VHOST_VDPA_GET_GROUP_NUM`.
    pub const GET_GROUP_NUM: Opcode = opcode::read::<u32>(VHOST_VIRTIO, 0x81);

    /// Every opcode by its header name, for the header check.
    pub const ALL: [(&str, Opcode); 13] = [
        ("VHOST_SET_OWNER", SET_OWNER),
        ("VHOST_GET_FEATURES", GET_FEATURES),
        ("VHOST_SET_BACKEND_FEATURES", SET_BACKEND_FEATURES),
        ("VHOST_GET_BACKEND_FEATURES", GET_BACKEND_FEATURES),
        ("VHOST_VDPA_GET_DEVICE_ID", GET_DEVICE_ID),
        ("VHOST_VDPA_GET_STATUS", GET_STATUS),
        ("VHOST_VDPA_SET_STATUS", SET_STATUS),
        ("VHOST_VDPA_GET_IOVA_RANGE", GET_IOVA_RANGE),
        ("VHOST_VDPA_GET_AS_NUM", GET_AS_NUM),
        ("VHOST_VDPA_GET_VRING_GROUP", GET_VRING_GROUP),
        ("VHOST_VDPA_SET_GROUP_ASID", SET_GROUP_ASID),
        ("VHOST_VDPA_GET_VQS_COUNT", GET_VQS_COUNT),
        ("VHOST_VDPA_GET_GROUP_NUM", GET_GROUP_NUM),
    ];
}

/// Which message layout the device takes, from the negotiated features.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsgFormat {
    /// `struct vhost_msg` (no `IOTLB_MSG_V2`): no address space field.
    V1,
    /// `struct vhost_msg_v2`; `asid` only when `IOTLB_ASID` was negotiated
    /// (without it the kernel reads the field as padding and uses asid 0).
    V2 {
        /// `IOTLB_ASID` negotiated.
        asid: bool,
    },
}

impl MsgFormat {
    /// The format for a negotiated backend feature mask.
    pub fn from_features(acked: u64) -> Self {
        if acked & (1 << backend::IOTLB_MSG_V2) == 0 {
            MsgFormat::V1
        } else {
            MsgFormat::V2 {
                asid: acked & (1 << backend::IOTLB_ASID) != 0,
            }
        }
    }
}

/// Why a message cannot be encoded or decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodecError {
    /// A non-zero asid in a format that cannot carry one.
    AsidNotNegotiated {
        /// The asid asked for.
        asid: u32,
        /// The format.
        format: MsgFormat,
    },
    /// The outer `type` does not match the format.
    OuterType {
        /// Found.
        found: u32,
        /// Expected.
        expected: u32,
    },
    /// An iotlb `type` userspace never sends (MISS, ACCESS_FAIL, unknown).
    IotlbType {
        /// Found.
        found: u8,
    },
    /// Not 72 bytes.
    Length {
        /// Found.
        found: usize,
    },
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::AsidNotNegotiated { asid, format } => {
                write!(
                    f,
                    "asid {asid} cannot be sent in {format:?} messages (IOTLB_ASID not negotiated)"
                )
            }
            CodecError::OuterType { found, expected } => {
                write!(f, "message type {found}, expected {expected}")
            }
            CodecError::IotlbType { found } => {
                write!(f, "iotlb type {found} is not one userspace sends")
            }
            CodecError::Length { found } => write!(f, "{found} bytes, a message is {MSG_LEN}"),
        }
    }
}

impl std::error::Error for CodecError {}

/// Encodes one message in `format`, native endian as the kernel reads it.
///
/// # Errors
/// [`CodecError::AsidNotNegotiated`] for a non-zero asid the format cannot carry.
pub fn encode(m: &RawMsg, format: MsgFormat) -> Result<[u8; MSG_LEN], CodecError> {
    let mut b = [0u8; MSG_LEN];
    match format {
        MsgFormat::V1 | MsgFormat::V2 { asid: false } if m.asid != 0 => {
            return Err(CodecError::AsidNotNegotiated {
                asid: m.asid,
                format,
            })
        }
        MsgFormat::V1 => b[..4].copy_from_slice(&VHOST_IOTLB_MSG.to_ne_bytes()),
        MsgFormat::V2 { .. } => {
            b[..4].copy_from_slice(&VHOST_IOTLB_MSG_V2.to_ne_bytes());
            b[ASID_OFFSET..ASID_OFFSET + 4].copy_from_slice(&m.asid.to_ne_bytes());
        }
    }
    let at = |o: usize| IOTLB_OFFSET + o;
    b[at(IOVA_OFFSET)..at(IOVA_OFFSET) + 8].copy_from_slice(&m.iova.to_ne_bytes());
    b[at(SIZE_OFFSET)..at(SIZE_OFFSET) + 8].copy_from_slice(&m.size.to_ne_bytes());
    b[at(UADDR_OFFSET)..at(UADDR_OFFSET) + 8].copy_from_slice(&m.uaddr.to_ne_bytes());
    b[at(PERM_OFFSET)] = m.perm;
    b[at(TYPE_OFFSET)] = m.kind.code();
    Ok(b)
}

/// Decodes a message written in `format` (what the kernel would read).
/// Padding is ignored, as the kernel ignores it.
///
/// # Errors
/// A wrong length, outer type, or an iotlb type userspace does not send.
pub fn decode(b: &[u8], format: MsgFormat) -> Result<RawMsg, CodecError> {
    let b: &[u8; MSG_LEN] = b
        .try_into()
        .map_err(|_| CodecError::Length { found: b.len() })?;
    let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let (expected, asid) = match format {
        MsgFormat::V1 => (VHOST_IOTLB_MSG, 0),
        MsgFormat::V2 { asid: false } => (VHOST_IOTLB_MSG_V2, 0),
        MsgFormat::V2 { asid: true } => (VHOST_IOTLB_MSG_V2, u32_at(ASID_OFFSET)),
    };
    let found = u32_at(0);
    if found != expected {
        return Err(CodecError::OuterType { found, expected });
    }
    let t = b[IOTLB_OFFSET + TYPE_OFFSET];
    let kind = MsgType::from_code(t).ok_or(CodecError::IotlbType { found: t })?;
    Ok(RawMsg {
        asid,
        kind,
        iova: u64_at(IOTLB_OFFSET + IOVA_OFFSET),
        size: u64_at(IOTLB_OFFSET + SIZE_OFFSET),
        uaddr: u64_at(IOTLB_OFFSET + UADDR_OFFSET),
        perm: b[IOTLB_OFFSET + PERM_OFFSET],
    })
}

/// Backend features this adapter acks, given what the device offers: every
/// feature it uses that the device has, and only those. `BATCH` and `ASID`
/// need `MSG_V2` (their messages exist only there in this adapter);
/// `DESC_ASID` needs `ASID` (the kernel refuses it alone with EINVAL).
/// `ENABLE_AFTER_DRIVER_OK` is left alone: the adapter never enables rings.
pub fn negotiate(offered: u64) -> u64 {
    let has = |bit: u32| offered & (1u64 << bit) != 0;
    let mut ack = 0u64;
    if has(backend::IOTLB_MSG_V2) {
        ack |= 1 << backend::IOTLB_MSG_V2;
        for bit in [backend::IOTLB_BATCH, backend::IOTLB_ASID] {
            if has(bit) {
                ack |= 1 << bit;
            }
        }
    }
    if has(backend::DESC_ASID) && ack & (1 << backend::IOTLB_ASID) != 0 {
        ack |= 1 << backend::DESC_ASID;
    }
    for bit in [backend::SUSPEND, backend::RESUME, backend::IOTLB_PERSIST] {
        if has(bit) {
            ack |= 1 << bit;
        }
    }
    ack
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The acked backend features pick the message layout.
    #[test]
    fn the_format_follows_the_acked_features() {
        let v2 = 1 << backend::IOTLB_MSG_V2;
        let asid = 1 << backend::IOTLB_ASID;
        assert_eq!(MsgFormat::from_features(0), MsgFormat::V1);
        assert_eq!(MsgFormat::from_features(asid), MsgFormat::V1);
        assert_eq!(MsgFormat::from_features(v2), MsgFormat::V2 { asid: false });
        assert_eq!(
            MsgFormat::from_features(v2 | asid),
            MsgFormat::V2 { asid: true }
        );
        assert_eq!(
            MsgFormat::from_features(v2 | (1 << backend::IOTLB_BATCH)),
            MsgFormat::V2 { asid: false }
        );
    }

    #[test]
    fn codec_errors_say_what_was_wrong() {
        let e = CodecError::AsidNotNegotiated {
            asid: 1,
            format: MsgFormat::V1,
        };
        assert!(
            e.to_string()
                .starts_with("asid 1 cannot be sent in V1 messages"),
            "{e}"
        );
        assert!(CodecError::Length { found: 10 }.to_string().contains("10"));
        let t = CodecError::IotlbType { found: 9 }.to_string();
        assert!(t.contains('9'), "{t}");
        let o = CodecError::OuterType {
            found: 3,
            expected: VHOST_IOTLB_MSG_V2,
        }
        .to_string();
        assert!(o.contains('3'), "{o}");
    }

    fn msg(asid: u32, kind: MsgType) -> RawMsg {
        RawMsg {
            asid,
            kind,
            iova: 0x1122_3344_5566_7788,
            size: 0x1000,
            uaddr: 0x7f00_dead_b000,
            perm: 3,
        }
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn v2_layout_byte_for_byte() {
        let b = encode(&msg(1, MsgType::Update), MsgFormat::V2 { asid: true }).unwrap();
        let mut want = [0u8; 72];
        want[0] = 2; // VHOST_IOTLB_MSG_V2
        want[4] = 1; // asid
        want[8..16].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        want[16..24].copy_from_slice(&0x1000u64.to_le_bytes());
        want[24..32].copy_from_slice(&0x7f00_dead_b000u64.to_le_bytes());
        want[32] = 3; // perm RW
        want[33] = 2; // UPDATE
        assert_eq!(b, want);
    }

    #[test]
    fn asid_only_where_negotiated() {
        for f in [MsgFormat::V1, MsgFormat::V2 { asid: false }] {
            assert!(matches!(
                encode(&msg(1, MsgType::Invalidate), f),
                Err(CodecError::AsidNotNegotiated { asid: 1, .. })
            ));
            let b = encode(&msg(0, MsgType::BatchEnd), f).unwrap();
            assert_eq!(&b[4..8], &[0; 4]);
            assert_eq!(decode(&b, f).unwrap(), msg(0, MsgType::BatchEnd));
        }
        let v1 = encode(&msg(0, MsgType::BatchBegin), MsgFormat::V1).unwrap();
        assert_eq!(v1[0], 1);
        // A v2 reader refuses a v1 message and the other way round.
        assert!(decode(&v1, MsgFormat::V2 { asid: true }).is_err());
    }

    #[test]
    fn decode_refuses_what_userspace_never_sends() {
        let mut b = encode(&msg(0, MsgType::Update), MsgFormat::V2 { asid: true }).unwrap();
        for t in [0u8, iotlb::MISS, iotlb::ACCESS_FAIL, 7, 255] {
            b[33] = t;
            assert_eq!(
                decode(&b, MsgFormat::V2 { asid: true }),
                Err(CodecError::IotlbType { found: t })
            );
        }
        assert_eq!(
            decode(&b[..71], MsgFormat::V1),
            Err(CodecError::Length { found: 71 })
        );
    }

    #[test]
    fn negotiation_acks_only_what_is_offered_and_consistent() {
        let bit = |b: u32| 1u64 << b;
        // vdpa_sim_net as seen on 6.12: 0x17e.
        let sim = 0x17e;
        let ack = negotiate(sim);
        assert_eq!(ack & !sim, 0, "never acks what is not offered");
        assert_eq!(
            ack,
            bit(1) | bit(2) | bit(3) | bit(4) | bit(5) | bit(8),
            "ENABLE_AFTER_DRIVER_OK left alone"
        );
        // A VDUSE blk device: 0xe.
        assert_eq!(negotiate(0xe), 0xe);
        // DESC_ASID without ASID would be EINVAL: not acked.
        assert_eq!(negotiate(bit(1) | bit(7)), bit(1));
        // Without MSG_V2 neither batching nor asid.
        assert_eq!(negotiate(bit(2) | bit(3) | bit(8)), bit(8));
        assert_eq!(
            MsgFormat::from_features(negotiate(0xe)),
            MsgFormat::V2 { asid: true }
        );
        assert_eq!(MsgFormat::from_features(0), MsgFormat::V1);
        assert_eq!(negotiate(u64::MAX) & !0x1be, 0);
        // With ASID, DESC_ASID is acked; everything the adapter uses at once.
        assert_eq!(
            negotiate(bit(1) | bit(3) | bit(7)),
            bit(1) | bit(3) | bit(7)
        );
        assert_eq!(negotiate(u64::MAX), 0x1be);
    }
}
