//! Pretrained model architectures ported from diffusers and transformers, one file per upstream
//! module, with field names equal to the checkpoint keys.

pub mod activations;
pub mod any_reward;
pub mod attention;
pub mod autoencoder_tiny;
pub mod bert_tokenizer;
pub mod blip_vit;
pub mod camera_utils;
pub mod clip;
pub mod clip_text;
pub mod clip_vision;
pub mod conv;
#[cfg(feature = "cpu")]
mod conv_host;
pub mod embeddings;
pub mod group_norm;
#[cfg(feature = "cpu")]
pub mod group_norm_host;
#[cfg(feature = "cpu")]
pub mod host_dispatch;
#[cfg(feature = "cpu")]
pub mod host_geglu;
#[cfg(feature = "cpu")]
pub mod host_matmul;
#[cfg(feature = "cpu")]
pub mod host_reshape;
#[cfg(feature = "cpu")]
pub mod host_softmax;
#[cfg(feature = "cpu")]
pub mod im2col_host;
pub mod image_reward;
pub mod lora;
pub mod matmul;
pub mod med_bert;
pub mod mv_unet;
pub mod reshape;
pub mod resize;
pub mod resnet;
pub mod reward;
pub mod schedulers;
pub mod tokenizer;
pub mod unet_2d;
pub mod unet_2d_blocks;
pub mod vae;

pub use any_reward::AnyReward;
pub use clip::{CLIPConfig, CLIPModel, HiddenAct};
pub use clip_text::{CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTextOutput};
pub use clip_vision::{
    CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection, CLIPVisionOutput,
};
pub use mv_unet::{MultiViewUNetModelConfig, load_mv_unet};
pub use reward::{AestheticPredictor, ClipScore, RewardError, RewardModel};
pub use schedulers::{DDIMScheduler, DDIMSchedulerConfig, PredictionType, SchedulerError};
pub use tokenizer::{CLIPTokenizer, TokenizedPrompt};
pub use unet_2d::{
    DiffusersConfigError, UNet2DConditionModel, UNet2DConditionModelConfig, num_params_lazy,
};
pub use vae::{AutoencoderKL, AutoencoderKLConfig, DiagonalGaussianDistribution};
