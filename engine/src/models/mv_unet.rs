//! MVDream's multi-view denoiser (`MultiViewUNetModel` in bytedance/MVDream
//! `ldm/modules/diffusionmodules/openaimodel.py`): Stable Diffusion's UNet plus a camera MLP
//! added to the time embedding and 3D self-attention across the views of a sample.
//!
//! The architecture is the one [`UNet2DConditionModel`] already implements, so this file is
//! the translation layer, not a second UNet:
//! - [`MultiViewUNetModelConfig`] reads MVDream's LDM-style parameters (its yaml's
//!   `unet_config.params`, which the diffusers-style conversion `ashawkey/mvdream-sd2.1-diffusers`
//!   writes verbatim as `unet/config.json`) and builds the UNet: the camera MLP is the
//!   `"projection"` class embedding, [`UNet2DConditionModel::with_num_frames`] the 3D attention.
//! - [`MultiViewUNetModelConfig::ldm_key_remaps`] maps the checkpoint's LDM key names
//!   (`input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight`) onto the diffusers-named
//!   fields (`down_blocks.1.attentions.0...`), and [`load_mv_unet`] reads either the original
//!   torch pickle (`sd-v2.1-base-4view.pt`, keys under `model.diffusion_model.`) or the
//!   conversion's safetensors (the same names, no prefix).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::weights::{KeyRemap, LoadError, LoadOptions, LoadReport, load_safetensors_with};

use super::unet_2d::{
    DiffusersConfigError, DownBlockType, PerBlock, UNet2DConditionModel,
    UNet2DConditionModelConfig, UpBlockType, read_config_json, reject_unsupported,
};

const MV_UNET: &str = "MultiViewUNetModel";

/// Whether a `unet/config.json` describes MVDream's multi-view UNet (`_class_name`
/// `MultiViewUNetModel`, as the diffusers-style conversion writes it) rather than diffusers'
/// `UNet2DConditionModel`.
pub fn is_mv_unet_config(path: &Path) -> Result<bool, DiffusersConfigError> {
    #[derive(Deserialize)]
    struct ClassName {
        #[serde(rename = "_class_name")]
        class_name: Option<String>,
    }
    let name: ClassName = read_config_json(MV_UNET, path)?;
    Ok(name.class_name.as_deref() == Some(MV_UNET))
}

/// Prefix of the UNet's tensors in an original LDM checkpoint (`DiffusionWrapper`).
pub const LDM_UNET_PREFIX: &str = "model.diffusion_model.";

/// The diffusion schedule buffers an original LDM checkpoint keeps at its top level
/// (`LatentDiffusionInterface.register_schedule`).
pub const LDM_SCHEDULE_KEYS: &str = r"^(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_alphas_cumprod|sqrt_one_minus_alphas_cumprod|log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod|sqrt_recipm1_alphas_cumprod|posterior_variance|posterior_log_variance_clipped|posterior_mean_coef1|posterior_mean_coef2|logvar)$";

/// The VAE, text encoder and EMA weights of an original MVDream `.pt`: not part of the UNet.
const LDM_OTHER_MODELS: &str = r"^(first_stage_model|cond_stage_model|model_ema)\.";

fn default_true() -> bool {
    true
}
fn default_one() -> usize {
    1
}
fn default_minus_one() -> i64 {
    -1
}
fn default_frames() -> usize {
    4
}

/// MVDream's UNet parameters, as in its yaml (`model.params.unet_config.params`) and in the
/// diffusers-style conversion's `unet/config.json`. Features MVDream's released models do not
/// use (class labels, scale-shift norm, ImageDream's image prompt, ...) are kept in `other` and
/// rejected by [`validate`](Self::validate) unless they hold the value that turns them off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiViewUNetModelConfig {
    /// Latent side the model was trained at (MVDream: 32, i.e. 256 px images); unused by the
    /// network, it sets the prior's resolution (diffusers' `sample_size`).
    #[serde(default)]
    pub image_size: Option<usize>,
    /// Latent channels in.
    pub in_channels: usize,
    /// Channels out (noise prediction).
    pub out_channels: usize,
    /// Channels of the first level (`block_out_channels[0]`).
    pub model_channels: usize,
    /// Multiplier of `model_channels` per level.
    pub channel_mult: Vec<usize>,
    /// ResNets per level on the way down (one more on the way up).
    pub num_res_blocks: PerBlock<usize>,
    /// Downsampling factors (1, 2, 4, ...) of the levels that have spatial transformers.
    pub attention_resolutions: Vec<usize>,
    /// Heads per transformer (-1: derived from `num_head_channels`).
    #[serde(default = "default_minus_one")]
    pub num_heads: i64,
    /// Features per head (-1: derived from `num_heads`).
    #[serde(default = "default_minus_one")]
    pub num_head_channels: i64,
    /// Transformer blocks per spatial transformer.
    #[serde(default = "default_one")]
    pub transformer_depth: usize,
    /// Width of the text embeddings.
    pub context_dim: usize,
    /// Width of the flattened camera matrix the camera MLP takes (16); `None`: no camera input.
    #[serde(default)]
    pub camera_dim: Option<usize>,
    /// Linear `proj_in`/`proj_out` (SD 2.1 variant). The diffusers-style conversion drops this
    /// key because its model always uses linear projections, hence the default.
    #[serde(default = "default_true")]
    pub use_linear_in_transformer: bool,
    /// Views per sample that self-attend together. Not an upstream config key (upstream passes
    /// it to `forward`); MVDream was trained with 4.
    #[serde(default = "default_frames")]
    pub num_frames: usize,
    /// Every other key (bookkeeping such as `image_size`, `use_checkpoint`, `_class_name`, and
    /// features checked by `validate`).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl MultiViewUNetModelConfig {
    /// `sd-v2.1-base-4view` (MVDream's `configs/sd-v2-base.yaml`): SD 2.1-base's UNet with a
    /// 16-wide camera input.
    pub fn sd21_base_4view() -> Self {
        Self {
            image_size: Some(32),
            in_channels: 4,
            out_channels: 4,
            model_channels: 320,
            channel_mult: vec![1, 2, 4, 4],
            num_res_blocks: PerBlock::One(2),
            attention_resolutions: vec![4, 2, 1],
            num_heads: -1,
            num_head_channels: 64,
            transformer_depth: 1,
            context_dim: 1024,
            camera_dim: Some(16),
            use_linear_in_transformer: true,
            num_frames: 4,
            other: BTreeMap::new(),
        }
    }

    /// `sd-v1.5-4view` (MVDream's `configs/sd-v1.yaml`): SD 1.5's UNet (8 heads, 1x1-conv
    /// projections, 768-wide context) with a 16-wide camera input.
    pub fn sd15_4view() -> Self {
        Self {
            num_heads: 8,
            num_head_channels: -1,
            context_dim: 768,
            use_linear_in_transformer: false,
            ..Self::sd21_base_4view()
        }
    }

    /// The released MVDream UNet an original checkpoint holds, told from its tensor shapes
    /// (`shapes`: [`tensor_shapes`](crate::weights::tensor_shapes) of the file, the UNet under
    /// [`LDM_UNET_PREFIX`]). The cross-attention context width picks the preset:
    /// [`sd21_base_4view`](Self::sd21_base_4view) for 1024 (OpenCLIP ViT-H text embeddings),
    /// [`sd15_4view`](Self::sd15_4view) for 768 (CLIP ViT-L); the first convolution and the
    /// camera MLP are checked against it. Head counts and the training resolution are not in
    /// the weights, so any other layout is an error: such a checkpoint needs its config.
    pub fn from_ldm_shapes(
        shapes: &BTreeMap<String, Vec<usize>>,
    ) -> Result<Self, DiffusersConfigError> {
        let get = |name: &str| {
            shapes
                .get(&format!("{LDM_UNET_PREFIX}{name}"))
                .filter(|shape| shape.len() >= 2)
        };
        let Some(conv_in) = get("input_blocks.0.0.weight") else {
            return Err(Self::invalid(
                "model_channels",
                format!(
                    "no `{LDM_UNET_PREFIX}input_blocks.0.0.weight`: not an LDM UNet checkpoint"
                ),
            ));
        };
        let Some(camera) = get("camera_embed.0.weight") else {
            return Err(Self::invalid(
                "camera_dim",
                format!(
                    "no `{LDM_UNET_PREFIX}camera_embed.0.weight`: not a multi-view (MVDream) \
                     UNet (a plain Stable Diffusion checkpoint?)"
                ),
            ));
        };
        let context = shapes.iter().find_map(|(key, shape)| {
            (key.starts_with(LDM_UNET_PREFIX)
                && key.ends_with(".attn2.to_k.weight")
                && shape.len() == 2)
                .then(|| shape[1])
        });
        let preset = match context {
            Some(1024) => Self::sd21_base_4view(),
            Some(768) => Self::sd15_4view(),
            Some(other) => {
                return Err(Self::invalid(
                    "context_dim",
                    format!(
                        "{other} (the cross-attention width of the checkpoint): neither \
                         sd-v2.1-base-4view's 1024 nor sd-v1.5-4view's 768, and head counts \
                         are not in the weights: another layout needs its config"
                    ),
                ));
            }
            None => {
                return Err(Self::invalid(
                    "context_dim",
                    "the checkpoint has no cross-attention (`*.attn2.to_k.weight`)".into(),
                ));
            }
        };
        let found = (conv_in[0], conv_in[1], camera[1]);
        let expected = (
            preset.model_channels,
            preset.in_channels,
            preset.camera_dim.unwrap_or(0),
        );
        if found != expected {
            return Err(Self::invalid(
                "model_channels",
                format!(
                    "the checkpoint has (model_channels, in_channels, camera_dim) {found:?}, the \
                     released {}-wide layout {expected:?}: another layout needs its config",
                    preset.context_dim
                ),
            ));
        }
        Ok(preset)
    }

    /// Parses a `config.json` string.
    pub fn from_json(text: &str) -> Result<Self, DiffusersConfigError> {
        let config: Self =
            serde_json::from_str(text).map_err(|source| DiffusersConfigError::Parse {
                what: MV_UNET,
                path: PathBuf::from("<memory>"),
                source,
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a `unet/config.json` of the diffusers-style conversion.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, DiffusersConfigError> {
        let config: Self = read_config_json(MV_UNET, path.as_ref())?;
        config.validate()?;
        Ok(config)
    }

    fn invalid(field: &str, reason: String) -> DiffusersConfigError {
        DiffusersConfigError::Invalid {
            what: MV_UNET,
            field: field.into(),
            reason,
        }
    }

    /// Checks the parameters and rejects features this port does not implement.
    pub fn validate(&self) -> Result<(), DiffusersConfigError> {
        use serde_json::Value;
        reject_unsupported(
            MV_UNET,
            &self.other,
            &[
                ("num_classes", Value::Null),
                ("use_scale_shift_norm", Value::Bool(false)),
                ("resblock_updown", Value::Bool(false)),
                ("use_new_attention_order", Value::Bool(false)),
                ("num_attention_blocks", Value::Null),
                ("disable_self_attentions", Value::Null),
                ("disable_middle_self_attn", Value::Bool(false)),
                ("adm_in_channels", Value::Null),
                ("n_embed", Value::Null),
                ("dims", Value::from(2)),
                ("conv_resample", Value::Bool(true)),
                ("use_spatial_transformer", Value::Bool(true)),
                // `legacy` changes how head widths are derived; MVDream's models set it off.
                ("legacy", Value::Bool(false)),
                // ImageDream's image-prompt attention.
                ("ip_dim", Value::from(0)),
            ],
        )?;
        let levels = self.channel_mult.len();
        if levels == 0 {
            return Err(Self::invalid("channel_mult", "is empty".into()));
        }
        if let PerBlock::Many(v) = &self.num_res_blocks
            && v.len() != levels
        {
            return Err(Self::invalid(
                "num_res_blocks",
                format!("has {} entries but channel_mult has {levels}", v.len()),
            ));
        }
        let top = 1usize << (levels - 1);
        if let Some(bad) = self
            .attention_resolutions
            .iter()
            .find(|&&ds| !ds.is_power_of_two() || ds > top)
        {
            return Err(Self::invalid(
                "attention_resolutions",
                format!("{bad} is not one of the levels' downsampling factors 1..={top}"),
            ));
        }
        match (self.num_heads, self.num_head_channels) {
            (h, -1) if h > 0 => {}
            (-1, c) if c > 0 => {}
            (h, c) => {
                return Err(Self::invalid(
                    "num_heads",
                    format!("{h} with num_head_channels {c}: set exactly one of them (> 0)"),
                ));
            }
        }
        if self.num_frames == 0 {
            return Err(Self::invalid("num_frames", "must be at least 1".into()));
        }
        if self.camera_dim == Some(0) {
            return Err(Self::invalid("camera_dim", "must be at least 1".into()));
        }
        self.to_unet_config()?.validate().map_err(|e| match e {
            // Name the field as the user's file does where the translation is 1:1.
            DiffusersConfigError::Invalid { field, reason, .. } => {
                Self::invalid(&format!("{field} (as derived)"), reason)
            }
            other => other,
        })
    }

    /// Whether level `level` has spatial transformers (`2^level` in `attention_resolutions`).
    pub fn has_attention(&self, level: usize) -> bool {
        self.attention_resolutions.contains(&(1usize << level))
    }

    /// Heads of the transformers at `level` (the mid block uses the last level's).
    fn heads(&self, level: usize) -> usize {
        let channels = self.model_channels * self.channel_mult[level];
        if self.num_head_channels > 0 {
            channels / self.num_head_channels as usize
        } else {
            self.num_heads as usize
        }
    }

    /// The same network as a diffusers [`UNet2DConditionModelConfig`] (camera MLP as the
    /// `"projection"` class embedding).
    pub fn to_unet_config(&self) -> Result<UNet2DConditionModelConfig, DiffusersConfigError> {
        let levels = self.channel_mult.len();
        if self.num_head_channels > 0 {
            for level in 0..levels {
                let channels = self.model_channels * self.channel_mult[level];
                if channels % self.num_head_channels as usize != 0 {
                    return Err(Self::invalid(
                        "num_head_channels",
                        format!(
                            "{} does not divide level {level}'s {channels} channels",
                            self.num_head_channels
                        ),
                    ));
                }
            }
        }
        let down_block_types = (0..levels)
            .map(|l| {
                if self.has_attention(l) {
                    DownBlockType::CrossAttnDownBlock2D
                } else {
                    DownBlockType::DownBlock2D
                }
            })
            .collect();
        let up_block_types = (0..levels)
            .rev()
            .map(|l| {
                if self.has_attention(l) {
                    UpBlockType::CrossAttnUpBlock2D
                } else {
                    UpBlockType::UpBlock2D
                }
            })
            .collect();
        let heads: Vec<usize> = (0..levels).map(|l| self.heads(l)).collect();
        Ok(UNet2DConditionModelConfig {
            sample_size: self.image_size,
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            down_block_types,
            up_block_types,
            block_out_channels: self
                .channel_mult
                .iter()
                .map(|m| m * self.model_channels)
                .collect(),
            layers_per_block: self.num_res_blocks.clone(),
            cross_attention_dim: PerBlock::One(self.context_dim),
            transformer_layers_per_block: PerBlock::One(self.transformer_depth),
            attention_head_dim: PerBlock::Many(heads.clone()),
            num_attention_heads: Some(PerBlock::Many(heads)),
            use_linear_projection: self.use_linear_in_transformer,
            class_embed_type: self.camera_dim.map(|_| "projection".into()),
            projection_class_embeddings_input_dim: self.camera_dim,
            ..UNet2DConditionModelConfig::default()
        })
    }

    /// Builds the model with lazy initialisation (no weights allocated until loaded or used).
    ///
    /// # Panics
    /// If the config does not [`validate`](Self::validate) (configs read with
    /// [`from_file`](Self::from_file) already have).
    pub fn init<B: Backend>(&self, device: &B::Device) -> UNet2DConditionModel<B> {
        let config = self
            .to_unet_config()
            .unwrap_or_else(|e| panic!("invalid MultiViewUNetModel config: {e}"));
        config.init(device).with_num_frames(self.num_frames)
    }

    /// Renames from LDM checkpoint keys to the diffusers names of [`UNet2DConditionModel`],
    /// applied in order (block indices first, then the ResNets' inner names).
    pub fn ldm_key_remaps(&self) -> Vec<KeyRemap> {
        let levels = self.channel_mult.len();
        let mut remaps = Vec::new();
        let mut map = |from: String, to: String| remaps.push(KeyRemap::new(from, to));
        map(
            r"^time_embed\.0\.".into(),
            "time_embedding.linear_1.".into(),
        );
        map(
            r"^time_embed\.2\.".into(),
            "time_embedding.linear_2.".into(),
        );
        map(
            r"^camera_embed\.0\.".into(),
            "class_embedding.linear_1.".into(),
        );
        map(
            r"^camera_embed\.2\.".into(),
            "class_embedding.linear_2.".into(),
        );
        map(r"^input_blocks\.0\.0\.".into(), "conv_in.".into());
        map(r"^out\.0\.".into(), "conv_norm_out.".into());
        map(r"^out\.2\.".into(), "conv_out.".into());

        // input_blocks: per level, its ResNets (each with its transformer at `.1`), then the
        // downsampler (a conv called `op`) except at the last level.
        let mut index = 1;
        for level in 0..levels {
            for i in 0..self.num_res_blocks.get(level) {
                map(
                    format!(r"^input_blocks\.{index}\.0\."),
                    format!("down_blocks.{level}.resnets.{i}."),
                );
                map(
                    format!(r"^input_blocks\.{index}\.1\."),
                    format!("down_blocks.{level}.attentions.{i}."),
                );
                index += 1;
            }
            if level + 1 < levels {
                map(
                    format!(r"^input_blocks\.{index}\.0\.op\."),
                    format!("down_blocks.{level}.downsamplers.0.conv."),
                );
                index += 1;
            }
        }
        map(r"^middle_block\.0\.".into(), "mid_block.resnets.0.".into());
        map(
            r"^middle_block\.1\.".into(),
            "mid_block.attentions.0.".into(),
        );
        map(r"^middle_block\.2\.".into(), "mid_block.resnets.1.".into());

        // output_blocks: deepest level first, one ResNet more than on the way down; the last
        // one of each level but the first carries the upsampler after the transformer.
        let mut index = 0;
        for (up, level) in (0..levels).rev().enumerate() {
            let attention = self.has_attention(level);
            let count = self.num_res_blocks.get(level) + 1;
            for i in 0..count {
                map(
                    format!(r"^output_blocks\.{index}\.0\."),
                    format!("up_blocks.{up}.resnets.{i}."),
                );
                if attention {
                    map(
                        format!(r"^output_blocks\.{index}\.1\."),
                        format!("up_blocks.{up}.attentions.{i}."),
                    );
                }
                if level > 0 && i + 1 == count {
                    let at = if attention { 2 } else { 1 };
                    map(
                        format!(r"^output_blocks\.{index}\.{at}\.conv\."),
                        format!("up_blocks.{up}.upsamplers.0.conv."),
                    );
                }
                index += 1;
            }
        }

        // Inside every ResNet (`ResBlock` -> `ResnetBlock2D`).
        for (from, to) in [
            ("in_layers.0", "norm1"),
            ("in_layers.2", "conv1"),
            ("emb_layers.1", "time_emb_proj"),
            ("out_layers.0", "norm2"),
            ("out_layers.3", "conv2"),
            ("skip_connection", "conv_shortcut"),
        ] {
            map(
                format!(r"(resnets\.\d+\.){}\.", regex::escape(from)),
                format!("${{1}}{to}."),
            );
        }
        remaps
    }

    /// [`LoadOptions`] that read MVDream's UNet from an original checkpoint (prefix
    /// [`LDM_UNET_PREFIX`], the VAE/text encoder/schedule dropped) or from the conversion's
    /// safetensors (no prefix) into `unet`.
    pub fn load_options<B: Backend>(&self, unet: &UNet2DConditionModel<B>) -> LoadOptions {
        let mut options = LoadOptions::default()
            .with_ignore(LDM_OTHER_MODELS)
            .with_ignore(LDM_SCHEDULE_KEYS)
            .with_remap(format!("^{}", regex::escape(LDM_UNET_PREFIX)), "");
        options.remaps.extend(self.ldm_key_remaps());
        options.remaps.extend(unet.load_options().remaps);
        options
    }
}

/// Loads MVDream's UNet weights into a model built by [`MultiViewUNetModelConfig::init`]:
/// the original torch pickle (`sd-v2.1-base-4view.pt`) or the diffusers-style conversion's
/// `diffusion_pytorch_model*.safetensors`. Missing keys are an error that names the first ones
/// (a checkpoint of another model); unexpected keys are an error too, since a real MVDream file
/// has nothing the model does not use once the VAE, text encoder and schedule are set aside.
pub fn load_mv_unet<B: Backend>(
    config: &MultiViewUNetModelConfig,
    unet: UNet2DConditionModel<B>,
    files: &[PathBuf],
    device: &B::Device,
) -> Result<(UNet2DConditionModel<B>, LoadReport), LoadError> {
    let options = config
        .load_options(&unet)
        .with_unexpected(crate::weights::KeyPolicy::Error);
    load_safetensors_with(unet, files, device, &options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    #[test]
    fn presets_translate_to_the_sd_layouts() {
        let mv = MultiViewUNetModelConfig::sd21_base_4view();
        mv.validate().unwrap();
        let unet = mv.to_unet_config().unwrap();
        let sd = UNet2DConditionModelConfig::sd21_base();
        assert_eq!(unet.block_out_channels, sd.block_out_channels);
        assert_eq!(unet.down_block_types, sd.down_block_types);
        assert_eq!(unet.up_block_types, sd.up_block_types);
        for level in 0..4 {
            assert_eq!(unet.heads(level), sd.heads(level), "level {level}");
        }
        assert!(unet.use_linear_projection);
        assert_eq!(unet.projection_class_embeddings_input_dim, Some(16));

        let mv15 = MultiViewUNetModelConfig::sd15_4view();
        mv15.validate().unwrap();
        let unet15 = mv15.to_unet_config().unwrap();
        let sd15 = UNet2DConditionModelConfig::sd15();
        for level in 0..4 {
            assert_eq!(unet15.heads(level), sd15.heads(level), "level {level}");
        }
        assert!(!unet15.use_linear_projection);
    }

    #[test]
    fn the_published_conversion_config_reads() {
        // ashawkey/mvdream-sd2.1-diffusers `unet/config.json`: MVDream's yaml parameters with
        // `legacy`, `use_linear_in_transformer` and `use_spatial_transformer` dropped.
        let json = r#"{
          "_class_name": "MultiViewUNetModel", "_diffusers_version": "0.25.0",
          "attention_resolutions": [4, 2, 1], "camera_dim": 16, "channel_mult": [1, 2, 4, 4],
          "context_dim": 1024, "image_size": 32, "in_channels": 4, "model_channels": 320,
          "num_head_channels": 64, "num_res_blocks": 2, "out_channels": 4,
          "transformer_depth": 1, "use_checkpoint": false
        }"#;
        let mut parsed = MultiViewUNetModelConfig::from_json(json).unwrap();
        parsed.other.clear();
        assert_eq!(parsed, MultiViewUNetModelConfig::sd21_base_4view());
    }

    #[test]
    fn bad_configs_name_the_field() {
        let base = serde_json::to_value(MultiViewUNetModelConfig::sd21_base_4view()).unwrap();
        let with = |key: &str, value: serde_json::Value| {
            let mut v = base.clone();
            v[key] = value;
            MultiViewUNetModelConfig::from_json(&v.to_string())
                .unwrap_err()
                .to_string()
        };
        let e = with("ip_dim", 16.into());
        assert!(e.contains("`ip_dim`"), "{e}");
        let e = with("attention_resolutions", serde_json::json!([3]));
        assert!(e.contains("`attention_resolutions`"), "{e}");
        let e = with("num_heads", 8.into());
        assert!(e.contains("`num_heads`"), "{e}");
        let e = with("num_head_channels", 48.into());
        assert!(e.contains("`num_head_channels`"), "{e}");
        let e = with("num_frames", 0.into());
        assert!(e.contains("`num_frames`"), "{e}");
        let e = MultiViewUNetModelConfig::from_file("/nonexistent/unet/config.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/unet/config.json"), "{e}");
    }

    #[test]
    fn released_layouts_are_told_from_their_shapes() {
        let shapes = |context: usize, camera: Option<usize>| {
            let mut shapes = BTreeMap::new();
            let mut add = |key: &str, shape: Vec<usize>| {
                shapes.insert(format!("{LDM_UNET_PREFIX}{key}"), shape);
            };
            add("input_blocks.0.0.weight", vec![320, 4, 3, 3]);
            add(
                "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                vec![320, context],
            );
            if let Some(camera) = camera {
                add("camera_embed.0.weight", vec![1280, camera]);
            }
            shapes.insert(
                "cond_stage_model.model.positional_embedding".into(),
                vec![77, 1024],
            );
            shapes
        };
        let from = |s| MultiViewUNetModelConfig::from_ldm_shapes(&s);
        assert_eq!(
            from(shapes(1024, Some(16))).unwrap(),
            MultiViewUNetModelConfig::sd21_base_4view()
        );
        assert_eq!(
            from(shapes(768, Some(16))).unwrap(),
            MultiViewUNetModelConfig::sd15_4view()
        );
        let e = from(shapes(32, Some(16))).unwrap_err().to_string();
        assert!(e.contains("`context_dim`") && e.contains("32"), "{e}");
        let e = from(shapes(1024, None)).unwrap_err().to_string();
        assert!(e.contains("camera_embed"), "{e}");
        let e = from(shapes(1024, Some(12))).unwrap_err().to_string();
        assert!(e.contains("12"), "{e}");
    }

    #[test]
    fn full_size_has_4_frames_and_a_16_wide_camera() {
        let config = MultiViewUNetModelConfig::sd21_base_4view();
        let unet: UNet2DConditionModel<B> = config.init(&Default::default());
        assert_eq!(unet.num_frames(), 4);
        assert_eq!(unet.class_labels_width(), Some(16));
        assert_eq!(unet.clone().with_num_frames(1).num_frames(), 1);
    }
}
