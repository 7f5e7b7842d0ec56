//! What `probe` prints: what the device offers and what the planner sees.

use serde_json::json;
use vdpa_iova_planner::DeviceCaps;

use super::{describe, document, hex, SCHEMA_VERSION};
use crate::device::Probe;

/// The text of `probe`: what the device offers and what the planner sees.
pub fn table(p: &Probe, caps: &DeviceCaps) -> String {
    use crate::uapi::backend as b;
    let names = [
        (b::IOTLB_MSG_V2, "IOTLB_MSG_V2"),
        (b::IOTLB_BATCH, "IOTLB_BATCH"),
        (b::IOTLB_ASID, "IOTLB_ASID"),
        (b::SUSPEND, "SUSPEND"),
        (b::RESUME, "RESUME"),
        (b::ENABLE_AFTER_DRIVER_OK, "ENABLE_AFTER_DRIVER_OK"),
        (b::DESC_ASID, "DESC_ASID"),
        (b::IOTLB_PERSIST, "IOTLB_PERSIST"),
    ];
    let mut out = format!(
        "device:          {} (virtio id {}, parent {})\n",
        p.path.display(),
        p.device_id,
        p.parent.as_deref().unwrap_or("unknown")
    );
    out += &format!("IOVA range:      [{:#x}, {:#x}]\n", p.range.0, p.range.1);
    out += &format!(
        "address spaces:  {}, virtqueues {}, groups {} {:?}\n",
        p.address_spaces, p.vqs, p.groups, p.vq_groups
    );
    out += &format!(
        "table entries:   {}\n",
        match p.max_entries {
            Some(n) if caps.pinning => format!(
                "at most {n} per address space (vhost_vdpa max_iotlb_entries); a pinned map takes one per physically contiguous run"
            ),
            Some(n) => format!("at most {n} per address space (vhost_vdpa max_iotlb_entries)"),
            None => "no limit".into(),
        }
    );
    out += &format!(
        "backend features offered {:#x}, acked {:#x}:\n",
        p.offered, p.acked
    );
    for (bit, name) in names {
        let o = p.offered & (1 << bit) != 0;
        let a = p.acked & (1 << bit) != 0;
        out += &format!(
            "  {name:<24} {}\n",
            match (o, a) {
                (true, true) => "offered, acked",
                (true, false) => "offered, not used",
                _ => "not offered",
            }
        );
    }
    out += &format!("planner view:    {}\n", describe(caps));
    out
}

/// The JSON document of `probe`.
pub fn json(p: &Probe, caps: &DeviceCaps) -> String {
    document(&json!({
        "schema_version": SCHEMA_VERSION,
        "device": p.path.display().to_string(),
        "device_id": p.device_id,
        "parent": p.parent,
        "backend_features_offered": hex(p.offered),
        "backend_features_acked": hex(p.acked),
        "iova_first": hex(p.range.0),
        "iova_last": hex(p.range.1),
        "address_spaces": p.address_spaces,
        "vqs": p.vqs,
        "groups": p.groups,
        "vq_groups": p.vq_groups,
        "pins_memory": caps.pinning,
        "map_style": caps.map_style.as_str(),
        "max_entries_per_address_space": p.max_entries,
    }))
}

#[cfg(test)]
mod tests {
    use vdpa_iova_planner::MapStyle;

    use super::*;

    fn probe() -> Probe {
        Probe {
            path: "/dev/vhost-vdpa-0".into(),
            device_id: 1,
            offered: (1 << 1) | (1 << 2) | (1 << 3) | (1 << 8),
            acked: (1 << 1) | (1 << 2),
            range: (0, u64::MAX),
            address_spaces: 2,
            vqs: 3,
            groups: 2,
            vq_groups: vec![0, 0, 1],
            parent: Some("vdpa_sim".into()),
            max_entries: Some(2048),
            map_style: MapStyle::SetMap,
        }
    }

    /// The probe's text names every fact, backend features by name with
    /// what was offered and acked.
    #[test]
    fn probe_text_names_every_fact() {
        let p = probe();
        let caps = p.caps(true).unwrap();
        let t = table(&p, &caps);
        for want in [
            "/dev/vhost-vdpa-0",
            "parent",
            "vdpa_sim",
            "[0x0, 0xffffffffffffffff]",
            "at most 2048 per address space",
            "IOTLB_MSG_V2             offered, acked",
            "IOTLB_BATCH              offered, acked",
            "IOTLB_ASID               offered, not used",
            "IOTLB_PERSIST            offered, not used",
            "SUSPEND                  not offered",
            "planner view:",
        ] {
            assert!(t.contains(want), "{want:?} missing from:\n{t}");
        }
    }

    /// The probe's JSON: every fact, addresses and feature bits as hex
    /// strings.
    #[test]
    fn probe_json_carries_every_fact() {
        let p = probe();
        let caps = p.caps(true).unwrap();
        let j: serde_json::Value = serde_json::from_str(&json(&p, &caps)).unwrap();
        assert_eq!(j["schema_version"], SCHEMA_VERSION);
        assert_eq!(j["device"], "/dev/vhost-vdpa-0");
        assert_eq!(j["device_id"], 1);
        assert_eq!(j["parent"], "vdpa_sim");
        assert_eq!(j["backend_features_offered"], "0x10e");
        assert_eq!(j["backend_features_acked"], "0x6");
        assert_eq!(j["iova_first"], "0x0");
        assert_eq!(j["iova_last"], "0xffffffffffffffff");
        assert_eq!(j["address_spaces"], 2);
        assert_eq!(j["vqs"], 3);
        assert_eq!(j["groups"], 2);
        assert_eq!(j["vq_groups"], serde_json::json!([0, 0, 1]));
        assert_eq!(j["pins_memory"], true);
        assert_eq!(j["map_style"], caps.map_style.as_str());
        assert_eq!(j["max_entries_per_address_space"], 2048);
    }
}
