//! Peak memory of a step, estimated from the config before anything is allocated, and the
//! check that refuses a run that cannot fit. f32 throughout (what every backend runs today).
//! The estimate is coarse (the per-sample and per-pixel factors below are counts of the
//! tensors each layer keeps, not measurements of one backend's allocator): it exists to stop
//! a config that is off by orders of magnitude (a 100,000 px render) with a message, not to
//! budget the last gigabyte.

use super::models::CostModels;
use crate::generate::{GenerateConfig, SceneKind};
use crate::guidance::ConfigError;

const F32: f64 = 4.0;

/// Estimated bytes of one step, by what holds them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepMemory {
    /// Every model's parameters.
    pub weights: f64,
    /// What the renderer keeps for its backward: every sample point of every view, or one
    /// chunk's (`renderer.train_chunk_samples`) when the backward runs in chunks.
    pub render: f64,
    /// What the VAE encoder keeps for its backward.
    pub encode: f64,
    /// The largest UNet call's transient tensors (feature maps and attention scores).
    pub unet: f64,
    /// The largest decode + reward chunk's transient tensors.
    pub scoring: f64,
    /// VSD: what the LoRA's training pass keeps for its backward (every level's activations
    /// for each view it trains on); 0 without VSD.
    pub lora_train: f64,
}

impl StepMemory {
    /// The peak: weights and the kept activations, plus the larger transient phase.
    pub fn total(&self) -> f64 {
        self.weights + self.render + self.encode + self.unet.max(self.scoring).max(self.lora_train)
    }

    /// The largest part and the config field that sets it, for an error message.
    fn culprit(&self) -> (&'static str, &'static str) {
        [
            (self.render, "render_size", "the renderer's sample points"),
            (
                self.encode,
                "views_per_step",
                "the VAE encoder's activations",
            ),
            (self.unet, "guidance.max_batch", "the UNet's activations"),
            (self.scoring, "guidance.max_batch", "the scoring decodes"),
            (
                self.lora_train,
                "views_per_step",
                "the VSD LoRA's training activations",
            ),
            (self.weights, "prior", "the models' weights"),
        ]
        .into_iter()
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, field, what)| (field, what))
        .unwrap_or(("render_size", "the renderer"))
    }
}

/// Bytes the NeRF renderer keeps per sample point for the backward: per hash-grid level the
/// 8 corners' indices (i64), weights and gathered features and the interpolated features
/// (24 + 9 F floats), the MLPs' activations before and after their nonlinearity, and ~100
/// floats of positions, densities, colours and compositing terms. Matches the measurement:
/// `bench_render --size 64` vs `--size 128` on the CPU (threestudio's grid, 16 levels, 64
/// samples per ray) grows the peak RSS by 3.28 GB for 786,432 more samples, 4,170 bytes each;
/// this gives 4,112.
fn bytes_per_sample(config: &GenerateConfig) -> f64 {
    let enc = &config.nerf.encoding;
    let hidden = config.nerf.hidden * config.nerf.n_hidden_layers.max(1);
    let floats = enc.n_levels * (24 + 9 * enc.n_features_per_level) + 2 * 2 * hidden + 100;
    floats as f64 * F32
}

/// The estimate for `step` with `n` noise samples.
pub fn step_memory(
    config: &GenerateConfig,
    models: &CostModels,
    step: usize,
    n: usize,
) -> StepMemory {
    let views = config.views_per_step_at(step) as f64;
    let side = config.render_size_at(step) as f64;
    let render = match config.scene {
        SceneKind::Nerf => {
            let samples = views * side * side * config.renderer.num_samples_per_ray as f64;
            let chunk = config.renderer.train_chunk_samples as f64;
            samples.min(chunk) * bytes_per_sample(config)
        }
        // Gaussians keep a few images' worth per view.
        SceneKind::Gaussians => views * side * side * 64.0 * F32,
    };
    let image = models.image_side() as f64;
    let latent = models.latent_side() as f64;
    let encode = models.vae.as_ref().map_or(0.0, |vae| {
        // Each ResNet keeps ~7 tensors of its width (norms, activations, convolutions).
        let mut side = image;
        let mut floats = 0.0;
        for (level, &c) in vae.block_out_channels.iter().enumerate() {
            floats += 7.0 * vae.layers_per_block as f64 * c as f64 * side * side;
            if level + 1 < vae.block_out_channels.len() {
                side /= 2.0;
            }
        }
        views * floats * F32
    });
    let frames = models.num_frames.max(1);
    // An edit (DDS) denoises the source branch beside the edited one.
    let branches = if config.edit.is_some() { 2 } else { 1 };
    let rows = branches * n * views as usize;
    let chunk = ((config.guidance.max_batch / frames).max(1) * frames).min(rows);
    let unet = {
        // The first level: ~10 feature maps, and the self-attention scores if materialised.
        let c0 = models.unet.block_out_channels[0] as f64;
        let heads = models.unet.heads(0) as f64;
        let tokens = latent * latent;
        let per_sample = 10.0 * c0 * tokens + heads * tokens * tokens * frames as f64;
        2.0 * chunk as f64 * per_sample * F32
    };
    let scoring = models.vae.as_ref().map_or(0.0, |vae| {
        if let Some(taesd) = &models.score_decoder {
            // TAESD's last stage: ~4 maps of its width at full size, per image.
            let images = config.guidance.max_batch.min(n * views as usize) as f64;
            let c = taesd.decoder_block_out_channels[0] as f64;
            return images * 4.0 * c * image * image * F32;
        }
        // The decoder's last level: ~4 maps of its width at full size, per image.
        let c = vae.block_out_channels[0] as f64;
        let images = config.guidance.max_batch.min(n * views as usize) as f64;
        images * 4.0 * c * image * image * F32
    });
    // VSD trains its LoRA on every view: a forward whose activations stay for the backward.
    let lora_train = config.guidance.vsd.as_ref().map_or(0.0, |vsd| {
        let rows = views * vsd.lora_timestep_samples as f64;
        rows * unet_training_floats(models, latent, frames) * F32
    });
    StepMemory {
        lora_train,
        weights: models.params as f64 * F32,
        render,
        encode,
        unet,
        scoring,
    }
}

/// Floats one sample's UNet forward keeps for its backward: per level ~7 maps per ResNet
/// (norms, activations, convolutions; `2 * layers + 1` ResNets down and up), and where the
/// level attends ~20 maps per transformer (norms, projections, GEGLU) plus three score-sized
/// tensors (scores, softmax, its gradient) per attention.
fn unet_training_floats(models: &CostModels, latent: f64, frames: usize) -> f64 {
    let unet = &models.unet;
    let mut side = latent;
    let mut floats = 0.0;
    for (level, &c) in unet.block_out_channels.iter().enumerate() {
        let layers = unet.layers_per_block.get(level) as f64;
        let blocks = 2.0 * layers + 1.0;
        let maps = side * side;
        floats += 7.0 * blocks * c as f64 * maps;
        if matches!(
            unet.down_block_types.get(level),
            Some(crate::models::unet_2d::DownBlockType::CrossAttnDownBlock2D)
        ) {
            let heads = unet.heads(level) as f64;
            let scores = 3.0 * heads * maps * maps * frames as f64;
            floats += blocks * (20.0 * c as f64 * maps + scores);
        }
        if level + 1 < unet.block_out_channels.len() {
            side /= 2.0;
        }
    }
    floats
}

/// Memory the machine has for a run on a host backend: `MemAvailable` of /proc/meminfo, in
/// bytes; `None` where it cannot be read.
pub fn host_available() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// Refuses `estimate` above `limit` bytes, naming the field that sets its largest part.
pub fn check_fits(estimate: &StepMemory, limit: f64, what_limit: &str) -> Result<(), ConfigError> {
    if estimate.total() <= limit {
        return Ok(());
    }
    let (field, what) = estimate.culprit();
    let gb = |b: f64| b / 1e9;
    Err(ConfigError::new(
        field,
        format!(
            "a step would need about {:.1} GB ({what}: {:.1} GB; weights {:.1} GB), more than \
             the {:.1} GB {what_limit}: lower render_size, views_per_step, \
             renderer.num_samples_per_ray, renderer.train_chunk_samples or guidance.max_batch",
            gb(estimate.total()),
            gb([
                estimate.render,
                estimate.encode,
                estimate.unet,
                estimate.scoring,
                estimate.lora_train,
                estimate.weights
            ]
            .into_iter()
            .fold(0.0, f64::max)),
            gb(estimate.weights),
            gb(limit),
        ),
    ))
}

/// Refuses a run whose step would not fit in the host's available memory (host backends: a
/// GPU backend's memory is not known to burn, and is left to the device). A prior or reward
/// the cost model cannot resolve (a repo id not yet downloaded) skips the check.
pub fn check_host_memory(config: &GenerateConfig) -> Result<(), ConfigError> {
    let models = match CostModels::for_config(config) {
        Ok(models) => models,
        Err(e) => {
            log::debug!("memory check skipped: {e}");
            return Ok(());
        }
    };
    let Some(limit) = host_available() else {
        return Ok(());
    };
    let peak = super::run::run_cost(config, &models).peak;
    check_fits(&peak, limit, "available on this machine (MemAvailable)")
}
