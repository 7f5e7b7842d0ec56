//! The adapter's one error type.

use vdpa_iova_planner::{PlanError, Violation};

/// What went wrong, with enough context to act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdapterError {
    /// A scenario file that cannot be read.
    #[error("{file}: {source}")]
    ReadScenario {
        /// The file.
        file: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A malformed or contradictory scenario.
    #[error("{file}: {what}")]
    Scenario {
        /// The file.
        file: String,
        /// What is wrong, naming the event and field.
        what: String,
    },
    /// The planner refused a step of a scenario.
    #[error("{file}: step {step} ({event}), {strategy} strategy: {source}")]
    Refused {
        /// The scenario file.
        file: String,
        /// Step number (0 is boot).
        step: usize,
        /// Event name.
        event: &'static str,
        /// Strategy name.
        strategy: String,
        /// The planner's reason.
        #[source]
        source: Box<PlanError>,
    },
    /// A plan the kernel model refuses: a bug in the planner.
    #[error("{file}: step {step} ({event}), {strategy} strategy: operation {op} would be refused by the kernel: {violation}")]
    KernelRule {
        /// The scenario file.
        file: String,
        /// Step number.
        step: usize,
        /// Event name.
        event: &'static str,
        /// Strategy name.
        strategy: String,
        /// Index of the operation in the plan.
        op: usize,
        /// The rule broken.
        violation: Box<Violation>,
    },
    /// The device's table does not match what the planner reports: a bug in the planner.
    #[error("{file}: step {step} ({event}), {strategy} strategy: layout check failed: {what}")]
    Layout {
        /// The scenario file.
        file: String,
        /// Step number.
        step: usize,
        /// Event name.
        event: &'static str,
        /// Strategy name.
        strategy: String,
        /// The mismatch.
        what: String,
    },
    /// A device that cannot be opened, probed or used.
    #[error("{device}: {what}")]
    Device {
        /// The device node.
        device: String,
        /// The step (ioctl, open).
        what: String,
        /// The I/O error.
        #[source]
        source: Option<std::io::Error>,
    },
    /// A plan the device did not take (or that the pre-checks stopped).
    #[error("{device}: step {step} ({event}) not applied")]
    Apply {
        /// The device node (or "kernel model" for a dry run).
        device: String,
        /// Step number.
        step: usize,
        /// Event name.
        event: &'static str,
        /// What happened.
        #[source]
        source: Box<crate::apply::ApplyError>,
    },
    /// The host has less memory than a scenario needs: refused before
    /// anything is allocated (the OOM killer would end the run otherwise).
    #[error("the scenario needs {needed} of {what}, the host has {available} available")]
    HostMemory {
        /// What kind of memory ("memory", "free huge pages").
        what: &'static str,
        /// Bytes needed, formatted.
        needed: String,
        /// Bytes available, formatted.
        available: String,
    },
    /// Memory for a scenario that cannot be set up.
    #[error("{what}: {source}")]
    Memory {
        /// What was being set up.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl AdapterError {
    /// A device error without an underlying I/O error.
    pub fn device(device: &str, what: impl Into<String>) -> Self {
        AdapterError::Device {
            device: device.to_string(),
            what: what.into(),
            source: None,
        }
    }

    /// Process exit code: 2 bad input (a scenario file that cannot be read
    /// or parsed, a step the planner refuses), 3 refused by the device (or
    /// its model), 4 environment (permissions, memlock, the entry limit,
    /// missing device).
    pub fn exit_code(&self) -> i32 {
        match self {
            AdapterError::ReadScenario { .. }
            | AdapterError::Scenario { .. }
            | AdapterError::Refused { .. } => 2,
            AdapterError::KernelRule { .. } | AdapterError::Layout { .. } => 3,
            AdapterError::Apply { source, .. } => match **source {
                crate::apply::ApplyError::Memlock { .. }
                | crate::apply::ApplyError::Entries { .. } => 4,
                crate::apply::ApplyError::NotShared { .. }
                | crate::apply::ApplyError::Encode { .. } => 2,
                crate::apply::ApplyError::WouldRefuse { .. }
                | crate::apply::ApplyError::Refused { .. }
                | crate::apply::ApplyError::RollbackFailed { .. } => 3,
            },
            AdapterError::Device { .. }
            | AdapterError::Memory { .. }
            | AdapterError::HostMemory { .. } => 4,
        }
    }
}
