//! Inputs biased toward the edges where planners break: address 0, the
//! device range's first and last pages, `max_gpa`, the top of the 64-bit
//! space, and small device ranges that force collisions. Shared by the
//! property tests (which draw the choices from proptest) and the fuzz
//! targets (which draw them from `arbitrary`).

use vdpa_iova_planner::{
    DeviceCaps, DeviceRange, Event, Gpa, Hva, Iova, MapStyle, Perm, RegionSpec, SvqConfig,
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
