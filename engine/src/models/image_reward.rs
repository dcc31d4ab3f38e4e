//! ImageReward (THUDM/ImageReward, `ImageReward/ImageReward.py`; Xu et al. 2023): a
//! human-preference reward for text-to-image. BLIP's ViT encodes the image
//! ([`blip_vit`](super::blip_vit)), BLIP's BERT encodes the prompt while cross-attending to the
//! image tokens ([`med_bert`](super::med_bert)), a linear MLP head reads the text `[CLS]`
//! position, and the result is normalised:
//! `score = (mlp(cls) - 0.16717362830052426) / 1.0333394966054072`.
//!
//! # Preprocessing
//! Upstream's `ImageReward.score` runs on PIL images (`Resize(224, BICUBIC)` of the short side,
//! `CenterCrop(224)`, `ToTensor`, CLIP's mean/std), which rounds to `uint8` and is not
//! differentiable. [`image_reward_preprocess`] is upstream's tensor path instead (ReFL's
//! `_transform` feeding `score_gard`): the same resize and crop on float tensors with
//! torchvision's `antialias=True` (torch's PIL-compatible bicubic, a = -0.5, support widened
//! by the shrink factor), as two matrix products, so it is exact and differentiable on every
//! backend. On the same images it differs from the PIL path only by PIL's `uint8` rounding and
//! fixed-point weights (2e-3 to 4e-3 in score on the parity fixture's random images).
//!
//! # Files
//! The published model is `ImageReward.pt` (a torch pickle of `ImageReward.state_dict()`,
//! fp32, ~1.8 GB) and `med_config.json`, both in the HF repo `THUDM/ImageReward`, plus
//! bert-base-uncased's `vocab.txt`. A folder with `ImageReward.pt` (or `*.safetensors` with the
//! same keys), `med_config.json` and `vocab.txt` loads with [`ImageRewardScorer::from_folder`];
//! an optional `vision_config.json` (BLIP `VisionTransformer` arguments) overrides the ViT-L/16
//! at 224 px that upstream hard-codes.

use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

use super::bert_tokenizer::BertTokenizer;
use super::blip_vit::{BlipVisionConfig, VisionTransformer};
use super::matmul::{matmul_shared_left, matmul_shared_right};
use super::med_bert::{BertConfig, BertModel, med_bert_load_options};
use super::reward::{AestheticHead, RewardError, RewardModel, clip_normalize};
use crate::weights::{LoadError, LoadOptions, LoadReport, load_safetensors_with, weight_files};

/// Upstream's score normalisation: `ImageReward.mean` (hard-coded in `ImageReward.__init__`,
/// not in the checkpoint).
pub const IMAGE_REWARD_MEAN: f64 = 0.16717362830052426;
/// Upstream's score normalisation: `ImageReward.std`.
pub const IMAGE_REWARD_STD: f64 = 1.0333394966054072;
/// Widths of upstream's `MLP` after its input: Linear(768, 1024), (128), (64), (16), (1).
pub const MLP_WIDTHS: [usize; 5] = [1024, 128, 64, 16, 1];
/// The checkpoint file name upstream publishes.
pub const CHECKPOINT: &str = "ImageReward.pt";

/// Everything that shapes an ImageReward model.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRewardConfig {
    /// The text encoder's `med_config.json` (its `encoder_width` is ignored: see
    /// [`text_config`](Self::text_config)).
    pub med_config: BertConfig,
    /// The image encoder (upstream: `create_vit('large', 224)`).
    pub vision: BlipVisionConfig,
    /// Output width of the (unused) `vision_proj` / `text_proj` (`BLIP_Pretrain`'s 256).
    pub embed_dim: usize,
    /// Subtracted from the head's output.
    pub mean: f64,
    /// The head's output is then divided by this.
    pub std: f64,
}

impl ImageRewardConfig {
    /// ImageReward v1.0: BLIP's med_config (BERT-base, vocab 30524), ViT-L/16 at 224 px.
    pub fn image_reward_v1() -> Self {
        Self {
            med_config: BertConfig::blip_base(),
            vision: BlipVisionConfig::vit_large(224),
            embed_dim: 256,
            mean: IMAGE_REWARD_MEAN,
            std: IMAGE_REWARD_STD,
        }
    }

    /// `med_config.json` from `dir`, and `vision_config.json` if there is one (else ViT-L/16
    /// at 224, as upstream hard-codes).
    pub fn from_folder(dir: &Path) -> Result<Self, LoadError> {
        if !dir.is_dir() {
            return Err(LoadError::MissingFolder {
                path: dir.to_path_buf(),
            });
        }
        let vision_path = dir.join("vision_config.json");
        let vision = if vision_path.is_file() {
            BlipVisionConfig::from_file(&vision_path)?
        } else {
            BlipVisionConfig::vit_large(224)
        };
        Ok(Self {
            med_config: BertConfig::from_file(&dir.join("med_config.json"))?,
            vision,
            ..Self::image_reward_v1()
        })
    }

    /// The text encoder's config as `BLIP_Pretrain` builds it: `encoder_width` set to the
    /// ViT's width, whatever `med_config.json` says (768 there, 1024 in the real model).
    pub fn text_config(&self) -> BertConfig {
        BertConfig {
            encoder_width: self.vision.embed_dim,
            ..self.med_config.clone()
        }
    }

    /// Build the model, parameters lazily initialised.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ImageReward<B> {
        let text = self.text_config();
        let mut widths = vec![text.hidden_size];
        widths.extend(MLP_WIDTHS);
        ImageReward {
            blip: BlipPretrain {
                visual_encoder: self.vision.init(device),
                text_encoder: text.init(device),
                vision_proj: LinearConfig::new(self.vision.embed_dim, self.embed_dim).init(device),
                text_proj: LinearConfig::new(text.hidden_size, self.embed_dim).init(device),
            },
            mlp: AestheticHead::new(&widths, device),
            mean: self.mean,
            std: self.std,
        }
    }
}

/// The parts of BLIP's `BLIP_Pretrain` that ImageReward keeps (`blip.*` in its checkpoint).
#[derive(Module, Debug)]
pub struct BlipPretrain<B: Backend> {
    /// The ViT.
    pub visual_encoder: VisionTransformer<B>,
    /// The BERT with cross-attention.
    pub text_encoder: BertModel<B>,
    /// BLIP's contrastive image projection: in the checkpoint, unused by the score.
    pub vision_proj: Linear<B>,
    /// BLIP's contrastive text projection: in the checkpoint, unused by the score.
    pub text_proj: Linear<B>,
}

/// Upstream's `ImageReward` module: BLIP and the MLP head.
///
/// The head is upstream's `MLP`: Linear(768, 1024), Dropout, Linear(1024, 128), Dropout,
/// Linear(128, 64), Dropout, Linear(64, 16), Linear(16, 1), its ReLUs commented out upstream,
/// so it is purely linear at inference; the same layer stack as LAION's aesthetic head
/// ([`AestheticHead`]), whose code it was adapted from. Checkpoint keys
/// `mlp.layers.{0,2,4,6,7}` are renumbered to `0..=4` at load time.
#[derive(Module, Debug)]
pub struct ImageReward<B: Backend> {
    /// BLIP.
    pub blip: BlipPretrain<B>,
    /// The head.
    pub mlp: AestheticHead<B>,
    mean: f64,
    std: f64,
}

impl<B: Backend> ImageReward<B> {
    /// Load weights into a model built from `config`: `files` is `ImageReward.pt` (torch
    /// pickle) or `.safetensors` file(s) with the same keys.
    pub fn load(
        config: &ImageRewardConfig,
        files: &[PathBuf],
        device: &B::Device,
    ) -> Result<(Self, LoadReport), LoadError> {
        load_safetensors_with(
            config.init(device),
            files,
            device,
            &image_reward_load_options(),
        )
    }

    /// The input side of the image encoder.
    pub fn image_size(&self) -> usize {
        self.blip.visual_encoder.img_size()
    }

    /// Upstream's `score_gard` on preprocessed images and one tokenised prompt, which is
    /// broadcast over the images.
    ///
    /// # Shapes
    /// - `input_ids`: `[1, seq]`, `attention_mask`: `[1, seq]` (1.0 / 0.0),
    ///   `pixels`: `[n, 3, image_size, image_size]` (see [`image_reward_preprocess`]) -> `[n]`
    pub fn score_pixels(
        &self,
        input_ids: Tensor<B, 2, burn::tensor::Int>,
        attention_mask: Tensor<B, 2>,
        pixels: Tensor<B, 4>,
    ) -> Tensor<B, 1> {
        let n = pixels.dims()[0];
        // 1. image tokens: [n, patches + 1, vision width]
        let image_embeds = self.blip.visual_encoder.forward(pixels);
        // 2. the prompt's embeddings once, then broadcast: [n, seq, hidden]
        let text = &self.blip.text_encoder;
        let embeds = text.embeddings.forward(input_ids);
        let [_, seq, hidden] = embeds.dims();
        let embeds = embeds.expand([n, seq, hidden]);
        let bias = BertModel::extended_attention_mask(attention_mask).expand([n, 1, 1, seq]);
        // 3. text encoder cross-attending to the image (all image tokens attended)
        let last_hidden_state = text.forward_embeds(embeds, Some(bias), Some(image_embeds));
        // 4. [CLS] -> head -> normalised score
        let cls = last_hidden_state.slice([0..n, 0..1]).reshape([n, hidden]);
        (self.mlp.forward(cls) - self.mean) / self.std
    }
}

/// The key map of ImageReward checkpoints (the one place for it): `med.py`'s BERT names
/// ([`med_bert_load_options`]: `attention.self`, `LayerNorm`, the `position_ids` buffer) and
/// the head's Dropout-skipping indices `mlp.layers.{0,2,4,6,7}` -> `0..=4`.
pub fn image_reward_load_options() -> LoadOptions {
    // Ascending, and each new index below the next old one: a renamed key never matches a
    // later rule.
    [(2, 1), (4, 2), (6, 3), (7, 4)].into_iter().fold(
        med_bert_load_options(),
        |options, (from, to)| {
            options.with_remap(
                format!(r"^mlp\.layers\.{from}\."),
                format!("mlp.layers.{to}."),
            )
        },
    )
}

/// The output size of torchvision's `Resize(size)` (an int: the short side becomes `size`,
/// the long side `int(size * long / short)`), as `[h, w]`.
pub fn resize_short_side(h: usize, w: usize, size: usize) -> [usize; 2] {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    // Python's int(a * b / c): true division of exact integers, then truncation.
    let new_long = ((size * long) as f64 / short as f64) as usize;
    if w <= h {
        [new_long, size]
    } else {
        [size, new_long]
    }
}

/// torchvision's `center_crop` offset: `int(round((length - crop) / 2.0))`, Python's round
/// (half to even).
fn crop_offset(length: usize, crop: usize) -> usize {
    let twice = length - crop; // offset = twice / 2, rounded half to even
    let (half, odd) = (twice / 2, twice % 2 == 1);
    if odd && half % 2 == 1 { half + 1 } else { half }
}

/// Row `i` holds the weights of output sample `i` over the `input` samples: torch's
/// antialiased bicubic (`F.interpolate(mode='bicubic', antialias=True, align_corners=False)`,
/// `_compute_weights_aa`): Keys' cubic with a = -0.5 centred on `scale * (i + 0.5)`, its
/// support widened by `scale = input / out` when shrinking, normalised to sum 1.
fn bicubic_aa_weights(out: usize, input: usize) -> Vec<f64> {
    fn cubic(x: f64) -> f64 {
        const A: f64 = -0.5;
        let x = x.abs();
        if x < 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
        } else {
            0.0
        }
    }
    let scale = input as f64 / out as f64;
    let (support, invscale) = if scale >= 1.0 {
        (2.0 * scale, 1.0 / scale)
    } else {
        (2.0, 1.0)
    };
    let mut m = vec![0.0f64; out * input];
    for i in 0..out {
        let center = scale * (i as f64 + 0.5);
        // C's truncating casts, as torch.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(input as i64) as usize;
        let row = &mut m[i * input..(i + 1) * input];
        let mut total = 0.0;
        for (j, w) in row.iter_mut().enumerate().take(xmax).skip(xmin) {
            *w = cubic((j as f64 - center + 0.5) * invscale);
            total += *w;
        }
        if total != 0.0 {
            row.iter_mut().for_each(|w| *w /= total);
        }
    }
    m
}

/// ImageReward's preprocessing on float images, differentiable: torchvision's
/// `Resize(size, BICUBIC, antialias=True)` (short side to `size`), `CenterCrop(size)` and
/// `Normalize(CLIP mean, CLIP std)`, as upstream's tensor path (ReFL) applies it. The crop is
/// folded into the resize: only the kept rows and columns are computed,
/// `R_h[crop] @ image @ R_w[crop]^T`.
///
/// # Shapes
/// - `images`: `[n, 3, h, w]` in `[0, 1]` -> `[n, 3, size, size]`
pub fn image_reward_preprocess<B: Backend>(
    images: Tensor<B, 4>,
    size: usize,
) -> Result<Tensor<B, 4>, RewardError> {
    let shape = images.dims();
    let [n, c, h, w] = shape;
    if n == 0 || c != 3 || h == 0 || w == 0 {
        return Err(RewardError::BadImages { shape });
    }
    let device = images.device();
    let [rh, rw] = resize_short_side(h, w, size);
    // [size, input]: the rows of the resize matrix that survive the crop.
    let matrix = |resized: usize, input: usize| {
        let top = crop_offset(resized, size);
        let weights = bicubic_aa_weights(resized, input);
        let kept: Vec<f32> = weights[top * input..(top + size) * input]
            .iter()
            .map(|&v| v as f32)
            .collect();
        Tensor::<B, 2>::from_data(TensorData::new(kept, [size, input]), &device)
    };
    let mut x = images;
    if !(rh == size && h == size) {
        x = matmul_shared_left(matrix(rh, h), x); // [n, 3, size, w]
    }
    if !(rw == size && w == size) {
        x = matmul_shared_right(x, matrix(rw, w).transpose()); // [n, 3, size, size]
    }
    Ok(clip_normalize(x))
}

/// ImageReward as a [`RewardModel`] (`image_reward`): the model and its tokenizer. Scores are
/// roughly standardised (mean 0, std 1 over upstream's data); higher is preferred.
#[derive(Debug)]
pub struct ImageRewardScorer<B: Backend> {
    model: ImageReward<B>,
    tokenizer: BertTokenizer,
}

impl<B: Backend> ImageRewardScorer<B> {
    /// A scorer from a loaded model and its tokenizer; errors if the tokenizer's ids do not
    /// fit the model's vocabulary.
    pub fn new(model: ImageReward<B>, tokenizer: BertTokenizer) -> Result<Self, LoadError> {
        let [vocab, _] = model
            .blip
            .text_encoder
            .embeddings
            .word_embeddings
            .weight
            .dims();
        if tokenizer.vocab_size() > vocab {
            return Err(LoadError::BadConfig {
                path: PathBuf::from("med_config.json"),
                reason: format!(
                    "the tokenizer has {} tokens ([DEC]/[ENC] included), the text encoder's vocab_size is {vocab}",
                    tokenizer.vocab_size()
                ),
            });
        }
        Ok(Self { model, tokenizer })
    }

    /// Load a folder holding `ImageReward.pt` (or `*.safetensors` with its keys),
    /// `med_config.json`, `vocab.txt` (bert-base-uncased's) and optionally
    /// `vision_config.json`.
    pub fn from_folder(dir: &Path, device: &B::Device) -> Result<(Self, LoadReport), LoadError> {
        let config = ImageRewardConfig::from_folder(dir)?;
        let checkpoint = dir.join(CHECKPOINT);
        let files = if checkpoint.is_file() {
            vec![checkpoint]
        } else {
            weight_files(dir)?
        };
        // The tokenizer's vocab.txt: the folder's own, else bert-base-uncased's in the cache
        // (the `image-reward` preset fetches it beside THUDM/ImageReward).
        let preset = crate::weights::preset("image-reward")?;
        let vocab = crate::weights::companion_file(
            dir,
            preset,
            "vocab.txt",
            &crate::weights::hf_hub_cache(),
        )?;
        let tokenizer_dir = vocab.parent().unwrap_or(dir);
        Self::from_files(&config, &files, tokenizer_dir, device)
    }

    /// Load from explicit weight files and a tokenizer folder (`vocab.txt`), e.g. the
    /// `~/.cache/ImageReward` download and the bert-base-uncased snapshot.
    pub fn from_files(
        config: &ImageRewardConfig,
        files: &[PathBuf],
        tokenizer_dir: &Path,
        device: &B::Device,
    ) -> Result<(Self, LoadReport), LoadError> {
        let tokenizer = BertTokenizer::from_folder(tokenizer_dir)?;
        let (model, report) = ImageReward::load(config, files, device)?;
        Ok((Self::new(model, tokenizer)?, report))
    }

    /// The wrapped model.
    pub fn model(&self) -> &ImageReward<B> {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &BertTokenizer {
        &self.tokenizer
    }

    /// The same scorer on an autodiff backend whose inner backend is `B`, sharing the weights
    /// (no copy) with their gradients off: reward feedback differentiates into the images only.
    pub fn autodiff<AD: AutodiffBackend<InnerBackend = B>>(&self) -> ImageRewardScorer<AD> {
        ImageRewardScorer {
            model: ImageReward::<AD>::from_inner(self.model.clone()).no_grad(),
            tokenizer: self.tokenizer.clone(),
        }
    }
}

impl<B: Backend> RewardModel<B> for ImageRewardScorer<B> {
    fn score(&self, images: Tensor<B, 4>, prompt: &str) -> Result<Tensor<B, 1>, RewardError> {
        let device = images.device();
        let pixels = image_reward_preprocess(images, self.model.image_size())?;
        let (ids, mask) = self.tokenizer.tensors::<B>(prompt, &device)?;
        Ok(self.model.score_pixels(ids, mask, pixels))
    }

    fn name(&self) -> &'static str {
        "image_reward"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_and_crop_sizes_follow_torchvision() {
        assert_eq!(resize_short_side(40, 52, 32), [32, 41]);
        assert_eq!(resize_short_side(52, 40, 32), [41, 32]);
        assert_eq!(resize_short_side(21, 27, 32), [32, 41]);
        assert_eq!(resize_short_side(30, 30, 224), [224, 224]);
        // int(round(x / 2)), half to even: 1 -> 0, 3 -> 2, 5 -> 2, 9 -> 4, 7 -> 4.
        assert_eq!(crop_offset(33, 32), 0);
        assert_eq!(crop_offset(35, 32), 2);
        assert_eq!(crop_offset(37, 32), 2);
        assert_eq!(crop_offset(41, 32), 4);
        assert_eq!(crop_offset(39, 32), 4);
        assert_eq!(crop_offset(32, 32), 0);
    }

    #[test]
    fn bicubic_aa_rows_sum_to_one_and_same_size_is_identity() {
        for (out, input) in [(32, 40), (32, 21), (7, 100), (224, 224)] {
            let m = bicubic_aa_weights(out, input);
            for row in m.chunks(input) {
                assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            }
        }
        let m = bicubic_aa_weights(5, 5);
        for i in 0..5 {
            for j in 0..5 {
                assert_eq!(m[i * 5 + j], if i == j { 1.0 } else { 0.0 });
            }
        }
    }
}
