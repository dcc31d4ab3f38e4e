//! The texture stage on Tiny World: each asset of a seeded random sample of captions is
//! generated (stage 1, the `fast` preset), then its texture refined twice from the same stage-1
//! checkpoint, with SDS and with RewardSDS (N = 4, min_max, as the preset), judged by the judge
//! CLIP (never a reward).
//!
//! `cargo run --release --example benchmark_texture -- --prompts 2 --seeds 2`
//!
//! Captions: `--prompts` drawn from the seen captions and as many from the held-out
//! compositions, each group shuffled with `--sample-seed` (the benchmark's own rule). Measured
//! per asset, before stage 2 (the baked texture on the extracted mesh, the stage's start) and
//! after it:
//! - the judge's reading of 8 turntable views (R-precision: top-1 among all compositions);
//! - colour fidelity: the share of the object's pixels in those views whose nearest world
//!   colour is one the caption asks for (the shape check's colour rule);
//! - seconds: stage 1 (its steps), stage 2 (meshing, UV unwrap and bake included).
//!
//! Prints a Markdown table (`--out` writes it) and, with `--images`, a sheet of the views:
//! per asset a row of stage 1's field, the baked start, SDS's and RewardSDS's result.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use rewardsds::engine::backend::{BackendTask, EngineAutodiffBackend};
use rewardsds::engine::generate::{GenerateConfig, Generator, TextureStageConfig, load_guidance};
use rewardsds::engine::glam::Vec3;
use rewardsds::engine::rgb_image::RgbImage;
use rewardsds::engine::tiny_world::evaluate::Judge;
use rewardsds::engine::tiny_world::shape_check::nearest_color;
use rewardsds::engine::tiny_world::{Composition, Split};
use rewardsds::engine::weights::resolve_model;

/// Command-line options.
#[derive(Parser, Debug, Clone)]
#[command(
    about = "The texture stage on Tiny World: SDS vs RewardSDS, judged by an independent CLIP"
)]
struct Args {
    /// Captions drawn from each group (seen, held-out compositions).
    #[arg(long, default_value_t = 2)]
    prompts: usize,
    /// Seed of the caption draw.
    #[arg(long, default_value_t = 0)]
    sample_seed: u64,
    /// Seeds per caption (0, 1, ...).
    #[arg(long, default_value_t = 2)]
    seeds: u64,
    /// Steps of stage 1.
    #[arg(long, default_value_t = 250)]
    steps: usize,
    /// Steps of the texture stage.
    #[arg(long, default_value_t = 50)]
    texture_steps: usize,
    /// Side of the baked texture.
    #[arg(long, default_value_t = 512)]
    texture_size: u32,
    /// The texture stage's supersampling (`texture_stage.supersample`).
    #[arg(long, default_value_t = 2)]
    supersample: u32,
    /// Backend: cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Also write the table here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Save the sheet of views here (a folder).
    #[arg(long)]
    images: Option<PathBuf>,
}

/// Share of the object's pixels (those unlike the backdrop, the corner pixel) whose nearest
/// world colour is one of `composition`'s.
fn colour_fidelity(views: &[RgbImage], composition: Composition) -> f32 {
    let asked: Vec<_> = match composition {
        Composition::Single(a) => vec![a.color],
        Composition::And(a, b) | Composition::OnTopOf(a, b) => vec![a.color, b.color],
    };
    let (mut object, mut right) = (0usize, 0usize);
    for view in views {
        let backdrop = [view.data[0], view.data[1], view.data[2]];
        for px in view.data.chunks_exact(3) {
            if (0..3).all(|c| (px[c] - backdrop[c]).abs() <= 0.15) {
                continue;
            }
            object += 1;
            if asked.contains(&nearest_color(Vec3::new(px[0], px[1], px[2]))) {
                right += 1;
            }
        }
    }
    right as f32 / object.max(1) as f32
}

#[derive(Default, Clone)]
struct Score {
    runs: usize,
    read: f32,
    fidelity: f32,
    seconds: f64,
}

impl Score {
    fn add(&mut self, read: f32, fidelity: f32, seconds: f64) {
        self.runs += 1;
        self.read += read;
        self.fidelity += fidelity;
        self.seconds += seconds;
    }

    fn row(&self, name: &str, steps: String) -> String {
        let n = self.runs.max(1) as f32;
        format!(
            "| {name} | {steps} | {:.1}% | {:.1}% | {:.1} |\n",
            100.0 * self.read / n,
            100.0 * self.fidelity / n,
            self.seconds / n as f64
        )
    }
}

struct Bench {
    args: Args,
}

impl BackendTask for Bench {
    type Output = Result<String>;

    fn run<B: EngineAutodiffBackend>(self, device: B::Device) -> Result<String> {
        let args = self.args;
        let split = Split::shipped();
        let captions: Vec<Composition> = random_captions(&split, args.prompts, args.sample_seed)
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        let judge =
            Judge::<B::InnerBackend>::from_folder(&resolve_model("tiny-world-judge")?, &device)?;
        let read = |views: &[RgbImage], caption: Composition| {
            let images = RgbImage::to_tensor::<B::InnerBackend>(views, &device);
            judge.retrieval(images, &vec![caption; views.len()]).top1
        };
        let work = std::env::temp_dir().join(format!(
            "rewardsds-benchmark-texture-{}",
            std::process::id()
        ));
        let names = ["stage 1 (field)", "baked start", "SDS", "RewardSDS N=4"];
        let mut scores = vec![Score::default(); names.len()];
        let mut sheet = Vec::new();
        let mut log = String::new();

        for caption in &captions {
            for seed in 0..args.seeds {
                let dir = work.join(format!("{}-{seed}", caption.caption().replace(' ', "-")));
                let _ = std::fs::remove_dir_all(&dir);
                let mut config = GenerateConfig::preset("fast")?;
                config.prompt = caption.caption();
                config.seed = seed;
                config.steps = args.steps;
                config.snapshot_every = 0;
                config.checkpoint_every = args.steps;
                config.mesh.bake.texture_size = args.texture_size;
                config.texture_stage = Some(TextureStageConfig {
                    steps: args.texture_steps,
                    supersample: args.supersample,
                    ..Default::default()
                });
                let size = config.final_render_size();

                let start = Instant::now();
                let mut generator = Generator::<B>::load(config.clone(), &device)?;
                generator.checkpoint_to(&dir);
                while generator.steps_done() < config.steps {
                    generator.step()?;
                }
                generator.save_checkpoint(&dir)?;
                let stage_one = start.elapsed().as_secs_f64();
                let field = generator.turntable(8, size)?;
                let mut row = vec![RgbImage::hstack(&field)];
                let mut line = vec![(read(&field, *caption), colour_fidelity(&field, *caption))];
                scores[0].add(line[0].0, line[0].1, stage_one);
                drop(generator);

                for (m, reward) in [false, true].into_iter().enumerate() {
                    // The same stage-1 checkpoint, refined with each guidance.
                    let mut variant = config.clone();
                    if !reward {
                        variant.guidance.reward = None;
                    }
                    let guidance = load_guidance::<B>(&variant, &device)?;
                    let mut refine = Generator::<B>::resume_with(&dir, guidance, &device)?;
                    let start = Instant::now();
                    refine.begin_texture_stage()?;
                    if m == 0 {
                        // The stage's start: the baked texture before any update.
                        let start_views = refine.turntable(8, size)?;
                        let r = read(&start_views, *caption);
                        let f = colour_fidelity(&start_views, *caption);
                        scores[1].add(r, f, 0.0);
                        line.push((r, f));
                        row.push(RgbImage::hstack(&start_views));
                    }
                    while refine.steps_done() < config.total_steps() {
                        refine.step()?;
                    }
                    let seconds = start.elapsed().as_secs_f64();
                    let views = refine.turntable(8, size)?;
                    let (r, f) = (read(&views, *caption), colour_fidelity(&views, *caption));
                    scores[2 + m].add(r, f, seconds);
                    line.push((r, f));
                    row.push(RgbImage::hstack(&views));
                }
                let cells: Vec<String> = line
                    .iter()
                    .map(|(r, f)| format!("read {r:.2} colour {f:.2}"))
                    .collect();
                let entry = format!(
                    "{:<48} seed {seed}: {}",
                    caption.caption(),
                    cells.join(" | ")
                );
                eprintln!("{entry}");
                log += &format!("- {entry}\n");
                sheet.push(RgbImage::vstack(&row));
                std::fs::remove_dir_all(&dir).ok();
            }
        }
        if let Some(dir) = &args.images {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join("texture_stage.png");
            RgbImage::vstack(&sheet)
                .save_png(&path)
                .with_context(|| format!("writing {}", path.display()))?;
        }

        let mut table = format!(
            "Captions: {} seen and {} held-out compositions drawn with seed {} x {} seeds; stage 1 \
             `fast` (RewardSDS), {} steps, NeRF; texture stage {} steps, {} px texture, {}x \
             supersampling. Read: the \
             judge's top-1 R-precision over 8 views; colour: share of object pixels in the \
             caption's colours.\n\n\
             | result | steps | read | colour | s |\n|---|---|---|---|---|\n",
            args.prompts,
            args.prompts,
            args.sample_seed,
            args.seeds,
            args.steps,
            args.texture_steps,
            args.texture_size,
            args.supersample,
        );
        table += &scores[0].row(names[0], args.steps.to_string());
        table += &scores[1].row(names[1], "+0".into());
        table += &scores[2].row(names[2], format!("+{}", args.texture_steps));
        table += &scores[3].row(names[3], format!("+{}", args.texture_steps));
        table += &format!("\nPer asset (stage 1 | baked start | SDS | RewardSDS):\n\n{log}");
        Ok(table)
    }
}

#[path = "common/logging.rs"]
mod logging;
#[path = "common/prompts.rs"]
mod prompts;
#[path = "common/table.rs"]
mod table;

use prompts::random_captions;

fn main() -> Result<()> {
    logging::init();
    let args = Args::parse();
    let (backend, out) = (args.backend.clone(), args.out.clone());
    table::run_and_print(&backend, Bench { args }, out.as_deref())
}
