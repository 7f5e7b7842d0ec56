//! A VDUSE block device served by a thread of this process, bound to
//! vhost-vdpa, and the walk of its IOTLB with `VDUSE_IOTLB_GET_FD`: the
//! device `vduse-readback` plays scenarios on and `kernel-diff` holds the
//! kernel model to. Each names its own device, so both can run.

use std::ffi::c_void;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::process::Command;

use rustix::ioctl::{ioctl, opcode, Ioctl, IoctlOutput, Opcode, Setter};
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};

const BASE: u8 = 0x81;
const PAGE: u64 = 4096;

#[repr(C)]
struct DevConfig {
    name: [u8; 256],
    vendor_id: u32,
    device_id: u32,
    features: u64,
    vq_num: u32,
    vq_align: u32,
    reserved: [u32; 13],
    config_size: u32,
    /// `struct virtio_blk_config` (60 bytes), all zero.
    config: [u8; 60],
}

#[repr(C)]
#[derive(Default)]
struct VqConfig {
    index: u32,
    max_size: u16,
    reserved: [u16; 13],
}

/// `struct vduse_iotlb_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IotlbEntry {
    /// Offset of the entry's first byte in the file returned with it.
    pub offset: u64,
    /// First IOVA.
    pub start: u64,
    /// Last IOVA.
    pub last: u64,
    /// Perm as the device holds it.
    pub perm: u8,
}

/// The ioctl opcodes encode the size of the header struct only (the
/// config bytes follow it), as `_IOW(0x81, 0x02, struct vduse_dev_config)`.
const CREATE_DEV: Opcode = opcode::write::<[u8; 336]>(BASE, 0x02);
const DESTROY_DEV: Opcode = opcode::write::<[u8; 256]>(BASE, 0x03);
const SET_API_VERSION: Opcode = opcode::write::<u64>(BASE, 0x01);
const VQ_SETUP: Opcode = opcode::write::<VqConfig>(BASE, 0x14);
const IOTLB_GET_FD: Opcode = opcode::read_write::<IotlbEntry>(BASE, 0x10);

/// `VDUSE_IOTLB_GET_FD` returns a new file descriptor as the ioctl's value.
struct GetFd(IotlbEntry);

// SAFETY: the opcode is `_IOWR(0x81, 0x10, struct vduse_iotlb_entry)` and
// `as_ptr` points at a `#[repr(C)]` mirror of that struct owned by `self`;
// the kernel's return value is a new file descriptor we take ownership of.
unsafe impl Ioctl for GetFd {
    type Output = (OwnedFd, IotlbEntry);
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        IOTLB_GET_FD
    }

    fn as_ptr(&mut self) -> *mut c_void {
        (&mut self.0 as *mut IotlbEntry).cast()
    }

    unsafe fn output_from_ptr(
        out: IoctlOutput,
        ptr: *mut c_void,
    ) -> rustix::io::Result<Self::Output> {
        // SAFETY: `out` is the fd the kernel installed for us (a successful
        // GET_FD), and `ptr` is the entry `as_ptr` gave, filled by the kernel.
        unsafe { Ok((OwnedFd::from_raw_fd(out), *ptr.cast::<IotlbEntry>())) }
    }
}

/// One IOTLB entry of the device and the first 16 bytes of each of its pages.
pub type ReadBack = (IotlbEntry, Vec<[u8; 16]>);

/// `name` as `char[256]`, NUL-padded (VDUSE takes at most 255 bytes).
fn name_bytes(name: &str) -> [u8; 256] {
    let mut n = [0u8; 256];
    let len = name.len().min(255);
    n[..len].copy_from_slice(&name.as_bytes()[..len]);
    n
}

/// The VDUSE device, its vhost-vdpa node, and a handle for the walk. Dropping
/// it removes the device (see [`destroy`]).
pub struct Vduse {
    dev: File,
    name: &'static str,
    /// `/dev/vhost-vdpa-N` of the device.
    pub node: String,
}

impl Vduse {
    /// Creates the device `name` (removing one of that name an earlier run
    /// left), serves its requests (every one answered OK) from a thread,
    /// and binds it to vhost-vdpa with iproute2's `vdpa`.
    pub fn create(name: &'static str) -> Result<Vduse, String> {
        destroy(name);
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/vduse/control")
            .map_err(|e| format!("/dev/vduse/control: {e}"))?;
        // SAFETY: `_IOW(0x81, 0x01, __u64)`: the kernel reads one u64.
        unsafe { ioctl(control.as_fd(), Setter::<SET_API_VERSION, u64>::new(0)) }
            .map_err(|e| format!("VDUSE_SET_API_VERSION: {e}"))?;
        let cfg = DevConfig {
            name: name_bytes(name),
            vendor_id: 0,
            device_id: 2,
            features: (1 << 32) | (1 << 33), // VERSION_1 | ACCESS_PLATFORM
            vq_num: 1,
            vq_align: 4096,
            reserved: [0; 13],
            config_size: 60,
            config: [0; 60],
        };
        // SAFETY: the kernel reads the 336-byte header and then
        // `config_size` bytes of config, which `DevConfig` holds right after
        // it (`#[repr(C)]`).
        unsafe { ioctl(control.as_fd(), Setter::<CREATE_DEV, DevConfig>::new(cfg)) }
            .map_err(|e| format!("VDUSE_CREATE_DEV: {e}"))?;
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/dev/vduse/{name}"))
            .map_err(|e| format!("/dev/vduse/{name}: {e}"))?;
        let vq = VqConfig {
            index: 0,
            max_size: 256,
            ..VqConfig::default()
        };
        // SAFETY: `_IOW(0x81, 0x14, struct vduse_vq_config)`, mirrored by `VqConfig`.
        unsafe { ioctl(dev.as_fd(), Setter::<VQ_SETUP, VqConfig>::new(vq)) }
            .map_err(|e| format!("VDUSE_VQ_SETUP: {e}"))?;
        let walk = dev.try_clone().map_err(|e| e.to_string())?;
        std::thread::spawn(move || {
            let mut dev = dev;
            let mut req = [0u8; 152];
            while dev.read_exact(&mut req).is_ok() {
                let mut resp = [0u8; 152];
                resp[..4].copy_from_slice(&req[4..8]);
                if rustix::io::write(&dev, &resp).is_err() {
                    break;
                }
            }
        });
        drop(control);
        let st = Command::new("vdpa")
            .args(["dev", "add", "name", name, "mgmtdev", "vduse"])
            .status();
        if !st.is_ok_and(|s| s.success()) {
            return Err("vdpa dev add".into());
        }
        let node = std::fs::read_dir(format!("/sys/bus/vdpa/devices/{name}"))
            .ok()
            .and_then(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .find(|n| n.starts_with("vhost-vdpa-"))
            })
            .ok_or("no vhost-vdpa device for the VDUSE device")?;
        Ok(Vduse {
            dev: walk,
            name,
            node: format!("/dev/{node}"),
        })
    }

    /// The device's IOTLB: every entry, and the first 16 bytes of each of
    /// its pages read through the device's own mapping, for entries of at
    /// most `tagged` bytes (a larger one comes with no tags: compare it by
    /// its range and perm).
    pub fn read_back(&self, tagged: u64) -> Result<Vec<ReadBack>, String> {
        let mut out = Vec::new();
        let mut start = 0u64;
        loop {
            let q = IotlbEntry {
                start,
                last: u64::MAX,
                ..IotlbEntry::default()
            };
            // SAFETY: see `GetFd`.
            let (fd, e) = match unsafe { ioctl(self.dev.as_fd(), GetFd(q)) } {
                Ok(v) => v,
                Err(rustix::io::Errno::INVAL) => break,
                Err(err) => return Err(format!("VDUSE_IOTLB_GET_FD at {start:#x}: {err}")),
            };
            let len = e.last.wrapping_sub(e.start).wrapping_add(1);
            let mut tags = Vec::new();
            if len != 0 && len <= tagged {
                let len = len as usize;
                // SAFETY: a fresh read-only shared mapping of the file the
                // device maps at this entry, at the offset the kernel gave;
                // unmapped below.
                let p = unsafe {
                    mmap(
                        std::ptr::null_mut(),
                        len,
                        ProtFlags::READ,
                        MapFlags::SHARED,
                        &fd,
                        e.offset,
                    )
                }
                .map_err(|err| format!("mmap of entry {:#x}: {err}", e.start))?;
                for k in 0..len.div_ceil(PAGE as usize) {
                    let mut t = [0u8; 16];
                    let n = 16.min(len - k * PAGE as usize);
                    // SAFETY: `p` maps `len` readable bytes and
                    // `k * PAGE + n <= len`.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            p.cast::<u8>().add(k * PAGE as usize),
                            t.as_mut_ptr(),
                            n,
                        )
                    };
                    tags.push(t);
                }
                // SAFETY: the mapping made above, no longer used.
                let _ = unsafe { munmap(p, len) };
            }
            out.push((e, tags));
            match e.last.checked_add(1) {
                Some(n) => start = n,
                None => break,
            }
        }
        Ok(out)
    }
}

impl Drop for Vduse {
    fn drop(&mut self) {
        destroy(self.name);
    }
}

/// Removes the device `name` (and one an earlier run left). The device
/// cannot go while a process holds it open: the thread serving it keeps it
/// until this process exits, so `kernel-diff --vduse-cleanup` removes it
/// after.
pub fn destroy(name: &str) {
    let _ = Command::new("vdpa").args(["dev", "del", name]).output();
    if let Ok(c) = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/vduse/control")
    {
        // SAFETY: `_IOW(0x81, 0x03, char[256])`: the kernel reads the name.
        let _ = unsafe {
            ioctl(
                c.as_fd(),
                Setter::<DESTROY_DEV, [u8; 256]>::new(name_bytes(name)),
            )
        };
    }
}
