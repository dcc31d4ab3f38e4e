//! The Tiny World models: the real architectures (CLIP, UNet2DConditionModel, DDIM) in tiny
//! configurations, sized by [`ModelScale`].

use serde::{Deserialize, Serialize};

use super::dataset::IMAGE_SIZE;
use super::vocab::{MAX_LENGTH, vocabulary};
use crate::models::clip::{CLIPConfig, HiddenAct};
use crate::models::clip_text::CLIPTextConfig;
use crate::models::clip_vision::CLIPVisionConfig;
use crate::models::schedulers::{BetaSchedule, DDIMSchedulerConfig};
use crate::models::unet_2d::{DownBlockType, PerBlock, UNet2DConditionModelConfig, UpBlockType};

/// How big the trained models are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelScale {
    /// The shipped models (trained on a GPU in minutes, or on the CPU in a couple of hours).
    Full,
    /// Smaller models for CPU-only training runs.
    Small,
    /// Minimal models for tests: the whole pipeline in seconds.
    Test,
}

/// A CLIP pair (text + vision towers) for 32 px images; `width` sets both towers.
fn clip_config(width: usize, layers: usize, heads: usize) -> CLIPConfig {
    CLIPConfig {
        text_config: CLIPTextConfig {
            vocab_size: vocabulary().len(),
            hidden_size: width,
            intermediate_size: 4 * width,
            projection_dim: 128,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            max_position_embeddings: MAX_LENGTH,
            hidden_act: HiddenAct::QuickGelu,
            layer_norm_eps: 1e-5,
            // `<|endoftext|>` is id 1: pool at its first position.
            eos_token_id: Some(1),
        },
        vision_config: CLIPVisionConfig {
            hidden_size: width,
            intermediate_size: 4 * width,
            projection_dim: 128,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_channels: 3,
            image_size: IMAGE_SIZE as usize,
            patch_size: 4,
            hidden_act: HiddenAct::QuickGelu,
            layer_norm_eps: 1e-5,
        },
        projection_dim: 128,
        logit_scale_init_value: 2.6592,
    }
}

impl ModelScale {
    /// The reward CLIP; its text tower is also the prior's frozen text encoder.
    pub fn reward_clip(self) -> CLIPConfig {
        match self {
            ModelScale::Full => clip_config(128, 4, 4),
            ModelScale::Small => clip_config(96, 3, 4),
            ModelScale::Test => clip_config(32, 1, 2),
        }
    }

    /// The judge CLIP: another width (and seed), never used as a reward.
    pub fn judge_clip(self) -> CLIPConfig {
        match self {
            ModelScale::Full => clip_config(192, 3, 6),
            ModelScale::Small => clip_config(128, 2, 4),
            ModelScale::Test => clip_config(32, 1, 2),
        }
    }

    /// The pixel-space UNet: 32x32x3 in and out, cross-attention on the text encoder's hidden
    /// states at the two coarser levels (attention at 32x32 would dominate the CPU budget).
    /// About 1 GFLOP per sample: burn 0.21 trains a 4 GFLOP version at ~1 TFLOP/s on an H100
    /// (1.5 s per batch of 128), too slow for a 10-minute budget, and every generation step on
    /// the CPU pays this forward several times.
    pub fn unet(self) -> UNet2DConditionModelConfig {
        let (channels, layers, heads) = match self {
            ModelScale::Full => (vec![32, 64, 128], 1, 4),
            ModelScale::Small => (vec![32, 64, 64], 1, 2),
            ModelScale::Test => (vec![32, 32], 1, 2),
        };
        let levels = channels.len();
        let mut down = vec![DownBlockType::DownBlock2D];
        down.resize(levels, DownBlockType::CrossAttnDownBlock2D);
        let mut up = vec![UpBlockType::CrossAttnUpBlock2D; levels - 1];
        up.push(UpBlockType::UpBlock2D);
        let text_width = self.reward_clip().text_config.hidden_size;
        let mut other = std::collections::BTreeMap::new();
        other.insert("_class_name".into(), "UNet2DConditionModel".into());
        UNet2DConditionModelConfig {
            sample_size: Some(IMAGE_SIZE as usize),
            in_channels: 3,
            out_channels: 3,
            down_block_types: down,
            up_block_types: up,
            block_out_channels: channels,
            layers_per_block: PerBlock::One(layers),
            norm_num_groups: 16,
            cross_attention_dim: PerBlock::One(text_width),
            attention_head_dim: PerBlock::One(heads),
            use_linear_projection: true,
            other,
            ..UNet2DConditionModelConfig::default()
        }
    }
}

/// The 1000-step DDPM schedule of pixel-space diffusion (linear betas 1e-4 .. 0.02, as in
/// Ho et al.), epsilon prediction, `x0` clipped to the image range when sampling.
pub fn scheduler() -> DDIMSchedulerConfig {
    let mut other = std::collections::BTreeMap::new();
    other.insert("_class_name".into(), "DDIMScheduler".into());
    DDIMSchedulerConfig {
        num_train_timesteps: 1000,
        beta_start: 1e-4,
        beta_end: 0.02,
        beta_schedule: BetaSchedule::Linear,
        clip_sample: true,
        set_alpha_to_one: true,
        other,
        ..DDIMSchedulerConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::unet_2d::num_params_lazy;
    use burn::backend::NdArray;

    #[test]
    fn configs_validate_and_are_tiny() {
        for scale in [ModelScale::Full, ModelScale::Small, ModelScale::Test] {
            let unet = scale.unet();
            unet.validate().unwrap();
            let model = unet.init::<NdArray>(&Default::default());
            let params = num_params_lazy::<NdArray, _>(&model);
            // "A few million parameters" at full scale, and under 16 MiB in f16.
            assert!(params < 8_000_000, "{scale:?}: {params}");
        }
        scheduler().validate().unwrap();
    }
}
