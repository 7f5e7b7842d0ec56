//! A model of the kernel's vhost-vdpa IOTLB: the one place where the
//! kernel's rules for each message are written down.
//!
//! Every plan a test produces is replayed on this model, and the adapter's
//! dry run and pre-checks use it too. It follows `drivers/vhost/vdpa.c`
//! (`vhost_vdpa_process_iotlb_msg` and friends) as of Linux 6.12:
//!
//! * An UPDATE of size 0 is refused before anything else is looked at
//!   (`vhost_chr_write_iter` checks it before the vhost-vdpa handler runs):
//!   userspace sees EINVAL, and no address space is created.
//! * `asid >= address_spaces` is refused (EINVAL). An UPDATE or BATCH_BEGIN
//!   creates the address space on first use (even when the UPDATE itself is
//!   then refused); an INVALIDATE or BATCH_END naming an address space that
//!   was never created is refused (EINVAL).
//! * Inside a batch, any message for another asid is refused (EINVAL).
//! * UPDATE is refused for size 0, for `iova + size` wrapping past `2^64`,
//!   for any byte outside the device range (EINVAL), and for overlapping
//!   **any** live entry (EEXIST): there is no replace.
//! * INVALIDATE removes every whole entry that overlaps the range; it never
//!   splits one.
//!
//! Userspace sees every refusal of the handler as EFAULT, and a size-0
//! UPDATE as EINVAL ([`Violation::user_errno`]): the model says which rule
//! was broken so the caller does not have to guess.
//!
//! The model is also **strict** where the kernel accepts a message whose
//! effect is not what it says (see [`Violation::kernel_errno`] returning
//! `None`): an INVALIDATE that cuts through an entry (on a pinning device one
//! UPDATE may have become several kernel entries, so what gets removed
//! depends on physical memory layout), an INVALIDATE of size 0 or that wraps
//! (the kernel computes `iova + size - 1` and may remove entries far away),
//! an UPDATE with a perm other than RO/WO/RW, a BATCH_BEGIN inside a batch
//! and a BATCH_END outside one. A plan must never need any of these. (An
//! UPDATE with another perm is a kernel bug on VDUSE: vhost-vdpa hands the
//! entry on, and reading it back with `VDUSE_IOTLB_GET_FD` makes the kernel
//! `WARN` "invalidate vhost IOTLB permission", seen on 6.12.118 by the rig's
//! differential run.)
//!
//! # The device's own view
//! The vhost table (what [`KernelIotlb::entries`] returns) decides which
//! messages are accepted. What the device translates with
//! ([`KernelIotlb::device_entries`]) can lag behind it, depending on the
//! parent driver's [`MapStyle`]:
//!
//! * `SetMap`: each UPDATE or INVALIDATE outside a batch, and each BATCH_END,
//!   pushes the whole table; inside a batch the device keeps the table it had
//!   at BATCH_BEGIN.
//! * `DmaMap`: each message programs its own entry at once; BATCH_END does nothing.
//! * `Platform`: the kernel's IOMMU domain is the device's view.
//!
//! A device reset ([`KernelIotlb::reset_device`], `VHOST_VDPA_SET_STATUS` 0)
//! leaves an open batch open: only closing the device file ends it (the
//! kernel's `vhost_vdpa_reset` clears `in_batch`, the status ioctl's reset
//! path does not). A reset without `IOTLB_PERSIST`
//! makes `SetMap` and `DmaMap` devices forget every map (the kernel passes
//! `VDPA_RESET_F_CLEAN_MAP`; vdpa_sim and mlx5 then fall back to a
//! pass-through translation, which the model shows as empty: it is neither
//! the table nor safe). The vhost table keeps its entries, still pinned, so
//! mapping them again is EEXIST: a `SetMap` device is restored by an empty
//! BATCH_BEGIN/BATCH_END pair, a `DmaMap` device only by unmapping and
//! mapping each entry again.
//!
//! **Seen** on 6.12 by the end-to-end rig: VDUSE, which offers no
//! `IOTLB_PERSIST`, keeps its table across a reset (it ignores the clean-map
//! flag), so the model is conservative there and the empty-batch restore is
//! harmless. VDUSE also keeps the table of its last push when the
//! vhost-vdpa file is **closed** (seen on 6.12.118 by the rig's
//! differential run: vhost-vdpa unmaps its own table on release but pushes
//! nothing to a `set_map` parent without `reset_map`), so the next owner
//! starts with the previous owner's entries on the device until its first
//! push; an empty BATCH_BEGIN/BATCH_END clears them. The model covers one
//! open of the device and starts empty. vdpa_sim without `IOTLB_PERSIST` drops its maps for a
//! pass-through `[0, 2^64 - 1]`, and the empty BATCH_BEGIN/BATCH_END puts the
//! same entries back without pinning anything again (watched through kprobes
//! on the kernel's IOTLB functions, since its table cannot be read). With
//! `IOTLB_PERSIST` acked it keeps them. Loaded with `batch_mapping=0` (a
//! `DmaMap` device) the empty batch restores nothing, and unmapping and
//! mapping each entry again brings the same entries back, pinned again.
//!
//! # A kernel bug: a failed UPDATE at IOVA 0 unmaps everything
//! **Seen** on 6.12.118 by the rig's differential run, and read in
//! `vhost_vdpa_va_map` (the path of devices that map host addresses): when
//! mapping the first piece of an UPDATE fails (the entry limit's ENOSPC,
//! ENOMEM, or no VMA at `uaddr`), its cleanup unmaps the `map_iova - iova`
//! bytes mapped so far, that is a size of 0, and `vhost_vdpa_unmap` turns
//! `[iova, iova + 0 - 1]` at IOVA 0 into `[0, 2^64 - 1]`: every entry of the
//! address space is unmapped (and the device told so), although the UPDATE
//! itself is refused. The pinning path (`vhost_vdpa_pa_map`) unmaps the
//! UPDATE's own range and is not affected. The strict model keeps its
//! promise (a refused message changes nothing): a plan must not rely on a
//! refused UPDATE at IOVA 0 leaving the table alone on such a device. The
//! permissive model empties the address space on the entry limit's refusal
//! at IOVA 0, the one such failure it can know of.
//!
//! # Permissive replay
//! [`KernelIotlb::permissive`] accepts what the kernel accepts and the strict
//! rules refuse, applied the way the kernel applies it, and records each in
//! [`KernelIotlb::quirks`]: a partial INVALIDATE drops every overlapping
//! entry whole; an INVALIDATE of size 0 or that wraps removes what the
//! kernel's interval query `[iova, iova + size - 1]` (computed modulo 2^64)
//! finds, which at iova 0 with size 0 is everything and otherwise only an
//! entry holding both `iova + size - 1` and `iova`; a BATCH_BEGIN inside a
//! batch of the same asid and a BATCH_END outside a batch change nothing.
//! A refused UPDATE at IOVA 0 on a device that maps host addresses (no
//! pinning: VDUSE, vdpa_sim `use_va=1`) because the address space is full
//! empties that address space, as the kernel does (below).
//! Only an UPDATE with a perm other than RO/WO/RW stays refused (an
//! [`Entry`] cannot hold such a perm). It exists to replay other software's
//! plans (the QEMU baseline) and show what they lose, and is the oracle of
//! the rig's differential run against the real kernel. Plans of this crate
//! are always replayed strictly.

use std::collections::BTreeMap;

use smallvec::SmallVec;

use crate::addr::{overlapping, DeviceRange, Hva, Iova, Span};
use crate::caps::{DeviceCaps, MapStyle};
use crate::entry::Entry;
use crate::plan::Op;
use crate::vocab::Perm;

pub mod uapi;

mod msg;
mod violation;

pub use msg::{MsgType, RawMsg};
pub use violation::Violation;

/// What an accepted message did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// An UPDATE added this entry.
    Mapped(Entry),
    /// An INVALIDATE removed these entries (possibly none).
    Unmapped(SmallVec<[Entry; 1]>),
    /// A batch was opened.
    BatchBegun,
    /// A batch was closed; on `set_map` devices the table was pushed.
    BatchEnded,
}

/// The kernel's IOTLB for one vhost-vdpa device: one table per address space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelIotlb {
    range: DeviceRange,
    address_spaces: u32,
    /// `None` until the address space is created.
    spaces: Vec<Option<BTreeMap<u64, Entry>>>,
    /// Per address space: `None` while the device holds exactly the vhost
    /// table, otherwise what it holds.
    device: Vec<Option<BTreeMap<u64, Entry>>>,
    batch: Option<u32>,
    persist: bool,
    style: MapStyle,
    strict: bool,
    quirks: Vec<Violation>,
    max_entries: Option<usize>,
    pinning: bool,
}

impl KernelIotlb {
    /// An empty IOTLB for a device with these capabilities, enforcing the
    /// kernel's rules and the strict ones.
    pub fn new(caps: &DeviceCaps) -> Self {
        // Address spaces are created lazily: an adversarial address_spaces
        // value must not make the model allocate gigabytes.
        KernelIotlb {
            range: caps.range,
            address_spaces: caps.address_spaces,
            spaces: Vec::new(),
            device: Vec::new(),
            batch: None,
            persist: caps.persist,
            style: caps.map_style,
            strict: true,
            quirks: Vec::new(),
            max_entries: None,
            pinning: caps.pinning,
        }
    }

    /// The same model with at most `limit` entries per address space
    /// (`None`: no limit, as in kernels before the 2026 fix "vhost_iotlb:
    /// bound map allocation in add_range"). Kernels with it, such as
    /// Debian's 6.12.117, have a `vhost_vdpa` module parameter
    /// `max_iotlb_entries` (default 2048); an UPDATE beyond it fails with
    /// ENOSPC. On a pinning device the kernel
    /// makes one entry per physically contiguous run of an UPDATE's pages,
    /// which the model cannot know: it counts one per UPDATE, a lower bound.
    #[must_use]
    pub fn with_entry_limit(mut self, limit: Option<usize>) -> Self {
        self.max_entries = limit;
        self
    }

    /// Like [`KernelIotlb::new`], but a partial INVALIDATE is applied as the
    /// kernel applies it (whole entries dropped) and recorded in
    /// [`KernelIotlb::quirks`] instead of refused.
    pub fn permissive(caps: &DeviceCaps) -> Self {
        KernelIotlb {
            strict: false,
            ..KernelIotlb::new(caps)
        }
    }

    /// Messages a strict model would have refused that this permissive one
    /// applied with the kernel's semantics, oldest first.
    pub fn quirks(&self) -> &[Violation] {
        &self.quirks
    }

    /// Whether the device pins what it maps (its caps' `pinning`).
    pub fn pins(&self) -> bool {
        self.pinning
    }

    /// The device range the model enforces.
    pub fn range(&self) -> DeviceRange {
        self.range
    }

    /// The asid of the open batch, if any.
    pub fn open_batch(&self) -> Option<u32> {
        self.batch
    }

    fn space(&self, asid: u32) -> Option<&BTreeMap<u64, Entry>> {
        self.spaces.get(asid as usize).and_then(Option::as_ref)
    }

    fn create(&mut self, asid: u32) -> &mut BTreeMap<u64, Entry> {
        let i = asid as usize;
        if self.spaces.len() <= i {
            self.spaces.resize_with(i + 1, || None);
            self.device.resize_with(i + 1, || None);
        }
        self.spaces[i].get_or_insert_with(BTreeMap::new)
    }

    /// The live entries of an address space, by IOVA.
    pub fn entries(&self, asid: u32) -> impl Iterator<Item = &Entry> + '_ {
        self.space(asid).into_iter().flat_map(|m| m.values())
    }

    /// Number of live entries in an address space.
    pub fn len(&self, asid: u32) -> usize {
        self.space(asid).map_or(0, BTreeMap::len)
    }

    /// Whether no address space holds any entry.
    pub fn is_empty(&self) -> bool {
        self.spaces.iter().flatten().all(BTreeMap::is_empty)
    }

    /// The entry translating `iova`, if any.
    pub fn lookup(&self, asid: u32, iova: Iova) -> Option<&Entry> {
        let m = self.space(asid)?;
        let (_, e) = m.range(..=iova.0).next_back()?;
        e.iova.contains(iova).then_some(e)
    }

    /// The entries the device itself translates with now (see the
    /// [module documentation](self)): the vhost table, unless a reset or an
    /// open batch left the device behind it.
    pub fn device_entries(&self, asid: u32) -> impl Iterator<Item = &Entry> + '_ {
        let view = match self.device.get(asid as usize).and_then(Option::as_ref) {
            Some(d) => Some(d),
            None => self.space(asid),
        };
        view.into_iter().flat_map(BTreeMap::values)
    }

    /// What the device translates with, every address space, indexed by asid
    /// (the input of [`crate::verify::layout::check`]).
    pub fn device_tables(&self) -> Vec<Vec<Entry>> {
        (0..self.spaces.len() as u32)
            .map(|a| self.device_entries(a).copied().collect())
            .collect()
    }

    /// Whether the device translates `asid` differently from the vhost table.
    pub fn device_stale(&self, asid: u32) -> bool {
        match self.device.get(asid as usize).and_then(Option::as_ref) {
            None => false,
            Some(d) => self.space(asid).map_or(!d.is_empty(), |m| m != d),
        }
    }

    /// A device reset (status 0). Without `IOTLB_PERSIST`, `SetMap` and
    /// `DmaMap` devices forget their maps while the vhost table keeps them
    /// pinned. An open batch stays open, as in the kernel, whose status
    /// ioctl resets the device without touching its batch state.
    pub fn reset_device(&mut self) {
        if !self.persist && self.style != MapStyle::Platform {
            for d in self.device.iter_mut() {
                *d = Some(BTreeMap::new());
            }
        }
    }

    /// Gives the device its own copy of `asid`'s table, for a batch that
    /// defers the push (a no-op when the device is already behind).
    fn fork_device(&mut self, asid: u32) {
        let i = asid as usize;
        if self.device[i].is_none() {
            self.device[i] = self.spaces[i].clone();
        }
    }

    /// Replays a plan operation.
    ///
    /// # Errors
    /// The [`Violation`] the op commits; the model is then unchanged (except
    /// that an UPDATE may have created its address space, as in the kernel).
    pub fn apply(&mut self, op: &Op) -> Result<Applied, Violation> {
        self.apply_raw(&RawMsg::from(op))
    }

    /// Replays every op of a slice, stopping at the first violation, which is
    /// returned with the op's index.
    ///
    /// # Errors
    /// `(index, violation)` of the first refused op; the ops before it stay applied.
    pub fn apply_all<'a>(
        &mut self,
        ops: impl IntoIterator<Item = &'a Op>,
    ) -> Result<(), (usize, Violation)> {
        for (i, op) in ops.into_iter().enumerate() {
            self.apply(op).map_err(|v| (i, v))?;
        }
        Ok(())
    }

    /// Replays a raw message, exactly as the kernel would judge it.
    ///
    /// # Errors
    /// See [`KernelIotlb::apply`].
    pub fn apply_raw(&mut self, m: &RawMsg) -> Result<Applied, Violation> {
        let asid = m.asid;
        if m.kind == MsgType::Update && m.size == 0 {
            // Refused before the handler: nothing is created.
            return Err(Violation::ZeroSize);
        }
        let creates = matches!(m.kind, MsgType::Update | MsgType::BatchBegin);
        if asid >= self.address_spaces {
            return Err(Violation::AsidOutOfRange {
                asid,
                address_spaces: self.address_spaces,
            });
        }
        if creates {
            self.create(asid);
        } else if self.space(asid).is_none() {
            return Err(Violation::NoAddressSpace { asid });
        }
        if let Some(batch) = self.batch {
            if batch != asid {
                return Err(Violation::BatchAsidMismatch { batch, asid });
            }
        }
        match m.kind {
            MsgType::BatchBegin => {
                if let Some(batch) = self.batch {
                    // Same asid (another one was refused above): the kernel
                    // opens it again, which changes nothing.
                    self.lenient(Violation::BatchAlreadyOpen { batch })?;
                    return Ok(Applied::BatchBegun);
                }
                self.batch = Some(asid);
                if self.style == MapStyle::SetMap {
                    // The device keeps its table until BATCH_END.
                    self.fork_device(asid);
                }
                Ok(Applied::BatchBegun)
            }
            MsgType::BatchEnd => {
                if self.batch.is_none() {
                    // The kernel pushes nothing and stays outside a batch.
                    self.lenient(Violation::BatchNotOpen)?;
                    return Ok(Applied::BatchEnded);
                }
                self.batch = None;
                if self.style == MapStyle::SetMap {
                    // The whole-table push re-programs the device.
                    self.device[asid as usize] = None;
                }
                Ok(Applied::BatchEnded)
            }
            MsgType::Update => {
                let r = self.update(m);
                if matches!(r, Err(Violation::EntryLimit { .. }))
                    && !self.strict
                    && !self.pinning
                    && m.iova == 0
                {
                    // The kernel's bug (see the module documentation): the
                    // failed map's cleanup unmaps `[0, 0 - 1]`, everything.
                    let gone: SmallVec<[Entry; 1]> =
                        std::mem::take(self.create(asid)).into_values().collect();
                    self.sync_device(asid, &gone, false);
                }
                let a = r?;
                if let Applied::Mapped(e) = &a {
                    self.sync_device(asid, core::slice::from_ref(e), true);
                }
                Ok(a)
            }
            MsgType::Invalidate => {
                let a = self.invalidate(m)?;
                if let Applied::Unmapped(gone) = &a {
                    self.sync_device(asid, gone, false);
                }
                Ok(a)
            }
        }
    }

    /// What an accepted UPDATE (`mapped`) or INVALIDATE does to the device.
    fn sync_device(&mut self, asid: u32, entries: &[Entry], mapped: bool) {
        let i = asid as usize;
        match self.style {
            MapStyle::Platform => {}
            MapStyle::SetMap => {
                if self.batch.is_none() {
                    // set_map with the whole table.
                    self.device[i] = None;
                }
            }
            MapStyle::DmaMap => {
                // dma_map / dma_unmap of exactly these entries.
                if let Some(d) = self.device[i].as_mut() {
                    for e in entries {
                        if mapped {
                            d.insert(e.iova.first().0, *e);
                        } else {
                            d.remove(&e.iova.first().0);
                        }
                    }
                }
            }
        }
    }

    fn update(&mut self, m: &RawMsg) -> Result<Applied, Violation> {
        if m.size == 0 {
            return Err(Violation::ZeroSize);
        }
        let last = m.iova.checked_add(m.size - 1).ok_or(Violation::Wraps {
            iova: m.iova,
            size: m.size,
        })?;
        if !self.range.contains_bounds(m.iova, last) {
            return Err(Violation::OutsideRange {
                first: m.iova,
                last,
                range: self.range,
            });
        }
        let map = self.space(m.asid).expect("created above");
        // The entry reported is the last that overlaps.
        if let Some((_, e)) = overlapping(map, |_, e| e.iova.last().0, m.iova, last).last() {
            return Err(Violation::Overlap { existing: *e });
        }
        if let Some(limit) = self.max_entries {
            if map.len() >= limit {
                return Err(Violation::EntryLimit {
                    asid: m.asid,
                    limit,
                });
            }
        }
        let perm = Perm::from_kernel(m.perm).ok_or(Violation::BadPerm { perm: m.perm })?;
        let entry = Entry {
            iova: Span::trusted(m.iova, m.size),
            hva: Hva(m.uaddr),
            perm,
        };
        self.create(m.asid).insert(m.iova, entry);
        Ok(Applied::Mapped(entry))
    }

    /// A strict rule broken: refused by the strict model, recorded and let
    /// through by the permissive one.
    fn lenient(&mut self, v: Violation) -> Result<(), Violation> {
        if self.strict {
            return Err(v);
        }
        self.quirks.push(v);
        Ok(())
    }

    fn invalidate(&mut self, m: &RawMsg) -> Result<Applied, Violation> {
        // The kernel's query range: `iova + size - 1`, modulo 2^64.
        let last = m.iova.wrapping_add(m.size).wrapping_sub(1);
        let odd = if m.size == 0 {
            Some(Violation::InvalidateZeroSize { iova: m.iova })
        } else if m.iova.checked_add(m.size - 1).is_none() {
            Some(Violation::InvalidateWraps {
                iova: m.iova,
                size: m.size,
            })
        } else {
            None
        };
        let map = self.space(m.asid).expect("checked above");
        let mut hit: SmallVec<[Entry; 1]> = SmallVec::new();
        if last < m.iova {
            // An interval query with its end below its start finds only an
            // entry holding both ends.
            if let Some((_, e)) = map.range(..=m.iova).next_back() {
                if e.iova.first().0 <= last && e.iova.last().0 >= m.iova {
                    hit.push(*e);
                }
            }
        } else {
            hit.extend(overlapping(map, |_, e| e.iova.last().0, m.iova, last).map(|(_, e)| *e));
        }
        if let Some(v) = odd {
            self.lenient(v)?;
        } else if let Some(cut) = hit
            .iter()
            .find(|e| e.iova.first().0 < m.iova || e.iova.last().0 > last)
        {
            let v = Violation::PartialInvalidate {
                first: m.iova,
                last,
                entry: *cut,
            };
            self.lenient(v)?;
        }
        let map = self.create(m.asid);
        for e in &hit {
            map.remove(&e.iova.first().0);
        }
        Ok(Applied::Unmapped(hit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{DeviceRange, PageSize};
    use crate::plan::OpKind;
    use crate::vocab::Phase;

    fn caps() -> DeviceCaps {
        DeviceCaps {
            address_spaces: 2,
            ..DeviceCaps::default()
        }
    }

    fn upd(asid: u32, iova: u64, size: u64) -> RawMsg {
        RawMsg {
            asid,
            kind: MsgType::Update,
            iova,
            size,
            uaddr: 0x7f00_0000_0000u64.wrapping_add(iova),
            perm: 3,
        }
    }

    fn inv(asid: u32, iova: u64, size: u64) -> RawMsg {
        RawMsg {
            asid,
            kind: MsgType::Invalidate,
            iova,
            size,
            uaddr: 0,
            perm: 0,
        }
    }

    fn marker(asid: u32, kind: MsgType) -> RawMsg {
        RawMsg::marker(asid, kind)
    }

    #[test]
    fn update_rules() {
        let mut k = KernelIotlb::new(&DeviceCaps {
            range: DeviceRange::new(0x1000, 0xffff_ffff).unwrap(),
            ..caps()
        });
        assert_eq!(k.apply_raw(&upd(0, 0x1000, 0)), Err(Violation::ZeroSize));
        assert!(matches!(
            k.apply_raw(&upd(0, u64::MAX - 0xfff, 0x2000)),
            Err(Violation::Wraps { .. })
        ));
        assert!(matches!(
            k.apply_raw(&upd(0, 0, 0x2000)),
            Err(Violation::OutsideRange { .. })
        ));
        assert!(matches!(
            k.apply_raw(&upd(0, 0xffff_f000, 0x2000)),
            Err(Violation::OutsideRange { .. })
        ));
        assert!(k.apply_raw(&upd(0, 0x1000, 0x2000)).is_ok());
        // Any overlap, including one byte at either end, is EEXIST.
        for (iova, size) in [
            (0x1000, 0x1000),
            (0x2000, 0x1000),
            (0x0, 0x2000 + 1),
            (0x2fff, 0x1),
        ] {
            let r = k.apply_raw(&upd(0, iova.max(0x1000), size));
            assert!(
                matches!(r, Err(Violation::Overlap { .. })),
                "{iova:#x}+{size:#x}: {r:?}"
            );
            assert_eq!(r.unwrap_err().kernel_errno(), Some(17));
        }
        // Adjacent is fine.
        assert!(k.apply_raw(&upd(0, 0x3000, 0x1000)).is_ok());
        assert_eq!(k.len(0), 2);
        let mut bad = upd(0, 0x10000, 0x1000);
        bad.perm = 0;
        assert_eq!(k.apply_raw(&bad), Err(Violation::BadPerm { perm: 0 }));
        assert_eq!(k.len(0), 2);
    }

    #[test]
    fn the_entry_limit_counts_per_address_space_and_frees_on_invalidate() {
        let mut k = KernelIotlb::new(&caps()).with_entry_limit(Some(2));
        assert!(k.apply_raw(&upd(0, 0x1000, 0x1000)).is_ok());
        assert!(k.apply_raw(&upd(0, 0x3000, 0x1000)).is_ok());
        let before = k.clone();
        let r = k.apply_raw(&upd(0, 0x5000, 0x1000));
        assert_eq!(r, Err(Violation::EntryLimit { asid: 0, limit: 2 }));
        assert_eq!(r.unwrap_err().kernel_errno(), Some(28));
        assert_eq!(k, before, "a refused update changes nothing");
        // An overlap is judged first, as in the kernel (EEXIST, not ENOSPC).
        assert!(matches!(
            k.apply_raw(&upd(0, 0x1000, 0x1000)),
            Err(Violation::Overlap { .. })
        ));
        // The other address space has its own count.
        assert!(k.apply_raw(&upd(1, 0x5000, 0x1000)).is_ok());
        assert!(k.apply_raw(&inv(0, 0x1000, 0x1000)).is_ok());
        assert!(k.apply_raw(&upd(0, 0x5000, 0x1000)).is_ok());
        // No limit: kernels before the fix.
        let mut u = k.clone().with_entry_limit(None);
        assert!(u.apply_raw(&upd(0, 0x9000, 0x1000)).is_ok());
    }

    #[test]
    fn update_can_end_at_the_top_of_the_space() {
        let mut k = KernelIotlb::new(&caps());
        assert!(k.apply_raw(&upd(0, u64::MAX - 0xfff, 0x1000)).is_ok());
        assert!(k.lookup(0, Iova(u64::MAX)).is_some());
        assert!(k.apply_raw(&inv(0, u64::MAX - 0xfff, 0x1000)).is_ok());
        assert!(k.is_empty());
    }

    #[test]
    fn invalidate_drops_whole_entries_and_refuses_partial() {
        let mut k = KernelIotlb::new(&caps());
        k.apply_raw(&upd(0, 0x10000, 0x200_0000)).unwrap();
        k.apply_raw(&upd(0, 0x300_0000, 0x1000)).unwrap();
        let r = k.apply_raw(&inv(0, 0x20000, 0x1000));
        assert!(matches!(r, Err(Violation::PartialInvalidate { .. })));
        assert_eq!(r.unwrap_err().kernel_errno(), None);
        assert_eq!(k.len(0), 2);
        // A range covering both whole entries and the gap between them is exact.
        match k.apply_raw(&inv(0, 0x10000, 0x300_0000)).unwrap() {
            Applied::Unmapped(v) => assert_eq!(v.len(), 2),
            other => panic!("{other:?}"),
        }
        assert!(k.is_empty());
        // Invalidating nothing is accepted.
        assert_eq!(
            k.apply_raw(&inv(0, 0x10000, 0x1000)),
            Ok(Applied::Unmapped(SmallVec::new()))
        );
        assert_eq!(
            k.apply_raw(&inv(0, 0, 0)),
            Err(Violation::InvalidateZeroSize { iova: 0 })
        );
        assert!(matches!(
            k.apply_raw(&inv(0, u64::MAX, 2)),
            Err(Violation::InvalidateWraps { .. })
        ));
    }

    #[test]
    fn address_space_and_batch_rules() {
        let mut k = KernelIotlb::new(&caps());
        assert!(matches!(
            k.apply_raw(&upd(2, 0x1000, 0x1000)),
            Err(Violation::AsidOutOfRange { .. })
        ));
        assert_eq!(
            k.apply_raw(&inv(1, 0x1000, 0x1000)),
            Err(Violation::NoAddressSpace { asid: 1 })
        );
        assert_eq!(
            k.apply_raw(&marker(1, MsgType::BatchEnd)),
            Err(Violation::NoAddressSpace { asid: 1 })
        );
        assert_eq!(
            k.apply_raw(&marker(0, MsgType::BatchBegin)),
            Ok(Applied::BatchBegun)
        );
        assert_eq!(
            k.apply_raw(&upd(1, 0x1000, 0x1000)),
            Err(Violation::BatchAsidMismatch { batch: 0, asid: 1 })
        );
        assert_eq!(
            k.apply_raw(&marker(0, MsgType::BatchBegin)),
            Err(Violation::BatchAlreadyOpen { batch: 0 })
        );
        k.apply_raw(&upd(0, 0x1000, 0x1000)).unwrap();
        assert_eq!(
            k.apply_raw(&marker(1, MsgType::BatchEnd)),
            Err(Violation::BatchAsidMismatch { batch: 0, asid: 1 })
        );
        assert_eq!(
            k.apply_raw(&marker(0, MsgType::BatchEnd)),
            Ok(Applied::BatchEnded)
        );
        assert_eq!(
            k.apply_raw(&marker(0, MsgType::BatchEnd)),
            Err(Violation::BatchNotOpen)
        );
        // Asid 1 is independent: the same IOVA maps there.
        k.apply_raw(&upd(1, 0x1000, 0x1000)).unwrap();
        assert_eq!(k.len(1), 1);
    }

    fn device(k: &KernelIotlb, asid: u32) -> Vec<(u64, u64)> {
        k.device_entries(asid)
            .map(|e| (e.iova.first().0, e.iova.size()))
            .collect()
    }

    #[test]
    fn set_map_reset_is_restored_by_an_empty_batch() {
        let mut k = KernelIotlb::new(&caps());
        k.apply_raw(&upd(0, 0x1000, 0x1000)).unwrap();
        k.reset_device();
        assert!(k.device_stale(0));
        assert_eq!(device(&k, 0), vec![]);
        // The vhost table still holds the entry: mapping it again is EEXIST.
        assert!(matches!(
            k.apply_raw(&upd(0, 0x1000, 0x1000)),
            Err(Violation::Overlap { .. })
        ));
        k.apply_raw(&marker(0, MsgType::BatchBegin)).unwrap();
        assert!(k.device_stale(0), "nothing is pushed before BATCH_END");
        k.apply_raw(&marker(0, MsgType::BatchEnd)).unwrap();
        assert!(!k.device_stale(0));
        assert_eq!(device(&k, 0), vec![(0x1000, 0x1000)]);
    }

    #[test]
    fn set_map_device_keeps_its_table_until_batch_end() {
        let mut k = KernelIotlb::new(&caps());
        k.apply_raw(&upd(0, 0x1000, 0x1000)).unwrap();
        k.apply_raw(&marker(0, MsgType::BatchBegin)).unwrap();
        k.apply_raw(&inv(0, 0x1000, 0x1000)).unwrap();
        k.apply_raw(&upd(0, 0x4000, 0x2000)).unwrap();
        assert_eq!(device(&k, 0), vec![(0x1000, 0x1000)]);
        k.apply_raw(&marker(0, MsgType::BatchEnd)).unwrap();
        assert_eq!(device(&k, 0), vec![(0x4000, 0x2000)]);
        // Unbatched messages push at once.
        k.apply_raw(&upd(0, 0x8000, 0x1000)).unwrap();
        assert_eq!(device(&k, 0), vec![(0x4000, 0x2000), (0x8000, 0x1000)]);
    }

    #[test]
    fn dma_map_reset_needs_every_entry_mapped_again() {
        let c = DeviceCaps {
            map_style: MapStyle::DmaMap,
            ..caps()
        };
        let mut k = KernelIotlb::new(&c);
        k.apply_raw(&upd(0, 0x1000, 0x1000)).unwrap();
        k.apply_raw(&upd(0, 0x4000, 0x1000)).unwrap();
        k.reset_device();
        // An empty batch does nothing on a dma_map device.
        k.apply_raw(&marker(0, MsgType::BatchBegin)).unwrap();
        k.apply_raw(&marker(0, MsgType::BatchEnd)).unwrap();
        assert!(k.device_stale(0));
        k.apply_raw(&inv(0, 0x1000, 0x1000)).unwrap();
        k.apply_raw(&upd(0, 0x1000, 0x1000)).unwrap();
        assert_eq!(device(&k, 0), vec![(0x1000, 0x1000)]);
        assert!(k.device_stale(0));
        k.apply_raw(&inv(0, 0x4000, 0x1000)).unwrap();
        k.apply_raw(&upd(0, 0x4000, 0x1000)).unwrap();
        assert!(!k.device_stale(0));
    }

    #[test]
    fn persist_and_platform_devices_keep_their_maps() {
        for c in [
            DeviceCaps {
                persist: true,
                ..caps()
            },
            DeviceCaps {
                map_style: MapStyle::Platform,
                ..caps()
            },
        ] {
            let mut k = KernelIotlb::new(&c);
            k.apply_raw(&upd(0, 0x1000, 0x1000)).unwrap();
            k.reset_device();
            assert!(!k.device_stale(0), "{c:?}");
            assert_eq!(device(&k, 0), vec![(0x1000, 0x1000)]);
        }
    }

    #[test]
    fn permissive_model_drops_whole_entries_like_the_kernel() {
        let mut k = KernelIotlb::permissive(&caps());
        k.apply_raw(&upd(0, 0x1000, 0x4000)).unwrap();
        k.apply_raw(&upd(0, 0x8000, 0x1000)).unwrap();
        let gone = k.apply_raw(&inv(0, 0x2000, 0x1000)).unwrap();
        assert!(matches!(gone, Applied::Unmapped(v) if v.len() == 1));
        assert_eq!(device(&k, 0), vec![(0x8000, 0x1000)]);
        assert!(matches!(
            k.quirks(),
            [Violation::PartialInvalidate { first: 0x2000, .. }]
        ));
        // The rules the kernel enforces stay enforced.
        assert!(k.apply_raw(&upd(0, 0x8000, 0x1000)).is_err());
    }

    #[test]
    fn ops_convert_to_raw_messages() {
        let span = Span::new(Iova(0x2000), 0x1000, PageSize::SIZE_4K).unwrap();
        let op = Op {
            phase: Phase::Critical,
            asid: 1,
            kind: OpKind::Update {
                iova: span,
                hva: Hva(0x5000),
                perm: Perm::Ro,
            },
        };
        let raw = RawMsg::from(&op);
        assert_eq!(
            (raw.kind, raw.iova, raw.size, raw.uaddr, raw.perm, raw.asid),
            (MsgType::Update, 0x2000, 0x1000, 0x5000, 1, 1)
        );
    }

    /// Rule: an INVALIDATE that cuts an entry on one side only is partial
    /// (strict), whichever side it cuts: the range need not stick out of the
    /// entry at both ends to break it.
    #[test]
    fn rule_an_invalidate_cutting_one_side_of_an_entry_is_partial() {
        let mut k = KernelIotlb::new(&caps());
        k.apply_raw(&upd(0, 0x2000, 0x3000)).unwrap();
        for (iova, size) in [
            (0x2000, 0x1000), // same first byte, ends inside: cuts the tail
            (0x3000, 0x2000), // starts inside, same last byte: cuts the head
            (0x1000, 0x2000), // starts before, ends inside
            (0x3000, 0x3000), // starts inside, ends after
        ] {
            let r = k.apply_raw(&inv(0, iova, size));
            assert_eq!(
                r,
                Err(Violation::PartialInvalidate {
                    first: iova,
                    last: iova + size - 1,
                    entry: *k.lookup(0, Iova(0x2000)).unwrap(),
                }),
                "{iova:#x}+{size:#x}"
            );
        }
        assert_eq!(k.len(0), 1, "a refused invalidate removes nothing");
        // Exactly the entry, or more on both sides, is whole.
        assert!(k.clone().apply_raw(&inv(0, 0x2000, 0x3000)).is_ok());
        assert!(k.apply_raw(&inv(0, 0x1000, 0x5000)).is_ok());
        assert!(k.is_empty());
    }

    /// Rule: a device reset leaves an address space that was never created
    /// in step with the vhost table (both empty), while a created one that
    /// held entries is stale until restored.
    #[test]
    fn rule_a_reset_never_makes_an_uncreated_address_space_stale() {
        let mut k = KernelIotlb::new(&caps());
        // Creates address space 1 only: 0 exists in the device's view but
        // was never created.
        k.apply_raw(&upd(1, 0x1000, 0x1000)).unwrap();
        k.reset_device();
        assert!(!k.device_stale(0));
        assert!(k.device_stale(1));
        assert_eq!(device(&k, 0), vec![]);
    }

    /// Rule: the kernel answers EINVAL for a bad asid, an address space never
    /// created, another asid inside a batch, size 0, a wrap and a range the
    /// device does not accept; EEXIST for an overlap; ENOSPC for a full
    /// table; and does not enforce the strict rules (no errno).
    #[test]
    fn rule_each_violation_maps_to_the_kernels_errno() {
        let e = Entry {
            iova: Span::trusted(0x1000, 0x1000),
            hva: Hva(0x1000),
            perm: Perm::Rw,
        };
        let einval = [
            Violation::AsidOutOfRange {
                asid: 2,
                address_spaces: 1,
            },
            Violation::NoAddressSpace { asid: 1 },
            Violation::BatchAsidMismatch { batch: 0, asid: 1 },
            Violation::ZeroSize,
            Violation::Wraps { iova: 1, size: 2 },
            Violation::OutsideRange {
                first: 0,
                last: 1,
                range: DeviceRange::FULL,
            },
        ];
        for v in einval {
            assert_eq!(v.kernel_errno(), Some(22), "{v}");
        }
        assert_eq!(Violation::Overlap { existing: e }.kernel_errno(), Some(17));
        assert_eq!(
            Violation::EntryLimit { asid: 0, limit: 1 }.kernel_errno(),
            Some(28)
        );
        for v in [
            Violation::BadPerm { perm: 0 },
            Violation::InvalidateZeroSize { iova: 0 },
            Violation::InvalidateWraps { iova: 1, size: 2 },
            Violation::PartialInvalidate {
                first: 0,
                last: 1,
                entry: e,
            },
            Violation::BatchAlreadyOpen { batch: 0 },
            Violation::BatchNotOpen,
        ] {
            assert_eq!(v.kernel_errno(), None, "{v}");
        }
    }

    /// Rule: `open_batch` names the asid of the batch open now, and nothing
    /// before BATCH_BEGIN or after BATCH_END; a reset leaves it open.
    #[test]
    fn rule_open_batch_names_the_open_batchs_asid() {
        let mut k = KernelIotlb::new(&caps());
        assert_eq!(k.open_batch(), None);
        k.apply_raw(&marker(1, MsgType::BatchBegin)).unwrap();
        assert_eq!(k.open_batch(), Some(1));
        k.apply_raw(&marker(1, MsgType::BatchEnd)).unwrap();
        assert_eq!(k.open_batch(), None);
        k.apply_raw(&marker(0, MsgType::BatchBegin)).unwrap();
        assert_eq!(k.open_batch(), Some(0));
        k.reset_device();
        assert_eq!(
            k.open_batch(),
            Some(0),
            "the status ioctl's reset leaves the batch open"
        );
    }

    /// Rule: the IOTLB is empty when no address space holds an entry, even
    /// if address spaces were created, and not empty while any holds one.
    #[test]
    fn rule_is_empty_means_no_entry_in_any_address_space() {
        let mut k = KernelIotlb::new(&caps());
        assert!(k.is_empty());
        k.apply_raw(&marker(0, MsgType::BatchBegin)).unwrap();
        k.apply_raw(&marker(0, MsgType::BatchEnd)).unwrap();
        assert!(k.is_empty(), "created but empty");
        k.apply_raw(&upd(1, 0x1000, 0x1000)).unwrap();
        assert!(!k.is_empty());
        assert_eq!((k.len(0), k.len(1)), (0, 1));
        k.apply_raw(&inv(1, 0x1000, 0x1000)).unwrap();
        assert!(k.is_empty());
    }

    /// Rule: a refusal's message names the rule broken and, for the rules
    /// the kernel enforces, its errno; the strict ones say "strict".
    #[test]
    fn rule_a_violation_says_which_rule_and_errno() {
        let mut k = KernelIotlb::new(&caps());
        let msg = |r: Result<Applied, Violation>| r.unwrap_err().to_string();
        assert_eq!(
            msg(k.apply_raw(&upd(0, 0x1000, 0))),
            "update of size 0 (EINVAL)"
        );
        assert!(msg(k.apply_raw(&upd(5, 0x1000, 0x1000))).contains("asid 5 but the device has 2"));
        k.apply_raw(&upd(0, 0x1000, 0x2000)).unwrap();
        assert!(msg(k.apply_raw(&upd(0, 0x2000, 0x1000))).ends_with("(EEXIST)"));
        let partial = msg(k.apply_raw(&inv(0, 0x1000, 0x1000)));
        assert!(
            partial.contains("cuts through") && partial.ends_with("(strict)"),
            "{partial}"
        );
    }

    #[test]
    fn message_types_are_the_kernels_codes() {
        let all = [
            (MsgType::Update, 2),
            (MsgType::Invalidate, 3),
            (MsgType::BatchBegin, 5),
            (MsgType::BatchEnd, 6),
        ];
        for (t, code) in all {
            assert_eq!(t.code(), code);
        }
        for code in 0..=u8::MAX {
            let want = all.iter().find(|&&(_, c)| c == code).map(|&(t, _)| t);
            assert_eq!(MsgType::from_code(code), want, "{code}");
        }
    }
}
