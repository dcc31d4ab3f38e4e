//! Parity of ImageReward (BERT WordPiece tokenizer with BLIP's tokens, BLIP ViT, BLIP's
//! cross-attending BERT, MLP head, preprocessing) with the official code (THUDM/ImageReward),
//! on a tiny random-weight model made by `tools/fixtures/make_image_reward_fixtures.py`,
//! loaded through the real weights loader from its torch pickle `ImageReward.pt`. The score
//! and its gradient with respect to the input images are compared; each test prints the max
//! abs error, the tolerance is 1e-4 in f32.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{DType, Tensor, TensorData};
use rewardsds_engine::models::bert_tokenizer::BertTokenizer;
use rewardsds_engine::models::image_reward::{
    ImageRewardConfig, ImageRewardScorer, image_reward_preprocess,
};
use rewardsds_engine::models::reward::{RewardError, RewardModel};
use rewardsds_engine::models::unet_2d::num_params_lazy;
use rewardsds_engine::weights::LoadError;
use serde_json::Value;

type B = NdArray<f32>;
type AD = Autodiff<B>;

const TOLERANCE: f32 = 1e-4;
const PROMPTS: [&str; 2] = [
    "a penguin with a brown bag in the snow",
    "A RED Apple, on a Café table!! 3.14 apples 🐧 penguins; the cat's photo of snow \
     with a brown bag in the snow and a red apple on the table of the cat",
];
const IMAGE_SETS: [&str; 2] = ["down", "up"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/image_reward_tiny")
}

/// A tensor from `io.safetensors` as f32 values and shape, read straight from the safetensors
/// layout (8-byte header length, JSON header, data) so the references do not depend on the
/// loader under test.
fn reference(name: &str) -> (Vec<f32>, Vec<usize>) {
    let path = fixtures().join("io.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let entry = &header[name];
    assert!(entry.is_object(), "{name} not in io.safetensors");
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

fn reference_tensor<BB: burn::tensor::backend::Backend, const D: usize>(
    name: &str,
) -> Tensor<BB, D> {
    let (values, shape) = reference(name);
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

/// Max abs error of `actual` against the reference `name`; prints it and checks the tolerance.
fn check<BB: burn::tensor::backend::Backend, const D: usize>(
    label: &str,
    actual: Tensor<BB, D>,
    name: &str,
) -> f32 {
    let (expected, shape) = reference(name);
    assert_eq!(actual.dims().to_vec(), shape, "{label}: shape");
    let actual: Vec<f32> = actual.into_data().convert::<f32>().to_vec().unwrap();
    let err = actual
        .iter()
        .zip(&expected)
        .map(|(a, e)| (a - e).abs())
        .fold(0.0f32, f32::max);
    let scale = expected.iter().fold(0.0f32, |m, e| m.max(e.abs()));
    println!("max abs error {label}: {err:.3e} (max |reference| {scale:.3e})");
    assert!(
        err < TOLERANCE,
        "{label}: max abs error {err} >= {TOLERANCE}"
    );
    err
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rsds-imagereward-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn tokenizer_matches_reference() {
    let tokenizer = BertTokenizer::from_folder(&fixtures()).unwrap();
    assert_eq!(tokenizer.max_length(), 35);
    // BLIP's two tokens follow the vocab, in the order it adds them.
    let base = std::fs::read_to_string(fixtures().join("vocab.txt"))
        .unwrap()
        .lines()
        .count() as u32;
    assert_eq!(tokenizer.token_to_id("[DEC]"), Some(base));
    assert_eq!(tokenizer.token_to_id("[ENC]"), Some(base + 1));
    let config = ImageRewardConfig::from_folder(&fixtures()).unwrap();
    assert_eq!(tokenizer.vocab_size(), config.med_config.vocab_size);
    for (p, prompt) in PROMPTS.iter().enumerate() {
        let encoded = tokenizer.encode(prompt).unwrap();
        let ids: Vec<u32> = reference(&format!("input_ids.{p}"))
            .0
            .iter()
            .map(|&v| v as u32)
            .collect();
        let mask: Vec<u32> = reference(&format!("attention_mask.{p}"))
            .0
            .iter()
            .map(|&v| v as u32)
            .collect();
        assert_eq!(encoded.input_ids, ids, "ids of {prompt:?}");
        assert_eq!(encoded.attention_mask, mask, "mask of {prompt:?}");
        assert_eq!(encoded.truncated, p == 1, "truncation of {prompt:?}");
        println!(
            "prompt {p}: ids equal the reference's ({} tokens)",
            mask.iter().sum::<u32>()
        );
    }
    // Empty prompt: [CLS] [SEP] then padding.
    let empty = tokenizer.encode("").unwrap();
    assert_eq!(empty.attention_mask.iter().sum::<u32>(), 2);
    assert!(
        empty.input_ids[2..]
            .iter()
            .all(|&i| i == tokenizer.pad_token_id())
    );
}

#[test]
fn preprocessing_matches_torchvision() {
    for s in IMAGE_SETS {
        let images = reference_tensor::<B, 4>(&format!("images_{s}"));
        let pixels = image_reward_preprocess(images, 32).unwrap();
        check(&format!("pixels {s}"), pixels, &format!("pixels.{s}"));
    }
}

#[test]
fn score_and_image_gradient_match_reference_from_pt() {
    let device = Default::default();
    // The folder holds ImageReward.pt and ImageReward.safetensors: the torch pickle wins.
    let (scorer, report) = ImageRewardScorer::<B>::from_folder(&fixtures(), &device).unwrap();
    assert_eq!(report.files, vec![fixtures().join("ImageReward.pt")]);
    assert!(report.is_exact(), "{report:?}");
    assert_eq!(
        report.ignored,
        vec!["blip.text_encoder.embeddings.position_ids"]
    );
    assert_eq!(report.cast_from, vec![DType::F16]);
    assert_eq!(scorer.name(), "image_reward");
    let scorer = scorer.autodiff::<AD>();
    for s in IMAGE_SETS {
        for (p, prompt) in PROMPTS.iter().enumerate() {
            let images = reference_tensor::<AD, 4>(&format!("images_{s}")).require_grad();
            let score = scorer.score(images.clone(), prompt).unwrap();
            let grads = score.clone().sum().backward();
            let grad = images.grad(&grads).unwrap();
            check(
                &format!("score {s} prompt {p}"),
                score,
                &format!("score.{s}.{p}"),
            );
            check(
                &format!("d score / d images {s} prompt {p}"),
                grad,
                &format!("grad.{s}.{p}"),
            );
        }
    }
}

#[test]
fn safetensors_checkpoint_scores_the_same() {
    let device = Default::default();
    let dir = fixtures();
    let config = ImageRewardConfig::from_folder(&dir).unwrap();
    let files = [dir.join("ImageReward.safetensors")];
    let (scorer, report) =
        ImageRewardScorer::<B>::from_files(&config, &files, &dir, &device).unwrap();
    assert!(report.is_exact(), "{report:?}");
    let images = reference_tensor::<B, 4>("images_down");
    check(
        "score down prompt 0 (safetensors)",
        scorer.score(images, PROMPTS[0]).unwrap(),
        "score.down.0",
    );
}

#[test]
fn full_size_model_has_the_reference_parameter_count() {
    let counts: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("param_counts.json")).unwrap(),
    )
    .unwrap();
    let expected = counts["params"].as_u64().unwrap() as usize;
    assert_eq!(expected, 446_665_953);
    let config = ImageRewardConfig::image_reward_v1();
    // The real med_config says encoder_width 768; BLIP uses the ViT's 1024.
    assert_eq!(config.med_config.encoder_width, 768);
    assert_eq!(config.text_config().encoder_width, 1024);
    // Lazily initialised: nothing allocated.
    let model = config.init::<B>(&Default::default());
    let params = num_params_lazy(&model);
    println!("ImageReward v1.0 parameters: {params} (reference {expected})");
    assert_eq!(params, expected);
    assert_eq!(
        num_params_lazy(&model.blip.visual_encoder),
        counts["visual_encoder"].as_u64().unwrap() as usize
    );
    assert_eq!(
        num_params_lazy(&model.blip.text_encoder),
        counts["text_encoder"].as_u64().unwrap() as usize
    );
}

#[test]
fn checkpoint_of_another_model_names_missing_keys() {
    let device = Default::default();
    let config = ImageRewardConfig::from_folder(&fixtures()).unwrap();
    let other = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/clip/clip-tiny/model.safetensors");
    let err =
        ImageRewardScorer::<B>::from_files(&config, &[other], &fixtures(), &device).unwrap_err();
    println!("{err}");
    let LoadError::MissingKeys { first, files, .. } = &err else {
        panic!("expected MissingKeys, got {err:?}");
    };
    assert!(files.contains("model.safetensors"), "{err}");
    assert!(first.iter().any(|k| k.starts_with("blip.")), "{err}");
}

#[test]
fn truncated_checkpoint_is_named() {
    let device = Default::default();
    let dir = temp_dir("truncated");
    for name in ["med_config.json", "vision_config.json", "vocab.txt"] {
        std::fs::copy(fixtures().join(name), dir.join(name)).unwrap();
    }
    for name in ["ImageReward.pt", "ImageReward.safetensors"] {
        let bytes = std::fs::read(fixtures().join(name)).unwrap();
        std::fs::write(dir.join(name), &bytes[..bytes.len() / 2]).unwrap();
        let config = ImageRewardConfig::from_folder(&dir).unwrap();
        let err = ImageRewardScorer::<B>::from_files(&config, &[dir.join(name)], &dir, &device)
            .unwrap_err();
        println!("{err}");
        assert!(
            matches!(
                err,
                LoadError::CorruptFile { .. } | LoadError::CorruptTensor { .. }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains(name), "{err}");
        std::fs::remove_file(dir.join(name)).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_files_and_bad_images_are_errors() {
    let device = Default::default();
    let dir = temp_dir("missing");
    // No med_config.json.
    let err = ImageRewardScorer::<B>::from_folder(&dir, &device).unwrap_err();
    assert!(err.to_string().contains("med_config.json"), "{err}");
    // No vocab.txt.
    std::fs::copy(
        fixtures().join("med_config.json"),
        dir.join("med_config.json"),
    )
    .unwrap();
    let err = BertTokenizer::from_folder(&dir).unwrap_err();
    assert!(matches!(err, LoadError::MissingFile { .. }), "{err:?}");
    assert!(err.to_string().contains("vocab.txt"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();

    let (scorer, _) = ImageRewardScorer::<B>::from_folder(&fixtures(), &device).unwrap();
    for shape in [[1, 4, 32, 32], [0, 3, 32, 32], [1, 3, 0, 32]] {
        let images = Tensor::<B, 4>::zeros(shape, &device);
        let err = scorer.score(images, "a cat").unwrap_err();
        assert!(matches!(err, RewardError::BadImages { .. }), "{err:?}");
    }
}
