//! The options that change a preset's or config's values, shared by `generate` and `batch`.

use rewardsds::engine::generate::{GenerateConfig, SceneKind, TextureStageConfig};
use rewardsds::engine::guidance::{RewardFeedbackConfig, VsdConfig};

/// The options that change a preset's or config's values (`generate` and `batch` share them).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Overrides {
    /// Diffusion prior: preset, folder or repo id.
    #[arg(long)]
    prior: Option<String>,
    /// Reward model for RewardSDS: preset, folder or repo id.
    #[arg(long)]
    reward: Option<String>,
    /// Decoder of RewardSDS's scored samples instead of the prior's VAE: `taesd` or a folder
    /// of a diffusers AutoencoderTiny (`score_decoder`).
    #[arg(long)]
    score_decoder: Option<String>,
    /// Optimisation steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Scene representation: nerf or gaussians (the preset's or config's when unset).
    #[arg(long)]
    scene: Option<SceneKind>,
    /// Steps between checkpoints in `<out>/checkpoint`, 0 for none (the preset's or
    /// config's when unset).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Weight of the reward's own gradient (`guidance.reward_feedback.scale`); 0 turns it
    /// off (the preset's or config's when unset).
    #[arg(long)]
    reward_feedback: Option<f32>,
    /// CFG scale (`guidance.guidance_scale`, at step 0; the preset's or config's when unset).
    #[arg(long)]
    guidance_scale: Option<f32>,
    /// Variational score distillation: a LoRA of the prior, trained on the renders, stands in
    /// for SDS's sampled noise (RewardVSD when the preset ranks samples by reward);
    /// `guidance.vsd` with its defaults. The official `vsd` mode pairs it with
    /// `--guidance-scale 7.5`.
    #[arg(long)]
    vsd: bool,
    /// CFG scale at the last step, reached linearly from the preset's
    /// (`guidance.guidance_scale_end`; the preset's or config's when unset).
    #[arg(long)]
    guidance_scale_end: Option<f32>,
    /// Weight of SDS's generative term beside the classifier term
    /// (`guidance.generative_weight`; 0 is classifier score distillation; the preset's or
    /// config's when unset).
    #[arg(long)]
    generative_weight: Option<f32>,
    /// Share of the steps run as classifier score distillation before the generative term
    /// applies (`guidance.csd_fraction`; the preset's or config's when unset).
    #[arg(long)]
    csd_fraction: Option<f32>,
    /// The NeRF's learning rates at the last step as a fraction of the first
    /// (`learning_rate_end_factor`; the preset's or config's when unset).
    #[arg(long)]
    learning_rate_end_factor: Option<f64>,
    /// Steps of the texture stage after the `--steps` of stage 1 (`texture_stage.steps`): the
    /// surface meshed with a UV atlas and its texture refined with the same guidance; 0
    /// turns the stage off (the preset's or config's when unset).
    #[arg(long)]
    texture_steps: Option<usize>,
}

impl Overrides {
    /// Writes the options given into `config`.
    pub fn apply(&self, config: &mut GenerateConfig) {
        if let Some(prior) = &self.prior {
            config.prior = prior.clone();
        }
        if let Some(reward) = &self.reward {
            config.reward = Some(reward.clone());
        }
        if let Some(decoder) = &self.score_decoder {
            config.score_decoder = Some(decoder.clone());
        }
        if let Some(steps) = self.steps {
            set_steps(config, steps);
        }
        if let Some(seed) = self.seed {
            config.seed = seed;
        }
        if let Some(scene) = self.scene {
            config.scene = scene;
        }
        if let Some(every) = self.checkpoint_every {
            config.checkpoint_every = every;
        }
        if let Some(scale) = self.guidance_scale {
            config.guidance.guidance_scale = scale;
        }
        if self.vsd && config.guidance.vsd.is_none() {
            config.guidance.vsd = Some(VsdConfig::default());
        }
        if let Some(end) = self.guidance_scale_end {
            config.guidance.guidance_scale_end = Some(end);
        }
        if let Some(weight) = self.generative_weight {
            config.guidance.generative_weight = weight;
        }
        if let Some(fraction) = self.csd_fraction {
            config.guidance.csd_fraction = fraction;
        }
        if let Some(factor) = self.learning_rate_end_factor {
            config.learning_rate_end_factor = factor;
        }
        if let Some(scale) = self.reward_feedback {
            config.guidance.reward_feedback =
                (scale != 0.0).then_some(RewardFeedbackConfig { scale });
        }
        if let Some(steps) = self.texture_steps {
            config.texture_stage = (steps > 0).then(|| TextureStageConfig {
                steps,
                ..config.texture_stage.clone().unwrap_or_default()
            });
        }
    }
}

/// Sets the number of steps. A shorter run than the preset's: its resolution milestones past
/// the end never come (`mvdream` switches to 256 px at step 5000), so they go, with a word.
pub fn set_steps(config: &mut GenerateConfig, steps: usize) {
    config.steps = steps;
    let (kept, dropped): (Vec<_>, Vec<_>) = std::mem::take(&mut config.resolution_milestones)
        .into_iter()
        .partition(|m| m.step < steps);
    for m in &dropped {
        log::warn!(
            "steps = {steps}: the resolution milestone at step {} ({} px) is past the end; dropped",
            m.step,
            m.size
        );
    }
    config.resolution_milestones = kept;
}
