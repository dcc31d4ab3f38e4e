//! The diffusion prior SDS distils from: [`DiffusionPrior`] holds a diffusers pipeline's CLIP
//! tokenizer and text encoder, its UNet, its VAE when it is a latent prior, and the DDIM noise
//! schedule; it encodes prompts and images and predicts classifier-free-guided noise.
//!
//! A latent prior (Stable Diffusion) sees `scaling_factor * z` where `z` is the VAE latent of
//! the image mapped to `[-1, 1]`. A pixel-space prior has no VAE (the pipeline folder has no
//! `vae/`): its UNet sees the image itself mapped to `[-1, 1]`, with `in_channels = 3`.
//!
//! Image encoding is ordinary tensor ops, so it is differentiable on an autodiff backend; the
//! guidance keeps a copy of it on the autodiff backend
//! ([`DiffusionPrior::autodiff_image_encoder`])
//! while the prior itself runs on the inner backend.

use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, Int, Tensor, TensorData};
use rand::Rng;

use super::ConfigError;
use super::prompts::{CAMERA_LABELS, ViewAngles, camera_labels};
use super::sds::standard_normal;
use crate::host_batch::map_batch_grouped;
use crate::models::CLIPTextModel;
use crate::models::camera_utils;
use crate::models::clip_text::{CLIPTextConfig, LdmTextEncoder};
use crate::models::mv_unet::{
    LDM_UNET_PREFIX, MultiViewUNetModelConfig, is_mv_unet_config, load_mv_unet,
};
use crate::models::resize::resize_bilinear;
use crate::models::schedulers::{DDIMScheduler, DDIMSchedulerConfig, SchedulerError};
use crate::models::tokenizer::CLIPTokenizer;
use crate::models::unet_2d::{UNet2DConditionModel, UNet2DConditionModelConfig};
use crate::models::vae::{AutoencoderKL, AutoencoderKLConfig};
use crate::weights::{LoadError, load_safetensors_with, tensor_shapes, weight_files};

/// The pieces of a prior, for building one from models already in memory
/// ([`DiffusionPrior::new`]); [`DiffusionPrior::from_folder`] reads them from a pipeline folder.
#[derive(Debug)]
pub struct PriorParts<B: Backend> {
    /// CLIP tokenizer (`tokenizer/`).
    pub tokenizer: CLIPTokenizer,
    /// CLIP text tower (`text_encoder/`).
    pub text_encoder: CLIPTextModel<B>,
    /// diffusers' `clip_skip` (0 for SD 1.x/2.x, whose text encoders are already cut).
    pub clip_skip: usize,
    /// The denoiser (`unet/`).
    pub unet: UNet2DConditionModel<B>,
    /// Its config: `sample_size`, channels and `cross_attention_dim` are checked against the
    /// other parts.
    pub unet_config: UNet2DConditionModelConfig,
    /// The autoencoder of a latent prior (`vae/`); `None` for a pixel-space prior.
    pub vae: Option<AutoencoderKL<B>>,
    /// The noise schedule (`scheduler/scheduler_config.json`).
    pub scheduler: DDIMScheduler,
}

/// Images in `[0, 1]` to what the UNet denoises: bilinear resize to the prior's resolution,
/// then `2x - 1`, then (latent priors) the VAE posterior sample times `scaling_factor`.
#[derive(Debug, Clone)]
pub struct ImageEncoder<B: Backend> {
    vae: Option<AutoencoderKL<B>>,
    resolution: usize,
}

impl<B: Backend> ImageEncoder<B> {
    /// The image side, in pixels, images are resized to.
    pub fn resolution(&self) -> usize {
        self.resolution
    }

    /// Whether a VAE sits between images and the UNet.
    pub fn is_latent(&self) -> bool {
        self.vae.is_some()
    }

    /// Encodes images; differentiable on an autodiff backend.
    ///
    /// Latent priors take a *sample* of the VAE posterior, `mean + std * eps` with `eps` drawn
    /// from `rng`, as threestudio's `encode_images` (`latent_dist.sample()`) and the official
    /// RewardSDS 2D code do: SDS then matches the reference's gradients in distribution, and
    /// SD's posterior std is small (its latents are nearly deterministic) so the sample costs
    /// little variance. [`encode_mean`](Self::encode_mean) is the deterministic variant.
    /// Pixel priors draw nothing from `rng`.
    ///
    /// # Shapes
    /// - images: `[batch, 3, H, W]`, values in `[0, 1]`, any `H, W`
    /// - output: `[batch, channels, r, r]` (`r` = resolution / VAE downscale)
    pub fn encode(&self, images: Tensor<B, 4>, rng: &mut impl Rng) -> Tensor<B, 4> {
        self.encode_with(images, Some(rng))
    }

    /// [`encode`](Self::encode) with the posterior mean instead of a sample.
    pub fn encode_mean(&self, images: Tensor<B, 4>) -> Tensor<B, 4> {
        self.encode_with(images, None::<&mut rand::rngs::StdRng>)
    }

    fn encode_with(&self, images: Tensor<B, 4>, rng: Option<&mut impl Rng>) -> Tensor<B, 4> {
        let [_, _, h, w] = images.dims();
        let r = self.resolution;
        // [batch, 3, r, r], as threestudio: F.interpolate(bilinear, align_corners=False)
        let images = if (h, w) == (r, r) {
            images
        } else {
            resize_bilinear(images, [r, r])
        };
        let x = images * 2.0 - 1.0;
        let Some(vae) = &self.vae else {
            return x;
        };
        let posterior = vae.encode(x);
        let z = match rng {
            Some(rng) => {
                let dims = posterior.mean.dims();
                let eps = standard_normal(rng, dims.iter().product());
                let eps = Tensor::from_data(
                    TensorData::new(eps, dims),
                    (&posterior.mean.device(), posterior.mean.dtype()),
                );
                posterior.sample_with(eps)
            }
            None => posterior.mode(),
        };
        vae.scale_latents(z)
    }
}

/// How a camera-conditioned UNet takes its cameras (its `class_labels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CameraInput {
    /// [`ViewAngles::camera_labels`]: sin/cos of azimuth and elevation (the Tiny World prior).
    Angles,
    /// MVDream's normalised camera-to-world matrix in its training frame
    /// ([`camera_utils`]).
    MvDream,
}

impl CameraInput {
    /// The input a UNet whose class embedding takes `width` labels expects.
    fn for_width(width: usize) -> Result<Self, ConfigError> {
        match width {
            CAMERA_LABELS => Ok(Self::Angles),
            camera_utils::CAMERA_DIM => Ok(Self::MvDream),
            other => Err(ConfigError::new(
                "unet.projection_class_embeddings_input_dim",
                format!(
                    "{other}: cameras are fed as {CAMERA_LABELS} angle features (sin and cos of \
                     azimuth and elevation) or as MVDream's {}-value camera matrix",
                    camera_utils::CAMERA_DIM
                ),
            )),
        }
    }
}

/// MVDream's camera input for an orbit view: its normalised pose depends on the angles only.
fn mvdream_view_camera(elevation_deg: f64, azimuth_deg: f64) -> [f32; camera_utils::CAMERA_DIM] {
    camera_utils::get_camera(1, elevation_deg, azimuth_deg, 360.0, true)[0]
}

/// A text-conditioned diffusion model with its text encoder, optional VAE and DDIM schedule.
/// A clone shares the weights (burn tensors are reference-counted): several generations can
/// use one loaded prior.
#[derive(Debug, Clone)]
pub struct DiffusionPrior<B: Backend> {
    camera_input: Option<CameraInput>,
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel<B>,
    clip_skip: usize,
    unet: UNet2DConditionModel<B>,
    unet_config: UNet2DConditionModelConfig,
    encoder: ImageEncoder<B>,
    scheduler: DDIMScheduler,
}

/// Fetches every lazily initialised parameter now: clones of a lazy parameter initialise
/// independently (different random values), and the guidance clones the VAE onto the autodiff
/// backend.
pub(crate) struct Materialize;

impl<B: Backend> ModuleVisitor<B> for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
    }
    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<B, D, Int>>) {
        let _ = param.val();
    }
    fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<B, D, Bool>>) {
        let _ = param.val();
    }
}

/// Extensions of an original (LDM) checkpoint at the top of a prior folder.
const SINGLE_FILE_EXTENSIONS: [&str; 4] = ["pt", "pth", "ckpt", "safetensors"];

/// The one original checkpoint at the top of `dir`, if there is one; several are an error.
fn single_file_checkpoint(dir: &Path) -> Result<Option<PathBuf>, LoadError> {
    let io = |source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let known = path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
            SINGLE_FILE_EXTENSIONS
                .iter()
                .any(|k| e.eq_ignore_ascii_case(k))
        });
        if known && path.is_file() {
            found.push(path);
        }
    }
    found.sort();
    match found.len() {
        0 | 1 => Ok(found.pop()),
        n => Err(LoadError::BadConfig {
            path: dir.to_path_buf(),
            reason: format!(
                "holds {n} checkpoint files ({}) and no text_encoder/: keep the one original \
                 checkpoint to load",
                found
                    .iter()
                    .filter_map(|f| f.file_name())
                    .map(|f| f.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// What to do when a single-file folder has no `tokenizer/`.
fn missing_tokenizer_hint(checkpoint: &Path, kind: LdmTextEncoder) -> String {
    let source = match kind {
        LdmTextEncoder::OpenClip => {
            "SD 2.x's: the tokenizer/ folder of stabilityai/stable-diffusion-2-1-base or of \
             ashawkey/mvdream-sd2.1-diffusers (OpenCLIP's BPE vocabulary, padded with `!`)"
        }
        LdmTextEncoder::Clip => {
            "SD 1.x's: the tokenizer/ folder of stable-diffusion-v1-5/stable-diffusion-v1-5 \
             (openai/clip-vit-large-patch14's vocabulary)"
        }
    };
    format!(
        "{} holds no tokenizer; put one next to it: vocab.json and merges.txt (or \
         tokenizer.json) in this folder, {source}",
        checkpoint
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    )
}

impl<B: Backend> DiffusionPrior<B> {
    /// A prior from parts in memory, after checking they fit together (the error names the
    /// part and field at fault).
    pub fn new(parts: PriorParts<B>) -> Result<Self, ConfigError> {
        let PriorParts {
            tokenizer,
            text_encoder,
            clip_skip,
            unet,
            unet_config,
            vae,
            scheduler,
        } = parts;
        let sample_size = unet_config.sample_size.ok_or_else(|| {
            ConfigError::new(
                "unet.sample_size",
                "is not set: the prior's resolution is unknown",
            )
        })?;
        if sample_size == 0 {
            return Err(ConfigError::new("unet.sample_size", "must be positive"));
        }
        let hidden = text_encoder
            .text_model
            .embeddings
            .token_embedding
            .weight
            .lazy_shape()[1];
        for level in 0..unet_config.block_out_channels.len() {
            let dim = unet_config.cross_attention_dim.get(level);
            if dim != hidden {
                return Err(ConfigError::new(
                    "unet.cross_attention_dim",
                    format!(
                        "{dim} at level {level}, but the text encoder makes {hidden}-wide embeddings"
                    ),
                ));
            }
        }
        let layers = text_encoder.text_model.encoder.layers.len();
        if clip_skip >= layers {
            return Err(ConfigError::new(
                "clip_skip",
                format!("{clip_skip} skips all {layers} text encoder layers"),
            ));
        }
        let channels = unet_config.in_channels;
        if unet_config.out_channels != channels {
            return Err(ConfigError::new(
                "unet.out_channels",
                format!(
                    "{} differs from in_channels {channels}: the UNet must predict noise of the sample's shape",
                    unet_config.out_channels
                ),
            ));
        }
        let resolution = match &vae {
            Some(vae) => {
                let latent = vae.encoder.conv_out.weight.lazy_shape()[0] / 2;
                if latent != channels {
                    return Err(ConfigError::new(
                        "unet.in_channels",
                        format!("{channels}, but the VAE makes {latent}-channel latents"),
                    ));
                }
                sample_size << vae.encoder.down_blocks.len().saturating_sub(1)
            }
            None if channels != 3 => {
                return Err(ConfigError::new(
                    "unet.in_channels",
                    format!(
                        "{channels}, but a pixel-space prior (no VAE) denoises RGB images: 3 channels"
                    ),
                ));
            }
            None => sample_size,
        };
        let camera_input = unet
            .class_labels_width()
            .map(CameraInput::for_width)
            .transpose()?;
        text_encoder.visit(&mut Materialize);
        unet.visit(&mut Materialize);
        if let Some(vae) = &vae {
            vae.visit(&mut Materialize);
        }
        Ok(Self {
            camera_input,
            tokenizer,
            text_encoder,
            clip_skip,
            unet,
            unet_config,
            encoder: ImageEncoder { vae, resolution },
            scheduler,
        })
    }

    /// Loads a diffusers pipeline folder: `tokenizer/`, `text_encoder/`, `unet/`,
    /// `scheduler/scheduler_config.json` and, for a latent prior, `vae/` (a pixel-space prior
    /// has none). The error names the missing folder or file, or the config at fault.
    ///
    /// A folder without `text_encoder/` that holds one original MVDream checkpoint at its top
    /// (`sd-v2.1-base-4view.pt` or `sd-v1.5-4view.pt`: a torch pickle `*.pt`/`*.pth`/`*.ckpt`,
    /// or a `*.safetensors` with the same LDM keys) loads every model from that file instead;
    /// only `tokenizer/` must sit next to it (the checkpoint has none). See
    /// [`from_single_file`](Self::from_single_file).
    pub fn from_folder(dir: &Path, device: &B::Device) -> Result<Self, LoadError> {
        if !dir.is_dir() {
            return Err(LoadError::MissingFolder {
                path: dir.to_path_buf(),
            });
        }
        if !dir.join("text_encoder").is_dir()
            && let Some(checkpoint) = single_file_checkpoint(dir)?
        {
            return Self::from_single_file(dir, &checkpoint, device);
        }
        let folder = |name: &str| {
            let path = dir.join(name);
            if path.is_dir() {
                Ok(path)
            } else {
                Err(LoadError::MissingFolder { path })
            }
        };
        let file = |path: std::path::PathBuf| {
            if path.is_file() {
                Ok(path)
            } else {
                Err(LoadError::MissingFile { path, hint: None })
            }
        };
        let bad_config = |path: &Path, reason: String| LoadError::BadConfig {
            path: path.to_path_buf(),
            reason,
        };

        // 1. text
        let tokenizer = CLIPTokenizer::from_folder(&folder("tokenizer")?)?;
        let (text_encoder, _) = CLIPTextModel::from_folder(&folder("text_encoder")?, device)?;

        // 2. unet
        let unet_dir = folder("unet")?;
        let unet_config_path = file(unet_dir.join("config.json"))?;
        let is_mv = is_mv_unet_config(&unet_config_path)
            .map_err(|e| bad_config(&unet_config_path, e.to_string()))?;
        let (unet, unet_config) = if is_mv {
            // MVDream (the diffusers-style conversion): LDM key names, cameras, 3D attention.
            let config = MultiViewUNetModelConfig::from_file(&unet_config_path)
                .map_err(|e| bad_config(&unet_config_path, e.to_string()))?;
            let unet_config = config
                .to_unet_config()
                .map_err(|e| bad_config(&unet_config_path, e.to_string()))?;
            let unet = config.init::<B>(device);
            let (unet, _) = load_mv_unet(&config, unet, &weight_files(&unet_dir)?, device)?;
            (unet, unet_config)
        } else {
            let unet_config = UNet2DConditionModelConfig::from_file(&unet_config_path)
                .map_err(|e| bad_config(&unet_config_path, e.to_string()))?;
            let (unet, _) = unet_config
                .init::<B>(device)
                .load_weights(&weight_files(&unet_dir)?, device)?;
            (unet, unet_config)
        };

        // 3. scheduler
        let scheduler_path = file(folder("scheduler")?.join("scheduler_config.json"))?;
        let scheduler = DDIMSchedulerConfig::from_file(&scheduler_path)
            .map_err(|e| bad_config(&scheduler_path, e.to_string()))
            .and_then(|c| {
                DDIMScheduler::new(c).map_err(|e| bad_config(&scheduler_path, e.to_string()))
            })?;

        // 4. vae, if this is a latent prior
        let vae_dir = dir.join("vae");
        let vae = if vae_dir.is_dir() {
            let path = file(vae_dir.join("config.json"))?;
            let config = AutoencoderKLConfig::from_file(&path)
                .map_err(|e| bad_config(&path, e.to_string()))?;
            let (vae, _) = config
                .init::<B>(device)
                .load_weights(&weight_files(&vae_dir)?, device)?;
            Some(vae)
        } else {
            None
        };

        Self::new(PriorParts {
            tokenizer,
            text_encoder,
            clip_skip: 0,
            unet,
            unet_config,
            vae,
            scheduler,
        })
        .map_err(|e| bad_config(&unet_config_path, e.to_string()))
    }

    /// Loads an original MVDream checkpoint `checkpoint` (LDM key names: the UNet under
    /// `model.diffusion_model.`, the VAE under `first_stage_model.`, the text encoder under
    /// `cond_stage_model.`) with the tokenizer in `dir/tokenizer/`:
    /// - text encoder: SD 2.x's OpenCLIP tower (sd-v2.1-base-4view) or SD 1.x's CLIP
    ///   (sd-v1.5-4view), its config derived from the tensor shapes
    ///   ([`CLIPTextModel::from_ldm_checkpoint`]; OpenCLIP conditions on the penultimate layer);
    /// - UNet: [`MultiViewUNetModelConfig::sd21_base_4view`] or
    ///   [`sd15_4view`](MultiViewUNetModelConfig::sd15_4view), told apart by the shapes
    ///   ([`MultiViewUNetModelConfig::from_ldm_shapes`]);
    /// - VAE: Stable Diffusion's ([`AutoencoderKLConfig::sd`], LDM names through
    ///   [`AutoencoderKL::ldm_load_options`]);
    /// - schedule: SD's (`scaled_linear` 0.00085 to 0.012 over 1000 steps, which MVDream's
    ///   `linear_start`/`linear_end` with LDM's `"linear"` schedule are),
    ///   [`DDIMSchedulerConfig::sd21_base`].
    ///
    /// A checkpoint of another layout (e.g. a test model) needs the configs the weights do
    /// not tell: `dir/unet/config.json` (`MultiViewUNetModel`, as the diffusers-style
    /// conversion writes it) and `dir/vae/config.json` (`AutoencoderKL`) are used when they
    /// are there. The file's index is read once per model (its tensors are read once, lazily).
    pub fn from_single_file(
        dir: &Path,
        checkpoint: &Path,
        device: &B::Device,
    ) -> Result<Self, LoadError> {
        let bad_config = |path: &Path, reason: String| LoadError::BadConfig {
            path: path.to_path_buf(),
            reason,
        };
        let shapes = tensor_shapes(checkpoint)?;
        if !shapes.keys().any(|k| k.starts_with(LDM_UNET_PREFIX)) {
            return Err(bad_config(
                checkpoint,
                format!(
                    "not an original LDM checkpoint (no `{LDM_UNET_PREFIX}*` tensors); a \
                     diffusers-style prior folder has tokenizer/, text_encoder/, unet/, \
                     scheduler/ and vae/ instead"
                ),
            ));
        }

        // 1. text: the tokenizer is the one part the checkpoint lacks.
        let (_, kind) = CLIPTextConfig::from_ldm_shapes(&shapes, checkpoint)?;
        let tokenizer_dir = dir.join("tokenizer");
        if !tokenizer_dir.is_dir() {
            return Err(LoadError::MissingFile {
                path: tokenizer_dir,
                hint: Some(missing_tokenizer_hint(checkpoint, kind)),
            });
        }
        let tokenizer = CLIPTokenizer::from_folder(&tokenizer_dir)?;
        let (text_encoder, _, _) = CLIPTextModel::from_ldm_checkpoint(checkpoint, &shapes, device)?;
        let files = [checkpoint.to_path_buf()];

        // 2. unet
        let unet_config_path = dir.join("unet").join("config.json");
        let config = if unet_config_path.is_file() {
            MultiViewUNetModelConfig::from_file(&unet_config_path)
                .map_err(|e| bad_config(&unet_config_path, e.to_string()))?
        } else {
            MultiViewUNetModelConfig::from_ldm_shapes(&shapes).map_err(|e| {
                bad_config(
                    checkpoint,
                    format!(
                        "{e} (put that layout's MultiViewUNetModel config in {})",
                        unet_config_path.display()
                    ),
                )
            })?
        };
        let unet_config = config
            .to_unet_config()
            .map_err(|e| bad_config(checkpoint, e.to_string()))?;
        let (unet, _) = load_mv_unet(&config, config.init::<B>(device), &files, device)?;

        // 3. vae
        let vae_config_path = dir.join("vae").join("config.json");
        let vae_config = if vae_config_path.is_file() {
            AutoencoderKLConfig::from_file(&vae_config_path)
                .map_err(|e| bad_config(&vae_config_path, e.to_string()))?
        } else {
            AutoencoderKLConfig::sd()
        };
        let vae = vae_config.init::<B>(device);
        let options = vae.ldm_load_options();
        let (vae, _) = load_safetensors_with(vae, &files, device, &options).map_err(|e| {
            if vae_config_path.is_file() {
                e
            } else {
                bad_config(
                    checkpoint,
                    format!(
                        "{e} (its VAE is read as Stable Diffusion's; another layout needs its \
                         AutoencoderKL config in {})",
                        vae_config_path.display()
                    ),
                )
            }
        })?;

        // 4. scheduler
        let scheduler = DDIMScheduler::new(DDIMSchedulerConfig::sd21_base())
            .map_err(|e| bad_config(checkpoint, e.to_string()))?;

        Self::new(PriorParts {
            tokenizer,
            text_encoder,
            clip_skip: 0,
            unet,
            unet_config,
            vae: Some(vae),
            scheduler,
        })
        .map_err(|e| bad_config(checkpoint, e.to_string()))
    }

    /// The same prior conditioning on the text encoder's layer `clip_skip` from the end
    /// (diffusers' `clip_skip`).
    ///
    /// # Panics
    /// If `clip_skip` is not less than the number of text encoder layers.
    pub fn with_clip_skip(mut self, clip_skip: usize) -> Self {
        let layers = self.text_encoder.text_model.encoder.layers.len();
        assert!(
            clip_skip < layers,
            "clip_skip {clip_skip} >= {layers} layers"
        );
        self.clip_skip = clip_skip;
        self
    }

    /// The image side in pixels the prior expects: the UNet's `sample_size` times the VAE's
    /// downscale (8 for SD: 64 -> 512), or `sample_size` for a pixel prior.
    pub fn resolution(&self) -> usize {
        self.encoder.resolution
    }

    /// Channels of what the UNet denoises (4 for SD latents, 3 for pixels).
    pub fn channels(&self) -> usize {
        self.unet_config.in_channels
    }

    /// Side of what the UNet denoises (the UNet's `sample_size`).
    pub fn sample_size(&self) -> usize {
        self.unet_config
            .sample_size
            .expect("checked when the prior was built")
    }

    /// Whether this is a latent prior (it has a VAE).
    pub fn is_latent(&self) -> bool {
        self.encoder.is_latent()
    }

    /// The noise schedule.
    pub fn scheduler(&self) -> &DDIMScheduler {
        &self.scheduler
    }

    /// `alphas_cumprod[t]`.
    pub fn alpha_prod(&self, t: usize) -> Result<f32, SchedulerError> {
        self.scheduler.alpha_prod(t)
    }

    /// Training timesteps `T` (1000 for SD).
    pub fn num_train_timesteps(&self) -> usize {
        self.scheduler.config.num_train_timesteps
    }

    /// The UNet.
    pub fn unet(&self) -> &UNet2DConditionModel<B> {
        &self.unet
    }

    /// The text encoder (`text_encoder/`).
    pub fn text_encoder(&self) -> &CLIPTextModel<B> {
        &self.text_encoder
    }

    /// The UNet's config.
    pub fn unet_config(&self) -> &UNet2DConditionModelConfig {
        &self.unet_config
    }

    /// The VAE of a latent prior.
    pub fn vae(&self) -> Option<&AutoencoderKL<B>> {
        self.encoder.vae.as_ref()
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &CLIPTokenizer {
        &self.tokenizer
    }

    /// The UNet conditioning of one prompt (`""` is CFG's unconditional prompt).
    ///
    /// # Shapes
    /// - output: `[1, seq, hidden]`
    pub fn encode_prompt(&self, prompt: &str) -> Result<Tensor<B, 3>, LoadError> {
        self.encode_prompts(&[prompt])
    }

    /// The UNet conditioning of several prompts in one text-encoder pass.
    ///
    /// # Shapes
    /// - output: `[prompts, seq, hidden]`
    pub fn encode_prompts(&self, prompts: &[&str]) -> Result<Tensor<B, 3>, LoadError> {
        let device = self.device();
        let ids = self.tokenizer.input_ids::<B>(prompts, &device)?;
        Ok(self.text_encoder.prompt_embeds(ids, self.clip_skip))
    }

    /// The device the prior's weights live on.
    pub fn device(&self) -> B::Device {
        self.unet.conv_in.weight.device()
    }

    /// See [`ImageEncoder::encode`]: resize, map to `[-1, 1]`, VAE posterior sample (drawn
    /// from `rng`) times `scaling_factor`.
    ///
    /// # Shapes
    /// - images: `[batch, 3, H, W]` in `[0, 1]` -> `[batch, channels, sample_size, sample_size]`
    pub fn encode_images(&self, images: Tensor<B, 4>, rng: &mut impl Rng) -> Tensor<B, 4> {
        self.encoder.encode(images, rng)
    }

    /// The image encoder on this backend.
    pub fn image_encoder(&self) -> &ImageEncoder<B> {
        &self.encoder
    }

    /// The image encoder on an autodiff backend whose inner backend is this prior's, sharing
    /// the VAE's weights (no copy) with gradients off for them: SDS differentiates through the
    /// encoder into the images only.
    pub fn autodiff_image_encoder<AD: AutodiffBackend<InnerBackend = B>>(
        &self,
    ) -> ImageEncoder<AD> {
        ImageEncoder {
            vae: self
                .encoder
                .vae
                .as_ref()
                .map(|vae| AutoencoderKL::<AD>::from_inner(vae.clone()).no_grad()),
            resolution: self.encoder.resolution,
        }
    }

    /// Images in `[0, 1]` for UNet-space samples: VAE decode of `z / scaling_factor` for a
    /// latent prior, `(z + 1) / 2` for a pixel prior, clamped to `[0, 1]`.
    ///
    /// # Shapes
    /// - z: `[batch, channels, h, w]` -> `[batch, 3, H, W]`
    pub fn decode(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = match &self.encoder.vae {
            Some(vae) => vae.decode(vae.unscale_latents(z)),
            None => z,
        };
        (x * 0.5 + 0.5).clamp(0.0, 1.0)
    }

    /// Classifier-free-guided noise prediction `eps_uncond + s (eps_cond - eps_uncond)` at
    /// timestep `t`, in one UNet pass over the doubled batch. v- and x0-predicting models are
    /// converted to epsilon (the conversion is linear, so guiding before or after it is the
    /// same). `class_labels` (a camera-conditioned prior's cameras, [`Self::class_labels_width`])
    /// go to both branches: CFG drops the text, not the view.
    ///
    /// # Shapes
    /// - x_t: `[n, channels, h, w]`
    /// - cond, uncond: `[n, seq, hidden]` or `[1, seq, hidden]` (broadcast)
    /// - class_labels: `[n, width]` or `[1, width]` (broadcast)
    /// - output: `[n, channels, h, w]`
    pub fn predict_noise_cfg(
        &self,
        x_t: Tensor<B, 4>,
        t: usize,
        cond: Tensor<B, 3>,
        uncond: Tensor<B, 3>,
        class_labels: Option<Tensor<B, 2>>,
        guidance_scale: f32,
    ) -> Result<Tensor<B, 4>, SchedulerError> {
        let (uncond_out, cond_out) = self.cfg_pass(x_t.clone(), t, cond, uncond, class_labels)?;
        let guided = uncond_out.clone() + (cond_out - uncond_out) * guidance_scale;
        self.scheduler.pred_epsilon(guided, x_t, &[t])
    }

    /// CFG's two noise predictions apart, `(eps_uncond, eps_cond)`, each converted to epsilon,
    /// from the same one UNet pass as [`predict_noise_cfg`](Self::predict_noise_cfg); for
    /// guidance that weighs the generative term `eps_uncond - eps` and the classifier term
    /// `eps_cond - eps_uncond` apart (CSD, arXiv 2310.19415).
    ///
    /// # Shapes
    /// As [`predict_noise_cfg`](Self::predict_noise_cfg); both outputs `[n, channels, h, w]`.
    pub fn predict_noise_branches(
        &self,
        x_t: Tensor<B, 4>,
        t: usize,
        cond: Tensor<B, 3>,
        uncond: Tensor<B, 3>,
        class_labels: Option<Tensor<B, 2>>,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>), SchedulerError> {
        let (uncond_out, cond_out) = self.cfg_pass(x_t.clone(), t, cond, uncond, class_labels)?;
        Ok((
            self.scheduler.pred_epsilon(uncond_out, x_t.clone(), &[t])?,
            self.scheduler.pred_epsilon(cond_out, x_t, &[t])?,
        ))
    }

    /// The UNet's raw outputs for both CFG branches, `(uncond, cond)`, in one pass over the
    /// doubled batch.
    fn cfg_pass(
        &self,
        x_t: Tensor<B, 4>,
        t: usize,
        cond: Tensor<B, 3>,
        uncond: Tensor<B, 3>,
        class_labels: Option<Tensor<B, 2>>,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>), SchedulerError> {
        let n = x_t.dims()[0];
        // Fails early on a timestep outside the schedule.
        self.scheduler.alpha_prod(t)?;
        // [2n, ...]: unconditional first, then conditional.
        let sample = Tensor::cat(vec![x_t.clone(), x_t], 0);
        let context = Tensor::cat(vec![broadcast(uncond, n), broadcast(cond, n)], 0);
        let labels = class_labels.map(|l| {
            let l = broadcast(l, n);
            Tensor::cat(vec![l.clone(), l], 0)
        });
        let out = self.unet_forward(sample, t, context, labels);
        Ok((out.clone().narrow(0, 0, n), out.narrow(0, n, n)))
    }

    /// The UNet's raw output for a batch at timestep `t`. On a CPU backend the samples run as
    /// one UNet forward per core (`host_batch`), a multi-view prior's views of one object kept
    /// together.
    fn unet_forward(
        &self,
        sample: Tensor<B, 4>,
        t: usize,
        context: Tensor<B, 3>,
        labels: Option<Tensor<B, 2>>,
    ) -> Tensor<B, 4> {
        let frames = self.unet.num_frames();
        map_batch_grouped(
            sample,
            context,
            labels,
            frames,
            |sample, context, labels| {
                self.unet
                    .forward_timestep(sample, t as f32, context, labels)
            },
        )
    }

    /// The noise prediction under one text embedding (no CFG: one UNet branch), converted to
    /// epsilon as [`predict_noise_cfg`](Self::predict_noise_cfg) does; e.g. the unconditional
    /// predictions of a DDIM inversion.
    ///
    /// # Shapes
    /// - x_t: `[n, channels, h, w]`
    /// - context: `[n, seq, hidden]` or `[1, seq, hidden]` (broadcast)
    /// - class_labels: `[n, width]` or `[1, width]` (broadcast)
    /// - output: `[n, channels, h, w]`
    pub fn predict_noise(
        &self,
        x_t: Tensor<B, 4>,
        t: usize,
        context: Tensor<B, 3>,
        class_labels: Option<Tensor<B, 2>>,
    ) -> Result<Tensor<B, 4>, SchedulerError> {
        let n = x_t.dims()[0];
        self.scheduler.alpha_prod(t)?;
        let context = broadcast(context, n);
        let labels = class_labels.map(|l| broadcast(l, n));
        let out = self.unet_forward(x_t.clone(), t, context, labels);
        self.scheduler.pred_epsilon(out, x_t, &[t])
    }

    /// The width of the class labels (camera features) the prior's UNet is conditioned on,
    /// if it is ([`crate::guidance::camera_labels`]).
    pub fn class_labels_width(&self) -> Option<usize> {
        self.unet.class_labels_width()
    }

    /// How the UNet takes its cameras, if it is camera-conditioned.
    pub fn camera_input(&self) -> Option<CameraInput> {
        self.camera_input
    }

    /// The class labels for views at `views` (`[views.len(), width]`), in the form the UNet
    /// was trained with; `None` for a prior without camera conditioning.
    pub fn camera_labels(&self, views: &[ViewAngles], device: &B::Device) -> Option<Tensor<B, 2>> {
        match self.camera_input? {
            CameraInput::Angles => Some(camera_labels::<B>(views, device)),
            CameraInput::MvDream => {
                let rows: Vec<f32> = views
                    .iter()
                    .flat_map(|v| mvdream_view_camera(v.elevation_deg as f64, v.azimuth_deg as f64))
                    .collect();
                Some(Tensor::from_data(
                    TensorData::new(rows, [views.len(), camera_utils::CAMERA_DIM]),
                    device,
                ))
            }
        }
    }

    /// Views per object the UNet denoises together (MVDream: 4); 1 for a single-view prior.
    /// Every batch of samples must be whole groups of it.
    pub fn num_frames(&self) -> usize {
        self.unet.num_frames()
    }

    /// `max_batch` rounded down to whole view groups (at least one group).
    pub(crate) fn whole_groups(&self, max_batch: usize) -> usize {
        let frames = self.num_frames();
        (max_batch / frames).max(1) * frames
    }

    /// [`predict_noise_cfg`](Self::predict_noise_cfg) in passes of at most `max_batch`
    /// samples (UNet batches of `2 * max_batch`), to bound memory.
    ///
    /// # Shapes
    /// As [`predict_noise_cfg`](Self::predict_noise_cfg).
    #[allow(clippy::too_many_arguments)]
    pub fn predict_noise_cfg_chunked(
        &self,
        x_t: Tensor<B, 4>,
        t: usize,
        cond: Tensor<B, 3>,
        uncond: Tensor<B, 3>,
        class_labels: Option<Tensor<B, 2>>,
        guidance_scale: f32,
        max_batch: usize,
    ) -> Result<Tensor<B, 4>, SchedulerError> {
        let max_batch = self.whole_groups(max_batch);
        let parts = chunked(x_t, cond, class_labels, max_batch, |x_t, cond, labels| {
            self.predict_noise_cfg(x_t, t, cond, uncond.clone(), labels, guidance_scale)
        })?;
        Ok(Tensor::cat(parts, 0))
    }

    /// [`predict_noise_branches`](Self::predict_noise_branches) in passes of at most
    /// `max_batch` samples, as [`predict_noise_cfg_chunked`](Self::predict_noise_cfg_chunked).
    pub fn predict_noise_branches_chunked(
        &self,
        x_t: Tensor<B, 4>,
        t: usize,
        cond: Tensor<B, 3>,
        uncond: Tensor<B, 3>,
        class_labels: Option<Tensor<B, 2>>,
        max_batch: usize,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>), SchedulerError> {
        let max_batch = self.whole_groups(max_batch);
        let parts = chunked(x_t, cond, class_labels, max_batch, |x_t, cond, labels| {
            self.predict_noise_branches(x_t, t, cond, uncond.clone(), labels)
        })?;
        let (uncond, cond): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
        Ok((Tensor::cat(uncond, 0), Tensor::cat(cond, 0)))
    }
}

/// `f` over passes of at most `max_batch` samples of `x_t`; per-sample inputs (`cond`,
/// `class_labels` with as many rows as `x_t`) are cut with the batch, broadcast ones pass whole.
pub(crate) fn chunked<B: Backend, T>(
    x_t: Tensor<B, 4>,
    cond: Tensor<B, 3>,
    class_labels: Option<Tensor<B, 2>>,
    max_batch: usize,
    mut f: impl FnMut(Tensor<B, 4>, Tensor<B, 3>, Option<Tensor<B, 2>>) -> Result<T, SchedulerError>,
) -> Result<Vec<T>, SchedulerError> {
    let n = x_t.dims()[0];
    let max_batch = max_batch.max(1);
    if n <= max_batch {
        return Ok(vec![f(x_t, cond, class_labels)?]);
    }
    let mut out = Vec::with_capacity(n.div_ceil(max_batch));
    for start in (0..n).step_by(max_batch) {
        let len = max_batch.min(n - start);
        let cond = if cond.dims()[0] == n {
            cond.clone().narrow(0, start, len)
        } else {
            cond.clone()
        };
        let labels = class_labels.clone().map(|l| {
            if l.dims()[0] == n {
                l.narrow(0, start, len)
            } else {
                l
            }
        });
        out.push(f(x_t.clone().narrow(0, start, len), cond, labels)?);
    }
    Ok(out)
}

/// `e` for a batch of `n`: as is when it has `n` rows, its one row repeated otherwise.
///
/// # Panics
/// On any other row count (a caller's bug: the shapes are documented).
fn broadcast<B: Backend, const D: usize>(e: Tensor<B, D>, n: usize) -> Tensor<B, D> {
    match e.dims()[0] {
        m if m == n => e,
        1 => e.repeat_dim(0, n),
        m => panic!("{m} conditioning rows for a batch of {n} samples"),
    }
}
