//! BLIP's image encoder (`models/BLIP/vit.py` in BLIP and ImageReward): a timm-style
//! [`VisionTransformer`] with a fused `qkv` projection, pre-norm blocks, exact GELU and
//! LayerNorm eps 1e-6. Field names equal the checkpoint keys under `visual_encoder.`
//! (`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.{i}.attn.qkv`, `norm`).
//!
//! Unlike CLIP's tower there is no pre-norm before the blocks and no pooling: the output is
//! every token after the final `norm`, which BLIP's text encoder cross-attends to.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use serde::{Deserialize, Serialize};

use super::activations::gelu_exact;
use super::conv::{Conv2d, Conv2dConfig};
use super::matmul::linear;
use crate::weights::{LoadError, read_json};

/// The arguments of BLIP's `VisionTransformer` that change its shape (their names; the
/// defaults are `create_vit('large', 224)`, ImageReward's encoder). Unknown keys are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlipVisionConfig {
    /// Input side in pixels.
    pub img_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Input channels.
    pub in_chans: usize,
    /// Width of the residual stream.
    pub embed_dim: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads per block.
    pub num_heads: usize,
    /// MLP width as a multiple of `embed_dim` (`int(embed_dim * mlp_ratio)`).
    pub mlp_ratio: f64,
    /// Whether `qkv` has a bias (BLIP: yes).
    pub qkv_bias: bool,
    /// LayerNorm epsilon (`partial(nn.LayerNorm, eps=1e-6)` upstream).
    pub layer_norm_eps: f64,
}

impl Default for BlipVisionConfig {
    fn default() -> Self {
        Self::vit_large(224)
    }
}

impl BlipVisionConfig {
    /// `create_vit('large', image_size)`: ViT-L/16 (width 1024, 24 blocks, 16 heads).
    pub fn vit_large(image_size: usize) -> Self {
        Self {
            img_size: image_size,
            patch_size: 16,
            in_chans: 3,
            embed_dim: 1024,
            depth: 24,
            num_heads: 16,
            mlp_ratio: 4.0,
            qkv_bias: true,
            layer_norm_eps: 1e-6,
        }
    }

    /// `create_vit('base', image_size)`: ViT-B/16 (width 768, 12 blocks, 12 heads).
    pub fn vit_base(image_size: usize) -> Self {
        Self {
            embed_dim: 768,
            depth: 12,
            num_heads: 12,
            ..Self::vit_large(image_size)
        }
    }

    /// Read a JSON file of `VisionTransformer` arguments (missing keys: ViT-L/16 at 224).
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let config: Self = read_json(path)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Check the sizes fit together; `path` names the file they came from.
    pub fn validate(&self, path: &Path) -> Result<(), LoadError> {
        let reason = if self.num_heads == 0 || !self.embed_dim.is_multiple_of(self.num_heads) {
            format!(
                "embed_dim {} is not divisible by num_heads {}",
                self.embed_dim, self.num_heads
            )
        } else if self.patch_size == 0 || !self.img_size.is_multiple_of(self.patch_size) {
            format!(
                "img_size {} is not a multiple of patch_size {}",
                self.img_size, self.patch_size
            )
        } else if self.mlp_ratio.is_nan() || self.mlp_ratio <= 0.0 {
            format!("mlp_ratio {} must be positive", self.mlp_ratio)
        } else {
            return Ok(());
        };
        Err(LoadError::BadConfig {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Patches per image (`patch_embed.num_patches`).
    pub fn num_patches(&self) -> usize {
        (self.img_size / self.patch_size).pow(2)
    }

    /// Width inside the MLPs: `int(embed_dim * mlp_ratio)`, as upstream truncates.
    pub fn mlp_hidden_dim(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    /// The encoder, parameters lazily initialised (nothing allocated until used or loaded).
    pub fn init<B: Backend>(&self, device: &B::Device) -> VisionTransformer<B> {
        let dim = self.embed_dim;
        let norm = || {
            LayerNormConfig::new(dim)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let blocks = (0..self.depth)
            .map(|_| Block {
                norm1: norm(),
                attn: Attention {
                    qkv: LinearConfig::new(dim, 3 * dim)
                        .with_bias(self.qkv_bias)
                        .init(device),
                    proj: LinearConfig::new(dim, dim).init(device),
                    num_heads: self.num_heads,
                },
                norm2: norm(),
                mlp: Mlp {
                    fc1: LinearConfig::new(dim, self.mlp_hidden_dim()).init(device),
                    fc2: LinearConfig::new(self.mlp_hidden_dim(), dim).init(device),
                },
            })
            .collect();
        let token = |n| {
            Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            }
            .init([1, n, dim], device)
        };
        VisionTransformer {
            patch_embed: PatchEmbed {
                proj: Conv2dConfig::new([self.in_chans, dim], [self.patch_size, self.patch_size])
                    .with_stride([self.patch_size, self.patch_size])
                    .init(device),
            },
            cls_token: token(1),
            pos_embed: token(self.num_patches() + 1),
            blocks,
            norm: norm(),
            img_size: self.img_size,
        }
    }
}

/// Patches to tokens: a `patch x patch` convolution with stride `patch` (timm's `PatchEmbed`).
#[derive(Module, Debug)]
pub struct PatchEmbed<B: Backend> {
    /// `[embed_dim, in_chans, patch, patch]` with bias.
    pub proj: Conv2d<B>,
}

/// Multi-head self-attention with one fused `qkv` projection (timm's `Attention`).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `dim -> 3 * dim`: queries, keys, values, in that order, heads contiguous in each.
    pub qkv: Linear<B>,
    /// Output projection.
    pub proj: Linear<B>,
    num_heads: usize,
}

impl<B: Backend> Attention<B> {
    /// # Shapes
    /// - `x`: `[batch, seq, dim]` -> `[batch, seq, dim]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, dim] = x.dims();
        let head_dim = dim / self.num_heads;
        // [batch, seq, 3 * dim] -> [3, batch, heads, seq, head_dim], as upstream's permute.
        let qkv = linear(&self.qkv, x)
            .reshape([batch, seq, 3, self.num_heads, head_dim])
            .permute([2, 0, 3, 1, 4]);
        let part = |i: usize| {
            qkv.clone()
                .narrow(0, i, 1)
                .reshape([batch, self.num_heads, seq, head_dim])
        };
        // Default scale head_dim^-0.5, as upstream's `qk_scale=None`.
        let out = attention(
            part(0),
            part(1),
            part(2),
            None,
            None,
            AttentionModuleOptions::default(),
        );
        linear(&self.proj, out.swap_dims(1, 2).reshape([batch, seq, dim]))
    }
}

/// The feed-forward block: `fc2(gelu(fc1(x)))`, exact (erf) GELU as `nn.GELU`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `dim -> hidden`.
    pub fc1: Linear<B>,
    /// `hidden -> dim`.
    pub fc2: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    /// # Shapes
    /// - `x`: `[batch, seq, dim]` -> `[batch, seq, dim]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        linear(&self.fc2, gelu_exact(linear(&self.fc1, x)))
    }
}

/// One pre-norm transformer block (timm's `Block`; drop path is off at inference).
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// Norm before attention.
    pub norm1: LayerNorm<B>,
    /// Self-attention.
    pub attn: Attention<B>,
    /// Norm before the MLP.
    pub norm2: LayerNorm<B>,
    /// Feed-forward.
    pub mlp: Mlp<B>,
}

impl<B: Backend> Block<B> {
    /// # Shapes
    /// - `x`: `[batch, seq, dim]` -> `[batch, seq, dim]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = x.clone() + self.attn.forward(self.norm1.forward(x));
        x.clone() + self.mlp.forward(self.norm2.forward(x))
    }
}

/// BLIP's `VisionTransformer` (`visual_encoder.*` in BLIP/ImageReward checkpoints).
#[derive(Module, Debug)]
pub struct VisionTransformer<B: Backend> {
    /// Patch embedding.
    pub patch_embed: PatchEmbed<B>,
    /// The class token, `[1, 1, dim]`.
    pub cls_token: Param<Tensor<B, 3>>,
    /// Learned positions of the class token and the patches, `[1, patches + 1, dim]`.
    pub pos_embed: Param<Tensor<B, 3>>,
    /// The blocks.
    pub blocks: Vec<Block<B>>,
    /// Final norm over every token.
    pub norm: LayerNorm<B>,
    img_size: usize,
}

impl<B: Backend> VisionTransformer<B> {
    /// The input side this encoder was configured for.
    pub fn img_size(&self) -> usize {
        self.img_size
    }

    /// # Shapes
    /// - `x`: `[batch, in_chans, img_size, img_size]`, CLIP-normalised ->
    ///   `[batch, patches + 1, dim]` (the class token first)
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 3> {
        let [_, _, h, w] = x.dims();
        assert!(
            h == self.img_size && w == self.img_size,
            "BLIP ViT takes {s}x{s} pixels, got {h}x{w} (preprocess first)",
            s = self.img_size
        );
        // 1. patches: [batch, dim, gh, gw] -> [batch, gh * gw, dim]
        let patches = self.patch_embed.proj.forward(x);
        let [batch, dim, gh, gw] = patches.dims();
        let patches = patches.reshape([batch, dim, gh * gw]).swap_dims(1, 2);
        // 2. class token first, then positions
        let cls = self.cls_token.val().expand([batch, 1, dim]);
        let mut x = Tensor::cat(vec![cls, patches], 1) + self.pos_embed.val();
        // 3. blocks, 4. final norm
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.norm.forward(x)
    }
}
