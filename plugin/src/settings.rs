//! What every generation of the app shares: backend, models, where results go, how many run.

use std::path::PathBuf;

use bevy::prelude::*;
use rewardsds_engine::backend::BackendKind;
use rewardsds_engine::generate::GenerateConfig;

/// Plugin-wide settings (a resource; changes apply to jobs started afterwards). One the app
/// inserts before adding the plugin is kept: it wins over the plugin's own.
///
/// Reflected, except `backend`: an engine type (the engine does not depend on Bevy), so
/// inspectors do not see it; set it in code.
#[derive(Resource, Reflect, Debug, Clone, PartialEq)]
#[reflect(Resource, Default, Debug, PartialEq, Clone)]
pub struct RewardSdsSettings {
    /// Where the compute runs (`cpu` works everywhere; `cuda` or `wgpu` on a GPU), for
    /// requests whose config names no `backend` ([`backend_for`](Self::backend_for)).
    #[reflect(ignore)]
    pub backend: BackendKind,
    /// The preset of requests that name none: `fast`, `quality`, `fast-sds`, `quality-sds`.
    pub preset: String,
    /// The diffusion prior of requests that name none (`None`: the preset's, Tiny World).
    pub prior: Option<String>,
    /// The reward model of requests that name none (`None`: the preset's).
    pub reward: Option<String>,
    /// The asset root on disk (`None`: the AssetServer's own, found when the app starts).
    pub assets_folder: Option<PathBuf>,
    /// Folder under the asset root that results are written to.
    pub output_folder: String,
    /// Generations running at once; further requests wait in order.
    pub max_concurrent: usize,
    /// Steps between preview meshes (0: no preview).
    pub preview_every: usize,
    /// Grid samples along the preview's longest side.
    pub preview_resolution: u32,
    /// Keep each result's final scene beside its `.glb`, in `<name>.checkpoint/`, so that
    /// [`GenerateAsset::edit`](crate::GenerateAsset::edit) can edit it later (a few MB on Tiny
    /// World; the NeRF or Gaussians of a real-model run and their optimiser state).
    pub keep_checkpoints: bool,
}

impl Default for RewardSdsSettings {
    fn default() -> Self {
        Self {
            backend: BackendKind::default(),
            preset: "fast".into(),
            prior: None,
            reward: None,
            assets_folder: None,
            output_folder: "generated".into(),
            max_concurrent: 1,
            preview_every: 10,
            preview_resolution: 40,
            keep_checkpoints: true,
        }
    }
}

impl RewardSdsSettings {
    /// The folder results are written to.
    pub fn output_dir(&self) -> PathBuf {
        self.assets_folder
            .clone()
            .unwrap_or_else(|| PathBuf::from("assets"))
            .join(&self.output_folder)
    }

    /// The backend a request's resolved `config` runs on: the config's own `backend` when it
    /// names one (a request that brings its whole config means it), else the plugin's.
    pub fn backend_for(&self, config: &GenerateConfig) -> BackendKind {
        config.backend.unwrap_or(self.backend)
    }

    /// The checkpoint folder of the result named `name` (see
    /// [`keep_checkpoints`](Self::keep_checkpoints)).
    pub fn checkpoint_dir(&self, name: &str) -> PathBuf {
        self.output_dir().join(format!("{name}.checkpoint"))
    }

    /// The AssetServer path of the result named `name`.
    pub fn asset_path(&self, name: &str) -> String {
        let folder = self.output_folder.trim_matches('/');
        if folder.is_empty() {
            format!("{name}.glb")
        } else {
            format!("{folder}/{name}.glb")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_that_names_a_backend_wins_over_the_settings() {
        let settings = RewardSdsSettings {
            backend: BackendKind::Cuda,
            ..RewardSdsSettings::default()
        };
        let mut config = GenerateConfig::default();
        assert_eq!(settings.backend_for(&config), BackendKind::Cuda);
        config.backend = Some(BackendKind::Wgpu);
        assert_eq!(settings.backend_for(&config), BackendKind::Wgpu);
    }
}
