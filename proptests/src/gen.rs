//! Inputs biased toward the edges where planners break: address 0, the
//! device range's first and last pages, `max_gpa`, the top of the 64-bit
//! space, and small device ranges that force collisions. Shared by the
//! property tests (which draw the choices from proptest) and the fuzz
//! targets (which draw them from `arbitrary`).

use vdpa_iova_planner::{
    DeviceCaps, DeviceRange, Event, Gpa, HostBuffer, Hva, IdentityPlanner, Iova, MapStyle, Perm,
    RegionSpec, Strategy, SvqConfig, GUEST_ASID,
};

use crate::harness::Setup;
use crate::model::{PageModel, PAGE};

/// Device ranges: full, tiny (forcing collisions), offset, at the very top
/// of the space, and a 32-bit one.
pub const RANGES: [(u64, u64); 5] = [
    (0, u64::MAX),
    (0, 64 * PAGE - 1),
    (16 * PAGE, 48 * PAGE - 1),
    (u64::MAX - (64 * PAGE - 1), u64::MAX),
    (PAGE, (1 << 32) - 1),
];

/// A device and guest from a few raw choices.
pub fn setup(range: u8, flags: u16, max_gpa: (u8, u64), viommu: (u8, u64)) -> Setup {
    let (first, last) = RANGES[usize::from(range) % RANGES.len()];
    let caps = DeviceCaps {
        range: DeviceRange::new(first, last).expect("first <= last"),
        batching: flags & 1 != 0,
        address_spaces: if flags & 2 != 0 { 2 } else { 1 },
        desc_asid: flags & 4 != 0,
        persist: flags & 8 != 0,
        pinning: flags & 16 != 0,
        map_style: match (flags >> 5) % 3 {
            0 => MapStyle::SetMap,
            1 => MapStyle::DmaMap,
            _ => MapStyle::Platform,
        },
        // An isolated control queue (its buffers in address space 1).
        cvq_isolated: flags & 2048 != 0 && flags & 2 != 0,
        ..DeviceCaps::default()
    };
    let separate_asid = flags & 256 != 0 && caps.desc_asid && caps.address_spaces == 2;
    let mut s = Setup {
        caps,
        max_gpa: None,
        viommu_last: None,
        separate_asid,
    };
    if flags & 512 != 0 {
        s.max_gpa = Some(addr(&s, max_gpa.0, max_gpa.1));
    }
    if flags & 1024 != 0 {
        s.viommu_last = Some(addr(&s, viommu.0, viommu.1).wrapping_sub(1) | (PAGE - 1));
    }
    s
}

/// An address: mostly page aligned and near an edge, sometimes raw.
pub fn addr(s: &Setup, sel: u8, raw: u64) -> u64 {
    let (first, last) = (s.caps.range.first(), s.caps.range.last());
    let k = u64::from(sel >> 4) * PAGE; // 0..15 pages off the edge
    let top = u64::MAX - (PAGE - 1);
    match sel % 16 {
        0 => k,
        1 => first.saturating_add(k),
        2 => (last & !(PAGE - 1)).saturating_sub(k),
        3 => s.max_gpa.unwrap_or(64 * PAGE).saturating_sub(k) & !(PAGE - 1),
        4 => s.max_gpa.unwrap_or(64 * PAGE).saturating_add(k) & !(PAGE - 1),
        5 => top - k,
        6 => (1 << 32) - PAGE - k,
        7 => s
            .viommu_last
            .map_or(k, |l| (l & !(PAGE - 1)).saturating_sub(k)),
        8 | 9 => (raw % (256 * PAGE)) & !(PAGE - 1),
        10 => first.saturating_add(raw % (64 * PAGE)) & !(PAGE - 1),
        11 => raw & !(PAGE - 1),
        12 => raw,
        13 => u64::MAX,
        _ => (raw % (1 << 20)) * PAGE,
    }
}

/// A size: mostly 1 to 16 pages, sometimes zero or unaligned or huge
/// (`2^64 - 1`, never valid). Valid sizes stay small so the page-level
/// model stays small: wrap-arounds come from addresses near `2^64`. (A valid
/// `2^64 - page` region at 0 once made the model allocate 2^52 pages: the
/// fuzz regression `oom-huge-region`.)
pub fn size(sel: u8) -> u64 {
    match sel {
        0 => 0,
        1 => PAGE + 1,
        2 => u64::MAX,
        n => u64::from(n % 16 + 1) * PAGE,
    }
}

/// Raw choices for one event: kind, then address/size choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, arbitrary::Arbitrary)]
pub struct RawEvent {
    /// Event kind selector.
    pub kind: u8,
    /// First address choice.
    pub a: (u8, u64),
    /// Second address choice.
    pub b: (u8, u64),
    /// Size choice.
    pub size: u8,
    /// Flags: read-only, perm, unprepared switch, pick an existing region.
    pub flags: u8,
}

/// Turns raw choices into an event, biased toward the current state (an
/// existing region to unplug, a live guest map to unmap, memory to map).
pub fn event(s: &Setup, m: &PageModel, r: &RawEvent) -> Event {
    let a = addr(s, r.a.0, r.a.1);
    let b = addr(s, r.b.0, r.b.1);
    let sz = size(r.size);
    let pick = r.flags & 0x80 != 0;
    let hva = 0x7000_0000_0000 + (a % (1 << 40)) / PAGE * PAGE * 2;
    let region = RegionSpec {
        gpa: Gpa(a),
        size: sz,
        hva: Hva(if r.flags & 0x40 != 0 { b } else { hva }),
        readonly: r.flags & 1 != 0,
    };
    let cfg = SvqConfig {
        queues: u32::from(r.size % 4) + u32::from(r.flags & 0x20 == 0),
        queue_size: [16, 64, 256, 100][usize::from(r.flags >> 2) % 4],
        hva: Hva(0x7e00_0000_0000 + u64::from(r.b.0) * PAGE),
    };
    let perm = [Perm::Rw, Perm::Ro, Perm::Wo][usize::from(r.flags >> 1) % 3];
    let two = vec![
        region,
        RegionSpec {
            gpa: Gpa(b),
            ..region
        },
    ];
    match r.kind % 18 {
        0 | 1 => Event::Hotplug(region),
        // A destination, half the time the first event allows it.
        2 if r.flags & 0x8 != 0 && m.regions.is_empty() => Event::Incoming(two),
        16 => Event::Incoming(two),
        17 => Event::Start,
        2 => Event::Boot(vec![
            region,
            RegionSpec {
                gpa: Gpa(b),
                ..region
            },
        ]),
        3 => {
            let g = if pick && !m.regions.is_empty() {
                m.regions[usize::from(r.a.0) % m.regions.len()].0
            } else {
                a
            };
            Event::Unplug(Gpa(g))
        }
        4 | 5 => Event::SvqPrepare(cfg),
        6 | 7 => Event::SvqSwitch((r.flags & 0x10 != 0).then_some(cfg)),
        8 => Event::Failback,
        9 => Event::Complete,
        10 => Event::Reset,
        11..=13 => {
            // Map memory the guest has, most of the time.
            let gpa = match (pick || r.kind % 16 != 13, m.regions.is_empty()) {
                (true, false) => {
                    let (g, s, _, _) = m.regions[usize::from(r.b.0) % m.regions.len()];
                    let pages = s / PAGE;
                    g + (r.b.1 % pages) * PAGE
                }
                _ => b,
            };
            let sz = if sz != 0 && sz % PAGE == 0 && sz < (1 << 20) {
                sz.min(4 * PAGE)
            } else {
                sz
            };
            Event::ViommuMap {
                giova: Iova(a),
                size: sz,
                gpa: Gpa(gpa),
                perm,
            }
        }
        _ => {
            let (giova, sz) = match (
                pick,
                m.pages
                    .keys()
                    .nth(usize::from(r.a.0) % m.pages.len().max(1)),
            ) {
                (true, Some(&g)) => (
                    g.saturating_sub(u64::from(r.size % 2) * PAGE),
                    sz.clamp(PAGE, 3 * PAGE),
                ),
                _ => (a, sz),
            };
            Event::ViommuUnmap {
                giova: Iova(giova),
                size: sz,
            }
        }
    }
}

/// One in this many guided events is drawn by [`event`] instead: the
/// edge-biased, mostly invalid inputs that keep the refusals tested.
pub const UNGUIDED_ONE_IN: u8 = 8;

/// What a guided event does, chosen by weight for the current mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pick {
    Boot,
    Incoming,
    /// The source stopped: the destination's guest is paused until start.
    Switchover,
    Start,
    Hotplug,
    /// Hot-plug where the shadow vrings, the window or displaced memory are
    /// (or just above `max_gpa` before there is a window).
    HotplugColliding,
    Unplug,
    Prepare,
    SwitchPrepared,
    SwitchUnprepared,
    Failback,
    Complete,
    Reset,
    Map,
    /// A vIOMMU map at a guest IOVA where the vrings, the window or displaced
    /// memory are.
    MapColliding,
    Unmap,
    /// Host buffers (the control queue's), declared before SVQ.
    Buffers,
    Unguided,
}

fn weighted(roll: u64, table: &[(u64, Pick)]) -> Pick {
    let total: u64 = table.iter().map(|t| t.0).sum();
    let mut x = roll % total;
    for &(w, p) in table {
        if x < w {
            return p;
        }
        x -= w;
    }
    unreachable!("roll below the total")
}

/// Turns raw choices into an event the planner should accept in the current
/// state most of the time, steering toward the deep states: SVQ with memory
/// displaced by a collision, vIOMMU maps while prepared or in SVQ mode,
/// resets in every mode, failback and a second migration, and a
/// migration's destination (`Incoming`, then `Start`). One event in
/// [`UNGUIDED_ONE_IN`] is [`event`]'s instead, so error paths stay covered,
/// and an invalid event is still generated when the state leaves no valid
/// one (no region to unplug, no vIOMMU).
///
/// `p` is a planner that has seen the same accepted events (the reference
/// state machine keeps one): only it knows where the vrings and the window
/// are, which is where collisions happen.
pub fn guided_event(s: &Setup, m: &PageModel, p: &IdentityPlanner, r: &RawEvent) -> Event {
    use crate::model::ModelMode as M;
    use Pick::*;
    if r.kind % UNGUIDED_ONE_IN == 0 {
        return event(s, m, r);
    }
    let viommu = s.viommu_last.is_some();
    let fresh = m.regions.is_empty() && m.pages.is_empty();
    let table: &[(u64, Pick)] = match m.mode {
        M::Passthrough if fresh => &[(60, Boot), (40, Incoming)],
        M::Passthrough => &[
            (14, Hotplug),
            (6, HotplugColliding),
            (12, Map),
            (5, Unmap),
            (5, Unplug),
            (30, Prepare),
            (10, SwitchUnprepared),
            (8, Reset),
            (4, Boot),
            (4, Buffers),
        ],
        M::Prepared => &[
            (25, SwitchPrepared),
            (18, HotplugColliding),
            (5, Hotplug),
            (12, MapColliding),
            (5, Map),
            (5, Unmap),
            (5, Unplug),
            (10, Reset),
            (8, Failback),
        ],
        M::Svq => &[
            (22, HotplugColliding),
            (5, Hotplug),
            (15, MapColliding),
            (5, Map),
            (8, Unmap),
            (8, Unplug),
            (12, Reset),
            (12, Failback),
            (2, Complete),
            (3, Boot),
        ],
        M::Completed => &[(70, Reset), (30, Unguided)],
        M::Incoming => &[
            (20, Start),
            (25, Switchover),
            (15, Hotplug),
            (15, Map),
            (15, Reset),
            (10, Unplug),
            (5, Unmap),
            (4, Buffers),
        ],
        // Between the source's stop and the start: the vIOMMU's maps
        // arriving with the stream, and resets (booked in the downtime).
        M::Switchover => &[
            (30, Start),
            (25, Map),
            (25, Reset),
            (5, Unmap),
            (5, Hotplug),
            (4, Buffers),
        ],
    };
    let mut pick = weighted(r.a.1 >> 32, table);
    // Fall back to what the state allows.
    if matches!(pick, Map | MapColliding) && (!viommu || m.regions.is_empty()) {
        pick = if pick == Map {
            Hotplug
        } else {
            HotplugColliding
        };
    }
    if pick == Unmap && m.pages.is_empty() || pick == Unplug && m.regions.is_empty() {
        pick = Hotplug;
    }
    let cfg = SvqConfig {
        queues: u32::from(r.size % 3) + 1,
        queue_size: [16, 64, 256][usize::from(r.flags >> 2) % 3],
        hva: Hva(0x7e00_0000_0000 + u64::from(r.b.0) * 64 * PAGE),
    };
    match pick {
        Boot => Event::Boot(new_regions(s, m, p, r)),
        Incoming => Event::Incoming(new_regions(s, m, p, r)),
        Switchover => Event::Switchover,
        Start => Event::Start,
        Hotplug => Event::Hotplug(new_region(s, m, p, r, false)),
        HotplugColliding => Event::Hotplug(new_region(s, m, p, r, true)),
        Unplug => Event::Unplug(Gpa(m.regions[usize::from(r.a.0) % m.regions.len()].0)),
        Prepare => Event::SvqPrepare(cfg),
        SwitchPrepared => Event::SvqSwitch(None),
        SwitchUnprepared => Event::SvqSwitch(Some(cfg)),
        Failback => Event::Failback,
        Complete => Event::Complete,
        Reset => Event::Reset,
        Map => new_map(s, m, p, r, false),
        MapColliding => new_map(s, m, p, r, true),
        Unmap => {
            let keys = m.pages.len();
            let g = *m
                .pages
                .keys()
                .nth(usize::from(r.a.0) % keys)
                .expect("not empty");
            let start = g.saturating_sub(u64::from(r.size % 4 == 0) * PAGE);
            Event::ViommuUnmap {
                giova: Iova(start),
                size: u64::from(r.size % 3 + 1) * PAGE,
            }
        }
        Buffers => Event::HostBuffers(
            (0..=u64::from(r.flags >> 7))
                .map(|i| HostBuffer {
                    hva: Hva(0x7d00_0000_0000 + (u64::from(r.b.0) * 4 + i * 2) * PAGE),
                    size: PAGE * (1 + u64::from(r.size >> 7)),
                    perm: if i == 0 { Perm::Ro } else { Perm::Rw },
                })
                .collect(),
        ),
        Unguided => event(s, m, r),
    }
}

/// One or two new regions that do not overlap each other or the guest's.
fn new_regions(s: &Setup, m: &PageModel, p: &IdentityPlanner, r: &RawEvent) -> Vec<RegionSpec> {
    let first = new_region(s, m, p, r, false);
    if r.flags & 0x10 == 0 {
        return vec![first];
    }
    let mut m2 = m.clone();
    m2.regions
        .push((first.gpa.0, first.size, first.hva.0, first.readonly));
    let r2 = RawEvent {
        a: r.b,
        b: r.a,
        size: r.size.rotate_left(3),
        ..*r
    };
    vec![first, new_region(s, &m2, p, &r2, false)]
}

/// Addresses where memory collides with the planner's own: the vrings (when
/// they share the guest's address space), the window's edges, displaced
/// pieces, and just above `max_gpa`.
fn colliding(p: &IdentityPlanner, r: &RawEvent) -> Vec<u64> {
    let mut v = Vec::new();
    let areas = p.vring_areas();
    let shared: Vec<_> = areas.iter().filter(|a| a.asid == GUEST_ASID).collect();
    if !shared.is_empty() {
        let a = shared[usize::from(r.b.0) % shared.len()];
        v.push(a.iova.first().0);
    }
    if let Some((first, last)) = p.window().map(|w| (w.first().0, w.last().0)) {
        let k = u64::from(r.a.0 % 8) * PAGE;
        v.push(first.saturating_add(k) & !(PAGE - 1));
        v.push((last & !(PAGE - 1)).saturating_sub(k));
    }
    let displaced = p.displaced();
    if !displaced.is_empty() {
        v.push(
            displaced[usize::from(r.a.0) % displaced.len()]
                .iova
                .first()
                .0,
        );
    }
    if let Some(m) = p.max_gpa().checked_next_multiple_of(PAGE) {
        v.push(m);
    }
    if v.is_empty() {
        return v;
    }
    let n = usize::from(r.flags) % v.len();
    v.rotate_left(n);
    v
}

fn free_gpa(m: &PageModel, gpa: u64, size: u64) -> bool {
    gpa % PAGE == 0
        && gpa.checked_add(size - 1).is_some()
        && m.regions
            .iter()
            .all(|&(g, s, _, _)| gpa > g.saturating_add(s.max(1) - 1) || g > gpa + (size - 1))
}

/// A region the model accepts whenever possible: free, aligned, not wrapping.
fn new_region(
    s: &Setup,
    m: &PageModel,
    p: &IdentityPlanner,
    r: &RawEvent,
    collide: bool,
) -> RegionSpec {
    let size = u64::from(r.size % 8 + 1) * PAGE;
    let mut cands = if collide { colliding(p, r) } else { Vec::new() };
    cands.push(addr(s, r.a.0, r.a.1) & !(PAGE - 1));
    cands.push((r.b.1 % (256 * PAGE)) & !(PAGE - 1));
    let end = m
        .regions
        .iter()
        .map(|&(g, s, _, _)| g.saturating_add(s))
        .max()
        .unwrap_or(0);
    cands.push(end.saturating_add(u64::from(r.b.0 % 4) * PAGE));
    cands.push(end);
    let gpa = cands
        .iter()
        .copied()
        .find(|&g| free_gpa(m, g, size))
        .unwrap_or(cands[0]);
    RegionSpec {
        gpa: Gpa(gpa),
        size,
        hva: Hva(0x7000_0000_0000 + (gpa % (1 << 40)) / PAGE * PAGE * 2),
        readonly: r.flags & 3 == 3,
    }
}

/// A vIOMMU map of existing guest memory at a free guest IOVA whenever possible.
fn new_map(s: &Setup, m: &PageModel, p: &IdentityPlanner, r: &RawEvent, collide: bool) -> Event {
    let last = s.viommu_last.expect("vIOMMU guests only");
    let (g, rsize, _, ro) = m.regions[usize::from(r.b.0) % m.regions.len()];
    let pages = (u64::from(r.size % 4) + 1).min(rsize / PAGE);
    let size = pages * PAGE;
    let gpa = g + (r.b.1 % (rsize / PAGE - pages + 1)) * PAGE;
    let perm = if ro {
        Perm::Ro
    } else {
        [Perm::Rw, Perm::Ro, Perm::Wo][usize::from(r.flags >> 1) % 3]
    };
    let mut cands = if collide { colliding(p, r) } else { Vec::new() };
    cands.push(gpa);
    cands.push(addr(s, r.a.0, r.a.1) & !(PAGE - 1));
    cands.push(((last & !(PAGE - 1)).saturating_sub(u64::from(r.a.0 % 16) * PAGE)) & !(PAGE - 1));
    cands.push((r.a.1 % (256 * PAGE)) & !(PAGE - 1));
    if let Some(&top) = m.pages.keys().next_back() {
        cands.push(top.saturating_add(PAGE));
    }
    let free = |giova: u64| {
        giova % PAGE == 0
            && giova.checked_add(size - 1).is_some_and(|l| l <= last)
            && m.pages.range(giova..=giova + (size - 1)).next().is_none()
    };
    let giova = cands.iter().copied().find(|&c| free(c)).unwrap_or(cands[0]);
    Event::ViommuMap {
        giova: Iova(giova),
        size,
        gpa: Gpa(gpa),
        perm,
    }
}
