//! `rewardsds bench`: seconds per step of the real-model presets on this machine, measured
//! beside the cost model's prediction: each preset's generator is built, runs its first steps
//! on the chosen backend, and a Markdown table compares the measured step times with what the
//! cost model predicts for the same steps on an H100 at PyTorch fp16 speed. Each row is
//! printed when its preset finishes.
//!
//! The models are the presets' own (the local cache; downloaded if missing), or those in
//! `--models`. With `--random-weights` that folder needs only the config files (see
//! tools/gpu/write_model_configs.py): every model keeps its random initial weights, so a GPU
//! machine without the real weights times the real architectures; the losses mean nothing.
//!
//! ```sh
//! python3 tools/gpu/write_model_configs.py --out /tmp/models
//! rewardsds bench --backend cuda --models /tmp/models --random-weights --steps 3
//! # plumbing check on a CPU in about a minute: tiny configs, a tiny scene
//! python3 tools/gpu/write_model_configs.py --out /tmp/models-tiny --tiny
//! rewardsds bench --models /tmp/models-tiny --random-weights --small
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rewardsds::engine::backend::{BackendKind, BackendTask, EngineAutodiffBackend, run_on};
use rewardsds::engine::cost::{CostModels, run_cost, steps_cost};
use rewardsds::engine::generate::{GenerateConfig, Generator};
use rewardsds::engine::weights::set_random_init_for_benchmarks;

use crate::Failure;

/// `rewardsds bench` options.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Presets to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sd21-sds,sd21,mvdream-sds,mvdream,mvdream-fast"
    )]
    preset: Vec<String>,
    /// Backend (cpu, wgpu, cuda).
    #[arg(long, default_value = "cpu")]
    backend: BackendKind,
    /// Folder holding `sd21-base/`, `mvdream/`, `image-reward/` and `taesd/`: a preset's prior,
    /// reward and score decoder are taken from there instead of its own specs.
    #[arg(long)]
    models: Option<PathBuf>,
    /// Build every model from its config and keep its random initial weights (benchmarks
    /// only: no weight file is read).
    #[arg(long, requires = "models")]
    random_weights: bool,
    /// Steps to run per preset (the first one includes the backend's kernel compilation).
    #[arg(long, default_value_t = 2)]
    steps: usize,
    /// Stop a preset's steps once this many seconds have gone by (the table says how many ran).
    #[arg(long)]
    max_seconds: Option<f64>,
    /// A tiny scene (16 px renders, 16 samples per ray, a small hash grid): a plumbing check
    /// of the models and the guidance, not the presets' own cost.
    #[arg(long)]
    small: bool,
    /// Prompt.
    #[arg(long, default_value = "a wooden barrel with iron bands")]
    prompt: String,
}

/// One preset's measurement.
struct Row {
    preset: String,
    load_s: f64,
    steps: Vec<f64>,
    finite: bool,
    /// Predicted seconds of each timed step.
    predicted: Vec<f64>,
    /// Predicted seconds of the whole asset.
    predicted_asset: f64,
    render: String,
}

/// Runs `rewardsds bench`.
pub fn run(args: Args) -> Result<u8, Failure> {
    if args.steps == 0 {
        return Err(Failure::bad_input(anyhow::anyhow!(
            "--steps must be at least 1"
        )));
    }
    let mut configs = Vec::new();
    for name in &args.preset {
        let config = preset_config(name, &args)
            .with_context(|| format!("preset `{name}`"))
            .map_err(Failure::bad_input)?;
        configs.push((name, config));
    }
    if args.random_weights {
        set_random_init_for_benchmarks(true);
    }
    // Each row is printed as its preset finishes: a run cut short by a timeout keeps them. A
    // preset that fails gets its row with the error and the others still run (an unattended
    // GPU session must not lose them all to one).
    print_header(&args);
    let mut failed = 0;
    for (name, config) in configs {
        eprintln!("== {name}: prior {}", config.prior);
        let result = run_on(
            args.backend,
            Bench {
                name: name.clone(),
                config,
                args: args.clone(),
            },
        )
        .map_err(Failure::bad_input)?;
        match result {
            Ok(row) => print_row(&row),
            Err(e) => {
                failed += 1;
                let why = format!("{e:#}").replace('|', "/").replace('\n', " ");
                println!("| `{name}` | failed: {why} ||||||||| no |");
            }
        }
    }
    println!(
        "\nPredicted: the cost model (engine/src/cost) for the same steps of the same config; \
         its DDIM scoring is the expectation over the step's timestep range, so a single \
         rewarded step may differ from it either way. \"Asset at the measured pace\": the \
         predicted asset time scaled by measured / predicted."
    );
    if failed > 0 {
        return Err(anyhow::anyhow!("{failed} of the presets failed (their rows say why)").into());
    }
    Ok(0)
}

/// The preset, its models taken from `--models` if given, nothing written to disk.
fn preset_config(name: &str, args: &Args) -> Result<GenerateConfig> {
    let mut config = GenerateConfig::preset(name)?;
    config.prompt = args.prompt.clone();
    if let Some(models) = &args.models {
        config.prior = model_dir(models, &config.prior)?;
        if let Some(reward) = &config.reward {
            config.reward = Some(model_dir(models, reward)?);
        }
        if let Some(decoder) = &config.score_decoder {
            config.score_decoder = Some(model_dir(models, decoder)?);
        }
    }
    config.snapshot_every = 0;
    config.checkpoint_every = 0;
    if args.small {
        config.shrink_scene_for_checks();
        config.resolution_milestones.clear();
    }
    Ok(config)
}

/// `models/<folder>` for a preset's model spec (`sd21-base`, `mvdream`, `image-reward`,
/// `taesd`).
fn model_dir(models: &Path, spec: &str) -> Result<String> {
    let dir = models.join(spec);
    if !dir.is_dir() {
        bail!(
            "{} is not a folder: --models must hold `{spec}/` (tools/gpu/write_model_configs.py writes it)",
            dir.display()
        );
    }
    Ok(dir.display().to_string())
}

struct Bench {
    name: String,
    config: GenerateConfig,
    args: Args,
}

impl BackendTask for Bench {
    type Output = Result<Row>;

    fn run<B: EngineAutodiffBackend>(self, device: B::Device) -> Result<Row> {
        let Bench { name, config, args } = self;
        let models = CostModels::for_config(&config)?;
        let start = Instant::now();
        let mut generator = Generator::<B>::load(config.clone(), &device)?;
        B::sync(&device).ok();
        let load_s = start.elapsed().as_secs_f64();
        eprintln!("   loaded in {load_s:.1} s");

        let mut steps = Vec::new();
        let mut finite = true;
        let started = Instant::now();
        for i in 0..args.steps {
            let start = Instant::now();
            let progress = generator.step()?;
            B::sync(&device).ok();
            let seconds = start.elapsed().as_secs_f64();
            finite &= progress.loss.is_finite();
            eprintln!(
                "   step {} ({} px, t {}): {seconds:.2} s, loss {:.4}",
                i + 1,
                progress.render_size,
                progress.t,
                progress.loss
            );
            steps.push(seconds);
            if args
                .max_seconds
                .is_some_and(|limit| started.elapsed().as_secs_f64() >= limit)
            {
                break;
            }
        }
        let predicted = (0..steps.len())
            .map(|i| steps_cost(&config, &models, i..i + 1).seconds())
            .collect();
        Ok(Row {
            preset: name,
            load_s,
            steps,
            finite,
            predicted,
            predicted_asset: run_cost(&config, &models).seconds(),
            render: format!(
                "{} x {} px, {} spp",
                config.views_per_step_at(0),
                config.render_size_at(0),
                config.renderer.num_samples_per_ray
            ),
        })
    }
}

fn print_header(args: &Args) {
    println!(
        "Backend {}; weights {}; {}; prompt \"{}\".\n",
        args.backend,
        if args.random_weights {
            "random (configs only)"
        } else if args.models.is_some() {
            "from --models"
        } else {
            "the presets' own"
        },
        if args.small {
            "tiny scene (--small)"
        } else {
            "the presets' own scenes"
        },
        args.prompt
    );
    println!(
        "| preset | renders (first step) | load s | steps run | step 1 s | later steps s (mean) | predicted s per step (H100, PyTorch fp16) | measured / predicted | predicted asset | asset at the measured pace | losses finite |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
}

fn print_row(row: &Row) {
    // The first step compiles kernels: the pace is the later steps' when there are any.
    let (measured, predicted) = if row.steps.len() > 1 {
        (&row.steps[1..], &row.predicted[1..])
    } else {
        (&row.steps[..], &row.predicted[..])
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (measured, predicted) = (mean(measured), mean(predicted));
    let ratio = measured / predicted.max(f64::MIN_POSITIVE);
    let later = if row.steps.len() > 1 {
        format!("{measured:.2}")
    } else {
        "-".into()
    };
    println!(
        "| `{}` | {} | {:.1} | {} | {:.2} | {later} | {predicted:.3} | {ratio:.1}x | {} | {} | {} |",
        row.preset,
        row.render,
        row.load_s,
        row.steps.len(),
        row.steps[0],
        duration(row.predicted_asset),
        duration(row.predicted_asset * ratio),
        if row.finite { "yes" } else { "no" },
    );
}

fn duration(seconds: f64) -> String {
    if seconds >= 3600.0 {
        format!("{:.1} h", seconds / 3600.0)
    } else if seconds >= 60.0 {
        format!("{:.1} min", seconds / 60.0)
    } else {
        format!("{seconds:.1} s")
    }
}
