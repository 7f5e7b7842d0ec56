//! `vduse-readback SCENARIO`: the end-to-end rig's exact check. Creates a
//! VDUSE block device (served by a thread of this process), binds it to
//! vhost-vdpa with iproute2's `vdpa`, applies every step of the scenario
//! through the adapter with memfd memory, and after every step checks the
//! planner's layout against the table sent (`layout::check`), then walks the
//! device's IOTLB with `VDUSE_IOTLB_GET_FD`: every entry's range and perm
//! must equal that table, and the first 16 bytes of every mapped page, read
//! through the device's own mapping, must equal the VMM's memory at the
//! planned host address (the GPA tag the adapter wrote). Last, private
//! anonymous memory must be refused before anything is sent.
//!
//! `vduse-readback --exec PROGRAM [ARGS...]` checks a VMM in another process
//! the same way (see `run_external`): the C API's example VMM, which writes
//! every message to the device itself.
//!
//! Prints `READBACK-OK` on success; any difference is printed and exits 1.

use std::process::{Command, ExitCode};

use vdpa_adapter::apply::Applier;
use vdpa_adapter::device::VhostVdpa;
use vdpa_adapter::host::procfs::Limits;
use vdpa_adapter::memory::Backing;
use vdpa_adapter::scenario::Host;
use vdpa_adapter::session::HostMemory;
use vdpa_adapter::{Scenario, StrategyKind};
use vdpa_iova_planner::{DeviceCaps, Entry, Event, Perm, Strategy};
use vdpa_rig_tools::vduse::{ReadBack, Vduse};

const NAME: &str = "vdpa-rig";
const PAGE: u64 = 4096;

fn fail(what: String) -> ExitCode {
    println!("READBACK-FAIL {what}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = match args.first().map(String::as_str) {
        Some("--exec") if args.len() > 1 => Check::Exec(&args[1..]),
        Some(path) if args.len() == 1 && !path.starts_with('-') => {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => return fail(format!("{path}: {e}")),
            };
            match Scenario::parse(&text, path) {
                Ok(s) => Check::Scenario(path, Box::new(s)),
                Err(e) => return fail(e.to_string()),
            }
        }
        _ => {
            return fail(
                "usage: vduse-readback SCENARIO | vduse-readback --exec PROGRAM [ARGS...]".into(),
            )
        }
    };
    let vduse = match Vduse::create(NAME) {
        Ok(v) => v,
        Err(e) => return fail(format!("creating the VDUSE device: {e}")),
    };
    let dev_path = vduse.node.clone();
    let r = match &what {
        // The source's steps, then (on a fresh open of the device, which
        // starts empty) the destination's, when the scenario migrates.
        Check::Scenario(path, scn) => {
            run(scn, path, &dev_path, &vduse, Host::SOURCE).and_then(|n| {
                let d = if scn.hosts.contains(&Host::DESTINATION) {
                    let d = run(scn, path, &dev_path, &vduse, Host::DESTINATION)?;
                    println!(
                        "READBACK destination: {d} steps, every guest page reached at identity"
                    );
                    d
                } else {
                    0
                };
                reset_probe(&dev_path, &vduse)?;
                Ok(n + d)
            })
        }
        Check::Exec(cmd) => run_external(cmd, &dev_path, &vduse),
    };
    drop(vduse);
    let name = match &what {
        Check::Scenario(path, _) => path.to_string(),
        Check::Exec(cmd) => cmd.join(" "),
    };
    match r {
        Ok(n) => {
            println!("READBACK-OK {name}: {n} steps, every entry and page tag as planned");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// What to play on the device.
enum Check<'a> {
    /// A scenario file, through the adapter's `Applier`.
    Scenario(&'a str, Box<Scenario>),
    /// Another program that writes to the device itself (`--exec`).
    Exec(&'a [String]),
}

/// The scenario's device as far as this device can play it: its IOVA range
/// (a smaller range than the device's is kept, so small-range plans are
/// exercised), batching and address spaces when the device has them; what
/// the device does on its own (map style, persist, no pinning) is the device's.
fn on_this_device(dev: DeviceCaps, scn: &DeviceCaps) -> Result<DeviceCaps, String> {
    let (f, l) = (scn.range.first(), scn.range.last());
    if !dev.range.contains_bounds(f, l) {
        return Err(format!(
            "the scenario's IOVA range [{f:#x}, {l:#x}] is not inside the device's {}",
            dev.range
        ));
    }
    if scn.batching && !dev.batching {
        return Err("the scenario batches; the device does not".into());
    }
    if scn.address_spaces > dev.address_spaces || (scn.desc_asid && !dev.desc_asid) {
        return Err(format!(
            "the scenario needs {} address spaces{}; the device has {}",
            scn.address_spaces,
            if scn.desc_asid { " and desc_asid" } else { "" },
            dev.address_spaces
        ));
    }
    Ok(DeviceCaps {
        range: scn.range,
        batching: scn.batching,
        address_spaces: scn.address_spaces,
        desc_asid: scn.desc_asid,
        ..dev
    })
}

/// The device's table (`have`, read back) against the planned one (`want`,
/// sorted by IOVA): the same entries with the same perms, and every page of
/// every entry reads, through the device's mapping, the 16 bytes `tag_at`
/// gives for the page's planned host address.
fn compare(
    what: &str,
    want: &[Entry],
    have: &[ReadBack],
    tag_at: impl Fn(u64) -> [u8; 16],
) -> Result<(), String> {
    if have.len() != want.len() {
        return Err(format!(
            "{what}: the device has {} entries, the plan {}",
            have.len(),
            want.len()
        ));
    }
    for ((e, tags), w) in have.iter().zip(want) {
        let (f, l) = w.iova.bounds();
        let perm = match w.perm {
            Perm::Ro => 1,
            Perm::Wo => 2,
            Perm::Rw => 3,
        };
        if (e.start, e.last, e.perm) != (f, l, perm) {
            return Err(format!(
                "{what}: expected entry [{f:#x}, {l:#x}] perm {perm}, device has [{:#x}, {:#x}] perm {}",
                e.start, e.last, e.perm
            ));
        }
        for (k, t) in tags.iter().enumerate() {
            let hva = w.hva.0 + k as u64 * PAGE;
            let mine = tag_at(hva);
            if *t != mine {
                return Err(format!(
                    "{what}: page at iova {:#x}: device reads {:02x?}, the VMM has {:02x?} at hva {hva:#x}",
                    f + k as u64 * PAGE,
                    t,
                    mine
                ));
            }
        }
    }
    Ok(())
}

/// `--exec PROGRAM ARGS...`: a VMM in another process (the C API's
/// `capi/c/vmm.c`) drives the device itself, run with `--device NODE
/// --readback`. It tags the first 16 bytes of each host page with the
/// page's address and its complement, prints its planner's table after
/// every step (`READBACK step`, `ENTRY asid iova size perm uaddr` lines,
/// `END`) and waits for "go"; the table and every page's tag are checked
/// against the device's IOTLB in between. Returns the steps checked.
fn run_external(cmd: &[String], dev_path: &str, vduse: &Vduse) -> Result<usize, String> {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;

    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .args(["--device", dev_path, "--readback"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", cmd[0]))?;
    let mut to_vmm = child.stdin.take().expect("piped stdin");
    let mut from_vmm = BufReader::new(child.stdout.take().expect("piped stdout"));
    let tag = |hva: u64| {
        let mut t = [0u8; 16];
        t[..8].copy_from_slice(&hva.to_le_bytes());
        t[8..].copy_from_slice(&(!hva).to_le_bytes());
        t
    };
    let mut next = || -> Result<Option<String>, String> {
        let mut line = String::new();
        match from_vmm.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => Ok(Some(line.trim_end().to_owned())),
            Err(e) => Err(format!("reading the program's output: {e}")),
        }
    };
    let mut steps = 0;
    let checked = (|| {
        while let Some(line) = next()? {
            println!("  | {line}");
            let Some(step) = line.strip_prefix("READBACK step ") else {
                continue;
            };
            let mut want = Vec::new();
            loop {
                let l = next()?.ok_or_else(|| format!("{step}: the table ends without END"))?;
                if l == "END" {
                    break;
                }
                want.push(parse_entry(&l).map_err(|e| format!("{step}: {l:?}: {e}"))?);
            }
            want.sort();
            compare(
                &format!("step {step}"),
                &want,
                &vduse.read_back(u64::MAX)?,
                tag,
            )?;
            println!(
                "step {step}: {} entries read back, every page as planned",
                want.len()
            );
            writeln!(to_vmm, "go")
                .map_err(|e| format!("{step}: telling the program to go on: {e}"))?;
            steps += 1;
        }
        Ok::<_, String>(())
    })();
    if checked.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    checked?;
    if !status.success() {
        return Err(format!("{} failed ({status})", cmd[0]));
    }
    if steps == 0 {
        return Err(format!("{} asked for no read-back", cmd[0]));
    }
    Ok(steps)
}

/// `ENTRY asid iova size perm uaddr`, hex: one entry of address space 0
/// (VDUSE has no other).
fn parse_entry(line: &str) -> Result<Entry, String> {
    let f: Vec<u64> = line
        .strip_prefix("ENTRY ")
        .ok_or("not an ENTRY line")?
        .split(' ')
        .map(|x| u64::from_str_radix(x, 16).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let [asid, iova, size, perm, uaddr] = f[..] else {
        return Err("want 5 fields".into());
    };
    if asid != 0 {
        return Err(format!("address space {asid}: VDUSE has one"));
    }
    let perm = match perm {
        1 => Perm::Ro,
        2 => Perm::Wo,
        3 => Perm::Rw,
        p => return Err(format!("perm {p}")),
    };
    let iova = vdpa_iova_planner::Span::new(
        vdpa_iova_planner::Iova(iova),
        size,
        vdpa_iova_planner::PageSize::SIZE_4K,
    )
    .map_err(|e| e.to_string())?;
    Ok(Entry {
        iova,
        hva: vdpa_iova_planner::Hva(uaddr),
        perm,
    })
}

fn run(
    scn: &Scenario,
    path: &str,
    dev_path: &str,
    vduse: &Vduse,
    host: Host,
) -> Result<usize, String> {
    let mut d = VhostVdpa::open(std::path::Path::new(dev_path)).map_err(|e| e.to_string())?;
    let p = d.probe().map_err(|e| e.to_string())?;
    // What `apply` would find on its own: a VDUSE parent, which never pins,
    // so the shared-memory check applies.
    if p.parent.as_deref() != Some("vduse") || p.pins_memory() {
        return Err(format!(
            "probe found parent {:?} (pins memory: {}), expected vduse (no pinning)",
            p.parent,
            p.pins_memory()
        ));
    }
    let caps = on_this_device(p.caps(false).map_err(|e| e.to_string())?, &scn.caps)?;
    let on_device = Scenario {
        caps,
        ..scn.clone()
    };
    let mut s = StrategyKind::Identity
        .build(&on_device, path)
        .map_err(|e| e.to_string())?;
    let mut mem = HostMemory::new(Some(Backing::Memfd));
    let mut a = Applier::new(&mut d, caps, p.format());
    let mut steps = 0;
    let mut guest = vdpa_iova_planner::GuestView::new(scn.viommu_last.is_some());
    for (i, ev) in scn.steps_on(host).enumerate() {
        let ev = mem.rewrite(&ev, PAGE).map_err(|e| e.to_string())?;
        let plan = s.apply(&ev).map_err(|e| format!("step {i}: {e}"))?;
        if ev == Event::Reset {
            a.device_reset()
                .map_err(|e| format!("step {i}: reset: {e}"))?;
        }
        let maps = mem.mappings();
        // SAFETY: every HVA is memory `mem` owns until the end of `run`,
        // after the device is closed.
        unsafe { a.apply(&plan, &Limits::current(), maps.as_deref()) }
            .map_err(|e| format!("step {i} ({}): {e}", ev.name()))?;
        // The planner's placements and vrings against the table sent...
        guest.track(&ev);
        vdpa_iova_planner::layout::check(&a.committed().device_tables(), s.as_ref(), &guest)
            .map_err(|e| format!("step {i} ({}): layout: {e}", ev.name()))?;
        // ...and the table sent against what the device holds.
        let mut want: Vec<Entry> = a.committed().device_entries(0).copied().collect();
        want.sort();
        let have = vduse.read_back(u64::MAX)?;
        compare(&format!("step {i} ({})", ev.name()), &want, &have, |hva| {
            let mut mine = [0u8; 16];
            // SAFETY: every planned `hva` lies in a mapping `mem` owns (the
            // plan mapped it, and the model accepted it), at least a page long.
            unsafe { std::ptr::copy_nonoverlapping(hva as *const u8, mine.as_mut_ptr(), 16) };
            mine
        })?;
        println!(
            "step {i} {:<12} {} entries read back, every page as planned",
            ev.name(),
            have.len()
        );
        steps += 1;
    }
    if host == Host::DESTINATION {
        return Ok(steps);
    }
    // Tear everything down, then show that private anonymous memory, which
    // the kernel would silently skip on this use_va device, is refused
    // before anything is sent.
    let mut s = StrategyKind::Identity
        .build(&on_device, path)
        .map_err(|e| e.to_string())?;
    drop(a);
    let mut anon = HostMemory::new(Some(Backing::Anon));
    let mut fresh = Applier::new(&mut d, caps, p.format());
    for ev in scn.steps_on(Host::SOURCE) {
        let ev = anon.rewrite(&ev, PAGE).map_err(|e| e.to_string())?;
        let plan = s.apply(&ev).map_err(|e| e.to_string())?;
        let maps_memory = plan
            .ops()
            .iter()
            .any(|o| matches!(o.kind, vdpa_iova_planner::OpKind::Update { .. }));
        // SAFETY: as above; a plan that maps memory is refused by the
        // pre-check before anything is sent, and one that does not maps nothing.
        match unsafe { fresh.apply(&plan, &Limits::current(), anon.mappings().as_deref()) } {
            Err(e @ vdpa_adapter::apply::ApplyError::NotShared { .. }) if maps_memory => {
                println!("anonymous memory refused: {e}");
                break;
            }
            Ok(_) if !maps_memory => continue,
            Err(e) => return Err(format!("anonymous memory: unexpected {e}")),
            Ok(_) => return Err("anonymous memory was sent to a use_va device".into()),
        }
    }
    Ok(steps)
}

/// What a reset without `IOTLB_PERSIST` (VDUSE offers none) does to the
/// device's table, and what the planner's restore (an empty batch) does.
fn reset_probe(dev_path: &str, vduse: &Vduse) -> Result<(), String> {
    let mut d = VhostVdpa::open(std::path::Path::new(dev_path)).map_err(|e| e.to_string())?;
    let p = d.probe().map_err(|e| e.to_string())?;
    let caps = p.caps(false).map_err(|e| e.to_string())?;
    let m = vdpa_adapter::memory::Mem::new(16 << 20, Backing::Memfd, "reset-probe")
        .map_err(|e| e.to_string())?;
    let mut s = vdpa_iova_planner::IdentityPlanner::new(caps, None).map_err(|e| e.to_string())?;
    let mut a = Applier::new(&mut d, caps, p.format());
    let boot = s
        .apply(&Event::Boot(vec![vdpa_iova_planner::RegionSpec {
            gpa: vdpa_iova_planner::Gpa(0),
            size: m.len(),
            hva: vdpa_iova_planner::Hva(m.addr()),
            readonly: false,
        }]))
        .map_err(|e| e.to_string())?;
    // SAFETY: `m` outlives the device's use of it: everything is unmapped
    // (and the device closed) before it is dropped.
    unsafe { a.apply(&boot, &Limits::current(), None) }.map_err(|e| e.to_string())?;
    let before = vduse.read_back(u64::MAX)?.len();
    a.device_reset().map_err(|e| e.to_string())?;
    let after = vduse.read_back(u64::MAX)?.len();
    let plan = s.apply(&Event::Reset).map_err(|e| e.to_string())?;
    // SAFETY: as above.
    unsafe { a.apply(&plan, &Limits::current(), None) }.map_err(|e| e.to_string())?;
    let restored = vduse.read_back(u64::MAX)?.len();
    println!(
        "RESET-PROBE persist={} entries before reset {before}, right after {after} ({}), after the planner's restore ({} messages) {restored}",
        caps.persist,
        if after == before { "kept" } else { "forgotten" },
        plan.ops().len()
    );
    let unplug = s
        .apply(&Event::Unplug(vdpa_iova_planner::Gpa(0)))
        .map_err(|e| e.to_string())?;
    // SAFETY: as above.
    unsafe { a.apply(&unplug, &Limits::current(), None) }.map_err(|e| e.to_string())?;
    if restored != before {
        return Err(format!(
            "after the restore the device has {restored} entries, not {before}"
        ));
    }
    drop(a);
    drop(d);
    drop(m);
    Ok(())
}
