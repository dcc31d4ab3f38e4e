//! DDS and RewardDDS (editing) on the shipped Tiny World prior: the gradient's identities, an
//! unedited image standing still (also through a latent prior's VAE), 2D editing end to end,
//! and bad edit inputs refused by name.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rewardsds_engine::generate::{
    GenerateError, Image2dConfig, Image2dEdit, Image2dGenerator, StopReason, load_edit_image,
    load_prior,
};
use rewardsds_engine::guidance::{
    Dds, DdsBranch, DdsCfg, DiffusionPrior, Guidance, GuidanceConfig, GuidanceError,
    GuidanceOutput, IsmConfig, RewardSdsConfig, ViewAngles, WeightStrategy, dds,
};
use rewardsds_engine::rgb_image::RgbImage;

mod pipeline_folders;

type I = NdArray<f32>;
type A = Autodiff<I>;

const SOURCE_PROMPT: &str = "a red cube";
const TARGET_PROMPT: &str = "a blue cube";
/// The shipped prior's resolution.
const SIDE: usize = 32;

fn prior() -> DiffusionPrior<I> {
    load_prior::<I>("tiny-world", &Default::default()).unwrap()
}

/// The front view: the shipped prior is camera-conditioned.
fn views() -> Vec<ViewAngles> {
    vec![ViewAngles::new(0.0, 15.0)]
}

/// DDS (RewardDDS with `reward`) from the source prompt to the target, over 10 steps, with no
/// reward model (the tests' strategies rank nothing).
fn edit_dds(reward: Option<RewardSdsConfig>) -> Dds<A> {
    edit_dds_from(prior(), reward)
}

/// DDS from the source prompt to itself: an edit that asks for no change.
fn unedited_dds(prior: DiffusionPrior<I>) -> Dds<A> {
    Dds::<A>::new(
        guidance_config(None),
        prior,
        SOURCE_PROMPT,
        SOURCE_PROMPT,
        None,
        10,
    )
    .unwrap()
}

/// [`edit_dds`] over a prior already loaded (taken back from another edit).
fn edit_dds_from(prior: DiffusionPrior<I>, reward: Option<RewardSdsConfig>) -> Dds<A> {
    Dds::<A>::new(
        guidance_config(reward),
        prior,
        SOURCE_PROMPT,
        TARGET_PROMPT,
        None,
        10,
    )
    .unwrap()
}

fn guidance_config(reward: Option<RewardSdsConfig>) -> GuidanceConfig {
    GuidanceConfig {
        guidance_scale: 20.0,
        view_dependent_prompting: false,
        reward,
        ..GuidanceConfig::default()
    }
}

/// A red square on light grey, colours away from 0 and 1 so clamping cannot hide a change.
fn red_square() -> RgbImage {
    let mut image = RgbImage::filled(SIDE as u32, SIDE as u32, [0.9, 0.9, 0.88]);
    for y in 10..22 {
        for x in 10..22 {
            let i = 3 * (y * SIDE + x);
            image.data[i..i + 3].copy_from_slice(&[0.8, 0.15, 0.1]);
        }
    }
    image
}

fn source() -> Tensor<I, 4> {
    RgbImage::to_tensor::<I>(&[red_square()], &Default::default())
}

/// The source with a seeded perturbation: an image part-way through an edit.
fn edited() -> Tensor<A, 4> {
    let bump: Vec<f32> = (0..3 * SIDE * SIDE)
        .map(|i| 0.1 * ((i as f32 * 0.37).sin()))
        .collect();
    let bump = Tensor::<I, 4>::from_data(
        TensorData::new(bump, [1, 3, SIDE, SIDE]),
        &Default::default(),
    );
    Tensor::from_inner((source() + bump).clamp(0.0, 1.0)).require_grad()
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn max_abs(xs: &[f32]) -> f32 {
    xs.iter().fold(0.0, |m, x| m.max(x.abs()))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The loss's gradient with respect to `images`.
fn grad_of(out: &GuidanceOutput<A>, images: &Tensor<A, 4>) -> Vec<f32> {
    let grads = out.loss.backward();
    to_vec(
        images
            .grad(&grads)
            .expect("the gradient reaches the images"),
    )
}

#[test]
fn dds_is_the_difference_of_two_sds_gradients() {
    // With the same t and noise eps on both branches,
    //   SDS(image, y_tgt) - SDS(source, y_src)
    //     = w(t) (eps_cfg(z_t, y_tgt) - eps) - w(t) (eps_cfg(zsrc_t, y_src) - eps)
    //     = w(t) (eps_cfg(z_t, y_tgt) - eps_cfg(zsrc_t, y_src)) = DDS:
    // the sampled noise cancels. Guidance::step and Dds::step draw the same t and eps for
    // the same (step, seed), so their image gradients must satisfy it.
    let dds = edit_dds(None);
    let mut target_sds =
        Guidance::<A>::new(guidance_config(None), prior(), TARGET_PROMPT, None, 10).unwrap();
    let mut source_sds =
        Guidance::<A>::new(guidance_config(None), prior(), SOURCE_PROMPT, None, 10).unwrap();
    let image = edited();
    let source_leaf = Tensor::<A, 4>::from_inner(source()).require_grad();
    for (step, seed) in [(0, 3), (7, 11)] {
        let out = dds
            .step(image.clone(), source(), &views(), step, seed)
            .unwrap();
        let g_dds = grad_of(&out, &image);
        let tgt = target_sds
            .step(image.clone(), &views(), step, seed)
            .unwrap();
        let src = source_sds
            .step(source_leaf.clone(), &views(), step, seed)
            .unwrap();
        assert_eq!((out.stats.t, out.stats.t), (tgt.stats.t, src.stats.t));
        assert_eq!(out.stats.weights, [1.0]);
        let g_tgt = grad_of(&tgt, &image);
        let g_src = grad_of(&src, &source_leaf);
        let expected: Vec<f32> = g_tgt.iter().zip(&g_src).map(|(a, b)| a - b).collect();
        let scale = max_abs(&g_dds);
        let err = max_abs_diff(&g_dds, &expected);
        eprintln!(
            "t = {}: |DDS - (SDS_tgt - SDS_src)| max {err:.2e}, max |DDS| {scale:.3e}, \
             max |SDS_tgt| {:.3e}",
            out.stats.t,
            max_abs(&g_tgt)
        );
        assert!(scale > 0.0, "DDS moved nothing");
        assert!(err <= 1e-5 * scale.max(1.0), "error {err}");
        // Not SDS: the noise is gone from the gradient.
        assert!(max_abs_diff(&g_dds, &g_tgt) > 0.1 * scale);
    }
}

#[test]
fn reward_dds_with_uniform_weights_is_dds_averaged_over_its_noises() {
    let n = 3;
    let (step, seed) = (4, 5);
    let uniform = RewardSdsConfig {
        n_samples: n,
        strategy: WeightStrategy::Uniform,
        ..RewardSdsConfig::default()
    };
    // Uniform weights rank nothing: no reward model needed.
    let reward_dds = edit_dds(Some(uniform));
    let image = edited();
    let out = reward_dds
        .step(image.clone(), source(), &views(), step, seed)
        .unwrap();
    assert!(out.stats.reward_active);
    assert_eq!(out.stats.n_samples, n);
    assert_eq!(out.stats.weights, vec![1.0 / n as f32; n]);
    assert!(out.stats.rewards.is_empty());
    let g = grad_of(&out, &image);

    // DDS of each noise alone, through the public two-branch function, on the draw the step
    // made. A pixel prior sees z = 2x - 1 and the loss's d/dz is g / B: d/dx = 2 g (B = 1).
    let guidance = reward_dds.guidance();
    let prior = guidance.prior();
    let device = prior.device();
    let draw = guidance.draw(step, seed, [1, 3, SIDE, SIDE], n);
    assert_eq!(draw.t, out.stats.t);
    let time_weight = guidance.time_weight(draw.t).unwrap();
    let z = image.clone().inner() * 2.0 - 1.0;
    let z_source = source() * 2.0 - 1.0;
    let block = 3 * SIDE * SIDE;
    let mut expected = vec![0.0f32; block];
    for i in 0..n {
        let noise = Tensor::<I, 4>::from_data(
            TensorData::new(
                draw.noise[i * block..(i + 1) * block].to_vec(),
                [1, 3, SIDE, SIDE],
            ),
            &device,
        );
        let terms = dds(
            prior,
            DdsBranch {
                z: z.clone(),
                cond: prior.encode_prompt(TARGET_PROMPT).unwrap(),
            },
            DdsBranch {
                z: z_source.clone(),
                cond: prior.encode_prompt(SOURCE_PROMPT).unwrap(),
            },
            noise,
            draw.t,
            DdsCfg {
                uncond: prior.encode_prompt("").unwrap(),
                class_labels: prior.camera_labels(&views(), &device),
                guidance_scale: 20.0,
                max_batch: 16,
            },
        )
        .unwrap();
        for (e, d) in expected.iter_mut().zip(to_vec(terms.delta())) {
            *e += 2.0 * time_weight * d / n as f32;
        }
    }
    let scale = max_abs(&g);
    let err = max_abs_diff(&g, &expected);
    eprintln!("uniform RewardDDS vs mean DDS: max error {err:.2e}, max |g| {scale:.3e}");
    assert!(scale > 0.0);
    assert!(err <= 1e-5 * scale.max(1.0), "error {err}");

    // The first noise of a step is plain DDS's (the draw is a prefix), so the average differs
    // from it: the other noises count.
    let (prior, _) = reward_dds.into_parts();
    let plain = edit_dds_from(prior, None);
    let out = plain
        .step(image.clone(), source(), &views(), step, seed)
        .unwrap();
    assert!(max_abs_diff(&grad_of(&out, &image), &g) > 0.01 * scale);
}

#[test]
fn reward_dds_turns_into_plain_dds_after_reward_duration() {
    // 10 steps, rewards for the first half: step 4 weighs N noises, step 5 is plain DDS, the
    // same draw and so the same gradient as a DDS that never had rewards.
    let uniform = RewardSdsConfig {
        n_samples: 3,
        strategy: WeightStrategy::Uniform,
        reward_duration: 0.5,
        ..RewardSdsConfig::default()
    };
    let reward_dds = edit_dds(Some(uniform));
    let plain = edit_dds(None);
    let image = edited();
    let rewarded = reward_dds
        .step(image.clone(), source(), &views(), 4, 9)
        .unwrap();
    assert!(rewarded.stats.reward_active);
    assert_eq!(rewarded.stats.n_samples, 3);
    let late = reward_dds
        .step(image.clone(), source(), &views(), 5, 9)
        .unwrap();
    assert!(!late.stats.reward_active);
    assert_eq!(
        (late.stats.n_samples, late.stats.weights.clone()),
        (1, vec![1.0])
    );
    let expected = plain.step(image.clone(), source(), &views(), 5, 9).unwrap();
    assert_eq!(grad_of(&late, &image), grad_of(&expected, &image));
}

#[test]
fn editing_towards_the_source_prompt_gives_no_gradient() {
    // Source prompt = target and image = source: both branches are the same noisy image under
    // the same prompt, so the delta cancels whatever t and noise are drawn.
    let dds = unedited_dds(prior());
    let image = Tensor::<A, 4>::from_inner(source()).require_grad();
    for (step, seed) in [(0, 1), (9, 2)] {
        let out = dds
            .step(image.clone(), source(), &views(), step, seed)
            .unwrap();
        let loss: f32 = out.loss.clone().into_scalar();
        let g = grad_of(&out, &image);
        assert!(loss.abs() <= 1e-10, "loss {loss}");
        assert!(max_abs(&g) <= 1e-6, "gradient {}", max_abs(&g));
    }
    // The same image under another target prompt does move.
    let (prior, _) = dds.into_parts();
    let dds = edit_dds_from(prior, None);
    let out = dds.step(image.clone(), source(), &views(), 0, 1).unwrap();
    assert!(max_abs(&grad_of(&out, &image)) > 1e-4);
}

#[test]
fn through_a_latent_prior_an_unedited_image_stands_still() {
    // A latent prior encodes both branches with its VAE, drawing the posterior sample with
    // the same noise on each: an unedited image under its own prompt still cancels exactly,
    // while another target prompt moves it (the tiny random-weight SD pipeline of the tests).
    let dir = pipeline_folders::temp_dir("dds-latent");
    pipeline_folders::sd_folder(&dir);
    let prior = DiffusionPrior::<I>::from_folder(&dir, &Default::default()).unwrap();
    assert!(prior.vae().is_some(), "a latent prior");
    let dds = unedited_dds(prior);
    let image = Tensor::<A, 4>::from_inner(source()).require_grad();
    let out = dds.step(image.clone(), source(), &views(), 0, 1).unwrap();
    let still = max_abs(&grad_of(&out, &image));
    let (prior, _) = dds.into_parts();
    let dds = edit_dds_from(prior, None);
    let out = dds.step(image.clone(), source(), &views(), 0, 1).unwrap();
    let moved = max_abs(&grad_of(&out, &image));
    assert!(
        moved > 0.0 && still <= 1e-6 * moved,
        "still {still}, moved {moved}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rsds-dds-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn edit_config(source_image: &Path) -> Image2dConfig {
    Image2dConfig {
        prompt: TARGET_PROMPT.into(),
        steps: 2,
        edit: Some(Image2dEdit {
            source_image: source_image.to_path_buf(),
            source_prompt: SOURCE_PROMPT.into(),
        }),
        ..Image2dConfig::default()
    }
}

#[test]
fn editing_runs_end_to_end_and_changes_the_image() {
    let dir = temp_dir("end-to-end");
    let path = dir.join("red-square.png");
    red_square().save_png(&path).unwrap();
    let original = RgbImage::load_png(&path).unwrap();
    // RewardDDS with the Tiny World reward: N = 2 noises, the better one +0.9, the other -0.1.
    let mut config = edit_config(&path);
    let reward = config.guidance.reward.as_mut().unwrap();
    reward.n_samples = 2;
    reward.strategy = WeightStrategy::MinMax {
        k: 1,
        lambda_max: 0.9,
        lambda_min: 0.1,
    };
    let device = Default::default();
    let mut generator = Image2dGenerator::<A>::load(config.clone(), &device).unwrap();
    let start = generator.image();
    assert!(
        max_abs_diff(&start.data, &original.data) <= 1e-6,
        "the edit starts from the source"
    );

    // A raised cancel flag stops it before any step.
    let reason = generator.run(&AtomicBool::new(true), &mut |_| {}).unwrap();
    assert_eq!((reason, generator.steps_done()), (StopReason::Cancelled, 0));

    let mut reports = Vec::new();
    let reason = generator
        .run(&AtomicBool::new(false), &mut |p| reports.push(p))
        .unwrap();
    assert_eq!(reason, StopReason::Finished);
    assert_eq!(reports.len(), 2);
    for p in &reports {
        assert!(p.progress.loss.is_finite() && p.progress.loss > 0.0);
        assert_eq!(p.progress.rewards.len(), 2);
        let mut w = p.progress.weights.clone();
        w.sort_by(f32::total_cmp);
        assert_eq!(w, [-0.1, 0.9]);
        assert!(p.image_reward.is_some_and(f32::is_finite));
    }
    let edited = generator.image();
    assert_eq!((edited.width, edited.height), (32, 32));
    let change = max_abs_diff(&edited.data, &original.data);
    eprintln!("2 RewardDDS steps changed the image by up to {change:.3}");
    assert!(change > 1e-3, "the image did not change");
    assert!(edited.data.iter().all(|v| (0.0..=1.0).contains(v)));

    // Pixels instead of a file: the same run.
    let mut from_pixels = Image2dGenerator::<A>::new_edit(
        config.clone().sds(),
        prior(),
        None,
        original.clone(),
        &device,
    )
    .unwrap();
    assert!(max_abs_diff(&from_pixels.image().data, &original.data) <= 1e-6);
    let p = from_pixels.step().unwrap();
    assert!(p.progress.loss.is_finite());
    assert_eq!(p.progress.weights, [1.0]);
    assert!(max_abs_diff(&from_pixels.image().data, &original.data) > 1e-3);
    std::fs::remove_dir_all(&dir).ok();
}

/// The field of a configuration error, or a panic naming what came back.
fn config_field(result: Result<Image2dGenerator<A>, GenerateError>) -> String {
    match result {
        Err(GenerateError::Config(e)) => {
            eprintln!("{e}");
            e.field
        }
        Err(other) => panic!("expected a config error, got {other}"),
        Ok(_) => panic!("expected a config error, got a generator"),
    }
}

#[test]
fn bad_edit_inputs_are_refused_or_converted_by_name() {
    let dir = temp_dir("bad-input");
    let device = Default::default();

    // Missing file: the field and the path are named, before any step.
    let missing = dir.join("missing.png");
    let mut config = edit_config(&missing).sds();
    config.reward = None;
    let e = Image2dGenerator::<A>::new(config.clone(), prior(), None, None, &device);
    assert_eq!(config_field(e), "edit.source_image");
    let e = load_edit_image(&missing, SIDE).unwrap_err();
    assert!(e.reason.contains("missing.png"), "{e}");

    // Not an image.
    let junk = dir.join("junk.png");
    std::fs::write(&junk, b"not a png").unwrap();
    let e = load_edit_image(&junk, SIDE).unwrap_err();
    assert_eq!(e.field, "edit.source_image");
    assert!(e.reason.contains("junk.png"), "{e}");

    // Wrong size: resized to the canvas (with a logged warning), colours kept.
    let big = dir.join("big.png");
    image::RgbImage::from_pixel(48, 40, image::Rgb([200, 40, 20]))
        .save(&big)
        .unwrap();
    let loaded = load_edit_image(&big, SIDE).unwrap();
    assert_eq!((loaded.width, loaded.height), (32, 32));
    for (i, want) in [200.0f32, 40.0, 20.0].iter().enumerate() {
        assert!(
            (loaded.data[i] - want / 255.0).abs() < 1e-4,
            "{:?}",
            &loaded.data[..3]
        );
    }

    // Greyscale: RGB with equal channels.
    let grey = dir.join("grey.png");
    image::GrayImage::from_pixel(32, 32, image::Luma([51]))
        .save(&grey)
        .unwrap();
    let loaded = load_edit_image(&grey, SIDE).unwrap();
    assert_eq!(loaded.data.len(), 3 * 32 * 32);
    assert!(loaded.data.iter().all(|&v| (v - 0.2).abs() < 1e-6));

    // Alpha: laid over white (opaque kept, transparent white, half-way blended).
    let alpha = dir.join("alpha.png");
    let mut rgba = image::RgbaImage::from_pixel(32, 32, image::Rgba([255, 0, 0, 255]));
    rgba.put_pixel(1, 0, image::Rgba([0, 0, 0, 0]));
    rgba.put_pixel(2, 0, image::Rgba([0, 0, 0, 51]));
    rgba.save(&alpha).unwrap();
    let loaded = load_edit_image(&alpha, SIDE).unwrap();
    let px = |x: usize| &loaded.data[3 * x..3 * x + 3];
    assert_eq!(px(0), [1.0, 0.0, 0.0]);
    assert_eq!(px(1), [1.0, 1.0, 1.0]);
    assert!(px(2).iter().all(|v| (v - 0.8).abs() < 1e-6), "{:?}", px(2));

    // A greyscale image with alpha runs the whole way: a generator builds and steps.
    let grey_alpha = dir.join("grey-alpha.png");
    image::GrayAlphaImage::from_pixel(20, 20, image::LumaA([100, 200]))
        .save(&grey_alpha)
        .unwrap();
    let mut config = edit_config(&grey_alpha).sds();
    config.reward = None;
    config.steps = 1;
    let mut generator = Image2dGenerator::<A>::new(config, prior(), None, None, &device).unwrap();
    assert!(generator.step().unwrap().progress.loss.is_finite());

    // Source prompt = target prompt, also up to case and spacing: refused by the config.
    let path = dir.join("red.png");
    red_square().save_png(&path).unwrap();
    for same in [TARGET_PROMPT, "  A blue   CUBE "] {
        let mut config = edit_config(&path);
        config.edit.as_mut().unwrap().source_prompt = same.into();
        let e = config.validate().unwrap_err();
        assert_eq!(e.field, "edit.source_prompt");
        assert!(e.to_string().contains("target"), "{e}");
    }
    let mut config = edit_config(&path);
    config.edit.as_mut().unwrap().source_prompt = " ".into();
    assert_eq!(config.validate().unwrap_err().field, "edit.source_prompt");

    // Guidance settings DDS has no meaning for.
    let mut config = edit_config(&path);
    config.guidance.ism = Some(IsmConfig::default());
    assert_eq!(config.validate().unwrap_err().field, "guidance.ism");

    // Pixels that do not match their size: an error, not a panic.
    let broken = RgbImage {
        width: 4,
        height: 4,
        data: vec![0.5; 3 * 4 * 4 + 1],
    };
    let e =
        Image2dGenerator::<A>::new_edit(edit_config(&path).sds(), prior(), None, broken, &device);
    assert_eq!(config_field(e), "edit");

    // Serde: the edit table round-trips and rejects unknown keys.
    let config = edit_config(&path);
    assert_eq!(Image2dConfig::from_toml(&config.to_toml()).unwrap(), config);
    let typo = config
        .to_toml()
        .replace("source_prompt =", "source_promt =");
    assert!(Image2dConfig::from_toml(&typo).is_err());

    // Source images that do not pair with the edited ones.
    let dds = Dds::<A>::new(
        guidance_config(None),
        prior(),
        SOURCE_PROMPT,
        TARGET_PROMPT,
        None,
        1,
    )
    .unwrap();
    let two = Tensor::<I, 4>::cat(vec![source(), source()], 0);
    match dds.step(edited(), two, &views(), 0, 0) {
        Err(GuidanceError::BadInput(reason)) => assert!(reason.contains("source"), "{reason}"),
        other => panic!("expected BadInput, got {:?}", other.map(|o| o.stats)),
    }
    std::fs::remove_dir_all(&dir).ok();
}
