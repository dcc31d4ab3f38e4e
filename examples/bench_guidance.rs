//! Time per guidance step, SDS vs RewardSDS (N noises, `one_step` or `ddim` scoring).
//!
//! `cargo run --release --example bench_guidance -- --iters 10` times `Guidance::step` plus the
//! backward pass to the images on the Tiny World prior and prints a Markdown table. Every
//! method sees the same timesteps (step `k` is seeded by `k`), so DDIM's grid lengths match.

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use rewardsds::engine::backend::{BackendKind, BackendTask, EngineAutodiffBackend, run_on};
use rewardsds::engine::burn::tensor::{Distribution, Tensor};
use rewardsds::engine::guidance::{
    BoxedReward, DiffusionPrior, Guidance, GuidanceConfig, RewardSdsConfig, ScoringMode,
    WeightStrategy,
};
use rewardsds::engine::models::reward::ClipScore;
use rewardsds::engine::weights::resolve_model;

/// Command-line options.
#[derive(Parser, Debug, Clone)]
#[command(about = "Time per SDS / RewardSDS guidance step")]
struct Args {
    /// Timed steps per method (after one warm-up step).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Views per step (the SDS batch B).
    #[arg(long, default_value_t = 1)]
    views: usize,
    /// RewardSDS sample counts.
    #[arg(long, value_delimiter = ',', default_value = "4,8")]
    n: Vec<usize>,
    /// CFG scale.
    #[arg(long, default_value_t = 20.0)]
    guidance_scale: f32,
    /// Diffusion prior: preset, folder or repo id.
    #[arg(long, default_value = "tiny-world")]
    prior: String,
    /// Reward model: preset, folder or repo id.
    #[arg(long, default_value = "tiny-world-reward")]
    reward: String,
    /// Backend: cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: String,
}

struct Bench {
    args: Args,
}

impl BackendTask for Bench {
    type Output = Result<String>;

    fn run<B: EngineAutodiffBackend>(self, device: B::Device) -> Result<String> {
        let args = self.args;
        let mut prior = Some(DiffusionPrior::<B::InnerBackend>::from_folder(
            &resolve_model(&args.prior)?,
            &device,
        )?);
        let (score, _) =
            ClipScore::<B::InnerBackend>::from_folder(&resolve_model(&args.reward)?, &device)?;
        let mut reward: Option<BoxedReward<B>> = Some(Box::new(score));
        let size = prior.as_ref().expect("loaded").resolution();

        let mut methods: Vec<(String, Option<RewardSdsConfig>)> = vec![("SDS".into(), None)];
        for &n in &args.n {
            for scoring in [ScoringMode::OneStep, ScoringMode::Ddim] {
                let name = match scoring {
                    ScoringMode::OneStep => "one_step",
                    ScoringMode::Ddim => "ddim",
                };
                methods.push((
                    format!("RewardSDS N={n}, {name}"),
                    Some(RewardSdsConfig {
                        n_samples: n,
                        strategy: WeightStrategy::default(),
                        scoring,
                        reward_duration: 1.0,
                        scoring_guidance_scale: None,
                    }),
                ));
            }
        }

        let mut table = format!("| method | ms/step | x SDS |\n|---|---|---|\n");
        let mut sds_ms = None;
        for (name, reward_config) in methods {
            let config = GuidanceConfig {
                guidance_scale: args.guidance_scale,
                view_dependent_prompting: false,
                reward: reward_config,
                ..GuidanceConfig::default()
            };
            let mut guidance = Guidance::<B>::new(
                config,
                prior.take().expect("returned after each method"),
                "a red cube and a blue sphere",
                reward.take(),
                args.iters + 1,
            )?;
            let images = Tensor::<B, 4>::random(
                [args.views, 3, size, size],
                Distribution::Uniform(0.0, 1.0),
                &device,
            )
            .require_grad();
            let mut timed = 0.0;
            for step in 0..=args.iters {
                let start = Instant::now();
                let out = guidance.step(images.clone(), &[], step, step as u64)?;
                let grads = out.loss.backward();
                // Wait for the device: read the gradient back.
                let _ = images.grad(&grads).context("a gradient")?.sum().into_data();
                if step > 0 {
                    timed += start.elapsed().as_secs_f64();
                }
            }
            let ms = 1e3 * timed / args.iters.max(1) as f64;
            let ratio = ms / *sds_ms.get_or_insert(ms);
            eprintln!("{name:<28} {ms:>8.1} ms/step  x{ratio:.1}");
            table += &format!("| {name} | {ms:.1} | {ratio:.1} |\n");
            let (p, r) = guidance.into_parts();
            prior = Some(p);
            reward = r;
        }
        Ok(format!(
            "{} view(s) of {size}x{size}, CFG {}, {} timed steps per method (same timesteps), \
             guidance step + backward to the images.\n\n{table}",
            args.views, args.guidance_scale, args.iters
        ))
    }
}

#[path = "common/logging.rs"]
mod logging;

fn main() -> Result<()> {
    logging::init();
    let args = Args::parse();
    let kind: BackendKind = args.backend.parse().context("--backend")?;
    println!("{}", run_on(kind, Bench { args })??);
    Ok(())
}
