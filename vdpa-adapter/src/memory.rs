//! Real memory for a scenario's regions and vrings, in this process.
//!
//! `use_va` devices (VDUSE, vdpa_sim with `use_va=1`) map only shared,
//! file-backed memory, so the default is a memfd mapped shared; `--anon`
//! gives private anonymous memory (which the adapter then refuses on such
//! devices, as it must), `--hugepages` a memfd on 2 MiB pages.

use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
use rustix::mm::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};
use vdpa_iova_planner::{PageSize, PlanError, SvqConfig};

/// Bytes of host memory the shadow vrings of `c` take at `c.hva` on a
/// device with pages of `page`: every queue's page-rounded areas, back to
/// back. What the CLI allocates for them, and counts before it allocates.
///
/// # Errors
/// The planner's refusal of `c` ([`SvqConfig::layout`]).
pub fn svq_bytes(c: &SvqConfig, page: PageSize) -> Result<u64, PlanError> {
    c.host_bytes(page)
}

/// How guest memory is backed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Backing {
    /// memfd, mapped shared (what a use_va device needs).
    Memfd,
    /// memfd on huge pages (`MFD_HUGETLB`).
    Hugepages,
    /// Private anonymous memory.
    Anon,
}

/// One mapping this process owns, unmapped on drop.
#[derive(Debug)]
pub struct Mem {
    ptr: *mut u8,
    len: usize,
    _fd: Option<OwnedFd>,
}

impl Mem {
    /// Maps `len` bytes (a page multiple) of fresh memory.
    ///
    /// # Errors
    /// The memfd, truncate or mmap error.
    pub fn new(len: u64, backing: Backing, name: &str) -> io::Result<Mem> {
        // hugetlbfs takes only whole huge pages (ftruncate is EINVAL otherwise).
        let len = match backing {
            Backing::Hugepages => len
                .checked_next_multiple_of(crate::host::procfs::huge_page_size())
                .ok_or_else(|| io::Error::other("size beyond u64"))?,
            _ => len,
        };
        let len = usize::try_from(len).map_err(|_| io::Error::other("size beyond usize"))?;
        let prot = ProtFlags::READ | ProtFlags::WRITE;
        match backing {
            Backing::Anon => {
                // SAFETY: a fresh anonymous mapping at an address the kernel
                // chooses overlaps nothing this program uses.
                let ptr =
                    unsafe { mmap_anonymous(std::ptr::null_mut(), len, prot, MapFlags::PRIVATE) }?;
                Ok(Mem {
                    ptr: ptr.cast(),
                    len,
                    _fd: None,
                })
            }
            Backing::Memfd | Backing::Hugepages => {
                let mut flags = MemfdFlags::CLOEXEC;
                if backing == Backing::Hugepages {
                    flags |= MemfdFlags::HUGETLB;
                }
                let fd = memfd_create(name, flags)?;
                ftruncate(&fd, len as u64)?;
                // SAFETY: a fresh shared mapping of a memfd we just sized, at
                // an address the kernel chooses: it overlaps nothing.
                let ptr =
                    unsafe { mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, &fd, 0) }?;
                Ok(Mem {
                    ptr: ptr.cast(),
                    len,
                    _fd: Some(fd),
                })
            }
        }
    }

    /// Host address of the first byte.
    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }

    /// Bytes.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Whether the mapping is empty (never: `new` refuses zero).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memory, to fill or read back.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live read-write mapping of `len` bytes owned by
        // `self` until drop; `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// Writes the tag of guest address `gpa + offset` at the start of every
    /// page: 8 bytes of address, 8 bytes of `magic`.
    pub fn tag_pages(&mut self, gpa: u64, page: u64, magic: u64) {
        let page = page as usize;
        for (i, chunk) in self.bytes_mut().chunks_mut(page).enumerate() {
            chunk[..8].copy_from_slice(&(gpa + (i * page) as u64).to_le_bytes());
            chunk[8..16].copy_from_slice(&magic.to_le_bytes());
        }
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` is the mapping `new` created; nothing borrows it
        // past `self`. The caller unmapped it from the device before dropping
        // (the applier's safety contract).
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use vdpa_iova_planner::Hva;

    use super::*;

    /// The vrings' memory follows the device's page: each queue's three
    /// areas are rounded up to whole pages, so 64 KiB pages take more.
    #[test]
    fn svq_bytes_follow_the_page_size() {
        let c = SvqConfig {
            queues: 3,
            queue_size: 256,
            hva: Hva(0x7f00_0000_0000),
        };
        assert_eq!(svq_bytes(&c, PageSize::SIZE_4K), Ok(3 * 3 * 4096));
        let big = PageSize::new(64 << 10).unwrap();
        assert_eq!(svq_bytes(&c, big), Ok(3 * 3 * (64 << 10)));
        assert_eq!(svq_bytes(&c, big), c.queue_bytes(big).map(|q| 3 * q));
        assert!(svq_bytes(&SvqConfig { queues: 0, ..c }, PageSize::SIZE_4K).is_err());
    }
}
