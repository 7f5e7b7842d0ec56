//! The scenario file format (TOML): a device, a guest, and a list of events.
//!
//! Numbers may be TOML integers (`0x8000_0000` works) or strings, which also
//! take values beyond 2^63 and size suffixes: `"0xffff_ffff_ffff_ffff"`,
//! `"64GiB"`, `"2M"`. Missing device keys take the defaults shown in the README.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use vdpa_iova_planner::verify::replay::StepError;
use vdpa_iova_planner::{
    DeviceCaps, DeviceRange, Event, Gpa, HostBuffer, Hva, Iova, MapStyle, PageSize, Perm,
    PlanError, RegionSpec, SvqConfig,
};

/// The event kinds of the format.
pub const KINDS: [&str; 12] = [
    "incoming",
    "start",
    "cvq_buffers",
    "svq_prepare",
    "svq_switch",
    "hotplug",
    "unplug",
    "failback",
    "complete",
    "reset",
    "viommu_map",
    "viommu_unmap",
];

use crate::error::AdapterError;

/// The built-in default scenario: a 64 GiB guest with a PCI hole, 8 queue
/// pairs plus a control queue, a migration that fails back and one that completes.
pub const DEFAULT_SCENARIO: &str = include_str!("../scenarios/default.toml");

/// A parsed, validated scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// Its name.
    pub name: String,
    /// The device.
    pub caps: DeviceCaps,
    /// `[device] max_entries`: entries the kernel allows per address space
    /// (vhost_vdpa's `max_iotlb_entries`), if given.
    pub max_entries: Option<u64>,
    /// `[guest] max_gpa`, if given.
    pub max_gpa: Option<u64>,
    /// `[guest] viommu_last` when `viommu = true`: the guest has a vIOMMU.
    pub viommu_last: Option<u64>,
    /// Regions present at boot.
    pub boot: Vec<RegionSpec>,
    /// Events after boot, in order, with the events each migration implies
    /// on its destination (see [`Scenario::parse`]).
    pub events: Vec<Event>,
    /// The host of each event of `events` (same length).
    pub hosts: Vec<Host>,
    /// Whether each event of `events` was written in the file (`false`:
    /// implied by a migration, such as the destination's `switchover`).
    pub written: Vec<bool>,
    /// Every migration, in order: its source and its destination.
    pub migrations: Vec<Migration>,
}

/// One host of a scenario, each with a device of its own: the VM's first
/// host ([`Host::SOURCE`]), then one per `incoming`, in order
/// ([`Host::DESTINATION`] for the first migration's destination).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Host(u32);

impl Host {
    /// The VM's first host.
    pub const SOURCE: Host = Host(0);
    /// The first migration's destination.
    pub const DESTINATION: Host = Host(1);

    /// The `n`th host: 0 is the first host, `n` the `n`th migration's destination.
    pub fn nth(n: u32) -> Host {
        Host(n)
    }

    /// The position of the host in the scenario: 0 for the first host,
    /// `n` for the `n`th migration's destination.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// Name in the scenario format and the reports: `source`,
    /// `destination`, then `destination 2`, `destination 3`...
    pub fn name(self) -> String {
        match self.0 {
            0 => "source".into(),
            1 => "destination".into(),
            n => format!("destination {n}"),
        }
    }

    /// The short name of the tables' host column: `src`, `dst`, `dst2`...
    pub fn short(self) -> String {
        match self.0 {
            0 => "src".into(),
            1 => "dst".into(),
            n => format!("dst{n}"),
        }
    }

    /// The host of a [`Host::name`] (`"destination 2"`), if it is one.
    pub fn parse(name: &str) -> Option<Host> {
        match name.trim() {
            "source" => Some(Host::SOURCE),
            "destination" => Some(Host::DESTINATION),
            other => {
                let n: u32 = other.strip_prefix("destination ")?.trim().parse().ok()?;
                (n >= 2).then_some(Host(n))
            }
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// One migration of a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migration {
    /// The host the VM ran on when its `incoming` came.
    pub source: Host,
    /// The host its `incoming` created.
    pub destination: Host,
}

/// The guest's live vIOMMU maps on one host, as its events change them:
/// what a destination is given at switchover. Keyed by first guest IOVA:
/// `(last guest IOVA, first GPA, perm)`.
#[derive(Clone, Debug, Default)]
struct GuestMaps(std::collections::BTreeMap<u64, (u64, u64, Perm)>);

impl GuestMaps {
    /// What a `viommu_map` the planner takes adds (one it refuses stops the
    /// run, so a bad one is never carried to a destination).
    fn map(&mut self, giova: u64, size: u64, gpa: u64, perm: Perm) {
        if size > 0 {
            if let Some(last) = giova.checked_add(size - 1) {
                self.0.insert(giova, (last, gpa, perm));
            }
        }
    }

    /// What a `viommu_unmap` removes: every map in the range goes, the
    /// parts of cut maps outside it stay (as the planners keep them).
    fn unmap(&mut self, giova: u64, size: u64) {
        let Some(last) = size.checked_sub(1).and_then(|s| giova.checked_add(s)) else {
            return;
        };
        let hit: Vec<u64> = self
            .0
            .iter()
            .filter(|(&f, &(l, _, _))| f <= last && l >= giova)
            .map(|(&f, _)| f)
            .collect();
        for f in hit {
            let (l, gpa, perm) = self.0.remove(&f).expect("listed above");
            if f < giova {
                self.0.insert(f, (giova - 1, gpa, perm));
            }
            if l > last {
                self.0.insert(last + 1, (l, gpa + (last + 1 - f), perm));
            }
        }
    }

    /// The maps as the events that make them again.
    fn events(&self) -> impl Iterator<Item = Event> + '_ {
        self.0.iter().map(|(&f, &(l, gpa, perm))| Event::ViommuMap {
            giova: Iova(f),
            size: l - f + 1,
            gpa: Gpa(gpa),
            perm,
        })
    }
}

/// A `u64` written as a TOML integer or as a string (hex, decimal, size suffix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Num(u64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative integer, or a string like \"0xffff_ffff_ffff_ffff\" or \"64GiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
                u64::try_from(v)
                    .map(Num)
                    .map_err(|_| E::custom(format!("{v} is negative")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
                Ok(Num(v))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Num, E> {
                parse_num(s)
                    .map(Num)
                    .ok_or_else(|| E::custom(format!("{s:?} is not a number")))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses `"0x1000"`, `"4096"`, `"4_096"`, `"64GiB"`, `"2M"` (binary units).
pub fn parse_num(s: &str) -> Option<u64> {
    let t: String = s.trim().chars().filter(|&c| c != '_').collect();
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(h, 16).ok();
    }
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" | "k" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: Option<String>,
    #[serde(default)]
    device: DeviceSection,
    #[serde(default)]
    guest: GuestSection,
    #[serde(default)]
    events: Vec<EventEntry>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeviceSection {
    iova_first: Option<Num>,
    iova_last: Option<Num>,
    page_size: Option<Num>,
    batching: Option<bool>,
    address_spaces: Option<u32>,
    desc_asid: Option<bool>,
    cvq_isolated: Option<bool>,
    persist: Option<bool>,
    pinning: Option<bool>,
    map_style: Option<String>,
    max_entries: Option<Num>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GuestSection {
    max_gpa: Option<Num>,
    #[serde(default)]
    viommu: bool,
    viommu_last: Option<Num>,
    #[serde(default)]
    regions: Vec<RegionEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionEntry {
    gpa: Num,
    size: Num,
    hva: Num,
    #[serde(default)]
    readonly: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventEntry {
    kind: String,
    queues: Option<u32>,
    queue_size: Option<u32>,
    hva: Option<Num>,
    gpa: Option<Num>,
    size: Option<Num>,
    readonly: Option<bool>,
    giova: Option<Num>,
    perm: Option<String>,
    host: Option<String>,
}

impl Scenario {
    /// Parses and validates a scenario; `origin` names the file in errors.
    ///
    /// # Hosts and migrations
    /// The VM boots on [`Host::SOURCE`]. Each `incoming` creates the next
    /// host, the destination of a migration from the host that runs the
    /// VM then, given that host's memory as it is then. Its `start` makes
    /// it the host that runs the VM: it can be the source of the next
    /// migration, and any number of migrations may follow one another.
    /// An event without `host` happens where the VM runs (`start`: on the
    /// destination waiting for it); `host` names another (`"source"`,
    /// `"destination"`, `"destination 2"`...).
    ///
    /// A migration's source `complete` stops the guest: its destination is
    /// then given a `switchover` event (everything it sends from then to
    /// its `start` is inside the downtime) and, with a vIOMMU, the guest's
    /// maps as they were on the source, which the migration stream carries.
    /// Memory hot-plugged into or unplugged from the source while its
    /// destination waits is plugged there too, at once (the destination's
    /// memory must match at switchover). These implied events follow the
    /// source's event in [`Scenario::events`].
    ///
    /// # Errors
    /// [`AdapterError::Scenario`] naming the file, and the event and field when
    /// the problem is in one.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, AdapterError> {
        let err = |what: String| AdapterError::Scenario {
            file: origin.to_string(),
            what,
        };
        let f: File =
            toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_string()))?;
        let d = f.device;
        let defaults = DeviceCaps::default();
        let range = DeviceRange::new(
            d.iova_first.map_or(defaults.range.first(), |n| n.0),
            d.iova_last.map_or(defaults.range.last(), |n| n.0),
        )
        .map_err(|e| err(format!("[device]: {e}")))?;
        let page_size = match d.page_size {
            Some(n) => PageSize::new(n.0).map_err(|e| err(format!("[device] page_size: {e}")))?,
            None => defaults.page_size,
        };
        let caps = DeviceCaps {
            range,
            page_size,
            batching: d.batching.unwrap_or(defaults.batching),
            address_spaces: d.address_spaces.unwrap_or(defaults.address_spaces),
            desc_asid: d.desc_asid.unwrap_or(defaults.desc_asid),
            cvq_isolated: d.cvq_isolated.unwrap_or(defaults.cvq_isolated),
            persist: d.persist.unwrap_or(defaults.persist),
            pinning: d.pinning.unwrap_or(defaults.pinning),
            map_style: match d.map_style.as_deref() {
                None => defaults.map_style,
                Some("set_map") => MapStyle::SetMap,
                Some("dma_map") => MapStyle::DmaMap,
                Some("platform") => MapStyle::Platform,
                Some(o) => {
                    return Err(err(format!(
                        "[device] map_style: {o:?} (expected set_map, dma_map or platform)"
                    )))
                }
            },
        };
        caps.validate().map_err(|e| err(format!("[device]: {e}")))?;
        let max_entries = match d.max_entries {
            Some(Num(0)) => {
                return Err(err(
                    "[device] max_entries: 0 (leave it out for no limit)".into()
                ))
            }
            n => n.map(|n| n.0),
        };
        let boot: Vec<RegionSpec> = f
            .guest
            .regions
            .iter()
            .map(|r| RegionSpec {
                gpa: Gpa(r.gpa.0),
                size: r.size.0,
                hva: Hva(r.hva.0),
                readonly: r.readonly,
            })
            .collect();
        let mut events = Vec::with_capacity(f.events.len());
        let mut hosts = Vec::with_capacity(f.events.len());
        let mut written = Vec::with_capacity(f.events.len());
        let mut migrations: Vec<Migration> = Vec::new();
        // Each host's memory and vIOMMU maps as its events change them:
        // what a destination is given at `incoming` and at switchover.
        let mut memory: Vec<Vec<RegionSpec>> = vec![boot.clone()];
        let mut maps: Vec<GuestMaps> = vec![GuestMaps::default()];
        // The host running the VM, and the destination waiting for the
        // stream (the last migration's, until its `start`).
        let mut running = Host::SOURCE;
        let mut waiting: Option<Host> = None;
        for (i, e) in f.events.iter().enumerate() {
            let at = |field: &str, what: &str| {
                err(format!(
                    "event {} ({}): field `{field}`: {what}",
                    i + 1,
                    e.kind
                ))
            };
            let need =
                |v: Option<Num>, field: &str| v.map(|n| n.0).ok_or_else(|| at(field, "missing"));
            let present = [
                ("queues", e.queues.is_some()),
                ("queue_size", e.queue_size.is_some()),
                ("hva", e.hva.is_some()),
                ("gpa", e.gpa.is_some()),
                ("size", e.size.is_some()),
                ("readonly", e.readonly.is_some()),
                ("giova", e.giova.is_some()),
                ("perm", e.perm.is_some()),
            ];
            let allowed: &[&str] = match e.kind.as_str() {
                "svq_prepare" | "svq_switch" => &["queues", "queue_size", "hva"],
                "hotplug" => &["gpa", "size", "hva", "readonly"],
                "cvq_buffers" => &["hva", "queue_size"],
                "unplug" => &["gpa"],
                "viommu_map" => &["giova", "size", "gpa", "perm"],
                "viommu_unmap" => &["giova", "size"],
                _ => &[],
            };
            if let Some((name, _)) = present
                .iter()
                .find(|(name, here)| *here && !allowed.contains(name))
            {
                if KINDS.contains(&e.kind.as_str()) {
                    return Err(at(name, "not used by this event"));
                }
            }
            let svq = |e: &EventEntry| -> Result<SvqConfig, AdapterError> {
                Ok(SvqConfig {
                    queues: e.queues.ok_or_else(|| at("queues", "missing"))?,
                    queue_size: e.queue_size.ok_or_else(|| at("queue_size", "missing"))?,
                    hva: Hva(need(e.hva, "hva")?),
                })
            };
            let mut ev = match e.kind.as_str() {
                "svq_prepare" => Event::SvqPrepare(svq(e)?),
                "svq_switch" => {
                    if e.queues.is_none() && e.queue_size.is_none() && e.hva.is_none() {
                        Event::SvqSwitch(None)
                    } else {
                        Event::SvqSwitch(Some(svq(e)?))
                    }
                }
                "hotplug" => Event::Hotplug(RegionSpec {
                    gpa: Gpa(need(e.gpa, "gpa")?),
                    size: need(e.size, "size")?,
                    hva: Hva(need(e.hva, "hva")?),
                    readonly: e.readonly.unwrap_or(false),
                }),
                "unplug" => Event::Unplug(Gpa(need(e.gpa, "gpa")?)),
                "failback" => Event::Failback,
                "complete" => Event::Complete,
                "reset" => Event::Reset,
                "viommu_map" => Event::ViommuMap {
                    giova: Iova(need(e.giova, "giova")?),
                    size: need(e.size, "size")?,
                    gpa: Gpa(need(e.gpa, "gpa")?),
                    perm: match e.perm.as_deref() {
                        None | Some("rw") => Perm::Rw,
                        Some("ro") => Perm::Ro,
                        Some("wo") => Perm::Wo,
                        Some(_) => return Err(at("perm", "expected ro, wo or rw")),
                    },
                },
                "viommu_unmap" => Event::ViommuUnmap {
                    giova: Iova(need(e.giova, "giova")?),
                    size: need(e.size, "size")?,
                },
                // Given the memory of the host running the VM below.
                "incoming" => Event::Incoming(Vec::new()),
                // The control virtqueue's two one-page buffers, as QEMU lays
                // them out: command out (the device reads it), then status
                // (the device writes it). With an isolated control queue,
                // shadowed alone for the VM's life, its shadow vring
                // follows: the driver area (descriptors and available ring,
                // read-only) and the device area (used ring, read-write) of
                // `queue_size` descriptors (default 64), page rounded.
                "cvq_buffers" => {
                    let hva = need(e.hva, "hva")?;
                    let page = caps.page_size;
                    let mut sizes = vec![(page.get(), Perm::Ro), (page.get(), Perm::Rw)];
                    match (caps.cvq_isolated, e.queue_size) {
                        (true, n) => {
                            let n = u64::from(n.unwrap_or(64));
                            if !n.is_power_of_two() || n > 32768 {
                                return Err(at(
                                    "queue_size",
                                    "must be a power of two of at most 32768",
                                ));
                            }
                            let up = |b: u64| page.align_up(b).expect("at most a few hundred KiB");
                            sizes.push((up(16 * n + 6 + 2 * n), Perm::Ro));
                            sizes.push((up(6 + 8 * n), Perm::Rw));
                        }
                        (false, Some(_)) => {
                            return Err(at(
                                "queue_size",
                                "only with [device] cvq_isolated (the control queue's own vring)",
                            ))
                        }
                        (false, None) => {}
                    }
                    let mut bufs = Vec::new();
                    let mut at_hva = hva;
                    for (size, perm) in sizes {
                        bufs.push(HostBuffer {
                            hva: Hva(at_hva),
                            size,
                            perm,
                        });
                        at_hva = at_hva.checked_add(size).ok_or_else(|| at("hva", "wraps"))?;
                    }
                    Event::HostBuffers(bufs)
                }
                "start" => Event::Start,
                other => {
                    return Err(err(format!(
                        "event {}: unknown kind {other:?} (expected {})",
                        i + 1,
                        KINDS.join(", ")
                    )))
                }
            };
            let viommu_event = matches!(ev, Event::ViommuMap { .. } | Event::ViommuUnmap { .. });
            if viommu_event && !f.guest.viommu {
                return Err(at("kind", "needs `[guest] viommu = true`"));
            }
            let named = match e.host.as_deref() {
                None => None,
                Some(name) => match Host::parse(name) {
                    // `incoming` names the host it creates (checked below).
                    Some(h) if h.index() < memory.len() || matches!(ev, Event::Incoming(_)) => {
                        Some(h)
                    }
                    Some(h) => {
                        return Err(at(
                            "host",
                            &format!("no {h} yet: each `incoming` creates the next destination"),
                        ))
                    }
                    None => {
                        return Err(at(
                            "host",
                            "expected source, destination, or destination N (N >= 2)",
                        ))
                    }
                },
            };
            let host = match &ev {
                Event::Incoming(_) => {
                    let new = Host(memory.len() as u32);
                    if let Some(w) = waiting {
                        return Err(at(
                            "kind",
                            &format!("{w} still waits for the stream: its `start` comes first"),
                        ));
                    }
                    if named.is_some_and(|h| h != new) {
                        return Err(at("host", &format!("`incoming` creates the {new}")));
                    }
                    new
                }
                Event::Start => {
                    let Some(w) = waiting else {
                        return Err(at("kind", "no destination waits for the stream"));
                    };
                    if named.is_some_and(|h| h != w) {
                        return Err(at("host", &format!("this event happens on the {w}")));
                    }
                    w
                }
                Event::Boot(_)
                | Event::Hotplug(_)
                | Event::Unplug(_)
                | Event::SvqPrepare(_)
                | Event::SvqSwitch(_)
                | Event::Failback
                | Event::Complete
                | Event::Switchover
                | Event::Reset
                | Event::HostBuffers(_)
                | Event::ViommuMap { .. }
                | Event::ViommuUnmap { .. } => named.unwrap_or(running),
            };
            match &ev {
                Event::Incoming(_) => {
                    // The destination is given the memory of the host
                    // that runs the VM.
                    ev = Event::Incoming(memory[running.index()].clone());
                    memory.push(memory[running.index()].clone());
                    maps.push(GuestMaps::default());
                    migrations.push(Migration {
                        source: running,
                        destination: host,
                    });
                    waiting = Some(host);
                }
                Event::Start => {
                    running = host;
                    waiting = None;
                }
                Event::Hotplug(r) => memory[host.index()].push(*r),
                Event::Unplug(g) => memory[host.index()].retain(|r| r.gpa != *g),
                Event::ViommuMap {
                    giova,
                    size,
                    gpa,
                    perm,
                } => maps[host.index()].map(giova.0, *size, gpa.0, *perm),
                Event::ViommuUnmap { giova, size } => maps[host.index()].unmap(giova.0, *size),
                Event::Boot(_)
                | Event::SvqPrepare(_)
                | Event::SvqSwitch(_)
                | Event::Failback
                | Event::Complete
                | Event::Switchover
                | Event::Reset
                | Event::HostBuffers(_) => {}
            }
            // The destination waiting for this host's guest, if any.
            let mirror = waiting.filter(|_| migrations.last().is_some_and(|m| m.source == host));
            let implied: Vec<Event> = match (&ev, mirror) {
                // The source stops for stop-and-copy: what its destination
                // learns from the rest of the stream.
                (Event::Complete, Some(w)) => {
                    maps[w.index()] = maps[host.index()].clone();
                    std::iter::once(Event::Switchover)
                        .chain(maps[host.index()].events())
                        .collect()
                }
                // Memory plugged into or unplugged from the source while a
                // destination waits is plugged there too (its VMM must
                // have the same memory at switchover), at once, while the
                // stream runs.
                (Event::Hotplug(r), Some(w)) => {
                    memory[w.index()].push(*r);
                    vec![ev.clone()]
                }
                (Event::Unplug(g), Some(w)) => {
                    memory[w.index()].retain(|r| r.gpa != *g);
                    vec![ev.clone()]
                }
                // Nothing else on the source reaches a waiting destination
                // (a vIOMMU's maps go with the stream, at `complete`).
                (
                    Event::Boot(_)
                    | Event::SvqPrepare(_)
                    | Event::SvqSwitch(_)
                    | Event::Failback
                    | Event::Incoming(_)
                    | Event::Switchover
                    | Event::Start
                    | Event::Reset
                    | Event::HostBuffers(_)
                    | Event::ViommuMap { .. }
                    | Event::ViommuUnmap { .. },
                    Some(_),
                )
                | (_, None) => Vec::new(),
            };
            events.push(ev);
            hosts.push(host);
            written.push(true);
            if let Some(w) = mirror {
                for ev in implied {
                    events.push(ev);
                    hosts.push(w);
                    written.push(false);
                }
            }
        }
        let viommu_last = match (f.guest.viommu, f.guest.viommu_last) {
            (true, Some(n)) => Some(n.0),
            (true, None) => return Err(err("[guest]: viommu = true needs viommu_last".into())),
            (false, Some(_)) => {
                return Err(err("[guest]: viommu_last without viommu = true".into()))
            }
            (false, None) => None,
        };
        Ok(Scenario {
            name: f.name.unwrap_or_else(|| origin.to_string()),
            caps,
            max_entries,
            max_gpa: f.guest.max_gpa.map(|n| n.0),
            viommu_last,
            boot,
            events,
            hosts,
            written,
            migrations,
        })
    }

    /// The hosts of the scenario: the first, and one per migration.
    pub fn host_count(&self) -> usize {
        self.migrations.len() + 1
    }

    /// Every step: boot first, then the events.
    pub fn steps(&self) -> impl Iterator<Item = Event> + '_ {
        std::iter::once(Event::Boot(self.boot.clone())).chain(self.events.iter().cloned())
    }

    /// Every step with its host: boot (on the source) first, then the events.
    pub fn host_steps(&self) -> impl Iterator<Item = (Host, Event)> + '_ {
        std::iter::once((Host::SOURCE, Event::Boot(self.boot.clone())))
            .chain(self.hosts.iter().copied().zip(self.events.iter().cloned()))
    }

    /// The events of one host, boot included for the source.
    pub fn steps_on(&self, host: Host) -> impl Iterator<Item = Event> + '_ {
        self.host_steps()
            .filter(move |(h, _)| *h == host)
            .map(|(_, e)| e)
    }
}

/// A plan the replay loop found malformed, or a device table that does not
/// hold what the strategy reports, after step `step`: a planner bug. Any
/// other [`StepError`] is not a bug and has its own error at the caller.
pub(crate) fn layout_error<E: fmt::Display>(
    file: &str,
    step: usize,
    ev: &Event,
    strategy: &str,
    e: StepError<E>,
) -> AdapterError {
    let what = match e {
        StepError::Layout(e) => e.to_string(),
        StepError::Shape(e) => format!("malformed plan: {e}"),
        other => other.to_string(),
    };
    AdapterError::Layout {
        file: file.to_string(),
        step,
        event: ev.name(),
        strategy: strategy.to_string(),
        what,
    }
}

/// Maps a planner refusal to the scenario's terms.
pub(crate) fn step_error(
    file: &str,
    step: usize,
    ev: &Event,
    strategy: &str,
    e: PlanError,
) -> AdapterError {
    AdapterError::Refused {
        file: file.to_string(),
        step,
        event: ev.name(),
        strategy: strategy.to_string(),
        source: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_num("0xffff_ffff_ffff_ffff"), Some(u64::MAX));
        assert_eq!(parse_num("64GiB"), Some(64 << 30));
        assert_eq!(parse_num("2M"), Some(2 << 20));
        assert_eq!(parse_num("4_096"), Some(4096));
        assert_eq!(parse_num("17179869184T"), None, "overflow");
        assert_eq!(parse_num("12 parsecs"), None);
        assert_eq!(parse_num(""), None);
    }

    /// `cvq_buffers`: the two buffers, and on a device with an isolated
    /// control queue its shadow vring after them (`queue_size`
    /// descriptors, default 64: driver area `16n + 6 + 2n` and device area
    /// `6 + 8n` bytes, each page rounded), back to back from `hva`.
    #[test]
    fn cvq_buffers_add_the_control_queue_vring_when_isolated() {
        let parse = |isolated: bool, queue_size: Option<&str>| {
            let text = format!(
                "[device]\naddress_spaces = 2\ncvq_isolated = {isolated}\n\
                 [[events]]\nkind = \"cvq_buffers\"\nhva = 0x10000\n{}",
                queue_size.map_or(String::new(), |q| format!("queue_size = {q}\n"))
            );
            Scenario::parse(&text, "cvq.toml").map(|s| match &s.events[..] {
                [Event::HostBuffers(b)] => b
                    .iter()
                    .map(|b| (b.hva.0, b.size, b.perm))
                    .collect::<Vec<_>>(),
                other => panic!("{other:?}"),
            })
        };
        let (ro, rw) = (Perm::Ro, Perm::Rw);
        assert_eq!(
            parse(false, None).unwrap(),
            vec![(0x10000, 0x1000, ro), (0x11000, 0x1000, rw)]
        );
        let two_buffers_then = |driver: u64, device: u64| {
            vec![
                (0x10000, 0x1000, ro),
                (0x11000, 0x1000, rw),
                (0x12000, driver, ro),
                (0x12000 + driver, device, rw),
            ]
        };
        // 64 descriptors: 1158 and 518 bytes, a page each.
        assert_eq!(parse(true, None).unwrap(), two_buffers_then(0x1000, 0x1000));
        // 1024: 18438 bytes (5 pages) and 8198 (3 pages).
        assert_eq!(
            parse(true, Some("1024")).unwrap(),
            two_buffers_then(0x5000, 0x3000)
        );
        // 32768, the largest: 589830 bytes (145 pages) and 262150 (65 pages).
        assert_eq!(
            parse(true, Some("32768")).unwrap(),
            two_buffers_then(145 * 0x1000, 65 * 0x1000)
        );
        for bad in ["100", "65536", "0"] {
            let e = parse(true, Some(bad)).unwrap_err().to_string();
            assert!(e.contains("power of two"), "{bad}: {e}");
        }
        let e = parse(false, Some("64")).unwrap_err().to_string();
        assert!(e.contains("only with [device] cvq_isolated"), "{e}");
    }

    /// What a destination is given at switchover: the source's live guest
    /// maps, a cut map as its remaining pieces (at their own GPAs), in guest
    /// IOVA order; a map the planner will refuse (size 0, or past 2^64) is
    /// never carried.
    #[test]
    fn guest_maps_follow_maps_and_unmaps() {
        let mut m = GuestMaps::default();
        m.map(0x10_0000, 0x4000, 0x20_0000, Perm::Rw);
        m.map(0x1000, 0x1000, 0x9000, Perm::Ro);
        m.map(0x50_0000, 0, 0x1000, Perm::Rw);
        m.map(u64::MAX - 0xfff, 0x2000, 0x1000, Perm::Rw);
        // The middle page of the first map, and nothing at all.
        m.unmap(0x10_1000, 0x1000);
        m.unmap(0x80_0000, 0x1000);
        m.unmap(0x1000, 0);
        let got: Vec<(u64, u64, u64, Perm)> = m
            .events()
            .map(|e| match e {
                Event::ViommuMap {
                    giova,
                    size,
                    gpa,
                    perm,
                } => (giova.0, size, gpa.0, perm),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            [
                (0x1000, 0x1000, 0x9000, Perm::Ro),
                (0x10_0000, 0x1000, 0x20_0000, Perm::Rw),
                (0x10_2000, 0x2000, 0x20_2000, Perm::Rw),
            ]
        );
        // An unmap covering everything leaves nothing.
        m.unmap(0, u64::MAX);
        assert_eq!(m.events().count(), 0);
    }

    #[test]
    fn default_scenario_parses() {
        let s = Scenario::parse(DEFAULT_SCENARIO, "default").unwrap();
        assert_eq!(s.boot.iter().map(|r| r.size).sum::<u64>(), 64 << 30);
        assert!(s.events.contains(&Event::Failback) && s.events.contains(&Event::Complete));
    }

    #[test]
    fn errors_name_event_and_field() {
        let e = Scenario::parse(
            "[[events]]\nkind = \"hotplug\"\ngpa = 0\nsize = 4096\n",
            "x.toml",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "x.toml: event 1 (hotplug): field `hva`: missing"
        );
        let e =
            Scenario::parse("[[events]]\nkind = \"failback\"\nqueues = 2\n", "x.toml").unwrap_err();
        assert!(e.to_string().contains("field `queues`: not used"), "{e}");
        let e = Scenario::parse("[device]\niova_lats = 5\n", "x.toml").unwrap_err();
        assert!(e.to_string().starts_with("x.toml: "), "{e}");
        assert!(e.to_string().contains("iova_lats"), "{e}");
        let e = Scenario::parse("[device]\npage_size = 1000\n", "x.toml").unwrap_err();
        assert!(e.to_string().contains("page_size"), "{e}");
        let e = Scenario::parse("[guest]\nmax_gpa = -1\n", "x.toml").unwrap_err();
        assert!(e.to_string().contains("negative"), "{e}");
        let s = Scenario::parse(
            "[device]\niova_last = \"0xffff_ffff_ffff_ffff\"\n",
            "x.toml",
        )
        .unwrap();
        assert_eq!(s.caps.range.last(), u64::MAX);
        for (text, want) in [
            ("[guest]\nviommu = true\n", "needs viommu_last"),
            ("[guest]\nviommu_last = 4096\n", "without viommu = true"),
            ("[device]\nmap_style = \"setmap\"\n", "map_style"),
            ("[device]\nmax_entries = 0\n", "max_entries: 0"),
            (
                "[[events]]\nkind = \"viommu_unmap\"\ngiova = 0\nsize = 4096\n",
                "needs `[guest] viommu = true`",
            ),
            (
                "[guest]\nviommu = true\nviommu_last = 4096\n[[events]]\nkind = \"viommu_map\"\ngiova = 0\nsize = 4096\ngpa = 0\nperm = \"x\"\n",
                "field `perm`",
            ),
            ("[[events]]\nkind = \"reset\"\ngpa = 0\n", "field `gpa`: not used"),
        ] {
            let e = Scenario::parse(text, "x.toml").unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        let s = Scenario::parse(
            "[device]\nmap_style = \"dma_map\"\n[guest]\nviommu = true\nviommu_last = \"1T\"\n[[events]]\nkind = \"viommu_map\"\ngiova = 0x1000\nsize = 4096\ngpa = 0\nperm = \"wo\"\n[[events]]\nkind = \"reset\"\n",
            "x.toml",
        )
        .unwrap();
        assert_eq!(s.caps.map_style, MapStyle::DmaMap);
        assert_eq!(s.viommu_last, Some(1 << 40));
        assert_eq!(s.events[1], Event::Reset);
        assert!(matches!(
            s.events[0],
            Event::ViommuMap { perm: Perm::Wo, .. }
        ));
    }
}
