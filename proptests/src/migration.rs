//! A structure-aware fuzz target for migrations across hosts: the raw
//! bytes choose a device, a guest and a list of events, each where the VM
//! runs or on the newest destination, which are written out as a scenario
//! file (so every
//! input exercises the scenario format the adapter reads, not random text)
//! and run by the adapter on both hosts under every strategy. The adapter
//! replays each host's plans on its own kernel model and checks each
//! device's table against the guest: a plan the model refuses or a table
//! that does not hold what the strategy reports is a finding. Destination
//! events are only written after an `incoming`, as the format requires, so
//! nearly every input parses.

use std::fmt::Write as _;

use arbitrary::{Arbitrary, Unstructured};

use crate::model::PAGE;

/// Device ranges: full, small (forcing collisions), 32-bit, and at the top
/// of the space.
const RANGES: [(u64, u64); 4] = [
    (0, u64::MAX),
    (0, 0x400_0000 - 1),
    (PAGE, (1 << 32) - 1),
    (u64::MAX - (0x1000_0000 - 1), u64::MAX),
];

/// Guest addresses regions are placed at (GiB multiples and edges).
const GPAS: [u64; 6] = [
    0,
    0x10_0000,
    0x8000_0000,
    0x1_0000_0000,
    0x2_0000_0000,
    0x40_0000_0000,
];
/// Region sizes: a page, a few MiB, 1 GiB, 2 GiB.
const SIZES: [u64; 4] = [PAGE, 0x40_0000, 0x4000_0000, 0x8000_0000];

/// One event's raw choices; `dest` asks for the destination host, honoured
/// once an `incoming` was written.
#[derive(Arbitrary, Debug)]
enum RawEvent {
    Incoming,
    Start,
    Complete,
    Failback,
    Reset {
        dest: bool,
    },
    SvqPrepare {
        dest: bool,
        queues: u8,
        qsize: u8,
    },
    SvqSwitch {
        dest: bool,
        cfg: Option<(u8, u8)>,
    },
    Hotplug {
        dest: bool,
        gpa: u8,
        size: u8,
        readonly: bool,
    },
    Unplug {
        dest: bool,
        gpa: u8,
    },
    CvqBuffers {
        dest: bool,
    },
    ViommuMap {
        dest: bool,
        giova: u8,
        size: u8,
        gpa: u8,
        perm: u8,
    },
    ViommuUnmap {
        dest: bool,
        giova: u8,
        size: u8,
    },
}

/// The device and guest choices.
#[derive(Arbitrary, Debug)]
struct RawSetup {
    range: u8,
    flags: u16,
    regions: Vec<(u8, u8, bool)>,
    max_gpa: u8,
}

/// Writes the scenario file the raw bytes describe (`None` when they run
/// out before the setup).
pub fn render(data: &[u8]) -> Option<String> {
    let mut u = Unstructured::new(data);
    let s = RawSetup::arbitrary(&mut u).ok()?;
    let mut t = String::new();
    let (first, last) = RANGES[usize::from(s.range) % RANGES.len()];
    let f = s.flags;
    let spaces = if f & 2 != 0 { 2 } else { 1 };
    let style = ["set_map", "dma_map", "platform"][usize::from(f >> 5) % 3];
    let _ = writeln!(t, "name = \"fuzz migration\"\n\n[device]");
    let _ = writeln!(t, "iova_first = \"{first:#x}\"\niova_last = \"{last:#x}\"");
    let _ = writeln!(
        t,
        "batching = {}\naddress_spaces = {spaces}\ndesc_asid = {}\npersist = {}\npinning = {}\nmap_style = \"{style}\"\ncvq_isolated = {}",
        f & 1 != 0,
        f & 4 != 0,
        f & 8 != 0,
        f & 16 != 0,
        f & 2048 != 0 && spaces == 2,
    );
    let _ = writeln!(t, "\n[guest]");
    if f & 512 != 0 {
        let _ = writeln!(
            t,
            "max_gpa = \"{:#x}\"",
            GPAS[usize::from(s.max_gpa) % GPAS.len()].max(0x4000_0000) * 4
        );
    }
    let viommu = f & 1024 != 0;
    if viommu {
        let _ = writeln!(t, "viommu = true\nviommu_last = \"0xffff_ffff\"");
    }
    for (i, &(g, z, ro)) in s.regions.iter().take(4).enumerate() {
        let _ = writeln!(
            t,
            "\n[[guest.regions]]\ngpa = \"{:#x}\"\nsize = \"{:#x}\"\nhva = \"{:#x}\"\nreadonly = {ro}",
            GPAS[usize::from(g) % GPAS.len()],
            SIZES[usize::from(z) % SIZES.len()],
            0x7f00_0000_0000u64 + ((i as u64) << 36),
        );
    }
    // Destinations created so far, and whether the last one still waits
    // for the stream (its `start` not written yet).
    let mut dests = 0u32;
    let mut waiting = false;
    let mut hvas = 0u64;
    for _ in 0..24 {
        if u.is_empty() {
            break;
        }
        let Ok(e) = RawEvent::arbitrary(&mut u) else {
            break;
        };
        let mut next_hva = || {
            hvas += 1;
            0x7e00_0000_0000u64 + (hvas << 32)
        };
        let (kind, dest, fields) = match e {
            RawEvent::Incoming => {
                if waiting {
                    continue;
                }
                dests += 1;
                waiting = true;
                ("incoming", false, String::new())
            }
            RawEvent::Start => ("start", true, String::new()),
            RawEvent::Complete => ("complete", false, String::new()),
            RawEvent::Failback => ("failback", false, String::new()),
            RawEvent::Reset { dest } => ("reset", dest, String::new()),
            RawEvent::SvqPrepare {
                dest,
                queues,
                qsize,
            } => (
                "svq_prepare",
                dest,
                format!(
                    "queues = {}\nqueue_size = {}\nhva = \"{:#x}\"\n",
                    queues % 9 + 1,
                    1u32 << (qsize % 10),
                    next_hva()
                ),
            ),
            RawEvent::SvqSwitch { dest, cfg } => (
                "svq_switch",
                dest,
                cfg.map(|(q, z)| {
                    format!(
                        "queues = {}\nqueue_size = {}\nhva = \"{:#x}\"\n",
                        q % 9 + 1,
                        1u32 << (z % 10),
                        next_hva()
                    )
                })
                .unwrap_or_default(),
            ),
            RawEvent::Hotplug {
                dest,
                gpa,
                size,
                readonly,
            } => (
                "hotplug",
                dest,
                format!(
                    "gpa = \"{:#x}\"\nsize = \"{:#x}\"\nhva = \"{:#x}\"\nreadonly = {readonly}\n",
                    GPAS[usize::from(gpa) % GPAS.len()] + 0x10_0000_0000,
                    SIZES[usize::from(size) % SIZES.len()],
                    next_hva()
                ),
            ),
            RawEvent::Unplug { dest, gpa } => (
                "unplug",
                dest,
                format!(
                    "gpa = \"{:#x}\"\n",
                    GPAS[usize::from(gpa) % GPAS.len()] + (u64::from(gpa >> 7) << 36)
                ),
            ),
            RawEvent::CvqBuffers { dest } => (
                "cvq_buffers",
                dest,
                format!("hva = \"{:#x}\"\n", next_hva()),
            ),
            RawEvent::ViommuMap {
                dest,
                giova,
                size,
                gpa,
                perm,
            } => (
                "viommu_map",
                dest,
                format!(
                    "giova = \"{:#x}\"\nsize = \"{:#x}\"\ngpa = \"{:#x}\"\nperm = \"{}\"\n",
                    u64::from(giova) * 16 * PAGE,
                    (u64::from(size % 16) + 1) * PAGE,
                    GPAS[usize::from(gpa) % GPAS.len()] + u64::from(gpa >> 3) * PAGE,
                    ["ro", "wo", "rw"][usize::from(perm) % 3]
                ),
            ),
            RawEvent::ViommuUnmap { dest, giova, size } => (
                "viommu_unmap",
                dest,
                format!(
                    "giova = \"{:#x}\"\nsize = \"{:#x}\"\n",
                    u64::from(giova) * 16 * PAGE,
                    (u64::from(size % 16) + 1) * PAGE
                ),
            ),
        };
        // `start` only exists on a destination waiting for the stream,
        // vIOMMU events only with a vIOMMU: otherwise they are skipped.
        if (kind == "start" && !waiting) || (kind.starts_with("viommu") && !viommu) {
            continue;
        }
        // `dest` asks for the newest destination; otherwise the event
        // happens where the VM runs (the host field left out), which is
        // the newest destination once it started: several migrations in a
        // row.
        let _ = write!(t, "\n[[events]]\nkind = \"{kind}\"\n{fields}");
        if kind == "start" {
            waiting = false;
        } else if kind != "incoming" && dest && dests > 0 {
            let host = vdpa_adapter::scenario::Host::nth(dests).name();
            let _ = writeln!(t, "host = \"{host}\"");
        }
    }
    Some(t)
}

/// The fuzz target: the scenario [`render`] writes, run on both hosts
/// under every strategy. Refusals of bad events are fine; a plan the kernel
/// model refuses or a layout that does not check out is a planner bug.
pub fn migration_hosts(data: &[u8]) {
    let Some(text) = render(data) else {
        return;
    };
    let Ok(scn) = vdpa_adapter::Scenario::parse(&text, "fuzz") else {
        return;
    };
    for k in vdpa_adapter::StrategyKind::available(&scn) {
        if let Err(
            e @ (vdpa_adapter::AdapterError::KernelRule { .. }
            | vdpa_adapter::AdapterError::Layout { .. }),
        ) = vdpa_adapter::run(&scn, "fuzz", k)
        {
            panic!("{e}\n--- scenario\n{text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The point of the structure: nearly every input is a scenario the
    /// adapter accepts, with events on both hosts.
    #[test]
    fn rendered_scenarios_parse_and_reach_the_destination() {
        let mut state = 26u64;
        let (mut parsed, mut both, mut more) = (0, 0, 0);
        for _ in 0..200 {
            let data: Vec<u8> = (0..300)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 56) as u8
                })
                .collect();
            let text = render(&data).expect("300 bytes are enough for a setup");
            match vdpa_adapter::Scenario::parse(&text, "t") {
                Ok(s) => {
                    parsed += 1;
                    if s.hosts.contains(&vdpa_adapter::scenario::Host::DESTINATION) {
                        both += 1;
                    }
                    if s.host_count() > 2 {
                        more += 1;
                    }
                }
                Err(e) => eprintln!("{e}\n{text}"),
            }
        }
        assert!(parsed >= 190, "{parsed} of 200 parse");
        assert!(both >= 50, "{both} of 200 reach the destination");
        assert!(more >= 10, "{more} of 200 migrate more than once");
    }
}
