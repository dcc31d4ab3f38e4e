//! The text encoder of an original LDM checkpoint against the official code, and MVDream's
//! original single-file checkpoint as a prior:
//! - SD 2.x's OpenCLIP tower (`cond_stage_model.model.*`, open_clip names, fused
//!   `in_proj_weight`) loaded as the penultimate-layer `CLIPTextModel`: a tiny random
//!   `FrozenOpenCLIPEmbedder` inside the tiny MVDream `.pt`, its
//!   `encode_with_transformer` outputs (fixtures from `tools/fixtures/make_mvdream_fixtures.py`);
//! - SD 1.x's `FrozenCLIPEmbedder` (`cond_stage_model.transformer.text_model.*`);
//! - `DiffusionPrior::from_folder` on a folder holding only the `.pt` and a tokenizer.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use burn_store::{ModuleStore, PytorchStore, SafetensorsStore};
use rand::SeedableRng;
use rewardsds_engine::guidance::{CameraInput, DiffusionPrior, Guidance, GuidanceConfig};
use rewardsds_engine::models::clip_text::{LDM_CLIP_PREFIX, LDM_OPEN_CLIP_PREFIX, LdmTextEncoder};
use rewardsds_engine::models::{CLIPTextConfig, CLIPTextModel, HiddenAct};
use rewardsds_engine::weights::{load_safetensors_with, tensor_shapes};

mod pipeline_folders;
use pipeline_folders::{mvdream_folder, mvdream_single_file_folder, mvdream_views, temp_dir};

type B = NdArray<f32>;
type A = Autodiff<B>;

/// f32 parity target.
const TOLERANCE: f32 = 1e-5;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn checkpoint() -> PathBuf {
    fixtures().join("mvdream_tiny/sd-v2.1-base-4view-tiny.pt")
}

fn store(name: &str) -> SafetensorsStore {
    SafetensorsStore::from_file(fixtures().join("mvdream_tiny").join(name))
}

fn data(store: &mut SafetensorsStore, name: &str) -> TensorData {
    store
        .get_snapshot(name)
        .unwrap()
        .unwrap_or_else(|| panic!("fixture tensor {name} missing"))
        .to_data()
        .unwrap()
}

fn float<const D: usize>(store: &mut SafetensorsStore, name: &str) -> Tensor<B, D> {
    Tensor::from_data(data(store, name), &Default::default())
}

/// The fixture's token ids `[4, 77]`: the 3 prompts of `text_prompts.json`, then random ids.
fn input_ids() -> Tensor<B, 2, Int> {
    let ids = data(&mut store("text_io.safetensors"), "input_ids").convert::<i64>();
    Tensor::from_data(ids, &Default::default())
}

fn prompts() -> Vec<String> {
    let text = std::fs::read_to_string(fixtures().join("mvdream_tiny/text_prompts.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn max_abs_diff<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).abs().max().into_scalar()
}

/// The tiny `.pt`'s text encoder, as `DiffusionPrior` loads it.
fn load_text_encoder(file: &Path) -> CLIPTextModel<B> {
    let shapes = tensor_shapes(file).unwrap();
    let (model, kind, report) =
        CLIPTextModel::<B>::from_ldm_checkpoint(file, &shapes, &Default::default()).unwrap();
    assert_eq!(kind, LdmTextEncoder::OpenClip);
    assert!(report.is_exact(), "{report:?}");
    model
}

#[test]
fn the_open_clip_tower_matches_ldms_penultimate_encoding() {
    let file = checkpoint();
    let shapes = tensor_shapes(&file).unwrap();
    let (config, kind) = CLIPTextConfig::from_ldm_shapes(&shapes, &file).unwrap();
    assert_eq!(kind, LdmTextEncoder::OpenClip);
    // 3 resblocks, 32 wide (one head), mlp 4 x 32, 553 tokens, 77 positions, embed_dim 16.
    assert_eq!(
        (
            config.hidden_size,
            config.num_hidden_layers,
            config.num_attention_heads,
            config.intermediate_size,
            config.vocab_size,
            config.max_position_embeddings,
            config.projection_dim,
        ),
        (32, 2, 1, 128, 553, 77, 16)
    );
    assert_eq!(config.hidden_act, HiddenAct::Gelu);

    let (model, _, report) =
        CLIPTextModel::<B>::from_ldm_checkpoint(&file, &shapes, &Default::default()).unwrap();
    assert!(report.is_exact(), "{report:?}");
    let p = LDM_OPEN_CLIP_PREFIX;
    // The last block (penultimate layer), the projection and the temperature are set aside,
    // as are the UNet, the VAE and the schedule.
    for ignored in [
        format!("{p}transformer.resblocks.2.attn.in_proj_weight"),
        format!("{p}transformer.resblocks.2.mlp.c_proj.bias"),
        format!("{p}text_projection"),
        format!("{p}logit_scale"),
        "model.diffusion_model.out.2.weight".into(),
        "first_stage_model.decoder.conv_out.weight".into(),
        "alphas_cumprod".into(),
    ] {
        assert!(report.ignored.contains(&ignored), "{ignored} not ignored");
    }
    // The fused projection feeds three (rows: query, key, value).
    for (i, part) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
        let pair = (
            format!("{p}transformer.resblocks.1.attn.in_proj_weight"),
            format!("text_model.encoder.layers.1.self_attn.{part}.weight"),
        );
        assert!(report.remapped.contains(&pair), "{pair:?} (part {i})");
    }
    assert_eq!(report.applied, 2 + 2 + 2 * 16);

    let mut io = store("text_io.safetensors");
    let ours = model.prompt_embeds(input_ids(), 0);
    let err = max_abs_diff(ours, float(&mut io, "prompt_embeds"));
    println!("OpenCLIP text tower (LDM penultimate layer), 4 x 77 tokens: max abs error {err:.2e}");
    assert!(err < TOLERANCE, "max abs error {err}");

    // With every block loaded, our layer semantics are LDM's: "last" is all 3 blocks,
    // "penultimate" (clip_skip 1) the same as the 2-block model above.
    let full = CLIPTextConfig {
        num_hidden_layers: 3,
        ..config
    };
    let options = CLIPTextModel::<B>::open_clip_load_options(p, &full);
    let (all, report) = load_safetensors_with(
        full.init::<B>(&Default::default()),
        std::slice::from_ref(&file),
        &Default::default(),
        &options,
    )
    .unwrap();
    assert!(report.is_exact(), "{report:?}");
    let err = max_abs_diff(
        all.prompt_embeds(input_ids(), 0),
        float(&mut io, "last_embeds"),
    );
    println!("OpenCLIP text tower, all 3 blocks (LDM layer \"last\"): max abs error {err:.2e}");
    assert!(err < TOLERANCE, "last layer: max abs error {err}");
    let err = max_abs_diff(
        all.prompt_embeds(input_ids(), 1),
        float(&mut io, "prompt_embeds"),
    );
    assert!(err < TOLERANCE, "clip_skip 1: max abs error {err}");
}

/// Writes `tensors` (name, data) to a safetensors file.
fn write_safetensors(file: &Path, tensors: &[(String, TensorData)]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, data)| {
            let dtype = match data.dtype {
                burn::tensor::DType::F16 => safetensors::Dtype::F16,
                burn::tensor::DType::F32 => safetensors::Dtype::F32,
                burn::tensor::DType::I64 => safetensors::Dtype::I64,
                other => panic!("unexpected dtype {other:?}"),
            };
            let view =
                safetensors::tensor::TensorView::new(dtype, data.shape.to_vec(), data.as_bytes())
                    .unwrap();
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, file).unwrap();
}

#[test]
fn an_ldm_safetensors_with_an_image_tower_loads_the_same() {
    // The .pt's text tower under its LDM names as safetensors, with what other SD 2.x files
    // hold besides: open_clip's image tower (`visual.*`, fused attention included, which must
    // be dropped before it is split) and a schedule buffer.
    let mut original = PytorchStore::from_file(checkpoint()).map_indices_contiguous(false);
    let mut tensors: Vec<(String, TensorData)> = original
        .get_all_snapshots()
        .unwrap()
        .iter()
        .filter(|(key, _)| key.starts_with(LDM_OPEN_CLIP_PREFIX) || *key == "betas")
        .map(|(key, snapshot)| (key.clone(), snapshot.to_data().unwrap()))
        .collect();
    let zeros = |shape: Vec<usize>| {
        let n = shape.iter().product();
        TensorData::new(vec![0.0f32; n], shape)
    };
    for (key, shape) in [
        ("visual.proj", vec![32, 16]),
        (
            "visual.transformer.resblocks.0.attn.in_proj_weight",
            vec![96, 32],
        ),
        ("visual.transformer.resblocks.0.attn.in_proj_bias", vec![96]),
    ] {
        tensors.push((format!("{LDM_OPEN_CLIP_PREFIX}{key}"), zeros(shape)));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sd-v2.1-base-4view-text.safetensors");
    write_safetensors(&file, &tensors);

    let a = load_text_encoder(&checkpoint()).prompt_embeds(input_ids(), 0);
    let b = load_text_encoder(&file).prompt_embeds(input_ids(), 0);
    assert_eq!(max_abs_diff(a, b), 0.0);
}

#[test]
fn sd15s_clip_text_model_loads_under_its_prefix() {
    // LDM's FrozenCLIPEmbedder keeps transformers' CLIPTextModel as `transformer`: the tiny
    // SD text encoder fixture under `cond_stage_model.transformer.`, plus a UNet tensor and
    // the `position_ids` buffer older transformers saved.
    let folder = fixtures().join("clip/sd2-text/text_encoder");
    let mut source = SafetensorsStore::from_file(folder.join("model.safetensors"));
    let mut tensors: Vec<(String, TensorData)> = source
        .get_all_snapshots()
        .unwrap()
        .iter()
        .map(|(key, snapshot)| {
            // transformers 5 saves the tower's keys without `text_model.`; LDM-era files
            // (transformers 4) have it.
            let key = key.strip_prefix("text_model.").unwrap_or(key);
            (
                format!("{LDM_CLIP_PREFIX}text_model.{key}"),
                snapshot.to_data().unwrap(),
            )
        })
        .collect();
    let position_ids = format!("{LDM_CLIP_PREFIX}text_model.embeddings.position_ids");
    if !tensors.iter().any(|(k, _)| *k == position_ids) {
        let ids: Vec<i64> = (0..77).collect();
        tensors.push((position_ids, TensorData::new(ids, [1, 77])));
    }
    tensors.push((
        "model.diffusion_model.out.2.bias".into(),
        TensorData::new(vec![0.0f32; 4], [4]),
    ));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sd-v1.5-4view-text.safetensors");
    write_safetensors(&file, &tensors);

    let shapes = tensor_shapes(&file).unwrap();
    let (derived, kind) = CLIPTextConfig::from_ldm_shapes(&shapes, &file).unwrap();
    assert_eq!(kind, LdmTextEncoder::Clip);
    assert_eq!(
        (
            derived.hidden_size,
            derived.num_hidden_layers,
            derived.intermediate_size,
            derived.vocab_size,
            derived.max_position_embeddings,
        ),
        (32, 2, 37, 553, 77)
    );
    assert_eq!(derived.hidden_act, HiddenAct::QuickGelu);

    // The fixture's own config (2 heads, gelu: not OpenAI CLIP's) to compare outputs.
    let device = Default::default();
    let config = CLIPTextConfig::from_file(&folder.join("config.json")).unwrap();
    let options = CLIPTextModel::<B>::ldm_clip_load_options(LDM_CLIP_PREFIX)
        .with_unexpected(rewardsds_engine::weights::KeyPolicy::Error);
    let (ldm, report) =
        load_safetensors_with(config.init::<B>(&device), &[file], &device, &options).unwrap();
    assert!(report.is_exact(), "{report:?}");
    let (reference, _) = CLIPTextModel::<B>::from_folder(&folder, &device).unwrap();
    let ids = input_ids();
    assert_eq!(
        max_abs_diff(
            ldm.prompt_embeds(ids.clone(), 0),
            reference.prompt_embeds(ids, 0)
        ),
        0.0
    );
}

#[test]
fn a_single_file_folder_is_the_same_prior_as_the_diffusers_style_one() {
    let device = Default::default();
    let single_dir = temp_dir("mvdream-single-file");
    mvdream_single_file_folder(&single_dir);
    let diffusers_dir = temp_dir("mvdream-diffusers-style");
    mvdream_folder(&diffusers_dir);
    let single = DiffusionPrior::<B>::from_folder(&single_dir, &device).unwrap();
    let diffusers = DiffusionPrior::<B>::from_folder(&diffusers_dir, &device).unwrap();
    for prior in [&single, &diffusers] {
        assert_eq!(prior.num_frames(), 4);
        assert_eq!(prior.camera_input(), Some(CameraInput::MvDream));
        assert_eq!(prior.class_labels_width(), Some(16));
        assert_eq!((prior.resolution(), prior.channels()), (32, 4));
        assert!(prior.is_latent());
    }
    assert_eq!(single.unet_config(), diffusers.unet_config());
    assert_eq!(single.num_train_timesteps(), 1000);
    for t in [0, 500, 999] {
        assert_eq!(
            single.alpha_prod(t).unwrap(),
            diffusers.alpha_prod(t).unwrap()
        );
    }

    // The same UNet weights (both read the .pt): the same noise predictions.
    let mut io = store("io.safetensors");
    let x_t: Tensor<B, 4> = float(&mut io, "sample");
    let context: Tensor<B, 3> = float(&mut io, "context");
    let labels = single.camera_labels(&mvdream_views(), &device).unwrap();
    let a = single
        .predict_noise(x_t.clone(), 500, context.clone(), Some(labels.clone()))
        .unwrap();
    let b = diffusers
        .predict_noise(x_t, 500, context, Some(labels))
        .unwrap();
    let err = max_abs_diff(a, b);
    println!("single-file vs diffusers-style MVDream UNet: max abs difference {err:.2e}");
    assert_eq!(err, 0.0);

    // The prompt path: our tokenizer gives the reference's ids and the OpenCLIP tower LDM's
    // conditioning.
    let prompts = prompts();
    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let n = prompts.len();
    let ids = single
        .tokenizer()
        .input_ids::<B>(&prompts, &device)
        .unwrap();
    let expected = input_ids().narrow(0, 0, n);
    assert_eq!(
        ids.into_data().convert::<i64>().to_vec::<i64>().unwrap(),
        expected
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .unwrap()
    );
    let embeds = single.encode_prompts(&prompts).unwrap();
    let reference = float::<3>(&mut store("text_io.safetensors"), "prompt_embeds").narrow(0, 0, n);
    let err = max_abs_diff(embeds, reference);
    println!(
        "single-file prior, encode_prompts vs LDM's FrozenOpenCLIPEmbedder: max abs error {err:.2e}"
    );
    assert!(err < TOLERANCE, "prompt embeddings: max abs error {err}");

    // The VAE is the .pt's first stage (not the diffusers-style folder's vae/).
    let latent: Tensor<B, 4> = float(&mut io, "vae_latent");
    let decoded = single.decode(latent.clone() * 0.18215);
    let reference = (float::<4>(&mut io, "vae_decoded") * 0.5 + 0.5).clamp(0.0, 1.0);
    let err = max_abs_diff(decoded, reference);
    println!("single-file prior, VAE decode vs MVDream's first stage: max abs error {err:.2e}");
    assert!(err < 1e-4, "decode: max abs error {err}");

    std::fs::remove_dir_all(single_dir).ok();
    std::fs::remove_dir_all(diffusers_dir).ok();
}

#[test]
fn a_single_file_prior_takes_a_guidance_step() {
    let device = Default::default();
    let dir = temp_dir("mvdream-single-file-step");
    mvdream_single_file_folder(&dir);
    let prior = DiffusionPrior::<B>::from_folder(&dir, &device).unwrap();
    let config = GuidanceConfig {
        view_dependent_prompting: false,
        ..Default::default()
    };
    let mut guidance = Guidance::<A>::new(config, prior, "a red cube", None, 100).unwrap();
    let images = Tensor::<B, 4>::random([8, 3, 32, 32], Distribution::Default, &device);
    let x = Tensor::<A, 4>::from_inner(images).require_grad();
    let out = guidance.step(x.clone(), &mvdream_views(), 3, 7).unwrap();
    let grads = out.loss.backward();
    let grad = x.grad(&grads).unwrap();
    assert_eq!(grad.dims(), [8, 3, 32, 32]);
    let values = grad.into_data().to_vec::<f32>().unwrap();
    assert!(values.iter().all(|v| v.is_finite()));
    assert!(values.iter().any(|v| *v != 0.0));
    // CFG's two branches through the .pt's UNet and OpenCLIP conditioning.
    let prior = DiffusionPrior::<B>::from_folder(&dir, &device).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let images = Tensor::<B, 4>::random([4, 3, 32, 32], Distribution::Default, &device);
    let z = prior.encode_images(images, &mut rng);
    assert_eq!(z.dims(), [4, 4, 16, 16]);
    let cond = prior.encode_prompt("a red cube").unwrap();
    let uncond = prior.encode_prompt("").unwrap();
    let labels = prior.camera_labels(&mvdream_views()[..4], &device);
    let eps = prior
        .predict_noise_cfg(z, 700, cond, uncond, labels, 50.0)
        .unwrap();
    assert_eq!(eps.dims(), [4, 4, 16, 16]);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_single_file_folder_without_a_tokenizer_says_where_to_get_one() {
    let device = Default::default();
    let dir = temp_dir("mvdream-single-file-no-tokenizer");
    mvdream_single_file_folder(&dir);
    std::fs::remove_dir_all(dir.join("tokenizer")).unwrap();
    let err = DiffusionPrior::<B>::from_folder(&dir, &device)
        .unwrap_err()
        .to_string();
    println!("{err}");
    for expected in [
        "tokenizer",
        "sd-v2.1-base-4view-tiny.pt",
        "vocab.json",
        "merges.txt",
        "stabilityai/stable-diffusion-2-1-base",
    ] {
        assert!(err.contains(expected), "{expected}: {err}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_layout_that_was_not_released_needs_its_configs() {
    let device = Default::default();
    let dir = temp_dir("mvdream-single-file-no-configs");
    mvdream_single_file_folder(&dir);
    // The tiny UNet's 32-wide context is neither released model's: its config is needed.
    std::fs::remove_dir_all(dir.join("unet")).unwrap();
    let err = DiffusionPrior::<B>::from_folder(&dir, &device)
        .unwrap_err()
        .to_string();
    println!("{err}");
    assert!(err.contains("context_dim"), "{err}");
    assert!(err.contains("unet/config.json"), "{err}");

    // Without vae/config.json the VAE is read as SD's, which the tiny one is not.
    mvdream_single_file_folder(&dir);
    std::fs::remove_dir_all(dir.join("vae")).unwrap();
    let err = DiffusionPrior::<B>::from_folder(&dir, &device)
        .unwrap_err()
        .to_string();
    println!("{err}");
    assert!(err.contains("vae/config.json"), "{err}");

    // Two checkpoints: which one is meant is not guessed.
    mvdream_single_file_folder(&dir);
    std::fs::copy(
        dir.join("sd-v2.1-base-4view-tiny.pt"),
        dir.join("sd-v1.5-4view.ckpt"),
    )
    .unwrap();
    let err = DiffusionPrior::<B>::from_folder(&dir, &device)
        .unwrap_err()
        .to_string();
    println!("{err}");
    assert!(err.contains("sd-v1.5-4view.ckpt"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}
