//! The Stable Diffusion autoencoder (diffusers `models/autoencoders/autoencoder_kl.py` and
//! `vae.py`): [`AutoencoderKL`] with its [`Encoder`], [`Decoder`] and the posterior
//! [`DiagonalGaussianDistribution`], built from diffusers' `vae/config.json`
//! ([`AutoencoderKLConfig`]).
//!
//! Images are in `[-1, 1]`; latents as the UNet sees them are `scaling_factor * z` (SD:
//! 0.18215). Everything is ordinary burn ops, so on an autodiff backend the encoder is
//! differentiable: SDS backpropagates through [`AutoencoderKL::encode`].
//!
//! Old checkpoints (e.g. `sd-vae-ft-mse`) name the mid-block attention `query`/`key`/`value`/
//! `proj_attn` instead of `to_q`/`to_k`/`to_v`/`to_out.0`; diffusers renames them at load
//! time, and so does [`AutoencoderKL::load_weights`] ([`AutoencoderKL::load_options`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::tensor::{Distribution, Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use crate::weights::{LoadError, LoadOptions, LoadReport, load_safetensors_with};

use super::conv::Conv2d;
use super::group_norm::group_norm_silu;
use super::resnet::{conv1x1, conv3x3};
use super::unet_2d::{DiffusersConfigError, parse_validated, read_validated, reject_unsupported};
use super::unet_2d_blocks::{DownEncoderBlock2D, UNetMidBlock2D, UpDecoderBlock2D, VaeBlockConfig};

const VAE: &str = "AutoencoderKL";

/// Encoder stage classes this port implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DownEncoderBlockType {
    /// ResNets and an asymmetric-padding downsampler.
    DownEncoderBlock2D,
}

/// Decoder stage classes this port implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpDecoderBlockType {
    /// ResNets and a nearest-neighbour upsampler.
    UpDecoderBlock2D,
}

fn default_three() -> usize {
    3
}
fn default_four() -> usize {
    4
}
fn default_one() -> usize {
    1
}
fn default_true() -> bool {
    true
}
fn default_groups() -> usize {
    32
}
fn default_sample_size() -> usize {
    32
}
fn default_scaling_factor() -> f64 {
    0.18215
}
fn default_silu() -> String {
    "silu".into()
}
fn default_down() -> Vec<DownEncoderBlockType> {
    vec![DownEncoderBlockType::DownEncoderBlock2D]
}
fn default_up() -> Vec<UpDecoderBlockType> {
    vec![UpDecoderBlockType::UpDecoderBlock2D]
}
fn default_channels() -> Vec<usize> {
    vec![64]
}

/// diffusers' `AutoencoderKL` config, as found in `vae/config.json`. Field defaults are
/// diffusers' constructor defaults (which are NOT SD's: use [`sd`](Self::sd) or the file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderKLConfig {
    /// Image channels in.
    #[serde(default = "default_three")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "default_three")]
    pub out_channels: usize,
    /// Encoder stage classes, one per level.
    #[serde(default = "default_down")]
    pub down_block_types: Vec<DownEncoderBlockType>,
    /// Decoder stage classes, one per level.
    #[serde(default = "default_up")]
    pub up_block_types: Vec<UpDecoderBlockType>,
    /// Channels per level.
    #[serde(default = "default_channels")]
    pub block_out_channels: Vec<usize>,
    /// ResNets per encoder stage (decoder stages have one more).
    #[serde(default = "default_one")]
    pub layers_per_block: usize,
    /// Activation; only `"silu"`.
    #[serde(default = "default_silu")]
    pub act_fn: String,
    /// Latent channels.
    #[serde(default = "default_four")]
    pub latent_channels: usize,
    /// GroupNorm groups everywhere.
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    /// Image resolution the model was trained at (informational).
    #[serde(default = "default_sample_size")]
    pub sample_size: usize,
    /// Latents are multiplied by this before the UNet sees them.
    #[serde(default = "default_scaling_factor")]
    pub scaling_factor: f64,
    /// Latents are shifted by this before scaling (SD 3 / Flux; `None` for SD 1.x/2.x).
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Use the 1x1 `quant_conv` on the moments.
    #[serde(default = "default_true")]
    pub use_quant_conv: bool,
    /// Use the 1x1 `post_quant_conv` on the latent.
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
    /// Self-attention in both mid blocks.
    #[serde(default = "default_true")]
    pub mid_block_add_attention: bool,
    /// Every other field (`_class_name`, `force_upcast`, ...).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl Default for AutoencoderKLConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl AutoencoderKLConfig {
    /// The VAE of Stable Diffusion 1.x and 2.x, mirroring
    /// <https://huggingface.co/stabilityai/stable-diffusion-2-1-base/blob/main/vae/config.json>
    /// (identical in SD 1.5 and 2.1 but for `sample_size`; 83,653,863 parameters).
    pub fn sd() -> Self {
        use DownEncoderBlockType::DownEncoderBlock2D;
        use UpDecoderBlockType::UpDecoderBlock2D;
        Self {
            down_block_types: vec![DownEncoderBlock2D; 4],
            up_block_types: vec![UpDecoderBlock2D; 4],
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            sample_size: 512,
            ..Self::default()
        }
    }

    /// Parses a config from JSON text and validates it.
    pub fn from_json(text: &str) -> Result<Self, DiffusersConfigError> {
        parse_validated(VAE, text, Self::validate)
    }

    /// Reads `vae/config.json` and validates it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, DiffusersConfigError> {
        read_validated(VAE, path.as_ref(), Self::validate)
    }

    /// Checks that the config describes a model this port builds.
    pub fn validate(&self) -> Result<(), DiffusersConfigError> {
        let invalid = |field: &str, reason: String| DiffusersConfigError::Invalid {
            what: VAE,
            field: field.into(),
            reason,
        };
        let levels = self.block_out_channels.len();
        if levels == 0 {
            return Err(invalid("block_out_channels", "is empty".into()));
        }
        for (field, n) in [
            ("down_block_types", self.down_block_types.len()),
            ("up_block_types", self.up_block_types.len()),
        ] {
            if n != levels {
                return Err(invalid(
                    field,
                    format!("has {n} entries but block_out_channels has {levels}"),
                ));
            }
        }
        let groups = self.norm_num_groups;
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if groups == 0 || c == 0 || c % groups != 0 {
                return Err(invalid(
                    "norm_num_groups",
                    format!("{groups} groups do not divide block_out_channels[{i}] = {c}"),
                ));
            }
        }
        if self.act_fn != "silu" {
            return Err(invalid(
                "act_fn",
                format!("\"{}\" is not supported (only \"silu\")", self.act_fn),
            ));
        }
        for (field, n) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
            ("layers_per_block", self.layers_per_block),
        ] {
            if n == 0 {
                return Err(invalid(field, "must be positive".into()));
            }
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(invalid(
                "scaling_factor",
                format!("{} is not a positive number", self.scaling_factor),
            ));
        }
        reject_unsupported(
            VAE,
            &self.other,
            &[("latents_mean", serde_json::Value::Null)],
        )
    }

    /// Builds the autoencoder with burn's default (lazy) initialisation.
    ///
    /// # Panics
    /// If the config does not [`validate`](Self::validate).
    pub fn init<B: Backend>(&self, device: &B::Device) -> AutoencoderKL<B> {
        if let Err(e) = self.validate() {
            panic!("invalid VAE config: {e}");
        }
        let boc = &self.block_out_channels;
        let levels = boc.len();
        let last = levels - 1;
        let groups = self.norm_num_groups;
        let latent = self.latent_channels;
        let stage = |in_channels, out_channels| {
            VaeBlockConfig::new(in_channels, out_channels)
                .with_resnet_groups(groups)
                .with_add_attention(self.mid_block_add_attention)
        };
        let norm = |c| {
            GroupNormConfig::new(groups, c)
                .with_epsilon(1e-6)
                .init(device)
        };

        let encoder = Encoder {
            conv_in: conv3x3(self.in_channels, boc[0], device),
            down_blocks: (0..levels)
                .map(|i| {
                    let in_channels = if i == 0 { boc[0] } else { boc[i - 1] };
                    stage(in_channels, boc[i])
                        .with_num_layers(self.layers_per_block)
                        .with_add_resample(i < last)
                        .init_down_encoder(device)
                })
                .collect(),
            mid_block: stage(boc[last], boc[last]).init_mid(device),
            conv_norm_out: norm(boc[last]),
            // double_z: mean and log-variance
            conv_out: conv3x3(boc[last], 2 * latent, device),
        };

        let decoder = Decoder {
            conv_in: conv3x3(latent, boc[last], device),
            mid_block: stage(boc[last], boc[last]).init_mid(device),
            up_blocks: (0..levels)
                .map(|i| {
                    let level = last - i;
                    let prev = boc[(level + 1).min(last)];
                    stage(prev, boc[level])
                        .with_num_layers(self.layers_per_block + 1)
                        .with_add_resample(i < last)
                        .init_up_decoder(device)
                })
                .collect(),
            conv_norm_out: norm(boc[0]),
            conv_out: conv3x3(boc[0], self.out_channels, device),
        };

        AutoencoderKL {
            encoder,
            decoder,
            quant_conv: self
                .use_quant_conv
                .then(|| conv1x1(2 * latent, 2 * latent, device)),
            post_quant_conv: self
                .use_post_quant_conv
                .then(|| conv1x1(latent, latent, device)),
            scaling_factor: self.scaling_factor,
            shift_factor: self.shift_factor.unwrap_or(0.0),
        }
    }
}

/// Image to posterior moments: `conv_in`, down stages, mid block, norm, SiLU, `conv_out`.
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    /// Image to `block_out_channels[0]`.
    pub conv_in: Conv2d<B>,
    /// Stages, each halving the resolution but the last.
    pub down_blocks: Vec<DownEncoderBlock2D<B>>,
    /// Bottleneck with self-attention.
    pub mid_block: UNetMidBlock2D<B>,
    /// Final GroupNorm.
    pub conv_norm_out: GroupNorm<B>,
    /// To `2 * latent_channels` moments.
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> Encoder<B> {
    /// # Shapes
    /// - sample: `[batch, in_channels, H, W]`
    /// - output: `[batch, 2 * latent_channels, H / 2^(levels-1), W / 2^(levels-1)]`
    pub fn forward(&self, sample: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut sample = self.conv_in.forward(sample);
        for block in &self.down_blocks {
            sample = block.forward(sample);
        }
        let sample = self.mid_block.forward(sample);
        self.conv_out
            .forward(group_norm_silu(&self.conv_norm_out, sample))
    }
}

/// Latent to image: `conv_in`, mid block, up stages, norm, SiLU, `conv_out`.
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    /// Latent to `block_out_channels[-1]`.
    pub conv_in: Conv2d<B>,
    /// Bottleneck with self-attention.
    pub mid_block: UNetMidBlock2D<B>,
    /// Stages, deepest first, each doubling the resolution but the last.
    pub up_blocks: Vec<UpDecoderBlock2D<B>>,
    /// Final GroupNorm.
    pub conv_norm_out: GroupNorm<B>,
    /// To image channels.
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> Decoder<B> {
    /// # Shapes
    /// - z: `[batch, latent_channels, h, w]`
    /// - output: `[batch, out_channels, h * 2^(levels-1), w * 2^(levels-1)]`
    pub fn forward(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let sample = self.conv_in.forward(z);
        let mut sample = self.mid_block.forward(sample);
        for block in &self.up_blocks {
            sample = block.forward(sample);
        }
        self.conv_out
            .forward(group_norm_silu(&self.conv_norm_out, sample))
    }
}

/// The VAE posterior `N(mean, exp(logvar))` per latent element.
#[derive(Debug, Clone)]
pub struct DiagonalGaussianDistribution<B: Backend> {
    /// `[batch, latent_channels, h, w]`
    pub mean: Tensor<B, 4>,
    /// Log-variance, clamped to `[-30, 20]`; `[batch, latent_channels, h, w]`.
    pub logvar: Tensor<B, 4>,
    /// `exp(logvar / 2)`; `[batch, latent_channels, h, w]`.
    pub std: Tensor<B, 4>,
}

impl<B: Backend> DiagonalGaussianDistribution<B> {
    /// Splits moments into mean and log-variance along channels, as diffusers does.
    ///
    /// # Shapes
    /// - parameters: `[batch, 2 * latent_channels, h, w]`
    pub fn new(parameters: Tensor<B, 4>) -> Self {
        let mut halves = parameters.chunk(2, 1);
        let logvar = halves.pop().expect("two halves").clamp(-30.0, 20.0);
        let mean = halves.pop().expect("two halves");
        let std = (logvar.clone() * 0.5).exp();
        Self { mean, logvar, std }
    }

    /// `mean + std * eps` with `eps ~ N(0, 1)` from the backend's generator (differentiable in
    /// mean and std: the reparameterisation trick).
    ///
    /// # Shapes
    /// - output: `[batch, latent_channels, h, w]`
    pub fn sample(&self) -> Tensor<B, 4> {
        let eps = self.mean.random_like(Distribution::Normal(0.0, 1.0));
        self.sample_with(eps)
    }

    /// `mean + std * eps` with caller-provided noise.
    ///
    /// # Shapes
    /// - eps: `[batch, latent_channels, h, w]`
    /// - output: `[batch, latent_channels, h, w]`
    pub fn sample_with(&self, eps: Tensor<B, 4>) -> Tensor<B, 4> {
        self.mean.clone() + self.std.clone() * eps
    }

    /// The most likely latent (the mean).
    pub fn mode(&self) -> Tensor<B, 4> {
        self.mean.clone()
    }
}

/// The KL-regularised autoencoder of latent diffusion.
#[derive(Module, Debug)]
pub struct AutoencoderKL<B: Backend> {
    /// Image to moments.
    pub encoder: Encoder<B>,
    /// Latent to image.
    pub decoder: Decoder<B>,
    /// 1x1 convolution on the moments.
    pub quant_conv: Option<Conv2d<B>>,
    /// 1x1 convolution on the latent before decoding.
    pub post_quant_conv: Option<Conv2d<B>>,
    /// Latents are multiplied by this before the UNet sees them (`scaling_factor`).
    pub scaling_factor: f64,
    /// Latents are shifted by this before scaling (0 for SD 1.x/2.x).
    pub shift_factor: f64,
}

impl<B: Backend> AutoencoderKL<B> {
    /// The posterior of the latent given an image in `[-1, 1]`.
    ///
    /// # Shapes
    /// - x: `[batch, in_channels, H, W]`
    /// - posterior tensors: `[batch, latent_channels, H / 8, W / 8]` for SD
    pub fn encode(&self, x: Tensor<B, 4>) -> DiagonalGaussianDistribution<B> {
        let h = self.encoder.forward(x);
        let moments = match &self.quant_conv {
            Some(conv) => conv.forward(h),
            None => h,
        };
        DiagonalGaussianDistribution::new(moments)
    }

    /// The image (roughly in `[-1, 1]`) for an unscaled latent `z`.
    ///
    /// # Shapes
    /// - z: `[batch, latent_channels, h, w]`
    /// - output: `[batch, out_channels, 8h, 8w]` for SD
    pub fn decode(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(z),
            None => z,
        };
        self.decoder.forward(z)
    }

    /// Key remaps for `weights::load_safetensors_with`: the pre-0.14 diffusers names of the
    /// mid-block attention (`query`, `key`, `value`, `proj_attn`) to the current ones, as
    /// diffusers' `_convert_deprecated_attention_blocks` does. Current files are unaffected.
    pub fn load_options(&self) -> LoadOptions {
        [
            ("query", "to_q"),
            ("key", "to_k"),
            ("value", "to_v"),
            ("proj_attn", "to_out.0"),
        ]
        .into_iter()
        .fold(LoadOptions::default(), |options, (old, new)| {
            options.with_remap(
                format!(r"(mid_block\.attentions\.\d+)\.{old}\."),
                format!("${{1}}.{new}."),
            )
        })
    }

    /// [`LoadOptions`] that read the VAE of an original LDM checkpoint (`first_stage_model.*`
    /// in MVDream's or Stable Diffusion's `.pt`/`.ckpt`) into this model: the LDM names
    /// (`encoder.down.0.block.1.nin_shortcut`, `decoder.up.3.upsample.conv` counted from the
    /// deepest level, `mid.attn_1.q` as a 1x1 convolution) mapped to diffusers', as diffusers'
    /// `convert_ldm_vae_checkpoint` does; the UNet, text encoder and schedule set aside.
    pub fn ldm_load_options(&self) -> LoadOptions {
        let levels = self.decoder.up_blocks.len();
        let mut options = LoadOptions::default()
            .with_ignore(r"^(model\.diffusion_model|cond_stage_model|model_ema)\.")
            .with_ignore(super::mv_unet::LDM_SCHEDULE_KEYS)
            .with_remap(r"^first_stage_model\.", "")
            .with_remap(r"^(encoder|decoder)\.norm_out\.", "${1}.conv_norm_out.")
            .with_remap(
                r"^(encoder|decoder)\.mid\.block_1\.",
                "${1}.mid_block.resnets.0.",
            )
            .with_remap(
                r"^(encoder|decoder)\.mid\.block_2\.",
                "${1}.mid_block.resnets.1.",
            )
            .with_remap(
                r"^(encoder|decoder)\.mid\.attn_1\.norm\.",
                "${1}.mid_block.attentions.0.group_norm.",
            );
        for (from, to) in [
            ("q", "to_q"),
            ("k", "to_k"),
            ("v", "to_v"),
            ("proj_out", "to_out.0"),
        ] {
            options = options.with_remap(
                format!(r"^(encoder|decoder)\.mid\.attn_1\.{from}\."),
                format!("${{1}}.mid_block.attentions.0.{to}."),
            );
        }
        options = options
            .with_remap(
                r"^encoder\.down\.(\d+)\.block\.(\d+)\.",
                "encoder.down_blocks.${1}.resnets.${2}.",
            )
            .with_remap(
                r"^encoder\.down\.(\d+)\.downsample\.conv\.",
                "encoder.down_blocks.${1}.downsamplers.0.conv.",
            );
        // LDM counts the decoder's levels from the deepest, diffusers from the first run.
        for k in 0..levels {
            let up = levels - 1 - k;
            options = options
                .with_remap(
                    format!(r"^decoder\.up\.{k}\.block\.(\d+)\."),
                    format!("decoder.up_blocks.{up}.resnets.${{1}}."),
                )
                .with_remap(
                    format!(r"^decoder\.up\.{k}\.upsample\.conv\."),
                    format!("decoder.up_blocks.{up}.upsamplers.0.conv."),
                );
        }
        options
            .with_remap(r"\.nin_shortcut\.", ".conv_shortcut.")
            .with_squeeze_1x1(r"mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$")
    }

    /// Loads a diffusers `vae/diffusion_pytorch_model*.safetensors` (fp16 or fp32) with
    /// [`load_options`](Self::load_options); missing keys are an error.
    pub fn load_weights(
        self,
        files: &[PathBuf],
        device: &B::Device,
    ) -> Result<(Self, LoadReport), LoadError> {
        let options = self.load_options();
        load_safetensors_with(self, files, device, &options)
    }

    /// `(z - shift_factor) * scaling_factor`: a VAE latent as the UNet sees it.
    pub fn scale_latents(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        (z - self.shift_factor) * self.scaling_factor
    }

    /// The inverse of [`scale_latents`](Self::scale_latents).
    pub fn unscale_latents(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        latents / self.scaling_factor + self.shift_factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};

    type B = NdArray<f32>;

    fn tiny() -> AutoencoderKLConfig {
        AutoencoderKLConfig {
            block_out_channels: vec![8, 16],
            down_block_types: vec![DownEncoderBlockType::DownEncoderBlock2D; 2],
            up_block_types: vec![UpDecoderBlockType::UpDecoderBlock2D; 2],
            norm_num_groups: 4,
            ..AutoencoderKLConfig::default()
        }
    }

    #[test]
    fn shapes_round_trip() {
        let device = Default::default();
        let vae = tiny().init::<B>(&device);
        let x = Tensor::<B, 4>::random([2, 3, 8, 8], Distribution::Default, &device);
        let posterior = vae.encode(x);
        assert_eq!(posterior.mean.dims(), [2, 4, 4, 4]);
        assert_eq!(vae.decode(posterior.sample()).dims(), [2, 3, 8, 8]);
    }

    #[test]
    fn encoder_is_differentiable() {
        type A = Autodiff<B>;
        let device = Default::default();
        let vae = tiny().init::<A>(&device);
        let x = Tensor::<A, 4>::random([1, 3, 8, 8], Distribution::Default, &device).require_grad();
        let loss = vae.encode(x.clone()).mean.sum();
        let grads = loss.backward();
        let g = x.grad(&grads).expect("gradient reaches the image");
        assert_eq!(g.dims(), [1, 3, 8, 8]);
        assert!(g.abs().sum().into_scalar() > 0.0);
    }

    #[test]
    fn bad_config_names_the_field() {
        let e = AutoencoderKLConfig::from_json(r#"{"block_out_channels": [64, 128]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`down_block_types`"), "{e}");
        let e = AutoencoderKLConfig::from_json(r#"{"up_block_types": ["UpDecoderBlock3D"]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("UpDecoderBlock3D"), "{e}");
    }
}
