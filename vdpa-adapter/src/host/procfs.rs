//! `/proc`: this process's limits, mappings and the host's memory.

/// Limits that decide whether a plan can pin what it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `RLIMIT_MEMLOCK` (soft), bytes; `None` when unlimited.
    pub memlock: Option<u64>,
    /// Bytes this process has pinned now (`VmPin` of `/proc/self/status`),
    /// this device's maps included.
    pub pinned_now: u64,
    /// Entries vhost-vdpa allows per address space (its `max_iotlb_entries`
    /// module parameter, see [`crate::host::physmem`]); `None` when unlimited.
    pub max_entries: Option<u64>,
}

impl Limits {
    /// This process's limits now.
    pub fn current() -> Limits {
        let l = rustix::process::getrlimit(rustix::process::Resource::Memlock);
        Limits {
            memlock: l.current,
            pinned_now: proc_bytes("/proc/self/status", "VmPin:").unwrap_or(0),
            max_entries: super::sysfs::max_entries(),
        }
    }
}

/// One line of `/proc/self/maps` that matters here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `s` in the flags: shared.
    pub shared: bool,
    /// Backed by a file (inode not 0): memfd, hugetlbfs, shm, a regular file.
    pub file_backed: bool,
    /// The path column, for messages.
    pub name: String,
}

/// Parses `/proc/self/maps` text.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (range, perms, _off, _dev, inode) =
                (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
            let name = f.collect::<Vec<_>>().join(" ");
            let (a, b) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(a, 16).ok()?,
                end: u64::from_str_radix(b, 16).ok()?,
                shared: perms.as_bytes().get(3) == Some(&b's'),
                file_backed: inode != "0",
                name,
            })
        })
        .collect()
}

/// The first byte of `[hva, hva + size)` that is not in a shared,
/// file-backed mapping, with what is there (`None`: nothing mapped).
pub fn first_unshared(maps: &[Mapping], hva: u64, size: u64) -> Option<(u64, Option<Mapping>)> {
    let end = hva.checked_add(size)?;
    let mut cur = hva;
    while cur < end {
        match maps.iter().find(|m| m.start <= cur && cur < m.end) {
            Some(m) if m.shared && m.file_backed => cur = m.end,
            Some(m) => return Some((cur, Some(m.clone()))),
            None => return Some((cur, None)),
        }
    }
    None
}

/// The default huge page size (`Hugepagesize` of `/proc/meminfo`), 2 MiB
/// when it cannot be read.
pub fn huge_page_size() -> u64 {
    proc_bytes("/proc/meminfo", "Hugepagesize:").unwrap_or(2 << 20)
}

/// A `Key:   N kB` line of a `/proc` file (`/proc/meminfo`,
/// `/proc/self/status`), in bytes.
pub fn proc_bytes(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let kb = text.lines().find_map(|l| l.strip_prefix(key))?;
    let kb = kb
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    kb.checked_mul(1024)
}

/// Bytes of memory available for new allocations (`MemAvailable`).
pub fn mem_available() -> Option<u64> {
    proc_bytes("/proc/meminfo", "MemAvailable:")
}

/// Bytes of free huge pages of the default size (`HugePages_Free` times
/// `Hugepagesize`).
pub fn free_huge_pages() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let n = text
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))?
        .trim()
        .parse::<u64>()
        .ok()?;
    n.checked_mul(huge_page_size())
}
