//! Everything the CLI prints, as text for people and as JSON documents
//! (`schema_version` [`SCHEMA_VERSION`]): one module per command, each
//! turning what the command found into the bytes it prints, so that each
//! is tested without a device.
//!
//! [`plan`]'s tables and JSON document, with [`picture`]'s SVGs for
//! `plan --svg`; [`apply`]'s progress lines and document; [`mod@bench`]'s
//! tables and document; [`probe`], [`show`] and [`list`] for the device
//! commands. The units every one of them uses ([`bytes`], [`hex`], [`dec`])
//! and the one-line device summary ([`describe`]) are here.

use serde_json::Value;
use vdpa_iova_planner::{DeviceCaps, MapStyle};

pub mod apply;
pub mod bench;
pub mod list;
pub mod picture;
pub mod plan;
pub mod probe;
pub mod show;
mod units;

pub use units::{bytes, dec, hex};

/// Version of every JSON document the CLI prints (`"schema_version"`).
/// Version 2: 64-bit quantities are strings (see [`hex`] and [`dec`]).
/// Version 3: `plan`'s steps name any number of hosts (`"destination 2"`),
/// say whether the scenario wrote them (`"implied"` for a migration's
/// `switchover` and the vIOMMU maps it carries), and list the host buffers
/// mapped after each step (`"host_buffers"`: asid, iova, size, perm, hva);
/// the document lists the migrations.
pub const SCHEMA_VERSION: u32 = 3;

/// `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Text for people.
    Table,
    /// One JSON document (`schema_version` 2: addresses, sizes and byte
    /// counts are strings, so 64-bit values survive JavaScript and `jq`).
    Json,
}

/// A JSON document as printed: pretty, with a final newline.
pub fn document(v: &Value) -> String {
    let mut out = serde_json::to_string_pretty(v).expect("a JSON value always serializes");
    out.push('\n');
    out
}

/// One line describing the device.
pub fn describe(caps: &DeviceCaps) -> String {
    format!(
        "IOVA range {}, {} pages, {}, {} address space{}{}, {}{}{}",
        caps.range,
        bytes(caps.page_size.get()),
        if caps.batching {
            "batching"
        } else {
            "no batching"
        },
        caps.address_spaces,
        if caps.address_spaces == 1 { "" } else { "s" },
        if caps.cvq_isolated {
            " (control queue isolated)"
        } else {
            ""
        },
        if caps.pinning {
            "pins memory"
        } else {
            "no pinning (use_va)"
        },
        if caps.persist {
            ", maps persist across reset"
        } else {
            ""
        },
        match caps.map_style {
            MapStyle::SetMap => "",
            MapStyle::DmaMap => ", maps programmed one by one (dma_map)",
            MapStyle::Platform => ", platform IOMMU",
        },
    )
}
