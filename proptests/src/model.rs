//! The reference model of what the device must reach, page by page, and
//! which events the planner must accept: plain vectors and a map from page
//! number to host page, written from the rules, not from the
//! planner's code.

use std::collections::BTreeMap;

use vdpa_iova_planner::{DeviceCaps, Event, Perm, RegionSpec, SvqConfig};

/// The page size every model and generator here uses.
pub const PAGE: u64 = 4096;

/// The planner's mode as the model follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelMode {
    /// Guest rings, nothing prepared.
    Passthrough,
    /// Shadow vrings mapped, guest rings still in use.
    Prepared,
    /// Shadow rings in use.
    Svq,
    /// Migration done.
    Completed,
    /// A destination waiting for the stream.
    Incoming,
    /// A destination after the source stopped: paused until start.
    Switchover,
}

/// What the planner must answer to an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// It must plan it.
    Accept,
    /// It must refuse it (bad input or out of order).
    Refuse,
    /// It plans it unless the device is out of IOVA space.
    AcceptUnlessOutOfIova,
}

/// The reference: guest memory, guest maps and mode, updated only by events
/// the planner accepted.
#[derive(Clone, Debug)]
pub struct PageModel {
    /// The device.
    pub caps: DeviceCaps,
    /// `Some(viommu_last)` when the guest has a vIOMMU.
    pub viommu_last: Option<u64>,
    /// Guest memory: (gpa, size, hva, readonly).
    pub regions: Vec<(u64, u64, u64, bool)>,
    /// Every guest device-address page (GPA, or guest IOVA with a vIOMMU)
    /// the device must reach, to (host page, perm).
    pub pages: BTreeMap<u64, (u64, Perm)>,
    /// The mode.
    pub mode: ModelMode,
    /// Queues of the shadow vrings, while prepared or in SVQ mode.
    pub queues: u32,
    /// Sizes of the host buffers declared (mapped with the vrings).
    pub buffers: Vec<u64>,
}

fn span_ok(first: u64, size: u64) -> bool {
    size != 0 && first % PAGE == 0 && size % PAGE == 0 && first.checked_add(size - 1).is_some()
}

fn overlaps(a: u64, asz: u64, b: u64, bsz: u64) -> bool {
    a <= b + (bsz - 1) && b <= a + (asz - 1)
}

/// Whether a shadow virtqueue configuration is valid, from the virtio rules.
pub fn svq_ok(c: &SvqConfig) -> bool {
    if c.queues == 0 || c.queues > 65536 || !c.queue_size.is_power_of_two() || c.queue_size > 32768
    {
        return false;
    }
    let n = u64::from(c.queue_size);
    let up = |b: u64| b.div_ceil(PAGE) * PAGE;
    let total = (up(16 * n) + up(6 + 2 * n) + up(6 + 8 * n)) * u64::from(c.queues);
    span_ok(c.hva.0, total)
}

impl PageModel {
    /// An empty guest on a device.
    pub fn new(caps: DeviceCaps, viommu_last: Option<u64>) -> Self {
        PageModel {
            caps,
            viommu_last,
            regions: Vec::new(),
            pages: BTreeMap::new(),
            mode: ModelMode::Passthrough,
            queues: 0,
            buffers: Vec::new(),
        }
    }

    fn regions_ok(&self, new: &[RegionSpec]) -> bool {
        let mut all: Vec<(u64, u64)> = self.regions.iter().map(|r| (r.0, r.1)).collect();
        for r in new {
            if !span_ok(r.gpa.0, r.size) || !span_ok(r.hva.0, r.size) {
                return false;
            }
            if all.iter().any(|&(g, s)| overlaps(g, s, r.gpa.0, r.size)) {
                return false;
            }
            all.push((r.gpa.0, r.size));
        }
        true
    }

    /// The region holding `[gpa, gpa + size)` whole.
    fn region_of(&self, gpa: u64, size: u64) -> Option<(u64, u64, u64, bool)> {
        self.regions
            .iter()
            .copied()
            .find(|&(g, s, _, _)| g <= gpa && size <= s && gpa - g <= s - size)
    }

    /// What the planner must answer to `ev` now.
    pub fn expect(&self, ev: &Event) -> Expect {
        use Expect::*;
        let busy = matches!(self.mode, ModelMode::Prepared | ModelMode::Svq);
        let map_may_fail = if busy && self.viommu_last.is_none() {
            AcceptUnlessOutOfIova
        } else {
            Accept
        };
        match ev {
            Event::Boot(r) => {
                if self.mode == ModelMode::Completed || !self.regions_ok(r) {
                    Refuse
                } else if r.is_empty() {
                    Accept
                } else {
                    map_may_fail
                }
            }
            Event::Incoming(r) => {
                let fresh = self.mode == ModelMode::Passthrough
                    && self.regions.is_empty()
                    && self.pages.is_empty();
                if fresh && self.regions_ok(r) {
                    Accept
                } else {
                    Refuse
                }
            }
            Event::Switchover => {
                if self.mode == ModelMode::Incoming {
                    Accept
                } else {
                    Refuse
                }
            }
            Event::Start => {
                if matches!(self.mode, ModelMode::Incoming | ModelMode::Switchover) {
                    Accept
                } else {
                    Refuse
                }
            }
            Event::HostBuffers(bs) => {
                let waiting = matches!(
                    self.mode,
                    ModelMode::Passthrough | ModelMode::Incoming | ModelMode::Switchover
                );
                if waiting && bs.iter().all(|b| span_ok(b.hva.0, b.size)) {
                    Accept
                } else {
                    Refuse
                }
            }
            Event::Hotplug(r) => self.expect(&Event::Boot(vec![*r])),
            Event::Unplug(g) => {
                if self.mode == ModelMode::Completed {
                    return Refuse;
                }
                let Some(&(_, size, hva, _)) = self.regions.iter().find(|r| r.0 == g.0) else {
                    return Refuse;
                };
                if self.viommu_last.is_some()
                    && self
                        .pages
                        .values()
                        .any(|&(h, _)| h >= hva && h - hva < size)
                {
                    return Refuse;
                }
                Accept
            }
            Event::SvqPrepare(c) => {
                if self.mode != ModelMode::Passthrough || !svq_ok(c) {
                    Refuse
                } else {
                    AcceptUnlessOutOfIova
                }
            }
            Event::SvqSwitch(c) => match (self.mode, c) {
                (ModelMode::Prepared, _) => Accept,
                (ModelMode::Passthrough, Some(c)) if svq_ok(c) => AcceptUnlessOutOfIova,
                _ => Refuse,
            },
            Event::Failback => {
                if busy {
                    Accept
                } else {
                    Refuse
                }
            }
            Event::Complete => {
                if self.mode == ModelMode::Svq {
                    Accept
                } else {
                    Refuse
                }
            }
            Event::Reset => Accept,
            Event::ViommuMap {
                giova,
                size,
                gpa,
                perm,
            } => {
                let Some(last) = self.viommu_last else {
                    return Refuse;
                };
                if self.mode == ModelMode::Completed
                    || !span_ok(giova.0, *size)
                    || !span_ok(gpa.0, *size)
                    || giova.0 + (size - 1) > last
                {
                    return Refuse;
                }
                let Some((_, _, _, ro)) = self.region_of(gpa.0, *size) else {
                    return Refuse;
                };
                if ro && *perm != Perm::Ro {
                    return Refuse;
                }
                if self
                    .pages
                    .range(giova.0..=giova.0 + (size - 1))
                    .next()
                    .is_some()
                {
                    return Refuse;
                }
                if busy {
                    AcceptUnlessOutOfIova
                } else {
                    Accept
                }
            }
            Event::ViommuUnmap { giova, size } => {
                if self.viommu_last.is_none()
                    || self.mode == ModelMode::Completed
                    || !span_ok(giova.0, *size)
                    || self
                        .pages
                        .range(giova.0..=giova.0 + (size - 1))
                        .next()
                        .is_none()
                {
                    Refuse
                } else {
                    Accept
                }
            }
        }
    }

    /// Applies an event the planner accepted.
    pub fn apply(&mut self, ev: &Event) {
        let viommu = self.viommu_last.is_some();
        match ev {
            Event::Boot(rs) => {
                for r in rs {
                    let perm = if r.readonly { Perm::Ro } else { Perm::Rw };
                    self.regions.push((r.gpa.0, r.size, r.hva.0, r.readonly));
                    if !viommu {
                        for i in 0..r.size / PAGE {
                            self.pages
                                .insert(r.gpa.0 + i * PAGE, (r.hva.0 + i * PAGE, perm));
                        }
                    }
                }
            }
            Event::Hotplug(r) => self.apply(&Event::Boot(vec![*r])),
            Event::Incoming(rs) => {
                self.apply(&Event::Boot(rs.clone()));
                self.mode = ModelMode::Incoming;
            }
            Event::Switchover => self.mode = ModelMode::Switchover,
            Event::Start => self.mode = ModelMode::Passthrough,
            Event::HostBuffers(bs) => self.buffers.extend(bs.iter().map(|b| b.size)),
            Event::Unplug(g) => {
                let i = self
                    .regions
                    .iter()
                    .position(|r| r.0 == g.0)
                    .expect("accepted");
                let (gpa, size, _, _) = self.regions.remove(i);
                if !viommu {
                    for i in 0..size / PAGE {
                        self.pages.remove(&(gpa + i * PAGE));
                    }
                }
            }
            Event::SvqPrepare(c) => {
                self.mode = ModelMode::Prepared;
                self.queues = c.queues;
            }
            Event::SvqSwitch(c) => {
                if self.mode == ModelMode::Passthrough {
                    self.queues = c.expect("accepted").queues;
                }
                self.mode = ModelMode::Svq;
            }
            Event::Failback => {
                self.mode = ModelMode::Passthrough;
                self.queues = 0;
            }
            Event::Complete => {
                self.mode = ModelMode::Completed;
                self.queues = 0;
            }
            Event::Reset => {}
            Event::ViommuMap {
                giova,
                size,
                gpa,
                perm,
            } => {
                let (g, _, hva, _) = self.region_of(gpa.0, *size).expect("accepted");
                for i in 0..size / PAGE {
                    self.pages
                        .insert(giova.0 + i * PAGE, (hva + (gpa.0 - g) + i * PAGE, *perm));
                }
            }
            Event::ViommuUnmap { giova, size } => {
                for i in 0..size / PAGE {
                    self.pages.remove(&(giova.0 + i * PAGE));
                }
            }
        }
    }
}
