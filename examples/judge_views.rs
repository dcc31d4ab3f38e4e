//! Judges saved turntables again, with any judge: the rows of views in a PNG (the sheets of
//! `benchmark --images`, `generate`'s `views.png` or `turntable.png`), each row against its
//! prompt.
//!
//! `cargo run --release --example judge_views -- --png docs/benchmark/v5_nerf_views.png
//! --prompt "a red cube and a blue sphere" --prompt "a red cube and a blue cone"
//! --prompt "a black torus and a green torus" --prompt "a yellow cone on top of a purple cube"
//! --methods "SDS;RewardSDS N=4;RewardSDS N=8;SDS, time of N=8"` prints, per row, the views the
//! judge retrieves the prompt from, and per method the benchmark's columns (R-precision over
//! the views, mean judge CLIP score, wins vs the first method). Rows are in the benchmark's
//! order: per prompt, per seed, per method. A new judge re-scores old results this way
//! without generating them again (the PNG's 8-bit rounding is the only difference).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;
use rewardsds::engine::backend::{BackendKind, BackendTask, EngineAutodiffBackend, run_on};
use rewardsds::engine::rgb_image::RgbImage;
use rewardsds::engine::tiny_world::evaluate::Judge;
use rewardsds::engine::tiny_world::{Composition, Split};
use rewardsds::engine::weights::resolve_model;

#[path = "common/prompts.rs"]
mod prompts;
use prompts::tiny_world_prompts;

/// Command-line options.
#[derive(Parser, Debug, Clone)]
#[command(about = "Judge saved turntable rows (benchmark sheets, views.png) against prompts")]
struct Args {
    /// The PNG: rows of `--views` square views side by side.
    #[arg(long)]
    png: PathBuf,
    /// Prompt of each group of rows, in order (repeat the flag).
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// Method names, `;`-separated: each prompt and seed has one row per method.
    #[arg(long, value_delimiter = ';', default_value = "result")]
    methods: Vec<String>,
    /// Seeds per prompt.
    #[arg(long, default_value_t = 1)]
    seeds: usize,
    /// Views per row.
    #[arg(long, default_value_t = 8)]
    views: u32,
    /// The judge CLIP folder (default: the shipped Tiny World judge).
    #[arg(long)]
    judge: Option<PathBuf>,
    /// Backend: cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: String,
}

/// One row's result.
struct Row {
    method: usize,
    retrieved: usize,
    clip_score: f32,
}

struct JudgeViews {
    args: Args,
    targets: Vec<Composition>,
    /// Per row, its views.
    rows: Vec<Vec<RgbImage>>,
}

impl BackendTask for JudgeViews {
    type Output = Result<()>;

    fn run<B: EngineAutodiffBackend>(self, device: B::Device) -> Result<()> {
        let args = &self.args;
        let judge_dir = match &args.judge {
            Some(dir) => dir.clone(),
            None => resolve_model("tiny-world-judge")?,
        };
        let judge = Judge::<B::InnerBackend>::from_folder(&judge_dir, &device)
            .with_context(|| format!("loading the judge {}", judge_dir.display()))?;
        let split = Split::shipped();
        let methods = args.methods.len();
        println!("{}, judge {}\n", args.png.display(), judge_dir.display());
        println!(
            "| prompt | split | seed | method | views retrieved top-1 | judge CLIP | the judge reads |"
        );
        println!("|---|---|---|---|---|---|---|");
        let mut results = Vec::new();
        for (i, views) in self.rows.iter().enumerate() {
            let target = self.targets[i / (methods * args.seeds)];
            let (seed, method) = ((i / methods) % args.seeds, i % methods);
            let images = RgbImage::to_tensor::<B::InnerBackend>(views, &device);
            let r = judge.retrieval(images.clone(), &vec![target; views.len()]);
            let retrieved = (r.top1 * views.len() as f32).round() as usize;
            let reads: Vec<String> = judge
                .readings(images)
                .iter()
                .map(Composition::caption)
                .collect();
            let split_name = if split.is_held_out(&target) {
                "held-out"
            } else {
                "seen"
            };
            println!(
                "| {} | {split_name} | {seed} | {} | {retrieved} of {} | {:.2} | {} |",
                target.caption(),
                args.methods[method],
                views.len(),
                r.clip_score,
                reads.join("; ")
            );
            results.push(Row {
                method,
                retrieved,
                clip_score: r.clip_score,
            });
        }
        println!(
            "\n| method | judge R-precision ({} views) | judge CLIP score | wins vs {} |",
            args.views, args.methods[0]
        );
        println!("|---|---|---|---|");
        let runs: Vec<&[Row]> = results.chunks(methods).collect();
        for (m, name) in args.methods.iter().enumerate() {
            let mine: Vec<&Row> = results.iter().filter(|r| r.method == m).collect();
            let retrieved: usize = mine.iter().map(|r| r.retrieved).sum();
            let clip = mine.iter().map(|r| r.clip_score).sum::<f32>() / mine.len() as f32;
            let wins = runs
                .iter()
                .filter(|run| run[m].clip_score > run[0].clip_score)
                .count();
            println!(
                "| {name} | {:.1}% | {clip:.2} | {} |",
                100.0 * retrieved as f32 / (mine.len() * args.views as usize) as f32,
                if m == 0 {
                    "-".to_string()
                } else {
                    format!("{wins}/{}", runs.len())
                }
            );
        }
        Ok(())
    }
}

#[path = "common/logging.rs"]
mod logging;

fn main() -> Result<()> {
    logging::init();
    let args = Args::parse();
    if args.views == 0 || args.seeds == 0 || args.methods.is_empty() {
        bail!("--views, --seeds and --methods must not be zero or empty");
    }
    let targets = tiny_world_prompts(&args.prompt)?;
    let sheet = RgbImage::load_png(&args.png)?;
    if sheet.width % args.views != 0 {
        bail!(
            "{}: {} px wide, not {} views side by side",
            args.png.display(),
            sheet.width,
            args.views
        );
    }
    let size = sheet.width / args.views;
    let expected = targets.len() * args.seeds * args.methods.len();
    if sheet.height != size * expected as u32 {
        bail!(
            "{}: {} rows of {size} px, but {} prompts x {} seeds x {} methods need {expected}",
            args.png.display(),
            sheet.height as f32 / size as f32,
            targets.len(),
            args.seeds,
            args.methods.len()
        );
    }
    let rows = (0..expected as u32)
        .map(|r| {
            (0..args.views)
                .map(|v| {
                    sheet
                        .crop(v * size, r * size, size, size)
                        .expect("inside the sheet")
                })
                .collect()
        })
        .collect();
    let kind: BackendKind = args.backend.parse().context("--backend")?;
    run_on(
        kind,
        JudgeViews {
            args,
            targets,
            rows,
        },
    )?
}
