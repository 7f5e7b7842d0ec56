//! The baseline: what QEMU's vhost-vdpa backend does today
//! (`hw/virtio/vhost-vdpa.c`, QEMU 8.x/9.x), reproduced message for message so
//! every comparison runs against the real thing.
//!
//! * Passthrough: each RAM section is mapped at IOVA == GPA, inside one
//!   memory-listener transaction (a batch, when the device batches). A section
//!   whose GPA range is not wholly inside the device's IOVA range is skipped
//!   ("RAM section out of device range"), in every mode.
//! * Switch to SVQ (the device is stopped and started again): the listener
//!   unregisters (every guest map invalidated, one batch), then the shadow
//!   vrings are mapped one message each (driver area read-only, device area
//!   read-write), then the listener registers again and re-maps every section
//!   at an IOVA from QEMU's IOVA tree: first fit, from `max(first, page size)`.
//!   Every guest page is unpinned and pinned again while the device is stopped.
//! * Failback: ring unmaps, every guest map invalidated, every section mapped
//!   at identity again: all pinned again, device stopped.
//! * Hotplug and unplug: one listener transaction each.
//! * QEMU has no prepare step: `svq_prepare` only records the parameters.

use std::collections::BTreeMap;

use smallvec::smallvec;

use crate::addr::{Address, Gpa, Hva, Iova, Span};
use crate::caps::DeviceCaps;
use crate::error::PlanError;
use crate::plan::{plan_from_ops, Op, OpKind, Perm, Phase, Plan};
use crate::planner::{translate_map, xlate_entry, XlateMap};
use crate::strategy::{validate_regions, Mode, Piece, Placement, RegionSpec, Segments, Strategy};
use crate::svq::{areas, QueueLayout, SvqConfig, VringArea};

const ASID: u32 = 0;

#[derive(Clone, Debug)]
struct QRegion {
    gpa: Span<Gpa>,
    hva: Hva,
    perm: Perm,
    iova: Option<Span<Iova>>,
}

#[derive(Clone, Debug)]
struct QSvq {
    cfg: SvqConfig,
    layout: QueueLayout,
    /// Per queue: driver area (desc + avail) and device area IOVAs.
    rings: Vec<(Span<Iova>, Span<Iova>)>,
}

/// QEMU's behaviour today. See the [module documentation](self).
#[derive(Clone, Debug)]
pub struct QemuPlanner {
    caps: DeviceCaps,
    mode: Mode,
    regions: BTreeMap<u64, QRegion>,
    xlate: XlateMap,
    prepared: Option<SvqConfig>,
    svq: Option<QSvq>,
    /// QEMU's IOVA tree in SVQ mode: allocated `first -> last`.
    tree: BTreeMap<u64, u64>,
}

impl QemuPlanner {
    /// A baseline planner for a device with `caps`.
    ///
    /// # Errors
    /// Capabilities that fail [`DeviceCaps::validate`].
    pub fn new(caps: DeviceCaps) -> Result<Self, PlanError> {
        caps.validate()?;
        Ok(QemuPlanner {
            caps,
            mode: Mode::Passthrough,
            regions: BTreeMap::new(),
            xlate: XlateMap::new(),
            prepared: None,
            svq: None,
            tree: BTreeMap::new(),
        })
    }

    fn out_of_order(&self, event: &'static str) -> PlanError {
        PlanError::OutOfOrder {
            event,
            mode: self.mode,
        }
    }

    fn in_range(&self, g: &Span<Gpa>) -> bool {
        self.caps.range.contains_span(g)
    }

    /// First fit over the gaps of `tree`, as `iova_tree_alloc_map` does.
    fn first_fit(
        caps: &DeviceCaps,
        tree: &BTreeMap<u64, u64>,
        size: u64,
        purpose: &'static str,
    ) -> Result<Span<Iova>, PlanError> {
        let p = caps.page_size;
        let lo = p.align_up(caps.range.first().max(p.get()));
        let hi = caps.range.last();
        let err = || PlanError::OutOfIova {
            needed: size,
            purpose,
            window: lo.map(|l| (l, hi)),
            largest_free: 0,
        };
        let mut cur = lo.ok_or_else(err)?;
        for (&f, &l) in tree {
            if f > cur && f - cur >= size {
                break;
            }
            if l >= cur {
                cur = match l.checked_add(1) {
                    Some(c) => c,
                    None => return Err(err()),
                };
            }
        }
        match cur.checked_add(size - 1) {
            Some(last) if last <= hi => Ok(Span::trusted(cur, size)),
            _ => Err(err()),
        }
    }

    fn batch(&self, ops: &mut Vec<Op>, phase: Phase, body: Vec<OpKind>) {
        if body.is_empty() {
            return;
        }
        let wrap = self.caps.batching;
        if wrap {
            ops.push(Op {
                phase,
                asid: ASID,
                kind: OpKind::BatchBegin,
            });
        }
        ops.extend(body.into_iter().map(|kind| Op {
            phase,
            asid: ASID,
            kind,
        }));
        if wrap {
            ops.push(Op {
                phase,
                asid: ASID,
                kind: OpKind::BatchEnd,
            });
        }
    }

    fn set_xlate(&mut self, r: &QRegion) {
        let (f, l) = r.gpa.bounds();
        self.xlate.remove(f..=l);
        if let Some(i) = r.iova {
            self.xlate
                .insert(f..=l, xlate_entry(i.first().raw().wrapping_sub(f), r.perm));
        }
    }

    fn unmap_guest(&self) -> Vec<OpKind> {
        self.regions
            .values()
            .filter_map(|r| r.iova)
            .map(|iova| OpKind::Invalidate { iova })
            .collect()
    }

    fn ring_unmaps(&self, ops: &mut Vec<Op>, phase: Phase) {
        if let Some(s) = &self.svq {
            for (d, u) in &s.rings {
                ops.push(Op {
                    phase,
                    asid: ASID,
                    kind: OpKind::Invalidate { iova: *d },
                });
                ops.push(Op {
                    phase,
                    asid: ASID,
                    kind: OpKind::Invalidate { iova: *u },
                });
            }
        }
    }
}

impl Strategy for QemuPlanner {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn caps(&self) -> &DeviceCaps {
        &self.caps
    }

    fn mode(&self) -> Mode {
        self.mode
    }

    fn add_regions(&mut self, specs: &[RegionSpec]) -> Result<Plan, PlanError> {
        if self.mode == Mode::Completed {
            return Err(self.out_of_order("hotplug"));
        }
        let specs = validate_regions(&self.caps, specs, |f, l| {
            let (_, r) = self.regions.range(..=l).next_back()?;
            (r.gpa.last().raw() >= f).then(|| r.gpa.bounds())
        })?;
        let mut tree = self.tree.clone();
        let mut body = Vec::new();
        let mut new = Vec::new();
        for (g, spec) in specs {
            let mut r = QRegion {
                gpa: g,
                hva: spec.hva,
                perm: spec.perm(),
                iova: None,
            };
            if self.in_range(&g) {
                let iova = if self.mode == Mode::Svq {
                    let i = Self::first_fit(&self.caps, &tree, g.size(), "guest memory")?;
                    tree.insert(i.first().raw(), i.last().raw());
                    i
                } else {
                    Span::trusted(g.first().raw(), g.size())
                };
                body.push(OpKind::Update {
                    iova,
                    hva: r.hva,
                    perm: r.perm,
                });
                r.iova = Some(iova);
            }
            new.push(r);
        }
        let mut ops = Vec::new();
        self.batch(&mut ops, Phase::Prepare, body);
        self.tree = tree;
        for r in new {
            self.set_xlate(&r);
            self.regions.insert(r.gpa.first().raw(), r);
        }
        Ok(plan_from_ops(ops, &self.caps))
    }

    fn remove_region(&mut self, gpa: Gpa) -> Result<Plan, PlanError> {
        if self.mode == Mode::Completed {
            return Err(self.out_of_order("unplug"));
        }
        let r = self
            .regions
            .get(&gpa.raw())
            .ok_or(PlanError::UnknownRegion { gpa: gpa.raw() })?;
        let mut ops = Vec::new();
        self.batch(
            &mut ops,
            Phase::Prepare,
            r.iova
                .map(|iova| OpKind::Invalidate { iova })
                .into_iter()
                .collect(),
        );
        let r = self.regions.remove(&gpa.raw()).expect("looked up above");
        if let (Some(i), Mode::Svq) = (r.iova, self.mode) {
            self.tree.remove(&i.first().raw());
        }
        let (f, l) = r.gpa.bounds();
        self.xlate.remove(f..=l);
        Ok(plan_from_ops(ops, &self.caps))
    }

    fn svq_prepare(&mut self, cfg: SvqConfig) -> Result<Plan, PlanError> {
        if self.mode != Mode::Passthrough {
            return Err(self.out_of_order("svq_prepare"));
        }
        cfg.layout(self.caps.page_size)?;
        self.prepared = Some(cfg);
        self.mode = Mode::Prepared;
        Ok(Plan::default())
    }

    fn svq_switch(&mut self, cfg: Option<SvqConfig>) -> Result<Plan, PlanError> {
        let cfg = match (self.mode, self.prepared, cfg) {
            (Mode::Prepared, Some(c), _) => c,
            (Mode::Passthrough, _, Some(c)) => c,
            (Mode::Passthrough, _, None) => return Err(PlanError::MissingSvqConfig),
            _ => return Err(self.out_of_order("svq_switch")),
        };
        let layout = cfg.layout(self.caps.page_size)?;
        let phase = Phase::Critical;
        let mut tree = BTreeMap::new();
        let mut rings = Vec::with_capacity(cfg.queues as usize);
        let mut ring_ops = Vec::new();
        for vq in 0..cfg.queues {
            let [desc, _, dev] = areas(&cfg, &layout, vq, 0);
            let d = Self::first_fit(&self.caps, &tree, layout.ro(), "shadow vrings")?;
            tree.insert(d.first().raw(), d.last().raw());
            let u = Self::first_fit(&self.caps, &tree, layout.device, "shadow vrings")?;
            tree.insert(u.first().raw(), u.last().raw());
            ring_ops.push(Op {
                phase,
                asid: ASID,
                kind: OpKind::Update {
                    iova: d,
                    hva: desc.hva,
                    perm: Perm::Ro,
                },
            });
            ring_ops.push(Op {
                phase,
                asid: ASID,
                kind: OpKind::Update {
                    iova: u,
                    hva: dev.hva,
                    perm: Perm::Rw,
                },
            });
            rings.push((d, u));
        }
        let mut placed = Vec::new();
        let mut maps = Vec::new();
        for r in self.regions.values() {
            if !self.in_range(&r.gpa) {
                continue;
            }
            let i = Self::first_fit(&self.caps, &tree, r.gpa.size(), "guest memory")?;
            tree.insert(i.first().raw(), i.last().raw());
            maps.push(OpKind::Update {
                iova: i,
                hva: r.hva,
                perm: r.perm,
            });
            placed.push((r.gpa.first().raw(), i));
        }
        let mut ops = Vec::new();
        self.batch(&mut ops, phase, self.unmap_guest());
        ops.extend(ring_ops);
        self.batch(&mut ops, phase, maps);
        self.tree = tree;
        self.svq = Some(QSvq { cfg, layout, rings });
        for (k, i) in placed {
            let r = self.regions.get_mut(&k).expect("present");
            r.iova = Some(i);
            let r = r.clone();
            self.set_xlate(&r);
        }
        self.prepared = None;
        self.mode = Mode::Svq;
        Ok(plan_from_ops(ops, &self.caps))
    }

    fn failback(&mut self) -> Result<Plan, PlanError> {
        match self.mode {
            Mode::Prepared => {
                self.prepared = None;
                self.mode = Mode::Passthrough;
                Ok(Plan::default())
            }
            Mode::Svq => {
                let phase = Phase::Critical;
                let mut ops = Vec::new();
                self.ring_unmaps(&mut ops, phase);
                self.batch(&mut ops, phase, self.unmap_guest());
                let maps: Vec<OpKind> = self
                    .regions
                    .values()
                    .filter(|r| self.in_range(&r.gpa))
                    .map(|r| OpKind::Update {
                        iova: Span::trusted(r.gpa.first().raw(), r.gpa.size()),
                        hva: r.hva,
                        perm: r.perm,
                    })
                    .collect();
                self.batch(&mut ops, phase, maps);
                self.svq = None;
                self.tree.clear();
                let keys: Vec<u64> = self.regions.keys().copied().collect();
                for k in keys {
                    let inr = self.in_range(&self.regions[&k].gpa);
                    let r = self.regions.get_mut(&k).expect("present");
                    r.iova = inr.then(|| Span::trusted(r.gpa.first().raw(), r.gpa.size()));
                    let r = r.clone();
                    self.set_xlate(&r);
                }
                self.mode = Mode::Passthrough;
                Ok(plan_from_ops(ops, &self.caps))
            }
            _ => Err(self.out_of_order("failback")),
        }
    }

    fn complete(&mut self) -> Result<Plan, PlanError> {
        if self.mode != Mode::Svq {
            return Err(self.out_of_order("complete"));
        }
        let phase = Phase::Background;
        let mut ops = Vec::new();
        self.ring_unmaps(&mut ops, phase);
        self.batch(&mut ops, phase, self.unmap_guest());
        self.svq = None;
        self.tree.clear();
        for r in self.regions.values_mut() {
            r.iova = None;
        }
        self.xlate = XlateMap::new();
        self.mode = Mode::Completed;
        Ok(plan_from_ops(ops, &self.caps))
    }

    fn placements(&self) -> Vec<Placement> {
        self.regions
            .values()
            .map(|r| Placement {
                gpa: r.gpa,
                hva: r.hva,
                perm: r.perm,
                pieces: match r.iova {
                    Some(iova) => smallvec![Piece { gpa: r.gpa, iova }],
                    None => smallvec![],
                },
            })
            .collect()
    }

    fn vring_areas(&self) -> Vec<VringArea> {
        let Some(s) = &self.svq else {
            return Vec::new();
        };
        s.rings
            .iter()
            .enumerate()
            .flat_map(|(vq, (d, u))| {
                let mut a = areas(&s.cfg, &s.layout, vq as u32, d.first().raw());
                // QEMU's device area is allocated on its own.
                a[2].iova = *u;
                a
            })
            .collect()
    }

    fn translate(&self, gpa: Gpa, len: u64) -> Result<Segments, PlanError> {
        translate_map(&self.xlate, gpa, len, |g| {
            self.regions
                .range(..=g)
                .next_back()
                .is_some_and(|(_, r)| r.gpa.contains(Gpa(g)))
        })
    }
}
