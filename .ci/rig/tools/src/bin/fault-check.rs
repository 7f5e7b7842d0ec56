//! `fault-check DEVICE`: the end-to-end rig's fault check on a pinning
//! device. Maps 64 MiB of guest memory, then lowers `RLIMIT_MEMLOCK` so that
//! a hotplug of two regions (16 MiB, then 64 MiB) in one plan passes the
//! adapter but is refused by the **kernel** at its second UPDATE (the
//! adapter's own memlock pre-check is bypassed on purpose by passing no
//! limit). The adapter must report the refusal and roll the first UPDATE
//! back; with the limit restored, the same plan must then go through (it
//! could not if the rollback had left an entry: the kernel refuses overlaps),
//! and unplugging both must leave only the first region. Prints `FAULT-OK`.

use std::path::Path;
use std::process::ExitCode;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use vdpa_adapter::apply::{Applier, ApplyError};
use vdpa_adapter::device::VhostVdpa;
use vdpa_adapter::host::procfs::Limits;
use vdpa_adapter::memory::{Backing, Mem};
use vdpa_adapter::sink::tables;
use vdpa_iova_planner::{Event, Gpa, Hva, IdentityPlanner, RegionSpec, Strategy};

const MIB: u64 = 1 << 20;

fn fail(what: String) -> ExitCode {
    println!("FAULT-FAIL {what}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => {
            println!("FAULT-OK kernel refusal mid-plan rolled back; retry with the limit restored went through");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn run() -> Result<(), String> {
    let dev = std::env::args().nth(1).ok_or("usage: fault-check DEVICE")?;
    let mut d = VhostVdpa::open(Path::new(&dev)).map_err(|e| e.to_string())?;
    let p = d.probe().map_err(|e| e.to_string())?;
    let caps = p.caps(true).map_err(|e| e.to_string())?;
    let mem = |size| Mem::new(size, Backing::Memfd, "fault-check").map_err(|e| e.to_string());
    let (m0, m1, m2) = (mem(64 * MIB)?, mem(16 * MIB)?, mem(64 * MIB)?);
    let region = |gpa: u64, m: &Mem| RegionSpec {
        gpa: Gpa(gpa),
        size: m.len(),
        hva: Hva(m.addr()),
        readonly: false,
    };
    let mut s = IdentityPlanner::new(caps, Some(1 << 40)).map_err(|e| e.to_string())?;
    let mut a = Applier::new(&mut d, caps, p.format());
    let none = Limits {
        memlock: None,
        pinned_now: 0,
        max_entries: None,
    };
    let boot = s
        .apply(&Event::Boot(vec![region(0, &m0)]))
        .map_err(|e| e.to_string())?;
    // SAFETY: m0, m1 and m2 live until the end of this function; the
    // device is closed (and everything unmapped) before they are dropped.
    unsafe { a.apply(&boot, &none, None) }.map_err(|e| format!("boot: {e}"))?;
    let committed = tables(a.committed(), caps.address_spaces);
    // Room for 64 + 16 MiB, not for the 64 MiB that follows.
    let saved = getrlimit(Resource::Memlock);
    let pinned = Limits::current().pinned_now;
    let tight = pinned + 32 * MIB;
    setrlimit(
        Resource::Memlock,
        Rlimit {
            current: Some(tight),
            maximum: saved.maximum,
        },
    )
    .map_err(|e| format!("setrlimit: {e}"))?;
    println!("RLIMIT_MEMLOCK lowered to {tight} bytes ({pinned} pinned)");
    // One plan: two regions hot-plugged together.
    let mut trial = s.clone();
    let hot = trial
        .apply(&Event::Boot(vec![
            region(256 * MIB, &m1),
            region(512 * MIB, &m2),
        ]))
        .map_err(|e| e.to_string())?;
    // SAFETY: as above.
    match unsafe { a.apply(&hot, &none, None) } {
        Err(e @ ApplyError::Refused { undone: 1, .. }) => println!("refused and rolled back: {e}"),
        Err(e) => return Err(format!("unexpected: {e}")),
        Ok(_) => return Err("the kernel took a plan beyond RLIMIT_MEMLOCK".into()),
    }
    if tables(a.committed(), caps.address_spaces) != committed {
        return Err("the mirror changed after a rollback".into());
    }
    // The adapter's own pre-check refuses it up front now.
    // SAFETY: as above.
    match unsafe { a.apply(&hot, &Limits::current(), None) } {
        Err(ApplyError::Memlock { .. }) => println!("the pre-check refuses it up front"),
        other => return Err(format!("pre-check: {other:?}")),
    }
    setrlimit(Resource::Memlock, saved).map_err(|e| format!("setrlimit: {e}"))?;
    // SAFETY: as above.
    unsafe { a.apply(&hot, &Limits::current(), None) }
        .map_err(|e| format!("retry with the limit restored: {e}"))?;
    s = trial;
    for g in [256 * MIB, 512 * MIB, 0] {
        let plan = s.apply(&Event::Unplug(Gpa(g))).map_err(|e| e.to_string())?;
        // SAFETY: as above.
        unsafe { a.apply(&plan, &Limits::current(), None) }.map_err(|e| format!("unplug: {e}"))?;
    }
    if !a.committed().is_empty() {
        return Err("entries left after unplugging everything".into());
    }
    drop(a);
    drop(d);
    Ok(())
}
