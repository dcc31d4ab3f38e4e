//! CLIP's vision tower: [`CLIPVisionModel`] and [`CLIPVisionModelWithProjection`], configured
//! by transformers' `CLIPVisionConfig` (a ViT: patch embedding, class token, pre-norm blocks).

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, LayerNorm, Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::clip::{
    CLIPConfig, CLIPEncoder, ClipCheckpoint, EncoderDims, HiddenAct, clip_load_options,
    read_tower_config,
};
use super::conv::{Conv2d, Conv2dConfig};
use crate::weights::{LoadError, LoadReport, load_safetensors_with, read_json, weight_files};

/// `config.json` of a CLIP vision tower (transformers' `CLIPVisionConfig`; defaults are its
/// defaults). Unknown keys are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CLIPVisionConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width inside the MLPs.
    pub intermediate_size: usize,
    /// Output width of `visual_projection`.
    pub projection_dim: usize,
    /// Number of blocks.
    pub num_hidden_layers: usize,
    /// Attention heads per block.
    pub num_attention_heads: usize,
    /// Input channels (3).
    pub num_channels: usize,
    /// Input side in pixels (224 for ViT-L/14).
    pub image_size: usize,
    /// Patch side in pixels (14 for ViT-L/14).
    pub patch_size: usize,
    /// MLP activation.
    pub hidden_act: HiddenAct,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
}

impl Default for CLIPVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: HiddenAct::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

impl CLIPVisionConfig {
    /// `openai/clip-vit-large-patch14`'s `vision_config`.
    pub fn clip_vit_l_14() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            projection_dim: 768,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            patch_size: 14,
            ..Self::default()
        }
    }

    /// Read a vision tower's `config.json`, or the `vision_config` of a `CLIPModel` one.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let (config, _): (Self, bool) = read_tower_config(path, "vision_config")?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), LoadError> {
        let reason =
            if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
                format!(
                    "hidden_size {} is not divisible by num_attention_heads {}",
                    self.hidden_size, self.num_attention_heads
                )
            } else if self.patch_size == 0 || self.image_size % self.patch_size != 0 {
                format!(
                    "image_size {} is not a multiple of patch_size {}",
                    self.image_size, self.patch_size
                )
            } else {
                return Ok(());
            };
        Err(LoadError::BadConfig {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Patches per image, plus one for the class token.
    pub fn num_positions(&self) -> usize {
        (self.image_size / self.patch_size).pow(2) + 1
    }

    /// The bare tower (`vision_model.*` in checkpoints), parameters lazily initialised.
    pub fn init_transformer<B: Backend>(&self, device: &B::Device) -> CLIPVisionTransformer<B> {
        let dims = EncoderDims {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            hidden_act: self.hidden_act,
            layer_norm_eps: self.layer_norm_eps,
        };
        let patch = self.patch_size;
        CLIPVisionTransformer {
            embeddings: CLIPVisionEmbeddings {
                class_embedding: Initializer::Normal {
                    mean: 0.0,
                    std: 1.0,
                }
                .init([self.hidden_size], device),
                patch_embedding: Conv2dConfig::new(
                    [self.num_channels, self.hidden_size],
                    [patch, patch],
                )
                .with_stride([patch, patch])
                .with_bias(false)
                .init(device),
                position_embedding: EmbeddingConfig::new(self.num_positions(), self.hidden_size)
                    .init(device),
            },
            pre_layrnorm: dims.layer_norm(device),
            encoder: dims.init_encoder(device),
            post_layernorm: dims.layer_norm(device),
            image_size: self.image_size,
        }
    }

    /// [`CLIPVisionModel`], parameters lazily initialised.
    pub fn init<B: Backend>(&self, device: &B::Device) -> CLIPVisionModel<B> {
        CLIPVisionModel {
            vision_model: self.init_transformer(device),
        }
    }

    /// [`CLIPVisionModelWithProjection`], parameters lazily initialised.
    pub fn init_with_projection<B: Backend>(
        &self,
        device: &B::Device,
    ) -> CLIPVisionModelWithProjection<B> {
        CLIPVisionModelWithProjection {
            vision_model: self.init_transformer(device),
            visual_projection: LinearConfig::new(self.hidden_size, self.projection_dim)
                .with_bias(false)
                .init(device),
        }
    }
}

/// Patch embedding, class token and learned positions (`CLIPVisionEmbeddings`).
#[derive(Module, Debug)]
pub struct CLIPVisionEmbeddings<B: Backend> {
    /// The class token, `[hidden]`.
    pub class_embedding: Param<Tensor<B, 1>>,
    /// `patch x patch` convolution with stride `patch`, no bias.
    pub patch_embedding: Conv2d<B>,
    /// `[patches + 1, hidden]`.
    pub position_embedding: Embedding<B>,
}

impl<B: Backend> CLIPVisionEmbeddings<B> {
    /// # Shapes
    /// - `pixel_values`: `[batch, 3, size, size]` -> `[batch, patches + 1, hidden]`
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 3> {
        // [batch, hidden, size/patch, size/patch]
        let patches = self.patch_embedding.forward(pixel_values);
        let [batch, hidden, gh, gw] = patches.dims();
        // [batch, patches, hidden]
        let patches = patches.reshape([batch, hidden, gh * gw]).swap_dims(1, 2);
        let class = self
            .class_embedding
            .val()
            .reshape([1, 1, hidden])
            .expand([batch, 1, hidden]);
        let x = Tensor::cat(vec![class, patches], 1);
        x + self.position_embedding.weight.val().unsqueeze::<3>()
    }
}

/// What the vision tower returns.
#[derive(Debug, Clone)]
pub struct CLIPVisionOutput<B: Backend> {
    /// After the last block (no final norm, as in transformers): `[batch, patches + 1, hidden]`.
    pub last_hidden_state: Tensor<B, 3>,
    /// The class token through `post_layernorm`: `[batch, hidden]`.
    pub pooler_output: Tensor<B, 2>,
}

/// The vision tower (`CLIPVisionTransformer`, `vision_model.*` in checkpoints).
#[derive(Module, Debug)]
pub struct CLIPVisionTransformer<B: Backend> {
    /// Patch + class + position embeddings.
    pub embeddings: CLIPVisionEmbeddings<B>,
    /// Norm before the blocks (the checkpoints' spelling).
    pub pre_layrnorm: LayerNorm<B>,
    /// The blocks.
    pub encoder: CLIPEncoder<B>,
    /// Norm of the pooled class token.
    pub post_layernorm: LayerNorm<B>,
    image_size: usize,
}

impl<B: Backend> CLIPVisionTransformer<B> {
    /// The input side this tower was configured for.
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// # Shapes
    /// - `pixel_values`: `[batch, 3, image_size, image_size]`, CLIP-normalised (see
    ///   [`clip_preprocess`](super::reward::clip_preprocess))
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> CLIPVisionOutput<B> {
        let [_, _, h, w] = pixel_values.dims();
        assert!(
            h == self.image_size && w == self.image_size,
            "CLIP vision tower takes {s}x{s} pixels, got {h}x{w} (resize first)",
            s = self.image_size
        );
        // 1. embeddings, 2. pre-norm, 3. blocks
        let x = self
            .pre_layrnorm
            .forward(self.embeddings.forward(pixel_values));
        let (last_hidden_state, _) = self.encoder.forward(x, false, usize::MAX);
        // 4. pool: the class token, normalised
        let [batch, _, hidden] = last_hidden_state.dims();
        let class = last_hidden_state
            .clone()
            .slice([0..batch, 0..1])
            .reshape([batch, hidden]);
        CLIPVisionOutput {
            last_hidden_state,
            pooler_output: self.post_layernorm.forward(class),
        }
    }
}

/// `CLIPVisionModel`: the vision tower alone.
#[derive(Module, Debug)]
pub struct CLIPVisionModel<B: Backend> {
    /// The tower.
    pub vision_model: CLIPVisionTransformer<B>,
}

impl<B: Backend> CLIPVisionModel<B> {
    /// Load a `CLIPVisionModel` folder, or the vision tower of a `CLIPModel` folder.
    pub fn from_folder(dir: &Path, device: &B::Device) -> Result<(Self, LoadReport), LoadError> {
        let path = dir.join("config.json");
        let (config, full): (CLIPVisionConfig, bool) = read_tower_config(&path, "vision_config")?;
        config.validate(&path)?;
        let mut options = clip_load_options(if full {
            ClipCheckpoint::VisionOfFull
        } else {
            ClipCheckpoint::Vision
        });
        if full {
            // A CLIPModel's visual_projection has no place in a CLIPVisionModel.
            options = options.with_ignore(r"^visual_projection\.");
        }
        load_safetensors_with(config.init(device), &weight_files(dir)?, device, &options)
    }

    /// See [`CLIPVisionTransformer::forward`].
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> CLIPVisionOutput<B> {
        self.vision_model.forward(pixel_values)
    }
}

/// `CLIPVisionModelWithProjection`: the vision tower and `visual_projection` into CLIP's shared
/// embedding space (what the LAION aesthetic head reads).
#[derive(Module, Debug)]
pub struct CLIPVisionModelWithProjection<B: Backend> {
    /// The tower.
    pub vision_model: CLIPVisionTransformer<B>,
    /// `hidden -> projection_dim`, no bias.
    pub visual_projection: Linear<B>,
}

impl<B: Backend> CLIPVisionModelWithProjection<B> {
    /// Load a `CLIPVisionModelWithProjection` folder, or the vision half of a `CLIPModel`
    /// folder (e.g. `openai/clip-vit-large-patch14`).
    pub fn from_folder(dir: &Path, device: &B::Device) -> Result<(Self, LoadReport), LoadError> {
        let path = dir.join("config.json");
        let (mut config, full): (CLIPVisionConfig, bool) =
            read_tower_config(&path, "vision_config")?;
        config.validate(&path)?;
        if full {
            let top: CLIPConfig = read_json(&path)?;
            config.projection_dim = top.projection_dim;
        }
        let options = clip_load_options(if full {
            ClipCheckpoint::VisionOfFull
        } else {
            ClipCheckpoint::Vision
        });
        load_safetensors_with(
            config.init_with_projection(device),
            &weight_files(dir)?,
            device,
            &options,
        )
    }

    /// The tower's outputs and `image_embeds` (`[batch, projection_dim]`, not normalised).
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> (CLIPVisionOutput<B>, Tensor<B, 2>) {
        let out = self.vision_model.forward(pixel_values);
        let embeds = self.visual_projection.forward(out.pooler_output.clone());
        (out, embeds)
    }
}
