//! Editing 3D assets on Tiny World: DDS vs RewardDDS on an edit set drawn by rule, judged by
//! the judge CLIP (never a reward).
//!
//! `cargo run --release --example benchmark_edit -- --sources 6 --steps 60`
//!
//! The edit set: `--sources K` single-object captions, the first K of all 40 shuffled with a
//! seeded generator (`--draw-seed`, 0), each generated (`fast` preset, `--source-steps`) and
//! then edited three ways, each target fixed by rule from the source `a <colour> <shape>`:
//! - colour: the next colour of the world's list, same shape;
//! - shape: the next shape of the world's list, same colour;
//! - add on top: `<next colour> <next shape> on top of <source>`.
//!
//! Methods: DDS, RewardDDS (`--n`, min_max as the preset), and DDS given RewardDDS's
//! wall-clock (its steps scaled by the measured time per step). Measured per edit: whether
//! the judge reads the target from the 8 turntable views (R-precision, top-1 among all
//! compositions) and what was kept of the source, by kind: colour edits, the silhouette
//! (IoU of the foreground masks of source and edit); shape edits, the colour (mean RGB
//! distance of the foregrounds; lower is better); add on top, the source's silhouette
//! covered by the edit's (|S ∩ E| / |S|). Prints a Markdown table (`--out` writes it).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rewardsds::engine::backend::{BackendTask, EngineAutodiffBackend};
use rewardsds::engine::generate::{GenerateConfig, Generator, SceneKind, edit_config};
use rewardsds::engine::procedural::{Color, Shape};
use rewardsds::engine::rgb_image::RgbImage;
use rewardsds::engine::tiny_world::evaluate::Judge;
use rewardsds::engine::tiny_world::{Composition, Item};
use rewardsds::engine::weights::resolve_model;

/// Command-line options.
#[derive(Parser, Debug, Clone)]
#[command(about = "DDS vs RewardDDS edits of Tiny World assets, judged by an independent CLIP")]
struct Args {
    /// Source captions drawn (each edited three ways).
    #[arg(long, default_value_t = 6)]
    sources: usize,
    /// Seed of the draw of the source captions.
    #[arg(long, default_value_t = 0)]
    draw_seed: u64,
    /// Steps of each source generation.
    #[arg(long, default_value_t = 100)]
    source_steps: usize,
    /// Steps of each edit (DDS and RewardDDS).
    #[arg(long, default_value_t = 60)]
    steps: usize,
    /// RewardDDS's noise samples.
    #[arg(long, default_value_t = 4)]
    n: usize,
    /// Scene of the sources and edits: nerf or gaussians.
    #[arg(long, default_value = "nerf")]
    scene: SceneKind,
    /// Seed of the generations and edits.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Backend: cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Also write the table here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Save each source's and edit's turntable here (one row per run, in log order).
    #[arg(long)]
    images: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum EditKind {
    Colour,
    Shape,
    AddOnTop,
}

impl EditKind {
    const ALL: [EditKind; 3] = [EditKind::Colour, EditKind::Shape, EditKind::AddOnTop];

    fn name(self) -> &'static str {
        match self {
            EditKind::Colour => "colour",
            EditKind::Shape => "shape",
            EditKind::AddOnTop => "add on top",
        }
    }

    /// What was kept, as the table heads it.
    fn kept(self) -> &'static str {
        match self {
            EditKind::Colour => "silhouette IoU",
            EditKind::Shape => "colour distance (lower kept more)",
            EditKind::AddOnTop => "source silhouette covered",
        }
    }

    /// The target of editing `source` this way.
    fn target(self, source: Item) -> Composition {
        let next_colour = next(&Color::ALL, source.color);
        let next_shape = next(&Shape::ALL, source.shape);
        match self {
            EditKind::Colour => Composition::Single(Item {
                color: next_colour,
                ..source
            }),
            EditKind::Shape => Composition::Single(Item {
                shape: next_shape,
                ..source
            }),
            EditKind::AddOnTop => Composition::OnTopOf(
                Item {
                    color: next_colour,
                    shape: next_shape,
                },
                source,
            ),
        }
    }
}

fn next<T: Copy + PartialEq>(all: &[T], x: T) -> T {
    let i = all.iter().position(|&y| y == x).expect("in the list");
    all[(i + 1) % all.len()]
}

/// Foreground masks and mean foreground colour of turntable views: pixels farther than 0.15
/// from the view's corner pixel (the backdrop) in some channel.
fn foreground(views: &[RgbImage]) -> (Vec<bool>, [f32; 3]) {
    let mut mask = Vec::new();
    let mut sum = [0.0f32; 3];
    for view in views {
        let backdrop = [view.data[0], view.data[1], view.data[2]];
        for px in view.data.chunks_exact(3) {
            let object = (0..3).any(|c| (px[c] - backdrop[c]).abs() > 0.15);
            mask.push(object);
            if object {
                (0..3).for_each(|c| sum[c] += px[c]);
            }
        }
    }
    let n = mask.iter().filter(|m| **m).count().max(1) as f32;
    (mask, sum.map(|s| s / n))
}

/// What `edit` kept of `source`, by `kind` (see the module docs).
fn kept(kind: EditKind, source: &[RgbImage], edit: &[RgbImage]) -> f32 {
    let (s, s_colour) = foreground(source);
    let (e, e_colour) = foreground(edit);
    let count =
        |f: &dyn Fn(bool, bool) -> bool| s.iter().zip(&e).filter(|(a, b)| f(**a, **b)).count();
    match kind {
        EditKind::Colour => count(&|a, b| a && b) as f32 / count(&|a, b| a || b).max(1) as f32,
        EditKind::Shape => (0..3)
            .map(|c| (s_colour[c] - e_colour[c]).powi(2))
            .sum::<f32>()
            .sqrt(),
        EditKind::AddOnTop => count(&|a, b| a && b) as f32 / count(&|a, _| a).max(1) as f32,
    }
}

#[derive(Default, Clone)]
struct Score {
    runs: usize,
    views: usize,
    read: usize,
    kept: f32,
    seconds: f64,
    steps: usize,
}

struct Bench {
    args: Args,
}

impl BackendTask for Bench {
    type Output = Result<String>;

    fn run<B: EngineAutodiffBackend>(self, device: B::Device) -> Result<String> {
        let args = self.args;
        let mut items = Item::all();
        items.shuffle(&mut StdRng::seed_from_u64(args.draw_seed));
        items.truncate(args.sources);
        let judge =
            Judge::<B::InnerBackend>::from_folder(&resolve_model("tiny-world-judge")?, &device)?;
        let work =
            std::env::temp_dir().join(format!("rewardsds-benchmark-edit-{}", std::process::id()));
        let methods = ["DDS", "RewardDDS", "DDS, time of RewardDDS"];
        // [kind][method]
        let mut scores = vec![vec![Score::default(); methods.len()]; EditKind::ALL.len()];
        let mut source_score = Score::default();
        let mut sheet = Vec::new();
        let read = |views: &[RgbImage], target: Composition| {
            let images = RgbImage::to_tensor::<B::InnerBackend>(views, &device);
            judge.retrieval(images, &vec![target; views.len()]).top1
        };

        for (i, &item) in items.iter().enumerate() {
            let source = Composition::Single(item);
            let dir = work.join(format!("source-{i}"));
            let mut config = GenerateConfig::preset("fast")?;
            config.prompt = source.caption();
            config.scene = args.scene;
            config.seed = args.seed;
            config.steps = args.source_steps;
            config.snapshot_every = 0;
            config.checkpoint_every = args.source_steps;
            let start = Instant::now();
            let mut generator = Generator::<B>::load(config.clone(), &device)?;
            generator.checkpoint_to(&dir);
            generator.run(&AtomicBool::new(false), &mut |_| {})?;
            let size = config.final_render_size();
            let source_views = generator.turntable(8, size)?;
            let top1 = read(&source_views, source);
            source_score.runs += 1;
            source_score.views += 8;
            source_score.read += (top1 * 8.0).round() as usize;
            source_score.seconds += start.elapsed().as_secs_f64();
            source_score.steps += config.steps;
            eprintln!("source {:<40} read {top1:.2}", source.caption());
            sheet.push(RgbImage::hstack(&source_views));

            for (k, &kind) in EditKind::ALL.iter().enumerate() {
                let target = kind.target(item);
                for (m, method) in methods.iter().enumerate() {
                    let mut config = edit_config(&dir, &target.caption())?;
                    config.steps = args.steps;
                    config.snapshot_every = 0;
                    config.checkpoint_every = 0;
                    match m {
                        1 => {
                            config
                                .guidance
                                .reward
                                .as_mut()
                                .context("the fast preset rewards")?
                                .n_samples = args.n;
                        }
                        _ => config.guidance.reward = None,
                    }
                    if m == 2 {
                        let per_step = |s: &Score| s.seconds / s.steps.max(1) as f64;
                        let ratio = per_step(&scores[k][1]) / per_step(&scores[k][0]).max(1e-9);
                        config.steps = ((args.steps as f64 * ratio).round() as usize).max(1);
                    }
                    let start = Instant::now();
                    let mut edit = Generator::<B>::load(config.clone(), &device)?;
                    edit.run(&AtomicBool::new(false), &mut |_| {})?;
                    let seconds = start.elapsed().as_secs_f64();
                    let views = edit.turntable(8, size)?;
                    let top1 = read(&views, target);
                    let kept = kept(kind, &source_views, &views);
                    let s = &mut scores[k][m];
                    s.runs += 1;
                    s.views += 8;
                    s.read += (top1 * 8.0).round() as usize;
                    s.kept += kept;
                    s.seconds += seconds;
                    s.steps += config.steps;
                    eprintln!(
                        "  {:<10} {:<24} -> {:<50} read {top1:.2} kept {kept:.3} {seconds:>6.1}s ({} steps)",
                        kind.name(),
                        method,
                        target.caption(),
                        config.steps
                    );
                    sheet.push(RgbImage::hstack(&views));
                }
            }
            std::fs::remove_dir_all(&dir).ok();
        }
        if let Some(dir) = &args.images {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join(format!("edits_{}.png", args.scene.name()));
            RgbImage::vstack(&sheet)
                .save_png(&path)
                .with_context(|| format!("writing {}", path.display()))?;
        }

        let pct = |s: &Score| 100.0 * s.read as f32 / s.views.max(1) as f32;
        let mut table = format!(
            "Sources: {} single-object captions (the first {} of all 40 shuffled with seed {}), \
             {} scene, seed {}, `fast` preset, {} steps each: the judge reads them from {:.1}% \
             of the views ({:.1} s each).\n\n\
             | edit | method | steps | target read (8 views) | kept | s/edit |\n|---|---|---|---|---|---|\n",
            items.len(),
            items.len(),
            args.draw_seed,
            args.scene.name(),
            args.seed,
            args.source_steps,
            pct(&source_score),
            source_score.seconds / source_score.runs.max(1) as f64,
        );
        for (k, kind) in EditKind::ALL.iter().enumerate() {
            for (m, method) in methods.iter().enumerate() {
                let s = &scores[k][m];
                let method = if m == 1 {
                    format!("{method} N={}", args.n)
                } else {
                    method.to_string()
                };
                table += &format!(
                    "| {} | {method} | {} | {:.1}% | {}: {:.3} | {:.1} |\n",
                    kind.name(),
                    s.steps / s.runs.max(1),
                    pct(s),
                    kind.kept(),
                    s.kept / s.runs.max(1) as f32,
                    s.seconds / s.runs.max(1) as f64,
                );
            }
        }
        Ok(table)
    }
}

#[path = "common/logging.rs"]
mod logging;
#[path = "common/table.rs"]
mod table;

fn main() -> Result<()> {
    logging::init();
    let args = Args::parse();
    let (backend, out) = (args.backend.clone(), args.out.clone());
    table::run_and_print(&backend, Bench { args }, out.as_deref())
}
