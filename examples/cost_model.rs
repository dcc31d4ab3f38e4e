//! What a generation costs before it runs: per preset, the FLOPs of each part of a step over
//! the whole run, the time it would take on one H100 at PyTorch fp16 speed (the measured
//! anchors in engine/src/cost/anchors.rs), and the estimated peak memory of a step (f32).
//!
//! `cargo run --release --example cost_model` prints the table for the real-model presets;
//! `-- --preset mvdream,fast` for others, `-- --config out/generate/<slug>/config.toml` for a
//! saved config. Nothing is downloaded or allocated: presets are costed from
//! their published architectures, folders from their config files.

use anyhow::{Context, Result};
use clap::Parser;
use rewardsds::engine::cost::{CostModels, RunCost, run_cost};
use rewardsds::engine::generate::GenerateConfig;

/// Command-line options.
#[derive(Parser, Debug)]
#[command(about = "FLOPs, predicted H100 time and peak memory of a generation, per preset")]
struct Args {
    /// Presets to cost (default: the real-model ones).
    #[arg(long, value_delimiter = ',')]
    preset: Vec<String>,
    /// A saved TOML config (as `generate --config`), costed instead of presets.
    #[arg(long, conflicts_with = "preset")]
    config: Option<std::path::PathBuf>,
    /// Print each preset's per-component table too.
    #[arg(long)]
    detail: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut configs = Vec::new();
    if let Some(path) = &args.config {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config = GenerateConfig::from_toml(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        configs.push((path.display().to_string(), config));
    } else if args.preset.is_empty() {
        for name in ["sd21-sds", "sd21", "mvdream-sds", "mvdream", "mvdream-fast"] {
            configs.push((name.to_string(), GenerateConfig::preset(name)?));
        }
    } else {
        for name in &args.preset {
            configs.push((name.clone(), GenerateConfig::preset(name)?));
        }
    }
    let mut rows = Vec::new();
    for (name, config) in configs {
        let models = CostModels::for_config(&config).with_context(|| format!("costing {name}"))?;
        let cost = run_cost(&config, &models);
        if args.detail {
            print_detail(&name, &cost);
        }
        rows.push((name, config, cost));
    }

    println!(
        "| preset | steps | views x px (first) | N | scoring | TFLOP per asset | predicted H100 time (PyTorch fp16 speed) | peak memory per step, f32 (estimate) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, config, cost) in rows {
        let reward = config.guidance.reward.as_ref();
        println!(
            "| `{name}` | {} | {} x {} | {} | {} | {:.0} | {} | {:.1} GB |",
            match &config.texture_stage {
                // Stage 1's steps, then the texture stage's.
                Some(t) => format!("{} + {}", config.steps, t.steps),
                None => config.steps.to_string(),
            },
            config.views_per_step,
            config.render_size,
            reward.map_or(1, |r| r.n_samples),
            reward.map_or("-".into(), |r| format!("{:?}", r.scoring)),
            cost.flops() / 1e12,
            minutes(cost.seconds()),
            cost.peak.total() / 1e9,
        );
    }
    Ok(())
}

fn minutes(seconds: f64) -> String {
    if seconds >= 3600.0 {
        format!("{:.1} h", seconds / 3600.0)
    } else {
        format!("{:.1} min", seconds / 60.0)
    }
}

fn print_detail(name: &str, cost: &RunCost) {
    println!("\n### `{name}` ({} steps)\n", cost.steps);
    println!("| part | calls | TFLOP | predicted H100 s | share |");
    println!("|---|---|---|---|---|");
    let total = cost.seconds().max(f64::MIN_POSITIVE);
    for c in &cost.components {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0}% |",
            c.name,
            c.calls,
            c.flops / 1e12,
            c.seconds,
            100.0 * c.seconds / total
        );
    }
    let m = &cost.peak;
    println!(
        "\nPeak step memory (estimate): {:.1} GB = weights {:.1} + render {:.1} + encoder {:.1} + max(UNet {:.1}, scoring {:.1}, VSD LoRA training {:.1})\n",
        m.total() / 1e9,
        m.weights / 1e9,
        m.render / 1e9,
        m.encode / 1e9,
        m.unet / 1e9,
        m.scoring / 1e9,
        m.lora_train / 1e9
    );
}
