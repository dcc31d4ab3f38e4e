//! Attention layers (diffusers `models/attention_processor.py`, `models/attention.py`,
//! `models/transformers/transformer_2d.py`): [`Attention`], [`FeedForward`] with [`GEGLU`],
//! [`BasicTransformerBlock`] and the spatial [`Transformer2DModel`].
//!
//! Scaled dot-product attention goes through burn's `module::attention` (fused where the
//! backend has a kernel) except on the CPU backends (`matmul::scaled_dot_product`).
//!
//! Key layout mirrors diffusers: `to_out` and `ff.net` are PyTorch `ModuleList`s holding a
//! dropout between layers, so they are burn tuples here (`to_out.0`, `ff.net.0.proj`,
//! `ff.net.2`). [`Transformer2DModel`]'s `proj_in`/`proj_out` are a 1x1 convolution (SD 1.x)
//! or a linear layer (SD 2.x) under the same key: the [`Projection`] enum, whose variant name
//! is not part of the key (load with burn-store's `skip_enum_variants(true)`).

use burn::config::Config;
use burn::module::Module;
use burn::nn::{
    Dropout, DropoutConfig, GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig, Linear,
    LinearConfig,
};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Tensor, backend::Backend};

use super::conv::Conv2d;
use super::group_norm::group_norm;
use super::lora::AttentionLoRA;
use super::matmul::{linear, linear_channels_first, matmul, on_host};
use super::reshape::reshape;
use super::resnet::conv1x1;

/// Settings of [`Attention`]; defaults are diffusers' `Attention` constructor defaults.
#[derive(Config, Debug, PartialEq)]
pub struct AttentionConfig {
    /// Query (and output) features.
    pub query_dim: usize,
    /// Key/value features of the context (`None`: self-attention, same as `query_dim`).
    #[config(default = "None")]
    pub cross_attention_dim: Option<usize>,
    /// Number of heads.
    #[config(default = 8)]
    pub heads: usize,
    /// Features per head.
    #[config(default = 64)]
    pub dim_head: usize,
    /// Bias on `to_q`, `to_k`, `to_v` (true only in the VAE's mid-block attention).
    #[config(default = false)]
    pub bias: bool,
    /// Bias on `to_out.0`.
    #[config(default = true)]
    pub out_bias: bool,
    /// A `group_norm` applied to the input first (VAE mid-block attention).
    #[config(default = "None")]
    pub norm_num_groups: Option<usize>,
    /// Epsilon of `group_norm`.
    #[config(default = 1e-5)]
    pub eps: f64,
    /// Add the input to the output (VAE mid-block attention).
    #[config(default = false)]
    pub residual_connection: bool,
    /// The output is divided by this.
    #[config(default = 1.0)]
    pub rescale_output_factor: f64,
}

impl AttentionConfig {
    /// Builds the layer with burn's default initialisation.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Attention<B> {
        let inner = self.heads * self.dim_head;
        let context = self.cross_attention_dim.unwrap_or(self.query_dim);
        let proj = |d_in| LinearConfig::new(d_in, inner).with_bias(self.bias);
        Attention {
            group_norm: self.norm_num_groups.map(|g| {
                GroupNormConfig::new(g, self.query_dim)
                    .with_epsilon(self.eps)
                    .init(device)
            }),
            to_q: proj(self.query_dim).init(device),
            to_k: proj(context).init(device),
            to_v: proj(context).init(device),
            to_out: (
                LinearConfig::new(inner, self.query_dim)
                    .with_bias(self.out_bias)
                    .init(device),
                DropoutConfig::new(0.0).init(),
            ),
            heads: self.heads,
            scale: (self.dim_head as f64).powf(-0.5),
            residual_connection: self.residual_connection,
            rescale_output_factor: self.rescale_output_factor,
            lora: None,
        }
    }
}

/// Multi-head (self or cross) attention with diffusers' key names.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Optional GroupNorm over the channels of the input (VAE mid block).
    pub group_norm: Option<GroupNorm<B>>,
    /// Query projection.
    pub to_q: Linear<B>,
    /// Key projection (from the context).
    pub to_k: Linear<B>,
    /// Value projection (from the context).
    pub to_v: Linear<B>,
    /// Output projection and (inactive) dropout: `to_out.0`, `to_out.1`.
    pub to_out: (Linear<B>, Dropout),
    /// Number of heads.
    pub heads: usize,
    /// Softmax scale, `dim_head^-0.5`.
    pub scale: f64,
    /// Add the input to the output.
    pub residual_connection: bool,
    /// The output is divided by this.
    pub rescale_output_factor: f64,
    /// Low-rank adapters of the four projections (VSD's LoRA); `None` in a loaded model.
    pub lora: Option<AttentionLoRA<B>>,
}

impl<B: Backend> Attention<B> {
    /// Attaches zero-started adapters of rank `rank` to the four projections (`down` drawn
    /// from `rng`).
    pub fn add_lora(&mut self, rank: usize, rng: &mut impl rand::Rng, device: &B::Device) {
        let projections = [&self.to_q, &self.to_k, &self.to_v, &self.to_out.0];
        self.lora = Some(AttentionLoRA::new(projections, rank, rng, device));
    }

    /// Attends from `hidden_states` to `encoder_hidden_states` (or to itself when `None`).
    ///
    /// # Shapes
    /// - hidden_states: `[batch, seq_q, query_dim]`
    /// - encoder_hidden_states: `[batch, seq_k, cross_attention_dim]`
    /// - output: `[batch, seq_q, query_dim]`
    pub fn forward(
        &self,
        hidden_states: Tensor<B, 3>,
        encoder_hidden_states: Option<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        let residual = hidden_states.clone();
        let hidden_states = match &self.group_norm {
            // GroupNorm over channels: [batch, seq, c] -> [batch, c, seq] and back.
            Some(norm) => group_norm(norm, hidden_states.swap_dims(1, 2)).swap_dims(1, 2),
            None => hidden_states,
        };
        let context = encoder_hidden_states.unwrap_or_else(|| hidden_states.clone());
        // [batch, heads, seq, dim_head]
        let (query, key, value) = match &self.lora {
            None => (
                linear(&self.to_q, hidden_states),
                linear(&self.to_k, context.clone()),
                linear(&self.to_v, context),
            ),
            Some(lora) => (
                linear(&self.to_q, hidden_states.clone()) + lora.to_q_lora.forward(hidden_states),
                linear(&self.to_k, context.clone()) + lora.to_k_lora.forward(context.clone()),
                linear(&self.to_v, context.clone()) + lora.to_v_lora.forward(context),
            ),
        };
        let query = self.split_heads(query);
        let key = self.split_heads(key);
        let value = self.split_heads(value);
        // [batch, heads, seq_q, dim_head]
        let attended = scaled_dot_product(query, key, value, self.scale);
        // [batch, seq_q, heads * dim_head]
        let [batch, heads, seq, dim_head] = attended.dims();
        let attended = attended
            .swap_dims(1, 2)
            .reshape([batch, seq, heads * dim_head]);
        let mut out = match &self.lora {
            None => linear(&self.to_out.0, attended),
            Some(lora) => {
                linear(&self.to_out.0, attended.clone()) + lora.to_out_lora.forward(attended)
            }
        };
        if self.residual_connection {
            out = out + residual;
        }
        if self.rescale_output_factor != 1.0 {
            out = out / self.rescale_output_factor;
        }
        out
    }

    /// Self-attention over the pixels of an image (the VAE mid block).
    ///
    /// # Shapes
    /// - hidden_states: `[batch, channels, h, w]`
    /// - output: `[batch, channels, h, w]`
    pub fn forward_image(&self, hidden_states: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, channels, h, w] = hidden_states.dims();
        // [batch, h * w, channels]
        let tokens = hidden_states
            .reshape([batch, channels, h * w])
            .swap_dims(1, 2);
        self.forward(tokens, None)
            .swap_dims(1, 2)
            .reshape([batch, channels, h, w])
    }

    /// `[batch, seq, heads * d] -> [batch, heads, seq, d]`.
    fn split_heads(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [batch, seq, inner] = x.dims();
        reshape(x, [batch, seq, self.heads, inner / self.heads]).swap_dims(1, 2)
    }
}

/// `softmax(q k^T * scale) v` over `[batch, heads, seq, dim_head]`: burn's `attention` (a
/// fused kernel where the backend has one), or on the CPU backends the same three steps with
/// the host matrix products, the scale folded into `q` (smaller than the scores).
fn scaled_dot_product<B: Backend>(
    query: Tensor<B, 4>,
    key: Tensor<B, 4>,
    value: Tensor<B, 4>,
    scale: f64,
) -> Tensor<B, 4> {
    if on_host::<B>() {
        let scores = matmul(query * scale, key.swap_dims(2, 3));
        #[cfg(feature = "cpu")]
        let probabilities =
            super::host_softmax::try_softmax(scores).unwrap_or_else(|scores| softmax(scores, 3));
        #[cfg(not(feature = "cpu"))]
        let probabilities = softmax(scores, 3);
        return matmul(probabilities, value);
    }
    let options = AttentionModuleOptions {
        scale: Some(scale),
        softcap: None,
        is_causal: false,
    };
    attention(query, key, value, None, None, options)
}

/// Gated GELU: `hidden * gelu(gate)` where `[hidden, gate] = proj(x)` (diffusers `GEGLU`).
#[derive(Module, Debug)]
pub struct GEGLU<B: Backend> {
    /// Projection to twice the output width.
    pub proj: Linear<B>,
}

impl<B: Backend> GEGLU<B> {
    /// # Shapes
    /// - hidden_states: `[batch, seq, dim_in]`
    /// - output: `[batch, seq, dim_out]`
    pub fn forward(&self, hidden_states: Tensor<B, 3>) -> Tensor<B, 3> {
        // [batch, seq, 2 * dim_out]
        let projected = linear(&self.proj, hidden_states);
        // The CPU backends gate in one host pass (`host_geglu.rs`).
        #[cfg(feature = "cpu")]
        let projected = match super::host_geglu::try_geglu(projected) {
            Ok(out) => return out,
            Err(projected) => projected,
        };
        let mut halves = projected.chunk(2, 2);
        let gate = halves.pop().expect("chunk(2) gives two halves");
        let hidden = halves.pop().expect("chunk(2) gives two halves");
        hidden * gelu(gate)
    }
}

/// Settings of [`FeedForward`] (GEGLU activation, as every SD transformer block).
#[derive(Config, Debug, PartialEq)]
pub struct FeedForwardConfig {
    /// Input and output features.
    pub dim: usize,
    /// Hidden width multiplier.
    #[config(default = 4)]
    pub mult: usize,
}

impl FeedForwardConfig {
    /// Builds the MLP with burn's default initialisation.
    pub fn init<B: Backend>(&self, device: &B::Device) -> FeedForward<B> {
        let inner = self.dim * self.mult;
        FeedForward {
            net: (
                GEGLU {
                    proj: LinearConfig::new(self.dim, 2 * inner).init(device),
                },
                DropoutConfig::new(0.0).init(),
                LinearConfig::new(inner, self.dim).init(device),
            ),
        }
    }
}

/// The transformer MLP: `net.2(net.0(x))` with a GEGLU first layer (diffusers `FeedForward`).
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    /// `net.0` GEGLU, `net.1` dropout (inactive), `net.2` output projection.
    pub net: (GEGLU<B>, Dropout, Linear<B>),
}

impl<B: Backend> FeedForward<B> {
    /// # Shapes
    /// - hidden_states: `[batch, seq, dim]`
    /// - output: `[batch, seq, dim]`
    pub fn forward(&self, hidden_states: Tensor<B, 3>) -> Tensor<B, 3> {
        linear(&self.net.2, self.net.0.forward(hidden_states))
    }
}

/// Settings of [`BasicTransformerBlock`] (the SD variant: pre-LayerNorm self-attention,
/// cross-attention, GEGLU feed-forward, no attention bias).
#[derive(Config, Debug, PartialEq)]
pub struct BasicTransformerBlockConfig {
    /// Features of the tokens.
    pub dim: usize,
    /// Number of heads.
    pub num_attention_heads: usize,
    /// Features per head.
    pub attention_head_dim: usize,
    /// Features of the text context (`None`: no cross-attention, no `norm2`/`attn2`).
    #[config(default = "None")]
    pub cross_attention_dim: Option<usize>,
    /// LayerNorm epsilon.
    #[config(default = 1e-5)]
    pub norm_eps: f64,
}

impl BasicTransformerBlockConfig {
    /// Builds the block with burn's default initialisation.
    pub fn init<B: Backend>(&self, device: &B::Device) -> BasicTransformerBlock<B> {
        let norm = || {
            LayerNormConfig::new(self.dim)
                .with_epsilon(self.norm_eps)
                .init(device)
        };
        let attn = |cross| {
            AttentionConfig::new(self.dim)
                .with_cross_attention_dim(cross)
                .with_heads(self.num_attention_heads)
                .with_dim_head(self.attention_head_dim)
                .init(device)
        };
        BasicTransformerBlock {
            norm1: norm(),
            attn1: attn(None),
            norm2: self.cross_attention_dim.map(|_| norm()),
            attn2: self.cross_attention_dim.map(|c| attn(Some(c))),
            norm3: norm(),
            ff: FeedForwardConfig::new(self.dim).init(device),
            num_frames: 1,
        }
    }
}

/// Self-attention, cross-attention to the text, feed-forward; each pre-normed and residual.
#[derive(Module, Debug)]
pub struct BasicTransformerBlock<B: Backend> {
    /// LayerNorm before self-attention.
    pub norm1: LayerNorm<B>,
    /// Self-attention.
    pub attn1: Attention<B>,
    /// LayerNorm before cross-attention.
    pub norm2: Option<LayerNorm<B>>,
    /// Cross-attention to `encoder_hidden_states`.
    pub attn2: Option<Attention<B>>,
    /// LayerNorm before the feed-forward.
    pub norm3: LayerNorm<B>,
    /// GEGLU feed-forward.
    pub ff: FeedForward<B>,
    /// Views per sample that self-attend together (MVDream's `BasicTransformerBlock3D`: the
    /// batch holds `batch / num_frames` samples of `num_frames` consecutive views; cross-attention
    /// and the feed-forward stay per view). 1: plain per-image self-attention.
    pub num_frames: usize,
}

impl<B: Backend> BasicTransformerBlock<B> {
    /// # Shapes
    /// - hidden_states: `[batch, seq, dim]`
    /// - encoder_hidden_states: `[batch, seq_text, cross_attention_dim]`
    /// - output: `[batch, seq, dim]`
    ///
    /// # Panics
    /// If `batch` is not a multiple of [`num_frames`](Self::num_frames) (callers check the
    /// number of views up front, where it can be reported as bad input).
    pub fn forward(
        &self,
        hidden_states: Tensor<B, 3>,
        encoder_hidden_states: Option<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        // 1. self-attention, over the tokens of all views of a sample together
        let [batch, seq, dim] = hidden_states.dims();
        let frames = self.num_frames.max(1);
        assert!(
            batch % frames == 0,
            "{batch} views are not whole groups of num_frames = {frames}"
        );
        let grouped = reshape(hidden_states, [batch / frames, frames * seq, dim]);
        let normed = self.norm1.forward(grouped.clone());
        let attended = self.attn1.forward(normed, None) + grouped;
        let mut hidden_states = reshape(attended, [batch, seq, dim]);
        // 2. cross-attention
        if let (Some(norm2), Some(attn2)) = (&self.norm2, &self.attn2) {
            let normed = norm2.forward(hidden_states.clone());
            hidden_states = attn2.forward(normed, encoder_hidden_states) + hidden_states;
        }
        // 3. feed-forward
        let normed = self.norm3.forward(hidden_states.clone());
        self.ff.forward(normed) + hidden_states
    }
}

/// `proj_in`/`proj_out` of [`Transformer2DModel`]: a 1x1 convolution applied to the image
/// (SD 1.x) or a linear layer applied to the tokens (`use_linear_projection`, SD 2.x).
#[derive(Module, Debug)]
pub enum Projection<B: Backend> {
    /// 1x1 convolution, weight `[out, in, 1, 1]`.
    Conv(Conv2d<B>),
    /// Linear layer, weight `[out, in]` in PyTorch layout.
    Linear(Linear<B>),
}

impl<B: Backend> Projection<B> {
    fn new(linear: bool, d_in: usize, d_out: usize, device: &B::Device) -> Self {
        if linear {
            Self::Linear(LinearConfig::new(d_in, d_out).init(device))
        } else {
            Self::Conv(conv1x1(d_in, d_out, device))
        }
    }

    /// Projects the channels of an image, whichever the variant.
    ///
    /// # Shapes
    /// - x: `[batch, d_in, h, w]`
    /// - output: `[batch, d_out, h, w]`
    pub fn forward_image(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Self::Conv(conv) => conv.forward(x),
            Self::Linear(layer) => {
                let [b, c, h, w] = x.dims();
                let tokens = reshape(x, [b, c, h * w]).swap_dims(1, 2);
                let out = linear_channels_first(layer, tokens);
                let d_out = out.dims()[1];
                reshape(out, [b, d_out, h, w])
            }
        }
    }
}

/// Settings of [`Transformer2DModel`] (continuous input, as in SD).
#[derive(Config, Debug, PartialEq)]
pub struct Transformer2DModelConfig {
    /// Number of heads.
    pub num_attention_heads: usize,
    /// Features per head; `heads * head_dim` is the inner width.
    pub attention_head_dim: usize,
    /// Channels of the image.
    pub in_channels: usize,
    /// Number of [`BasicTransformerBlock`]s (`transformer_layers_per_block`).
    #[config(default = 1)]
    pub num_layers: usize,
    /// Features of the text context.
    #[config(default = "None")]
    pub cross_attention_dim: Option<usize>,
    /// GroupNorm groups of `norm`.
    #[config(default = 32)]
    pub norm_num_groups: usize,
    /// Linear instead of 1x1-conv `proj_in`/`proj_out` (SD 2.x).
    #[config(default = false)]
    pub use_linear_projection: bool,
}

impl Transformer2DModelConfig {
    /// Builds the model with burn's default initialisation.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Transformer2DModel<B> {
        let inner = self.num_attention_heads * self.attention_head_dim;
        let linear = self.use_linear_projection;
        Transformer2DModel {
            // diffusers fixes this GroupNorm's epsilon at 1e-6.
            norm: GroupNormConfig::new(self.norm_num_groups, self.in_channels)
                .with_epsilon(1e-6)
                .init(device),
            proj_in: Projection::new(linear, self.in_channels, inner, device),
            transformer_blocks: (0..self.num_layers)
                .map(|_| {
                    BasicTransformerBlockConfig::new(
                        inner,
                        self.num_attention_heads,
                        self.attention_head_dim,
                    )
                    .with_cross_attention_dim(self.cross_attention_dim)
                    .init(device)
                })
                .collect(),
            proj_out: Projection::new(linear, inner, self.in_channels, device),
        }
    }
}

impl<B: Backend> Transformer2DModel<B> {
    /// Lets the views of each group of `num_frames` self-attend together in every block
    /// ([`BasicTransformerBlock::num_frames`]).
    pub fn set_num_frames(&mut self, num_frames: usize) {
        for block in &mut self.transformer_blocks {
            block.num_frames = num_frames;
        }
    }
}

/// Spatial transformer: GroupNorm, project in, transformer blocks over the `h * w` tokens,
/// project out, add the input.
#[derive(Module, Debug)]
pub struct Transformer2DModel<B: Backend> {
    /// GroupNorm of the input (epsilon 1e-6).
    pub norm: GroupNorm<B>,
    /// Channels to inner width.
    pub proj_in: Projection<B>,
    /// The transformer blocks.
    pub transformer_blocks: Vec<BasicTransformerBlock<B>>,
    /// Inner width back to channels.
    pub proj_out: Projection<B>,
}

impl<B: Backend> Transformer2DModel<B> {
    /// # Shapes
    /// - hidden_states: `[batch, channels, h, w]`
    /// - encoder_hidden_states: `[batch, seq_text, cross_attention_dim]`
    /// - output: `[batch, channels, h, w]`
    pub fn forward(
        &self,
        hidden_states: Tensor<B, 4>,
        encoder_hidden_states: Option<Tensor<B, 3>>,
    ) -> Tensor<B, 4> {
        let [batch, channels, h, w] = hidden_states.dims();
        let residual = hidden_states.clone();
        // 1. input: norm, project, flatten to tokens
        let normed = group_norm(&self.norm, hidden_states);
        // [batch, h * w, inner]
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => {
                let projected = conv.forward(normed);
                let inner = projected.dims()[1];
                projected.reshape([batch, inner, h * w]).swap_dims(1, 2)
            }
            Projection::Linear(layer) => linear(
                layer,
                reshape(normed, [batch, channels, h * w]).swap_dims(1, 2),
            ),
        };
        // 2. blocks
        for block in &self.transformer_blocks {
            tokens = block.forward(tokens, encoder_hidden_states.clone());
        }
        // 3. output: project, unflatten, residual
        let inner = tokens.dims()[2];
        // [batch, channels, h, w]
        let out = match &self.proj_out {
            Projection::Conv(conv) => {
                conv.forward(tokens.swap_dims(1, 2).reshape([batch, inner, h, w]))
            }
            Projection::Linear(layer) => reshape(
                linear_channels_first(layer, tokens),
                [batch, channels, h, w],
            ),
        };
        out + residual
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, Tolerance};

    type B = NdArray<f32>;

    #[test]
    fn attention_matches_a_plain_softmax() {
        let device = Default::default();
        let attn = AttentionConfig::new(8)
            .with_heads(2)
            .with_dim_head(4)
            .init::<B>(&device);
        let x = Tensor::<B, 3>::random([2, 5, 8], Distribution::Default, &device);
        let out = attn.forward(x.clone(), None);
        // Reference: one head at a time, softmax(q k^T / sqrt(d)) v.
        let q = attn.to_q.forward(x.clone());
        let k = attn.to_k.forward(x.clone());
        let v = attn.to_v.forward(x);
        let heads: Vec<_> = (0..2)
            .map(|h| {
                let s = |t: &Tensor<B, 3>| t.clone().narrow(2, 4 * h, 4);
                let scores = s(&q).matmul(s(&k).swap_dims(1, 2)) / 2.0;
                burn::tensor::activation::softmax(scores, 2).matmul(s(&v))
            })
            .collect();
        let expected = attn.to_out.0.forward(Tensor::cat(heads, 2));
        out.into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-5));
    }

    #[test]
    fn transformer_projections_agree_on_shapes() {
        let device = Default::default();
        for linear in [false, true] {
            let model = Transformer2DModelConfig::new(2, 8, 16)
                .with_cross_attention_dim(Some(12))
                .with_norm_num_groups(4)
                .with_use_linear_projection(linear)
                .init::<B>(&device);
            let x = Tensor::<B, 4>::random([2, 16, 3, 5], Distribution::Default, &device);
            let ctx = Tensor::<B, 3>::random([2, 7, 12], Distribution::Default, &device);
            assert_eq!(model.forward(x, Some(ctx)).dims(), [2, 16, 3, 5]);
        }
    }
}
