//! Sampling images from a pixel-space prior: deterministic DDIM with classifier-free guidance.

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

use crate::host_batch::map_batch_labelled;
use crate::models::clip_text::CLIPTextModel;
use crate::models::schedulers::{DDIMScheduler, SchedulerError};
use crate::models::tokenizer::CLIPTokenizer;
use crate::models::unet_2d::UNet2DConditionModel;
use crate::weights::LoadError;

/// Failures of sampling.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// A prompt could not be tokenized.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The scheduler rejected the step count.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
}

/// One image per prompt, `[n, 3, s, s]` in `[0, 1]`: `steps` DDIM steps from noise drawn with
/// the backend seeded by `seed`, guidance `eps_u + scale (eps_c - eps_u)`. `class_labels`
/// (`[n, width]`, e.g. [`camera_labels`](crate::guidance::camera_labels)) for a
/// class-conditioned UNet, the same in both branches (the camera is not what CFG drops).
#[allow(clippy::too_many_arguments)]
pub fn sample<B: Backend>(
    unet: &UNet2DConditionModel<B>,
    text_encoder: &CLIPTextModel<B>,
    tokenizer: &CLIPTokenizer,
    scheduler: &DDIMScheduler,
    prompts: &[String],
    class_labels: Option<Tensor<B, 2>>,
    guidance_scale: f32,
    steps: usize,
    size: usize,
    seed: u64,
    device: &B::Device,
) -> Result<Tensor<B, 4>, SampleError> {
    let n = prompts.len();
    let mut scheduler = scheduler.clone();
    scheduler.set_timesteps(steps)?;
    let mut all: Vec<&str> = prompts.iter().map(String::as_str).collect();
    all.extend(std::iter::repeat_n("", n));
    // [2n, seq, hidden]: conditional first, unconditional second.
    let context = text_encoder.prompt_embeds(tokenizer.input_ids(&all, device)?, 0);
    B::seed(device, seed);
    let mut x = Tensor::<B, 4>::random([n, 3, size, size], Distribution::Normal(0.0, 1.0), device);
    let labels = class_labels.map(|l| Tensor::cat(vec![l.clone(), l], 0));
    for &t in &scheduler.timesteps.clone() {
        let input = Tensor::cat(vec![x.clone(), x.clone()], 0);
        let timestep = Tensor::<B, 1>::from_floats([t as f32], device);
        // One UNet forward per core on a CPU backend (`host_batch`).
        let eps = map_batch_labelled(input, context.clone(), labels.clone(), |x, c, l| {
            unet.forward_with_class_labels(x, timestep.clone(), c, l)
        });
        let cond = eps.clone().slice(0..n);
        let uncond = eps.slice(n..2 * n);
        let guided = uncond.clone() + (cond - uncond) * guidance_scale;
        x = scheduler.step(guided, t, x)?.prev_sample;
    }
    Ok(((x + 1.0) * 0.5).clamp(0.0, 1.0))
}
