//! Random raw message sequences for the rig's differential run of the
//! kernel model against the real kernel (`.ci/rig/tools`, `kernel-diff`).
//!
//! Unlike the planner's plans, these sequences break every rule: UPDATEs
//! overlapping live entries or touching them, of size 0, wrapping past
//! 2^64, outside the device range, with perms other than RO/WO/RW;
//! INVALIDATEs of a whole entry, of part of one, of several with the gaps
//! between, of nothing, of size 0, wrapping; unknown and never created
//! asids; empty batches, batches across asids, batch markers out of place;
//! device resets inside and outside batches; and, where the device has an
//! entry limit, tables filled up to it.
//!
//! A sequence is generated against the permissive model ([`KernelIotlb`]),
//! so that most messages aim at the entries live at that point. Every
//! UPDATE the model would accept maps memory inside [`Target::mem`] (the
//! memory the run owns), so that the kernel can pin or map it: only the
//! IOTLB's rules decide.
//!
//! Three things the model cannot know are kept out of the way, on purpose
//! and in the open: a pinning device maps whole pages (an UPDATE of a page
//! and a byte becomes a two-page entry), so sizes that are not page
//! multiples go only to devices that map host addresses; on a pinning
//! device one UPDATE becomes one kernel entry per
//! physically contiguous run of its pages, so after an INVALIDATE that cuts
//! an entry (part of it, or a size-0 or wrapping one) the generator sends
//! an INVALIDATE of each cut entry's exact range, which leaves the kernel
//! and the model alike whatever pieces the first one removed; and an UPDATE
//! with a perm other than RO/WO/RW (which the kernel maps and an [`Entry`]
//! cannot hold) is followed by an INVALIDATE of its exact range.
//!
//! [`Entry`]: vdpa_iova_planner::Entry

use vdpa_iova_planner::kernel::{MsgType, RawMsg};
use vdpa_iova_planner::{DeviceCaps, DeviceRange, KernelIotlb, MapStyle};

use crate::model::PAGE;

/// The device a sequence is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// Address spaces the device has.
    pub address_spaces: u32,
    /// Its IOVA range `[first, last]`.
    pub range: (u64, u64),
    /// The memory accepted UPDATEs map: `(first byte, length)`, page aligned.
    pub mem: (u64, u64),
    /// BATCH_BEGIN/BATCH_END negotiated.
    pub batching: bool,
    /// Entries allowed per address space (`max_iotlb_entries`), if the
    /// generator should fill tables up to it.
    pub entry_limit: Option<usize>,
    /// The device pins (one UPDATE may become several kernel entries).
    pub pinning: bool,
    /// How the device takes its maps (what a reset and a batch do to the
    /// device's own view).
    pub map_style: MapStyle,
    /// `IOTLB_PERSIST` negotiated (or the device keeps its maps anyway).
    pub persist: bool,
}

impl Target {
    /// The model of this device: permissive (it takes what the kernel
    /// takes), with the entry limit.
    pub fn model(&self) -> KernelIotlb {
        let caps = DeviceCaps {
            range: DeviceRange::new(self.range.0, self.range.1).expect("first <= last"),
            address_spaces: self.address_spaces,
            batching: self.batching,
            persist: self.persist,
            pinning: self.pinning,
            map_style: self.map_style,
            ..DeviceCaps::default()
        };
        KernelIotlb::permissive(&caps).with_entry_limit(self.entry_limit)
    }
}

/// One step of a sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A message written to the device.
    Msg(RawMsg),
    /// A device reset (`VHOST_VDPA_SET_STATUS` 0).
    Reset,
}

impl Step {
    /// The step as Rust, in the helpers of `tests/kernel_diff_regressions.rs`.
    pub fn to_rust(&self) -> String {
        match self {
            Step::Reset => "Step::Reset".into(),
            Step::Msg(m) => match m.kind {
                MsgType::Update => format!(
                    "upd_raw({}, {:#x}, {:#x}, {:#x}, {})",
                    m.asid, m.iova, m.size, m.uaddr, m.perm
                ),
                MsgType::Invalidate => format!("inv({}, {:#x}, {:#x})", m.asid, m.iova, m.size),
                MsgType::BatchBegin => format!("begin({})", m.asid),
                MsgType::BatchEnd => format!("end({})", m.asid),
            },
        }
    }
}

/// splitmix64: small, fast, and the same everywhere.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for this seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `p` percent.
    pub fn pct(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// What a sequence leans toward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mood {
    /// Every kind of message.
    Mixed,
    /// Mostly UPDATEs: tables fill up (to the entry limit, if any).
    Fill,
    /// Mostly batches and resets.
    Batches,
}

struct Gen<'a> {
    t: &'a Target,
    r: Rng,
    k: KernelIotlb,
    /// The asid most messages use.
    home: u32,
    mood: Mood,
}

impl Gen<'_> {
    /// An asid: mostly the home one, sometimes another existing one, one
    /// the device lacks, or the largest.
    fn asid(&mut self) -> u32 {
        match self.r.below(20) {
            0 => self.t.address_spaces + self.r.below(3) as u32,
            1 => u32::MAX,
            2..=4 => self.r.below(u64::from(self.t.address_spaces)) as u32,
            _ => self.home,
        }
    }

    /// IOVAs near where entries are (a small window at the range's start,
    /// or its top), page aligned.
    fn iova(&mut self) -> u64 {
        let (first, last) = self.t.range;
        let window = 192 * PAGE;
        if self.r.pct(15) && last - first >= window {
            (last - window + 1 + self.r.below(192) * PAGE) & !(PAGE - 1)
        } else {
            first.saturating_add(self.r.below(192) * PAGE) & !(PAGE - 1)
        }
    }

    fn pages(&mut self) -> u64 {
        match self.r.below(10) {
            0..=5 => 1 + self.r.below(4),
            6..=8 => 1 + self.r.below(16),
            _ => 1 + self.r.below(64),
        }
    }

    fn perm(&mut self) -> u8 {
        1 + self.r.below(3) as u8
    }

    /// A host address with `size` bytes of the run's memory behind it.
    fn uaddr(&mut self, size: u64) -> u64 {
        let (base, len) = self.t.mem;
        let room = len.saturating_sub(size) / PAGE;
        base + self.r.below(room + 1) * PAGE
    }

    fn live(&self, asid: u32) -> Vec<(u64, u64)> {
        self.k
            .entries(asid)
            .map(|e| (e.iova.first().0, e.iova.last().0))
            .collect()
    }

    /// A live entry of the home asid, if any.
    fn some_entry(&mut self) -> Option<(u64, u64)> {
        let live = self.live(self.home);
        (!live.is_empty()).then(|| live[self.r.below(live.len() as u64) as usize])
    }

    fn update(&mut self, asid: u32, iova: u64, size: u64) -> RawMsg {
        let uaddr = if size <= self.t.mem.1 {
            self.uaddr(size)
        } else {
            self.t.mem.0
        };
        RawMsg {
            asid,
            kind: MsgType::Update,
            iova,
            size,
            uaddr,
            perm: self.perm(),
        }
    }

    fn invalidate(&mut self, asid: u32, iova: u64, size: u64) -> RawMsg {
        RawMsg {
            asid,
            kind: MsgType::Invalidate,
            iova,
            size,
            uaddr: 0,
            perm: 0,
        }
    }

    /// The next message, before the follow-ups it may need.
    fn message(&mut self) -> Step {
        let asid = self.asid();
        let w: &[u64] = match self.mood {
            // fresh, overlap, adjacent, zero, wrap, outside, perm,
            // exact, partial, several, nothing, inv-zero, inv-wrap,
            // begin, end, reset
            Mood::Mixed => &[24, 8, 5, 2, 2, 2, 2, 10, 6, 4, 4, 2, 2, 9, 9, 3],
            Mood::Fill => &[60, 4, 8, 1, 1, 1, 1, 4, 2, 1, 1, 1, 1, 4, 4, 1],
            Mood::Batches => &[14, 4, 3, 1, 1, 1, 1, 6, 3, 2, 2, 1, 1, 20, 20, 8],
        };
        let total: u64 = w.iter().sum();
        let mut pick = self.r.below(total);
        let mut kind = 0;
        for (i, &x) in w.iter().enumerate() {
            if pick < x {
                kind = i;
                break;
            }
            pick -= x;
        }
        let (first, last) = self.t.range;
        let msg = match kind {
            0 => {
                // A quarter with the property tests' edge-biased sizes
                // (0, a page and a byte, 2^64 - 1, 1 to 16 pages), page
                // rounded on a pinning device (which maps whole pages: the
                // model does not know that, see the module documentation).
                let size = if self.r.pct(25) {
                    let s = crate::gen::size(self.r.below(256) as u8);
                    if self.t.pinning && s % PAGE != 0 && s < u64::MAX - PAGE {
                        s.div_ceil(PAGE) * PAGE
                    } else {
                        s
                    }
                } else {
                    self.pages() * PAGE
                };
                // Filling: half of them after the last entry, so that tables
                // grow to the entry limit.
                let top = self.live(self.home).last().map(|e| e.1);
                let iova = match top {
                    Some(l) if self.mood == Mood::Fill && self.r.pct(50) => {
                        let next = l.saturating_add(1 + self.r.below(2) * PAGE);
                        next.checked_next_multiple_of(PAGE).unwrap_or(next)
                    }
                    _ => self.iova(),
                };
                self.update(asid, iova, size)
            }
            1 => match self.some_entry() {
                // Overlapping a live entry: starting before, inside, or
                // covering it, by a page or more.
                Some((f, l)) => {
                    let shift = self.r.below(4) * PAGE;
                    let (iova, end) = match self.r.below(4) {
                        0 => (f.saturating_sub(shift + PAGE), f),
                        1 => (f, l),
                        2 => (l & !(PAGE - 1), l.saturating_add(shift + PAGE)),
                        _ => (f.saturating_sub(shift), l.saturating_add(shift)),
                    };
                    let size = end.wrapping_sub(iova).wrapping_add(1).max(PAGE);
                    self.update(self.home, iova, size)
                }
                None => {
                    let iova = self.iova();
                    self.update(asid, iova, PAGE)
                }
            },
            2 => match self.some_entry() {
                // Touching a live entry on either side: accepted.
                Some((f, l)) => {
                    let size = self.pages() * PAGE;
                    let iova = if self.r.pct(50) {
                        l.wrapping_add(1)
                    } else {
                        f.wrapping_sub(size)
                    };
                    self.update(self.home, iova, size)
                }
                None => {
                    let iova = self.iova();
                    self.update(asid, iova, PAGE)
                }
            },
            3 => {
                let iova = self.iova();
                self.update(asid, iova, 0)
            }
            4 => {
                let k = self.r.below(4);
                let iova = u64::MAX - k * PAGE - (PAGE - 1);
                let size = (k + 1 + self.r.below(3)) * PAGE + PAGE;
                self.update(asid, iova, size)
            }
            5 => {
                // Outside the range when it is not the whole space (else
                // the largest size that fits nothing).
                if first > 0 {
                    self.update(asid, first - PAGE, 2 * PAGE)
                } else if last < u64::MAX {
                    self.update(asid, (last & !(PAGE - 1)) + PAGE, PAGE)
                } else {
                    self.update(asid, PAGE, u64::MAX)
                }
            }
            6 => {
                let iova = self.iova();
                let size = self.pages() * PAGE;
                let mut m = self.update(asid, iova, size);
                m.perm = [0, 4, 7, 255][self.r.below(4) as usize];
                m
            }
            7 => match self.some_entry() {
                Some((f, l)) => self.invalidate(self.home, f, l - f + 1),
                None => {
                    let iova = self.iova();
                    self.invalidate(asid, iova, PAGE)
                }
            },
            8 => match self.some_entry() {
                // Part of an entry: its head, its tail, a page inside, or
                // from inside it to past its end.
                Some((f, l)) => {
                    let len = l - f + 1;
                    let (iova, size) = match self.r.below(4) {
                        0 => (f, (len / 2).max(1)),
                        1 => (f + len / 2, len - len / 2),
                        2 => (f + ((len / 2) & !(PAGE - 1)), PAGE.min(len)),
                        _ => (f + len / 2, len + 4 * PAGE),
                    };
                    self.invalidate(self.home, iova, size)
                }
                None => {
                    let iova = self.iova();
                    self.invalidate(asid, iova, PAGE)
                }
            },
            9 => {
                // A span over several entries and the gaps between them.
                let live = self.live(self.home);
                if live.len() >= 2 {
                    let i = self.r.below(live.len() as u64 - 1) as usize;
                    let j = i + 1 + self.r.below((live.len() - i - 1) as u64) as usize;
                    let (f, l) = (live[i].0, live[j].1);
                    self.invalidate(self.home, f, l - f + 1)
                } else {
                    self.invalidate(self.home, first, 256 * PAGE)
                }
            }
            10 => {
                // A gap (or nothing at all on an empty table).
                let live = self.live(self.home);
                let mut iova = self.iova();
                for _ in 0..8 {
                    if live.iter().all(|&(f, l)| iova + PAGE - 1 < f || iova > l) {
                        break;
                    }
                    iova = self.iova();
                }
                self.invalidate(asid, iova, PAGE)
            }
            11 => {
                // Size 0: at 0 it clears the address space; inside an entry
                // it removes that entry.
                let iova = match (self.r.below(4), self.some_entry()) {
                    (0, _) => 0,
                    (1 | 2, Some((f, l))) if l - f >= PAGE => f + PAGE,
                    _ => self.iova(),
                };
                self.invalidate(self.home, iova, 0)
            }
            12 => {
                let iova = match self.some_entry() {
                    Some((f, _)) if self.r.pct(50) => f,
                    _ => self.iova(),
                };
                let size = u64::MAX - self.r.below(8) * PAGE;
                self.invalidate(self.home, iova, size)
            }
            13 => {
                let asid = match self.k.open_batch() {
                    Some(b) if self.r.pct(60) => b,
                    _ => asid,
                };
                RawMsg::marker(asid, MsgType::BatchBegin)
            }
            14 => {
                let asid = match self.k.open_batch() {
                    Some(b) if self.r.pct(80) => b,
                    _ => asid,
                };
                RawMsg::marker(asid, MsgType::BatchEnd)
            }
            _ => return Step::Reset,
        };
        Step::Msg(msg)
    }

    /// Makes an UPDATE the model would take map memory the run owns.
    fn fit(&mut self, mut m: RawMsg) -> RawMsg {
        if m.kind != MsgType::Update {
            return m;
        }
        if self.k.clone().apply_raw(&m).is_ok() && m.size > self.t.mem.1 {
            m.size = self.t.mem.1;
            m.uaddr = self.t.mem.0;
        }
        m
    }
}

/// A sequence of `len` steps or a few more (the follow-ups described in the
/// module documentation come right after the step that needs them).
pub fn sequence(t: &Target, seed: u64, len: usize) -> Vec<Step> {
    let mut r = Rng::new(seed);
    let home = r.below(u64::from(t.address_spaces.max(1))) as u32;
    let mood = match r.below(6) {
        0..=2 => Mood::Mixed,
        3..=4 => Mood::Fill,
        _ => Mood::Batches,
    };
    let mut g = Gen {
        t,
        r,
        k: t.model(),
        home,
        mood,
    };
    let mut out = Vec::with_capacity(len + 4);
    while out.len() < len {
        let step = match g.message() {
            Step::Msg(m) => Step::Msg(g.fit(m)),
            s => s,
        };
        let mut follow = Vec::new();
        match step {
            Step::Reset => g.k.reset_device(),
            Step::Msg(m) => {
                let before: Vec<_> = g.live(m.asid);
                let quirks = g.k.quirks().len();
                let r = g.k.apply_raw(&m);
                if m.kind == MsgType::Update
                    && matches!(r, Err(vdpa_iova_planner::kernel::Violation::BadPerm { .. }))
                {
                    follow.push(RawMsg {
                        kind: MsgType::Invalidate,
                        uaddr: 0,
                        perm: 0,
                        ..m
                    });
                }
                if t.pinning && m.kind == MsgType::Invalidate && g.k.quirks().len() > quirks {
                    // The kernel removed some pieces of the cut entries:
                    // the rest go too, in the kernel and (already) in the model.
                    let after = g.live(m.asid);
                    for (f, l) in before.into_iter().filter(|e| !after.contains(e)) {
                        follow.push(RawMsg {
                            asid: m.asid,
                            kind: MsgType::Invalidate,
                            iova: f,
                            size: l - f + 1,
                            uaddr: 0,
                            perm: 0,
                        });
                    }
                }
            }
        }
        out.push(step);
        for m in follow {
            let _ = g.k.apply_raw(&m);
            out.push(Step::Msg(m));
        }
    }
    out
}

/// The number of steps of the `i`-th sequence of a run with this seed: 10
/// to 40, so a run of `n` sequences sends about `25 n` messages.
pub fn length(seed: u64, i: u64) -> usize {
    10 + (Rng::new(seed ^ i.wrapping_mul(0x9e37_79b9)).below(31) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim() -> Target {
        Target {
            address_spaces: 2,
            range: (0, (1 << 40) - 1),
            mem: (0x7f00_0000_0000, 16 << 20),
            batching: true,
            entry_limit: Some(16),
            pinning: false,
            map_style: MapStyle::SetMap,
            persist: false,
        }
    }

    /// The generator reaches every kind of message and verdict the run is
    /// meant to compare, and every UPDATE the model takes maps the run's
    /// memory.
    #[test]
    fn sequences_cover_the_rules_and_stay_in_memory() {
        use std::collections::BTreeSet;
        use vdpa_iova_planner::kernel::Violation;
        let t = sim();
        let mut seen = BTreeSet::new();
        let (mut msgs, mut ok, mut resets) = (0, 0, 0);
        for seed in 0..300 {
            let mut k = t.model();
            for s in sequence(&t, seed, length(7, seed)) {
                let Step::Msg(m) = s else {
                    resets += 1;
                    k.reset_device();
                    continue;
                };
                msgs += 1;
                let quirks = k.quirks().len();
                match k.apply_raw(&m) {
                    Ok(_) => {
                        ok += 1;
                        if m.kind == MsgType::Update {
                            let (base, len) = t.mem;
                            assert!(m.uaddr >= base && m.uaddr + m.size <= base + len, "{m:?}");
                        }
                        if let Some(q) = k.quirks().get(quirks) {
                            seen.insert(
                                format!("{q:?}")
                                    .split([' ', '{'])
                                    .next()
                                    .unwrap()
                                    .to_string(),
                            );
                        }
                    }
                    Err(v) => {
                        let name = match v {
                            Violation::Overlap { .. } => "Overlap",
                            Violation::ZeroSize => "ZeroSize",
                            Violation::Wraps { .. } => "Wraps",
                            Violation::OutsideRange { .. } => "OutsideRange",
                            Violation::AsidOutOfRange { .. } => "AsidOutOfRange",
                            Violation::NoAddressSpace { .. } => "NoAddressSpace",
                            Violation::BatchAsidMismatch { .. } => "BatchAsidMismatch",
                            Violation::EntryLimit { .. } => "EntryLimit",
                            Violation::BadPerm { .. } => "BadPerm",
                            _ => "other",
                        };
                        seen.insert(name.to_string());
                    }
                }
            }
        }
        for want in [
            "Overlap",
            "ZeroSize",
            "Wraps",
            "OutsideRange",
            "AsidOutOfRange",
            "NoAddressSpace",
            "BatchAsidMismatch",
            "EntryLimit",
            "BadPerm",
            "PartialInvalidate",
            "InvalidateZeroSize",
            "InvalidateWraps",
            "BatchAlreadyOpen",
            "BatchNotOpen",
        ] {
            assert!(seen.contains(want), "{want} never happened: {seen:?}");
        }
        assert!(
            msgs > 6000 && ok > msgs / 3 && resets > 50,
            "{msgs} {ok} {resets}"
        );
    }

    /// Same seed, same sequence.
    #[test]
    fn sequences_are_reproducible() {
        let t = sim();
        assert_eq!(sequence(&t, 42, 30), sequence(&t, 42, 30));
        assert_ne!(sequence(&t, 42, 30), sequence(&t, 43, 30));
    }
}
