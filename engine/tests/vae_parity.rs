//! AutoencoderKL against diffusers on a tiny random-weight model (fixture from
//! `tools/fixtures/make_unet_fixtures.py`): posterior, decode and the encoder's gradient, plus
//! the full-size parameter count.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn_store::{ModuleStore, SafetensorsStore};
use rewardsds_engine::models::unet_2d::num_params_lazy;
use rewardsds_engine::models::vae::{AutoencoderKL, AutoencoderKLConfig};

type B = NdArray<f32>;
type A = Autodiff<B>;

mod fixture_io;
use fixture_io::{Io, max_abs_diff};

/// f32 parity target of the issue.
const TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn tiny_vae<Bk: Backend>() -> AutoencoderKL<Bk> {
    let dir = fixture("vae_tiny");
    let config = AutoencoderKLConfig::from_file(dir.join("config.json")).unwrap();
    let device = Default::default();
    let vae = config.init(&device);
    let files = [dir.join("diffusion_pytorch_model.safetensors")];
    let (vae, report) = vae.load_weights(&files, &device).unwrap();
    assert!(report.is_exact(), "{report:?}");
    vae
}

fn report(what: &str, err: f32) {
    println!("vae_tiny {what}: max abs error {err:.2e}");
    assert!(err < TOLERANCE, "vae_tiny {what}: max abs error {err}");
}

#[test]
fn vae_tiny_encode_and_decode_match_diffusers() {
    let vae = tiny_vae::<B>();
    assert_eq!(vae.scaling_factor, 0.18215);
    let mut io = Io::open(fixture("vae_tiny/io.safetensors"));
    let posterior = vae.encode(io.get("image"));
    report(
        "posterior mean",
        max_abs_diff(posterior.mean, io.get("mean")),
    );
    report(
        "posterior logvar",
        max_abs_diff(posterior.logvar, io.get("logvar")),
    );
    let decoded = vae.decode(io.get("latents"));
    report("decode", max_abs_diff(decoded, io.get("decoded")));
}

#[test]
fn vae_tiny_encoder_gradient_matches_torch() {
    let vae = tiny_vae::<A>();
    let mut io = Io::open(fixture("vae_tiny/io.safetensors"));
    let image: Tensor<A, 4> = io.get::<A, 4>("image").require_grad();
    let upstream: Tensor<A, 4> = io.get("upstream");
    let loss = (vae.encode(image.clone()).mean * upstream).sum();
    let grads = loss.backward();
    let grad = image.grad(&grads).expect("the encoder is differentiable");
    let expected: Tensor<B, 4> = io.get("grad_image");
    report("encoder input gradient", max_abs_diff(grad, expected));
}

#[test]
fn sd_vae_parameter_count() {
    let vae: AutoencoderKL<B> = AutoencoderKLConfig::sd().init(&Default::default());
    // diffusers: sum(p.numel()) of AutoencoderKL with SD's vae/config.json
    assert_eq!(num_params_lazy::<B, _>(&vae), 83_653_863);
}

#[test]
fn old_attention_key_names_still_load() {
    // Re-save the fixture with the pre-0.14 diffusers names of the mid-block attention, as old
    // VAE checkpoints have them, and load it back through the renaming remaps.
    let vae = tiny_vae::<B>();
    let dir = std::env::temp_dir().join(format!("vae_old_names_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("diffusion_pytorch_model.safetensors");
    let remapper = burn_store::KeyRemapper::from_patterns(vec![
        (r"\.to_q\.", ".query."),
        (r"\.to_k\.", ".key."),
        (r"\.to_v\.", ".value."),
        (r"\.to_out\.0\.", ".proj_attn."),
    ])
    .unwrap();
    let mut store = SafetensorsStore::from_file(&file)
        .with_to_adapter(burn_store::BurnToPyTorchAdapter)
        .remap(remapper)
        .overwrite(true);
    store.collect_from(&vae).unwrap();
    let keys = rewardsds_engine::weights::tensor_shapes(&file).unwrap();
    assert!(keys.contains_key("encoder.mid_block.attentions.0.query.weight"));
    assert!(keys.contains_key("decoder.mid_block.attentions.0.proj_attn.bias"));

    let device = Default::default();
    let fresh: AutoencoderKL<B> = AutoencoderKLConfig::from_file(fixture("vae_tiny/config.json"))
        .unwrap()
        .init(&device);
    let (reloaded, report) = fresh.load_weights(&[file], &device).unwrap();
    assert!(report.is_exact(), "{report:?}");
    assert_eq!(report.remapped.len(), 16, "{:?}", report.remapped);
    let mut io = Io::open(fixture("vae_tiny/io.safetensors"));
    let latents: Tensor<B, 4> = io.get("latents");
    let err = max_abs_diff(vae.decode(latents.clone()), reloaded.decode(latents));
    assert_eq!(err, 0.0);
    std::fs::remove_dir_all(dir).ok();
}
