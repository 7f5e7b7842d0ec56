//! How quantities print: byte counts for people, and addresses and byte
//! counts in JSON documents.

use serde_json::Value;

/// `4096` -> `"4 KiB"`, `64 GiB + 204 KiB` -> `"64 GiB+204 KiB"`: exact
/// whole units, with the remainder in the next unit that fits, so a plan
/// that pins a few vring pages more than another never prints the same.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let unit = |n: u64| {
        (0..UNITS.len())
            .rev()
            .find(|&u| n >> (10 * u) > 0)
            .unwrap_or(0)
    };
    let u = unit(n);
    let whole = n >> (10 * u);
    let rest = n - (whole << (10 * u));
    if rest == 0 {
        return format!("{whole} {}", UNITS[u]);
    }
    let r = unit(rest);
    let rv = rest as f64 / (1u64 << (10 * r)) as f64;
    if rv.fract() == 0.0 {
        format!("{whole} {}+{rv:.0} {}", UNITS[u], UNITS[r])
    } else {
        format!("{whole} {}+{rv:.1} {}", UNITS[u], UNITS[r])
    }
}

/// An address or size as a JSON string, `"0x7f0000000000"`: 64-bit values
/// above 2^53 do not survive JavaScript's numbers (nor `jq`'s), so every
/// address and size is a hex string.
pub fn hex(n: u64) -> Value {
    Value::String(format!("{n:#x}"))
}

/// A byte count as a JSON string of decimal digits, for the same reason.
pub fn dec(n: u64) -> Value {
    Value::String(n.to_string())
}

#[cfg(test)]
mod tests {
    use super::bytes;

    #[test]
    fn byte_formatting() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(4096), "4 KiB");
        assert_eq!(bytes(64 << 30), "64 GiB");
        assert_eq!(bytes((64 << 30) + 17 * 12288), "64 GiB+204 KiB");
        assert_eq!(bytes((1 << 30) + 1536), "1 GiB+1.5 KiB");
        // The remainder in bytes, and in a unit above KiB.
        assert_eq!(bytes(4096 + 100), "4 KiB+100 B");
        assert_eq!(bytes((1 << 40) + (3 << 29)), "1 TiB+1.5 GiB");
        assert_eq!(bytes((1 << 30) + (3 << 20)), "1 GiB+3 MiB");
        assert!(bytes(u64::MAX).starts_with("16383 PiB+"));
    }
}
