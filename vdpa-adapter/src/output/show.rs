//! What `show` prints: what sysfs and the vdpa netlink view (iproute2's
//! `vdpa`) tell about a device, without opening it. [`Show::read`] gathers
//! the facts from this host; [`Show::table`] and [`Show::json`] print them.

use std::path::Path;

use serde_json::{json, Value};
use vdpa_iova_planner::MapStyle;

use super::{document, SCHEMA_VERSION};
use crate::error::AdapterError;
use crate::host::sysfs::{self, VdpaDevice};

/// What this host says about one vDPA device.
#[derive(Clone, Debug)]
pub struct Show {
    /// The device as sysfs lists it.
    pub device: VdpaDevice,
    /// How its parent driver programs maps.
    pub map_style: MapStyle,
    /// Whether its maps pin memory.
    pub pins_memory: bool,
    /// vhost-vdpa's entry limit per address space (`None`: no limit).
    pub max_entries: Option<u64>,
    /// The vdpa_sim module's parameters, for a simulator (empty otherwise).
    pub sim_params: Vec<(&'static str, Option<String>)>,
    /// `vdpa dev show`'s view of the device, when the tool answers.
    pub dev_view: Option<Value>,
    /// `vdpa dev config show`'s view, when the tool answers.
    pub config: Option<Value>,
}

/// `vdpa -j ARGS`, the netlink view of iproute2's tool, when it is installed
/// and answers.
fn vdpa_tool(args: &[&str]) -> Option<Value> {
    let out = std::process::Command::new("vdpa")
        .arg("-j")
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// A JSON object of the vdpa tool as indented `key: value` lines, arrays
/// as their words.
fn flat(v: &Value) -> String {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                Value::Array(a) => format!(
                    "  {k}: {}",
                    a.iter()
                        .map(|x| x.as_str().map_or(x.to_string(), str::to_string))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                Value::String(s) => format!("  {k}: {s}"),
                other => format!("  {k}: {other}"),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

impl Show {
    /// Reads sysfs, the module parameters and the vdpa tool about `device`
    /// (a vdpa name or a device node), opening nothing.
    ///
    /// # Errors
    /// [`AdapterError::Device`] when no such vDPA device exists.
    pub fn read(device: &str) -> Result<Show, AdapterError> {
        let root = Path::new("/");
        let d = sysfs::find_vdpa_device_in(root, device).ok_or_else(|| {
            AdapterError::device(
                device,
                "no such vDPA device under /sys/bus/vdpa/devices (see `vdpa-adapter list`)",
            )
        })?;
        let parent = d.parent.as_deref();
        let sim = parent.is_some_and(sysfs::is_vdpa_sim);
        let sim_params = if sim {
            ["use_va", "batch_mapping", "max_iotlb_entries"]
                .into_iter()
                .map(|p| (p, sysfs::module_param_in(root, "vdpa_sim", p)))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Show {
            map_style: parent.map_or(MapStyle::SetMap, sysfs::map_style_of),
            pins_memory: sysfs::pins_memory(parent),
            max_entries: sysfs::max_entries(),
            sim_params,
            dev_view: vdpa_tool(&["dev", "show", &d.name]).map(|v| v["dev"][&d.name].clone()),
            config: vdpa_tool(&["dev", "config", "show", &d.name])
                .map(|v| v["config"][&d.name].clone()),
            device: d,
        })
    }

    /// The JSON document of `show`.
    pub fn json(&self) -> String {
        let d = &self.device;
        document(&json!({
            "schema_version": SCHEMA_VERSION,
            "name": d.name,
            "node": d.node.as_ref().map(|n| format!("/dev/{n}")),
            "driver": d.driver,
            "parent": d.parent,
            "map_style": self.map_style.as_str(),
            "pins_memory": self.pins_memory,
            "max_entries_per_address_space": self.max_entries,
            "vdpa_sim_parameters": self.sim_params.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "vdpa_dev": self.dev_view,
            "vdpa_config": self.config,
        }))
    }

    /// The text of `show`.
    pub fn table(&self) -> String {
        let d = &self.device;
        let parent = d.parent.as_deref();
        let style_text = match self.map_style {
            MapStyle::SetMap => "set_map (the whole table is pushed at BATCH_END; forgotten at a reset without IOTLB_PERSIST)",
            MapStyle::DmaMap => "dma_map (each map programmed at once; forgotten at a reset without IOTLB_PERSIST)",
            MapStyle::Platform => "platform IOMMU (the kernel's IOMMU domain is the device's view)",
        };
        let mut out = format!(
            "{}: {} (bus driver {})\n",
            d.name,
            d.node
                .as_ref()
                .map_or("no vhost-vdpa node".into(), |n| format!("/dev/{n}")),
            d.driver.as_deref().unwrap_or("none")
        );
        out += &format!("parent driver:   {}\n", parent.unwrap_or("unknown"));
        out += &format!("map style:       {style_text}\n");
        out += &format!(
            "pins memory:     {}\n",
            match (self.pins_memory, parent) {
                (false, Some("vduse")) => "no (VDUSE maps host virtual addresses)".to_string(),
                (false, _) => "no (use_va)".to_string(),
                (true, _) => "yes (each map pins its pages)".to_string(),
            }
        );
        out += &format!(
            "table entries:   {}\n",
            match self.max_entries {
                Some(n) => format!("at most {n} per address space (vhost_vdpa max_iotlb_entries)"),
                None => "no limit".into(),
            }
        );
        for (k, v) in &self.sim_params {
            out += &format!("vdpa_sim {k}: {}\n", v.as_deref().unwrap_or("-"));
        }
        match (&self.dev_view, &self.config) {
            (None, None) => {
                out += "vdpa netlink:    not available (install iproute2's `vdpa` for the management view: vqs, features)\n"
            }
            _ => {
                if let Some(v) = &self.dev_view {
                    out += &format!("vdpa dev show:\n{}\n", flat(v));
                }
                if let Some(v) = &self.config {
                    out += &format!("vdpa dev config show:\n{}\n", flat(v));
                }
            }
        }
        out += "address spaces and vq groups: read by `probe` (it opens the device)\n";
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim() -> Show {
        Show {
            device: VdpaDevice {
                name: "vdpa0".into(),
                driver: Some("vhost_vdpa".into()),
                node: Some("vhost-vdpa-0".into()),
                parent: Some("vdpa_sim_net".into()),
            },
            map_style: MapStyle::SetMap,
            pins_memory: false,
            max_entries: Some(2048),
            sim_params: vec![("use_va", Some("Y".into())), ("batch_mapping", None)],
            dev_view: Some(json!({"type": "network", "max_vqs": 3, "features": ["A", "B"]})),
            config: None,
        }
    }

    /// The text: every fact on its line, the simulator's parameters, the
    /// vdpa tool's views flattened.
    #[test]
    fn show_text_names_every_fact() {
        let t = sim().table();
        assert_eq!(
            t,
            "vdpa0: /dev/vhost-vdpa-0 (bus driver vhost_vdpa)\n\
             parent driver:   vdpa_sim_net\n\
             map style:       set_map (the whole table is pushed at BATCH_END; forgotten at a reset without IOTLB_PERSIST)\n\
             pins memory:     no (use_va)\n\
             table entries:   at most 2048 per address space (vhost_vdpa max_iotlb_entries)\n\
             vdpa_sim use_va: Y\n\
             vdpa_sim batch_mapping: -\n\
             vdpa dev show:\n  features: A B\n  max_vqs: 3\n  type: network\n\
             address spaces and vq groups: read by `probe` (it opens the device)\n"
        );
        let bare = Show {
            device: VdpaDevice {
                name: "vdpa1".into(),
                driver: None,
                node: None,
                parent: Some("vduse".into()),
            },
            map_style: MapStyle::DmaMap,
            pins_memory: false,
            max_entries: None,
            sim_params: Vec::new(),
            dev_view: None,
            config: None,
        };
        let t = bare.table();
        for want in [
            "vdpa1: no vhost-vdpa node (bus driver none)\n",
            "map style:       dma_map (each map programmed at once",
            "pins memory:     no (VDUSE maps host virtual addresses)\n",
            "table entries:   no limit\n",
            "vdpa netlink:    not available",
        ] {
            assert!(t.contains(want), "{want:?} missing from:\n{t}");
        }
        let pinning = Show {
            pins_memory: true,
            map_style: MapStyle::Platform,
            config: Some(json!({"mac": "00:11:22:33:44:55"})),
            ..bare
        };
        let t = pinning.table();
        assert!(
            t.contains("pins memory:     yes (each map pins its pages)\n"),
            "{t}"
        );
        assert!(t.contains("map style:       platform IOMMU"), "{t}");
        assert!(
            t.contains("vdpa dev config show:\n  mac: 00:11:22:33:44:55\n"),
            "{t}"
        );
        assert!(!t.contains("vdpa dev show:"), "{t}");
    }

    /// The document: the same facts, the simulator's parameters as an
    /// object, the vdpa tool's views as it gave them.
    #[test]
    fn show_json_carries_every_fact() {
        let j: Value = serde_json::from_str(&sim().json()).unwrap();
        assert_eq!(j["schema_version"], SCHEMA_VERSION);
        assert_eq!(j["name"], "vdpa0");
        assert_eq!(j["node"], "/dev/vhost-vdpa-0");
        assert_eq!(j["driver"], "vhost_vdpa");
        assert_eq!(j["parent"], "vdpa_sim_net");
        assert_eq!(j["map_style"], MapStyle::SetMap.as_str());
        assert_eq!(j["pins_memory"], false);
        assert_eq!(j["max_entries_per_address_space"], 2048);
        assert_eq!(j["vdpa_sim_parameters"]["use_va"], "Y");
        assert!(j["vdpa_sim_parameters"]["batch_mapping"].is_null());
        assert_eq!(j["vdpa_dev"]["max_vqs"], 3);
        assert!(j["vdpa_config"].is_null());
    }
}
