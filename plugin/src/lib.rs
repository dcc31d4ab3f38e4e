//! Bevy plugin: generate 3D props from text prompts with RewardSDS, watch them form in the
//! scene, and get a `.glb` that hot-reloads into the game.
//!
//! ```no_run
//! use bevy::prelude::*;
//! use bevy_rewardsds::prelude::*;
//!
//! App::new()
//!     .add_plugins((DefaultPlugins, RewardSdsPlugin::default()))
//!     .add_systems(Startup, |mut commands: Commands| {
//!         commands.spawn((
//!             GenerateAsset::new("a blue cone on top of an orange cylinder"),
//!             Transform::default(),
//!         ));
//!     })
//!     .run();
//! ```
//!
//! Adding [`GenerateAsset`] queues a generation; it runs on its own thread (never in the
//! frame), at most [`RewardSdsSettings::max_concurrent`] at a time, sharing the loaded models
//! ([`RewardSdsModels`]). The entity has a [`GenerationProgress`] (a required component), gets
//! a live preview child refreshed every few steps (Gaussian scenes as alpha-blended splats,
//! NeRFs as a coarse mesh of the field), and on success the glTF scene loaded from
//! `assets/<output_folder>/<slug>.glb` ([`GeneratedAsset`] holds its handle). Changing the
//! request's value restarts it; removing the component or despawning the entity cancels.
//! [`GenerationStarted`], [`GenerationFinished`], [`GenerationFailed`] (with a typed
//! [`GenerationError`]) and [`GenerationCancelled`] arrive both as messages and as entity
//! events for observers. Components, resources and messages are reflected and registered.
//! All ML lives in `rewardsds_engine`; this crate only schedules jobs and shows their results.

#![deny(missing_docs)]

mod error;
mod messages;
mod preview;
mod progress;
mod request;
mod settings;
mod splat_preview;
mod systems;

use bevy::prelude::*;

pub use error::GenerationError;
pub use messages::{GenerationCancelled, GenerationFailed, GenerationFinished, GenerationStarted};
pub use preview::{GenerationPreview, preview_to_bevy_mesh};
pub use progress::{GeneratedAsset, GenerationProgress, GenerationState};
pub use request::GenerateAsset;
pub use rewardsds_engine as engine;
pub use settings::RewardSdsSettings;
pub use splat_preview::{
    SplatDepthOrder, SplatPreviewMaterial, back_to_front, splats_to_bevy_mesh,
};
pub use systems::{GeneratedScene, GenerationJobs, RewardSdsModels};

/// The usual imports.
pub mod prelude {
    pub use crate::{
        GenerateAsset, GeneratedAsset, GenerationCancelled, GenerationError, GenerationFailed,
        GenerationFinished, GenerationProgress, GenerationStarted, GenerationState,
        RewardSdsModels, RewardSdsPlugin, RewardSdsSettings, RewardSdsSystems,
    };
    pub use rewardsds_engine::generate::SceneKind;
}

/// Adds generation to an app. Needs `AssetPlugin` (and `GltfPlugin` to show the results;
/// `PbrPlugin`, or `Assets<StandardMaterial>`, for the live preview). Add it after
/// `DefaultPlugins`: with `PbrPlugin` already there it also registers the splat preview
/// ([`SplatPreviewMaterial`]); without it Gaussian scenes are previewed as meshes.
#[derive(Debug, Clone, Default)]
pub struct RewardSdsPlugin {
    /// Backend, models, output folder, concurrency, preview rate: inserted as the
    /// [`RewardSdsSettings`] resource unless the app inserted one before adding the plugin,
    /// which is kept (the app's wins).
    pub settings: RewardSdsSettings,
}

impl RewardSdsPlugin {
    /// A plugin with these settings (ignored, with a warning, if the app already has a
    /// [`RewardSdsSettings`]).
    pub fn new(settings: RewardSdsSettings) -> Self {
        Self { settings }
    }
}

/// The plugin's systems, in `Update`, in this order: cancel removed requests, queue new and
/// changed ones, start jobs (and update queue positions), apply their events.
#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub struct RewardSdsSystems;

impl Plugin for RewardSdsPlugin {
    fn build(&self, app: &mut App) {
        if app.is_plugin_added::<bevy::pbr::PbrPlugin>() {
            app.add_plugins(splat_preview::SplatPreviewPlugin);
        }
        if !app.world().contains_resource::<RewardSdsSettings>() {
            app.insert_resource(self.settings.clone());
        } else if self.settings != RewardSdsSettings::default() {
            warn!(
                "RewardSdsPlugin: the app inserted a RewardSdsSettings before adding the plugin; \
                 it is kept and the settings given to the plugin are ignored"
            );
        }
        app.register_type::<GenerateAsset>()
            .register_type::<GenerationProgress>()
            .register_type::<GenerationState>()
            .register_type::<GenerationError>()
            .register_type::<GeneratedAsset>()
            .register_type::<GeneratedScene>()
            .register_type::<GenerationPreview>()
            .register_type::<SplatDepthOrder>()
            .register_type::<RewardSdsSettings>()
            .register_type::<RewardSdsModels>()
            .register_type::<GenerationJobs>()
            .register_type::<GenerationStarted>()
            .register_type::<GenerationFinished>()
            .register_type::<GenerationFailed>()
            .register_type::<GenerationCancelled>()
            // An app-provided cache (shared with another app, say) is kept too.
            .init_resource::<RewardSdsModels>()
            .init_resource::<GenerationJobs>()
            .add_message::<GenerationStarted>()
            .add_message::<GenerationFinished>()
            .add_message::<GenerationFailed>()
            .add_message::<GenerationCancelled>()
            .add_systems(
                Update,
                (
                    systems::cancel_removed,
                    systems::enqueue_requests,
                    systems::start_jobs,
                    systems::apply_job_events,
                )
                    .chain()
                    .in_set(RewardSdsSystems),
            );
    }

    fn finish(&self, app: &mut App) {
        // Write where the AssetServer reads: the same root it resolves `file_path` against.
        let file_path = app
            .get_added_plugins::<AssetPlugin>()
            .first()
            .map(|p| p.file_path.clone())
            .unwrap_or_else(|| "assets".into());
        if let Some(mut settings) = app.world_mut().get_resource_mut::<RewardSdsSettings>()
            && settings.assets_folder.is_none()
        {
            let root = bevy::asset::io::file::FileAssetReader::get_base_path().join(file_path);
            settings.assets_folder = Some(root);
        }
    }
}
