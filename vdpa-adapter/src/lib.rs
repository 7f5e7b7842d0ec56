//! The device layer under `vdpa-iova-planner`: [`uapi`] encodes the
//! messages, [`device`] opens, probes and negotiates `/dev/vhost-vdpa-N`,
//! [`sink`] is where messages go (the device, a file descriptor the VMM
//! owns, or the kernel model), [`apply`] sends plans with pre-checks and
//! rollback, and [`host`] reads what `/proc` and `/sys` say. Without default
//! features this is all there is: its dependencies are the planner, rustix
//! and thiserror.
//!
//! With the default `cli` feature it also carries the command-line tool's
//! parts: scenario files (`scenario`), planning runs checked against the
//! kernel model (`runner`), runs on a device (`session`), the benchmark
//! (`bench`), and everything the tool prints (`output`).

pub mod apply;
pub mod device;
pub mod error;
pub mod host;
pub mod memory;
pub mod sink;
pub mod uapi;

#[cfg(feature = "cli")]
pub mod bench;
#[cfg(feature = "cli")]
pub mod output;
#[cfg(feature = "cli")]
pub mod runner;
#[cfg(feature = "cli")]
pub mod scenario;
#[cfg(feature = "cli")]
pub mod session;

pub use error::AdapterError;
#[cfg(feature = "cli")]
pub use runner::{run, RunReport, StrategyKind};
#[cfg(feature = "cli")]
pub use scenario::{Scenario, DEFAULT_SCENARIO};
