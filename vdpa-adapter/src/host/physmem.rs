//! Where this process's memory lies physically, from `/proc/self/pagemap`.
//!
//! A pinning device (vhost-vdpa with `use_va` off) turns one UPDATE into one
//! table entry per *physically contiguous run* of the pinned pages, and
//! vhost-vdpa caps each address space at `max_iotlb_entries` entries (a
//! `vhost_vdpa` module parameter, 2048 by default, on kernels with the 2026
//! fix "vhost_iotlb: bound map allocation in add_range", such as Debian's
//! 6.12.117; older kernels have no limit). How many
//! runs a host range has depends on how fragmented memory was when its pages
//! were allocated, so no plan can know it. When the kernel refuses a pinned
//! UPDATE, the adapter counts the runs here to say whether that limit was the
//! cause. Reading page frame numbers needs `CAP_SYS_ADMIN`; without it the
//! kernel shows them as 0 and [`contiguous_runs`] answers `None`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const PAGE: u64 = 4096;
const PFN_MASK: u64 = (1 << 55) - 1;
const PRESENT: u64 = 1 << 63;

/// The number of physically contiguous runs of 4 KiB pages in
/// `[hva, hva + size)` of this process, or `None` when the kernel hides page
/// frame numbers (no `CAP_SYS_ADMIN`) or a page is not present.
///
/// # Errors
/// Reading `/proc/self/pagemap` failed.
pub fn contiguous_runs(hva: u64, size: u64) -> io::Result<Option<u64>> {
    if size == 0 {
        return Ok(Some(0));
    }
    let f = File::open("/proc/self/pagemap")?;
    let first = hva / PAGE;
    let last = (hva + (size - 1)) / PAGE;
    let mut runs = RunCounter::default();
    let mut buf = vec![0u8; 8 * 4096];
    let mut page = first;
    while page <= last {
        let n = (last - page + 1).min(4096);
        let chunk = &mut buf[..8 * n as usize];
        f.read_exact_at(chunk, page * 8)?;
        for e in chunk.chunks_exact(8) {
            let e = u64::from_le_bytes(e.try_into().expect("8 bytes"));
            if e & PRESENT == 0 || e & PFN_MASK == 0 {
                return Ok(None);
            }
            runs.push(e & PFN_MASK);
        }
        page += n;
    }
    Ok(Some(runs.runs))
}

/// Counts runs of consecutive page frame numbers.
#[derive(Debug, Default)]
pub struct RunCounter {
    last: Option<u64>,
    /// Runs so far.
    pub runs: u64,
}

impl RunCounter {
    /// Adds the next page's frame number.
    pub fn push(&mut self, pfn: u64) {
        if self.last.and_then(|l| l.checked_add(1)) != Some(pfn) {
            self.runs += 1;
        }
        self.last = Some(pfn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_break_where_frames_are_not_consecutive() {
        let mut r = RunCounter::default();
        for pfn in [10, 11, 12, 40, 41, 13, 13, 14] {
            r.push(pfn);
        }
        // [10..12], [40..41], [13], [13..14]: a repeated frame is a new run.
        assert_eq!(r.runs, 4);
    }

    #[test]
    fn our_own_memory_is_counted_or_hidden() {
        let v = vec![1u8; 64 * 4096];
        let hva = v.as_ptr() as u64;
        let runs = contiguous_runs(hva, v.len() as u64).expect("pagemap readable");
        // CAP_SYS_ADMIN is bit 21 of the effective set (root in a container
        // may lack it).
        let cap_sys_admin = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
                u64::from_str_radix(hex.trim(), 16).ok()
            })
            .is_some_and(|caps| caps & (1 << 21) != 0);
        if cap_sys_admin {
            // At least one run, at most one per page (plus one for a range
            // that does not start on a page).
            let n = runs.expect("CAP_SYS_ADMIN sees frame numbers");
            assert!((1..=65).contains(&n), "{n} runs");
        } else {
            // Without it the frames read as 0.
            assert_eq!(runs, None);
        }
    }
}
