//! `rewardsds`: text prompt -> game-ready 3D asset (.glb) with SDS / RewardSDS, on the CPU,
//! wgpu or CUDA. `rewardsds <command> --help` shows each command's options and an example.
//!
//! Exit codes: 0 success; 1 a run failed (a model would not load, a step or the export
//! failed; for `batch`, any entry); 2 bad input (command line, config, prompt, manifest),
//! nothing run; 3 `validate` found the file invalid, or `batch --verify` the library
//! incomplete.

mod asset;
mod batch;
mod bench;
mod generate;
#[path = "../../../examples/common/logging.rs"]
mod logging;
mod models;
mod overrides;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code: a run failed.
const EXIT_FAILED: u8 = 1;
/// Exit code: bad input, nothing was run.
const EXIT_BAD_INPUT: u8 = 2;
/// Exit code: `validate` found the file invalid.
const EXIT_INVALID: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "rewardsds",
    version,
    about = "Generate 3D game assets (.glb) from text prompts with RewardSDS",
    after_help = "Exit codes: 0 success, 1 a run failed, 2 bad input (nothing run), 3 `validate` \
                  found the file invalid (or `batch --verify` the library incomplete).\n\nStart with:\n  rewardsds generate --prompt \"a blue \
                  cone on top of an orange cylinder\""
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate one asset from a prompt.
    #[command(
        after_help = "Example:\n  rewardsds generate --prompt \"a red cube on top of a blue \
                            sphere\" --steps 200 --out out/cube"
    )]
    Generate(generate::Args),
    /// Edit a generated asset towards a new prompt (DDS / RewardDDS), into a new folder.
    #[command(
        after_help = "Example:\n  rewardsds edit out/generate/a-red-cube --prompt \"a blue cube\"\n\n\
                      The source's own config (prior, reward, scene, steps, seed) is used, with \
                      the options given on top; `generate --edit <asset>` is the same."
    )]
    Edit(generate::EditArgs),
    /// Make many assets from a manifest into a library folder; resumable, shardable.
    #[command(
        after_help = "The options that change the config (--steps, --scene, ...) apply to every \
                      entry; the manifest's own values win over them. docs/batch.md: manifest \
                      formats, the library, Slurm and Kubernetes.\n\nExamples:\n  rewardsds \
                      batch props.txt --out out/library --steps 300\n  \
                            rewardsds batch props.toml --out /shared/library --shard 0/4 \
                            --backend cuda\n  rewardsds batch props.toml --out \
                            /shared/library --verify"
    )]
    Batch(batch::Args),
    /// List the model presets, what is cached locally, and what each needs.
    #[command(after_help = "Examples:\n  rewardsds models\n  rewardsds models --show mvdream")]
    Models(models::Args),
    /// Check a .glb: the Khronos validator when installed, else our structural check.
    #[command(after_help = "Example:\n  rewardsds validate out/generate/a-red-cube/a-red-cube.glb")]
    Validate(validate::Args),
    /// Time the first steps of presets here, beside the cost model's prediction.
    #[command(
        after_help = "Examples:\n  rewardsds bench --preset sd21-sds --backend cuda\n  \
                            rewardsds bench --models /tmp/models --random-weights --backend cuda"
    )]
    Bench(bench::Args),
}

/// An error with the exit code it ends the process with.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl Failure {
    /// Bad input: nothing was run.
    pub fn bad_input(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: EXIT_BAD_INPUT,
            error: error.into(),
        }
    }
}

/// Anything else that fails is a failed run.
impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Self {
            code: EXIT_FAILED,
            error: error.into(),
        }
    }
}

fn main() -> ExitCode {
    logging::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Edit(args) => generate::run(args.into()),
        Command::Batch(args) => batch::run(args),
        Command::Models(args) => models::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure { code, error }) => {
            eprintln!("error: {error:#}");
            ExitCode::from(code)
        }
    }
}
