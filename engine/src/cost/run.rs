//! The cost of a whole run of a [`GenerateConfig`], step by step: what each step computes
//! follows the generator and the guidance (views and render size per resolution milestone,
//! N noise samples inside the reward window, DDIM scoring passes for the step's timestep
//! range, UNet calls of at most `max_batch` samples per CFG pass).

use std::ops::Range;

use super::anchors::{self, Anchor};
use super::flops::{self, UNetInput};
use super::memory::{StepMemory, step_memory};
use super::models::{CLIP_TOKENS, CostModels, IMAGE_REWARD_TOKENS, RewardArchitecture};
use crate::generate::{GenerateConfig, SceneKind};
use crate::guidance::{DDIM_SCORING_STEPS, ScoringMode, ddim_scoring_grid};

/// Timesteps of the schedules the presets use.
const NUM_TRAIN_TIMESTEPS: usize = 1000;

/// One part of a step, summed over the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    /// What it is ("UNet (SDS pass)", ...).
    pub name: &'static str,
    /// FLOPs over the run.
    pub flops: f64,
    /// Calls over the run (UNet batches, decodes of a chunk, ...).
    pub calls: f64,
    /// Predicted seconds over the run on an H100 at PyTorch fp16 speed.
    pub seconds: f64,
}

/// The cost of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunCost {
    /// Steps of the run.
    pub steps: usize,
    /// Its parts, in step order.
    pub components: Vec<Component>,
    /// The largest step memory estimate (f32 weights and activations).
    pub peak: StepMemory,
}

impl RunCost {
    /// FLOPs of the run.
    pub fn flops(&self) -> f64 {
        self.components.iter().map(|c| c.flops).sum()
    }

    /// Predicted seconds of the run on an H100 at PyTorch fp16 speed.
    pub fn seconds(&self) -> f64 {
        self.components.iter().map(|c| c.seconds).sum()
    }
}

/// Accumulates one component.
#[derive(Default)]
struct Tally {
    flops: f64,
    calls: f64,
    seconds: f64,
}

impl Tally {
    /// `calls` calls of `flops_per_call` each (fractional calls: an expectation).
    fn add(&mut self, calls: f64, flops_per_call: f64, anchor: Anchor) {
        self.calls += calls;
        self.flops += calls * flops_per_call;
        self.seconds += calls * anchor.seconds(flops_per_call);
    }

    /// `rows` samples of `flops_each` in chunks of at most `chunk`.
    fn add_chunked(
        &mut self,
        rows: usize,
        chunk: usize,
        flops_each: f64,
        anchor: Anchor,
        times: f64,
    ) {
        let chunk = chunk.max(1);
        let full = rows / chunk;
        let rest = rows % chunk;
        self.add(times * full as f64, chunk as f64 * flops_each, anchor);
        if rest > 0 {
            self.add(times, rest as f64 * flops_each, anchor);
        }
    }
}

/// Expected DDIM scoring passes (guided UNet calls per sample) beyond the SDS pass, for `t` uniform on `[lo, hi]`.
pub fn expected_ddim_passes(lo: usize, hi: usize) -> f64 {
    let count: usize = (lo..=hi)
        .map(|t| ddim_scoring_grid(t, NUM_TRAIN_TIMESTEPS, DDIM_SCORING_STEPS).len() - 1)
        .sum();
    count as f64 / (hi - lo + 1) as f64
}

/// The cost of running `config` with `models` (both stages when it has a texture stage).
pub fn run_cost(config: &GenerateConfig, models: &CostModels) -> RunCost {
    steps_cost(config, models, 0..config.total_steps())
}

/// The cost of the steps `steps` of a run of `config` (each step's views, render size, noise
/// samples and scoring are those of the whole run's schedule), e.g. the first steps a
/// benchmark times.
pub fn steps_cost(config: &GenerateConfig, models: &CostModels, steps: Range<usize>) -> RunCost {
    let total = config.total_steps();
    let steps = steps.start.min(total)..steps.end.min(total);
    let guidance = &config.guidance;
    // The texture stage: its own timestep schedule and reward window, as
    // `Guidance::begin_stage` sets them; no field to render (the mesh is rasterised on the
    // host, negligible beside the UNet).
    let last = config.steps.saturating_sub(1);
    let stage_guidance = config
        .texture_stage
        .as_ref()
        .map(|t| crate::guidance::GuidanceConfig {
            t_min: t.t_min,
            t_max: t.t_max,
            anneal_steps: t.steps,
            ..guidance.clone()
        });
    let image = models.image_side();
    let latent = models.latent_side();
    let frames = models.num_frames.max(1);
    let unet_flops = flops::unet_forward(
        &models.unet,
        UNetInput {
            latent_side: latent,
            text_tokens: CLIP_TOKENS,
            num_frames: frames,
        },
    );
    let encode_flops = models
        .vae
        .as_ref()
        .map(|vae| flops::vae_encode_backward(vae, image));
    let decode_flops = match (&models.score_decoder, &models.vae) {
        (Some(taesd), _) => Some(flops::taesd_decode(taesd, latent)),
        (None, Some(vae)) => Some(flops::vae_decode(vae, image)),
        (None, None) => None,
    };
    let reward_flops = models.reward.as_ref().map(|r| match r {
        RewardArchitecture::ImageReward(c) => flops::image_reward(c, IMAGE_REWARD_TOKENS),
        RewardArchitecture::Clip(c) => flops::clip_vision(c),
    });
    let nerf_flops = flops::nerf_sample(&config.nerf);
    let chunk = (guidance.max_batch / frames).max(1) * frames;
    // Inside the reward window the guidance draws N noises; it scores them unless the
    // weights ignore rewards (`uniform`).
    let last_reward_step = |stage_steps: usize| {
        guidance
            .reward
            .as_ref()
            .map_or(0, |r| (stage_steps as f64 * r.reward_duration) as usize)
    };
    let scores = guidance
        .reward
        .as_ref()
        .is_some_and(|r| r.strategy.uses_rewards());
    // An edit (DDS) denoises the frozen source beside the edited scene: twice the UNet rows,
    // plus a forward render and encode of the source (scoring reads the edited branch only).
    let edit = config.edit.is_some();
    let branches = if edit { 2 } else { 1 };

    let mut render = Tally::default();
    let mut encode = Tally::default();
    let mut sds = Tally::default();
    let mut ddim = Tally::default();
    let mut decode = Tally::default();
    let mut reward = Tally::default();
    let mut vsd = Tally::default();
    let mut peak = StepMemory::default();
    let mut ddim_cache: Option<([usize; 2], f64)> = None;
    for step in steps.clone() {
        let (views, side, stage_step, stage_steps, schedule, renders) =
            match (&config.texture_stage, &stage_guidance) {
                (Some(t), Some(g)) if step >= config.steps => (
                    t.views.unwrap_or(config.views_per_step_at(last)),
                    t.render_size.unwrap_or(config.render_size_at(last)) as usize,
                    step - config.steps,
                    t.steps,
                    g,
                    false,
                ),
                _ => (
                    config.views_per_step_at(step),
                    config.render_size_at(step) as usize,
                    step,
                    config.steps,
                    guidance,
                    true,
                ),
            };
        let in_window = stage_step < last_reward_step(stage_steps);
        let scored = in_window && scores;
        let n = if in_window {
            guidance.reward.as_ref().map_or(1, |r| r.n_samples)
        } else {
            1
        };
        if renders && config.scene == SceneKind::Nerf {
            let samples = (views * side * side * config.renderer.num_samples_per_ray) as f64;
            // Above the chunk the renderer runs one more forward (render/recompute.rs), a
            // third of a forward + backward.
            let passes = if samples > config.renderer.train_chunk_samples as f64 {
                4.0
            } else {
                3.0
            } + if edit { 1.0 } else { 0.0 };
            render.calls += 1.0;
            render.flops += passes * samples * nerf_flops;
            render.seconds += passes / 3.0 * samples / anchors::NERF_SAMPLES_PER_S;
        }
        if let Some(f) = encode_flops {
            // The source's encode is a forward alone, a third of a forward + backward.
            let calls = if edit { 4.0 / 3.0 } else { 1.0 };
            encode.add(calls, views as f64 * f, anchors::VAE_ENCODE_BACKWARD);
        }
        let rows = n * views;
        sds.add_chunked(branches * rows, chunk, 2.0 * unet_flops, anchors::UNET, 1.0);
        if let Some(v) = &guidance.vsd {
            // The LoRA's estimate (one branch per sample), then its training step on every
            // view: a forward and backward, about three forwards.
            vsd.add_chunked(rows, chunk, unet_flops, anchors::UNET, 1.0);
            let trained = views * v.lora_timestep_samples;
            vsd.add_chunked(trained, trained, 3.0 * unet_flops, anchors::UNET, 1.0);
        }
        if scored {
            let scoring = guidance.reward.as_ref().map(|r| r.scoring);
            if scoring == Some(ScoringMode::Ddim) {
                let range = schedule.timestep_range(stage_step, NUM_TRAIN_TIMESTEPS);
                let passes = match ddim_cache {
                    Some((cached, passes)) if cached == range => passes,
                    _ => {
                        let passes = expected_ddim_passes(range[0], range[1]);
                        ddim_cache = Some((range, passes));
                        passes
                    }
                };
                ddim.add_chunked(rows, chunk, 2.0 * unet_flops, anchors::UNET, passes);
            }
            if let Some(f) = decode_flops {
                decode.add_chunked(rows, guidance.max_batch, f, anchors::VAE_DECODE, 1.0);
            }
            if let Some(f) = reward_flops {
                reward.add_chunked(rows, guidance.max_batch, f, anchors::REWARD, 1.0);
            }
        }
        let memory = step_memory(config, models, step.min(last), n);
        if memory.total() > peak.total() {
            peak = memory;
        }
    }
    let decode_name = if models.score_decoder.is_some() {
        "TAESD decode (scoring)"
    } else {
        "VAE decode (scoring)"
    };
    let component = |name, t: Tally| Component {
        name,
        flops: t.flops,
        calls: t.calls,
        seconds: t.seconds,
    };
    RunCost {
        steps: steps.len(),
        components: vec![
            component("render (NeRF fwd+bwd)", render),
            component("VAE encode fwd+bwd", encode),
            component("UNet, SDS pass (CFG)", sds),
            component("UNet, DDIM scoring", ddim),
            component(decode_name, decode),
            component("reward", reward),
            component("UNet, VSD LoRA (estimate + training)", vsd),
        ],
        peak,
    }
}
