//! `rewardsds models`: the model presets, which are on this machine (bundled or in the
//! Hugging Face cache) and their size, what a generation preset needs (models, memory, time
//! by the cost model), and `--download` to fetch one into the cache.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rewardsds::engine::cost::{CostModels, run_cost};
use rewardsds::engine::generate::{GenerateConfig, PRESETS as GENERATE_PRESETS};
use rewardsds::engine::weights::{
    PRESETS, Preset, bundled_models_dir, cached_repo, hf_hub_cache, preset, resolve_model,
};

use crate::Failure;

/// `rewardsds models` options.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Show one model preset (e.g. `mvdream`) or generation preset (e.g. `mvdream-fast`): its
    /// source, local copy, and for a generation preset the models it needs and its cost.
    #[arg(long, conflicts_with = "download")]
    show: Option<String>,
    /// Download a model preset into the Hugging Face cache (needs the network; honours
    /// `HF_HUB_OFFLINE`).
    #[arg(long)]
    download: Option<String>,
}

/// Runs `rewardsds models`.
pub fn run(args: Args) -> Result<u8, Failure> {
    if let Some(name) = &args.download {
        let model = preset(name).map_err(Failure::bad_input)?;
        let dir = resolve_model(model.name).with_context(|| format!("downloading `{name}`"))?;
        println!("{name}: {} ({})", dir.display(), size(folder_bytes(&dir)));
        return Ok(0);
    }
    if let Some(name) = &args.show {
        return show(name);
    }
    println!(
        "Model presets (the Hugging Face cache is {}):\n",
        hf_hub_cache().display()
    );
    println!("| preset | on this machine | size | what |");
    println!("|---|---|---|---|");
    for model in PRESETS {
        let (state, bytes) = match local_copy(model) {
            Some((kind, dir)) => (format!("{kind}: {}", dir.display()), folder_bytes(&dir)),
            None => ("not downloaded".to_string(), 0),
        };
        let bytes = if bytes > 0 { size(bytes) } else { "-".into() };
        println!("| `{}` | {state} | {bytes} | {} |", model.name, model.about);
    }
    println!(
        "\nGeneration presets (`rewardsds generate --preset NAME`): {}. \
         `rewardsds models --show NAME` says what one needs.",
        GENERATE_PRESETS.join(", ")
    );
    Ok(0)
}

/// One model preset or generation preset in detail.
fn show(name: &str) -> Result<u8, Failure> {
    if let Ok(model) = preset(name) {
        println!("`{}`: {}", model.name, model.about);
        println!("source: https://huggingface.co/{}", model.repo_id);
        match local_copy(model) {
            Some((kind, dir)) => println!(
                "on this machine ({kind}): {} ({})",
                dir.display(),
                size(folder_bytes(&dir))
            ),
            None => println!(
                "not on this machine: `rewardsds models --download {}` fetches it",
                model.name
            ),
        }
        return Ok(0);
    }
    let config = GenerateConfig::preset(name).map_err(|_| {
        Failure::bad_input(anyhow::anyhow!(
            "`{name}` is neither a model preset ({}) nor a generation preset ({})",
            PRESETS
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", "),
            GENERATE_PRESETS.join(", ")
        ))
    })?;
    let texture = config.texture_stage.as_ref().map_or(String::new(), |t| {
        format!(" + {} of the texture stage", t.steps)
    });
    println!(
        "generation preset `{name}`: {} steps{texture}, scene {:?}",
        config.steps, config.scene
    );
    let needs = [
        ("prior", Some(&config.prior)),
        ("reward", config.reward.as_ref()),
        ("score_decoder", config.score_decoder.as_ref()),
    ];
    for (field, spec) in needs {
        let Some(spec) = spec else { continue };
        let here = preset(spec)
            .ok()
            .and_then(local_copy)
            .map_or("not on this machine".to_string(), |(kind, dir)| {
                format!("{kind}, {}", size(folder_bytes(&dir)))
            });
        println!("  {field}: `{spec}` ({here})");
    }
    match CostModels::for_config(&config) {
        Ok(models) => {
            let cost = run_cost(&config, &models);
            println!(
                "cost model: {:.0} TFLOP per asset, about {:.1} min on one H100 at PyTorch fp16 \
                 speed; peak memory per step about {:.1} GB (f32 estimate)",
                cost.flops() / 1e12,
                cost.seconds() / 60.0,
                cost.peak.total() / 1e9
            );
        }
        Err(e) => println!("cost model: not available for this preset ({e})"),
    }
    Ok(0)
}

/// Where a model preset is on this machine: bundled with the project, or in the cache.
fn local_copy(model: &Preset) -> Option<(&'static str, PathBuf)> {
    if let Some(sub) = model.bundled {
        let dir = bundled_models_dir().join(sub);
        // Canonical, so the path shown has no `engine/..` in it.
        let dir = dir.canonicalize().unwrap_or(dir);
        return dir.is_dir().then_some(("bundled", dir));
    }
    cached_repo(&hf_hub_cache(), model.repo_id, "main")
        .ok()
        .map(|dir| ("cached", dir))
}

/// Bytes of every file under `dir`, following links (the cache's snapshots link to blobs).
fn folder_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| {
            let path = e.path();
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => folder_bytes(&path),
                Ok(m) => m.len(),
                Err(_) => 0,
            }
        })
        .sum()
}

fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.0} KB", b / 1e3)
    }
}
