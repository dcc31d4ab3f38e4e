//! `GenerateAsset`: the component that asks for a prop.

use std::path::PathBuf;

use bevy::prelude::*;
use rewardsds_engine::generate::{GenerateConfig, GenerateError, SceneKind, edit_config, slug};

use crate::error::GenerationError;
use crate::progress::GenerationProgress;
use crate::settings::RewardSdsSettings;

/// Generate a prop from `prompt` where this entity stands. Adding it queues the work;
/// changing its value restarts it (a `&mut` access that leaves it equal does not); removing
/// it (or despawning) cancels it. Requires `Transform`, `Visibility` and
/// [`GenerationProgress`].
///
/// Reflected, except `config` and `scene`: they are engine types (the engine does not depend
/// on Bevy), so inspectors and scene files do not see them and reflection fills them with
/// `None`.
#[derive(Component, Reflect, Debug, Clone, PartialEq)]
#[reflect(Component, Debug, PartialEq, Clone)]
#[require(Transform, Visibility, GenerationProgress)]
pub struct GenerateAsset {
    /// What to make.
    pub prompt: String,
    /// A preset name (`None`: the plugin's).
    pub preset: Option<String>,
    /// A whole config, instead of a preset (its prompt is replaced by `prompt`; a `backend`
    /// it names wins over the plugin's).
    #[reflect(ignore)]
    pub config: Option<GenerateConfig>,
    /// Optimisation steps (`None`: the preset's).
    pub steps: Option<usize>,
    /// Seed (`None`: the preset's).
    pub seed: Option<u64>,
    /// Diffusion prior: preset, folder or repo id (`None`: the plugin's, then the preset's).
    pub prior: Option<String>,
    /// Reward model (`None`: the plugin's, then the preset's).
    pub reward: Option<String>,
    /// Scene representation (`None`: the preset's, a NeRF): Gaussians are the faster path.
    #[reflect(ignore)]
    pub scene: Option<SceneKind>,
    /// File name of the result without `.glb` (`None`: the prompt's slug). Regenerating the
    /// same name replaces the file, and every instance of it reloads.
    pub name: Option<String>,
    /// Edit this earlier result towards `prompt` instead of starting from scratch (DDS /
    /// RewardDDS): the result's name (its checkpoint is `<name>.checkpoint` in the output
    /// folder, kept by [`RewardSdsSettings::keep_checkpoints`]) or a path to a checkpoint
    /// folder. The edit runs with the source's own config; `steps`, `seed`, `prior` and
    /// `reward` set here override it, `preset`, `config` and `scene` do not apply.
    pub edit: Option<String>,
}

impl GenerateAsset {
    /// A request for `prompt` with the plugin's defaults.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            preset: None,
            config: None,
            steps: None,
            seed: None,
            prior: None,
            reward: None,
            scene: None,
            name: None,
            edit: None,
        }
    }

    /// Edit the earlier result `source` (its name, or its checkpoint folder) into `prompt`:
    /// "the same barrel, but mossy". The new asset is named after `prompt` unless
    /// [`named`](Self::named).
    pub fn edit(source: impl Into<String>, prompt: impl Into<String>) -> Self {
        Self {
            edit: Some(source.into()),
            ..Self::new(prompt)
        }
    }

    /// Use a preset: `fast`, `quality`, `fast-sds`, `quality-sds`.
    pub fn with_preset(mut self, preset: impl Into<String>) -> Self {
        self.preset = Some(preset.into());
        self
    }

    /// Use a whole config (from a TOML file, say).
    pub fn with_config(mut self, config: GenerateConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// Set the number of optimisation steps.
    pub fn with_steps(mut self, steps: usize) -> Self {
        self.steps = Some(steps);
        self
    }

    /// Set the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Use this diffusion prior (preset, folder or repo id).
    pub fn with_prior(mut self, prior: impl Into<String>) -> Self {
        self.prior = Some(prior.into());
        self
    }

    /// Use this reward model (preset, folder or repo id).
    pub fn with_reward(mut self, reward: impl Into<String>) -> Self {
        self.reward = Some(reward.into());
        self
    }

    /// Optimise this representation: `SceneKind::Gaussians` or `SceneKind::Nerf`.
    pub fn with_scene(mut self, scene: SceneKind) -> Self {
        self.scene = Some(scene);
        self
    }

    /// Name the output file (it is made file-name safe).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The output file's name (without `.glb`): safe, never a path.
    pub fn file_name(&self) -> String {
        slug(self.name.as_deref().unwrap_or(&self.prompt))
    }

    /// The full config this request runs with; the error names what is wrong.
    pub fn resolve(&self, settings: &RewardSdsSettings) -> Result<GenerateConfig, GenerationError> {
        if let Some(source) = &self.edit {
            return self.resolve_edit(source, settings);
        }
        let mut config = match &self.config {
            Some(config) => config.clone(),
            None => {
                let preset = self.preset.as_deref().unwrap_or(&settings.preset);
                GenerateConfig::preset(preset)?
            }
        };
        config.prompt = self.prompt.clone();
        if let Some(steps) = self.steps {
            config.steps = steps;
        }
        if let Some(seed) = self.seed {
            config.seed = seed;
        }
        if let Some(scene) = self.scene {
            config.scene = scene;
        }
        if let Some(prior) = self.prior.as_ref().or(settings.prior.as_ref()) {
            config.prior = prior.clone();
        }
        if let Some(reward) = self.reward.as_ref().or(settings.reward.as_ref()) {
            config.reward = Some(reward.clone());
        }
        config.validate()?;
        Ok(config)
    }

    /// The config of an edit of `source`: the source's own, with this request's overrides.
    fn resolve_edit(
        &self,
        source: &str,
        settings: &RewardSdsSettings,
    ) -> Result<GenerateConfig, GenerationError> {
        let path = PathBuf::from(source);
        let dir = if path.is_dir() {
            path
        } else {
            settings.checkpoint_dir(&slug(source))
        };
        let mut config = edit_config(&dir, &self.prompt).map_err(|e| match e {
            // A bad target prompt is the request's fault; anything else is the source's.
            GenerateError::Config(e) => GenerationError::from(e),
            e => GenerationError::Edit {
                reason: GenerationError::from(&e).to_string(),
                folder: dir.clone(),
            },
        })?;
        if let Some(steps) = self.steps {
            config.steps = steps;
        }
        if let Some(seed) = self.seed {
            config.seed = seed;
        }
        if let Some(prior) = &self.prior {
            config.prior = prior.clone();
        }
        if let Some(reward) = &self.reward {
            config.reward = Some(reward.clone());
        }
        config.validate()?;
        Ok(config)
    }
}
