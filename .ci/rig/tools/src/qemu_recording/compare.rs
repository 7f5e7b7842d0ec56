//! The baseline ([`QemuPlanner`]) fed a recording's events, compared with
//! what QEMU sent, step by step and message by message: type, asid, iova,
//! size, perm, batch structure and order, and host addresses relative to
//! their region ([`Host`]).
//!
//! Where the baseline simplifies QEMU on purpose, the difference is a
//! [`Known`] one: a rewrite of QEMU's messages into the baseline's shape,
//! named after the QEMU function that causes it and listed in the
//! baseline's documentation (`src/strategy/qemu/mod.rs`). A step matches
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
    /// The events (by name) whose steps it may appear in.
    pub steps: &'static [&'static str],
    /// QEMU's messages of one step rewritten into the baseline's shape
    /// (`None`: the pattern is not there).
    pub rewrite: fn(&[Msg]) -> Option<Vec<Msg>>,
}

/// QEMU's listener follows the board's memory while the machine is built
/// (registered at netdev creation, before the board exists): each memory
/// transaction is a batch, and a section that a later piece overlays (low
/// RAM under the BIOS and option ROM pieces) is unmapped and mapped again in
/// pieces; the baseline is given the finished board and maps its sections
/// once, in one batch, before the machine-creation reset unmaps them.
pub const BOARD_BUILD: Known = Known {
    name: "board-build",
    qemu: "vhost_vdpa_listener_region_add/_del during board creation (the listener is \
           registered by vhost_vdpa_set_owner before machine_run_board_init): the baseline's \
           incoming() maps the finished board's sections in one batch",
    steps: &["incoming"],
    rewrite: board_net_effect,
};

/// QEMU unmaps the control queue's shadow vring before the guest memory
/// batch and its buffers after; the baseline unmaps all four after it.
pub const CVQ_RINGS_FIRST: Known = Known {
    name: "cvq-rings-first",
    qemu: "vhost_vdpa_svqs_stop unmaps the control queue's shadow vring before \
           vhost_vdpa_reset_device's guest memory batch, vhost_vdpa_net_cvq_stop its buffers \
           after it; the baseline unmaps all four host buffers after the batch",
    steps: &["svq_switch", "failback", "complete", "reset"],
    rewrite: cvq_rings_after_batch,
};

/// Every known difference, in the order they are applied.
pub const KNOWN: &[Known] = &[BOARD_BUILD, CVQ_RINGS_FIRST];

/// Everything before the step's last batch (the machine-creation reset's
/// INVALIDATEs) replaced by its net effect: the entries then live, mapped
/// in one batch in IOVA order.
fn board_net_effect(msgs: &[Msg]) -> Option<Vec<Msg>> {
    let last_begin = msgs.iter().rposition(|m| m.kind == MsgKind::Begin)?;
    let reset = &msgs[last_begin..];
    if !reset
        .iter()
        .all(|m| matches!(m.kind, MsgKind::Begin | MsgKind::End | MsgKind::Invalidate))
    {
        return None;
    }
    let build = &msgs[..last_begin];
    // Whole batches only, as the listener sends them.
    let mut open = false;
    for m in build {
        match m.kind {
            MsgKind::Begin if !open => open = true,
            MsgKind::End if open => open = false,
            MsgKind::Begin | MsgKind::End => return None,
            _ if !open => return None,
            _ => {}
        }
    }
    if open {
        return None;
    }
    // Replayed as the kernel would take it: an UPDATE that overlaps a live
    // entry, or an INVALIDATE that is not exactly one, is not a board build.
    let mut live: BTreeMap<(u32, u64), Msg> = BTreeMap::new();
    for m in build {
        match m.kind {
            MsgKind::Update => {
                let overlaps = live.values().any(|e| {
                    e.asid == m.asid && e.iova < m.iova + m.size && m.iova < e.iova + e.size
                });
                if overlaps || m.size == 0 {
                    return None;
                }
                live.insert((m.asid, m.iova), *m);
            }
            MsgKind::Invalidate => match live.get(&(m.asid, m.iova)) {
                Some(e) if e.size == m.size => {
                    live.remove(&(m.asid, m.iova));
                }
                _ => return None,
            },
            _ => {}
        }
    }
    let begin = msgs[last_begin];
    let end = *reset.last()?;
    let mut out = vec![begin];
    out.extend(live.into_values());
    out.push(end);
    out.extend_from_slice(reset);
    (out != msgs).then_some(out)
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
fn explain(event: &str, rec: &[Msg], base: &[Msg]) -> (Vec<&'static str>, Option<String>) {
    let Some(raw) = first_difference(rec, base) else {
        return (Vec::new(), None);
    };
    let mut used: Vec<&Known> = KNOWN.iter().filter(|k| k.steps.contains(&event)).collect();
    if first_difference(&rewritten(rec, &used), base).is_some() {
        return (Vec::new(), Some(raw));
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
    let bytes = sc
        .svq
        .host_bytes(sc.caps.page_size)
        .map_err(|e| format!("{}: shadow virtqueues: {e}", sc.name))?;
    let block = sc.svq.hva.raw();
    let rings = Some((block, block + bytes - 1));
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
            let (known, mismatch) = explain(st.event.name(), &st.msgs, &b);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kind: MsgKind, iova: u64, host: Option<Host>) -> Msg {
        Msg {
            kind,
            asid: 0,
            iova,
            size: 0x1000,
            perm: if kind == MsgKind::Update { 3 } else { 0 },
            host,
            line: 0,
        }
    }
    fn buf(i: usize) -> Option<Host> {
        Some(Host::Buffer {
            index: i,
            offset: 0,
        })
    }
    fn reg(i: usize) -> Option<Host> {
        Some(Host::Region {
            index: i,
            offset: 0,
        })
    }
    use MsgKind::{Begin as B, End as E, Invalidate as I, Update as U};

    #[test]
    fn board_build_is_replaced_by_its_net_effect() {
        let rec = [
            m(B, 0, None),
            m(U, 0x2000, reg(1)),
            m(E, 0, None),
            m(B, 0, None),
            m(I, 0x2000, reg(1)),
            m(U, 0, reg(0)),
            m(U, 0x3000, reg(1)),
            m(E, 0, None),
            m(B, 0, None),
            m(I, 0, reg(0)),
            m(I, 0x3000, reg(1)),
            m(E, 0, None),
        ];
        let out = board_net_effect(&rec).unwrap();
        let got: Vec<(MsgKind, u64)> = out.iter().map(|m| (m.kind, m.iova)).collect();
        assert_eq!(
            got,
            [
                (B, 0),
                (U, 0),
                (U, 0x3000),
                (E, 0),
                (B, 0),
                (I, 0),
                (I, 0x3000),
                (E, 0)
            ]
        );
        // Already in that shape: not applicable.
        assert!(board_net_effect(&out).is_none());
    }

    #[test]
    fn cvq_rings_move_after_the_batch_and_the_buffers() {
        let rec = [
            m(I, 0x9000, Some(Host::Ring)),
            m(I, 0x3000, buf(2)),
            m(I, 0x4000, buf(3)),
            m(B, 0, None),
            m(I, 0, reg(0)),
            m(E, 0, None),
            m(I, 0x1000, buf(0)),
            m(I, 0x2000, buf(1)),
            m(U, 0x1000, buf(0)),
        ];
        let out = cvq_rings_after_batch(&rec).unwrap();
        let iovas: Vec<u64> = out.iter().map(|m| m.iova).collect();
        assert_eq!(
            iovas,
            [0x9000, 0, 0, 0, 0x1000, 0x2000, 0x3000, 0x4000, 0x1000]
        );
        assert!(cvq_rings_after_batch(&out).is_none());
    }

    #[test]
    fn explain_names_only_the_needed_rewrites_and_reports_the_rest() {
        let base = [
            m(B, 0, None),
            m(U, 0, reg(0)),
            m(U, 0x1000, reg(1)),
            m(E, 0, None),
            m(B, 0, None),
            m(I, 0, reg(0)),
            m(I, 0x1000, reg(1)),
            m(E, 0, None),
        ];
        let rec = [
            m(B, 0, None),
            m(U, 0x1000, reg(1)),
            m(E, 0, None),
            m(B, 0, None),
            m(U, 0, reg(0)),
            m(E, 0, None),
            m(B, 0, None),
            m(I, 0, reg(0)),
            m(I, 0x1000, reg(1)),
            m(E, 0, None),
        ];
        assert_eq!(
            explain("incoming", &rec, &base),
            (vec!["board-build"], None)
        );
        assert_eq!(explain("incoming", &base, &base), (vec![], None));
        // Only where it can appear.
        assert!(explain("start", &rec, &base).1.is_some());
        let mut moved = rec;
        moved[7].iova = 0x2000;
        let (k, miss) = explain("incoming", &moved, &base);
        assert!(k.is_empty());
        assert!(miss.unwrap().starts_with("at message 1: QEMU UPDATE"));
    }
}
