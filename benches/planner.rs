//! Criterion benchmarks, each against a baseline measured in the same run:
//!
//! * `translate`: the SVQ per-descriptor lookup of the Rust API, the
//!   planner's `translate` and a per-queue `Translator`, against a second,
//!   Rust-only baseline: an imitation of QEMU's walk (a linear walk over
//!   every mapping, as `iova_tree_find_iova` does), which runs about 3x
//!   faster than QEMU's real GTree walk. The first baseline, QEMU 10.2.2's own
//!   code called from C against the C ABI, is `benches/qemu-translate/run.sh`.
//!   16 to 4,096 regions, random and sequential addresses.
//! * `alloc_churn`: one free + alloc pair with 1,000 to 100,000 live
//!   allocations: `IovaAllocator` against rust-vmm's `vm-allocator` and a
//!   first-fit linear allocator.
//! * `plan`: latency of a prepared switch, a failback and a hotplug, 16 to
//!   4,096 regions, 1 to 256 queues.
//!
//! `cargo bench --bench planner`; `cargo run --release --example
//! benchmarks_report` turns the results into BENCHMARKS.md.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use vdpa_iova_planner::{
    DeviceCaps, Event, Gpa, Hva, IdentityPlanner, IovaAllocator, PageSize, RegionSpec, Strategy,
    Translator,
};

#[path = "common/mod.rs"]
mod common;
use common::{regions, svq, Lcg, MIB};

/// Whether criterion's filter (the first argument that is neither a flag
/// nor a flag's value) can select benchmark `id`. The set-up of a
/// benchmark it cannot select is skipped, so a filtered run does not pay
/// for the 100,000-allocation baselines. A filter with regex syntax other
/// than `|` selects everything.
fn wanted(id: &str) -> bool {
    const WITH_VALUE: &[&str] = &[
        "-s",
        "--save-baseline",
        "-b",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--measurement-time",
        "--warm-up-time",
        "--sample-size",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--profile-time",
        "--output-format",
        "-c",
        "--color",
        "--plotting-backend",
        "--format",
    ];
    let mut args = std::env::args().skip(1);
    let mut filter = None;
    while let Some(a) = args.next() {
        if WITH_VALUE.contains(&a.as_str()) {
            args.next();
        } else if !a.starts_with('-') {
            filter = Some(a);
            break;
        }
    }
    let Some(f) = filter else {
        return true;
    };
    if f.contains(|c: char| "\\.^$*+?()[]{}".contains(c)) {
        return true;
    }
    f.split('|').any(|alt| id.contains(alt))
}

/// The second baseline, a Rust imitation of QEMU's SVQ translation (the
/// first is QEMU's own code, in benches/qemu-translate/):
/// `vhost_iova_tree_find_gpa` calls
/// `iova_tree_find_iova`, a `g_tree_foreach` over every mapping with a
/// callback that stops at the first one containing the address. A GTree
/// keeps one heap node per mapping and walks them by pointer; a
/// `LinkedList` (one heap node per element) and a callback through a
/// function pointer reproduce that walk.
struct LinearMaps(std::collections::LinkedList<(u64, u64, u64)>);
impl LinearMaps {
    fn translate(&self, addr: u64, cb: fn(&(u64, u64, u64), u64) -> bool) -> Option<u64> {
        for m in &self.0 {
            if cb(m, addr) {
                return Some(m.2 + (addr - m.0));
            }
        }
        None
    }
}

/// `iova_tree_find_address_iterator`: whether the map holds the address.
fn find_address(m: &(u64, u64, u64), addr: u64) -> bool {
    m.0 <= addr && addr <= m.1
}

fn translate(c: &mut Criterion) {
    let mut g = c.benchmark_group("translate");
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));
    for n in [16u64, 256, 1024, 4096] {
        let rs = regions(n);
        let mut p = IdentityPlanner::new(DeviceCaps::default(), Some(1 << 40)).unwrap();
        p.apply(&Event::Boot(rs.clone())).unwrap();
        p.apply(&Event::SvqPrepare(svq(3))).unwrap();
        p.apply(&Event::SvqSwitch(None)).unwrap();
        // QEMU keeps its maps in insertion order in a GTree keyed by IOVA;
        // the walk visits them in that order.
        let lin = LinearMaps(
            rs.iter()
                .map(|r| (r.gpa.0, r.gpa.0 + r.size - 1, r.gpa.0))
                .collect(),
        );
        let mut rng = Lcg(n);
        let random: Vec<u64> = (0..4096)
            .map(|_| {
                let r = &rs[(rng.next() % n) as usize];
                r.gpa.0 + (rng.next() % (r.size / 64)) * 64
            })
            .collect();
        let sequential: Vec<u64> = (0..4096)
            .map(|i| {
                let r = &rs[(i * n as usize / 4096) % n as usize];
                r.gpa.0 + (i as u64 % 32) * 4096
            })
            .collect();
        let mut tr = Translator::new(&p).unwrap();
        for (pattern, addrs) in [("random", &random), ("sequential", &sequential)] {
            g.bench_with_input(
                BenchmarkId::new(format!("planner/{pattern}"), n),
                addrs,
                |b, a| {
                    let mut i = 0;
                    b.iter(|| {
                        i = (i + 1) & (a.len() - 1); // 4,096 addresses: a mask, not a division
                        black_box(p.translate(Gpa(a[i]), 64).unwrap())
                    })
                },
            );
            g.bench_with_input(
                BenchmarkId::new(format!("translator/{pattern}"), n),
                addrs,
                |b, a| {
                    let mut i = 0;
                    b.iter(|| {
                        i = (i + 1) & (a.len() - 1);
                        black_box(tr.translate(Gpa(a[i]), 64).unwrap())
                    })
                },
            );
            g.bench_with_input(
                BenchmarkId::new(format!("qemu_linear/{pattern}"), n),
                addrs,
                |b, a| {
                    let mut i = 0;
                    b.iter(|| {
                        i = (i + 1) & (a.len() - 1); // 4,096 addresses: a mask, not a division
                        black_box(lin.translate(a[i], black_box(find_address)).unwrap())
                    })
                },
            );
        }
    }
    g.finish();
}

/// First fit over a sorted `Vec` of free holes, scanned linearly.
struct FirstFit(Vec<(u64, u64)>);
impl FirstFit {
    fn alloc(&mut self, size: u64) -> Option<u64> {
        let i = self.0.iter().position(|&(f, l)| l - f + 1 >= size)?;
        let (f, l) = self.0[i];
        if l - f + 1 == size {
            self.0.remove(i);
        } else {
            self.0[i].0 = f + size;
        }
        Some(f)
    }
    fn free(&mut self, f: u64, size: u64) {
        let l = f + size - 1;
        let i = self.0.partition_point(|&(a, _)| a < f);
        self.0.insert(i, (f, l));
        if i + 1 < self.0.len() && self.0[i].1 + 1 == self.0[i + 1].0 {
            self.0[i].1 = self.0[i + 1].1;
            self.0.remove(i + 1);
        }
        if i > 0 && self.0[i - 1].1 + 1 == self.0[i].0 {
            self.0[i - 1].1 = self.0[i].1;
            self.0.remove(i);
        }
    }
}

fn alloc_churn(c: &mut Criterion) {
    let mut g = c.benchmark_group("alloc_churn");
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));
    g.sample_size(20);
    let page = 4096u64;
    let (base, end) = (1u64 << 40, (1u64 << 46) - 1);
    for live in [1_000usize, 10_000, 100_000] {
        let sizes: Vec<u64> = {
            let mut r = Lcg(live as u64);
            (0..live).map(|_| (1 + r.next() % 16) * page).collect()
        };
        // Each allocator gets 2 * live allocations, then every other one is
        // freed: `live` allocations with `live` holes between them. Each
        // step frees a random live allocation and allocates a new random
        // size: the free list stays long and fragmented, as churn leaves it.
        let steps: Vec<(usize, u64)> = {
            let mut r = Lcg(7);
            (0..1 << 16)
                .map(|_| {
                    (
                        (r.next() % live as u64) as usize,
                        (1 + r.next() % 16) * page,
                    )
                })
                .collect()
        };
        if wanted(&format!("alloc_churn/iova_allocator/{live}")) {
            let mut a = IovaAllocator::new(base, end, PageSize::SIZE_4K).unwrap();
            let all: Vec<_> = sizes
                .iter()
                .chain(&sizes)
                .map(|&s| a.alloc(s).unwrap())
                .collect();
            let mut held: Vec<_> = all.iter().step_by(2).copied().collect();
            for s in all.iter().skip(1).step_by(2) {
                assert!(a.free(*s));
            }
            let mut k = 0;
            g.bench_function(BenchmarkId::new("iova_allocator", live), |b| {
                b.iter(|| {
                    let (i, sz) = steps[k % steps.len()];
                    k += 1;
                    assert!(a.free(held[i]));
                    held[i] = a.alloc(sz).unwrap();
                })
            });
        }
        // rust-vmm vm-allocator, first match.
        if wanted(&format!("alloc_churn/vm_allocator/{live}")) {
            let mut v = vm_allocator::AddressAllocator::new(base, end - base + 1).unwrap();
            let policy = vm_allocator::AllocPolicy::FirstMatch;
            let all: Vec<_> = sizes
                .iter()
                .chain(&sizes)
                .map(|&s| v.allocate(s, page, policy).unwrap())
                .collect();
            let mut vheld: Vec<_> = all.iter().step_by(2).cloned().collect();
            for s in all.iter().skip(1).step_by(2) {
                v.free(s).unwrap();
            }
            let mut k = 0;
            g.bench_function(BenchmarkId::new("vm_allocator", live), |b| {
                b.iter(|| {
                    let (i, sz) = steps[k % steps.len()];
                    k += 1;
                    v.free(&vheld[i]).unwrap();
                    vheld[i] = v.allocate(sz, page, policy).unwrap();
                })
            });
        }
        // First fit, linear.
        if wanted(&format!("alloc_churn/first_fit_linear/{live}")) {
            let mut f = FirstFit(vec![(base, end)]);
            let all: Vec<(u64, u64)> = sizes
                .iter()
                .chain(&sizes)
                .map(|&s| (f.alloc(s).unwrap(), s))
                .collect();
            let mut fheld: Vec<(u64, u64)> = all.iter().step_by(2).copied().collect();
            for &(at, sz) in all.iter().skip(1).step_by(2) {
                f.free(at, sz);
            }
            let mut k = 0;
            g.bench_function(BenchmarkId::new("first_fit_linear", live), |b| {
                b.iter(|| {
                    let (i, sz) = steps[k % steps.len()];
                    k += 1;
                    f.free(fheld[i].0, fheld[i].1);
                    fheld[i] = (f.alloc(sz).unwrap(), sz);
                })
            });
        }
    }
    g.finish();
}

fn plan(c: &mut Criterion) {
    let mut g = c.benchmark_group("plan");
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(300));
    g.sample_size(30);
    for (n, q) in [(16u64, 3u32), (256, 17), (1024, 65), (4096, 256)] {
        let mut base = IdentityPlanner::new(DeviceCaps::default(), Some(1 << 40)).unwrap();
        base.apply(&Event::Boot(regions(n))).unwrap();
        base.apply(&Event::SvqPrepare(svq(q))).unwrap();
        let id = format!("{n}r/{q}q");
        g.bench_function(BenchmarkId::new("prepared_switch", &id), |b| {
            b.iter_batched_ref(
                || base.clone(),
                |p| black_box(p.svq_switch(None).unwrap()),
                BatchSize::LargeInput,
            )
        });
        let mut sw = base.clone();
        sw.svq_switch(None).unwrap();
        g.bench_function(BenchmarkId::new("failback", &id), |b| {
            b.iter_batched_ref(
                || sw.clone(),
                |p| black_box(p.failback().unwrap()),
                BatchSize::LargeInput,
            )
        });
        let hot = RegionSpec {
            gpa: Gpa(1 << 39),
            size: 128 * MIB,
            hva: Hva(0x2000_0000_0000),
            readonly: false,
        };
        g.bench_function(BenchmarkId::new("hotplug_svq", &id), |b| {
            b.iter_batched_ref(
                || sw.clone(),
                |p| black_box(p.add_regions(std::slice::from_ref(&hot)).unwrap()),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, translate, alloc_churn, plan);
criterion_main!(benches);
