//! Parity of the CLIP family (tokenizer, text and vision towers, CLIPScore, LAION aesthetic
//! head) with transformers, on tiny random-weight models made by
//! `tools/fixtures/make_clip_fixtures.py`, loaded through the real weights loader. Each test
//! prints the max abs error per output; the tolerance is 1e-4 in f32.

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Int, Tensor, TensorData};
use rewardsds_engine::models::clip::{CLIPConfig, CLIPModel};
use rewardsds_engine::models::clip_text::{
    CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection,
};
use rewardsds_engine::models::clip_vision::CLIPVisionConfig;
use rewardsds_engine::models::reward::{
    AestheticPredictor, ClipScore, RewardModel, clip_preprocess,
};
use rewardsds_engine::models::tokenizer::CLIPTokenizer;
use rewardsds_engine::weights::{LoadError, load_safetensors};
use serde_json::Value;

type B = NdArray<f32>;

const TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip")
}

/// A reference tensor from `reference.safetensors`, as f32 values and shape.
fn reference(name: &str) -> (Vec<f32>, Vec<usize>) {
    // Read straight from the safetensors layout (8-byte header length, JSON header, data), so
    // the references do not depend on the loader under test.
    let path = fixtures().join("reference.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let entry = &header[name];
    assert!(entry.is_object(), "{name} not in reference.safetensors");
    let shape: Vec<usize> = entry["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let [start, end] = [0, 1].map(|i| entry["data_offsets"][i].as_u64().unwrap() as usize);
    let data = &bytes[8 + header_len + start..8 + header_len + end];
    let values = match entry["dtype"].as_str().unwrap() {
        "F32" => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        "I64" => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        other => panic!("unexpected dtype {other} for {name}"),
    };
    (values, shape)
}

fn reference_tensor<const D: usize>(name: &str) -> Tensor<B, D> {
    let (values, shape) = reference(name);
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

fn reference_ids(name: &str) -> Tensor<B, 2, Int> {
    let (values, shape) = reference(name);
    let ids: Vec<i64> = values.iter().map(|&v| v as i64).collect();
    Tensor::from_data(TensorData::new(ids, shape), &Default::default())
}

/// Max abs error of `actual` against the reference `name`; prints it and checks the tolerance.
fn check<const D: usize>(label: &str, actual: Tensor<B, D>, name: &str) -> f32 {
    let (expected, shape) = reference(name);
    assert_eq!(actual.dims().to_vec(), shape, "{label}: shape");
    let actual: Vec<f32> = actual.into_data().convert::<f32>().to_vec().unwrap();
    let err = actual
        .iter()
        .zip(&expected)
        .map(|(a, e)| (a - e).abs())
        .fold(0.0f32, f32::max);
    println!("max abs error {label}: {err:.3e}");
    assert!(
        err < TOLERANCE,
        "{label}: max abs error {err} >= {TOLERANCE}"
    );
    err
}

fn tokens_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("tokens.json")).unwrap()).unwrap()
}

fn check_tokenizer(tokenizer: &CLIPTokenizer, key: &str) {
    let json = tokens_json();
    let prompts = json["prompts"].as_array().unwrap();
    for (i, prompt) in prompts.iter().enumerate() {
        let prompt = prompt.as_str().unwrap();
        let expected: Vec<u32> = json[key][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let encoded = tokenizer.encode(prompt).unwrap();
        assert_eq!(encoded.input_ids, expected, "{key}: prompt {prompt:?}");
        assert_eq!(
            encoded.truncated,
            json["truncated"][i].as_bool().unwrap(),
            "{key}: truncation flag of {prompt:?}"
        );
    }
}

#[test]
fn tokenizer_json_matches_transformers() {
    let tokenizer = CLIPTokenizer::from_folder(&fixtures().join("clip-tiny")).unwrap();
    assert_eq!(tokenizer.max_length(), 77);
    check_tokenizer(&tokenizer, "ids_pad_eos");
    let sd2 = CLIPTokenizer::from_folder(&fixtures().join("sd2-text/tokenizer")).unwrap();
    assert_eq!(sd2.pad_token_id(), 0, "SD 2.x pads with `!`");
    check_tokenizer(&sd2, "ids_pad_bang");
}

#[test]
fn tokenizer_vocab_merges_matches_transformers() {
    // The same tokenizer folder without tokenizer.json: built from vocab.json + merges.txt.
    let dir = temp_dir("vocab-merges");
    for name in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
        std::fs::copy(fixtures().join("clip-tiny").join(name), dir.join(name)).unwrap();
    }
    let tokenizer = CLIPTokenizer::from_folder(&dir).unwrap();
    check_tokenizer(&tokenizer, "ids_pad_eos");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tokenizer_empty_prompt_is_bos_eos_padding() {
    let tokenizer = CLIPTokenizer::from_folder(&fixtures().join("clip-tiny")).unwrap();
    let empty = tokenizer.encode("").unwrap();
    assert_eq!(empty.num_tokens, 2);
    assert!(!empty.truncated);
    assert_eq!(empty.input_ids[0], tokenizer.bos_token_id());
    assert_eq!(empty.input_ids[1], tokenizer.eos_token_id());
    assert!(
        empty.input_ids[2..]
            .iter()
            .all(|&id| id == tokenizer.pad_token_id())
    );
}

#[test]
fn text_model_with_projection_matches_transformers() {
    let device = Default::default();
    // The text half of a full CLIPModel file (with the old `position_ids` buffers in it).
    let (model, report) =
        CLIPTextModelWithProjection::<B>::from_folder(&fixtures().join("clip-tiny"), &device)
            .unwrap();
    assert!(report.is_exact(), "{report:?}");
    assert!(report.ignored.iter().any(|k| k.ends_with("position_ids")));
    let (out, text_embeds) = model.forward(reference_ids("tiny.input_ids"));
    check(
        "tiny text last_hidden_state",
        out.last_hidden_state,
        "tiny.text.last_hidden_state",
    );
    check(
        "tiny text hidden_states[-2]",
        out.penultimate_hidden_state,
        "tiny.text.penultimate_hidden_state",
    );
    check(
        "tiny text pooler_output (argmax)",
        out.pooler_output,
        "tiny.text.pooler_output",
    );
    check("tiny text_embeds", text_embeds, "tiny.text.text_embeds");
}

#[test]
fn sd2_text_encoder_fp16_gelu_matches_transformers() {
    let device = Default::default();
    let dir = fixtures().join("sd2-text/text_encoder");
    let (model, report) = CLIPTextModel::<B>::from_folder(&dir, &device).unwrap();
    assert!(report.is_exact(), "{report:?}");
    assert_eq!(report.cast_from, vec![burn::tensor::DType::F16]);
    // transformers 5 saved it without the `text_model.` prefix; the remap added it.
    assert!(!report.remapped.is_empty());
    let ids = reference_ids("sd2.input_ids");
    let out = model.forward(ids.clone());
    check(
        "sd2 last_hidden_state",
        out.last_hidden_state,
        "sd2.last_hidden_state",
    );
    check(
        "sd2 hidden_states[-2]",
        out.penultimate_hidden_state,
        "sd2.penultimate_hidden_state",
    );
    check(
        "sd2 pooler_output (eos id)",
        out.pooler_output,
        "sd2.pooler_output",
    );
    check(
        "sd2 clip_skip=1",
        model.prompt_embeds(ids, 1),
        "sd2.clip_skip_1",
    );
}

#[test]
fn tokenizer_to_text_model_end_to_end() {
    let device = Default::default();
    let dir = fixtures().join("sd2-text");
    let tokenizer = CLIPTokenizer::from_folder(&dir.join("tokenizer")).unwrap();
    let json = tokens_json();
    let prompts: Vec<&str> = json["prompts"].as_array().unwrap()[..3]
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let ids = tokenizer.input_ids::<B>(&prompts, &device).unwrap();
    let (model, _) = CLIPTextModel::<B>::from_folder(&dir.join("text_encoder"), &device).unwrap();
    check(
        "sd2 from prompts",
        model.forward(ids).last_hidden_state,
        "sd2.last_hidden_state",
    );
}

#[test]
fn vision_and_clip_score_match_transformers() {
    let device = Default::default();
    let dir = fixtures().join("clip-tiny");
    let (model, report) = CLIPModel::<B>::from_folder(&dir, &device).unwrap();
    assert!(report.is_exact(), "{report:?}");
    let images = reference_tensor::<4>("tiny.images");
    let pixels = clip_preprocess(images.clone(), 32).unwrap();
    check(
        "tiny preprocess (bilinear + normalise)",
        pixels.clone(),
        "tiny.vision.pixel_values",
    );
    let vout = model.vision_model.forward(pixels.clone());
    check(
        "tiny vision last_hidden_state",
        vout.last_hidden_state,
        "tiny.vision.last_hidden_state",
    );
    check(
        "tiny vision pooler_output",
        vout.pooler_output,
        "tiny.vision.pooler_output",
    );
    check(
        "tiny image_embeds",
        model.get_image_features(pixels.clone()),
        "tiny.vision.image_embeds",
    );
    let tokenizer = CLIPTokenizer::from_folder(&dir).unwrap();
    let prompt = tokens_json()["prompts"][0].as_str().unwrap().to_string();
    let ids = tokenizer.input_ids::<B>(&[&prompt], &device).unwrap();
    check(
        "tiny logits_per_image",
        model.forward(ids, pixels),
        "tiny.logits_per_image",
    );

    let scorer = ClipScore::new(model, tokenizer);
    check(
        "tiny CLIPScore",
        scorer.score(images.clone(), &prompt).unwrap(),
        "tiny.clip_score",
    );
    // Second call: the cached text embedding gives the same scores; another prompt does not.
    check(
        "tiny CLIPScore (cached text)",
        scorer.score(images.clone(), &prompt).unwrap(),
        "tiny.clip_score",
    );
    let other: Vec<f32> = scorer
        .score(images, "a red apple")
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    let (same, _) = reference("tiny.clip_score");
    assert!(other.iter().zip(&same).any(|(a, b)| (a - b).abs() > 1e-3));
}

#[test]
fn aesthetic_score_matches_reference() {
    let device = Default::default();
    let (predictor, report) = AestheticPredictor::<B>::from_files(
        &fixtures().join("clip-tiny"),
        &fixtures().join("aesthetic"),
        &device,
    )
    .unwrap();
    assert!(report.is_exact(), "{report:?}");
    assert_eq!(predictor.head().layers.len(), 5);
    let images = reference_tensor::<4>("tiny.images");
    check(
        "tiny aesthetic score",
        predictor.score(images.clone(), "ignored").unwrap(),
        "tiny.aesthetic_score",
    );

    // The head as upstream publishes it, a torch pickle (`.pth`), read by the same loader.
    let (predictor, report) = AestheticPredictor::<B>::from_files(
        &fixtures().join("clip-tiny"),
        &fixtures().join("aesthetic-pth/sac+logos+ava1-l14-linearMSE.pth"),
        &device,
    )
    .unwrap();
    assert!(report.is_exact(), "{report:?}");
    check(
        "tiny aesthetic score from the .pth",
        predictor.score(images, "ignored").unwrap(),
        "tiny.aesthetic_score",
    );
}

// --- Full-size configs: parameter counts from transformers, nothing allocated. ---

/// Counts parameters by their declared shapes, leaving lazy ones uninitialised.
struct LazyCount(usize);

impl<Bk: burn::tensor::backend::Backend> ModuleVisitor<Bk> for LazyCount {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
        self.0 += param.lazy_shape().num_elements();
    }
}

fn lazy_params<M: Module<B>>(module: &M) -> usize {
    let mut count = LazyCount(0);
    module.visit(&mut count);
    count.0
}

fn param_counts() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("param_counts.json")).unwrap())
        .unwrap()
}

#[test]
fn clip_vit_l_14_param_counts_match_transformers() {
    let device = Default::default();
    let counts = param_counts();
    let entry = &counts["clip-vit-l-14"];
    let config: CLIPConfig = serde_json::from_value(entry["config"].clone()).unwrap();
    assert_eq!(
        config,
        CLIPConfig::clip_vit_l_14(),
        "preset = transformers config"
    );
    let start = std::time::Instant::now();
    let model = config.init::<B>(&device);
    let total = lazy_params(&model);
    let text = lazy_params(&model.text_model);
    let vision = lazy_params(&model.vision_model);
    println!(
        "clip-vit-l-14: {total} params (text {text}, vision {vision}) in {:?}",
        start.elapsed()
    );
    assert_eq!(total as u64, entry["params"].as_u64().unwrap());
    assert_eq!(text as u64, entry["text_model"].as_u64().unwrap()); // 123_060_480
    assert_eq!(vision as u64, entry["vision_model"].as_u64().unwrap()); // 303_179_776
    assert!(
        !model.logit_scale.is_initialized(),
        "counting must not allocate"
    );
}

#[test]
fn sd21_text_encoder_param_count_matches_transformers() {
    let counts = param_counts();
    let entry = &counts["sd2-text-encoder"];
    let config: CLIPTextConfig = serde_json::from_value(entry["config"].clone()).unwrap();
    assert_eq!(config, CLIPTextConfig::sd21_text_encoder());
    let model = config.init::<B>(&Default::default());
    assert_eq!(
        lazy_params(&model) as u64,
        entry["params"].as_u64().unwrap()
    );

    let vision = &counts["clip-vit-l-14-vision"];
    let config: CLIPVisionConfig = serde_json::from_value(vision["config"].clone()).unwrap();
    let model = config.init::<B>(&Default::default());
    assert_eq!(
        lazy_params(&model) as u64,
        vision["params"].as_u64().unwrap()
    );
}

// --- Bad input: each error names the file or tensor at fault. ---

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rsds-clip-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn missing_folder_is_named() {
    let device = Default::default();
    let dir = fixtures().join("no-such-model");
    let err = CLIPModel::<B>::from_folder(&dir, &device).unwrap_err();
    assert!(matches!(err, LoadError::MissingFile { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-model"), "{err}");
    println!("{err}");
    let err = CLIPTokenizer::from_folder(&dir).unwrap_err();
    assert!(matches!(err, LoadError::MissingFolder { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-model"), "{err}");
    let err = rewardsds_engine::weights::weight_files(&dir).unwrap_err();
    assert!(err.to_string().contains("no-such-model"), "{err}");
}

#[test]
fn missing_weights_file_is_named() {
    let device = Default::default();
    let dir = temp_dir("missing-file");
    std::fs::copy(
        fixtures().join("clip-tiny/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let err = CLIPModel::<B>::from_folder(&dir, &device).unwrap_err();
    assert!(matches!(err, LoadError::NoWeights { .. }), "{err:?}");
    assert!(err.to_string().contains(dir.to_str().unwrap()), "{err}");
    // An explicit file list naming a file that is not there.
    let config = CLIPConfig::from_file(&dir.join("config.json")).unwrap();
    let file = dir.join("model.safetensors");
    let err = load_safetensors(config.init::<B>(&device), &[file], &device).unwrap_err();
    assert!(matches!(err, LoadError::MissingFile { .. }), "{err:?}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    // A pickled checkpoint only: the hint says how to convert it.
    std::fs::write(dir.join("pytorch_model.bin"), b"not read").unwrap();
    let err = CLIPModel::<B>::from_folder(&dir, &device).unwrap_err();
    assert!(err.to_string().contains("pytorch_model.bin"), "{err}");
    println!("{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_safetensors_is_named() {
    let device = Default::default();
    let dir = temp_dir("truncated");
    std::fs::copy(
        fixtures().join("clip-tiny/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(fixtures().join("clip-tiny/model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let err = CLIPModel::<B>::from_folder(&dir, &device).unwrap_err();
    assert!(matches!(err, LoadError::CorruptFile { .. }), "{err:?}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    println!("{err}");
    // Garbage header.
    std::fs::write(
        dir.join("model.safetensors"),
        b"\xff\xff\xff\xff\xff\xff\xff\x7f{",
    )
    .unwrap();
    let err = CLIPModel::<B>::from_folder(&dir, &device).unwrap_err();
    assert!(matches!(err, LoadError::CorruptFile { .. }), "{err:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wrong_shape_names_tensor_and_file() {
    let device = Default::default();
    let dir = fixtures().join("sd2-text/text_encoder");
    let mut config = CLIPTextConfig::from_file(&dir.join("config.json")).unwrap();
    config.intermediate_size += 1; // every fc1/fc2 now disagrees with the file
    let files = rewardsds_engine::weights::weight_files(&dir).unwrap();
    let options = rewardsds_engine::models::clip::clip_load_options(
        rewardsds_engine::models::clip::ClipCheckpoint::Text,
    );
    let err = rewardsds_engine::weights::load_safetensors_with(
        config.init::<B>(&device),
        &files,
        &device,
        &options,
    )
    .unwrap_err();
    let LoadError::ShapeMismatch {
        path,
        tensor,
        expected,
        found,
    } = &err
    else {
        panic!("expected a shape mismatch, got {err:?}");
    };
    assert!(path.ends_with("model.safetensors"));
    assert!(tensor.contains(".mlp.fc"), "{tensor}");
    assert!(
        !tensor.starts_with("text_model."),
        "names the file's own key: {tensor}"
    );
    // The first mismatch in module order, stated in the file's layout ([out, in] for linears).
    assert_eq!(tensor, "encoder.layers.0.mlp.fc1.weight");
    assert_eq!(
        (expected.clone(), found.clone()),
        (vec![38, 32], vec![37, 32])
    );
    let message = err.to_string();
    println!("{message}");
    assert!(
        message.contains(tensor.as_str()) && message.contains("model.safetensors"),
        "{message}"
    );
}

#[test]
fn missing_keys_are_an_error_naming_them() {
    let device = Default::default();
    // A CLIPModel needs the vision tower; the SD 2 text encoder file has only text.
    let dir = fixtures().join("sd2-text/text_encoder");
    let config = CLIPConfig::from_file(&fixtures().join("clip-tiny/config.json")).unwrap();
    let files = rewardsds_engine::weights::weight_files(&dir).unwrap();
    let err = load_safetensors(config.init::<B>(&device), &files, &device).unwrap_err();
    println!("{err}");
    let LoadError::MissingKeys { count, first, .. } = &err else {
        panic!("expected missing keys, got {err:?}");
    };
    assert!(*count > 10);
    assert!(!first.is_empty() && first.len() <= 8);
    assert!(err.to_string().contains("logit_scale") || err.to_string().contains("text_model"));
    // Norm parameters are reported under their checkpoint names.
    assert!(
        first
            .iter()
            .all(|k| !k.ends_with(".gamma") && !k.ends_with(".beta")),
        "{first:?}"
    );
}

#[test]
fn unknown_preset_lists_known_ones() {
    let err = rewardsds_engine::weights::resolve_model("sd-xl-turbo").unwrap_err();
    assert!(matches!(err, LoadError::UnknownPreset { .. }), "{err:?}");
    let message = err.to_string();
    println!("{message}");
    for known in [
        "sd15",
        "sd21-base",
        "sd21",
        "clip-vit-l-14",
        "laion-aesthetic",
    ] {
        assert!(message.contains(known), "{message}");
    }
    // A path-like spec that does not exist is a missing folder, not a preset.
    let err = rewardsds_engine::weights::resolve_model("./models/nowhere").unwrap_err();
    assert!(matches!(err, LoadError::MissingFolder { .. }), "{err:?}");
    // A local folder resolves to itself.
    let dir = fixtures().join("clip-tiny");
    assert_eq!(
        rewardsds_engine::weights::resolve_model(dir.to_str().unwrap()).unwrap(),
        dir
    );
}

#[test]
fn bad_images_are_an_error() {
    let device = Default::default();
    let (scorer, _) = ClipScore::<B>::from_folder(&fixtures().join("clip-tiny"), &device).unwrap();
    let gray = Tensor::<B, 4>::zeros([1, 1, 8, 8], &device);
    let err = scorer.score(gray, "a cat").unwrap_err();
    assert!(err.to_string().contains("[1, 1, 8, 8]"), "{err}");
}

#[test]
fn presets_and_repo_ids_resolve_in_the_hf_cache_layout() {
    use rewardsds_engine::weights::{Fetch, resolve_model_in};
    let cache = temp_dir("hf-cache");
    let repo = cache.join("models--openai--clip-vit-large-patch14");
    let snapshot = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixtures().join("clip-tiny").join(name), snapshot.join(name)).unwrap();
    }
    // The preset and its repo id lead to the same snapshot, which loads.
    assert_eq!(
        resolve_model_in("clip-vit-l-14", &cache, Fetch::CacheOnly).unwrap(),
        snapshot
    );
    let dir = resolve_model_in("openai/clip-vit-large-patch14", &cache, Fetch::CacheOnly).unwrap();
    assert_eq!(dir, snapshot);
    let (_, report) = CLIPModel::<B>::from_folder(&dir, &Default::default()).unwrap();
    assert!(report.is_exact());
    // A known preset that is not cached names the repo and the cache searched (no download:
    // a test must not fetch 5 GB).
    let err = resolve_model_in("sd21-base", &cache, Fetch::CacheOnly).unwrap_err();
    assert!(matches!(err, LoadError::NotCached { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("stabilityai/stable-diffusion-2-1-base"),
        "{message}"
    );
    assert!(message.contains(cache.to_str().unwrap()), "{message}");
    println!("{message}");
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn bf16_shards_with_index_match_transformers() {
    let device = Default::default();
    let dir = fixtures().join("sd2-text-bf16-sharded");
    let files = rewardsds_engine::weights::weight_files(&dir).unwrap();
    assert_eq!(files.len(), 2, "both shards from the index: {files:?}");
    let (model, report) = CLIPTextModel::<B>::from_folder(&dir, &device).unwrap();
    assert!(report.is_exact(), "{report:?}");
    assert_eq!(report.cast_from, vec![burn::tensor::DType::BF16]);
    let out = model.forward(reference_ids("sd2.input_ids"));
    check(
        "sd2 bf16 sharded last_hidden_state",
        out.last_hidden_state,
        "sd2_bf16.last_hidden_state",
    );
}

#[test]
fn a_key_in_two_files_is_an_error() {
    let device = Default::default();
    let dir = fixtures().join("sd2-text/text_encoder");
    let file = dir.join("model.safetensors");
    let config = CLIPTextConfig::from_file(&dir.join("config.json")).unwrap();
    let err =
        load_safetensors(config.init::<B>(&device), &[file.clone(), file], &device).unwrap_err();
    assert!(matches!(err, LoadError::DuplicateKey { .. }), "{err:?}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn bare_vision_tower_layout_matches_transformers() {
    use rewardsds_engine::models::clip_vision::CLIPVisionModel;
    let device = Default::default();
    // transformers 5 saves CLIPVisionModel without the `vision_model.` prefix.
    let (model, report) =
        CLIPVisionModel::<B>::from_folder(&fixtures().join("vision-tiny"), &device).unwrap();
    assert!(report.is_exact(), "{report:?}");
    assert!(!report.remapped.is_empty());
    let out = model.forward(reference_tensor::<4>("tiny.vision.pixel_values"));
    check(
        "bare vision tower last_hidden_state",
        out.last_hidden_state,
        "tiny.vision.last_hidden_state",
    );
    check(
        "bare vision tower pooler_output",
        out.pooler_output,
        "tiny.vision.pooler_output",
    );
}

#[test]
fn any_reward_is_the_model_its_folder_holds() {
    use rewardsds_engine::models::AnyReward;
    let device = Default::default();
    let clip = AnyReward::<B>::from_folder(&fixtures().join("clip-tiny"), &device).unwrap();
    assert_eq!(clip.name(), "clip_score");
    let image_reward =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/image_reward_tiny");
    let ir = AnyReward::<B>::from_folder(&image_reward, &device).unwrap();
    assert_eq!(ir.name(), "image_reward");
    let aesthetic = AnyReward::<B>::aesthetic(
        &fixtures().join("clip-tiny"),
        &fixtures().join("aesthetic-pth"),
        &device,
    )
    .unwrap();
    assert_eq!(aesthetic.name(), "aesthetic");
    // Scores agree with the wrapped model's.
    let images = reference_tensor::<4>("tiny.images");
    check(
        "aesthetic through AnyReward",
        aesthetic.score(images, "ignored").unwrap(),
        "tiny.aesthetic_score",
    );

    // A folder that is neither says what a reward folder holds.
    let empty = std::env::temp_dir().join(format!("rsds-any-reward-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let err = AnyReward::<B>::from_folder(&empty, &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("med_config.json") && err.contains("config.json"),
        "{err}"
    );
    std::fs::remove_dir_all(&empty).ok();
}
