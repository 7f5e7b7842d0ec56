//! What `list` prints: the vDPA devices sysfs shows.

use serde_json::json;

use super::{document, SCHEMA_VERSION};
use crate::host::sysfs::VdpaDevice;

/// The text of `list`: one line per device.
pub fn table(devs: &[VdpaDevice]) -> String {
    if devs.is_empty() {
        return "no vDPA device (none under /sys/bus/vdpa/devices)\n".into();
    }
    let mut out = format!(
        "{:<12} {:<22} {:<14} {}\n",
        "name", "node", "driver", "parent"
    );
    for d in devs {
        out += &format!(
            "{:<12} {:<22} {:<14} {}\n",
            d.name,
            d.node.as_ref().map_or("-".into(), |n| format!("/dev/{n}")),
            d.driver.as_deref().unwrap_or("-"),
            d.parent.as_deref().unwrap_or("unknown")
        );
    }
    out
}

/// The JSON document of `list`.
pub fn json(devs: &[VdpaDevice]) -> String {
    document(&json!({
        "schema_version": SCHEMA_VERSION,
        "devices": devs.iter().map(|d| json!({
            "name": d.name,
            "node": d.node.as_ref().map(|n| format!("/dev/{n}")),
            "driver": d.driver,
            "parent": d.parent,
        })).collect::<Vec<_>>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `list`'s text and JSON.
    #[test]
    fn list_shows_every_device() {
        let devs = vec![VdpaDevice {
            name: "vdpa0".into(),
            driver: Some("vhost_vdpa".into()),
            node: Some("vhost-vdpa-0".into()),
            parent: Some("mlx5_core".into()),
        }];
        let t = table(&devs);
        assert!(
            t.contains("vdpa0        /dev/vhost-vdpa-0      vhost_vdpa     mlx5_core"),
            "{t}"
        );
        let j: serde_json::Value = serde_json::from_str(&json(&devs)).unwrap();
        assert_eq!(j["devices"][0]["node"], "/dev/vhost-vdpa-0");
        assert_eq!(j["devices"][0]["parent"], "mlx5_core");
        assert!(table(&[]).starts_with("no vDPA device"));
    }
}
