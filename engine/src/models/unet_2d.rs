//! The Stable Diffusion denoiser (diffusers `models/unets/unet_2d_condition.py`):
//! [`UNet2DConditionModel`], built from diffusers' `unet/config.json`
//! ([`UNet2DConditionModelConfig`]).
//!
//! Presets mirror the published configs: [`UNet2DConditionModelConfig::sd15`],
//! [`UNet2DConditionModelConfig::sd21_base`], [`UNet2DConditionModelConfig::sd21`].
//! Field names equal the checkpoint keys (`down_blocks.0.attentions.1.proj_in.weight`), so a
//! `diffusion_pytorch_model.safetensors` loads 1:1 through burn-store with the PyTorch adapter.
//! Block types and the transformers' projections are enums, and burn puts an enum's variant
//! name in the module path unless the store skips it (`skip_enum_variants`): the one place
//! that decides this is [`UNet2DConditionModel::load_options`], used by
//! [`UNet2DConditionModel::load_weights`].
//!
//! Only the features SD 1.x/2.x use are ported; a config that asks for another one (class
//! embeddings, added text/time embeddings, other block types, ...) is rejected with the field
//! named, never silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::tensor::{Bool, Int, Tensor, backend::Backend};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::weights::{LoadError, LoadOptions, LoadReport, load_safetensors_with};

use super::attention::{Projection, Transformer2DModel};
use super::conv::Conv2d;
use super::embeddings::{TimestepEmbedding, TimestepEmbeddingConfig, Timesteps, TimestepsConfig};
use super::group_norm::group_norm_silu;
use super::resnet::conv3x3;
use super::unet_2d_blocks::{UNetBlockConfig, UNetDownBlock, UNetMidBlock2DCrossAttn, UNetUpBlock};

/// A diffusers `config.json` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiffusersConfigError {
    /// The file could not be read.
    #[error("cannot read {what} config {path}: {source}")]
    Io {
        /// Which model's config.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid JSON for this config (wrong type, unknown block name, ...).
    #[error("{path}: not a valid {what} config: {source}")]
    Parse {
        /// Which model's config.
        what: &'static str,
        /// The file (`<memory>` for a string).
        path: PathBuf,
        /// What serde said, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A field has a value this port does not support or that is inconsistent.
    #[error("{what} config field `{field}`: {reason}")]
    Invalid {
        /// Which model's config.
        what: &'static str,
        /// The field at fault.
        field: String,
        /// Why.
        reason: String,
    },
}

/// Reads and parses a diffusers `config.json`.
pub(crate) fn read_config_json<T: DeserializeOwned>(
    what: &'static str,
    path: &Path,
) -> Result<T, DiffusersConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| DiffusersConfigError::Io {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| DiffusersConfigError::Parse {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Parses a diffusers config from JSON text (`<memory>` in errors) and checks it with
/// `validate`.
pub(crate) fn parse_validated<T: DeserializeOwned>(
    what: &'static str,
    text: &str,
    validate: impl FnOnce(&T) -> Result<(), DiffusersConfigError>,
) -> Result<T, DiffusersConfigError> {
    let config = serde_json::from_str(text).map_err(|source| DiffusersConfigError::Parse {
        what,
        path: "<memory>".into(),
        source,
    })?;
    validate(&config)?;
    Ok(config)
}

/// Reads a diffusers `config.json` and checks it with `validate`.
pub(crate) fn read_validated<T: DeserializeOwned>(
    what: &'static str,
    path: &Path,
    validate: impl FnOnce(&T) -> Result<(), DiffusersConfigError>,
) -> Result<T, DiffusersConfigError> {
    let config = read_config_json(what, path)?;
    validate(&config)?;
    Ok(config)
}

/// Fails on keys of `other` whose value differs from what this port implements.
pub(crate) fn reject_unsupported(
    what: &'static str,
    other: &BTreeMap<String, serde_json::Value>,
    supported: &[(&str, serde_json::Value)],
) -> Result<(), DiffusersConfigError> {
    for (field, allowed) in supported {
        if let Some(value) = other.get(*field)
            && value != allowed
            && !(allowed.is_null() && value.is_null())
        {
            return Err(DiffusersConfigError::Invalid {
                what,
                field: field.to_string(),
                reason: format!("{value} is not supported (only {allowed})"),
            });
        }
    }
    Ok(())
}

/// A config value given once for all levels or once per level (diffusers' `int | tuple`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    /// The same value at every level.
    One(T),
    /// One value per level, in down-block order.
    Many(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    /// The value at down level `i`.
    pub fn get(&self, i: usize) -> T {
        match self {
            Self::One(v) => v.clone(),
            Self::Many(v) => v[i].clone(),
        }
    }

    fn check_len(&self, field: &str, levels: usize) -> Result<(), DiffusersConfigError> {
        match self {
            Self::Many(v) if v.len() != levels => Err(DiffusersConfigError::Invalid {
                what: UNET,
                field: field.into(),
                reason: format!(
                    "has {} entries but block_out_channels has {levels}",
                    v.len()
                ),
            }),
            _ => Ok(()),
        }
    }
}

/// Down block classes this port implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DownBlockType {
    /// ResNets with spatial transformers.
    CrossAttnDownBlock2D,
    /// ResNets only.
    DownBlock2D,
}

/// Up block classes this port implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpBlockType {
    /// ResNets with spatial transformers.
    CrossAttnUpBlock2D,
    /// ResNets only.
    UpBlock2D,
}

const UNET: &str = "UNet2DConditionModel";

fn default_true() -> bool {
    true
}
fn default_four() -> usize {
    4
}
fn default_down_blocks() -> Vec<DownBlockType> {
    use DownBlockType::*;
    vec![
        CrossAttnDownBlock2D,
        CrossAttnDownBlock2D,
        CrossAttnDownBlock2D,
        DownBlock2D,
    ]
}
fn default_up_blocks() -> Vec<UpBlockType> {
    use UpBlockType::*;
    vec![
        UpBlock2D,
        CrossAttnUpBlock2D,
        CrossAttnUpBlock2D,
        CrossAttnUpBlock2D,
    ]
}
fn default_mid_block() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn default_block_out_channels() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}
fn default_layers_per_block() -> PerBlock<usize> {
    PerBlock::One(2)
}
fn default_one_per_block() -> PerBlock<usize> {
    PerBlock::One(1)
}
fn default_one() -> usize {
    1
}
fn default_one_f64() -> f64 {
    1.0
}
fn default_silu() -> String {
    "silu".into()
}
fn default_groups() -> usize {
    32
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn default_cross_attention_dim() -> PerBlock<usize> {
    PerBlock::One(1280)
}
fn default_attention_head_dim() -> PerBlock<usize> {
    PerBlock::One(8)
}

/// diffusers' `UNet2DConditionModel` config, as found in `unet/config.json`. Field defaults are
/// diffusers' constructor defaults; fields this port does not implement are kept in `other`
/// and rejected by [`validate`](Self::validate) unless they hold the default value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNet2DConditionModelConfig {
    /// Latent resolution the model was trained at (informational).
    #[serde(default)]
    pub sample_size: Option<usize>,
    /// Latent channels in.
    #[serde(default = "default_four")]
    pub in_channels: usize,
    /// Channels out (noise, `v` or `x0` prediction).
    #[serde(default = "default_four")]
    pub out_channels: usize,
    /// Map the input from `[0, 1]` to `[-1, 1]` first.
    #[serde(default)]
    pub center_input_sample: bool,
    /// Cosines first in the timestep embedding.
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    /// `downscale_freq_shift` of the timestep embedding.
    #[serde(default)]
    pub freq_shift: f64,
    /// Down block classes, one per level.
    #[serde(default = "default_down_blocks")]
    pub down_block_types: Vec<DownBlockType>,
    /// Only `"UNetMidBlock2DCrossAttn"` is implemented.
    #[serde(default = "default_mid_block")]
    pub mid_block_type: Option<String>,
    /// Up block classes, deepest level first.
    #[serde(default = "default_up_blocks")]
    pub up_block_types: Vec<UpBlockType>,
    /// Channels per level.
    #[serde(default = "default_block_out_channels")]
    pub block_out_channels: Vec<usize>,
    /// ResNets per down block (up blocks have one more).
    #[serde(default = "default_layers_per_block")]
    pub layers_per_block: PerBlock<usize>,
    /// Padding of the downsampling convolutions.
    #[serde(default = "default_one")]
    pub downsample_padding: usize,
    /// `output_scale_factor` of the mid block's ResNets.
    #[serde(default = "default_one_f64")]
    pub mid_block_scale_factor: f64,
    /// Activation; only `"silu"`.
    #[serde(default = "default_silu")]
    pub act_fn: String,
    /// GroupNorm groups everywhere.
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    /// GroupNorm epsilon of the ResNets and of `conv_norm_out`.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Width of the text embeddings (768 for SD 1.x, 1024 for SD 2.x).
    #[serde(default = "default_cross_attention_dim")]
    pub cross_attention_dim: PerBlock<usize>,
    /// Transformer blocks per spatial transformer.
    #[serde(default = "default_one_per_block")]
    pub transformer_layers_per_block: PerBlock<usize>,
    /// The NUMBER OF HEADS per level in SD configs (diffusers' historical naming: it is used as
    /// `num_attention_heads` when that field is absent).
    #[serde(default = "default_attention_head_dim")]
    pub attention_head_dim: PerBlock<usize>,
    /// Heads per level, when given explicitly.
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<usize>>,
    /// Linear `proj_in`/`proj_out` in the transformers (SD 2.x).
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Attention softmax in f32 under f16 (SD 2.1 768-v). burn's attention accumulates in the
    /// tensor's precision; kept for the record.
    #[serde(default)]
    pub upcast_attention: bool,
    /// `"projection"`: a [`TimestepEmbedding`] of `class_labels` (e.g. camera features, as
    /// MVDream conditions on the camera) added to the time embedding; `None`: no class input.
    /// diffusers' other kinds are not supported.
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// Width of the `class_labels` the `"projection"` class embedding takes.
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// Every other field of the file (diffusers bookkeeping such as `_class_name`, and
    /// features checked by `validate`).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl Default for UNet2DConditionModelConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl UNet2DConditionModelConfig {
    /// Stable Diffusion 1.5, mirroring
    /// <https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/blob/main/unet/config.json>
    /// (859,520,964 parameters).
    pub fn sd15() -> Self {
        Self {
            sample_size: Some(64),
            attention_head_dim: PerBlock::One(8),
            cross_attention_dim: PerBlock::One(768),
            ..Self::default()
        }
    }

    /// Stable Diffusion 2.1 base (512 px, epsilon prediction), mirroring
    /// <https://huggingface.co/stabilityai/stable-diffusion-2-1-base/blob/main/unet/config.json>
    /// (865,910,724 parameters).
    pub fn sd21_base() -> Self {
        Self {
            sample_size: Some(64),
            attention_head_dim: PerBlock::Many(vec![5, 10, 20, 20]),
            cross_attention_dim: PerBlock::One(1024),
            use_linear_projection: true,
            ..Self::default()
        }
    }

    /// Stable Diffusion 2.1 (768 px, v-prediction), mirroring
    /// <https://huggingface.co/stabilityai/stable-diffusion-2-1/blob/main/unet/config.json>:
    /// the 2.1-base architecture with `sample_size` 96 and `upcast_attention`.
    pub fn sd21() -> Self {
        Self {
            sample_size: Some(96),
            upcast_attention: true,
            ..Self::sd21_base()
        }
    }

    /// Parses a config from JSON text and validates it.
    pub fn from_json(text: &str) -> Result<Self, DiffusersConfigError> {
        parse_validated(UNET, text, Self::validate)
    }

    /// Reads `unet/config.json` and validates it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, DiffusersConfigError> {
        read_validated(UNET, path.as_ref(), Self::validate)
    }

    /// Heads per level (`num_attention_heads`, else `attention_head_dim`, as diffusers).
    pub fn heads(&self, level: usize) -> usize {
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .get(level)
    }

    /// The width of the class labels the model takes (`"projection"` class embedding), if any.
    pub fn class_labels_width(&self) -> Option<usize> {
        self.projection_class_embeddings_input_dim
            .filter(|_| self.class_embed_type.is_some())
    }

    /// Width of the time embedding, `4 * block_out_channels[0]`.
    pub fn time_embed_dim(&self) -> usize {
        4 * self.block_out_channels[0]
    }

    /// Checks that the config describes a model this port builds.
    pub fn validate(&self) -> Result<(), DiffusersConfigError> {
        let invalid = |field: &str, reason: String| DiffusersConfigError::Invalid {
            what: UNET,
            field: field.into(),
            reason,
        };
        let levels = self.block_out_channels.len();
        if levels == 0 {
            return Err(invalid("block_out_channels", "is empty".into()));
        }
        if self.down_block_types.len() != levels {
            return Err(invalid(
                "down_block_types",
                format!(
                    "has {} entries but block_out_channels has {levels}",
                    self.down_block_types.len()
                ),
            ));
        }
        if self.up_block_types.len() != levels {
            return Err(invalid(
                "up_block_types",
                format!(
                    "has {} entries but block_out_channels has {levels}",
                    self.up_block_types.len()
                ),
            ));
        }
        self.layers_per_block
            .check_len("layers_per_block", levels)?;
        self.cross_attention_dim
            .check_len("cross_attention_dim", levels)?;
        self.transformer_layers_per_block
            .check_len("transformer_layers_per_block", levels)?;
        self.attention_head_dim
            .check_len("attention_head_dim", levels)?;
        if let Some(heads) = &self.num_attention_heads {
            heads.check_len("num_attention_heads", levels)?;
        }
        if self.mid_block_type.as_deref() != Some("UNetMidBlock2DCrossAttn") {
            return Err(invalid(
                "mid_block_type",
                format!(
                    "{:?} is not supported (only \"UNetMidBlock2DCrossAttn\")",
                    self.mid_block_type
                ),
            ));
        }
        if self.act_fn != "silu" {
            return Err(invalid(
                "act_fn",
                format!("\"{}\" is not supported (only \"silu\")", self.act_fn),
            ));
        }
        if self.in_channels == 0 || self.out_channels == 0 {
            return Err(invalid(
                "in_channels",
                "in_channels and out_channels must be positive".into(),
            ));
        }
        let groups = self.norm_num_groups;
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if groups == 0 || c == 0 || c % groups != 0 {
                return Err(invalid(
                    "norm_num_groups",
                    format!("{groups} groups do not divide block_out_channels[{i}] = {c}"),
                ));
            }
            let heads = self.heads(i);
            if heads == 0 || c % heads != 0 {
                return Err(invalid(
                    "attention_head_dim",
                    format!("{heads} heads do not divide block_out_channels[{i}] = {c}"),
                ));
            }
        }
        if (1..levels).any(|i| self.cross_attention_dim.get(i) != self.cross_attention_dim.get(0)) {
            return Err(invalid(
                "cross_attention_dim",
                "must be the same at every level (one text encoder)".into(),
            ));
        }
        match (
            self.class_embed_type.as_deref(),
            self.projection_class_embeddings_input_dim,
        ) {
            (None, _) | (Some("projection"), Some(1..)) => {}
            (Some("projection"), _) => {
                return Err(invalid(
                    "projection_class_embeddings_input_dim",
                    "a positive width is needed with class_embed_type \"projection\"".into(),
                ));
            }
            (Some(other), _) => {
                return Err(invalid(
                    "class_embed_type",
                    format!("\"{other}\" is not supported (only \"projection\" or null)"),
                ));
            }
        }
        use serde_json::Value::{Bool as B, Null};
        reject_unsupported(
            UNET,
            &self.other,
            &[
                ("only_cross_attention", B(false)),
                ("dual_cross_attention", B(false)),
                ("num_class_embeds", Null),
                ("addition_embed_type", Null),
                ("encoder_hid_dim", Null),
                ("encoder_hid_dim_type", Null),
                ("time_cond_proj_dim", Null),
                ("time_embedding_dim", Null),
                ("time_embedding_act_fn", Null),
                ("timestep_post_act", Null),
                ("reverse_transformer_layers_per_block", Null),
                ("resnet_skip_time_act", B(false)),
                ("class_embeddings_concat", B(false)),
                ("time_embedding_type", "positional".into()),
                ("resnet_time_scale_shift", "default".into()),
                ("attention_type", "default".into()),
                ("conv_in_kernel", 3.into()),
                ("conv_out_kernel", 3.into()),
            ],
        )?;
        if let Some(v) = self.other.get("resnet_out_scale_factor")
            && v.as_f64() != Some(1.0)
        {
            return Err(invalid(
                "resnet_out_scale_factor",
                format!("{v} is not supported (only 1.0)"),
            ));
        }
        Ok(())
    }

    /// Builds the model with burn's default (lazy) initialisation: parameters are allocated on
    /// first use or replaced by loaded weights.
    ///
    /// # Panics
    /// If the config does not [`validate`](Self::validate); configs read with
    /// [`from_file`](Self::from_file) already have.
    pub fn init<B: Backend>(&self, device: &B::Device) -> UNet2DConditionModel<B> {
        if let Err(e) = self.validate() {
            panic!("invalid UNet config: {e}");
        }
        let boc = &self.block_out_channels;
        let levels = boc.len();
        let temb = self.time_embed_dim();
        let block = |level: usize, in_channels: usize, out_channels: usize| {
            UNetBlockConfig::new(in_channels, out_channels, temb)
                .with_resnet_eps(self.norm_eps)
                .with_resnet_groups(self.norm_num_groups)
                .with_num_attention_heads(self.heads(level))
                .with_cross_attention_dim(self.cross_attention_dim.get(level))
                .with_transformer_layers_per_block(self.transformer_layers_per_block.get(level))
                .with_use_linear_projection(self.use_linear_projection)
                .with_downsample_padding(self.downsample_padding)
        };

        // Down: level i maps boc[i-1] -> boc[i], downsampling except at the last level.
        let down_blocks = (0..levels)
            .map(|i| {
                let in_channels = if i == 0 { boc[0] } else { boc[i - 1] };
                let config = block(i, in_channels, boc[i])
                    .with_num_layers(self.layers_per_block.get(i))
                    .with_add_resample(i + 1 < levels);
                match self.down_block_types[i] {
                    DownBlockType::CrossAttnDownBlock2D => {
                        UNetDownBlock::CrossAttnDownBlock2D(config.init_cross_attn_down(device))
                    }
                    DownBlockType::DownBlock2D => {
                        UNetDownBlock::DownBlock2D(config.init_down(device))
                    }
                }
            })
            .collect();

        let last = levels - 1;
        let mid_block = block(last, boc[last], boc[last])
            .with_num_layers(1)
            .init_mid_cross_attn(device);
        let mid_block = scale_mid(mid_block, self.mid_block_scale_factor);

        // Up: i-th up block works at down level `level = last - i`.
        let up_blocks = (0..levels)
            .map(|i| {
                let level = last - i;
                let prev_output_channel = boc[(level + 1).min(last)];
                let in_channels = boc[level.saturating_sub(1)];
                let config = block(level, in_channels, boc[level])
                    .with_prev_output_channel(prev_output_channel)
                    .with_num_layers(self.layers_per_block.get(level) + 1)
                    .with_add_resample(i < last);
                match self.up_block_types[i] {
                    UpBlockType::CrossAttnUpBlock2D => {
                        UNetUpBlock::CrossAttnUpBlock2D(config.init_cross_attn_up(device))
                    }
                    UpBlockType::UpBlock2D => UNetUpBlock::UpBlock2D(config.init_up(device)),
                }
            })
            .collect();

        UNet2DConditionModel {
            conv_in: conv3x3(self.in_channels, boc[0], device),
            time_proj: TimestepsConfig::new(boc[0])
                .with_flip_sin_to_cos(self.flip_sin_to_cos)
                .with_downscale_freq_shift(self.freq_shift)
                .init(),
            time_embedding: TimestepEmbeddingConfig::new(boc[0], temb).init(device),
            class_embedding: self
                .class_labels_width()
                .map(|width| TimestepEmbeddingConfig::new(width, temb).init(device)),
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNormConfig::new(self.norm_num_groups, boc[0])
                .with_epsilon(self.norm_eps)
                .init(device),
            conv_out: conv3x3(boc[0], self.out_channels, device),
            center_input_sample: self.center_input_sample,
        }
    }
}

/// The mid block's ResNets divide their output by `mid_block_scale_factor`.
fn scale_mid<B: Backend>(
    mut mid: UNetMidBlock2DCrossAttn<B>,
    factor: f64,
) -> UNetMidBlock2DCrossAttn<B> {
    for resnet in &mut mid.resnets {
        resnet.output_scale_factor = factor;
    }
    mid
}

/// The conditional UNet: predicts noise (or `v`) from a noisy latent, a timestep and text
/// embeddings.
#[derive(Module, Debug)]
pub struct UNet2DConditionModel<B: Backend> {
    /// Latent to `block_out_channels[0]`.
    pub conv_in: Conv2d<B>,
    /// Sinusoidal timestep features (no parameters).
    pub time_proj: Timesteps,
    /// Timestep MLP.
    pub time_embedding: TimestepEmbedding<B>,
    /// MLP of the class labels (`class_embed_type = "projection"`), added to the time
    /// embedding.
    pub class_embedding: Option<TimestepEmbedding<B>>,
    /// Encoder levels.
    pub down_blocks: Vec<UNetDownBlock<B>>,
    /// Bottleneck.
    pub mid_block: UNetMidBlock2DCrossAttn<B>,
    /// Decoder levels, deepest first.
    pub up_blocks: Vec<UNetUpBlock<B>>,
    /// Final GroupNorm.
    pub conv_norm_out: GroupNorm<B>,
    /// `block_out_channels[0]` to output channels.
    pub conv_out: Conv2d<B>,
    /// Map the input from `[0, 1]` to `[-1, 1]` first.
    pub center_input_sample: bool,
}

impl<B: Backend> UNet2DConditionModel<B> {
    /// Predicts the model output for `sample` at `timesteps`, conditioned on
    /// `encoder_hidden_states`.
    ///
    /// # Shapes
    /// - sample: `[batch, in_channels, h, w]`
    /// - timesteps: `[batch]` or `[1]` (broadcast), float
    /// - encoder_hidden_states: `[batch, seq_text, cross_attention_dim]`
    /// - output: `[batch, out_channels, h, w]`
    pub fn forward(
        &self,
        sample: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        encoder_hidden_states: Tensor<B, 3>,
    ) -> Tensor<B, 4> {
        self.forward_with_class_labels(sample, timesteps, encoder_hidden_states, None)
    }

    /// Whether the model takes `class_labels` ([`forward_with_class_labels`]), and how wide.
    ///
    /// [`forward_with_class_labels`]: Self::forward_with_class_labels
    pub fn class_labels_width(&self) -> Option<usize> {
        self.class_embedding
            .as_ref()
            .map(|e| e.linear_1.weight.dims()[0])
    }

    /// The model with a `"projection"` class embedding of `width` labels whose output layer is
    /// zero, so it predicts exactly as before until trained (ControlNet's zero layers; how a
    /// trained prior learns camera conditioning without forgetting).
    pub fn with_zero_class_embedding(mut self, width: usize, device: &B::Device) -> Self {
        let temb = self.time_embedding.linear_2.weight.dims()[1];
        let mut embedding = TimestepEmbeddingConfig::new(width, temb).init(device);
        embedding.linear_2.weight = Param::from_tensor(Tensor::zeros([temb, temb], device));
        embedding.linear_2.bias = Some(Param::from_tensor(Tensor::zeros([temb], device)));
        self.class_embedding = Some(embedding);
        self
    }

    /// Every spatial transformer of the model, in no particular order.
    fn transformers_mut(&mut self) -> Vec<&mut Transformer2DModel<B>> {
        let mut all: Vec<&mut Transformer2DModel<B>> = Vec::new();
        for block in &mut self.down_blocks {
            if let UNetDownBlock::CrossAttnDownBlock2D(block) = block {
                all.extend(block.attentions.iter_mut());
            }
        }
        all.extend(self.mid_block.attentions.iter_mut());
        for block in &mut self.up_blocks {
            if let UNetUpBlock::CrossAttnUpBlock2D(block) = block {
                all.extend(block.attentions.iter_mut());
            }
        }
        all
    }

    /// The model with zero-started LoRA adapters of rank `rank` on every attention layer of its
    /// transformers (self- and cross-attention: diffusers' `attn_processors` that
    /// ProlificDreamer's LoRA replaces), so it predicts exactly as before until trained.
    /// `down` weights are drawn from `rng`.
    pub fn with_lora(mut self, rank: usize, rng: &mut impl rand::Rng, device: &B::Device) -> Self {
        for transformer in self.transformers_mut() {
            for block in &mut transformer.transformer_blocks {
                block.attn1.add_lora(rank, rng, device);
                if let Some(attn2) = &mut block.attn2 {
                    attn2.add_lora(rank, rng, device);
                }
            }
        }
        self
    }

    /// The model with MVDream's 3D self-attention: the batch is read as groups of
    /// `num_frames` consecutive views of one sample, whose tokens self-attend together
    /// (cross-attention and feed-forward stay per view). 1 (the default) is plain SD.
    pub fn with_num_frames(mut self, num_frames: usize) -> Self {
        for transformer in self.transformers_mut() {
            transformer.set_num_frames(num_frames);
        }
        self
    }

    /// Views per sample that self-attend together (see [`with_num_frames`](Self::with_num_frames)).
    pub fn num_frames(&self) -> usize {
        self.mid_block
            .attentions
            .first()
            .and_then(|a| a.transformer_blocks.first())
            .map_or(1, |b| b.num_frames.max(1))
    }

    /// [`forward`](Self::forward) with the class labels a `class_embed_type = "projection"`
    /// model is conditioned on (diffusers' `class_labels`).
    ///
    /// # Shapes
    /// - class_labels: `[batch, projection_class_embeddings_input_dim]`
    ///
    /// # Panics
    /// If the model has a class embedding and `class_labels` is `None`, or the other way
    /// round (diffusers ignores labels a model cannot take; a silent drop hides a wrong
    /// pipeline here).
    pub fn forward_with_class_labels(
        &self,
        sample: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        encoder_hidden_states: Tensor<B, 3>,
        class_labels: Option<Tensor<B, 2>>,
    ) -> Tensor<B, 4> {
        self.forward_with_embedding(sample, timesteps, encoder_hidden_states, class_labels, None)
    }

    /// [`forward_with_class_labels`](Self::forward_with_class_labels) with `extra_embedding`
    /// added to the time embedding too: a condition the model gained after training, such as
    /// VSD's camera embedding of its LoRA (threestudio sets it as the LoRA UNet's
    /// `class_embedding`; here it sits beside the model's own).
    ///
    /// # Shapes
    /// - extra_embedding: `[batch, time_embed_dim]` or `[1, time_embed_dim]` (broadcast)
    pub fn forward_with_embedding(
        &self,
        sample: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        encoder_hidden_states: Tensor<B, 3>,
        class_labels: Option<Tensor<B, 2>>,
        extra_embedding: Option<Tensor<B, 2>>,
    ) -> Tensor<B, 4> {
        let [batch, _, h, w] = sample.dims();
        // Upsamplers must hit the skip sizes when h, w are not multiples of 2^num_upsamplers.
        let factor = 1usize << (self.up_blocks.len().saturating_sub(1));
        let forward_upsample_size = h % factor != 0 || w % factor != 0;

        // 0. center input if necessary
        let sample = if self.center_input_sample {
            sample * 2.0 - 1.0
        } else {
            sample
        };

        // 1. time
        let timesteps = if timesteps.dims()[0] == 1 && batch > 1 {
            timesteps.expand([batch])
        } else {
            timesteps
        };
        // [batch, block_out_channels[0]], in the sample's float type (f16 runs, as diffusers)
        let t_emb = self.time_proj.forward(timesteps).cast(sample.dtype());
        // [batch, time_embed_dim]
        let mut emb = self.time_embedding.forward(t_emb);
        match (&self.class_embedding, class_labels) {
            (Some(embedding), Some(labels)) => {
                emb = emb + embedding.forward(labels.cast(sample.dtype()));
            }
            (None, None) => {}
            (Some(_), None) => panic!("this UNet has a class embedding: class_labels are needed"),
            (None, Some(_)) => panic!("this UNet has no class embedding to take class_labels"),
        }
        if let Some(extra) = extra_embedding {
            emb = emb + extra.cast(sample.dtype());
        }

        // 2. pre-process
        // [batch, block_out_channels[0], h, w]
        let mut sample = self.conv_in.forward(sample);

        // 3. down
        let context = Some(&encoder_hidden_states);
        let mut down_block_res_samples = vec![sample.clone()];
        for block in &self.down_blocks {
            let (out, res_samples) = block.forward(sample, &emb, context);
            sample = out;
            down_block_res_samples.extend(res_samples);
        }

        // 4. mid
        sample = self.mid_block.forward(sample, &emb, context);

        // 5. up
        let num_up = self.up_blocks.len();
        for (i, block) in self.up_blocks.iter().enumerate() {
            let n = block.num_resnets();
            let res_samples = down_block_res_samples.split_off(down_block_res_samples.len() - n);
            let upsample_size = (i + 1 < num_up && forward_upsample_size).then(|| {
                let [_, _, sh, sw] = down_block_res_samples
                    .last()
                    .expect("the conv_in output is always left")
                    .dims();
                [sh, sw]
            });
            sample = block.forward(sample, res_samples, &emb, context, upsample_size);
        }

        // 6. post-process
        let sample = group_norm_silu(&self.conv_norm_out, sample);
        self.conv_out.forward(sample)
    }

    /// Key remaps that let `weights::load_safetensors_with` (which keeps enum variant names in
    /// burn paths) find this model's tensors in a diffusers file: `down_blocks.{i}.` gains the
    /// block class (`down_blocks.0.CrossAttnDownBlock2D.`), `proj_in`/`proj_out` the projection
    /// kind (`proj_in.Linear.`). Missing keys are reported with these burn paths.
    pub fn load_options(&self) -> LoadOptions {
        let mut options = LoadOptions::default();
        for (i, block) in self.down_blocks.iter().enumerate() {
            let class = match block {
                UNetDownBlock::CrossAttnDownBlock2D(_) => "CrossAttnDownBlock2D",
                UNetDownBlock::DownBlock2D(_) => "DownBlock2D",
            };
            options = options.with_remap(
                format!(r"^down_blocks\.{i}\."),
                format!("down_blocks.{i}.{class}."),
            );
        }
        for (i, block) in self.up_blocks.iter().enumerate() {
            let class = match block {
                UNetUpBlock::CrossAttnUpBlock2D(_) => "CrossAttnUpBlock2D",
                UNetUpBlock::UpBlock2D(_) => "UpBlock2D",
            };
            options = options.with_remap(
                format!(r"^up_blocks\.{i}\."),
                format!("up_blocks.{i}.{class}."),
            );
        }
        // Every transformer is built with the same `use_linear_projection`.
        let kind = match self.mid_block.attentions.first().map(|a| &a.proj_in) {
            Some(Projection::Linear(_)) => "Linear",
            _ => "Conv",
        };
        options.with_remap(
            r"\.attentions\.(\d+)\.proj_(in|out)\.",
            format!(".attentions.${{1}}.proj_${{2}}.{kind}."),
        )
    }

    /// Loads a diffusers `diffusion_pytorch_model*.safetensors` (fp16 or fp32, sharded or
    /// not) with [`load_options`](Self::load_options); missing keys are an error.
    pub fn load_weights(
        self,
        files: &[PathBuf],
        device: &B::Device,
    ) -> Result<(Self, LoadReport), LoadError> {
        let options = self.load_options();
        load_safetensors_with(self, files, device, &options)
    }

    /// [`forward_with_class_labels`](Self::forward_with_class_labels) with one timestep for
    /// the whole batch.
    ///
    /// # Shapes
    /// - sample: `[batch, in_channels, h, w]`
    /// - encoder_hidden_states: `[batch, seq_text, cross_attention_dim]`
    /// - class_labels: `[batch, projection_class_embeddings_input_dim]`
    /// - output: `[batch, out_channels, h, w]`
    pub fn forward_timestep(
        &self,
        sample: Tensor<B, 4>,
        timestep: f32,
        encoder_hidden_states: Tensor<B, 3>,
        class_labels: Option<Tensor<B, 2>>,
    ) -> Tensor<B, 4> {
        let t = Tensor::<B, 1>::from_data([timestep], (&sample.device(), sample.dtype()));
        self.forward_with_class_labels(sample, t, encoder_hidden_states, class_labels)
    }
}

/// Counts a module's parameters from their declared shapes, without allocating the lazily
/// initialised ones (burn's `Module::num_params` materialises every tensor it counts).
pub fn num_params_lazy<B: Backend, M: Module<B>>(module: &M) -> usize {
    struct Count(usize);
    impl<B: Backend> ModuleVisitor<B> for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0 += param.lazy_shape().num_elements();
        }
        fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<B, D, Int>>) {
            self.0 += param.lazy_shape().num_elements();
        }
        fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<B, D, Bool>>) {
            self.0 += param.lazy_shape().num_elements();
        }
    }
    let mut count = Count(0);
    module.visit(&mut count);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_sd21_reads_as_published() {
        for c in [
            UNet2DConditionModelConfig::sd15(),
            UNet2DConditionModelConfig::sd21_base(),
            UNet2DConditionModelConfig::sd21(),
        ] {
            c.validate().unwrap();
        }
        // The published SD 2.1-base file, verbatim.
        let json = r#"{
          "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.10.0.dev0",
          "act_fn": "silu", "attention_head_dim": [5, 10, 20, 20],
          "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false,
          "cross_attention_dim": 1024,
          "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                               "CrossAttnDownBlock2D", "DownBlock2D"],
          "downsample_padding": 1, "dual_cross_attention": false, "flip_sin_to_cos": true,
          "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1,
          "norm_eps": 1e-05, "norm_num_groups": 32, "num_class_embeds": null,
          "only_cross_attention": false, "out_channels": 4, "sample_size": 64,
          "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                             "CrossAttnUpBlock2D"],
          "use_linear_projection": true
        }"#;
        let parsed = UNet2DConditionModelConfig::from_json(json).unwrap();
        let mut expected = UNet2DConditionModelConfig::sd21_base();
        expected.other = parsed.other.clone();
        assert_eq!(parsed, expected);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let err = |json: &str| {
            UNet2DConditionModelConfig::from_json(json)
                .unwrap_err()
                .to_string()
        };
        let e = err(r#"{"down_block_types": ["CrossAttnDownBlock2D", "SimpleDownBlock"]}"#);
        assert!(e.contains("SimpleDownBlock"), "{e}");
        let e = err(r#"{"block_out_channels": [32, 64]}"#);
        assert!(e.contains("`down_block_types`"), "{e}");
        let e = err(r#"{"class_embed_type": "timestep"}"#);
        assert!(e.contains("`class_embed_type`"), "{e}");
        let e = err(r#"{"class_embed_type": "projection"}"#);
        assert!(e.contains("`projection_class_embeddings_input_dim`"), "{e}");
        let e = err(r#"{"attention_head_dim": [5, 10]}"#);
        assert!(e.contains("`attention_head_dim`"), "{e}");
        let e = err(r#"{"norm_num_groups": 48}"#);
        assert!(e.contains("`norm_num_groups`"), "{e}");
        let e = UNet2DConditionModelConfig::from_file("/nonexistent/unet/config.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/unet/config.json"), "{e}");
    }
}
