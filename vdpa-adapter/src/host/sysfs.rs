//! `/sys`: the vDPA parent driver behind a device node, whether it pins,
//! and vhost-vdpa's module parameters.

use std::path::Path;

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
    let parent = vdpa.parent()?;
    if let Ok(drv) = std::fs::read_link(parent.join("driver")) {
        return Some(drv.file_name()?.to_string_lossy().into_owned());
    }
    software_parent(parent)
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

    #[test]
    fn the_parameter_is_a_positive_number() {
        assert_eq!(parse_max_entries("2048\n"), Some(2048));
        assert_eq!(parse_max_entries("0\n"), None);
        assert_eq!(parse_max_entries("-1\n"), None);
        assert_eq!(parse_max_entries("lots"), None);
    }
}
