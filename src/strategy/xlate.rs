//! The GPA -> IOVA translation table both strategies keep for `translate`,
//! the per-descriptor hot path of the shadow virtqueues.

use rangemap::RangeInclusiveMap;
use smallvec::smallvec;

use crate::addr::{Address, Gpa, Iova};
use crate::error::PlanError;
use crate::strategy::{Segment, Segments};
use crate::vocab::Perm;

/// How one range of guest addresses translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Xlate {
    /// `iova - gpa`, wrapping: storing the offset rather than the IOVA keeps
    /// the range map from merging neighbours that translate differently.
    pub(crate) delta: u64,
    pub(crate) perm: Perm,
}

/// The translation table as sorted arrays: first addresses apart from the
/// rest, so the binary search touches 8 bytes an entry (a 1,024-region
/// table's keys fit in L1).
#[derive(Clone, Debug, Default)]
pub(crate) struct Flat {
    pub(crate) firsts: Vec<u64>,
    pub(crate) rest: Vec<(u64, Xlate)>,
}

impl Flat {
    /// The entry holding `addr`: its last address and translation.
    pub(crate) fn lookup(&self, addr: u64) -> Option<(u64, Xlate)> {
        let i = self.firsts.partition_point(|&f| f <= addr).checked_sub(1)?;
        let (end, x) = self.rest[i];
        (end >= addr).then_some((end, x))
    }
}

/// The translation walk shared by the strategies, over a `lookup` giving
/// the entry that holds an address (its last address and translation).
pub(crate) fn translate_with(
    lookup: impl Fn(u64) -> Option<(u64, Xlate)>,
    gpa: Gpa,
    len: u64,
    is_guest: impl Fn(u64) -> bool,
) -> Result<Segments, PlanError> {
    if len == 0 {
        return Err(PlanError::ZeroSize {
            kind: "gpa",
            first: gpa.raw(),
        });
    }
    let last = gpa.raw().checked_add(len - 1).ok_or(PlanError::Wraps {
        kind: "gpa",
        first: gpa.raw(),
        size: len,
    })?;
    let mut out: Segments = smallvec![];
    let mut cur = gpa.raw();
    loop {
        match lookup(cur) {
            Some((end, x)) => {
                let end = end.min(last);
                out.push(Segment {
                    iova: Iova(cur.wrapping_add(x.delta)),
                    len: end - cur + 1,
                    perm: x.perm,
                });
                if end == last {
                    return Ok(out);
                }
                cur = end + 1;
            }
            None if is_guest(cur) => return Err(PlanError::Unreachable { gpa: cur }),
            None => return Err(PlanError::NotGuestMemory { gpa: cur }),
        }
    }
}

/// [`translate_with`] over a range map (the baseline strategy's).
pub(crate) fn translate_map(
    xlate: &RangeInclusiveMap<u64, Xlate>,
    gpa: Gpa,
    len: u64,
    is_guest: impl Fn(u64) -> bool,
) -> Result<Segments, PlanError> {
    translate_with(
        |a| xlate.get_key_value(&a).map(|(r, x)| (*r.end(), *x)),
        gpa,
        len,
        is_guest,
    )
}

/// The GPA -> IOVA translation map, shared with the baseline strategy.
pub(crate) type XlateMap = RangeInclusiveMap<u64, Xlate>;

pub(crate) fn xlate_entry(delta: u64, perm: Perm) -> Xlate {
    Xlate { delta, perm }
}
