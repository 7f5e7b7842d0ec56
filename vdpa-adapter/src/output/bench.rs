//! What `bench` prints: the SVQ switch and failback, and with `migration`
//! the downtime windows, per strategy, as tables or one JSON document.

use std::path::Path;

use serde_json::json;
use vdpa_iova_planner::DeviceCaps;

use super::{bytes, dec, describe, document, SCHEMA_VERSION};
use crate::bench::{stats, BenchConfig, BenchRow};
use crate::memory::Backing;

/// The JSON document of `bench`: per strategy, each measured window's
/// critical phase (median, min, max in ms) and what it sent.
pub fn json(
    device: &Path,
    caps: &DeviceCaps,
    cfg: &BenchConfig,
    backing: Backing,
    rows: &[BenchRow],
) -> String {
    let window = |v: &[std::time::Duration]| {
        let (m, lo, hi) = stats(v);
        json!({
            "median_ms": m.as_secs_f64() * 1e3,
            "min_ms": lo.as_secs_f64() * 1e3,
            "max_ms": hi.as_secs_f64() * 1e3,
            "runs": v.len(),
        })
    };
    let strategies: Vec<_> = rows
        .iter()
        .map(|r| {
            let mut v = json!({
                "strategy": format!("{:?}", r.strategy).to_lowercase(),
                "svq_switch": window(&r.switch),
                "failback": window(&r.failback),
                "critical_pinned_bytes": {
                    "svq_switch": dec(r.critical_pinned.0),
                    "failback": dec(r.critical_pinned.1),
                },
            });
            if cfg.migration {
                let sent = |(m, p, u): (u64, u64, u64)| {
                    json!({"messages": m, "pinned_bytes": dec(p), "unpinned_bytes": dec(u)})
                };
                v["source_stop_and_copy"] = window(&r.stop_and_copy);
                v["destination_start"] = window(&r.start);
                v["sent_in_downtime"] = json!({
                    "source_stop_and_copy": sent(r.downtime[0]),
                    "destination_start": sent(r.downtime[1]),
                });
            }
            v
        })
        .collect();
    let v = json!({
        "schema_version": SCHEMA_VERSION,
        "device": device.display().to_string(),
        "device_view": describe(caps),
        "guest_bytes": dec(cfg.guest_mem),
        "regions": cfg.regions,
        "queues": cfg.queues,
        "repeats": cfg.repeats,
        "backing": match backing {
            Backing::Hugepages => "hugepages",
            Backing::Memfd => "memfd",
            Backing::Anon => "anon",
        },
        "strategies": strategies,
    });
    document(&v)
}

/// The text of `bench`: the SVQ switch and failback table, and with
/// `migration` the downtime table (its header line starts with "migration
/// downtime", where readers of the first table stop).
pub fn table(
    device: &Path,
    caps: &DeviceCaps,
    cfg: &BenchConfig,
    backing: Backing,
    rows: &[BenchRow],
) -> String {
    let mut out = format!(
        "{}: {}\nguest {} in {} region(s) of {}, {} queues, {} repeats; critical phase (device stopped), median [min, max]\n\n",
        device.display(),
        describe(caps),
        bytes(cfg.guest_mem),
        cfg.regions,
        match backing {
            Backing::Hugepages => format!(
                "{} huge pages",
                bytes(crate::host::procfs::huge_page_size())
            ),
            Backing::Memfd => "memfd 4 KiB pages".into(),
            Backing::Anon => "anonymous 4 KiB pages".into(),
        },
        cfg.queues,
        cfg.repeats
    );
    out += &format!(
        "{:<10} | {:>32} | {:>32}\n",
        "strategy", "svq switch", "failback"
    );
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let mut med = Vec::new();
    for r in rows {
        let (sm, s0, s1) = stats(&r.switch);
        let (fm, f0, f1) = stats(&r.failback);
        med.push((ms(sm), ms(fm)));
        out += &format!(
            "{:<10} | {:>9.3} ms [{:>8.3}, {:>8.3}] | {:>9.3} ms [{:>8.3}, {:>8.3}]   pinned while stopped: {} / {}\n",
            format!("{:?}", r.strategy).to_lowercase(),
            ms(sm),
            ms(s0),
            ms(s1),
            ms(fm),
            ms(f0),
            ms(f1),
            bytes(r.critical_pinned.0),
            bytes(r.critical_pinned.1)
        );
    }
    let ratio = |q: f64, i: f64| {
        if i == 0.0 {
            "inf (identity: nothing while stopped)".to_string()
        } else {
            format!("{:.1}x", q / i)
        }
    };
    out += &format!(
        "ratio qemu/identity: switch {}, failback {}\n",
        ratio(med[1].0, med[0].0),
        ratio(med[1].1, med[0].1)
    );
    if cfg.migration {
        // A second table: its header line starts with "migration downtime"
        // so that readers of the first one stop there.
        out += &format!(
            "\nmigration downtime (guest paused), median [min, max]\n{:<10} | {:>32} | {:>32}\n",
            "strategy", "source stop-and-copy", "destination start"
        );
        for r in rows {
            let (sm, s0, s1) = stats(&r.stop_and_copy);
            let (dm, d0, d1) = stats(&r.start);
            let [(cm, cp, cu), (dmsg, dp, du)] = r.downtime;
            out += &format!(
                "{:<10} | {:>9.3} ms [{:>8.3}, {:>8.3}] | {:>9.3} ms [{:>8.3}, {:>8.3}]   in the downtime: {cm} msgs, {} pinned, {} unpinned / {dmsg} msgs, {} pinned, {} unpinned\n",
                format!("{:?}", r.strategy).to_lowercase(),
                ms(sm),
                ms(s0),
                ms(s1),
                ms(dm),
                ms(d0),
                ms(d1),
                bytes(cp),
                bytes(cu),
                bytes(dp),
                bytes(du)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::runner::StrategyKind;

    fn rows() -> Vec<BenchRow> {
        let ms = |v: &[u64]| v.iter().map(|&m| Duration::from_millis(m)).collect();
        vec![
            BenchRow {
                strategy: StrategyKind::Identity,
                switch: ms(&[0, 0, 0]),
                failback: ms(&[0, 0, 0]),
                critical_pinned: (0, 0),
                stop_and_copy: ms(&[0, 0, 0]),
                start: ms(&[0, 0, 0]),
                downtime: [(0, 0, 0); 2],
            },
            BenchRow {
                strategy: StrategyKind::Qemu,
                switch: ms(&[30, 10, 20]),
                failback: ms(&[12, 14, 16]),
                critical_pinned: (1 << 30, 1 << 30),
                stop_and_copy: ms(&[5, 7, 6]),
                start: ms(&[40, 20, 30]),
                downtime: [(9, 0, 1 << 30), (3, 1 << 30, 0)],
            },
        ]
    }

    fn cfg(migration: bool) -> BenchConfig {
        BenchConfig {
            guest_mem: 1 << 30,
            queues: 3,
            regions: 1,
            repeats: 3,
            migration,
        }
    }

    /// The bench's text: medians, spreads, pinned bytes and the ratio of
    /// the two strategies, and the downtime table only with `migration`.
    #[test]
    fn bench_text_gives_medians_spreads_and_ratios() {
        let rows = rows();
        let t = table(
            Path::new("/dev/vhost-vdpa-0"),
            &DeviceCaps::default(),
            &cfg(false),
            Backing::Memfd,
            &rows,
        );
        assert!(
            t.contains("guest 1 GiB in 1 region(s) of memfd 4 KiB pages, 3 queues, 3 repeats"),
            "{t}"
        );
        assert!(t.contains("qemu       |    20.000 ms [  10.000,   30.000] |    14.000 ms [  12.000,   16.000]   pinned while stopped: 1 GiB / 1 GiB"), "{t}");
        assert!(
            t.contains(
                "ratio qemu/identity: switch inf (identity: nothing while stopped), failback inf"
            ),
            "{t}"
        );
        assert!(!t.contains("migration downtime"));
        let t = table(
            Path::new("/dev/vhost-vdpa-0"),
            &DeviceCaps::default(),
            &cfg(true),
            Backing::Hugepages,
            &rows,
        );
        assert!(
            t.contains("migration downtime (guest paused), median [min, max]"),
            "{t}"
        );
        assert!(t.contains("qemu       |     6.000 ms [   5.000,    7.000] |    30.000 ms [  20.000,   40.000]   in the downtime: 9 msgs, 0 B pinned, 1 GiB unpinned / 3 msgs, 1 GiB pinned, 0 B unpinned"), "{t}");
        assert!(t.contains("huge pages"), "{t}");
    }

    /// The bench's JSON: every window's median, min and max, and what each
    /// downtime window sent, 64-bit byte counts as strings.
    #[test]
    fn bench_json_carries_every_window() {
        let j: serde_json::Value = serde_json::from_str(&json(
            Path::new("/dev/vhost-vdpa-0"),
            &DeviceCaps::default(),
            &cfg(true),
            Backing::Anon,
            &rows(),
        ))
        .unwrap();
        assert_eq!(j["schema_version"], SCHEMA_VERSION);
        assert_eq!(j["backing"], "anon");
        assert_eq!(j["guest_bytes"], "1073741824");
        let q = &j["strategies"][1];
        assert_eq!(q["strategy"], "qemu");
        assert_eq!(q["svq_switch"]["median_ms"], 20.0);
        assert_eq!(q["svq_switch"]["min_ms"], 10.0);
        assert_eq!(q["svq_switch"]["max_ms"], 30.0);
        assert_eq!(q["svq_switch"]["runs"], 3);
        assert_eq!(q["critical_pinned_bytes"]["failback"], "1073741824");
        assert_eq!(q["destination_start"]["median_ms"], 30.0);
        assert_eq!(q["sent_in_downtime"]["source_stop_and_copy"]["messages"], 9);
        assert_eq!(
            q["sent_in_downtime"]["destination_start"]["pinned_bytes"],
            "1073741824"
        );
        let no_migration: serde_json::Value = serde_json::from_str(&json(
            Path::new("/dev/vhost-vdpa-0"),
            &DeviceCaps::default(),
            &cfg(false),
            Backing::Memfd,
            &rows(),
        ))
        .unwrap();
        assert!(no_migration["strategies"][1]["destination_start"].is_null());
        assert_eq!(no_migration["backing"], "memfd");
    }
}
