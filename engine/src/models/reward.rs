//! Reward models for RewardSDS: a common [`RewardModel`] trait, [`ClipScore`] (prompt-image
//! agreement) and [`AestheticPredictor`] (LAION's aesthetic score).
//!
//! Each model takes images as the renderer makes them, `[n, 3, h, w]` in `[0, 1]`, and does
//! its own preprocessing inside ([`clip_preprocess`]): a bilinear resize to the CLIP tower's
//! input side (224 for ViT-L/14) and CLIP's mean/std normalisation. Unlike
//! `CLIPImageProcessor` (bicubic resize of the short side, centre crop, on `uint8` images),
//! this stays a differentiable tensor op; for the square renders SDS makes, the only
//! difference is the interpolation kernel.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::module::{AutodiffModule, Module};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

use super::clip::{CLIPModel, l2_normalize};
use super::clip_vision::CLIPVisionModelWithProjection;
use super::resize::resize_bilinear;
use super::tokenizer::CLIPTokenizer;
use crate::weights::{LoadError, LoadOptions, LoadReport, load_safetensors_with, weight_files};

/// CLIP's per-channel image mean (`CLIPImageProcessor.image_mean`).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel image standard deviation (`CLIPImageProcessor.image_std`).
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_1];

/// Why a reward could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    /// Images must be `[n, 3, h, w]` with `n, h, w > 0`.
    #[error("reward model expects images [n, 3, h, w] with n, h, w > 0, got {shape:?}")]
    BadImages {
        /// The shape that was passed.
        shape: [usize; 4],
    },
    /// The prompt could not be tokenized.
    #[error(transparent)]
    Tokenizer(#[from] LoadError),
}

/// A scorer of rendered images: higher is better.
///
/// RewardSDS only ranks noise samples by their rewards and needs no gradient through them:
/// run reward models on the inner (non-autodiff) backend, so no graph is recorded.
pub trait RewardModel<B: Backend> {
    /// Score each image against `prompt` (models that ignore the prompt say so).
    ///
    /// # Shapes
    /// - `images`: `[n, 3, h, w]`, values in `[0, 1]`, any `h, w` -> `[n]`
    fn score(&self, images: Tensor<B, 4>, prompt: &str) -> Result<Tensor<B, 1>, RewardError>;

    /// A short name for logs and configs (`clip_score`, `aesthetic`).
    fn name(&self) -> &'static str;
}

/// A shared model scores as the model: one copy can guide RewardSDS and also score its result.
impl<B: Backend, R: RewardModel<B> + ?Sized> RewardModel<B> for std::sync::Arc<R> {
    fn score(&self, images: Tensor<B, 4>, prompt: &str) -> Result<Tensor<B, 1>, RewardError> {
        (**self).score(images, prompt)
    }

    fn name(&self) -> &'static str {
        (**self).name()
    }
}

/// Resize `[n, 3, h, w]` images in `[0, 1]` to `size x size` (bilinear, half-pixel centres like
/// `torch.nn.functional.interpolate(align_corners=False)`, no antialiasing) and normalise with
/// CLIP's mean and std.
pub fn clip_preprocess<B: Backend>(
    images: Tensor<B, 4>,
    size: usize,
) -> Result<Tensor<B, 4>, RewardError> {
    let shape = images.dims();
    let [n, c, h, w] = shape;
    if n == 0 || c != 3 || h == 0 || w == 0 {
        return Err(RewardError::BadImages { shape });
    }
    // Differentiable on every backend: reward feedback backpropagates through it.
    let images = if h == size && w == size {
        images
    } else {
        resize_bilinear(images, [size, size])
    };
    Ok(clip_normalize(images))
}

/// `(x - CLIP_MEAN) / CLIP_STD` per channel of `[n, 3, h, w]` images in `[0, 1]`.
pub(crate) fn clip_normalize<B: Backend>(images: Tensor<B, 4>) -> Tensor<B, 4> {
    let device = images.device();
    let channel = |v: [f32; 3]| {
        Tensor::<B, 1>::from_data(TensorData::new(v.to_vec(), [3]), &device).reshape([1, 3, 1, 1])
    };
    (images - channel(CLIP_MEAN)) / channel(CLIP_STD)
}

/// CLIPScore: `100 * cos(image embedding, text embedding)` with a full CLIP model, the metric
/// of Hessel et al. 2021 as torchmetrics computes it, *without* its clamp at 0 (a reward must
/// keep ordering images that all score below 0). Range `[-100, 100]`; ~20-35 for good matches
/// with ViT-L/14.
#[derive(Debug)]
pub struct ClipScore<B: Backend> {
    model: CLIPModel<B>,
    tokenizer: CLIPTokenizer,
    /// The last prompt's normalised text embedding: RewardSDS scores every step against the
    /// same prompt, so its text tower runs once.
    text_cache: Mutex<Option<(String, Tensor<B, 2>)>>,
}

impl<B: Backend> ClipScore<B> {
    /// A scorer from a loaded model and its tokenizer.
    pub fn new(model: CLIPModel<B>, tokenizer: CLIPTokenizer) -> Self {
        Self {
            model,
            tokenizer,
            text_cache: Mutex::new(None),
        }
    }

    /// The L2-normalised text embedding of `prompt`, `[1, projection_dim]` (cached).
    pub fn text_embeds(&self, prompt: &str, device: &B::Device) -> Result<Tensor<B, 2>, LoadError> {
        // A poisoned lock only means another thread panicked mid-update: recompute.
        let mut cache = self.text_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cached, embeds)) = cache.as_ref()
            && cached == prompt
        {
            return Ok(embeds.clone());
        }
        let ids = self.tokenizer.input_ids::<B>(&[prompt], device)?;
        let embeds = l2_normalize(self.model.get_text_features(ids));
        *cache = Some((prompt.to_string(), embeds.clone()));
        Ok(embeds)
    }

    /// Load a `CLIPModel` folder with its tokenizer files (the layout of
    /// `openai/clip-vit-large-patch14`).
    pub fn from_folder(dir: &Path, device: &B::Device) -> Result<(Self, LoadReport), LoadError> {
        let (model, report) = CLIPModel::from_folder(dir, device)?;
        let tokenizer = CLIPTokenizer::from_folder(dir)?;
        Ok((Self::new(model, tokenizer), report))
    }

    /// The wrapped CLIP model.
    pub fn model(&self) -> &CLIPModel<B> {
        &self.model
    }

    /// The same scorer on an autodiff backend whose inner backend is `B`, sharing the weights
    /// (no copy) with their gradients off: reward feedback differentiates into the images only.
    pub fn autodiff<AD: AutodiffBackend<InnerBackend = B>>(&self) -> ClipScore<AD> {
        ClipScore::new(
            CLIPModel::<AD>::from_inner(self.model.clone()).no_grad(),
            self.tokenizer.clone(),
        )
    }
}

impl<B: Backend> RewardModel<B> for ClipScore<B> {
    fn score(&self, images: Tensor<B, 4>, prompt: &str) -> Result<Tensor<B, 1>, RewardError> {
        let device = images.device();
        let size = self.model.vision_model.image_size();
        let pixels = clip_preprocess(images, size)?;
        let text = self.text_embeds(prompt, &device)?; // [1, d]
        let image = l2_normalize(self.model.get_image_features(pixels)); // [n, d]
        let [n, _] = image.dims();
        Ok((image * text).sum_dim(1).reshape([n]) * 100.0)
    }

    fn name(&self) -> &'static str {
        "clip_score"
    }
}

/// The aesthetic head: linear layers with no activation in between, as published (its dropout
/// is inactive at inference).
#[derive(Module, Debug)]
pub struct AestheticHead<B: Backend> {
    /// The layers, in order (`layers.0`, `layers.2`, `layers.4`, `layers.6`, `layers.7` in
    /// the published file: see [`AestheticPredictor`]).
    pub layers: Vec<Linear<B>>,
}

impl<B: Backend> AestheticHead<B> {
    /// A head with the given widths, `[input, hidden..., 1]` (lazily initialised).
    pub fn new(widths: &[usize], device: &B::Device) -> Self {
        let layers = widths
            .windows(2)
            .map(|w| LinearConfig::new(w[0], w[1]).init(device))
            .collect();
        Self { layers }
    }

    /// # Shapes
    /// - `embeds`: `[n, input]` (L2-normalised CLIP image embeddings) -> `[n]`
    pub fn forward(&self, embeds: Tensor<B, 2>) -> Tensor<B, 1> {
        let [n, _] = embeds.dims();
        let out = self.layers.iter().fold(embeds, |x, layer| layer.forward(x));
        out.reshape([n])
    }
}

/// LAION's aesthetic predictor: the improved-aesthetic-predictor head
/// (`sac+logos+ava1-l14-linearMSE`, Schuhmann 2022) on L2-normalised CLIP ViT-L/14 image
/// embeddings. Scores are roughly 1-10 ("how much people like it on average"). The prompt is
/// ignored.
///
/// # Weights
/// Upstream publishes a torch pickle, `sac+logos+ava1-l14-linearMSE.pth`; it loads as it is
/// (burn-store parses the pickle without running code), as does a safetensors copy.
/// Expected keys (from its `nn.Sequential` of Linear/Dropout), shapes `[out, in]`:
/// `layers.0.{weight,bias}` 1024x768, `layers.2` 128x1024, `layers.4` 64x128, `layers.6` 16x64,
/// `layers.7` 1x16. The Dropout indices are skipped: the loader renumbers `layers.{i}` to
/// consecutive indices. The original single-linear LAION predictor
/// (`sa_0_4_vit_l_14_linear.pth`: keys `weight` 1x768 and `bias`) loads too. Layer widths come
/// from the file, so scaled-down heads load the same way.
#[derive(Debug)]
pub struct AestheticPredictor<B: Backend> {
    clip: CLIPVisionModelWithProjection<B>,
    head: AestheticHead<B>,
}

impl<B: Backend> AestheticPredictor<B> {
    /// A predictor from a loaded CLIP vision tower (with projection) and head.
    pub fn new(clip: CLIPVisionModelWithProjection<B>, head: AestheticHead<B>) -> Self {
        Self { clip, head }
    }

    /// Load the CLIP vision half from `clip_dir` (a `CLIPModel` or
    /// `CLIPVisionModelWithProjection` folder) and the head from `head_file` (or the single
    /// `.safetensors` in it, if it is a folder).
    pub fn from_files(
        clip_dir: &Path,
        head_file: &Path,
        device: &B::Device,
    ) -> Result<(Self, LoadReport), LoadError> {
        let (clip, report) = CLIPVisionModelWithProjection::from_folder(clip_dir, device)?;
        let (head, _) = load_aesthetic_head(head_file, device)?;
        let [input, _] = head.layers[0].weight.dims();
        let [_, projection] = clip.visual_projection.weight.dims();
        if input != projection {
            return Err(LoadError::BadConfig {
                path: head_file.to_path_buf(),
                reason: format!(
                    "the aesthetic head reads {input}-d embeddings, the CLIP model in {} makes {projection}-d ones",
                    clip_dir.display()
                ),
            });
        }
        Ok((Self::new(clip, head), report))
    }

    /// The head alone, for scoring precomputed embeddings.
    pub fn head(&self) -> &AestheticHead<B> {
        &self.head
    }

    /// The same predictor on an autodiff backend whose inner backend is `B`, sharing the
    /// weights with their gradients off (reward feedback differentiates into the images only).
    pub fn autodiff<AD: AutodiffBackend<InnerBackend = B>>(&self) -> AestheticPredictor<AD> {
        AestheticPredictor::new(
            CLIPVisionModelWithProjection::<AD>::from_inner(self.clip.clone()).no_grad(),
            AestheticHead::<AD>::from_inner(self.head.clone()).no_grad(),
        )
    }
}

impl<B: Backend> RewardModel<B> for AestheticPredictor<B> {
    fn score(&self, images: Tensor<B, 4>, _prompt: &str) -> Result<Tensor<B, 1>, RewardError> {
        let size = self.clip.vision_model.image_size();
        let pixels = clip_preprocess(images, size)?;
        let (_, embeds) = self.clip.forward(pixels);
        Ok(self.head.forward(l2_normalize(embeds)))
    }

    fn name(&self) -> &'static str {
        "aesthetic"
    }
}

/// Load an aesthetic head, its widths read from the file's shapes. The key map (the one place
/// for this family): `layers.{i}` renumbered to consecutive indices, or a bare `weight`/`bias`
/// (single linear) mapped to `layers.0`.
pub fn load_aesthetic_head<B: Backend>(
    file: &Path,
    device: &B::Device,
) -> Result<(AestheticHead<B>, LoadReport), LoadError> {
    let file = if file.is_dir() {
        let files = weight_files(file)?;
        if files.len() != 1 {
            return Err(LoadError::BadConfig {
                path: file.to_path_buf(),
                reason: format!(
                    "expected one aesthetic head .safetensors, found {}",
                    files.len()
                ),
            });
        }
        files[0].clone()
    } else {
        file.to_path_buf()
    };
    let shapes = crate::weights::load::tensor_shapes(&file)?;
    let bad = |reason: String| LoadError::BadConfig {
        path: file.clone(),
        reason,
    };
    let mut options = LoadOptions::default();
    // (index in the file, [out, in]) of each linear weight.
    let mut weights: Vec<(usize, Vec<usize>)> = Vec::new();
    if let Some(shape) = shapes.get("weight") {
        options = options.with_remap(r"^(weight|bias)$", "layers.0.${1}");
        weights.push((0, shape.clone()));
    } else {
        for (key, shape) in &shapes {
            if let Some(i) = key
                .strip_prefix("layers.")
                .and_then(|rest| rest.strip_suffix(".weight"))
                .and_then(|i| i.parse::<usize>().ok())
            {
                weights.push((i, shape.clone()));
            }
        }
        weights.sort();
        for (k, (i, _)) in weights.iter().enumerate() {
            // Ascending, and k <= i: a renamed key never matches a later rule.
            options = options.with_remap(format!(r"^layers\.{i}\."), format!("layers.{k}."));
        }
    }
    if weights.is_empty() {
        return Err(bad(
            "no `layers.N.weight` or `weight` tensor: not an aesthetic head".into(),
        ));
    }
    let mut widths = Vec::new();
    for (i, shape) in &weights {
        let [out, input] = shape[..] else {
            return Err(bad(format!(
                "layer {i} weight has shape {shape:?}, expected [out, in]"
            )));
        };
        if let Some(&prev) = widths.last()
            && prev != input
        {
            return Err(bad(format!(
                "layer {i} reads {input} features, the previous layer makes {prev}"
            )));
        }
        if widths.is_empty() {
            widths.push(input);
        }
        widths.push(out);
    }
    if widths.last() != Some(&1) {
        return Err(bad(format!(
            "the last layer makes {:?} outputs, expected 1",
            widths.last()
        )));
    }
    let head = AestheticHead::new(&widths, device);
    let files: Vec<PathBuf> = vec![file.clone()];
    load_safetensors_with(head, &files, device, &options)
}
