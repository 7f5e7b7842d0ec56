//! One IOTLB message as the kernel reads it: its type and the fields of
//! `struct vhost_iotlb_msg`, and how a planned operation becomes one.

use crate::plan::{Op, OpKind};

use super::uapi;

/// Message types of `struct vhost_iotlb_msg`'s `type` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum MsgType {
    /// `VHOST_IOTLB_UPDATE` (2).
    Update,
    /// `VHOST_IOTLB_INVALIDATE` (3).
    Invalidate,
    /// `VHOST_IOTLB_BATCH_BEGIN` (5).
    BatchBegin,
    /// `VHOST_IOTLB_BATCH_END` (6).
    BatchEnd,
}

impl MsgType {
    /// The value of the `type` field ([`uapi::iotlb`]).
    pub fn code(self) -> u8 {
        match self {
            MsgType::Update => uapi::iotlb::UPDATE,
            MsgType::Invalidate => uapi::iotlb::INVALIDATE,
            MsgType::BatchBegin => uapi::iotlb::BATCH_BEGIN,
            MsgType::BatchEnd => uapi::iotlb::BATCH_END,
        }
    }

    /// The message type a `type` field names, or `None` for a type
    /// userspace never sends (MISS, ACCESS_FAIL) and for unknown values.
    pub fn from_code(code: u8) -> Option<MsgType> {
        match code {
            uapi::iotlb::UPDATE => Some(MsgType::Update),
            uapi::iotlb::INVALIDATE => Some(MsgType::Invalidate),
            uapi::iotlb::BATCH_BEGIN => Some(MsgType::BatchBegin),
            uapi::iotlb::BATCH_END => Some(MsgType::BatchEnd),
            _ => None,
        }
    }
}

/// A message as the kernel receives it: raw fields, nothing validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RawMsg {
    /// Address space.
    pub asid: u32,
    /// Message type.
    pub kind: MsgType,
    /// `iova` field.
    pub iova: u64,
    /// `size` field.
    pub size: u64,
    /// `uaddr` field.
    pub uaddr: u64,
    /// `perm` field.
    pub perm: u8,
}

impl RawMsg {
    /// A BATCH_BEGIN or BATCH_END for `asid` (other fields zero).
    pub fn marker(asid: u32, kind: MsgType) -> RawMsg {
        RawMsg {
            asid,
            kind,
            iova: 0,
            size: 0,
            uaddr: 0,
            perm: 0,
        }
    }
}

impl From<&Op> for RawMsg {
    fn from(op: &Op) -> Self {
        let (kind, iova, size, uaddr, perm) = match op.kind {
            OpKind::BatchBegin => (MsgType::BatchBegin, 0, 0, 0, 0),
            OpKind::BatchEnd => (MsgType::BatchEnd, 0, 0, 0, 0),
            OpKind::Update { iova, hva, perm } => (
                MsgType::Update,
                iova.first().0,
                iova.size(),
                hva.0,
                perm.to_kernel(),
            ),
            OpKind::Invalidate { iova } => (MsgType::Invalidate, iova.first().0, iova.size(), 0, 0),
        };
        RawMsg {
            asid: op.asid,
            kind,
            iova,
            size,
            uaddr,
            perm,
        }
    }
}
