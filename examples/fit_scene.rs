//! Fits a hash-grid NeRF or 3D Gaussians to renders of a known procedural scene and reports
//! held-out PSNR.
//!
//! Proves the renderers and their gradients before any diffusion model is involved:
//! `cargo run --release --example fit_scene -- --size 64`
//! `cargo run --release --example fit_scene -- --scene gaussians --size 64`

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use rewardsds::engine::backend::EngineAutodiffBackend;
use rewardsds::engine::backend::{BackendKind, BackendTask, run_on};
use rewardsds::engine::export::write_splat_ply;
use rewardsds::engine::fit::{
    FitConfig, GaussianFitConfig, fit_gaussians, fit_nerf, render_gaussian_views, render_views,
};
use rewardsds::engine::mesh::{MeshConfig, NerfField, extract_mesh};
use rewardsds::engine::procedural::SdfScene;
use rewardsds::engine::render::{VolumeRenderer, VolumeRendererConfig};
use rewardsds::engine::rgb_image::RgbImage;
use rewardsds::engine::scene::camera::{Camera, CameraSampler, OrbitConfig, evaluation_orbit};
use rewardsds::engine::scene::gaussians::{DensifyConfig, GaussiansConfig};
use rewardsds::engine::scene::nerf::{
    BackgroundConfig, BackgroundKind, HashGridConfig, NerfConfig,
};
use rewardsds::engine::tiny_world::Item;
use rewardsds::engine::tiny_world::shape_check::check_items;

/// Command-line options; every field is also documented in `--help`.
#[derive(Parser, Debug, Clone)]
#[command(about = "Fit a NeRF to a procedural scene and report held-out PSNR")]
struct Args {
    /// Backend: cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Scene representation: nerf or gaussians.
    #[arg(long, default_value = "nerf")]
    scene: String,
    /// Gaussians: initial count.
    #[arg(long, default_value_t = 5000)]
    points: usize,
    /// Gaussians: training views per step.
    #[arg(long, default_value_t = 4)]
    views_per_step: usize,
    /// Gaussians: no densification or pruning.
    #[arg(long)]
    no_densify: bool,
    /// Gaussians: also write the fitted splat cloud as a 3DGS .ply here.
    #[arg(long)]
    ply: Option<PathBuf>,
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
        match self.0.scene.as_str() {
            "nerf" => fit_nerf_scene::<B>(self.0, device),
            "gaussians" => fit_gaussian_scene::<B>(self.0, device),
            other => anyhow::bail!("--scene {other}: expected nerf or gaussians"),
        }
    }
}

fn fit_gaussian_scene<B: EngineAutodiffBackend>(args: Args, device: B::Device) -> Result<()> {
    let scene = SdfScene::example();
    let mut sampler = CameraSampler::new(OrbitConfig::default(), args.seed)?;
    let train = sampler.sample(args.views, args.size, args.size)?;
    let heldout = evaluation_orbit(args.heldout, 15.0, 2.2, 40.0, args.size, args.size)?;
    let render = |cams: &[Camera]| cams.iter().map(|c| scene.render(c)).collect::<Vec<_>>();
    let heldout_images = render(&heldout);
    let views: Vec<_> = train.iter().cloned().zip(render(&train)).collect();
    let config = GaussianFitConfig {
        gaussians: GaussiansConfig::new()
            .with_num_points(args.points)
            .with_radius(0.8),
        densify: (!args.no_densify).then(|| {
            DensifyConfig::new()
                .with_start(100)
                .with_end(args.steps * 4 / 5)
                .with_interval(100)
                .with_opacity_reset_interval(0)
        }),
        steps: args.steps,
        views_per_step: args.views_per_step,
        background: scene.lighting.background,
        seed: args.seed,
        ..GaussianFitConfig::default()
    };
    let start = Instant::now();
    let (mut last, mut count) = (0.0, 0);
    let gaussians = fit_gaussians::<B>(&views, &config, &device, |s| {
        (last, count) = (s.loss, s.count);
        if s.step % 100 == 0 {
            println!(
                "step {:5}  L1 {:.5}  {} Gaussians  {:.1}s",
                s.step,
                s.loss,
                s.count,
                start.elapsed().as_secs_f32()
            );
        }
    })?;
    let fit_time = start.elapsed().as_secs_f32();
    let predicted = render_gaussian_views::<B>(&gaussians, &heldout, config.background, &device)?;
    let (psnr, mean) = RgbImage::mean_psnr(&predicted, &heldout_images);
    println!();
    println!(
        "| backend | scene | size | views | steps | views/step | Gaussians (start -> end) | final L1 | held-out PSNR (dB) | fit time (s) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | gaussians | {} | {} | {} | {} | {} -> {count} | {last:.5} | {mean:.2} | {fit_time:.1} |",
        args.backend, args.size, args.views, args.steps, args.views_per_step, args.points
    );
    write_views(&args, &psnr, &predicted, &heldout_images)?;
    if let Some(path) = &args.ply {
        write_splat_ply(&gaussians.to_cloud(), path)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn fit_nerf_scene<B: EngineAutodiffBackend>(args: Args, device: B::Device) -> Result<()> {
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
    let (psnr, mean) = RgbImage::mean_psnr(&predicted, &heldout_images);

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
    write_views(&args, &psnr, &predicted, &heldout_images)?;

    // The control of the shape check: a NeRF fitted to true renders, meshed as `generate`
    // meshes its results, should show each object's true shape.
    let field = NerfField::from_autodiff(&nerf);
    let mesh = extract_mesh(&field, Some(&field), field.bounds(), &MeshConfig::default())?;
    let items: Vec<Item> = scene
        .objects
        .iter()
        .map(|o| Item {
            color: o.color,
            shape: o.shape,
        })
        .collect();
    println!("shapes (no CLIP): {}", check_items(&mesh.mesh, &items)?);
    Ok(())
}

/// Prints the per-view PSNR and writes the predicted and true turntables.
fn write_views(
    args: &Args,
    psnr: &[f32],
    predicted: &[RgbImage],
    truth: &[RgbImage],
) -> Result<()> {
    let per_view: Vec<String> = psnr.iter().map(|p| format!("{p:.2}")).collect();
    println!("per view: {}", per_view.join(", "));
    RgbImage::hstack(predicted).save_png(args.out.join("turntable.png"))?;
    RgbImage::hstack(truth).save_png(args.out.join("ground_truth.png"))?;
    println!(
        "wrote {}/turntable.png and ground_truth.png",
        args.out.display()
    );
    Ok(())
}
