//! The bodies of the fuzz targets in `fuzz/`. Each takes the raw bytes
//! libFuzzer produces; any panic is a finding. The corpus replay test runs
//! them on every committed corpus file under `cargo test`.

use arbitrary::{Arbitrary, Unstructured};
use vdpa_iova_planner::kernel::{MsgType, RawMsg};
use vdpa_iova_planner::{DeviceCaps, DeviceRange, KernelIotlb};

use crate::gen::{self, RawEvent, RANGES};
use crate::harness::Harness;
use crate::model::PAGE;
use crate::NaiveKernel;

/// Up to 64 planner events on an edge-biased device and guest, with every
/// check of the property tests after every step.
pub fn planner_events(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok((range, flags, max_gpa, viommu)) = <(u8, u16, (u8, u64), (u8, u64))>::arbitrary(&mut u)
    else {
        return;
    };
    let setup = gen::setup(range, flags, max_gpa, viommu);
    let mut h = Harness::new(&setup);
    for _ in 0..64 {
        if u.is_empty() {
            break;
        }
        let Ok(raw) = RawEvent::arbitrary(&mut u) else {
            break;
        };
        let ev = gen::event(&setup, &h.model, &raw);
        h.step(&ev);
    }
}

/// One message's raw choices: addresses mostly near page multiples so that
/// entries meet.
#[derive(Debug, Arbitrary)]
struct RawChoice {
    asid: u8,
    kind: u8,
    iova: (u8, u64),
    size: (u8, u64),
    uaddr: u64,
    perm: u8,
}

fn pick(sel: u8, raw: u64) -> u64 {
    match sel % 4 {
        0 => u64::from(sel >> 2) * PAGE,
        1 => u64::MAX - u64::from(sel >> 2) * PAGE,
        2 => raw % (64 * PAGE),
        _ => raw,
    }
}

/// `KernelIotlb` against [`NaiveKernel`]: same verdict on every message, same
/// table after it.
pub fn kernel_model(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok((range, spaces, limit)) = <(u8, u8, u8)>::arbitrary(&mut u) else {
        return;
    };
    // Half the inputs without an entry limit, half with 1 to 8 entries.
    let limit = (limit >= 128).then_some(usize::from(limit % 8) + 1);
    let (first, last) = RANGES[usize::from(range) % RANGES.len()];
    let caps = DeviceCaps {
        range: DeviceRange::new(first, last).expect("first <= last"),
        address_spaces: u32::from(spaces % 3) + 1,
        ..DeviceCaps::default()
    };
    let mut k = KernelIotlb::new(&caps).with_entry_limit(limit);
    let mut n = NaiveKernel {
        limit,
        ..NaiveKernel::new(caps.address_spaces, (first, last))
    };
    // `arbitrary` yields defaults once the data runs out: stop there.
    for _ in 0..256 {
        if u.is_empty() {
            break;
        }
        let Ok(c) = RawChoice::arbitrary(&mut u) else {
            break;
        };
        let m = RawMsg {
            asid: u32::from(c.asid % 4),
            kind: [
                MsgType::Update,
                MsgType::Invalidate,
                MsgType::BatchBegin,
                MsgType::BatchEnd,
            ][usize::from(c.kind) % 4],
            iova: pick(c.iova.0, c.iova.1),
            size: pick(c.size.0, c.size.1),
            uaddr: c.uaddr,
            perm: c.perm % 5,
        };
        let before = k.clone();
        let got = k.apply_raw(&m);
        let want = n.apply(&m);
        assert_eq!(got.is_ok(), want, "{m:?}: model says {got:?}");
        if got.is_err() && m.kind != MsgType::Update && m.kind != MsgType::BatchBegin {
            assert_eq!(k, before, "{m:?} refused but changed the model");
        }
        let mut have: Vec<_> = (0..caps.address_spaces)
            .flat_map(|a| {
                k.entries(a)
                    .map(move |e| (a, e.iova.first().0, e.iova.last().0, e.hva.0, e.perm))
            })
            .collect();
        have.sort_unstable();
        let mut want_entries = n.entries.clone();
        want_entries.sort_unstable();
        assert_eq!(have, want_entries, "after {m:?}");
    }
}

/// Arbitrary bytes as a scenario file: an error, never a panic; a scenario
/// that parses is planned under every strategy, which must not panic either.
pub fn scenario_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(scn) = vdpa_adapter::Scenario::parse(text, "fuzz") else {
        return;
    };
    for k in vdpa_adapter::StrategyKind::available(&scn) {
        // Refusals are fine; a plan the kernel model refuses or a layout
        // that does not check out is a planner bug.
        if let Err(
            e @ (vdpa_adapter::AdapterError::KernelRule { .. }
            | vdpa_adapter::AdapterError::Layout { .. }),
        ) = vdpa_adapter::run(&scn, "fuzz", k)
        {
            panic!("{e}");
        }
    }
}

/// The adapter's message codec: decoding arbitrary 72-byte messages never
/// panics, and what decodes encodes back to the same message; arbitrary
/// messages round-trip through encode and decode.
pub fn msg_codec(data: &[u8]) {
    use vdpa_adapter::uapi::{decode, encode, MsgFormat, MSG_LEN};
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let format = [
        MsgFormat::V1,
        MsgFormat::V2 { asid: false },
        MsgFormat::V2 { asid: true },
    ][usize::from(sel) % 3];
    if rest.len() >= MSG_LEN {
        if let Ok(m) = decode(&rest[..MSG_LEN], format) {
            let b = encode(&m, format).expect("a decoded message encodes");
            assert_eq!(decode(&b, format), Ok(m));
        }
    }
    let mut u = Unstructured::new(rest);
    if let Ok(m) = RawMsg::arbitrary(&mut u) {
        if let Ok(b) = encode(&m, format) {
            assert_eq!(decode(&b, format), Ok(m), "{format:?}");
        }
    }
}
