//! CLIP's text tower: [`CLIPTextModel`] (SD's `text_encoder/`) and
//! [`CLIPTextModelWithProjection`], configured by transformers' `CLIPTextConfig`.

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
use crate::weights::{LoadError, LoadReport, load_safetensors_with, weight_files};

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
