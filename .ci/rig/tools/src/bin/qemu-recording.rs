//! `qemu-recording` reads QEMU's own trace recordings (`.ci/rig/qemu/`):
//!
//! * `check DIR`: converts every recording of DIR (a folder per run) into
//!   its scenario and QEMU's plan, feeds the scenario to the baseline
//!   (`QemuPlanner`) and compares, step by step and message by message.
//!   Exits 1 on any difference the baseline does not document.
//! * `show DIR`: every recording's scenario (device, regions, host buffers,
//!   shadow virtqueues, events) and every message QEMU sent, per step.
//! * `measure DIR`: the windows the guest waits in (the SVQ switch and the
//!   failback with the device stopped, the source's stop-and-copy, the
//!   destination's start), with the messages and bytes QEMU sent inside,
//!   and stock QEMU's own `downtime` of each completed migration.

use std::path::Path;
use std::process::ExitCode;

use vdpa_iova_planner::Address;
use vdpa_rig_tools::qemu_recording::{compare, load, measure, recordings};

fn usage() -> ExitCode {
    eprintln!("usage: qemu-recording check|show|measure DIR");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cmd, dir] = args.as_slice() else {
        return usage();
    };
    let dir = Path::new(dir);
    let recs = match recordings(dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("qemu-recording: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut bad = false;
    for rec in &recs {
        let (lines, sc) = match load(rec) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("qemu-recording: {e}");
                bad = true;
                continue;
            }
        };
        match cmd.as_str() {
            "check" => match compare::compare(&sc) {
                Ok(steps) => {
                    println!("== {}", rec.name);
                    for s in &steps {
                        println!("{s}");
                        bad |= s.mismatch.is_some();
                    }
                }
                Err(e) => {
                    eprintln!("qemu-recording: {e}");
                    bad = true;
                }
            },
            "show" => {
                println!("== {} ({:?})", rec.name, sc.role);
                println!(
                    "device: IOVA {:#x}..={:#x}, batching {}, address spaces {}, control queue isolated {}",
                    sc.caps.range.first(),
                    sc.caps.range.last(),
                    sc.caps.batching,
                    sc.caps.address_spaces,
                    sc.caps.cvq_isolated
                );
                for (i, r) in sc.regions.iter().enumerate() {
                    println!(
                        "region {i}: gpa {:#x} size {:#x} hva {:#x}{}",
                        r.gpa.raw(),
                        r.size,
                        r.hva.raw(),
                        if r.readonly { " read-only" } else { "" }
                    );
                }
                for (i, b) in sc.buffers.iter().enumerate() {
                    println!(
                        "buffer {i}: hva {:#x} size {:#x} {:?}",
                        b.hva.raw(),
                        b.size,
                        b.perm
                    );
                }
                println!(
                    "shadow virtqueues: {} data queues of {}",
                    sc.svq.queues, sc.svq.queue_size
                );
                for (i, st) in sc.steps.iter().enumerate() {
                    println!(
                        "step {i} {} (trace lines {}..={}):",
                        st.event.name(),
                        st.lines.0,
                        st.lines.1
                    );
                    for m in &st.msgs {
                        println!("  {m}");
                    }
                }
            }
            "measure" => {
                println!("== {}", rec.name);
                for w in measure::windows(&lines, &sc) {
                    println!("{w}");
                }
                if let Some(run) = rec.files.first().and_then(|f| f.parent()) {
                    let mon = run.join("src.monitor");
                    if rec.role == vdpa_rig_tools::qemu_recording::convert::Role::Source {
                        if let Some((total, setup, down)) = std::fs::read_to_string(&mon)
                            .ok()
                            .and_then(|m| measure::qemu_times(&m))
                        {
                            println!(
                                "QEMU's own figures: total {total} ms, setup {} ms, downtime {down} ms",
                                setup.map_or("-".into(), |s| s.to_string())
                            );
                        }
                    }
                }
            }
            _ => return usage(),
        }
    }
    if bad {
        eprintln!("qemu-recording: {cmd} failed");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
