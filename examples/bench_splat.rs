//! Times the Gaussian splatting renderer (projection + tile rasteriser, forward and forward +
//! backward) for 4 views; prints a Markdown table.
//!
//! `cargo run --release --example bench_splat -- --backend cpu`
//! `cargo run --release --example bench_splat -- --backend cuda --sizes 512 --counts 200000`

use anyhow::Result;
use clap::Parser;
use rewardsds::engine::backend::{BackendKind, BackendTask, EngineAutodiffBackend, run_on};
use rewardsds::engine::burn::tensor::{Tensor, TensorData};
use rewardsds::engine::render::SplatRenderer;
use rewardsds::engine::scene::camera::Camera;
use rewardsds::engine::scene::gaussians::{Gaussians, GaussiansConfig};

#[path = "common/timing.rs"]
mod timing;
use timing::mean_ms;

/// Command-line options.
#[derive(Parser, Debug, Clone)]
#[command(about = "Gaussian splatting forward+backward timings")]
struct Args {
    /// Backends to time, comma-separated (cpu, wgpu, cuda).
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Image sizes (square), comma-separated.
    #[arg(long, default_value = "64,256")]
    sizes: String,
    /// Gaussian counts, comma-separated.
    #[arg(long, default_value = "5000,50000,200000")]
    counts: String,
    /// Views per batch.
    #[arg(long, default_value_t = 4)]
    views: usize,
    /// Timed iterations after one warm-up.
    #[arg(long, default_value_t = 5)]
    iters: usize,
}

fn list(s: &str) -> Result<Vec<usize>> {
    s.split(',').map(|v| Ok(v.trim().parse()?)).collect()
}

fn main() -> Result<()> {
    let args = Args::parse();
    println!("| backend | views | image | Gaussians | forward (ms) | forward+backward (ms) |");
    println!("|---|---|---|---|---|---|");
    for name in args.backend.split(',') {
        let kind: BackendKind = name.parse()?;
        for &count in &list(&args.counts)? {
            for &size in &list(&args.sizes)? {
                let (fwd, both) = run_on(
                    kind,
                    Bench {
                        count,
                        size: size as u32,
                        args: args.clone(),
                    },
                )?;
                println!(
                    "| {kind} | {} | {size}x{size} | {count} | {fwd:.1} | {both:.1} |",
                    args.views
                );
            }
        }
    }
    Ok(())
}

struct Bench {
    count: usize,
    size: u32,
    args: Args,
}

impl BackendTask for Bench {
    type Output = (f64, f64);

    fn run<B: EngineAutodiffBackend>(self, device: B::Device) -> (f64, f64) {
        let Bench { count, size, args } = self;
        // Spacing-sized Gaussians in a ball: about as much overlap as a fitted object.
        let inner: Gaussians<B::InnerBackend> = GaussiansConfig::new()
            .with_num_points(count)
            .with_scale_of_spacing(1.0)
            .init(0, &device)
            .expect("valid config");
        let cameras: Vec<Camera> = (0..args.views)
            .map(|v| {
                Camera::orbit(
                    360.0 * v as f32 / args.views as f32,
                    15.0,
                    2.2,
                    40.0,
                    size,
                    size,
                )
                .unwrap()
            })
            .collect();
        let background =
            Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32; 3], [1, 3]), &device);
        let time = |backward: bool| {
            mean_ms(1, args.iters, || {
                let g = Gaussians::<B>::tracked(&inner);
                let out = SplatRenderer
                    .render(&g, &cameras, background.clone(), false)
                    .unwrap();
                let loss = out.render.rgb.mean() + out.render.opacity.mean();
                if backward {
                    let grads = loss.backward();
                    let _ = g.means.grad(&grads).unwrap().sum().into_scalar();
                } else {
                    let _ = loss.into_scalar();
                }
                B::sync(&device).ok();
            })
        };
        (time(false), time(true))
    }
}
