//! The moments of a generation that games react to. Each is both a message (read it with a
//! `MessageReader` in any system) and an entity event targeting the requesting entity (watch
//! it with an observer: `commands.entity(e).observe(|done: On<GenerationFinished>| ...)` for
//! one entity, `app.add_observer(...)` for all). The event is triggered first, then the
//! message written, in the same system.

use std::path::PathBuf;

use bevy::prelude::*;
use bevy::world_serialization::WorldAsset;
use rewardsds_engine::generate::JobReport;

use crate::error::GenerationError;

/// Models are loaded and optimisation has begun.
#[derive(Message, EntityEvent, Reflect, Debug, Clone)]
#[reflect(Debug, Clone)]
pub struct GenerationStarted {
    /// The entity with the [`GenerateAsset`](crate::GenerateAsset).
    pub entity: Entity,
    /// Its prompt.
    pub prompt: String,
}

/// The `.glb` is written and its scene is being loaded onto the entity.
#[derive(Message, EntityEvent, Reflect, Debug, Clone)]
#[reflect(Debug, Clone)]
pub struct GenerationFinished {
    /// The entity.
    pub entity: Entity,
    /// Its prompt.
    pub prompt: String,
    /// The file on disk.
    pub file: PathBuf,
    /// The path the AssetServer knows it by (`generated/<name>.glb`).
    pub asset_path: String,
    /// The file's glTF scene (`<asset_path>#Scene0`), as the plugin loads it under the
    /// entity: spawn more copies with `WorldAssetRoot(scene.clone())`.
    pub scene: Handle<WorldAsset>,
    /// Sizes and timings (an engine type: not reflected).
    #[reflect(ignore)]
    pub report: JobReport,
}

/// The generation could not start or stopped on an error; nothing was written.
#[derive(Message, EntityEvent, Reflect, Debug, Clone)]
#[reflect(Debug, Clone)]
pub struct GenerationFailed {
    /// The entity.
    pub entity: Entity,
    /// Its prompt.
    pub prompt: String,
    /// What went wrong: its kind, and the message naming the thing at fault (`Display`).
    pub error: GenerationError,
}

/// The request was removed or its entity despawned before it finished.
#[derive(Message, EntityEvent, Reflect, Debug, Clone)]
#[reflect(Debug, Clone)]
pub struct GenerationCancelled {
    /// The entity (it may no longer exist: observers of the entity itself are gone with it,
    /// global observers still run).
    pub entity: Entity,
}
