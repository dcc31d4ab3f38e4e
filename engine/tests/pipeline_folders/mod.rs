//! Helpers for tests that copy and reload Tiny World pipeline folders (each test file that
//! needs them includes this with `mod pipeline_folders;`).
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use std::sync::atomic::AtomicBool;

use rewardsds_engine::generate::{GenerateConfig, GenerateEvent, Generator, StopReason};
use rewardsds_engine::models::unet_2d::{UNet2DConditionModel, UNet2DConditionModelConfig};
#[cfg(feature = "train")]
use rewardsds_engine::tiny_world::recipe::{Phases, RecipeConfig, run_recipe};
use rewardsds_engine::weights::weight_files;

/// A fresh path in the temp directory for this process (removed if it was there).
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rewardsds-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    dir
}

/// Every file under `dir`, recursively.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Copies the files directly in `from` into `to` (created).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

/// The UNet of the pipeline folder `dir`, loaded exactly.
pub fn load_unet(dir: &Path) -> (UNet2DConditionModelConfig, UNet2DConditionModel<NdArray>) {
    let device = Default::default();
    let config = UNet2DConditionModelConfig::from_file(dir.join("unet/config.json")).unwrap();
    let (model, report) = config
        .init::<NdArray>(&device)
        .load_weights(&weight_files(&dir.join("unet")).unwrap(), &device)
        .unwrap();
    assert!(report.is_exact(), "{report:?}");
    (config, model)
}

/// A tiny pipeline trained by the test recipe (reward, judge, UNet; no eval) into a fresh
/// temp folder `name`.
#[cfg(feature = "train")]
pub fn train_test_pipeline(name: &str) -> PathBuf {
    let out = temp_dir(name);
    let train = Phases {
        reward: true,
        judge: true,
        unet: true,
        eval: false,
    };
    let device = Default::default();
    run_recipe::<Autodiff<NdArray>>(&RecipeConfig::test(), train, &out, 2, &device, &mut |_| {})
        .unwrap();
    out
}

/// Copies every file of the pipeline `from` but its UNet's into `to` (created, same layout),
/// so a recipe can train a new UNet there or a test can write one of its own.
pub fn copy_all_but_unet(from: &Path, to: &Path) {
    for file in walk(from) {
        if file.starts_with(from.join("unet")) {
            continue;
        }
        let target = to.join(file.strip_prefix(from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&file, &target).unwrap();
    }
}

/// The test fixtures folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Copies each `(subfolder, file)` into `dir/subfolder/` (created).
pub fn copy_into(dir: &Path, files: &[(&str, PathBuf)]) {
    for (folder, from) in files {
        std::fs::create_dir_all(dir.join(folder)).unwrap();
        std::fs::copy(from, dir.join(folder).join(from.file_name().unwrap())).unwrap();
    }
}

/// The tiny SD 2 text encoder and tokenizer, the given UNet files, the 2-level VAE and a DDIM
/// scheduler, as `(subfolder, file)` pairs of a diffusers-style pipeline.
fn latent_pipeline_files(
    f: &Path,
    unet: [(&'static str, PathBuf); 2],
) -> Vec<(&'static str, PathBuf)> {
    let mut files = vec![
        (
            "tokenizer",
            f.join("clip/sd2-text/tokenizer/tokenizer.json"),
        ),
        (
            "tokenizer",
            f.join("clip/sd2-text/tokenizer/tokenizer_config.json"),
        ),
        (
            "text_encoder",
            f.join("clip/sd2-text/text_encoder/config.json"),
        ),
        (
            "text_encoder",
            f.join("clip/sd2-text/text_encoder/model.safetensors"),
        ),
    ];
    files.extend(unet);
    files.extend([
        ("vae", f.join("vae_tiny/config.json")),
        (
            "vae",
            f.join("vae_tiny/diffusion_pytorch_model.safetensors"),
        ),
        ("scheduler", f.join("scheduler_ddim/scheduler_config.json")),
    ]);
    files
}

/// A diffusers-style latent pipeline from the tiny fixtures whose widths agree: the 32-wide
/// SD 2 text encoder, the 32-context UNet, the 2-level VAE and a DDIM scheduler.
pub fn sd_folder(dir: &Path) {
    let f = fixtures();
    let unet = [
        ("unet", f.join("unet_sd15_tiny/config.json")),
        (
            "unet",
            f.join("unet_sd15_tiny/diffusion_pytorch_model.safetensors"),
        ),
    ];
    copy_into(dir, &latent_pipeline_files(&f, unet));
}

/// A real-model preset shrunk to CI size (`GenerateConfig::shrink_scene_for_checks`); its
/// guidance is untouched.
pub fn ci_sized(config: &mut GenerateConfig) {
    config.shrink_scene_for_checks();
}

/// A diffusers-style MVDream pipeline folder in `dir` around the tiny MVDream fixture (its
/// original `.pt` as the UNet's weights): tokenizer/ and text_encoder/ (the tiny SD 2 text
/// encoder, 32-wide as the UNet's context), unet/, vae/, scheduler/.
/// Two objects' 4 views each, 90 degrees apart as MVDream renders them.
pub fn mvdream_views() -> Vec<rewardsds_engine::guidance::ViewAngles> {
    (0..8)
        .map(|i| {
            rewardsds_engine::guidance::ViewAngles::new(
                30.0 + 90.0 * (i % 4) as f32,
                if i < 4 { 15.0 } else { 25.0 },
            )
        })
        .collect()
}

pub fn mvdream_folder(dir: &Path) {
    let f = fixtures();
    let unet = [
        ("unet", f.join("mvdream_tiny/unet/config.json")),
        ("unet", f.join("mvdream_tiny/sd-v2.1-base-4view-tiny.pt")),
    ];
    copy_into(dir, &latent_pipeline_files(&f, unet));
}

/// A single-file MVDream folder in `dir` around the tiny MVDream fixture: its original `.pt`
/// (UNet, VAE and OpenCLIP text tower under LDM names) at the top and the tiny CLIP BPE
/// tokenizer as SD 2.x ships its `tokenizer/` (vocab.json, merges.txt,
/// tokenizer_config.json). The tiny model is not a released layout, so the configs the
/// weights do not tell go with it: `unet/config.json` and `vae/config.json` (no weights there).
pub fn mvdream_single_file_folder(dir: &Path) {
    let f = fixtures();
    let files = [
        ("", f.join("mvdream_tiny/sd-v2.1-base-4view-tiny.pt")),
        ("tokenizer", f.join("clip/sd2-text/tokenizer/vocab.json")),
        ("tokenizer", f.join("clip/sd2-text/tokenizer/merges.txt")),
        (
            "tokenizer",
            f.join("clip/sd2-text/tokenizer/tokenizer_config.json"),
        ),
        ("unet", f.join("mvdream_tiny/unet/config.json")),
        ("vae", f.join("mvdream_tiny/vae/config.json")),
    ];
    copy_into(dir, &files);
}

/// Runs `config` to its end on the CPU, checking every step's loss is finite; returns the
/// generator and the rewards of each rewarded step.
pub fn run_collecting_rewards(
    config: GenerateConfig,
) -> (Generator<Autodiff<NdArray>>, Vec<Vec<f32>>) {
    let mut generator = Generator::<Autodiff<NdArray>>::load(config, &Default::default()).unwrap();
    let mut rewards = Vec::new();
    let reason = generator
        .run(&AtomicBool::new(false), &mut |e| {
            if let GenerateEvent::Progress(p) = e {
                assert!(p.loss.is_finite(), "{p:?}");
                if !p.rewards.is_empty() {
                    rewards.push(p.rewards.clone());
                }
            }
        })
        .unwrap();
    assert_eq!(reason, StopReason::Finished);
    (generator, rewards)
}

/// Exports the generator's mesh to `path`: some triangles, and a Khronos-valid file.
pub fn export_valid_glb(generator: &Generator<Autodiff<NdArray>>, path: &Path) {
    let (export, _) = generator.export_glb(path).unwrap();
    assert!(export.triangles > 0);
    assert_khronos_valid(path);
}

/// Checks `path` with the Khronos glTF validator: no errors. Without the validator installed
/// the check is skipped, except in CI (`CI` set), which must have it.
pub fn assert_khronos_valid(path: &Path) {
    use rewardsds_engine::export::{ValidatorError, khronos_validate};
    match khronos_validate(path) {
        Ok(report) => assert_eq!(report.errors, 0, "{}", report.messages),
        Err(ValidatorError::Missing(why)) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI requires the validator: {why}"
            )
        }
        Err(e) => panic!("{e}"),
    }
}
