//! The shell around `vdpa-iova-planner`: scenario files, planning runs
//! checked against the kernel model and their reports (device-free), and the
//! one place that touches the kernel: [`device`] opens and probes
//! `/dev/vhost-vdpa-N`, [`uapi`] encodes the messages, [`apply`] sends plans
//! with pre-checks and rollback.

pub mod apply;
pub mod bench;
pub mod device;
pub mod error;
pub mod memory;
pub mod physmem;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod session;
pub mod uapi;

pub use error::AdapterError;
pub use runner::{run, RunReport, StrategyKind};
pub use scenario::{Scenario, DEFAULT_SCENARIO};
