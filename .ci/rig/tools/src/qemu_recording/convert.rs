//! From a recording (one QEMU process's trace, its files in order) to the
//! scenario it implies and the plan QEMU sent, step by step.
//!
//! * The scenario: the device's capabilities (`vhost_vdpa_get_iova_range`,
//!   batching seen, the control queue's group bound to address space 1);
//!   the guest memory regions, which are the listener's sections live when
//!   the machine-creation reset unregisters the listener
//!   (`vhost_vdpa_listener_region_add` / `_del`: RAM, and the ROM pieces
//!   read-only); the host buffers of the control queue (the host addresses
//!   of the UPDATEs QEMU sends in address space 1 at the device's first
//!   start: its command and status buffers, then its shadow vring; their
//!   sizes and access are QEMU's rules: a page each for the buffers, the
//!   vring's areas from the control queue's size; read-only, writable,
//!   read-only, writable);
//!   the shadow virtqueue config (the data queues' count and size,
//!   `vhost_vdpa_set_vring_num`); and the steps.
//! * The steps: QEMU creates the device's listener at netdev creation and
//!   the machine-creation reset unregisters it, on a source as on a
//!   destination, so every recording starts with [`Event::Incoming`] (up to
//!   the first `vhost_vdpa_dev_start`), then [`Event::HostBuffers`] and
//!   [`Event::Start`] (the guest's driver sets DRIVER_OK, or the destination
//!   starts after the stream). On a source, `migrate_set_state setup` starts
//!   an [`Event::SvqSwitch`], `cancelling` or `failed` an [`Event::Failback`],
//!   the VM's stop while migrating (`vm_state_notify running 0`) an
//!   [`Event::Complete`]. When the listener registers again (a device
//!   start) with other sections than before, the memory map changed while
//!   it was away: [`Event::Unplug`] of each section gone and
//!   [`Event::Hotplug`] of each new one come first (they send nothing in
//!   QEMU, whose listener was not registered, nor in the baseline, which
//!   maps them at the start).
//! * The plan: every `vhost_vdpa_dma_map` (UPDATE), `vhost_vdpa_dma_unmap`
//!   (INVALIDATE), `vhost_vdpa_listener_begin_batch` and `_commit` (BATCH
//!   BEGIN/END), in order, with asid, iova, size and perm, and where each
//!   host address lies ([`Host`]).

use std::collections::BTreeMap;
use std::fmt;

use vdpa_iova_planner::{
    Address, DeviceCaps, DeviceRange, Event, Gpa, HostBuffer, Hva, MapStyle, PageSize, Perm,
    RegionSpec, SvqConfig,
};

use super::parse::{Line, Record};

/// Which host a recording is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A QEMU started normally: boot, migrations out of it.
    Source,
    /// A QEMU started with `-incoming`.
    Destination,
}

/// A recording that does not convert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvertError(pub String);

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConvertError {}

/// Where a message's host address lies, relative to what the scenario
/// declares: so two plans compare whatever the absolute addresses are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Host {
    /// Guest memory region `index` (in GPA order), `offset` bytes in.
    Region {
        /// Index in [`Scenario::regions`].
        index: usize,
        /// Bytes from the region's first byte.
        offset: u64,
    },
    /// Host buffer `index` of [`Scenario::buffers`], `offset` bytes in.
    Buffer {
        /// Index.
        index: usize,
        /// Bytes from its first byte.
        offset: u64,
    },
    /// A data queue's shadow vring (QEMU allocates each on its own: only
    /// the order and sizes compare).
    Ring,
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Region { index, offset } => write!(f, "region {index}+{offset:#x}"),
            Host::Buffer { index, offset } => write!(f, "buffer {index}+{offset:#x}"),
            Host::Ring => f.write_str("shadow vring"),
        }
    }
}

/// One IOTLB message, as compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgKind {
    /// BATCH_BEGIN.
    Begin,
    /// BATCH_END.
    End,
    /// UPDATE.
    Update,
    /// INVALIDATE.
    Invalidate,
}

/// One message of a plan, recorded or planned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msg {
    /// Its type.
    pub kind: MsgKind,
    /// Address space (0 for batch markers, which QEMU's trace does not tag).
    pub asid: u32,
    /// First IOVA (UPDATE, INVALIDATE).
    pub iova: u64,
    /// Bytes (UPDATE, INVALIDATE).
    pub size: u64,
    /// Access (UPDATE): 1 read-only, 3 read-write.
    pub perm: u8,
    /// Where the host memory lies: for an UPDATE its host address, for an
    /// INVALIDATE that of the UPDATE that made the entry.
    pub host: Option<Host>,
    /// The trace line (recorded messages), for error messages.
    pub line: usize,
}

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            MsgKind::Begin => f.write_str("BATCH_BEGIN"),
            MsgKind::End => f.write_str("BATCH_END"),
            MsgKind::Update | MsgKind::Invalidate => {
                let t = if self.kind == MsgKind::Update {
                    "UPDATE"
                } else {
                    "INVALIDATE"
                };
                write!(
                    f,
                    "{t} asid {} iova {:#x} size {:#x}",
                    self.asid, self.iova, self.size
                )?;
                if self.kind == MsgKind::Update {
                    write!(f, " perm {}", self.perm)?;
                }
                match self.host {
                    Some(h) => write!(f, " ({h})"),
                    None => f.write_str(" (unknown host memory)"),
                }
            }
        }
    }
}

/// A step: the event fed to the baseline, and what QEMU sent for it.
#[derive(Clone, Debug)]
pub struct Step {
    /// The event.
    pub event: Event,
    /// What QEMU sent, in order.
    pub msgs: Vec<Msg>,
    /// The trace lines it spans (first, last), and their times (µs).
    pub lines: (usize, usize),
    /// Time of the step's first and last trace line (µs since the epoch).
    pub times: (i64, i64),
}

/// What a recording implies and what QEMU sent.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The recording's name.
    pub name: String,
    /// Source or destination.
    pub role: Role,
    /// The device as QEMU saw it.
    pub caps: DeviceCaps,
    /// Guest memory: the sections, in GPA order.
    pub regions: Vec<RegionSpec>,
    /// The control queue's host buffers (isolated control queue: its
    /// command and status buffers, then its shadow vring's two areas).
    pub buffers: Vec<HostBuffer>,
    /// The shadow virtqueues of a switch (the data queues).
    pub svq: SvqConfig,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// What QEMU sent once the rig quit it (the running VM stopped outside
    /// a migration: its device stopped; no step of the scenario, not
    /// compared).
    pub trailing: Vec<Msg>,
}

const PAGE: u64 = 4096;

/// Where `hva` lies among `regions`, `buffers` and the block of shadow
/// vrings `rings` (`None`: anywhere else is a shadow vring).
pub fn locate(
    regions: &[RegionSpec],
    buffers: &[HostBuffer],
    rings: Option<(u64, u64)>,
    hva: u64,
) -> Option<Host> {
    if let Some(index) = regions
        .iter()
        .position(|r| hva >= r.hva.raw() && hva - r.hva.raw() < r.size)
    {
        return Some(Host::Region {
            index,
            offset: hva - regions[index].hva.raw(),
        });
    }
    if let Some(index) = buffers
        .iter()
        .position(|b| hva >= b.hva.raw() && hva - b.hva.raw() < b.size)
    {
        return Some(Host::Buffer {
            index,
            offset: hva - buffers[index].hva.raw(),
        });
    }
    match rings {
        Some((f, l)) if (f..=l).contains(&hva) => Some(Host::Ring),
        Some(_) => None,
        None => Some(Host::Ring),
    }
}

/// Kinds of step boundaries, before the events are built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Incoming,
    Start,
    Switch,
    Failback,
    Complete,
    Exit,
}

/// Converts one recording. `lines` are its trace lines, every file of the
/// process in order.
///
/// # Errors
/// A recording without the events every QEMU start traces (the IOVA range,
/// sections, a device start), a message whose fields make no valid
/// IOVA/host span, or a section the scenario cannot hold.
pub fn convert(name: &str, role: Role, lines: &[Line]) -> Result<Scenario, ConvertError> {
    let err = |m: String| ConvertError(format!("{name}: {m}"));
    // 1. Cut the lines into steps.
    let mut cuts: Vec<(Kind, usize)> = vec![(Kind::Incoming, 0)];
    let mut live: BTreeMap<u64, (u64, u64, bool)> = BTreeMap::new();
    let mut board: Option<Vec<(u64, u64, u64, bool)>> = None;
    let mut range = None;
    let mut vring_num: BTreeMap<u32, u32> = BTreeMap::new();
    let mut isolated = false;
    let mut batching = false;
    let mut migrating = false;
    let mut cur = Kind::Incoming;
    for (i, l) in lines.iter().enumerate() {
        let mut cut = |k: Kind, cur: &mut Kind| {
            cuts.push((k, i));
            *cur = k;
        };
        match &l.record {
            Record::IovaRange { first, last } => range = Some((*first, *last)),
            Record::VringNum { index, num } => {
                vring_num.insert(*index, *num);
            }
            Record::SetAsid { asid, .. } if *asid != 0 => isolated = true,
            Record::BatchBegin => batching = true,
            Record::RegionAdd {
                gpa,
                end,
                hva,
                readonly,
            } => {
                live.insert(*gpa, (*end, *hva, *readonly));
            }
            // The machine-creation reset unregisters the listener: the
            // sections live then are the board's memory.
            Record::Reset if board.is_none() && cur == Kind::Incoming && !live.is_empty() => {
                board = Some(live.iter().map(|(&g, &(e, h, r))| (g, e, h, r)).collect());
            }
            Record::RegionDel { gpa, .. } => {
                live.remove(gpa);
            }
            Record::DevStart { started: true } if cur == Kind::Incoming => {
                if board.is_none() {
                    board = Some(live.iter().map(|(&g, &(e, h, r))| (g, e, h, r)).collect());
                }
                cut(Kind::Start, &mut cur);
            }
            Record::Migration(s) if role == Role::Source => match s.as_str() {
                "setup" => {
                    migrating = true;
                    cut(Kind::Switch, &mut cur);
                }
                "cancelling" | "failed" if cur != Kind::Failback => {
                    migrating = false;
                    cut(Kind::Failback, &mut cur);
                }
                "completed" | "cancelled" => migrating = false,
                _ => {}
            },
            Record::VmRunning(false) if role == Role::Source && migrating => {
                cut(Kind::Complete, &mut cur);
            }
            // The rig quits QEMU at the end: what it sends once the running
            // VM stops outside a migration is its shutdown, no step of the
            // scenario.
            Record::VmRunning(false)
                if !migrating && cur != Kind::Incoming && cur != Kind::Exit =>
            {
                cut(Kind::Exit, &mut cur);
            }
            _ => {}
        }
    }
    let (first, last) = range.ok_or_else(|| err("no vhost_vdpa_get_iova_range".into()))?;
    let board = board.ok_or_else(|| err("no device start and no reset: no board memory".into()))?;
    if !cuts.iter().any(|(k, _)| *k == Kind::Start) {
        return Err(err(
            "no vhost_vdpa_dev_start: the device never started".into()
        ));
    }
    let page = PageSize::new(PAGE).expect("4 KiB");
    let caps = DeviceCaps {
        range: DeviceRange::new(first, last).map_err(|e| err(format!("IOVA range: {e}")))?,
        page_size: page,
        batching,
        address_spaces: if isolated { 2 } else { 1 },
        desc_asid: false,
        cvq_isolated: isolated,
        persist: false,
        pinning: true,
        map_style: MapStyle::SetMap,
    };
    let spec = |&(g, e, h, r): &(u64, u64, u64, bool)| -> Result<RegionSpec, ConvertError> {
        if e <= g || g % PAGE != 0 || e % PAGE != 0 || h % PAGE != 0 {
            return Err(err(format!(
                "section {g:#x}..{e:#x} at {h:#x} is not page aligned"
            )));
        }
        Ok(RegionSpec {
            gpa: Gpa(g),
            size: e - g,
            hva: Hva(h),
            readonly: r,
        })
    };
    let regions: Vec<RegionSpec> = board.iter().map(spec).collect::<Result<_, _>>()?;

    // 2. The messages of each step, and the host buffers: the UPDATEs of
    //    the first start in an address space other than 0.
    let mut steps_raw: Vec<(Kind, usize, usize)> = Vec::new();
    for (n, &(k, at)) in cuts.iter().enumerate() {
        let end = cuts.get(n + 1).map_or(lines.len(), |c| c.1);
        steps_raw.push((k, at, end));
    }
    let mut buffers = Vec::new();
    if let Some(&(_, a, b)) = steps_raw.iter().find(|s| s.0 == Kind::Start) {
        for l in &lines[a..b] {
            if let Record::Map {
                asid,
                size,
                uaddr,
                perm,
                ..
            } = l.record
            {
                if asid != 0 {
                    buffers.push(HostBuffer {
                        hva: Hva(uaddr),
                        size,
                        perm: perm_of(perm).map_err(|m| err(format!("line {}: {m}", l.line)))?,
                    });
                }
            }
        }
    }
    // The access of the control queue's four host buffers is QEMU's, not
    // the recording's: `vhost_vdpa_cvq_map_buf` maps the command buffer
    // read-only and the status buffer writable, `vhost_vdpa_svq_map_rings`
    // the driver area read-only and the device area writable.
    // Their sizes too: a page each for the buffers (the command buffer's
    // `vhost_vdpa_net_cvq_cmd_page_len`), and the vring's two areas
    // rounded up to pages, descriptors and available ring together
    // (`vhost_svq_driver_area_size`, `vhost_svq_device_area_size`).
    let has_cvq = vring_num.len() % 2 == 1;
    if buffers.len() == 4 {
        let n = u64::from(*vring_num.values().next_back().unwrap_or(&0));
        if !has_cvq || n == 0 {
            return Err(err(
                "control queue buffers without a control queue size".into()
            ));
        }
        let up = |b: u64| b.div_ceil(PAGE) * PAGE;
        let sizes = [PAGE, PAGE, up(16 * n + 6 + 2 * n), up(6 + 8 * n)];
        let perms = [Perm::Ro, Perm::Rw, Perm::Ro, Perm::Rw];
        for ((b, p), size) in buffers.iter_mut().zip(perms).zip(sizes) {
            b.perm = p;
            b.size = size;
        }
    }
    let data_queues = vring_num.len() as u32 - u32::from(has_cvq);
    let queue_size = vring_num.values().next().copied().unwrap_or(256);
    // The shadow vrings' host block: anywhere the scenario does not use
    // (QEMU allocates each vring on its own; only offsets within compare).
    let top = regions
        .iter()
        .map(|r| r.hva.raw() + r.size)
        .chain(buffers.iter().map(|b| b.hva.raw() + b.size))
        .chain(lines.iter().filter_map(|l| match l.record {
            Record::Map { uaddr, size, .. } => Some(uaddr.saturating_add(size)),
            _ => None,
        }))
        .max()
        .unwrap_or(0);
    let svq = SvqConfig {
        queues: data_queues.max(1),
        queue_size,
        hva: Hva(top.div_ceil(1 << 30).saturating_add(1) << 30),
    };

    // 3. The steps' messages, each INVALIDATE tagged with what its entry mapped.
    let mut entries: BTreeMap<(u32, u64, u64), Host> = BTreeMap::new();
    let mut steps = Vec::new();
    // Every region ever declared, in order (host addresses are located in
    // it, by the baseline's side too), and the memory map now.
    let mut known_regions = regions.clone();
    let mut current = regions.clone();
    let mut trailing = Vec::new();
    for &(k, a, b) in &steps_raw {
        // The listener registers again (a device start): the sections it
        // adds are the memory map now. The guest's firmware changes it
        // while the listener is away (SeaBIOS sets the PAM registers: low
        // RAM under the BIOS becomes RAM pieces, read-only and not), which
        // the baseline learns as unplugs and hotplugs before the step.
        if k != Kind::Incoming && k != Kind::Exit {
            let mut adds: Vec<RegionSpec> = Vec::new();
            for l in &lines[a..b] {
                if let Record::RegionAdd {
                    gpa,
                    end,
                    hva,
                    readonly,
                } = l.record
                {
                    let r = spec(&(gpa, end, hva, readonly))?;
                    if !adds.contains(&r) {
                        adds.push(r);
                    }
                }
            }
            adds.sort_by_key(|r| r.gpa.raw());
            if !adds.is_empty() && adds != current {
                let at = (lines[a].line, lines[a].time_us);
                let none = |event| Step {
                    event,
                    msgs: Vec::new(),
                    lines: (at.0, at.0),
                    times: (at.1, at.1),
                };
                for r in current.iter().filter(|r| !adds.contains(r)) {
                    steps.push(none(Event::Unplug(r.gpa)));
                }
                for r in adds.iter().filter(|r| !current.contains(r)) {
                    steps.push(none(Event::Hotplug(*r)));
                    known_regions.push(*r);
                }
                current = adds;
            }
        }
        let mut msgs = Vec::new();
        // How many UPDATEs after the control queue's status buffer are its
        // shadow vring's areas, still to come in this step.
        let mut cvq_ring = 0usize;
        for l in &lines[a..b] {
            let m = match l.record {
                Record::BatchBegin => Msg {
                    kind: MsgKind::Begin,
                    asid: 0,
                    iova: 0,
                    size: 0,
                    perm: 0,
                    host: None,
                    line: l.line,
                },
                Record::BatchEnd => Msg {
                    kind: MsgKind::End,
                    asid: 0,
                    iova: 0,
                    size: 0,
                    perm: 0,
                    host: None,
                    line: l.line,
                },
                Record::Map {
                    asid,
                    iova,
                    size,
                    uaddr,
                    perm,
                } => {
                    // The control queue's shadow vring (buffers 2 and 3)
                    // is found by its place only: its memory is freed at each
                    // stop and may hold another vring at the next start.
                    let stable = &buffers[..buffers.len().min(2)];
                    let mut host = locate(&known_regions, stable, None, uaddr);
                    // QEMU allocates the control queue's shadow vring anew
                    // at every start (`vhost_svq_start` maps fresh memory):
                    // its two areas are known by their place, the two UPDATEs
                    // right after its status buffer's (`vhost_vdpa_net_cvq_start`
                    // maps the buffers, then `vhost_vdpa_svqs_start` the vring).
                    if buffers.len() == 4 {
                        if cvq_ring > 0 && host == Some(Host::Ring) {
                            host = Some(Host::Buffer {
                                index: 4 - cvq_ring,
                                offset: 0,
                            });
                            cvq_ring -= 1;
                        } else if host
                            == Some(Host::Buffer {
                                index: 1,
                                offset: 0,
                            })
                        {
                            cvq_ring = 2;
                        } else {
                            cvq_ring = 0;
                        }
                    }
                    if let Some(h) = host {
                        entries.insert((asid, iova, size), h);
                    }
                    Msg {
                        kind: MsgKind::Update,
                        asid,
                        iova,
                        size,
                        perm,
                        host,
                        line: l.line,
                    }
                }
                Record::Unmap { asid, iova, size } => Msg {
                    kind: MsgKind::Invalidate,
                    asid,
                    iova,
                    size,
                    perm: 0,
                    host: entries.remove(&(asid, iova, size)),
                    line: l.line,
                },
                _ => continue,
            };
            msgs.push(m);
        }
        let event = match k {
            Kind::Exit => {
                trailing.extend(msgs);
                continue;
            }
            Kind::Incoming => Event::Incoming(regions.clone()),
            Kind::Start => Event::Start,
            Kind::Switch => Event::SvqSwitch(Some(svq)),
            Kind::Failback => Event::Failback,
            Kind::Complete => Event::Complete,
        };
        if k == Kind::Start {
            // Declared before the start, sends nothing by itself.
            steps.push(Step {
                event: Event::HostBuffers(buffers.clone()),
                msgs: Vec::new(),
                lines: (lines[a].line, lines[a].line),
                times: (lines[a].time_us, lines[a].time_us),
            });
        }
        let (fl, ll) = (lines.get(a), lines.get(b.max(a + 1) - 1));
        steps.push(Step {
            event,
            msgs,
            lines: (fl.map_or(0, |l| l.line), ll.map_or(0, |l| l.line)),
            times: (fl.map_or(0, |l| l.time_us), ll.map_or(0, |l| l.time_us)),
        });
    }
    Ok(Scenario {
        name: name.to_string(),
        role,
        caps,
        regions,
        buffers,
        svq,
        steps,
        trailing,
    })
}

/// `VHOST_ACCESS_*` as a [`Perm`].
fn perm_of(p: u8) -> Result<Perm, String> {
    match p {
        1 => Ok(Perm::Ro),
        2 => Ok(Perm::Wo),
        3 => Ok(Perm::Rw),
        _ => Err(format!("access {p} is not a VHOST_ACCESS_* value")),
    }
}
