//! VSD and RewardVSD on the shipped Tiny World prior: the untrained LoRA's identities (the
//! first VSD step is SDS minus the prior's own conditional prediction; RewardVSD with uniform
//! weights averages that over its noises), the LoRA learning the images it is shown, its state
//! surviving a save and load, a 3D run resumed bit for bit, 2D VSD end to end, and clashing
//! settings refused by name.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rewardsds_engine::generate::{
    GenerateConfig, GenerateEvent, Generator, Image2dConfig, Image2dGenerator, SceneKind,
    StopReason, load_prior,
};
use rewardsds_engine::guidance::{
    DiffusionPrior, Guidance, GuidanceConfig, GuidanceStats, IsmConfig, RewardSdsConfig,
    ViewAngles, VsdConfig, VsdLoRA, WeightStrategy, standard_normal, vsd_cameras,
};
use rewardsds_engine::rgb_image::RgbImage;

type I = NdArray<f32>;
type A = Autodiff<I>;

const PROMPT: &str = "a red cube";
/// The shipped prior's resolution.
const SIDE: usize = 32;

/// The CPU backend's random generator is process-wide: runs that train take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn prior() -> DiffusionPrior<I> {
    load_prior::<I>("tiny-world", &Default::default()).unwrap()
}

/// The front view: the shipped prior is camera-conditioned.
fn views() -> Vec<ViewAngles> {
    vec![ViewAngles::new(0.0, 15.0)]
}

/// The official 2D `vsd` mode's CFG 7.5, with VSD on or off and RewardSDS as given.
fn config(vsd: bool, reward: Option<RewardSdsConfig>) -> GuidanceConfig {
    GuidanceConfig {
        guidance_scale: 7.5,
        view_dependent_prompting: false,
        reward,
        vsd: vsd.then(VsdConfig::default),
        ..GuidanceConfig::default()
    }
}

/// A seeded image in `[0, 1]`, `[1, 3, SIDE, SIDE]`.
fn image(seed: u64) -> Tensor<I, 4> {
    let values: Vec<f32> = standard_normal(&mut StdRng::seed_from_u64(seed), 3 * SIDE * SIDE)
        .into_iter()
        .map(|v| (0.5 + 0.2 * v).clamp(0.0, 1.0))
        .collect();
    Tensor::from_data(
        TensorData::new(values, [1, 3, SIDE, SIDE]),
        &Default::default(),
    )
}

/// The step's loss gradient with respect to the image's pixels.
fn pixel_grad(
    guidance: &mut Guidance<A>,
    image: &Tensor<I, 4>,
    step: usize,
    seed: u64,
) -> (Tensor<I, 4>, GuidanceStats) {
    let x = Tensor::<A, 4>::from_inner(image.clone()).require_grad();
    let out = guidance.step(x.clone(), &views(), step, seed).unwrap();
    let grads = out.loss.backward();
    (x.grad(&grads).unwrap(), out.stats)
}

/// `J^T v`: the pixel gradient that a gradient `v` on the prior's input `z` becomes (the
/// image encoder's chain rule), for batch 1.
fn through_encoder(guidance: &Guidance<A>, image: &Tensor<I, 4>, v: Tensor<I, 4>) -> Tensor<I, 4> {
    let x = Tensor::<A, 4>::from_inner(image.clone()).require_grad();
    let z = guidance
        .image_encoder()
        .encode(x.clone(), &mut StdRng::seed_from_u64(0));
    let grads = (z * Tensor::from_inner(v)).sum().backward();
    x.grad(&grads).unwrap()
}

/// The image as the prior sees it (`z`), as the step encodes it.
fn encoded(guidance: &Guidance<A>, image: &Tensor<I, 4>) -> Tensor<I, 4> {
    guidance
        .image_encoder()
        .encode(
            Tensor::<A, 4>::from_inner(image.clone()),
            &mut StdRng::seed_from_u64(0),
        )
        .inner()
}

fn max_abs(t: Tensor<I, 4>) -> f32 {
    t.abs().max().into_scalar()
}

#[test]
fn the_first_vsd_step_is_sds_minus_the_priors_own_prediction() {
    let _turn = serial();
    let prior = prior();
    let device = Default::default();
    let image = image(3);
    let (step, seed) = (0, 11);
    let mut sds = Guidance::<A>::new(config(false, None), prior.clone(), PROMPT, None, 10).unwrap();
    let mut vsd = Guidance::<A>::new(config(true, None), prior.clone(), PROMPT, None, 10).unwrap();
    let (g_sds, _) = pixel_grad(&mut sds, &image, step, seed);
    let (g_vsd, stats) = pixel_grad(&mut vsd, &image, step, seed);
    assert!(stats.lora_loss.is_some_and(f32::is_finite), "{stats:?}");

    // SDS: w (eps_cfg - eps); VSD with the LoRA at zero: w (eps_cfg - eps_cond). Their
    // difference is w (eps_cond - eps) on the same t and noise.
    let z = encoded(&vsd, &image);
    let draw = vsd.draw(step, seed, z.dims(), 1);
    let noise = Tensor::<I, 4>::from_data(TensorData::new(draw.noise, z.dims()), &device);
    let x_t = prior
        .scheduler()
        .add_noise(z, noise.clone(), &[draw.t])
        .unwrap();
    let labels = prior.camera_labels(&views(), &device);
    let eps_cond = prior
        .predict_noise(x_t, draw.t, vsd.prompts().plain(), labels)
        .unwrap();
    let w = vsd.time_weight(draw.t).unwrap();
    let expected = through_encoder(&vsd, &image, (eps_cond - noise) * w);
    let scale = max_abs(expected.clone());
    let error = max_abs(g_sds - g_vsd - expected);
    eprintln!(
        "t {}: |w J^T (eps_cond - eps)| max {scale}, error {error}",
        draw.t
    );
    assert!(scale > 1e-3, "the two gradients should differ: {scale}");
    assert!(error <= 1e-4 * scale.max(1.0), "error {error} vs {scale}");
}

#[test]
fn reward_vsd_with_uniform_weights_averages_vsd_over_its_noises() {
    let _turn = serial();
    let prior = prior();
    let device = Default::default();
    let image = image(5);
    let (step, seed, n) = (0, 23, 3);
    let reward = RewardSdsConfig {
        n_samples: n,
        strategy: WeightStrategy::Uniform,
        reward_duration: 1.0,
        ..RewardSdsConfig::default()
    };
    let mut guidance =
        Guidance::<A>::new(config(true, Some(reward)), prior.clone(), PROMPT, None, 10).unwrap();
    let (g, stats) = pixel_grad(&mut guidance, &image, step, seed);
    assert_eq!(stats.n_samples, n);
    assert!(
        stats
            .weights
            .iter()
            .all(|&w| (w - 1.0 / n as f32).abs() < 1e-6)
    );

    // By hand: the mean over the N noises of w (eps_cfg_i - eps_cond_i).
    let z = encoded(&guidance, &image);
    let dims = z.dims();
    let draw = guidance.draw(step, seed, dims, n);
    let per = dims.iter().product::<usize>();
    let labels = prior.camera_labels(&views(), &device);
    let w = guidance.time_weight(draw.t).unwrap();
    let mut sum: Option<Tensor<I, 4>> = None;
    for i in 0..n {
        let noise = Tensor::<I, 4>::from_data(
            TensorData::new(draw.noise[i * per..(i + 1) * per].to_vec(), dims),
            &device,
        );
        let x_t = prior
            .scheduler()
            .add_noise(z.clone(), noise, &[draw.t])
            .unwrap();
        let cond = guidance.prompts().plain();
        let eps_cfg = prior
            .predict_noise_cfg(
                x_t.clone(),
                draw.t,
                cond.clone(),
                guidance.prompts().uncond(),
                labels.clone(),
                7.5,
            )
            .unwrap();
        let eps_cond = prior
            .predict_noise(x_t, draw.t, cond, labels.clone())
            .unwrap();
        let term = eps_cfg - eps_cond;
        sum = Some(match sum {
            Some(s) => s + term,
            None => term,
        });
    }
    let expected = through_encoder(&guidance, &image, sum.unwrap() * (w / n as f32));
    let scale = max_abs(expected.clone());
    let error = max_abs(g - expected);
    eprintln!("RewardVSD uniform N = {n}: max {scale}, error {error}");
    assert!(scale > 1e-3);
    assert!(error <= 1e-4 * scale.max(1.0), "error {error} vs {scale}");
}

/// The LoRA's denoising error on `z` over a fixed set of timesteps and noises.
fn held_out_loss(
    lora: &VsdLoRA<A>,
    prior: &DiffusionPrior<I>,
    z: &Tensor<I, 4>,
    cond: &Tensor<I, 3>,
) -> f32 {
    let device = Default::default();
    let labels = prior.camera_labels(&views(), &device);
    let cameras = vsd_cameras::<I>(&views(), 1, &device);
    let mut rng = StdRng::seed_from_u64(99);
    let mut total = 0.0;
    let timesteps = [50, 200, 400, 600, 800];
    for t in timesteps {
        let noise = Tensor::<I, 4>::from_data(
            TensorData::new(standard_normal(&mut rng, 3 * SIDE * SIDE), z.dims()),
            &device,
        );
        let x_t = prior
            .scheduler()
            .add_noise(z.clone(), noise.clone(), &[t])
            .unwrap();
        let eps = lora
            .predict_noise(
                prior,
                x_t,
                t,
                cond.clone(),
                labels.clone(),
                cameras.clone(),
                16,
            )
            .unwrap();
        total += (eps - noise).powi_scalar(2).mean().into_scalar();
    }
    total / timesteps.len() as f32
}

#[test]
fn the_lora_learns_the_images_it_is_shown_and_its_state_round_trips() {
    let _turn = serial();
    let prior = prior();
    let device = Default::default();
    // A picture the prior would not draw for the prompt: stripes.
    let stripes: Vec<f32> = (0..3 * SIDE * SIDE)
        .map(|i| if (i % SIDE) / 4 % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    let z = Tensor::<I, 4>::from_data(TensorData::new(stripes, [1, 3, SIDE, SIDE]), &device);
    let guidance =
        Guidance::<A>::new(config(false, None), prior.clone(), PROMPT, None, 10).unwrap();
    let cond = guidance.prompts().plain();
    let settings = VsdConfig {
        lora_lr: 3e-3,
        camera_dropout: 0.0,
        ..VsdConfig::default()
    };
    let mut lora = VsdLoRA::<A>::new(&prior, settings.clone());
    assert!(lora.num_trainable() > 0);
    let labels = prior.camera_labels(&views(), &device);
    let cameras = vsd_cameras::<I>(&views(), 1, &device);
    let before = held_out_loss(&lora, &prior, &z, &cond);
    let steps = 40;
    for k in 0..steps {
        let loss = lora
            .train(
                &prior,
                z.clone(),
                cond.clone(),
                labels.clone(),
                cameras.clone(),
                k,
            )
            .unwrap();
        assert!(loss.is_finite());
    }
    let after = held_out_loss(&lora, &prior, &z, &cond);
    eprintln!("held-out denoising loss on the stripes: {before:.4} -> {after:.4} in {steps} steps");
    assert!(
        after < 0.8 * before,
        "the LoRA should learn the stripes: {before} -> {after}"
    );

    // Saved and loaded into a fresh LoRA: the same predictions, and the same next step.
    let (params, optimizer) = lora.state_bytes().unwrap();
    let mut restored = VsdLoRA::<A>::new(&prior, settings.clone());
    restored
        .load_state_bytes(params.clone(), optimizer.clone())
        .unwrap();
    assert_eq!(held_out_loss(&restored, &prior, &z, &cond), after);
    let next = |l: &mut VsdLoRA<A>| {
        l.train(
            &prior,
            z.clone(),
            cond.clone(),
            labels.clone(),
            cameras.clone(),
            1000,
        )
        .unwrap();
        held_out_loss(l, &prior, &z, &cond)
    };
    assert_eq!(next(&mut restored), next(&mut lora));
    // Another rank cannot take the state.
    let mut other = VsdLoRA::<A>::new(
        &prior,
        VsdConfig {
            lora_rank: 2,
            ..settings
        },
    );
    let e = other.load_state_bytes(params, optimizer).unwrap_err();
    assert!(e.contains("lora_rank"), "{e}");
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rewardsds-vsd-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    dir
}

fn pixels(views: &[RgbImage]) -> Vec<f32> {
    views.iter().flat_map(|v| v.data.iter().copied()).collect()
}

#[test]
fn a_resumed_vsd_run_repeats_the_uninterrupted_run_bit_for_bit() {
    let _turn = serial();
    let mut config = GenerateConfig::preset("fast").unwrap();
    config.prompt = PROMPT.into();
    config.scene = SceneKind::Nerf;
    config.steps = 4;
    config.render_size = 16;
    config.renderer.num_samples_per_ray = 24;
    config.snapshot_every = 0;
    config.checkpoint_every = 2;
    config.guidance.guidance_scale = 7.5;
    config.guidance.guidance_scale_end = None;
    config.guidance.vsd = Some(VsdConfig::default());
    let run = |dir: &PathBuf, cancel_at: Option<usize>| {
        let mut generator = Generator::<A>::load(config.clone(), &Default::default()).unwrap();
        generator.checkpoint_to(dir);
        let cancel = AtomicBool::new(false);
        let mut lora_losses = Vec::new();
        generator
            .run(&cancel, &mut |e| match e {
                GenerateEvent::Progress(p) => lora_losses.push(p.lora_loss.unwrap()),
                GenerateEvent::Checkpoint { step, .. } if Some(step) == cancel_at => {
                    cancel.store(true, std::sync::atomic::Ordering::Relaxed)
                }
                _ => {}
            })
            .unwrap();
        (generator, lora_losses)
    };
    let whole_dir = temp_dir("whole");
    let (whole, whole_losses) = run(&whole_dir, None);
    let split_dir = temp_dir("split");
    let (first, _) = run(&split_dir, Some(2));
    assert_eq!(first.steps_done(), 2);
    let checkpoint = first.last_checkpoint().unwrap().to_path_buf();
    assert!(checkpoint.join("vsd_lora.mpk").exists());
    let mut resumed = Generator::<A>::resume(&split_dir, &Default::default()).unwrap();
    let mut resumed_losses = Vec::new();
    resumed
        .run(&AtomicBool::new(false), &mut |e| {
            if let GenerateEvent::Progress(p) = e {
                resumed_losses.push(p.lora_loss.unwrap());
            }
        })
        .unwrap();
    // The LoRA's own losses after the resume match: its weights and AdamW state came back.
    assert_eq!(resumed_losses, whole_losses[2..]);
    assert_eq!(
        pixels(&resumed.turntable(2, 24).unwrap()),
        pixels(&whole.turntable(2, 24).unwrap())
    );
    // A checkpoint without the LoRA's files is refused by name.
    let latest = rewardsds_engine::generate::latest_checkpoint(&split_dir).unwrap();
    std::fs::remove_file(latest.join("vsd_optimizer.mpk")).unwrap();
    let e = Generator::<A>::resume(&split_dir, &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("vsd_optimizer.mpk"), "{e}");
    for d in [whole_dir, split_dir] {
        std::fs::remove_dir_all(d).ok();
    }
}

/// The official 2D `vsd` mode on Tiny World: VSD at CFG 7.5, no reward ranking.
fn vsd_2d(steps: usize) -> Image2dConfig {
    let mut config = Image2dConfig {
        prompt: "a red cube and a blue sphere".into(),
        steps,
        ..Image2dConfig::default()
    }
    .sds();
    config.guidance.guidance_scale = 7.5;
    config.guidance.vsd = Some(VsdConfig::default());
    config
}

#[test]
fn vsd_in_2d_draws_an_image_and_trains_its_lora() {
    let _turn = serial();
    let config = vsd_2d(12);
    let mut generator = Image2dGenerator::<A>::load(config, &Default::default()).unwrap();
    let start = generator.image();
    let mut lora_losses = Vec::new();
    let mut rewards = Vec::new();
    let reason = generator
        .run(&AtomicBool::new(false), &mut |p| {
            assert!(p.progress.loss.is_finite());
            lora_losses.push(p.progress.lora_loss.unwrap());
            rewards.push(p.image_reward.unwrap());
        })
        .unwrap();
    assert_eq!(reason, StopReason::Finished);
    rewards.push(generator.image_reward().unwrap().unwrap());
    eprintln!("VSD 2D: image reward {rewards:?}, LoRA loss {lora_losses:?}");
    assert!(lora_losses.iter().all(|l| l.is_finite() && *l > 0.0));
    let moved = pixels(&[generator.image()])
        .iter()
        .zip(pixels(&[start]))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(moved > 0.05, "the image should change: {moved}");
    let first = rewards[..3].iter().sum::<f32>() / 3.0;
    let last = rewards[rewards.len() - 3..].iter().sum::<f32>() / 3.0;
    assert!(last > first, "the reward should rise: {first} -> {last}");
}

#[test]
fn vsd_settings_that_clash_are_refused_by_name() {
    let field = |c: GuidanceConfig| c.validate().unwrap_err().field;
    let vsd = config(true, None);
    vsd.validate().unwrap();
    let with = |edit: &dyn Fn(&mut GuidanceConfig)| {
        let mut c = vsd.clone();
        edit(&mut c);
        c
    };
    assert_eq!(
        field(with(&|c| c.vsd.as_mut().unwrap().lora_rank = 0)),
        "vsd.lora_rank"
    );
    assert_eq!(
        field(with(&|c| c.vsd.as_mut().unwrap().lora_lr = f64::NAN)),
        "vsd.lora_lr"
    );
    assert_eq!(
        field(with(&|c| c.vsd.as_mut().unwrap().camera_dropout = 1.5)),
        "vsd.camera_dropout"
    );
    assert_eq!(
        field(with(&|c| c.vsd.as_mut().unwrap().lora_timestep_samples = 0)),
        "vsd.lora_timestep_samples"
    );
    assert_eq!(field(with(&|c| c.ism = Some(IsmConfig::default()))), "vsd");
    assert_eq!(field(with(&|c| c.generative_weight = 0.5)), "vsd");
    // Editing compares two full predictions: VSD has no place there.
    let mut edit = Image2dConfig {
        prompt: "a blue cube".into(),
        ..Image2dConfig::default()
    };
    edit.guidance.vsd = Some(VsdConfig::default());
    edit.edit = Some(rewardsds_engine::generate::Image2dEdit {
        source_image: "red.png".into(),
        source_prompt: "a red cube".into(),
    });
    assert_eq!(edit.validate().unwrap_err().field, "guidance.vsd");
}

#[test]
fn a_resumed_2d_vsd_run_repeats_the_uninterrupted_run_bit_for_bit() {
    let _turn = serial();
    let config = vsd_2d(6);
    let device = Default::default();
    let run = |generator: &mut Image2dGenerator<A>, stop_after: Option<usize>| {
        let cancel = AtomicBool::new(false);
        let mut losses = Vec::new();
        generator
            .run(&cancel, &mut |p| {
                losses.push(p.progress.lora_loss.unwrap());
                if Some(p.progress.step) == stop_after {
                    cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            })
            .unwrap();
        losses
    };
    let mut whole = Image2dGenerator::<A>::load(config.clone(), &device).unwrap();
    let whole_losses = run(&mut whole, None);

    let dir = temp_dir("2d");
    let mut first = Image2dGenerator::<A>::load(config, &device).unwrap();
    first.checkpoint_to(&dir, 3);
    run(&mut first, Some(3));
    assert_eq!(first.steps_done(), 3);
    let mut resumed = Image2dGenerator::<A>::resume(&dir, 3, &device).unwrap();
    assert_eq!(resumed.steps_done(), 3);
    let resumed_losses = run(&mut resumed, None);
    assert_eq!(resumed_losses, whole_losses[3..]);
    assert_eq!(pixels(&[resumed.image()]), pixels(&[whole.image()]));
    // The run's last checkpoint is its end.
    let latest = rewardsds_engine::generate::latest_checkpoint(&dir).unwrap();
    assert!(latest.ends_with("step-0000006"), "{}", latest.display());
    std::fs::remove_dir_all(&dir).ok();
}
