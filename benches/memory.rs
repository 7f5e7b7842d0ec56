//! Bytes of planner state per guest region and per shadow vring, counted by
//! dhat's global allocator (live bytes). Prints the figures and writes
//! them to `target/bench-memory.json` for `examples/benchmarks_report.rs`.
//! `cargo bench --bench memory`.

#![allow(missing_docs)]

use vdpa_iova_planner::{
    DeviceCaps, Event, Gpa, Hva, IdentityPlanner, RegionSpec, Strategy, SvqConfig,
};

// dhat's counting allocator: live-byte statistics without unsafe code here.
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn planner(regions: u64, queues: u32) -> IdentityPlanner {
    let mut p = IdentityPlanner::new(DeviceCaps::default(), Some(1 << 44)).unwrap();
    let rs: Vec<RegionSpec> = (0..regions)
        .map(|i| RegionSpec {
            gpa: Gpa(i << 22),
            size: 1 << 21,
            hva: Hva(0x1000_0000_0000 + (i << 21)),
            readonly: false,
        })
        .collect();
    p.apply(&Event::Boot(rs)).unwrap();
    p.apply(&Event::SvqPrepare(SvqConfig {
        queues,
        queue_size: 256,
        hva: Hva(0x7e00_0000_0000),
    }))
    .unwrap();
    p.apply(&Event::SvqSwitch(None)).unwrap();
    p
}

fn live_bytes(regions: u64, queues: u32) -> isize {
    let before = dhat::HeapStats::get().curr_bytes as isize;
    let p = planner(regions, queues);
    let after = dhat::HeapStats::get().curr_bytes as isize;
    drop(p);
    after - before
}

fn main() {
    // Criterion-style arguments (`--bench`) are accepted and ignored.
    let _profiler = dhat::Profiler::builder().testing().build();
    let (r1, r2) = (256u64, 4096u64);
    let per_region = (live_bytes(r2, 1) - live_bytes(r1, 1)) as f64 / (r2 - r1) as f64;
    let (q1, q2) = (16u32, 256u32);
    let per_vring = (live_bytes(16, q2) - live_bytes(16, q1)) as f64 / f64::from(q2 - q1);
    let base = live_bytes(1, 1);
    println!("planner state: {base} bytes for 1 region and 1 queue");
    println!("per guest region: {per_region:.0} bytes (from {r1} to {r2} regions)");
    println!("per shadow vring: {per_vring:.0} bytes (from {q1} to {q2} queues)");
    let json = format!(
        "{{\"base_bytes\": {base}, \"per_region_bytes\": {per_region:.1}, \"per_vring_bytes\": {per_vring:.1}}}\n"
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let _ = std::fs::create_dir_all(&dir);
    std::fs::write(dir.join("bench-memory.json"), json).unwrap();
}
