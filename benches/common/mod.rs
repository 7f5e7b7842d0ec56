//! What the benchmarks and `examples/ab_ops.rs` share: a deterministic
//! generator and the guest layouts they plan for (included with
//! `#[path]`, so each stays one file to copy).

#![allow(dead_code)] // each includer uses a part

use vdpa_iova_planner::{Gpa, Hva, RegionSpec, SvqConfig};

pub const MIB: u64 = 1 << 20;

/// A tiny deterministic generator (no dependency, same sequence every run).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 11
    }
}

/// `n` regions of 2 MiB, 4 MiB apart (as many DIMMs or virtio-mem blocks).
pub fn regions(n: u64) -> Vec<RegionSpec> {
    (0..n)
        .map(|i| RegionSpec {
            gpa: Gpa(i * 4 * MIB),
            size: 2 * MIB,
            hva: Hva(0x1000_0000_0000 + i * 2 * MIB),
            readonly: false,
        })
        .collect()
}

/// `queues` shadow virtqueues of 256 descriptors.
pub fn svq(queues: u32) -> SvqConfig {
    SvqConfig {
        queues,
        queue_size: 256,
        hva: Hva(0x7e00_0000_0000),
    }
}
