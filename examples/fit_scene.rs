//! Fits a hash-grid NeRF to renders of a known procedural scene and reports held-out PSNR.
//!
//! Proves the renderer and its gradients before any diffusion model is involved:
//! `cargo run --release --example fit_scene -- --size 64`

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use rewardsds::engine::backend::EngineAutodiffBackend;
use rewardsds::engine::backend::{BackendKind, BackendTask, run_on};
use rewardsds::engine::fit::{FitConfig, fit_nerf, render_views};
use rewardsds::engine::procedural::SdfScene;
use rewardsds::engine::render::{VolumeRenderer, VolumeRendererConfig};
use rewardsds::engine::rgb_image::RgbImage;
use rewardsds::engine::scene::camera::{Camera, CameraSampler, OrbitConfig, evaluation_orbit};
use rewardsds::engine::scene::nerf::{
    BackgroundConfig, BackgroundKind, HashGridConfig, NerfConfig,
};

/// Command-line options; every field is also documented in `--help`.
#[derive(Parser, Debug, Clone)]
#[command(about = "Fit a NeRF to a procedural scene and report held-out PSNR")]
struct Args {
    /// Backend: cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Image size (square), pixels.
    #[arg(long, default_value_t = 64)]
    size: u32,
    /// Training views.
    #[arg(long, default_value_t = 48)]
    views: usize,
    /// Held-out views (on an orbit between the training elevations).
    #[arg(long, default_value_t = 8)]
    heldout: usize,
    /// Optimisation steps.
    #[arg(long, default_value_t = 600)]
    steps: usize,
    /// Rays per step.
    #[arg(long, default_value_t = 2048)]
    rays: usize,
    /// Samples per ray.
    #[arg(long, default_value_t = 64)]
    samples: usize,
    /// Hash-grid levels.
    #[arg(long, default_value_t = 12)]
    levels: usize,
    /// Hash-table size, log2 entries per level.
    #[arg(long, default_value_t = 16)]
    log2_table: u32,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder for the turntable PNGs.
    #[arg(long, default_value = "out/fit_scene")]
    out: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let kind: BackendKind = args.backend.parse()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create output folder {}", args.out.display()))?;
    run_on(kind, Fit(args))?
}

struct Fit(Args);

impl BackendTask for Fit {
    type Output = Result<()>;

    fn run<B: EngineAutodiffBackend>(self, device: B::Device) -> Result<()> {
        let args = self.0;
        let scene = SdfScene::example();

        // Training views from the generator's own camera ranges; held-out views on a fixed orbit.
        let mut sampler = CameraSampler::new(OrbitConfig::default(), args.seed)?;
        let train = sampler.sample(args.views, args.size, args.size)?;
        let heldout = evaluation_orbit(args.heldout, 15.0, 2.2, 40.0, args.size, args.size)?;
        let render = |cams: &[Camera]| cams.iter().map(|c| scene.render(c)).collect::<Vec<_>>();
        let train_images = render(&train);
        let heldout_images = render(&heldout);

        let config = FitConfig {
            nerf: NerfConfig::new()
                .with_encoding(
                    HashGridConfig::new()
                        .with_n_levels(args.levels)
                        .with_log2_hashmap_size(args.log2_table)
                        .with_max_resolution(16 * args.size),
                )
                .with_background(
                    BackgroundConfig::new()
                        .with_kind(BackgroundKind::Solid)
                        .with_color(scene.lighting.background),
                ),
            renderer: VolumeRendererConfig::new().with_num_samples_per_ray(args.samples),
            steps: args.steps,
            rays_per_step: args.rays,
            seed: args.seed,
            ..FitConfig::default()
        };
        let views: Vec<_> = train.into_iter().zip(train_images).collect();

        let start = Instant::now();
        let mut last = 0.0;
        let nerf = fit_nerf::<B>(&views, &config, &device, |s| {
            last = s.loss;
            if s.step % 100 == 0 {
                println!(
                    "step {:5}  loss {:.5}  {:.1}s",
                    s.step,
                    s.loss,
                    start.elapsed().as_secs_f32()
                );
            }
        })?;
        let fit_time = start.elapsed().as_secs_f32();

        let renderer = VolumeRenderer::new(config.renderer.clone());
        let predicted = render_views(&nerf, &renderer, &heldout, &device);
        let psnr: Vec<f32> = predicted
            .iter()
            .zip(&heldout_images)
            .map(|(p, t)| p.psnr(t))
            .collect();
        let mean = psnr.iter().sum::<f32>() / psnr.len() as f32;

        println!();
        println!(
            "| backend | size | views | steps | rays/step | samples | final loss | held-out PSNR (dB) | fit time (s) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.5} | {:.2} | {:.1} |",
            args.backend,
            args.size,
            args.views,
            args.steps,
            args.rays,
            args.samples,
            last,
            mean,
            fit_time
        );
        println!(
            "per view: {}",
            psnr.iter()
                .map(|p| format!("{p:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );

        RgbImage::hstack(&predicted).save_png(args.out.join("turntable.png"))?;
        RgbImage::hstack(&heldout_images).save_png(args.out.join("ground_truth.png"))?;
        println!(
            "wrote {}/turntable.png and ground_truth.png",
            args.out.display()
        );
        Ok(())
    }
}
