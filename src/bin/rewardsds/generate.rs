//! `rewardsds generate`: prompt -> 3D asset (.glb), headless.
//!
//! Runs on the CPU with the built-in Tiny World prior by default; `--preset mvdream --backend
//! cuda` for the paper's setup on a GPU. Checkpoints (NeRF or Gaussians) go to
//! `<out>/checkpoint` every `--checkpoint-every` steps; `--resume <out>/checkpoint` continues an
//! interrupted run exactly; `--resume <dir> --export-only` writes what a checkpoint holds
//! (mesh, turntable, the judge's reading) without further steps. `--json` prints one JSON
//! event per line on stdout (loaded, progress, checkpoint, wrote, done) for other tools; the
//! human-readable lines then go to stderr.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rewardsds::engine::backend::{BackendKind, BackendTask, EngineAutodiffBackend, run_on};
use rewardsds::engine::burn::tensor::Tensor;
use rewardsds::engine::export::write_splat_ply;
use rewardsds::engine::generate::{
    GenerateConfig, GenerateError, GenerateEvent, Generator, Progress, SceneKind,
    checkpoint_config, slug,
};
use rewardsds::engine::guidance::RewardFeedbackConfig;
use rewardsds::engine::rgb_image::RgbImage;
use rewardsds::engine::tiny_world::evaluate::Judge;
use rewardsds::engine::tiny_world::shape_check::check_shapes;
use rewardsds::engine::tiny_world::{Composition, Split};
use rewardsds::engine::weights::resolve_model;
use serde_json::json;

use crate::Failure;

/// The prompt when neither `--prompt` nor a config gives one.
const DEFAULT_PROMPT: &str = "a blue cone on top of an orange cylinder";

/// `rewardsds generate` options; each overrides the preset or config file.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// What to make [default: the config's prompt, else "a blue cone on top of an orange cylinder"].
    #[arg(long)]
    prompt: Option<String>,
    /// Preset: fast, quality, sd21, mvdream, mvdream-fast; add -sds for plain SDS (fast-sds).
    /// docs/presets.md says where each one's values come from.
    #[arg(long, default_value = "fast")]
    preset: String,
    /// A TOML config (a saved `config.toml`), instead of the preset.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Diffusion prior: preset, folder or repo id.
    #[arg(long)]
    prior: Option<String>,
    /// Reward model for RewardSDS: preset, folder or repo id.
    #[arg(long)]
    reward: Option<String>,
    /// Decoder of RewardSDS's scored samples instead of the prior's VAE: `taesd` or a folder
    /// of a diffusers AutoencoderTiny (`score_decoder`).
    #[arg(long)]
    score_decoder: Option<String>,
    /// Optimisation steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Scene representation: nerf or gaussians (the preset's or config's when unset).
    #[arg(long)]
    scene: Option<SceneKind>,
    /// Steps between checkpoints in `<out>/checkpoint`, 0 for none (the preset's or
    /// config's when unset).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Weight of the reward's own gradient (`guidance.reward_feedback.scale`); 0 turns it
    /// off (the preset's or config's when unset).
    #[arg(long)]
    reward_feedback: Option<f32>,
    /// CFG scale at the last step, reached linearly from the preset's
    /// (`guidance.guidance_scale_end`; the preset's or config's when unset).
    #[arg(long)]
    guidance_scale_end: Option<f32>,
    /// Weight of SDS's generative term beside the classifier term
    /// (`guidance.generative_weight`; 0 is classifier score distillation; the preset's or
    /// config's when unset).
    #[arg(long)]
    generative_weight: Option<f32>,
    /// Share of the steps run as classifier score distillation before the generative term
    /// applies (`guidance.csd_fraction`; the preset's or config's when unset).
    #[arg(long)]
    csd_fraction: Option<f32>,
    /// The NeRF's learning rates at the last step as a fraction of the first
    /// (`learning_rate_end_factor`; the preset's or config's when unset).
    #[arg(long)]
    learning_rate_end_factor: Option<f64>,
    /// Backend: cpu, wgpu or cuda (when unset: the config's `backend`, else cpu).
    #[arg(long)]
    backend: Option<String>,
    /// Output folder (default `out/generate/<slug>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run checkpointed in this folder, with its exact config (the options
    /// above that change the config are not allowed with it).
    #[arg(long, conflicts_with_all = ["prompt", "preset", "config", "prior", "reward", "score_decoder", "steps", "seed", "scene", "checkpoint_every", "reward_feedback", "guidance_scale_end", "generative_weight", "csd_fraction", "learning_rate_end_factor"])]
    resume: Option<PathBuf>,
    /// With `--resume`: export the checkpoint's state as it stands (.glb, turntable, the
    /// judge's reading) and run none of the steps left: a stopped run's result, or how far a
    /// run had come at an earlier checkpoint.
    #[arg(long, requires = "resume")]
    export_only: bool,
    /// One JSON event per line on stdout (`{"event": "progress", ...}`) instead of the progress
    /// bar; the human-readable lines go to stderr.
    #[arg(long)]
    json: bool,
}

struct Generate {
    config: GenerateConfig,
    out: PathBuf,
    resume: Option<PathBuf>,
    export_only: bool,
    report: Report,
}

/// Where the run's words go: stdout for a person, or stderr beside JSON events on stdout.
#[derive(Clone, Copy)]
struct Report {
    json: bool,
}

impl Report {
    /// A line for a person.
    fn say(&self, line: impl std::fmt::Display) {
        if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }

    /// One JSON event (only with `--json`).
    fn event(&self, event: serde_json::Value) {
        if self.json {
            println!("{event}");
        }
    }
}

impl BackendTask for Generate {
    type Output = Result<()>;

    fn run<B: EngineAutodiffBackend>(self, device: B::Device) -> Result<()> {
        let Generate {
            config,
            out,
            resume,
            export_only,
            report,
        } = self;
        let start = Instant::now();
        let mut generator = match &resume {
            Some(dir) => Generator::<B>::resume(dir, &device)
                .with_context(|| format!("resuming from {}", dir.display()))?,
            None => {
                let mut g = Generator::<B>::load(config.clone(), &device)
                    .context("loading the prior and reward")?;
                g.checkpoint_to(out.join("checkpoint"));
                g
            }
        };
        report.event(json!({
            "event": "loaded",
            "prior": config.prior,
            "seconds": start.elapsed().as_secs_f64(),
            "steps_done": generator.steps_done(),
            "steps": config.steps,
        }));
        report.say(format!(
            "loaded {} in {:.1}s{}",
            config.prior,
            start.elapsed().as_secs_f64(),
            match &resume {
                Some(dir) => format!(
                    "; resuming at step {} from {}",
                    generator.steps_done(),
                    dir.display()
                ),
                None => String::new(),
            }
        ));
        // No bar beside JSON events (indicatif also hides it when stderr is not a terminal).
        let bar = if report.json {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(config.steps as u64)
        };
        bar.set_position(generator.steps_done() as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]")
                .expect("a valid template"),
        );
        let mut log: Vec<Progress> = Vec::new();
        // Raised from the start, the run stops before its first step.
        let cancel = AtomicBool::new(export_only);
        if export_only {
            report.say(format!(
                "exporting the state at step {} of {} (--export-only)",
                generator.steps_done(),
                config.steps
            ));
        }
        let mut snapshot_error = None;
        let optimise_start = Instant::now();
        generator.run(&cancel, &mut |event| match event {
            GenerateEvent::Progress(p) => {
                let reward = p
                    .reward_stats()
                    .map(|(lo, mean, hi)| format!(" reward {lo:.1}/{mean:.1}/{hi:.1}"))
                    .unwrap_or_default();
                bar.set_message(format!("loss {:.4} t {:>3}{reward}", p.loss, p.t));
                bar.inc(1);
                if report.json {
                    let mut event = serde_json::to_value(&p).unwrap_or_default();
                    event["event"] = "progress".into();
                    report.event(event);
                }
                log.push(p);
            }
            GenerateEvent::Snapshot { preview, .. } => {
                if let Err(e) = preview.save_png(out.join("preview.png")) {
                    snapshot_error = Some(e);
                }
            }
            GenerateEvent::Checkpoint { step, path } => {
                report.event(json!({"event": "checkpoint", "step": step, "path": path}));
                bar.println(format!("step {step}: checkpoint {}", path.display()));
            }
        })?;
        bar.finish();
        if let Some(e) = snapshot_error {
            eprintln!("warning: could not save the preview: {e}");
        }
        // The steps alone: loading the models is not a step's cost.
        let optimise = optimise_start.elapsed().as_secs_f64();

        let glb = out.join(format!("{}.glb", slug(&config.prompt)));
        let (export, mesh) = generator.export_glb(&glb).context("exporting the mesh")?;
        report.event(json!({
            "event": "wrote",
            "path": glb,
            "bytes": export.bytes,
            "triangles": export.triangles,
        }));
        report.say(format!(
            "wrote {} ({} triangles, {} KiB; iso-level {:.2}, extraction {:.1}s)",
            glb.display(),
            export.triangles,
            export.bytes / 1024,
            mesh.report.iso_level,
            {
                let t = &mesh.report.timings;
                (t.sample + t.extract + t.cleanup + t.simplify + t.color).as_secs_f64()
            }
        ));
        if let Some(gaussians) = generator.gaussians() {
            let ply = out.join(format!("{}.ply", slug(&config.prompt)));
            write_splat_ply(&gaussians.to_cloud(), &ply).context("writing the splat cloud")?;
            report.event(json!({"event": "wrote", "path": ply, "gaussians": gaussians.len()}));
            report.say(format!(
                "wrote {} ({} Gaussians)",
                ply.display(),
                gaussians.len()
            ));
        }
        // The size the last steps trained at: the result's resolution.
        let views = generator.turntable(8, config.final_render_size())?;
        RgbImage::hstack(&views)
            .save_png(out.join("turntable.png"))
            .context("saving the turntable")?;
        // An export ran no step: the run's own log stays.
        if !export_only {
            std::fs::write(out.join("progress.json"), serde_json::to_string(&log)?)?;
        }
        // The built-in prior's judge, or the judge inside a folder of its layout (a retrained
        // copy).
        let judge_dir = if config.prior == "tiny-world" {
            Some(resolve_model("tiny-world-judge")?)
        } else {
            Some(std::path::Path::new(&config.prior).join("judge")).filter(|dir| dir.is_dir())
        };
        if let Some(dir) = judge_dir {
            judge_views::<B::InnerBackend>(report, &config.prompt, &views, &dir, &device)?;
        }
        if let Some(target) = Composition::parse(&config.prompt) {
            // Whether the shipped prior ever saw this composition (a retrained copy may split
            // otherwise, so only the shipped one is named).
            if config.prior == "tiny-world" {
                let seen = if Split::shipped().is_held_out(&target) {
                    "held-out: the prior never saw this composition, only its parts"
                } else {
                    "seen in the prior's training captions"
                };
                report.say(format!("composition: {seen}"));
            }
            // Geometry, read without a CLIP: which shape each colour of the prompt took.
            match check_shapes(&mesh.mesh, &target) {
                Ok(check) => report.say(format!("shapes (no CLIP): {check}")),
                Err(e) => report.say(format!("shapes (no CLIP): skipped, {e}")),
            }
        }
        // Per step this call ran: a resumed run's own, none for an export.
        let per_step = match log.len() {
            0 => String::new(),
            n => format!(" ({:.2}s per step)", optimise / n as f64),
        };
        report.event(json!({
            "event": "done",
            "glb": glb,
            "seconds": start.elapsed().as_secs_f64(),
            "steps_run": log.len(),
        }));
        report.say(format!(
            "done in {:.1}s{per_step}",
            start.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}

/// The Tiny World judge's view of the result: which caption each of the 8 renders matches.
fn judge_views<B: rewardsds::engine::burn::tensor::backend::Backend>(
    report: Report,
    prompt: &str,
    views: &[RgbImage],
    judge_dir: &std::path::Path,
    device: &B::Device,
) -> Result<()> {
    let Some(target) = Composition::parse(prompt) else {
        report.say("judge: the prompt is not a Tiny World caption; skipped");
        return Ok(());
    };
    let judge = Judge::<B>::from_folder(judge_dir, device)
        .with_context(|| format!("loading the judge {}", judge_dir.display()))?;
    let images: Tensor<B, 4> = RgbImage::to_tensor(views, device);
    let targets = vec![target; views.len()];
    let r = judge.retrieval(images.clone(), &targets);
    report.event(json!({
        "event": "judge",
        "views": r.images,
        "top1": r.top1,
        "top5": r.top5,
        "clip_score": r.clip_score,
    }));
    report.say(format!(
        "judge: {:.0}% of {} views retrieve the prompt among all captions (top-5 {:.0}%), judge CLIP score {:.1}",
        100.0 * r.top1,
        r.images,
        100.0 * r.top5,
        r.clip_score
    ));
    let readings: Vec<String> = judge
        .readings(images)
        .iter()
        .map(Composition::caption)
        .collect();
    report.say(format!(
        "judge reads, view by view: {}",
        readings.join("; ")
    ));
    Ok(())
}

/// Runs `rewardsds generate`; the exit code on success is 0.
pub fn run(args: Args) -> Result<u8, Failure> {
    let report = Report { json: args.json };
    // An explicit flag wins over the config's `backend`; neither: the CPU, which always works.
    let flag: Option<BackendKind> = args
        .backend
        .as_deref()
        .map(str::parse)
        .transpose()
        .context("--backend")
        .map_err(Failure::bad_input)?;
    let backend_for = |config: &GenerateConfig| flag.or(config.backend).unwrap_or_default();
    if let Some(dir) = &args.resume {
        let config = checkpoint_config(dir)
            .with_context(|| format!("--resume {}", dir.display()))
            .map_err(Failure::bad_input)?;
        let kind = backend_for(&config);
        let out = args
            .out
            .unwrap_or_else(|| PathBuf::from("out/generate").join(slug(&config.prompt)));
        create_out(&out)?;
        let resume = Some(dir.clone());
        run_on(
            kind,
            Generate {
                config,
                out,
                resume,
                export_only: args.export_only,
                report,
            },
        )
        .map_err(Failure::bad_input)?
        .map_err(classify)?;
        return Ok(0);
    }
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))
                .map_err(Failure::bad_input)?;
            // Validated below, once the command line's options are in (a prompt among them).
            let mut c: GenerateConfig = toml::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))
                .map_err(Failure::bad_input)?;
            if c.prompt.is_empty() {
                c.prompt = DEFAULT_PROMPT.into();
            }
            c
        }
        None => GenerateConfig {
            prompt: DEFAULT_PROMPT.into(),
            ..GenerateConfig::preset(&args.preset).map_err(Failure::bad_input)?
        },
    };
    // An explicit `--prompt` wins over a config's, as every other option does.
    if let Some(prompt) = args.prompt {
        config.prompt = prompt;
    }
    if let Some(prior) = args.prior {
        config.prior = prior;
    }
    if let Some(reward) = args.reward {
        config.reward = Some(reward);
    }
    if let Some(decoder) = args.score_decoder {
        config.score_decoder = Some(decoder);
    }
    if let Some(steps) = args.steps {
        config.steps = steps;
        // A shorter run than the preset's: its resolution milestones past the end never come
        // (`mvdream` switches to 256 px at step 5000), so they go, with a word.
        let (kept, dropped): (Vec<_>, Vec<_>) = std::mem::take(&mut config.resolution_milestones)
            .into_iter()
            .partition(|m| m.step < steps);
        for m in &dropped {
            log::warn!(
                "--steps {steps}: the resolution milestone at step {} ({} px) is past the end; dropped",
                m.step,
                m.size
            );
        }
        config.resolution_milestones = kept;
    }
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    if let Some(scene) = args.scene {
        config.scene = scene;
    }
    if let Some(every) = args.checkpoint_every {
        config.checkpoint_every = every;
    }
    if let Some(end) = args.guidance_scale_end {
        config.guidance.guidance_scale_end = Some(end);
    }
    if let Some(weight) = args.generative_weight {
        config.guidance.generative_weight = weight;
    }
    if let Some(fraction) = args.csd_fraction {
        config.guidance.csd_fraction = fraction;
    }
    if let Some(factor) = args.learning_rate_end_factor {
        config.learning_rate_end_factor = factor;
    }
    if let Some(scale) = args.reward_feedback {
        config.guidance.reward_feedback = (scale != 0.0).then_some(RewardFeedbackConfig { scale });
    }
    let kind = backend_for(&config);
    // config.toml records the backend that ran, so it reruns the same way.
    config.backend = Some(kind);
    config.validate().map_err(Failure::bad_input)?;
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from("out/generate").join(slug(&config.prompt)));
    create_out(&out)?;
    let toml = out.join("config.toml");
    std::fs::write(&toml, config.to_toml())
        .with_context(|| format!("writing {}", toml.display()))
        .map_err(Failure::bad_input)?;
    let result = run_on(
        kind,
        Generate {
            config,
            out,
            resume: None,
            export_only: false,
            report,
        },
    )
    .map_err(Failure::bad_input)?;
    result.map_err(classify)?;
    Ok(0)
}

/// A config the generator refused before running (e.g. one that would not fit in memory) is
/// bad input; anything else failed while running.
fn classify(error: anyhow::Error) -> Failure {
    let refused = error
        .chain()
        .any(|e| matches!(e.downcast_ref(), Some(GenerateError::Config(_))));
    if refused {
        Failure::bad_input(error)
    } else {
        error.into()
    }
}

/// The output folder, created; one that cannot be is bad input (nothing has run).
fn create_out(out: &std::path::Path) -> Result<(), Failure> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("creating the output folder {}", out.display()))
        .map_err(Failure::bad_input)
}
