//! What a Tiny World prior knows at each noise level: true renders of held-out and seen
//! captions are noised to each timestep, the UNet predicts the noise, and the judge scores the
//! clean-image estimate it implies. Prints a Markdown table and writes a PNG (one row per
//! timestep: held-out estimates, then seen; the last row is the renders themselves).
//!
//! `cargo run --release --example probe_prior -- --prior assets/models/tiny-world`

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::Tensor;
use clap::Parser;
use rewardsds::engine::backend::{BackendKind, BackendTask, EngineAutodiffBackend, run_on};
use rewardsds::engine::burn;
use rewardsds::engine::guidance::{DiffusionPrior, ViewAngles};
use rewardsds::engine::rgb_image::RgbImage;
use rewardsds::engine::tiny_world::evaluate::{Judge, Retrieval, spread_pairs};
use rewardsds::engine::tiny_world::probe::denoise_probe;
use rewardsds::engine::tiny_world::{Composition, Dataset, Split};

/// Command-line options.
#[derive(Parser, Debug, Clone)]
#[command(about = "Probe a Tiny World prior's denoising at each noise level, scored by the judge")]
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
    /// Captions per group (held-out, seen).
    #[arg(long, default_value_t = 16)]
    prompts: usize,
    /// Training timesteps to probe, comma-separated.
    #[arg(long, default_value = "20,50,100,200,400,600,800,950")]
    timesteps: String,
    /// Classifier-free guidance scale (1: the conditional prediction alone).
    #[arg(long, default_value_t = 1.0)]
    guidance_scale: f32,
    /// Turn the camera a camera-conditioned prior is told by this many degrees of azimuth
    /// (the renders stay): how much worse the estimates get measures how much it uses the
    /// camera. 0 tells the truth.
    #[arg(long, default_value_t = 0.0)]
    camera_offset: f32,
    /// Seed of the renders and the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the PNG.
    #[arg(long, default_value = "out/probe_prior.png")]
    png: PathBuf,
}

struct Probe {
    args: Args,
    timesteps: Vec<usize>,
}

fn retrieval_cells(r: &Retrieval) -> String {
    format!(
        "{:.1}% | {:.1}% | {:.1}",
        100.0 * r.top1,
        100.0 * r.top5,
        r.clip_score
    )
}

impl BackendTask for Probe {
    type Output = Result<()>;

    fn run<B: EngineAutodiffBackend>(self, device: B::Device) -> Result<()> {
        type I<B> = <B as burn::tensor::backend::AutodiffBackend>::InnerBackend;
        let args = &self.args;
        let prior = DiffusionPrior::<I<B>>::from_folder(&args.prior, &device)
            .with_context(|| format!("loading the prior {}", args.prior.display()))?;
        if prior.is_latent() {
            bail!(
                "--prior {}: a latent prior; the probe renders pixels",
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
        let groups = [
            ("held-out", spread_pairs(&split.held_out, args.prompts)),
            ("seen", spread_pairs(&split.train, args.prompts)),
        ];
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        println!(
            "prior {}, judge {}, CFG {}, {} + {} captions, seed {}, camera offset {} deg\n",
            args.prior.display(),
            judge_dir.display(),
            args.guidance_scale,
            groups[0].1.len(),
            groups[1].1.len(),
            args.seed,
            args.camera_offset
        );
        println!(
            "| captions | t | alpha_bar | eps MSE | x0 MSE (input MSE) | judge top-1 | top-5 | CLIP |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        let mut columns: Vec<Vec<RgbImage>> = Vec::new();
        for (name, captions) in &groups {
            let captions: &[Composition] = captions;
            let data = Dataset::render(captions, 1, args.seed, threads);
            let indices: Vec<usize> = (0..captions.len()).collect();
            let images: Tensor<I<B>, 4> = data.images(&indices, &device);
            let start = std::time::Instant::now();
            let views: Vec<ViewAngles> = (data.views(&indices).into_iter())
                .map(|v| ViewAngles::new(v.azimuth_deg + args.camera_offset, v.elevation_deg))
                .collect();
            let rows = denoise_probe(
                &prior,
                &judge,
                images.clone(),
                captions,
                &views,
                &self.timesteps,
                args.guidance_scale,
                args.seed,
            )?;
            let mut strips = Vec::new();
            for (row, x0_hat) in rows {
                println!(
                    "| {name} | {} | {:.3} | {:.4} | {:.4} ({:.4}) | {} |",
                    row.timestep,
                    row.alpha_prod,
                    row.eps_mse,
                    row.x0_mse,
                    row.input_mse,
                    retrieval_cells(&row.judge)
                );
                strips.push(RgbImage::hstack(&RgbImage::from_tensor(x0_hat)));
            }
            let truth = judge.retrieval(images.clone(), captions);
            println!(
                "| {name} | renders | 1 | - | - | {} |",
                retrieval_cells(&truth)
            );
            eprintln!("{name}: {:.1} s", start.elapsed().as_secs_f64());
            strips.push(RgbImage::hstack(&RgbImage::from_tensor(images)));
            columns.push(strips);
        }
        // One PNG row per timestep: held-out estimates, a gap, seen estimates.
        let rows: Vec<RgbImage> = (0..columns[0].len())
            .map(|i| {
                let gap = RgbImage::filled(4, columns[0][i].height, [1.0; 3]);
                RgbImage::hstack(&[columns[0][i].clone(), gap, columns[1][i].clone()])
            })
            .collect();
        if let Some(dir) = args.png.parent() {
            std::fs::create_dir_all(dir).ok();
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
    let timesteps = args
        .timesteps
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("--timesteps `{}`: comma-separated integers", args.timesteps))?;
    if timesteps.is_empty() || args.prompts == 0 {
        bail!("--timesteps and --prompts must not be empty");
    }
    if !args.camera_offset.is_finite() {
        bail!(
            "--camera-offset {}: not a finite number",
            args.camera_offset
        );
    }
    if !args.guidance_scale.is_finite() {
        bail!(
            "--guidance-scale {}: not a finite number",
            args.guidance_scale
        );
    }
    let kind: BackendKind = args.backend.parse().context("--backend")?;
    run_on(kind, Probe { args, timesteps })?
}
