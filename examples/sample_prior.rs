//! What a Tiny World prior draws for a prompt: DDIM samples with classifier-free guidance, as
//! the training recipe's evaluation draws them, and what the judge reads in each.
//!
//! `cargo run --release --example sample_prior -- --prompt "a red cube and a blue sphere"
//! --prompt "a red cube and a blue cone" --n 16` prints, per prompt, the judge's retrieval of
//! the prompt among all captions (top-1, top-5, CLIP score) and the captions it read most
//! often, beside the judge's retrieval of true renders of the caption (its ceiling; also from
//! the 8 turntable views `generate` judges its result by), and
//! writes a PNG: per prompt a row of samples, then a row of true renders. A prompt the 3D generation gets wrong
//! is checked here first: if the prior's own samples miss it, the 3D loop cannot do better.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;
use rewardsds::engine::backend::{BackendKind, BackendTask, EngineAutodiffBackend, run_on};
use rewardsds::engine::burn;
use rewardsds::engine::guidance::{DiffusionPrior, ViewAngles, camera_labels};
use rewardsds::engine::rgb_image::RgbImage;
use rewardsds::engine::scene::camera::CameraSampler;
use rewardsds::engine::tiny_world::dataset::{render_turntable, training_orbit};
use rewardsds::engine::tiny_world::evaluate::{Judge, most_read};
use rewardsds::engine::tiny_world::sample::sample;
use rewardsds::engine::tiny_world::{Composition, Dataset, Split};

#[path = "common/prompts.rs"]
mod prompts;
use prompts::tiny_world_prompts;

/// Command-line options.
#[derive(Parser, Debug, Clone)]
#[command(about = "Sample a Tiny World prior for prompts and judge the samples")]
struct Args {
    /// Backend: cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// The prior's pipeline folder (with judge/ inside, as the shipped one).
    #[arg(long, default_value = "assets/models/tiny-world")]
    prior: PathBuf,
    /// The judge CLIP folder (default: <prior>/judge).
    #[arg(long)]
    judge: Option<PathBuf>,
    /// A prompt to sample (repeat the flag); a view suffix (", front view") is kept for the
    /// prior and dropped for the judge.
    #[arg(long, default_values_t = ["a red cube and a blue sphere".to_string()])]
    prompt: Vec<String>,
    /// Samples per prompt.
    #[arg(long, default_value_t = 16)]
    n: usize,
    /// Classifier-free guidance scale (the recipe's evaluation uses 1.5).
    #[arg(long, default_value_t = 1.5)]
    guidance_scale: f32,
    /// DDIM steps.
    #[arg(long, default_value_t = 25)]
    steps: usize,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the PNG (per prompt a row of samples, then a row of true renders).
    #[arg(long, default_value = "out/sample_prior.png")]
    png: PathBuf,
}

struct SamplePrior {
    args: Args,
    targets: Vec<Composition>,
}

impl BackendTask for SamplePrior {
    type Output = Result<()>;

    fn run<B: EngineAutodiffBackend>(self, device: B::Device) -> Result<()> {
        type I<B> = <B as burn::tensor::backend::AutodiffBackend>::InnerBackend;
        let args = &self.args;
        let prior = DiffusionPrior::<I<B>>::from_folder(&args.prior, &device)
            .with_context(|| format!("loading the prior {}", args.prior.display()))?;
        if prior.is_latent() {
            bail!(
                "--prior {}: a latent prior; this samples pixel-space Tiny World priors",
                args.prior.display()
            );
        }
        let judge_dir = args
            .judge
            .clone()
            .unwrap_or_else(|| args.prior.join("judge"));
        let judge = Judge::<I<B>>::from_folder(&judge_dir, &device)
            .with_context(|| format!("loading the judge {}", judge_dir.display()))?;
        let split = Split::shipped();
        println!(
            "prior {}, judge {}, {} samples per prompt, DDIM {}, CFG {}, seed {}\n",
            args.prior.display(),
            judge_dir.display(),
            args.n,
            args.steps,
            args.guidance_scale,
            args.seed
        );
        println!(
            "| prompt | split | top-1 | top-5 | judge CLIP | the judge reads (of {}) | true renders: top-1 / CLIP | turntable of the true scene: views top-1 |",
            args.n
        );
        println!("|---|---|---|---|---|---|---|---|");
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut rows = Vec::new();
        for (prompt, target) in args.prompt.iter().zip(&self.targets) {
            let prompts = vec![prompt.clone(); args.n];
            // A camera-conditioned prior samples from cameras of the training orbit.
            let labels = match prior.unet().class_labels_width() {
                Some(_) => {
                    let size = prior.resolution();
                    let cameras = CameraSampler::new(training_orbit(), args.seed)?.sample(
                        args.n,
                        size as u32,
                        size as u32,
                    )?;
                    let views: Vec<ViewAngles> = cameras.iter().map(ViewAngles::from).collect();
                    Some(camera_labels(&views, &device))
                }
                None => None,
            };
            let images = sample(
                prior.unet(),
                prior.text_encoder(),
                prior.tokenizer(),
                prior.scheduler(),
                &prompts,
                labels,
                args.guidance_scale,
                args.steps,
                prior.resolution(),
                args.seed,
                &device,
            )?;
            let r = judge.retrieval(images.clone(), &vec![*target; args.n]);
            let reads = most_read(&judge.readings(images.clone()), 3);
            let split_name = if !target.is_pair() {
                "single"
            } else if split.is_held_out(target) {
                "held-out"
            } else {
                "seen"
            };
            // The judge's ceiling for this caption: true renders from the training orbit.
            let truth = Dataset::render(&[*target], args.n, args.seed, threads);
            let indices: Vec<usize> = (0..args.n).collect();
            let renders = truth.images::<I<B>>(&indices, &device);
            let t = judge.retrieval(renders.clone(), &vec![*target; args.n]);
            // The ceiling of a 3D result's judged turntable (`generate` judges 8 views).
            let views = render_turntable(target, 8, args.seed);
            let v = judge.retrieval(
                RgbImage::to_tensor::<I<B>>(&views, &device),
                &vec![*target; views.len()],
            );
            let view_reads = most_read(
                &judge.readings(RgbImage::to_tensor::<I<B>>(&views, &device)),
                2,
            );
            println!(
                "| {prompt} | {split_name} | {:.1}% | {:.1}% | {:.1} | {reads} | {:.1}% / {:.1} | {:.0} of {} ({view_reads}) |",
                100.0 * r.top1,
                100.0 * r.top5,
                r.clip_score,
                100.0 * t.top1,
                t.clip_score,
                v.top1 * views.len() as f32,
                views.len()
            );
            rows.push(RgbImage::hstack(&RgbImage::from_tensor(images)));
            rows.push(RgbImage::hstack(&RgbImage::from_tensor(renders)));
        }
        if let Some(dir) = args.png.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        RgbImage::vstack(&rows)
            .save_png(&args.png)
            .with_context(|| format!("writing {}", args.png.display()))?;
        println!("\nwrote {}", args.png.display());
        Ok(())
    }
}

#[path = "common/logging.rs"]
mod logging;

fn main() -> Result<()> {
    logging::init();
    let args = Args::parse();
    if args.n == 0 || args.steps == 0 {
        bail!("--n and --steps must be at least 1");
    }
    if !(args.guidance_scale.is_finite() && args.guidance_scale >= 0.0) {
        bail!(
            "--guidance-scale {}: must be a finite number >= 0",
            args.guidance_scale
        );
    }
    let targets = tiny_world_prompts(&args.prompt)?;
    let kind: BackendKind = args.backend.parse().context("--backend")?;
    run_on(kind, SamplePrior { args, targets })?
}
