//! Arbitrary call sequences through the C ABI (`vdpa_iova_*`), as a C VMM
//! could make them: NULL handles and pointers, zero, unaligned and huge
//! sizes, events out of order, translate with small arrays. After each call:
//!
//! * an accepted event's plan replays on the kernel model (the ABI's own
//!   `vdpa_iova_model`, a strict `KernelIotlb`) message by message, and the
//!   planner's table then equals the model's;
//! * a refused call leaves the mode, the table and the translations as
//!   they were, sets `*out` to NULL and leaves a message;
//! * a translation covers exactly the bytes asked for, in at most `cap`
//!   segments, each mapped by the model to the right permission.
//!
//! Any panic (including one caught at the boundary: `-EIO`) is a finding.
#![no_main]

use std::ffi::CStr;
use std::ptr::{null, null_mut};

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use vdpa_iova::*;

const PAGE: u64 = 4096;
const EINVAL: i32 = 22;
const EFAULT: i32 = 14;
const EPROTO: i32 = 71;
const ENOBUFS: i32 = 105;
const EIO: i32 = 5;

/// Addresses mostly near page multiples of a small space, so that regions,
/// vrings and guest maps meet; sometimes at the top of the 64-bit space or raw.
fn pick(sel: u8, raw: u64) -> u64 {
    match sel % 5 {
        0 | 1 => u64::from(sel >> 3) * PAGE * 16,
        2 => u64::MAX - u64::from(sel >> 3) * PAGE,
        3 => raw % (1 << 24),
        _ => raw,
    }
}

fn size(sel: u8, raw: u64) -> u64 {
    match sel % 6 {
        0 => 0,
        1..=3 => u64::from((sel >> 3) + 1) * PAGE,
        4 => raw % (1 << 26),
        _ => raw,
    }
}

#[derive(Arbitrary, Debug)]
struct RawCaps {
    range: (u8, u64, u8, u64),
    page_shift: u8,
    flags: u8,
    address_spaces: u8,
    map_style: u8,
    strategy: u8,
    max_gpa: (u8, u64),
    viommu_last: Option<(u8, u64)>,
    separate: bool,
}

#[derive(Arbitrary, Debug)]
enum Call {
    Add(Vec<(u8, u64, u8, u64, u64, u8)>),
    AddNullRegions(u8),
    Remove(u8, u64),
    Prepare(u16, u8, u64),
    Switch(Option<(u16, u8, u64)>),
    Failback,
    Complete,
    Reset,
    Map(u8, u64, u8, u64, u8, u64, u8),
    Unmap(u8, u64, u8, u64),
    Translate(u8, u64, u8, u64, u8),
    TranslateNullSegs(u8, u64),
    Mapped(u8),
    /// An event on a NULL planner (which event: the byte).
    NullPlanner(u8),
    /// An event with a NULL `out`.
    NullOut(u8),
    SvqSize(u16, u8, u64, u8),
    /// A migration's destination: only accepted as the first event.
    Incoming(Vec<(u8, u64, u8, u64, u64, u8)>),
    Start,
    /// Host buffers (hva, size, perm).
    HostBuffers(Vec<(u8, u64, u8, u64, u8)>),
    BufferEntries(u8),
}

fn last_error() -> String {
    // SAFETY: NUL-terminated, valid until the next call on this thread.
    unsafe { CStr::from_ptr(vdpa_iova_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn svq(q: u16, qs: u8, hva: u64) -> vdpa_iova_svq_config {
    vdpa_iova_svq_config {
        queues: u32::from(q % 40),
        queue_size: if qs % 8 == 7 {
            u32::from(qs) * 3
        } else {
            1 << (qs % 16)
        },
        hva: pick(hva as u8, hva) & !0xfff | (if qs & 0x80 != 0 { 8 } else { 0 }),
    }
}

struct Fuzz {
    p: *mut vdpa_iova_planner,
    m: *mut vdpa_iova_model,
    address_spaces: u32,
    /// The QEMU baseline reproduces QEMU's partial invalidates, which the
    /// strict model refuses (the kernel drops whole entries): after one,
    /// the model no longer follows the planner.
    diverged: bool,
    identity: bool,
}

#[derive(Debug, PartialEq)]
struct Snapshot {
    mode: i32,
    mapped: Vec<vdpa_iova_entry>,
    xlate: Vec<(i32, usize, Vec<vdpa_iova_segment>)>,
}

impl Fuzz {
    fn mapped(&self) -> Vec<vdpa_iova_entry> {
        let mut n = 0;
        // SAFETY: a live planner, NULL entries with cap 0.
        let rc = unsafe { vdpa_iova_mapped(self.p, null_mut(), 0, &mut n) };
        assert!(rc == 0 || rc == -ENOBUFS, "{rc}: {}", last_error());
        let mut v = vec![vdpa_iova_entry::default(); n];
        // SAFETY: n writable entries.
        let rc = unsafe { vdpa_iova_mapped(self.p, v.as_mut_ptr(), n, &mut n) };
        assert_eq!(rc, 0, "{}", last_error());
        v
    }

    fn model_entries(&self) -> Vec<vdpa_iova_entry> {
        let mut all = Vec::new();
        for asid in 0..self.address_spaces.min(4) {
            let mut n = 0;
            // SAFETY: a live model, NULL entries with cap 0.
            let _ = unsafe { vdpa_iova_model_entries(self.m, asid, null_mut(), 0, &mut n) };
            let mut v = vec![vdpa_iova_entry::default(); n];
            // SAFETY: n writable entries.
            let rc = unsafe { vdpa_iova_model_entries(self.m, asid, v.as_mut_ptr(), n, &mut n) };
            assert_eq!(rc, 0);
            all.extend(v);
        }
        all
    }

    fn translate(&self, gpa: u64, len: u64, cap: usize) -> (i32, usize, Vec<vdpa_iova_segment>) {
        let mut segs = vec![
            vdpa_iova_segment {
                iova: 0xbad,
                ..Default::default()
            };
            cap
        ];
        let mut n = usize::MAX;
        // SAFETY: cap writable segments and a writable n.
        let rc = unsafe { vdpa_iova_translate(self.p, gpa, len, segs.as_mut_ptr(), cap, &mut n) };
        assert_ne!(rc, -EIO, "translate: {}", last_error());
        match rc {
            0 => {
                assert!(n >= 1 && n <= cap);
                segs.truncate(n);
                assert_eq!(
                    segs.iter().map(|s| u128::from(s.len)).sum::<u128>(),
                    u128::from(len)
                );
            }
            r if r == -ENOBUFS => {
                assert!(n > cap);
                assert!(
                    segs.iter().all(|s| s.iova == 0xbad),
                    "-ENOBUFS wrote segments"
                );
                segs.clear();
            }
            _ => {
                assert_eq!(n, 0);
                segs.clear();
            }
        }
        (rc, n, segs)
    }

    fn snapshot(&self) -> Snapshot {
        let probes = [
            0,
            PAGE,
            16 * PAGE,
            1 << 20,
            1 << 24,
            1 << 32,
            u64::MAX - PAGE + 1,
        ];
        Snapshot {
            // SAFETY: a live planner.
            mode: unsafe { vdpa_iova_mode(self.p) },
            mapped: self.mapped(),
            xlate: probes
                .iter()
                .map(|&g| self.translate(g, 2 * PAGE, 4))
                .collect(),
        }
    }

    /// Runs an event and checks the result.
    fn event(&mut self, reset: bool, f: impl FnOnce(*mut *mut vdpa_iova_plan) -> i32) {
        let before = self.snapshot();
        let mut plan = 0x8 as *mut vdpa_iova_plan;
        let rc = f(&mut plan);
        assert_ne!(rc, -EIO, "{}", last_error());
        if rc != 0 {
            assert!(rc < 0);
            assert!(plan.is_null(), "out not NULL after {rc}");
            assert!(!last_error().is_empty());
            assert_eq!(
                self.snapshot(),
                before,
                "refused ({rc}: {}) but changed",
                last_error()
            );
            return;
        }
        assert!(!plan.is_null());
        let mut n = 0;
        // SAFETY: a live plan.
        let ops = unsafe { vdpa_iova_plan_ops(plan, &mut n) };
        assert!(!ops.is_null());
        // SAFETY: the plan owns n ops until freed.
        let ops = unsafe { std::slice::from_raw_parts(ops, n) }.to_vec();
        let mut cost = vdpa_iova_cost::default();
        // SAFETY: a live plan.
        assert_eq!(unsafe { vdpa_iova_plan_cost(plan, &mut cost) }, 0);
        // SAFETY: freed once.
        unsafe { vdpa_iova_plan_free(plan) };
        assert_eq!(cost.messages, ops.len() as u64);
        if reset {
            // SAFETY: a live model.
            assert_eq!(unsafe { vdpa_iova_model_reset_device(self.m) }, 0);
        }
        let mut phase = 0;
        for op in &ops {
            assert!(
                op.phase >= phase && op.phase <= 2,
                "phases out of order: {ops:?}"
            );
            phase = op.phase;
            assert_eq!(op.reserved, 0);
            if self.diverged {
                continue;
            }
            // SAFETY: a live model and a valid op.
            let rc = unsafe { vdpa_iova_model_apply_op(self.m, op) };
            if rc != 0 {
                assert!(
                    !self.identity && rc == -EPROTO,
                    "op {op:?} refused by the kernel model ({rc}): {}\nplan: {ops:?}",
                    last_error()
                );
                self.diverged = true;
            }
        }
        if !self.diverged {
            assert_eq!(
                self.mapped(),
                self.model_entries(),
                "planner and model tables differ"
            );
        }
    }

    fn check_translation(&self, segs: &[vdpa_iova_segment]) {
        if self.diverged {
            return;
        }
        // Guest memory is in address space 0. A segment may span several
        // entries (adjacent regions map at adjacent IOVAs): its first and
        // last bytes must both be mapped, with its permission.
        for s in segs {
            for iova in [s.iova, s.iova + (s.len - 1)] {
                let mut e = vdpa_iova_entry::default();
                // SAFETY: a live model, a writable entry.
                let rc = unsafe { vdpa_iova_model_lookup(self.m, 0, iova, &mut e) };
                assert_eq!(
                    rc, 0,
                    "translated to {iova:#x}, which the model does not map"
                );
                assert_eq!(e.perm, s.perm, "at {iova:#x}");
            }
        }
    }
}

impl Drop for Fuzz {
    fn drop(&mut self) {
        // SAFETY: made by the _new functions, freed once.
        unsafe {
            vdpa_iova_planner_free(self.p);
            vdpa_iova_model_free(self.m);
        }
    }
}

fn regions(raw: &[(u8, u64, u8, u64, u64, u8)]) -> Vec<vdpa_iova_region> {
    raw.iter()
        .take(6)
        .map(|&(gs, g, ss, sz, hva, ro)| vdpa_iova_region {
            gpa: pick(gs, g),
            size: size(ss, sz),
            hva: pick(hva as u8, hva) | u64::from(ro >> 7) << 3,
            readonly: ro % 3 / 2 + u8::from(ro == 0x7f),
            reserved: [0; 7],
        })
        .collect()
}

fn caps_of(r: &RawCaps) -> (vdpa_iova_caps, vdpa_iova_options) {
    let first = pick(r.range.0, r.range.1);
    let last = match r.range.2 % 4 {
        0 => u64::MAX,
        1 => first
            .wrapping_add(size(r.range.2 >> 2, r.range.3))
            .wrapping_sub(1),
        2 => (1 << 30) - 1,
        _ => r.range.3,
    };
    let caps = vdpa_iova_caps {
        range_first: if r.range.0 & 0x40 != 0 { first } else { 0 },
        range_last: last,
        page_size: if r.page_shift % 8 == 7 {
            u64::from(r.page_shift)
        } else {
            1 << (12 + r.page_shift % 3)
        },
        address_spaces: u32::from(r.address_spaces % 4),
        map_style: u32::from(r.map_style % 4),
        batching: r.flags & 1,
        desc_asid: (r.flags >> 1) & 1,
        persist: (r.flags >> 2) & 1,
        pinning: (r.flags >> 3) & 1,
        cvq_isolated: (r.flags >> 4) & 1,
        reserved: [0, 0, if r.flags == 0xff { 1 } else { 0 }],
    };
    let opts = vdpa_iova_options {
        strategy: u32::from(r.strategy % 3),
        viommu: r.viommu_last.is_some().into(),
        separate_vring_asid: r.separate.into(),
        reserved: [0; 2],
        max_gpa: if r.max_gpa.0 % 3 == 0 {
            0
        } else {
            pick(r.max_gpa.0, r.max_gpa.1)
        },
        viommu_last: r.viommu_last.map_or(0, |(s, v)| pick(s, v) | 0xfff),
    };
    (caps, opts)
}

fn run(data: &[u8]) -> arbitrary::Result<()> {
    let mut u = Unstructured::new(data);
    let raw = RawCaps::arbitrary(&mut u)?;
    let (caps, opts) = caps_of(&raw);
    let mut p = 0x8 as *mut vdpa_iova_planner;
    let null_opts = raw.flags == 0x80;
    // SAFETY: valid pointers (NULL options is allowed).
    let rc =
        unsafe { vdpa_iova_planner_new(&caps, if null_opts { null() } else { &opts }, &mut p) };
    if rc != 0 {
        assert!(
            rc < 0 && rc != -EIO && p.is_null(),
            "{rc}: {}",
            last_error()
        );
        return Ok(());
    }
    let mut m = null_mut();
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { vdpa_iova_model_new(&caps, &mut m) },
        0,
        "{}",
        last_error()
    );
    let mut f = Fuzz {
        p,
        m,
        address_spaces: caps.address_spaces,
        diverged: false,
        identity: null_opts || opts.strategy == VDPA_IOVA_STRATEGY_IDENTITY,
    };
    for _ in 0..48 {
        if u.is_empty() {
            break;
        }
        let call = Call::arbitrary(&mut u)?;
        let p = f.p;
        // SAFETY (every call below): live handles, and pointers that are
        // valid or NULL, which is what the ABI must refuse.
        match call {
            Call::Add(rs) => {
                let regions = regions(&rs);
                f.event(false, |o| unsafe {
                    vdpa_iova_add_regions(p, regions.as_ptr(), regions.len(), o)
                });
            }
            Call::Incoming(rs) => {
                let regions = regions(&rs);
                f.event(false, |o| unsafe {
                    vdpa_iova_incoming(p, regions.as_ptr(), regions.len(), o)
                });
            }
            Call::Start => f.event(false, |o| unsafe { vdpa_iova_start(p, o) }),
            Call::HostBuffers(bs) => {
                let bufs: Vec<vdpa_iova_host_buffer> = bs
                    .iter()
                    .take(4)
                    .map(|&(hs, h, ss, sz, perm)| vdpa_iova_host_buffer {
                        hva: pick(hs, h),
                        size: size(ss, sz),
                        perm: perm % 5,
                        reserved: [0, 0, 0, 0, 0, 0, u8::from(perm == 0xff)],
                    })
                    .collect();
                f.event(false, |o| unsafe {
                    vdpa_iova_host_buffers(p, bufs.as_ptr(), bufs.len(), o)
                });
            }
            Call::BufferEntries(cap) => {
                // Every host buffer entry is one of the planner's entries.
                let all = f.mapped();
                let cap = usize::from(cap % 4);
                let mut v = vec![vdpa_iova_entry::default(); cap];
                let mut n = 0;
                let rc = unsafe { vdpa_iova_buffer_entries(p, v.as_mut_ptr(), cap, &mut n) };
                if rc == 0 {
                    assert!(
                        v[..n].iter().all(|e| all.contains(e)),
                        "{v:?} not in {all:?}"
                    );
                } else {
                    assert_eq!(rc, -ENOBUFS);
                    assert!(n > cap);
                }
            }
            Call::AddNullRegions(n) => {
                let n = usize::from(n % 3);
                f.event(false, |o| unsafe { vdpa_iova_add_regions(p, null(), n, o) });
            }
            Call::Remove(s, g) => f.event(false, |o| unsafe {
                vdpa_iova_remove_region(p, pick(s, g), o)
            }),
            Call::Prepare(q, qs, h) => {
                let c = svq(q, qs, h);
                f.event(false, |o| unsafe { vdpa_iova_svq_prepare(p, &c, o) });
            }
            Call::Switch(c) => {
                let c = c.map(|(q, qs, h)| svq(q, qs, h));
                let cp = c.as_ref().map_or(null(), |c| c as *const _);
                f.event(false, |o| unsafe { vdpa_iova_svq_switch(p, cp, o) });
            }
            Call::Failback => f.event(false, |o| unsafe { vdpa_iova_failback(p, o) }),
            Call::Complete => f.event(false, |o| unsafe { vdpa_iova_complete(p, o) }),
            Call::Reset => f.event(true, |o| unsafe { vdpa_iova_reset(p, o) }),
            Call::Map(gs, g, ss, sz, ps, pa, perm) => f.event(false, |o| unsafe {
                vdpa_iova_viommu_map(p, pick(gs, g), size(ss, sz), pick(ps, pa), perm % 5, o)
            }),
            Call::Unmap(gs, g, ss, sz) => f.event(false, |o| unsafe {
                vdpa_iova_viommu_unmap(p, pick(gs, g), size(ss, sz), o)
            }),
            Call::Translate(gs, g, ls, l, cap) => {
                let len = match ls % 4 {
                    0 => u64::from(ls),
                    1 => size(ls >> 2, l),
                    2 => l % (1 << 22),
                    _ => l,
                };
                let (_, _, segs) = f.translate(pick(gs, g), len, usize::from(cap % 5));
                f.check_translation(&segs);
            }
            Call::TranslateNullSegs(gs, g) => {
                let mut n = 7;
                let rc =
                    unsafe { vdpa_iova_translate(p, pick(gs, g), PAGE, null_mut(), 3, &mut n) };
                assert_eq!((rc, n), (-EFAULT, 0));
                let rc =
                    unsafe { vdpa_iova_translate(p, pick(gs, g), PAGE, null_mut(), 0, null_mut()) };
                assert_eq!(rc, -EFAULT);
            }
            Call::Mapped(cap) => {
                let all = f.mapped();
                let cap = usize::from(cap % 8);
                let mut v = vec![vdpa_iova_entry::default(); cap];
                let mut n = 0;
                let rc = unsafe { vdpa_iova_mapped(p, v.as_mut_ptr(), cap, &mut n) };
                if all.len() <= cap {
                    assert_eq!((rc, &v[..n]), (0, &all[..]));
                } else {
                    assert_eq!((rc, n), (-ENOBUFS, all.len()));
                }
            }
            Call::NullPlanner(which) => {
                let c = svq(2, 8, 0x7e00_0000_0000);
                let mut out = 0x8 as *mut vdpa_iova_plan;
                let o = &mut out as *mut _;
                let q = null_mut();
                let rc = match which % 9 {
                    0 => unsafe { vdpa_iova_add_regions(q, null(), 0, o) },
                    1 => unsafe { vdpa_iova_remove_region(q, 0, o) },
                    2 => unsafe { vdpa_iova_svq_prepare(q, &c, o) },
                    3 => unsafe { vdpa_iova_svq_switch(q, null(), o) },
                    4 => unsafe { vdpa_iova_failback(q, o) },
                    5 => unsafe { vdpa_iova_complete(q, o) },
                    6 => unsafe { vdpa_iova_reset(q, o) },
                    7 => unsafe { vdpa_iova_viommu_map(q, 0, PAGE, 0, 3, o) },
                    _ => unsafe { vdpa_iova_viommu_unmap(q, 0, PAGE, o) },
                };
                assert_eq!((rc, out), (-EFAULT, null_mut()));
                assert!(unsafe { vdpa_iova_mode(null()) } == -EFAULT);
            }
            Call::NullOut(which) => {
                let before = f.snapshot();
                let rc = match which % 7 {
                    0 => unsafe { vdpa_iova_add_regions(p, null(), 0, null_mut()) },
                    1 => unsafe { vdpa_iova_remove_region(p, 0, null_mut()) },
                    2 => unsafe { vdpa_iova_svq_switch(p, null(), null_mut()) },
                    3 => unsafe { vdpa_iova_failback(p, null_mut()) },
                    4 => unsafe { vdpa_iova_complete(p, null_mut()) },
                    5 => unsafe { vdpa_iova_reset(p, null_mut()) },
                    _ => unsafe { vdpa_iova_viommu_unmap(p, 0, PAGE, null_mut()) },
                };
                assert_eq!(rc, -EFAULT);
                assert_eq!(f.snapshot(), before);
            }
            Call::SvqSize(q, qs, h, ps) => {
                let c = svq(q, qs, h);
                let mut bytes = 0;
                let rc = unsafe { vdpa_iova_svq_size(&c, 1 << (12 + ps % 4), &mut bytes) };
                assert!(rc == 0 || rc == -EINVAL, "{rc}");
                if rc == 0 {
                    assert!(bytes > 0 && bytes % (1 << (12 + ps % 4)) == 0);
                }
            }
        }
    }
    Ok(())
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
