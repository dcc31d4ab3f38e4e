//! MVDream's multi-view UNet and camera input against the official code (bytedance/MVDream):
//! a tiny random-weight `MultiViewUNetModel` saved as an original LDM torch pickle, its
//! outputs for 2 objects x 4 views with cameras, and `camera_utils` outputs (fixtures from
//! `tools/fixtures/make_mvdream_fixtures.py`).

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::tensor::Tensor;
use burn_store::{ModuleStore, PytorchStore};
use rewardsds_engine::models::UNet2DConditionModel;
use rewardsds_engine::models::camera_utils::{get_camera, mvdream_cameras, normalize_camera};
use rewardsds_engine::models::mv_unet::{LDM_UNET_PREFIX, MultiViewUNetModelConfig, load_mv_unet};
use rewardsds_engine::scene::Camera;
use rewardsds_engine::weights::LoadError;

mod fixture_io;
use fixture_io::{Io, max_abs_diff};

type B = NdArray<f32>;

/// f32 parity target of the issue.
const TOLERANCE: f32 = 1e-4;

const CHECKPOINT: &str = "sd-v2.1-base-4view-tiny.pt";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mvdream_tiny")
}

fn io() -> Io {
    Io::open(fixture().join("io.safetensors"))
}

fn config() -> MultiViewUNetModelConfig {
    MultiViewUNetModelConfig::from_file(fixture().join("unet/config.json")).unwrap()
}

fn load(files: &[PathBuf]) -> Result<UNet2DConditionModel<B>, LoadError> {
    let config = config();
    let device = Default::default();
    let unet = config.init::<B>(&device);
    let (unet, report) = load_mv_unet(&config, unet, files, &device)?;
    assert!(report.is_exact(), "{report:?}");
    // The VAE and the schedule buffers of the original checkpoint are set aside, not loaded.
    if files[0].extension().is_some_and(|e| e == "pt") {
        assert!(
            report
                .ignored
                .iter()
                .any(|k| k.starts_with("first_stage_model."))
        );
        assert!(report.ignored.iter().any(|k| k == "alphas_cumprod"));
    }
    Ok(unet)
}

/// The UNet's output for the fixture's 8 views, with `num_frames` views per sample.
fn check_outputs(unet: &UNet2DConditionModel<B>, what: &str) {
    let mut io = io();
    let forward = |unet: &UNet2DConditionModel<B>, io: &mut Io| {
        unet.forward_with_class_labels(
            io.get("sample"),
            io.get("timesteps"),
            io.get("context"),
            Some(io.get("camera")),
        )
    };
    assert_eq!(unet.num_frames(), 4);
    let err = max_abs_diff(forward(unet, &mut io), io.get("out"));
    println!("MVDream UNet ({what}), 2 samples x 4 views: max abs error {err:.2e}");
    assert!(err < TOLERANCE, "{what}: max abs error {err}");

    // Views attending one by one is what `num_frames = 1` gives in the reference too.
    let single = forward(&unet.clone().with_num_frames(1), &mut io);
    let err = max_abs_diff(single, io.get("out_frames1"));
    println!("MVDream UNet ({what}), num_frames 1: max abs error {err:.2e}");
    assert!(err < TOLERANCE, "{what}, num_frames 1: max abs error {err}");
}

#[test]
fn original_checkpoint_matches_the_reference() {
    let unet = load(&[fixture().join(CHECKPOINT)]).unwrap();
    check_outputs(&unet, "original .pt");

    let mut io = io();
    let embedding = unet
        .class_embedding
        .as_ref()
        .expect("the camera MLP")
        .forward(io.get("camera"));
    let err = max_abs_diff(embedding, io.get("camera_embedding"));
    println!("MVDream camera embedding: max abs error {err:.2e}");
    assert!(err < TOLERANCE, "camera embedding: max abs error {err}");
}

#[test]
fn diffusers_style_conversion_matches_the_reference() {
    // ashawkey/mvdream-sd2.1-diffusers keeps the UNet's LDM key names and drops the prefix;
    // write that file from the original checkpoint (the fixture stays one copy of the weights).
    let mut original =
        PytorchStore::from_file(fixture().join(CHECKPOINT)).map_indices_contiguous(false);
    let tensors: Vec<(String, burn::tensor::TensorData)> = original
        .get_all_snapshots()
        .unwrap()
        .iter()
        .filter_map(|(key, snapshot)| {
            let name = key.strip_prefix(LDM_UNET_PREFIX)?;
            Some((name.to_string(), snapshot.to_data().unwrap()))
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, data)| {
            let dtype = match data.dtype {
                burn::tensor::DType::F16 => safetensors::Dtype::F16,
                burn::tensor::DType::F32 => safetensors::Dtype::F32,
                other => panic!("unexpected dtype {other:?} in the fixture"),
            };
            let view =
                safetensors::tensor::TensorView::new(dtype, data.shape.to_vec(), data.as_bytes())
                    .unwrap();
            (name.clone(), view)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("diffusion_pytorch_model.safetensors");
    safetensors::serialize_to_file(views, None, &file).unwrap();

    let unet = load(&[file]).unwrap();
    check_outputs(&unet, "diffusers-style safetensors");
}

#[test]
fn camera_utils_match_the_reference() {
    let mut cameras = Io::open(fixture().join("cameras.safetensors"));
    let device = Default::default();
    let as_tensor = |rows: Vec<[f32; 16]>| {
        let n = rows.len();
        Tensor::<B, 2>::from_data(
            burn::tensor::TensorData::new(rows.concat(), [n, 16]),
            &device,
        )
    };
    for (name, ours) in [
        ("cam_e15_a0_n4", get_camera(4, 15.0, 0.0, 360.0, true)),
        ("cam_e30_a45_n4", get_camera(4, 30.0, 45.0, 360.0, true)),
        (
            "cam_em10_a10_n4_opengl",
            get_camera(4, -10.0, 10.0, 360.0, false),
        ),
        ("cam_e0_a90_n1", get_camera(1, 0.0, 90.0, 360.0, true)),
    ] {
        let err = max_abs_diff(as_tensor(ours), cameras.get(name));
        assert!(err < 1e-6, "{name}: max abs error {err}");
    }

    // normalize_camera on matrices whose translation is 2.5 long.
    let input: Tensor<B, 2> = cameras.get("normalize_in");
    let values = input.into_data().to_vec::<f32>().unwrap();
    let ours: Vec<[f32; 16]> = values
        .chunks(16)
        .map(|row| {
            let m =
                glam::DMat4::from_cols_array(&std::array::from_fn(|i| row[i] as f64)).transpose();
            rewardsds_engine::models::camera_utils::flatten(normalize_camera(m))
        })
        .collect();
    let err = max_abs_diff(as_tensor(ours), cameras.get("normalize_out"));
    assert!(err < 1e-6, "normalize_camera: max abs error {err}");

    // Our orbit cameras, at any distance, give the reference's input for the same angles.
    let orbit: Vec<Camera> = (0..4)
        .map(|k| Camera::orbit(45.0 + 90.0 * k as f32, 30.0, 2.7, 40.0, 16, 16).unwrap())
        .collect();
    let err = max_abs_diff(
        mvdream_cameras::<B>(&orbit, &device),
        cameras.get("cam_e30_a45_n4"),
    );
    assert!(err < 1e-5, "orbit cameras: max abs error {err}");
}

#[test]
fn another_models_checkpoint_names_its_missing_keys() {
    // A plain SD 2.x UNet (diffusers names, no camera MLP) is not MVDream.
    let other = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/unet_sd21_tiny/diffusion_pytorch_model.safetensors");
    let err = load(&[other]).unwrap_err().to_string();
    println!("{err}");
    assert!(err.contains("missing"), "{err}");
    assert!(err.contains("class_embedding.linear_1"), "{err}");
}

#[test]
fn a_camera_width_that_does_not_match_the_checkpoint_is_named() {
    let mut config = config();
    config.camera_dim = Some(12);
    let device = Default::default();
    let unet = config.init::<B>(&device);
    let err = load_mv_unet(&config, unet, &[fixture().join(CHECKPOINT)], &device)
        .unwrap_err()
        .to_string();
    println!("{err}");
    assert!(
        err.contains("model.diffusion_model.camera_embed.0.weight"),
        "{err}"
    );
    assert!(err.contains(CHECKPOINT), "{err}");
}

#[test]
fn truncated_and_foreign_pickles_are_errors_naming_the_file() {
    let bytes = std::fs::read(fixture().join(CHECKPOINT)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("truncated.pt", bytes[..bytes.len() / 2].to_vec()),
        ("header_only.pt", bytes[..64].to_vec()),
        ("text.pt", b"this is not a torch checkpoint\n".to_vec()),
        ("empty.pt", Vec::new()),
    ];
    for (name, content) in cases {
        let file = dir.path().join(name);
        std::fs::write(&file, content).unwrap();
        let err = load(&[file]).unwrap_err().to_string();
        println!("{name}: {err}");
        assert!(err.contains(name), "{name}: {err}");
    }
}

#[test]
fn configs_have_the_reference_parameter_counts() {
    // Counted from the reference classes by the fixture script (full size on the meta device).
    let text = std::fs::read_to_string(fixture().join("param_counts.json")).unwrap();
    let counts: std::collections::BTreeMap<String, usize> = serde_json::from_str(&text).unwrap();
    let device = Default::default();
    for (name, config) in [
        ("tiny", config()),
        (
            "sd-v2.1-base-4view",
            MultiViewUNetModelConfig::sd21_base_4view(),
        ),
        ("sd-v1.5-4view", MultiViewUNetModelConfig::sd15_4view()),
    ] {
        let unet = config.init::<B>(&device);
        let ours = rewardsds_engine::models::num_params_lazy(&unet);
        println!("{name}: {ours} parameters (reference {})", counts[name]);
        assert_eq!(ours, counts[name], "{name}");
    }
}

#[test]
fn the_original_checkpoints_vae_matches_the_reference() {
    use rewardsds_engine::models::vae::{
        AutoencoderKLConfig, DownEncoderBlockType, UpDecoderBlockType,
    };
    use rewardsds_engine::weights::load_safetensors_with;
    // The fixture's first stage: ch 32, ch_mult [1, 1], 1 ResNet per level, z 4.
    let config = AutoencoderKLConfig {
        block_out_channels: vec![32, 32],
        down_block_types: vec![DownEncoderBlockType::DownEncoderBlock2D; 2],
        up_block_types: vec![UpDecoderBlockType::UpDecoderBlock2D; 2],
        layers_per_block: 1,
        norm_num_groups: 32,
        ..AutoencoderKLConfig::default()
    };
    let device = Default::default();
    let vae = config.init::<B>(&device);
    let options = vae.ldm_load_options();
    let (vae, report) =
        load_safetensors_with(vae, &[fixture().join(CHECKPOINT)], &device, &options).unwrap();
    assert!(report.is_exact(), "{report:?}");

    let mut io = io();
    let decoded = vae.decode(io.get("vae_latent"));
    let err = max_abs_diff(decoded, io.get("vae_decoded"));
    println!("MVDream .pt VAE decode: max abs error {err:.2e}");
    assert!(err < TOLERANCE, "decode: max abs error {err}");
    let mean = vae.encode(io.get("vae_image")).mean;
    let err = max_abs_diff(mean, io.get("vae_mean"));
    println!("MVDream .pt VAE encode (posterior mean): max abs error {err:.2e}");
    assert!(err < TOLERANCE, "encode: max abs error {err}");
}
