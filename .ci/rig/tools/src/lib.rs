//! The end-to-end rig's helpers that are more than a binary: the reading of
//! QEMU's own trace recordings ([`qemu_recording`]).

pub mod qemu_recording;
