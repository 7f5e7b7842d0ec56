//! The end-to-end rig's helpers that are more than a binary: the reading of
//! QEMU's own trace recordings ([`qemu_recording`]), and the VDUSE device
//! the read-back and the differential run play on ([`vduse`]).

pub mod qemu_recording;
pub mod vduse;
