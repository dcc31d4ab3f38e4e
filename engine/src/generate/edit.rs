//! Editing a finished 3D asset with DDS / RewardDDS (Hertz et al., arXiv 2304.07090; the
//! RewardSDS paper's RewardDDS): the edited scene starts as a copy of the asset and is guided
//! towards the new prompt, while the asset itself, frozen, is rendered from the same cameras
//! (and, for a NeRF, the same ray jitter) as the source branch under the prompt it was made
//! from. What the new prompt does not ask to change renders the same in both branches, so its
//! gradient cancels and it stays.
//!
//! An edit is a generation whose config has an [`EditConfig`]: the [`Generator`] loads the
//! source when it is built, checkpoints and resumes as any run (the source is read again from
//! its folder on resume), and exports the edited scene as a new asset.
//!
//! [`Generator`]: super::Generator

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::checkpoint::{SavedScene, checkpoint_config, latest_checkpoint, read_scene};
use super::config::GenerateConfig;
use super::generator::GenerateError;
use crate::backend::EngineAutodiffBackend;
use crate::guidance::dds::check_config;
use crate::guidance::{ConfigError, Guidance, GuidanceError, PromptEmbeddings};
use crate::render::{RenderOutput, SplatRenderer, VolumeRenderer};
use crate::scene::camera::{Camera, Rays};
use crate::scene::gaussians::Gaussians;
use crate::scene::nerf::Nerf;

/// What an edit starts from (the `edit` table of a [`GenerateConfig`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditConfig {
    /// The checkpoint folder of the asset to edit (a finished or stopped generation; its
    /// `latest` checkpoint is used). The config's `prompt` is the edit's target.
    pub source: PathBuf,
    /// The prompt the source shows (DDS's source branch): the source generation's prompt.
    pub source_prompt: String,
}

impl EditConfig {
    /// Checks the edit against the rest of `config` (its guidance); the error names the
    /// field. The source's own prompt as the target is allowed here (nothing changes: the
    /// gradient of what both branches render alike is 0); [`edit_config`], which hosts
    /// call with user input, refuses it.
    pub fn validate(&self, config: &GenerateConfig) -> Result<(), ConfigError> {
        if self.source.as_os_str().is_empty() {
            return Err(ConfigError::new("edit.source", "is empty"));
        }
        if self.source_prompt.trim().is_empty() {
            return Err(ConfigError::new("edit.source_prompt", "is empty"));
        }
        check_config(&config.guidance).map_err(|e| e.within("guidance"))
    }
}

fn normalised(prompt: &str) -> String {
    prompt
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The checkpoint folder of an asset given as its checkpoint folder or as the output folder
/// that holds it in `checkpoint/` (as `rewardsds generate` writes it).
pub fn find_checkpoint_dir(path: &Path) -> Result<PathBuf, GenerateError> {
    let nested = path.join("checkpoint");
    if !path.join(super::checkpoint::LATEST).exists() && nested.join("latest").exists() {
        return Ok(nested);
    }
    latest_checkpoint(path)?;
    Ok(path.to_path_buf())
}

/// The config of an edit of the asset checkpointed in `source` towards `prompt`: the source
/// generation's own config (prior, reward, scene, schedule, seed) with `prompt` as the target,
/// `edit` naming the source (as an absolute path, so a resume from elsewhere finds it), and
/// the guidance settings DDS has no meaning for switched off, each with a log line
/// ([`check_config`]: ISM, the reconstruction loss, reward feedback, CSD). Refuses the
/// source's own prompt (an edit that would change nothing).
pub fn edit_config(source: &Path, prompt: &str) -> Result<GenerateConfig, GenerateError> {
    let dir = find_checkpoint_dir(source)?;
    let dir = dir.canonicalize().unwrap_or(dir);
    let mut config = checkpoint_config(&dir)?;
    if prompt.trim().is_empty() {
        return Err(
            ConfigError::new("prompt", "is empty: say what the asset should become").into(),
        );
    }
    if normalised(prompt) == normalised(&config.prompt) {
        return Err(ConfigError::new(
            "prompt",
            format!(
                "\"{prompt}\" is the asset's own prompt: an edit needs a prompt that asks for \
                 a change"
            ),
        )
        .into());
    }
    let source_prompt = std::mem::replace(&mut config.prompt, prompt.to_string());
    let guidance = &mut config.guidance;
    let mut off = Vec::new();
    if guidance.ism.take().is_some() {
        off.push("ism");
    }
    if guidance.recon_loss.take().is_some() {
        off.push("recon_loss");
    }
    if guidance.vsd.take().is_some() {
        off.push("vsd");
    }
    if guidance.reward_feedback.take().is_some() {
        off.push("reward_feedback");
    }
    if guidance.generative_weight != 1.0 || guidance.csd_fraction > 0.0 {
        guidance.generative_weight = 1.0;
        guidance.csd_fraction = 0.0;
        off.push("generative_weight / csd_fraction");
    }
    if !off.is_empty() {
        log::info!(
            "editing with DDS: the source's {} switched off (DDS compares two full noise \
             predictions)",
            off.join(", ")
        );
    }
    config.edit = Some(EditConfig {
        source: dir,
        source_prompt,
    });
    Ok(config)
}

/// The frozen source of an edit: its scene and the embeddings of its prompt.
pub(super) struct EditSource<B: EngineAutodiffBackend> {
    pub(super) prompt: PromptEmbeddings<B::InnerBackend>,
    scene: SourceScene<B>,
}

enum SourceScene<B: EngineAutodiffBackend> {
    Nerf {
        nerf: Nerf<B::InnerBackend>,
        renderer: VolumeRenderer,
    },
    Gaussians {
        gaussians: Gaussians<B::InnerBackend>,
        background: [f32; 3],
    },
}

/// The scene an edit starts from, for the generator to train.
pub(super) enum StartScene<B: EngineAutodiffBackend> {
    Nerf(Nerf<B>),
    Gaussians(Gaussians<B::InnerBackend>),
}

impl<B: EngineAutodiffBackend> EditSource<B> {
    /// Reads the source named by `config.edit` and encodes its prompt; returns it with the
    /// scene the edit starts from (a copy of the source's).
    pub(super) fn load(
        config: &GenerateConfig,
        guidance: &Guidance<B>,
        device: &B::Device,
    ) -> Result<Option<(Self, StartScene<B>)>, GenerateError> {
        let Some(edit) = &config.edit else {
            return Ok(None);
        };
        let field = |e: GenerateError| GenerateError::Edit {
            folder: edit.source.clone(),
            reason: e.to_string(),
        };
        let folder = latest_checkpoint(&edit.source).map_err(|e| field(e.into()))?;
        let source_config = checkpoint_config(&edit.source).map_err(field)?;
        if source_config.scene != config.scene {
            return Err(ConfigError::new(
                "scene",
                format!(
                    "is \"{}\", but the edited asset is a {} scene",
                    config.scene.name(),
                    source_config.scene.name()
                ),
            )
            .into());
        }
        let saved = read_scene::<B>(&folder, &source_config, device).map_err(field)?;
        let (scene, start) = match saved {
            SavedScene::Nerf(nerf) => {
                // The edited NeRF is the source's: another shape cannot hold it.
                if config.nerf != source_config.nerf {
                    return Err(ConfigError::new(
                        "nerf",
                        "differs from the edited asset's `nerf` settings: an edit starts from \
                         the asset's NeRF, keep them",
                    )
                    .into());
                }
                let source = SourceScene::Nerf {
                    nerf: nerf.valid(),
                    renderer: VolumeRenderer::new(config.renderer.clone()),
                };
                (source, StartScene::Nerf(nerf))
            }
            SavedScene::Gaussians(gaussians) => {
                let degree = config.gaussians.init.sh_degree;
                if gaussians.sh_degree() != degree {
                    return Err(ConfigError::new(
                        "gaussians.init.sh_degree",
                        format!(
                            "is {degree}, the edited asset's Gaussians have degree {}",
                            gaussians.sh_degree()
                        ),
                    )
                    .into());
                }
                let source = SourceScene::Gaussians {
                    gaussians: gaussians.clone(),
                    background: config.gaussians.background,
                };
                (source, StartScene::Gaussians(gaussians))
            }
        };
        let prompt = PromptEmbeddings::new(
            guidance.prior(),
            &edit.source_prompt,
            &guidance.config().negative_prompt,
            guidance.config().view_thresholds,
        )
        .map_err(GuidanceError::from)?;
        Ok(Some((Self { prompt, scene }, start)))
    }

    /// The source rendered from `cameras` (one size), `[views, 3, h, w]` in `[0, 1]`: for a
    /// NeRF with the edited branch's ray `jitter` and random `backgrounds`, so an unchanged
    /// scene renders the same.
    pub(super) fn render(
        &self,
        cameras: &[Camera],
        jitter: Option<&[f32]>,
        backgrounds: Option<Vec<f32>>,
        device: &B::Device,
    ) -> Result<Tensor<B::InnerBackend, 4>, GenerateError> {
        let (w, h) = match cameras.first() {
            Some(c) => (c.width as usize, c.height as usize),
            None => return Err(GuidanceError::BadInput("no cameras".into()).into()),
        };
        match &self.scene {
            SourceScene::Nerf { nerf, renderer } => {
                let mut rays = Rays::of_cameras(cameras);
                rays.backgrounds = backgrounds;
                let samples = renderer.config().num_samples_per_ray;
                let fallback;
                let jitter = match jitter {
                    Some(j) => j,
                    None => {
                        fallback = vec![0.5; rays.len() * samples];
                        &fallback
                    }
                };
                // In the renderer's training chunks: no graph is kept, so each is freed at once.
                let chunk = renderer.train_chunk_rays();
                let parts: Vec<Tensor<B::InnerBackend, 2>> = (0..rays.len())
                    .step_by(chunk)
                    .map(|start| {
                        let end = (start + chunk).min(rays.len());
                        renderer
                            .render_jittered(
                                nerf,
                                &rays.range(start..end),
                                &jitter[start * samples..end * samples],
                                device,
                            )
                            .rgb
                    })
                    .collect();
                Ok(RenderOutput::images(
                    Tensor::cat(parts, 0),
                    cameras.len(),
                    h,
                    w,
                ))
            }
            SourceScene::Gaussians {
                gaussians,
                background,
            } => {
                let background =
                    Tensor::from_data(TensorData::new(background.to_vec(), [1, 3]), device);
                let out = SplatRenderer
                    .render(gaussians, cameras, background, false)
                    .map_err(|e| ConfigError::new("render_size", e.to_string()))?;
                Ok(RenderOutput::images(out.render.rgb, cameras.len(), h, w))
            }
        }
    }
}
