//! TAESD, the tiny distilled autoencoder (diffusers `models/autoencoders/autoencoder_tiny.py`,
//! `EncoderTiny`/`DecoderTiny` in `vae.py`, `AutoencoderTinyBlock` in `unet_2d_blocks.py`):
//! [`AutoencoderTiny`] built from diffusers' `config.json` ([`AutoencoderTinyConfig`]), e.g.
//! `madebyollin/taesd` for Stable Diffusion 1.x/2.x latents (2.4 M parameters against the KL
//! VAE's 83.7 M), cheap enough to decode every latent a reward scores.
//!
//! # Conventions
//! TAESD for SD 1.x/2.x has `scaling_factor` 1.0: its encoder outputs, and its decoder takes,
//! latents as the UNet sees them (the KL VAE's `z` times 0.18215), since diffusers' pipelines
//! hand any VAE `latents / scaling_factor`. [`AutoencoderTiny::decode`] therefore takes the same
//! UNet-space latents as the guidance's decode path (`DiffusionPrior::decode`) and returns images
//! in `[-1, 1]` like [`AutoencoderKL::decode`](super::vae::AutoencoderKL::decode); where that
//! path calls `vae.decode(vae.unscale_latents(z))`, this model's `decode(z)` goes.
//!
//! # Layout
//! diffusers keeps each half as one `nn.Sequential` (`encoder.layers.{k}`), whose indices also
//! count the parameter-free activations and upsamplers. Here each half is a list of stages
//! (a convolution and residual blocks), and [`AutoencoderTiny::load_options`] maps the
//! sequential indices onto them, computed from the stage sizes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::activation::{mish, relu, silu, tanh};
use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Deserializer, Serialize};

use crate::weights::{
    LoadError, LoadOptions, LoadReport, load_safetensors_with, read_json, weight_files,
};

use super::activations::gelu_exact;
use super::conv::{Conv2d, Conv2dConfig};
use super::resnet::conv3x3;
use super::unet_2d::{DiffusersConfigError, parse_validated, read_validated};

const TAESD: &str = "AutoencoderTiny";

/// The activation inside the blocks and after the decoder's first convolution (`act_fn`,
/// diffusers' `get_activation` names). The residual sum of every block always goes through a
/// ReLU, whatever this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TinyActivation {
    /// `max(x, 0)`: every published TAESD.
    #[default]
    #[serde(rename = "relu")]
    Relu,
    /// `x * sigmoid(x)`.
    #[serde(rename = "silu", alias = "swish")]
    Silu,
    /// Exact (erf) GELU, as `nn.GELU()`.
    #[serde(rename = "gelu")]
    Gelu,
    /// `x * tanh(softplus(x))`.
    #[serde(rename = "mish")]
    Mish,
}

impl TinyActivation {
    /// Apply the activation.
    pub fn forward<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Self::Relu => relu(x),
            Self::Silu => silu(x),
            Self::Gelu => gelu_exact(x),
            Self::Mish => mish(x),
        }
    }
}

fn default_three() -> usize {
    3
}
fn default_four() -> usize {
    4
}
fn default_two() -> usize {
    2
}
fn default_block_channels() -> Vec<usize> {
    vec![64; 4]
}
fn default_encoder_blocks() -> Vec<usize> {
    vec![1, 3, 3, 3]
}
fn default_decoder_blocks() -> Vec<usize> {
    vec![3, 3, 3, 1]
}
fn default_nearest() -> String {
    "nearest".into()
}
fn default_magnitude() -> f64 {
    3.0
}
fn default_latent_shift() -> f64 {
    0.5
}
fn default_scaling_factor() -> f64 {
    1.0
}
/// `null` (as some configs write an unused shift) reads as 0.
fn zero_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(0.0))
}

/// diffusers' `AutoencoderTiny` config (`config.json`). Field names and defaults are diffusers'
/// constructor's, and the defaults are `madebyollin/taesd`'s architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderTinyConfig {
    /// Image channels in.
    #[serde(default = "default_three")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "default_three")]
    pub out_channels: usize,
    /// Encoder width per stage (diffusers' encoder only runs with one width throughout).
    #[serde(default = "default_block_channels")]
    pub encoder_block_out_channels: Vec<usize>,
    /// Decoder width per stage (one width throughout, as the encoder's).
    #[serde(default = "default_block_channels")]
    pub decoder_block_out_channels: Vec<usize>,
    /// Activation inside the blocks and after the decoder's input convolution.
    #[serde(default)]
    pub act_fn: TinyActivation,
    /// Interpolation of the decoder's upsamplers; only `"nearest"`.
    #[serde(default = "default_nearest")]
    pub upsample_fn: String,
    /// Latent channels.
    #[serde(default = "default_four")]
    pub latent_channels: usize,
    /// Each decoder stage but the last enlarges the image by this factor.
    #[serde(default = "default_two")]
    pub upsampling_scaling_factor: usize,
    /// Blocks per encoder stage (each stage after the first starts with a stride-2 convolution).
    #[serde(default = "default_encoder_blocks")]
    pub num_encoder_blocks: Vec<usize>,
    /// Blocks per decoder stage.
    #[serde(default = "default_decoder_blocks")]
    pub num_decoder_blocks: Vec<usize>,
    /// Latents span `[-latent_magnitude, latent_magnitude]` in the `[0, 1]` packing of
    /// [`AutoencoderTiny::scale_latents_to_unit`].
    #[serde(default = "default_magnitude")]
    pub latent_magnitude: f64,
    /// Where latent 0 lands in that packing.
    #[serde(default = "default_latent_shift")]
    pub latent_shift: f64,
    /// Run in f32 under fp16 pipelines (informational).
    #[serde(default)]
    pub force_upcast: bool,
    /// UNet-space latents are `(decoder-space latents - shift_factor) * scaling_factor`
    /// (1.0 for TAESD: it works in UNet space itself).
    #[serde(default = "default_scaling_factor")]
    pub scaling_factor: f64,
    /// See `scaling_factor` (0.0 for TAESD).
    #[serde(default, deserialize_with = "zero_if_null")]
    pub shift_factor: f64,
    /// Every other field (`_class_name`, `_diffusers_version`, `block_out_channels`, ...).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl Default for AutoencoderTinyConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl AutoencoderTinyConfig {
    /// Parses a config from JSON text and validates it.
    pub fn from_json(text: &str) -> Result<Self, DiffusersConfigError> {
        parse_validated(TAESD, text, Self::validate)
    }

    /// Reads a `config.json` and validates it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, DiffusersConfigError> {
        read_validated(TAESD, path.as_ref(), Self::validate)
    }

    /// Checks that the config describes a model this port builds (and diffusers runs).
    pub fn validate(&self) -> Result<(), DiffusersConfigError> {
        let invalid = |field: &str, reason: String| DiffusersConfigError::Invalid {
            what: TAESD,
            field: field.into(),
            reason,
        };
        for (channels_field, channels, blocks_field, blocks) in [
            (
                "encoder_block_out_channels",
                &self.encoder_block_out_channels,
                "num_encoder_blocks",
                &self.num_encoder_blocks,
            ),
            (
                "decoder_block_out_channels",
                &self.decoder_block_out_channels,
                "num_decoder_blocks",
                &self.num_decoder_blocks,
            ),
        ] {
            if channels.is_empty() {
                return Err(invalid(channels_field, "is empty".into()));
            }
            if channels.len() != blocks.len() {
                return Err(invalid(
                    blocks_field,
                    format!(
                        "has {} entries but {channels_field} has {}",
                        blocks.len(),
                        channels.len()
                    ),
                ));
            }
            // Each stage's first convolution takes its own width as input, so a stage wider or
            // narrower than the one before cannot run (diffusers builds it and fails in forward).
            if channels.contains(&0) || channels.iter().any(|&c| c != channels[0]) {
                return Err(invalid(
                    channels_field,
                    format!("{channels:?}: stages must all have the same positive width"),
                ));
            }
        }
        for (field, n) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
            ("upsampling_scaling_factor", self.upsampling_scaling_factor),
        ] {
            if n == 0 {
                return Err(invalid(field, "must be positive".into()));
            }
        }
        if self.upsample_fn != "nearest" {
            return Err(invalid(
                "upsample_fn",
                format!(
                    "\"{}\" is not supported (only \"nearest\")",
                    self.upsample_fn
                ),
            ));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(invalid(
                "scaling_factor",
                format!("{} is not a positive number", self.scaling_factor),
            ));
        }
        if !(self.latent_magnitude.is_finite() && self.latent_magnitude > 0.0) {
            return Err(invalid(
                "latent_magnitude",
                format!("{} is not a positive number", self.latent_magnitude),
            ));
        }
        for (field, value) in [
            ("latent_shift", self.latent_shift),
            ("shift_factor", self.shift_factor),
        ] {
            if !value.is_finite() {
                return Err(invalid(field, format!("{value} is not a finite number")));
            }
        }
        Ok(())
    }

    /// Builds the autoencoder with burn's default (lazy) initialisation.
    ///
    /// # Panics
    /// If the config does not [`validate`](Self::validate).
    pub fn init<B: Backend>(&self, device: &B::Device) -> AutoencoderTiny<B> {
        if let Err(e) = self.validate() {
            panic!("invalid AutoencoderTiny config: {e}");
        }
        let act = self.act_fn;
        let blocks = |n: usize, channels: usize| {
            (0..n)
                .map(|_| AutoencoderTinyBlock::new(channels, act, device))
                .collect::<Vec<_>>()
        };

        let width = self.encoder_block_out_channels[0];
        let encoder = EncoderTiny {
            stages: self
                .num_encoder_blocks
                .iter()
                .enumerate()
                .map(|(i, &n)| EncoderTinyStage {
                    conv: if i == 0 {
                        conv3x3(self.in_channels, width, device)
                    } else {
                        Conv2dConfig::new([width, width], [3, 3])
                            .with_stride([2, 2])
                            .with_padding([1, 1, 1, 1])
                            .with_bias(false)
                            .init(device)
                    },
                    blocks: blocks(n, width),
                })
                .collect(),
            conv_out: conv3x3(width, self.latent_channels, device),
        };

        let width = self.decoder_block_out_channels[0];
        let last = self.num_decoder_blocks.len() - 1;
        let decoder = DecoderTiny {
            conv_in: conv3x3(self.latent_channels, width, device),
            stages: self
                .num_decoder_blocks
                .iter()
                .enumerate()
                .map(|(i, &n)| DecoderTinyStage {
                    blocks: blocks(n, width),
                    conv: if i == last {
                        conv3x3(width, self.out_channels, device)
                    } else {
                        Conv2dConfig::new([width, width], [3, 3])
                            .with_padding([1, 1, 1, 1])
                            .with_bias(false)
                            .init(device)
                    },
                })
                .collect(),
            upsampling_scaling_factor: self.upsampling_scaling_factor,
            act,
        };

        AutoencoderTiny {
            encoder,
            decoder,
            scaling_factor: self.scaling_factor,
            shift_factor: self.shift_factor,
            latent_magnitude: self.latent_magnitude,
            latent_shift: self.latent_shift,
        }
    }
}

/// `AutoencoderTinyBlock`: `relu(conv(act(conv(act(conv(x))))) + x)`, 3x3 convolutions of one
/// width. (diffusers' 1x1 `skip` for a width change never exists in a runnable TAESD.)
#[derive(Module, Debug)]
pub struct AutoencoderTinyBlock<B: Backend> {
    /// The three convolutions (diffusers' `conv.0`, `conv.2`, `conv.4`).
    pub conv: Vec<Conv2d<B>>,
    #[module(skip)]
    act: TinyActivation,
}

impl<B: Backend> AutoencoderTinyBlock<B> {
    fn new(channels: usize, act: TinyActivation, device: &B::Device) -> Self {
        Self {
            conv: (0..3)
                .map(|_| conv3x3(channels, channels, device))
                .collect(),
            act,
        }
    }

    /// # Shapes
    /// - x: `[batch, channels, h, w]` -> `[batch, channels, h, w]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut h = x.clone();
        for (i, conv) in self.conv.iter().enumerate() {
            if i > 0 {
                h = self.act.forward(h);
            }
            h = conv.forward(h);
        }
        relu(h + x)
    }
}

/// One encoder stage: a convolution (the input convolution for the first stage, a bias-free
/// stride-2 one after) and its blocks.
#[derive(Module, Debug)]
pub struct EncoderTinyStage<B: Backend> {
    /// The stage's convolution.
    pub conv: Conv2d<B>,
    /// Residual blocks.
    pub blocks: Vec<AutoencoderTinyBlock<B>>,
}

/// `EncoderTiny`: image in `[-1, 1]` to decoder-space latents.
#[derive(Module, Debug)]
pub struct EncoderTiny<B: Backend> {
    /// Stages; all but the first halve the resolution (rounding up).
    pub stages: Vec<EncoderTinyStage<B>>,
    /// To `latent_channels`.
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> EncoderTiny<B> {
    /// diffusers' `AutoencoderTiny.encode(x).latents`: the image is mapped to TAESD's `[0, 1]`
    /// first.
    ///
    /// # Shapes
    /// - x: `[batch, in_channels, H, W]`
    /// - output: `[batch, latent_channels, H / 2^(stages-1), W / 2^(stages-1)]` (rounded up)
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut h = (x + 1.0) * 0.5;
        for stage in &self.stages {
            h = stage.conv.forward(h);
            for block in &stage.blocks {
                h = block.forward(h);
            }
        }
        self.conv_out.forward(h)
    }
}

/// One decoder stage: blocks, then (all but the last stage) nearest-neighbour upsampling, then
/// a convolution (bias-free, except the last stage's, which outputs the image).
#[derive(Module, Debug)]
pub struct DecoderTinyStage<B: Backend> {
    /// Residual blocks.
    pub blocks: Vec<AutoencoderTinyBlock<B>>,
    /// The stage's convolution.
    pub conv: Conv2d<B>,
}

/// `DecoderTiny`: decoder-space latents to an image in `[-1, 1]`.
#[derive(Module, Debug)]
pub struct DecoderTiny<B: Backend> {
    /// Latent to the decoder's width (followed by the activation).
    pub conv_in: Conv2d<B>,
    /// Stages; each but the last enlarges the image by `upsampling_scaling_factor`.
    pub stages: Vec<DecoderTinyStage<B>>,
    /// The upsamplers' integer factor.
    pub upsampling_scaling_factor: usize,
    #[module(skip)]
    act: TinyActivation,
}

impl<B: Backend> DecoderTiny<B> {
    /// diffusers' `AutoencoderTiny.decode(z).sample`: the latent is soft-clamped to `(-3, 3)`
    /// by `3 tanh(z / 3)`, decoded to TAESD's `[0, 1]` and mapped to `[-1, 1]` (not clamped).
    ///
    /// # Shapes
    /// - z: `[batch, latent_channels, h, w]`
    /// - output: `[batch, out_channels, h f^(stages-1), w f^(stages-1)]`,
    ///   `f = upsampling_scaling_factor`
    pub fn forward(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let z = tanh(z / 3.0) * 3.0;
        let mut h = self.act.forward(self.conv_in.forward(z));
        let last = self.stages.len() - 1;
        for (i, stage) in self.stages.iter().enumerate() {
            for block in &stage.blocks {
                h = block.forward(h);
            }
            if i < last {
                h = upsample_nearest(h, self.upsampling_scaling_factor);
            }
            h = stage.conv.forward(h);
        }
        h * 2.0 - 1.0
    }
}

/// Nearest-neighbour upsampling by an integer factor: every pixel repeated `f x f` times, as a
/// broadcast (its backward is a sum), which is what torch's `nn.Upsample(scale_factor=f)`
/// computes for an integer `f`.
fn upsample_nearest<B: Backend>(x: Tensor<B, 4>, f: usize) -> Tensor<B, 4> {
    if f == 1 {
        return x;
    }
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, f, w, f])
        .reshape([b, c, h * f, w * f])
}

/// diffusers' `AutoencoderTiny` (TAESD): a deterministic encoder and decoder of plain
/// convolutions and ReLUs, with no posterior.
#[derive(Module, Debug)]
pub struct AutoencoderTiny<B: Backend> {
    /// Image to latents.
    pub encoder: EncoderTiny<B>,
    /// Latents to image.
    pub decoder: DecoderTiny<B>,
    /// `scaling_factor` of the config (1.0 for TAESD).
    pub scaling_factor: f64,
    /// `shift_factor` of the config (0.0 for TAESD).
    pub shift_factor: f64,
    /// `latent_magnitude` of the config.
    pub latent_magnitude: f64,
    /// `latent_shift` of the config.
    pub latent_shift: f64,
}

impl<B: Backend> AutoencoderTiny<B> {
    /// Loads a diffusers `AutoencoderTiny` folder (`config.json` and
    /// `diffusion_pytorch_model.safetensors`, e.g. `madebyollin/taesd`). Errors name the file at
    /// fault: the folder, a missing or unparsable `config.json`, missing weights, a weight file
    /// that does not fit the config.
    pub fn from_folder(
        dir: &Path,
        device: &B::Device,
    ) -> Result<(Self, AutoencoderTinyConfig), LoadError> {
        if !dir.is_dir() {
            return Err(LoadError::MissingFolder {
                path: dir.to_path_buf(),
            });
        }
        let path = dir.join("config.json");
        let config: AutoencoderTinyConfig = read_json(&path)?;
        config.validate().map_err(|e| LoadError::BadConfig {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let (model, _) = config
            .init::<B>(device)
            .load_weights(&weight_files(dir)?, device)?;
        Ok((model, config))
    }

    /// Loads diffusers-named weights (`encoder.layers.{k}...`, fp16 or fp32) with
    /// [`load_options`](Self::load_options); missing keys are an error.
    pub fn load_weights(
        self,
        files: &[PathBuf],
        device: &B::Device,
    ) -> Result<(Self, LoadReport), LoadError> {
        let options = self.load_options();
        load_safetensors_with(self, files, device, &options)
    }

    /// Key remaps from diffusers' sequential indices to this model's stages. The encoder's
    /// `layers` are, per stage, its convolution and blocks, then `conv_out`; the decoder's are
    /// `conv_in`, the activation, then per stage its blocks, an upsampler (not the last stage)
    /// and its convolution. A block's convolutions are `conv.0`, `conv.2`, `conv.4` (the odd
    /// indices are activations).
    pub fn load_options(&self) -> LoadOptions {
        let mut options = LoadOptions::default();
        let conv = |options: LoadOptions, half: &str, k: usize, to: String| {
            options.with_remap(
                format!(r"^{half}\.layers\.{k}\.(weight|bias)$"),
                format!("{half}.{to}.${{1}}"),
            )
        };
        let block = |mut options: LoadOptions, half: &str, k: usize, to: String| {
            for (file, ours) in [(0, 0), (2, 1), (4, 2)] {
                options = options.with_remap(
                    format!(r"^{half}\.layers\.{k}\.conv\.{file}\.(weight|bias)$"),
                    format!("{half}.{to}.conv.{ours}.${{1}}"),
                );
            }
            options
        };

        let mut k = 0;
        for (i, stage) in self.encoder.stages.iter().enumerate() {
            options = conv(options, "encoder", k, format!("stages.{i}.conv"));
            k += 1;
            for j in 0..stage.blocks.len() {
                options = block(options, "encoder", k, format!("stages.{i}.blocks.{j}"));
                k += 1;
            }
        }
        options = conv(options, "encoder", k, "conv_out".into());

        options = conv(options, "decoder", 0, "conv_in".into());
        // 1 is the activation after conv_in.
        let mut k = 2;
        let last = self.decoder.stages.len() - 1;
        for (i, stage) in self.decoder.stages.iter().enumerate() {
            for j in 0..stage.blocks.len() {
                options = block(options, "decoder", k, format!("stages.{i}.blocks.{j}"));
                k += 1;
            }
            if i < last {
                k += 1; // the upsampler
            }
            options = conv(options, "decoder", k, format!("stages.{i}.conv"));
            k += 1;
        }
        options
    }

    /// Images to latents as the UNet sees them: `(encoder(x) - shift_factor) * scaling_factor`,
    /// which for TAESD (`scaling_factor` 1, `shift_factor` 0) is diffusers'
    /// `AutoencoderTiny.encode(x).latents` itself and stands in for `AutoencoderKL`'s
    /// `scale_latents(posterior.sample())`. Deterministic (there is no posterior).
    ///
    /// # Shapes
    /// - images: `[batch, in_channels, H, W]`, RGB in `[-1, 1]`
    /// - output: `[batch, latent_channels, H / 8, W / 8]` for TAESD (rounded up)
    pub fn encode(&self, images: Tensor<B, 4>) -> Tensor<B, 4> {
        (self.encoder.forward(images) - self.shift_factor) * self.scaling_factor
    }

    /// Latents as the UNet sees them (SD 1.x/2.x: the KL VAE's `z` already multiplied by
    /// 0.18215, i.e. what `DiffusionPrior::decode` receives) to RGB images in `[-1, 1]`, not
    /// clamped, exactly the range and layout of [`AutoencoderKL::decode`]: map with
    /// `(x * 0.5 + 0.5).clamp(0, 1)` for `[0, 1]`. Computes `decoder(latents / scaling_factor +
    /// shift_factor)`, what diffusers' pipelines pass to `vae.decode`; for TAESD that is the
    /// latents unchanged, and the result diffusers' `AutoencoderTiny.decode(latents).sample`.
    ///
    /// [`AutoencoderKL::decode`]: super::vae::AutoencoderKL::decode
    ///
    /// # Shapes
    /// - latents: `[batch, latent_channels, h, w]`
    /// - output: `[batch, out_channels, 8h, 8w]` for TAESD
    pub fn decode(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        self.decoder
            .forward(latents / self.scaling_factor + self.shift_factor)
    }

    /// diffusers' `scale_latents`: encoder latents packed into `[0, 1]` (clamped), as TAESD
    /// stores them in 8-bit images. Not the UNet-space scaling of `AutoencoderKL`.
    pub fn scale_latents_to_unit(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        (latents / (2.0 * self.latent_magnitude) + self.latent_shift).clamp(0.0, 1.0)
    }

    /// diffusers' `unscale_latents`: the inverse of
    /// [`scale_latents_to_unit`](Self::scale_latents_to_unit) (up to its clamp).
    pub fn unscale_latents_from_unit(&self, packed: Tensor<B, 4>) -> Tensor<B, 4> {
        (packed - self.latent_shift) * (2.0 * self.latent_magnitude)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::Distribution;

    type B = NdArray<f32>;

    fn tiny() -> AutoencoderTinyConfig {
        AutoencoderTinyConfig::from_json(
            r#"{"encoder_block_out_channels": [4, 4, 4], "num_encoder_blocks": [1, 1, 2],
                "decoder_block_out_channels": [6, 6, 6], "num_decoder_blocks": [2, 1, 1]}"#,
        )
        .unwrap()
    }

    #[test]
    fn shapes_round_trip() {
        let device = Default::default();
        let taesd = tiny().init::<B>(&device);
        let x = Tensor::<B, 4>::random([2, 3, 12, 9], Distribution::Default, &device);
        let z = taesd.encode(x);
        assert_eq!(z.dims(), [2, 4, 3, 3]);
        assert_eq!(taesd.decode(z).dims(), [2, 3, 12, 12]);
    }

    #[test]
    fn decode_divides_by_the_scaling_factor() {
        let device = Default::default();
        let mut config = tiny();
        config.scaling_factor = 0.5;
        config.shift_factor = 0.25;
        let taesd = config.init::<B>(&device);
        let z = Tensor::<B, 4>::random([1, 4, 2, 3], Distribution::Default, &device);
        let direct = taesd.decoder.forward(z.clone() * 2.0 + 0.25);
        let err: f32 = (taesd.decode(z) - direct).abs().max().into_scalar();
        assert!(err < 1e-6, "{err}");
    }

    #[test]
    fn decoder_is_differentiable() {
        type A = Autodiff<B>;
        let device = Default::default();
        let taesd = tiny().init::<A>(&device);
        let z = Tensor::<A, 4>::random([1, 4, 2, 2], Distribution::Default, &device).require_grad();
        let grads = taesd.decode(z.clone()).sum().backward();
        let g = z.grad(&grads).expect("gradient reaches the latents");
        assert_eq!(g.dims(), [1, 4, 2, 2]);
        assert!(g.abs().sum().into_scalar() > 0.0);
    }

    #[test]
    fn bad_configs_name_the_field() {
        for (json, field) in [
            (r#"{"num_encoder_blocks": [1, 3]}"#, "`num_encoder_blocks`"),
            (
                r#"{"decoder_block_out_channels": [64, 64, 32, 64]}"#,
                "`decoder_block_out_channels`",
            ),
            (r#"{"upsample_fn": "bilinear"}"#, "`upsample_fn`"),
            (
                r#"{"upsampling_scaling_factor": 0}"#,
                "`upsampling_scaling_factor`",
            ),
        ] {
            let e = AutoencoderTinyConfig::from_json(json)
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{json}: {e}");
        }
        let e = AutoencoderTinyConfig::from_json(r#"{"act_fn": "tanh"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tanh"), "{e}");
        // What diffusers' save_pretrained writes besides its own fields is kept, not refused.
        let c = AutoencoderTinyConfig::from_json(
            r#"{"_class_name": "AutoencoderTiny", "block_out_channels": [64, 64, 64, 64],
                "shift_factor": null, "act_fn": "swish"}"#,
        )
        .unwrap();
        assert_eq!((c.shift_factor, c.act_fn), (0.0, TinyActivation::Silu));
        assert!(c.other.contains_key("block_out_channels"));
    }
}
