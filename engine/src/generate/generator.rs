//! The generation loop: render views of the NeRF, take a guidance step, update the NeRF;
//! step by step, with progress events, preview snapshots and cancellation.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::tensor::ElementConversion;
use serde::{Deserialize, Serialize};

use super::checkpoint::CheckpointError;
use super::config::GenerateConfig;
use super::config::SceneKind;
use super::edit::{EditSource, StartScene};
use super::gaussian_scene::GaussianScene;
use super::texture_stage::TexturedScene;
use crate::backend::EngineAutodiffBackend;
use crate::export::{ExportConfig, ExportError, ExportReport, write_glb};
use crate::fit::render_views;
use crate::guidance::{
    BoxedReward, ConfigError, DiffusionPrior, Guidance, GuidanceError, ViewAngles,
};
use crate::mesh::{ColorMode, ExtractedMesh, MeshConfig, MeshError, NerfField, extract_mesh};
use crate::models::AnyReward;
use crate::models::autoencoder_tiny::AutoencoderTiny;
use crate::models::tokenizer::CLIPTokenizer;
use crate::optim::{GroupedOptimizer, add_groups};
use crate::render::{RenderOutput, VolumeRenderer};
use crate::rgb_image::RgbImage;
use crate::scene::camera::{Camera, CameraError, CameraSampler};
use crate::scene::gaussians::Gaussians;
use crate::scene::nerf::Nerf;
use crate::weights::{LoadError, resolve_model};

static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Why a generation could not start or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A model could not be found or loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A model named in the config (`prior`, `reward`) could not be found or loaded.
    #[error("invalid `{field}` = `{spec}`: {source}")]
    Model {
        /// The config field naming the model.
        field: &'static str,
        /// Its value.
        spec: String,
        /// Why it could not be loaded.
        source: LoadError,
    },
    /// The guidance failed.
    #[error(transparent)]
    Guidance(#[from] GuidanceError),
    /// A camera could not be built.
    #[error(transparent)]
    Camera(#[from] CameraError),
    /// Surface extraction failed (e.g. nothing was generated above the iso-level).
    #[error(transparent)]
    Mesh(#[from] MeshError),
    /// Writing the asset failed.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// The operating system could not start the generation's thread.
    #[error("cannot start the generation thread: {0}")]
    Thread(std::io::Error),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The asset to edit (`edit.source`) could not be read.
    #[error("cannot edit the asset in {} (`edit.source`): {reason}", .folder.display())]
    Edit {
        /// Its checkpoint folder.
        folder: PathBuf,
        /// Why.
        reason: String,
    },
    /// The loss became NaN or infinite; the scene is the last good one (the step was not
    /// applied), and so is the last checkpoint, if any was written.
    #[error(
        "loss became {loss} at step {step}: stopped, the scene is kept as it was after step \
         {step}; {}",
        kept_checkpoint(.checkpoint)
    )]
    NonFinite {
        /// The step (0-based) whose loss was not finite.
        step: usize,
        /// The loss.
        loss: f32,
        /// The last good checkpoint, if one was written: resume from here.
        checkpoint: Option<std::path::PathBuf>,
    },
}

fn kept_checkpoint(checkpoint: &Option<std::path::PathBuf>) -> String {
    match checkpoint {
        Some(path) => format!("the last good checkpoint is {}", path.display()),
        None => "no checkpoint was written".into(),
    }
}

/// One step's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Steps done (1-based).
    pub step: usize,
    /// Steps planned.
    pub total: usize,
    /// The guidance loss.
    pub loss: f32,
    /// The timestep drawn.
    pub t: usize,
    /// Side in pixels of the views this step rendered (it follows the config's
    /// `resolution_milestones`).
    pub render_size: u32,
    /// Rewards of the noise samples (empty for SDS steps).
    pub rewards: Vec<f32>,
    /// Their weights.
    pub weights: Vec<f32>,
    /// Mean reward of the rendered views when reward feedback is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback_reward: Option<f32>,
    /// VSD's LoRA training loss this step, when VSD is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_loss: Option<f32>,
    /// The step belonged to the texture stage (`texture_stage`), not to stage 1.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub texture_stage: bool,
    /// Seconds this step took.
    pub seconds: f64,
    /// Seconds left at the mean pace so far.
    pub eta_seconds: f64,
}

impl Progress {
    /// `(min, mean, max)` of the rewards, if any.
    pub fn reward_stats(&self) -> Option<(f32, f32, f32)> {
        if self.rewards.is_empty() {
            return None;
        }
        let min = self.rewards.iter().copied().fold(f32::INFINITY, f32::min);
        let max = self
            .rewards
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        let mean = self.rewards.iter().sum::<f32>() / self.rewards.len() as f32;
        Some((min, mean, max))
    }
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// All steps done.
    Finished,
    /// The cancel flag was raised.
    Cancelled,
}

/// What [`Generator::run`] reports.
#[derive(Debug, Clone)]
pub enum GenerateEvent {
    /// A checkpoint was written (complete: it is what `latest` names).
    Checkpoint {
        /// Steps done.
        step: usize,
        /// Its folder.
        path: std::path::PathBuf,
    },
    /// A step finished.
    Progress(Progress),
    /// A preview: views around the object.
    Snapshot {
        /// Steps done.
        step: usize,
        /// Turntable views, side by side.
        preview: RgbImage,
    },
}

/// Xored into a step's seed for its cameras and its ray jitter (the guidance uses the seed
/// itself and `POSTERIOR_STREAM`), so the streams never overlap.
const CAMERA_STREAM: u64 = 0xC2B2_AE3D_27D4_EB4F;
const JITTER_STREAM: u64 = 0x1656_67B1_9E37_79F9;
/// Xored into a step's seed for its random background colours (`random_aug`).
const BACKGROUND_STREAM: u64 = 0x27D4_EB2F_1656_67C5;

/// What a generation optimises.
pub(super) enum SceneState<B: EngineAutodiffBackend> {
    /// A NeRF, trained with burn's grouped Adam.
    Nerf {
        nerf: Nerf<B>,
        optimizer: GroupedOptimizer<Nerf<B>, B>,
        renderer: VolumeRenderer,
    },
    /// 3D Gaussians.
    Gaussians(GaussianScene<B>),
    /// Stage 2: the stage-1 surface's texture on a fixed mesh (`config.texture_stage`).
    Textured(Box<TexturedScene<B>>),
}

/// Generates one asset: a NeRF or 3D Gaussians optimised with SDS or RewardSDS.
///
/// Every random draw of step `k` (cameras, ray jitter, timestep, noises) is seeded from
/// `(seed, k)`, so a run split by a checkpoint repeats an uninterrupted one exactly.
pub struct Generator<B: EngineAutodiffBackend> {
    pub(super) config: GenerateConfig,
    pub(super) guidance: Guidance<B>,
    pub(super) scene: SceneState<B>,
    pub(super) step: usize,
    pub(super) elapsed: f64,
    pub(super) device: B::Device,
    /// Where [`run`](Self::run) writes checkpoints.
    pub(super) checkpoint_dir: Option<PathBuf>,
    /// The newest checkpoint written or resumed from.
    pub(super) last_checkpoint: Option<PathBuf>,
    /// An edit's frozen source (`config.edit`): the step is DDS against it.
    edit: Option<EditSource<B>>,
}

impl<B: EngineAutodiffBackend> std::fmt::Debug for Generator<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("prompt", &self.config.prompt)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

/// Load the prior and, when the config uses one, the reward model named in `config`.
pub fn load_guidance<B: EngineAutodiffBackend>(
    config: &GenerateConfig,
    device: &B::Device,
) -> Result<Guidance<B>, GenerateError> {
    guidance_with_models::<B>(
        config,
        device,
        |spec| load_prior(spec, device),
        |spec| load_reward(spec, device).map(Arc::new),
    )
}

/// [`load_guidance`] with the prior and the reward model obtained from `prior` and `reward`
/// (called with the config's `prior` and `reward` specs, the reward only when the config uses
/// one) instead of loaded here: a host that runs several generations passes models it loaded
/// once ([`ModelCache`](super::ModelCache)). The reward comes in an `Arc` because
/// RewardSDS and reward feedback share one copy.
pub fn guidance_with_models<B: EngineAutodiffBackend>(
    config: &GenerateConfig,
    device: &B::Device,
    prior: impl FnOnce(&str) -> Result<DiffusionPrior<B::InnerBackend>, GenerateError>,
    reward: impl FnOnce(&str) -> Result<Arc<AnyReward<B::InnerBackend>>, GenerateError>,
) -> Result<Guidance<B>, GenerateError> {
    config.validate()?;
    if crate::host_batch::is_host::<B::InnerBackend>() {
        crate::cost::memory::check_host_memory(config)?;
    }
    let prior = prior(&config.prior)?;
    let wants_reward = config
        .guidance
        .reward
        .as_ref()
        .is_some_and(|r| r.strategy.uses_rewards());
    let wants_feedback = config.guidance.reward_feedback.is_some();
    // One copy of the reward model serves both: feedback lifts it to the autodiff backend.
    let model = match &config.reward {
        Some(spec) if wants_reward || wants_feedback => Some(reward(spec)?),
        _ => None,
    };
    let feedback = model
        .as_ref()
        .filter(|_| wants_feedback)
        .map(|m| m.autodiff::<B>());
    let reward = model
        .filter(|_| wants_reward)
        .map(|m| Box::new(m) as BoxedReward<B>);
    let mut guidance = Guidance::new(
        config.guidance.clone(),
        prior,
        &config.prompt,
        reward,
        config.steps,
    )?;
    if let Some(f) = feedback {
        guidance.set_reward_feedback(Box::new(f));
    }
    if let Some(spec) = config.score_decoder.as_deref().filter(|_| wants_reward) {
        let model = |source| GenerateError::Model {
            field: "score_decoder",
            spec: spec.into(),
            source,
        };
        let dir = resolve_model(spec).map_err(model)?;
        let (taesd, taesd_config) =
            AutoencoderTiny::<B::InnerBackend>::from_folder(&dir, device).map_err(model)?;
        guidance.set_score_decoder(taesd, taesd_config.latent_channels)?;
    }
    Ok(guidance)
}

/// The prior named by the config's `prior` (the error names the field).
pub fn load_prior<B: burn::tensor::backend::Backend>(
    spec: &str,
    device: &B::Device,
) -> Result<DiffusionPrior<B>, GenerateError> {
    let model = |source| GenerateError::Model {
        field: "prior",
        spec: spec.into(),
        source,
    };
    DiffusionPrior::from_folder(&resolve_model(spec).map_err(model)?, device).map_err(model)
}

/// The reward model named by the config's `reward` (the error names the field): a preset
/// (`clip-vit-l-14`, `laion-aesthetic`, `image-reward`, `tiny-world-reward`), a folder or a
/// repo id. `laion-aesthetic` is the aesthetic head on `clip-vit-l-14`'s vision tower; any
/// other spec is a folder [`AnyReward::from_folder`] recognises.
pub fn load_reward<B: burn::tensor::backend::Backend>(
    spec: &str,
    device: &B::Device,
) -> Result<AnyReward<B>, GenerateError> {
    let model = |source| GenerateError::Model {
        field: "reward",
        spec: spec.into(),
        source,
    };
    if spec == "laion-aesthetic" {
        let clip = resolve_model("clip-vit-l-14").map_err(model)?;
        let head = resolve_model(spec).map_err(model)?;
        return AnyReward::aesthetic(&clip, &head, device).map_err(model);
    }
    AnyReward::from_folder(&resolve_model(spec).map_err(model)?, device).map_err(model)
}

impl<B: EngineAutodiffBackend> Generator<B> {
    /// A generator for `config` with its prior and reward loaded from their specs.
    pub fn load(config: GenerateConfig, device: &B::Device) -> Result<Self, GenerateError> {
        let guidance = load_guidance::<B>(&config, device)?;
        warn_unknown_words(&config, guidance.prior().tokenizer());
        Self::new(config, guidance, device)
    }

    /// A generator using an already built guidance (e.g. shared priors in tests).
    pub fn new(
        config: GenerateConfig,
        guidance: Guidance<B>,
        device: &B::Device,
    ) -> Result<Self, GenerateError> {
        config.validate()?;
        let frames = guidance.prior().num_frames();
        if frames > 1 && config.camera.views_per_group != frames {
            return Err(GenerateError::Config(ConfigError::new(
                "camera.views_per_group",
                format!(
                    "is {}, but the prior denoises {frames} views of one object together \
                     (num_frames): set it to {frames}",
                    config.camera.views_per_group
                ),
            )));
        }
        let (edit, start) = match EditSource::load(&config, &guidance, device)? {
            Some((edit, start)) => (Some(edit), Some(start)),
            None => (None, None),
        };
        // The backend's generator is process-wide: seed and draw under one lock, so generators
        // started together stay deterministic (random draws elsewhere can still interleave).
        let scene = match (config.scene, start) {
            (_, Some(StartScene::Nerf(nerf))) => SceneState::Nerf {
                nerf,
                optimizer: config.optimizer.init::<B, Nerf<B>>(),
                renderer: VolumeRenderer::new(config.renderer.clone()),
            },
            (_, Some(StartScene::Gaussians(params))) => {
                SceneState::Gaussians(GaussianScene::from_gaussians(&config.gaussians, params)?)
            }
            (SceneKind::Nerf, None) => {
                let nerf = {
                    let _lock = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
                    B::seed(device, config.seed);
                    let nerf = config.nerf.init::<B>(device);
                    // Parameters are lazy: draw their values now, under the lock.
                    nerf.visit(&mut crate::guidance::prior::Materialize);
                    nerf
                };
                SceneState::Nerf {
                    nerf,
                    optimizer: config.optimizer.init::<B, Nerf<B>>(),
                    renderer: VolumeRenderer::new(config.renderer.clone()),
                }
            }
            // Seeded on the host: no process-wide generator involved.
            (SceneKind::Gaussians, None) => {
                SceneState::Gaussians(GaussianScene::new(&config.gaussians, config.seed, device)?)
            }
        };
        Ok(Self {
            config,
            guidance,
            scene,
            step: 0,
            elapsed: 0.0,
            device: device.clone(),
            checkpoint_dir: None,
            last_checkpoint: None,
            edit,
        })
    }

    /// A NeRF generator that starts from `nerf` instead of a fresh field (threestudio's
    /// `geometry_convert_from`): refining a fitted or earlier result, or asking whether the
    /// guidance keeps a known scene (`examples/sds_from_truth.rs`). The optimiser starts fresh.
    pub fn from_nerf(
        config: GenerateConfig,
        guidance: Guidance<B>,
        nerf: Nerf<B>,
        device: &B::Device,
    ) -> Result<Self, GenerateError> {
        if config.scene != SceneKind::Nerf {
            return Err(ConfigError::new(
                "scene",
                "a generator started from a NeRF needs `scene = \"nerf\"`",
            )
            .into());
        }
        let mut generator = Self::new(config, guidance, device)?;
        if let SceneState::Nerf { nerf: current, .. } = &mut generator.scene {
            // A field of another shape would fail deep inside the first step: say so here.
            let (expected, given) = (current.num_params(), nerf.num_params());
            if expected != given {
                return Err(ConfigError::new(
                    "nerf",
                    format!(
                        "the starting NeRF has {given} parameters but `nerf` describes one \
                         of {expected}: build it from the same `NerfConfig`"
                    ),
                )
                .into());
            }
            *current = nerf;
        }
        Ok(generator)
    }

    /// Makes [`run`](Self::run) write a checkpoint into `dir` every `checkpoint_every` steps
    /// and after the last one (see [`save_checkpoint`](Self::save_checkpoint)).
    pub fn checkpoint_to(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.checkpoint_dir = Some(dir.into());
        self
    }

    /// The newest checkpoint written (or resumed from).
    pub fn last_checkpoint(&self) -> Option<&Path> {
        self.last_checkpoint.as_deref()
    }

    /// The seed of every random draw of `step`.
    fn step_seed(&self, step: usize) -> u64 {
        self.config
            .seed
            .wrapping_mul(0x9E37_79B9)
            .wrapping_add(step as u64)
    }

    /// The guidance, e.g. to [keep its scored samples](Guidance::keep_scored_samples) for a
    /// diagnostic.
    pub fn guidance_mut(&mut self) -> &mut Guidance<B> {
        &mut self.guidance
    }

    /// The settings.
    pub fn config(&self) -> &GenerateConfig {
        &self.config
    }

    /// Steps done.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    /// The NeRF as it is now (`None` for a Gaussian scene and in the texture stage).
    pub fn nerf(&self) -> Option<&Nerf<B>> {
        match &self.scene {
            SceneState::Nerf { nerf, .. } => Some(nerf),
            SceneState::Gaussians(_) | SceneState::Textured(_) => None,
        }
    }

    /// The texture stage's mesh and texture (`None` before it begins).
    pub fn textured(&self) -> Option<&TexturedScene<B>> {
        match &self.scene {
            SceneState::Textured(t) => Some(t),
            _ => None,
        }
    }

    /// The Gaussians as they are now (`None` for a NeRF scene and in the texture stage).
    pub fn gaussians(&self) -> Option<&Gaussians<B::InnerBackend>> {
        match &self.scene {
            SceneState::Nerf { .. } | SceneState::Textured(_) => None,
            SceneState::Gaussians(g) => Some(g.gaussians()),
        }
    }

    /// One optimisation step.
    pub fn step(&mut self) -> Result<Progress, GenerateError> {
        let start = Instant::now();
        self.begin_texture_stage()?;
        // Stage 2 renders as stage 1's last step did, unless its settings say otherwise; its
        // guidance counts its own steps.
        let last = self.config.steps - 1;
        let (size, views, guidance_step) = match &self.scene {
            SceneState::Textured(t) => (
                t.config()
                    .render_size
                    .unwrap_or(self.config.render_size_at(last)),
                t.config()
                    .views
                    .unwrap_or(self.config.views_per_step_at(last)),
                self.step - self.config.steps,
            ),
            _ => (
                self.config.render_size_at(self.step),
                self.config.views_per_step_at(self.step),
                self.step,
            ),
        };
        // One seed per step: nothing drawn at step k depends on how the run was split.
        let seed = self.step_seed(self.step);
        let cameras: Vec<Camera> =
            CameraSampler::new(self.config.camera.clone(), seed ^ CAMERA_STREAM)?
                .at_step(self.step.min(last), self.config.steps)
                .sample(views, size, size)?;
        let view_angles: Vec<ViewAngles> = cameras.iter().map(ViewAngles::from).collect();
        // A NeRF render above the renderer's chunk is deferred: its backward runs in chunks.
        let mut deferred = None;
        // An edit's source renders with the same jitter and backgrounds: an unchanged scene
        // renders the same.
        let mut source_jitter = None;
        let mut source_backgrounds = None;
        let (images, pending) = match &self.scene {
            SceneState::Nerf { nerf, renderer, .. } => {
                let mut rays = crate::scene::camera::Rays::of_cameras(&cameras);
                rays.backgrounds = self.config.nerf.background.random_aug(
                    cameras.len(),
                    (size * size) as usize,
                    seed ^ BACKGROUND_STREAM,
                );
                let jitter = renderer.jitter(rays.len(), seed ^ JITTER_STREAM);
                if self.edit.is_some() {
                    source_jitter = Some(jitter.clone());
                    source_backgrounds = rays.backgrounds.clone();
                }
                let rgb = if rays.len() <= renderer.train_chunk_rays() {
                    renderer
                        .render_jittered(nerf, &rays, &jitter, &self.device)
                        .rgb
                } else {
                    let render = renderer.render_deferred(nerf, rays, jitter, &self.device);
                    let rgb = render.rgb.clone();
                    deferred = Some(render);
                    rgb
                };
                let images = RenderOutput::images(rgb, cameras.len(), size as usize, size as usize);
                (images, None)
            }
            SceneState::Gaussians(g) => {
                let (images, pending) = g.render(&cameras, self.step, &self.device)?;
                (images, Some(pending))
            }
            SceneState::Textured(t) => (t.render(&cameras), None),
        };
        let guided = match &self.edit {
            None => self
                .guidance
                .step(images, &view_angles, guidance_step, seed)?,
            Some(edit) => {
                let source = edit.render(
                    &cameras,
                    source_jitter.as_deref(),
                    source_backgrounds,
                    &self.device,
                )?;
                self.guidance.dds_step(
                    &edit.prompt,
                    images,
                    source,
                    &view_angles,
                    self.step,
                    seed,
                )?
            }
        };
        let loss: f32 = guided.loss.clone().into_scalar().elem();
        if !loss.is_finite() {
            return Err(GenerateError::NonFinite {
                step: self.step,
                loss,
                checkpoint: self.last_checkpoint.clone(),
            });
        }
        let mut grads = guided.loss.backward();
        match (&mut self.scene, pending) {
            (
                SceneState::Nerf {
                    nerf,
                    optimizer,
                    renderer,
                },
                _,
            ) => {
                let rates = self.config.learning_rates_at(self.step);
                let groups = match deferred {
                    None => nerf.param_groups(&mut grads, &rates),
                    Some(render) => {
                        let rgb_grad = render
                            .rgb
                            .grad(&grads)
                            .unwrap_or_else(|| render.rgb.clone().inner().zeros_like());
                        let mut sum = None;
                        renderer.backward_deferred(
                            nerf,
                            &render,
                            rgb_grad,
                            &self.device,
                            |mut part| {
                                let new = nerf.param_groups(&mut part, &rates);
                                sum = Some(add_groups(nerf, sum.take(), new));
                            },
                        );
                        sum.unwrap_or_default()
                    }
                };
                *nerf = optimizer.step(nerf.clone(), groups);
            }
            (SceneState::Gaussians(g), Some(pending)) => {
                g.update(pending, &grads, self.step + 1, seed);
            }
            (SceneState::Gaussians(_), None) => {
                unreachable!("a Gaussian render leaves a pending step")
            }
            (SceneState::Textured(t), _) => t.update(&mut grads),
        }
        self.step += 1;
        let seconds = start.elapsed().as_secs_f64();
        self.elapsed += seconds;
        let total = self.config.total_steps();
        let remaining = total.saturating_sub(self.step);
        Ok(Progress {
            step: self.step,
            total,
            loss,
            t: guided.stats.t,
            render_size: size,
            rewards: guided.stats.rewards,
            weights: guided.stats.weights,
            feedback_reward: guided.stats.feedback_reward,
            lora_loss: guided.stats.lora_loss,
            texture_stage: matches!(self.scene, SceneState::Textured(_)),
            seconds,
            eta_seconds: self.elapsed / self.step as f64 * remaining as f64,
        })
    }

    /// Run the remaining steps, reporting each, a snapshot every `snapshot_every` steps and,
    /// with a [checkpoint folder](Self::checkpoint_to), a checkpoint every `checkpoint_every`
    /// steps and after the last; stops between steps when `cancel` is raised. A non-finite
    /// loss stops the run with [`GenerateError::NonFinite`], which names the last good
    /// checkpoint.
    pub fn run(
        &mut self,
        cancel: &AtomicBool,
        on_event: &mut dyn FnMut(GenerateEvent),
    ) -> Result<StopReason, GenerateError> {
        let total = self.config.total_steps();
        while self.step < total {
            if cancel.load(Ordering::Relaxed) {
                return Ok(StopReason::Cancelled);
            }
            let progress = self.step()?;
            let step = progress.step;
            on_event(GenerateEvent::Progress(progress));
            let every = self.config.snapshot_every;
            if every > 0 && (step % every == 0 || step == total) {
                // At the size the step just trained at: the preview shows what the prior saw,
                // and costs the same few steps' worth whatever the schedule.
                let size = self.config.render_size_at(step - 1);
                on_event(GenerateEvent::Snapshot {
                    step,
                    preview: RgbImage::hstack(&self.turntable(4, size)?),
                });
            }
            let every = self.config.checkpoint_every;
            if let Some(dir) = self.checkpoint_dir.clone()
                && every > 0
                && (step % every == 0 || step == total)
            {
                let path = self.save_checkpoint(&dir)?;
                on_event(GenerateEvent::Checkpoint { step, path });
            }
        }
        Ok(StopReason::Finished)
    }

    /// `n` views evenly around the object at 15 degrees of elevation.
    pub fn turntable(&self, n: usize, size: u32) -> Result<Vec<RgbImage>, GenerateError> {
        let cameras = self.config.camera.turntable(n, size)?;
        match &self.scene {
            SceneState::Nerf { nerf, renderer, .. } => {
                Ok(render_views(nerf, renderer, &cameras, &self.device))
            }
            SceneState::Gaussians(g) => g.render_views(&cameras, &self.device),
            SceneState::Textured(t) => Ok(t.render_views(&cameras)),
        }
    }

    /// The NeRF without autodiff (for mesh extraction); `None` for a Gaussian scene.
    pub fn nerf_inner(&self) -> Option<Nerf<B::InnerBackend>> {
        self.nerf().map(|n| n.valid())
    }

    /// The scene's surface with `mesh` settings: the NeRF's density, or the Gaussians'
    /// opacity-weighted sum, sampled and meshed.
    pub fn surface(&self, mesh: &MeshConfig) -> Result<ExtractedMesh, MeshError> {
        match &self.scene {
            SceneState::Nerf { nerf, .. } => {
                let field = NerfField::from_autodiff(nerf).with_chunk(mesh.chunk);
                let bounds = field.bounds();
                extract_mesh(&field, Some(&field), bounds, mesh)
            }
            SceneState::Gaussians(g) => {
                // The config was validated when the scene was made; named all the same.
                let (cloud, bounds, pruned) = g.cloud().map_err(|e| MeshError::BadConfig {
                    name: "gaussians.prune",
                    value: format!("{} = {}", e.name, e.value),
                    why: e.why,
                })?;
                log::info!(
                    "pruned before meshing: {} of {} Gaussians kept ({} transparent, {} outliers)",
                    pruned.kept,
                    pruned.total,
                    pruned.transparent,
                    pruned.outliers
                );
                let fields = cloud.fields();
                let mut mesh = mesh.clone();
                mesh.backdrop_pieces
                    .color
                    .get_or_insert(g.background_color());
                let mut extracted = extract_mesh(&fields, Some(&fields), bounds, &mesh)?;
                extracted.report.gaussian_prune = Some(pruned);
                Ok(extracted)
            }
            SceneState::Textured(t) => Ok(t.extracted(mesh)),
        }
    }

    /// When stage 1 is done and the config has a texture stage that has not begun: meshes the
    /// surface with a UV atlas, bakes the texture (with `mesh.bake`), and optimises that
    /// texture from then on. The next [`step`](Self::step) does it first anyway; calling it
    /// earlier shows the baked start (`turntable`, `textured`). Otherwise does nothing.
    pub fn begin_texture_stage(&mut self) -> Result<(), GenerateError> {
        let Some(stage) = self.config.texture_stage.clone() else {
            return Ok(());
        };
        if self.step < self.config.steps || matches!(self.scene, SceneState::Textured(_)) {
            return Ok(());
        }
        let mut mesh_config = self.config.mesh.clone();
        mesh_config.color = ColorMode::Texture;
        mesh_config.simplify.lod_triangles.clear();
        let extracted = self.surface(&mesh_config)?;
        let Some(texture) = extracted.texture else {
            return Err(MeshError::NoTriangles {
                stage: "texture bake",
            }
            .into());
        };
        log::info!(
            "texture stage: {} triangles, {}x{} texture, {} steps",
            extracted.mesh.triangle_count(),
            texture.width(),
            texture.height(),
            stage.steps
        );
        self.guidance
            .begin_stage(stage.t_min, stage.t_max, stage.steps);
        self.scene = SceneState::Textured(Box::new(TexturedScene::new(
            extracted.mesh,
            &texture,
            extracted.report,
            stage,
            &self.config.optimizer,
            &self.device,
        )));
        Ok(())
    }

    /// Extract the surface and write it to `path` as a `.glb` (atomically), with the prompt,
    /// seed and steps in `asset.extras`; returns the extracted mesh too (checks read it).
    pub fn export_glb(
        &self,
        path: &std::path::Path,
    ) -> Result<(ExportReport, ExtractedMesh), GenerateError> {
        let extracted = self.surface(&self.config.mesh)?;
        let mut extras = serde_json::Map::new();
        extras.insert("seed".into(), self.config.seed.into());
        extras.insert("steps".into(), self.step.into());
        extras.insert("prior".into(), self.config.prior.clone().into());
        extras.insert("scene".into(), self.config.scene.name().into());
        if let Some(edit) = &self.config.edit {
            extras.insert("edited_from".into(), edit.source_prompt.clone().into());
        }
        let config = ExportConfig {
            target_size: Some(self.config.asset_size),
            name: slug(&self.config.prompt),
            prompt: Some(self.config.prompt.clone()),
            extras,
            ..ExportConfig::default()
        };
        let report = write_glb(&extracted.mesh, extracted.texture.as_ref(), path, &config)?;
        // `mesh.simplify.lod_triangles`: each level of detail beside the asset, as
        // `<name>_LOD1.glb`, `<name>_LOD2.glb`, ... (the suffixes engines' importers group).
        for (level, lod) in extracted.lods.iter().enumerate() {
            let textured = !lod.uvs.is_empty() && lod.uvs.len() == lod.positions.len();
            let texture = extracted.texture.as_ref().filter(|_| textured);
            write_glb(lod, texture, &lod_path(path, level + 1), &config)?;
        }
        Ok((report, extracted))
    }
}

/// Where [`Generator::export_glb`] writes level of detail `level` (1 = the first below the
/// asset) of the asset at `path`: `<stem>_LOD<level>.glb` beside it.
pub fn lod_path(path: &Path, level: usize) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!("{stem}_LOD{level}.glb"))
}

/// Says which words of the prompt the prior's vocabulary lacks (a word-level vocabulary such
/// as Tiny World's): they read as one unknown token, so the run cannot follow them.
pub(super) fn warn_unknown_words(config: &GenerateConfig, tokenizer: &CLIPTokenizer) {
    let words = match tokenizer.unknown_words(&config.prompt) {
        Ok(words) if !words.is_empty() => words,
        _ => return,
    };
    let quoted: Vec<String> = words.iter().map(|w| format!("\"{w}\"")).collect();
    let hint = if config.prior == "tiny-world" {
        format!(
            ". Tiny World knows captions of its small world only: {}. Other prompts need a \
             real model (--preset sd21 or mvdream; docs/presets.md)",
            crate::tiny_world::vocab::caption_words()
        )
    } else {
        String::new()
    };
    log::warn!(
        "the prior `{}` does not know the words {}: they cannot shape the result{hint}",
        config.prior,
        quoted.join(", ")
    );
}

/// A file-name-safe slug of a prompt: lowercase ASCII letters and digits joined by `-`, at most
/// 64 characters (never a path: no separators, no dots), `asset` when nothing is left.
pub fn slug(prompt: &str) -> String {
    let mut out = String::new();
    for word in prompt
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if out.len() + word.len() + 1 > 64 {
            break;
        }
        if !out.is_empty() {
            out.push('-');
        }
        out.push_str(&word.to_ascii_lowercase());
    }
    if out.is_empty() { "asset".into() } else { out }
}

#[cfg(test)]
mod tests {
    use super::slug;

    #[test]
    fn slugs_are_safe_file_names() {
        assert_eq!(
            slug("A red cube, and a Blue sphere!"),
            "a-red-cube-and-a-blue-sphere"
        );
        assert_eq!(slug("../../etc/passwd"), "etc-passwd");
        assert_eq!(slug("  ..  "), "asset");
        assert_eq!(slug("ein grüner Würfel"), "ein-gr-ner-w-rfel");
        assert!(slug(&"word ".repeat(40)).len() <= 64);
    }
}
