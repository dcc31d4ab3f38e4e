//! `rewardsds generate`: prompt -> 3D asset (.glb), headless.
//!
//! Runs on the CPU with the built-in Tiny World prior by default; `--preset mvdream --backend
//! cuda` for the paper's setup on a GPU. Checkpoints (NeRF or Gaussians) go to
//! `<out>/checkpoint` every `--checkpoint-every` steps; `--resume <out>/checkpoint` continues an
//! interrupted run exactly; `--resume <dir> --export-only` writes what a checkpoint holds
//! (mesh, turntable, the judge's reading) without further steps. Beside the .glb go
//! `turntable.png` (the exported mesh from 8 sides, 256 px each), `views.png` (the field at
//! its training resolution, what the judge reads), `config.toml` and `progress.json`.
//! `--json` prints one JSON event per line on stdout (loaded, progress, checkpoint, wrote,
//! done) for other tools; the human-readable lines then go to stderr.
//!
//! `--edit <asset> --prompt "..."` (or `rewardsds edit <asset> --prompt "..."`) edits a
//! finished asset towards the new prompt with DDS (RewardDDS when its config rewards), from
//! its own config and checkpoint, into a new folder beside it.

use std::path::PathBuf;

use anyhow::Context;
use rewardsds::engine::backend::{BackendKind, run_on};
use rewardsds::engine::generate::{
    GenerateConfig, GenerateError, checkpoint_config, edit_config, slug,
};

use crate::Failure;
use crate::asset::{Generate, Report};
use crate::overrides::Overrides;

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
    #[command(flatten)]
    overrides: Overrides,
    /// Backend: cpu, wgpu or cuda (when unset: the config's `backend`, else cpu).
    #[arg(long)]
    backend: Option<String>,
    /// Output folder (default `out/generate/<slug>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run checkpointed in this folder, with its exact config (the options
    /// above that change the config are not allowed with it).
    #[arg(long, conflicts_with_all = ["prompt", "preset", "config", "prior", "reward", "score_decoder", "steps", "seed", "scene", "checkpoint_every", "reward_feedback", "guidance_scale", "vsd", "guidance_scale_end", "generative_weight", "csd_fraction", "learning_rate_end_factor"])]
    resume: Option<PathBuf>,
    /// Edit the asset generated in this folder (its output folder or its checkpoint folder)
    /// towards `--prompt` with DDS, RewardDDS when its config rewards: its own config
    /// (prior, reward, scene, steps, seed) with the options above on top; the result goes to a
    /// new folder beside it (`<parent>/<slug of the new prompt>`).
    #[arg(long, requires = "prompt", conflicts_with_all = ["preset", "config", "resume"])]
    edit: Option<PathBuf>,
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

/// Runs `rewardsds generate`; the exit code on success is 0.
pub fn run(args: Args) -> Result<u8, Failure> {
    let report = Report {
        json: args.json,
        asset: None,
    };
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
    let mut config = match (&args.edit, &args.config) {
        (Some(source), _) => {
            let prompt = args.prompt.clone().unwrap_or_default();
            edit_config(source, &prompt)
                .with_context(|| format!("--edit {}", source.display()))
                .map_err(Failure::bad_input)?
        }
        (None, Some(path)) => {
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
        (None, None) => GenerateConfig {
            prompt: DEFAULT_PROMPT.into(),
            ..GenerateConfig::preset(&args.preset).map_err(Failure::bad_input)?
        },
    };
    // An explicit `--prompt` wins over a config's, as every other option does.
    if let Some(prompt) = args.prompt {
        config.prompt = prompt;
    }
    args.overrides.apply(&mut config);
    let kind = backend_for(&config);
    // config.toml records the backend that ran, so it reruns the same way.
    config.backend = Some(kind);
    config.validate().map_err(Failure::bad_input)?;
    let out = args.out.unwrap_or_else(|| match &args.edit {
        Some(source) => beside(source).join(slug(&config.prompt)),
        None => PathBuf::from("out/generate").join(slug(&config.prompt)),
    });
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

/// `rewardsds edit` options: `generate --edit` with the source first.
#[derive(clap::Args, Debug, Clone)]
pub struct EditArgs {
    /// The asset to edit: the folder `generate` wrote it to, or its checkpoint folder.
    source: PathBuf,
    /// What the asset should become (its own prompt is the source prompt).
    #[arg(long)]
    prompt: String,
    #[command(flatten)]
    overrides: Overrides,
    /// Backend: cpu, wgpu or cuda (when unset: the source's `backend`, else cpu).
    #[arg(long)]
    backend: Option<String>,
    /// Output folder (default: beside the source, named after the new prompt).
    #[arg(long)]
    out: Option<PathBuf>,
    /// One JSON event per line on stdout instead of the progress bar.
    #[arg(long)]
    json: bool,
}

impl From<EditArgs> for Args {
    fn from(edit: EditArgs) -> Self {
        Self {
            prompt: Some(edit.prompt),
            preset: "fast".into(),
            config: None,
            overrides: edit.overrides,
            backend: edit.backend,
            out: edit.out,
            resume: None,
            export_only: false,
            edit: Some(edit.source),
            json: edit.json,
        }
    }
}

/// The folder that holds the asset folder `source` (given as that folder or as its
/// `checkpoint/` folder): where an edit of it goes by default.
fn beside(source: &std::path::Path) -> PathBuf {
    let asset = if source.file_name().is_some_and(|n| n == "checkpoint") {
        source.parent().unwrap_or(source)
    } else {
        source
    };
    asset
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default()
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
