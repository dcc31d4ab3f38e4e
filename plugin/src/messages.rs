//! Messages for the moments of a generation that games react to.

use std::path::PathBuf;

use bevy::prelude::*;
use rewardsds_engine::generate::JobReport;

/// Models are loaded and optimisation has begun.
#[derive(Message, Debug, Clone)]
pub struct GenerationStarted {
    /// The entity with the [`GenerateAsset`](crate::GenerateAsset).
    pub entity: Entity,
    /// Its prompt.
    pub prompt: String,
}

/// The `.glb` is written and its scene is being loaded onto the entity.
#[derive(Message, Debug, Clone)]
pub struct GenerationFinished {
    /// The entity.
    pub entity: Entity,
    /// Its prompt.
    pub prompt: String,
    /// The file on disk.
    pub file: PathBuf,
    /// The path the AssetServer knows it by (`generated/<name>.glb`).
    pub asset_path: String,
    /// Sizes and timings.
    pub report: JobReport,
}

/// The generation could not start or stopped on an error; nothing was written.
#[derive(Message, Debug, Clone)]
pub struct GenerationFailed {
    /// The entity.
    pub entity: Entity,
    /// Its prompt.
    pub prompt: String,
    /// What went wrong, naming the thing at fault.
    pub reason: String,
}

/// The request was removed or its entity despawned before it finished.
#[derive(Message, Debug, Clone)]
pub struct GenerationCancelled {
    /// The entity (it may no longer exist).
    pub entity: Entity,
}
