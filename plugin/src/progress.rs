//! What a generating entity shows: its state, step, loss, rewards, ETA.

use std::path::PathBuf;

use bevy::prelude::*;
use bevy::world_serialization::WorldAsset;
use rewardsds_engine::generate::{JobReport, Progress};

use crate::error::GenerationError;

/// Where a request is.
#[derive(Debug, Clone, PartialEq, Reflect)]
#[reflect(Default, Debug, PartialEq, Clone)]
pub enum GenerationState {
    /// Waiting for a free slot (the default).
    Queued {
        /// Requests ahead of this one (0: it starts next), updated as the queue moves.
        position: usize,
    },
    /// Loading the models.
    Loading,
    /// Optimising.
    Running,
    /// Extracting the mesh and writing the `.glb`.
    Exporting,
    /// Done; the result is on the entity.
    Finished,
    /// Stopped on an error.
    Failed(GenerationError),
}

impl Default for GenerationState {
    fn default() -> Self {
        Self::Queued { position: 0 }
    }
}

/// Live progress of a generation, updated every frame from the engine's events. Required by
/// [`GenerateAsset`](crate::GenerateAsset), so it is there from the moment the request is;
/// reset to its default (queued) when the request restarts, removed when it is cancelled.
#[derive(Component, Reflect, Debug, Clone, Default)]
#[reflect(Component, Default, Debug, Clone)]
pub struct GenerationProgress {
    /// Where the request is.
    pub state: GenerationState,
    /// Steps done.
    pub step: usize,
    /// Steps planned.
    pub total: usize,
    /// The last guidance loss.
    pub loss: f32,
    /// `(min, mean, max)` of the last RewardSDS step's rewards.
    pub reward: Option<(f32, f32, f32)>,
    /// The last step's noise weights.
    pub weights: Vec<f32>,
    /// Mean reward of every RewardSDS step so far (for a reward curve).
    pub reward_history: Vec<f32>,
    /// Seconds the last step took.
    pub seconds_per_step: f64,
    /// Seconds left at the pace so far.
    pub eta_seconds: f64,
    /// The run is in its texture stage (`texture_stage`): the shape is final, its texture is
    /// being refined.
    pub texture_stage: bool,
}

impl GenerationProgress {
    /// Fraction of the steps done, in [0, 1].
    pub fn fraction(&self) -> f32 {
        if self.total == 0 {
            0.0
        } else {
            self.step as f32 / self.total as f32
        }
    }

    /// Whether the request is over (finished or failed).
    pub fn is_over(&self) -> bool {
        matches!(
            self.state,
            GenerationState::Finished | GenerationState::Failed(_)
        )
    }

    pub(crate) fn apply(&mut self, progress: &Progress) {
        self.step = progress.step;
        self.total = progress.total;
        self.loss = progress.loss;
        self.reward = progress.reward_stats();
        if let Some((_, mean, _)) = self.reward {
            self.reward_history.push(mean);
        }
        self.weights = progress.weights.clone();
        self.seconds_per_step = progress.seconds;
        self.eta_seconds = progress.eta_seconds;
        self.texture_stage = progress.texture_stage;
        self.state = if progress.step >= progress.total {
            GenerationState::Exporting
        } else {
            GenerationState::Running
        };
    }
}

/// A finished generation's result, on the entity that asked for it (absent until then).
#[derive(Component, Reflect, Debug, Clone)]
#[reflect(Component, Debug, Clone)]
pub struct GeneratedAsset {
    /// The file on disk.
    pub file: PathBuf,
    /// The path the AssetServer knows it by.
    pub asset_path: String,
    /// The file's glTF scene, as shown under the entity (`WorldAssetRoot(scene.clone())`
    /// spawns another copy).
    pub scene: Handle<WorldAsset>,
    /// Sizes and timings (an engine type: not reflected).
    #[reflect(ignore)]
    pub report: JobReport,
}
