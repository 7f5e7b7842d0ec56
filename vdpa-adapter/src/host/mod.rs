//! Everything the adapter reads from `/proc` and `/sys`, in one place:
//! this process's limits and mappings ([`procfs`]), the device's parent
//! driver and the module parameters ([`sysfs`]), and where memory lies
//! physically ([`physmem`]).

pub mod physmem;
pub mod procfs;
pub mod sysfs;
