//! AutoencoderTiny (TAESD) against diffusers on a tiny random-weight model saved in diffusers'
//! own folder format (fixture from `tools/fixtures/make_taesd_fixtures.py`): decode, encode,
//! the decoder's gradient, the `[0, 1]` latent packing, the full-size parameter count, and
//! errors for broken folders.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use rewardsds_engine::models::autoencoder_tiny::{AutoencoderTiny, AutoencoderTinyConfig};
use rewardsds_engine::models::num_params_lazy;
use rewardsds_engine::weights::LoadError;

type B = NdArray<f32>;
type A = Autodiff<B>;

mod fixture_io;
use fixture_io::{Io, max_abs_diff};

/// f32 parity target.
const TOLERANCE: f32 = 1e-4;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/taesd_tiny")
}

fn report(what: &str, err: f32) {
    println!("taesd_tiny {what}: max abs error {err:.2e}");
    assert!(err < TOLERANCE, "taesd_tiny {what}: max abs error {err}");
}

fn load<Bk: Backend>() -> (AutoencoderTiny<Bk>, AutoencoderTinyConfig) {
    AutoencoderTiny::from_folder(&fixture(), &Default::default()).unwrap()
}

#[test]
fn taesd_tiny_decode_and_encode_match_diffusers() {
    let (taesd, config) = load::<B>();
    assert_eq!(config.upsampling_scaling_factor, 3);
    assert_eq!((taesd.scaling_factor, taesd.shift_factor), (1.0, 0.0));
    // Every file tensor has its place and every parameter came from the file.
    let files = [fixture().join("diffusion_pytorch_model.safetensors")];
    let (_, load_report) = config
        .init::<B>(&Default::default())
        .load_weights(&files, &Default::default())
        .unwrap();
    assert!(load_report.is_exact(), "{load_report:?}");

    let mut io = Io::open(fixture().join("io.safetensors"));
    let decoded = taesd.decode(io.get("latents"));
    report("decode", max_abs_diff(decoded, io.get("decoded")));
    let encoded = taesd.encode(io.get("image"));
    report("encode", max_abs_diff(encoded.clone(), io.get("encoded")));
    report(
        "scale_latents",
        max_abs_diff(taesd.scale_latents_to_unit(encoded), io.get("scaled")),
    );
}

#[test]
fn taesd_tiny_decoder_gradient_matches_torch() {
    let (taesd, _) = load::<A>();
    let mut io = Io::open(fixture().join("io.safetensors"));
    let latents: Tensor<A, 4> = io.get::<A, 4>("latents").require_grad();
    let upstream: Tensor<A, 4> = io.get("upstream");
    let grads = (taesd.decode(latents.clone()) * upstream).sum().backward();
    let grad = latents.grad(&grads).expect("the decoder is differentiable");
    report(
        "decoder input gradient",
        max_abs_diff(grad, io.get::<B, 4>("grad_latents")),
    );
}

#[test]
fn parameter_counts_match_diffusers() {
    // Counted by the fixture script from diffusers' AutoencoderTiny (default config =
    // madebyollin/taesd), without loading weights.
    let text = std::fs::read_to_string(fixture().join("param_counts.json")).unwrap();
    let counts: std::collections::BTreeMap<String, usize> = serde_json::from_str(&text).unwrap();
    let device = Default::default();
    let tiny = AutoencoderTinyConfig::from_file(fixture().join("config.json")).unwrap();
    for (name, config) in [
        ("tiny", tiny),
        ("madebyollin/taesd", AutoencoderTinyConfig::default()),
    ] {
        let ours = num_params_lazy::<B, _>(&config.init::<B>(&device));
        println!("{name}: {ours} parameters (diffusers {})", counts[name]);
        assert_eq!(ours, counts[name], "{name}");
    }
}

#[test]
fn broken_folders_are_load_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = fixture().join("config.json");

    // No folder at all.
    let missing = dir.path().join("nowhere");
    let err = AutoencoderTiny::<B>::from_folder(&missing, &Default::default()).unwrap_err();
    println!("no folder: {err}");
    assert!(matches!(err, LoadError::MissingFolder { .. }), "{err}");

    // A config and no weights.
    let no_weights = dir.path().join("no_weights");
    std::fs::create_dir(&no_weights).unwrap();
    std::fs::copy(&config, no_weights.join("config.json")).unwrap();
    let err = AutoencoderTiny::<B>::from_folder(&no_weights, &Default::default()).unwrap_err();
    println!("no safetensors: {err}");
    assert!(matches!(err, LoadError::NoWeights { .. }), "{err}");
    assert!(err.to_string().contains("no_weights"), "{err}");

    // Weights and no config.
    let no_config = dir.path().join("no_config");
    std::fs::create_dir(&no_config).unwrap();
    std::fs::copy(
        fixture().join("diffusion_pytorch_model.safetensors"),
        no_config.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let err = AutoencoderTiny::<B>::from_folder(&no_config, &Default::default()).unwrap_err();
    println!("no config: {err}");
    assert!(matches!(err, LoadError::MissingFile { .. }), "{err}");
    assert!(err.to_string().contains("config.json"), "{err}");

    // Garbage and impossible values in config.json.
    for (name, text) in [
        ("garbage", "this is { not json"),
        ("wrong_type", r#"{"num_decoder_blocks": "three"}"#),
        (
            "unrunnable",
            r#"{"encoder_block_out_channels": [64, 32], "num_encoder_blocks": [1, 3]}"#,
        ),
    ] {
        let bad = dir.path().join(name);
        std::fs::create_dir(&bad).unwrap();
        std::fs::write(bad.join("config.json"), text).unwrap();
        std::fs::copy(
            fixture().join("diffusion_pytorch_model.safetensors"),
            bad.join("diffusion_pytorch_model.safetensors"),
        )
        .unwrap();
        let err = AutoencoderTiny::<B>::from_folder(&bad, &Default::default()).unwrap_err();
        println!("{name} config: {err}");
        assert!(matches!(err, LoadError::BadConfig { .. }), "{err}");
        assert!(err.to_string().contains("config.json"), "{err}");
    }

    // Weights of another shape than the config says (the default config against the tiny
    // model's weights).
    let mismatched = dir.path().join("mismatched");
    std::fs::create_dir(&mismatched).unwrap();
    std::fs::write(mismatched.join("config.json"), "{}").unwrap();
    std::fs::copy(
        fixture().join("diffusion_pytorch_model.safetensors"),
        mismatched.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let err = AutoencoderTiny::<B>::from_folder(&mismatched, &Default::default()).unwrap_err();
    println!("mismatched weights: {err}");
    assert!(
        err.to_string()
            .contains("diffusion_pytorch_model.safetensors"),
        "{err}"
    );
}
