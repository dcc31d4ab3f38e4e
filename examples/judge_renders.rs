//! How well a Tiny World judge (or reward) CLIP reads true renders: caption retrieval among all
//! compositions for every held-out composition and as many seen ones, from the training orbit
//! and from the 8 turntable views `generate` judges its results by. This is the ceiling of
//! every number the judge gives generated images; compare judges on the same renders with a
//! repeated `--judge`.
//!
//! `cargo run --release --example judge_renders -- --judge assets/models/tiny-world/judge
//! --judge /tmp/other/judge`

use anyhow::{Context, Result, bail};
use clap::Parser;
use rewardsds::engine::backend::{BackendKind, BackendTask, EngineAutodiffBackend, run_on};
use rewardsds::engine::burn::tensor::Tensor;
use rewardsds::engine::rgb_image::RgbImage;
use rewardsds::engine::tiny_world::dataset::render_turntable;
use rewardsds::engine::tiny_world::evaluate::{Judge, Retrieval, spread_pairs};
use rewardsds::engine::tiny_world::{Composition, Dataset, Split};

/// Command-line options.
#[derive(Parser, Debug, Clone)]
#[command(about = "Judge CLIP retrieval on true Tiny World renders (its ceiling)")]
struct Args {
    /// A CLIP folder to measure (repeat to compare on the same renders).
    #[arg(long, default_values_t = ["assets/models/tiny-world/judge".to_string()])]
    judge: Vec<String>,
    /// Captions per group (held-out, seen); the held-out group has 234 canonical pairs.
    #[arg(long, default_value_t = 234)]
    captions: usize,
    /// Training-orbit renders per caption.
    #[arg(long, default_value_t = 2)]
    views: usize,
    /// Seed of the layouts and cameras.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Backend: cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: String,
}

struct JudgeRenders {
    args: Args,
}

fn cells(r: &Retrieval) -> String {
    format!(
        "{} | {:.1}% | {:.1}% | {:.1} | {:.1}%",
        r.images,
        100.0 * r.top1,
        100.0 * r.top5,
        r.clip_score,
        100.0 * r.binding_swaps
    )
}

impl BackendTask for JudgeRenders {
    type Output = Result<()>;

    fn run<B: EngineAutodiffBackend>(self, device: B::Device) -> Result<()> {
        type I<B> = <B as rewardsds::engine::burn::tensor::backend::AutodiffBackend>::InnerBackend;
        let args = &self.args;
        let split = Split::shipped();
        // Canonical pairs: "a and b" and "b and a" are one composition to the judge.
        let canonical = |group: &[Composition]| -> Vec<Composition> {
            let pairs: Vec<Composition> = group
                .iter()
                .copied()
                .filter(|c| *c == c.canonical())
                .collect();
            spread_pairs(&pairs, args.captions)
        };
        let groups = [
            ("held-out", canonical(&split.held_out)),
            ("seen", canonical(&split.train)),
        ];
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        // The same renders for every judge.
        let mut sets: Vec<(String, Vec<Composition>, Tensor<I<B>, 4>)> = Vec::new();
        for (name, captions) in &groups {
            let data = Dataset::render(captions, args.views, args.seed, threads);
            let indices: Vec<usize> = (0..data.len()).collect();
            let targets: Vec<Composition> = (0..args.views)
                .flat_map(|_| captions.iter().copied())
                .collect();
            sets.push((
                format!("{name}, training orbit"),
                targets,
                data.images(&indices, &device),
            ));
            let mut views = Vec::new();
            let mut targets = Vec::new();
            for c in captions {
                let turntable = render_turntable(c, 8, args.seed);
                targets.extend(std::iter::repeat_n(*c, turntable.len()));
                views.extend(turntable);
            }
            sets.push((
                format!("{name}, 8 turntable views"),
                targets,
                RgbImage::to_tensor(&views, &device),
            ));
        }
        println!("| judge | renders | images | top-1 | top-5 | CLIP | read as the binding swap |");
        println!("|---|---|---|---|---|---|---|");
        for dir in &args.judge {
            let judge = Judge::<I<B>>::from_folder(std::path::Path::new(dir), &device)
                .with_context(|| format!("loading the judge {dir}"))?;
            for (name, targets, images) in &sets {
                let r = judge.retrieval(images.clone(), targets);
                println!("| {dir} | {name} | {} |", cells(&r));
            }
        }
        Ok(())
    }
}

#[path = "common/logging.rs"]
mod logging;

fn main() -> Result<()> {
    logging::init();
    let args = Args::parse();
    if args.captions == 0 || args.views == 0 || args.judge.is_empty() {
        bail!("--captions, --views and --judge must not be zero or empty");
    }
    let kind: BackendKind = args.backend.parse().context("--backend")?;
    run_on(kind, JudgeRenders { args })?
}
