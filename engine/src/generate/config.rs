//! `GenerateConfig`: every knob of a generation in one serde struct (TOML on disk, saved beside
//! each output), with presets.

use serde::{Deserialize, Serialize};

use super::edit::EditConfig;
use super::gaussian_scene::GaussianSceneConfig;
use super::texture_stage::TextureStageConfig;
use crate::backend::BackendKind;
use crate::guidance::{
    AnnealedFraction, ConfigError, GuidanceConfig, ReconLossConfig, RewardSdsConfig, ScoringMode,
    TimeWeighting, WeightStrategy,
};
use crate::mesh::MeshConfig;
use crate::optim::{OptimizerConfig, OptimizerKind};
use crate::render::VolumeRendererConfig;
use crate::scene::camera::OrbitConfig;
use crate::scene::nerf::{
    BackgroundConfig, BackgroundKind, HashGridConfig, NerfConfig, NerfLearningRates,
};

/// The scene representation a generation optimises.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SceneKind {
    /// A hash-grid NeRF (DreamFusion / threestudio): smooth surfaces, slower.
    #[default]
    Nerf,
    /// 3D Gaussians (DreamGaussian): fast, densified as they are optimised.
    Gaussians,
}

impl SceneKind {
    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Nerf => "nerf",
            Self::Gaussians => "gaussians",
        }
    }
}

impl std::str::FromStr for SceneKind {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "nerf" => Ok(Self::Nerf),
            "gaussians" => Ok(Self::Gaussians),
            other => Err(ConfigError::new(
                "scene",
                format!("`{other}`: expected nerf or gaussians"),
            )),
        }
    }
}

/// From training step `step` on, views are rendered `size` pixels square: one entry of
/// [`GenerateConfig::resolution_milestones`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolutionMilestone {
    /// The first step (0-based: the number of steps done before it) rendered at `size`.
    pub step: usize,
    /// Side of the rendered views in pixels (at least 8).
    pub size: u32,
    /// Views rendered per step from here on (threestudio's `batch_size: [8, 4]` beside
    /// `width: [64, 256]`); absent: as before the milestone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub views: Option<usize>,
}

/// A whole generation: prompt, prior, reward, guidance, scene, schedule.
///
/// The training views start `render_size` pixels square; `resolution_milestones` can raise
/// (or lower) that as the run goes on, as threestudio's `width: [64, 256]` with
/// `resolution_milestones: [5000]` does: coarse views early settle the shape cheaply, fine
/// ones later add detail. In TOML:
///
/// ```toml
/// render_size = 64
/// resolution_milestones = [{ step = 5000, size = 256 }]
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerateConfig {
    /// What to make.
    pub prompt: String,
    /// Seed of the scene initialisation, cameras and noises.
    pub seed: u64,
    /// Optimisation steps.
    pub steps: usize,
    /// The diffusion prior: a preset (`tiny-world`, `sd21-base`), a folder or a repo id.
    pub prior: String,
    /// The reward model for RewardSDS (a CLIP folder or preset such as `tiny-world-reward`);
    /// unused by plain SDS.
    pub reward: Option<String>,
    /// A cheaper decoder for RewardSDS's scored samples instead of the prior's VAE: `taesd`
    /// (diffusers' `AutoencoderTiny`, 2.4 M parameters against the VAE decoder's 49 M) or a
    /// folder of one. Scoring only: the gradient never passes through it. Unset: the VAE.
    pub score_decoder: Option<String>,
    /// SDS / RewardSDS settings.
    pub guidance: GuidanceConfig,
    /// Which representation is optimised: `nerf` (settings below) or `gaussians`.
    pub scene: SceneKind,
    /// The NeRF (when `scene = "nerf"`).
    pub nerf: NerfConfig,
    /// The Gaussians (when `scene = "gaussians"`).
    pub gaussians: GaussianSceneConfig,
    /// Volume rendering.
    pub renderer: VolumeRendererConfig,
    /// Learning rates per parameter group (at step 0).
    pub learning_rates: NerfLearningRates,
    /// The NeRF's learning rates at the last step as a fraction of `learning_rates`, reached
    /// by exponential decay (threestudio's `ExponentialLR`); 1: constant (the `fast` preset:
    /// 0.1, `quality`: 1).
    /// Constant steps keep a scene moving under SDS's noisy gradients: a NeRF fitted to the
    /// true scene loses its cube's faces within 50 steps at the `fast` preset's rates and
    /// keeps them at a tenth of them (docs/tiny_world.md, "SDS from the true scene").
    pub learning_rate_end_factor: f64,
    /// Optimiser.
    pub optimizer: OptimizerConfig,
    /// Camera ranges of the training views.
    pub camera: OrbitConfig,
    /// Views rendered per step (the SDS batch `B`).
    pub views_per_step: usize,
    /// Side of the rendered training views in pixels, from step 0 until the first of
    /// `resolution_milestones`.
    pub render_size: u32,
    /// Progressive resolution: from each milestone's `step` on, training views are its `size`
    /// pixels square ([`render_size_at`](Self::render_size_at)). Steps strictly increase and
    /// lie in `1..steps`. Empty (the default): `render_size` throughout.
    pub resolution_milestones: Vec<ResolutionMilestone>,
    /// Which compute backend runs it (`cpu`, `wgpu`, `cuda`, `flex`); `None`: the host decides
    /// (the generate example's `--backend` flag wins over this, and falls back to `cpu`; the
    /// Bevy plugin falls back to `RewardSdsSettings::backend`). Hosts record the one they used
    /// in the config they save beside the result.
    pub backend: Option<BackendKind>,
    /// Steps between preview snapshots (0: none).
    pub snapshot_every: usize,
    /// Steps between checkpoints (0: none), written when the generator has a checkpoint
    /// folder ([`Generator::checkpoint_to`](super::Generator::checkpoint_to)); the last
    /// step is always checkpointed then.
    pub checkpoint_every: usize,
    /// Surface extraction of the result.
    pub mesh: MeshConfig,
    /// Length in metres of the exported asset's longest side.
    pub asset_size: f32,
    /// Edit a finished asset instead of generating from scratch (DDS / RewardDDS): the scene
    /// starts as the asset and `prompt` is what it should become (`edit.source`,
    /// `edit.source_prompt`: [`EditConfig`]). Unset: a new asset.
    pub edit: Option<EditConfig>,
    /// Stage 2 after the `steps` of stage 1: the surface meshed with a UV atlas and its
    /// texture refined with the same guidance on renders of the fixed mesh (DreamGaussian's
    /// second stage; [`TextureStageConfig`]). The asset is then the textured mesh. Unset: one
    /// stage.
    pub texture_stage: Option<TextureStageConfig>,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self::preset("fast").expect("a known preset")
    }
}

/// Largest render side accepted: above it a step's buffers outgrow any machine (a 100,000 px
/// render asked for 120 GB), and no prior sees more than 1024 px.
pub const MAX_RENDER_SIZE: u32 = 4096;

/// A render side within 8 px and [`MAX_RENDER_SIZE`]; the error names `field`.
fn check_render_size(field: &str, size: u32) -> Result<(), ConfigError> {
    if size < 8 {
        Err(ConfigError::new(
            field,
            format!("{size} is below the 8 px minimum"),
        ))
    } else if size > MAX_RENDER_SIZE {
        Err(ConfigError::new(
            field,
            format!(
                "{size} is above the {MAX_RENDER_SIZE} px maximum (priors see 64-1024 px; a \
                 step's buffers grow with its square)"
            ),
        ))
    } else {
        Ok(())
    }
}

/// The preset names [`GenerateConfig::preset`] knows.
pub const PRESETS: &[&str] = &[
    "fast",
    "fast-sds",
    "quality",
    "quality-sds",
    "sd21",
    "sd21-sds",
    "mvdream",
    "mvdream-sds",
    "mvdream-fast",
    "mvdream-fast-sds",
];

/// The official MVDream / RewardSDS 3D configs' negative prompt (threestudio's
/// `prompt_processor.negative_prompt` in `mvdream-sd21.yaml` and `reward-mvdream-sd21.yaml`).
pub const MVDREAM_NEGATIVE_PROMPT: &str = "ugly, bad anatomy, blurry, pixelated obscure, \
     unnatural colors, poor lighting, dull, and unclear, cropped, lowres, low quality, artifacts, \
     duplicate, morbid, mutilated, poorly drawn face, deformed, dehydrated, bad proportions";

impl GenerateConfig {
    /// A named preset: `fast` (the Tiny World prior on a CPU, minutes), `quality` (more
    /// steps, views and resolution) and `mvdream` (the paper's 3D setup, for a GPU), each with
    /// RewardSDS, or plain SDS with the `-sds` suffix.
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        let (base, sds) = match name.strip_suffix("-sds") {
            Some(base) => (base, true),
            None => (name, false),
        };
        let mut config = match base {
            "fast" => Self::fast(),
            "quality" => Self::quality(),
            "sd21" => Self::sd21(),
            "mvdream" => Self::mvdream(),
            "mvdream-fast" => Self::mvdream_fast(),
            _ => {
                return Err(ConfigError::new(
                    "preset",
                    format!("unknown preset `{name}` (known: {})", PRESETS.join(", ")),
                ));
            }
        };
        if sds {
            config.guidance.reward = None;
            config.guidance.reward_feedback = None;
        }
        Ok(config)
    }

    fn fast() -> Self {
        Self {
            prompt: String::new(),
            seed: 0,
            steps: 250,
            prior: "tiny-world".into(),
            reward: Some("tiny-world-reward".into()),
            score_decoder: None,
            guidance: GuidanceConfig {
                // Measured on Tiny World v3 (docs/benchmarks.md, SDS, 4 prompts): 3-5 best
                // (judge R-precision 47%), 7.5 38%, 12 34%, 20 31%. Real priors want more.
                guidance_scale: 5.0,
                // CFG 5 early shapes the scene; ending at 1.5 with small steps (below) lets
                // it settle: on Tiny World v6 the benchmark's judge R-precision goes from
                // 66-69% to 70-75% (the cube pairs gain, the torus pair loses; docs/benchmarks.md,
                // "Tiny World v6 (camera-conditioned) with and without the end schedule").
                guidance_scale_end: Some(1.5),
                reward: Some(RewardSdsConfig {
                    n_samples: 4,
                    strategy: WeightStrategy::default(),
                    // DDIM scoring costs ~15 UNet passes per sample: too much for a CPU step.
                    scoring: ScoringMode::OneStep,
                    reward_duration: 0.7,
                    scoring_guidance_scale: None,
                }),
                // Off: the paper's RewardSDS. Feedback (`--reward-feedback 1`) lifts the NeRF
                // benchmark's judge R-precision from 67% to 86% but grows adversarial splats
                // on Gaussians (docs/tiny_world.md, "Reward feedback").
                reward_feedback: None,
                ..GuidanceConfig::default()
            },
            scene: SceneKind::Nerf,
            gaussians: GaussianSceneConfig::default(),
            nerf: NerfConfig::new()
                .with_encoding(
                    HashGridConfig::new()
                        .with_n_levels(8)
                        .with_log2_hashmap_size(15)
                        .with_max_resolution(256),
                )
                .with_hidden(32)
                .with_background(
                    BackgroundConfig::new()
                        .with_kind(BackgroundKind::Solid)
                        .with_color([0.92, 0.92, 0.92]),
                ),
            renderer: VolumeRendererConfig::new().with_num_samples_per_ray(32),
            // The hash grid at 0.1 (0.03 before): a left/right pair's colours separate within
            // the front steps (docs/benchmarks.md).
            learning_rates: NerfLearningRates {
                encoding: 0.1,
                network: 0.003,
                background: 0.003,
            },
            // A tenth by the last step: constant steps keep SDS's noisy gradients moving the
            // scene after it has formed (docs/tiny_world.md, "SDS from the true scene").
            learning_rate_end_factor: 0.1,
            optimizer: OptimizerConfig::default(),
            // Front views for the first 60% of the steps: a left/right pair settles its layout
            // before the orbit widens (docs/benchmarks.md).
            camera: OrbitConfig {
                front_fraction: 0.6,
                ..OrbitConfig::default()
            },
            views_per_step: 1,
            render_size: 32,
            resolution_milestones: Vec::new(),
            backend: None,
            snapshot_every: 25,
            checkpoint_every: 50,
            // The small NeRF is cheap to query: 96^3 keeps extraction to seconds on a CPU.
            mesh: MeshConfig {
                resolution: 96,
                coarse_resolution: 48,
                ..MeshConfig::default()
            },
            asset_size: 1.0,
            edit: None,
            texture_stage: None,
        }
    }

    fn quality() -> Self {
        let fast = Self::fast();
        Self {
            steps: 1000,
            guidance: GuidanceConfig {
                reward: Some(RewardSdsConfig {
                    scoring: ScoringMode::Ddim,
                    ..fast.guidance.reward.clone().expect("fast has a reward")
                }),
                // Constant, as SDS papers run: the end schedule is measured on Tiny World only.
                guidance_scale_end: None,
                ..fast.guidance.clone()
            },
            learning_rate_end_factor: 1.0,
            nerf: NerfConfig::new().with_background(fast.nerf.background.clone()),
            renderer: VolumeRendererConfig::new(),
            views_per_step: 4,
            render_size: 64,
            snapshot_every: 50,
            checkpoint_every: 100,
            mesh: MeshConfig::default(),
            ..fast
        }
    }

    /// Stable Diffusion 2.1-base as threestudio runs it (`configs/dreamfusion-sd.yaml`: the
    /// DreamFusion recipe on SD), key for key where this engine has the feature, plus the
    /// RewardSDS keys of the official 2D code's defaults (N = 4, min-max, ImageReward);
    /// `sd21-sds` is threestudio's config alone. docs/presets.md maps each source key to ours.
    fn sd21() -> Self {
        let fast = Self::fast();
        Self {
            steps: 10_000,
            prior: "sd21-base".into(),
            reward: Some("image-reward".into()),
            guidance: GuidanceConfig {
                guidance_scale: 100.0,
                guidance_scale_end: None,
                negative_prompt: String::new(),
                t_min: AnnealedFraction::constant(0.02),
                t_max: AnnealedFraction::constant(0.98),
                anneal_steps: 0,
                weighting: TimeWeighting::Sds,
                view_dependent_prompting: true,
                recon_loss: None,
                reward: Some(RewardSdsConfig {
                    n_samples: 4,
                    strategy: WeightStrategy::default(),
                    scoring: ScoringMode::Ddim,
                    reward_duration: 0.7,
                    scoring_guidance_scale: None,
                }),
                reward_feedback: None,
                // N x (cond, uncond) of one view per UNet pass.
                max_batch: 8,
                ..GuidanceConfig::default()
            },
            scene: SceneKind::Nerf,
            // implicit-volume: 16-level hash grid (2^19 entries, max resolution 4096), 64-wide
            // MLPs, Magic3D blob (scale 10, std 0.5), radius 2; learnt background.
            nerf: NerfConfig::new().with_radius(2.0),
            renderer: VolumeRendererConfig::new().with_num_samples_per_ray(512),
            // Adam (no weight decay): geometry 0.01 (encoding and MLPs), background 0.001.
            learning_rates: NerfLearningRates {
                encoding: 0.01,
                network: 0.01,
                background: 0.001,
            },
            learning_rate_end_factor: 1.0,
            optimizer: OptimizerConfig {
                kind: OptimizerKind::Adam,
                ..OptimizerConfig::default()
            },
            // random-camera-datamodule: absolute distances 1.5-2.0, fovy 40-70, elevation
            // -10..45 (half the draws uniform on the sphere), centre perturbed by N(0, 0.2).
            camera: OrbitConfig {
                azimuth_range: [-180.0, 180.0],
                elevation_range: [-10.0, 45.0],
                fov_range: [40.0, 70.0],
                distance_range: [1.5, 2.0],
                relative_distance: false,
                center_jitter: 0.2,
                elevation_sphere_fraction: 0.5,
                ..OrbitConfig::default()
            },
            views_per_step: 1,
            render_size: 64,
            resolution_milestones: Vec::new(),
            snapshot_every: 200,
            checkpoint_every: 1000,
            mesh: MeshConfig::default(),
            // Not threestudio's: the asset a game needs is a textured mesh (DreamGaussian's
            // second stage, its defaults).
            texture_stage: Some(TextureStageConfig::default()),
            ..fast
        }
    }

    /// The official RewardSDS 3D config (`reward-mvdream-sd21.yaml` of itaychachy/RewardSDS,
    /// itself threestudio-mvdream's `mvdream-sd21.yaml` plus the reward keys), key for key
    /// where this engine has the feature; docs/mvdream.md maps each official key to ours and
    /// lists what differs.
    fn mvdream() -> Self {
        let fast = Self::fast();
        Self {
            steps: 10_000,
            prior: "mvdream".into(),
            reward: Some("image-reward".into()),
            guidance: GuidanceConfig {
                guidance_scale: 50.0,
                guidance_scale_end: None,
                negative_prompt: MVDREAM_NEGATIVE_PROMPT.into(),
                t_min: AnnealedFraction::linear(0.98, 0.02),
                t_max: AnnealedFraction::linear(0.98, 0.50),
                anneal_steps: 8000,
                view_dependent_prompting: false,
                recon_loss: Some(ReconLossConfig { std_rescale: 0.5 }),
                reward: Some(RewardSdsConfig {
                    n_samples: 7,
                    strategy: WeightStrategy::default(),
                    scoring: ScoringMode::Ddim,
                    reward_duration: 0.7,
                    scoring_guidance_scale: None,
                }),
                reward_feedback: None,
                // One step's 8 views (2 groups) per UNet pass.
                max_batch: 8,
                ..GuidanceConfig::default()
            },
            scene: SceneKind::Nerf,
            // threestudio's implicit-volume: 16-level hash grid (2^19 entries), 64-wide MLPs,
            // Magic3D density blob; learnt background, random colours half the steps
            // (`random_aug`, threestudio's default `random_aug_prob` 0.5).
            nerf: NerfConfig::new()
                .with_background(BackgroundConfig::new().with_random_aug_probability(0.5)),
            renderer: VolumeRendererConfig::new().with_num_samples_per_ray(512),
            learning_rates: NerfLearningRates {
                encoding: 0.01,
                network: 0.001,
                background: 0.001,
            },
            learning_rate_end_factor: 1.0,
            // torch.optim.AdamW with the config's betas and eps; its default weight decay 0.01,
            // which the config leaves in place.
            optimizer: OptimizerConfig {
                weight_decay: 0.01,
                ..OptimizerConfig::default()
            },
            camera: OrbitConfig {
                azimuth_range: [0.0, 360.0],
                elevation_range: [0.0, 30.0],
                fov_range: [15.0, 60.0],
                distance_range: [0.8, 1.0],
                relative_distance: true,
                views_per_group: 4,
                elevation_sphere_fraction: 0.5,
                ..OrbitConfig::default()
            },
            views_per_step: 8,
            render_size: 64,
            resolution_milestones: vec![ResolutionMilestone {
                step: 5000,
                size: 256,
                views: Some(4),
            }],
            snapshot_every: 200,
            checkpoint_every: 1000,
            mesh: MeshConfig::default(),
            ..fast
        }
    }

    /// The paper's setup cut to fit 15 minutes on one H100 by the cost model
    /// (`cargo run --release --example cost_model`; docs/presets.md): half the steps (the
    /// annealing scaled with them), N = 4 scored in one step by TAESD instead of 15 DDIM passes
    /// and the VAE, the N noises of a step in one UNet call, and 64 px renders throughout at
    /// 256 samples per ray (the official 256 px phase, 4 views x 256 x 256 x 512 samples, is
    /// 16 times the sample points of a 64 px step here, and this engine's renderer visits every
    /// one of them: no occupancy grid skips empty space yet).
    fn mvdream_fast() -> Self {
        let full = Self::mvdream();
        Self {
            steps: 5000,
            score_decoder: Some("taesd".into()),
            guidance: GuidanceConfig {
                anneal_steps: 4000,
                reward: Some(RewardSdsConfig {
                    n_samples: 4,
                    scoring: ScoringMode::OneStep,
                    ..full.guidance.reward.clone().expect("mvdream has a reward")
                }),
                // 4 noises x 8 views per call (64 UNet samples with CFG).
                max_batch: 32,
                ..full.guidance.clone()
            },
            renderer: VolumeRendererConfig::new().with_num_samples_per_ray(256),
            resolution_milestones: Vec::new(),
            snapshot_every: 100,
            checkpoint_every: 500,
            // A textured asset (DreamGaussian's second stage); the paper's `mvdream` has none.
            texture_stage: Some(TextureStageConfig::default()),
            ..full
        }
    }

    /// Checks every field; the error names the one at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.prompt.trim().is_empty() {
            return Err(ConfigError::new("prompt", "is empty"));
        }
        if self.steps == 0 {
            return Err(ConfigError::new("steps", "must be at least 1"));
        }
        if self.views_per_step == 0 {
            return Err(ConfigError::new("views_per_step", "must be at least 1"));
        }
        check_render_size("render_size", self.render_size)?;
        let mut previous = 0;
        for (i, milestone) in self.resolution_milestones.iter().enumerate() {
            let field = |name: &str| format!("resolution_milestones[{i}].{name}");
            if milestone.step <= previous || milestone.step >= self.steps {
                let after = match i {
                    0 => "after step 0 (`render_size` covers it)".to_string(),
                    _ => format!("after the previous milestone's step {previous}"),
                };
                return Err(ConfigError::new(
                    field("step"),
                    format!(
                        "{} must come {after} and before `steps` ({})",
                        milestone.step, self.steps
                    ),
                ));
            }
            check_render_size(&field("size"), milestone.size)?;
            if milestone.views == Some(0) {
                return Err(ConfigError::new(field("views"), "must be at least 1"));
            }
            previous = milestone.step;
        }
        let group = self.camera.views_per_group.max(1);
        let counts = std::iter::once(("views_per_step".to_string(), self.views_per_step)).chain(
            self.resolution_milestones
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    m.views
                        .map(|v| (format!("resolution_milestones[{i}].views"), v))
                }),
        );
        for (field, views) in counts {
            if views % group != 0 {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "{views} views are not whole groups of camera.views_per_group = {group}"
                    ),
                ));
            }
        }
        if self.renderer.num_samples_per_ray == 0 {
            return Err(ConfigError::new(
                "renderer.num_samples_per_ray",
                "must be at least 1",
            ));
        }
        if self.renderer.train_chunk_samples < self.renderer.num_samples_per_ray {
            return Err(ConfigError::new(
                "renderer.train_chunk_samples",
                format!(
                    "{} is less than one ray's samples (renderer.num_samples_per_ray = {})",
                    self.renderer.train_chunk_samples, self.renderer.num_samples_per_ray
                ),
            ));
        }
        if self.prior.trim().is_empty() {
            return Err(ConfigError::new("prior", "is empty"));
        }
        self.guidance.validate().map_err(|e| e.within("guidance"))?;
        self.guidance.check_reward_model(self.reward.as_deref())?;
        self.check_reward_fits_prior()?;
        self.nerf
            .background
            .validate()
            .map_err(|e| ConfigError::new("nerf.background.random_aug_probability", e))?;
        self.nerf
            .validate()
            .map_err(|e| ConfigError::new("nerf", e))?;
        self.gaussians.validate()?;
        self.learning_rates
            .validate()
            .map_err(|e| ConfigError::new("learning_rates", e))?;
        let f = self.learning_rate_end_factor;
        if !(f.is_finite() && f > 0.0 && f <= 1.0) {
            return Err(ConfigError::new(
                "learning_rate_end_factor",
                format!("{f} is not a fraction in (0, 1]"),
            ));
        }
        self.optimizer
            .validate()
            .map_err(|e| ConfigError::new("optimizer", e))?;
        self.camera
            .validate()
            .map_err(|e| ConfigError::new("camera", e.to_string()))?;
        self.mesh
            .validate()
            .map_err(|e| ConfigError::new("mesh", e.to_string()))?;
        if !(self.asset_size.is_finite() && self.asset_size > 0.0) {
            return Err(ConfigError::new(
                "asset_size",
                format!("{} must be a positive length in metres", self.asset_size),
            ));
        }
        if let Some(edit) = &self.edit {
            edit.validate(self)?;
        }
        if let Some(stage) = &self.texture_stage {
            stage.validate()?;
            if self.edit.is_some() {
                return Err(ConfigError::new(
                    "texture_stage",
                    "an edit keeps its source's representation: unset texture_stage for edits",
                ));
            }
            if let Some(views) = stage.views
                && views % group != 0
            {
                return Err(ConfigError::new(
                    "texture_stage.views",
                    format!(
                        "{views} views are not whole groups of camera.views_per_group = {group}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Steps of the whole run: stage 1's `steps` plus the texture stage's.
    pub fn total_steps(&self) -> usize {
        self.steps + self.texture_stage.as_ref().map_or(0, |t| t.steps)
    }

    /// Side of the training views rendered at `step` (0-based): `render_size`, or the size of
    /// the last milestone at or before `step`. A function of the step alone, so a resumed run
    /// renders what the uninterrupted one did.
    pub fn render_size_at(&self, step: usize) -> u32 {
        self.resolution_milestones
            .iter()
            .take_while(|m| m.step <= step)
            .last()
            .map_or(self.render_size, |m| m.size)
    }

    /// A Tiny World reward knows only that world's coloured primitives: refuse it beside a
    /// real prior (a preset named for one) instead of ranking real renders by it.
    fn check_reward_fits_prior(&self) -> Result<(), ConfigError> {
        const REAL_PRIORS: &[&str] = &["sd15", "sd21-base", "sd21", "mvdream"];
        let uses_reward = self
            .guidance
            .reward
            .as_ref()
            .is_some_and(|r| r.strategy.uses_rewards())
            || self.guidance.reward_feedback.is_some();
        match &self.reward {
            Some(reward)
                if uses_reward
                    && reward.starts_with("tiny-world")
                    && REAL_PRIORS.contains(&self.prior.as_str()) =>
            {
                Err(ConfigError::new(
                    "reward",
                    format!(
                        "`{reward}` only knows Tiny World's coloured primitives, not what the \
                         `{}` prior draws: use a real reward (image-reward, clip-vit-l-14, \
                         laion-aesthetic) or plain SDS (a `-sds` preset)",
                        self.prior
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Views rendered at `step` (0-based): `views_per_step`, or the `views` of the last
    /// milestone at or before `step` that sets them.
    pub fn views_per_step_at(&self, step: usize) -> usize {
        self.resolution_milestones
            .iter()
            .take_while(|m| m.step <= step)
            .filter_map(|m| m.views)
            .last()
            .unwrap_or(self.views_per_step)
    }

    /// The NeRF's learning rates at `step` (0-based): `learning_rates` times
    /// `learning_rate_end_factor^(step / (steps - 1))`.
    pub fn learning_rates_at(&self, step: usize) -> NerfLearningRates {
        let f = self.learning_rate_end_factor;
        if f == 1.0 || self.steps < 2 {
            return self.learning_rates.clone();
        }
        let k = f.powf(step.min(self.steps - 1) as f64 / (self.steps - 1) as f64);
        let r = &self.learning_rates;
        NerfLearningRates {
            encoding: r.encoding * k,
            network: r.network * k,
            background: r.background * k,
        }
    }

    /// Shrinks the scene to a plumbing check of the models and the guidance: 16 px renders of
    /// 16 samples per ray, a 4-level hash grid, 16-wide MLPs, a 32^3 mesh, no snapshots or
    /// checkpoints. The guidance and the models stay as they are. For tests and `rewardsds
    /// bench --small`, never for a result.
    pub fn shrink_scene_for_checks(&mut self) {
        self.render_size = 16;
        self.renderer.num_samples_per_ray = 16;
        self.nerf.encoding = HashGridConfig::new()
            .with_n_levels(4)
            .with_log2_hashmap_size(12)
            .with_max_resolution(64);
        self.nerf.hidden = 16;
        self.snapshot_every = 0;
        self.checkpoint_every = 0;
        self.mesh.resolution = 32;
        self.mesh.coarse_resolution = 16;
    }

    /// Side of the views of the last steps: what a finished result is best looked at with.
    pub fn final_render_size(&self) -> u32 {
        self.render_size_at(self.steps.saturating_sub(1))
    }

    /// Parse TOML and validate.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| {
            let field = toml_error_key(text).unwrap_or_else(|| "config".into());
            ConfigError::new(field, e.to_string())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// As TOML (what is saved beside each output).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config serialises")
    }
}

/// The dotted key a TOML value error is about (`backend`, `guidance.reward.scoring`), if any.
/// toml names it only when deserialising from a parsed table (as the error's last line,
/// ``in `a.b` ``), so parse again that way; the first error keeps its line-and-column excerpt.
fn toml_error_key(text: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    let error = GenerateConfig::deserialize(table).err()?.to_string();
    let key = error
        .lines()
        .last()?
        .strip_prefix("in `")?
        .strip_suffix('`')?;
    Some(key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mvdream_preset_validates_and_a_tiny_world_reward_is_refused_beside_a_real_prior() {
        let mut config = GenerateConfig::preset("mvdream").unwrap();
        config.prompt = "a wooden barrel".into();
        config.validate().unwrap();
        assert_eq!(config.views_per_step_at(4999), 8);
        assert_eq!(config.views_per_step_at(5000), 4);
        assert_eq!(config.render_size_at(5000), 256);
        assert!(
            GenerateConfig::preset("mvdream-sds")
                .unwrap()
                .guidance
                .reward
                .is_none()
        );

        let mut fast = GenerateConfig::preset("fast").unwrap();
        fast.prompt = "a wooden barrel".into();
        fast.prior = "sd21-base".into();
        let e = fast.validate().unwrap_err().to_string();
        assert!(
            e.contains("`reward`") && e.contains("tiny-world-reward"),
            "{e}"
        );

        config.views_per_step = 6;
        let e = config.validate().unwrap_err().to_string();
        assert!(e.contains("views_per_step"), "{e}");
    }
    use crate::guidance::AnnealedFraction;

    fn with_prompt(mut c: GenerateConfig) -> GenerateConfig {
        c.prompt = "a red cube".into();
        c
    }

    #[test]
    fn learning_rates_decay_exponentially_to_the_end_factor() {
        let mut config = with_prompt(GenerateConfig::preset("fast").unwrap());
        config.steps = 101;
        config.learning_rate_end_factor = 1.0;
        assert_eq!(config.learning_rates_at(50), config.learning_rates);
        config.learning_rate_end_factor = 0.01;
        let at = |step| config.learning_rates_at(step).encoding / config.learning_rates.encoding;
        assert_eq!(at(0), 1.0);
        assert!((at(50) - 0.1).abs() < 1e-12, "{}", at(50));
        assert!((at(100) - 0.01).abs() < 1e-12);
        // Past the last step it stays at the end factor.
        assert_eq!(at(500), at(100));
        let r = config.learning_rates_at(100);
        assert!((r.network / config.learning_rates.network - 0.01).abs() < 1e-12);
        assert!((r.background / config.learning_rates.background - 0.01).abs() < 1e-12);
    }

    #[test]
    fn a_render_size_beyond_any_machine_is_refused_naming_the_field() {
        let mut config = with_prompt(GenerateConfig::preset("fast").unwrap());
        config.render_size = 100_000;
        let err = config.validate().unwrap_err();
        assert_eq!(err.field, "render_size");
        assert!(err.reason.contains("100000"), "{err}");
        config.render_size = 64;
        config.steps = 10;
        config.resolution_milestones = vec![ResolutionMilestone {
            step: 5,
            size: 100_000,
            views: None,
        }];
        let err = config.validate().unwrap_err();
        assert_eq!(err.field, "resolution_milestones[0].size");
    }

    #[test]
    fn presets_validate_and_round_trip_through_toml() {
        for name in PRESETS {
            let config = with_prompt(GenerateConfig::preset(name).unwrap());
            config.validate().unwrap();
            let back = GenerateConfig::from_toml(&config.to_toml()).unwrap();
            assert_eq!(back, config, "{name}");
            assert_eq!(config.guidance.reward.is_none(), name.ends_with("-sds"));
            // The paper's methods: reward feedback is opt-in.
            assert_eq!(config.guidance.reward_feedback, None, "{name}");
        }
        assert_eq!(GenerateConfig::preset("slow").unwrap_err().field, "preset");
    }

    fn milestone(step: usize, size: u32) -> ResolutionMilestone {
        ResolutionMilestone {
            step,
            size,
            views: None,
        }
    }

    #[test]
    fn render_size_follows_the_milestones() {
        let mut c = with_prompt(GenerateConfig::preset("fast").unwrap());
        c.steps = 100;
        c.render_size = 16;
        assert_eq!((c.render_size_at(0), c.render_size_at(99)), (16, 16));
        assert_eq!(c.final_render_size(), 16);
        c.resolution_milestones = vec![milestone(10, 32), milestone(50, 64)];
        c.validate().unwrap();
        let sizes: Vec<u32> = [0, 9, 10, 49, 50, 99, 1000]
            .map(|step| c.render_size_at(step))
            .into();
        assert_eq!(sizes, [16, 16, 32, 32, 64, 64, 64]);
        assert_eq!(c.final_render_size(), 64);
    }

    #[test]
    fn schedule_and_backend_round_trip_through_toml() {
        let mut c = with_prompt(GenerateConfig::preset("quality").unwrap());
        c.resolution_milestones = vec![milestone(300, 128), milestone(600, 256)];
        c.backend = Some(BackendKind::Wgpu);
        let text = c.to_toml();
        assert!(text.contains("backend = \"wgpu\""), "{text}");
        assert_eq!(GenerateConfig::from_toml(&text).unwrap(), c);
        // The documented spelling parses; leaving both out is a constant size, host's backend.
        let text = with_prompt(GenerateConfig::preset("fast").unwrap()).to_toml();
        let text = text
            .lines()
            .filter(|l| !l.starts_with("resolution_milestones") && !l.starts_with("backend"))
            .collect::<Vec<_>>()
            .join("\n");
        let plain = GenerateConfig::from_toml(&text).unwrap();
        assert_eq!(
            (plain.resolution_milestones.len(), plain.backend),
            (0, None)
        );
        let c = GenerateConfig::from_toml(
            "prompt = \"a red cube\"\nbackend = \"cuda\"\n\
             resolution_milestones = [{ step = 100, size = 64 }]",
        )
        .unwrap();
        assert_eq!(c.resolution_milestones, [milestone(100, 64)]);
        assert_eq!(c.backend, Some(BackendKind::Cuda));
    }

    #[test]
    fn bad_schedules_and_backends_name_their_field() {
        let mut base = with_prompt(GenerateConfig::preset("fast").unwrap());
        base.steps = 100;
        let error = |milestones: &[(usize, u32)]| {
            let mut c = base.clone();
            c.resolution_milestones = milestones.iter().map(|&(s, z)| milestone(s, z)).collect();
            c.validate().unwrap_err()
        };
        let e = error(&[(0, 32)]);
        assert_eq!(e.field, "resolution_milestones[0].step");
        assert!(e.reason.contains("after step 0"), "{e}");
        let e = error(&[(10, 32), (10, 64)]);
        assert_eq!(e.field, "resolution_milestones[1].step");
        assert!(e.reason.contains("previous milestone's step 10"), "{e}");
        assert_eq!(
            error(&[(50, 32), (20, 64)]).field,
            "resolution_milestones[1].step"
        );
        let e = error(&[(10, 32), (100, 64)]);
        assert_eq!(e.field, "resolution_milestones[1].step");
        assert!(e.reason.contains("before `steps` (100)"), "{e}");
        let e = error(&[(10, 32), (20, 4)]);
        assert_eq!(e.field, "resolution_milestones[1].size");
        assert!(e.reason.contains("8 px"), "{e}");

        let text = format!("backend = \"metal\"\n{}", base.to_toml());
        let e = GenerateConfig::from_toml(&text).unwrap_err();
        assert_eq!(e.field, "backend", "{e}");
        assert!(e.reason.contains("metal"), "{e}");
    }

    /// A config saved before `renderer.train_chunk_samples` existed loads with its default.
    #[test]
    fn renderer_fields_missing_from_a_saved_config_take_their_defaults() {
        let config = with_prompt(GenerateConfig::preset("fast").unwrap());
        let text = config.to_toml();
        let line = text
            .lines()
            .find(|l| l.starts_with("train_chunk_samples"))
            .expect("the field is written");
        let old = GenerateConfig::from_toml(&text.replace(line, "")).unwrap();
        assert_eq!(old, config);
    }

    /// A config saved before `nerf.background.random_aug_probability` existed ran without it,
    /// and loads so (0), whatever its preset sets now.
    #[test]
    fn a_saved_config_without_random_aug_loads_with_it_off() {
        let config = with_prompt(GenerateConfig::preset("mvdream").unwrap());
        assert_eq!(config.nerf.background.random_aug_probability, 0.5);
        let text = config.to_toml();
        let line = text
            .lines()
            .find(|l| l.starts_with("random_aug_probability"))
            .expect("the field is written");
        let old = GenerateConfig::from_toml(&text.replace(line, "")).unwrap();
        assert_eq!(old.nerf.background.random_aug_probability, 0.0);
        let mut expected = config.clone();
        expected.nerf.background.random_aug_probability = 0.0;
        assert_eq!(old, expected);
    }

    #[test]
    fn bad_values_name_their_field() {
        let base = with_prompt(GenerateConfig::preset("fast").unwrap());
        let field = |edit: &dyn Fn(&mut GenerateConfig)| {
            let mut c = base.clone();
            edit(&mut c);
            c.validate().unwrap_err().field
        };
        assert_eq!(field(&|c| c.steps = 0), "steps");
        assert_eq!(
            field(&|c| c.nerf.background.random_aug_probability = 2.0),
            "nerf.background.random_aug_probability"
        );
        assert_eq!(field(&|c| c.prompt = " ".into()), "prompt");
        assert_eq!(
            field(&|c| c.guidance.t_min = AnnealedFraction::constant(0.99)),
            "guidance.t_min"
        );
        assert_eq!(field(&|c| c.reward = None), "reward");
        assert_eq!(
            field(&|c| c.renderer.train_chunk_samples = 0),
            "renderer.train_chunk_samples"
        );
        assert_eq!(
            field(&|c| c.guidance.reward.as_mut().unwrap().n_samples = 3),
            "guidance.reward.strategy.k"
        );
        let err = GenerateConfig::from_toml("steps = 0\nprompt = \"a red cube\"").unwrap_err();
        assert_eq!(err.field, "steps");
        let err = GenerateConfig::from_toml("stepz = 3").unwrap_err();
        assert!(err.reason.contains("stepz"), "{err}");
        // Unknown names of a scoring mode or weighting strategy: the message shows the key, the
        // field is its whole path.
        for (from, to, key, path) in [
            (
                "scoring = \"one_step\"",
                "scoring = \"two_step\"",
                "scoring",
                "guidance.reward.scoring",
            ),
            (
                "type = \"min_max\"",
                "type = \"max_min\"",
                "type",
                "guidance.reward.strategy.type",
            ),
        ] {
            let text = base.to_toml();
            assert!(text.contains(from), "{text}");
            let err = GenerateConfig::from_toml(&text.replace(from, to)).unwrap_err();
            assert!(
                err.reason.contains(key) && err.reason.contains(&to[key.len() + 4..]),
                "{err}"
            );
            assert_eq!(err.field, path);
        }
    }
}
