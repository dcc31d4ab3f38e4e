//! Times forward + backward of the NeRF volume renderer for one view; prints a Markdown table.
//!
//! `cargo run --release --example bench_render -- --backend cpu`

use anyhow::Result;
use clap::Parser;
use rewardsds::engine::backend::EngineAutodiffBackend;
use rewardsds::engine::backend::{BackendKind, BackendTask, run_on};
use rewardsds::engine::render::{VolumeRenderer, VolumeRendererConfig};
use rewardsds::engine::scene::camera::Camera;
use rewardsds::engine::scene::nerf::{HashGridConfig, NerfConfig};

#[path = "common/timing.rs"]
mod timing;
use timing::mean_ms;

/// Command-line options.
#[derive(Parser, Debug, Clone)]
#[command(about = "NeRF render forward+backward timings")]
struct Args {
    /// Backends to time, comma-separated (cpu, wgpu, cuda).
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Image size (square).
    #[arg(long, default_value_t = 64)]
    size: u32,
    /// Timed iterations after one warm-up.
    #[arg(long, default_value_t = 5)]
    iters: usize,
}

/// One benchmarked configuration.
#[derive(Clone)]
struct Case {
    name: &'static str,
    levels: usize,
    log2_table: u32,
    samples: usize,
}

const CASES: [Case; 2] = [
    Case {
        name: "threestudio (16 lv, 2^19, 64 spp)",
        levels: 16,
        log2_table: 19,
        samples: 64,
    },
    Case {
        name: "small (8 lv, 2^14, 48 spp)",
        levels: 8,
        log2_table: 14,
        samples: 48,
    },
];

fn main() -> Result<()> {
    let args = Args::parse();
    println!("| backend | config | image | forward (ms) | forward+backward (ms) |");
    println!("|---|---|---|---|---|");
    for name in args.backend.split(',') {
        let kind: BackendKind = name.parse()?;
        for case in CASES {
            let (fwd, both) = run_on(
                kind,
                Bench {
                    case: case.clone(),
                    args: args.clone(),
                },
            )?;
            let size = args.size;
            println!(
                "| {kind} | {} | {size}x{size} | {fwd:.1} | {both:.1} |",
                case.name
            );
        }
    }
    Ok(())
}

struct Bench {
    case: Case,
    args: Args,
}

impl BackendTask for Bench {
    type Output = (f64, f64);

    fn run<B: EngineAutodiffBackend>(self, device: B::Device) -> (f64, f64) {
        let Bench { case, args } = self;
        eprintln!("timing {} ...", case.name);
        let nerf = NerfConfig::new()
            .with_encoding(
                HashGridConfig::new()
                    .with_n_levels(case.levels)
                    .with_log2_hashmap_size(case.log2_table),
            )
            .init::<B>(&device);
        let renderer =
            VolumeRenderer::new(VolumeRendererConfig::new().with_num_samples_per_ray(case.samples));
        let rays = Camera::orbit(30.0, 15.0, 2.2, 40.0, args.size, args.size)
            .unwrap()
            .rays();

        let time = |backward: bool| {
            mean_ms(1, args.iters, || {
                let out = renderer.render(&nerf, &rays, true, &device);
                let loss = out.rgb.mean() + out.opacity.mean();
                if backward {
                    let grads = loss.backward();
                    let g = nerf.encoding.embeddings.grad(&grads).unwrap();
                    let _ = g.sum().into_scalar();
                } else {
                    let _ = loss.into_scalar();
                }
                B::sync(&device).ok();
            })
        };
        (time(false), time(true))
    }
}
