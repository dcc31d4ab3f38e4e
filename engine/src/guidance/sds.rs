//! Score distillation: [`Guidance`], which turns a batch of rendered views into the SDS or
//! RewardSDS surrogate loss of one optimisation step, as its [`GuidanceConfig`] says.
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

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::config::{AnnealedFraction, GuidanceConfig, RewardSdsConfig, TimeWeighting};
use super::ism::interval_target;
use super::prior::{DiffusionPrior, ImageEncoder};
use super::prompts::{PromptEmbeddings, ViewAngles, ViewDirection};
use super::recon::{predict_start_from_noise, rescaled_x0};
use super::reward_feedback::{BoxedFeedbackReward, feedback_loss};
use super::scoring::Scorer;
use super::vsd::{VsdLoRA, vsd_cameras};
use super::weighting::selected;
use super::{ConfigError, GuidanceError};
use crate::models::autoencoder_tiny::AutoencoderTiny;
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
    /// `w(t)` as applied to the gradient (1 under the reconstruction loss).
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
    /// VSD's LoRA training loss this step, before its update (`None` without VSD).
    pub lora_loss: Option<f32>,
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

/// One RewardSDS step's noise samples as the reward saw them, kept for diagnostics when
/// [`Guidance::keep_scored_samples`] is on (e.g. to ask an independent judge whether the
/// reward ranks the samples as it would).
#[derive(Debug, Clone)]
pub struct ScoredSamples<B: Backend> {
    /// The timestep.
    pub t: usize,
    /// The images the reward scored, `[n * B, 3, h, w]` in `[0, 1]`, sample-major.
    pub images: Tensor<B, 4>,
    /// Each sample's reward (the mean over its views).
    pub rewards: Vec<f32>,
    /// Each sample's weight.
    pub weights: Vec<f32>,
    /// Each sample's guidance difference before weighting (`eps_hat - eps`), `[n * B, C, h,
    /// w]`: the step's `g` is `time_weight * sum_i weights[i] * diffs[i]`.
    pub diffs: Tensor<B, 4>,
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
    score_decoder: Option<AutoencoderTiny<B::InnerBackend>>,
    vsd: Option<Box<VsdLoRA<B>>>,
    total_steps: usize,
    /// `Some` when scored samples are kept; holds the last step's.
    scored: Option<std::sync::Mutex<Option<ScoredSamples<B::InnerBackend>>>>,
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
        let vsd = config
            .vsd
            .clone()
            .map(|vsd| Box::new(VsdLoRA::new(&prior, vsd)));
        Ok(Self {
            config,
            prior,
            encoder,
            prompts,
            reward,
            feedback: None,
            score_decoder: None,
            vsd,
            total_steps,
            scored: None,
        })
    }

    /// Keeps each rewarded step's scored samples (`true`) for
    /// [`take_scored_samples`](Self::take_scored_samples), or stops (`false`). A diagnostic:
    /// decoding the samples once more costs a little.
    pub fn keep_scored_samples(&mut self, keep: bool) {
        self.scored = keep.then(|| std::sync::Mutex::new(None));
    }

    /// The scored samples of the last rewarded step since the last call, if kept.
    pub fn take_scored_samples(&mut self) -> Option<ScoredSamples<B::InnerBackend>> {
        self.scored.as_mut()?.get_mut().ok()?.take()
    }

    /// Starts a new stage of `total_steps` steps (the texture stage): step indices count from
    /// 0 again, timesteps are drawn from `t_min..t_max` annealed over the stage, and
    /// `reward_duration` and the CFG schedule apply to the stage's length.
    pub fn begin_stage(
        &mut self,
        t_min: AnnealedFraction,
        t_max: AnnealedFraction,
        total_steps: usize,
    ) {
        self.config.t_min = t_min;
        self.config.t_max = t_max;
        self.config.anneal_steps = total_steps;
        self.total_steps = total_steps;
    }

    /// Decodes the scored samples with `taesd` instead of the prior's VAE (RewardSDS's
    /// scoring only: the gradient never passes through it). Refused for a pixel-space prior
    /// (nothing to decode) and for latents of another width.
    pub fn set_score_decoder(
        &mut self,
        taesd: AutoencoderTiny<B::InnerBackend>,
        latent_channels: usize,
    ) -> Result<(), GuidanceError> {
        if !self.prior.is_latent() {
            return Err(ConfigError::new(
                "score_decoder",
                "the prior works in pixel space: there is nothing to decode",
            )
            .into());
        }
        if latent_channels != self.prior.channels() {
            return Err(ConfigError::new(
                "score_decoder",
                format!(
                    "decodes {latent_channels}-channel latents, the prior's have {}",
                    self.prior.channels()
                ),
            )
            .into());
        }
        self.score_decoder = Some(taesd);
        Ok(())
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

    /// VSD's LoRA, when `vsd` is configured.
    pub fn vsd(&self) -> Option<&VsdLoRA<B>> {
        self.vsd.as_deref()
    }

    /// VSD's LoRA, mutably (a checkpoint restores its state).
    pub fn vsd_mut(&mut self) -> Option<&mut VsdLoRA<B>> {
        self.vsd.as_deref_mut()
    }

    /// The inclusive timestep range at `step`: `int(T * t_min)` to `int(T * t_max)`
    /// (threestudio's `min_step`/`max_step`), capped at `T - 1`.
    pub fn timestep_range(&self, step: usize) -> [usize; 2] {
        self.config
            .timestep_range(step, self.prior.num_train_timesteps())
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

    /// Checks a batch of images of `dims` (`[B, 3, H, W]`) and its view angles; returns `B`.
    pub(crate) fn check_images(
        &self,
        dims: [usize; 4],
        views: &[ViewAngles],
    ) -> Result<usize, GuidanceError> {
        let [batch, c, h, w] = dims;
        if batch == 0 || c != 3 || h == 0 || w == 0 {
            return Err(GuidanceError::BadInput(format!(
                "images must be [B, 3, H, W] with B, H, W > 0, got {dims:?}"
            )));
        }
        let frames = self.prior.num_frames();
        if batch % frames != 0 {
            return Err(GuidanceError::BadInput(format!(
                "{batch} views per step, but the prior denoises views in groups of {frames} \
                 (num_frames): use a multiple of {frames}"
            )));
        }
        if views.len() != batch && (self.config.view_dependent_prompting || !views.is_empty()) {
            return Err(GuidanceError::BadInput(format!(
                "{batch} images but {} view angles",
                views.len()
            )));
        }
        Ok(batch)
    }

    /// The cameras of `batch` views for a camera-conditioned prior, `[batch, width]`; `None`
    /// for a prior without camera input.
    pub(crate) fn class_labels(
        &self,
        views: &[ViewAngles],
        batch: usize,
    ) -> Result<Option<Tensor<B::InnerBackend, 2>>, GuidanceError> {
        match self.prior.camera_input() {
            None => Ok(None),
            Some(_) if views.len() == batch => {
                Ok(self.prior.camera_labels(views, &self.prior.device()))
            }
            Some(_) => Err(GuidanceError::BadInput(format!(
                "the prior is camera-conditioned: {batch} images need as many view angles, got {}",
                views.len()
            ))),
        }
    }

    /// The conditional embedding of each of `batch` views under `prompts`, `[batch, seq,
    /// hidden]`: its direction's prompt with view-dependent prompting, else the plain prompt.
    pub(crate) fn cond(
        &self,
        prompts: &PromptEmbeddings<B::InnerBackend>,
        views: &[ViewAngles],
        batch: usize,
    ) -> Tensor<B::InnerBackend, 3> {
        if self.config.view_dependent_prompting {
            prompts.cond(views, true)
        } else {
            prompts.plain().repeat_dim(0, batch)
        }
    }

    /// RewardSDS's steps 2-4 once the guidance pass is done: scores the samples (when the
    /// strategy ranks them), weighs them and returns `(g, rewards, weights)` with
    /// `g = time_weight * sum_i w_i diff_i`. `diff` holds each sample's unweighted gradient,
    /// sample-major like `samples.x_t` (`[n * batch, C, h, w]`).
    pub(crate) fn weigh_samples(
        &self,
        r: &RewardSdsConfig,
        samples: NoisySamples<B::InnerBackend>,
        diff: Tensor<B::InnerBackend, 4>,
        time_weight: f32,
        batch: usize,
    ) -> Result<(Tensor<B::InnerBackend, 4>, Vec<f32>, Vec<f32>), GuidanceError> {
        let n = diff.dims()[0] / batch;
        let (rewards, images) = if r.strategy.uses_rewards() {
            let model = self.reward.as_deref().expect("checked in Guidance::new");
            let scoring_scale = r.scoring_guidance_scale.unwrap_or(samples.guidance_scale);
            let scorer = Scorer {
                prior: &self.prior,
                reward: model,
                prompt: self.prompts.prompt(),
                mode: r.scoring,
                guidance_scale: scoring_scale,
                max_batch: self.config.max_batch,
                decoder: self.score_decoder.as_ref(),
            };
            // The guidance pass already is the first denoising pass when the scales agree.
            let eps_at_t = (scoring_scale == samples.guidance_scale).then_some(samples.eps_cfg);
            let x0 = scorer.denoise(
                samples.x_t,
                samples.t,
                samples.cond,
                self.prompts.uncond(),
                samples.class_labels,
                eps_at_t,
            )?;
            let images = self.scored.as_ref().map(|_| scorer.decode(x0.clone()));
            (scorer.rewards(x0, n)?, images)
        } else {
            (Vec::new(), None)
        };
        let weights = if rewards.is_empty() {
            r.strategy.weights(&vec![0.0; n])
        } else {
            r.strategy.weights(&rewards)
        };
        if let (Some(slot), Some(images)) = (&self.scored, images)
            && let Ok(mut slot) = slot.lock()
        {
            *slot = Some(ScoredSamples {
                t: samples.t,
                images,
                rewards: rewards.clone(),
                weights: weights.clone(),
                diffs: diff.clone(),
            });
        }
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
            None => diff.narrow(0, 0, batch).zeros_like(),
        };
        Ok((g, rewards, weights))
    }

    /// One SDS / RewardSDS step (VSD / RewardVSD when `vsd` is configured: the LoRA's
    /// estimate replaces the noise, and the LoRA then trains one step on the images).
    ///
    /// `images` are the rendered views (autodiff, in `[0, 1]`, any size: they are resized to
    /// the prior's resolution); `views` their camera angles, one per image (may be empty when
    /// view-dependent prompting is off). The loss's gradient with respect to the encoded
    /// images `z` is `g / B`.
    ///
    /// # Shapes
    /// - images: `[B, 3, H, W]`
    pub fn step(
        &mut self,
        images: Tensor<B, 4>,
        views: &[ViewAngles],
        step: usize,
        seed: u64,
    ) -> Result<GuidanceOutput<B>, GuidanceError> {
        let batch = self.check_images(images.dims(), views)?;
        let view_dependent = self.config.view_dependent_prompting;

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
        let class_labels = self
            .class_labels(views, batch)?
            .map(|labels| labels.repeat_dim(0, n));
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
        let cond = self.cond(&self.prompts, views, batch).repeat_dim(0, n);
        let uncond = self.prompts.uncond();
        let scale = self.guidance_scale_at(step);
        let generative_weight = self.generative_weight_at(step);
        let recon = self.config.recon_loss.as_ref();
        // VSD's LoRA reads the plain prompt (no view suffix) and each view's camera.
        let vsd_inputs = self.vsd.as_ref().map(|_| {
            (
                self.prompts.plain().repeat_dim(0, batch),
                vsd_cameras::<B::InnerBackend>(views, batch, &device),
            )
        });
        let (eps_cfg, diff) = if recon.is_none() && generative_weight == 1.0 {
            let eps_cfg = self.prior.predict_noise_cfg_chunked(
                x_t.clone(),
                t,
                cond.clone(),
                uncond.clone(),
                class_labels.clone(),
                scale,
                self.config.max_batch,
            )?;
            let target = match (&self.vsd, &vsd_inputs) {
                (Some(lora), Some((plain, cameras))) => lora.predict_noise(
                    &self.prior,
                    x_t.clone(),
                    t,
                    plain.clone().repeat_dim(0, n),
                    class_labels.clone(),
                    cameras.clone().repeat_dim(0, n),
                    self.config.max_batch,
                )?,
                _ => target_noise,
            };
            (eps_cfg.clone(), eps_cfg - target)
        } else {
            // The two CFG branches apart: the reconstruction loss needs the text-only one, a
            // generative weight weighs eps_uncond - eps and s (eps_cond - eps_uncond) apart.
            let (eps_uncond, eps_cond) = self.prior.predict_noise_branches_chunked(
                x_t.clone(),
                t,
                cond.clone(),
                uncond.clone(),
                class_labels.clone(),
                self.config.max_batch,
            )?;
            let classifier = (eps_cond.clone() - eps_uncond.clone()) * scale;
            let eps_cfg = eps_uncond.clone() + classifier.clone();
            match recon {
                Some(recon) => {
                    // MVDream's reconstruction loss: z towards the (std-rescaled) CFG x0.
                    let alpha_prod = self.prior.alpha_prod(t)?;
                    let x0_cfg = predict_start_from_noise(x_t.clone(), eps_cfg.clone(), alpha_prod);
                    let x0_text = predict_start_from_noise(x_t.clone(), eps_cond, alpha_prod);
                    let x0 =
                        rescaled_x0(x0_cfg, x0_text, recon.std_rescale, self.prior.num_frames());
                    (eps_cfg, z_inner.clone().repeat_dim(0, n) - x0)
                }
                None => (
                    eps_cfg,
                    (eps_uncond - target_noise) * generative_weight + classifier,
                ),
            }
        };
        // The reconstruction loss's gradient carries no w(t) (threestudio's recon branch).
        let time_weight = if recon.is_some() {
            1.0
        } else {
            self.time_weight(t)?
        };

        // 4. rewards, weights and g
        let (g, rewards, weights) = match reward {
            None => (diff * time_weight, Vec::new(), vec![1.0]),
            Some(r) => {
                let samples = NoisySamples {
                    x_t,
                    t,
                    cond,
                    class_labels,
                    eps_cfg,
                    guidance_scale: scale,
                };
                self.weigh_samples(r, samples, diff, time_weight, batch)?
            }
        };

        // 5. VSD: the LoRA learns the images as they are now
        let reward_active = reward.is_some();
        let own_labels = match self.vsd {
            Some(_) => self.class_labels(views, batch)?,
            None => None,
        };
        let lora_loss = match (&mut self.vsd, vsd_inputs) {
            (Some(lora), Some((plain, cameras))) => {
                Some(lora.train(&self.prior, z_inner, plain, own_labels, cameras, seed)?)
            }
            _ => None,
        };

        // 6. surrogate loss on the autodiff backend
        let loss = surrogate_loss(z, g, batch);
        let (loss, feedback_reward) = match feedback {
            Some((term, reward)) => (loss + term, Some(reward)),
            None => (loss, None),
        };

        let stats = GuidanceStats {
            step,
            t,
            t_range: self.timestep_range(step),
            time_weight,
            reward_active,
            n_samples: n,
            selected: selected(&weights),
            rewards,
            weights,
            directions,
            feedback_reward,
            lora_loss,
        };
        Ok(GuidanceOutput { loss, stats })
    }
}

/// A step's noisy samples as RewardSDS scores them, sample-major (sample `i`, view `b` at row
/// `i * B + b`).
pub(crate) struct NoisySamples<B: Backend> {
    /// The noisy samples, `[n * B, C, h, w]`.
    pub x_t: Tensor<B, 4>,
    /// Their timestep.
    pub t: usize,
    /// The prompt embedding of each row, `[n * B, seq, hidden]`.
    pub cond: Tensor<B, 3>,
    /// The camera of each row (a camera-conditioned prior), `[n * B, width]`.
    pub class_labels: Option<Tensor<B, 2>>,
    /// The guidance pass's CFG noise prediction at `x_t`, `[n * B, C, h, w]`.
    pub eps_cfg: Tensor<B, 4>,
    /// The CFG scale `eps_cfg` was computed with.
    pub guidance_scale: f32,
}

/// The surrogate loss `0.5 ||z - stopgrad(z - g)||^2 / B`, whose gradient with respect to
/// `z` (`[B, C, h, w]`) is `g / B`; NaNs in `g` become 0 first (threestudio's `nan_to_num`:
/// one bad pixel must not poison the scene).
pub(crate) fn surrogate_loss<B: AutodiffBackend>(
    z: Tensor<B, 4>,
    g: Tensor<B::InnerBackend, 4>,
    batch: usize,
) -> Tensor<B, 1> {
    let g = g.clone().mask_fill(g.is_nan(), 0.0);
    let target = z.clone().detach() - Tensor::<B, 4>::from_inner(g);
    (z - target).powi_scalar(2).sum() * (0.5 / batch as f32)
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
}
