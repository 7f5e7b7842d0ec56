//! The extern "C" functions called as C would: NULL and misaligned pointers,
//! bad capabilities, zero, unaligned and wrapping sizes, events out of
//! order, out of IOVA, arrays too small; after every refusal the planner
//! must be exactly as before (mode, table and translations).

use core::ffi::c_int;
use std::ffi::CStr;
use std::ptr::{null, null_mut};

use vdpa_iova::*;

const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn last_error() -> String {
    // SAFETY: a NUL-terminated string valid until the next call on this thread.
    unsafe { CStr::from_ptr(vdpa_iova_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn caps() -> vdpa_iova_caps {
    let mut c = vdpa_iova_caps::default();
    // SAFETY: c is a valid, writable struct.
    assert_eq!(unsafe { vdpa_iova_caps_default(&mut c) }, 0);
    c
}

/// A planner, freed on drop.
struct Planner(*mut vdpa_iova_planner);

impl Planner {
    fn new(caps: &vdpa_iova_caps, opts: Option<&vdpa_iova_options>) -> Result<Self, c_int> {
        let mut p = null_mut();
        let o = opts.map_or(null(), |o| o as *const _);
        // SAFETY: valid pointers or NULL options.
        let rc = unsafe { vdpa_iova_planner_new(caps, o, &mut p) };
        if rc == 0 {
            assert!(!p.is_null());
            Ok(Planner(p))
        } else {
            assert!(p.is_null(), "out must be NULL on failure");
            Err(rc)
        }
    }

    fn identity(caps: &vdpa_iova_caps) -> Self {
        Planner::new(caps, None).expect("planner")
    }
}

impl Drop for Planner {
    fn drop(&mut self) {
        // SAFETY: made by vdpa_iova_planner_new, freed once.
        unsafe { vdpa_iova_planner_free(self.0) };
    }
}

/// The ops of a plan, and the plan freed.
fn take(plan: *mut vdpa_iova_plan) -> Vec<vdpa_iova_op> {
    assert!(!plan.is_null());
    let mut n = usize::MAX;
    // SAFETY: a live plan and a writable n.
    let ops = unsafe { vdpa_iova_plan_ops(plan, &mut n) };
    assert!(!ops.is_null());
    // SAFETY: the plan owns n ops at ops until it is freed below.
    let v = unsafe { std::slice::from_raw_parts(ops, n) }.to_vec();
    // SAFETY: freed once.
    unsafe { vdpa_iova_plan_free(plan) };
    v
}

/// Runs an event: `Ok(ops)` or `Err(errno)`, checking the out convention.
fn ev(f: impl FnOnce(*mut *mut vdpa_iova_plan) -> c_int) -> Result<Vec<vdpa_iova_op>, c_int> {
    let mut plan: *mut vdpa_iova_plan = 0x1 as *mut _; // garbage the call must overwrite
    let rc = f(&mut plan);
    if rc == 0 {
        Ok(take(plan))
    } else {
        assert!(rc < 0);
        assert!(plan.is_null(), "out must be NULL on failure");
        assert!(!last_error().is_empty());
        Err(-rc)
    }
}

fn region(gpa: u64, size: u64, hva: u64, readonly: bool) -> vdpa_iova_region {
    vdpa_iova_region {
        gpa,
        size,
        hva,
        readonly: readonly.into(),
        reserved: [0; 7],
    }
}

fn add(p: &Planner, regions: &[vdpa_iova_region]) -> Result<Vec<vdpa_iova_op>, c_int> {
    // SAFETY: a live planner and regions.len() valid regions.
    ev(|out| unsafe { vdpa_iova_add_regions(p.0, regions.as_ptr(), regions.len(), out) })
}

fn svq(queues: u32, hva: u64) -> vdpa_iova_svq_config {
    vdpa_iova_svq_config {
        queues,
        queue_size: 256,
        hva,
    }
}

fn translate(
    p: &Planner,
    gpa: u64,
    len: u64,
    cap: usize,
) -> (c_int, usize, Vec<vdpa_iova_segment>) {
    let mut segs = vec![vdpa_iova_segment::default(); cap];
    let mut n = usize::MAX;
    // SAFETY: cap writable segments, a writable n.
    let rc = unsafe { vdpa_iova_translate(p.0, gpa, len, segs.as_mut_ptr(), cap, &mut n) };
    segs.truncate(if rc == 0 { n } else { 0 });
    (rc, n, segs)
}

fn mapped(p: &Planner) -> Vec<vdpa_iova_entry> {
    let mut n = 0;
    // SAFETY: a live planner; NULL entries with cap 0.
    let rc = unsafe { vdpa_iova_mapped(p.0, null_mut(), 0, &mut n) };
    assert!(rc == 0 || rc == -libc::ENOBUFS);
    let mut v = vec![vdpa_iova_entry::default(); n];
    // SAFETY: n writable entries.
    assert_eq!(
        // SAFETY: live handles and valid pointers (NULL ones are what is refused).
        unsafe { vdpa_iova_mapped(p.0, v.as_mut_ptr(), n, &mut n) },
        0
    );
    v
}

/// Everything observable about a planner.
#[derive(Debug, PartialEq)]
struct Snapshot {
    mode: c_int,
    mapped: Vec<vdpa_iova_entry>,
    xlate: Vec<(c_int, Vec<vdpa_iova_segment>)>,
}

fn snapshot(p: &Planner) -> Snapshot {
    let probes = [0, PAGE, MIB, GIB - PAGE, GIB, 2 * GIB, 4 * GIB, 8 * GIB];
    Snapshot {
        // SAFETY: a live planner.
        mode: unsafe { vdpa_iova_mode(p.0) },
        mapped: mapped(p),
        xlate: probes
            .iter()
            .map(|&g| {
                let (rc, _, s) = translate(p, g, 2 * PAGE, 4);
                (rc, s)
            })
            .collect(),
    }
}

/// Asserts that `f` fails with `errno` and changes nothing observable;
/// returns the error message.
#[track_caller]
fn refused(
    p: &Planner,
    errno: c_int,
    f: impl FnOnce() -> Result<Vec<vdpa_iova_op>, c_int>,
) -> String {
    let before = snapshot(p);
    let r = f();
    let msg = last_error();
    assert_eq!(r.as_ref().err(), Some(&errno), "{r:?}: {msg}");
    assert_eq!(snapshot(p), before, "a refused call changed the planner");
    msg
}

/// A booted guest: 1 GiB of RAM below a PCI hole, 1 GiB above 4 GiB.
fn booted(caps: &vdpa_iova_caps, opts: Option<&vdpa_iova_options>) -> Planner {
    let p = Planner::new(caps, opts).expect("planner");
    add(
        &p,
        &[
            region(0, GIB, 0x7f00_0000_0000, false),
            region(4 * GIB, GIB, 0x7f10_0000_0000, false),
        ],
    )
    .expect("boot");
    p
}

#[test]
fn null_pointers_are_efault_and_touch_nothing() {
    let c = caps();
    let mut p = null_mut();
    // SAFETY: NULL pointers are what is tested; the others are valid.
    unsafe {
        assert_eq!(vdpa_iova_planner_new(null(), null(), &mut p), -libc::EFAULT);
        assert!(p.is_null());
        assert!(last_error().contains("caps is NULL"), "{}", last_error());
        assert_eq!(vdpa_iova_planner_new(&c, null(), null_mut()), -libc::EFAULT);
        assert_eq!(vdpa_iova_caps_default(null_mut()), -libc::EFAULT);
        assert_eq!(vdpa_iova_options_default(null_mut()), -libc::EFAULT);
        assert_eq!(vdpa_iova_mode(null()), -libc::EFAULT);
        vdpa_iova_planner_free(null_mut());
        vdpa_iova_plan_free(null_mut());
        vdpa_iova_model_free(null_mut());
    }
    let planner = booted(&c, None);
    let before = snapshot(&planner);
    let cfg = svq(2, 0x7e00_0000_0000);
    // Each event with a NULL planner, then with a NULL out.
    // SAFETY: NULL handles and outs are refused before anything is read.
    unsafe {
        let r = vec![
            ev(|o| vdpa_iova_add_regions(null_mut(), null(), 0, o)),
            ev(|o| vdpa_iova_remove_region(null_mut(), 0, o)),
            ev(|o| vdpa_iova_svq_prepare(null_mut(), &cfg, o)),
            ev(|o| vdpa_iova_svq_switch(null_mut(), &cfg, o)),
            ev(|o| vdpa_iova_failback(null_mut(), o)),
            ev(|o| vdpa_iova_complete(null_mut(), o)),
            ev(|o| vdpa_iova_reset(null_mut(), o)),
            ev(|o| vdpa_iova_viommu_map(null_mut(), 0, PAGE, 0, 3, o)),
            ev(|o| vdpa_iova_viommu_unmap(null_mut(), 0, PAGE, o)),
            // A live planner with a NULL regions array or config.
            ev(|o| vdpa_iova_add_regions(planner.0, null(), 1, o)),
            ev(|o| vdpa_iova_svq_prepare(planner.0, null(), o)),
        ];
        for (i, r) in r.into_iter().enumerate() {
            assert_eq!(r, Err(libc::EFAULT), "call {i}");
        }
        for rc in [
            vdpa_iova_add_regions(planner.0, null(), 0, null_mut()),
            vdpa_iova_remove_region(planner.0, 0, null_mut()),
            vdpa_iova_svq_prepare(planner.0, &cfg, null_mut()),
            vdpa_iova_svq_switch(planner.0, &cfg, null_mut()),
            vdpa_iova_failback(planner.0, null_mut()),
            vdpa_iova_complete(planner.0, null_mut()),
            vdpa_iova_reset(planner.0, null_mut()),
            vdpa_iova_viommu_map(planner.0, 0, PAGE, 0, 3, null_mut()),
            vdpa_iova_viommu_unmap(planner.0, 0, PAGE, null_mut()),
        ] {
            assert_eq!(rc, -libc::EFAULT);
            assert!(last_error().contains("out is NULL"), "{}", last_error());
        }
        // Plans and translate.
        let mut n = 7usize;
        assert!(vdpa_iova_plan_ops(null(), &mut n).is_null());
        assert_eq!(n, 0);
        let mut cost = vdpa_iova_cost::default();
        assert_eq!(vdpa_iova_plan_cost(null(), &mut cost), -libc::EFAULT);
        assert_eq!(
            vdpa_iova_translate(planner.0, 0, 64, null_mut(), 0, null_mut()),
            -libc::EFAULT
        );
        let mut n = 9;
        assert_eq!(
            vdpa_iova_translate(null(), 0, 64, null_mut(), 0, &mut n),
            -libc::EFAULT
        );
        assert_eq!(n, 0);
        assert_eq!(
            vdpa_iova_translate(planner.0, 0, 64, null_mut(), 4, &mut n),
            -libc::EFAULT
        );
        assert_eq!(
            vdpa_iova_mapped(planner.0, null_mut(), 3, &mut n),
            -libc::EFAULT
        );
        let mut bytes = 0;
        assert_eq!(vdpa_iova_svq_size(null(), PAGE, &mut bytes), -libc::EFAULT);
        assert_eq!(vdpa_iova_svq_size(&cfg, PAGE, null_mut()), -libc::EFAULT);
    }
    assert_eq!(snapshot(&planner), before);
}

#[test]
fn misaligned_pointers_are_efault() {
    let c = caps();
    let p = booted(&c, None);
    let mut buf = [0u64; 16];
    let odd = (buf.as_mut_ptr() as *mut u8).wrapping_add(1);
    let mut n = 0;
    // SAFETY: misaligned pointers are refused before any access.
    unsafe {
        assert_eq!(
            vdpa_iova_translate(p.0, 0, 64, odd.cast(), 2, &mut n),
            -libc::EFAULT
        );
        assert!(last_error().contains("not aligned"), "{}", last_error());
        assert_eq!(vdpa_iova_caps_default(odd.cast()), -libc::EFAULT);
        let r = ev(|o| vdpa_iova_add_regions(p.0, odd.cast_const().cast(), 1, o));
        assert_eq!(r, Err(libc::EFAULT));
    }
}

#[test]
fn bad_caps_and_options_are_refused() {
    let good = caps();
    let cases: Vec<(vdpa_iova_caps, c_int)> = vec![
        (
            vdpa_iova_caps {
                page_size: 4097,
                ..good
            },
            libc::EINVAL,
        ),
        (
            vdpa_iova_caps {
                page_size: 2048,
                ..good
            },
            libc::EINVAL,
        ),
        (
            vdpa_iova_caps {
                page_size: 0,
                ..good
            },
            libc::EINVAL,
        ),
        (
            vdpa_iova_caps {
                range_first: 2 * PAGE,
                range_last: PAGE,
                ..good
            },
            libc::EINVAL,
        ),
        // Narrower than a page once aligned.
        (
            vdpa_iova_caps {
                range_first: 1,
                range_last: PAGE,
                ..good
            },
            libc::EINVAL,
        ),
        (
            vdpa_iova_caps {
                address_spaces: 0,
                ..good
            },
            libc::EINVAL,
        ),
        (
            vdpa_iova_caps {
                batching: 2,
                ..good
            },
            libc::EINVAL,
        ),
        (
            vdpa_iova_caps {
                pinning: 255,
                ..good
            },
            libc::EINVAL,
        ),
        (
            vdpa_iova_caps {
                map_style: 3,
                ..good
            },
            libc::EINVAL,
        ),
        (
            vdpa_iova_caps {
                reserved: [0, 1, 0],
                ..good
            },
            libc::EINVAL,
        ),
        (
            vdpa_iova_caps {
                cvq_isolated: 2,
                ..good
            },
            libc::EINVAL,
        ),
        // An isolated control queue needs a second address space.
        (
            vdpa_iova_caps {
                cvq_isolated: 1,
                ..good
            },
            libc::EOPNOTSUPP,
        ),
    ];
    for (c, errno) in cases {
        assert_eq!(Planner::new(&c, None).err(), Some(-errno), "{c:?}");
        let mut m = null_mut();
        // SAFETY: valid pointers.
        assert_eq!(unsafe { vdpa_iova_model_new(&c, &mut m) }, -errno);
        assert!(m.is_null());
    }
    let o = vdpa_iova_options::default();
    let two = vdpa_iova_caps {
        desc_asid: 1,
        address_spaces: 2,
        ..good
    };
    let cases: Vec<(vdpa_iova_caps, vdpa_iova_options, c_int)> = vec![
        (good, vdpa_iova_options { strategy: 2, ..o }, libc::EINVAL),
        (good, vdpa_iova_options { viommu: 2, ..o }, libc::EINVAL),
        (
            good,
            vdpa_iova_options {
                viommu_last: GIB,
                ..o
            },
            libc::EINVAL,
        ),
        (
            good,
            vdpa_iova_options {
                reserved: [1, 0],
                ..o
            },
            libc::EINVAL,
        ),
        (
            good,
            vdpa_iova_options {
                separate_vring_asid: 1,
                ..o
            },
            libc::EOPNOTSUPP,
        ),
        (
            two,
            vdpa_iova_options {
                separate_vring_asid: 1,
                strategy: VDPA_IOVA_STRATEGY_QEMU,
                ..o
            },
            libc::EOPNOTSUPP,
        ),
    ];
    for (c, o, errno) in cases {
        assert_eq!(Planner::new(&c, Some(&o)).err(), Some(-errno), "{o:?}");
    }
    // And the good ones.
    for o in [
        o,
        vdpa_iova_options {
            strategy: VDPA_IOVA_STRATEGY_QEMU,
            max_gpa: 8 * GIB,
            ..o
        },
        vdpa_iova_options {
            viommu: 1,
            viommu_last: (1 << 39) - 1,
            ..o
        },
        vdpa_iova_options {
            strategy: VDPA_IOVA_STRATEGY_QEMU,
            viommu: 1,
            viommu_last: GIB,
            ..o
        },
    ] {
        assert!(
            Planner::new(&good, Some(&o)).is_ok(),
            "{o:?}: {}",
            last_error()
        );
    }
    assert!(Planner::new(
        &two,
        Some(&vdpa_iova_options {
            separate_vring_asid: 1,
            ..o
        })
    )
    .is_ok());
}

#[test]
fn bad_regions_are_einval_and_change_nothing() {
    let c = caps();
    let p = booted(&c, None);
    let hva = 0x7f20_0000_0000;
    for (r, what) in [
        (region(8 * GIB, 0, hva, false), "size zero"),
        (region(8 * GIB + 1, PAGE, hva, false), "gpa unaligned"),
        (region(8 * GIB, PAGE + 1, hva, false), "size unaligned"),
        (region(8 * GIB, PAGE, hva + 8, false), "hva unaligned"),
        (
            region(u64::MAX - PAGE + 1, 2 * PAGE, hva, false),
            "gpa wraps",
        ),
        (
            region(8 * GIB, 2 * PAGE, u64::MAX - PAGE + 1, false),
            "hva wraps",
        ),
        (region(GIB - PAGE, 2 * PAGE, hva, false), "overlaps RAM"),
        (
            vdpa_iova_region {
                readonly: 2,
                ..region(8 * GIB, PAGE, hva, false)
            },
            "readonly 2",
        ),
        (
            vdpa_iova_region {
                reserved: [0, 0, 0, 0, 0, 0, 9],
                ..region(8 * GIB, PAGE, hva, false)
            },
            "reserved",
        ),
    ] {
        let msg = refused(&p, libc::EINVAL, || add(&p, &[r]));
        assert!(msg.starts_with("vdpa_iova_add_regions: "), "{what}: {msg}");
    }
    // Two new regions overlapping each other.
    refused(&p, libc::EINVAL, || {
        add(
            &p,
            &[
                region(8 * GIB, 2 * PAGE, hva, false),
                region(8 * GIB + PAGE, PAGE, hva, false),
            ],
        )
    });
    // An array too large to exist.
    refused(&p, libc::EINVAL, || {
        let r = region(8 * GIB, PAGE, hva, false);
        // SAFETY: refused on its length before anything is read.
        ev(|o| unsafe { vdpa_iova_add_regions(p.0, &r, usize::MAX / 2, o) })
    });
    // Unplugging something that is not a region's start.
    refused(&p, libc::ENOENT, || {
        // SAFETY: a live planner.
        ev(|o| unsafe { vdpa_iova_remove_region(p.0, PAGE, o) })
    });
}

#[test]
fn empty_add_regions_is_an_empty_plan() {
    let c = caps();
    let p = Planner::identity(&c);
    // SAFETY: NULL regions with n == 0 is allowed.
    let r = ev(|o| unsafe { vdpa_iova_add_regions(p.0, null(), 0, o) });
    assert_eq!(r.map(|ops| ops.len()), Ok(0), "{}", last_error());
}

#[test]
fn events_out_of_order_are_eproto() {
    let c = caps();
    let p = booted(&c, None);
    // SAFETY (all blocks below): a live planner and valid arguments.
    refused(&p, libc::EPROTO, || {
        // SAFETY: live handles and valid pointers (NULL ones are what is refused).
        ev(|o| unsafe { vdpa_iova_failback(p.0, o) })
    });
    refused(&p, libc::EPROTO, || {
        // SAFETY: live handles and valid pointers (NULL ones are what is refused).
        ev(|o| unsafe { vdpa_iova_svq_switch(p.0, null(), o) })
    });
    let cfg = svq(3, 0x7e00_0000_0000);
    // SAFETY: a live planner and a valid config.
    let prep = ev(|o| unsafe { vdpa_iova_svq_prepare(p.0, &cfg, o) }).expect("prepare");
    assert!(prep.iter().all(|op| op.phase == VDPA_IOVA_PHASE_PREPARE));
    // SAFETY: as above.
    refused(&p, libc::EPROTO, || {
        // SAFETY: live handles and valid pointers (NULL ones are what is refused).
        ev(|o| unsafe { vdpa_iova_svq_prepare(p.0, &cfg, o) })
    });
    // SAFETY: as above.
    let sw = ev(|o| unsafe { vdpa_iova_svq_switch(p.0, null(), o) }).expect("switch");
    assert!(sw.is_empty(), "the identity switch writes nothing: {sw:?}");
    // SAFETY: a live planner.
    assert_eq!(unsafe { vdpa_iova_mode(p.0) }, VDPA_IOVA_MODE_SVQ as c_int);
    // SAFETY: as above.
    refused(&p, libc::EPROTO, || {
        // SAFETY: live handles and valid pointers (NULL ones are what is refused).
        ev(|o| unsafe { vdpa_iova_svq_switch(p.0, null(), o) })
    });
    // SAFETY: as above.
    ev(|o| unsafe { vdpa_iova_complete(p.0, o) }).expect("complete");
    // SAFETY: as above.
    refused(&p, libc::EPROTO, || {
        // SAFETY: live handles and valid pointers (NULL ones are what is refused).
        ev(|o| unsafe { vdpa_iova_complete(p.0, o) })
    });
    refused(&p, libc::EPROTO, || {
        add(&p, &[region(16 * GIB, PAGE, 0x7f30_0000_0000, false)])
    });
    // SAFETY: as above.
    let msg = refused(&p, libc::EPROTO, || {
        // SAFETY: live handles and valid pointers (NULL ones are what is refused).
        ev(|o| unsafe { vdpa_iova_remove_region(p.0, 0, o) })
    });
    assert!(msg.starts_with("vdpa_iova_remove_region: "), "{msg}");
    // A reset of a completed device has nothing to restore.
    // SAFETY: as above.
    assert_eq!(ev(|o| unsafe { vdpa_iova_reset(p.0, o) }), Ok(vec![]));
}

#[test]
fn out_of_iova_is_enospc_and_changes_nothing() {
    // A device that reaches 2 MiB, all of it guest memory but a page at
    // each end: no room for six pages of vrings. (A region ending at the
    // range's last byte would be skipped by the QEMU strategy: QEMU's
    // off-by-one.)
    let c = vdpa_iova_caps {
        range_last: 2 * MIB - 1,
        ..caps()
    };
    for strategy in [VDPA_IOVA_STRATEGY_IDENTITY, VDPA_IOVA_STRATEGY_QEMU] {
        let o = vdpa_iova_options {
            strategy,
            ..Default::default()
        };
        let p = Planner::new(&c, Some(&o)).expect("planner");
        add(
            &p,
            &[region(PAGE, 2 * MIB - 2 * PAGE, 0x7f00_0000_0000, false)],
        )
        .expect("boot");
        let cfg = svq(2, 0x7e00_0000_0000);
        let f = || {
            // SAFETY: a live planner and a valid config.
            ev(|o| unsafe { vdpa_iova_svq_prepare(p.0, &cfg, o) })
                // QEMU maps at the switch, not at prepare.
                .and_then(|_| ev(|o| unsafe { vdpa_iova_svq_switch(p.0, null(), o) }))
        };
        let msg = if strategy == VDPA_IOVA_STRATEGY_IDENTITY {
            refused(&p, libc::ENOSPC, f)
        } else {
            assert_eq!(f().err(), Some(libc::ENOSPC), "{}", last_error());
            last_error()
        };
        assert!(msg.contains("out of IOVA space"), "{msg}");
    }
}

#[test]
fn unreachable_memory_is_erange() {
    let c = vdpa_iova_caps {
        range_last: GIB - 1,
        ..caps()
    };
    let p = booted(&c, None); // the region at 4 GiB is beyond the device
    let (rc, n, _) = translate(&p, 4 * GIB, 64, 2);
    assert_eq!((rc, n), (-libc::ERANGE, 0), "{}", last_error());
    let (rc, _, _) = translate(&p, 2 * GIB, 64, 2);
    assert_eq!(rc, -libc::ENOENT);
}

#[test]
fn translate_with_a_small_array() {
    let c = caps();
    let p = Planner::identity(&c);
    // RW, RO, RW back to back: three segments (the permission changes).
    add(
        &p,
        &[
            region(0, MIB, 0x7f00_0000_0000, false),
            region(MIB, MIB, 0x7f10_0000_0000, true),
            region(2 * MIB, MIB, 0x7f20_0000_0000, false),
        ],
    )
    .unwrap();
    let (rc, n, s) = translate(&p, MIB - 64, 128, 2);
    assert_eq!((rc, n), (0, 2));
    assert_eq!(
        s[0],
        vdpa_iova_segment {
            iova: MIB - 64,
            len: 64,
            perm: 3,
            reserved: [0; 7]
        }
    );
    assert_eq!(
        s[1],
        vdpa_iova_segment {
            iova: MIB,
            len: 64,
            perm: 1,
            reserved: [0; 7]
        }
    );
    // Three needed, two given: -ENOBUFS, the count, the array untouched.
    let mut segs = [vdpa_iova_segment {
        iova: 0xdead,
        ..Default::default()
    }; 2];
    let mut n = 0;
    // SAFETY: two writable segments.
    let rc = unsafe { vdpa_iova_translate(p.0, 0, 3 * MIB, segs.as_mut_ptr(), 2, &mut n) };
    assert_eq!((rc, n), (-libc::ENOBUFS, 3));
    assert!(segs.iter().all(|s| s.iova == 0xdead));
    assert!(last_error().contains("needs 3"), "{}", last_error());
    // Counting with no array at all.
    // SAFETY: NULL segs with cap 0.
    let rc = unsafe { vdpa_iova_translate(p.0, 0, 3 * MIB, null_mut(), 0, &mut n) };
    assert_eq!((rc, n), (-libc::ENOBUFS, 3));
    let (rc, n, s) = translate(&p, 0, 3 * MIB, 3);
    assert_eq!((rc, n), (0, 3));
    assert_eq!(s.iter().map(|s| s.len).sum::<u64>(), 3 * MIB);
    // Zero and wrapping lengths, and not guest memory.
    assert_eq!(translate(&p, 0, 0, 2).0, -libc::EINVAL);
    assert_eq!(translate(&p, PAGE, u64::MAX, 2).0, -libc::EINVAL);
    assert_eq!(translate(&p, 3 * MIB, 1, 2).0, -libc::ENOENT);
    assert_eq!(translate(&p, 3 * MIB - 1, 2, 2).0, -libc::ENOENT);
}

#[test]
fn viommu_errors() {
    let c = caps();
    let plain = booted(&c, None);
    // SAFETY (all blocks below): a live planner and valid arguments.
    refused(&plain, libc::EOPNOTSUPP, || {
        // SAFETY: live handles and valid pointers (NULL ones are what is refused).
        ev(|o| unsafe { vdpa_iova_viommu_map(plain.0, 0, PAGE, 0, VDPA_IOVA_PERM_RW, o) })
    });
    let o = vdpa_iova_options {
        viommu: 1,
        viommu_last: (1 << 39) - 1,
        ..Default::default()
    };
    let p = booted(&c, Some(&o));
    assert!(
        mapped(&p).is_empty(),
        "nothing is mapped until the guest maps it"
    );
    refused(&p, libc::EINVAL, || {
        // SAFETY: live handles and valid pointers (NULL ones are what is refused).
        ev(|o| unsafe { vdpa_iova_viommu_map(p.0, 0, PAGE, 0, 0, o) })
    });
    refused(&p, libc::EINVAL, || {
        // SAFETY: live handles and valid pointers (NULL ones are what is refused).
        ev(|o| unsafe { vdpa_iova_viommu_map(p.0, 0, PAGE, 0, 4, o) })
    });
    refused(&p, libc::ENOENT, || {
        // SAFETY: live handles and valid pointers (NULL ones are what is refused).
        ev(|o| unsafe { vdpa_iova_viommu_unmap(p.0, 0, PAGE, o) })
    });
    let ops =
        // SAFETY: live handles and valid pointers (NULL ones are what is refused).
        ev(|o| unsafe { vdpa_iova_viommu_map(p.0, 1 << 30, 2 * PAGE, 0, VDPA_IOVA_PERM_RO, o) })
            .expect("map");
    assert!(ops.iter().any(|op| op.r#type == VDPA_IOVA_OP_UPDATE
        && op.iova == 1 << 30
        && op.size == 2 * PAGE
        && op.uaddr == 0x7f00_0000_0000
        && op.perm == VDPA_IOVA_PERM_RO));
    let (rc, _, s) = translate(&p, (1 << 30) + 8, 8, 2);
    assert_eq!(
        (rc, s[0].iova, s[0].perm),
        (0, (1 << 30) + 8, VDPA_IOVA_PERM_RO)
    );
    refused(&p, libc::EINVAL, || {
        // SAFETY: live handles and valid pointers (NULL ones are what is refused).
        ev(|o| unsafe { vdpa_iova_viommu_map(p.0, 1 << 30, PAGE, PAGE, VDPA_IOVA_PERM_RW, o) })
    });
    refused(&p, libc::EBUSY, || {
        // SAFETY: live handles and valid pointers (NULL ones are what is refused).
        ev(|o| unsafe { vdpa_iova_remove_region(p.0, 0, o) })
    });
}

#[test]
fn plans_replay_on_the_model_and_outlive_the_planner() {
    let c = caps();
    let mut m = null_mut();
    // SAFETY: valid pointers.
    assert_eq!(unsafe { vdpa_iova_model_new(&c, &mut m) }, 0);
    let p = booted(&c, None);
    let cfg = svq(3, 0x7e00_0000_0000);
    let mut plan = null_mut();
    // SAFETY: a live planner, valid config and out.
    assert_eq!(unsafe { vdpa_iova_svq_prepare(p.0, &cfg, &mut plan) }, 0);
    let mut cost = vdpa_iova_cost::default();
    // SAFETY: a live plan.
    assert_eq!(unsafe { vdpa_iova_plan_cost(plan, &mut cost) }, 0);
    drop(p);
    let ops = take(plan);
    assert_eq!(cost.messages, ops.len() as u64);
    assert_eq!(cost.critical_messages, 0);
    let mut bytes = 0;
    // SAFETY: valid pointers.
    assert_eq!(unsafe { vdpa_iova_svq_size(&cfg, PAGE, &mut bytes) }, 0);
    let updates: u64 = ops
        .iter()
        .filter(|o| o.r#type == VDPA_IOVA_OP_UPDATE)
        .map(|o| o.size)
        .sum();
    assert_eq!(
        updates, bytes,
        "the vrings map exactly the memory svq_size asks for"
    );
    for op in &ops {
        assert_eq!(op.reserved, 0);
        // SAFETY: a live model and a valid op.
        assert_eq!(
            // SAFETY: live handles and valid pointers (NULL ones are what is refused).
            unsafe { vdpa_iova_model_apply_op(m, op) },
            0,
            "{}",
            last_error()
        );
    }
    // The model's refusals: the kernel's errno, or EPROTO for strict rules.
    let u = *ops
        .iter()
        .find(|o| o.r#type == VDPA_IOVA_OP_UPDATE)
        .unwrap();
    let bad = [
        (u, libc::EEXIST),
        (vdpa_iova_op { asid: 1, ..u }, libc::EINVAL),
        (vdpa_iova_op { r#type: 9, ..u }, libc::EINVAL),
        (
            vdpa_iova_op {
                size: 0,
                iova: 0,
                ..u
            },
            libc::EINVAL,
        ),
        (
            vdpa_iova_op {
                r#type: VDPA_IOVA_OP_INVALIDATE,
                size: PAGE,
                ..u
            },
            libc::EPROTO,
        ),
        (
            vdpa_iova_op {
                r#type: VDPA_IOVA_OP_BATCH_END,
                ..u
            },
            libc::EPROTO,
        ),
    ];
    for (op, errno) in bad {
        // SAFETY: a live model and a valid op.
        assert_eq!(
            // SAFETY: live handles and valid pointers (NULL ones are what is refused).
            unsafe { vdpa_iova_model_apply_op(m, &op) },
            -errno,
            "{op:?}"
        );
    }
    let mut e = vdpa_iova_entry::default();
    // SAFETY: valid pointers.
    unsafe {
        assert_eq!(vdpa_iova_model_lookup(m, 0, u.iova + 8, &mut e), 0);
        assert_eq!(
            (e.iova, e.size, e.uaddr, e.perm),
            (u.iova, u.size, u.uaddr, u.perm)
        );
        assert_eq!(vdpa_iova_model_lookup(m, 0, 3, &mut e), -libc::ENOENT);
        let mut n = 0;
        assert_eq!(
            vdpa_iova_model_entries(m, 0, null_mut(), 0, &mut n),
            -libc::ENOBUFS
        );
        assert_eq!(
            n,
            ops.iter()
                .filter(|o| o.r#type == VDPA_IOVA_OP_UPDATE)
                .count()
        );
        assert_eq!(vdpa_iova_model_reset_device(m), 0);
        assert_eq!(vdpa_iova_model_apply_op(null_mut(), &u), -libc::EFAULT);
        assert_eq!(vdpa_iova_model_apply_op(m, null()), -libc::EFAULT);
        vdpa_iova_model_free(m);
    }
}

#[test]
fn op_fields_are_the_kernel_message() {
    let c = vdpa_iova_caps {
        batching: 1,
        ..caps()
    };
    let p = Planner::identity(&c);
    let ops = add(
        &p,
        &[
            region(0, 2 * MIB, 0x7f00_0000_0000, true),
            region(4 * MIB, MIB, 0x7f10_0000_0000, false),
        ],
    )
    .unwrap();
    let types: Vec<u8> = ops.iter().map(|o| o.r#type).collect();
    assert_eq!(
        types,
        [
            VDPA_IOVA_OP_BATCH_BEGIN,
            VDPA_IOVA_OP_UPDATE,
            VDPA_IOVA_OP_UPDATE,
            VDPA_IOVA_OP_BATCH_END
        ]
    );
    assert_eq!(
        ops[1],
        vdpa_iova_op {
            asid: 0,
            r#type: 2,
            perm: 1,
            phase: VDPA_IOVA_PHASE_PREPARE,
            reserved: 0,
            iova: 0,
            size: 2 * MIB,
            uaddr: 0x7f00_0000_0000,
        }
    );
    assert_eq!(
        (ops[0].iova, ops[0].size, ops[0].uaddr, ops[0].perm),
        (0, 0, 0, 0)
    );
    // SAFETY: a static NUL-terminated string.
    let v = unsafe { CStr::from_ptr(vdpa_iova_version()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn last_error_is_per_thread() {
    let c = caps();
    let p = booted(&c, None);
    // SAFETY: a live planner.
    let _ = ev(|o| unsafe { vdpa_iova_failback(p.0, o) });
    let here = last_error();
    assert!(here.starts_with("vdpa_iova_failback: "), "{here}");
    let there = std::thread::spawn(last_error).join().unwrap();
    assert_eq!(there, "");
}

fn incoming(p: &Planner, regions: &[vdpa_iova_region]) -> Result<Vec<vdpa_iova_op>, c_int> {
    // SAFETY: a live planner and regions.len() valid regions.
    ev(|out| unsafe { vdpa_iova_incoming(p.0, regions.as_ptr(), regions.len(), out) })
}

#[test]
fn destination_incoming_then_start() {
    let c = caps();
    let ram = [
        region(0, GIB, 0x7f00_0000_0000, false),
        region(4 * GIB, GIB, 0x7f10_0000_0000, false),
    ];
    for strategy in [VDPA_IOVA_STRATEGY_IDENTITY, VDPA_IOVA_STRATEGY_QEMU] {
        let o = vdpa_iova_options {
            strategy,
            ..Default::default()
        };
        let p = Planner::new(&c, Some(&o)).expect("planner");
        // SAFETY (all blocks below): a live planner and valid arguments.
        refused(&p, libc::EPROTO, || {
            // SAFETY: live handles and valid pointers (NULL ones are what is refused).
            ev(|o| unsafe { vdpa_iova_start(p.0, o) })
        });
        refused(&p, libc::EINVAL, || {
            incoming(&p, &[region(0, 0, 0x7f00_0000_0000, false)])
        });
        // SAFETY: NULL regions with n > 0 is refused before anything is read.
        refused(&p, libc::EFAULT, || {
            // SAFETY: live handles and valid pointers (NULL ones are what is refused).
            ev(|o| unsafe { vdpa_iova_incoming(p.0, null(), 2, o) })
        });
        incoming(&p, &ram).expect("incoming");
        // SAFETY: a live planner.
        assert_eq!(
            // SAFETY: live handles and valid pointers (NULL ones are what is refused).
            unsafe { vdpa_iova_mode(p.0) },
            VDPA_IOVA_MODE_INCOMING as c_int
        );
        refused(&p, libc::EPROTO, || incoming(&p, &ram));
        refused(&p, libc::EPROTO, || {
            // SAFETY: live handles and valid pointers (NULL ones are what is refused).
            ev(|o| unsafe { vdpa_iova_failback(p.0, o) })
        });
        // SAFETY: live handles and valid pointers (NULL ones are what is refused).
        let start = ev(|o| unsafe { vdpa_iova_start(p.0, o) }).expect("start");
        if strategy == VDPA_IOVA_STRATEGY_IDENTITY {
            assert!(
                start.is_empty(),
                "identity maps while waiting, not at switchover"
            );
        }
        // SAFETY: a live planner.
        assert_eq!(
            // SAFETY: live handles and valid pointers (NULL ones are what is refused).
            unsafe { vdpa_iova_mode(p.0) },
            VDPA_IOVA_MODE_PASSTHROUGH as c_int
        );
        let (rc, _, s) = translate(&p, 4 * GIB + 64, 64, 2);
        assert_eq!((rc, s[0].iova), (0, 4 * GIB + 64));
        refused(&p, libc::EPROTO, || {
            // SAFETY: live handles and valid pointers (NULL ones are what is refused).
            ev(|o| unsafe { vdpa_iova_start(p.0, o) })
        });
    }
    // A source that booted cannot become a destination.
    let p = booted(&c, None);
    refused(&p, libc::EPROTO, || incoming(&p, &ram));
}

/// Found by the capi_calls fuzz target: the QEMU baseline mapped memory
/// hot-plugged on a migration's destination while it waited for the
/// stream, and `start` then mapped every region again, so its UPDATE of the
/// hot-plugged region overlapped a live entry (EEXIST in the model, EFAULT
/// from a real kernel). QEMU has no listener registered then (the start-up
/// reset unregistered it): the region is mapped once, at
/// `vhost_vdpa_dev_start()`. Fixed in the core (770ad98).
#[test]
fn regression_qemu_destination_hotplug_while_incoming_maps_twice() {
    let c = caps();
    let o = vdpa_iova_options {
        strategy: VDPA_IOVA_STRATEGY_QEMU,
        ..Default::default()
    };
    let p = Planner::new(&c, Some(&o)).expect("planner");
    let mut m = null_mut();
    // SAFETY: valid pointers.
    assert_eq!(unsafe { vdpa_iova_model_new(&c, &mut m) }, 0);
    let replay = |ops: Vec<vdpa_iova_op>| {
        for op in &ops {
            // SAFETY: a live model and a valid op.
            let rc = unsafe { vdpa_iova_model_apply_op(m, op) };
            assert_eq!(rc, 0, "{op:?}: {}", last_error());
        }
    };
    replay(incoming(&p, &[region(0, MIB, 0x7f00_0000_0000, false)]).expect("incoming"));
    replay(add(&p, &[region(GIB, MIB, 0x7f00_4000_0000, false)]).expect("hot-plug"));
    // SAFETY: a live planner.
    replay(ev(|o| unsafe { vdpa_iova_start(p.0, o) }).expect("start"));
    // SAFETY: freed once.
    unsafe { vdpa_iova_model_free(m) };
}

#[test]
fn host_buffers_are_mapped_with_the_vrings() {
    let c = caps();
    let p = booted(&c, None);
    let buf = |hva, perm| vdpa_iova_host_buffer {
        hva,
        size: PAGE,
        perm,
        reserved: [0; 7],
    };
    let hb = |bufs: &[vdpa_iova_host_buffer]| {
        // SAFETY: a live planner and bufs.len() valid buffers.
        ev(|o| unsafe { vdpa_iova_host_buffers(p.0, bufs.as_ptr(), bufs.len(), o) })
    };
    let cvq = [
        buf(0x7d00_0000_0000, VDPA_IOVA_PERM_RO),
        buf(0x7d00_0000_1000, VDPA_IOVA_PERM_RW),
    ];
    refused(&p, libc::EINVAL, || hb(&[buf(0x7d00_0000_0000, 0)]));
    refused(&p, libc::EINVAL, || {
        hb(&[vdpa_iova_host_buffer {
            size: PAGE + 1,
            ..cvq[0]
        }])
    });
    refused(&p, libc::EINVAL, || {
        hb(&[vdpa_iova_host_buffer {
            reserved: [1, 0, 0, 0, 0, 0, 0],
            ..cvq[0]
        }])
    });
    refused(&p, libc::EFAULT, || {
        // SAFETY: NULL bufs with n > 0 is refused before anything is read.
        ev(|o| unsafe { vdpa_iova_host_buffers(p.0, null(), 1, o) })
    });
    assert_eq!(hb(&cvq), Ok(vec![]), "{}", last_error());
    let entries = |p: &Planner| {
        let mut e = [vdpa_iova_entry::default(); 4];
        let mut n = 0;
        // SAFETY: four writable entries.
        let rc = unsafe { vdpa_iova_buffer_entries(p.0, e.as_mut_ptr(), 4, &mut n) };
        assert_eq!(rc, 0, "{}", last_error());
        e[..n].to_vec()
    };
    assert!(entries(&p).is_empty(), "not mapped before the vrings");
    let cfg = svq(3, 0x7e00_0000_0000);
    // SAFETY: a live planner and a valid config.
    let prep = ev(|o| unsafe { vdpa_iova_svq_prepare(p.0, &cfg, o) }).expect("prepare");
    let mapped = entries(&p);
    assert_eq!(mapped.len(), 2);
    for (e, b) in mapped.iter().zip(&cvq) {
        assert_eq!((e.uaddr, e.size, e.perm), (b.hva, b.size, b.perm));
        assert!(prep
            .iter()
            .any(|op| op.r#type == VDPA_IOVA_OP_UPDATE && op.iova == e.iova && op.uaddr == b.hva));
    }
    // Too late once the vrings are mapped; a small array is -ENOBUFS.
    refused(&p, libc::EPROTO, || hb(&cvq));
    let mut n = 0;
    // SAFETY: NULL entries with cap 0.
    let rc = unsafe { vdpa_iova_buffer_entries(p.0, null_mut(), 0, &mut n) };
    assert_eq!((rc, n), (-libc::ENOBUFS, 2));
}

/// A VM that migrates twice, A to B then B to C, one planner and one device
/// model per host, each driven only through the C ABI: the destination
/// that started is the next migration's source, `vdpa_iova_switchover`
/// marks the source's stop, and with the identity strategy nothing is
/// written while the guest is paused (switch, stop-and-copy, switchover,
/// start), on any host. QEMU's baseline writes on each window.
#[test]
fn a_vm_migrates_twice_through_three_planners() {
    let c = caps();
    let ram = [
        region(0, GIB, 0x7f00_0000_0000, false),
        region(4 * GIB, GIB, 0x7f10_0000_0000, false),
    ];
    for strategy in [VDPA_IOVA_STRATEGY_IDENTITY, VDPA_IOVA_STRATEGY_QEMU] {
        let o = vdpa_iova_options {
            strategy,
            ..Default::default()
        };
        let hosts: Vec<Planner> = (0..3)
            .map(|_| Planner::new(&c, Some(&o)).expect("planner"))
            .collect();
        let models: Vec<*mut vdpa_iova_model> = (0..3)
            .map(|_| {
                let mut m = null_mut();
                // SAFETY: valid pointers.
                assert_eq!(unsafe { vdpa_iova_model_new(&c, &mut m) }, 0);
                m
            })
            .collect();
        // Replays a plan on host h's device; gives its critical messages.
        let replay = |h: usize, ops: Vec<vdpa_iova_op>| -> usize {
            for op in &ops {
                // SAFETY: a live model and a valid op.
                let rc = unsafe { vdpa_iova_model_apply_op(models[h], op) };
                assert_eq!(rc, 0, "host {h}: {op:?}: {}", last_error());
            }
            ops.iter()
                .filter(|o| o.phase == VDPA_IOVA_PHASE_CRITICAL)
                .count()
        };
        let cfg = svq(4, 0x7e00_0000_0000);
        replay(0, add(&hosts[0], &ram).expect("boot"));
        // Critical messages (the guest waits), per migration.
        let mut paused = [0usize; 2];
        for (m, (src, dst)) in [(0, 1), (1, 2)].into_iter().enumerate() {
            let (s, d) = (&hosts[src], &hosts[dst]);
            replay(dst, incoming(d, &ram).expect("incoming"));
            replay(
                src,
                ev(|o| {
                    // SAFETY: a live planner and valid pointers.
                    unsafe { vdpa_iova_svq_prepare(s.0, &cfg, o) }
                })
                .expect("prepare"),
            );
            paused[m] += replay(
                src,
                ev(|o| {
                    // SAFETY: a live planner and valid pointers.
                    unsafe { vdpa_iova_svq_switch(s.0, null(), o) }
                })
                .expect("switch"),
            );
            paused[m] += replay(
                src,
                ev(|o| {
                    // SAFETY: a live planner and valid pointers.
                    unsafe { vdpa_iova_complete(s.0, o) }
                })
                .expect("complete"),
            );
            paused[m] += replay(
                dst,
                ev(|o| {
                    // SAFETY: a live planner and valid pointers.
                    unsafe { vdpa_iova_switchover(d.0, o) }
                })
                .expect("switchover"),
            );
            assert_eq!(
                // SAFETY: a live planner.
                unsafe { vdpa_iova_mode(d.0) },
                VDPA_IOVA_MODE_SWITCHOVER as c_int
            );
            paused[m] += replay(
                dst,
                ev(|o| {
                    // SAFETY: a live planner and valid pointers.
                    unsafe { vdpa_iova_start(d.0, o) }
                })
                .expect("start"),
            );
            assert_eq!(
                // SAFETY: a live planner.
                unsafe { vdpa_iova_mode(d.0) },
                VDPA_IOVA_MODE_PASSTHROUGH as c_int
            );
            // The source is done; its device holds nothing.
            assert_eq!(
                // SAFETY: a live planner.
                unsafe { vdpa_iova_mode(s.0) },
                VDPA_IOVA_MODE_COMPLETED as c_int
            );
            assert!(mapped(s).is_empty());
            // The new host's device reaches guest memory at its GPAs.
            let (rc, _, seg) = translate(d, 4 * GIB + 64, 64, 2);
            assert_eq!((rc, seg[0].iova), (0, 4 * GIB + 64));
        }
        if strategy == VDPA_IOVA_STRATEGY_IDENTITY {
            assert_eq!(paused, [0, 0], "identity writes nothing while paused");
        } else {
            assert!(
                paused.iter().all(|&n| n > 0),
                "QEMU re-maps on each: {paused:?}"
            );
        }
        // The last host's table is the guest's memory, identity, and
        // nothing else.
        let on_c = mapped(&hosts[2]);
        let mut iovas: Vec<(u64, u64)> = on_c.iter().map(|e| (e.iova, e.size)).collect();
        iovas.sort_unstable();
        assert_eq!(iovas, vec![(0, GIB), (4 * GIB, GIB)]);
        for m in models {
            // SAFETY: freed once.
            unsafe { vdpa_iova_model_free(m) };
        }
    }
}
