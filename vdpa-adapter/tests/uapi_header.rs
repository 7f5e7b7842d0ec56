//! Checks `vdpa_adapter::uapi` against the kernel's own headers, in two steps
//! so that a machine with only Rust still checks every value:
//!
//! 1. `constants_match_the_recorded_6_12_values` (needs nothing but cargo):
//!    every size, offset, constant and ioctl number the adapter relies on
//!    equals the value recorded in `uapi-6.12.values` beside this file.
//! 2. `recorded_values_match_the_kernel_headers` (needs a C compiler and the
//!    6.12 uapi headers): a small C program includes `<linux/vhost.h>` and
//!    prints every value the header defines, for the system's headers
//!    (linux-libc-dev; Debian 12 ships 6.1, which lacks the newer backend
//!    features) and for the uapi headers of every installed
//!    `linux-headers-*-common` package. Each recorded value must equal every
//!    header that defines it, and one header set must define them all.
//!    Without a compiler or the 6.12 headers it says loudly that it skipped,
//!    and **fails** instead when `VDPA_REQUIRE_KERNEL_HEADERS=1`, as `.ci/run`
//!    sets after installing `linux-headers-6.12-amd64`.
//!
//! `UPDATE_UAPI_VALUES=1` rewrites the recorded file from the headers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use vdpa_adapter::uapi::{self, backend, ioctl, iotlb};

const PROGRAM: &str = r#"
#include <stddef.h>
#include <stdio.h>
#include <linux/vhost.h>
#include <linux/vhost_types.h>
#define P(name, value) printf("%s %llu\n", name, (unsigned long long)(value))
int main(void) {
    P("sizeof_vhost_msg", sizeof(struct vhost_msg));
    P("sizeof_vhost_msg_v2", sizeof(struct vhost_msg_v2));
    P("sizeof_vhost_iotlb_msg", sizeof(struct vhost_iotlb_msg));
    P("offset_v1_iotlb", offsetof(struct vhost_msg, iotlb));
    P("offset_v2_asid", offsetof(struct vhost_msg_v2, asid));
    P("offset_v2_iotlb", offsetof(struct vhost_msg_v2, iotlb));
    P("offset_iova", offsetof(struct vhost_iotlb_msg, iova));
    P("offset_size", offsetof(struct vhost_iotlb_msg, size));
    P("offset_uaddr", offsetof(struct vhost_iotlb_msg, uaddr));
    P("offset_perm", offsetof(struct vhost_iotlb_msg, perm));
    P("offset_type", offsetof(struct vhost_iotlb_msg, type));
#ifdef VHOST_IOTLB_MSG
    P("VHOST_IOTLB_MSG", VHOST_IOTLB_MSG);
#endif
#ifdef VHOST_IOTLB_MSG_V2
    P("VHOST_IOTLB_MSG_V2", VHOST_IOTLB_MSG_V2);
#endif
#ifdef VHOST_IOTLB_MISS
    P("VHOST_IOTLB_MISS", VHOST_IOTLB_MISS);
#endif
#ifdef VHOST_IOTLB_UPDATE
    P("VHOST_IOTLB_UPDATE", VHOST_IOTLB_UPDATE);
#endif
#ifdef VHOST_IOTLB_INVALIDATE
    P("VHOST_IOTLB_INVALIDATE", VHOST_IOTLB_INVALIDATE);
#endif
#ifdef VHOST_IOTLB_ACCESS_FAIL
    P("VHOST_IOTLB_ACCESS_FAIL", VHOST_IOTLB_ACCESS_FAIL);
#endif
#ifdef VHOST_IOTLB_BATCH_BEGIN
    P("VHOST_IOTLB_BATCH_BEGIN", VHOST_IOTLB_BATCH_BEGIN);
#endif
#ifdef VHOST_IOTLB_BATCH_END
    P("VHOST_IOTLB_BATCH_END", VHOST_IOTLB_BATCH_END);
#endif
#ifdef VHOST_ACCESS_RO
    P("VHOST_ACCESS_RO", VHOST_ACCESS_RO);
#endif
#ifdef VHOST_ACCESS_WO
    P("VHOST_ACCESS_WO", VHOST_ACCESS_WO);
#endif
#ifdef VHOST_ACCESS_RW
    P("VHOST_ACCESS_RW", VHOST_ACCESS_RW);
#endif
#ifdef VHOST_BACKEND_F_IOTLB_MSG_V2
    P("VHOST_BACKEND_F_IOTLB_MSG_V2", VHOST_BACKEND_F_IOTLB_MSG_V2);
#endif
#ifdef VHOST_BACKEND_F_IOTLB_BATCH
    P("VHOST_BACKEND_F_IOTLB_BATCH", VHOST_BACKEND_F_IOTLB_BATCH);
#endif
#ifdef VHOST_BACKEND_F_IOTLB_ASID
    P("VHOST_BACKEND_F_IOTLB_ASID", VHOST_BACKEND_F_IOTLB_ASID);
#endif
#ifdef VHOST_BACKEND_F_SUSPEND
    P("VHOST_BACKEND_F_SUSPEND", VHOST_BACKEND_F_SUSPEND);
#endif
#ifdef VHOST_BACKEND_F_RESUME
    P("VHOST_BACKEND_F_RESUME", VHOST_BACKEND_F_RESUME);
#endif
#ifdef VHOST_BACKEND_F_ENABLE_AFTER_DRIVER_OK
    P("VHOST_BACKEND_F_ENABLE_AFTER_DRIVER_OK", VHOST_BACKEND_F_ENABLE_AFTER_DRIVER_OK);
#endif
#ifdef VHOST_BACKEND_F_DESC_ASID
    P("VHOST_BACKEND_F_DESC_ASID", VHOST_BACKEND_F_DESC_ASID);
#endif
#ifdef VHOST_BACKEND_F_IOTLB_PERSIST
    P("VHOST_BACKEND_F_IOTLB_PERSIST", VHOST_BACKEND_F_IOTLB_PERSIST);
#endif
    P("sizeof_vhost_vdpa_iova_range", sizeof(struct vhost_vdpa_iova_range));
    P("sizeof_vhost_vring_state", sizeof(struct vhost_vring_state));
#ifdef VHOST_SET_OWNER
    P("VHOST_SET_OWNER", VHOST_SET_OWNER);
#endif
#ifdef VHOST_GET_FEATURES
    P("VHOST_GET_FEATURES", VHOST_GET_FEATURES);
#endif
#ifdef VHOST_SET_BACKEND_FEATURES
    P("VHOST_SET_BACKEND_FEATURES", VHOST_SET_BACKEND_FEATURES);
#endif
#ifdef VHOST_GET_BACKEND_FEATURES
    P("VHOST_GET_BACKEND_FEATURES", VHOST_GET_BACKEND_FEATURES);
#endif
#ifdef VHOST_VDPA_GET_DEVICE_ID
    P("VHOST_VDPA_GET_DEVICE_ID", VHOST_VDPA_GET_DEVICE_ID);
#endif
#ifdef VHOST_VDPA_GET_STATUS
    P("VHOST_VDPA_GET_STATUS", VHOST_VDPA_GET_STATUS);
#endif
#ifdef VHOST_VDPA_SET_STATUS
    P("VHOST_VDPA_SET_STATUS", VHOST_VDPA_SET_STATUS);
#endif
#ifdef VHOST_VDPA_GET_IOVA_RANGE
    P("VHOST_VDPA_GET_IOVA_RANGE", VHOST_VDPA_GET_IOVA_RANGE);
#endif
#ifdef VHOST_VDPA_GET_AS_NUM
    P("VHOST_VDPA_GET_AS_NUM", VHOST_VDPA_GET_AS_NUM);
#endif
#ifdef VHOST_VDPA_GET_VRING_GROUP
    P("VHOST_VDPA_GET_VRING_GROUP", VHOST_VDPA_GET_VRING_GROUP);
#endif
#ifdef VHOST_VDPA_SET_GROUP_ASID
    P("VHOST_VDPA_SET_GROUP_ASID", VHOST_VDPA_SET_GROUP_ASID);
#endif
#ifdef VHOST_VDPA_GET_VQS_COUNT
    P("VHOST_VDPA_GET_VQS_COUNT", VHOST_VDPA_GET_VQS_COUNT);
#endif
#ifdef VHOST_VDPA_GET_GROUP_NUM
    P("VHOST_VDPA_GET_GROUP_NUM", VHOST_VDPA_GET_GROUP_NUM);
#endif
    return 0;
}
"#;

/// Header sets to check: the system's (`None`), then the vhost headers of
/// every installed kernel header package, each copied alone into a scratch
/// directory that shadows the system's two vhost headers (the raw uapi tree
/// is not usable from userspace before `make headers_install`; the few
/// headers vhost.h includes besides come from the system).
fn header_sets() -> Vec<Option<String>> {
    let mut v = vec![None];
    let Ok(rd) = std::fs::read_dir("/usr/src") else {
        return v;
    };
    let mut dirs: Vec<_> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("include/uapi/linux"))
        .filter(|p| p.join("vhost_types.h").exists() && p.join("vhost.h").exists())
        .collect();
    dirs.sort();
    for (i, d) in dirs.into_iter().enumerate() {
        let scratch = std::env::temp_dir().join(format!(
            "vdpa-uapi-headers-{}-{i}/linux",
            std::process::id()
        ));
        std::fs::create_dir_all(&scratch).unwrap();
        for f in ["vhost.h", "vhost_types.h"] {
            std::fs::copy(d.join(f), scratch.join(f)).unwrap();
        }
        // `make headers_install` strips this include; stand in for it.
        std::fs::write(
            scratch.join("compiler.h"),
            "#define __user\n#define __counted_by(m)\n",
        )
        .unwrap();
        v.push(Some(scratch.parent().unwrap().display().to_string()));
        eprintln!("checking {} too", d.display());
    }
    v
}

fn header_values(include: Option<&str>) -> Result<BTreeMap<String, u64>, String> {
    let tag = include.map_or(0, |i| i.len());
    let dir = std::env::temp_dir().join(format!("vdpa-uapi-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("uapi.c");
    let exe = dir.join("uapi");
    std::fs::write(&src, PROGRAM).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let mut cmd = Command::new(&cc);
    if let Some(i) = include {
        cmd.arg("-I").arg(i);
    }
    let out = match cmd.arg("-o").arg(&exe).arg(&src).output() {
        Ok(o) => o,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!("{cc}: {e}"));
        }
    };
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(format!(
            "{cc} with {include:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let out = Command::new(&exe).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(parse_values(&String::from_utf8(out.stdout).unwrap()))
}

/// `name value` lines (blank lines and `#` comments ignored).
fn parse_values(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once(' ').expect("name value");
            (k.to_string(), v.trim().parse().expect("a decimal value"))
        })
        .collect()
}

fn recorded_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/uapi-6.12.values")
}

fn recorded() -> BTreeMap<String, u64> {
    parse_values(&std::fs::read_to_string(recorded_path()).expect("tests/uapi-6.12.values"))
}

/// Every value the adapter relies on, as the adapter has it.
fn adapter_values() -> Vec<(&'static str, u64)> {
    let mut want: Vec<(&'static str, u64)> = vec![
        ("sizeof_vhost_msg", uapi::MSG_LEN as u64),
        ("sizeof_vhost_msg_v2", uapi::MSG_LEN as u64),
        ("sizeof_vhost_iotlb_msg", 32),
        ("offset_v1_iotlb", uapi::IOTLB_OFFSET as u64),
        ("offset_v2_asid", uapi::ASID_OFFSET as u64),
        ("offset_v2_iotlb", uapi::IOTLB_OFFSET as u64),
        ("offset_iova", uapi::IOVA_OFFSET as u64),
        ("offset_size", uapi::SIZE_OFFSET as u64),
        ("offset_uaddr", uapi::UADDR_OFFSET as u64),
        ("offset_perm", uapi::PERM_OFFSET as u64),
        ("offset_type", uapi::TYPE_OFFSET as u64),
        ("VHOST_IOTLB_MSG", uapi::VHOST_IOTLB_MSG.into()),
        ("VHOST_IOTLB_MSG_V2", uapi::VHOST_IOTLB_MSG_V2.into()),
        ("VHOST_IOTLB_MISS", iotlb::MISS.into()),
        ("VHOST_IOTLB_UPDATE", iotlb::UPDATE.into()),
        ("VHOST_IOTLB_INVALIDATE", iotlb::INVALIDATE.into()),
        ("VHOST_IOTLB_ACCESS_FAIL", iotlb::ACCESS_FAIL.into()),
        ("VHOST_IOTLB_BATCH_BEGIN", iotlb::BATCH_BEGIN.into()),
        ("VHOST_IOTLB_BATCH_END", iotlb::BATCH_END.into()),
        (
            "VHOST_ACCESS_RO",
            vdpa_iova_planner::Perm::Ro.to_kernel().into(),
        ),
        (
            "VHOST_ACCESS_WO",
            vdpa_iova_planner::Perm::Wo.to_kernel().into(),
        ),
        (
            "VHOST_ACCESS_RW",
            vdpa_iova_planner::Perm::Rw.to_kernel().into(),
        ),
        ("VHOST_BACKEND_F_IOTLB_MSG_V2", backend::IOTLB_MSG_V2.into()),
        ("VHOST_BACKEND_F_IOTLB_BATCH", backend::IOTLB_BATCH.into()),
        ("VHOST_BACKEND_F_IOTLB_ASID", backend::IOTLB_ASID.into()),
        ("VHOST_BACKEND_F_SUSPEND", backend::SUSPEND.into()),
        ("VHOST_BACKEND_F_RESUME", backend::RESUME.into()),
        (
            "VHOST_BACKEND_F_ENABLE_AFTER_DRIVER_OK",
            backend::ENABLE_AFTER_DRIVER_OK.into(),
        ),
        ("VHOST_BACKEND_F_DESC_ASID", backend::DESC_ASID.into()),
        (
            "VHOST_BACKEND_F_IOTLB_PERSIST",
            backend::IOTLB_PERSIST.into(),
        ),
        (
            "sizeof_vhost_vdpa_iova_range",
            std::mem::size_of::<ioctl::IovaRange>() as u64,
        ),
        (
            "sizeof_vhost_vring_state",
            std::mem::size_of::<ioctl::VringState>() as u64,
        ),
    ];
    want.extend(ioctl::ALL.iter().map(|&(n, op)| (n, op as u64)));
    want
}

#[test]
fn constants_match_the_recorded_6_12_values() {
    let rec = recorded();
    let want = adapter_values();
    for &(name, v) in &want {
        assert_eq!(
            rec.get(name),
            Some(&v),
            "{name}: the adapter has {v}, uapi-6.12.values records {:?}",
            rec.get(name)
        );
    }
    // Nothing recorded that the adapter no longer checks.
    assert_eq!(rec.len(), want.len(), "uapi-6.12.values has stale names");
}

#[test]
fn recorded_values_match_the_kernel_headers() {
    let required = std::env::var("VDPA_REQUIRE_KERNEL_HEADERS").is_ok_and(|v| v == "1");
    let mut sets: Vec<(String, BTreeMap<String, u64>)> = Vec::new();
    for i in header_sets() {
        let name = i.clone().unwrap_or_else(|| "system headers".into());
        match header_values(i.as_deref()) {
            Ok(h) => sets.push((name, h)),
            Err(e) => eprintln!("{name}: {e}"),
        }
    }
    let want = adapter_values();
    let complete = sets
        .iter()
        .find(|(_, h)| want.iter().all(|(n, _)| h.contains_key(*n)));
    let Some((complete, h)) = complete else {
        let msg = format!(
            "SKIPPED: no C compiler or no header set defines every value \
             (checked {:?}); install gcc and linux-headers-6.12-amd64 to compare \
             the recorded values with the kernel's own headers",
            sets.iter().map(|s| &s.0).collect::<Vec<_>>()
        );
        assert!(!required, "VDPA_REQUIRE_KERNEL_HEADERS=1: {msg}");
        eprintln!("{msg}");
        return;
    };
    eprintln!("every value is defined by {complete}");
    if std::env::var("UPDATE_UAPI_VALUES").is_ok_and(|v| v == "1") {
        let mut text = String::from(
            "# Values of the vhost uapi the adapter relies on, as Linux 6.12's headers\n\
             # define them (UPDATE_UAPI_VALUES=1 cargo test -p vdpa-adapter --test uapi_header).\n",
        );
        for (n, _) in &want {
            text.push_str(&format!("{n} {}\n", h[*n]));
        }
        std::fs::write(recorded_path(), text).unwrap();
    }
    let rec = recorded();
    for (name, v) in &rec {
        for (set, h) in &sets {
            if let Some(got) = h.get(name) {
                assert_eq!(got, v, "{name} in {set}");
            }
        }
    }
}
