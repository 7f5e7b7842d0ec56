//! The shell around `vdpa-iova-planner`: scenario files, planning runs
//! checked against the kernel model, and their reports.
//!
//! The `vdpa-adapter` binary's `plan` command is built from these pieces;
//! everything here is device-free.

pub mod error;
pub mod report;
pub mod runner;
pub mod scenario;

pub use error::AdapterError;
pub use runner::{run, RunReport, StrategyKind};
pub use scenario::{Scenario, DEFAULT_SCENARIO};
