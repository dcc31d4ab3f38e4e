//! Prompt -> image with SDS / RewardSDS (or VSD / RewardVSD: `--mode vsd`, `reward_vsd`)
//! optimising the image directly (the paper's 2D mode).
//!
//! `cargo run --release --example generate_2d -- --prompt "a red cube and a blue sphere"
//! --mode reward_sds --steps 200 --out out/2d/red-cube.png` runs on the CPU with the built-in
//! Tiny World prior (32x32 images) and prints the reward of the image as it forms.
//!
//! Editing: `--edit red-cube.png --source-prompt "a red cube" --prompt "a blue cube"` starts
//! from the image and follows DDS (`--mode sds`) or RewardDDS (`--mode reward_sds`) from the
//! source prompt to the prompt.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use rewardsds::engine::backend::{BackendKind, BackendTask, EngineAutodiffBackend, run_on};
use rewardsds::engine::generate::{Image2dConfig, Image2dEdit, Image2dGenerator, slug};
use rewardsds::engine::guidance::VsdConfig;

/// Command-line options; each overrides the default config.
#[derive(Parser, Debug, Clone)]
#[command(about = "Generate an image from a text prompt with SDS / RewardSDS (2D mode)")]
struct Args {
    /// What to draw (with `--edit`: what the edited image should show).
    #[arg(long, default_value = "a red cube and a blue sphere")]
    prompt: String,
    /// Edit this image (PNG) with DDS / RewardDDS instead of drawing from a grey canvas; needs
    /// `--source-prompt`. Resized to the prior's resolution if needed.
    #[arg(long, value_name = "IMAGE")]
    edit: Option<PathBuf>,
    /// What the `--edit` image shows (must differ from `--prompt`).
    #[arg(long)]
    source_prompt: Option<String>,
    /// Optimisation steps.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// `sds`, `reward_sds` (N noises ranked by the reward, `min_max` weights), `vsd` (a LoRA of
    /// the prior learns the image; CFG 7.5) or `reward_vsd`; with `--edit`, `sds` / `reward_sds`
    /// are DDS / RewardDDS.
    #[arg(long, default_value = "reward_sds")]
    mode: String,
    /// RewardSDS noise samples N.
    #[arg(long)]
    n: Option<usize>,
    /// Adam's learning rate on the pixels.
    #[arg(long)]
    lr: Option<f64>,
    /// Diffusion prior: preset, folder or repo id.
    #[arg(long)]
    prior: Option<String>,
    /// Reward model: preset, folder or repo id.
    #[arg(long)]
    reward: Option<String>,
    /// Backend: cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Write a checkpoint into this folder every 50 steps and at the end.
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    checkpoint: Option<PathBuf>,
    /// Continue the run checkpointed in this folder with its exact config (the options that
    /// change the config do not apply); later checkpoints go there too.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// The PNG to write (default `out/generate_2d/<slug>-<mode>-<seed>.png`, `<slug>-edit-...`
    /// when editing).
    #[arg(long)]
    out: Option<PathBuf>,
}

struct Generate2d {
    config: Image2dConfig,
    out: PathBuf,
    checkpoint: Option<PathBuf>,
    resume: Option<PathBuf>,
}

/// Steps between the checkpoints of `--checkpoint`.
const CHECKPOINT_EVERY: usize = 50;

impl BackendTask for Generate2d {
    type Output = Result<()>;

    fn run<B: EngineAutodiffBackend>(self, device: B::Device) -> Result<()> {
        let Generate2d {
            config,
            out,
            checkpoint,
            resume,
        } = self;
        let start = Instant::now();
        if let Some(dir) = &resume {
            let mut generator = Image2dGenerator::<B>::resume(dir, CHECKPOINT_EVERY, &device)
                .with_context(|| format!("resuming from {}", dir.display()))?;
            println!("resuming at step {}", generator.steps_done());
            let config = generator.config().clone();
            return finish(&mut generator, &config, &out, start);
        }
        if let Some(edit) = &config.edit {
            println!(
                "editing {} from `{}` to `{}`",
                edit.source_image.display(),
                edit.source_prompt,
                config.prompt
            );
        }
        let mut generator = Image2dGenerator::<B>::load(config.clone(), &device).context(
            if config.edit.is_some() {
                "loading the prior, the reward and the image to edit"
            } else {
                "loading the prior and reward"
            },
        )?;
        if let Some(dir) = checkpoint {
            generator.checkpoint_to(dir, CHECKPOINT_EVERY);
        }
        finish(&mut generator, &config, &out, start)
    }
}

/// Runs the steps left, printing progress, and writes the image.
fn finish<B: EngineAutodiffBackend>(
    generator: &mut Image2dGenerator<B>,
    config: &Image2dConfig,
    out: &std::path::Path,
    start: Instant,
) -> Result<()> {
    let every = (config.steps / 20).max(1);
    generator.run(&AtomicBool::new(false), &mut |p| {
        let step = p.progress.step;
        if step % every == 0 || step == 1 || step == config.steps {
            let samples = p
                .progress
                .reward_stats()
                .map(|(lo, mean, hi)| format!(" samples {lo:.1}/{mean:.1}/{hi:.1}"))
                .unwrap_or_default();
            let image = p
                .image_reward
                .map(|r| format!(" image reward {r:.2}"))
                .unwrap_or_default();
            println!(
                "{step:>5}/{} loss {:.4} t {:>3}{image}{samples} ({:.0} ms)",
                config.steps,
                p.progress.loss,
                p.progress.t,
                1e3 * p.progress.seconds
            );
        }
    })?;
    if let Some(r) = generator.image_reward()? {
        println!("final image reward {r:.2}");
    }
    generator
        .image()
        .save_png(out)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} in {:.1}s",
        out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[path = "common/logging.rs"]
mod logging;

fn main() -> Result<()> {
    logging::init();
    let args = Args::parse();
    let mut config = Image2dConfig {
        prompt: args.prompt.clone(),
        seed: args.seed,
        steps: args.steps,
        ..Image2dConfig::default()
    };
    config.edit = match (args.edit, args.source_prompt) {
        (Some(source_image), Some(source_prompt)) => Some(Image2dEdit {
            source_image,
            source_prompt,
        }),
        (None, None) => None,
        (Some(_), None) => bail!("--edit needs --source-prompt: what the image shows"),
        (None, Some(_)) => bail!("--source-prompt applies to --edit only"),
    };
    match args.mode.as_str() {
        "reward_sds" => {}
        "sds" => config = config.sds(),
        // The official 2D `vsd` mode: CFG 7.5 and a LoRA of the prior.
        "vsd" | "reward_vsd" => {
            if args.mode == "vsd" {
                config = config.sds();
            }
            config.guidance.guidance_scale = 7.5;
            config.guidance.vsd = Some(VsdConfig::default());
        }
        other => bail!("--mode must be sds, reward_sds, vsd or reward_vsd, not `{other}`"),
    }
    if let Some(n) = args.n {
        let Some(reward) = config.guidance.reward.as_mut() else {
            bail!("--n applies to --mode reward_sds and reward_vsd only");
        };
        reward.n_samples = n;
    }
    if let Some(lr) = args.lr {
        config.lr = lr;
    }
    if let Some(prior) = args.prior {
        config.prior = prior;
    }
    if let Some(reward) = args.reward {
        config.reward = Some(reward);
    }
    config.validate()?;
    let kind: BackendKind = args.backend.parse().context("--backend")?;
    let out = args.out.unwrap_or_else(|| {
        let edit = if config.edit.is_some() { "-edit" } else { "" };
        PathBuf::from("out/generate_2d").join(format!(
            "{}{edit}-{}-{}.png",
            slug(&config.prompt),
            args.mode,
            config.seed
        ))
    });
    if let Some(folder) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("creating {}", folder.display()))?;
    }
    run_on(
        kind,
        Generate2d {
            config,
            out,
            checkpoint: args.checkpoint,
            resume: args.resume,
        },
    )?
}
