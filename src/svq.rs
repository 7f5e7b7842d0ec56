//! Shadow virtqueue memory: how the vrings the VMM owns are laid out.

use crate::addr::{Address, Hva, Iova, PageSize, Span};
use crate::error::PlanError;
use crate::vocab::Perm;

/// The largest split virtqueue size virtio allows.
pub const MAX_QUEUE_SIZE: u32 = 32768;
/// The most shadow virtqueues one plan may hold (vhost's queue index is 16 bits).
pub const MAX_QUEUES: u32 = 65536;

/// Parameters of the shadow virtqueues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SvqConfig {
    /// Number of virtqueues shadowed (data queues and the control queue).
    pub queues: u32,
    /// Descriptors per queue (a power of two, at most 32768).
    pub queue_size: u32,
    /// Host address of the first queue's descriptor table; queues follow one
    /// another from here (see [`SvqConfig::queue_bytes`]).
    pub hva: Hva,
}

/// Which part of a split vring an area is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum AreaKind {
    /// Descriptor table, 16 bytes a descriptor; the device reads it.
    Desc,
    /// Driver (available) ring, `6 + 2 * size` bytes; the device reads it.
    Driver,
    /// Device (used) ring, `6 + 8 * size` bytes; the device writes it.
    Device,
}

impl AreaKind {
    /// Lower-case name, as in the JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            AreaKind::Desc => "desc",
            AreaKind::Driver => "driver",
            AreaKind::Device => "device",
        }
    }

    /// The access the device needs.
    pub fn perm(self) -> Perm {
        match self {
            AreaKind::Desc | AreaKind::Driver => Perm::Ro,
            AreaKind::Device => Perm::Rw,
        }
    }
}

/// One mapped vring area.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct VringArea {
    /// Address space it is mapped in.
    pub asid: u32,
    /// Queue index (0-based, in the order of the SVQ config).
    pub vq: u32,
    /// Which area.
    pub area: AreaKind,
    /// Where the device sees it.
    pub iova: Span<Iova>,
    /// Where the VMM has it.
    pub hva: Hva,
}

impl VringArea {
    /// The access the device has to it.
    pub fn perm(&self) -> Perm {
        self.area.perm()
    }
}

/// Page-rounded byte sizes of one queue's three areas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLayout {
    /// Descriptor table bytes, page rounded.
    pub desc: u64,
    /// Driver area bytes, page rounded.
    pub driver: u64,
    /// Device area bytes, page rounded.
    pub device: u64,
}

impl QueueLayout {
    /// Bytes of one queue (all three areas).
    pub fn total(&self) -> u64 {
        self.desc + self.driver + self.device
    }

    /// The read-only part: descriptor table then driver area.
    pub fn ro(&self) -> u64 {
        self.desc + self.driver
    }
}

impl SvqConfig {
    /// Checks the parameters and returns the per-queue layout.
    ///
    /// # Errors
    /// [`PlanError::BadSvqConfig`] for zero or too many queues, a queue size
    /// that is not a power of two up to 32768; [`PlanError::Unaligned`] or
    /// [`PlanError::Wraps`] when the host memory is not page aligned or
    /// would pass `2^64 - 1`.
    pub fn layout(&self, page: PageSize) -> Result<QueueLayout, PlanError> {
        let bad = |reason| PlanError::BadSvqConfig {
            queues: self.queues,
            queue_size: self.queue_size,
            reason,
        };
        if self.queues == 0 {
            return Err(bad("no queue"));
        }
        if self.queues > MAX_QUEUES {
            return Err(bad("more than 65536 queues"));
        }
        if !self.queue_size.is_power_of_two() || self.queue_size > MAX_QUEUE_SIZE {
            return Err(bad("queue size must be a power of two of at most 32768"));
        }
        let n = u64::from(self.queue_size);
        let up = |b: u64| page.align_up(b).expect("at most a few hundred KiB");
        let l = QueueLayout {
            desc: up(16 * n),
            driver: up(6 + 2 * n),
            device: up(6 + 8 * n),
        };
        // The whole block of host memory must be a valid span.
        let total = l.total() * u64::from(self.queues);
        Span::new(self.hva, total, page)?;
        Ok(l)
    }

    /// Bytes of one queue (page rounded areas, back to back).
    ///
    /// # Errors
    /// As [`SvqConfig::layout`].
    pub fn queue_bytes(&self, page: PageSize) -> Result<u64, PlanError> {
        self.layout(page).map(|l| l.total())
    }

    /// Bytes of host memory the vrings take: every queue's block, back to
    /// back from [`SvqConfig::hva`]. The one count of it (the adapter's
    /// room check and the C ABI's `vdpa_iova_svq_size` use it).
    ///
    /// # Errors
    /// As [`SvqConfig::layout`], which also checks that the whole block
    /// fits below 2^64.
    pub fn host_bytes(&self, page: PageSize) -> Result<u64, PlanError> {
        // layout() checked total * queues as a span: no overflow.
        self.layout(page)
            .map(|l| l.total() * u64::from(self.queues))
    }

    /// Host address of queue `vq`'s descriptor table.
    pub(crate) fn queue_hva(&self, l: &QueueLayout, vq: u32) -> Hva {
        Hva(self.hva.raw() + u64::from(vq) * l.total())
    }
}

/// The three areas of queue `vq` whose block starts at `iova`.
pub(crate) fn areas(
    cfg: &SvqConfig,
    l: &QueueLayout,
    asid: u32,
    vq: u32,
    iova: u64,
) -> [VringArea; 3] {
    let h = cfg.queue_hva(l, vq).raw();
    [
        VringArea {
            asid,
            vq,
            area: AreaKind::Desc,
            iova: Span::trusted(iova, l.desc),
            hva: Hva(h),
        },
        VringArea {
            asid,
            vq,
            area: AreaKind::Driver,
            iova: Span::trusted(iova + l.desc, l.driver),
            hva: Hva(h + l.desc),
        },
        VringArea {
            asid,
            vq,
            area: AreaKind::Device,
            iova: Span::trusted(iova + l.ro(), l.device),
            hva: Hva(h + l.ro()),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_256_entries_is_three_pages() {
        let c = SvqConfig {
            queues: 4,
            queue_size: 256,
            hva: Hva(0x7e00_0000_0000),
        };
        let l = c.layout(PageSize::SIZE_4K).unwrap();
        assert_eq!((l.desc, l.driver, l.device), (4096, 4096, 4096));
        let c = SvqConfig {
            queue_size: 1024,
            ..c
        };
        let l = c.layout(PageSize::SIZE_4K).unwrap();
        // 16 KiB of descriptors, 2054 -> 4 KiB driver, 8198 -> 12 KiB device.
        assert_eq!((l.desc, l.driver, l.device), (16384, 4096, 12288));
        let a = areas(&c, &l, 0, 1, 0x10_0000);
        assert_eq!(a[0].hva, Hva(0x7e00_0000_0000 + 32768));
        assert_eq!(a[2].iova.first(), Iova(0x10_0000 + 20480));
        assert_eq!(a[2].perm(), Perm::Rw);
    }

    #[test]
    fn bad_configs() {
        let ok = SvqConfig {
            queues: 1,
            queue_size: 256,
            hva: Hva(0x1000),
        };
        let p = PageSize::SIZE_4K;
        assert!(SvqConfig { queues: 0, ..ok }.layout(p).is_err());
        assert!(SvqConfig {
            queue_size: 0,
            ..ok
        }
        .layout(p)
        .is_err());
        assert!(SvqConfig {
            queue_size: 100,
            ..ok
        }
        .layout(p)
        .is_err());
        assert!(SvqConfig {
            queue_size: 65536,
            ..ok
        }
        .layout(p)
        .is_err());
        assert!(SvqConfig {
            hva: Hva(0x1001),
            ..ok
        }
        .layout(p)
        .is_err());
        assert!(SvqConfig {
            hva: Hva(u64::MAX - 0xfff),
            ..ok
        }
        .layout(p)
        .is_err());
    }

    /// The largest allowed values are allowed: 65536 queues (vhost's 16-bit
    /// queue index), 32768 descriptors (virtio's split ring limit); one more
    /// is refused.
    #[test]
    fn the_limits_are_inclusive() {
        let p = PageSize::SIZE_4K;
        let c = |queues, queue_size| SvqConfig {
            queues,
            queue_size,
            hva: Hva(0x1000),
        };
        assert!(c(MAX_QUEUES, 256).layout(p).is_ok());
        assert!(matches!(
            c(MAX_QUEUES + 1, 256).layout(p),
            Err(PlanError::BadSvqConfig { .. })
        ));
        let l = c(1, MAX_QUEUE_SIZE).layout(p).unwrap();
        // 512 KiB of descriptors; 6 + 2 * 32768 bytes of driver area and
        // 6 + 8 * 32768 of device area, each rounded up to the next page.
        assert_eq!((l.desc, l.driver, l.device), (0x8_0000, 0x1_1000, 0x4_1000));
        assert_eq!(
            c(3, MAX_QUEUE_SIZE).queue_bytes(p),
            Ok(0x8_0000 + 0x1_1000 + 0x4_1000)
        );
        assert_eq!(
            c(3, MAX_QUEUE_SIZE).host_bytes(p),
            Ok(3 * (0x8_0000 + 0x1_1000 + 0x4_1000)),
            "every queue's block, back to back"
        );
        assert!(c(0, 256).host_bytes(p).is_err());
        assert_eq!(c(2, 256).queue_bytes(p), Ok(3 * 4096));
        assert!(c(0, 256).queue_bytes(p).is_err());
    }
}
