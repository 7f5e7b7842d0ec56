//! `/sys`: the vDPA parent driver behind a device node, whether it pins,
//! and vhost-vdpa's module parameters.

use std::path::{Path, PathBuf};

use vdpa_iova_planner::MapStyle;

/// `/sys/module/vhost_vdpa/parameters/max_iotlb_entries`.
pub const MAX_ENTRIES_PARAM: &str = "/sys/module/vhost_vdpa/parameters/max_iotlb_entries";

/// vhost-vdpa's limit on entries per address space, when this kernel has one
/// (the module parameter exists and is positive).
pub fn max_entries() -> Option<u64> {
    parse_max_entries(&std::fs::read_to_string(MAX_ENTRIES_PARAM).ok()?)
}

/// Parses the parameter's text; `None` for anything but a positive number.
pub fn parse_max_entries(text: &str) -> Option<u64> {
    text.trim().parse::<u64>().ok().filter(|&n| n > 0)
}

/// Whether a device whose parent driver is `parent` pins memory: VDUSE never does,
/// vdpa_sim does when loaded with `use_va=0` (read from sysfs), anything
/// else is taken to be a NIC behind an IOMMU, which pins.
pub fn pins_memory(parent: Option<&str>) -> bool {
    match parent {
        Some("vduse") => false,
        Some(p) if is_vdpa_sim(p) => {
            std::fs::read_to_string("/sys/module/vdpa_sim/parameters/use_va")
                .map(|v| !v.trim().starts_with('Y'))
                .unwrap_or(true)
        }
        _ => true,
    }
}

/// Whether a parent driver name is vdpa_sim's (`vdpasim_*` management devices).
pub fn is_vdpa_sim(parent: &str) -> bool {
    parent.starts_with("vdpasim") || parent.starts_with("vdpa_sim")
}

/// The vDPA parent driver behind `/dev/vhost-vdpa-N`, from sysfs. The
/// vhost-vdpa character device has no class; it is a child of its vdpa
/// device, so the vdpa device is the one of `/sys/bus/vdpa/devices` holding
/// `vhost-vdpa-N`. Its parent is the management device: a hardware parent
/// (mlx5, ifcvf, ...) has a `driver` link; the software ones are recognised
/// by where they are in sysfs.
pub fn parent_driver(path: &Path) -> Option<String> {
    let name = path.file_name()?;
    std::fs::read_dir("/sys/bus/vdpa/devices")
        .ok()?
        .filter_map(|e| std::fs::canonicalize(e.ok()?.path()).ok())
        .find(|dev| dev.join(name).exists())
        .and_then(|dev| parent_of(&dev))
}

/// [`parent_driver`] for the canonical sysfs path of a vdpa device.
fn parent_of(vdpa: &Path) -> Option<String> {
    parent_under(Path::new("/"), vdpa)
}

/// The software management devices, recognised by the sysfs directory
/// their vdpa devices sit in: VDUSE puts them under its own character
/// device (`/sys/devices/virtual/vduse/NAME/DEV`), and vdpa_sim registers
/// them without a parent, at the top (`/sys/devices/DEV`), as no other
/// in-tree parent of Linux 6.12 does.
fn software_parent(parent: &Path) -> Option<String> {
    let names: Vec<&str> = parent
        .components()
        .filter_map(|c| c.as_os_str().to_str())
        .collect();
    match names.as_slice() {
        [.., "vduse", _] => Some("vduse".into()),
        ["/", "sys", "devices"] => Some("vdpa_sim".into()),
        _ => None,
    }
}

/// The map style of a vDPA parent driver: mlx5, vdpa_sim and VDUSE have a
/// whole-table `set_map` (vdpa_sim loaded with `batch_mapping=0` has
/// per-map `dma_map` instead, read from its module parameter); ifcvf,
/// octeon_ep, pds and virtio-pci's vp_vdpa use the platform IOMMU. Unknown
/// drivers are taken as `set_map`, the style of the devices this adapter is
/// tested on.
pub fn map_style_of(parent: &str) -> MapStyle {
    match parent {
        "ifcvf" | "octep_vdpa" | "pds_vdpa" | "vp_vdpa" | "alibaba_eni_vdpa" => MapStyle::Platform,
        p if is_vdpa_sim(p) => {
            match std::fs::read_to_string("/sys/module/vdpa_sim/parameters/batch_mapping") {
                Ok(v) if v.trim() == "0" => MapStyle::DmaMap,
                _ => MapStyle::SetMap,
            }
        }
        _ => MapStyle::SetMap,
    }
}

/// A vDPA device as sysfs shows it, read without opening anything (so it
/// works on a device a VM is using).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VdpaDevice {
    /// Its name on the vdpa bus (`vdpa0`, the name given to `vdpa dev add`).
    pub name: String,
    /// The bus driver bound to it (`vhost_vdpa` for a VMM, `virtio_vdpa`
    /// for the host kernel's own use).
    pub driver: Option<String>,
    /// Its vhost-vdpa character device (`vhost-vdpa-0`), when `vhost_vdpa`
    /// is bound.
    pub node: Option<String>,
    /// The parent driver (`mlx5_core`, `vdpa_sim`, `vduse`, ...).
    pub parent: Option<String>,
}

/// Every vDPA device under `root` (`/` on a real system).
pub fn vdpa_devices_in(root: &Path) -> Vec<VdpaDevice> {
    let Ok(rd) = std::fs::read_dir(root.join("sys/bus/vdpa/devices")) else {
        return Vec::new();
    };
    let canon_root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let mut v: Vec<VdpaDevice> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let dev = std::fs::canonicalize(e.path()).ok()?;
            let driver = std::fs::read_link(dev.join("driver"))
                .ok()
                .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
            let node = std::fs::read_dir(&dev).ok().and_then(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .find(|n| n.starts_with("vhost-vdpa-"))
            });
            Some(VdpaDevice {
                name,
                driver,
                node,
                parent: parent_under(&canon_root, &dev),
            })
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Every vDPA device of this system.
pub fn vdpa_devices() -> Vec<VdpaDevice> {
    vdpa_devices_in(Path::new("/"))
}

/// The device `arg` names: a vdpa name (`vdpa0`), a node (`vhost-vdpa-0`)
/// or its path (`/dev/vhost-vdpa-0`).
pub fn find_vdpa_device_in(root: &Path, arg: &str) -> Option<VdpaDevice> {
    let node = Path::new(arg)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    vdpa_devices_in(root)
        .into_iter()
        .find(|d| d.name == arg || (d.node.is_some() && d.node == node))
}

/// A module parameter's value under `root` (`None` when the module is not
/// loaded or has no such parameter).
pub fn module_param_in(root: &Path, module: &str, param: &str) -> Option<String> {
    std::fs::read_to_string(root.join(format!("sys/module/{module}/parameters/{param}")))
        .ok()
        .map(|s| s.trim().to_string())
}

/// [`parent_of`] for a vdpa device's canonical path under `root`.
fn parent_under(root: &Path, vdpa: &Path) -> Option<String> {
    let parent = vdpa.parent()?;
    if let Ok(drv) = std::fs::read_link(parent.join("driver")) {
        return Some(drv.file_name()?.to_string_lossy().into_owned());
    }
    let rel = parent.strip_prefix(root).ok()?;
    software_parent(&PathBuf::from("/").join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_parents_are_named_by_their_management_device() {
        assert_eq!(
            software_parent(Path::new("/sys/devices")),
            Some("vdpa_sim".into())
        );
        assert_eq!(
            software_parent(Path::new("/sys/devices/virtual/vduse/vdpa-rig")),
            Some("vduse".into())
        );
        assert_eq!(
            software_parent(Path::new("/sys/devices/pci0000:00/0000:00:03.0")),
            None
        );
        assert!(is_vdpa_sim("vdpa_sim"));
    }

    /// A fake sysfs: vdpa0 from vdpa_sim bound to vhost_vdpa, vdpa1 from a
    /// PCI parent with a driver, bound to virtio_vdpa.
    #[test]
    fn devices_are_listed_and_found_without_opening_them() {
        use std::os::unix::fs::symlink;
        let root = std::env::temp_dir().join(format!("vdpa-sysfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mk = |p: &str| std::fs::create_dir_all(root.join(p)).unwrap();
        mk("sys/bus/vdpa/devices");
        mk("sys/bus/vdpa/drivers/vhost_vdpa");
        mk("sys/bus/vdpa/drivers/virtio_vdpa");
        mk("sys/bus/pci/drivers/mlx5_core");
        mk("sys/devices/vdpa0/vhost-vdpa-0");
        mk("sys/devices/pci0000:00/0000:00:03.0/vdpa1");
        symlink(
            root.join("sys/bus/pci/drivers/mlx5_core"),
            root.join("sys/devices/pci0000:00/0000:00:03.0/driver"),
        )
        .unwrap();
        symlink(
            root.join("sys/bus/vdpa/drivers/vhost_vdpa"),
            root.join("sys/devices/vdpa0/driver"),
        )
        .unwrap();
        symlink(
            root.join("sys/bus/vdpa/drivers/virtio_vdpa"),
            root.join("sys/devices/pci0000:00/0000:00:03.0/vdpa1/driver"),
        )
        .unwrap();
        symlink(
            root.join("sys/devices/vdpa0"),
            root.join("sys/bus/vdpa/devices/vdpa0"),
        )
        .unwrap();
        symlink(
            root.join("sys/devices/pci0000:00/0000:00:03.0/vdpa1"),
            root.join("sys/bus/vdpa/devices/vdpa1"),
        )
        .unwrap();
        let v = vdpa_devices_in(&root);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].name, "vdpa0");
        assert_eq!(v[0].node.as_deref(), Some("vhost-vdpa-0"));
        assert_eq!(v[0].driver.as_deref(), Some("vhost_vdpa"));
        assert_eq!(v[0].parent.as_deref(), Some("vdpa_sim"));
        assert_eq!(v[1].parent.as_deref(), Some("mlx5_core"));
        assert_eq!(v[1].node, None);
        assert_eq!(v[1].driver.as_deref(), Some("virtio_vdpa"));
        for arg in ["vdpa0", "vhost-vdpa-0", "/dev/vhost-vdpa-0"] {
            assert_eq!(
                find_vdpa_device_in(&root, arg).unwrap().name,
                "vdpa0",
                "{arg}"
            );
        }
        assert_eq!(find_vdpa_device_in(&root, "vdpa9"), None);
        mk("sys/module/vhost_vdpa/parameters");
        std::fs::write(
            root.join("sys/module/vhost_vdpa/parameters/max_iotlb_entries"),
            "2048\n",
        )
        .unwrap();
        assert_eq!(
            module_param_in(&root, "vhost_vdpa", "max_iotlb_entries").as_deref(),
            Some("2048")
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_parameter_is_a_positive_number() {
        assert_eq!(parse_max_entries("2048\n"), Some(2048));
        assert_eq!(parse_max_entries("0\n"), None);
        assert_eq!(parse_max_entries("-1\n"), None);
        assert_eq!(parse_max_entries("lots"), None);
    }
}
