//! The architectures a run's cost depends on, from a prior and a reward as `GenerateConfig`
//! names them: weights presets by their published configs (nothing downloaded), folders by
//! their config files.

use std::path::Path;

use crate::generate::GenerateConfig;
use crate::models::autoencoder_tiny::AutoencoderTinyConfig;
use crate::models::clip_vision::CLIPVisionConfig;
use crate::models::image_reward::ImageRewardConfig;
use crate::models::mv_unet::{MultiViewUNetModelConfig, is_mv_unet_config};
use crate::models::unet_2d::UNet2DConditionModelConfig;
use crate::models::vae::AutoencoderKLConfig;
use crate::weights::{bundled_models_dir, preset};

/// ImageReward's text length (upstream tokenises to `max_length=35`).
pub const IMAGE_REWARD_TOKENS: usize = 35;
/// CLIP's text length.
pub const CLIP_TOKENS: usize = 77;

/// What scores the samples.
#[derive(Debug, Clone, PartialEq)]
pub enum RewardArchitecture {
    /// ImageReward (BLIP ViT + BERT + MLP head).
    ImageReward(ImageRewardConfig),
    /// A CLIP image tower (CLIPScore, the LAION aesthetic head on top).
    Clip(CLIPVisionConfig),
}

/// A prior (and a reward) as far as cost goes.
#[derive(Debug, Clone, PartialEq)]
pub struct CostModels {
    /// The denoiser.
    pub unet: UNet2DConditionModelConfig,
    /// Views denoised together (MVDream 4; an image prior 1).
    pub num_frames: usize,
    /// The latent autoencoder; `None` for a pixel-space prior.
    pub vae: Option<AutoencoderKLConfig>,
    /// The reward model, if the run scores samples.
    pub reward: Option<RewardArchitecture>,
    /// The decoder of scored samples when it is not the VAE (TAESD).
    pub score_decoder: Option<AutoencoderTinyConfig>,
    /// Parameters held during a run: text encoder, UNet, VAE, reward.
    pub params: u64,
}

impl CostModels {
    /// Side in pixels of what the prior sees (renders are resized to it).
    pub fn image_side(&self) -> usize {
        let latent = self.latent_side();
        match &self.vae {
            Some(vae) => latent << (vae.block_out_channels.len() - 1),
            None => latent,
        }
    }

    /// Side of what the UNet denoises.
    pub fn latent_side(&self) -> usize {
        self.unet.sample_size.unwrap_or(64)
    }
}

/// Why the cost of a run cannot be computed.
#[derive(Debug, thiserror::Error)]
#[error("cost model: {0}")]
pub struct CostError(pub String);

/// Parameter counts of the published models (the UNets' and ImageReward's are checked against
/// the reference classes by the parity tests; the others are diffusers'/transformers' counts).
mod params {
    pub const SD21_UNET: u64 = 865_910_724;
    pub const SD15_UNET: u64 = 859_520_964;
    pub const MVDREAM_UNET: u64 = 867_572_164;
    pub const SD_VAE: u64 = 83_653_863;
    pub const OPEN_CLIP_H_TEXT: u64 = 340_387_840;
    pub const CLIP_L_TEXT: u64 = 123_060_480;
    pub const IMAGE_REWARD: u64 = 446_665_953;
    pub const CLIP_L_VISION: u64 = 303_966_208;
    pub const TAESD: u64 = 2_445_063;
}

impl CostModels {
    /// The architectures of `prior` and `reward` (weights presets, bundled models or folders).
    pub fn resolve(prior: &str, reward: Option<&str>) -> Result<Self, CostError> {
        let (unet, num_frames, vae, prior_params) = prior_architecture(prior)?;
        let (reward, reward_params) = match reward {
            Some(spec) => {
                let (arch, params) = reward_architecture(spec)?;
                (Some(arch), params)
            }
            None => (None, 0),
        };
        Ok(Self {
            unet,
            num_frames,
            vae,
            reward,
            score_decoder: None,
            params: prior_params + reward_params,
        })
    }

    /// The architectures `config` runs: its prior, its reward where RewardSDS scores, and its
    /// score decoder.
    pub fn for_config(config: &GenerateConfig) -> Result<Self, CostError> {
        let scores = config
            .guidance
            .reward
            .as_ref()
            .is_some_and(|r| r.strategy.uses_rewards());
        let reward = config.reward.as_deref().filter(|_| scores);
        let mut models = Self::resolve(&config.prior, reward)?;
        if let Some(spec) = config.score_decoder.as_deref().filter(|_| scores) {
            let decoder = match spec {
                "taesd" => AutoencoderTinyConfig::default(),
                other => {
                    let path = folder_of(other)?.join("config.json");
                    AutoencoderTinyConfig::from_file(&path)
                        .map_err(|e| CostError(format!("{}: {e}", path.display())))?
                }
            };
            models.params += params::TAESD;
            models.score_decoder = Some(decoder);
        }
        Ok(models)
    }
}

type PriorArchitecture = (
    UNet2DConditionModelConfig,
    usize,
    Option<AutoencoderKLConfig>,
    u64,
);

fn prior_architecture(spec: &str) -> Result<PriorArchitecture, CostError> {
    use params::*;
    let vae = AutoencoderKLConfig::sd();
    Ok(match spec {
        "sd21-base" => (
            UNet2DConditionModelConfig::sd21_base(),
            1,
            Some(vae),
            SD21_UNET + SD_VAE + OPEN_CLIP_H_TEXT,
        ),
        "sd21" => (
            UNet2DConditionModelConfig::sd21(),
            1,
            Some(vae),
            SD21_UNET + SD_VAE + OPEN_CLIP_H_TEXT,
        ),
        "sd15" => (
            UNet2DConditionModelConfig::sd15(),
            1,
            Some(vae),
            SD15_UNET + SD_VAE + CLIP_L_TEXT,
        ),
        "mvdream" => {
            let mv = MultiViewUNetModelConfig::sd21_base_4view();
            let unet = mv.to_unet_config().map_err(|e| CostError(e.to_string()))?;
            (
                unet,
                mv.num_frames,
                Some(vae),
                MVDREAM_UNET + SD_VAE + OPEN_CLIP_H_TEXT,
            )
        }
        other => {
            let dir = folder_of(other)?;
            prior_from_folder(&dir)?
        }
    })
}

/// A bundled model's folder, or `spec` itself as a folder.
fn folder_of(spec: &str) -> Result<std::path::PathBuf, CostError> {
    if let Ok(p) = preset(spec)
        && let Some(bundled) = p.bundled
    {
        return Ok(bundled_models_dir().join(bundled));
    }
    let dir = Path::new(spec);
    if dir.is_dir() {
        Ok(dir.to_path_buf())
    } else {
        Err(CostError(format!(
            "`{spec}` is neither a preset the cost model knows (sd15, sd21-base, sd21, mvdream, \
             image-reward, clip-vit-l-14, laion-aesthetic, the bundled tiny-world ones) nor a \
             model folder"
        )))
    }
}

fn prior_from_folder(dir: &Path) -> Result<PriorArchitecture, CostError> {
    let bad = |e: &dyn std::fmt::Display| CostError(format!("{}: {e}", dir.display()));
    let unet_path = dir.join("unet/config.json");
    let (unet, frames) = if is_mv_unet_config(&unet_path).map_err(|e| bad(&e))? {
        let mv = MultiViewUNetModelConfig::from_file(&unet_path).map_err(|e| bad(&e))?;
        (mv.to_unet_config().map_err(|e| bad(&e))?, mv.num_frames)
    } else {
        (
            UNet2DConditionModelConfig::from_file(&unet_path).map_err(|e| bad(&e))?,
            1,
        )
    };
    let vae_path = dir.join("vae/config.json");
    let vae = if vae_path.is_file() {
        Some(AutoencoderKLConfig::from_file(&vae_path).map_err(|e| bad(&e))?)
    } else {
        None
    };
    Ok((unet, frames, vae, weight_params(dir)))
}

/// Parameters of a folder's weights: its safetensors files' bytes at the stored width (4 per
/// f32, 2 per f16/bf16), read from their headers.
fn weight_params(dir: &Path) -> u64 {
    let mut params = 0;
    for sub in ["text_encoder", "unet", "vae", ""] {
        let Ok(files) = crate::weights::weight_files(&dir.join(sub)) else {
            continue;
        };
        for file in files {
            if let Ok(shapes) = crate::weights::tensor_shapes(&file) {
                params += shapes
                    .values()
                    .map(|s| s.iter().product::<usize>() as u64)
                    .sum::<u64>();
            }
        }
    }
    params
}

fn reward_architecture(spec: &str) -> Result<(RewardArchitecture, u64), CostError> {
    use params::*;
    Ok(match spec {
        "image-reward" => (
            RewardArchitecture::ImageReward(ImageRewardConfig::image_reward_v1()),
            IMAGE_REWARD,
        ),
        "clip-vit-l-14" | "laion-aesthetic" => (
            RewardArchitecture::Clip(CLIPVisionConfig::clip_vit_l_14()),
            CLIP_L_VISION + CLIP_L_TEXT,
        ),
        other => {
            let dir = folder_of(other)?;
            let bad = |e: &dyn std::fmt::Display| CostError(format!("{}: {e}", dir.display()));
            let params = weight_params(&dir);
            if dir.join("med_config.json").is_file() {
                let config = ImageRewardConfig::from_folder(&dir).map_err(|e| bad(&e))?;
                (RewardArchitecture::ImageReward(config), params)
            } else {
                let config =
                    CLIPVisionConfig::from_file(&dir.join("config.json")).map_err(|e| bad(&e))?;
                (RewardArchitecture::Clip(config), params)
            }
        }
    })
}
