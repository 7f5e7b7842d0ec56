//! `/dev/vhost-vdpa-N`: open, probe, negotiate, and write messages.
//!
//! Every ioctl goes through `rustix`'s typed ioctl patterns; the only unsafe
//! code is the ioctl calls themselves (each with a SAFETY comment).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::ioctl::{ioctl, Getter, NoArg, Setter, Updater};
use vdpa_iova_planner::{DeviceCaps, DeviceRange, MapStyle, PageSize};

use crate::error::AdapterError;
use crate::host::sysfs::{self, map_style_of};
use crate::sink::MsgSink;
use crate::uapi::{self, backend, ioctl as op, MsgFormat, MSG_LEN};

/// The page size of the planner's view of every device ([`Probe::caps`]):
/// vhost-vdpa's uAPI reports none, so the adapter plans in 4 KiB pages.
/// Known before a device is opened, so that what a scenario needs on it can
/// be counted first.
pub const PAGE_SIZE: PageSize = PageSize::SIZE_4K;

/// What `probe` learned about a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The device node.
    pub path: PathBuf,
    /// Virtio device id (1 net, 2 blk).
    pub device_id: u32,
    /// Backend features offered.
    pub offered: u64,
    /// Backend features acked (see [`uapi::negotiate`]).
    pub acked: u64,
    /// IOVA range `[first, last]` as the device reported it, unvalidated
    /// (so that `probe` can show a broken one; [`Probe::caps`] checks it).
    pub range: (u64, u64),
    /// Address spaces.
    pub address_spaces: u32,
    /// Virtqueues.
    pub vqs: u32,
    /// Virtqueue groups.
    pub groups: u32,
    /// Group of each virtqueue.
    pub vq_groups: Vec<u32>,
    /// The vDPA parent driver, from sysfs, when found.
    pub parent: Option<String>,
    /// Entries vhost-vdpa allows per address space (its `max_iotlb_entries`
    /// module parameter), `None` when this kernel has no such limit.
    pub max_entries: Option<u64>,
    /// How the parent programs maps ([`map_style_of`]; `set_map` when the
    /// parent is unknown).
    pub map_style: MapStyle,
}

impl Probe {
    /// Whether the device pins what it maps (see [`sysfs::pins_memory`]).
    pub fn pins_memory(&self) -> bool {
        sysfs::pins_memory(self.parent.as_deref())
    }

    /// The message format the acked features select.
    pub fn format(&self) -> MsgFormat {
        MsgFormat::from_features(self.acked)
    }

    /// Whether a net device's control virtqueue is alone in its virtqueue
    /// group, as QEMU's `vhost_vdpa_probe_cvq_isolation` asks: the group of
    /// the control queue differs from every other queue's. Asked before
    /// any feature is negotiated, when parents place the control queue at
    /// index 2 (`VIRTIO_NET_F_MQ` not negotiated: vdpa_sim_net, mlx5), so
    /// the device's state is not touched. A second address space is the
    /// planner's condition ([`Probe::caps`]).
    pub fn cvq_isolated(&self) -> bool {
        const CVQ: usize = 2;
        self.device_id == 1
            && self.vq_groups.len() > CVQ
            && self
                .vq_groups
                .iter()
                .enumerate()
                .all(|(i, &g)| i == CVQ || g != self.vq_groups[CVQ])
    }

    /// The planner's view of the device. `pinning` is whether the parent
    /// pins memory (not visible through the uAPI: vdpa_sim's `use_va`
    /// module parameter, VDUSE never pins).
    ///
    /// # Errors
    /// A range the planner cannot use.
    pub fn caps(&self, pinning: bool) -> Result<DeviceCaps, AdapterError> {
        let has = |b: u32| self.acked & (1u64 << b) != 0;
        let range =
            DeviceRange::new(self.range.0, self.range.1).map_err(|e| AdapterError::Device {
                device: self.path.display().to_string(),
                what: format!("IOVA range: {e}"),
                source: None,
            })?;
        let address_spaces = if has(backend::IOTLB_ASID) {
            self.address_spaces.max(1)
        } else {
            1
        };
        Ok(DeviceCaps {
            range,
            page_size: PAGE_SIZE,
            batching: has(backend::IOTLB_BATCH),
            address_spaces,
            desc_asid: has(backend::DESC_ASID),
            cvq_isolated: address_spaces >= 2 && self.cvq_isolated(),
            persist: has(backend::IOTLB_PERSIST),
            pinning,
            map_style: self.map_style,
        })
    }
}

/// An open `/dev/vhost-vdpa-N` this process owns.
#[derive(Debug)]
pub struct VhostVdpa {
    fd: OwnedFd,
    path: PathBuf,
}

fn dev_err(path: &Path, what: &str, e: io::Error) -> AdapterError {
    AdapterError::Device {
        device: path.display().to_string(),
        what: what.to_string(),
        source: Some(e),
    }
}

impl VhostVdpa {
    /// Opens the device and becomes its owner (`VHOST_SET_OWNER`).
    ///
    /// # Errors
    /// [`AdapterError::Device`] naming the device and the step.
    pub fn open(path: &Path) -> Result<Self, AdapterError> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| dev_err(path, "open", e))?;
        let d = VhostVdpa {
            fd: f.into(),
            path: path.to_path_buf(),
        };
        // SAFETY: SET_OWNER takes no argument; the fd is a vhost device we opened.
        unsafe { ioctl(d.fd.as_fd(), NoArg::<{ op::SET_OWNER }>::new()) }
            .map_err(|e| dev_err(path, "VHOST_SET_OWNER", e.into()))?;
        Ok(d)
    }

    fn get_u32<const OP: rustix::ioctl::Opcode>(&self, what: &str) -> Result<u32, AdapterError> {
        // SAFETY: every opcode passed here is an `_IOR(.., __u32)` of the
        // vhost-vdpa uAPI (checked against the header by tests); the kernel
        // writes exactly one u32 into the Getter's buffer.
        unsafe { ioctl(self.fd.as_fd(), Getter::<OP, u32>::new()) }
            .map_err(|e| dev_err(&self.path, what, e.into()))
    }

    /// Reads what the device offers, acks what the adapter uses
    /// ([`uapi::negotiate`]) and reads the rest of its description.
    ///
    /// # Errors
    /// [`AdapterError::Device`] naming the ioctl that failed.
    pub fn probe(&mut self) -> Result<Probe, AdapterError> {
        self.probe_without(0)
    }

    /// [`VhostVdpa::probe`], leaving the backend features in `withheld`
    /// unacked even when offered (for instance `IOTLB_PERSIST`, to see what
    /// a reset does without it).
    ///
    /// # Errors
    /// As [`VhostVdpa::probe`].
    pub fn probe_without(&mut self, withheld: u64) -> Result<Probe, AdapterError> {
        // SAFETY: `_IOR(VHOST_VIRTIO, 0x26, __u64)`: the kernel writes one u64.
        let offered = unsafe {
            ioctl(
                self.fd.as_fd(),
                Getter::<{ op::GET_BACKEND_FEATURES }, u64>::new(),
            )
        }
        .map_err(|e| dev_err(&self.path, "VHOST_GET_BACKEND_FEATURES", e.into()))?;
        let acked = uapi::negotiate(offered) & !withheld;
        // SAFETY: `_IOW(VHOST_VIRTIO, 0x25, __u64)`: the kernel reads one u64.
        unsafe {
            ioctl(
                self.fd.as_fd(),
                Setter::<{ op::SET_BACKEND_FEATURES }, u64>::new(acked),
            )
        }
        .map_err(|e| dev_err(&self.path, "VHOST_SET_BACKEND_FEATURES", e.into()))?;
        // SAFETY: `_IOR(VHOST_VIRTIO, 0x78, struct vhost_vdpa_iova_range)`,
        // which `IovaRange` mirrors (`#[repr(C)]`, size checked by tests).
        let range = unsafe {
            ioctl(
                self.fd.as_fd(),
                Getter::<{ op::GET_IOVA_RANGE }, op::IovaRange>::new(),
            )
        }
        .map_err(|e| dev_err(&self.path, "VHOST_VDPA_GET_IOVA_RANGE", e.into()))?;
        let device_id = self.get_u32::<{ op::GET_DEVICE_ID }>("VHOST_VDPA_GET_DEVICE_ID")?;
        let vqs = self.get_u32::<{ op::GET_VQS_COUNT }>("VHOST_VDPA_GET_VQS_COUNT")?;
        let groups = self.get_u32::<{ op::GET_GROUP_NUM }>("VHOST_VDPA_GET_GROUP_NUM")?;
        let address_spaces = self.get_u32::<{ op::GET_AS_NUM }>("VHOST_VDPA_GET_AS_NUM")?;
        let mut vq_groups = Vec::with_capacity(vqs as usize);
        // Parents without virtqueue groups (VDUSE on 6.12) refuse
        // GET_VRING_GROUP: every queue is then in group 0.
        for index in 0..vqs {
            let mut st = op::VringState { index, num: 0 };
            // SAFETY: `_IOWR(VHOST_VIRTIO, 0x7B, struct vhost_vring_state)`,
            // which `VringState` mirrors; the kernel reads `index` and writes
            // `num` into the struct we own for the duration of the call.
            let r = unsafe {
                ioctl(
                    self.fd.as_fd(),
                    Updater::<{ op::GET_VRING_GROUP }, op::VringState>::new(&mut st),
                )
            };
            match r {
                Ok(()) => vq_groups.push(st.num),
                Err(_) if groups <= 1 => vq_groups.push(0),
                Err(e) => return Err(dev_err(&self.path, "VHOST_VDPA_GET_VRING_GROUP", e.into())),
            }
        }
        let parent = sysfs::parent_driver(&self.path);
        let map_style = parent.as_deref().map_or(MapStyle::SetMap, map_style_of);
        Ok(Probe {
            path: self.path.clone(),
            device_id,
            offered,
            acked,
            range: (range.first, range.last),
            address_spaces,
            vqs,
            groups,
            vq_groups,
            parent,
            max_entries: sysfs::max_entries(),
            map_style,
        })
    }
}

impl MsgSink for VhostVdpa {
    fn send(&mut self, msg: &[u8; MSG_LEN]) -> io::Result<usize> {
        rustix::io::write(&self.fd, msg).map_err(io::Error::from)
    }

    fn reset(&mut self) -> io::Result<()> {
        crate::sink::set_status(self.fd.as_fd(), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(device_id: u32, vq_groups: Vec<u32>, address_spaces: u32) -> Probe {
        Probe {
            path: "/dev/vhost-vdpa-0".into(),
            device_id,
            offered: 0,
            acked: (1 << backend::IOTLB_MSG_V2) | (1 << backend::IOTLB_ASID),
            range: (0, u64::MAX),
            address_spaces,
            vqs: vq_groups.len() as u32,
            groups: vq_groups.iter().max().map_or(0, |g| g + 1),
            vq_groups,
            parent: None,
            max_entries: None,
            map_style: MapStyle::SetMap,
        }
    }

    /// vdpa_sim_net: RX 0, TX 1 in group 0, the control queue (2) in group
    /// 1, two address spaces. mlx5 before MQ is negotiated: the same at
    /// indexes 0 to 2, and more data queues in group 0.
    #[test]
    fn the_control_queue_is_isolated_when_its_group_is_its_own() {
        let isolated = |p: Probe| p.caps(true).unwrap().cvq_isolated;
        assert!(isolated(probe(1, vec![0, 0, 1], 2)));
        assert!(isolated(probe(1, vec![0, 0, 1, 0, 0], 2)));
        // Shared with a data queue, too few queues, one address space, not a NIC.
        assert!(!isolated(probe(1, vec![0, 1, 1], 2)));
        assert!(!isolated(probe(1, vec![0, 0, 1, 1], 2)));
        assert!(!isolated(probe(1, vec![0, 0, 0], 2)));
        assert!(!isolated(probe(1, vec![0, 1], 2)));
        assert!(!isolated(probe(1, vec![0, 0, 1], 1)));
        assert!(!isolated(probe(2, vec![0, 0, 1], 2)));
        let mut no_asid = probe(1, vec![0, 0, 1], 2);
        no_asid.acked &= !(1 << backend::IOTLB_ASID);
        assert!(!isolated(no_asid));
    }

    /// VDUSE never pins, a NIC's parent does; the probe says which.
    #[test]
    fn pinning_follows_the_parent_driver() {
        let with = |parent: &str| Probe {
            parent: Some(parent.into()),
            ..probe(1, vec![0, 0, 1], 2)
        };
        assert!(!with("vduse").pins_memory());
        assert!(with("mlx5_vdpa").pins_memory());
        assert!(!with("vduse").caps(false).unwrap().pinning);
        let caps = with("mlx5_vdpa").caps(true).unwrap();
        assert!(caps.pinning && !caps.batching && caps.address_spaces == 2);
    }

    #[test]
    fn map_styles_follow_the_parent_driver() {
        assert_eq!(map_style_of("vp_vdpa"), MapStyle::Platform);
        assert_eq!(map_style_of("mlx5_vdpa"), MapStyle::SetMap);
    }
}
