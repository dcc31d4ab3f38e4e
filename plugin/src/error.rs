//! `GenerationError`: why a generation failed, typed for games to act on and readable for
//! people.

use std::path::PathBuf;

use bevy::prelude::*;
use rewardsds_engine::generate::{GenerateError, JobFailure, JobFailureKind};
use rewardsds_engine::guidance::ConfigError;

/// Why a generation could not start or stopped, in [`GenerationFailed`](crate::GenerationFailed)
/// and [`GenerationState::Failed`](crate::GenerationState::Failed). Every variant carries the
/// whole readable message in `reason` (its `Display`), which names the thing at fault.
#[derive(Debug, Clone, PartialEq, Reflect, thiserror::Error)]
#[reflect(Debug, PartialEq, Clone)]
pub enum GenerationError {
    /// The request or its config is invalid: an unknown preset, `steps = 0`, a guidance
    /// setting that cannot work. Fix the request and change it to retry.
    #[error("{reason}")]
    Config {
        /// The config field at fault (`steps`, `preset`, `guidance.reward.strategy.k`).
        field: String,
        /// The message.
        reason: String,
    },
    /// A model could not be found, downloaded or loaded.
    #[error("{reason}")]
    Model {
        /// The setting naming the model (`prior`, `reward`, `score_decoder`), when known.
        field: Option<String>,
        /// Its value, when known.
        spec: Option<String>,
        /// The message.
        reason: String,
    },
    /// The backend is not compiled into this build or found no device.
    #[error("{reason}")]
    Backend {
        /// The message.
        reason: String,
    },
    /// The earlier result an edit starts from could not be read (no checkpoint there).
    #[error("{reason}")]
    Edit {
        /// The checkpoint folder looked for.
        folder: PathBuf,
        /// The message.
        reason: String,
    },
    /// The loss became NaN or infinite; the run stopped, nothing was written.
    #[error("{reason}")]
    NonFinite {
        /// The step (0-based) whose loss was not finite.
        step: usize,
        /// The last good checkpoint, if one was written.
        checkpoint: Option<PathBuf>,
        /// The message.
        reason: String,
    },
    /// The result (`.glb`, sidecar, checkpoint) could not be written.
    #[error("{reason}")]
    Io {
        /// The message.
        reason: String,
    },
    /// The run stopped on another error (guidance, cameras, surface extraction).
    #[error("{reason}")]
    Run {
        /// The message.
        reason: String,
    },
    /// The generation thread could not start, panicked, or ended without a result.
    #[error("{reason}")]
    Crashed {
        /// The message.
        reason: String,
    },
}

impl GenerationError {
    /// The readable message (the same as `to_string()`).
    pub fn reason(&self) -> &str {
        match self {
            Self::Config { reason, .. }
            | Self::Model { reason, .. }
            | Self::Backend { reason }
            | Self::Edit { reason, .. }
            | Self::NonFinite { reason, .. }
            | Self::Io { reason }
            | Self::Run { reason }
            | Self::Crashed { reason } => reason,
        }
    }
}

impl From<JobFailure> for GenerationError {
    fn from(JobFailure { kind, reason }: JobFailure) -> Self {
        match kind {
            JobFailureKind::Config { field } => Self::Config { field, reason },
            JobFailureKind::Model { field, spec } => Self::Model {
                field,
                spec,
                reason,
            },
            JobFailureKind::Backend => Self::Backend { reason },
            JobFailureKind::Edit { folder } => Self::Edit { folder, reason },
            JobFailureKind::NonFinite { step, checkpoint } => Self::NonFinite {
                step,
                checkpoint,
                reason,
            },
            JobFailureKind::Io => Self::Io { reason },
            JobFailureKind::Run => Self::Run { reason },
            JobFailureKind::Thread => Self::Crashed { reason },
        }
    }
}

impl From<&GenerateError> for GenerationError {
    fn from(error: &GenerateError) -> Self {
        JobFailure::from(error).into()
    }
}

impl From<ConfigError> for GenerationError {
    fn from(error: ConfigError) -> Self {
        Self::Config {
            reason: error.to_string(),
            field: error.field,
        }
    }
}
