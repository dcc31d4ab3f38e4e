//! SDS and RewardSDS on tiny priors: a pixel-space UNet built in code (8x8 images) with the
//! tiny SD 2.x text encoder fixture, and a latent prior assembled from the tiny UNet, VAE,
//! text encoder and scheduler fixtures as a diffusers pipeline folder.
//!
//! The central check: the gradient autodiff delivers to the images equals the weighted sum of
//! per-noise SDS gradients computed directly with the prior, `2 / B * sum_i w_i w(t)
//! (eps_cfg_i - eps_i)` (the 2 is `d z / d image` of a pixel prior, `z = 2x - 1`).

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor, TensorData};
use rewardsds_engine::guidance::scoring::{Scorer, ddim_scoring_grid};
use rewardsds_engine::guidance::{
    BoxedReward, CAMERA_LABELS, DDIM_SCORING_STEPS, DiffusionPrior, Guidance, GuidanceConfig,
    GuidanceError, IsmConfig, PriorParts, ReconLossConfig, RewardFeedbackConfig, RewardSdsConfig,
    ScoringMode, ViewAngles, ViewDirection, WeightStrategy,
};
use rewardsds_engine::models::reward::{RewardError, RewardModel};
use rewardsds_engine::models::unet_2d::{DownBlockType, PerBlock, UpBlockType};
use rewardsds_engine::models::vae::{
    AutoencoderKLConfig, DownEncoderBlockType, UpDecoderBlockType,
};
use rewardsds_engine::models::{
    CLIPTextModel, CLIPTokenizer, DDIMScheduler, DDIMSchedulerConfig, UNet2DConditionModelConfig,
};
use rewardsds_engine::weights::LoadError;

type I = NdArray<f32>;
type A = Autodiff<I>;
type Device = burn::backend::ndarray::NdArrayDevice;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Mean brightness minus a little blue: cheap, deterministic, and different per sample.
struct Brightness;

impl<B: Backend> RewardModel<B> for Brightness {
    fn score(&self, images: Tensor<B, 4>, _prompt: &str) -> Result<Tensor<B, 1>, RewardError> {
        let [n, c, h, w] = images.dims();
        let blue = images
            .clone()
            .narrow(1, 2, 1)
            .reshape([n, h * w])
            .mean_dim(1);
        let all = images.reshape([n, c * h * w]).mean_dim(1);
        Ok((all - blue * 0.5).reshape([n]))
    }

    fn name(&self) -> &'static str {
        "brightness"
    }
}

fn reward() -> Option<BoxedReward<A>> {
    Some(Box::new(Brightness))
}

/// A tiny UNet config: two levels of 16 and 32 channels, text width 32 (the text fixture's).
fn tiny_unet_config(channels: usize, sample_size: usize) -> UNet2DConditionModelConfig {
    UNet2DConditionModelConfig {
        sample_size: Some(sample_size),
        in_channels: channels,
        out_channels: channels,
        block_out_channels: vec![16, 32],
        down_block_types: vec![
            DownBlockType::CrossAttnDownBlock2D,
            DownBlockType::DownBlock2D,
        ],
        up_block_types: vec![UpBlockType::UpBlock2D, UpBlockType::CrossAttnUpBlock2D],
        layers_per_block: PerBlock::One(1),
        norm_num_groups: 4,
        cross_attention_dim: PerBlock::One(32),
        attention_head_dim: PerBlock::One(2),
        ..Default::default()
    }
}

/// A prior with random (seeded) UNet and VAE weights and the tiny SD 2.x text encoder fixture.
fn tiny_prior(
    unet_config: UNet2DConditionModelConfig,
    vae: Option<AutoencoderKLConfig>,
    scheduler: DDIMSchedulerConfig,
    device: &Device,
) -> DiffusionPrior<I> {
    I::seed(device, 0);
    let text = fixtures().join("clip/sd2-text");
    let tokenizer = CLIPTokenizer::from_folder(&text.join("tokenizer")).unwrap();
    let (text_encoder, _) =
        CLIPTextModel::<I>::from_folder(&text.join("text_encoder"), device).unwrap();
    let unet = unet_config.init(device);
    DiffusionPrior::new(PriorParts {
        tokenizer,
        text_encoder,
        clip_skip: 0,
        unet,
        unet_config,
        vae: vae.map(|c| c.init(device)),
        scheduler: DDIMScheduler::new(scheduler).unwrap(),
    })
    .unwrap()
}

/// A pixel-space prior: 3-channel UNet on 8x8 images.
fn pixel_prior(device: &Device) -> DiffusionPrior<I> {
    tiny_prior(
        tiny_unet_config(3, 8),
        None,
        DDIMSchedulerConfig::sd21_base(),
        device,
    )
}

/// A latent prior on 8x8 images: a two-level VAE (8 and 16 channels) to 4x4x4 latents.
fn latent_prior(device: &Device) -> DiffusionPrior<I> {
    let vae = AutoencoderKLConfig {
        block_out_channels: vec![8, 16],
        down_block_types: vec![DownEncoderBlockType::DownEncoderBlock2D; 2],
        up_block_types: vec![UpDecoderBlockType::UpDecoderBlock2D; 2],
        norm_num_groups: 4,
        ..AutoencoderKLConfig::default()
    };
    tiny_prior(
        tiny_unet_config(4, 4),
        Some(vae),
        DDIMSchedulerConfig::sd21_base(),
        device,
    )
}

/// A diffusers pipeline folder from the tiny fixtures (SD 1.5-style UNet with a 32-wide text
/// encoder, 2-level VAE): `components` chooses which folders it gets.
fn pipeline_folder(name: &str, components: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rsds-guidance-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let f = fixtures();
    let files: [(&str, PathBuf, &str); 8] = [
        (
            "tokenizer",
            f.join("clip/sd2-text/tokenizer/tokenizer.json"),
            "tokenizer.json",
        ),
        (
            "tokenizer",
            f.join("clip/sd2-text/tokenizer/tokenizer_config.json"),
            "tokenizer_config.json",
        ),
        (
            "text_encoder",
            f.join("clip/sd2-text/text_encoder/config.json"),
            "config.json",
        ),
        (
            "text_encoder",
            f.join("clip/sd2-text/text_encoder/model.safetensors"),
            "model.safetensors",
        ),
        ("unet", f.join("unet_sd15_tiny/config.json"), "config.json"),
        (
            "unet",
            f.join("unet_sd15_tiny/diffusion_pytorch_model.safetensors"),
            "diffusion_pytorch_model.safetensors",
        ),
        ("vae", f.join("vae_tiny/config.json"), "config.json"),
        (
            "vae",
            f.join("vae_tiny/diffusion_pytorch_model.safetensors"),
            "diffusion_pytorch_model.safetensors",
        ),
    ];
    for (folder, from, to) in files {
        if components.contains(&folder) {
            std::fs::create_dir_all(dir.join(folder)).unwrap();
            std::fs::copy(from, dir.join(folder).join(to)).unwrap();
        }
    }
    if components.contains(&"scheduler") {
        std::fs::create_dir_all(dir.join("scheduler")).unwrap();
        std::fs::copy(
            f.join("scheduler_ddim/scheduler_config.json"),
            dir.join("scheduler/scheduler_config.json"),
        )
        .unwrap();
    }
    dir
}

const ALL: [&str; 5] = ["tokenizer", "text_encoder", "unet", "vae", "scheduler"];

fn images(batch: usize, side: usize, device: &Device) -> Tensor<A, 4> {
    Tensor::<A, 4>::random([batch, 3, side, side], Distribution::Default, device).require_grad()
}

fn views() -> Vec<ViewAngles> {
    vec![ViewAngles::new(10.0, 15.0), ViewAngles::new(170.0, 20.0)]
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Loss value and image gradient of one step.
fn loss_and_grad(
    guidance: &mut Guidance<A>,
    images: &Tensor<A, 4>,
    step: usize,
    seed: u64,
) -> (f32, Vec<f32>, rewardsds_engine::guidance::GuidanceStats) {
    let out = guidance.step(images.clone(), &views(), step, seed).unwrap();
    let loss = out.loss.clone().into_scalar();
    let grads = out.loss.backward();
    let grad = images.grad(&grads).expect("gradient reaches the images");
    (loss, to_vec(grad), out.stats)
}

#[test]
fn uniform_with_one_sample_is_sds_bit_for_bit() {
    let device = Default::default();
    let x = images(2, 8, &device);
    let mut sds = Guidance::<A>::new(
        GuidanceConfig::default(),
        pixel_prior(&device),
        "a red cube",
        None,
        100,
    )
    .unwrap();
    let (loss_sds, grad_sds, stats_sds) = loss_and_grad(&mut sds, &x, 3, 11);
    let (prior, _) = sds.into_parts();
    let uniform = GuidanceConfig {
        reward: Some(RewardSdsConfig {
            n_samples: 1,
            strategy: WeightStrategy::Uniform,
            ..Default::default()
        }),
        ..Default::default()
    };
    // No reward model needed: uniform weights ignore rewards.
    let mut uniform = Guidance::<A>::new(uniform, prior, "a red cube", None, 100).unwrap();
    let (loss_u, grad_u, stats_u) = loss_and_grad(&mut uniform, &x, 3, 11);
    assert!(stats_u.reward_active && !stats_sds.reward_active);
    assert_eq!(stats_u.t, stats_sds.t);
    assert_eq!(stats_u.weights, vec![1.0]);
    assert_eq!(
        loss_u.to_bits(),
        loss_sds.to_bits(),
        "{loss_u} vs {loss_sds}"
    );
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&grad_u), bits(&grad_sds));
    assert!(grad_sds.iter().any(|&g| g != 0.0));
    println!(
        "uniform N=1 vs SDS: loss {loss_sds} (t = {}), identical bits",
        stats_sds.t
    );
}

#[test]
fn reward_sds_gradient_is_the_weighted_sum_of_sds_gradients() {
    let device = Default::default();
    let (batch, n, seed, step) = (2, 4, 42, 0);
    let x = images(batch, 8, &device);
    // t in [145, 150] keeps the DDIM scoring short on a CPU and still walks the grid:
    // [t, 142, 71, 0], two UNet passes beyond the SDS one it reuses.
    let config = GuidanceConfig {
        t_min: rewardsds_engine::guidance::AnnealedFraction::constant(0.145),
        t_max: rewardsds_engine::guidance::AnnealedFraction::constant(0.15),
        reward: Some(RewardSdsConfig {
            n_samples: n,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut guidance =
        Guidance::<A>::new(config, pixel_prior(&device), "a red cube", reward(), 10).unwrap();
    let (_, grad, stats) = loss_and_grad(&mut guidance, &x, step, seed);
    assert!(stats.reward_active);
    assert_eq!(stats.rewards.len(), n);
    assert_eq!(
        stats.weights,
        WeightStrategy::default().weights(&stats.rewards)
    );
    assert_eq!(stats.selected, vec![0, 1, 2, 3]);
    assert_eq!(
        stats.directions,
        vec![ViewDirection::Front, ViewDirection::Back]
    );

    // The same step, by hand, one noise at a time.
    let prior = guidance.prior();
    let scale = guidance.config().guidance_scale;
    let draw = guidance.draw(step, seed, [batch, 3, 8, 8], n);
    assert_eq!(draw.t, stats.t);
    let t = draw.t;
    assert_eq!(
        ddim_scoring_grid(t, 1000, DDIM_SCORING_STEPS)[1..],
        [142, 71, 0]
    );
    let a = prior.alpha_prod(t).unwrap();
    let w_t = 1.0 - a;
    let z = x.clone().inner() * 2.0 - 1.0;
    let cond = guidance.prompts().cond(&views(), true);
    let uncond = guidance.prompts().uncond();
    let numel = batch * 3 * 64;
    let mut expected = vec![0.0f32; numel];
    let mut rewards = Vec::new();
    for i in 0..n {
        let eps = Tensor::<I, 4>::from_data(
            TensorData::new(
                draw.noise[i * numel..(i + 1) * numel].to_vec(),
                [batch, 3, 8, 8],
            ),
            &device,
        );
        let x_t = z.clone() * a.sqrt() + eps.clone() * (1.0 - a).sqrt();
        let eps_cfg = prior
            .predict_noise_cfg(x_t.clone(), t, cond.clone(), uncond.clone(), None, scale)
            .unwrap();
        let g_i = to_vec((eps_cfg.clone() - eps) * w_t);
        for (e, g) in expected.iter_mut().zip(g_i) {
            *e += stats.weights[i] * g * 2.0 / batch as f32;
        }
        // Its reward: DDIM on the official grid, decoded, scored, averaged over views.
        let grid = ddim_scoring_grid(t, 1000, DDIM_SCORING_STEPS);
        let mut x_k = x_t;
        for pair in grid.windows(2) {
            let (a_k, a_next) = (
                prior.alpha_prod(pair[0]).unwrap(),
                prior.alpha_prod(pair[1]).unwrap(),
            );
            let e = prior
                .predict_noise_cfg(
                    x_k.clone(),
                    pair[0],
                    cond.clone(),
                    uncond.clone(),
                    None,
                    scale,
                )
                .unwrap();
            let x0 = (x_k - e.clone() * (1.0 - a_k).sqrt()) / a_k.sqrt();
            x_k = x0 * a_next.sqrt() + e * (1.0 - a_next).sqrt();
        }
        let scores = to_vec(Brightness.score(prior.decode(x_k), "a red cube").unwrap());
        rewards.push(scores.iter().sum::<f32>() / batch as f32);
    }
    let err = max_abs(&grad, &expected);
    let scale_g = expected.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let reward_err = max_abs(&rewards, &stats.rewards);
    println!(
        "RewardSDS (N = {n}, min_max, ddim scoring, t = {t}, {} grid points): d loss / d images \
         max abs error {err:.2e} (max |grad| {scale_g:.3e}); reward max abs error {reward_err:.2e}",
        ddim_scoring_grid(t, 1000, DDIM_SCORING_STEPS).len()
    );
    assert!(err <= 1e-5 * scale_g.max(1.0), "gradient error {err}");
    assert!(reward_err < 1e-5, "reward error {reward_err}");
}

/// The image gradient of `step` by hand: `2 / B w(t) (weight (eps_uncond - eps) + s
/// (eps_cond - eps_uncond))`, each branch predicted alone (CFG at scale 0 and 1).
fn weighted_sds_by_hand(
    guidance: &Guidance<A>,
    x: &Tensor<A, 4>,
    step: usize,
    seed: u64,
    weight: f32,
) -> Vec<f32> {
    let device = Default::default();
    let p = guidance.prior();
    let [batch, c, h, w] = x.dims();
    let draw = guidance.draw(step, seed, [batch, c, h, w], 1);
    let (t, scale) = (draw.t, guidance.guidance_scale_at(step));
    let a = p.alpha_prod(t).unwrap();
    let z = x.clone().inner() * 2.0 - 1.0;
    let eps = Tensor::<I, 4>::from_data(TensorData::new(draw.noise, [batch, c, h, w]), &device);
    let x_t = z * a.sqrt() + eps.clone() * (1.0 - a).sqrt();
    let cond = guidance.prompts().cond(&views(), true);
    let uncond = guidance.prompts().uncond();
    let eps_uncond = p
        .predict_noise_cfg(x_t.clone(), t, cond.clone(), uncond.clone(), None, 0.0)
        .unwrap();
    let eps_cond = p
        .predict_noise_cfg(x_t, t, cond, uncond, None, 1.0)
        .unwrap();
    let g = (eps_uncond.clone() - eps) * weight + (eps_cond - eps_uncond) * scale;
    to_vec(g * (1.0 - a))
        .into_iter()
        .map(|g| g * 2.0 / batch as f32)
        .collect()
}

#[test]
fn recon_loss_gradient_is_z_minus_the_rescaled_x0() {
    let device = Default::default();
    let (batch, seed, step) = (2, 5, 3);
    let x = images(batch, 8, &device);
    let config = GuidanceConfig {
        guidance_scale: 50.0,
        recon_loss: Some(ReconLossConfig { std_rescale: 0.5 }),
        ..Default::default()
    };
    let mut guidance =
        Guidance::<A>::new(config, pixel_prior(&device), "a red cube", None, 100).unwrap();
    let (_, grad, stats) = loss_and_grad(&mut guidance, &x, step, seed);
    assert_eq!(stats.time_weight, 1.0);

    // By hand: x0 of the CFG and text-only predictions, each image its own group (one view
    // per sample), the CFG x0's std pulled halfway to the text x0's.
    let p = guidance.prior();
    let [_, c, h, w] = x.dims();
    let draw = guidance.draw(step, seed, [batch, c, h, w], 1);
    let (t, scale) = (draw.t, guidance.guidance_scale_at(step));
    let a = p.alpha_prod(t).unwrap();
    let z = x.clone().inner() * 2.0 - 1.0;
    let eps = Tensor::<I, 4>::from_data(TensorData::new(draw.noise, [batch, c, h, w]), &device);
    let x_t = z.clone() * a.sqrt() + eps * (1.0 - a).sqrt();
    let cond = guidance.prompts().cond(&views(), true);
    let uncond = guidance.prompts().uncond();
    let eps_cfg = p
        .predict_noise_cfg(x_t.clone(), t, cond.clone(), uncond.clone(), None, scale)
        .unwrap();
    let eps_text = p
        .predict_noise_cfg(x_t.clone(), t, cond, uncond, None, 1.0)
        .unwrap();
    let x0 = |e: Tensor<I, 4>| to_vec((x_t.clone() - e * (1.0 - a).sqrt()) / a.sqrt());
    let (x0_cfg, x0_text, z) = (x0(eps_cfg), x0(eps_text), to_vec(z));
    let std = |v: &[f32]| {
        let m = v.iter().sum::<f32>() / v.len() as f32;
        (v.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / (v.len() - 1) as f32).sqrt()
    };
    let per = c * h * w;
    let mut expected = Vec::new();
    for b in 0..batch {
        let r = b * per..(b + 1) * per;
        let factor = (std(&x0_text[r.clone()]) + 1e-8) / (std(&x0_cfg[r.clone()]) + 1e-8);
        for i in r {
            let target = 0.5 * x0_cfg[i] * factor + 0.5 * x0_cfg[i];
            expected.push((z[i] - target) * 2.0 / batch as f32);
        }
    }
    let err = max_abs(&grad, &expected);
    let scale_of = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(
        err < 1e-4 * scale_of.max(1.0),
        "max abs error {err} (max |g| {scale_of})"
    );

    // With ISM it is refused, naming both.
    let bad = GuidanceConfig {
        recon_loss: Some(ReconLossConfig::default()),
        ism: Some(IsmConfig::default()),
        ..Default::default()
    };
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("recon_loss") && e.contains("ism"), "{e}");
}

#[test]
fn generative_weight_scales_the_generative_term_alone() {
    // eps_cfg - eps = (eps_uncond - eps) + s (eps_cond - eps_uncond): the generative term is
    // weighted, the classifier term kept; weight 0 is CSD (no sampled noise in the gradient).
    let device = Default::default();
    let seed = 9;
    let x = images(2, 8, &device);
    let mut prior = Some(pixel_prior(&device));
    let mut check = |config: GuidanceConfig, steps: &[(usize, f32)]| {
        let mut guidance =
            Guidance::<A>::new(config, prior.take().unwrap(), "a red cube", None, 10).unwrap();
        for &(step, weight) in steps {
            assert_eq!(guidance.generative_weight_at(step), weight);
            let (_, grad, _) = loss_and_grad(&mut guidance, &x, step, seed);
            let expected = weighted_sds_by_hand(&guidance, &x, step, seed, weight);
            let err = max_abs(&grad, &expected);
            let scale_g = expected.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            println!(
                "step {step}, generative weight {weight}: d loss / d images max abs error \
                 {err:.2e} (max |grad| {scale_g:.3e})"
            );
            assert!(scale_g > 0.0);
            assert!(err <= 1e-5 * scale_g.max(1.0), "gradient error {err}");
        }
        prior = Some(guidance.into_parts().0);
    };
    for weight in [0.0f32, 0.5] {
        let config = GuidanceConfig {
            generative_weight: weight,
            ..Default::default()
        };
        check(config, &[(1, weight)]);
    }
    // CSD for the first 30% of 10 steps, then SDS.
    let config = GuidanceConfig {
        csd_fraction: 0.3,
        ..Default::default()
    };
    check(config, &[(2, 0.0), (3, 1.0)]);
    // Out of range is refused by name.
    for (bad, field) in [
        (
            GuidanceConfig {
                generative_weight: -1.0,
                ..Default::default()
            },
            "generative_weight",
        ),
        (
            GuidanceConfig {
                csd_fraction: 1.5,
                ..Default::default()
            },
            "csd_fraction",
        ),
    ] {
        let p = prior.take().unwrap();
        let err = Guidance::<A>::new(bad, p, "a red cube", None, 10).unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
        prior = Some(pixel_prior(&device));
    }
}

#[test]
fn ism_gradient_is_the_interval_score() {
    // ISM (LucidDreamer): x_t by unconditional DDIM inversion from the image, target the
    // prediction at x_s; checked against the same walk done by hand with the prior.
    let device = Default::default();
    let (batch, seed, step) = (2, 5, 0);
    let x = images(batch, 8, &device);
    let ism = IsmConfig::default();
    // t in [440, 450]: s = t - 50 in [390, 400], inverted 0 -> 200 -> s.
    let config = GuidanceConfig {
        t_min: rewardsds_engine::guidance::AnnealedFraction::constant(0.44),
        t_max: rewardsds_engine::guidance::AnnealedFraction::constant(0.45),
        ism: Some(ism),
        ..Default::default()
    };
    let mut guidance =
        Guidance::<A>::new(config, pixel_prior(&device), "a red cube", None, 10).unwrap();
    let (_, grad, stats) = loss_and_grad(&mut guidance, &x, step, seed);

    let prior = guidance.prior();
    let draw = guidance.draw(step, seed, [batch, 3, 8, 8], 1);
    let (t, s) = (draw.t, draw.t - ism.interval);
    assert_eq!(t, stats.t);
    assert_eq!(ism.passes(t), 3);
    let abar = |k: usize| prior.alpha_prod(k).unwrap();
    let z = x.clone().inner() * 2.0 - 1.0;
    let uncond = guidance.prompts().uncond();
    let eps = Tensor::<I, 4>::from_data(TensorData::new(draw.noise, [batch, 3, 8, 8]), &device);
    let mut x_k = z * abar(0).sqrt() + eps * (1.0 - abar(0)).sqrt();
    for (from, to) in [(0, 200), (200, s)] {
        let e = prior
            .predict_noise(x_k.clone(), from, uncond.clone(), None)
            .unwrap();
        let x0 = (x_k - e.clone() * (1.0 - abar(from)).sqrt()) / abar(from).sqrt();
        x_k = x0 * abar(to).sqrt() + e * (1.0 - abar(to)).sqrt();
    }
    let target = prior
        .predict_noise(x_k.clone(), s, uncond.clone(), None)
        .unwrap();
    let x0 = (x_k - target.clone() * (1.0 - abar(s)).sqrt()) / abar(s).sqrt();
    let x_t = x0 * abar(t).sqrt() + target.clone() * (1.0 - abar(t)).sqrt();
    let cond = guidance.prompts().cond(&views(), true);
    let scale = guidance.config().guidance_scale;
    let eps_cfg = prior
        .predict_noise_cfg(x_t, t, cond, uncond, None, scale)
        .unwrap();
    let expected: Vec<f32> = to_vec((eps_cfg - target) * (1.0 - abar(t)))
        .into_iter()
        .map(|g| g * 2.0 / batch as f32)
        .collect();
    let err = max_abs(&grad, &expected);
    let scale_g = expected.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    println!(
        "ISM (t = {t}, s = {s}): d loss / d images max abs error {err:.2e} (max |grad| {scale_g:.3e})"
    );
    assert!(scale_g > 0.0);
    assert!(err <= 1e-5 * scale_g.max(1.0), "gradient error {err}");

    // Not SDS: the same draw with a random x_t gives another gradient.
    let (prior, _) = guidance.into_parts();
    let sds = GuidanceConfig {
        t_min: rewardsds_engine::guidance::AnnealedFraction::constant(0.44),
        t_max: rewardsds_engine::guidance::AnnealedFraction::constant(0.45),
        ..Default::default()
    };
    let mut sds = Guidance::<A>::new(sds, prior, "a red cube", None, 10).unwrap();
    let (_, grad_sds, _) = loss_and_grad(&mut sds, &x, step, seed);
    assert!(max_abs(&grad, &grad_sds) > 0.1 * scale_g);
}

#[test]
fn one_step_scoring_matches_the_x0_formula() {
    let device = Default::default();
    let prior = pixel_prior(&device);
    let cond = prior.encode_prompt("a cube").unwrap();
    let uncond = prior.encode_prompt("").unwrap();
    let x_t = Tensor::<I, 4>::random([2, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
    let t = 500;
    let eps = prior
        .predict_noise_cfg(x_t.clone(), t, cond.clone(), uncond.clone(), None, 7.5)
        .unwrap();
    let a = prior.alpha_prod(t).unwrap();
    let expected = (x_t.clone() - eps * (1.0 - a).sqrt()) / a.sqrt();
    let scorer = Scorer {
        prior: &prior,
        reward: &Brightness,
        prompt: "a cube",
        mode: ScoringMode::OneStep,
        guidance_scale: 7.5,
        max_batch: 1,
        decoder: None,
    };
    let x0 = scorer.denoise(x_t, t, cond, uncond, None, None).unwrap();
    assert!(max_abs(&to_vec(x0.clone()), &to_vec(expected)) < 1e-5);
    // Two samples of one view each: one reward per sample.
    let rewards = scorer.rewards(x0, 2).unwrap();
    assert_eq!(rewards.len(), 2);
}

#[test]
fn cfg_converts_v_prediction_and_chunks_exactly() {
    let device = Default::default();
    let prior = tiny_prior(
        tiny_unet_config(3, 8),
        None,
        DDIMSchedulerConfig::sd21(),
        &device,
    );
    let cond = prior
        .encode_prompts(&["a cube", "a ball", "a cone"])
        .unwrap();
    let uncond = prior.encode_prompt("").unwrap();
    let x_t = Tensor::<I, 4>::random([3, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
    let (t, s) = (700, 7.5);
    let eps = prior
        .predict_noise_cfg(x_t.clone(), t, cond.clone(), uncond.clone(), None, s)
        .unwrap();
    // diffusers: CFG on the model output (v), then eps = sqrt(a) v + sqrt(1 - a) x_t.
    let raw = prior.unet().forward_timestep(
        Tensor::cat(vec![x_t.clone(), x_t.clone()], 0),
        t as f32,
        Tensor::cat(vec![uncond.clone().repeat_dim(0, 3), cond.clone()], 0),
        None,
    );
    let (v_u, v_c) = (raw.clone().narrow(0, 0, 3), raw.narrow(0, 3, 3));
    let v = v_u.clone() + (v_c - v_u) * s;
    let a = prior.alpha_prod(t).unwrap();
    let expected = v * a.sqrt() + x_t.clone() * (1.0 - a).sqrt();
    let err = max_abs(&to_vec(eps.clone()), &to_vec(expected));
    assert!(err < 1e-4, "v-prediction conversion error {err}");
    // Chunked passes give the same samples.
    let chunked = prior
        .predict_noise_cfg_chunked(x_t.clone(), t, cond.clone(), uncond.clone(), None, s, 2)
        .unwrap();
    let err = max_abs(&to_vec(eps.clone()), &to_vec(chunked));
    assert!(err < 1e-5, "chunking error {err}");
    // The branches apart, chunked, guide to the same prediction.
    let (e_u, e_c) = prior
        .predict_noise_branches_chunked(x_t, t, cond, uncond, None, 2)
        .unwrap();
    let err = max_abs(&to_vec(eps), &to_vec(e_u.clone() + (e_c - e_u) * s));
    assert!(err < 1e-4, "branches error {err}");
}

#[test]
fn steps_are_deterministic_in_the_seed() {
    let device = Default::default();
    let x = images(2, 8, &device);
    let mut guidance = Guidance::<A>::new(
        GuidanceConfig::default(),
        pixel_prior(&device),
        "a red cube",
        None,
        100,
    )
    .unwrap();
    let (l1, g1, s1) = loss_and_grad(&mut guidance, &x, 5, 7);
    let (l2, g2, s2) = loss_and_grad(&mut guidance, &x, 5, 7);
    assert_eq!((l1, s1.t), (l2, s2.t));
    assert_eq!(g1, g2);
    let (l3, _, _) = loss_and_grad(&mut guidance, &x, 5, 8);
    assert_ne!(l1, l3);
    assert!(s1.t >= 20 && s1.t <= 980, "t {}", s1.t);
    assert_eq!(s1.t_range, [20, 980]);
}

#[test]
fn a_camera_conditioned_prior_sees_each_views_camera() {
    let device = Default::default();
    let x = images(2, 8, &device);
    let config = UNet2DConditionModelConfig {
        class_embed_type: Some("projection".into()),
        projection_class_embeddings_input_dim: Some(CAMERA_LABELS),
        ..tiny_unet_config(3, 8)
    };
    let prior = tiny_prior(config, None, DDIMSchedulerConfig::sd21_base(), &device);
    assert_eq!(prior.class_labels_width(), Some(CAMERA_LABELS));
    let mut guidance =
        Guidance::<A>::new(GuidanceConfig::default(), prior, "a red cube", None, 100).unwrap();
    let mut grad = |views: &[ViewAngles]| {
        let out = guidance.step(x.clone(), views, 3, 11).unwrap();
        let grads = out.loss.backward();
        to_vec(x.grad(&grads).unwrap())
    };
    // The first image seen from 10 or 40 degrees: both "front view", so the text is the same
    // and only the camera labels differ; the second image keeps its camera.
    let a = grad(&[ViewAngles::new(10.0, 15.0), ViewAngles::new(170.0, 20.0)]);
    let b = grad(&[ViewAngles::new(40.0, 15.0), ViewAngles::new(170.0, 20.0)]);
    let half = a.len() / 2;
    assert!(
        max_abs(&a[..half], &b[..half]) > 1e-4,
        "the camera did not reach the prior"
    );
    assert!(
        max_abs(&a[half..], &b[half..]) < 1e-6,
        "one view's camera moved another's"
    );

    // Without view angles the camera is unknown: refused, naming why.
    let (prior, _) = guidance.into_parts();
    let plain = GuidanceConfig {
        view_dependent_prompting: false,
        ..Default::default()
    };
    let mut guidance = Guidance::<A>::new(plain, prior, "a red cube", None, 100).unwrap();
    let err = guidance.step(x, &[], 3, 11).unwrap_err().to_string();
    assert!(err.contains("camera-conditioned"), "{err}");
}

#[test]
fn reward_duration_and_annealing() {
    let device = Default::default();
    let config = GuidanceConfig {
        t_min: rewardsds_engine::guidance::AnnealedFraction::linear(0.98, 0.02),
        t_max: rewardsds_engine::guidance::AnnealedFraction::linear(0.98, 0.5),
        anneal_steps: 8,
        reward: Some(RewardSdsConfig {
            n_samples: 2,
            strategy: WeightStrategy::Best { k: 1 },
            scoring: ScoringMode::OneStep,
            reward_duration: 0.5,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut guidance =
        Guidance::<A>::new(config, pixel_prior(&device), "a cube", reward(), 10).unwrap();
    assert_eq!(guidance.timestep_range(0), [980, 980]);
    assert_eq!(guidance.timestep_range(4), [500, 740]);
    assert_eq!(guidance.timestep_range(100), [20, 500]);
    let x = images(2, 8, &device);
    let (_, _, s) = loss_and_grad(&mut guidance, &x, 4, 1);
    assert!(s.reward_active);
    assert_eq!(s.weights.iter().filter(|&&w| w == 1.0).count(), 1);
    assert_eq!(s.selected.len(), 1);
    assert!(s.t >= 500 && s.t <= 740);
    let (_, _, s) = loss_and_grad(&mut guidance, &x, 5, 1);
    assert!(!s.reward_active);
    assert_eq!((s.n_samples, s.weights.as_slice()), (1, [1.0].as_slice()));
}

#[test]
fn guidance_scale_anneals_linearly_to_its_end() {
    let device = Default::default();
    let annealed = GuidanceConfig {
        guidance_scale: 5.0,
        guidance_scale_end: Some(1.5),
        ..Default::default()
    };
    let mut guidance =
        Guidance::<A>::new(annealed, pixel_prior(&device), "a cube", None, 11).unwrap();
    assert_eq!(guidance.guidance_scale_at(0), 5.0);
    assert_eq!(guidance.guidance_scale_at(5), 3.25);
    assert_eq!(guidance.guidance_scale_at(10), 1.5);
    assert_eq!(guidance.guidance_scale_at(50), 1.5);
    // The last step guides exactly as a constant 1.5 does, the first as a constant 5.
    let x = images(2, 8, &device);
    let (_, last, _) = loss_and_grad(&mut guidance, &x, 10, 3);
    let (_, first, _) = loss_and_grad(&mut guidance, &x, 0, 3);
    let (prior, _) = guidance.into_parts();
    let constant = |scale: f32, prior| {
        let config = GuidanceConfig {
            guidance_scale: scale,
            ..Default::default()
        };
        Guidance::<A>::new(config, prior, "a cube", None, 11).unwrap()
    };
    let mut low = constant(1.5, prior);
    assert_eq!(loss_and_grad(&mut low, &x, 10, 3).1, last);
    let (prior, _) = low.into_parts();
    let mut high = constant(5.0, prior);
    assert_eq!(loss_and_grad(&mut high, &x, 0, 3).1, first);
    // ... and not as a constant 5 would at the last step.
    assert_ne!(last, loss_and_grad(&mut high, &x, 10, 3).1);
    let bad = GuidanceConfig {
        guidance_scale_end: Some(-1.0),
        ..Default::default()
    };
    assert_eq!(bad.validate().unwrap_err().field, "guidance_scale_end");
}

#[test]
fn guidance_can_move_to_a_worker_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Guidance<A>>();
}

#[test]
fn bad_inputs_and_configs_are_named() {
    let device = Default::default();
    let config = GuidanceConfig {
        reward: Some(RewardSdsConfig::default()),
        ..Default::default()
    };
    let e = Guidance::<A>::new(config, pixel_prior(&device), "a cube", None, 10).unwrap_err();
    assert!(
        matches!(&e, GuidanceError::Config(c) if c.field == "reward"),
        "{e}"
    );
    let mut guidance = Guidance::<A>::new(
        GuidanceConfig::default(),
        pixel_prior(&device),
        "a cube",
        None,
        10,
    )
    .unwrap();
    let e = guidance
        .step(images(3, 8, &device), &views(), 0, 0)
        .unwrap_err();
    assert!(e.to_string().contains("3 images but 2 view angles"), "{e}");
}

/// Reward feedback adds exactly `-scale * d mean_b reward / d image` to the RewardSDS
/// gradient, reports the mean reward, and is refused without a model or with a bad scale.
#[test]
fn reward_feedback_adds_the_reward_gradient() {
    let device = Default::default();
    let (batch, side, scale) = (2, 8, 3.0);
    let x = images(batch, side, &device);
    let base = GuidanceConfig {
        reward: Some(RewardSdsConfig {
            n_samples: 4,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut plain =
        Guidance::<A>::new(base.clone(), pixel_prior(&device), "a cube", reward(), 10).unwrap();
    let (loss_plain, grad_plain, stats_plain) = loss_and_grad(&mut plain, &x, 3, 5);
    assert_eq!(stats_plain.feedback_reward, None);

    let config = GuidanceConfig {
        reward_feedback: Some(RewardFeedbackConfig { scale }),
        ..base
    };
    // The same prior: its random weights come from the process-wide generator.
    let (prior, _) = plain.into_parts();
    let mut guided = Guidance::<A>::new(config.clone(), prior, "a cube", reward(), 10).unwrap();
    // Configured but nothing attached: the step says which setting needs what.
    let e = guided.step(x.clone(), &views(), 3, 5).unwrap_err();
    assert!(
        matches!(&e, GuidanceError::Config(c) if c.field == "reward_feedback"),
        "{e}"
    );
    guided.set_reward_feedback(Box::new(Brightness));
    let (loss, grad, stats) = loss_and_grad(&mut guided, &x, 3, 5);
    assert_eq!(stats.t, stats_plain.t);
    assert_eq!(
        stats.weights, stats_plain.weights,
        "the SDS part is unchanged"
    );

    // Brightness = mean(all) - 0.5 mean(blue) per image; the term averages it over the batch.
    let reward: Vec<f32> = to_vec(Brightness.score(x.clone().inner(), "a cube").unwrap());
    let mean_reward = reward.iter().sum::<f32>() / batch as f32;
    let reported = stats.feedback_reward.expect("feedback reports its reward");
    assert!(
        (reported - mean_reward).abs() < 1e-6,
        "{reported} vs {mean_reward}"
    );
    let expected_loss = loss_plain - scale * mean_reward;
    assert!(
        (loss - expected_loss).abs() < 1e-4 * expected_loss.abs().max(1.0),
        "{loss} vs {expected_loss}"
    );
    let hw = (side * side) as f32;
    let expected: Vec<f32> = grad_plain
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let channel = (i / (side * side)) % 3;
            let d_reward = 1.0 / (3.0 * hw) - if channel == 2 { 0.5 / hw } else { 0.0 };
            g - scale * d_reward / batch as f32
        })
        .collect();
    let err = max_abs(&grad, &expected);
    let moved = max_abs(&grad, &grad_plain);
    assert!(err < 1e-5 && moved > 1e-3, "error {err}, change {moved}");
    println!("reward feedback: gradient change {moved:.3e}, max abs error {err:.2e}");

    for bad in [0.0, -1.0, f32::NAN] {
        let config = GuidanceConfig {
            reward_feedback: Some(RewardFeedbackConfig { scale: bad }),
            ..Default::default()
        };
        let e = config.validate().unwrap_err();
        assert_eq!(e.field, "reward_feedback.scale", "{e}");
    }
}

#[test]
fn view_dependent_prompts_pick_the_right_embeddings() {
    let device = Default::default();
    let guidance = Guidance::<A>::new(
        GuidanceConfig::default(),
        pixel_prior(&device),
        "a red cube",
        None,
        10,
    )
    .unwrap();
    let prompts = guidance.prompts();
    let views = [
        ViewAngles::new(0.0, 0.0),
        ViewAngles::new(180.0, 10.0),
        ViewAngles::new(90.0, 70.0),
        ViewAngles::new(-90.0, 30.0),
        ViewAngles::new(400.0, 0.0),
    ];
    let expected = [
        ViewDirection::Front,
        ViewDirection::Back,
        ViewDirection::Overhead,
        ViewDirection::Side,
        ViewDirection::Front,
    ];
    assert_eq!(prompts.directions(&views), expected);
    let cond = prompts.cond(&views, true);
    for (row, d) in expected.iter().enumerate() {
        let got = to_vec(cond.clone().narrow(0, row, 1));
        assert_eq!(got, to_vec(prompts.view(*d)), "row {row}");
        // The cache holds what the text encoder makes of "<prompt>, <direction> view".
        let direct = guidance
            .prior()
            .encode_prompt(&d.prompt("a red cube"))
            .unwrap();
        assert!(max_abs(&got, &to_vec(direct)) < 1e-5);
    }
    assert_ne!(
        to_vec(prompts.view(ViewDirection::Front)),
        to_vec(prompts.view(ViewDirection::Back))
    );
    let plain = prompts.cond(&views, false);
    assert_eq!(plain.dims()[0], 5);
    assert_eq!(to_vec(plain.narrow(0, 4, 1)), to_vec(prompts.plain()));
}

#[test]
fn pixel_prior_encodes_and_decodes() {
    let device = Default::default();
    let prior = pixel_prior(&device);
    assert_eq!((prior.resolution(), prior.channels()), (8, 3));
    assert!(!prior.is_latent());
    let x = Tensor::<I, 4>::random([1, 3, 8, 8], Distribution::Default, &device);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    let z = prior.encode_images(x.clone(), &mut rng);
    assert!(max_abs(&to_vec(z.clone()), &to_vec(x.clone() * 2.0 - 1.0)) < 1e-6);
    assert!(max_abs(&to_vec(prior.decode(z)), &to_vec(x)) < 1e-6);
    // Larger renders are resized to the prior's resolution.
    let big = Tensor::<I, 4>::random([2, 3, 16, 16], Distribution::Default, &device);
    assert_eq!(prior.encode_images(big, &mut rng).dims(), [2, 3, 8, 8]);
}

#[test]
fn latent_prior_from_a_pipeline_folder() {
    let device = Default::default();
    let dir = pipeline_folder("latent", &ALL);
    let prior = DiffusionPrior::<I>::from_folder(&dir, &device).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(prior.is_latent());
    // UNet sample_size 16, VAE with two levels (one downsampler).
    assert_eq!((prior.resolution(), prior.channels()), (32, 4));
    assert_eq!(prior.encode_prompt("a cube").unwrap().dims(), [1, 77, 32]);
    let mut guidance =
        Guidance::<A>::new(GuidanceConfig::default(), prior, "a cube", None, 10).unwrap();
    // Forward only: ndarray's convolution backward is slow at 32x32 (see the tiny latent test).
    let x = images(1, 24, &device);
    let out = guidance.step(x, &views()[..1], 0, 3).unwrap();
    let loss: f32 = out.loss.into_scalar();
    assert!(loss.is_finite() && loss > 0.0, "{loss}");
}

#[test]
fn latent_gradient_is_g_pulled_back_through_the_vae() {
    let device = Default::default();
    let (batch, n, seed) = (2, 2, 5);
    let prior = latent_prior(&device);
    assert_eq!((prior.resolution(), prior.channels()), (8, 4));
    let config = GuidanceConfig {
        guidance_scale: 7.5,
        reward: Some(RewardSdsConfig {
            n_samples: n,
            strategy: WeightStrategy::Best { k: 1 },
            scoring: ScoringMode::OneStep,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut guidance = Guidance::<A>::new(config, prior, "a cube", reward(), 10).unwrap();
    // 12x12 renders: resized to 8 (differentiably), VAE-encoded (posterior sample).
    let x = images(batch, 12, &device);
    let (loss, grad, stats) = loss_and_grad(&mut guidance, &x, 0, seed);
    assert!(loss.is_finite() && loss > 0.0);
    assert_eq!(stats.rewards.len(), n);
    assert_eq!(stats.selected.len(), 1);

    // g by hand, then its pull-back through the encoder: d/dx of sum(z * g) / B.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(
        seed ^ rewardsds_engine::guidance::POSTERIOR_STREAM,
    );
    let z = guidance.image_encoder().encode(x.clone(), &mut rng);
    let z_inner = z.clone().inner();
    let draw = guidance.draw(0, seed, [batch, 4, 4, 4], n);
    let prior = guidance.prior();
    let a = prior.alpha_prod(draw.t).unwrap();
    let cond = guidance.prompts().cond(&views(), true);
    let numel = batch * 4 * 16;
    let mut g = Tensor::<I, 4>::zeros([batch, 4, 4, 4], &device);
    for i in stats.selected.iter().copied() {
        let eps = Tensor::<I, 4>::from_data(
            TensorData::new(
                draw.noise[i * numel..(i + 1) * numel].to_vec(),
                [batch, 4, 4, 4],
            ),
            &device,
        );
        let x_t = z_inner.clone() * a.sqrt() + eps.clone() * (1.0 - a).sqrt();
        let eps_cfg = prior
            .predict_noise_cfg(
                x_t,
                draw.t,
                cond.clone(),
                guidance.prompts().uncond(),
                None,
                7.5,
            )
            .unwrap();
        g = g + (eps_cfg - eps) * (stats.weights[i] * (1.0 - a));
    }
    let pullback = (z * Tensor::<A, 4>::from_inner(g)).sum() / batch as f32;
    let grads = pullback.backward();
    let expected = to_vec(x.grad(&grads).unwrap());
    let err = max_abs(&grad, &expected);
    let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    println!("latent SDS: d loss / d images max abs error {err:.2e} (max |grad| {scale:.3e})");
    assert!(scale > 0.0);
    assert!(err <= 1e-4 * scale.max(1.0), "gradient error {err}");
}

#[test]
fn pipeline_folder_errors_name_the_missing_part() {
    let device: Device = Default::default();
    let check = |name: &str, components: &[&str], expect: &str| {
        let dir = pipeline_folder(name, components);
        let e = DiffusionPrior::<I>::from_folder(&dir, &device).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(expect), "{name}: {msg}");
        std::fs::remove_dir_all(&dir).unwrap();
        e
    };
    let e = check(
        "no-text",
        &["tokenizer", "unet", "vae", "scheduler"],
        "text_encoder",
    );
    assert!(matches!(e, LoadError::MissingFolder { .. }));
    let e = check(
        "no-scheduler",
        &["tokenizer", "text_encoder", "unet", "vae"],
        "scheduler",
    );
    assert!(matches!(e, LoadError::MissingFolder { .. }));
    // Without vae/ it is a pixel prior, and a 4-channel UNet cannot denoise RGB.
    let e = check(
        "no-vae",
        &["tokenizer", "text_encoder", "unet", "scheduler"],
        "unet.in_channels",
    );
    assert!(matches!(e, LoadError::BadConfig { .. }));
    let e =
        DiffusionPrior::<I>::from_folder(Path::new("/nonexistent/pipeline"), &device).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/pipeline"), "{e}");
}
