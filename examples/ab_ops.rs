//! The planner's hot operations, each repeated a given number of times, for
//! counting instructions under `valgrind --tool=cachegrind`: a figure that
//! does not move with the machine's load, unlike a time. `benches/ab-compare.sh
//! --instructions` runs it against two commits' libraries.
//!
//! `cargo run --release --example ab_ops -- OP COUNT`; `OP` is one of the
//! names `ab_ops list` prints. The set-up runs whatever `COUNT` is, so the
//! cost of one operation is (instructions at COUNT - instructions at 0) /
//! COUNT. A planning op clones the planner at every iteration; its
//! `+clone-only` twin (`plan/failback+clone-only/1024`) only clones, so the
//! plan's own cost is the difference.

use std::hint::black_box;

use vdpa_iova_planner::{
    DeviceCaps, Event, Gpa, Hva, IdentityPlanner, IovaAllocator, PageSize, QemuPlanner, RegionSpec,
    Strategy, Translator,
};

#[path = "../benches/common/mod.rs"]
mod common;
use common::{regions, svq, Lcg, MIB};

/// Every operation, by name.
const OPS: &[&str] = &[
    "translate/identity/16",
    "translate/identity/1024",
    "translate/identity/4096",
    "translate/qemu/16",
    "translate/qemu/1024",
    "translator/16",
    "translator/4096",
    "alloc_churn/10000",
    "plan/prepared_switch/1024",
    "plan/prepared_switch+clone-only/1024",
    "plan/failback/1024",
    "plan/failback+clone-only/1024",
    "plan/hotplug_svq/1024",
    "plan/hotplug_svq+clone-only/1024",
    "plan/qemu_switch/256",
    "plan/qemu_switch+clone-only/256",
    "plan/qemu_hotplug_svq/256",
    "plan/qemu_hotplug_svq+clone-only/256",
];

fn hot() -> RegionSpec {
    RegionSpec {
        gpa: Gpa(1 << 39),
        size: 128 * MIB,
        hva: Hva(0x2000_0000_0000),
        readonly: false,
    }
}

/// A planner booted with `n` regions and switched to shadow virtqueues
/// (the identity planner prepared first).
fn booted(qemu: bool, n: u64, switched: bool) -> Box<dyn Strategy> {
    let caps = DeviceCaps::default();
    let mut p: Box<dyn Strategy> = if qemu {
        Box::new(QemuPlanner::new(caps).unwrap())
    } else {
        Box::new(IdentityPlanner::new(caps, Some(1 << 40)).unwrap())
    };
    p.apply(&Event::Boot(regions(n))).unwrap();
    let q = (n / 16 + 1) as u32;
    if !qemu {
        p.apply(&Event::SvqPrepare(svq(q))).unwrap();
    }
    if switched {
        p.apply(&Event::SvqSwitch((qemu).then(|| svq(q)))).unwrap();
    }
    p
}

/// 4,096 random 64-byte lookups inside the `n` regions.
fn addresses(n: u64) -> Vec<u64> {
    let rs = regions(n);
    let mut rng = Lcg(n);
    (0..4096)
        .map(|_| {
            let r = &rs[(rng.next() % n) as usize];
            r.gpa.0 + (rng.next() % (r.size / 64)) * 64
        })
        .collect()
}

fn run(op: &str, count: usize) -> Result<(), String> {
    let parts: Vec<&str> = op.split('/').collect();
    let n = |i: usize| -> Result<u64, String> {
        parts
            .get(i)
            .and_then(|s| s.parse().ok())
            .ok_or(format!("{op}: no count"))
    };
    match parts.as_slice() {
        ["translate", kind, _] => {
            let p = booted(*kind == "qemu", n(2)?, true);
            let a = addresses(n(2)?);
            for i in 0..count {
                black_box(p.translate(Gpa(a[i & 4095]), 64).unwrap());
            }
        }
        ["translator", _] => {
            let p = booted(false, n(1)?, true);
            let a = addresses(n(1)?);
            let mut t = Translator::new(p.as_ref()).unwrap();
            for i in 0..count {
                black_box(t.translate(Gpa(a[i & 4095]), 64).unwrap());
            }
        }
        ["alloc_churn", _] => {
            let live = n(1)? as usize;
            let page = 4096u64;
            let mut a = IovaAllocator::new(1 << 40, (1 << 46) - 1, PageSize::SIZE_4K).unwrap();
            let mut r = Lcg(live as u64);
            let all: Vec<_> = (0..2 * live)
                .map(|_| a.alloc((1 + r.next() % 16) * page).unwrap())
                .collect();
            let mut held: Vec<_> = all.iter().step_by(2).copied().collect();
            for s in all.iter().skip(1).step_by(2) {
                assert!(a.free(*s));
            }
            let mut r = Lcg(7);
            for _ in 0..count {
                let i = (r.next() % live as u64) as usize;
                assert!(a.free(held[i]));
                held[i] = a.alloc((1 + r.next() % 16) * page).unwrap();
            }
        }
        ["plan", what, _] => {
            let size = n(2)?;
            let q = (size / 16 + 1) as u32;
            // Every iteration clones the planner and plans on the clone;
            // `...+clone-only` clones alone, so the op's own cost is the
            // difference of the two.
            let (what, clone_only) = match what.strip_suffix("+clone-only") {
                Some(w) => (w, true),
                None => (*what, false),
            };
            match what {
                "prepared_switch" | "failback" | "hotplug_svq" => {
                    let mut base = IdentityPlanner::new(DeviceCaps::default(), Some(1 << 40))
                        .map_err(|e| e.to_string())?;
                    base.apply(&Event::Boot(regions(size))).unwrap();
                    base.apply(&Event::SvqPrepare(svq(q))).unwrap();
                    if what != "prepared_switch" {
                        base.apply(&Event::SvqSwitch(None)).unwrap();
                    }
                    for _ in 0..count {
                        let mut p = base.clone();
                        if !clone_only {
                            black_box(match what {
                                "prepared_switch" => p.svq_switch(None),
                                "failback" => p.failback(),
                                _ => p.add_regions(&[hot()]),
                            })
                            .unwrap();
                        }
                        black_box(p);
                    }
                }
                "qemu_switch" | "qemu_hotplug_svq" => {
                    let mut base =
                        QemuPlanner::new(DeviceCaps::default()).map_err(|e| e.to_string())?;
                    base.apply(&Event::Boot(regions(size))).unwrap();
                    if what == "qemu_hotplug_svq" {
                        base.apply(&Event::SvqSwitch(Some(svq(q)))).unwrap();
                    }
                    for _ in 0..count {
                        let mut p = base.clone();
                        if !clone_only {
                            black_box(match what {
                                "qemu_switch" => p.svq_switch(Some(svq(q))),
                                _ => p.add_regions(&[hot()]),
                            })
                            .unwrap();
                        }
                        black_box(p);
                    }
                }
                _ => return Err(format!("unknown op {op}")),
            }
        }
        _ => return Err(format!("unknown op {op}")),
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [l] if l == "list" => OPS.iter().for_each(|o| println!("{o}")),
        [op, count] => {
            let count: usize = match count.parse() {
                Ok(c) => c,
                Err(_) => {
                    eprintln!("ab_ops: COUNT must be a number");
                    std::process::exit(2);
                }
            };
            if let Err(e) = run(op, count) {
                eprintln!("ab_ops: {e}");
                std::process::exit(2);
            }
        }
        _ => {
            eprintln!("usage: ab_ops list | ab_ops OP COUNT");
            std::process::exit(2);
        }
    }
}
