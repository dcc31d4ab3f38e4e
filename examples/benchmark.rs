//! SDS vs RewardSDS on the Tiny World prior, scored by the judge (a CLIP never used as reward).
//!
//! `cargo run --release --example benchmark -- --steps 200 --prompts 4 --seeds 2`
//! prints a Markdown table (and writes it with `--out`): per scene representation and method,
//! the judge's R-precision (top-1 caption retrieval among all compositions) over 8 views,
//! mean judge CLIP score, wins per prompt, the objects whose colour took the asked-for shape
//! (`tiny_world::shape_check`, no CLIP) and time per asset; RewardSDS at equal steps, SDS
//! also at equal wall-clock. `--images <dir>` saves the judged views (one row per run, in the
//! order of the log lines). `--journal runs.jsonl` keeps every run, so a long benchmark can be
//! run in chunks and resumed.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use rewardsds::engine::backend::{BackendTask, EngineAutodiffBackend};
use rewardsds::engine::generate::{GenerateConfig, Generator, SceneKind, load_guidance};
use rewardsds::engine::guidance::{RewardFeedbackConfig, WeightStrategy};
use rewardsds::engine::rgb_image::RgbImage;
use rewardsds::engine::tiny_world::evaluate::Judge;
use rewardsds::engine::tiny_world::shape_check::check_shapes;
use rewardsds::engine::tiny_world::{Composition, Split};
use rewardsds::engine::weights::resolve_model;

#[path = "common/journal.rs"]
mod journal;
use journal::{Journal, Run};
#[path = "common/prompts.rs"]
mod prompts;
use prompts::{random_captions, tiny_world_prompts};

/// Command-line options.
#[derive(Parser, Debug, Clone)]
#[command(about = "SDS vs RewardSDS on Tiny World, judged by an independent CLIP")]
struct Args {
    /// Steps per asset (RewardSDS and the equal-steps SDS).
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Prompts of each group (seen, held-out compositions).
    #[arg(long, default_value_t = 2)]
    prompts: usize,
    /// Benchmark these captions instead (repeat the flag); each must be a Tiny World caption.
    #[arg(long)]
    prompt: Vec<String>,
    /// Benchmark a seeded random sample instead: `--prompts` captions drawn from the seen
    /// captions (singles and compositions) and as many from the held-out compositions, each
    /// group shuffled with `--sample-seed` and its first ones taken (the rule the README's
    /// quality figures use, never a hand-picked prompt).
    #[arg(long, conflicts_with = "prompt")]
    random_sample: bool,
    /// Seed of `--random-sample`'s shuffle.
    #[arg(long, default_value_t = 0)]
    sample_seed: u64,
    /// Seeds per prompt.
    #[arg(long, default_value_t = 2)]
    seeds: u64,
    /// The first seed: runs seeds `first_seed..first_seed + seeds` (to add seeds to a table).
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// RewardSDS sample counts to compare (min_max, k = 2); `--n` alone compares none (SDS
    /// only, e.g. to sweep `--guidance-scale`).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "4,8")]
    n: Vec<usize>,
    /// Weighting of every RewardSDS row: `min_max` (the `fast` preset's, by default),
    /// `softmax`, `best`, or `uniform` (SDS averaged over the N noises, the reward unused: the
    /// ablation that tells the reward's part from the averaging's).
    #[arg(long)]
    strategy: Option<String>,
    /// Leave out the row of SDS given the last RewardSDS method's wall-clock.
    #[arg(long)]
    no_equal_time: bool,
    /// Also run SDS and the first RewardSDS method with reward feedback of this scale
    /// (`guidance.reward_feedback`); every other row runs without it.
    #[arg(long)]
    reward_feedback: Option<f32>,
    /// Classifier-free guidance scale of every method (default: the `fast` preset's).
    #[arg(long)]
    guidance_scale: Option<f32>,
    /// CFG scale at the last step of every method, reached linearly (default: the `fast`
    /// preset's, 1.5; `--guidance-scale-end 5` keeps CFG 5 constant).
    #[arg(long)]
    guidance_scale_end: Option<f32>,
    /// Weight of SDS's generative term in every method (`guidance.generative_weight`; 0 is
    /// classifier score distillation; default: the `fast` preset's, 1).
    #[arg(long)]
    generative_weight: Option<f32>,
    /// Share of the steps every method runs as classifier score distillation first
    /// (`guidance.csd_fraction`; default: the `fast` preset's, 0).
    #[arg(long)]
    csd_fraction: Option<f32>,
    /// The NeRF's learning rates at the last step as a fraction of the first (default: the
    /// `fast` preset's, 0.1; 1 keeps them constant).
    #[arg(long)]
    learning_rate_end_factor: Option<f64>,
    /// Prior model: preset name or diffusers folder (default: the `fast` preset's, Tiny World).
    #[arg(long)]
    prior: Option<String>,
    /// Scene representations to compare the methods on: nerf, gaussians.
    #[arg(long, value_delimiter = ',', default_value = "nerf,gaussians")]
    scenes: Vec<SceneKind>,
    /// Backend: cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Keep every finished run in this JSON-lines file and reuse the runs already there (same
    /// settings, scene, caption, seed and method): a long benchmark runs in chunks
    /// (`--first-seed`, `--scenes`, several sessions) and a final call with every seed and
    /// scene prints the whole table from the journal.
    #[arg(long)]
    journal: Option<PathBuf>,
    /// Save every asset's 8 judged views, one row per run, as `<images>/<scene>.png` (runs
    /// read from `--journal` have no views there).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Write the table here too.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One method's settings.
#[derive(Clone)]
struct Method {
    name: String,
    config: GenerateConfig,
    /// Match the wall-clock of this method (by name) instead of its step count.
    equal_time_to: Option<String>,
}

#[derive(Default, Clone)]
struct Score {
    runs: usize,
    retrieved_views: usize,
    views: usize,
    clip_score: f32,
    seconds: f64,
    steps: usize,
    /// Objects whose colour took the asked-for shape (the CLIP-free shape check), of those
    /// checked.
    shapes_right: usize,
    shapes: usize,
    /// Sum over the checked objects of the asked-for shape's fit error.
    shape_error: f32,
}

impl Score {
    fn add(&mut self, run: &Run) {
        self.runs += 1;
        self.views += run.views;
        self.retrieved_views += run.retrieved_views;
        self.clip_score += run.clip_score;
        self.seconds += run.seconds;
        self.steps += run.steps;
        self.shapes_right += run.shapes_right;
        self.shapes += run.shapes;
        self.shape_error += run.shape_error;
    }
}

/// Generates one asset under `config` and judges its 8 views (added to `sheet`); the run's
/// labels (settings, scene, group, method) are left for the caller to fill.
fn run_one<B: EngineAutodiffBackend>(
    config: &GenerateConfig,
    composition: &Composition,
    judge: &Judge<B::InnerBackend>,
    device: &B::Device,
    sheet: &mut Vec<RgbImage>,
) -> Result<Run> {
    let guidance = load_guidance::<B>(config, device)?;
    let start = Instant::now();
    let mut generator = Generator::<B>::new(config.clone(), guidance, device)?;
    generator.run(&AtomicBool::new(false), &mut |_| {})?;
    let seconds = start.elapsed().as_secs_f64();
    let views: Vec<RgbImage> = generator.turntable(8, config.final_render_size())?;
    let images = RgbImage::to_tensor::<B::InnerBackend>(&views, device);
    let r = judge.retrieval(images, &vec![*composition; views.len()]);
    sheet.push(RgbImage::hstack(&views));
    // Compositions whose objects share a colour cannot be checked.
    let shapes = check_shapes(&generator.surface(&config.mesh)?.mesh, composition).ok();
    let (shapes_right, shapes, shape_error) = shapes.map_or((0, 0, 0.0), |check| {
        (
            check.correct(),
            check.objects.len(),
            // A missing colour counts as the worst error measured (1: the whole extent away).
            check
                .objects
                .iter()
                .map(|o| o.asked_error().unwrap_or(1.0))
                .sum::<f32>(),
        )
    });
    Ok(Run {
        settings: String::new(),
        scene: String::new(),
        caption: config.prompt.clone(),
        group: String::new(),
        seed: config.seed,
        method: String::new(),
        steps: config.steps,
        seconds,
        views: views.len(),
        retrieved_views: (r.top1 * views.len() as f32).round() as usize,
        clip_score: r.clip_score,
        shapes_right,
        shapes,
        shape_error,
    })
}

struct Bench {
    args: Args,
}

impl BackendTask for Bench {
    type Output = Result<String>;

    fn run<B: EngineAutodiffBackend>(self, device: B::Device) -> Result<String> {
        let args = self.args;
        let split = Split::shipped();
        let pick = |group: &[Composition]| -> Vec<Composition> {
            let pairs: Vec<Composition> = group.iter().copied().filter(|c| c.is_pair()).collect();
            let step = (pairs.len() / args.prompts.max(1)).max(1);
            pairs.into_iter().step_by(step).take(args.prompts).collect()
        };
        let prompts: Vec<(Composition, &str)> = if args.random_sample {
            random_captions(&split, args.prompts, args.sample_seed)
        } else if args.prompt.is_empty() {
            pick(&split.train)
                .into_iter()
                .map(|c| (c, "seen"))
                .chain(pick(&split.held_out).into_iter().map(|c| (c, "held-out")))
                .collect()
        } else {
            let mut given = Vec::new();
            for c in tiny_world_prompts(&args.prompt)? {
                let group = if split.held_out.contains(&c) {
                    "held-out"
                } else {
                    "seen"
                };
                given.push((c, group));
            }
            given
        };
        let seen = prompts.iter().filter(|p| p.1 == "seen").count();

        // `--strategy` names its RewardSDS rows, so their runs never mix with min_max's in a
        // journal.
        let strategy = match &args.strategy {
            Some(name) => Some(
                serde_json::from_value::<WeightStrategy>(serde_json::json!({ "type": name }))
                    .with_context(|| {
                        format!("--strategy {name:?}: one of min_max, softmax, best, uniform")
                    })?,
            ),
            None => None,
        };
        let reward_name = |n: usize| match &args.strategy {
            Some(name) => format!("RewardSDS N={n} {name}"),
            None => format!("RewardSDS N={n}"),
        };
        let mut methods = vec![Method {
            name: "SDS".into(),
            config: GenerateConfig::preset("fast-sds")?,
            equal_time_to: None,
        }];
        for &n in &args.n {
            let mut config = GenerateConfig::preset("fast")?;
            let reward = config.guidance.reward.as_mut().expect("fast uses rewards");
            reward.n_samples = n;
            if let Some(strategy) = strategy {
                reward.strategy = strategy;
            }
            methods.push(Method {
                name: reward_name(n),
                config,
                equal_time_to: None,
            });
        }
        if let Some(&n) = args.n.last().filter(|_| !args.no_equal_time) {
            methods.push(Method {
                name: format!("SDS, time of {}", reward_name(n).replace("RewardSDS ", "")),
                config: GenerateConfig::preset("fast-sds")?,
                equal_time_to: Some(reward_name(n)),
            });
        }

        for method in &mut methods {
            // The paper's methods: feedback only where asked, below.
            method.config.guidance.reward_feedback = None;
        }
        if let Some(scale) = args.reward_feedback {
            let with_feedback = |m: &Method| {
                let mut m = m.clone();
                m.name = format!("{} + feedback {scale}", m.name);
                m.config.guidance.reward_feedback = Some(RewardFeedbackConfig { scale });
                anyhow::Ok(m)
            };
            let sds = with_feedback(&methods[0])?;
            let reward_sds = args
                .n
                .first()
                .map(|_| with_feedback(&methods[1]))
                .transpose()?;
            methods.push(sds);
            methods.extend(reward_sds);
        }
        for method in &mut methods {
            if let Some(scale) = args.guidance_scale {
                method.config.guidance.guidance_scale = scale;
            }
            if let Some(end) = args.guidance_scale_end {
                method.config.guidance.guidance_scale_end = Some(end);
            }
            if let Some(weight) = args.generative_weight {
                method.config.guidance.generative_weight = weight;
            }
            if let Some(fraction) = args.csd_fraction {
                method.config.guidance.csd_fraction = fraction;
            }
            if let Some(factor) = args.learning_rate_end_factor {
                method.config.learning_rate_end_factor = factor;
            }
            if let Some(prior) = &args.prior {
                method.config.prior = prior.clone();
            }
        }

        let judge_dir = resolve_model("tiny-world-judge")?;
        let judge = Judge::<B::InnerBackend>::from_folder(&judge_dir, &device)?;
        let mut table = String::from(
            "| scene | method | steps/asset | judge R-precision (8 views) | judge CLIP score | wins vs SDS | shapes right (no CLIP) | asked-shape fit error | s/asset |\n|---|---|---|---|---|---|---|---|---|\n",
        );
        let settings = format!(
            "steps {} | cfg {:?} -> {:?} | generative weight {:?} | csd {:?} | lr end {:?} | prior {:?} | feedback {:?} | backend {}",
            args.steps,
            args.guidance_scale,
            args.guidance_scale_end,
            args.generative_weight,
            args.csd_fraction,
            args.learning_rate_end_factor,
            args.prior,
            args.reward_feedback,
            args.backend
        );
        let mut journal = Journal::open(args.journal.as_deref())?;
        let mut per_caption = String::from("| scene | caption | group |");
        for method in &methods {
            per_caption += &format!(" {} |", method.name);
        }
        per_caption += "\n|---|---|---|";
        per_caption += &"---|".repeat(methods.len());
        per_caption += "\n";
        for &scene in &args.scenes {
            let mut scores: Vec<Score> = vec![Score::default(); methods.len()];
            // Per prompt and seed: judge CLIP score of each method, for wins.
            let mut per_run: Vec<Vec<f32>> = Vec::new();
            let mut sheet: Vec<RgbImage> = Vec::new();
            for (composition, group) in &prompts {
                let caption = composition.caption();
                let mut caption_scores: Vec<Score> = vec![Score::default(); methods.len()];
                for seed in args.first_seed..args.first_seed + args.seeds {
                    let mut row = Vec::new();
                    for (m, method) in methods.iter().enumerate() {
                        let done = journal
                            .find(&settings, scene.name(), &caption, seed, &method.name)
                            .cloned();
                        let from_journal = done.is_some();
                        let run = match done {
                            Some(run) => run,
                            None => {
                                let mut config = method.config.clone();
                                config.scene = scene;
                                config.prompt = caption.clone();
                                config.seed = seed;
                                config.snapshot_every = 0;
                                config.steps = args.steps;
                                if let Some(other) = &method.equal_time_to {
                                    let o = methods
                                        .iter()
                                        .position(|x| &x.name == other)
                                        .expect("listed");
                                    let per_step_other =
                                        scores[o].seconds / scores[o].steps.max(1) as f64;
                                    let per_step_sds =
                                        scores[0].seconds / scores[0].steps.max(1) as f64;
                                    config.steps = ((args.steps as f64 * per_step_other
                                        / per_step_sds)
                                        .round()
                                        as usize)
                                        .max(1);
                                }
                                let run = run_one::<B>(
                                    &config,
                                    composition,
                                    &judge,
                                    &device,
                                    &mut sheet,
                                )?;
                                let run = Run {
                                    settings: settings.clone(),
                                    scene: scene.name().into(),
                                    group: group.to_string(),
                                    method: method.name.clone(),
                                    ..run
                                };
                                journal.record(run.clone())?;
                                run
                            }
                        };
                        scores[m].add(&run);
                        caption_scores[m].add(&run);
                        row.push(run.clip_score);
                        eprintln!(
                            "{} {group:>8} {:<45} seed {seed} {:<20} top-1 {:.2} clip {:>6.2} {:>6.1}s  shapes: {}{}",
                            scene.name(),
                            caption,
                            method.name,
                            run.retrieved_views as f32 / run.views.max(1) as f32,
                            run.clip_score,
                            run.seconds,
                            if run.shapes == 0 {
                                "not checked".to_string()
                            } else {
                                format!("{}/{} right", run.shapes_right, run.shapes)
                            },
                            if from_journal { "  (journal)" } else { "" }
                        );
                    }
                    per_run.push(row);
                }
                per_caption += &format!("| {} | {caption} | {group} |", scene.name());
                for s in &caption_scores {
                    per_caption += &format!(" {}/{} views", s.retrieved_views, s.views);
                    if s.shapes > 0 {
                        per_caption += &format!(", {}/{} shapes", s.shapes_right, s.shapes);
                    }
                    per_caption += " |";
                }
                per_caption += "\n";
            }
            if let Some(dir) = &args.images {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let path = dir.join(format!("{}.png", scene.name()));
                RgbImage::vstack(&sheet)
                    .save_png(&path)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            for (m, method) in methods.iter().enumerate() {
                let s = &scores[m];
                let wins = per_run.iter().filter(|r| r[m] > r[0]).count();
                table += &format!(
                    "| {} | {} | {} | {:.1}% | {:.2} | {} | {}/{} | {:.3} | {:.1} |\n",
                    scene.name(),
                    method.name,
                    s.steps / s.runs.max(1),
                    100.0 * s.retrieved_views as f32 / s.views.max(1) as f32,
                    s.clip_score / s.runs.max(1) as f32,
                    if m == 0 {
                        "-".to_string()
                    } else {
                        format!("{wins}/{}", per_run.len())
                    },
                    s.shapes_right,
                    s.shapes,
                    s.shape_error / s.shapes.max(1) as f32,
                    s.seconds / s.runs.max(1) as f64
                );
            }
        }
        table += "\nPer caption (views the judge read as the caption, and objects of the right shape, over the seeds):\n\n";
        table += &per_caption;
        Ok(format!(
            "Prompts: {} ({} seen, {} held-out compositions) x {} seeds (from {}); prior {}, CFG {}{}, generative weight {} (CSD for the first {} of the steps), learning rates to x{} by the last step; chance R-precision {:.2}%.\n\n{table}",
            prompts.len(),
            seen,
            prompts.len() - seen,
            args.seeds,
            args.first_seed,
            methods[0].config.prior,
            methods[0].config.guidance.guidance_scale,
            methods[0]
                .config
                .guidance
                .guidance_scale_end
                .map(|end| format!(" -> {end}"))
                .unwrap_or_default(),
            methods[0].config.guidance.generative_weight,
            methods[0].config.guidance.csd_fraction,
            methods[0].config.learning_rate_end_factor,
            100.0 / Composition::all().len() as f32
        ))
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
