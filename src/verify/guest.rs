//! What the device must reach, tracked from accepted events alone.

use crate::addr::Gpa;
use crate::addr::{Address, Hva, Span};
use crate::event::{Event, RegionSpec};
use crate::vocab::Perm;

/// One range of the device's untranslated address space a strategy must
/// keep reachable: a guest region (its GPAs), or with a guest vIOMMU one
/// guest map (its guest IOVAs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GuestUnit {
    /// The addresses the guest hands the device.
    pub addr: Span<Gpa>,
    /// Host address of the first byte.
    pub hva: Hva,
    /// Device access.
    pub perm: Perm,
}

/// What the device must be able to reach, tracked from accepted events
/// alone with plain vectors, independently of any strategy's data
/// structures: what [`crate::layout::check`] compares a strategy with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestView {
    viommu: bool,
    memory: Vec<RegionSpec>,
    maps: Vec<GuestUnit>,
}

impl GuestView {
    /// An empty view; `viommu` when the guest has a vIOMMU.
    pub fn new(viommu: bool) -> Self {
        GuestView {
            viommu,
            ..GuestView::default()
        }
    }

    /// Whether the guest has a vIOMMU.
    pub fn viommu(&self) -> bool {
        self.viommu
    }

    /// Guest memory regions.
    pub fn memory(&self) -> &[RegionSpec] {
        &self.memory
    }

    /// Updates the view for an event the strategy **accepted**.
    pub fn track(&mut self, ev: &Event) {
        match ev {
            Event::Boot(r) | Event::Incoming(r) => self.memory.extend(r),
            Event::Hotplug(r) => self.memory.push(*r),
            Event::Unplug(g) => self.memory.retain(|r| r.gpa != *g),
            Event::ViommuMap {
                giova,
                size,
                gpa,
                perm,
            } => {
                let r = self
                    .memory
                    .iter()
                    .find(|r| r.gpa.raw() <= gpa.raw() && gpa.raw() - r.gpa.raw() < r.size)
                    .expect("an accepted guest map lies in guest memory");
                self.maps.push(GuestUnit {
                    addr: Span::trusted(giova.raw(), *size),
                    hva: Hva(r.hva.raw() + (gpa.raw() - r.gpa.raw())),
                    perm: *perm,
                });
            }
            Event::ViommuUnmap { giova, size } => {
                let (f, l) = (giova.raw(), giova.raw() + (size - 1));
                let mut out = Vec::with_capacity(self.maps.len() + 1);
                for m in self.maps.drain(..) {
                    let (mf, ml) = m.addr.bounds();
                    if ml < f || mf > l {
                        out.push(m);
                        continue;
                    }
                    if mf < f {
                        out.push(GuestUnit {
                            addr: Span::trusted(mf, f - mf),
                            ..m
                        });
                    }
                    if ml > l {
                        out.push(GuestUnit {
                            addr: Span::trusted(l + 1, ml - l),
                            hva: Hva(m.hva.raw() + (l + 1 - mf)),
                            perm: m.perm,
                        });
                    }
                }
                self.maps = out;
            }
            // What the guest can reach does not change with the device's
            // mode, a reset or host buffers.
            Event::SvqPrepare(_)
            | Event::SvqSwitch(_)
            | Event::Failback
            | Event::Complete
            | Event::Switchover
            | Event::Start
            | Event::Reset
            | Event::HostBuffers(_) => {}
        }
    }

    /// What must be reachable, sorted: the regions, or the guest maps.
    pub fn units(&self) -> Vec<GuestUnit> {
        let mut v: Vec<GuestUnit> = if self.viommu {
            self.maps.clone()
        } else {
            self.memory
                .iter()
                .map(|r| GuestUnit {
                    addr: Span::trusted(r.gpa.raw(), r.size),
                    hva: r.hva,
                    perm: r.perm(),
                })
                .collect()
        };
        v.sort_unstable();
        v
    }
}
