//! Delta Denoising Score (DDS, Hertz et al., arXiv 2304.07090) and RewardDDS: editing images
//! towards a target prompt, relative to a source image and the source prompt describing it.
//!
//! DDS noises the edited image `z` and the source image `zsrc` with the same noise `eps` at the
//! same timestep `t` and compares the CFG noise predictions of the two branches, each under its
//! own prompt: `g = w(t) (eps_cfg(z_t, t, y_target) - eps_cfg(zsrc_t, t, y_source))`. The
//! source branch estimates the part of SDS's gradient the edit should not follow (the sampled
//! noise, the prior's pull towards its mean image), so what is left is what the target prompt
//! changes. Because both branches share `eps`, DDS equals SDS of the image under the target
//! prompt minus SDS of the source under the source prompt on the same draw.
//!
//! RewardDDS (arXiv 2503.09601): `N` noises, each shared by its pair of branches. Each sample's
//! target branch is denoised and scored by the reward model against the target prompt, and the
//! `N` deltas are weighted with RewardSDS's strategies ([`WeightStrategy`]) for the first
//! `reward_duration` of the steps; later steps are plain single-noise DDS.
//!
//! [`Dds`] wraps the target prompt's [`Guidance`] and reuses all of it but the two-branch
//! prediction ([`dds`]): the timestep and noise draw, `w(t)`, the CFG scale schedule, scoring,
//! weighting and the surrogate loss are SDS's, so a DDS step draws exactly what the SDS step of
//! the same `(step, seed)` draws.
//!
//! [`WeightStrategy`]: super::WeightStrategy

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::config::GuidanceConfig;
use super::prior::DiffusionPrior;
use super::prompts::{PromptEmbeddings, ViewAngles};
use super::sds::{
    BoxedReward, Guidance, GuidanceOutput, GuidanceStats, NoisySamples, POSTERIOR_STREAM,
    surrogate_loss,
};
use super::weighting::selected;
use super::{ConfigError, GuidanceError};
use crate::models::autoencoder_tiny::AutoencoderTiny;

/// One branch of DDS: the encoded images and the prompt they are denoised under.
#[derive(Debug, Clone)]
pub struct DdsBranch<B: Backend> {
    /// The images as the prior denoises them (pixels in `[-1, 1]`, or scaled latents),
    /// `[B, C, h, w]`.
    pub z: Tensor<B, 4>,
    /// The prompt embedding of each image, `[B, seq, hidden]`, or `[1, seq, hidden]` for all.
    pub cond: Tensor<B, 3>,
}

/// How both branches are denoised.
#[derive(Debug, Clone)]
pub struct DdsCfg<B: Backend> {
    /// CFG's unconditional (negative prompt) embedding, `[1, seq, hidden]`, shared by both
    /// branches.
    pub uncond: Tensor<B, 3>,
    /// The camera of each image (a camera-conditioned prior), `[B, width]` or `[1, width]`;
    /// the same for both branches.
    pub class_labels: Option<Tensor<B, 2>>,
    /// The CFG scale `s`.
    pub guidance_scale: f32,
    /// Samples per UNet pass, to bound memory.
    pub max_batch: usize,
}

/// What [`dds`] computes, sample-major (noise `i`, image `b` at row `i * B + b`).
#[derive(Debug, Clone)]
pub struct DdsTerms<B: Backend> {
    /// The noised edited images `z_t`, `[n * B, C, h, w]` (what RewardDDS scores).
    pub x_t: Tensor<B, 4>,
    /// The CFG prediction on the target branch, `eps_cfg(z_t, t, y_target)`.
    pub eps_target: Tensor<B, 4>,
    /// The CFG prediction on the source branch, `eps_cfg(zsrc_t, t, y_source)`.
    pub eps_source: Tensor<B, 4>,
}

impl<B: Backend> DdsTerms<B> {
    /// `eps_target - eps_source`: the DDS gradient of each sample before `w(t)`.
    pub fn delta(&self) -> Tensor<B, 4> {
        self.eps_target.clone() - self.eps_source.clone()
    }
}

/// The two branches of DDS at timestep `t`: `target.z` and `source.z` noised with the same
/// `noise` (each of its `n` blocks of `B` rows one noise sample) and denoised with CFG under
/// their own prompts, both in one chunked UNet pass.
///
/// # Shapes
/// - target.z, source.z: `[B, C, h, w]`
/// - noise: `[n * B, C, h, w]`
/// - outputs: `[n * B, C, h, w]`
pub fn dds<B: Backend>(
    prior: &DiffusionPrior<B>,
    target: DdsBranch<B>,
    source: DdsBranch<B>,
    noise: Tensor<B, 4>,
    t: usize,
    cfg: DdsCfg<B>,
) -> Result<DdsTerms<B>, GuidanceError> {
    let dims = target.z.dims();
    if source.z.dims() != dims {
        return Err(GuidanceError::BadInput(format!(
            "the source encodes to {:?} but the edited images to {dims:?}: both branches must \
             have the same shape",
            source.z.dims()
        )));
    }
    let batch = dims[0];
    let [rows, c, h, w] = noise.dims();
    if batch == 0 || rows == 0 || !rows.is_multiple_of(batch) || [c, h, w] != dims[1..] {
        return Err(GuidanceError::BadInput(format!(
            "noise {:?} is not whole samples of the images' shape {dims:?}",
            noise.dims()
        )));
    }
    let n = rows / batch;
    // Every row of the doubled batch gets its own embedding: the two branches' prompts differ.
    let per_row = |cond: Tensor<B, 3>, branch: &str| match cond.dims()[0] {
        r if r == batch => Ok(cond.repeat_dim(0, n)),
        1 => Ok(cond.repeat_dim(0, rows)),
        r => Err(GuidanceError::BadInput(format!(
            "{r} {branch} prompt embeddings for {batch} images"
        ))),
    };
    let cond = Tensor::cat(
        vec![
            per_row(target.cond, "target")?,
            per_row(source.cond, "source")?,
        ],
        0,
    );
    let class_labels = match cfg.class_labels {
        Some(l) if l.dims()[0] == batch => Some(l.repeat_dim(0, 2 * n)),
        Some(l) if l.dims()[0] == 1 => Some(l),
        Some(l) => {
            return Err(GuidanceError::BadInput(format!(
                "{} cameras for {batch} images",
                l.dims()[0]
            )));
        }
        None => None,
    };
    let scheduler = prior.scheduler();
    let x_t = scheduler.add_noise(target.z.repeat_dim(0, n), noise.clone(), &[t])?;
    let xsrc_t = scheduler.add_noise(source.z.repeat_dim(0, n), noise, &[t])?;
    // [2 n B, ...]: target rows first, then source rows.
    let eps = prior.predict_noise_cfg_chunked(
        Tensor::cat(vec![x_t.clone(), xsrc_t], 0),
        t,
        cond,
        cfg.uncond,
        class_labels,
        cfg.guidance_scale,
        cfg.max_batch,
    )?;
    Ok(DdsTerms {
        x_t,
        eps_target: eps.clone().narrow(0, 0, rows),
        eps_source: eps.narrow(0, rows, rows),
    })
}

/// DDS / RewardDDS for one edit: the target prompt's [`Guidance`] and the source prompt's
/// embeddings.
pub struct Dds<B: AutodiffBackend> {
    target: Guidance<B>,
    source: PromptEmbeddings<B::InnerBackend>,
}

impl<B: AutodiffBackend> std::fmt::Debug for Dds<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dds")
            .field("source_prompt", &self.source.prompt())
            .field("target", &self.target)
            .finish()
    }
}

/// Refuses the guidance settings DDS has no meaning for; the error names the field.
pub fn check_config(config: &GuidanceConfig) -> Result<(), ConfigError> {
    if config.ism.is_some() {
        return Err(ConfigError::new(
            "ism",
            "replaces SDS's random noise by a DDIM inversion of the image; DDS needs the \
             same random noise on the source and edited images: unset it",
        ));
    }
    if config.recon_loss.is_some() {
        return Err(ConfigError::new(
            "recon_loss",
            "replaces the noise difference DDS is made of: unset it",
        ));
    }
    if config.reward_feedback.is_some() {
        return Err(ConfigError::new(
            "reward_feedback",
            "is not supported with DDS editing: unset it",
        ));
    }
    if config.vsd.is_some() {
        return Err(ConfigError::new(
            "vsd",
            "replaces SDS's noise by a LoRA estimate; DDS's second branch is the source \
             image's prediction: unset it",
        ));
    }
    if config.generative_weight != 1.0 || config.csd_fraction > 0.0 {
        return Err(ConfigError::new(
            "generative_weight",
            "DDS compares full CFG predictions: it needs generative_weight 1 and \
             csd_fraction 0",
        ));
    }
    Ok(())
}

impl<B: AutodiffBackend> Dds<B> {
    /// Validates `config` (as [`Guidance::new`], plus [`check_config`]) and encodes both
    /// prompts. `target_prompt` is also what the reward scores against. Equal prompts are
    /// allowed here (the gradient of an unedited image is then 0); hosts that take user input
    /// refuse them.
    pub fn new(
        config: GuidanceConfig,
        prior: DiffusionPrior<B::InnerBackend>,
        source_prompt: &str,
        target_prompt: &str,
        reward: Option<BoxedReward<B>>,
        total_steps: usize,
    ) -> Result<Self, GuidanceError> {
        check_config(&config)?;
        let target = Guidance::new(config, prior, target_prompt, reward, total_steps)?;
        let source = PromptEmbeddings::new(
            target.prior(),
            source_prompt,
            &target.config().negative_prompt,
            target.config().view_thresholds,
        )?;
        Ok(Self { target, source })
    }

    /// Decodes the scored samples with `taesd` ([`Guidance::set_score_decoder`]).
    pub fn set_score_decoder(
        &mut self,
        taesd: AutoencoderTiny<B::InnerBackend>,
        latent_channels: usize,
    ) -> Result<(), GuidanceError> {
        self.target.set_score_decoder(taesd, latent_channels)
    }

    /// The target prompt's guidance (settings, prior, schedules).
    pub fn guidance(&self) -> &Guidance<B> {
        &self.target
    }

    /// The source prompt.
    pub fn source_prompt(&self) -> &str {
        self.source.prompt()
    }

    /// The target prompt.
    pub fn target_prompt(&self) -> &str {
        self.target.prompts().prompt()
    }

    /// Takes the guidance apart, to build another without loading the models again.
    pub fn into_parts(self) -> (DiffusionPrior<B::InnerBackend>, Option<BoxedReward<B>>) {
        self.target.into_parts()
    }

    /// One DDS / RewardDDS step ([`Guidance::dds_step`] with the source prompt).
    ///
    /// # Shapes
    /// - images: `[B, 3, H, W]`
    /// - source: `[B, 3, H', W']`
    pub fn step(
        &self,
        images: Tensor<B, 4>,
        source: Tensor<B::InnerBackend, 4>,
        views: &[ViewAngles],
        step: usize,
        seed: u64,
    ) -> Result<GuidanceOutput<B>, GuidanceError> {
        self.target
            .dds_step(&self.source, images, source, views, step, seed)
    }
}

impl<B: AutodiffBackend> Guidance<B> {
    /// One DDS / RewardDDS step of this guidance's prompt (the target) against
    /// `source_prompt`, the embeddings of the prompt the source images show (check the
    /// settings with [`check_config`] first: DDS has no meaning for some of them).
    ///
    /// `images` are the edited images (autodiff, in `[0, 1]`), `source` the source images they
    /// started from, one per edited image (any size: both are resized to the prior's
    /// resolution); `views` as for [`Guidance::step`]. The loss's gradient with respect to the
    /// encoded images `z` is `g / B`.
    ///
    /// # Shapes
    /// - images: `[B, 3, H, W]`
    /// - source: `[B, 3, H', W']`
    pub fn dds_step(
        &self,
        source_prompt: &PromptEmbeddings<B::InnerBackend>,
        images: Tensor<B, 4>,
        source: Tensor<B::InnerBackend, 4>,
        views: &[ViewAngles],
        step: usize,
        seed: u64,
    ) -> Result<GuidanceOutput<B>, GuidanceError> {
        let guidance = self;
        let batch = guidance.check_images(images.dims(), views)?;
        let [source_batch, c, h, w] = source.dims();
        if source_batch != batch || c != 3 || h == 0 || w == 0 {
            return Err(GuidanceError::BadInput(format!(
                "source images must be [{batch}, 3, H, W] (one per edited image), got {:?}",
                source.dims()
            )));
        }

        // 1. encode both with the same posterior noise (a latent prior's sample): it cancels
        //    between the branches as the diffusion noise does, and an unedited image gets 0.
        let posterior = || StdRng::seed_from_u64(seed ^ POSTERIOR_STREAM);
        let z = guidance.image_encoder().encode(images, &mut posterior());
        let z_source = guidance.prior().encode_images(source, &mut posterior());
        let z_inner = z.clone().inner();
        let dims = z_inner.dims();

        // 2. timestep and noises, exactly as SDS draws them
        let reward = guidance.reward_at(step);
        let n = reward.map_or(1, |r| r.n_samples);
        let draw = guidance.draw(step, seed, dims, n);
        let t = draw.t;
        let device = z_inner.device();
        let [_, channels, zh, zw] = dims;
        let noise = Tensor::<B::InnerBackend, 4>::from_data(
            TensorData::new(draw.noise, [n * batch, channels, zh, zw]),
            (&device, z_inner.dtype()),
        );

        // 3. both branches' CFG predictions
        let class_labels = guidance.class_labels(views, batch)?;
        let target_cond = guidance.cond(guidance.prompts(), views, batch);
        let source_cond = guidance.cond(source_prompt, views, batch);
        let scale = guidance.guidance_scale_at(step);
        let terms = dds(
            guidance.prior(),
            DdsBranch {
                z: z_inner,
                cond: target_cond.clone(),
            },
            DdsBranch {
                z: z_source,
                cond: source_cond,
            },
            noise,
            t,
            DdsCfg {
                uncond: guidance.prompts().uncond(),
                class_labels: class_labels.clone(),
                guidance_scale: scale,
                max_batch: guidance.config().max_batch,
            },
        )?;
        let time_weight = guidance.time_weight(t)?;
        let delta = terms.delta();

        // 4. rewards of the target branch, weights and g
        let (g, rewards, weights) = match reward {
            None => (delta * time_weight, Vec::new(), vec![1.0]),
            Some(r) => {
                let samples = NoisySamples {
                    x_t: terms.x_t,
                    t,
                    cond: target_cond.repeat_dim(0, n),
                    class_labels: class_labels.map(|l| l.repeat_dim(0, n)),
                    eps_cfg: terms.eps_target,
                    guidance_scale: scale,
                };
                guidance.weigh_samples(r, samples, delta, time_weight, batch)?
            }
        };

        // 5. surrogate loss on the autodiff backend
        let loss = surrogate_loss(z, g, batch);
        let directions = if guidance.config().view_dependent_prompting {
            guidance.prompts().directions(views)
        } else {
            Vec::new()
        };
        let stats = GuidanceStats {
            step,
            t,
            t_range: guidance.timestep_range(step),
            time_weight,
            reward_active: reward.is_some(),
            n_samples: n,
            selected: selected(&weights),
            rewards,
            weights,
            directions,
            feedback_reward: None,
            lora_loss: None,
        };
        Ok(GuidanceOutput { loss, stats })
    }
}
