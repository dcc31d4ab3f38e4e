//! BLIP's text encoder, the "mixture of encoder-decoder" BERT (`models/BLIP/med.py` in BLIP and
//! ImageReward, adapted from transformers 4.15's `modeling_bert.py`), as an encoder: word +
//! absolute position embeddings (no token types), post-norm layers of self-attention,
//! cross-attention to image tokens (when `add_cross_attention`) and a GELU feed-forward. No
//! pooler (BLIP builds it with `add_pooling_layer=False`).
//!
//! Field names equal the checkpoint keys under `text_encoder.` except two that Rust cannot
//! spell, renamed at load time by [`med_bert_load_options`]: `attention.self` ->
//! `attention.self_attention` (`self` is a keyword) and `LayerNorm` -> `layer_norm`.

use std::path::Path;

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use super::activations::gelu_exact;
use super::clip::HiddenAct;
use super::matmul::linear;
use crate::weights::{LoadError, LoadOptions, read_json};

/// What BERT adds to the attention scores of padded keys (`(1 - mask) * -10000.0` in
/// `get_extended_attention_mask`): large but finite, so kept as upstream has it.
pub const MASKED_SCORE: f32 = -10000.0;

/// BLIP's `med_config.json` (a transformers `BertConfig`; defaults are BLIP's file). Unknown
/// keys (`architectures`, dropouts, `initializer_range`, `type_vocab_size`) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BertConfig {
    /// Vocabulary size (30524 = bert-base-uncased + `[DEC]`, `[ENC]`).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Number of layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width inside the feed-forward.
    pub intermediate_size: usize,
    /// Feed-forward activation (`gelu`: exact).
    pub hidden_act: HiddenAct,
    /// Number of learned positions.
    pub max_position_embeddings: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Padding token id.
    pub pad_token_id: usize,
    /// Whether each layer cross-attends to encoder (image) tokens.
    pub add_cross_attention: bool,
    /// Width of the encoder tokens cross-attended to. The file's value is NOT what BLIP uses:
    /// `BLIP_Pretrain` overwrites it with its ViT's width (768 in the file, 1024 for ViT-L),
    /// and so does [`ImageRewardConfig`](super::image_reward::ImageRewardConfig).
    pub encoder_width: usize,
    /// Only `absolute` is supported (BLIP's); read to reject the others clearly.
    pub position_embedding_type: String,
}

impl Default for BertConfig {
    fn default() -> Self {
        Self::blip_base()
    }
}

impl BertConfig {
    /// BLIP's `configs/med_config.json` as ImageReward ships it (BERT-base, vocab 30524,
    /// cross-attention on).
    pub fn blip_base() -> Self {
        Self {
            vocab_size: 30524,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: HiddenAct::Gelu,
            max_position_embeddings: 512,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            add_cross_attention: true,
            encoder_width: 768,
            position_embedding_type: "absolute".into(),
        }
    }

    /// Read a `med_config.json`.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let config: Self = read_json(path)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Check the sizes fit together; `path` names the file they came from.
    pub fn validate(&self, path: &Path) -> Result<(), LoadError> {
        let reason = if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )
        } else if self.position_embedding_type != "absolute" {
            format!(
                "position_embedding_type `{}` is not supported (only `absolute`, BLIP's)",
                self.position_embedding_type
            )
        } else if self.vocab_size == 0 || self.max_position_embeddings == 0 {
            "vocab_size and max_position_embeddings must be positive".into()
        } else {
            return Ok(());
        };
        Err(LoadError::BadConfig {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// The model, parameters lazily initialised (nothing allocated until used or loaded).
    pub fn init<B: Backend>(&self, device: &B::Device) -> BertModel<B> {
        let h = self.hidden_size;
        let norm = || {
            LayerNormConfig::new(h)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let attention = |kv_width: usize| BertAttention {
            self_attention: BertSelfAttention {
                query: LinearConfig::new(h, h).init(device),
                key: LinearConfig::new(kv_width, h).init(device),
                value: LinearConfig::new(kv_width, h).init(device),
                num_attention_heads: self.num_attention_heads,
            },
            output: BertSelfOutput {
                dense: LinearConfig::new(h, h).init(device),
                layer_norm: norm(),
            },
        };
        let layer = (0..self.num_hidden_layers)
            .map(|_| BertLayer {
                attention: attention(h),
                crossattention: self
                    .add_cross_attention
                    .then(|| attention(self.encoder_width)),
                intermediate: BertIntermediate {
                    dense: LinearConfig::new(h, self.intermediate_size).init(device),
                    act: self.hidden_act,
                },
                output: BertOutput {
                    dense: LinearConfig::new(self.intermediate_size, h).init(device),
                    layer_norm: norm(),
                },
            })
            .collect();
        BertModel {
            embeddings: BertEmbeddings {
                word_embeddings: EmbeddingConfig::new(self.vocab_size, h).init(device),
                position_embeddings: EmbeddingConfig::new(self.max_position_embeddings, h)
                    .init(device),
                layer_norm: norm(),
            },
            encoder: BertEncoder { layer },
        }
    }
}

/// The key map for `med.py` BERT weights: the two renames Rust needs (see the module doc) and
/// the `position_ids` buffer old transformers saved, ignored.
pub fn med_bert_load_options() -> LoadOptions {
    LoadOptions::default()
        .with_ignore(r"(^|\.)embeddings\.position_ids$")
        .with_remap(
            r"(^|\.)(attention|crossattention)\.self\.",
            "${1}${2}.self_attention.",
        )
        .with_remap(r"(^|\.)LayerNorm\.", "${1}layer_norm.")
}

/// Word and absolute position embeddings, normalised (`BertEmbeddings` of `med.py`).
#[derive(Module, Debug)]
pub struct BertEmbeddings<B: Backend> {
    /// `[vocab_size, hidden]`.
    pub word_embeddings: Embedding<B>,
    /// `[max_position_embeddings, hidden]`.
    pub position_embeddings: Embedding<B>,
    /// `LayerNorm` in checkpoints.
    pub layer_norm: LayerNorm<B>,
}

impl<B: Backend> BertEmbeddings<B> {
    /// # Shapes
    /// - `input_ids`: `[batch, seq]` (`seq <= max_position_embeddings`) -> `[batch, seq, hidden]`
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [_, seq] = input_ids.dims();
        let [max_positions, hidden] = self.position_embeddings.weight.dims();
        assert!(
            seq <= max_positions,
            "{seq} tokens exceed the {max_positions} learned positions"
        );
        let words = self.word_embeddings.forward(input_ids);
        let positions = self
            .position_embeddings
            .weight
            .val()
            .narrow(0, 0, seq)
            .reshape([1, seq, hidden]);
        self.layer_norm.forward(words + positions)
    }
}

/// Queries from the text, keys and values from the text (self-attention) or from encoder
/// tokens of width `encoder_width` (cross-attention) (`BertSelfAttention`).
#[derive(Module, Debug)]
pub struct BertSelfAttention<B: Backend> {
    /// `hidden -> hidden`.
    pub query: Linear<B>,
    /// `hidden` (or `encoder_width`) `-> hidden`.
    pub key: Linear<B>,
    /// `hidden` (or `encoder_width`) `-> hidden`.
    pub value: Linear<B>,
    num_attention_heads: usize,
}

impl<B: Backend> BertSelfAttention<B> {
    /// `context` is `x` for self-attention; `bias` is added to the scores (padding).
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]`, `context`: `[batch, ctx, width]`
    /// - `bias`: `[batch, 1, 1, ctx]` (broadcast over heads and queries)
    /// - output: `[batch, seq, hidden]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        context: Tensor<B, 3>,
        bias: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 3> {
        let [batch, seq, hidden] = x.dims();
        let ctx = context.dims()[1];
        let heads = self.num_attention_heads;
        let head_dim = hidden / heads;
        // [batch, len, hidden] -> [batch, heads, len, head_dim]
        let split =
            |t: Tensor<B, 3>, len: usize| t.reshape([batch, len, heads, head_dim]).swap_dims(1, 2);
        let q = split(linear(&self.query, x), seq);
        let k = split(linear(&self.key, context.clone()), ctx);
        let v = split(linear(&self.value, context), ctx);
        // burn's attention wants the bias at full size.
        let bias = bias.map(|b| b.expand([batch, heads, seq, ctx]));
        // Default scale 1/sqrt(head_dim), as upstream's division.
        let out = attention(q, k, v, None, bias, AttentionModuleOptions::default());
        out.swap_dims(1, 2).reshape([batch, seq, hidden])
    }
}

/// `dense`, residual, `LayerNorm` after an attention (`BertSelfOutput`).
#[derive(Module, Debug)]
pub struct BertSelfOutput<B: Backend> {
    /// `hidden -> hidden`.
    pub dense: Linear<B>,
    /// `LayerNorm` in checkpoints.
    pub layer_norm: LayerNorm<B>,
}

/// An attention and its output block (`BertAttention`: `self` and `output` in checkpoints).
#[derive(Module, Debug)]
pub struct BertAttention<B: Backend> {
    /// `self` in checkpoints.
    pub self_attention: BertSelfAttention<B>,
    /// Projection, residual and norm.
    pub output: BertSelfOutput<B>,
}

impl<B: Backend> BertAttention<B> {
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]`, `context`: `[batch, ctx, width]` -> `[batch, seq, hidden]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        context: Tensor<B, 3>,
        bias: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 3> {
        let attended = self.self_attention.forward(x.clone(), context, bias);
        let out = &self.output;
        out.layer_norm.forward(linear(&out.dense, attended) + x)
    }
}

/// `intermediate_size` projection and activation (`BertIntermediate`).
#[derive(Module, Debug)]
pub struct BertIntermediate<B: Backend> {
    /// `hidden -> intermediate_size`.
    pub dense: Linear<B>,
    #[module(skip)]
    act: HiddenAct,
}

/// Back to `hidden`, residual, `LayerNorm` (`BertOutput`).
#[derive(Module, Debug)]
pub struct BertOutput<B: Backend> {
    /// `intermediate_size -> hidden`.
    pub dense: Linear<B>,
    /// `LayerNorm` in checkpoints.
    pub layer_norm: LayerNorm<B>,
}

/// One post-norm layer (`BertLayer` in `mode='multimodal'`).
#[derive(Module, Debug)]
pub struct BertLayer<B: Backend> {
    /// Self-attention over the text.
    pub attention: BertAttention<B>,
    /// Cross-attention to the encoder tokens (when `add_cross_attention`).
    pub crossattention: Option<BertAttention<B>>,
    /// Feed-forward, first half.
    pub intermediate: BertIntermediate<B>,
    /// Feed-forward, second half.
    pub output: BertOutput<B>,
}

impl<B: Backend> BertLayer<B> {
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]`, `self_bias`: `[batch, 1, 1, seq]`,
    ///   `encoder_hidden_states`: `[batch, ctx, encoder_width]` -> `[batch, seq, hidden]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        self_bias: Option<Tensor<B, 4>>,
        encoder_hidden_states: Option<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        // 1. self-attention
        let mut x = self.attention.forward(x.clone(), x, self_bias);
        // 2. cross-attention (to every encoder token: BLIP's image mask is all ones)
        if let (Some(cross), Some(context)) = (&self.crossattention, encoder_hidden_states) {
            x = cross.forward(x, context, None);
        }
        // 3. feed-forward (exact GELU with an exact gradient: see `gelu_exact`)
        let hidden = linear(&self.intermediate.dense, x.clone());
        let hidden = match self.intermediate.act {
            HiddenAct::Gelu => gelu_exact(hidden),
            act => act.forward(hidden),
        };
        let out = &self.output;
        out.layer_norm.forward(linear(&out.dense, hidden) + x)
    }
}

/// The stack of layers (`BertEncoder`, `layer.{i}` in checkpoints).
#[derive(Module, Debug)]
pub struct BertEncoder<B: Backend> {
    /// The layers.
    pub layer: Vec<BertLayer<B>>,
}

/// `med.py`'s `BertModel` without pooler: BLIP's `text_encoder`.
#[derive(Module, Debug)]
pub struct BertModel<B: Backend> {
    /// Embeddings.
    pub embeddings: BertEmbeddings<B>,
    /// Layers.
    pub encoder: BertEncoder<B>,
}

impl<B: Backend> BertModel<B> {
    /// The additive self-attention bias for an attention mask (1 = attend, 0 = padding):
    /// `(1 - mask) * -10000`, as `get_extended_attention_mask` (encoder, not decoder).
    ///
    /// # Shapes
    /// - `attention_mask`: `[batch, seq]` -> `[batch, 1, 1, seq]`
    pub fn extended_attention_mask(attention_mask: Tensor<B, 2>) -> Tensor<B, 4> {
        let [batch, seq] = attention_mask.dims();
        ((attention_mask.neg() + 1.0) * MASKED_SCORE).reshape([batch, 1, 1, seq])
    }

    /// Run the layers on embeddings (from [`BertEmbeddings::forward`]), so one prompt's
    /// embeddings can be computed once and broadcast over many images.
    ///
    /// # Shapes
    /// - `embeds`: `[batch, seq, hidden]`, `self_bias`: `[batch, 1, 1, seq]`,
    ///   `encoder_hidden_states`: `[batch, ctx, encoder_width]` ->
    ///   `last_hidden_state` `[batch, seq, hidden]`
    pub fn forward_embeds(
        &self,
        embeds: Tensor<B, 3>,
        self_bias: Option<Tensor<B, 4>>,
        encoder_hidden_states: Option<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        let mut x = embeds;
        for layer in &self.encoder.layer {
            x = layer.forward(x, self_bias.clone(), encoder_hidden_states.clone());
        }
        x
    }

    /// `BertModel.forward(input_ids, attention_mask, encoder_hidden_states,
    /// mode='multimodal').last_hidden_state`.
    ///
    /// # Shapes
    /// - `input_ids`: `[batch, seq]`, `attention_mask`: `[batch, seq]` (1/0),
    ///   `encoder_hidden_states`: `[batch, ctx, encoder_width]` -> `[batch, seq, hidden]`
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2>,
        encoder_hidden_states: Option<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        let embeds = self.embeddings.forward(input_ids);
        let bias = Self::extended_attention_mask(attention_mask);
        self.forward_embeds(embeds, Some(bias), encoder_hidden_states)
    }
}
