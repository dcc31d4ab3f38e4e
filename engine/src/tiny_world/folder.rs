//! The shipped layout, diffusers/transformers style, read by the same loaders as SD and CLIP:
//!
//! ```text
//! tiny-world/
//!   model_index.json
//!   text_encoder/ config.json, model.safetensors        (CLIPTextModel)
//!   tokenizer/    tokenizer.json, tokenizer_config.json, special_tokens_map.json
//!   unet/         config.json, diffusion_pytorch_model.safetensors (UNet2DConditionModel)
//!   scheduler/    scheduler_config.json                  (DDIMScheduler)
//!   reward/       config.json, model.safetensors, tokenizer files (CLIPModel)
//!   judge/        config.json, model.safetensors, tokenizer files (CLIPModel)
//! ```
//!
//! Weights are stored in f16 (the models were trained in f32; the f16 round trip is tested).

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::DType;
use burn::tensor::backend::Backend;
use serde::Serialize;
use serde_json::json;

use super::vocab::write_tokenizer;
use crate::models::clip::{CLIPConfig, CLIPModel};
use crate::models::clip_text::CLIPTextModel;
use crate::models::schedulers::DDIMSchedulerConfig;
use crate::models::unet_2d::{UNet2DConditionModel, UNet2DConditionModelConfig};
use crate::weights::{LoadError, save_safetensors};

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), LoadError> {
    let text = serde_json::to_string_pretty(value).expect("configs serialise");
    std::fs::write(path, text).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn create(dir: &Path) -> Result<(), LoadError> {
    std::fs::create_dir_all(dir).map_err(|source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

fn metadata(what: &str) -> HashMap<String, String> {
    HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (
            "generator".to_string(),
            format!("rewardsds tiny_world ({what})"),
        ),
    ])
}

/// A `CLIPModel` folder (`config.json`, `model.safetensors`, tokenizer files), the layout of
/// `openai/clip-vit-large-patch14`.
pub fn write_clip<B: Backend>(
    dir: &Path,
    model: &CLIPModel<B>,
    config: &CLIPConfig,
) -> Result<(), LoadError> {
    create(dir)?;
    let mut value = serde_json::to_value(config).expect("configs serialise");
    value["architectures"] = json!(["CLIPModel"]);
    value["model_type"] = json!("clip");
    write_json(&dir.join("config.json"), &value)?;
    save_safetensors(
        model,
        &dir.join("model.safetensors"),
        DType::F16,
        metadata("clip"),
    )?;
    write_tokenizer(dir)
}

/// A diffusers `text_encoder/` folder holding the text tower of `clip`.
pub fn write_text_encoder<B: Backend>(
    dir: &Path,
    clip: &CLIPModel<B>,
    config: &CLIPConfig,
) -> Result<(), LoadError> {
    create(dir)?;
    let mut value = serde_json::to_value(&config.text_config).expect("configs serialise");
    value["architectures"] = json!(["CLIPTextModel"]);
    value["model_type"] = json!("clip_text_model");
    write_json(&dir.join("config.json"), &value)?;
    let text = CLIPTextModel {
        text_model: clip.text_model.clone(),
    };
    save_safetensors(
        &text,
        &dir.join("model.safetensors"),
        DType::F16,
        metadata("text encoder"),
    )
}

/// A diffusers `unet/` folder.
pub fn write_unet<B: Backend>(
    dir: &Path,
    model: &UNet2DConditionModel<B>,
    config: &UNet2DConditionModelConfig,
) -> Result<(), LoadError> {
    create(dir)?;
    write_json(&dir.join("config.json"), config)?;
    save_safetensors(
        model,
        &dir.join("diffusion_pytorch_model.safetensors"),
        DType::F16,
        metadata("unet"),
    )
}

/// The prior's folders other than the UNet: tokenizer, scheduler, model index.
pub fn write_pipeline_files(root: &Path, scheduler: &DDIMSchedulerConfig) -> Result<(), LoadError> {
    write_tokenizer(&root.join("tokenizer"))?;
    create(&root.join("scheduler"))?;
    write_json(
        &root.join("scheduler").join("scheduler_config.json"),
        scheduler,
    )?;
    write_json(
        &root.join("model_index.json"),
        &json!({
            "_class_name": "TinyWorldPipeline",
            "_note": "pixel-space text-to-image prior trained by rewardsds (no VAE)",
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "scheduler": ["diffusers", "DDIMScheduler"],
        }),
    )
}
