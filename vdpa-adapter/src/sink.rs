//! Where a plan's messages go: a real device ([`crate::device::VhostVdpa`]),
//! a file descriptor a VMM already owns ([`FdSink`]), or the kernel model
//! ([`ModelDevice`], and `FaultyDevice` with the `test-utils` feature for
//! rollback tests).

use std::io;
use std::os::fd::BorrowedFd;

use rustix::ioctl::{ioctl, Setter};

use vdpa_iova_planner::kernel::KernelIotlb;
use vdpa_iova_planner::{DeviceCaps, Entry};

use crate::uapi::{self, ioctl as op, MsgFormat, MSG_LEN};

/// Where a plan's messages go: a real device, or (for dry runs and tests)
/// the kernel model behind [`ModelDevice`].
pub trait MsgSink {
    /// Writes one 72-byte message; returns the bytes the kernel took.
    ///
    /// # Errors
    /// The kernel's refusal (EFAULT for every IOTLB rule).
    fn send(&mut self, msg: &[u8; MSG_LEN]) -> io::Result<usize>;
    /// Resets the device (status 0): a real device is reset, a model
    /// forgets what a real device forgets.
    ///
    /// # Errors
    /// The reset's error.
    fn reset(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<T: MsgSink + ?Sized> MsgSink for &mut T {
    fn send(&mut self, msg: &[u8; MSG_LEN]) -> io::Result<usize> {
        (**self).send(msg)
    }

    fn reset(&mut self) -> io::Result<()> {
        (**self).reset()
    }
}

/// A vhost-vdpa file descriptor the VMM already owns (a rust-vmm `vhost`
/// handle, say): messages are written to it with `write(2)`, without opening
/// the device or becoming its owner again. The VMM has negotiated the
/// backend features; pass the matching [`MsgFormat`] to the applier.
#[derive(Clone, Copy, Debug)]
pub struct FdSink<'fd> {
    fd: BorrowedFd<'fd>,
}

impl<'fd> FdSink<'fd> {
    /// Writes to `fd`, which must be an open `/dev/vhost-vdpa-N` whose
    /// owner is this process.
    pub fn new(fd: BorrowedFd<'fd>) -> Self {
        FdSink { fd }
    }
}

impl MsgSink for FdSink<'_> {
    fn send(&mut self, msg: &[u8; MSG_LEN]) -> io::Result<usize> {
        rustix::io::write(self.fd, msg).map_err(io::Error::from)
    }

    fn reset(&mut self) -> io::Result<()> {
        set_status(self.fd, 0)
    }
}

/// Every entry of every address space of the model (at most 64 looked at).
pub fn tables(k: &KernelIotlb, spaces: u32) -> Vec<(u32, Entry)> {
    (0..spaces.min(64))
        .flat_map(|a| k.entries(a).map(move |e| (a, *e)))
        .collect()
}

/// The kernel model as a device: what `--dry-run` sends plans to. It decodes
/// each message exactly as the kernel would read it and refuses, with
/// EFAULT, what the kernel refuses.
#[derive(Clone, Debug)]
pub struct ModelDevice {
    /// The kernel's IOTLB.
    pub kernel: KernelIotlb,
    format: MsgFormat,
    /// Messages received.
    pub received: usize,
}

impl ModelDevice {
    /// An empty device.
    pub fn new(caps: &DeviceCaps, format: MsgFormat) -> Self {
        ModelDevice {
            kernel: KernelIotlb::permissive(caps),
            format,
            received: 0,
        }
    }
}

impl MsgSink for ModelDevice {
    fn send(&mut self, msg: &[u8; MSG_LEN]) -> io::Result<usize> {
        self.received += 1;
        let m = uapi::decode(msg, self.format).map_err(|_| efault())?;
        self.kernel.apply_raw(&m).map_err(|_| efault())?;
        Ok(MSG_LEN)
    }

    fn reset(&mut self) -> io::Result<()> {
        self.kernel.reset_device();
        Ok(())
    }
}

fn efault() -> io::Error {
    io::Error::from_raw_os_error(14)
}

/// A [`ModelDevice`] that fails on purpose: the message with index
/// `fail_at` (counting every message received) is refused with EFAULT, or
/// taken short when `short` is set. For rollback tests.
#[cfg(any(test, feature = "test-utils"))]
#[derive(Clone, Debug)]
pub struct FaultyDevice {
    /// The device behind.
    pub inner: ModelDevice,
    /// Index of the message to refuse.
    pub fail_at: Option<usize>,
    /// Take that message short (36 bytes) instead of refusing it.
    pub short: bool,
}

#[cfg(any(test, feature = "test-utils"))]
impl MsgSink for FaultyDevice {
    fn send(&mut self, msg: &[u8; MSG_LEN]) -> io::Result<usize> {
        if self.fail_at == Some(self.inner.received) {
            self.inner.received += 1;
            return if self.short {
                Ok(MSG_LEN / 2)
            } else {
                Err(efault())
            };
        }
        self.inner.send(msg)
    }

    fn reset(&mut self) -> io::Result<()> {
        self.inner.reset()
    }
}

/// `VHOST_VDPA_SET_STATUS`: status 0 resets the device.
///
/// # Errors
/// The ioctl's error.
pub fn set_status(fd: BorrowedFd<'_>, status: u8) -> io::Result<()> {
    // SAFETY: `_IOW(VHOST_VIRTIO, 0x72, __u8)`: the kernel reads one byte,
    // which `Setter` owns for the duration of the call.
    unsafe { ioctl(fd, Setter::<{ op::SET_STATUS }, u8>::new(status)) }.map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::AsFd;

    use vdpa_iova_planner::{Hva, Iova, Op, OpKind, PageSize, Perm, Phase, Span};

    use super::*;
    use vdpa_iova_planner::kernel::RawMsg;

    use crate::uapi::encode;

    fn update(asid: u32, iova: u64) -> [u8; MSG_LEN] {
        let op = Op {
            phase: Phase::Prepare,
            asid,
            kind: OpKind::Update {
                iova: Span::new(Iova(iova), 0x1000, PageSize::SIZE_4K).unwrap(),
                hva: Hva(0x7000_0000 + iova),
                perm: Perm::Rw,
            },
        };
        encode(&RawMsg::from(&op), MsgFormat::V2 { asid: true }).unwrap()
    }

    /// An fd the VMM owns takes each message whole, with `write(2)`; a
    /// reset is `VHOST_VDPA_SET_STATUS`, which a socket refuses (ENOTTY).
    #[test]
    fn an_fd_sink_writes_whole_messages() {
        let (mut rd, wr) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut s = FdSink::new(wr.as_fd());
        let m = update(1, 0x4000);
        assert_eq!(s.send(&m).unwrap(), MSG_LEN);
        let mut got = [0u8; MSG_LEN];
        rd.read_exact(&mut got).unwrap();
        assert_eq!(got, m);
        assert!(s.reset().is_err());
        assert!(set_status(wr.as_fd(), 0).is_err());
    }

    /// The model device decodes, applies and counts; a reset forgets the
    /// device's own maps; a `&mut` sink is the sink it borrows.
    #[test]
    fn the_model_device_and_a_borrowed_sink() {
        let caps = DeviceCaps {
            address_spaces: 2,
            ..DeviceCaps::default()
        };
        let mut d = ModelDevice::new(&caps, MsgFormat::V2 { asid: true });
        {
            let mut r = &mut d;
            assert_eq!(MsgSink::send(&mut r, &update(0, 0x1000)).unwrap(), MSG_LEN);
            assert_eq!(MsgSink::send(&mut r, &update(0, 0x8000)).unwrap(), MSG_LEN);
            assert_eq!(MsgSink::send(&mut r, &update(1, 0x1000)).unwrap(), MSG_LEN);
        }
        assert_eq!(d.received, 3);
        let t = tables(&d.kernel, 2);
        let asids: Vec<u32> = t.iter().map(|(a, _)| *a).collect();
        assert_eq!(asids, vec![0, 0, 1]);
        assert_eq!(t[1].1.iova.first(), Iova(0x8000));
        // The same map again overlaps: EFAULT, as the kernel answers.
        let e = d.send(&update(0, 0x1000)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(14));
        assert!(!d.kernel.device_stale(0));
        {
            let mut r = &mut d;
            MsgSink::reset(&mut r).unwrap();
        }
        assert!(d.kernel.device_stale(0) && d.kernel.device_stale(1));
    }
}
