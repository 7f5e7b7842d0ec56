//! `kernel-diff`: the kernel model (`KernelIotlb`) against the real kernel,
//! on random raw message sequences (`proptests::kdiff`), message by message.
//!
//! ```text
//! kernel-diff --device /dev/vhost-vdpa-N --label NAME [--sequences N] [--seed S] [--plant overlap]
//! kernel-diff --vduse --label NAME [--sequences N] [--seed S]
//! ```
//!
//! Each sequence runs on a fresh open of the device (closing the file ends
//! every address space, batch and map) and on a fresh permissive model of
//! it, built from what the probe found (address spaces, IOVA range,
//! batching, persist, pinning, map style, `max_iotlb_entries`). After every
//! message the result of the `write(2)` (success, or its errno) must be what
//! the model says userspace sees ([`Violation::user_errno`]; a strict rule
//! the kernel does not enforce is a success). With `--vduse` the tool
//! creates its own VDUSE device and, after every step, also reads the
//! device's whole table back (`VDUSE_IOTLB_GET_FD`) and compares it with
//! the model's view of the device: every entry's range and perm, and the
//! tag at the start of every mapped page (the memory's own address). On
//! vdpa_sim, which offers `IOTLB_PERSIST`, every other sequence leaves it
//! unacked, so resets with and without persist both happen. VDUSE offers no
//! persist and keeps its table across a reset (seen on 6.12): its model is
//! given `persist`.
//!
//! A divergence is printed with its sequence, then minimized (steps
//! removed while the same divergence stays, each try on a fresh open) and
//! printed as the steps of a regression test for
//! `tests/kernel_diff_regressions.rs`.
//!
//! `--sequences` (default 700) is the least; `KDIFF_SECONDS` keeps
//! generating sequences until that many seconds have passed. `--plant
//! overlap` runs a planted bug instead: a model that takes an UPDATE
//! overlapping a live entry. The run must catch it; it stops at the first
//! divergence, prints how many messages and how long that took, and exits 0
//! only if it was caught.
//!
//! Prints `KDIFF label: N sequences, M messages, D divergences`; exits 1 on
//! any divergence (or a device error). `kernel-diff --vduse-cleanup`
//! removes the VDUSE device a finished run leaves (it cannot go while the
//! run's process holds it open).

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use proptests::kdiff::{length, sequence, Step, Target};
use vdpa_adapter::device::VhostVdpa;
use vdpa_adapter::memory::{Backing, Mem};
use vdpa_adapter::sink::MsgSink;
use vdpa_adapter::uapi::{backend, encode, MsgFormat, MSG_LEN};
use vdpa_iova_planner::kernel::{MsgType, RawMsg, Violation};
use vdpa_iova_planner::KernelIotlb;
use vdpa_rig_tools::vduse;

const PAGE: u64 = 4096;
/// The VDUSE device's name.
const VDUSE_NAME: &str = "vdpa-kdiff";
/// Entries of at most this size are read back page by page (the run maps
/// no more); a larger one is compared by its range and perm only.
const TAGGED: u64 = 64 << 20;
/// The second half of every page's tag.
const MAGIC: u64 = 0x6b64_6966_665f_7467;
/// The memory accepted UPDATEs map.
const MEM: u64 = 16 << 20;
/// Divergences minimized per run (the rest are counted).
const MINIMIZE: usize = 3;

/// What a write returned: `Ok`, or the errno.
type WriteResult = Result<(), i32>;

#[derive(Clone, Debug, PartialEq, Eq)]
enum What {
    /// The write's result differs.
    Write { want: WriteResult, got: WriteResult },
    /// The device's table (VDUSE) differs.
    Table(String),
}

#[derive(Clone, Debug)]
struct Divergence {
    step: usize,
    kind: Option<MsgType>,
    what: What,
}

impl Divergence {
    /// The same divergence: same message kind, same difference (tables by
    /// the fact that they differ).
    fn same(&self, o: &Divergence) -> bool {
        self.kind == o.kind
            && match (&self.what, &o.what) {
                (What::Table(_), What::Table(_)) => true,
                (a, b) => a == b,
            }
    }
}

enum Device {
    Node(String),
    Vduse(vduse::Vduse),
}

struct Run {
    label: String,
    dev: Device,
    mem: Mem,
    plant: bool,
    /// VDUSE: opens that found the previous owner's table still on the device.
    stale: u64,
    /// How often the model gave each verdict, over the compared messages.
    verdicts: std::collections::BTreeMap<&'static str, u64>,
}

/// The name of a verdict of the model.
fn verdict_name(r: &Result<vdpa_iova_planner::kernel::Applied, Violation>) -> &'static str {
    match r {
        Ok(_) => "accepted",
        Err(v) => match v {
            Violation::AsidOutOfRange { .. } => "AsidOutOfRange",
            Violation::NoAddressSpace { .. } => "NoAddressSpace",
            Violation::BatchAsidMismatch { .. } => "BatchAsidMismatch",
            Violation::ZeroSize => "ZeroSize",
            Violation::Wraps { .. } => "Wraps",
            Violation::OutsideRange { .. } => "OutsideRange",
            Violation::Overlap { .. } => "Overlap",
            Violation::EntryLimit { .. } => "EntryLimit",
            Violation::BadPerm { .. } => "BadPerm",
            _ => "other",
        },
    }
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

impl Run {
    fn node(&self) -> &str {
        match &self.dev {
            Device::Node(n) => n,
            Device::Vduse(v) => &v.node,
        }
    }

    /// Opens the device, negotiates (without `IOTLB_PERSIST` when
    /// `no_persist`), and describes it for the generator and the model.
    fn open(&self, no_persist: bool) -> Result<(VhostVdpa, Target, MsgFormat), String> {
        let mut d = VhostVdpa::open(Path::new(self.node())).map_err(|e| e.to_string())?;
        let withheld = if no_persist {
            1 << backend::IOTLB_PERSIST
        } else {
            0
        };
        let p = d.probe_without(withheld).map_err(|e| e.to_string())?;
        let vduse = matches!(self.dev, Device::Vduse(_));
        let pinning = p.pins_memory();
        let t = Target {
            address_spaces: p.address_spaces,
            range: p.range,
            mem: (self.mem.addr(), self.mem.len()),
            batching: p.acked & (1 << backend::IOTLB_BATCH) != 0,
            // On a pinning device one UPDATE may be many kernel entries:
            // the limit is left to the kernel's default, which these
            // tables never reach, and not modelled.
            entry_limit: if pinning {
                None
            } else {
                p.max_entries.map(|n| n as usize)
            },
            pinning,
            map_style: p.map_style,
            persist: vduse || p.acked & (1 << backend::IOTLB_PERSIST) != 0,
        };
        Ok((d, t, p.format()))
    }

    /// Plays a sequence on a fresh open and a fresh model; the first
    /// divergence, if any.
    fn play(&mut self, steps: &[Step], no_persist: bool) -> Result<Option<Divergence>, String> {
        self.clear_vduse()?;
        let (mut d, t, format) = self.open(no_persist)?;
        let mut k = t.model();
        for (i, s) in steps.iter().enumerate() {
            // An UPDATE the kernel maps with a perm an entry cannot hold:
            // on the device until the INVALIDATE that follows it.
            let mut extra = None;
            let kind = match s {
                Step::Reset => {
                    d.reset().map_err(|e| format!("reset: {e}"))?;
                    k.reset_device();
                    None
                }
                Step::Msg(m) => {
                    let quirks = k.quirks().len();
                    let verdict = k.apply_raw(m);
                    let name = match k.quirks().get(quirks) {
                        // Taken like the kernel, against a strict rule.
                        Some(Violation::PartialInvalidate { .. }) => "PartialInvalidate",
                        Some(Violation::InvalidateZeroSize { .. }) => "InvalidateZeroSize",
                        Some(Violation::InvalidateWraps { .. }) => "InvalidateWraps",
                        Some(Violation::BatchAlreadyOpen { .. }) => "BatchAlreadyOpen",
                        Some(Violation::BatchNotOpen) => "BatchNotOpen",
                        _ => verdict_name(&verdict),
                    };
                    *self.verdicts.entry(name).or_default() += 1;
                    let mut want = match &verdict {
                        Ok(_) => Ok(()),
                        Err(v) => v.user_errno().map_or(Ok(()), Err),
                    };
                    if self.plant && matches!(verdict, Err(Violation::Overlap { .. })) {
                        want = Ok(());
                    }
                    if matches!(verdict, Err(Violation::BadPerm { .. })) {
                        extra = Some(*m);
                    }
                    let b = encode(m, format).map_err(|e| format!("{m:?}: {e}"))?;
                    let got = match d.send(&b) {
                        Ok(MSG_LEN) => Ok(()),
                        Ok(n) => return Err(format!("{m:?}: short write of {n} bytes")),
                        Err(e) => Err(errno(&e)),
                    };
                    if want != got {
                        return Ok(Some(Divergence {
                            step: i,
                            kind: Some(m.kind),
                            what: What::Write { want, got },
                        }));
                    }
                    Some(m.kind)
                }
            };
            if let Device::Vduse(v) = &self.dev {
                let shown =
                    k.open_batch().is_none() || t.map_style != vdpa_iova_planner::MapStyle::SetMap;
                if let Err(e) = compare(&k, extra.filter(|_| shown), &v.read_back(TAGGED)?) {
                    return Ok(Some(Divergence {
                        step: i,
                        kind,
                        what: What::Table(e),
                    }));
                }
            }
        }
        drop(d);
        Ok(None)
    }

    /// VDUSE keeps the table of the last push when vhost-vdpa's file is
    /// closed (vhost-vdpa unmaps its own table, and pushes nothing to a
    /// `set_map` parent without `reset_map`; seen on 6.12.118): the next
    /// owner starts with the old entries on the device. Counted, and
    /// cleared with an empty batch (a push of the empty table) on an open of
    /// its own, so every sequence starts from an empty device.
    fn clear_vduse(&mut self) -> Result<(), String> {
        let Device::Vduse(v) = &self.dev else {
            return Ok(());
        };
        if v.read_back(TAGGED)?.is_empty() {
            return Ok(());
        }
        self.stale += 1;
        let (mut d, _, format) = self.open(false)?;
        for kind in [MsgType::BatchBegin, MsgType::BatchEnd] {
            let b = encode(&RawMsg::marker(0, kind), format).map_err(|e| e.to_string())?;
            d.send(&b)
                .map_err(|e| format!("clearing the VDUSE table: {e}"))?;
        }
        drop(d);
        let Device::Vduse(v) = &self.dev else {
            unreachable!()
        };
        let left = v.read_back(TAGGED)?;
        if !left.is_empty() {
            return Err(format!(
                "an empty batch left {} entries on the VDUSE device",
                left.len()
            ));
        }
        Ok(())
    }

    /// The shortest sequence found that still shows `div`: steps after it
    /// dropped, then chunks of steps before it, halving the chunk size.
    fn minimize(
        &mut self,
        steps: &[Step],
        div: &Divergence,
        no_persist: bool,
    ) -> Result<(Vec<Step>, Divergence), String> {
        let mut cur = steps[..=div.step].to_vec();
        let mut last = div.clone();
        let mut chunk = cur.len().div_ceil(2);
        while chunk >= 1 {
            let mut i = 0;
            while i < cur.len() {
                let mut cand = cur.clone();
                cand.drain(i..(i + chunk).min(cur.len()));
                match self.play(&cand, no_persist)? {
                    Some(d) if d.same(div) => {
                        cand.truncate(d.step + 1);
                        cur = cand;
                        last = d;
                    }
                    _ => i += chunk,
                }
            }
            if chunk == 1 {
                break;
            }
            chunk = chunk.div_ceil(2).min(chunk - 1);
        }
        Ok((cur, last))
    }
}

/// The model's view of the device (address space 0: VDUSE has one), plus
/// an UPDATE it refused for its perm, against the table read back.
fn compare(k: &KernelIotlb, extra: Option<RawMsg>, have: &[vduse::ReadBack]) -> Result<(), String> {
    let mut want: Vec<(u64, u64, u8, u64)> = k
        .device_entries(0)
        .map(|e| {
            (
                e.iova.first().0,
                e.iova.last().0,
                e.perm.to_kernel(),
                e.hva.0,
            )
        })
        .collect();
    if let Some(m) = extra {
        if k.lookup(0, vdpa_iova_planner::Iova(m.iova)).is_none() {
            want.push((m.iova, m.iova + (m.size - 1), m.perm, m.uaddr));
        }
    }
    want.sort_unstable();
    let got: Vec<_> = have
        .iter()
        .map(|(e, _)| (e.start, e.last, e.perm))
        .collect();
    let want_ranges: Vec<_> = want.iter().map(|&(f, l, p, _)| (f, l, p)).collect();
    if got != want_ranges {
        return Err(format!(
            "the device holds {got:x?}, the model {want_ranges:x?}"
        ));
    }
    for ((e, tags), &(f, l, _, hva)) in have.iter().zip(&want) {
        for (i, t) in tags.iter().enumerate() {
            let h = hva + i as u64 * PAGE;
            let mut mine = [0u8; 16];
            mine[..8].copy_from_slice(&h.to_le_bytes());
            mine[8..].copy_from_slice(&MAGIC.to_le_bytes());
            // The last page of an entry that ends inside it maps fewer bytes.
            let n = (l - f - i as u64 * PAGE + 1).min(16) as usize;
            if t[..n] != mine[..n] {
                return Err(format!(
                    "entry {:#x}: page at iova {:#x} reads {t:02x?}, the memory at {h:#x} is {mine:02x?}",
                    e.start,
                    f + i as u64 * PAGE
                ));
            }
        }
    }
    Ok(())
}

struct Args {
    device: Option<String>,
    vduse: bool,
    label: String,
    sequences: u64,
    seed: u64,
    plant: bool,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        device: None,
        vduse: false,
        label: String::new(),
        sequences: 700,
        seed: 26,
        plant: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match x.as_str() {
            "--device" => a.device = Some(val("--device")?),
            "--vduse" => a.vduse = true,
            "--label" => a.label = val("--label")?,
            "--sequences" => {
                a.sequences = val("--sequences")?
                    .parse()
                    .map_err(|e| format!("--sequences: {e}"))?
            }
            "--seed" => a.seed = val("--seed")?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--plant" => match val("--plant")?.as_str() {
                "overlap" => a.plant = true,
                p => return Err(format!("--plant {p}: only overlap")),
            },
            _ => return Err(format!("unknown argument {x}")),
        }
    }
    if a.device.is_some() == a.vduse {
        return Err("usage: kernel-diff (--device NODE | --vduse) --label NAME [--sequences N] [--seed S] [--plant overlap]".into());
    }
    if a.label.is_empty() {
        a.label = a.device.clone().unwrap_or_else(|| "vduse".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            println!("KDIFF-FAIL {e}");
            ExitCode::FAILURE
        }
    }
}

/// Lines of the kernel log with this text (busybox or util-linux `dmesg`).
fn kernel_log_count(text: &str) -> usize {
    std::process::Command::new("dmesg")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains(text))
                .count()
        })
        .unwrap_or(0)
}

/// VDUSE's `VDUSE_IOTLB_GET_FD` warns (`WARN`, a stack trace and the
/// kernel tainted) on an entry whose perm is not RO, WO or RW, which
/// vhost-vdpa puts there without complaint.
const VDUSE_PERM_WARNING: &str = "invalidate vhost IOTLB permission";

fn run() -> Result<bool, String> {
    if std::env::args().nth(1).as_deref() == Some("--vduse-cleanup") {
        vduse::destroy(VDUSE_NAME);
        return Ok(true);
    }
    let a = args()?;
    let warnings_before = kernel_log_count(VDUSE_PERM_WARNING);
    let seconds: u64 = std::env::var("KDIFF_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let dev = match &a.device {
        Some(n) => Device::Node(n.clone()),
        None => Device::Vduse(vduse::Vduse::create(VDUSE_NAME)?),
    };
    let mut mem = Mem::new(MEM, Backing::Memfd, "kernel-diff").map_err(|e| e.to_string())?;
    let base = mem.addr();
    mem.tag_pages(base, PAGE, MAGIC);
    let mut r = Run {
        label: a.label.clone(),
        dev,
        mem,
        plant: a.plant,
        stale: 0,
        verdicts: Default::default(),
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let start = Instant::now();
    let (mut seqs, mut msgs, mut resets, mut divs) = (0u64, 0u64, 0u64, 0usize);
    let mut minimized = 0;
    let mut i = 0u64;
    while i < a.sequences || start.elapsed().as_secs() < seconds {
        let seed = a.seed.wrapping_mul(0x0100_0000_01b3) ^ i;
        let no_persist = i % 2 == 1;
        let (_, t, _) = r.open(no_persist)?;
        let steps = sequence(&t, seed, length(a.seed, i));
        let div = r.play(&steps, no_persist)?;
        let upto = div.as_ref().map_or(steps.len(), |d| d.step + 1);
        seqs += 1;
        resets += steps[..upto].iter().filter(|s| **s == Step::Reset).count() as u64;
        msgs += steps[..upto].iter().filter(|s| **s != Step::Reset).count() as u64;
        if let Some(d) = div {
            divs += 1;
            println!(
                "KDIFF-DIVERGENCE {} sequence {i} (seed {seed}, persist {}) step {}: {} {:?}",
                r.label,
                if no_persist { "off" } else { "as offered" },
                d.step,
                match steps[d.step] {
                    Step::Msg(m) => format!("{m:x?}"),
                    Step::Reset => "reset".into(),
                },
                d.what
            );
            if a.plant {
                println!(
                    "KDIFF-PLANTED {}: the model that takes an overlapping UPDATE was caught after {} sequences, {} messages, {} ms",
                    r.label,
                    seqs,
                    msgs,
                    start.elapsed().as_millis()
                );
            }
            if minimized < MINIMIZE {
                minimized += 1;
                let (min, last) = r.minimize(&steps, &d, no_persist)?;
                println!(
                    "KDIFF-MINIMIZED {} ({} steps, then {:?}):",
                    r.label,
                    min.len(),
                    last.what
                );
                for s in &min {
                    println!("    {},", s.to_rust());
                }
            }
            if a.plant {
                break;
            }
        }
        i += 1;
    }
    println!(
        "KDIFF-VERDICTS {}: {}",
        r.label,
        r.verdicts
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if matches!(r.dev, Device::Vduse(_)) {
        println!(
            "KDIFF-KERNEL {}: {} kernel warnings \"{VDUSE_PERM_WARNING}\" (VDUSE_IOTLB_GET_FD of an entry with a perm vhost-vdpa took but VDUSE does not know)",
            r.label,
            kernel_log_count(VDUSE_PERM_WARNING) - warnings_before
        );
        println!(
            "KDIFF-KERNEL {}: {} of {} opens found the previous owner's table still on the device (VDUSE has no reset_map: closing vhost-vdpa pushes nothing); each cleared by an empty batch first",
            r.label, r.stale, seqs
        );
    }
    println!(
        "KDIFF {}: {seqs} sequences, {msgs} messages ({resets} resets), {divs} divergences, {} s, kernel {kernel}{}",
        r.label,
        start.elapsed().as_secs(),
        if a.plant { ", planted bug" } else { "" }
    );
    Ok(if a.plant { divs > 0 } else { divs == 0 })
}
