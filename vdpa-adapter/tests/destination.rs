//! A migration's destination, planned through the scenario runner with
//! each host on a device table of its own: the three wrong answers an
//! independent checker found (a vIOMMU guest's destination started with
//! nothing mapped, a restore inside the downtime booked as free, a restore
//! that needed one entry more than the device holds), and a VM that
//! migrates more than once. Every number asserted here is what the runner
//! replayed on the kernel model and checked against the guest.

use vdpa_adapter::runner::{run, RunReport, StepReport, StrategyKind};
use vdpa_adapter::scenario::{Host, Scenario};
use vdpa_iova_planner::{Cost, Mode, OpKind, Phase};

const GIB: u64 = 1 << 30;

fn scenario(text: &str) -> Scenario {
    Scenario::parse(text, "test.toml").expect("the scenario parses")
}

fn plan(text: &str, kind: StrategyKind) -> RunReport {
    run(&scenario(text), "test.toml", kind).expect("the run is checked step by step")
}

/// The steps of one host, in order.
fn on(r: &RunReport, host: Host) -> Vec<&StepReport> {
    r.steps.iter().filter(|s| s.host == host).collect()
}

/// The steps of `host` from its `switchover` (the source stopped) to its
/// `start`, both included: the destination's part of the downtime.
fn window(r: &RunReport, host: Host) -> Vec<&StepReport> {
    let steps = on(r, host);
    let from = steps.iter().position(|s| s.event == "switchover");
    let to = steps.iter().position(|s| s.event == "start");
    match (from, to) {
        (Some(f), Some(t)) => steps[f..=t].to_vec(),
        _ => Vec::new(),
    }
}

/// What `host` sends in its [`window`].
fn start_window(r: &RunReport, host: Host) -> Cost {
    window(r, host)
        .into_iter()
        .fold(Cost::default(), |c, s| c.add(&s.cost))
}

/// Bytes UPDATEd in the [`window`] of `host`.
fn mapped_in_window(r: &RunReport, host: Host) -> u64 {
    window(r, host)
        .into_iter()
        .flat_map(|s| &s.ops)
        .map(|o| match o.kind {
            OpKind::Update { iova, .. } => iova.size(),
            _ => 0,
        })
        .sum()
}

/// A vIOMMU guest with two live maps (48 KiB and 8 KiB) and a third made
/// and unmapped again, on a device with an isolated control queue,
/// migrated. The identity destination started with nothing mapped and
/// called its start free (0 bytes mapped in the window, 0 unreachable):
/// its device could not reach any buffer of the guest. The guest's maps
/// arrive with the stream, at switchover: mapped then, as they were on
/// the source when it stopped, and booked inside the downtime.
#[test]
fn a_viommu_guests_destination_maps_the_guests_maps_at_switchover() {
    let text = r#"
[device]
address_spaces = 2
cvq_isolated = true
[guest]
viommu = true
viommu_last = "0xffff_ffff"
regions = [{ gpa = 0, size = "1GiB", hva = 0x7f00_0000_0000 }]
[[events]]
kind = "cvq_buffers"
hva = 0x7d00_0000_0000
[[events]]
kind = "viommu_map"
giova = 0x10_0000
size = 0xc000
gpa = 0x20_0000
[[events]]
kind = "viommu_map"
giova = 0x40_0000
size = 0x2000
gpa = 0x30_0000
perm = "ro"
[[events]]
kind = "viommu_map"
giova = 0x50_0000
size = 0x1000
gpa = 0x31_0000
[[events]]
kind = "incoming"
[[events]]
kind = "cvq_buffers"
host = "destination"
hva = 0x7d00_0000_0000
[[events]]
kind = "svq_prepare"
queues = 2
queue_size = 256
hva = 0x7e00_0000_0000
[[events]]
kind = "svq_switch"
[[events]]
kind = "viommu_unmap"
giova = 0x50_0000
size = 0x1000
[[events]]
kind = "complete"
[[events]]
kind = "start"
"#;
    let scn = scenario(text);
    // The source's complete implies the switchover and the two live maps.
    let implied: Vec<&str> = scn
        .events
        .iter()
        .zip(&scn.written)
        .filter(|(_, w)| !**w)
        .map(|(e, _)| e.name())
        .collect();
    assert_eq!(implied, ["switchover", "viommu_map", "viommu_map"]);
    let r = run(&scn, "test.toml", StrategyKind::Identity).expect("identity plans it");
    assert!(r.stopped.is_none(), "{:?}", r.stopped);
    let d = on(&r, Host::DESTINATION);
    let start = d.last().expect("steps");
    assert_eq!((start.event, start.mode), ("start", Mode::Passthrough));
    // Both maps reachable at their guest IOVAs (the check of every step
    // compares the device's table with the guest's maps byte for byte).
    let gi: Vec<(u64, u64)> = start
        .placements
        .iter()
        .map(|p| (p.gpa.first().0, p.gpa.size()))
        .collect();
    assert_eq!(gi, [(0x10_0000, 0xc000), (0x40_0000, 0x2000)]);
    assert!(start.placements.iter().all(|p| p.unreachable().is_empty()));
    assert_eq!(start.unreachable_bytes, 0);
    // 56 KiB mapped inside the downtime, 2 critical messages, nothing
    // left for the start itself.
    let w = start_window(&r, Host::DESTINATION);
    assert_eq!(mapped_in_window(&r, Host::DESTINATION), 0xe000);
    assert_eq!((w.critical_messages, w.critical_pinned_bytes), (2, 0xe000));
    assert!(start.ops.is_empty());
    // QEMU shadows no queue with a vIOMMU: its run stops at the isolated
    // control queue's buffers.
    let q = plan(text, StrategyKind::Qemu);
    assert_eq!(q.stopped.as_ref().map(|s| s.event), Some("host_buffers"));
    // The downtime table: identity's destination window holds the two maps;
    // QEMU, stopped before either host's window, shows none.
    let table = vdpa_adapter::output::plan::comparison_table(&scn.caps, &[r, q]);
    let cells = |window: &str| -> Vec<String> {
        let line = table
            .lines()
            .find(|l| l.starts_with(window))
            .unwrap_or_else(|| panic!("{window}:\n{table}"));
        line.split('|')
            .skip(1)
            .map(|c| c.trim().to_string())
            .collect()
    };
    assert_eq!(
        cells("destination start"),
        ["2          56 KiB             0 B", "-"]
    );
    assert_eq!(
        cells("source stop-and-copy"),
        ["0             0 B             0 B", "-"]
    );
}

/// A vIOMMU guest's maps on a destination before its start. QEMU cannot
/// complete such a migration (no shadow virtqueue with a vIOMMU), so its
/// destination is driven here with the maps given to it directly: QEMU has
/// no IOMMU notifier before `vhost_vdpa_dev_start` registers the listener,
/// which replays every live map then (one unbatched UPDATE each, inside the
/// downtime); before, the baseline sent each map at once and nothing at
/// start. The identity strategy maps each as it comes, while the stream
/// runs. Both reach every map after the start.
#[test]
fn qemu_replays_the_guests_maps_at_start() {
    let text = r#"
[guest]
viommu = true
viommu_last = "0xffff_ffff"
regions = [{ gpa = 0, size = "1GiB", hva = 0x7f00_0000_0000 }]
[[events]]
kind = "incoming"
[[events]]
kind = "viommu_map"
host = "destination"
giova = 0x10_0000
size = 0x4000
gpa = 0x20_0000
[[events]]
kind = "viommu_map"
host = "destination"
giova = 0x20_0000
size = 0x1000
gpa = 0x30_0000
[[events]]
kind = "viommu_map"
host = "destination"
giova = 0x30_0000
size = 0x1000
gpa = 0x31_0000
[[events]]
kind = "viommu_unmap"
host = "destination"
giova = 0x30_0000
size = 0x1000
[[events]]
kind = "start"
"#;
    let r = plan(text, StrategyKind::Qemu);
    let d = on(&r, Host::DESTINATION);
    assert!(
        d.iter()
            .filter(|s| s.event != "start")
            .all(|s| s.ops.is_empty()),
        "nothing sent before start"
    );
    let start = d.last().unwrap();
    let ups: Vec<(u64, u64, Phase)> = start
        .ops
        .iter()
        .filter_map(|o| match o.kind {
            OpKind::Update { iova, .. } => Some((iova.first().0, iova.size(), o.phase)),
            _ => None,
        })
        .collect();
    assert_eq!(
        ups,
        [
            (0x10_0000, 0x4000, Phase::Critical),
            (0x20_0000, 0x1000, Phase::Critical)
        ]
    );
    assert_eq!(start.ops.len(), 2, "unbatched: {:?}", start.ops);
    assert_eq!(start.unreachable_bytes, 0);
    let r = plan(text, StrategyKind::Identity);
    let d = on(&r, Host::DESTINATION);
    let start = d.last().unwrap();
    assert!(start.ops.is_empty());
    assert_eq!(start.placements.len(), 2);
    assert_eq!(start.unreachable_bytes, 0);
}

/// The migration of `text_device` (a device section) for an 8 GiB guest
/// in two regions whose destination is reset after the source's complete
/// and before its start.
fn reset_after_complete(device: &str) -> String {
    format!(
        r#"
[device]
{device}
[guest]
regions = [
  {{ gpa = 0, size = "2GiB", hva = 0x7f00_0000_0000 }},
  {{ gpa = "4GiB", size = "6GiB", hva = 0x7f10_0000_0000 }},
]
[[events]]
kind = "incoming"
[[events]]
kind = "svq_prepare"
queues = 2
queue_size = 256
hva = 0x7e00_0000_0000
[[events]]
kind = "svq_switch"
[[events]]
kind = "complete"
[[events]]
kind = "reset"
host = "destination"
[[events]]
kind = "start"
"#
    )
}

/// A dma_map device's destination reset between the source's complete and
/// the start: the identity restore unmaps and maps every entry again
/// (8 GiB pinned) while the guest is paused. It was labelled `prepare` and
/// the downtime table showed 0; it is critical now, and the window counts
/// it: 6 messages (one batch of 2 INVALIDATEs and 2 UPDATEs), 8 GiB
/// pinned, 8 GiB unpinned.
#[test]
fn a_reset_after_the_source_stopped_is_booked_in_the_downtime() {
    let r = plan(
        &reset_after_complete("map_style = \"dma_map\""),
        StrategyKind::Identity,
    );
    let d = on(&r, Host::DESTINATION);
    let reset = d.iter().find(|s| s.event == "reset").expect("reset");
    assert!(reset.ops.iter().all(|o| o.phase == Phase::Critical));
    let w = start_window(&r, Host::DESTINATION);
    assert_eq!(
        (
            w.critical_messages,
            w.critical_pinned_bytes,
            w.critical_unpinned_bytes
        ),
        (6, 8 * GIB, 8 * GIB)
    );
    assert_eq!(w.critical_batch_ends, 1);
    // The same reset before the source stops stays outside the downtime.
    let early = reset_after_complete("map_style = \"dma_map\"").replace(
        "[[events]]\nkind = \"complete\"\n[[events]]\nkind = \"reset\"\nhost = \"destination\"\n",
        "[[events]]\nkind = \"reset\"\nhost = \"destination\"\n[[events]]\nkind = \"complete\"\n",
    );
    let r = plan(&early, StrategyKind::Identity);
    let reset = on(&r, Host::DESTINATION)
        .into_iter()
        .find(|s| s.event == "reset")
        .expect("reset");
    assert_eq!(reset.cost.critical_messages, 0);
    assert_eq!(reset.cost.pinned_bytes, 8 * GIB);
    assert_eq!(start_window(&r, Host::DESTINATION).critical_messages, 0);

    // A batched set_map device: the restore is an empty batch, 2 messages
    // and nothing pinned, inside the downtime and counted there.
    let r = plan(&reset_after_complete(""), StrategyKind::Identity);
    let w = start_window(&r, Host::DESTINATION);
    assert_eq!((w.critical_messages, w.critical_pinned_bytes), (2, 0));
    assert_eq!(w.critical_batch_ends, 1);
}

/// The comparison's downtime table counts the destination's reset after the
/// source stopped in the destination's window.
#[test]
fn the_downtime_table_counts_the_paused_reset() {
    let scn = scenario(&reset_after_complete("map_style = \"dma_map\""));
    let runs: Vec<RunReport> = [StrategyKind::Identity, StrategyKind::Qemu]
        .into_iter()
        .map(|k| run(&scn, "test.toml", k).unwrap())
        .collect();
    let table = vdpa_adapter::output::plan::comparison_table(&scn.caps, &runs);
    let line = table
        .lines()
        .find(|l| l.starts_with("destination start"))
        .expect("a destination window");
    // identity: 6 messages (a batch of 4), 8 GiB pinned and unpinned.
    let cells: Vec<&str> = line.split('|').map(str::trim).collect();
    assert_eq!(cells[1], "6           8 GiB           8 GiB", "{table}");
}

/// An unbatched set_map device whose entry limit equals its table's size,
/// reset on the destination: the identity restore used a one-page map
/// beside the others (one entry more) and its run stopped at the reset
/// with "more than the device's 2 entries". Re-mapping the smallest entry
/// pushes the table too, within the limit; QEMU plans through it as well.
#[test]
fn a_restore_at_the_entry_limit_remaps_the_smallest_entry() {
    let text = r#"
[device]
batching = false
max_entries = 2
[guest]
regions = [
  { gpa = 0, size = "1GiB", hva = 0x7f00_0000_0000 },
  { gpa = "4GiB", size = "16KiB", hva = 0x7f10_0000_0000 },
]
[[events]]
kind = "incoming"
[[events]]
kind = "reset"
host = "destination"
[[events]]
kind = "start"
"#;
    for kind in [StrategyKind::Identity, StrategyKind::Qemu] {
        let r = plan(text, kind);
        assert!(r.stopped.is_none(), "{kind:?}: {:?}", r.stopped);
        assert!(r.steps.iter().all(|s| s.peak_entries <= 2), "{kind:?}");
    }
    let r = plan(text, StrategyKind::Identity);
    let reset = on(&r, Host::DESTINATION)
        .into_iter()
        .find(|s| s.event == "reset")
        .expect("reset");
    let ops: Vec<(&str, u64, u64)> = reset
        .ops
        .iter()
        .map(|o| match o.kind {
            OpKind::Update { iova, .. } | OpKind::Invalidate { iova } => {
                (o.kind.as_str(), iova.first().0, iova.size())
            }
            k => (k.as_str(), 0, 0),
        })
        .collect();
    assert_eq!(
        ops,
        [("invalidate", 4 * GIB, 0x4000), ("update", 4 * GIB, 0x4000)]
    );
    assert_eq!((reset.peak_entries, reset.cost.pinned_bytes), (2, 0x4000));
    // With room for one entry more, the one-page map stays the cheaper
    // restore (one page pinned instead of the smallest entry's 16 KiB).
    let roomy = text.replace("max_entries = 2", "max_entries = 3");
    let r = plan(&roomy, StrategyKind::Identity);
    let reset = on(&r, Host::DESTINATION)
        .into_iter()
        .find(|s| s.event == "reset")
        .expect("reset");
    assert_eq!((reset.peak_entries, reset.cost.pinned_bytes), (3, 0x1000));
}

/// A then B then C (or back to A: a new process on A is a new destination
/// with a device of its own, the same to the planner): every migration's
/// source is the host that runs the VM, every destination a device of its
/// own. The identity strategy sends
/// nothing while the guest is paused, on either migration; QEMU pins the
/// whole guest again in each destination window.
const TWICE: &str = r#"
name = "migrated twice"
[guest]
regions = [
  { gpa = 0, size = "2GiB", hva = 0x7f00_0000_0000 },
  { gpa = "4GiB", size = "2GiB", hva = 0x7f10_0000_0000 },
]
[[events]]
kind = "cvq_buffers"
hva = 0x7d00_0000_0000
[[events]]
kind = "incoming"
[[events]]
kind = "cvq_buffers"
host = "destination"
hva = 0x7d00_0000_0000
[[events]]
kind = "svq_prepare"
queues = 4
queue_size = 256
hva = 0x7e00_0000_0000
[[events]]
kind = "svq_switch"
[[events]]
kind = "complete"
[[events]]
kind = "start"
[[events]]
kind = "hotplug"
gpa = "8GiB"
size = "1GiB"
hva = 0x7f20_0000_0000
[[events]]
kind = "incoming"
[[events]]
kind = "cvq_buffers"
host = "destination 2"
hva = 0x7d00_0000_0000
[[events]]
kind = "reset"
host = "destination 2"
[[events]]
kind = "svq_prepare"
queues = 4
queue_size = 256
hva = 0x7e00_0000_0000
[[events]]
kind = "svq_switch"
[[events]]
kind = "complete"
[[events]]
kind = "start"
"#;

#[test]
fn a_vm_migrates_twice() {
    let scn = scenario(TWICE);
    assert_eq!(scn.host_count(), 3);
    let pairs: Vec<(Host, Host)> = scn
        .migrations
        .iter()
        .map(|m| (m.source, m.destination))
        .collect();
    assert_eq!(
        pairs,
        [
            (Host::SOURCE, Host::DESTINATION),
            (Host::DESTINATION, Host::nth(2))
        ]
    );
    // The second destination is given the first's memory, hot-plug included.
    let second = scn
        .events
        .iter()
        .filter_map(|e| match e {
            vdpa_iova_planner::Event::Incoming(r) => Some(r.len()),
            _ => None,
        })
        .collect::<Vec<_>>();
    assert_eq!(second, [2, 3]);
    let id = run(&scn, "test.toml", StrategyKind::Identity).unwrap();
    let q = run(&scn, "test.toml", StrategyKind::Qemu).unwrap();
    assert!(id.stopped.is_none() && q.stopped.is_none());
    for (m, guest) in scn.migrations.iter().zip([4 * GIB, 5 * GIB]) {
        let stop = |r: &RunReport| {
            on(r, m.source)
                .into_iter()
                .find(|s| s.event == "complete")
                .map(|s| s.cost)
                .expect("complete")
        };
        // Identity: nothing while the guest waits, on either side.
        assert_eq!(stop(&id).critical_messages, 0);
        assert_eq!(start_window(&id, m.destination).critical_messages, 0);
        // QEMU: the whole guest pinned again at each destination's start.
        assert_eq!(start_window(&q, m.destination).critical_pinned_bytes, guest);
        assert!(stop(&q).critical_messages > 0);
        // Each host ends on its own table: the sources hold nothing.
        let last = on(&id, m.source).last().copied().unwrap();
        assert_eq!(last.mode, Mode::Completed);
    }
    let c = on(&id, Host::nth(2));
    assert_eq!(c.last().unwrap().mode, Mode::Passthrough);
    assert_eq!(c.last().unwrap().placements.len(), 3);
    // The tables name the hosts.
    let runs = [id, q];
    let table = vdpa_adapter::output::plan::comparison_table(&scn.caps, &runs);
    for want in [
        "source stop-and-copy",
        "destination start",
        "destination stop-and-copy",
        "destination 2 start",
    ] {
        assert!(table.contains(want), "{want}:\n{table}");
    }
    assert!(
        table
            .lines()
            .any(|l| l.contains(" dst2 ") && l.contains("start")),
        "{table}"
    );
    let json = vdpa_adapter::output::plan::json(&runs[0]);
    assert_eq!(json["migrations"][1]["destination"], "destination 2");
    assert_eq!(json["migrations"][1]["source"], "destination");
}

/// Bad migration sequences are refused with the event and what is wrong.
#[test]
fn bad_migration_sequences_are_refused() {
    let err = |events: &str| Scenario::parse(events, "x.toml").unwrap_err().to_string();
    let ev = |k: &str| format!("[[events]]\nkind = \"{k}\"\n");
    let e = err(&(ev("incoming") + &ev("incoming")));
    assert!(e.contains("destination still waits for the stream"), "{e}");
    let e = err(&ev("start"));
    assert!(e.contains("no destination waits for the stream"), "{e}");
    let e = err(&(ev("incoming") + &ev("start") + &ev("start")));
    assert!(e.contains("no destination waits"), "{e}");
    let e = err("[[events]]\nkind = \"reset\"\nhost = \"destination\"\n");
    assert!(e.contains("no destination yet"), "{e}");
    let e = err(&(ev("incoming") + "[[events]]\nkind = \"reset\"\nhost = \"destination 2\"\n"));
    assert!(e.contains("no destination 2 yet"), "{e}");
    for bad in [
        "destination 1",
        "destination 0",
        "elsewhere",
        "destination x",
    ] {
        let e = err(&format!(
            "{}[[events]]\nkind = \"reset\"\nhost = \"{bad}\"\n",
            ev("incoming")
        ));
        assert!(
            e.contains("expected source, destination, or destination N"),
            "{bad}: {e}"
        );
    }
    let e = err("[[events]]\nkind = \"incoming\"\nhost = \"source\"\n");
    assert!(e.contains("`incoming` creates the destination"), "{e}");
    let e = err("[[events]]\nkind = \"incoming\"\nhost = \"destination 3\"\n");
    assert!(e.contains("`incoming` creates the destination"), "{e}");
    let named = Scenario::parse(
        "[[events]]\nkind = \"incoming\"\nhost = \"destination\"\n",
        "x.toml",
    )
    .unwrap();
    assert_eq!(named.hosts, [Host::DESTINATION]);
    let e = err(&(ev("incoming") + "[[events]]\nkind = \"start\"\nhost = \"source\"\n"));
    assert!(e.contains("this event happens on the destination"), "{e}");
}

/// Memory follows the VM: a region unplugged before the migration is not
/// given to the destination; one plugged into or unplugged from the source
/// while the destination waits is plugged there too (implied steps); and
/// the next migration's destination gets the memory the first one ended
/// with.
#[test]
fn memory_changes_follow_the_vm_to_every_destination() {
    let text = r#"
[guest]
max_gpa = "64GiB"
regions = [
  { gpa = 0, size = "1GiB", hva = 0x7f00_0000_0000 },
  { gpa = "4GiB", size = "1GiB", hva = 0x7f10_0000_0000 },
  { gpa = "8GiB", size = "1GiB", hva = 0x7f20_0000_0000 },
]
[[events]]
kind = "unplug"
gpa = "8GiB"
[[events]]
kind = "incoming"
[[events]]
kind = "svq_prepare"
queues = 2
queue_size = 64
hva = 0x7e00_0000_0000
[[events]]
kind = "hotplug"
gpa = "16GiB"
size = "1GiB"
hva = 0x7f30_0000_0000
[[events]]
kind = "unplug"
gpa = "4GiB"
[[events]]
kind = "svq_switch"
[[events]]
kind = "complete"
[[events]]
kind = "start"
[[events]]
kind = "incoming"
"#;
    let scn = scenario(text);
    let gpas = |ev: &vdpa_iova_planner::Event| match ev {
        vdpa_iova_planner::Event::Incoming(r) => r.iter().map(|r| r.gpa.0 >> 30).collect(),
        _ => Vec::new(),
    };
    let incomings: Vec<Vec<u64>> = scn
        .events
        .iter()
        .filter(|e| matches!(e, vdpa_iova_planner::Event::Incoming(_)))
        .map(gpas)
        .collect();
    // The first destination: without the DIMM unplugged before; the
    // second: the first's memory after the mirrored hot-plug and unplug.
    assert_eq!(incomings, [vec![0, 4], vec![0, 16]]);
    let implied: Vec<(Host, &str)> = scn
        .events
        .iter()
        .zip(&scn.hosts)
        .zip(&scn.written)
        .filter(|(_, w)| !**w)
        .map(|((e, h), _)| (*h, e.name()))
        .collect();
    assert_eq!(
        implied,
        [
            (Host::DESTINATION, "hotplug"),
            (Host::DESTINATION, "unplug"),
            (Host::DESTINATION, "switchover")
        ]
    );
    let r = run(&scn, "test.toml", StrategyKind::Identity).unwrap();
    let start = on(&r, Host::DESTINATION)
        .into_iter()
        .find(|s| s.event == "start")
        .unwrap();
    let at_start: Vec<u64> = start
        .placements
        .iter()
        .map(|p| p.gpa.first().0 >> 30)
        .collect();
    assert_eq!(at_start, [0, 16]);
    assert_eq!(start.unreachable_bytes, 0);
}
