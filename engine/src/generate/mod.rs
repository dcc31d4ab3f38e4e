//! The generation loop, headless: [`GenerateConfig`] (every knob, presets, TOML; a NeRF or
//! [Gaussians](gaussian_scene) as the scene),
//! [`Generator`] (step by step, progress events, snapshots, cancellation), its
//! [`checkpoint`]s, and [`image2d`], the same guidance optimising an image directly.

pub mod checkpoint;
pub mod config;
pub mod edit;
pub mod gaussian_scene;
pub mod generator;
pub mod image2d;
mod image2d_checkpoint;
pub mod job;
pub mod model_cache;
pub mod preview;
mod texture_checkpoint;
pub mod texture_stage;

pub use checkpoint::{CheckpointError, CheckpointState, checkpoint_config, latest_checkpoint};
pub use config::{GenerateConfig, PRESETS, ResolutionMilestone, SceneKind};
pub use edit::{EditConfig, edit_config, find_checkpoint_dir};
pub use gaussian_scene::{GaussianScene, GaussianSceneConfig};
pub use generator::{
    GenerateError, GenerateEvent, Generator, Progress, StopReason, guidance_with_models,
    load_guidance, load_prior, load_reward, lod_path, slug,
};
pub use image2d::{Image2dConfig, Image2dEdit, Image2dGenerator, ImageProgress, load_edit_image};
pub use job::{GenerationJob, JobEvent, JobFailure, JobFailureKind, JobReport, JobRequest};
pub use model_cache::ModelCache;
pub use preview::{Preview, PreviewShape, place_splats_on_ground, preview_mesh};
pub use texture_stage::{TexelLookup, Texture, TextureStageConfig, TexturedScene};
