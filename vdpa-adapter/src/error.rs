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
}

impl AdapterError {
    /// Process exit code: 2 bad input, 3 refused by the device (or its
    /// model), 4 environment (permissions, memlock, missing device).
    pub fn exit_code(&self) -> i32 {
        match self {
            AdapterError::ReadScenario { .. } => 4,
            AdapterError::Scenario { .. } | AdapterError::Refused { .. } => 2,
            AdapterError::KernelRule { .. } | AdapterError::Layout { .. } => 3,
        }
    }
}
