//! The baseline ([`QemuPlanner`]) fed a recording's events, compared with
//! what QEMU sent, step by step and message by message: type, asid, iova,
//! size, perm, batch structure and order, and host addresses relative to
//! their region ([`Host`]).
//!
//! Where the baseline simplifies QEMU on purpose, the difference is a
//! [`Known`] one: a rewrite of QEMU's messages into the baseline's shape,
//! named after the QEMU function that causes it and listed in the
//! baseline's documentation (`src/strategy/qemu.rs`). A step matches
//! exactly, or matches once its known rewrites are applied (and the
//! report says which); anything else is a mismatch.

use std::collections::BTreeMap;
use std::fmt;

use vdpa_iova_planner::{Address, Event, OpKind, QemuPlanner, Strategy};

use super::convert::{locate, Host, Msg, MsgKind, Scenario};

/// A difference between QEMU and the baseline that the baseline documents.
#[derive(Clone, Copy, Debug)]
pub struct Known {
    /// Short name.
    pub name: &'static str,
    /// The QEMU function that causes it, and what it does.
    pub qemu: &'static str,
    /// QEMU's messages of one step rewritten into the baseline's shape
    /// (`None`: the pattern is not there).
    pub rewrite: fn(&[Msg]) -> Option<Vec<Msg>>,
}

/// QEMU maps the board's memory in the memory transactions that create it
/// (one listener batch per transaction, while the machine is built); the
/// baseline is given every region at once and maps them in one batch.
pub const BOARD_BATCHES: Known = Known {
    name: "board-batches",
    qemu: "vhost_vdpa_listener_commit: one batch per memory transaction of board creation \
           (pc_memory_init, the ROMs), the baseline's incoming() maps all sections in one",
    rewrite: merge_update_batches,
};

/// QEMU unmaps the control queue's shadow vring before the guest memory
/// batch and its buffers after; the baseline unmaps all four after it.
pub const CVQ_RINGS_FIRST: Known = Known {
    name: "cvq-rings-first",
    qemu: "vhost_vdpa_svqs_stop unmaps the control queue's shadow vring before \
           vhost_vdpa_reset_device's guest memory batch, vhost_vdpa_net_cvq_stop its buffers \
           after it; the baseline unmaps all four host buffers after the batch",
    rewrite: cvq_rings_after_batch,
};

/// Every known difference, in the order they are applied.
pub const KNOWN: &[Known] = &[BOARD_BATCHES, CVQ_RINGS_FIRST];

fn only_updates(batch: &[Msg]) -> bool {
    batch.iter().all(|m| m.kind == MsgKind::Update)
}

/// Adjacent batches of UPDATEs only, merged into one.
fn merge_update_batches(msgs: &[Msg]) -> Option<Vec<Msg>> {
    let mut out: Vec<Msg> = Vec::with_capacity(msgs.len());
    let mut changed = false;
    let mut i = 0;
    while i < msgs.len() {
        let m = msgs[i];
        if m.kind == MsgKind::Begin && out.last().is_some_and(|l| l.kind == MsgKind::End) {
            // The batch before: back to its Begin.
            let start = out.iter().rposition(|x| x.kind == MsgKind::Begin);
            let end = msgs[i..].iter().position(|x| x.kind == MsgKind::End);
            if let (Some(s), Some(e)) = (start, end) {
                let before = &out[s + 1..out.len() - 1];
                let after = &msgs[i + 1..i + e];
                if only_updates(before) && only_updates(after) {
                    out.pop();
                    changed = true;
                    i += 1;
                    continue;
                }
            }
        }
        out.push(m);
        i += 1;
    }
    changed.then_some(out)
}

fn is_buffer_unmap(m: &Msg) -> bool {
    m.kind == MsgKind::Invalidate && matches!(m.host, Some(Host::Buffer { .. }))
}

/// Host buffer INVALIDATEs sent right before the first batch of INVALIDATEs
/// moved to after the host buffer INVALIDATEs that follow it.
fn cvq_rings_after_batch(msgs: &[Msg]) -> Option<Vec<Msg>> {
    let b = msgs.iter().position(|m| m.kind == MsgKind::Begin)?;
    let e = b + msgs[b..].iter().position(|m| m.kind == MsgKind::End)?;
    if !msgs[b + 1..e].iter().all(|m| m.kind == MsgKind::Invalidate) {
        return None;
    }
    let run = msgs[..b]
        .iter()
        .rev()
        .take_while(|m| is_buffer_unmap(m))
        .count();
    if run == 0 {
        return None;
    }
    let after = msgs[e + 1..]
        .iter()
        .take_while(|m| is_buffer_unmap(m))
        .count();
    let mut out = msgs[..b - run].to_vec();
    out.extend_from_slice(&msgs[b..=e + after]);
    out.extend_from_slice(&msgs[b - run..b]);
    out.extend_from_slice(&msgs[e + 1 + after..]);
    Some(out)
}

/// The recorded messages with the known rewrites of `which` applied.
fn rewritten(rec: &[Msg], which: &[&Known]) -> Vec<Msg> {
    let mut out = rec.to_vec();
    for k in which {
        if let Some(r) = (k.rewrite)(&out) {
            out = r;
        }
    }
    out
}

/// The fewest known differences that make `rec` the baseline's `base`, or
/// the first difference left once every applicable one is applied.
fn explain(rec: &[Msg], base: &[Msg]) -> (Vec<&'static str>, Option<String>) {
    if first_difference(rec, base).is_none() {
        return (Vec::new(), None);
    }
    let mut used: Vec<&Known> = KNOWN.iter().collect();
    if let Some(m) = first_difference(&rewritten(rec, &used), base) {
        return (Vec::new(), Some(m));
    }
    // Keep only the rewrites the match needs.
    let mut i = 0;
    while i < used.len() {
        let mut without = used.clone();
        without.remove(i);
        if first_difference(&rewritten(rec, &without), base).is_none() {
            used = without;
        } else {
            i += 1;
        }
    }
    (used.iter().map(|k| k.name).collect(), None)
}

/// One step's comparison.
#[derive(Clone, Debug)]
pub struct StepResult {
    /// Index in the recording's steps.
    pub index: usize,
    /// The event's name.
    pub event: &'static str,
    /// What QEMU sent.
    pub recorded: Vec<Msg>,
    /// What the baseline planned.
    pub baseline: Vec<Msg>,
    /// The known differences whose rewrite this step needed.
    pub known: Vec<&'static str>,
    /// The first difference left, if any: position and description.
    pub mismatch: Option<String>,
}

impl fmt::Display for StepResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "step {:>2} {:<12} {:>3} msgs: ",
            self.index,
            self.event,
            self.recorded.len()
        )?;
        match &self.mismatch {
            None if self.known.is_empty() => f.write_str("same"),
            None => write!(f, "same but for known: {}", self.known.join(", ")),
            Some(m) => write!(f, "MISMATCH {m}"),
        }
    }
}

fn same(a: &Msg, b: &Msg) -> bool {
    match a.kind {
        MsgKind::Begin | MsgKind::End => a.kind == b.kind,
        MsgKind::Update => {
            a.kind == b.kind
                && (a.asid, a.iova, a.size, a.perm, a.host)
                    == (b.asid, b.iova, b.size, b.perm, b.host)
        }
        MsgKind::Invalidate => {
            a.kind == b.kind && (a.asid, a.iova, a.size, a.host) == (b.asid, b.iova, b.size, b.host)
        }
    }
}

fn first_difference(rec: &[Msg], base: &[Msg]) -> Option<String> {
    let n = rec.len().max(base.len());
    (0..n).find_map(|i| match (rec.get(i), base.get(i)) {
        (Some(r), Some(b)) if same(r, b) => None,
        (r, b) => Some(format!(
            "at message {i}: QEMU {} (trace line {}), baseline {}",
            r.map_or("nothing".to_string(), |m| m.to_string()),
            r.map_or(0, |m| m.line),
            b.map_or("nothing".to_string(), |m| m.to_string()),
        )),
    })
}

/// The baseline's messages for every step of `sc`.
///
/// # Errors
/// The baseline refusing an event (with the step).
pub fn baseline(sc: &Scenario) -> Result<Vec<Vec<Msg>>, String> {
    let mut q = QemuPlanner::new(sc.caps).map_err(|e| format!("{}: baseline: {e}", sc.name))?;
    let layout = sc
        .svq
        .layout(sc.caps.page_size)
        .map_err(|e| format!("{}: shadow virtqueues: {e}", sc.name))?;
    let block = sc.svq.hva.raw();
    let rings = Some((block, block + layout.total() * u64::from(sc.svq.queues) - 1));
    let mut regions = sc.regions.clone();
    let mut entries: BTreeMap<(u32, u64, u64), Host> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, st) in sc.steps.iter().enumerate() {
        if let Event::Hotplug(r) = &st.event {
            regions.push(*r);
        }
        let plan = q
            .apply(&st.event)
            .map_err(|e| format!("{}: step {i} ({}): baseline: {e}", sc.name, st.event.name()))?;
        let msgs = plan
            .ops()
            .iter()
            .map(|op| {
                let blank = Msg {
                    kind: MsgKind::Begin,
                    asid: op.asid,
                    iova: 0,
                    size: 0,
                    perm: 0,
                    host: None,
                    line: 0,
                };
                match op.kind {
                    OpKind::BatchBegin => blank,
                    OpKind::BatchEnd => Msg {
                        kind: MsgKind::End,
                        ..blank
                    },
                    OpKind::Update { iova, hva, perm } => {
                        let host = locate(&regions, &sc.buffers, rings, hva.raw());
                        let (f, s) = (iova.first().raw(), iova.size());
                        if let Some(h) = host {
                            entries.insert((op.asid, f, s), h);
                        }
                        Msg {
                            kind: MsgKind::Update,
                            iova: f,
                            size: s,
                            perm: perm.to_kernel(),
                            host,
                            ..blank
                        }
                    }
                    OpKind::Invalidate { iova } => {
                        let (f, s) = (iova.first().raw(), iova.size());
                        Msg {
                            kind: MsgKind::Invalidate,
                            iova: f,
                            size: s,
                            host: entries.remove(&(op.asid, f, s)),
                            ..blank
                        }
                    }
                }
            })
            .collect();
        out.push(msgs);
    }
    Ok(out)
}

/// Compares every step of `sc` with the baseline.
///
/// # Errors
/// As [`baseline`].
pub fn compare(sc: &Scenario) -> Result<Vec<StepResult>, String> {
    let base = baseline(sc)?;
    Ok(sc
        .steps
        .iter()
        .zip(base)
        .enumerate()
        .map(|(index, (st, b))| {
            let (known, mismatch) = explain(&st.msgs, &b);
            StepResult {
                index,
                event: st.event.name(),
                recorded: st.msgs.clone(),
                baseline: b,
                known,
                mismatch,
            }
        })
        .collect())
}
