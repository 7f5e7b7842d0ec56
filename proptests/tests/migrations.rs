//! Whole scenarios with several migrations in a row, generated as scenario
//! files and run through the CLI's runner: every host on a device of its
//! own, every plan replayed on the strict kernel model and the layout
//! checked after every step. The shapes are the ones that found the
//! destination's wrong answers: vIOMMU guests migrated, resets between the
//! source's stop-and-copy and the destination's start on every device
//! kind, entry limits equal to what the tables hold, and migrations one
//! after another (a destination that started is the next source).
//!
//! `PROPTEST_CASES` sets the number of scenarios (1,000 by default);
//! `PROPTEST_STATS=1` prints what they covered.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use proptest::prelude::*;
use vdpa_adapter::runner::{run, RunReport, StepReport, StrategyKind};
use vdpa_adapter::scenario::{Host, Scenario};
use vdpa_iova_planner::{Mode, Phase};

const MIB: u64 = 1 << 20;

/// The device and guest of a scenario.
#[derive(Clone, Debug)]
struct Shape {
    map_style: &'static str,
    batching: bool,
    persist: bool,
    pinning: bool,
    cvq_isolated: bool,
    viommu: bool,
    /// Region sizes in MiB, placed 1 GiB apart.
    regions: Vec<u64>,
    migrations: Vec<Leg>,
}

/// One migration, and what happens around it.
#[derive(Clone, Debug)]
struct Leg {
    /// A DIMM hot-plugged on the running host before the migration.
    hotplug: bool,
    /// vIOMMU maps made before the migration (guest IOVA page, pages),
    /// then whether the first is unmapped again.
    maps: Vec<(u8, u8)>,
    unmap_first: bool,
    /// A map made while the source runs on the shadow virtqueues.
    map_in_svq: bool,
    /// The destination reset while it waits for the stream.
    reset_waiting: bool,
    /// The destination reset between the source's stop and its start.
    reset_paused: bool,
    /// The shadow vrings mapped before the switch.
    prepared: bool,
    /// A first attempt that fails back.
    failback_first: bool,
    /// A DIMM plugged into the source while it runs on the shadow
    /// virtqueues (its destination waiting gets it too).
    plug_in_svq: bool,
}

fn leg() -> impl Strategy<Value = Leg> {
    (
        any::<bool>(),
        prop::collection::vec((0u8..64, 1u8..4), 0..4),
        any::<[bool; 7]>(),
    )
        .prop_map(|(hotplug, maps, b)| Leg {
            hotplug,
            maps,
            unmap_first: b[0],
            map_in_svq: b[1],
            reset_waiting: b[2],
            reset_paused: b[3],
            prepared: b[4],
            failback_first: b[5],
            plug_in_svq: b[6],
        })
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        prop::sample::select(vec!["set_map", "dma_map", "platform"]),
        any::<[bool; 5]>(),
        prop::collection::vec(1u64..64, 1..4),
        prop::collection::vec(leg(), 1..4),
    )
        .prop_map(|(map_style, b, regions, migrations)| Shape {
            map_style,
            batching: b[0],
            persist: b[1],
            pinning: b[2],
            cvq_isolated: b[3],
            viommu: b[4],
            regions,
            migrations,
        })
}

impl Shape {
    /// The scenario file, with `max_entries` when given.
    fn text(&self, max_entries: Option<usize>) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "[device]\nmap_style = \"{}\"\nbatching = {}\npersist = {}\npinning = {}",
            self.map_style, self.batching, self.persist, self.pinning
        );
        if self.cvq_isolated {
            t += "address_spaces = 2\ncvq_isolated = true\n";
        }
        if let Some(n) = max_entries {
            let _ = writeln!(t, "max_entries = {n}");
        }
        t += "[guest]\n";
        if self.viommu {
            t += "viommu = true\nviommu_last = \"0xffff_ffff_ffff\"\n";
        }
        t += "regions = [\n";
        for (i, mib) in self.regions.iter().enumerate() {
            let _ = writeln!(
                t,
                "  {{ gpa = {:#x}, size = {:#x}, hva = {:#x} }},",
                i as u64 * 1024 * MIB,
                mib * MIB,
                0x7f00_0000_0000u64 + i as u64 * 0x10_0000_0000
            );
        }
        t += "]\n";
        let ev = |t: &mut String, kind: &str, rest: &str| {
            let _ = writeln!(t, "[[events]]\nkind = \"{kind}\"\n{rest}");
        };
        let buffers = "hva = 0x7d00_0000_0000";
        let svq = "queues = 2\nqueue_size = 64\nhva = 0x7e00_0000_0000";
        ev(&mut t, "cvq_buffers", buffers);
        let mut dimms = 0u64;
        for (k, leg) in self.migrations.iter().enumerate() {
            let dest = Host::nth(k as u32 + 1).name();
            if leg.hotplug {
                dimms += 1;
                let _ = writeln!(
                    t,
                    "[[events]]\nkind = \"hotplug\"\ngpa = {:#x}\nsize = {:#x}\nhva = {:#x}\n",
                    (16 + dimms) << 30,
                    2 * MIB,
                    0x7f80_0000_0000u64 + dimms * 0x1000_0000
                );
            }
            let mut mapped = Vec::new();
            if self.viommu {
                for (j, &(page, pages)) in leg.maps.iter().enumerate() {
                    // Guest IOVAs private to this leg and map: no overlap.
                    let giova = ((k as u64 * 8 + j as u64) << 24) + u64::from(page) * 0x1000;
                    let size = u64::from(pages) * 0x1000;
                    let _ = writeln!(
                        t,
                        "[[events]]\nkind = \"viommu_map\"\ngiova = {giova:#x}\nsize = {size:#x}\ngpa = {:#x}\nperm = \"{}\"\n",
                        u64::from(page) * 0x1000,
                        if j % 2 == 0 { "rw" } else { "ro" }
                    );
                    mapped.push((giova, size));
                }
                if leg.unmap_first {
                    if let Some(&(giova, _)) = mapped.first() {
                        // The first page only: a cut map keeps the rest.
                        let _ = writeln!(
                            t,
                            "[[events]]\nkind = \"viommu_unmap\"\ngiova = {giova:#x}\nsize = 0x1000\n"
                        );
                    }
                }
            }
            ev(&mut t, "incoming", "");
            ev(
                &mut t,
                "cvq_buffers",
                &format!("host = \"{dest}\"\n{buffers}"),
            );
            if leg.reset_waiting {
                ev(&mut t, "reset", &format!("host = \"{dest}\""));
            }
            if leg.failback_first {
                ev(&mut t, "svq_switch", svq);
                ev(&mut t, "failback", "");
            }
            if leg.prepared {
                ev(&mut t, "svq_prepare", svq);
                ev(&mut t, "svq_switch", "");
            } else {
                ev(&mut t, "svq_switch", svq);
            }
            if self.viommu && leg.map_in_svq {
                let giova = ((k as u64 * 8 + 7) << 24) + 0x1000;
                let _ = writeln!(
                    t,
                    "[[events]]\nkind = \"viommu_map\"\ngiova = {giova:#x}\nsize = 0x2000\ngpa = 0x2000\n"
                );
            }
            if leg.plug_in_svq {
                let _ = writeln!(
                    t,
                    "[[events]]\nkind = \"hotplug\"\ngpa = {:#x}\nsize = {:#x}\nhva = {:#x}\n",
                    (48 + k as u64) << 30,
                    2 * MIB,
                    0x7f90_0000_0000u64 + k as u64 * 0x1000_0000
                );
            }
            ev(&mut t, "complete", "");
            if leg.reset_paused {
                ev(&mut t, "reset", &format!("host = \"{dest}\""));
            }
            ev(&mut t, "start", "");
        }
        t
    }
}

/// The steps of `host` from its `switchover` to its `start`.
fn window(r: &RunReport, host: Host) -> Vec<&StepReport> {
    let steps: Vec<&StepReport> = r.steps.iter().filter(|s| s.host == host).collect();
    let from = steps.iter().position(|s| s.event == "switchover");
    let to = steps.iter().position(|s| s.event == "start");
    match (from, to) {
        (Some(f), Some(t)) => steps[f..=t].to_vec(),
        _ => Vec::new(),
    }
}

/// Where guest memory (or each guest map) is, as `(first, size, hva, perm)`.
fn guest_layout(s: &StepReport) -> Vec<(u64, u64, u64, &'static str)> {
    s.placements
        .iter()
        .map(|p| (p.gpa.first().0, p.gpa.size(), p.hva.0, p.perm.as_str()))
        .collect()
}

static STATS: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];
const STAT_NAMES: [&str; 7] = [
    "scenarios",
    "migrations",
    "vIOMMU migrations with live maps",
    "resets while paused",
    "runs at a tight entry limit",
    "restores at a full table",
    "DIMMs plugged while a destination waits",
];

fn count(i: usize, n: u64) {
    STATS[i].fetch_add(n, Relaxed);
}

fn check(shape: &Shape) -> Result<(), TestCaseError> {
    let text = shape.text(None);
    let scn = Scenario::parse(&text, "generated.toml")
        .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
    let r = run(&scn, "generated.toml", StrategyKind::Identity)
        .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
    prop_assert!(r.stopped.is_none(), "{:?}\n{text}", r.stopped);
    count(0, 1);
    count(1, scn.migrations.len() as u64);
    count(
        6,
        shape.migrations.iter().filter(|l| l.plug_in_svq).count() as u64,
    );
    for m in &scn.migrations {
        // The source's stop-and-copy sends nothing while the guest waits.
        let stop = r
            .steps
            .iter()
            .find(|s| s.host == m.source && s.event == "complete")
            .expect("every leg completes");
        prop_assert_eq!(stop.cost.critical_messages, 0, "{}", text);
        // Everything sent from the source's stop to the start is critical.
        let w = window(&r, m.destination);
        prop_assert!(!w.is_empty());
        for s in &w {
            prop_assert!(
                s.ops.iter().all(|o| o.phase == Phase::Critical),
                "{} while paused: {:?}\n{}",
                s.event,
                s.ops,
                text
            );
        }
        let paused_reset = w.iter().any(|s| s.event == "reset");
        count(3, u64::from(paused_reset));
        // The destination starts with the guest as the source left it: the
        // same regions, or with a vIOMMU the same guest maps, every byte
        // reachable.
        let before_stop = r
            .steps
            .iter()
            .take_while(|s| !(s.host == m.source && s.event == "complete"))
            .filter(|s| s.host == m.source)
            .last()
            .expect("the source ran");
        let start = w.last().expect("the window ends with start");
        prop_assert_eq!(start.mode, Mode::Passthrough);
        prop_assert_eq!(guest_layout(before_stop), guest_layout(start), "{}", text);
        prop_assert_eq!(start.unreachable_bytes, 0, "{}", text);
        let maps = start.placements.len() as u64;
        if shape.viommu && maps > 0 {
            count(2, 1);
        }
        // Nothing else is sent in the window but the guest's maps (one
        // UPDATE each, batched or not) and a paused reset's restore.
        if !paused_reset {
            let updates = w
                .iter()
                .flat_map(|s| &s.ops)
                .filter(|o| matches!(o.kind, vdpa_iova_planner::OpKind::Update { .. }))
                .count() as u64;
            prop_assert_eq!(updates, if shape.viommu { maps } else { 0 }, "{}", text);
        }
    }
    // The same scenario at an entry limit equal to the most entries any
    // step but a reset needs: a reset's restore never needs one more.
    let tight = r
        .steps
        .iter()
        .filter(|s| s.event != "reset")
        .map(|s| s.peak_entries)
        .max()
        .unwrap_or(0)
        .max(1);
    let text2 = shape.text(Some(tight));
    let scn2 = Scenario::parse(&text2, "generated.toml")
        .map_err(|e| TestCaseError::fail(format!("{e}\n{text2}")))?;
    let r2 = run(&scn2, "generated.toml", StrategyKind::Identity)
        .map_err(|e| TestCaseError::fail(format!("{e}\n{text2}")))?;
    prop_assert!(r2.stopped.is_none(), "{:?}\n{text2}", r2.stopped);
    count(4, 1);
    let full = r2
        .steps
        .iter()
        .filter(|s| s.event == "reset" && !s.ops.is_empty() && s.peak_entries == tight)
        .count();
    count(5, full as u64);
    // The baseline plans the same scenarios, or stops where QEMU cannot go
    // (no shadow virtqueue with a vIOMMU); a plan the kernel would refuse
    // is an error of the run.
    let q = run(&scn, "generated.toml", StrategyKind::Qemu)
        .map_err(|e| TestCaseError::fail(format!("qemu: {e}\n{text}")))?;
    if !shape.viommu {
        prop_assert!(q.stopped.is_none(), "qemu: {:?}\n{text}", q.stopped);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: proptests::cases(),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn migrations_in_a_row_plan_and_check(s in shape()) {
        check(&s)?;
        if std::env::var_os("PROPTEST_STATS").is_some() {
            let line: Vec<String> = STAT_NAMES
                .iter()
                .zip(&STATS)
                .map(|(n, v)| format!("{n} {}", v.load(Relaxed)))
                .collect();
            eprintln!("{}", line.join(", "));
        }
    }
}
