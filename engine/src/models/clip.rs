//! CLIP (transformers' `modeling_clip.py`): the transformer blocks both towers share,
//! [`CLIPModel`] (both towers, projections, `logit_scale`), and the key map for loading.
//!
//! The towers are in [`clip_text`](super::clip_text) and [`clip_vision`](super::clip_vision).
//! Field names equal the checkpoint keys (`text_model.encoder.layers.0.self_attn.q_proj`,
//! `mlp.fc1`, `layer_norm1`, ...), so loading needs no renames except the ones in
//! [`clip_load_options`].

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{sigmoid, tanh};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use super::activations::gelu_exact;
use super::clip_text::{CLIPTextConfig, CLIPTextTransformer};
use super::clip_vision::{CLIPVisionConfig, CLIPVisionTransformer};
use super::matmul::linear;
use crate::weights::{
    LoadError, LoadOptions, LoadReport, load_safetensors_with, read_json, weight_files,
};

/// The activation of the MLPs (`hidden_act` in `config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum HiddenAct {
    /// `x * sigmoid(1.702 x)`: OpenAI CLIP (SD 1.x text encoder, ViT-L/14).
    #[default]
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// Exact (erf) GELU: OpenCLIP (SD 2.x text encoder).
    #[serde(rename = "gelu")]
    Gelu,
    /// Tanh-approximated GELU.
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluTanh,
}

impl HiddenAct {
    /// Apply the activation.
    pub fn forward<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Self::QuickGelu => x.clone() * sigmoid(x * 1.702),
            // Exact gradient too: reward feedback differentiates through the vision tower.
            Self::Gelu => gelu_exact(x),
            Self::GeluTanh => {
                let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044715)
                    * (2.0 / std::f64::consts::PI).sqrt();
                x * (tanh(inner) + 1.0) * 0.5
            }
        }
    }
}

/// Multi-head self-attention (`CLIPAttention`), through burn's fused `attention` op.
#[derive(Module, Debug)]
pub struct CLIPAttention<B: Backend> {
    /// Query projection.
    pub q_proj: Linear<B>,
    /// Key projection.
    pub k_proj: Linear<B>,
    /// Value projection.
    pub v_proj: Linear<B>,
    /// Output projection.
    pub out_proj: Linear<B>,
    num_heads: usize,
}

impl<B: Backend> CLIPAttention<B> {
    /// A block for `hidden` features split over `num_heads` heads.
    pub fn new(hidden: usize, num_heads: usize, device: &B::Device) -> Self {
        let linear = || LinearConfig::new(hidden, hidden).init(device);
        Self {
            q_proj: linear(),
            k_proj: linear(),
            v_proj: linear(),
            out_proj: linear(),
            num_heads,
        }
    }

    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` -> `[batch, seq, hidden]`
    ///
    /// `causal`: each position sees only itself and earlier ones (the text tower).
    pub fn forward(&self, x: Tensor<B, 3>, causal: bool) -> Tensor<B, 3> {
        let [batch, seq, hidden] = x.dims();
        let head_dim = hidden / self.num_heads;
        // [batch, seq, hidden] -> [batch, heads, seq, head_dim]
        let heads = |t: Tensor<B, 3>| {
            t.reshape([batch, seq, self.num_heads, head_dim])
                .swap_dims(1, 2)
        };
        let q = heads(linear(&self.q_proj, x.clone()));
        let k = heads(linear(&self.k_proj, x.clone()));
        let v = heads(linear(&self.v_proj, x));
        let options = AttentionModuleOptions {
            is_causal: causal,
            ..Default::default()
        };
        // Default scale 1/sqrt(head_dim), as CLIPAttention's `scale`.
        let out = attention(q, k, v, None, None, options);
        linear(
            &self.out_proj,
            out.swap_dims(1, 2).reshape([batch, seq, hidden]),
        )
    }
}

/// The feed-forward block (`CLIPMLP`): `fc2(act(fc1(x)))`.
#[derive(Module, Debug)]
pub struct CLIPMLP<B: Backend> {
    /// `hidden -> intermediate`.
    pub fc1: Linear<B>,
    /// `intermediate -> hidden`.
    pub fc2: Linear<B>,
    #[module(skip)]
    act: HiddenAct,
}

impl<B: Backend> CLIPMLP<B> {
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` -> `[batch, seq, hidden]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        linear(&self.fc2, self.act.forward(linear(&self.fc1, x)))
    }
}

/// One pre-norm transformer block (`CLIPEncoderLayer`).
#[derive(Module, Debug)]
pub struct CLIPEncoderLayer<B: Backend> {
    /// Self-attention.
    pub self_attn: CLIPAttention<B>,
    /// Norm before attention.
    pub layer_norm1: LayerNorm<B>,
    /// Feed-forward.
    pub mlp: CLIPMLP<B>,
    /// Norm before the feed-forward.
    pub layer_norm2: LayerNorm<B>,
}

impl<B: Backend> CLIPEncoderLayer<B> {
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` -> `[batch, seq, hidden]`
    pub fn forward(&self, x: Tensor<B, 3>, causal: bool) -> Tensor<B, 3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x), causal);
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

/// The stack of blocks (`CLIPEncoder`).
#[derive(Module, Debug)]
pub struct CLIPEncoder<B: Backend> {
    /// The blocks, `layers.{i}` in checkpoints.
    pub layers: Vec<CLIPEncoderLayer<B>>,
}

/// Sizes of one tower's encoder (the fields both tower configs share).
#[derive(Debug, Clone, Copy)]
pub struct EncoderDims {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width inside the MLPs.
    pub intermediate_size: usize,
    /// Number of blocks.
    pub num_hidden_layers: usize,
    /// Attention heads per block.
    pub num_attention_heads: usize,
    /// MLP activation.
    pub hidden_act: HiddenAct,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
}

impl EncoderDims {
    /// A LayerNorm of the tower's width and epsilon.
    pub fn layer_norm<B: Backend>(&self, device: &B::Device) -> LayerNorm<B> {
        LayerNormConfig::new(self.hidden_size)
            .with_epsilon(self.layer_norm_eps)
            .init(device)
    }

    /// The encoder, parameters lazily initialised (nothing allocated until used or loaded).
    pub fn init_encoder<B: Backend>(&self, device: &B::Device) -> CLIPEncoder<B> {
        let layers = (0..self.num_hidden_layers)
            .map(|_| CLIPEncoderLayer {
                self_attn: CLIPAttention::new(self.hidden_size, self.num_attention_heads, device),
                layer_norm1: self.layer_norm(device),
                mlp: CLIPMLP {
                    fc1: LinearConfig::new(self.hidden_size, self.intermediate_size).init(device),
                    fc2: LinearConfig::new(self.intermediate_size, self.hidden_size).init(device),
                    act: self.hidden_act,
                },
                layer_norm2: self.layer_norm(device),
            })
            .collect();
        CLIPEncoder { layers }
    }
}

impl<B: Backend> CLIPEncoder<B> {
    /// Run the first `num_layers` blocks (all of them with `usize::MAX`).
    ///
    /// Returns the output and the input of the last block run: transformers'
    /// `hidden_states[-1]` and `hidden_states[-2]` when all blocks run.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` -> (`[batch, seq, hidden]`, `[batch, seq, hidden]`)
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        causal: bool,
        num_layers: usize,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let mut x = x;
        let mut before_last = x.clone();
        for layer in self.layers.iter().take(num_layers) {
            before_last = x.clone();
            x = layer.forward(x, causal);
        }
        (x, before_last)
    }
}

/// `config.json` of a `CLIPModel` (e.g. `openai/clip-vit-large-patch14`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CLIPConfig {
    /// The text tower.
    pub text_config: CLIPTextConfig,
    /// The vision tower.
    pub vision_config: CLIPVisionConfig,
    /// Width of the shared embedding space (both projections' output).
    pub projection_dim: usize,
    /// Initial `logit_scale` (log of the softmax temperature's inverse).
    pub logit_scale_init_value: f64,
}

impl Default for CLIPConfig {
    fn default() -> Self {
        Self {
            text_config: CLIPTextConfig::default(),
            vision_config: CLIPVisionConfig::default(),
            projection_dim: 512,
            logit_scale_init_value: 2.6592,
        }
    }
}

impl CLIPConfig {
    /// `openai/clip-vit-large-patch14` (`config.json`): SD 1.x's text encoder, CLIPScore's and
    /// the LAION aesthetic head's image encoder.
    pub fn clip_vit_l_14() -> Self {
        Self {
            text_config: CLIPTextConfig::clip_vit_l_14(),
            vision_config: CLIPVisionConfig::clip_vit_l_14(),
            projection_dim: 768,
            logit_scale_init_value: 2.6592,
        }
    }

    /// Read a `CLIPModel` `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        read_json(path)
    }

    /// Build the model, parameters lazily initialised.
    pub fn init<B: Backend>(&self, device: &B::Device) -> CLIPModel<B> {
        let projection = |input| {
            LinearConfig::new(input, self.projection_dim)
                .with_bias(false)
                .init(device)
        };
        CLIPModel {
            text_model: self.text_config.init_transformer(device),
            vision_model: self.vision_config.init_transformer(device),
            text_projection: projection(self.text_config.hidden_size),
            visual_projection: projection(self.vision_config.hidden_size),
            logit_scale: Initializer::Constant {
                value: self.logit_scale_init_value,
            }
            .init([1], device),
        }
    }
}

/// Both CLIP towers with their projections into the shared space (`CLIPModel`).
#[derive(Module, Debug)]
pub struct CLIPModel<B: Backend> {
    /// Text tower.
    pub text_model: CLIPTextTransformer<B>,
    /// Vision tower.
    pub vision_model: CLIPVisionTransformer<B>,
    /// Text pooled output -> shared space (no bias).
    pub text_projection: Linear<B>,
    /// Image pooled output -> shared space (no bias).
    pub visual_projection: Linear<B>,
    /// Log inverse temperature (a scalar in checkpoints, `[1]` here).
    pub logit_scale: Param<Tensor<B, 1>>,
}

impl<B: Backend> CLIPModel<B> {
    /// Load a `CLIPModel` folder (`config.json` + safetensors), e.g. `openai/clip-vit-large-patch14`.
    pub fn from_folder(dir: &Path, device: &B::Device) -> Result<(Self, LoadReport), LoadError> {
        let config = CLIPConfig::from_file(&dir.join("config.json"))?;
        let model = config.init(device);
        load_safetensors_with(
            model,
            &weight_files(dir)?,
            device,
            &clip_load_options(ClipCheckpoint::Full),
        )
    }

    /// Text embeddings in the shared space (`get_text_features`), not normalised.
    ///
    /// # Shapes
    /// - `input_ids`: `[batch, seq]` -> `[batch, projection_dim]`
    pub fn get_text_features(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let pooled = self.text_model.forward(input_ids).pooler_output;
        self.text_projection.forward(pooled)
    }

    /// Image embeddings in the shared space (`get_image_features`), not normalised.
    ///
    /// # Shapes
    /// - `pixel_values`: `[batch, 3, image_size, image_size]`, CLIP-normalised ->
    ///   `[batch, projection_dim]`
    pub fn get_image_features(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 2> {
        let pooled = self.vision_model.forward(pixel_values).pooler_output;
        self.visual_projection.forward(pooled)
    }

    /// `logits_per_image`: `exp(logit_scale) * cos(image_i, text_j)`.
    ///
    /// # Shapes
    /// - `input_ids`: `[texts, seq]`, `pixel_values`: `[images, 3, s, s]` -> `[images, texts]`
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        pixel_values: Tensor<B, 4>,
    ) -> Tensor<B, 2> {
        let text = l2_normalize(self.get_text_features(input_ids));
        let image = l2_normalize(self.get_image_features(pixel_values));
        let scale = self.logit_scale.val().exp().unsqueeze::<2>();
        image.matmul(text.transpose()) * scale
    }
}

/// `x / ||x||` along the last dimension.
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt();
    x / norm
}

/// Which kind of CLIP checkpoint a tower is loaded from, for [`clip_load_options`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipCheckpoint {
    /// A full `CLIPModel` file loaded into a [`CLIPModel`].
    Full,
    /// A `CLIPTextModel`/`CLIPTextModelWithProjection` file (e.g. SD's `text_encoder/`).
    Text,
    /// A `CLIPVisionModel`/`CLIPVisionModelWithProjection` file.
    Vision,
    /// The text tower (and `text_projection`) out of a full `CLIPModel` file.
    TextOfFull,
    /// The vision tower (and `visual_projection`) out of a full `CLIPModel` file.
    VisionOfFull,
}

/// The key map for CLIP checkpoints: the one place where their differences are decided.
///
/// - `*.embeddings.position_ids`: a buffer (not a parameter) that transformers < 4.31 saved;
///   many hub files (`openai/clip-vit-large-patch14`, SD `text_encoder/`) still carry it.
///   Ignored.
/// - transformers >= 5 saves `CLIPTextModel`/`CLIPVisionModel` without the `text_model.` /
///   `vision_model.` prefix (`embeddings.token_embedding.weight`); hub files have it. Keys
///   without it get it.
/// - The other tower of a full `CLIPModel` file is ignored when loading one tower from it.
pub fn clip_load_options(checkpoint: ClipCheckpoint) -> LoadOptions {
    let options = LoadOptions::default().with_ignore(r"(^|\.)embeddings\.position_ids$");
    match checkpoint {
        ClipCheckpoint::Full => options,
        ClipCheckpoint::Text => options.with_remap(
            r"^(embeddings|encoder|final_layer_norm)\.",
            "text_model.${1}.",
        ),
        ClipCheckpoint::Vision => options.with_remap(
            r"^(embeddings|encoder|pre_layrnorm|post_layernorm)\.",
            "vision_model.${1}.",
        ),
        ClipCheckpoint::TextOfFull => options
            .with_ignore(r"^vision_model\.")
            .with_ignore(r"^visual_projection\.")
            .with_ignore(r"^logit_scale$"),
        ClipCheckpoint::VisionOfFull => options
            .with_ignore(r"^text_model\.")
            .with_ignore(r"^text_projection\.")
            .with_ignore(r"^logit_scale$"),
    }
}

/// Deserialize a token id that `config.json` may give as a number, a list (first one wins) or
/// `null`.
pub(crate) fn token_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(match value {
        serde_json::Value::Number(n) => n.as_u64().map(|n| n as u32),
        serde_json::Value::Array(items) => items.first().and_then(|v| v.as_u64()).map(|n| n as u32),
        _ => None,
    })
}

/// Whether `config.json` at `path` is a full `CLIPModel` config (it has `text_config` and
/// `vision_config`), as opposed to a single tower's.
pub(crate) fn read_tower_config<T: serde::de::DeserializeOwned>(
    path: &Path,
    tower_key: &str,
) -> Result<(T, bool), LoadError> {
    let json: serde_json::Value = read_json(path)?;
    let (tower, full) = match json.get(tower_key) {
        Some(tower) if tower.is_object() => (tower.clone(), true),
        _ => (json, false),
    };
    let config = serde_json::from_value(tower).map_err(|e| LoadError::BadConfig {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok((config, full))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    fn act(a: HiddenAct, x: f32) -> f32 {
        let t = Tensor::<NdArray, 1>::from_floats([x], &Default::default());
        a.forward(t).into_scalar()
    }

    #[test]
    fn activations_match_their_formulas() {
        let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        for x in [-2.0f32, -0.5, 0.0, 0.7, 3.0] {
            assert!((act(HiddenAct::QuickGelu, x) - x * sigmoid(1.702 * x)).abs() < 1e-6);
            let tanh_gelu = 0.5
                * x
                * (1.0 + ((2.0 / std::f32::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
            assert!((act(HiddenAct::GeluTanh, x) - tanh_gelu).abs() < 1e-6);
        }
        // Exact GELU at 1: Phi(1) = 0.841344746.
        assert!((act(HiddenAct::Gelu, 1.0) - 0.841_344_7).abs() < 1e-5);
    }

    #[test]
    fn hidden_act_parses_config_names() {
        let parse = |s: &str| serde_json::from_str::<HiddenAct>(&format!("\"{s}\"")).ok();
        assert_eq!(parse("quick_gelu"), Some(HiddenAct::QuickGelu));
        assert_eq!(parse("gelu"), Some(HiddenAct::Gelu));
        assert_eq!(parse("gelu_pytorch_tanh"), Some(HiddenAct::GeluTanh));
        assert_eq!(parse("relu"), None);
    }
}
