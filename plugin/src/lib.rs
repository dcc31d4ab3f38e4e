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
//! frame), at most [`RewardSdsSettings::max_concurrent`] at a time. The entity gets a
//! [`GenerationProgress`], a live preview child refreshed every few steps (Gaussian scenes as
//! alpha-blended splats, NeRFs as a coarse mesh of the field), and on success the glTF scene loaded from `assets/<output_folder>/<slug>.glb`.
//! Removing the component or despawning the entity cancels. All ML lives in
//! `rewardsds_engine`; this crate only schedules jobs and shows their results.

mod messages;
mod preview;
mod progress;
mod request;
mod settings;
mod splat_preview;
mod systems;

use bevy::prelude::*;

pub use messages::{GenerationCancelled, GenerationFailed, GenerationFinished, GenerationStarted};
pub use preview::{GenerationPreview, preview_to_bevy_mesh};
pub use progress::{GeneratedAsset, GenerationProgress, GenerationState};
pub use request::GenerateAsset;
pub use rewardsds_engine as engine;
pub use settings::RewardSdsSettings;
pub use splat_preview::{
    SplatDepthOrder, SplatPreviewMaterial, back_to_front, splats_to_bevy_mesh,
};
pub use systems::GeneratedScene;

/// The usual imports.
pub mod prelude {
    pub use crate::{
        GenerateAsset, GeneratedAsset, GenerationCancelled, GenerationFailed, GenerationFinished,
        GenerationProgress, GenerationStarted, GenerationState, RewardSdsPlugin, RewardSdsSettings,
        RewardSdsSystems,
    };
    pub use rewardsds_engine::generate::SceneKind;
}

/// Adds generation to an app. Needs `AssetPlugin` (and `GltfPlugin` to show the results;
/// `PbrPlugin`, or `Assets<StandardMaterial>`, for the live preview). Add it after
/// `DefaultPlugins`: with `PbrPlugin` already there it also registers the splat preview
/// ([`SplatPreviewMaterial`]); without it Gaussian scenes are previewed as meshes.
#[derive(Debug, Clone, Default)]
pub struct RewardSdsPlugin {
    /// Backend, models, output folder, concurrency, preview rate.
    pub settings: RewardSdsSettings,
}

impl RewardSdsPlugin {
    /// A plugin with these settings.
    pub fn new(settings: RewardSdsSettings) -> Self {
        Self { settings }
    }
}

/// The plugin's systems, in `Update`, in this order: cancel removed requests, queue new ones,
/// start jobs, apply their events.
#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub struct RewardSdsSystems;

impl Plugin for RewardSdsPlugin {
    fn build(&self, app: &mut App) {
        if app.is_plugin_added::<bevy::pbr::PbrPlugin>() {
            app.add_plugins(splat_preview::SplatPreviewPlugin);
        }
        app.insert_resource(self.settings.clone())
            .init_resource::<systems::Jobs>()
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
        if app
            .world()
            .resource::<RewardSdsSettings>()
            .assets_folder
            .is_none()
        {
            let file_path = app
                .get_added_plugins::<AssetPlugin>()
                .first()
                .map(|p| p.file_path.clone())
                .unwrap_or_else(|| "assets".into());
            let root = bevy::asset::io::file::FileAssetReader::get_base_path().join(file_path);
            app.world_mut()
                .resource_mut::<RewardSdsSettings>()
                .assets_folder = Some(root);
        }
    }
}
