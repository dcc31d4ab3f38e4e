//! Does the guidance keep a scene that is already right? Fits the generator's NeRF to true
//! renders of a Tiny World prompt, then runs SDS / RewardSDS from there and reads the result
//! every few steps by the shape check (no CLIP) and the judge.
//!
//! If a true cube stays a cube, the prior's score allows cubes and a generation that ends in
//! spheres is lost on the way; if it melts, the prior's score itself leads away from cubes.
//!
//! `cargo run --release --example sds_from_truth -- --prompt "a red cube and a blue sphere"`

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use rewardsds::engine::backend::{BackendKind, BackendTask, EngineAutodiffBackend, run_on};
use rewardsds::engine::burn::module::Module;
use rewardsds::engine::burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use rewardsds::engine::burn::tensor::Tensor;
use rewardsds::engine::fit::{FitConfig, fit_nerf};
use rewardsds::engine::generate::{GenerateConfig, Generator, load_guidance};
use rewardsds::engine::guidance::{AnnealedFraction, IsmConfig, RewardFeedbackConfig};
use rewardsds::engine::rgb_image::RgbImage;
use rewardsds::engine::scene::camera::CameraSampler;
use rewardsds::engine::scene::nerf::Nerf;
use rewardsds::engine::tiny_world::Composition;
use rewardsds::engine::tiny_world::dataset::{IMAGE_SIZE, render_views, training_orbit};
use rewardsds::engine::tiny_world::evaluate::{Judge, most_read};
use rewardsds::engine::tiny_world::shape_check::check_shapes;
use rewardsds::engine::weights::resolve_model;

/// Command-line options.
#[derive(Parser, Debug, Clone)]
#[command(about = "Run SDS / RewardSDS from a NeRF fitted to the true scene of a prompt")]
struct Args {
    /// A Tiny World caption.
    #[arg(long, default_value = "a red cube and a blue sphere")]
    prompt: String,
    /// Fit the true scene of this caption instead of the prompt's (does the guidance turn a
    /// sphere into the prompt's cube?).
    #[arg(long)]
    start: Option<String>,
    /// Generation preset (`fast`, `fast-sds`, ...).
    #[arg(long, default_value = "fast")]
    preset: String,
    /// A generation config (TOML, as `generate --config`) instead of the preset.
    #[arg(long, conflicts_with = "preset")]
    config: Option<PathBuf>,
    /// Diffusion prior: preset or folder (a retrained Tiny World copy); the preset's when
    /// unset.
    #[arg(long)]
    prior: Option<String>,
    /// Guidance steps after the fit.
    #[arg(long, default_value_t = 250)]
    steps: usize,
    /// Read the scene every this many steps.
    #[arg(long, default_value_t = 50)]
    check_every: usize,
    /// Upper end of the timestep range, constant (the preset's when unset).
    #[arg(long)]
    t_max: Option<f64>,
    /// CFG scale (the preset's when unset).
    #[arg(long)]
    guidance_scale: Option<f32>,
    /// Interval score matching (LucidDreamer) instead of SDS's random noise.
    #[arg(long)]
    ism: bool,
    /// Reward feedback scale (off when unset).
    #[arg(long)]
    reward_feedback: Option<f32>,
    /// Views rendered per step (the preset's when unset).
    #[arg(long)]
    views_per_step: Option<usize>,
    /// Multiplies the preset's learning rates.
    #[arg(long, default_value_t = 1.0)]
    lr_scale: f64,
    /// Seed of the layout, the fit and the guidance.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Photometric fitting steps.
    #[arg(long, default_value_t = 600)]
    fit_steps: usize,
    /// True views to fit.
    #[arg(long, default_value_t = 48)]
    fit_views: usize,
    /// The fitted NeRF: read from here when the file exists, else fitted and written here.
    #[arg(long)]
    nerf: Option<PathBuf>,
    /// Backend: cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Output folder (sheet of turntables, one row per check).
    #[arg(long, default_value = "out/sds_from_truth")]
    out: PathBuf,
}

/// The options, the config, the prompt's composition and the fitted scene's.
struct Run(Args, GenerateConfig, Composition, Composition);

impl BackendTask for Run {
    type Output = Result<()>;

    fn run<B: EngineAutodiffBackend>(self, device: B::Device) -> Result<()> {
        let Run(args, config, composition, start_composition) = self;
        let start = Instant::now();
        let nerf = fitted_nerf::<B>(&args, &config, &start_composition, &device)?;
        println!("fitted NeRF ready in {:.1}s", start.elapsed().as_secs_f64());

        let guidance = load_guidance::<B>(&config, &device).context("loading the guidance")?;
        let mut generator = Generator::from_nerf(config.clone(), guidance, nerf, &device)?;
        let judge =
            Judge::<B::InnerBackend>::from_folder(&resolve_model("tiny-world-judge")?, &device)?;

        println!();
        println!(
            "| step | views top-1 | judge CLIP | judge reads (most often) | shapes (no CLIP) |"
        );
        println!("|---|---|---|---|---|");
        let mut rows = Vec::new();
        loop {
            let step = generator.steps_done();
            let views = generator.turntable(8, IMAGE_SIZE)?;
            let images: Tensor<B::InnerBackend, 4> = RgbImage::to_tensor(&views, &device);
            let r = judge.retrieval(images.clone(), &vec![composition; views.len()]);
            let readings = judge.readings(images);
            let shapes = match generator.surface(&config.mesh) {
                Ok(mesh) => match check_shapes(&mesh.mesh, &composition) {
                    Ok(check) => check.to_string(),
                    Err(e) => format!("skipped, {e}"),
                },
                Err(e) => format!("no surface, {e}"),
            };
            println!(
                "| {step} | {} of 8 | {:.1} | {} | {shapes} |",
                (r.top1 * r.images as f32).round(),
                r.clip_score,
                most_read(&readings, 1)
            );
            rows.push(RgbImage::hstack(&views));
            if step >= args.steps {
                break;
            }
            for _ in 0..args.check_every.min(args.steps - step) {
                generator.step()?;
            }
        }
        std::fs::create_dir_all(&args.out)?;
        let sheet = args.out.join("sheet.png");
        RgbImage::vstack(&rows).save_png(&sheet)?;
        println!(
            "wrote {} (a row per check); done in {:.1}s",
            sheet.display(),
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// The generator's NeRF fitted to true 32 px renders (2x2 supersampled, as the prior's
/// training images) from the training orbit; cached in `--nerf`.
fn fitted_nerf<B: EngineAutodiffBackend>(
    args: &Args,
    config: &GenerateConfig,
    composition: &Composition,
    device: &B::Device,
) -> Result<Nerf<B>> {
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    if let Some(path) = args.nerf.as_ref().filter(|p| p.exists()) {
        println!("reading the fitted NeRF {}", path.display());
        return config
            .nerf
            .init::<B>(device)
            .load_file(path.clone(), &recorder, device)
            .with_context(|| format!("reading {}", path.display()));
    }
    let cameras = CameraSampler::new(training_orbit(), args.seed)?.sample(
        args.fit_views,
        IMAGE_SIZE,
        IMAGE_SIZE,
    )?;
    let images = render_views(composition, args.seed, &cameras);
    let views: Vec<_> = cameras.into_iter().zip(images).collect();
    let fit = FitConfig {
        nerf: config.nerf.clone(),
        renderer: config.renderer.clone(),
        steps: args.fit_steps,
        rays_per_step: 2048,
        seed: args.seed,
        ..FitConfig::default()
    };
    let start = Instant::now();
    let nerf = fit_nerf::<B>(&views, &fit, device, |s| {
        if s.step % 100 == 0 {
            println!(
                "fit step {:4}  loss {:.5}  {:.1}s",
                s.step,
                s.loss,
                start.elapsed().as_secs_f64()
            );
        }
    })?;
    if let Some(path) = &args.nerf {
        nerf.clone()
            .save_file(path.clone(), &recorder)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote the fitted NeRF to {}", path.display());
    }
    Ok(nerf)
}

#[path = "common/logging.rs"]
mod logging;

fn main() -> Result<()> {
    logging::init();
    let args = Args::parse();
    let Some(composition) = Composition::parse(&args.prompt) else {
        bail!("--prompt `{}` is not a Tiny World caption", args.prompt);
    };
    let start = match &args.start {
        Some(caption) => Composition::parse(caption)
            .with_context(|| format!("--start `{caption}` is not a Tiny World caption"))?,
        None => composition,
    };
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --config {}", path.display()))?;
            GenerateConfig::from_toml(&text)
                .with_context(|| format!("--config {}", path.display()))?
        }
        None => GenerateConfig::preset(&args.preset)?,
    };
    config.prompt = args.prompt.clone();
    config.seed = args.seed;
    if let Some(prior) = &args.prior {
        config.prior = prior.clone();
    }
    config.steps = args.steps;
    if let Some(t) = args.t_max {
        config.guidance.t_max = AnnealedFraction { start: t, end: t };
    }
    if let Some(s) = args.guidance_scale {
        config.guidance.guidance_scale = s;
    }
    config.guidance.reward_feedback = args
        .reward_feedback
        .map(|scale| RewardFeedbackConfig { scale });
    if let Some(v) = args.views_per_step {
        config.views_per_step = v;
    }
    let lr = &mut config.learning_rates;
    lr.encoding *= args.lr_scale;
    lr.network *= args.lr_scale;
    lr.background *= args.lr_scale;
    if args.ism {
        config.guidance.ism = Some(IsmConfig::default());
    }
    config.validate()?;
    let kind: BackendKind = args.backend.parse()?;
    run_on(kind, Run(args, config, composition, start))?
}
