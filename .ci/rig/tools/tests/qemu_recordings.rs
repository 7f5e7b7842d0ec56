//! QEMU's own recordings (`.ci/rig/qemu/recordings/`, stock QEMU
//! 10.2.2 on vdpa_sim_net) against the baseline, `QemuPlanner`: every step
//! of every recording, message by message (type, asid, iova, size, perm,
//! batch structure and order, host addresses relative to their region).
//! Each difference left is one the baseline documents (`src/strategy/qemu/mod.rs`,
//! "Held to real QEMU"), and [`EXPECTED_KNOWN`] pins where each appears: a
//! QEMU or baseline change that removes one fails here too.

use std::path::PathBuf;

use vdpa_rig_tools::qemu_recording::compare::{compare, KNOWN};
use vdpa_rig_tools::qemu_recording::convert::{convert, MsgKind, Role};
use vdpa_rig_tools::qemu_recording::parse::parse_trace;
use vdpa_rig_tools::qemu_recording::{load, read_lines, recordings, Recording};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../qemu/recordings")
}

/// `(recording, step index, event, known differences it needs)` for every
/// step that needs one; every other step matches exactly.
const EXPECTED_KNOWN: &[(&str, usize, &str, &[&str])] = &[
    ("1G/source", 0, "incoming", &["board-build"]),
    ("1G/source", 10, "svq_switch", &["cvq-rings-first"]),
    ("1G/source", 11, "failback", &["cvq-rings-first"]),
    ("1G/source", 12, "svq_switch", &["cvq-rings-first"]),
    ("1G/source", 13, "complete", &["cvq-rings-first"]),
    ("1G/destination", 0, "incoming", &["board-build"]),
    ("256M/source", 0, "incoming", &["board-build"]),
    ("256M/source", 10, "svq_switch", &["cvq-rings-first"]),
    ("256M/source", 11, "failback", &["cvq-rings-first"]),
    ("256M/source", 12, "svq_switch", &["cvq-rings-first"]),
    ("256M/source", 13, "complete", &["cvq-rings-first"]),
    ("256M/destination", 0, "incoming", &["board-build"]),
    ("nocvq/source", 0, "incoming", &["board-build"]),
];

fn all() -> Vec<Recording> {
    recordings(&dir()).expect("the committed recordings")
}

#[test]
fn every_recording_matches_the_baseline_but_for_documented_differences() {
    let mut seen = Vec::new();
    let mut report = String::new();
    let mut bad = false;
    for rec in all() {
        let (_, sc) = load(&rec).unwrap_or_else(|e| panic!("{e}"));
        for s in compare(&sc).unwrap_or_else(|e| panic!("{e}")) {
            report.push_str(&format!("{} {s}\n", rec.name));
            bad |= s.mismatch.is_some();
            if !s.known.is_empty() {
                seen.push((rec.name.clone(), s.index, s.event, s.known.clone()));
            }
        }
    }
    assert!(!bad, "QEMU and the baseline differ:\n{report}");
    let want: Vec<(String, usize, &str, Vec<&str>)> = EXPECTED_KNOWN
        .iter()
        .map(|(r, i, e, k)| (r.to_string(), *i, *e, k.to_vec()))
        .collect();
    assert_eq!(seen, want, "known differences moved:\n{report}");
}

#[test]
fn every_run_was_recorded() {
    let names: Vec<String> = all().into_iter().map(|r| r.name).collect();
    for want in [
        "1G/destination",
        "1G/source",
        "256M/destination",
        "256M/source",
        "nocvq/source",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
}

#[test]
fn the_recordings_hold_the_steps_of_a_whole_migration() {
    for rec in all() {
        let (_, sc) = load(&rec).unwrap();
        // SeaBIOS changes the memory map (PAM) between the machine-creation
        // reset and the first start: its sections come as unplugs and
        // hotplugs there, and nowhere else.
        let first_start = sc
            .steps
            .iter()
            .position(|s| s.event.name() == "host_buffers")
            .unwrap();
        let changes = sc.steps[..first_start]
            .iter()
            .filter(|s| matches!(s.event.name(), "unplug" | "hotplug"))
            .count();
        assert!(changes > 0, "{}: the firmware changed nothing", rec.name);
        let events: Vec<&str> = sc
            .steps
            .iter()
            .map(|s| s.event.name())
            .filter(|e| !matches!(*e, "unplug" | "hotplug"))
            .collect();
        let want: &[&str] = match (rec.role, rec.name.starts_with("nocvq")) {
            (Role::Destination, _) => &["incoming", "host_buffers", "start"],
            (Role::Source, true) => &[
                "incoming",
                "host_buffers",
                "start",
                "svq_switch",
                "failback",
            ],
            (Role::Source, false) => &[
                "incoming",
                "host_buffers",
                "start",
                "svq_switch",
                "failback",
                "svq_switch",
                "complete",
            ],
        };
        assert_eq!(events, want, "{}", rec.name);
        // Every step sent messages but the declarations (host buffers, the
        // memory map's changes while the listener was away).
        for s in &sc.steps {
            assert_eq!(
                s.msgs.is_empty(),
                matches!(s.event.name(), "host_buffers" | "unplug" | "hotplug"),
                "{}: {}",
                rec.name,
                s.event.name()
            );
        }
        // An isolated control queue where the guest has one.
        assert_eq!(
            sc.caps.cvq_isolated,
            !rec.name.starts_with("nocvq"),
            "{}",
            rec.name
        );
    }
}

/// `key`'s hexadecimal value on a line of `event`, plus `by`.
fn shift_field(line: &str, event: &str, key: &str, by: u64) -> Option<String> {
    if !line.contains(event) {
        return None;
    }
    let at = line.find(key)? + key.len();
    let rest = &line[at..];
    let end = rest.find(' ').unwrap_or(rest.len());
    let v = u64::from_str_radix(rest[..end].trim_start_matches("0x"), 16).ok()?;
    Some(format!("{}0x{:x}{}", &line[..at], v + by, &rest[end..]))
}

fn text_of(rec: &Recording) -> Vec<String> {
    rec.files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Steps that differ once line `at` of `rec` is rewritten by `edit`.
fn mismatches_at(rec: &Recording, at: usize, edit: impl Fn(&str) -> String) -> usize {
    let mut text = text_of(rec);
    let new = edit(&text[at]);
    assert_ne!(new, text[at], "{}: line {} unchanged", rec.name, at + 1);
    text[at] = new;
    let lines = parse_trace(&text.join("\n")).unwrap();
    match convert(&rec.name, rec.role, &lines) {
        Ok(sc) => compare(&sc)
            .unwrap()
            .iter()
            .filter(|s| s.mismatch.is_some())
            .count(),
        Err(_) => 1,
    }
}

/// The text lines (0-based) of the messages of the recording's steps (not
/// a destination's shutdown after them, which is no step).
fn messages(rec: &Recording) -> Vec<usize> {
    let (_, sc) = load(rec).unwrap();
    sc.steps
        .iter()
        .flat_map(|s| &s.msgs)
        .filter(|m| matches!(m.kind, MsgKind::Update | MsgKind::Invalidate))
        .map(|m| m.line - 1)
        .collect()
}

/// Every UPDATE's and INVALIDATE's IOVA, one at a time, one page further.
#[test]
fn every_changed_iova_fails_the_comparison() {
    for rec in all() {
        let targets = messages(&rec);
        assert!(targets.len() > 20, "{}", rec.name);
        for t in targets {
            let n = mismatches_at(&rec, t, |l| {
                shift_field(l, "vhost_vdpa_dma", "iova: ", 0x1000).unwrap()
            });
            assert!(
                n > 0,
                "{}: a changed IOVA on line {} went unnoticed",
                rec.name,
                t + 1
            );
        }
    }
}

/// Every size, one page more; every asid of a message after the board's
/// build flipped; every perm there flipped (the board's build compares by
/// its net effect: see the baseline's `board-build`).
#[test]
fn every_changed_size_asid_or_perm_fails_the_comparison() {
    // The 1 GiB runs have the 256 MiB runs' messages (kept fast).
    for rec in all().into_iter().filter(|r| !r.name.starts_with("1G/")) {
        let text = text_of(&rec);
        let started = text
            .iter()
            .position(|l| l.contains("vhost_vdpa_dev_start") && l.contains("started: 1"))
            .unwrap();
        for t in messages(&rec) {
            let n = mismatches_at(&rec, t, |l| {
                shift_field(l, "vhost_vdpa_dma", "size: ", 0x1000).unwrap()
            });
            assert!(
                n > 0,
                "{}: a changed size on line {} went unnoticed",
                rec.name,
                t + 1
            );
            if t < started {
                continue;
            }
            let n = mismatches_at(&rec, t, |l| {
                if l.contains("asid: 0 ") {
                    l.replace("asid: 0 ", "asid: 1 ")
                } else {
                    l.replace("asid: 1 ", "asid: 0 ")
                }
            });
            assert!(
                n > 0,
                "{}: a changed asid on line {} went unnoticed",
                rec.name,
                t + 1
            );
            if text[t].contains("vhost_vdpa_dma_map ") {
                let n = mismatches_at(&rec, t, |l| {
                    if l.contains("perm: 0x3") {
                        l.replace("perm: 0x3", "perm: 0x1")
                    } else {
                        l.replace("perm: 0x1", "perm: 0x3")
                    }
                });
                assert!(
                    n > 0,
                    "{}: a changed perm on line {} went unnoticed",
                    rec.name,
                    t + 1
                );
            }
        }
    }
}

/// Every BATCH_BEGIN and BATCH_END, one at a time, dropped.
#[test]
fn every_dropped_batch_marker_fails_the_comparison() {
    for rec in all() {
        let text = text_of(&rec);
        let (_, sc) = load(&rec).unwrap();
        let markers: Vec<usize> = sc
            .steps
            .iter()
            .flat_map(|s| &s.msgs)
            .filter(|m| matches!(m.kind, MsgKind::Begin | MsgKind::End))
            .map(|m| m.line - 1)
            .collect();
        assert!(!markers.is_empty());
        for t in markers {
            assert!(text[t].contains("vhost_vdpa_listener_"));
            let n = mismatches_at(&rec, t, |l| l.replace(" vhost_vdpa_listener_", " x_"));
            assert!(
                n > 0,
                "{}: a dropped batch marker on line {} went unnoticed",
                rec.name,
                t + 1
            );
        }
    }
}

#[test]
fn every_known_difference_is_documented_in_the_baseline() {
    let doc = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../src/strategy/qemu/mod.rs"),
    )
    .unwrap();
    for k in KNOWN {
        assert!(
            doc.contains(&format!("`{}`", k.name)),
            "{} is not listed in the baseline's documentation",
            k.name
        );
    }
}

#[test]
fn recorded_messages_are_whole_batches() {
    for rec in all() {
        let lines = read_lines(&rec).unwrap();
        let sc = convert(&rec.name, rec.role, &lines).unwrap();
        for s in &sc.steps {
            let mut open = false;
            for m in &s.msgs {
                match m.kind {
                    MsgKind::Begin => {
                        assert!(!open, "{}: nested batch", rec.name);
                        open = true;
                    }
                    MsgKind::End => {
                        assert!(open, "{}: BATCH_END without BEGIN", rec.name);
                        open = false;
                    }
                    _ => {}
                }
            }
            assert!(
                !open,
                "{}: {} leaves a batch open",
                rec.name,
                s.event.name()
            );
        }
    }
}
