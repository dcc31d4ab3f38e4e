//! Score distillation guidance: SDS and RewardSDS over a diffusion prior, and their editing
//! variants DDS and RewardDDS.
//!
//! A renderer makes `B` views of the scene; [`Guidance::step`] turns them into a surrogate loss
//! whose gradient with respect to the images is the (Reward)SDS gradient, so one
//! `loss.backward()` carries it into the scene's parameters.
//!
//! - [`prior`]: [`DiffusionPrior`]: tokenizer, CLIP text encoder, UNet, optional VAE (latent
//!   prior) and DDIM schedule, loaded from a diffusers pipeline folder; CFG noise prediction.
//! - [`prompts`]: threestudio's view-dependent prompts (`", front view"` ...) and the
//!   [`PromptEmbeddings`] cache.
//! - [`weighting`]: RewardSDS's reward-to-weight maps ([`WeightStrategy`]: `min_max`,
//!   `softmax`, `best`, `uniform`).
//! - [`scoring`]: how a noisy sample is denoised and scored ([`ScoringMode`]: `ddim` on the
//!   official 15-point grid, `one_step`).
//! - [`config`]: [`GuidanceConfig`] and [`RewardSdsConfig`], validated field by field.
//! - [`sds`]: [`Guidance`], the per-step SDS / RewardSDS loss.
//! - [`dds`](mod@dds): [`Dds`], the per-step DDS / RewardDDS loss of an edit (source image and prompt,
//!   target prompt).
//! - [`vsd`]: VSD / RewardVSD's LoRA of the prior ([`VsdLoRA`]), trained on the renders.
//! - [`recon`]: MVDream's x0-reconstruction loss with CFG std rescale ([`ReconLossConfig`]).
//! - [`reward_feedback`]: the reward's own gradient as an extra loss term (DreamReward,
//!   Dream Fields), off by default.
//!
//! The prior and the reward model run on the autodiff backend's inner backend (no graph is
//! recorded for their passes); only the image encoding and the surrogate loss live on the
//! autodiff backend. Randomness (timestep, noises, VAE posterior sample) comes from a seeded
//! `StdRng` on the host, so CPU runs are reproducible bit for bit.

pub mod config;
pub mod dds;
pub mod ism;
pub mod prior;
pub mod prompts;
pub mod recon;
pub mod reward_feedback;
pub mod scoring;
pub mod sds;
pub mod vsd;
pub mod weighting;

pub use crate::models::resize::resize_bilinear;
pub use config::{AnnealedFraction, GuidanceConfig, RewardSdsConfig, TimeWeighting};
pub use dds::{Dds, DdsBranch, DdsCfg, DdsTerms, dds};
pub use ism::{IsmConfig, IsmTarget, ddim_move, interval_target};
pub use prior::{CameraInput, DiffusionPrior, ImageEncoder, PriorParts};
pub use prompts::{
    CAMERA_LABELS, PromptEmbeddings, ViewAngles, ViewDirection, ViewThresholds, camera_labels,
};
pub use recon::ReconLossConfig;
pub use reward_feedback::{BoxedFeedbackReward, RewardFeedbackConfig, feedback_loss};
pub use scoring::{DDIM_SCORING_STEPS, Scorer, ScoringMode, ddim_scoring_grid};
pub use sds::{
    BoxedReward, Guidance, GuidanceOutput, GuidanceStats, POSTERIOR_STREAM, ScoredSamples,
    StepDraw, standard_normal,
};
pub use vsd::{LoRAUNet, VsdConfig, VsdLoRA, vsd_cameras};
pub use weighting::WeightStrategy;

use crate::models::{RewardError, SchedulerError};
use crate::weights::LoadError;

/// A guidance setting (or a combination of prior parts) that cannot work, naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid `{field}`: {reason}")]
pub struct ConfigError {
    /// The field at fault, as written in the config (`reward.strategy.k`, `t_min.start`).
    pub field: String,
    /// Why, with the values involved.
    pub reason: String,
}

impl ConfigError {
    /// An error for `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error with `prefix.` put before the field (a nested config's path).
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = format!("{prefix}.{}", self.field);
        self
    }
}

/// Why a guidance step (or building the guidance) failed.
#[derive(Debug, thiserror::Error)]
pub enum GuidanceError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The prompt could not be tokenized, or a model could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A timestep outside the schedule.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// The reward model failed.
    #[error(transparent)]
    Reward(#[from] RewardError),
    /// The rendered images or their views do not fit together.
    #[error("guidance input is invalid: {0}")]
    BadInput(String),
}
