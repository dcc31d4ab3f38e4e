//! Score distillation: [`GuidanceConfig`] and [`Guidance`], which turns a batch of rendered
//! views into the SDS or RewardSDS surrogate loss of one optimisation step.
//!
//! Plain SDS (DreamFusion, threestudio's `stable-diffusion-guidance`): one noise `eps`,
//! `g = w(t) (eps_cfg - eps)`. RewardSDS (arXiv 2503.09601): `N` noises with the same `t`,
//! each scored by a reward model, `g = sum_i w_i w(t) (eps_cfg_i - eps_i)`. Either way the loss
//! is `0.5 ||z - stopgrad(z - g)||^2 / B`, so `d loss / d z = g / B` and backpropagation
//! carries `g` through the image encoder and the renderer.
//!
//! # Randomness
//! A step is a pure function of `(images, views, step, seed)`. From `StdRng::seed_from_u64(seed)`
//! the timestep is drawn first, then `N * B * C * h * w` standard normals (Box-Muller), sample
//! `i` taking the `i`-th block: the first noise of every step is the same for SDS and
//! RewardSDS, and `uniform` weighting with `N = 1` reproduces SDS bit for bit. The VAE posterior
//! sample uses a second stream, `seed ^ `[`POSTERIOR_STREAM`].

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::ism::{IsmConfig, interval_target};
use super::prior::{DiffusionPrior, ImageEncoder};
use super::prompts::{PromptEmbeddings, ViewAngles, ViewDirection, ViewThresholds, camera_labels};
use super::reward_feedback::{BoxedFeedbackReward, RewardFeedbackConfig, feedback_loss};
use super::scoring::{Scorer, ScoringMode};
use super::weighting::{WeightStrategy, selected};
use super::{ConfigError, GuidanceError};
use crate::models::reward::RewardModel;

/// Xored into a step's seed for the VAE posterior sample, so that stream never overlaps the
/// timestep/noise stream.
pub const POSTERIOR_STREAM: u64 = 0x9E37_79B9_7F4A_7C15;

/// `n` independent standard normal samples (Box-Muller in `f64`, both outputs used).
pub fn standard_normal(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        // u1 in (0, 1], so ln never sees 0.
        let u1 = 1.0 - rng.random::<f64>();
        let u2 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let (sin, cos) = (std::f64::consts::TAU * u2).sin_cos();
        out.push((r * cos) as f32);
        if out.len() < n {
            out.push((r * sin) as f32);
        }
    }
    out
}

/// A fraction of the training timesteps, annealed linearly from `start` (step 0) to `end`
/// (step `anneal_steps` and after), as threestudio's `[0, start, end, anneal_steps]`
/// schedules. In configs either a number (constant) or `{"start": .., "end": ..}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "AnnealedRepr")]
pub struct AnnealedFraction {
    /// Value at step 0.
    pub start: f64,
    /// Value from step `anneal_steps` on.
    pub end: f64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum AnnealedRepr {
    Constant(f64),
    Range { start: f64, end: f64 },
}

impl From<AnnealedRepr> for AnnealedFraction {
    fn from(repr: AnnealedRepr) -> Self {
        match repr {
            AnnealedRepr::Constant(v) => Self::constant(v),
            AnnealedRepr::Range { start, end } => Self { start, end },
        }
    }
}

impl AnnealedFraction {
    /// The same value at every step.
    pub fn constant(value: f64) -> Self {
        Self {
            start: value,
            end: value,
        }
    }

    /// From `start` to `end`.
    pub fn linear(start: f64, end: f64) -> Self {
        Self { start, end }
    }

    /// The value at `step` (threestudio's `C()`: `start + (end - start) * clamp(step /
    /// anneal_steps, 0, 1)`, in `f64` like Python; `anneal_steps = 0` means `end` throughout).
    pub fn at(&self, step: usize, anneal_steps: usize) -> f64 {
        if anneal_steps == 0 {
            return self.end;
        }
        let progress = (step as f64 / anneal_steps as f64).clamp(0.0, 1.0);
        self.start + (self.end - self.start) * progress
    }
}

/// `w(t)`, the per-timestep weight of the SDS gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeWeighting {
    /// `w(t) = 1 - abar_t` (threestudio's `"sds"`, DreamFusion's `sigma_t^2`).
    #[default]
    Sds,
    /// `w(t) = 1`.
    Uniform,
}

fn default_n_samples() -> usize {
    4
}
fn default_reward_duration() -> f64 {
    1.0
}

/// RewardSDS settings: how many noises, how they are scored and weighted, and for how long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardSdsConfig {
    /// Noise samples `N` per step (4; the paper uses 4-8 in 2D, 7 for 3D with MVDream).
    pub n_samples: usize,
    /// Reward-to-weight map (`min_max` with k = 2, 0.9 / 0.1: the official default).
    pub strategy: WeightStrategy,
    /// How samples are denoised for scoring (`ddim`: the official grid).
    pub scoring: ScoringMode,
    /// Fraction of the steps, in (0, 1], that use rewards; later steps are plain
    /// single-noise SDS (1.0; the official 3D config uses 0.7).
    pub reward_duration: f64,
    /// CFG scale of the scoring passes; `None` = `guidance_scale` (the official 3D code; its
    /// 2D code denoises with 7.5).
    pub scoring_guidance_scale: Option<f32>,
}

impl Default for RewardSdsConfig {
    fn default() -> Self {
        Self {
            n_samples: default_n_samples(),
            strategy: WeightStrategy::default(),
            scoring: ScoringMode::default(),
            reward_duration: default_reward_duration(),
            scoring_guidance_scale: None,
        }
    }
}

impl RewardSdsConfig {
    /// Checks every field; errors name it (`n_samples`, `strategy.k`, `reward_duration`, ...).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.n_samples == 0 {
            return Err(ConfigError::new("n_samples", "must be at least 1"));
        }
        self.strategy
            .validate(self.n_samples)
            .map_err(|e| e.within("strategy"))?;
        let d = self.reward_duration;
        if !(d > 0.0 && d <= 1.0) {
            return Err(ConfigError::new(
                "reward_duration",
                format!("{d} is not in (0, 1]"),
            ));
        }
        if let Some(s) = self.scoring_guidance_scale
            && !(s.is_finite() && s >= 0.0)
        {
            return Err(ConfigError::new(
                "scoring_guidance_scale",
                format!("{s} is not a finite number >= 0"),
            ));
        }
        Ok(())
    }
}

/// SDS / RewardSDS settings. Defaults are threestudio's DreamFusion-style SD baseline
/// (CFG 100, `t` in [0.02, 0.98], `w(t) = 1 - abar_t`, view-dependent prompts) with rewards off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuidanceConfig {
    /// Classifier-free guidance scale `s` (100), at step 0.
    pub guidance_scale: f32,
    /// CFG scale at the last step, reached linearly from `guidance_scale`; `None` (the
    /// default here, and the `quality` preset's): constant; the `fast` preset's: 1.5. A high
    /// scale forms the objects, a low one keeps their shaded faces (docs/tiny_world.md, "SDS
    /// from the true scene").
    pub guidance_scale_end: Option<f32>,
    /// Weight of SDS's generative term `eps_uncond - eps` beside the classifier term
    /// `s (eps_cond - eps_uncond)` (1: SDS; 0: classifier score distillation, CSD, arXiv
    /// 2310.19415, whose gradient carries no sampled noise). Under ISM `eps` is its target.
    /// With Adam, weight `w` at CFG `s` steps as SDS at CFG `s / w` (Adam ignores a constant
    /// scale); docs/tiny_world.md, "Classifier score distillation".
    pub generative_weight: f32,
    /// Share of the steps, from step 0, run as CSD (generative weight 0) before
    /// `generative_weight` applies (0: none): the classifier term alone sets the binding,
    /// the generative term then cleans up the haze it leaves.
    pub csd_fraction: f32,
    /// Prompt of CFG's unconditional branch (`""`).
    pub negative_prompt: String,
    /// Lower end of the timestep range as a fraction of `T` (0.02).
    pub t_min: AnnealedFraction,
    /// Upper end of the timestep range as a fraction of `T` (0.98).
    pub t_max: AnnealedFraction,
    /// Steps over which `t_min` and `t_max` go from `start` to `end` (0: `end` throughout).
    pub anneal_steps: usize,
    /// `w(t)` (`sds`).
    pub weighting: TimeWeighting,
    /// Condition each view on `"<prompt>, front view"` etc. (true).
    pub view_dependent_prompting: bool,
    /// Angles of the view-dependent prompts (threestudio's 45 / 45 / 60 degrees).
    pub view_thresholds: ViewThresholds,
    /// Samples per UNet pass and per decode/reward call, to bound memory (16).
    pub max_batch: usize,
    /// RewardSDS; `None` is plain SDS.
    pub reward: Option<RewardSdsConfig>,
    /// The reward's own gradient added to the loss ([`super::reward_feedback`]); `None`
    /// (the default) is the paper's RewardSDS. Needs a model attached with
    /// [`Guidance::set_reward_feedback`].
    pub reward_feedback: Option<RewardFeedbackConfig>,
    /// Interval score matching ([`super::ism`]): `x_t` by DDIM inversion and the prior's
    /// prediction at `x_s` as the target, instead of a random noise; `None` (the default) is
    /// SDS's random noise. With RewardSDS the `N` samples differ only in the inversion's
    /// starting noise.
    pub ism: Option<IsmConfig>,
}

impl Default for GuidanceConfig {
    fn default() -> Self {
        Self {
            guidance_scale: 100.0,
            guidance_scale_end: None,
            generative_weight: 1.0,
            csd_fraction: 0.0,
            negative_prompt: String::new(),
            t_min: AnnealedFraction::constant(0.02),
            t_max: AnnealedFraction::constant(0.98),
            anneal_steps: 0,
            weighting: TimeWeighting::Sds,
            view_dependent_prompting: true,
            view_thresholds: ViewThresholds::default(),
            max_batch: 16,
            reward: None,
            reward_feedback: None,
            ism: None,
        }
    }
}

impl GuidanceConfig {
    /// Checks every field; errors name it (`guidance_scale`, `t_min`, `reward.strategy.k`, ...).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, s) in [
            ("guidance_scale", Some(self.guidance_scale)),
            ("guidance_scale_end", self.guidance_scale_end),
            ("generative_weight", Some(self.generative_weight)),
        ] {
            if let Some(s) = s
                && !(s.is_finite() && s >= 0.0)
            {
                return Err(ConfigError::new(
                    field,
                    format!("{s} is not a finite number >= 0"),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.csd_fraction) {
            return Err(ConfigError::new(
                "csd_fraction",
                format!("{} is not a fraction in [0, 1]", self.csd_fraction),
            ));
        }
        for (name, f) in [("t_min", self.t_min), ("t_max", self.t_max)] {
            for (end, v) in [("start", f.start), ("end", f.end)] {
                if !(0.0..=1.0).contains(&v) {
                    return Err(ConfigError::new(
                        format!("{name}.{end}"),
                        format!("{v} is not a fraction in [0, 1]"),
                    ));
                }
            }
        }
        // Both ends ordered keeps every linear interpolation between them ordered.
        for (end, lo, hi) in [
            ("start", self.t_min.start, self.t_max.start),
            ("end", self.t_min.end, self.t_max.end),
        ] {
            if lo > hi {
                return Err(ConfigError::new(
                    "t_min",
                    format!("t_min.{end} = {lo} is above t_max.{end} = {hi}"),
                ));
            }
        }
        let annealed = self.t_min.start != self.t_min.end || self.t_max.start != self.t_max.end;
        if annealed && self.anneal_steps == 0 {
            return Err(ConfigError::new(
                "anneal_steps",
                "is 0 but t_min or t_max has different start and end values: set the steps to \
                 anneal over",
            ));
        }
        if self.max_batch == 0 {
            return Err(ConfigError::new("max_batch", "must be at least 1"));
        }
        let v = &self.view_thresholds;
        for (field, x) in [
            ("front_threshold", v.front_threshold),
            ("back_threshold", v.back_threshold),
            ("overhead_threshold", v.overhead_threshold),
        ] {
            if !x.is_finite() {
                return Err(ConfigError::new(
                    format!("view_thresholds.{field}"),
                    format!("{x} is not finite"),
                ));
            }
        }
        if let Some(reward) = &self.reward {
            reward.validate().map_err(|e| e.within("reward"))?;
        }
        if let Some(feedback) = &self.reward_feedback {
            feedback
                .validate()
                .map_err(|e| e.within("reward_feedback"))?;
        }
        if let Some(ism) = &self.ism {
            ism.validate().map_err(|e| e.within("ism"))?;
        }
        Ok(())
    }

    /// Whether the settings that use a reward model have one: `reward` is the host config's
    /// reward spec (a folder or preset name). The error names `reward`.
    pub fn check_reward_model(&self, reward: Option<&str>) -> Result<(), ConfigError> {
        if reward.is_some() {
            return Ok(());
        }
        if self
            .reward
            .as_ref()
            .is_some_and(|r| r.strategy.uses_rewards())
        {
            return Err(ConfigError::new(
                "reward",
                "RewardSDS ranks samples by reward: name a reward model (e.g. tiny-world-reward)",
            ));
        }
        if self.reward_feedback.is_some() {
            return Err(ConfigError::new(
                "reward",
                "guidance.reward_feedback differentiates a reward: name a reward model (e.g. \
                 tiny-world-reward)",
            ));
        }
        Ok(())
    }
}

/// The randomness of one step, drawn on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct StepDraw {
    /// The timestep shared by the batch.
    pub t: usize,
    /// Noise samples drawn.
    pub n_samples: usize,
    /// `n_samples * B * C * h * w` standard normals, sample-major.
    pub noise: Vec<f32>,
}

/// What one step reports besides the loss.
#[derive(Debug, Clone, PartialEq)]
pub struct GuidanceStats {
    /// Step index.
    pub step: usize,
    /// The timestep used.
    pub t: usize,
    /// The range `t` was drawn from, inclusive.
    pub t_range: [usize; 2],
    /// `w(t)`.
    pub time_weight: f32,
    /// Whether this step used RewardSDS (configured and within `reward_duration`).
    pub reward_active: bool,
    /// Noise samples `N` (1 for SDS).
    pub n_samples: usize,
    /// Reward of each sample, the mean over views (empty for SDS and `uniform` weighting,
    /// which do not score).
    pub rewards: Vec<f32>,
    /// Weight `w_i` of each sample (`[1.0]` for SDS).
    pub weights: Vec<f32>,
    /// Samples with non-zero weight, in sample order.
    pub selected: Vec<usize>,
    /// The prompt direction of each view (empty without view-dependent prompting).
    pub directions: Vec<ViewDirection>,
    /// Mean reward of the rendered views under reward feedback (`None` without it).
    pub feedback_reward: Option<f32>,
}

/// The result of [`Guidance::step`].
#[derive(Debug, Clone)]
pub struct GuidanceOutput<B: AutodiffBackend> {
    /// The surrogate loss `0.5 ||z - stopgrad(z - g)||^2 / B`, plus `-scale * mean reward`
    /// under reward feedback (so it can be negative), shape `[1]`; call `backward`.
    pub loss: Tensor<B, 1>,
    /// What happened.
    pub stats: GuidanceStats,
}

/// A boxed reward model on the inner backend of `B`.
pub type BoxedReward<B> = Box<dyn RewardModel<<B as AutodiffBackend>::InnerBackend> + Send>;

/// SDS / RewardSDS for one prompt: the prior and reward model on the inner backend, the image
/// encoder on the autodiff backend, prompt embeddings computed once.
pub struct Guidance<B: AutodiffBackend> {
    config: GuidanceConfig,
    prior: DiffusionPrior<B::InnerBackend>,
    encoder: ImageEncoder<B>,
    prompts: PromptEmbeddings<B::InnerBackend>,
    reward: Option<BoxedReward<B>>,
    feedback: Option<BoxedFeedbackReward<B>>,
    total_steps: usize,
}

impl<B: AutodiffBackend> std::fmt::Debug for Guidance<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guidance")
            .field("config", &self.config)
            .field("prompt", &self.prompts.prompt())
            .field("reward", &self.reward.as_ref().map(|r| r.name()))
            .field("feedback", &self.feedback.as_ref().map(|r| r.name()))
            .field("total_steps", &self.total_steps)
            .finish_non_exhaustive()
    }
}

impl<B: AutodiffBackend> Guidance<B> {
    /// Validates `config`, encodes the prompts and readies the encoder. `total_steps` is the
    /// length of the optimisation (for `reward_duration`). A reward model is required when
    /// RewardSDS is configured with a strategy that ranks samples.
    pub fn new(
        config: GuidanceConfig,
        prior: DiffusionPrior<B::InnerBackend>,
        prompt: &str,
        reward: Option<BoxedReward<B>>,
        total_steps: usize,
    ) -> Result<Self, GuidanceError> {
        config.validate()?;
        if let Some(r) = &config.reward
            && r.strategy.uses_rewards()
            && reward.is_none()
        {
            return Err(ConfigError::new(
                "reward",
                format!(
                    "RewardSDS with `{}` weighting needs a reward model, and none was given",
                    r.strategy.name()
                ),
            )
            .into());
        }
        let prompts = PromptEmbeddings::new(
            &prior,
            prompt,
            &config.negative_prompt,
            config.view_thresholds,
        )?;
        let encoder = prior.autodiff_image_encoder::<B>();
        Ok(Self {
            config,
            prior,
            encoder,
            prompts,
            reward,
            feedback: None,
            total_steps,
        })
    }

    /// Attaches the differentiable reward model that `reward_feedback` differentiates (on
    /// the autodiff backend; [`crate::models::ClipScore::autodiff`] shares the RewardSDS
    /// model's weights).
    pub fn set_reward_feedback(&mut self, model: BoxedFeedbackReward<B>) {
        self.feedback = Some(model);
    }

    /// Takes the guidance apart, to build another (other settings or prompt) without loading
    /// the models again.
    pub fn into_parts(self) -> (DiffusionPrior<B::InnerBackend>, Option<BoxedReward<B>>) {
        (self.prior, self.reward)
    }

    /// The settings.
    pub fn config(&self) -> &GuidanceConfig {
        &self.config
    }

    /// The prior (inner backend).
    pub fn prior(&self) -> &DiffusionPrior<B::InnerBackend> {
        &self.prior
    }

    /// The cached prompt embeddings.
    pub fn prompts(&self) -> &PromptEmbeddings<B::InnerBackend> {
        &self.prompts
    }

    /// The differentiable image encoder (autodiff backend).
    pub fn image_encoder(&self) -> &ImageEncoder<B> {
        &self.encoder
    }

    /// The inclusive timestep range at `step`: `int(T * t_min)` to `int(T * t_max)`
    /// (threestudio's `min_step`/`max_step`), capped at `T - 1`.
    pub fn timestep_range(&self, step: usize) -> [usize; 2] {
        let t = self.prior.num_train_timesteps();
        let at = |f: &AnnealedFraction| {
            let v = (t as f64 * f.at(step, self.config.anneal_steps)) as usize;
            v.min(t - 1)
        };
        [at(&self.config.t_min), at(&self.config.t_max)]
    }

    /// `w(t)`.
    pub fn time_weight(&self, t: usize) -> Result<f32, GuidanceError> {
        Ok(match self.config.weighting {
            TimeWeighting::Sds => 1.0 - self.prior.alpha_prod(t)?,
            TimeWeighting::Uniform => 1.0,
        })
    }

    /// The RewardSDS settings if rewards apply at `step`: configured, and `step <
    /// int(total_steps * reward_duration)` (the official `last_reward_step`).
    pub fn reward_at(&self, step: usize) -> Option<&RewardSdsConfig> {
        let r = self.config.reward.as_ref()?;
        let last = (self.total_steps as f64 * r.reward_duration) as usize;
        (step < last).then_some(r)
    }

    /// The CFG scale of `step`: `guidance_scale`, moved linearly to `guidance_scale_end` by the
    /// last of `total_steps`.
    pub fn guidance_scale_at(&self, step: usize) -> f32 {
        let start = self.config.guidance_scale;
        match self.config.guidance_scale_end {
            Some(end) if self.total_steps > 1 => {
                let f = step.min(self.total_steps - 1) as f32 / (self.total_steps - 1) as f32;
                start + (end - start) * f
            }
            _ => start,
        }
    }

    /// The generative term's weight at `step`: 0 within the first `csd_fraction` of
    /// `total_steps`, `generative_weight` after.
    pub fn generative_weight_at(&self, step: usize) -> f32 {
        let csd_steps = (self.total_steps as f64 * self.config.csd_fraction as f64) as usize;
        if step < csd_steps {
            0.0
        } else {
            self.config.generative_weight
        }
    }

    /// The timestep and `n_samples` noises of `step` for samples of shape `dims`
    /// (`[B, C, h, w]`), exactly as [`step`](Self::step) draws them.
    pub fn draw(&self, step: usize, seed: u64, dims: [usize; 4], n_samples: usize) -> StepDraw {
        let mut rng = StdRng::seed_from_u64(seed);
        let [lo, hi] = self.timestep_range(step);
        let t = rng.random_range(lo..=hi);
        let noise = standard_normal(&mut rng, n_samples * dims.iter().product::<usize>());
        StepDraw {
            t,
            n_samples,
            noise,
        }
    }

    /// One SDS / RewardSDS step.
    ///
    /// `images` are the rendered views (autodiff, in `[0, 1]`, any size: they are resized to
    /// the prior's resolution); `views` their camera angles, one per image (may be empty when
    /// view-dependent prompting is off). The loss's gradient with respect to the encoded
    /// images `z` is `g / B`.
    ///
    /// # Shapes
    /// - images: `[B, 3, H, W]`
    pub fn step(
        &self,
        images: Tensor<B, 4>,
        views: &[ViewAngles],
        step: usize,
        seed: u64,
    ) -> Result<GuidanceOutput<B>, GuidanceError> {
        let [batch, c, h, w] = images.dims();
        if batch == 0 || c != 3 || h == 0 || w == 0 {
            return Err(GuidanceError::BadInput(format!(
                "images must be [B, 3, H, W] with B, H, W > 0, got {:?}",
                [batch, c, h, w]
            )));
        }
        let view_dependent = self.config.view_dependent_prompting;
        if views.len() != batch && (view_dependent || !views.is_empty()) {
            return Err(GuidanceError::BadInput(format!(
                "{batch} images but {} view angles",
                views.len()
            )));
        }

        // 0. reward feedback on the views as rendered (the gradient the prior cannot give)
        let feedback = match (&self.config.reward_feedback, &self.feedback) {
            (None, _) => None,
            (Some(config), Some(model)) => Some(feedback_loss(
                model.as_ref(),
                config,
                images.clone(),
                self.prompts.prompt(),
            )?),
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "reward_feedback",
                    "is set but no differentiable reward model is attached \
                     (Guidance::set_reward_feedback)",
                )
                .into());
            }
        };

        // 1. encode (autodiff), then leave the graph for the prior
        let mut posterior_rng = StdRng::seed_from_u64(seed ^ POSTERIOR_STREAM);
        let z = self.encoder.encode(images, &mut posterior_rng);
        let z_inner = z.clone().inner();
        let dims = z_inner.dims();

        // 2. timestep and noises; x_t for all samples, sample-major: row i * B + b
        let reward = self.reward_at(step);
        let n = reward.map_or(1, |r| r.n_samples);
        let draw = self.draw(step, seed, dims, n);
        let t = draw.t;
        let [_, channels, zh, zw] = dims;
        let device = z_inner.device();
        let noise = Tensor::<B::InnerBackend, 4>::from_data(
            TensorData::new(draw.noise, [n * batch, channels, zh, zw]),
            (&device, z_inner.dtype()),
        );
        // A camera-conditioned prior sees each view's camera (sample-major, as x_t).
        let class_labels = match self.prior.class_labels_width() {
            None => None,
            Some(_) if views.len() == batch => {
                Some(camera_labels::<B::InnerBackend>(views, &device).repeat_dim(0, n))
            }
            Some(_) => {
                return Err(GuidanceError::BadInput(format!(
                    "the prior is camera-conditioned: {batch} images need as many view \
                     angles, got {}",
                    views.len()
                )));
            }
        };
        // SDS: a random x_t, compared with its own noise; ISM: x_t by DDIM inversion, compared
        // with the prior's prediction at x_s.
        let (x_t, target_noise) = match &self.config.ism {
            None => {
                let x_t = self.prior.scheduler().add_noise(
                    z_inner.clone().repeat_dim(0, n),
                    noise.clone(),
                    &[t],
                )?;
                (x_t, noise)
            }
            Some(ism) => {
                let target = interval_target(
                    &self.prior,
                    z_inner.clone().repeat_dim(0, n),
                    noise,
                    t,
                    self.prompts.uncond(),
                    class_labels.clone(),
                    ism,
                    self.config.max_batch,
                )?;
                (target.x_t, target.target)
            }
        };

        // 3. CFG noise predictions for all samples
        let directions = if view_dependent {
            self.prompts.directions(views)
        } else {
            Vec::new()
        };
        let cond = if view_dependent {
            self.prompts.cond(views, true)
        } else {
            self.prompts.plain().repeat_dim(0, batch)
        }
        .repeat_dim(0, n);
        let uncond = self.prompts.uncond();
        let scale = self.guidance_scale_at(step);
        let generative_weight = self.generative_weight_at(step);
        let (eps_cfg, diff) = if generative_weight == 1.0 {
            let eps_cfg = self.prior.predict_noise_cfg_chunked(
                x_t.clone(),
                t,
                cond.clone(),
                uncond.clone(),
                class_labels.clone(),
                scale,
                self.config.max_batch,
            )?;
            (eps_cfg.clone(), eps_cfg - target_noise)
        } else {
            // eps_cfg - eps = (eps_uncond - eps) + s (eps_cond - eps_uncond), weighted apart.
            let (eps_uncond, eps_cond) = self.prior.predict_noise_branches_chunked(
                x_t.clone(),
                t,
                cond.clone(),
                uncond.clone(),
                class_labels.clone(),
                self.config.max_batch,
            )?;
            let classifier = (eps_cond - eps_uncond.clone()) * scale;
            (
                eps_uncond.clone() + classifier.clone(),
                (eps_uncond - target_noise) * generative_weight + classifier,
            )
        };
        let time_weight = self.time_weight(t)?;

        // 4. rewards, weights and g
        let (g, rewards, weights) = match reward {
            None => (diff * time_weight, Vec::new(), vec![1.0]),
            Some(r) => {
                let rewards = if r.strategy.uses_rewards() {
                    let model = self.reward.as_deref().expect("checked in Guidance::new");
                    let scoring_scale = r.scoring_guidance_scale.unwrap_or(scale);
                    let scorer = Scorer {
                        prior: &self.prior,
                        reward: model,
                        prompt: self.prompts.prompt(),
                        mode: r.scoring,
                        guidance_scale: scoring_scale,
                        max_batch: self.config.max_batch,
                    };
                    // The SDS pass already is the first denoising pass when the scales agree.
                    let eps_at_t = (scoring_scale == scale).then(|| eps_cfg.clone());
                    let x0 = scorer.denoise(x_t, t, cond, uncond, class_labels, eps_at_t)?;
                    scorer.rewards(x0, n)?
                } else {
                    Vec::new()
                };
                let weights = if rewards.is_empty() {
                    r.strategy.weights(&vec![0.0; n])
                } else {
                    r.strategy.weights(&rewards)
                };
                let mut sum: Option<Tensor<B::InnerBackend, 4>> = None;
                for (i, &wi) in weights.iter().enumerate() {
                    if wi == 0.0 {
                        continue;
                    }
                    let term = diff.clone().narrow(0, i * batch, batch) * wi;
                    sum = Some(match sum {
                        Some(s) => s + term,
                        None => term,
                    });
                }
                let g = match sum {
                    Some(s) => s * time_weight,
                    None => z_inner.zeros_like(),
                };
                (g, rewards, weights)
            }
        };
        // threestudio's nan_to_num: one bad pixel must not poison the scene.
        let g = g.clone().mask_fill(g.is_nan(), 0.0);

        // 5. surrogate loss on the autodiff backend: d loss / d z = (z - target) / B = g / B
        let target = z.clone().detach() - Tensor::<B, 4>::from_inner(g);
        let loss = (z - target).powi_scalar(2).sum() * (0.5 / batch as f32);
        let (loss, feedback_reward) = match feedback {
            Some((term, reward)) => (loss + term, Some(reward)),
            None => (loss, None),
        };

        let stats = GuidanceStats {
            step,
            t,
            t_range: self.timestep_range(step),
            time_weight,
            reward_active: reward.is_some(),
            n_samples: n,
            selected: selected(&weights),
            rewards,
            weights,
            directions,
            feedback_reward,
        };
        Ok(GuidanceOutput { loss, stats })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normals_look_normal_and_are_reproducible() {
        let a = standard_normal(&mut StdRng::seed_from_u64(7), 20_001);
        let b = standard_normal(&mut StdRng::seed_from_u64(7), 20_001);
        assert_eq!(a, b);
        assert_eq!(a.len(), 20_001);
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let var = a.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "var {var}");
        // A prefix is the same whatever the length: SDS's noise is RewardSDS's first.
        let short = standard_normal(&mut StdRng::seed_from_u64(7), 101);
        assert_eq!(short[..], a[..101]);
    }

    #[test]
    fn annealing_is_threestudios() {
        let f = AnnealedFraction::linear(0.98, 0.02);
        assert_eq!(f.at(0, 8000), 0.98);
        assert_eq!(f.at(4000, 8000), 0.5);
        // Python's arithmetic too: 0.98 + (0.02 - 0.98) * 1.0 = 0.020000000000000018.
        assert_eq!(f.at(8000, 8000), 0.98 + (0.02 - 0.98));
        assert_eq!((1000.0 * f.at(9000, 8000)) as usize, 20);
        assert_eq!(f.at(5, 0), 0.02);
        // Python: int(1000 * 0.02) = 20, int(1000 * 0.98) = 980.
        assert_eq!(
            (1000.0 * AnnealedFraction::constant(0.02).at(0, 0)) as usize,
            20
        );
        assert_eq!(
            (1000.0 * AnnealedFraction::constant(0.98).at(0, 0)) as usize,
            980
        );
    }

    #[test]
    fn config_defaults_and_serde() {
        let c: GuidanceConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, GuidanceConfig::default());
        c.validate().unwrap();
        let c: GuidanceConfig = serde_json::from_str(
            r#"{"guidance_scale": 50, "t_min": {"start": 0.98, "end": 0.02},
                "t_max": {"start": 0.98, "end": 0.5}, "anneal_steps": 8000,
                "weighting": "uniform",
                "reward": {"n_samples": 7, "strategy": {"type": "min_max"},
                           "scoring": "one_step", "reward_duration": 0.7}}"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.t_max, AnnealedFraction::linear(0.98, 0.5));
        assert_eq!(c.weighting, TimeWeighting::Uniform);
        let r = c.reward.as_ref().unwrap();
        assert_eq!((r.n_samples, r.scoring), (7, ScoringMode::OneStep));
        assert_eq!(r.strategy, WeightStrategy::default());
        let back: GuidanceConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<GuidanceConfig>(r#"{"cfg": 3}"#).is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let field = |c: GuidanceConfig| c.validate().unwrap_err().field;
        let reward = |r: RewardSdsConfig| GuidanceConfig {
            reward: Some(r),
            ..GuidanceConfig::default()
        };
        assert_eq!(
            field(GuidanceConfig {
                guidance_scale: -1.0,
                ..Default::default()
            }),
            "guidance_scale"
        );
        assert_eq!(
            field(GuidanceConfig {
                t_min: AnnealedFraction::constant(0.9),
                t_max: AnnealedFraction::constant(0.5),
                ..Default::default()
            }),
            "t_min"
        );
        assert_eq!(
            field(GuidanceConfig {
                t_max: AnnealedFraction::linear(0.98, 1.5),
                ..Default::default()
            }),
            "t_max.end"
        );
        assert_eq!(
            field(GuidanceConfig {
                t_max: AnnealedFraction::linear(0.98, 0.5),
                ..Default::default()
            }),
            "anneal_steps"
        );
        assert_eq!(
            field(reward(RewardSdsConfig {
                n_samples: 3,
                ..Default::default()
            })),
            "reward.strategy.k"
        );
        for d in [0.0, 1.5, f64::NAN] {
            assert_eq!(
                field(reward(RewardSdsConfig {
                    reward_duration: d,
                    ..Default::default()
                })),
                "reward.reward_duration"
            );
        }
        assert_eq!(
            field(reward(RewardSdsConfig {
                n_samples: 0,
                ..Default::default()
            })),
            "reward.n_samples"
        );
        let e = GuidanceConfig {
            t_min: AnnealedFraction::constant(0.9),
            t_max: AnnealedFraction::constant(0.5),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("t_max.start = 0.5"), "{e}");
    }
}
