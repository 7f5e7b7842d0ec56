//! Regressions for three kinds of wrong answer: unpinned bytes counted per
//! message instead of per entry, INVALIDATEs the QEMU baseline sent for maps
//! it never sent, and "out of IOVA" while the device range had room.

mod common;

use common::*;
use vdpa_iova_planner::{
    DeviceCaps, DeviceRange, Event, Gpa, Hva, IdentityPlanner, Iova, KernelIotlb, Mode, OpKind,
    Perm, PlanError, QemuPlanner, Strategy,
};

fn range(last: u64) -> DeviceCaps {
    DeviceCaps {
        range: DeviceRange::new(0, last).unwrap(),
        ..DeviceCaps::default()
    }
}

/// The small layouts of the placement tests are written in 4 KiB pages.
const P: u64 = 4096;

/// `n` pages of guest memory at page `gpa`, backed at `hva`.
fn pages(gpa: u64, n: u64, hva: u64) -> vdpa_iova_planner::RegionSpec {
    vdpa_iova_planner::RegionSpec {
        gpa: Gpa(gpa * P),
        size: n * P,
        hva: Hva(hva),
        readonly: false,
    }
}

/// `queues` shadow queues of 64 descriptors: 3 pages each.
fn small_queues(queues: u32) -> vdpa_iova_planner::SvqConfig {
    vdpa_iova_planner::SvqConfig {
        queues,
        queue_size: 64,
        hva: Hva(0x7000_0000),
    }
}

/// Every region's pieces as (gpa, iova, size), in pages, by GPA.
type Pieces = Vec<Vec<(u64, u64, u64)>>;

fn pieces(s: &IdentityPlanner) -> Pieces {
    s.placements()
        .iter()
        .map(|p| {
            p.pieces
                .iter()
                .map(|x| (x.gpa.first().0 / P, x.iova.first().0 / P, x.iova.size() / P))
                .collect()
        })
        .collect()
}

/// The case and variants: RAM below and above a PCI hole, no
/// `max_gpa`, so the window is what lies above RAM; during SVQ a DIMM lands
/// on the vrings, bigger than what the window has left. The hole takes it.
#[test]
fn displaced_memory_goes_to_the_pci_hole_when_the_window_is_full() {
    for (dev_last, low, high, dimm) in [
        (10 * GIB - 1, 2 * GIB, (4 * GIB, 4 * GIB), 2 * GIB),
        (16 * GIB - 1, 2 * GIB, (4 * GIB, 10 * GIB), 2 * GIB),
        (6 * GIB - 1, 512 * MIB, (4 * GIB, GIB), 2 * GIB),
    ] {
        let mut id = identity(range(dev_last), None);
        id.step(Event::Boot(vec![ram(0, low), ram(high.0, high.1)]));
        id.step(Event::SvqPrepare(svq(8)));
        id.step(Event::SvqSwitch(None));
        let top = high.0 + high.1;
        assert!(id.s.window().unwrap().first().0 >= top, "window above RAM");
        let (hp, rep) = id.step(Event::Hotplug(ram(top, dimm)));
        assert_eq!(rep.displaced_bytes, dimm);
        // Past the device range's end too, when the DIMM reaches beyond it.
        for d in id.s.displaced() {
            let at = d.iova.first().0;
            assert!(
                at >= low && at + d.iova.size() <= high.0,
                "{dimm:#x} displaced into the hole [{low:#x}, {:#x}), not at {at:#x}",
                high.0
            );
        }
        assert_eq!(hp.cost().critical_messages, 0);
        // Failback brings it home; nothing else was in its way but vrings.
        let (fb, _) = id.step(Event::Failback);
        assert_eq!(
            fb.cost().critical_pinned_bytes,
            dimm.min(dev_last + 1 - top),
            "what is inside the range comes home"
        );
        assert!(id.s.displaced().is_empty());
        // QEMU's first fit completes the same scenario.
        let mut q = qemu(range(dev_last));
        q.step(Event::Boot(vec![ram(0, low), ram(high.0, high.1)]));
        q.step(Event::SvqSwitch(Some(svq(8))));
        q.step(Event::Hotplug(ram(top, dimm)));
    }
}

/// Space left by unplugged memory is free again for displaced memory.
#[test]
fn unplugged_memory_leaves_room_for_displaced_memory() {
    let mut id = identity(range(8 * GIB - 1), None);
    id.step(Event::Boot(vec![ram(0, 2 * GIB), ram(2 * GIB, 4 * GIB)]));
    id.step(Event::SvqPrepare(svq(4)));
    id.step(Event::SvqSwitch(None));
    // The window is [6, 8) GiB; empty 4 GiB below it once this goes.
    id.step(Event::Unplug(Gpa(2 * GIB)));
    let (_, rep) = id.step(Event::Hotplug(ram(6 * GIB, 2 * GIB)));
    assert_eq!(rep.displaced_bytes, 2 * GIB);
    let at = id.s.displaced()[0].iova.first().0;
    assert!((2 * GIB..6 * GIB).contains(&at), "{at:#x}");
    id.step(Event::Failback);
}

/// When nothing fits, the error says so and names the free ranges it
/// considered; the planner is unchanged.
#[test]
fn out_of_iova_names_the_free_ranges_considered() {
    let mut id = identity(range(4 * GIB - 1), None);
    id.step(Event::Boot(vec![
        ram(0, 2 * GIB),
        ram(3 * GIB, GIB - 64 * MIB),
    ]));
    id.step(Event::SvqPrepare(svq(2)));
    id.step(Event::SvqSwitch(None));
    let window = id.s.window().unwrap();
    let window = (window.first().0, window.last().0);
    let e = id.refuse(Event::Hotplug(ram(window.0, GIB + 64 * MIB)));
    let PlanError::OutOfIova { considered, .. } = &e else {
        panic!("{e}");
    };
    assert!(!considered.is_empty());
    assert!(considered.iter().any(|&(f, _)| f == 2 * GIB), "{e}");
    assert!(e.to_string().contains("free ranges considered"), "{e}");
}

/// A guest unmap of 2 MiB inside a 40 MiB map: QEMU sends one INVALIDATE
/// of 2 MiB, the kernel drops (and unpins) the whole 40 MiB entry.
#[test]
fn qemu_partial_viommu_unmap_unpins_the_whole_entry() {
    let caps = range((1 << 40) - 1);
    let mut q = Rig::new(QemuPlanner::with_viommu(caps, (1 << 39) - 1).unwrap(), true);
    q.k = KernelIotlb::permissive(&caps);
    q.step(Event::Boot(vec![ram(0, GIB)]));
    q.step(Event::ViommuMap {
        giova: Iova(0x1000_0000),
        size: 40 * MIB,
        gpa: Gpa(0),
        perm: Perm::Rw,
    });
    let (p, _) = q.step(Event::ViommuUnmap {
        giova: Iova(0x1000_0000 + 8 * MIB),
        size: 2 * MIB,
    });
    assert_eq!(p.ops().len(), 1);
    assert_eq!(p.cost().unpinned_bytes, 40 * MIB);
    // The rest of that map is lost to the device: a second unmap inside it
    // unpins nothing (the kernel has no entry there any more).
    let (p, _) = q.step(Event::ViommuUnmap {
        giova: Iova(0x1000_0000),
        size: 2 * MIB,
    });
    assert_eq!(p.cost().unpinned_bytes, 0);
}

/// A guest map and unmap beyond the device range, before anything else was
/// mapped: QEMU skips both; no INVALIDATE reaches an address space that no
/// UPDATE created (the kernel would answer EINVAL).
#[test]
fn qemu_skips_unmaps_past_the_device_range() {
    let caps = range(4 * GIB - 1);
    let mut q = Rig::new(QemuPlanner::with_viommu(caps, (1 << 39) - 1).unwrap(), true);
    q.k = KernelIotlb::permissive(&caps);
    q.step(Event::Boot(vec![ram(0, GIB)]));
    let (m, _) = q.step(Event::ViommuMap {
        giova: Iova(8 * GIB),
        size: 4 * MIB,
        gpa: Gpa(0),
        perm: Perm::Rw,
    });
    assert!(m.is_empty());
    let (u, _) = q.step(Event::ViommuUnmap {
        giova: Iova(8 * GIB),
        size: 4 * MIB,
    });
    assert!(u.is_empty(), "{:?}", u.ops());
    assert_eq!(u.cost().unpinned_bytes, 0);
    // In range, once the address space exists, an unmap that hits a lost
    // map is still sent, and unpins nothing.
    q.step(Event::ViommuMap {
        giova: Iova(0x1000),
        size: 4 * MIB,
        gpa: Gpa(0),
        perm: Perm::Rw,
    });
    q.step(Event::ViommuMap {
        giova: Iova(4 * GIB - 2 * MIB),
        size: 4 * MIB,
        gpa: Gpa(4 * MIB),
        perm: Perm::Rw,
    });
    let (u, _) = q.step(Event::ViommuUnmap {
        giova: Iova(4 * GIB - 2 * MIB),
        size: MIB,
    });
    assert_eq!(u.ops().len(), 1);
    assert!(matches!(u.ops()[0].kind, OpKind::Invalidate { .. }));
    assert_eq!(u.cost().unpinned_bytes, 0);
    let _ = (Mode::Passthrough, Hva(0), IdentityPlanner::builder(caps));
}

/// Where greedy placement (best fit, window first, largest piece first)
/// cannot place every piece of a new region but a placement exists, the
/// exact search finds it; the hotplug goes through, every byte reachable.
/// Layouts found by searching small devices for such cases: a 16-page
/// device range, RAM around a small window, one shadow queue; the DIMM
/// hits the vrings (prepared: they move) or the window (SVQ: the DIMM is
/// displaced) and runs past the range's end (that part displaced too).
#[test]
fn the_exact_search_places_what_greedy_placement_cannot() {
    for (ram2, max_gpa, switch, dimm) in [
        ((8, 2), 12, false, (13, 7)),
        ((8, 2), 12, false, (14, 8)),
        ((10, 3), 8, true, (15, 8)),
    ] {
        let mut id = identity(range(16 * P - 1), Some(max_gpa * P));
        id.step(Event::Boot(vec![
            pages(0, 2, 0x1000_0000),
            pages(ram2.0, ram2.1, 0x3000_0000),
        ]));
        id.step(Event::SvqPrepare(small_queues(1)));
        if switch {
            id.step(Event::SvqSwitch(None));
        }
        let (_, rep) = id.step(Event::Hotplug(pages(dimm.0, dimm.1, 0x2000_0000)));
        assert_eq!(rep.unreachable_bytes, 0, "{dimm:?}");
        let total: u64 = (2 + ram2.1 + dimm.1) * P;
        assert_eq!(rep.identity_bytes + rep.displaced_bytes, total, "{dimm:?}");
    }
}

/// The last resort of placement: a piece that fits in no single allocator's
/// free range but in the union of touching ones (the window's free space
/// next to a displaced DIMM's claimed identity range), best fit, the lowest
/// address among equals. Layouts found by search, as above.
#[test]
fn a_piece_fits_where_free_ranges_of_the_window_and_a_claim_touch() {
    // (device pages, second RAM region, max_gpa, queues, DIMM b, DIMM c,
    // then every region's pieces as (gpa, iova, pages)).
    type Case = (
        u64,
        Option<(u64, u64)>,
        Option<u64>,
        u32,
        (u64, u64),
        (u64, u64),
        Pieces,
    );
    let cases: [Case; 4] = [
        (
            12,
            None,
            None,
            1,
            (2, 1),
            (3, 6),
            vec![vec![(0, 0, 2)], vec![(2, 5, 1)], vec![(3, 6, 6)]],
        ),
        (
            16,
            None,
            Some(8),
            2,
            (7, 4),
            (13, 2),
            vec![vec![(0, 0, 2)], vec![(7, 2, 4)], vec![(13, 6, 2)]],
        ),
        (
            16,
            Some((8, 2)),
            None,
            1,
            (11, 3),
            (3, 3),
            vec![
                vec![(0, 0, 2)],
                vec![(3, 5, 3)],
                vec![(8, 8, 2)],
                vec![(11, 2, 3)],
            ],
        ),
        // Where best fit over the union and the exact search would differ:
        // the DIMM's in-range part takes the 2-page fit at 2, its part past
        // the range the 4 pages after it.
        (
            16,
            None,
            Some(8),
            1,
            (5, 4),
            (14, 6),
            vec![
                vec![(0, 0, 2)],
                vec![(5, 11, 4)],
                vec![(14, 2, 2), (16, 4, 4)],
            ],
        ),
    ];
    for (device, ram2, max_gpa, queues, b, c, want) in cases {
        let mut id = identity(range(device * P - 1), max_gpa.map(|m| m * P));
        let mut boot = vec![pages(0, 2, 0x1000_0000)];
        if let Some((g, n)) = ram2 {
            boot.push(pages(g, n, 0x3000_0000));
        }
        id.step(Event::Boot(boot));
        id.step(Event::SvqSwitch(Some(small_queues(queues))));
        id.step(Event::Hotplug(pages(b.0, b.1, 0x2000_0000)));
        let (_, rep) = id.step(Event::Hotplug(pages(c.0, c.1, 0x4000_0000)));
        assert_eq!(rep.unreachable_bytes, 0);
        let placed = pieces(&id.s);
        assert_eq!(placed, want, "{device} pages, DIMM {c:?}");
    }
}

/// An unplugged DIMM that was displaced gives back its claim (its identity
/// range, kept free for its failback): the next DIMM finds those bytes in
/// the window again and takes the best fit there, not a worse hole.
/// (Found by comparing every small layout with and without the release.)
#[test]
fn an_unplugged_displaced_dimm_gives_its_claim_back() {
    let mut id = identity(range(16 * P - 1), None);
    id.step(Event::Boot(vec![pages(0, 2, 0x1000_0000)]));
    id.step(Event::SvqSwitch(Some(small_queues(1))));
    id.step(Event::Hotplug(pages(2, 4, 0x2000_0000)));
    assert!(
        !id.s.displaced().is_empty(),
        "the first DIMM collides with the vrings"
    );
    id.step(Event::Unplug(Gpa(2 * P)));
    id.step(Event::Hotplug(pages(2, 2, 0x4000_0000)));
    assert_eq!(pieces(&id.s), vec![vec![(0, 0, 2)], vec![(2, 5, 2)]]);
    let (fb, _) = id.step(Event::Failback);
    assert!(!fb.ops().is_empty());
}

/// After a piece is placed over touching free ranges, exactly its bytes are
/// taken (a third DIMM still finds the two pages right after it), and among
/// several fitting ranges the smallest wins. Layouts found by comparing the
/// placements of every small layout against planted variants of the rule.
#[test]
fn a_placement_over_touching_ranges_takes_its_bytes_and_the_smallest_range() {
    // (device pages, max_gpa, DIMM b, DIMM c, every region's pieces as
    // (gpa, iova, pages) after a third DIMM of 2 pages at GPA 40 pages).
    type Case = (u64, Option<u64>, (u64, u64), (u64, u64), Pieces);
    let cases: [Case; 3] = [
        (
            12,
            None,
            (2, 1),
            (5, 4),
            vec![
                vec![(0, 0, 2)],
                vec![(2, 5, 1)],
                vec![(5, 6, 4)],
                vec![(40, 10, 2)],
            ],
        ),
        (
            20,
            Some(8),
            (5, 4),
            (13, 4),
            vec![
                vec![(0, 0, 2)],
                vec![(5, 11, 4)],
                vec![(13, 15, 4)],
                vec![(40, 2, 2)],
            ],
        ),
        (
            20,
            Some(8),
            (6, 3),
            (9, 6),
            vec![
                vec![(0, 0, 2)],
                vec![(6, 11, 3)],
                vec![(9, 2, 6)],
                vec![(40, 15, 2)],
            ],
        ),
    ];
    for (device, max_gpa, b, c, want) in cases {
        let mut id = identity(range(device * P - 1), max_gpa.map(|m| m * P));
        id.step(Event::Boot(vec![pages(0, 2, 0x1000_0000)]));
        id.step(Event::SvqSwitch(Some(small_queues(1))));
        id.step(Event::Hotplug(pages(b.0, b.1, 0x2000_0000)));
        id.step(Event::Hotplug(pages(c.0, c.1, 0x4000_0000)));
        id.step(Event::Hotplug(pages(40, 2, 0x6000_0000)));
        let placed = pieces(&id.s);
        assert_eq!(placed, want, "{device} pages, DIMMs {b:?} {c:?}");
    }
}
