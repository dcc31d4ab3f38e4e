//! CLIP's text tower: [`CLIPTextModel`] (SD's `text_encoder/`) and
//! [`CLIPTextModelWithProjection`], configured by transformers' `CLIPTextConfig`.
//!
//! [`CLIPTextModel`] also loads from an original LDM checkpoint (SD 1.x/2.x, MVDream's
//! `sd-v*-4view.pt`), whose text encoder sits under `cond_stage_model.` with no config:
//! [`CLIPTextConfig::from_ldm_shapes`] derives the config from the tensor shapes and
//! [`CLIPTextModel::from_ldm_checkpoint`] loads it. SD 2.x's OpenCLIP tower
//! (`FrozenOpenCLIPEmbedder`, open_clip names, fused `in_proj_weight`) loads as the
//! penultimate-layer model diffusers' conversion makes of it: its last block is dropped,
//! `ln_final` is the final norm (LDM's `layer = "penultimate"`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use super::clip::{
    CLIPEncoder, ClipCheckpoint, EncoderDims, HiddenAct, clip_load_options, read_tower_config,
    token_id,
};
use super::mv_unet::LDM_SCHEDULE_KEYS;
use crate::weights::{
    KeyPolicy, LoadError, LoadOptions, LoadReport, load_safetensors_with, weight_files,
};

/// Where SD 2.x LDM checkpoints keep their OpenCLIP text tower (`FrozenOpenCLIPEmbedder.model`,
/// open_clip's names: `token_embedding.weight`, `positional_embedding`,
/// `transformer.resblocks.{i}.*`, `ln_final.*`, `text_projection`, `logit_scale`).
pub const LDM_OPEN_CLIP_PREFIX: &str = "cond_stage_model.model.";

/// Where SD 1.x LDM checkpoints keep their CLIP text model (`FrozenCLIPEmbedder.transformer`,
/// transformers' `CLIPTextModel`, so the keys are `cond_stage_model.transformer.text_model.*`).
pub const LDM_CLIP_PREFIX: &str = "cond_stage_model.transformer.";

/// Every open_clip text tower has 64-wide attention heads (RN50/ViT-B 512 wide with 8 heads,
/// ViT-L 768/12, ViT-H 1024/16, ViT-bigG 1280/20); the head count is not in the weights.
const OPEN_CLIP_HEAD_WIDTH: usize = 64;

/// The non-text parts of an LDM checkpoint: UNet, VAE, EMA weights.
const LDM_NOT_TEXT: &str = r"^(model\.diffusion_model|first_stage_model|model_ema)\.";

/// The text encoder an LDM checkpoint holds under `cond_stage_model.`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LdmTextEncoder {
    /// SD 2.x (MVDream sd-v2.1-base-4view): `FrozenOpenCLIPEmbedder` with
    /// `layer = "penultimate"`, under [`LDM_OPEN_CLIP_PREFIX`].
    OpenClip,
    /// SD 1.x (MVDream sd-v1.5-4view): `FrozenCLIPEmbedder` (transformers' `CLIPTextModel`,
    /// `layer = "last"`), under [`LDM_CLIP_PREFIX`].
    Clip,
}

impl LdmTextEncoder {
    /// The prefix of its tensors in an LDM checkpoint.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::OpenClip => LDM_OPEN_CLIP_PREFIX,
            Self::Clip => LDM_CLIP_PREFIX,
        }
    }
}

/// The heads of an open_clip text tower `width` wide ([`OPEN_CLIP_HEAD_WIDTH`]); towers
/// narrower than one head (test models) get one.
fn open_clip_heads(width: usize) -> usize {
    (width / OPEN_CLIP_HEAD_WIDTH).max(1)
}

/// The distinct `{i}` of keys `{prefix}{i}.*` in `shapes`.
fn block_indices(shapes: &BTreeMap<String, Vec<usize>>, prefix: &str) -> BTreeSet<usize> {
    shapes
        .keys()
        .filter_map(|k| k.strip_prefix(prefix)?.split('.').next()?.parse().ok())
        .collect()
}

/// `config.json` of a CLIP text tower (transformers' `CLIPTextConfig`; defaults are its
/// defaults). Unknown keys are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CLIPTextConfig {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width inside the MLPs.
    pub intermediate_size: usize,
    /// Output width of `text_projection`.
    pub projection_dim: usize,
    /// Number of blocks.
    pub num_hidden_layers: usize,
    /// Attention heads per block.
    pub num_attention_heads: usize,
    /// Context length (77).
    pub max_position_embeddings: usize,
    /// MLP activation: `quick_gelu` (OpenAI CLIP, SD 1.x) or `gelu` (OpenCLIP, SD 2.x).
    pub hidden_act: HiddenAct,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Id of `<|endoftext|>`: the pooled output is taken at its first position. The value `2`
    /// (older configs, e.g. SD 1.x/2.x and `openai/clip-vit-large-patch14`) means "the
    /// position of the largest id" instead, as transformers keeps for those checkpoints.
    #[serde(deserialize_with = "token_id")]
    pub eos_token_id: Option<u32>,
}

impl Default for CLIPTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: HiddenAct::QuickGelu,
            layer_norm_eps: 1e-5,
            eos_token_id: Some(49407),
        }
    }
}

impl CLIPTextConfig {
    /// `openai/clip-vit-large-patch14`'s `text_config` (also SD 1.x's `text_encoder/config.json`,
    /// whose `projection_dim` is unused there).
    pub fn clip_vit_l_14() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            projection_dim: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            eos_token_id: Some(2),
            ..Self::default()
        }
    }

    /// `stabilityai/stable-diffusion-2-1-base/text_encoder/config.json`: OpenCLIP ViT-H/14's
    /// text tower with its last block already dropped (23 of 24 layers, the "penultimate
    /// layer" SD 2.x conditions on).
    pub fn sd21_text_encoder() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            projection_dim: 512,
            num_hidden_layers: 23,
            num_attention_heads: 16,
            hidden_act: HiddenAct::Gelu,
            eos_token_id: Some(2),
            ..Self::default()
        }
    }

    /// Read a text tower's `config.json`, or the `text_config` of a `CLIPModel` one.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let (config, _): (Self, bool) = read_tower_config(path, "text_config")?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), LoadError> {
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            return Err(LoadError::BadConfig {
                path: path.to_path_buf(),
                reason: format!(
                    "hidden_size {} is not divisible by num_attention_heads {}",
                    self.hidden_size, self.num_attention_heads
                ),
            });
        }
        Ok(())
    }

    /// The config of the OpenCLIP text tower whose tensors are `shapes` (a checkpoint's
    /// [`tensor_shapes`](crate::weights::tensor_shapes)) under `prefix` (e.g.
    /// [`LDM_OPEN_CLIP_PREFIX`]), as the penultimate-layer model SD 2.x conditions on:
    /// - `hidden_size`, `vocab_size` from `token_embedding.weight` `[vocab, width]`;
    /// - `max_position_embeddings` from `positional_embedding` `[context, width]`;
    /// - `num_hidden_layers`: the resblocks minus the last one (LDM's `"penultimate"`);
    /// - `intermediate_size` from `mlp.c_fc.weight` `[mlp width, width]`;
    /// - `num_attention_heads`: `width / 64`, open_clip's head width (not in the weights);
    /// - `projection_dim` from `text_projection` `[width, embed]` (unused by the text model);
    /// - `hidden_act` exact `gelu` (open_clip's `nn.GELU`; ViT-H-14 has no `quick_gelu`),
    ///   LayerNorm eps 1e-5, pooling at the largest id (open_clip's `argmax`).
    ///
    /// `source` names the file in errors.
    pub fn from_open_clip_shapes(
        shapes: &BTreeMap<String, Vec<usize>>,
        prefix: &str,
        source: &Path,
    ) -> Result<Self, LoadError> {
        let shape = |name: &str, rank: usize| tensor_shape(shapes, prefix, name, rank, source);
        let [vocab_size, width] = shape("token_embedding.weight", 2)?[..] else {
            unreachable!("rank checked")
        };
        let [max_position_embeddings, _] = shape("positional_embedding", 2)?[..] else {
            unreachable!("rank checked")
        };
        let blocks = block_indices(shapes, &format!("{prefix}transformer.resblocks."));
        if blocks.len() < 2 || blocks.last() != Some(&(blocks.len() - 1)) {
            return Err(bad_shapes(
                source,
                format!(
                    "{} OpenCLIP blocks `{prefix}transformer.resblocks.{{i}}` (indices \
                     {blocks:?}): the penultimate layer needs at least 2, numbered from 0",
                    blocks.len()
                ),
            ));
        }
        let intermediate_size = shape("transformer.resblocks.0.mlp.c_fc.weight", 2)?[0];
        let projection_dim = match shapes.get(&format!("{prefix}text_projection")) {
            Some(s) if s.len() == 2 => s[1],
            _ => width,
        };
        let config = Self {
            vocab_size,
            hidden_size: width,
            intermediate_size,
            projection_dim,
            num_hidden_layers: blocks.len() - 1,
            num_attention_heads: open_clip_heads(width),
            max_position_embeddings,
            hidden_act: HiddenAct::Gelu,
            layer_norm_eps: 1e-5,
            eos_token_id: Some(2),
        };
        config.validate(source)?;
        Ok(config)
    }

    /// The config of the transformers `CLIPTextModel` whose tensors are `shapes` under
    /// `prefix` (`{prefix}text_model.*`, e.g. [`LDM_CLIP_PREFIX`]), as LDM's
    /// `FrozenCLIPEmbedder` holds OpenAI's CLIP ViT-L/14 text tower: every layer,
    /// `quick_gelu`, 64-wide heads; sizes from the shapes as in
    /// [`from_open_clip_shapes`](Self::from_open_clip_shapes).
    pub fn from_clip_shapes(
        shapes: &BTreeMap<String, Vec<usize>>,
        prefix: &str,
        source: &Path,
    ) -> Result<Self, LoadError> {
        let prefix = format!("{prefix}text_model.");
        let shape = |name: &str, rank: usize| tensor_shape(shapes, &prefix, name, rank, source);
        let [vocab_size, width] = shape("embeddings.token_embedding.weight", 2)?[..] else {
            unreachable!("rank checked")
        };
        let [max_position_embeddings, _] = shape("embeddings.position_embedding.weight", 2)?[..]
        else {
            unreachable!("rank checked")
        };
        let layers = block_indices(shapes, &format!("{prefix}encoder.layers."));
        if layers.is_empty() || layers.last() != Some(&(layers.len() - 1)) {
            return Err(bad_shapes(
                source,
                format!("CLIP layers `{prefix}encoder.layers.{{i}}` numbered {layers:?}"),
            ));
        }
        let config = Self {
            vocab_size,
            hidden_size: width,
            intermediate_size: shape("encoder.layers.0.mlp.fc1.weight", 2)?[0],
            projection_dim: width,
            num_hidden_layers: layers.len(),
            num_attention_heads: open_clip_heads(width),
            max_position_embeddings,
            hidden_act: HiddenAct::QuickGelu,
            layer_norm_eps: 1e-5,
            eos_token_id: Some(2),
        };
        config.validate(source)?;
        Ok(config)
    }

    /// The text encoder of an LDM checkpoint from its tensor shapes: OpenCLIP under
    /// [`LDM_OPEN_CLIP_PREFIX`] (SD 2.x) or CLIP under [`LDM_CLIP_PREFIX`] (SD 1.x).
    pub fn from_ldm_shapes(
        shapes: &BTreeMap<String, Vec<usize>>,
        source: &Path,
    ) -> Result<(Self, LdmTextEncoder), LoadError> {
        if shapes.contains_key(&format!("{LDM_OPEN_CLIP_PREFIX}token_embedding.weight")) {
            let config = Self::from_open_clip_shapes(shapes, LDM_OPEN_CLIP_PREFIX, source)?;
            Ok((config, LdmTextEncoder::OpenClip))
        } else if shapes.contains_key(&format!(
            "{LDM_CLIP_PREFIX}text_model.embeddings.token_embedding.weight"
        )) {
            let config = Self::from_clip_shapes(shapes, LDM_CLIP_PREFIX, source)?;
            Ok((config, LdmTextEncoder::Clip))
        } else {
            Err(bad_shapes(
                source,
                format!(
                    "no text encoder: neither an OpenCLIP tower \
                     (`{LDM_OPEN_CLIP_PREFIX}token_embedding.weight`, SD 2.x) nor a CLIP one \
                     (`{LDM_CLIP_PREFIX}text_model.*`, SD 1.x)"
                ),
            ))
        }
    }

    fn dims(&self) -> EncoderDims {
        EncoderDims {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            hidden_act: self.hidden_act,
            layer_norm_eps: self.layer_norm_eps,
        }
    }

    /// The bare tower (`text_model.*` in checkpoints), parameters lazily initialised.
    pub fn init_transformer<B: Backend>(&self, device: &B::Device) -> CLIPTextTransformer<B> {
        let dims = self.dims();
        CLIPTextTransformer {
            embeddings: CLIPTextEmbeddings {
                token_embedding: EmbeddingConfig::new(self.vocab_size, self.hidden_size)
                    .init(device),
                position_embedding: EmbeddingConfig::new(
                    self.max_position_embeddings,
                    self.hidden_size,
                )
                .init(device),
            },
            encoder: dims.init_encoder(device),
            final_layer_norm: dims.layer_norm(device),
            eos_token_id: self.eos_token_id,
        }
    }

    /// [`CLIPTextModel`], parameters lazily initialised.
    pub fn init<B: Backend>(&self, device: &B::Device) -> CLIPTextModel<B> {
        CLIPTextModel {
            text_model: self.init_transformer(device),
        }
    }

    /// [`CLIPTextModelWithProjection`], parameters lazily initialised.
    pub fn init_with_projection<B: Backend>(
        &self,
        device: &B::Device,
    ) -> CLIPTextModelWithProjection<B> {
        CLIPTextModelWithProjection {
            text_model: self.init_transformer(device),
            text_projection: LinearConfig::new(self.hidden_size, self.projection_dim)
                .with_bias(false)
                .init(device),
        }
    }
}

/// The shape of `{prefix}{name}`, which must have rank `rank`.
fn tensor_shape(
    shapes: &BTreeMap<String, Vec<usize>>,
    prefix: &str,
    name: &str,
    rank: usize,
    source: &Path,
) -> Result<Vec<usize>, LoadError> {
    let key = format!("{prefix}{name}");
    match shapes.get(&key) {
        Some(shape) if shape.len() == rank => Ok(shape.clone()),
        Some(shape) => Err(bad_shapes(
            source,
            format!("`{key}` has shape {shape:?}, expected {rank} dimensions"),
        )),
        None => Err(bad_shapes(source, format!("no tensor `{key}`"))),
    }
}

fn bad_shapes(source: &Path, reason: String) -> LoadError {
    LoadError::BadConfig {
        path: source.to_path_buf(),
        reason: format!("cannot derive the text encoder's config from the tensors: {reason}"),
    }
}

/// Token and learned position embeddings (`CLIPTextEmbeddings`).
#[derive(Module, Debug)]
pub struct CLIPTextEmbeddings<B: Backend> {
    /// `[vocab_size, hidden]`.
    pub token_embedding: Embedding<B>,
    /// `[max_position_embeddings, hidden]`.
    pub position_embedding: Embedding<B>,
}

impl<B: Backend> CLIPTextEmbeddings<B> {
    /// # Shapes
    /// - `input_ids`: `[batch, seq]` -> `[batch, seq, hidden]`
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [_, seq] = input_ids.dims();
        let [max_positions, _] = self.position_embedding.weight.dims();
        assert!(
            seq <= max_positions,
            "{seq} tokens exceed the text model's {max_positions} positions (tokenize with truncation)"
        );
        let positions = self.position_embedding.weight.val().slice([0..seq]);
        self.token_embedding.forward(input_ids) + positions.unsqueeze::<3>()
    }
}

/// What the text tower returns.
#[derive(Debug, Clone)]
pub struct CLIPTextOutput<B: Backend> {
    /// After the last block and `final_layer_norm`: `[batch, seq, hidden]` (SD 1.x's
    /// conditioning).
    pub last_hidden_state: Tensor<B, 3>,
    /// The input of the last block, not normalised: transformers' `hidden_states[-2]`,
    /// `[batch, seq, hidden]`. (See [`CLIPTextTransformer::prompt_embeds`] for diffusers'
    /// `clip_skip`, which also applies `final_layer_norm`.)
    pub penultimate_hidden_state: Tensor<B, 3>,
    /// `last_hidden_state` at the end-of-text token: `[batch, hidden]`.
    pub pooler_output: Tensor<B, 2>,
}

/// The text tower (`CLIPTextTransformer`, `text_model.*` in checkpoints).
#[derive(Module, Debug)]
pub struct CLIPTextTransformer<B: Backend> {
    /// Token + position embeddings.
    pub embeddings: CLIPTextEmbeddings<B>,
    /// The causal transformer blocks.
    pub encoder: CLIPEncoder<B>,
    /// Norm after the last block.
    pub final_layer_norm: LayerNorm<B>,
    #[module(skip)]
    eos_token_id: Option<u32>,
}

impl<B: Backend> CLIPTextTransformer<B> {
    /// Run the whole tower.
    ///
    /// # Shapes
    /// - `input_ids`: `[batch, seq]` (from [`CLIPTokenizer`](super::tokenizer::CLIPTokenizer))
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> CLIPTextOutput<B> {
        // 1. embeddings
        let x = self.embeddings.forward(input_ids.clone());
        // 2. causal blocks
        let (x, before_last) = self.encoder.forward(x, true, usize::MAX);
        // 3. final norm
        let last_hidden_state = self.final_layer_norm.forward(x);
        // 4. pool at the end-of-text token
        let pooler_output = self.pool(last_hidden_state.clone(), input_ids);
        CLIPTextOutput {
            last_hidden_state,
            penultimate_hidden_state: before_last,
            pooler_output,
        }
    }

    /// The UNet's conditioning as diffusers computes it: `clip_skip = 0` is the last hidden
    /// state; `clip_skip = k` stops `k` blocks early and applies `final_layer_norm` to that
    /// (diffusers' `clip_skip`; SD 2.x checkpoints already have the last block removed, so they
    /// use `clip_skip = 0`).
    ///
    /// # Shapes
    /// - `input_ids`: `[batch, seq]` -> `[batch, seq, hidden]`
    pub fn prompt_embeds(&self, input_ids: Tensor<B, 2, Int>, clip_skip: usize) -> Tensor<B, 3> {
        let layers = self.encoder.layers.len();
        assert!(
            clip_skip < layers,
            "clip_skip {clip_skip} >= {layers} layers"
        );
        let x = self.embeddings.forward(input_ids);
        let (x, _) = self.encoder.forward(x, true, layers - clip_skip);
        self.final_layer_norm.forward(x)
    }

    /// Gather `hidden` at each sequence's end-of-text position.
    fn pool(&self, hidden: Tensor<B, 3>, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let [batch, _, width] = hidden.dims();
        let positions = match self.eos_token_id {
            // Legacy configs: EOS has the largest id, so its first position is the argmax
            // (argmax returns the first maximum, as torch's does).
            None | Some(2) => input_ids.argmax(1),
            Some(eos) => input_ids.equal_elem(eos as i64).int().argmax(1),
        };
        let index = positions.reshape([batch, 1, 1]).expand([batch, 1, width]);
        hidden.gather(1, index).reshape([batch, width])
    }
}

/// `CLIPTextModel`: the text tower alone (SD's `text_encoder/`).
#[derive(Module, Debug)]
pub struct CLIPTextModel<B: Backend> {
    /// The tower.
    pub text_model: CLIPTextTransformer<B>,
}

impl<B: Backend> CLIPTextModel<B> {
    /// Load a text encoder folder (`config.json` + safetensors), e.g. SD's `text_encoder/`, or
    /// the text tower of a `CLIPModel` folder.
    pub fn from_folder(dir: &Path, device: &B::Device) -> Result<(Self, LoadReport), LoadError> {
        let path = dir.join("config.json");
        let (config, full): (CLIPTextConfig, bool) = read_tower_config(&path, "text_config")?;
        config.validate(&path)?;
        let mut options = clip_load_options(if full {
            ClipCheckpoint::TextOfFull
        } else {
            ClipCheckpoint::Text
        });
        if full {
            // A CLIPModel's text_projection has no place in a CLIPTextModel.
            options = options.with_ignore(r"^text_projection\.");
        }
        load_safetensors_with(config.init(device), &weight_files(dir)?, device, &options)
    }

    /// [`LoadOptions`] reading an OpenCLIP text tower (open_clip's names under `prefix`, e.g.
    /// [`LDM_OPEN_CLIP_PREFIX`]) into a model built from `config` (from
    /// [`CLIPTextConfig::from_open_clip_shapes`]):
    /// - `token_embedding.weight`, `positional_embedding`, `ln_final` -> `text_model.embeddings.*`,
    ///   `text_model.final_layer_norm`;
    /// - `transformer.resblocks.{i}.`: `ln_1`/`ln_2` -> `layer_norm1`/`layer_norm2`,
    ///   `attn.out_proj` -> `self_attn.out_proj`, `mlp.c_fc`/`mlp.c_proj` -> `mlp.fc1`/`mlp.fc2`,
    ///   and `attn.in_proj_weight`/`in_proj_bias` (`[3 width, width]`, rows query, key, value
    ///   as `nn.MultiheadAttention` packs them) split into `self_attn.q_proj`/`k_proj`/`v_proj`;
    /// - ignored: block `config.num_hidden_layers` (the last one: LDM conditions on the
    ///   penultimate layer), `text_projection`, `logit_scale`, `visual.*` (the image tower, if
    ///   kept), and an LDM checkpoint's UNet, VAE, EMA weights and noise schedule.
    pub fn open_clip_load_options(prefix: &str, config: &CLIPTextConfig) -> LoadOptions {
        let p = regex::escape(prefix);
        let layers = r"^(text_model\.encoder\.layers\.\d+\.)";
        LoadOptions::default()
            .with_ignore(format!(
                r"^{p}(text_projection|logit_scale|logit_bias)(\.|$)"
            ))
            .with_ignore(format!(r"^{p}visual\."))
            .with_ignore(format!(
                r"^{p}transformer\.resblocks\.{}\.",
                config.num_hidden_layers
            ))
            .with_ignore(LDM_NOT_TEXT)
            .with_ignore(LDM_SCHEDULE_KEYS)
            .with_remap(
                format!(r"^{p}token_embedding\.weight$"),
                "text_model.embeddings.token_embedding.weight",
            )
            .with_remap(
                format!(r"^{p}positional_embedding$"),
                "text_model.embeddings.position_embedding.weight",
            )
            .with_remap(format!(r"^{p}ln_final\."), "text_model.final_layer_norm.")
            .with_remap(
                format!(r"^{p}transformer\.resblocks\.(\d+)\."),
                "text_model.encoder.layers.${1}.",
            )
            .with_remap(format!(r"{layers}ln_1\."), "${1}layer_norm1.")
            .with_remap(format!(r"{layers}ln_2\."), "${1}layer_norm2.")
            .with_remap(
                format!(r"{layers}attn\.out_proj\."),
                "${1}self_attn.out_proj.",
            )
            .with_remap(format!(r"{layers}mlp\.c_fc\."), "${1}mlp.fc1.")
            .with_remap(format!(r"{layers}mlp\.c_proj\."), "${1}mlp.fc2.")
            .with_split(
                format!(r"{layers}attn\.in_proj_(weight|bias)"),
                [
                    "${1}self_attn.q_proj.${2}",
                    "${1}self_attn.k_proj.${2}",
                    "${1}self_attn.v_proj.${2}",
                ],
            )
    }

    /// [`LoadOptions`] reading a transformers `CLIPTextModel` kept under `prefix` (SD 1.x LDM
    /// checkpoints: `cond_stage_model.transformer.text_model.*`, [`LDM_CLIP_PREFIX`]): the
    /// prefix dropped, the rest of an LDM checkpoint ignored.
    pub fn ldm_clip_load_options(prefix: &str) -> LoadOptions {
        clip_load_options(ClipCheckpoint::Full)
            .with_ignore(LDM_NOT_TEXT)
            .with_ignore(LDM_SCHEDULE_KEYS)
            .with_remap(format!("^{}", regex::escape(prefix)), "")
    }

    /// Loads the text encoder of an original LDM checkpoint `file` (torch pickle or
    /// safetensors) whose tensor shapes are `shapes` ([`crate::weights::tensor_shapes`] of it):
    /// the config from [`CLIPTextConfig::from_ldm_shapes`], the weights through
    /// [`open_clip_load_options`](Self::open_clip_load_options) or
    /// [`ldm_clip_load_options`](Self::ldm_clip_load_options). Missing and unexpected text
    /// encoder tensors are errors. Its [`prompt_embeds`](Self::prompt_embeds) with
    /// `clip_skip = 0` is then what LDM conditions on (`FrozenOpenCLIPEmbedder` with
    /// `layer = "penultimate"`, `FrozenCLIPEmbedder` with `layer = "last"`).
    pub fn from_ldm_checkpoint(
        file: &Path,
        shapes: &BTreeMap<String, Vec<usize>>,
        device: &B::Device,
    ) -> Result<(Self, LdmTextEncoder, LoadReport), LoadError> {
        let (config, kind) = CLIPTextConfig::from_ldm_shapes(shapes, file)?;
        let options = match kind {
            LdmTextEncoder::OpenClip => Self::open_clip_load_options(kind.prefix(), &config),
            LdmTextEncoder::Clip => Self::ldm_clip_load_options(kind.prefix()),
        }
        .with_unexpected(KeyPolicy::Error);
        let (model, report) =
            load_safetensors_with(config.init(device), &[file.to_path_buf()], device, &options)?;
        Ok((model, kind, report))
    }

    /// See [`CLIPTextTransformer::forward`].
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> CLIPTextOutput<B> {
        self.text_model.forward(input_ids)
    }

    /// See [`CLIPTextTransformer::prompt_embeds`].
    pub fn prompt_embeds(&self, input_ids: Tensor<B, 2, Int>, clip_skip: usize) -> Tensor<B, 3> {
        self.text_model.prompt_embeds(input_ids, clip_skip)
    }
}

/// `CLIPTextModelWithProjection`: the text tower and `text_projection` into CLIP's shared
/// embedding space.
#[derive(Module, Debug)]
pub struct CLIPTextModelWithProjection<B: Backend> {
    /// The tower.
    pub text_model: CLIPTextTransformer<B>,
    /// `hidden -> projection_dim`, no bias.
    pub text_projection: Linear<B>,
}

impl<B: Backend> CLIPTextModelWithProjection<B> {
    /// Load a `CLIPTextModelWithProjection` folder, or the text half of a `CLIPModel` folder.
    pub fn from_folder(dir: &Path, device: &B::Device) -> Result<(Self, LoadReport), LoadError> {
        let path = dir.join("config.json");
        let (mut config, full): (CLIPTextConfig, bool) = read_tower_config(&path, "text_config")?;
        config.validate(&path)?;
        if full {
            // A CLIPModel projects with its top-level projection_dim.
            let top: super::clip::CLIPConfig = crate::weights::read_json(&path)?;
            config.projection_dim = top.projection_dim;
        }
        let options = clip_load_options(if full {
            ClipCheckpoint::TextOfFull
        } else {
            ClipCheckpoint::Text
        });
        load_safetensors_with(
            config.init_with_projection(device),
            &weight_files(dir)?,
            device,
            &options,
        )
    }

    /// The tower's outputs and `text_embeds` (`[batch, projection_dim]`, not normalised).
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> (CLIPTextOutput<B>, Tensor<B, 2>) {
        let out = self.text_model.forward(input_ids);
        let embeds = self.text_projection.forward(out.pooler_output.clone());
        (out, embeds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tensor shapes of an LDM checkpoint's text encoder: SD 2.x's OpenCLIP ViT-H/14 tower
    /// (`blocks` resblocks) or SD 1.x's CLIP ViT-L/14 (`blocks` layers).
    fn shapes(kind: LdmTextEncoder, blocks: usize) -> BTreeMap<String, Vec<usize>> {
        let mut shapes = BTreeMap::new();
        let mut add = |key: String, shape: &[usize]| {
            shapes.insert(key, shape.to_vec());
        };
        add("model.diffusion_model.out.2.bias".into(), &[4]);
        add("betas".into(), &[1000]);
        match kind {
            LdmTextEncoder::OpenClip => {
                let p = LDM_OPEN_CLIP_PREFIX;
                add(format!("{p}token_embedding.weight"), &[49408, 1024]);
                add(format!("{p}positional_embedding"), &[77, 1024]);
                add(format!("{p}text_projection"), &[1024, 1024]);
                add(format!("{p}logit_scale"), &[]);
                add(format!("{p}ln_final.weight"), &[1024]);
                for i in 0..blocks {
                    let b = format!("{p}transformer.resblocks.{i}.");
                    add(format!("{b}attn.in_proj_weight"), &[3072, 1024]);
                    add(format!("{b}mlp.c_fc.weight"), &[4096, 1024]);
                    add(format!("{b}mlp.c_proj.weight"), &[1024, 4096]);
                }
            }
            LdmTextEncoder::Clip => {
                let p = format!("{LDM_CLIP_PREFIX}text_model.");
                add(
                    format!("{p}embeddings.token_embedding.weight"),
                    &[49408, 768],
                );
                add(
                    format!("{p}embeddings.position_embedding.weight"),
                    &[77, 768],
                );
                add(format!("{p}embeddings.position_ids"), &[1, 77]);
                for i in 0..blocks {
                    add(
                        format!("{p}encoder.layers.{i}.mlp.fc1.weight"),
                        &[3072, 768],
                    );
                }
            }
        }
        shapes
    }

    #[test]
    fn sd2s_open_clip_tower_is_sd21s_text_encoder() {
        let file = Path::new("v2-1_512-ema-pruned.ckpt");
        let (config, kind) =
            CLIPTextConfig::from_ldm_shapes(&shapes(LdmTextEncoder::OpenClip, 24), file).unwrap();
        assert_eq!(kind, LdmTextEncoder::OpenClip);
        // diffusers' conversion: 23 of the 24 blocks, 16 heads, exact GELU (its config says
        // projection_dim 512, which the text model does not use; the tower's is 1024).
        let expected = CLIPTextConfig {
            projection_dim: 1024,
            ..CLIPTextConfig::sd21_text_encoder()
        };
        assert_eq!(config, expected);
    }

    #[test]
    fn sd1s_clip_text_model_is_vit_l_14() {
        let file = Path::new("v1-5-pruned-emaonly.ckpt");
        let (config, kind) =
            CLIPTextConfig::from_ldm_shapes(&shapes(LdmTextEncoder::Clip, 12), file).unwrap();
        assert_eq!(kind, LdmTextEncoder::Clip);
        assert_eq!(config, CLIPTextConfig::clip_vit_l_14());
    }

    #[test]
    fn underivable_towers_are_named() {
        let file = Path::new("model.ckpt");
        let e = CLIPTextConfig::from_ldm_shapes(&shapes(LdmTextEncoder::OpenClip, 1), file)
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.ckpt") && e.contains("at least 2"), "{e}");
        let mut gap = shapes(LdmTextEncoder::OpenClip, 4);
        gap.retain(|k, _| !k.contains("resblocks.2."));
        let e = CLIPTextConfig::from_ldm_shapes(&gap, file)
            .unwrap_err()
            .to_string();
        assert!(e.contains("{0, 1, 3}"), "{e}");
        let mut none = shapes(LdmTextEncoder::OpenClip, 2);
        none.retain(|k, _| !k.starts_with("cond_stage_model."));
        let e = CLIPTextConfig::from_ldm_shapes(&none, file)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no text encoder"), "{e}");
    }

    #[test]
    fn open_clip_options_skip_the_last_block_only() {
        let config = CLIPTextConfig::sd21_text_encoder();
        let options = CLIPTextModel::<burn::backend::NdArray>::open_clip_load_options(
            LDM_OPEN_CLIP_PREFIX,
            &config,
        );
        let ignored = |key: &str| {
            options
                .ignore
                .iter()
                .any(|p| regex::Regex::new(p).unwrap().is_match(key))
        };
        let p = LDM_OPEN_CLIP_PREFIX;
        assert!(ignored(&format!("{p}transformer.resblocks.23.ln_1.weight")));
        assert!(!ignored(&format!("{p}transformer.resblocks.2.ln_1.weight")));
        assert!(!ignored(&format!(
            "{p}transformer.resblocks.22.ln_1.weight"
        )));
        assert!(ignored(&format!("{p}text_projection")));
        assert!(ignored(&format!("{p}logit_scale")));
        assert!(ignored(&format!("{p}visual.proj")));
        assert!(ignored("first_stage_model.encoder.conv_in.weight"));
        assert!(!ignored(&format!("{p}token_embedding.weight")));
    }
}
