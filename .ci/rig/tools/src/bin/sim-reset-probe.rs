//! `sim-reset-probe DEVICE`: the end-to-end rig's check of what a reset does
//! to a vdpa_sim device driven **without** `IOTLB_PERSIST`, and whether the
//! planner's restore for a `set_map` device (an empty BATCH_BEGIN/BATCH_END)
//! puts the maps back.
//!
//! vdpa_sim's own table cannot be read from userspace, so the kernel is
//! watched instead: kprobes on `vhost_iotlb_reset` and
//! `vhost_iotlb_add_range_ctx` record every change to every IOTLB. The
//! simulator's tables are the ones that get reset (by its `set_map` and by a
//! reset with `VDPA_RESET_F_CLEAN_MAP`); vhost-vdpa's own table is never
//! reset here. The check, on those records:
//! 1. after the boot plan, the simulator's table holds the map's physically
//!    contiguous runs (set R);
//! 2. the reset replaces it with vdpa_sim's pass-through entry
//!    `[0, 2^64 - 1]` (our maps are gone from the device);
//! 3. the planner's restore (2 messages) makes the simulator's table R again,
//!    and adds nothing to vhost-vdpa's table (nothing is pinned again).
//!
//! Prints `SIM-RESET-OK` on success; anything else prints what was seen and
//! exits 1. Needs root and tracefs at `/sys/kernel/tracing`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::ExitCode;

use vdpa_adapter::apply::Applier;
use vdpa_adapter::device::VhostVdpa;
use vdpa_adapter::host::procfs::Limits;
use vdpa_adapter::memory::{Backing, Mem};
use vdpa_adapter::uapi::backend;
use vdpa_iova_planner::{Event, Gpa, Hva, IdentityPlanner, MapStyle, RegionSpec, Strategy};

const TRACING: &str = "/sys/kernel/tracing";
const GROUP: &str = "rigreset";

fn write(file: &str, text: &str) -> Result<(), String> {
    std::fs::write(format!("{TRACING}/{file}"), text).map_err(|e| format!("{TRACING}/{file}: {e}"))
}

fn mark(text: &str) -> Result<(), String> {
    write("trace_marker", text)
}

/// What a probe saw done to an IOTLB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    /// `vhost_iotlb_add_range_ctx(start, last)`.
    Add(u64, u64),
    /// `vhost_iotlb_del_range(start, last)`: every overlapping entry goes.
    Del(u64, u64),
    /// `vhost_iotlb_reset`: everything goes.
    Reset,
}

/// One probe hit: the IOTLB and what was done to it.
type Hit = (u64, Change);

/// The probe hits of a trace, split at the `rig:` markers.
fn phases(trace: &str) -> Vec<(String, Vec<Hit>)> {
    let mut out = vec![("start".to_string(), Vec::new())];
    for l in trace.lines().filter(|l| !l.starts_with('#')) {
        if let Some((_, m)) = l.split_once("tracing_mark_write: rig: ") {
            out.push((m.trim().to_string(), Vec::new()));
            continue;
        }
        let kind = ["add", "del", "reset"]
            .into_iter()
            .find(|k| l.contains(&format!(" {k}: (")));
        let Some(kind) = kind else {
            continue;
        };
        let field = |k: &str| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        };
        let Some(iotlb) = field("iotlb=") else {
            continue;
        };
        let range = (field("start="), field("last="));
        let hit = match (kind, range) {
            ("reset", _) => (iotlb, Change::Reset),
            ("add", (Some(s), Some(e))) => (iotlb, Change::Add(s, e)),
            ("del", (Some(s), Some(e))) => (iotlb, Change::Del(s, e)),
            _ => continue,
        };
        out.last_mut().expect("start phase").1.push(hit);
    }
    out
}

/// Every IOTLB's entries, by IOTLB address.
type Tables = BTreeMap<u64, BTreeSet<(u64, u64)>>;

/// What the tables hold after `hits`, starting from `tables`.
fn replay(tables: &mut Tables, hits: &[Hit]) {
    for &(iotlb, change) in hits {
        let t = tables.entry(iotlb).or_default();
        match change {
            Change::Reset => t.clear(),
            Change::Add(f, l) => {
                t.insert((f, l));
            }
            Change::Del(f, l) => t.retain(|&(s, e)| e < f || s > l),
        }
    }
}

fn run(dev: &str) -> Result<(), String> {
    // The probes: the first argument of each is the IOTLB; x86-64 passes
    // arguments in rdi, rsi, rdx. Writing the file replaces earlier probes.
    let _ = write(&format!("events/{GROUP}/enable"), "0");
    write(
        "kprobe_events",
        &format!(
            "p:{GROUP}/add vhost_iotlb_add_range_ctx iotlb=%di:x64 start=%si:x64 last=%dx:x64\n\
             p:{GROUP}/reset vhost_iotlb_reset iotlb=%di:x64\n\
             p:{GROUP}/del vhost_iotlb_del_range iotlb=%di:x64 start=%si:x64 last=%dx:x64\n"
        ),
    )?;
    write("trace", "")?;
    write(&format!("events/{GROUP}/enable"), "1")?;
    write("tracing_on", "1")?;

    let mut d = VhostVdpa::open(Path::new(dev)).map_err(|e| e.to_string())?;
    let p = d
        .probe_without(1 << backend::IOTLB_PERSIST)
        .map_err(|e| e.to_string())?;
    let caps = p.caps(true).map_err(|e| e.to_string())?;
    let dma_map = caps.map_style == MapStyle::DmaMap;
    if caps.persist || !caps.batching {
        return Err(format!(
            "need batching without persist, have batching={} persist={}",
            caps.batching, caps.persist
        ));
    }
    let mut m = Mem::new(8 << 20, Backing::Memfd, "sim-reset-probe").map_err(|e| e.to_string())?;
    m.tag_pages(0, 4096, 0x5249_4752_4553_4554);
    let mut s = IdentityPlanner::new(caps, None).map_err(|e| e.to_string())?;
    let mut a = Applier::new(&mut d, caps, p.format());
    let boot = s
        .apply(&Event::Boot(vec![RegionSpec {
            gpa: Gpa(0),
            size: m.len(),
            hva: Hva(m.addr()),
            readonly: false,
        }]))
        .map_err(|e| e.to_string())?;
    // SAFETY: `m` outlives the device's use of it: it is unplugged (and the
    // device closed) before `m` is dropped.
    unsafe { a.apply(&boot, &Limits::current(), None) }.map_err(|e| e.to_string())?;
    mark("rig: mapped")?;
    a.device_reset().map_err(|e| e.to_string())?;
    mark("rig: reset")?;
    let restore = s.apply(&Event::Reset).map_err(|e| e.to_string())?;
    // SAFETY: as above.
    unsafe { a.apply(&restore, &Limits::current(), None) }.map_err(|e| e.to_string())?;
    mark("rig: restored")?;
    write(&format!("events/{GROUP}/enable"), "0")?;
    let trace =
        std::fs::read_to_string(format!("{TRACING}/trace")).map_err(|e| format!("trace: {e}"))?;
    let unplug = s.apply(&Event::Unplug(Gpa(0))).map_err(|e| e.to_string())?;
    // SAFETY: as above.
    unsafe { a.apply(&unplug, &Limits::current(), None) }.map_err(|e| e.to_string())?;
    drop(a);
    drop(d);
    let _ = write("kprobe_events", "");

    let ph = phases(&trace);
    let get = |name: &str| {
        ph.iter()
            .find(|p| p.0 == name)
            .map(|p| p.1.clone())
            .ok_or_else(|| format!("no `{name}` marker in the trace"))
    };
    let (boot_hits, reset_hits, restore_hits) = (ph[0].1.clone(), get("mapped")?, get("reset")?);
    // The simulator's tables: those that get reset.
    let sims: BTreeSet<u64> = ph
        .iter()
        .flat_map(|p| p.1.iter())
        .filter(|h| h.1 == Change::Reset)
        .map(|h| h.0)
        .collect();
    let mut tables = Tables::new();
    replay(&mut tables, &boot_hits);
    // Opening the device resets it, so every simulator table starts in
    // pass-through; the one the boot plan's set_map filled is ours.
    let mapped: Vec<_> = tables
        .iter()
        .filter(|(t, e)| sims.contains(t) && !e.is_empty() && !e.contains(&(0, u64::MAX)))
        .map(|(&t, e)| (t, e.clone()))
        .collect();
    let [(sim, runs)] = mapped.as_slice() else {
        return Err(format!(
            "after the boot plan, expected one simulator table holding the map, saw {mapped:x?}"
        ));
    };
    let (first, last) = (
        runs.first().expect("not empty").0,
        runs.last().expect("not empty").1,
    );
    if first != 0 || last != m.len() - 1 {
        return Err(format!(
            "the simulator's table covers [{first:#x}, {last:#x}], the map [0, {:#x}]",
            m.len() - 1
        ));
    }
    replay(&mut tables, &reset_hits);
    let after_reset = tables.get(sim).cloned().unwrap_or_default();
    if !after_reset.contains(&(0, u64::MAX)) || after_reset.iter().any(|r| runs.contains(r)) {
        return Err(format!(
            "after the reset, expected vdpa_sim's pass-through [0, 2^64-1] and none of our {} runs, saw {after_reset:x?}",
            runs.len()
        ));
    }
    let pinned_again: Vec<_> = restore_hits
        .iter()
        .filter(|h| matches!(h.1, Change::Add(..)) && !sims.contains(&h.0))
        .collect();
    replay(&mut tables, &restore_hits);
    let restored = tables.get(sim).cloned().unwrap_or_default();
    // A set_map device is re-pushed from the table vhost-vdpa kept: nothing
    // is pinned again. A dma_map device can only be restored by unmapping and
    // mapping every entry again, which pins each run again.
    let want_pinned = if dma_map { runs.len() } else { 0 };
    if restored != *runs || pinned_again.len() != want_pinned {
        return Err(format!(
            "after the restore ({}), expected the simulator's table to hold the {} runs again and {want_pinned} runs pinned again; it holds {restored:x?}, and {} entries were added to vhost-vdpa's table",
            caps.map_style.as_str(),
            runs.len(),
            pinned_again.len()
        ));
    }
    println!(
        "SIM-RESET-OK {} persist=false: after the boot plan vdpa_sim's table held the map ({} physically contiguous runs); the reset replaced it with pass-through [0, 2^64-1]; the planner's restore ({} messages) put the same {} runs back and pinned {} runs again",
        caps.map_style.as_str(),
        runs.len(),
        restore.ops().len(),
        restored.len(),
        pinned_again.len()
    );
    Ok(())
}

fn main() -> ExitCode {
    let Some(dev) = std::env::args().nth(1) else {
        eprintln!("usage: sim-reset-probe /dev/vhost-vdpa-N");
        return ExitCode::from(2);
    };
    match run(&dev) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("SIM-RESET-FAIL {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_split_at_markers_and_read_the_probe_fields() {
        let t = "# tracer: nop\n\
            p-1 [000] ..... 1.0: add: (vhost_iotlb_add_range_ctx+0x0/0x1c0 [vhost_iotlb]) iotlb=0xffff1 start=0x0 last=0xfff\n\
            p-1 [000] ..... 1.1: reset: (vhost_iotlb_reset+0x0/0x30 [vhost_iotlb]) iotlb=0xffff2\n\
            p-1 [000] ..... 1.2: add: (vhost_iotlb_add_range_ctx+0x0/0x1c0 [vhost_iotlb]) iotlb=0xffff2 start=0x0 last=0xfff\n\
            p-1 [000] ..... 1.3: tracing_mark_write: rig: mapped\n\
            p-1 [000] ..... 1.4: reset: (vhost_iotlb_reset+0x0/0x30 [vhost_iotlb]) iotlb=0xffff2\n";
        let ph = phases(t);
        assert_eq!(ph.len(), 2);
        assert_eq!(
            ph[0].1,
            vec![
                (0xffff1, Change::Add(0, 0xfff)),
                (0xffff2, Change::Reset),
                (0xffff2, Change::Add(0, 0xfff))
            ]
        );
        assert_eq!(
            ph[1],
            ("mapped".to_string(), vec![(0xffff2, Change::Reset)])
        );
        let mut tables = Tables::new();
        replay(&mut tables, &ph[0].1);
        replay(&mut tables, &ph[1].1);
        assert_eq!(tables[&0xffff1].len(), 1);
        assert!(tables[&0xffff2].is_empty(), "a reset empties the table");
        let mut t = Tables::from([(
            1,
            BTreeSet::from([(0, 0xfff), (0x1000, 0x1fff), (0x3000, 0x3fff)]),
        )]);
        replay(&mut t, &[(1, Change::Del(0x800, 0x1000))]);
        assert_eq!(
            t[&1],
            BTreeSet::from([(0x3000, 0x3fff)]),
            "every overlapping entry goes"
        );
    }
}
