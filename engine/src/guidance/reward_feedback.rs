//! Reward feedback: the reward model's own gradient on the rendered views, added to the
//! (Reward)SDS loss, as DreamReward's Reward3D feedback (Ye et al. 2024) and Dream Fields'
//! CLIP loss (Jain et al. 2022) do.
//!
//! RewardSDS (the paper) uses the reward only to weight noise samples, so the direction
//! always comes from the prior's score: where the prior's mode is wrong (Tiny World draws
//! "a red cube and a blue sphere" as the colour-swapped pair, docs/tiny_world.md), weighting
//! cannot leave it. The reward's gradient can. The loss is `-scale * mean_b reward(view_b)`,
//! in the reward's units (CLIPScore: 100 x cosine), so with one view a CLIPScore rising by
//! one point lowers it by `scale`.
//!
//! The model runs on the autodiff backend (gradients to the images, none to its weights);
//! [`crate::models::ClipScore::autodiff`] lifts the RewardSDS copy without copying weights.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::models::{RewardError, RewardModel};

/// How strongly the reward's gradient pulls, beside the prior's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardFeedbackConfig {
    /// Weight of `-mean reward` in the loss (1; Tiny World measurements in
    /// docs/tiny_world.md).
    pub scale: f32,
}

impl Default for RewardFeedbackConfig {
    fn default() -> Self {
        Self { scale: 1.0 }
    }
}

impl RewardFeedbackConfig {
    /// `scale` must be finite and positive (leave the section out to turn feedback off).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(ConfigError::new(
                "scale",
                format!(
                    "{} is not a finite number > 0 (leave reward_feedback out to turn it off)",
                    self.scale
                ),
            ));
        }
        Ok(())
    }
}

/// A differentiable reward model on the autodiff backend.
pub type BoxedFeedbackReward<B> = Box<dyn RewardModel<B> + Send>;

/// The feedback term of one step: `-scale * mean reward` and the mean reward itself.
pub fn feedback_loss<B: AutodiffBackend>(
    model: &dyn RewardModel<B>,
    config: &RewardFeedbackConfig,
    images: Tensor<B, 4>,
    prompt: &str,
) -> Result<(Tensor<B, 1>, f32), RewardError> {
    let mean = model.score(images, prompt)?.mean();
    let value: f32 = mean.clone().into_scalar().elem();
    Ok((mean * (-config.scale), value))
}
