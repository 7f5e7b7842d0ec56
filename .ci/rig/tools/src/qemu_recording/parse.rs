//! One line of a QEMU trace written by the `log` backend with
//! `-msg timestamp=on`: `2026-12-06T17:00:00.123456Z NAME ARGS`.

use std::fmt;

/// A trace line that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number in its file.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for ParseError {}

/// An IOTLB message type as QEMU's trace prints it (`type:` of
/// `vhost_vdpa_dma_map` and friends, the uAPI's `VHOST_IOTLB_*`).
pub const IOTLB_UPDATE: u8 = 2;
/// `VHOST_IOTLB_INVALIDATE`.
pub const IOTLB_INVALIDATE: u8 = 3;
/// `VHOST_IOTLB_BATCH_BEGIN`.
pub const IOTLB_BATCH_BEGIN: u8 = 5;
/// `VHOST_IOTLB_BATCH_END`.
pub const IOTLB_BATCH_END: u8 = 6;

/// What one trace line says, for the events the converter reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// `vhost_vdpa_dma_map`: an UPDATE written to the device.
    Map {
        /// Address space.
        asid: u32,
        /// First IOVA.
        iova: u64,
        /// Bytes.
        size: u64,
        /// Host address.
        uaddr: u64,
        /// `VHOST_ACCESS_*`: 1 read-only, 2 write-only, 3 read-write.
        perm: u8,
    },
    /// `vhost_vdpa_dma_unmap`: an INVALIDATE written to the device.
    Unmap {
        /// Address space.
        asid: u32,
        /// First IOVA.
        iova: u64,
        /// Bytes.
        size: u64,
    },
    /// `vhost_vdpa_listener_begin_batch`: BATCH_BEGIN written.
    BatchBegin,
    /// `vhost_vdpa_listener_commit`: BATCH_END written.
    BatchEnd,
    /// `vhost_vdpa_listener_region_add`: a section the listener maps.
    RegionAdd {
        /// First guest-physical address.
        gpa: u64,
        /// Exclusive end.
        end: u64,
        /// Host address of its first byte.
        hva: u64,
        /// A ROM piece.
        readonly: bool,
    },
    /// `vhost_vdpa_listener_region_del`.
    RegionDel {
        /// First guest-physical address.
        gpa: u64,
        /// Exclusive end.
        end: u64,
    },
    /// `vhost_vdpa_get_iova_range`, or the range `vhost_vdpa_skipped_memory_section`
    /// prints: the device's IOVA range (inclusive).
    IovaRange {
        /// First IOVA.
        first: u64,
        /// Last IOVA.
        last: u64,
    },
    /// `vhost_vdpa_set_vring_num`: a queue's size.
    VringNum {
        /// Queue index.
        index: u32,
        /// Descriptors.
        num: u32,
    },
    /// `vhost_vdpa_set_address_space_id`: the control queue's group bound
    /// to an address space (an isolated control queue).
    SetAsid {
        /// Virtqueue group.
        group: u32,
        /// Address space.
        asid: u32,
    },
    /// `vhost_vdpa_dev_start`.
    DevStart {
        /// Started (true) or stopped.
        started: bool,
    },
    /// `vhost_vdpa_suspend`.
    Suspend,
    /// `vhost_vdpa_reset_device`.
    Reset,
    /// `vhost_vdpa_add_status`: status bits added.
    AddStatus(u8),
    /// `migrate_set_state`: the migration's new state.
    Migration(String),
    /// `vm_state_notify`: the VM runs (true) or stops.
    VmRunning(bool),
    /// Any other trace event (kept for the timeline, not interpreted).
    Other,
}

/// A trace line: its time (microseconds since the epoch) and what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number in its file.
    pub line: usize,
    /// Microseconds since 1970-01-01T00:00:00Z.
    pub time_us: i64,
    /// The trace event's name.
    pub name: String,
    /// What it says.
    pub record: Record,
}

/// Days from 1970-01-01 to a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-12-06T17:00:00.123456Z` (glib's ISO 8601, UTC, fraction optional)
/// as microseconds since the epoch.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = match time.split_once('.') {
        Some((a, b)) => (a, b),
        None => (time, ""),
    };
    let mut t = hms.splitn(3, ':').map(|x| x.parse::<i64>().ok());
    let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut us = 0i64;
    if !frac.is_empty() {
        if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits: String = frac.chars().chain("000000".chars()).take(6).collect();
        us = digits.parse().ok()?;
    }
    let secs = days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + se;
    Some(secs * 1_000_000 + us)
}

/// The value after `key` (`"asid:"`, `"iova"`) in a trace line's arguments.
fn field<'a>(args: &'a str, key: &str) -> Option<&'a str> {
    let mut it = args.split_whitespace();
    while let Some(w) = it.next() {
        if w == key {
            return it.next();
        }
        // `vdpa_shared:0x..` and `key:value` written together.
        if let Some(v) = w.strip_prefix(key) {
            if !v.is_empty() && (key.ends_with(':') || key.ends_with('=')) {
                return Some(v);
            }
        }
    }
    None
}

fn num(args: &str, key: &str) -> Result<u64, String> {
    let v = field(args, key).ok_or_else(|| format!("no `{key}`"))?;
    let r = match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse::<u64>(),
    };
    r.map_err(|_| format!("`{key}` is not a number: {v:?}"))
}

fn num32(args: &str, key: &str) -> Result<u32, String> {
    let v = num(args, key)?;
    u32::try_from(v).map_err(|_| format!("`{key}` out of range: {v}"))
}

fn num8(args: &str, key: &str) -> Result<u8, String> {
    let v = num(args, key)?;
    u8::try_from(v).map_err(|_| format!("`{key}` out of range: {v}"))
}

/// The IOTLB message type a line says it wrote, checked against `want`.
fn msg_type(args: &str, want: u8) -> Result<(), String> {
    let t = num8(args, "type:")?;
    if t == want {
        Ok(())
    } else {
        Err(format!("type {t} where {want} was expected"))
    }
}

/// Reads one trace line (`line` is its 1-based number). Lines of events
/// the converter does not read become [`Record::Other`]; a line without a
/// timestamp, or a read event with missing or bad fields, is an error.
pub fn parse_line(line: usize, text: &str) -> Result<Line, ParseError> {
    let err = |reason: String| ParseError { line, reason };
    let (ts, rest) = text
        .split_once(' ')
        .ok_or_else(|| err(format!("not a trace line: {text:?}")))?;
    let time_us = parse_time(ts).ok_or_else(|| err(format!("bad timestamp {ts:?}")))?;
    let (name, args) = rest.split_once(' ').unwrap_or((rest, ""));
    let record = (|| -> Result<Record, String> {
        Ok(match name {
            "vhost_vdpa_dma_map" => {
                msg_type(args, IOTLB_UPDATE)?;
                Record::Map {
                    asid: num32(args, "asid:")?,
                    iova: num(args, "iova:")?,
                    size: num(args, "size:")?,
                    uaddr: num(args, "uaddr:")?,
                    perm: num8(args, "perm:")?,
                }
            }
            "vhost_vdpa_dma_unmap" => {
                msg_type(args, IOTLB_INVALIDATE)?;
                Record::Unmap {
                    asid: num32(args, "asid:")?,
                    iova: num(args, "iova:")?,
                    size: num(args, "size:")?,
                }
            }
            "vhost_vdpa_listener_begin_batch" => {
                msg_type(args, IOTLB_BATCH_BEGIN)?;
                Record::BatchBegin
            }
            "vhost_vdpa_listener_commit" => {
                msg_type(args, IOTLB_BATCH_END)?;
                Record::BatchEnd
            }
            "vhost_vdpa_listener_region_add" => Record::RegionAdd {
                gpa: num(args, "iova")?,
                end: num(args, "llend")?,
                hva: num(args, "vaddr:")?,
                readonly: num(args, "read-only:")? != 0,
            },
            "vhost_vdpa_listener_region_del" => Record::RegionDel {
                gpa: num(args, "iova")?,
                end: num(args, "llend")?,
            },
            "vhost_vdpa_get_iova_range" => Record::IovaRange {
                first: num(args, "first:")?,
                last: num(args, "last:")?,
            },
            // The listener reports the range with each section it skips
            // (net/vhost-vdpa.c reads the range without a trace).
            "vhost_vdpa_skipped_memory_section" => Record::IovaRange {
                first: num(args, "iova_min=")?,
                last: num(args, "iova_last=")?,
            },
            "vhost_vdpa_set_vring_num" => Record::VringNum {
                index: num32(args, "index:")?,
                num: num32(args, "num:")?,
            },
            "vhost_vdpa_set_address_space_id" => Record::SetAsid {
                group: num32(args, "vq_group:")?,
                asid: num32(args, "asid:")?,
            },
            "vhost_vdpa_dev_start" => Record::DevStart {
                started: num(args, "started:")? != 0,
            },
            "vhost_vdpa_suspend" => Record::Suspend,
            "vhost_vdpa_reset_device" => Record::Reset,
            "vhost_vdpa_add_status" => Record::AddStatus(num8(args, "status:")?),
            "migrate_set_state" => Record::Migration(
                args.strip_prefix("new state ")
                    .ok_or("no `new state`")?
                    .trim()
                    .to_string(),
            ),
            "vm_state_notify" => Record::VmRunning(num(args, "running")? != 0),
            _ => Record::Other,
        })
    })()
    .map_err(|r| err(format!("{name}: {r}")))?;
    Ok(Line {
        line,
        time_us,
        name: name.to_string(),
        record,
    })
}

/// Every line of a trace file. Empty lines are skipped.
///
/// # Errors
/// The first line that cannot be read.
pub fn parse_trace(text: &str) -> Result<Vec<Line>, ParseError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse_line(i + 1, l))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("1970-01-02T00:00:01.5Z"), Some(86_401_500_000));
        assert_eq!(
            parse_time("2026-12-06T17:00:00.000123Z"),
            Some(1_796_576_400_000_123)
        );
        assert_eq!(parse_time("2026-13-06T17:00:00Z"), None);
        assert_eq!(parse_time("2026-12-06 17:00:00Z"), None);
    }

    #[test]
    fn a_map_and_a_bad_one() {
        let l = parse_line(
            3,
            "2026-12-06T17:00:00.5Z vhost_vdpa_dma_map vdpa_shared:0x55d0 fd: 12 msg_type: 2 \
             asid: 1 iova: 0x1000 size: 0x2000 uaddr: 0x7f0000001000 perm: 0x1 type: 2",
        )
        .unwrap();
        assert_eq!(
            l.record,
            Record::Map {
                asid: 1,
                iova: 0x1000,
                size: 0x2000,
                uaddr: 0x7f00_0000_1000,
                perm: 1
            }
        );
        let e = parse_line(
            4,
            "2026-12-06T17:00:00.5Z vhost_vdpa_dma_unmap vdpa_shared:0x55d0 fd: 12 msg_type: 2 \
             asid: 0 iova: 0xzz size: 0x2000 type: 3",
        )
        .unwrap_err();
        assert_eq!(e.line, 4);
        assert!(e.reason.contains("iova"), "{e}");
    }
}
