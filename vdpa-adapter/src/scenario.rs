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
    /// Events after boot, in order.
    pub events: Vec<Event>,
    /// The host of each event of `events` (same length).
    pub hosts: Vec<Host>,
}

/// Which host of a migration an event happens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// The VM's host before the migration (and after a failed one).
    Source,
    /// The host the VM migrates to: from `incoming` on.
    Destination,
}

impl Host {
    /// Name in the scenario format and the reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Host::Source => "source",
            Host::Destination => "destination",
        }
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
        // The source's memory as the events change it: what a destination
        // created at `incoming` is given.
        let mut memory: Vec<RegionSpec> = boot.clone();
        let mut incoming = false;
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
            let ev = match e.kind.as_str() {
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
                "incoming" => Event::Incoming(memory.clone()),
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
            let dest_only = matches!(ev, Event::Incoming(_) | Event::Start);
            let host = match (e.host.as_deref(), dest_only) {
                (None, true) | (Some("destination"), _) => Host::Destination,
                (None, false) | (Some("source"), false) => Host::Source,
                (Some("source"), true) => {
                    return Err(at("host", "this event happens on the destination"))
                }
                (Some(_), _) => return Err(at("host", "expected source or destination")),
            };
            match (&ev, host) {
                (Event::Incoming(_), _) if incoming => {
                    return Err(at("kind", "a scenario has one destination"))
                }
                (Event::Incoming(_), _) => incoming = true,
                (_, Host::Destination) if !incoming => {
                    return Err(at("host", "no destination yet: `incoming` comes first"))
                }
                _ => {}
            }
            if host == Host::Source {
                match &ev {
                    Event::Hotplug(r) => memory.push(*r),
                    Event::Unplug(g) => memory.retain(|r| r.gpa != *g),
                    _ => {}
                }
            }
            events.push(ev);
            hosts.push(host);
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
        })
    }

    /// Every step: boot first, then the events.
    pub fn steps(&self) -> impl Iterator<Item = Event> + '_ {
        std::iter::once(Event::Boot(self.boot.clone())).chain(self.events.iter().cloned())
    }

    /// Every step with its host: boot (on the source) first, then the events.
    pub fn host_steps(&self) -> impl Iterator<Item = (Host, Event)> + '_ {
        std::iter::once((Host::Source, Event::Boot(self.boot.clone())))
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
