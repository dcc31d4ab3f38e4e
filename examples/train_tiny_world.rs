//! Trains the Tiny World prior, reward and judge, and measures the prior with the judge.
//!
//! GPU (the shipped models, ~8 min on an H100):
//! `cargo run --release --no-default-features --features cuda --example train_tiny_world -- --backend cuda`
//! CPU (smaller models, ~2 h on 2 cores): `cargo run --release --example train_tiny_world -- --preset cpu`

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;
use rewardsds::engine::backend::{BackendKind, BackendTask, EngineAutodiffBackend, run_on};
use rewardsds::engine::models::schedulers::PredictionType;
use rewardsds::engine::tiny_world::recipe::{
    Phases, RecipeConfig, RecipeError, RecipeEvent, run_recipe,
};
use rewardsds::engine::tiny_world::train::PhaseConfig;

/// Command-line options.
#[derive(Parser, Debug, Clone)]
#[command(about = "Train the Tiny World models (prior, reward, judge) and evaluate the prior")]
struct Args {
    /// Backend: cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Preset: gpu (shipped sizes), cpu (smaller models), test (seconds).
    #[arg(long, default_value = "gpu")]
    preset: String,
    /// Output folder (the shipped one is assets/models/tiny-world).
    #[arg(long, default_value = "out/tiny-world")]
    out: PathBuf,
    /// Phases to run, comma-separated: reward, judge, unet, eval (others are loaded from --out).
    #[arg(long, default_value = "reward,judge,unet,eval")]
    phases: String,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Multiply every phase's time budget by this.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Threads for rendering the data (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Start the UNet from this folder's weights (e.g. assets/models/tiny-world/unet) instead
    /// of a random initialisation.
    #[arg(long)]
    init_unet: Option<PathBuf>,
    /// Start the judge CLIP from this folder's weights (e.g. assets/models/tiny-world/judge)
    /// instead of a random initialisation.
    #[arg(long)]
    init_judge: Option<PathBuf>,
    /// Probability that a judge batch pairs a two-colour, two-shape caption with its binding
    /// swap ("a blue cube and a red sphere" beside "a red cube and a blue sphere"); default 0.
    #[arg(long)]
    judge_binding_swaps: Option<f32>,
    /// Judge CLIP batch size (default: the preset's).
    #[arg(long)]
    judge_batch: Option<usize>,
    /// Peak learning rate of the judge CLIP (default: the preset's).
    #[arg(long)]
    judge_learning_rate: Option<f64>,
    /// Train the judge CLIP exactly this many steps, whatever the time (default: the preset's
    /// time budget decides), so a continuation repeats on a busier or faster machine.
    #[arg(long)]
    judge_steps: Option<usize>,
    /// Train the UNet exactly this many steps, whatever the time (default: the preset's time
    /// budget decides), so a continuation repeats on a busier or faster machine.
    #[arg(long)]
    unet_steps: Option<usize>,
    /// UNet batch size (default: the preset's).
    #[arg(long)]
    unet_batch: Option<usize>,
    /// Peak learning rate of the UNet (default: the preset's; lower it to continue a trained
    /// UNet with --init-unet).
    #[arg(long)]
    unet_learning_rate: Option<f64>,
    /// Min-SNR-gamma loss weighting of the UNet (5 is the paper's choice; default: the
    /// preset's; 0 turns it off).
    #[arg(long)]
    snr_gamma: Option<f32>,
    /// What the UNet predicts: epsilon or v_prediction (default: the preset's). Continuing
    /// an epsilon UNet with v_prediction fine-tunes it to the new objective.
    #[arg(long)]
    prediction_type: Option<String>,
    /// Condition the UNet on the camera (azimuth, elevation) as well as the caption; with
    /// --init-unet from a UNet without it, the camera embedding starts at zero.
    #[arg(long)]
    camera_conditioning: bool,
    /// The camera embedding's learning rate as a multiple of the UNet's (with
    /// --camera-conditioning; default 1): continuing a trained UNet at a low rate, the
    /// zero-initialised embedding needs a larger one to be learned at all.
    #[arg(long)]
    camera_learning_rate_factor: Option<f64>,
    /// Cap of the UNet weights' moving average (default: the preset's; 0 turns it off).
    #[arg(long)]
    ema_decay: Option<f32>,
    /// Captions per group (held-out, seen) the evaluation samples (default: the preset's).
    #[arg(long)]
    eval_prompts: Option<usize>,
    /// DDIM steps of the evaluation's samples (default: the preset's).
    #[arg(long)]
    eval_steps: Option<usize>,
    /// Classifier-free guidance scale of the evaluation's samples (default: the preset's).
    #[arg(long)]
    eval_guidance_scale: Option<f32>,
    /// Training log (JSON lines); default `<out>/training_log.jsonl`, or `<out>/eval_log.jsonl`
    /// for an evaluation alone (which keeps the log of the training that made the folder).
    #[arg(long)]
    log: Option<PathBuf>,
}

struct Train {
    config: RecipeConfig,
    phases: Phases,
    args: Args,
}

impl BackendTask for Train {
    type Output = Result<(), RecipeError>;

    fn run<B: EngineAutodiffBackend>(self, device: B::Device) -> Self::Output {
        let log_path = self
            .args
            .log
            .clone()
            .unwrap_or_else(|| self.args.out.join(default_log(&self.phases)));
        std::fs::create_dir_all(&self.args.out).ok();
        let mut log = std::fs::File::create(&log_path).ok();
        let threads = self
            .args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let mut on_event = |event: &RecipeEvent| {
            match event {
                RecipeEvent::Step(e) => {
                    let every = (e.steps / 40).max(1);
                    if e.step % every == 0 || e.step == e.steps {
                        println!(
                            "{:>6} {:>6}/{:<6} loss {:.4} lr {:.2e} {:.1}s",
                            e.phase, e.step, e.steps, e.loss, e.learning_rate, e.seconds
                        );
                        if let Some(f) = log.as_mut() {
                            writeln!(f, "{}", serde_json::to_string(e).unwrap_or_default()).ok();
                        }
                    }
                }
                other => {
                    println!("{}", serde_json::to_string(other).unwrap_or_default());
                    if let Some(f) = log.as_mut() {
                        writeln!(f, "{}", serde_json::to_string(other).unwrap_or_default()).ok();
                    }
                }
            }
            std::io::stdout().flush().ok();
        };
        run_recipe::<B>(
            &self.config,
            self.phases,
            &self.args.out,
            threads,
            &device,
            &mut on_event,
        )
        .map(|_| ())
    }
}

/// Fixes a phase at `steps` steps with no time limit, and the warm-up a time-cut run of that
/// length gets (at most a tenth), so the run repeats whatever the machine's speed.
fn fix_steps(phase: &mut PhaseConfig, steps: usize, flag: &str) -> Result<()> {
    if steps == 0 {
        bail!("{flag} must be at least 1");
    }
    phase.steps = steps;
    phase.warmup_steps = phase.warmup_steps.min((steps / 10).max(1));
    phase.max_seconds = 1e9;
    Ok(())
}

/// The log's file name in `--out`: an evaluation alone keeps the training's log.
fn default_log(phases: &Phases) -> &'static str {
    if phases.trains() {
        "training_log.jsonl"
    } else {
        "eval_log.jsonl"
    }
}

#[path = "common/logging.rs"]
mod logging;

fn main() -> Result<()> {
    logging::init();
    let args = Args::parse();
    let mut config = match args.preset.as_str() {
        "gpu" => RecipeConfig::gpu(),
        "cpu" => RecipeConfig::cpu(),
        "test" => RecipeConfig::test(),
        other => bail!("unknown --preset `{other}` (gpu, cpu or test)"),
    };
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    if let Some(dir) = &args.init_unet {
        if !dir.join("config.json").is_file() {
            bail!(
                "--init-unet {}: not a UNet folder (no config.json)",
                dir.display()
            );
        }
        config.unet.init_from = Some(dir.clone());
    }
    if let Some(dir) = &args.init_judge {
        if !dir.join("config.json").is_file() {
            bail!(
                "--init-judge {}: not a CLIP folder (no config.json)",
                dir.display()
            );
        }
        config.judge_training.init_from = Some(dir.clone());
    }
    if let Some(p) = args.judge_binding_swaps {
        if !(0.0..=1.0).contains(&p) {
            bail!("--judge-binding-swaps {p}: must be a probability in [0, 1]");
        }
        config.judge_training.binding_swaps = p;
    }
    if let Some(batch) = args.judge_batch {
        if batch < 2 {
            bail!("--judge-batch must be at least 2 (a contrastive batch)");
        }
        config.judge.batch_size = batch;
    }
    if let Some(lr) = args.judge_learning_rate {
        if !(lr.is_finite() && lr > 0.0) {
            bail!("--judge-learning-rate {lr}: must be a finite number > 0");
        }
        config.judge.learning_rate = lr;
    }
    if let Some(batch) = args.unet_batch {
        if batch == 0 {
            bail!("--unet-batch must be at least 1");
        }
        config.unet.phase.batch_size = batch;
    }
    if let Some(lr) = args.unet_learning_rate {
        if !(lr.is_finite() && lr > 0.0) {
            bail!("--unet-learning-rate {lr}: must be a finite number > 0");
        }
        config.unet.phase.learning_rate = lr;
    }
    if let Some(gamma) = args.snr_gamma {
        if !(gamma.is_finite() && gamma >= 0.0) {
            bail!("--snr-gamma {gamma}: must be a finite number >= 0");
        }
        config.unet.snr_gamma = (gamma > 0.0).then_some(gamma);
    }
    if let Some(name) = &args.prediction_type {
        config.unet.prediction_type = match name.as_str() {
            "epsilon" => PredictionType::Epsilon,
            "v_prediction" => PredictionType::VPrediction,
            other => bail!("unknown --prediction-type `{other}` (epsilon or v_prediction)"),
        };
    }
    config.unet.camera_conditioning = args.camera_conditioning;
    if let Some(factor) = args.camera_learning_rate_factor {
        if !(factor.is_finite() && factor > 0.0) || !args.camera_conditioning {
            bail!(
                "--camera-learning-rate-factor {factor}: must be a finite number > 0, \
                 with --camera-conditioning"
            );
        }
        config.unet.camera_learning_rate_factor = factor;
    }
    if let Some(decay) = args.ema_decay {
        if !(0.0..1.0).contains(&decay) {
            bail!("--ema-decay {decay}: must be in [0, 1)");
        }
        config.unet.ema_decay = decay;
    }
    if let Some(n) = args.eval_prompts {
        if n == 0 {
            bail!("--eval-prompts must be at least 1");
        }
        config.eval_prompts = n;
    }
    if let Some(steps) = args.eval_steps {
        if steps == 0 {
            bail!("--eval-steps must be at least 1");
        }
        config.eval_steps = steps;
    }
    if let Some(scale) = args.eval_guidance_scale {
        if !scale.is_finite() || scale < 0.0 {
            bail!("--eval-guidance-scale {scale}: must be a finite number >= 0");
        }
        config.eval_guidance_scale = scale;
    }
    for phase in [
        &mut config.reward,
        &mut config.judge,
        &mut config.unet.phase,
    ] {
        phase.max_seconds *= args.time_scale;
    }
    if let Some(steps) = args.judge_steps {
        fix_steps(&mut config.judge, steps, "--judge-steps")?;
    }
    if let Some(steps) = args.unet_steps {
        fix_steps(&mut config.unet.phase, steps, "--unet-steps")?;
    }
    let mut phases = Phases::default();
    for name in args
        .phases
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match name {
            "reward" => phases.reward = true,
            "judge" => phases.judge = true,
            "unet" => phases.unet = true,
            "eval" => phases.eval = true,
            other => bail!("unknown phase `{other}` in --phases (reward, judge, unet, eval)"),
        }
    }
    let kind: BackendKind = args.backend.parse().context("--backend")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    // An evaluation alone must not overwrite the record of the training that made the folder.
    let config_path = args.out.join(if phases.trains() {
        "training_config.json"
    } else {
        "eval_config.json"
    });
    std::fs::write(&config_path, serde_json::to_string_pretty(&config)?)
        .with_context(|| format!("writing {}", config_path.display()))?;
    run_on(
        kind,
        Train {
            config,
            phases,
            args,
        },
    )??;
    Ok(())
}
