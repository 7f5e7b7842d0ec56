//! Scenario text through the C ABI: a scenario that parses is run on each
//! of its hosts (the source from boot, the destination from `incoming`)
//! twice, once through the Rust strategy the adapter builds for it and once
//! through the C ABI (`vdpa_iova_planner_new` and one `vdpa_iova_*` call per
//! event), under every strategy the scenario allows. After each event:
//!
//! * both sides accept or both refuse it; the C side's error is never `-EIO`
//!   (a panic caught at the boundary) and a refusal leaves `*out` NULL;
//! * an accepted event gives the same operations, field by field, on both
//!   sides, and they replay on the ABI's kernel model;
//! * the mode and the mapped table are the same on both sides.
//!
//! The seeds are the repository's scenario files (see `fuzz/longrun`).
#![no_main]

use std::ffi::CStr;
use std::ptr::null_mut;

use vdpa_adapter::scenario::Host;
use vdpa_adapter::{Scenario, StrategyKind};
use vdpa_iova::*;
use ::vdpa_iova_planner::{Event, MapStyle, Mode, OpKind, Plan, RegionSpec, SvqConfig};

const EIO: i32 = 5;

fn last_error() -> String {
    // SAFETY: NUL-terminated, valid until the next call on this thread.
    unsafe { CStr::from_ptr(vdpa_iova_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn c_caps(s: &Scenario) -> vdpa_iova_caps {
    let c = &s.caps;
    vdpa_iova_caps {
        range_first: c.range.first(),
        range_last: c.range.last(),
        page_size: c.page_size.get(),
        address_spaces: c.address_spaces,
        map_style: match c.map_style {
            MapStyle::SetMap => VDPA_IOVA_MAP_STYLE_SET_MAP,
            MapStyle::DmaMap => VDPA_IOVA_MAP_STYLE_DMA_MAP,
            MapStyle::Platform => VDPA_IOVA_MAP_STYLE_PLATFORM,
        },
        batching: c.batching.into(),
        desc_asid: c.desc_asid.into(),
        persist: c.persist.into(),
        pinning: c.pinning.into(),
        cvq_isolated: c.cvq_isolated.into(),
        reserved: [0; 3],
    }
}

fn c_options(s: &Scenario, k: StrategyKind) -> vdpa_iova_options {
    vdpa_iova_options {
        strategy: if k == StrategyKind::Qemu {
            VDPA_IOVA_STRATEGY_QEMU
        } else {
            VDPA_IOVA_STRATEGY_IDENTITY
        },
        viommu: s.viommu_last.is_some().into(),
        separate_vring_asid: (k == StrategyKind::IdentityAsid).into(),
        reserved: [0; 2],
        max_gpa: s.max_gpa.unwrap_or(0),
        viommu_last: s.viommu_last.unwrap_or(0),
    }
}

fn c_regions(r: &[RegionSpec]) -> Vec<vdpa_iova_region> {
    r.iter()
        .map(|r| vdpa_iova_region {
            gpa: r.gpa.0,
            size: r.size,
            hva: r.hva.0,
            readonly: r.readonly.into(),
            reserved: [0; 7],
        })
        .collect()
}

fn c_svq(c: &SvqConfig) -> vdpa_iova_svq_config {
    vdpa_iova_svq_config {
        queues: c.queues,
        queue_size: c.queue_size,
        hva: c.hva.0,
    }
}

/// One event through the C ABI: its return code and plan.
fn c_event(p: *mut vdpa_iova_planner, ev: &Event) -> (i32, *mut vdpa_iova_plan) {
    let mut out: *mut vdpa_iova_plan = 0x8 as *mut _;
    // SAFETY: a live planner used by this thread only; every pointer passed
    // is valid for the call (slices with their own length, configs on the
    // stack), and `out` is writable.
    let rc = unsafe {
        match ev {
            Event::Boot(r) => {
                let r = c_regions(r);
                vdpa_iova_add_regions(p, r.as_ptr(), r.len(), &mut out)
            }
            Event::Hotplug(r) => {
                let r = c_regions(core::slice::from_ref(r));
                vdpa_iova_add_regions(p, r.as_ptr(), r.len(), &mut out)
            }
            Event::Unplug(g) => vdpa_iova_remove_region(p, g.0, &mut out),
            Event::SvqPrepare(c) => vdpa_iova_svq_prepare(p, &c_svq(c), &mut out),
            Event::SvqSwitch(Some(c)) => vdpa_iova_svq_switch(p, &c_svq(c), &mut out),
            Event::SvqSwitch(None) => vdpa_iova_svq_switch(p, core::ptr::null(), &mut out),
            Event::Failback => vdpa_iova_failback(p, &mut out),
            Event::Complete => vdpa_iova_complete(p, &mut out),
            Event::Incoming(r) => {
                let r = c_regions(r);
                vdpa_iova_incoming(p, r.as_ptr(), r.len(), &mut out)
            }
            Event::Switchover => vdpa_iova_switchover(p, &mut out),
            Event::Start => vdpa_iova_start(p, &mut out),
            Event::Reset => vdpa_iova_reset(p, &mut out),
            Event::HostBuffers(b) => {
                let b: Vec<_> = b
                    .iter()
                    .map(|b| vdpa_iova_host_buffer {
                        hva: b.hva.0,
                        size: b.size,
                        perm: b.perm.to_kernel(),
                        reserved: [0; 7],
                    })
                    .collect();
                vdpa_iova_host_buffers(p, b.as_ptr(), b.len(), &mut out)
            }
            Event::ViommuMap {
                giova,
                size,
                gpa,
                perm,
            } => vdpa_iova_viommu_map(p, giova.0, *size, gpa.0, perm.to_kernel(), &mut out),
            Event::ViommuUnmap { giova, size } => {
                vdpa_iova_viommu_unmap(p, giova.0, *size, &mut out)
            }
        }
    };
    (rc, out)
}

fn want_ops(plan: &Plan) -> Vec<vdpa_iova_op> {
    plan.ops()
        .iter()
        .map(|op| {
            let (t, perm, iova, size, uaddr) = match op.kind {
                OpKind::Update { iova, hva, perm } => (
                    VDPA_IOVA_OP_UPDATE,
                    perm.to_kernel(),
                    iova.first().0,
                    iova.size(),
                    hva.0,
                ),
                OpKind::Invalidate { iova } => {
                    (VDPA_IOVA_OP_INVALIDATE, 0, iova.first().0, iova.size(), 0)
                }
                OpKind::BatchBegin => (VDPA_IOVA_OP_BATCH_BEGIN, 0, 0, 0, 0),
                OpKind::BatchEnd => (VDPA_IOVA_OP_BATCH_END, 0, 0, 0, 0),
            };
            (op.asid, t, perm, op.phase, iova, size, uaddr)
        })
        .map(|(asid, t, perm, phase, iova, size, uaddr)| vdpa_iova_op {
            asid,
            r#type: t,
            perm,
            phase: phase as u8,
            reserved: 0,
            iova,
            size,
            uaddr,
        })
        .collect()
}

fn c_mapped(p: *mut vdpa_iova_planner) -> Vec<(u32, u8, u64, u64, u64)> {
    let mut n = 0;
    // SAFETY: a live planner; NULL entries with cap 0 only asks the count.
    unsafe { vdpa_iova_mapped(p, null_mut(), 0, &mut n) };
    let mut v = vec![vdpa_iova_entry::default(); n];
    // SAFETY: n writable entries.
    let rc = unsafe { vdpa_iova_mapped(p, v.as_mut_ptr(), n, &mut n) };
    assert_eq!(rc, 0, "{}", last_error());
    v.iter()
        .map(|e| (e.asid, e.perm, e.iova, e.size, e.uaddr))
        .collect()
}

fn mode_code(m: Mode) -> i32 {
    (match m {
        Mode::Passthrough => VDPA_IOVA_MODE_PASSTHROUGH,
        Mode::Prepared => VDPA_IOVA_MODE_PREPARED,
        Mode::Svq => VDPA_IOVA_MODE_SVQ,
        Mode::Completed => VDPA_IOVA_MODE_COMPLETED,
        Mode::Incoming => VDPA_IOVA_MODE_INCOMING,
        Mode::Switchover => VDPA_IOVA_MODE_SWITCHOVER,
    }) as i32
}

fn run_host(scn: &Scenario, kind: StrategyKind, host: Host) {
    let Ok(mut rust) = kind.build(scn, "fuzz") else {
        // The C ABI refuses the same capabilities.
        let mut p = null_mut();
        // SAFETY: caps and options on the stack, a writable out.
        let rc = unsafe { vdpa_iova_planner_new(&c_caps(scn), &c_options(scn, kind), &mut p) };
        assert!(rc < 0 && p.is_null(), "C accepted what Rust refused");
        return;
    };
    let mut p = null_mut();
    let mut m = null_mut();
    // SAFETY: caps and options on the stack, writable outs.
    unsafe {
        let rc = vdpa_iova_planner_new(&c_caps(scn), &c_options(scn, kind), &mut p);
        assert_eq!(rc, 0, "C refused what Rust accepted: {}", last_error());
        assert_eq!(vdpa_iova_model_new(&c_caps(scn), &mut m), 0);
    }
    for (i, ev) in scn.steps_on(host).enumerate() {
        let want = rust.apply(&ev);
        let (rc, plan) = c_event(p, &ev);
        assert_ne!(rc, -EIO, "step {i} {}: {}", ev.name(), last_error());
        match want {
            Ok(w) => {
                assert_eq!(rc, 0, "step {i} {}: C refused: {}", ev.name(), last_error());
                let mut n = 0;
                // SAFETY: a plan just returned, a writable n; the ops stay
                // valid until the plan is freed below.
                let got = unsafe {
                    let ops = vdpa_iova_plan_ops(plan, &mut n);
                    std::slice::from_raw_parts(ops, n).to_vec()
                };
                assert_eq!(got, want_ops(&w), "step {i} {}", ev.name());
                for op in &got {
                    // SAFETY: a live model and an op on the stack. The QEMU
                    // baseline's partial invalidates are refused by the
                    // strict model; only the planner's plans must replay.
                    let r = unsafe { vdpa_iova_model_apply_op(m, op) };
                    if kind != StrategyKind::Qemu {
                        assert_eq!(r, 0, "step {i} {}: {op:?}: {}", ev.name(), last_error());
                    }
                }
                // SAFETY: the plan came from the ABI and is freed once.
                unsafe { vdpa_iova_plan_free(plan) };
            }
            Err(e) => {
                assert!(
                    rc < 0,
                    "step {i} {}: C accepted, Rust refused: {e}",
                    ev.name()
                );
                assert!(plan.is_null(), "a refusal left *out set");
            }
        }
        // SAFETY: a live planner.
        assert_eq!(unsafe { vdpa_iova_mode(p) }, mode_code(rust.mode()));
        let mut want_map: Vec<_> = rust
            .mapped()
            .iter()
            .map(|(a, e)| {
                (
                    *a,
                    e.perm.to_kernel(),
                    e.iova.first().0,
                    e.iova.size(),
                    e.hva.0,
                )
            })
            .collect();
        let mut got_map = c_mapped(p);
        want_map.sort_unstable();
        got_map.sort_unstable();
        assert_eq!(got_map, want_map, "step {i} {}", ev.name());
    }
    // SAFETY: both created above, freed once.
    unsafe {
        vdpa_iova_planner_free(p);
        vdpa_iova_model_free(m);
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(scn) = Scenario::parse(text, "fuzz") else {
        return;
    };
    for kind in StrategyKind::available(&scn) {
        // Every host of every migration, each on a planner of its own.
        for h in 0..scn.host_count() {
            run_host(&scn, kind, Host::nth(h as u32));
        }
    }
});
