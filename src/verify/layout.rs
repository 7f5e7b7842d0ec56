//! Checks a device's IOTLB against what a strategy says it mapped.
//!
//! Used by every scenario test after every step, by the CLI's dry run, and by
//! the end-to-end rig on a table read back from a real device. The check is
//! byte-exact and independent of entry granularity: both sides become maps
//! from IOVA to (host offset, perm), compared range for range.

use core::fmt;

use rangemap::RangeInclusiveMap;

use crate::addr::{Address, Gpa};
use crate::entry::Entry;
use crate::strategy::Strategy;
use crate::verify::guest::GuestView;
use crate::vocab::{Mode, Perm, GUEST_ASID};

/// How the device's view breaks the expected layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// Two things the strategy reports share IOVAs.
    ReportedOverlap {
        /// First IOVA of the later one.
        iova: u64,
    },
    /// The device's table and the expected layout differ.
    Mismatch {
        /// Address space.
        asid: u32,
        /// First IOVA where they differ.
        iova: u64,
        /// What was expected there: (hva, perm), or nothing.
        expected: Option<(u64, Perm)>,
        /// What the device has: (hva, perm), or nothing.
        actual: Option<(u64, Perm)>,
    },
    /// The strategy's regions differ from the ones the caller declared.
    Regions {
        /// Explanation.
        what: String,
    },
    /// Passthrough memory that is mapped, but not at its GPA.
    NotIdentity {
        /// First GPA of the piece.
        gpa: u64,
        /// Where it is mapped.
        iova: u64,
    },
    /// `translate` disagrees with the reported placement.
    Translate {
        /// The GPA asked.
        gpa: u64,
        /// Explanation.
        what: String,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::ReportedOverlap { iova } => {
                write!(f, "reported mappings overlap at iova {iova:#x}")
            }
            LayoutError::Mismatch {
                asid,
                iova,
                expected,
                actual,
            } => {
                let show = |v: &Option<(u64, Perm)>| match v {
                    Some((h, p)) => format!("hva {h:#x} {}", p.as_str()),
                    None => "nothing".to_string(),
                };
                write!(
                    f,
                    "asid {asid} at iova {iova:#x}: expected {} but the device has {}",
                    show(expected),
                    show(actual)
                )
            }
            LayoutError::Regions { what } => write!(f, "regions differ: {what}"),
            LayoutError::NotIdentity { gpa, iova } => {
                write!(
                    f,
                    "passthrough memory at gpa {gpa:#x} is mapped at iova {iova:#x}"
                )
            }
            LayoutError::Translate { gpa, what } => write!(f, "translate({gpa:#x}): {what}"),
        }
    }
}

impl std::error::Error for LayoutError {}

/// What a layout holds, when it checks out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayoutReport {
    /// Guest bytes mapped at their GPA.
    pub identity_bytes: u64,
    /// Guest bytes mapped elsewhere.
    pub displaced_bytes: u64,
    /// Guest bytes the device cannot reach now.
    pub unreachable_bytes: u64,
    /// Of those, bytes inside the device range (lost for no reason of the range).
    pub unreachable_in_range_bytes: u64,
    /// Vring bytes mapped.
    pub vring_bytes: u64,
    /// Host buffer bytes mapped.
    pub buffer_bytes: u64,
}

/// Offset-based value so that adjacent entries translating alike merge and
/// entries translating differently never do.
type View = RangeInclusiveMap<u64, (u64, Perm)>;

fn put(v: &mut View, first: u64, last: u64, hva: u64, perm: Perm) -> Result<(), LayoutError> {
    if v.overlaps(&(first..=last)) {
        return Err(LayoutError::ReportedOverlap { iova: first });
    }
    v.insert(first..=last, (hva.wrapping_sub(first), perm));
    Ok(())
}

/// Checks that `tables` (the device's live entries, one list per address
/// space indexed by asid: from [`KernelIotlb::device_tables`] or read back from
/// a device) hold exactly the strategy's guest pieces and vring areas, that
/// the strategy's regions (or guest maps) are the ones `guest` tracked, that
/// passthrough memory is identity, and that `translate` agrees with each piece.
///
/// [`KernelIotlb::device_tables`]: crate::kernel::KernelIotlb::device_tables
///
/// # Errors
/// The first [`LayoutError`] found.
pub fn check<S: Strategy + ?Sized>(
    tables: &[Vec<Entry>],
    strategy: &S,
    guest: &GuestView,
) -> Result<LayoutReport, LayoutError> {
    let mut rep = LayoutReport::default();
    let mut expected: Vec<View> = Vec::new();
    let view = |v: &mut Vec<View>, asid: u32| -> usize {
        let i = asid as usize;
        if v.len() <= i {
            v.resize_with(i + 1, View::new);
        }
        i
    };
    let placements = strategy.placements();
    let want: Vec<_> = guest
        .units()
        .iter()
        .map(|u| (u.addr.first().raw(), u.addr.size(), u.hva.raw(), u.perm))
        .collect();
    let have: Vec<_> = placements
        .iter()
        .map(|p| (p.gpa.first().raw(), p.gpa.size(), p.hva.raw(), p.perm))
        .collect();
    if want != have {
        return Err(LayoutError::Regions {
            what: format!("declared {want:x?}, strategy has {have:x?}"),
        });
    }
    let range = strategy.caps().range;
    let passthrough = matches!(
        strategy.mode(),
        Mode::Passthrough | Mode::Prepared | Mode::Incoming | Mode::Switchover
    );
    let g = view(&mut expected, GUEST_ASID);
    for pl in &placements {
        for piece in &pl.pieces {
            let (f, l) = piece.iova.bounds();
            put(
                &mut expected[g],
                f,
                l,
                pl.hva_of(piece.gpa.first()).raw(),
                pl.perm,
            )?;
            let in_range = range.contains_span(&piece.gpa);
            if piece.is_identity() {
                rep.identity_bytes += piece.gpa.size();
            } else {
                rep.displaced_bytes += piece.gpa.size();
                if passthrough && in_range {
                    return Err(LayoutError::NotIdentity {
                        gpa: piece.gpa.first().raw(),
                        iova: f,
                    });
                }
            }
            check_translate(strategy, piece.gpa.first(), piece.gpa.size(), f, pl.perm)?;
        }
        for u in pl.unreachable() {
            rep.unreachable_bytes += u.size();
            if let Some((a, b)) = range.clip(u.first().raw(), u.last().raw()) {
                rep.unreachable_in_range_bytes += b - a + 1;
            }
            match strategy.translate(u.first(), 1) {
                Err(crate::PlanError::Unreachable { .. }) => {}
                other => {
                    return Err(LayoutError::Translate {
                        gpa: u.first().raw(),
                        what: format!("unreachable memory translated as {other:?}"),
                    })
                }
            }
        }
    }
    for a in strategy.vring_areas() {
        let (f, l) = a.iova.bounds();
        let i = view(&mut expected, a.asid);
        put(&mut expected[i], f, l, a.hva.raw(), a.perm())?;
        rep.vring_bytes += a.iova.size();
    }
    for (asid, e) in strategy.buffer_entries() {
        let (f, l) = e.iova.bounds();
        let i = view(&mut expected, asid);
        put(&mut expected[i], f, l, e.hva.raw(), e.perm)?;
        rep.buffer_bytes += e.iova.size();
        // A guest address never reaches a host buffer.
        if let Ok(segs) = strategy.translate(crate::addr::Gpa(f), 1) {
            if guest
                .units()
                .iter()
                .all(|u| !u.addr.contains(crate::addr::Gpa(f)))
            {
                return Err(LayoutError::Translate {
                    gpa: f,
                    what: format!("a host buffer's IOVA translates as guest memory: {segs:?}"),
                });
            }
        }
    }
    for asid in 0..expected.len().max(tables.len()) {
        let mut actual = View::new();
        for e in tables.get(asid).into_iter().flatten() {
            let (f, l) = e.iova.bounds();
            actual.insert(f..=l, (e.hva.raw().wrapping_sub(f), e.perm));
        }
        let empty = View::new();
        let expected = expected.get(asid).unwrap_or(&empty);
        let flat =
            |m: &View| -> Vec<_> { m.iter().map(|(r, v)| (*r.start(), *r.end(), *v)).collect() };
        let (ex, ac) = (flat(expected), flat(&actual));
        if ex != ac {
            let at = first_difference(&ex, &ac);
            let lookup = |m: &View| m.get(&at).map(|&(d, p)| (at.wrapping_add(d), p));
            return Err(LayoutError::Mismatch {
                asid: asid as u32,
                iova: at,
                expected: lookup(expected),
                actual: lookup(&actual),
            });
        }
    }
    Ok(rep)
}

/// The first IOVA where two flattened views `(first, last, (delta, perm))`
/// differ: where one run starts before the other, where the same runs map
/// differently, or right after the shorter of two runs that agree so far.
fn first_difference(a: &[(u64, u64, (u64, Perm))], b: &[(u64, u64, (u64, Perm))]) -> u64 {
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return if x.0 != y.0 {
                x.0.min(y.0)
            } else if x.2 != y.2 {
                x.0
            } else {
                x.1.min(y.1) + 1
            };
        }
    }
    match (a.get(b.len()), b.get(a.len())) {
        (Some(x), _) => x.0,
        (_, Some(y)) => y.0,
        _ => 0,
    }
}

fn check_translate<S: Strategy + ?Sized>(
    s: &S,
    gpa: Gpa,
    len: u64,
    iova: u64,
    perm: Perm,
) -> Result<(), LayoutError> {
    let segs = s.translate(gpa, len).map_err(|e| LayoutError::Translate {
        gpa: gpa.raw(),
        what: e.to_string(),
    })?;
    let mut next = iova;
    let mut total = 0u64;
    for seg in &segs {
        if seg.iova.raw() != next || seg.perm != perm {
            return Err(LayoutError::Translate {
                gpa: gpa.raw(),
                what: format!("segment {seg:?}, expected iova {next:#x} {}", perm.as_str()),
            });
        }
        next = next.wrapping_add(seg.len);
        total += seg.len;
    }
    if total != len {
        return Err(LayoutError::Translate {
            gpa: gpa.raw(),
            what: format!("covers {total:#x} of {len:#x} bytes"),
        });
    }
    Ok(())
}
