//! Applying plans to a device so that nothing is lost when the kernel says no.
//!
//! [`Applier`] keeps a mirror of the device's table as of the last plan that
//! went through whole (the *committed* state, a strict [`KernelIotlb`]).
//! Before a plan is sent it is replayed on a copy of the mirror, so the adapter
//! never sends what the kernel would refuse; on a pinning device the bytes it
//! pins are checked against `RLIMIT_MEMLOCK`; on a `use_va` device every
//! UPDATE's host range must be a shared, file-backed mapping, since the kernel
//! silently skips anything else. If the kernel refuses a message anyway
//! (userspace sees EFAULT whatever the cause), the adapter stops, works out
//! the likely cause, and undoes the plan's messages already applied, so the
//! device's table equals the committed state again.

use std::io;
use std::time::{Duration, Instant};

use vdpa_iova_planner::kernel::{Applied, KernelIotlb, MsgType, RawMsg, Violation};
use vdpa_iova_planner::{DeviceCaps, Op, OpKind, Phase, Plan};

use crate::host::procfs::{first_unshared, Limits, Mapping};
use crate::sink::{tables, MsgSink};
use crate::uapi::{self, MsgFormat, MSG_LEN};

/// Why a plan did not go through.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The kernel model refuses an op: nothing was sent.
    #[error("operation {op} would be refused by the kernel: {violation}; nothing was sent")]
    WouldRefuse {
        /// Index of the op in the plan.
        op: usize,
        /// The rule.
        violation: Box<Violation>,
    },
    /// The plan pins more than `RLIMIT_MEMLOCK` allows: nothing was sent.
    #[error("the plan needs {needed} bytes pinned at its peak but RLIMIT_MEMLOCK allows {limit} ({pinned_now} pinned now); raise it (ulimit -l, LimitMEMLOCK= for a service); nothing was sent")]
    Memlock {
        /// Bytes pinned by this process at the plan's peak.
        needed: u64,
        /// The limit.
        limit: u64,
        /// Pinned before the plan.
        pinned_now: u64,
    },
    /// An address space would hold more entries than vhost-vdpa allows:
    /// nothing was sent.
    #[error("operation {op} would add an entry to address space {asid}, which already holds the {limit} entries vhost-vdpa allows (module parameter max_iotlb_entries){pinning}; nothing was sent")]
    Entries {
        /// Index of the op.
        op: usize,
        /// The address space.
        asid: u32,
        /// The limit.
        limit: u64,
        /// A note for pinning devices, where this is a lower bound.
        pinning: &'static str,
    },
    /// A use_va device would silently skip private or anonymous memory.
    #[error("operation {op} maps hva {hva:#x}, which is {what}: a use_va device silently skips it (use memfd or hugetlbfs memory, mapped shared); nothing was sent")]
    NotShared {
        /// Index of the op.
        op: usize,
        /// First offending host address.
        hva: u64,
        /// What is mapped there.
        what: String,
    },
    /// An op cannot be encoded in the negotiated format: nothing was sent.
    #[error("operation {op}: {source}; nothing was sent")]
    Encode {
        /// Index of the op.
        op: usize,
        /// Why.
        source: uapi::CodecError,
    },
    /// The kernel refused a message; what was applied of the plan was undone.
    #[error("operation {op} ({kind}) refused by the device: {source}; likely cause: {cause}; the {undone} operations already applied were undone and the device holds the last committed table again")]
    Refused {
        /// Index of the op.
        op: usize,
        /// Its kind.
        kind: &'static str,
        /// The kernel's error (EFAULT), or a short write.
        source: io::Error,
        /// The likely cause worked out from the model and the limits.
        cause: String,
        /// Ops undone.
        undone: usize,
    },
    /// The kernel refused a message and the undo failed too: the device's
    /// table is the model's view after the last successful message.
    #[error("operation {op} refused by the device ({source}), and undoing the plan failed at undo message {undo_at} ({undo_error}): the device table is unknown past that point")]
    RollbackFailed {
        /// Index of the op.
        op: usize,
        /// The first error.
        source: io::Error,
        /// Index of the failed undo message.
        undo_at: usize,
        /// The undo error.
        undo_error: io::Error,
    },
}

/// What a plan cost on the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Messages written.
    pub messages: usize,
    /// Wall time of the critical phase (first to last critical message).
    pub critical: Duration,
    /// Wall time of the whole plan.
    pub total: Duration,
}

/// Plans applied to one device, with the committed mirror of its table.
#[derive(Clone, Debug)]
pub struct Applier<D: MsgSink> {
    dev: D,
    format: MsgFormat,
    caps: DeviceCaps,
    committed: KernelIotlb,
}

/// A message as sent, with its op index in the plan (`None` for undo
/// messages and batch markers the applier adds).
type Wire = (Option<usize>, RawMsg);

impl<D: MsgSink> Applier<D> {
    /// An applier for a device with nothing mapped.
    pub fn new(dev: D, caps: DeviceCaps, format: MsgFormat) -> Self {
        Applier {
            dev,
            format,
            caps,
            committed: KernelIotlb::new(&caps),
        }
    }

    /// The committed mirror of the device's table.
    pub fn committed(&self) -> &KernelIotlb {
        &self.committed
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// Resets the device (`VHOST_VDPA_SET_STATUS` 0 on a real one); the
    /// mirror forgets what the device forgets.
    ///
    /// # Errors
    /// The reset's error; the mirror is then unchanged.
    pub fn device_reset(&mut self) -> io::Result<()> {
        self.dev.reset()?;
        self.committed.reset_device();
        Ok(())
    }

    /// Checks a plan against the mirror and the limits without sending it.
    ///
    /// # Errors
    /// [`ApplyError::WouldRefuse`], [`ApplyError::Memlock`], [`ApplyError::NotShared`]
    /// or [`ApplyError::Encode`].
    pub fn precheck(
        &self,
        plan: &Plan,
        limits: &Limits,
        maps: Option<&[Mapping]>,
    ) -> Result<(), ApplyError> {
        self.checked_wire(plan, limits, maps).map(drop)
    }

    /// The checks of [`Applier::precheck`]; when they pass, every op of the
    /// plan as the message that [`Applier::apply`] writes for it, so that
    /// each is encoded once.
    fn checked_wire(
        &self,
        plan: &Plan,
        limits: &Limits,
        maps: Option<&[Mapping]>,
    ) -> Result<Vec<[u8; MSG_LEN]>, ApplyError> {
        let mut wire = Vec::with_capacity(plan.ops().len());
        let mut trial = self.committed.clone().with_entry_limit(
            limits
                .max_entries
                .map(|n| n.try_into().unwrap_or(usize::MAX)),
        );
        let table_bytes = |k: &KernelIotlb| -> u64 {
            (0..self.caps.address_spaces.min(64))
                .flat_map(|a| k.entries(a))
                .map(|e| e.iova.size())
                .sum()
        };
        let start = table_bytes(&trial);
        let mut cur = start;
        let mut peak = start;
        for (i, op) in plan.ops().iter().enumerate() {
            wire.push(
                uapi::encode(&RawMsg::from(op), self.format)
                    .map_err(|source| ApplyError::Encode { op: i, source })?,
            );
            match trial.apply(op) {
                Ok(Applied::Mapped(e)) => cur += e.iova.size(),
                Ok(Applied::Unmapped(v)) => cur -= v.iter().map(|e| e.iova.size()).sum::<u64>(),
                Ok(Applied::BatchBegun | Applied::BatchEnded) => {}
                Err(Violation::EntryLimit { asid, limit }) => {
                    return Err(ApplyError::Entries {
                        op: i,
                        asid,
                        limit: limit as u64,
                        pinning: if self.caps.pinning {
                            ", and a pinned map takes one per physically contiguous run of its pages, so it may need more"
                        } else {
                            ""
                        },
                    })
                }
                Err(v) => {
                    return Err(ApplyError::WouldRefuse {
                        op: i,
                        violation: Box::new(v),
                    })
                }
            }
            peak = peak.max(cur);
            if let (OpKind::Update { iova, hva, .. }, false, Some(maps)) =
                (op.kind, self.caps.pinning, maps)
            {
                if let Some((at, m)) = first_unshared(maps, hva.0, iova.size()) {
                    return Err(ApplyError::NotShared {
                        op: i,
                        hva: at,
                        what: match m {
                            None => "not mapped".into(),
                            Some(m) => format!(
                                "{} {} [{:#x}, {:#x})",
                                if m.shared { "shared" } else { "private" },
                                if m.file_backed {
                                    m.name.as_str()
                                } else {
                                    "anonymous memory"
                                },
                                m.start,
                                m.end
                            ),
                        },
                    });
                }
            }
        }
        if self.caps.pinning {
            if let Some(limit) = limits.memlock {
                let others = limits.pinned_now.saturating_sub(start);
                let needed = others + peak;
                if needed > limit {
                    return Err(ApplyError::Memlock {
                        needed,
                        limit,
                        pinned_now: limits.pinned_now,
                    });
                }
            }
        }
        Ok(wire)
    }

    /// Sends a plan, message by message.
    ///
    /// # Safety
    /// Every UPDATE of the plan gives the device access to host memory of
    /// this process: each `[hva, hva + size)` must be memory the caller owns,
    /// that stays mapped (and, on a pinning device, is not released) until an
    /// INVALIDATE of the same IOVAs has been applied, and that the caller
    /// accepts the device reading and (for `rw`/`wo`) writing at any time.
    ///
    /// # Errors
    /// See [`ApplyError`]: everything is checked before the first message;
    /// a refusal by the kernel after that is rolled back.
    pub unsafe fn apply(
        &mut self,
        plan: &Plan,
        limits: &Limits,
        maps: Option<&[Mapping]>,
    ) -> Result<ApplyReport, ApplyError> {
        let wire = self.checked_wire(plan, limits, maps)?;
        let started = Instant::now();
        let mut work = self.committed.clone();
        let mut undo: Vec<Op> = Vec::new();
        let (mut crit_start, mut crit_end) = (None, None);
        for (i, (op, b)) in plan.ops().iter().zip(&wire).enumerate() {
            if op.phase == Phase::Critical && crit_start.is_none() {
                crit_start = Some(Instant::now());
            }
            if let Err(source) = self.write(b) {
                let cause = self.cause(&RawMsg::from(op), limits, &work);
                return Err(self.roll_back(i, op, source, cause, work, undo));
            }
            if op.phase == Phase::Critical {
                crit_end = Some(Instant::now());
            }
            match work.apply(op).expect("prechecked") {
                Applied::Mapped(e) => undo.push(Op {
                    phase: op.phase,
                    asid: op.asid,
                    kind: OpKind::Invalidate { iova: e.iova },
                }),
                Applied::Unmapped(gone) => {
                    for e in gone {
                        undo.push(Op {
                            phase: op.phase,
                            asid: op.asid,
                            kind: OpKind::Update {
                                iova: e.iova,
                                hva: e.hva,
                                perm: e.perm,
                            },
                        });
                    }
                }
                Applied::BatchBegun | Applied::BatchEnded => {}
            }
        }
        self.committed = work;
        Ok(ApplyReport {
            messages: plan.ops().len(),
            critical: match (crit_start, crit_end) {
                (Some(a), Some(b)) => b - a,
                _ => Duration::ZERO,
            },
            total: started.elapsed(),
        })
    }

    /// Encodes and writes a message the pre-checks did not see (an undo).
    fn send(&mut self, m: &RawMsg) -> io::Result<()> {
        let b = uapi::encode(m, self.format).map_err(io::Error::other)?;
        self.write(&b)
    }

    /// Writes one encoded message; a short write is an error.
    fn write(&mut self, b: &[u8; MSG_LEN]) -> io::Result<()> {
        let n = self.dev.send(b)?;
        if n != MSG_LEN {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {n} of {MSG_LEN} bytes"),
            ));
        }
        Ok(())
    }

    /// The likely cause of a refusal the model did not predict.
    fn cause(&self, m: &RawMsg, limits: &Limits, work: &KernelIotlb) -> String {
        match m.kind {
            MsgType::Update if self.caps.pinning => {
                let fresh = Limits::current();
                let limit = fresh.memlock.or(limits.memlock);
                match limit {
                    Some(l) if fresh.pinned_now + m.size > l => format!(
                        "RLIMIT_MEMLOCK: {} bytes pinned now, {} more needed, limit {l}",
                        fresh.pinned_now, m.size
                    ),
                    _ => match entry_count(work, m) {
                        Some((have, new)) => match limits.max_entries.or_else(crate::host::sysfs::max_entries) {
                            Some(max) if have + new > max => format!(
                                "the entry limit: the address space holds {have} entries and this map's memory lies in {new} physically contiguous runs (one entry each), over the {max} vhost-vdpa allows (module parameter max_iotlb_entries; huge pages make fewer runs)"
                            ),
                            max => format!(
                                "pinning failed (memory not mapped or not pinnable), or the parent driver refused the map; not the entry limit ({} + {new} entries, limit {})",
                                have,
                                max.map_or("none".into(), |m| m.to_string())
                            ),
                        },
                        None => "pinning failed (memory not mapped or not pinnable), or the entry limit was reached (one entry per physically contiguous run of pinned memory, at most vhost-vdpa's max_iotlb_entries per address space; run as root to have the runs counted), or the parent driver refused the map".into(),
                    },
                }
            }
            MsgType::Update => "the parent driver refused the map (use_va device)".into(),
            _ if work.entries(m.asid).next().is_none() => {
                "the kernel's table differs from the adapter's mirror (another writer, or a reset)"
                    .into()
            }
            _ => {
                "the kernel's table differs from the adapter's mirror, or the parent driver failed"
                    .into()
            }
        }
    }

    /// Undoes `undo` (in reverse), closing a batch the failure left open.
    fn roll_back(
        &mut self,
        op_index: usize,
        op: &Op,
        source: io::Error,
        cause: String,
        mut work: KernelIotlb,
        undo: Vec<Op>,
    ) -> ApplyError {
        let mut wire: Vec<Wire> = Vec::new();
        // A refused message inside a batch leaves the batch open.
        let mut open = work.open_batch();
        for u in undo.iter().rev() {
            if let Some(b) = open {
                if b != u.asid {
                    wire.push((None, marker(b, MsgType::BatchEnd)));
                    open = None;
                }
            }
            if open.is_none() && self.caps.batching {
                wire.push((None, marker(u.asid, MsgType::BatchBegin)));
                open = Some(u.asid);
            }
            wire.push((None, RawMsg::from(u)));
        }
        if let Some(b) = open {
            wire.push((None, marker(b, MsgType::BatchEnd)));
        }
        for (k, (_, m)) in wire.iter().enumerate() {
            if let Err(e) = self.send(m) {
                return ApplyError::RollbackFailed {
                    op: op_index,
                    source,
                    undo_at: k,
                    undo_error: e,
                };
            }
            work.apply_raw(m).expect("undo of applied ops is valid");
        }
        debug_assert_eq!(
            tables(&work, self.caps.address_spaces),
            tables(&self.committed, self.caps.address_spaces)
        );
        ApplyError::Refused {
            op: op_index,
            kind: op.kind.as_str(),
            source,
            cause,
            undone: undo.len(),
        }
    }
}

/// Entries the kernel holds in `m`'s address space (one per physically
/// contiguous run of each mirrored entry's pinned pages) and the runs `m`'s
/// own memory needs; `None` when page frames cannot be read.
fn entry_count(work: &KernelIotlb, m: &RawMsg) -> Option<(u64, u64)> {
    let runs = |hva: u64, size: u64| {
        crate::host::physmem::contiguous_runs(hva, size)
            .ok()
            .flatten()
    };
    let mut have = 0;
    for e in work.entries(m.asid) {
        have += runs(e.hva.0, e.iova.size())?;
    }
    Some((have, runs(m.uaddr, m.size)?))
}

fn marker(asid: u32, kind: MsgType) -> RawMsg {
    RawMsg::marker(asid, kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::procfs::parse_maps;
    use crate::sink::{FaultyDevice, ModelDevice};
    use vdpa_iova_planner::{
        DeviceRange, Entry, Event, Gpa, Hva, IdentityPlanner, RegionSpec, Strategy, SvqConfig,
    };

    const GIB: u64 = 1 << 30;

    fn ram(gpa: u64, size: u64) -> RegionSpec {
        RegionSpec {
            gpa: Gpa(gpa),
            size,
            hva: Hva(0x1000_0000_0000 + gpa),
            readonly: false,
        }
    }

    fn svq(queues: u32) -> SvqConfig {
        SvqConfig {
            queues,
            queue_size: 256,
            hva: Hva(0x7e00_0000_0000),
        }
    }

    const NO_LIMIT: Limits = Limits {
        memlock: None,
        pinned_now: 0,
        max_entries: None,
    };

    fn applier(caps: DeviceCaps) -> Applier<FaultyDevice> {
        let format = MsgFormat::V2 {
            asid: caps.address_spaces > 1,
        };
        Applier::new(
            FaultyDevice {
                inner: ModelDevice::new(&caps, format),
                fail_at: None,
                short: false,
            },
            caps,
            format,
        )
    }

    fn device_table(a: &Applier<FaultyDevice>) -> Vec<(u32, Entry)> {
        tables(&a.device().inner.kernel, 4)
    }

    /// Every plan of the upstream collision sequence (and a separate-asid
    /// device), failed at every message position, refused and short: each
    /// time the device ends at the committed table, and the retry succeeds.
    #[test]
    fn rollback_at_every_failure_position() {
        let small = DeviceCaps {
            range: DeviceRange::new(0, 8 * GIB - 1).unwrap(),
            ..DeviceCaps::default()
        };
        let asid = DeviceCaps {
            address_spaces: 2,
            desc_asid: true,
            ..small
        };
        let unbatched = DeviceCaps {
            batching: false,
            ..small
        };
        // An isolated control queue: its buffers in address space 1, so
        // the completion unmaps in both address spaces in one plan.
        let cvq = DeviceCaps {
            address_spaces: 2,
            cvq_isolated: true,
            ..small
        };
        let mut checked = 0;
        for (caps, separate) in [
            (small, false),
            (asid, true),
            (unbatched, false),
            (cvq, false),
        ] {
            let mut p = IdentityPlanner::builder(caps)
                .separate_vring_asid(separate)
                .build()
                .unwrap();
            let mut a = applier(caps);
            let buffer = |at: u64, perm| vdpa_iova_planner::HostBuffer {
                hva: Hva(0x7d00_0000_0000 + at),
                size: 4096,
                perm,
            };
            let events = [
                Event::Boot(vec![ram(0, 2 * GIB), ram(3 * GIB, GIB)]),
                Event::HostBuffers(vec![
                    buffer(0, vdpa_iova_planner::Perm::Ro),
                    buffer(4096, vdpa_iova_planner::Perm::Rw),
                ]),
                Event::SvqPrepare(svq(3)),
                Event::Hotplug(ram(4 * GIB, GIB)),
                Event::SvqSwitch(None),
                Event::Hotplug(ram(2 * GIB, GIB)),
                Event::Reset,
                Event::Failback,
                Event::Unplug(Gpa(2 * GIB)),
                Event::SvqPrepare(svq(3)),
                Event::SvqSwitch(None),
                Event::Complete,
            ];
            for ev in events {
                let plan = p.apply(&ev).unwrap();
                if ev == Event::Reset {
                    a.device_reset().unwrap();
                }
                let before = device_table(&a);
                assert_eq!(before, tables(a.committed(), 4));
                for short in [false, true] {
                    for i in 0..plan.ops().len() {
                        let mut t = a.clone();
                        t.dev.fail_at = Some(t.dev.inner.received + i);
                        t.dev.short = short;
                        // SAFETY: a model device never touches host memory.
                        let e = unsafe { t.apply(&plan, &NO_LIMIT, None) }.unwrap_err();
                        assert!(
                            matches!(e, ApplyError::Refused { op, .. } if op == i),
                            "{ev:?} op {i}: {e}"
                        );
                        assert_eq!(device_table(&t), before, "{ev:?}: failure at op {i}");
                        assert_eq!(t.device().inner.kernel.open_batch(), None);
                        // With the fault gone, the same plan goes through.
                        t.dev.fail_at = None;
                        // SAFETY: as above.
                        unsafe { t.apply(&plan, &NO_LIMIT, None) }.unwrap();
                        checked += 1;
                    }
                }
                // SAFETY: as above.
                unsafe { a.apply(&plan, &NO_LIMIT, None) }.unwrap();
                assert_eq!(device_table(&a), tables(a.committed(), 4));
            }
        }
        assert!(checked > 50, "{checked} failure positions");
    }

    #[test]
    fn prechecks_stop_a_plan_before_anything_is_sent() {
        let caps = DeviceCaps::default();
        let mut p = IdentityPlanner::new(caps, None).unwrap();
        let mut a = applier(caps);
        let boot = p.apply(&Event::Boot(vec![ram(0, 2 * GIB)])).unwrap();
        // RLIMIT_MEMLOCK below what the plan pins.
        let tight = Limits {
            memlock: Some(GIB),
            pinned_now: 0,
            max_entries: None,
        };
        // SAFETY: a model device never touches host memory.
        let e = unsafe { a.apply(&boot, &tight, None) }.unwrap_err();
        assert!(
            matches!(e, ApplyError::Memlock { needed, limit, .. } if needed == 2 * GIB && limit == GIB),
            "{e}"
        );
        // Pinned elsewhere counts too.
        let busy = Limits {
            memlock: Some(3 * GIB),
            pinned_now: 2 * GIB,
            max_entries: None,
        };
        // SAFETY: as above.
        assert!(unsafe { a.apply(&boot, &busy, None) }.is_err());
        assert_eq!(a.device().inner.received, 0);
        // SAFETY: as above.
        unsafe { a.apply(&boot, &NO_LIMIT, None) }.unwrap();
        // The same plan again would overlap: refused by the model, not sent.
        // SAFETY: as above.
        let e = unsafe { a.apply(&boot, &NO_LIMIT, None) }.unwrap_err();
        assert!(matches!(e, ApplyError::WouldRefuse { op: 0, .. }), "{e}");
        assert_eq!(a.device().inner.received, 1);
    }

    /// The memlock pre-check counts the plan's peak: bytes an INVALIDATE
    /// drops first make room for the maps after it, and a peak exactly at
    /// the limit is allowed.
    #[test]
    fn the_memlock_precheck_counts_the_peak_and_allows_the_limit() {
        // A dma_map device's reset restore unmaps each entry and maps it
        // again: 1 GiB pinned at every point of the plan.
        let caps = DeviceCaps {
            map_style: vdpa_iova_planner::MapStyle::DmaMap,
            ..DeviceCaps::default()
        };
        let mut p = IdentityPlanner::new(caps, None).unwrap();
        let mut a = applier(caps);
        let boot = p.apply(&Event::Boot(vec![ram(0, GIB)])).unwrap();
        // SAFETY: a model device never touches host memory.
        unsafe { a.apply(&boot, &NO_LIMIT, None) }.unwrap();
        let both = p.apply(&Event::Reset).unwrap();
        assert!(matches!(
            both.ops()
                .iter()
                .find(|o| !matches!(o.kind, OpKind::BatchBegin))
                .map(|o| o.kind),
            Some(OpKind::Invalidate { .. })
        ));
        let exact = Limits {
            memlock: Some(GIB),
            pinned_now: GIB,
            max_entries: None,
        };
        a.precheck(&both, &exact, None).unwrap();
        let under = Limits {
            memlock: Some(GIB - 4096),
            ..exact
        };
        let e = a.precheck(&both, &under, None).unwrap_err();
        assert!(
            matches!(e, ApplyError::Memlock { needed, .. } if needed == GIB),
            "{e}"
        );
    }

    /// A reset makes the mirror forget what the device forgets (a set_map
    /// device without persist: its own maps), like the device.
    #[test]
    fn a_device_reset_resets_the_mirror() {
        let caps = DeviceCaps::default();
        let mut p = IdentityPlanner::new(caps, None).unwrap();
        let mut a = applier(caps);
        let boot = p.apply(&Event::Boot(vec![ram(0, GIB)])).unwrap();
        // SAFETY: a model device never touches host memory.
        unsafe { a.apply(&boot, &NO_LIMIT, None) }.unwrap();
        assert!(!a.committed().device_stale(0));
        a.device_reset().unwrap();
        assert!(a.committed().device_stale(0));
        assert!(a.device().inner.kernel.device_stale(0));
    }

    fn refusal_cause(caps: DeviceCaps, setup: &[Event], ev: Event, at: usize) -> String {
        let mut p = IdentityPlanner::new(caps, None).unwrap();
        let mut a = applier(caps);
        for e in setup {
            let plan = p.apply(e).unwrap();
            // SAFETY: a model device never touches host memory.
            unsafe { a.apply(&plan, &NO_LIMIT, None) }.unwrap();
        }
        let plan = p.apply(&ev).unwrap();
        a.dev.fail_at = Some(a.dev.inner.received + at);
        // SAFETY: as above.
        match unsafe { a.apply(&plan, &NO_LIMIT, None) } {
            Err(ApplyError::Refused { cause, .. }) => cause,
            other => panic!("{other:?}"),
        }
    }

    /// What a refusal the model did not predict is blamed on: the message
    /// kind and the device decide.
    #[test]
    fn a_refusal_names_its_likely_cause() {
        let pins = DeviceCaps::default();
        let use_va = DeviceCaps {
            pinning: false,
            ..pins
        };
        // Two regions: BATCH_BEGIN, two UPDATEs, BATCH_END.
        let boot = Event::Boot(vec![ram(0, GIB), ram(2 * GIB, GIB)]);
        // The first UPDATE of a use_va device.
        assert_eq!(
            refusal_cause(use_va, &[], boot.clone(), 1),
            "the parent driver refused the map (use_va device)"
        );
        // A pinning device's UPDATE: pinning or its limits, never use_va.
        let c = refusal_cause(pins, &[], boot.clone(), 1);
        assert!(
            c.starts_with("RLIMIT_MEMLOCK")
                || c.starts_with("pinning failed")
                || c.starts_with("the entry limit"),
            "{c}"
        );
        // A batch marker on an empty table: the table changed under us.
        assert!(refusal_cause(pins, &[], boot.clone(), 0).ends_with("(another writer, or a reset)"));
        // An INVALIDATE (the unplug's only message) with entries there.
        let c = refusal_cause(pins, &[boot], Event::Unplug(Gpa(0)), 0);
        assert!(c.ends_with("or the parent driver failed"), "{c}");
    }

    /// A pinned map the kernel refused is blamed on what the process sees
    /// at that moment: past `RLIMIT_MEMLOCK`, the limit (with the numbers);
    /// within it, vhost-vdpa's entry limit when the map's physically
    /// contiguous runs would pass it, else pinning itself. One test, in
    /// order: it changes the process's memlock limit for a moment.
    #[test]
    fn a_refused_pinned_map_blames_memlock_then_the_entry_limit() {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let caps = DeviceCaps::default();
        let mut mem =
            crate::memory::Mem::new(16 * 4096, crate::memory::Backing::Memfd, "cause").unwrap();
        mem.tag_pages(0, 4096, 0x5eed);
        let region = |pages: u64| RegionSpec {
            gpa: Gpa(0),
            size: pages * 4096,
            hva: Hva(mem.addr()),
            readonly: false,
        };
        // The last 8 pages as a second region (a DIMM plugged after boot).
        let dimm = RegionSpec {
            gpa: Gpa(GIB),
            size: 8 * 4096,
            hva: Hva(mem.addr() + 8 * 4096),
            readonly: false,
        };
        let dimm_cause = |max_entries: u64| {
            let mut p = IdentityPlanner::new(caps, None).unwrap();
            let mut a = applier(caps);
            let boot = p.apply(&Event::Boot(vec![region(8)])).unwrap();
            // SAFETY: a model device never touches host memory.
            unsafe { a.apply(&boot, &NO_LIMIT, None) }.unwrap();
            let plug = p.apply(&Event::Hotplug(dimm)).unwrap();
            a.dev.fail_at = Some(a.dev.inner.received);
            let limits = Limits {
                max_entries: Some(max_entries),
                ..NO_LIMIT
            };
            // SAFETY: as above.
            match unsafe { a.apply(&plug, &limits, None) } {
                Err(ApplyError::Refused { cause, .. }) => cause,
                other => panic!("{other:?}"),
            }
        };
        let cause = |pages: u64, max_entries: Option<u64>| {
            let mut p = IdentityPlanner::new(caps, None).unwrap();
            let mut a = applier(caps);
            let plan = p.apply(&Event::Boot(vec![region(pages)])).unwrap();
            a.dev.fail_at = Some(0);
            let limits = Limits {
                max_entries,
                ..NO_LIMIT
            };
            // SAFETY: a model device never touches host memory.
            match unsafe { a.apply(&plan, &limits, None) } {
                Err(ApplyError::Refused { cause, .. }) => cause,
                other => panic!("{other:?}"),
            }
        };
        let orig = getrlimit(Resource::Memlock);
        let set = |current: Option<u64>| {
            setrlimit(
                Resource::Memlock,
                Rlimit {
                    current,
                    maximum: orig.maximum,
                },
            )
        };
        let pinned = Limits::current().pinned_now;
        let page = 4096;
        // Soft limits at, and one byte under, what 16 pages need (if the
        // hard limit allows), then the hard limit itself.
        let at = pinned + 16 * page;
        let fits = orig.maximum.map_or(true, |m| at <= m);
        let mut got = Vec::new();
        if fits {
            set(Some(at)).unwrap();
            got.push(("at", cause(16, Some(1 << 20))));
            set(Some(at - 1)).unwrap();
            got.push(("under", cause(16, Some(1 << 20))));
        }
        set(orig.maximum).unwrap();
        let runs = crate::host::physmem::contiguous_runs(mem.addr(), 16 * page)
            .unwrap()
            .filter(|_| orig.maximum.map_or(true, |m| at <= m));
        let entry_causes = runs.map(|r| (r, cause(16, Some(r)), cause(16, Some(r - 1))));
        // With 8 pages mapped already: their runs count too.
        let run = |hva: u64| {
            crate::host::physmem::contiguous_runs(hva, 8 * page)
                .unwrap()
                .unwrap_or(0)
        };
        let (ra, rb) = (run(mem.addr()), run(mem.addr() + 8 * page));
        let dimm_causes = entry_causes
            .as_ref()
            .map(|_| (dimm_cause(ra + rb), dimm_cause(ra + rb - 1)));
        setrlimit(Resource::Memlock, orig).unwrap();
        if let Some((room, over)) = dimm_causes {
            assert!(
                room.contains(&format!(
                    "not the entry limit ({ra} + {rb} entries, limit {})",
                    ra + rb
                )),
                "{room}"
            );
            assert!(
                over.starts_with(&format!(
                    "the entry limit: the address space holds {ra} entries and this map's memory lies in {rb} physically"
                )),
                "{over}"
            );
        }

        for (what, c) in &got {
            match *what {
                "at" => assert!(!c.starts_with("RLIMIT_MEMLOCK"), "{c}"),
                _ => assert_eq!(
                    c,
                    &format!(
                        "RLIMIT_MEMLOCK: {pinned} bytes pinned now, {} more needed, limit {}",
                        16 * page,
                        at - 1
                    )
                ),
            }
        }
        match entry_causes {
            // Page frames visible (CAP_SYS_ADMIN): the runs are counted.
            Some((r, room, over)) => {
                assert!(
                    room.starts_with("pinning failed")
                        && room
                            .contains(&format!("not the entry limit (0 + {r} entries, limit {r})")),
                    "{room}"
                );
                assert!(
                    over.starts_with(&format!("the entry limit: the address space holds 0 entries and this map's memory lies in {r} physically contiguous runs")),
                    "{over}"
                );
            }
            // Hidden: both causes are named.
            None => {
                let c = cause(16, Some(1));
                assert!(
                    c.starts_with("RLIMIT_MEMLOCK")
                        || c.contains("run as root to have the runs counted"),
                    "{c}"
                );
            }
        }
    }

    #[test]
    fn an_address_space_over_the_entry_limit_is_refused_up_front() {
        let caps = DeviceCaps::default();
        let mut p = IdentityPlanner::new(caps, None).unwrap();
        let mut a = applier(caps);
        let boot = p
            .apply(&Event::Boot(vec![ram(0, GIB), ram(2 * GIB, GIB)]))
            .unwrap();
        let prepare = p.apply(&Event::SvqPrepare(svq(2))).unwrap();
        let two = Limits {
            max_entries: Some(2),
            ..NO_LIMIT
        };
        // SAFETY: a model device never touches host memory.
        unsafe { a.apply(&boot, &two, None) }.unwrap();
        // SAFETY: as above.
        let e = unsafe { a.apply(&prepare, &two, None) }.unwrap_err();
        assert!(
            matches!(
                e,
                ApplyError::Entries {
                    asid: 0,
                    limit: 2,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("max_iotlb_entries"), "{e}");
        assert!(e.to_string().contains("physically contiguous run"), "{e}");
        let sent = a.device().inner.received;
        let room = Limits {
            max_entries: Some(64),
            ..NO_LIMIT
        };
        // SAFETY: as above.
        unsafe { a.apply(&prepare, &room, None) }.unwrap();
        assert!(a.device().inner.received > sent);
    }

    #[test]
    fn use_va_devices_take_only_shared_file_backed_memory() {
        let maps = parse_maps(
            "100000000000-100080000000 rw-s 00000000 00:01 2049 /memfd:guest (deleted)\n\
             100080000000-100100000000 rw-p 00000000 00:00 0 \n\
             7e0000000000-7e0000100000 rw-s 00000000 00:01 2050 /memfd:svq (deleted)\n",
        );
        assert_eq!(maps.len(), 3);
        assert!(maps[0].shared && maps[0].file_backed && !maps[1].shared);
        let caps = DeviceCaps {
            pinning: false,
            ..DeviceCaps::default()
        };
        let mut p = IdentityPlanner::new(caps, None).unwrap();
        let a = applier(caps);
        let ok = p.apply(&Event::Boot(vec![ram(0, 2 * GIB)])).unwrap();
        a.precheck(&ok, &NO_LIMIT, Some(&maps)).unwrap();
        // 4 GiB runs into private anonymous memory at 2 GiB.
        let mut p = IdentityPlanner::new(caps, None).unwrap();
        let bad = p.apply(&Event::Boot(vec![ram(0, 4 * GIB)])).unwrap();
        let e = a.precheck(&bad, &NO_LIMIT, Some(&maps)).unwrap_err();
        assert!(
            matches!(&e, ApplyError::NotShared { hva, what, .. } if *hva == 0x1000_8000_0000 && what.contains("private anonymous")),
            "{e}"
        );
        // Beyond every mapping: not mapped.
        let mut p = IdentityPlanner::new(caps, None).unwrap();
        let far = p.apply(&Event::Boot(vec![ram(8 << 40, GIB)])).unwrap();
        let e = a.precheck(&far, &NO_LIMIT, Some(&maps)).unwrap_err();
        assert!(e.to_string().contains("not mapped"), "{e}");
    }

    #[test]
    fn an_asid_the_format_cannot_carry_is_refused_up_front() {
        let caps = DeviceCaps {
            address_spaces: 2,
            desc_asid: true,
            ..DeviceCaps::default()
        };
        let mut p = IdentityPlanner::builder(caps)
            .separate_vring_asid(true)
            .build()
            .unwrap();
        let plan = p.apply(&Event::SvqPrepare(svq(1))).unwrap();
        let a = Applier::new(
            ModelDevice::new(&caps, MsgFormat::V2 { asid: false }),
            caps,
            MsgFormat::V2 { asid: false },
        );
        let e = a.precheck(&plan, &NO_LIMIT, None).unwrap_err();
        assert!(matches!(e, ApplyError::Encode { .. }), "{e}");
    }
}
