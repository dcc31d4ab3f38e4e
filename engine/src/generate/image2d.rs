//! 2D mode, the paper's zero-shot text-to-image experiment: the same SDS / RewardSDS guidance
//! as the 3D loop, optimising one image directly instead of a NeRF.
//!
//! The variable is the image itself at the prior's resolution: for a pixel-space prior (Tiny
//! World, 32x32) exactly what the UNet denoises; for a latent prior the image goes through the
//! VAE encoder every step, so the result is an RGB image either way. Pixels stay in `[0, 1]`:
//! they are clamped after each Adam step (a projection; a sigmoid would shrink the gradients
//! of saturated pixels). Each step's randomness is seeded from `(seed, step)` as in 3D.
//!
//! The reward model also scores the image itself every step ([`ImageProgress::image_reward`]):
//! that is what RewardSDS should raise, while the per-step rewards score noisy samples.
//!
//! Editing ([`Image2dEdit`]): the image starts as a source image and each step follows DDS
//! (RewardDDS when `guidance.reward` is set) from the source prompt to `prompt`
//! ([`crate::guidance::dds`](mod@crate::guidance::dds)).
//!
//! Checkpoints ([`Image2dGenerator::save_checkpoint`], `resume`): the same folder layout as 3D
//! (`super::image2d_checkpoint`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::generator::{GenerateError, Progress, StopReason, load_prior, load_reward};
use crate::backend::EngineAutodiffBackend;
use crate::guidance::{
    BoxedFeedbackReward, BoxedReward, ConfigError, Dds, DiffusionPrior, Guidance, GuidanceConfig,
    GuidanceOutput, RewardSdsConfig, ScoringMode, ViewAngles, WeightStrategy, dds, standard_normal,
};
use crate::models::AnyReward;
use crate::models::reward::RewardModel;
use crate::optim::{GroupedOptimizer, OptimizerConfig, ParamGroup};
use crate::rgb_image::RgbImage;

/// A 2D run: prompt, prior, reward, guidance and the image's optimiser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Image2dConfig {
    /// What to draw.
    pub prompt: String,
    /// Seed of the initial image and every step's timestep and noises.
    pub seed: u64,
    /// Optimisation steps (the paper: 1000).
    pub steps: usize,
    /// Adam's learning rate on the pixels.
    pub lr: f64,
    /// The diffusion prior: a preset (`tiny-world`, `sd21-base`), a folder or a repo id.
    pub prior: String,
    /// The reward model: ranks RewardSDS's samples and scores the image every step (also
    /// with plain SDS, where it only reports). `None`: no scores.
    pub reward: Option<String>,
    /// SDS / RewardSDS settings (`view_dependent_prompting` must be off: there are no views).
    pub guidance: GuidanceConfig,
    /// Optimiser (the paper: AdamW, betas (0.9, 0.99), eps 1e-15).
    pub optimizer: OptimizerConfig,
    /// Side of the image in pixels (0: the prior's resolution).
    pub size: usize,
    /// Standard deviation of the initial image around mid-grey (unused when editing).
    pub init_std: f32,
    /// Edit an image towards `prompt` with DDS (RewardDDS when `guidance.reward` is set)
    /// instead of drawing one from a grey canvas; `None` (the default): SDS / RewardSDS.
    pub edit: Option<Image2dEdit>,
}

/// What 2D editing starts from: the source image and the prompt describing it. The edit's
/// target is [`Image2dConfig::prompt`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image2dEdit {
    /// The image to edit (PNG). Resized to the canvas, with a logged warning, when its size
    /// differs; greyscale becomes RGB and transparency is laid over white.
    pub source_image: PathBuf,
    /// What the source image shows; must differ from `prompt`.
    pub source_prompt: String,
}

impl Image2dEdit {
    /// Checks the fields against the edit's target `prompt`; errors name `edit.<field>`.
    pub fn validate(&self, prompt: &str) -> Result<(), ConfigError> {
        if self.source_image.as_os_str().is_empty() {
            return Err(ConfigError::new("edit.source_image", "is empty"));
        }
        if self.source_prompt.trim().is_empty() {
            return Err(ConfigError::new("edit.source_prompt", "is empty"));
        }
        // Compared as the text encoders read them: case and spacing do not make a new prompt.
        let words = |p: &str| {
            p.to_lowercase()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        if words(&self.source_prompt) == words(prompt) {
            return Err(ConfigError::new(
                "edit.source_prompt",
                format!(
                    "`{}` is the target `prompt` too: DDS would cancel itself (both branches \
                     alike); describe the source image and give the edit in `prompt`",
                    self.source_prompt
                ),
            ));
        }
        Ok(())
    }
}

/// Reads the image to edit as a `size` x `size` RGB image: greyscale becomes RGB, transparent
/// pixels are laid over white (dropping alpha would keep whatever colour they hide), and
/// another size is resized (a logged warning: a non-square image is stretched). Errors name
/// `edit.source_image` and the file.
pub fn load_edit_image(path: &Path, size: usize) -> Result<RgbImage, ConfigError> {
    let fail = |reason: String| {
        ConfigError::new("edit.source_image", format!("{}: {reason}", path.display()))
    };
    if !path.is_file() {
        return Err(fail("no such file".into()));
    }
    let image = image::open(path).map_err(|e| fail(format!("cannot read it as an image: {e}")))?;
    let (width, height) = (image.width(), image.height());
    let data = image
        .to_rgba32f()
        .pixels()
        .flat_map(|p| {
            let [r, g, b, a] = p.0.map(|v| v.clamp(0.0, 1.0));
            [r, g, b].map(|c| c * a + (1.0 - a))
        })
        .collect();
    let image = RgbImage {
        width,
        height,
        data,
    };
    fit_to_canvas(image, size, &path.display().to_string()).map_err(fail)
}

/// `image` at `size` x `size`: as is, or resized (triangle filter, which averages when
/// shrinking) with a logged warning naming `name`. Refuses an empty or inconsistent image.
fn fit_to_canvas(image: RgbImage, size: usize, name: &str) -> Result<RgbImage, String> {
    let RgbImage {
        width,
        height,
        data,
    } = image;
    if width == 0 || height == 0 {
        return Err(format!("is {width}x{height} pixels: empty"));
    }
    let values = 3 * width as usize * height as usize;
    if data.len() != values {
        return Err(format!(
            "holds {} values for {width}x{height} RGB pixels, which need {values}",
            data.len()
        ));
    }
    let buffer = image::Rgb32FImage::from_raw(width, height, data)
        .ok_or_else(|| format!("cannot hold {width}x{height} pixels"))?;
    let side = size as u32;
    let buffer = if (width, height) == (side, side) {
        buffer
    } else {
        log::warn!(
            "{name}: {width}x{height} pixels, resized to the canvas' {size}x{size}{}",
            if width == height { "" } else { " (stretched)" }
        );
        image::imageops::resize(&buffer, side, side, image::imageops::FilterType::Triangle)
    };
    Ok(RgbImage {
        width: side,
        height: side,
        data: buffer.into_raw(),
    })
}

impl Default for Image2dConfig {
    /// RewardSDS on the Tiny World prior: N = 4, `min_max` (k = 2), one-step scoring.
    fn default() -> Self {
        Self {
            prompt: String::new(),
            seed: 0,
            steps: 200,
            lr: 0.02,
            prior: "tiny-world".into(),
            reward: Some("tiny-world-reward".into()),
            guidance: GuidanceConfig {
                // The 3D `fast` preset's scale: CFG 100 saturates the small prior's images.
                guidance_scale: 20.0,
                view_dependent_prompting: false,
                reward: Some(RewardSdsConfig {
                    n_samples: 4,
                    strategy: WeightStrategy::default(),
                    // DDIM scoring costs up to 14 more UNet passes per sample (CPU budget).
                    scoring: ScoringMode::OneStep,
                    reward_duration: 1.0,
                    scoring_guidance_scale: None,
                }),
                ..GuidanceConfig::default()
            },
            optimizer: OptimizerConfig::default(),
            size: 0,
            init_std: 0.1,
            edit: None,
        }
    }
}

impl Image2dConfig {
    /// The same run with plain SDS (one noise, no ranking).
    pub fn sds(mut self) -> Self {
        self.guidance.reward = None;
        self
    }

    /// Checks every field; the error names the one at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.prompt.trim().is_empty() {
            return Err(ConfigError::new("prompt", "is empty"));
        }
        if self.steps == 0 {
            return Err(ConfigError::new("steps", "must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(ConfigError::new(
                "lr",
                format!("{} is not a finite number > 0", self.lr),
            ));
        }
        if self.prior.trim().is_empty() {
            return Err(ConfigError::new("prior", "is empty"));
        }
        self.guidance.validate().map_err(|e| e.within("guidance"))?;
        if self.guidance.view_dependent_prompting {
            return Err(ConfigError::new(
                "guidance.view_dependent_prompting",
                "must be false in 2D mode: an image has no camera to name",
            ));
        }
        self.guidance.check_reward_model(self.reward.as_deref())?;
        self.optimizer
            .validate()
            .map_err(|e| ConfigError::new("optimizer", e))?;
        if self.size != 0 && !(8..=super::config::MAX_RENDER_SIZE as usize).contains(&self.size) {
            return Err(ConfigError::new(
                "size",
                format!(
                    "{} is outside 8..={} px (0: the prior's resolution)",
                    self.size,
                    super::config::MAX_RENDER_SIZE
                ),
            ));
        }
        if !(self.init_std.is_finite() && self.init_std >= 0.0) {
            return Err(ConfigError::new(
                "init_std",
                format!("{} is not a finite number >= 0", self.init_std),
            ));
        }
        if let Some(edit) = &self.edit {
            edit.validate(&self.prompt)?;
            dds::check_config(&self.guidance).map_err(|e| e.within("guidance"))?;
        }
        Ok(())
    }

    /// Parse TOML and validate.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self =
            toml::from_str(text).map_err(|e| ConfigError::new("config", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// As TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config serialises")
    }
}

/// The optimised image as a module, so the optimiser and its per-parameter state apply.
#[derive(Module, Debug)]
pub struct Canvas<B: Backend> {
    /// `[1, 3, size, size]`, values in `[0, 1]`.
    pub pixels: Param<Tensor<B, 4>>,
}

/// One 2D step's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageProgress {
    /// As in 3D: loss, timestep, the samples' rewards and weights, timing.
    pub progress: Progress,
    /// The reward model's score of the image as it was at this step, before the update
    /// (`None` without a reward model).
    pub image_reward: Option<f32>,
}

/// A reward model shared by the guidance and the image scoring.
pub type SharedReward<B> =
    Arc<dyn RewardModel<<B as burn::tensor::backend::AutodiffBackend>::InnerBackend> + Send + Sync>;

/// What drives the image: drawing from the prompt, or editing a source image. Both guidances
/// are boxed: each holds a whole prior inline.
pub(super) enum Distillation<B: EngineAutodiffBackend> {
    /// SDS / RewardSDS.
    Sds(Box<Guidance<B>>),
    /// DDS / RewardDDS from `source` (`[1, 3, size, size]`, in `[0, 1]`).
    Dds {
        dds: Box<Dds<B>>,
        source: Tensor<B::InnerBackend, 4>,
    },
}

/// Optimises one image with SDS or RewardSDS, or edits one with DDS or RewardDDS.
pub struct Image2dGenerator<B: EngineAutodiffBackend> {
    pub(super) config: Image2dConfig,
    pub(super) distillation: Distillation<B>,
    scorer: Option<SharedReward<B>>,
    pub(super) canvas: Canvas<B>,
    pub(super) optimizer: GroupedOptimizer<Canvas<B>, B>,
    pub(super) step: usize,
    pub(super) elapsed: f64,
    /// Where [`run`](Self::run) writes checkpoints, and every how many steps.
    pub(super) checkpoints: Option<(PathBuf, usize)>,
}

impl<B: EngineAutodiffBackend> std::fmt::Debug for Image2dGenerator<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image2dGenerator")
            .field("prompt", &self.config.prompt)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl<B: EngineAutodiffBackend> Image2dGenerator<B>
where
    AnyReward<B::InnerBackend>: Send + Sync,
{
    /// A generator for `config` with its prior and reward model loaded from their specs (and,
    /// when editing, the source image read from `edit.source_image`).
    pub fn load(config: Image2dConfig, device: &B::Device) -> Result<Self, GenerateError> {
        config.validate()?;
        let prior = load_prior::<B::InnerBackend>(&config.prior, device)?;
        let clip = match &config.reward {
            Some(spec) => Some(load_reward::<B::InnerBackend>(spec, device)?),
            None => None,
        };
        // Reward feedback differentiates the same weights on the autodiff backend.
        let feedback = clip
            .as_ref()
            .filter(|_| config.guidance.reward_feedback.is_some())
            .map(|c| c.autodiff::<B>());
        let scorer: Option<SharedReward<B>> = clip.map(|c| Arc::new(c) as SharedReward<B>);
        let feedback = feedback.map(|f| Box::new(f) as BoxedFeedbackReward<B>);
        Self::new(config, prior, scorer, feedback, device)
    }
}

impl<B: EngineAutodiffBackend> Image2dGenerator<B> {
    /// A generator from a loaded prior, (optional) reward model and, when
    /// `guidance.reward_feedback` is set, the differentiable model it needs. When editing, the
    /// source image is read from `edit.source_image` ([`load_edit_image`]).
    pub fn new(
        config: Image2dConfig,
        prior: DiffusionPrior<B::InnerBackend>,
        scorer: Option<SharedReward<B>>,
        feedback: Option<BoxedFeedbackReward<B>>,
        device: &B::Device,
    ) -> Result<Self, GenerateError> {
        Self::build(config, prior, scorer, feedback, None, device)
    }

    /// An editing generator whose source image is given as pixels (any size: resized to the
    /// canvas as [`load_edit_image`] does); `config.edit` gives the source prompt, its
    /// `source_image` is not read.
    pub fn new_edit(
        config: Image2dConfig,
        prior: DiffusionPrior<B::InnerBackend>,
        scorer: Option<SharedReward<B>>,
        source: RgbImage,
        device: &B::Device,
    ) -> Result<Self, GenerateError> {
        if config.edit.is_none() {
            return Err(
                ConfigError::new("edit", "is not set: an edit needs its source prompt").into(),
            );
        }
        Self::build(config, prior, scorer, None, Some(source), device)
    }

    fn build(
        config: Image2dConfig,
        prior: DiffusionPrior<B::InnerBackend>,
        scorer: Option<SharedReward<B>>,
        feedback: Option<BoxedFeedbackReward<B>>,
        source: Option<RgbImage>,
        device: &B::Device,
    ) -> Result<Self, GenerateError> {
        config.validate()?;
        if config.guidance.reward_feedback.is_some() && feedback.is_none() {
            return Err(ConfigError::new(
                "guidance.reward_feedback",
                "is set but no differentiable reward model was given",
            )
            .into());
        }
        let size = match config.size {
            0 => prior.resolution(),
            s => s,
        };
        let wants_reward = config
            .guidance
            .reward
            .as_ref()
            .is_some_and(|r| r.strategy.uses_rewards());
        let reward: Option<BoxedReward<B>> = match (&scorer, wants_reward) {
            (Some(s), true) => Some(Box::new(s.clone())),
            _ => None,
        };
        let (distillation, pixels) = match &config.edit {
            None => {
                let mut guidance = Guidance::new(
                    config.guidance.clone(),
                    prior,
                    &config.prompt,
                    reward,
                    config.steps,
                )?;
                if let Some(f) = feedback {
                    guidance.set_reward_feedback(f);
                }
                // Mid-grey plus a little seeded noise: the host draws it, so runs are
                // reproducible.
                let noise =
                    standard_normal(&mut StdRng::seed_from_u64(config.seed), 3 * size * size);
                let pixels: Vec<f32> = noise
                    .iter()
                    .map(|n| (0.5 + config.init_std * n).clamp(0.0, 1.0))
                    .collect();
                let pixels =
                    Tensor::<B, 4>::from_data(TensorData::new(pixels, [1, 3, size, size]), device);
                (Distillation::Sds(Box::new(guidance)), pixels)
            }
            Some(edit) => {
                let source = match source {
                    Some(image) => {
                        fit_to_canvas(image, size, "the source image").map_err(|reason| {
                            ConfigError::new("edit", format!("the given source image {reason}"))
                        })?
                    }
                    None => load_edit_image(&edit.source_image, size)?,
                };
                let source = RgbImage::to_tensor::<B>(&[source], device);
                let dds = Dds::new(
                    config.guidance.clone(),
                    prior,
                    &edit.source_prompt,
                    &config.prompt,
                    reward,
                    config.steps,
                )?;
                // The image starts as the source: DDS moves it only where the prompts differ.
                let distillation = Distillation::Dds {
                    dds: Box::new(dds),
                    source: source.clone().inner(),
                };
                (distillation, source)
            }
        };
        Ok(Self {
            optimizer: config.optimizer.init::<B, Canvas<B>>(),
            config,
            distillation,
            scorer,
            canvas: Canvas {
                pixels: Param::from_tensor(pixels),
            },
            step: 0,
            elapsed: 0.0,
            checkpoints: None,
        })
    }

    /// The settings.
    pub fn config(&self) -> &Image2dConfig {
        &self.config
    }

    /// Steps done.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    /// The image as it is now, `[1, 3, size, size]` in `[0, 1]` (inner backend).
    pub fn image_tensor(&self) -> Tensor<B::InnerBackend, 4> {
        self.canvas.pixels.val().inner()
    }

    /// The image as it is now.
    pub fn image(&self) -> RgbImage {
        RgbImage::from_tensor(self.image_tensor())
            .pop()
            .expect("one image")
    }

    /// The reward model's score of the image as it is now.
    pub fn image_reward(&self) -> Result<Option<f32>, GenerateError> {
        let Some(scorer) = &self.scorer else {
            return Ok(None);
        };
        let score = scorer
            .score(self.image_tensor(), &self.config.prompt)
            .map_err(crate::guidance::GuidanceError::from)?;
        Ok(Some(score.into_scalar().elem()))
    }

    /// One optimisation step.
    pub fn step(&mut self) -> Result<ImageProgress, GenerateError> {
        let start = Instant::now();
        let image_reward = self.image_reward()?;
        let seed = self
            .config
            .seed
            .wrapping_mul(0x9E37_79B9)
            .wrapping_add(self.step as u64);
        // The image is the front view: a camera-conditioned prior is told so (the turntable's
        // front camera, 15 degrees up); a plain prior ignores the camera.
        let pixels = self.canvas.pixels.val();
        let front = vec![ViewAngles::new(0.0, 15.0); pixels.dims()[0]];
        let guided: GuidanceOutput<B> = match &mut self.distillation {
            Distillation::Sds(guidance) => guidance.step(pixels, &front, self.step, seed)?,
            Distillation::Dds { dds, source } => {
                dds.step(pixels, source.clone(), &front, self.step, seed)?
            }
        };
        let loss: f32 = guided.loss.clone().into_scalar().elem();
        if !loss.is_finite() {
            return Err(GenerateError::NonFinite {
                step: self.step,
                loss,
                checkpoint: None,
            });
        }
        let mut grads = guided.loss.backward();
        let groups = vec![ParamGroup {
            name: "pixels",
            lr: self.config.lr,
            grads: GradientsParams::from_module(&mut grads, &self.canvas),
        }];
        let canvas = self.optimizer.step(self.canvas.clone(), groups);
        // Project back into [0, 1], keeping the parameter (its id keys Adam's state) a leaf.
        self.canvas = Canvas {
            pixels: canvas
                .pixels
                .map(|p| Tensor::from_inner(p.inner().clamp(0.0, 1.0)).require_grad()),
        };
        self.step += 1;
        let seconds = start.elapsed().as_secs_f64();
        self.elapsed += seconds;
        let remaining = self.config.steps.saturating_sub(self.step);
        Ok(ImageProgress {
            progress: Progress {
                step: self.step,
                total: self.config.steps,
                loss,
                t: guided.stats.t,
                // The canvas is the "view": its side.
                render_size: self.canvas.pixels.dims()[3] as u32,
                rewards: guided.stats.rewards,
                weights: guided.stats.weights,
                feedback_reward: guided.stats.feedback_reward,
                lora_loss: guided.stats.lora_loss,
                texture_stage: false,
                seconds,
                eta_seconds: self.elapsed / self.step as f64 * remaining as f64,
            },
            image_reward,
        })
    }

    /// Runs the remaining steps, reporting each, and with [`checkpoint_to`](Self::checkpoint_to)
    /// writing a checkpoint on its schedule and after the last step; stops between steps when
    /// `cancel` is raised.
    pub fn run(
        &mut self,
        cancel: &AtomicBool,
        on_progress: &mut dyn FnMut(ImageProgress),
    ) -> Result<StopReason, GenerateError> {
        while self.step < self.config.steps {
            if cancel.load(Ordering::Relaxed) {
                return Ok(StopReason::Cancelled);
            }
            on_progress(self.step()?);
            if let Some((dir, every)) = self.checkpoints.clone()
                && (self.step % every == 0 || self.step == self.config.steps)
            {
                self.save_checkpoint(&dir)?;
            }
        }
        Ok(StopReason::Finished)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_their_field() {
        let base = Image2dConfig {
            prompt: "a red cube".into(),
            ..Image2dConfig::default()
        };
        base.validate().unwrap();
        base.clone().sds().validate().unwrap();
        let field = |edit: &dyn Fn(&mut Image2dConfig)| {
            let mut c = base.clone();
            edit(&mut c);
            c.validate().unwrap_err().field
        };
        assert_eq!(field(&|c| c.steps = 0), "steps");
        assert_eq!(field(&|c| c.lr = -1.0), "lr");
        assert_eq!(field(&|c| c.prompt.clear()), "prompt");
        assert_eq!(field(&|c| c.reward = None), "reward");
        assert_eq!(field(&|c| c.size = 4), "size");
        assert_eq!(
            field(&|c| c.guidance.view_dependent_prompting = true),
            "guidance.view_dependent_prompting"
        );
        assert_eq!(
            field(&|c| c.guidance.reward.as_mut().unwrap().n_samples = 3),
            "guidance.reward.strategy.k"
        );
        let back = Image2dConfig::from_toml(&base.to_toml()).unwrap();
        assert_eq!(back, base);
    }
}
