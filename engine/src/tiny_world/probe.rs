//! What the prior knows at each noise level: noise true renders to timestep `t`, let the UNet
//! predict the noise, and judge the clean-image estimate `x0_hat` it implies. Sampling mixes
//! every noise level together; this separates them, so a prior that draws noise can be told
//! apart from one that does not know the scene (and SDS, which samples `t` at random, can be
//! given the levels the prior is good at).

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::captions::Composition;
use super::evaluate::{Judge, Retrieval};
use crate::guidance::{DiffusionPrior, ViewAngles, camera_labels, standard_normal};
use crate::models::SchedulerError;
use crate::weights::LoadError;

/// Failures of a probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A caption could not be tokenized.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A timestep outside the schedule.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// The images and captions do not pair up.
    #[error("{images} images for {captions} captions: one image per caption")]
    Mismatch {
        /// Images given.
        images: usize,
        /// Captions given.
        captions: usize,
    },
    /// A camera-conditioned prior was given no camera for some image.
    #[error("the prior is camera-conditioned: {images} images need as many views, got {views}")]
    MissingViews {
        /// Images given.
        images: usize,
        /// Views given.
        views: usize,
    },
}

/// The prior at one noise level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeRow {
    /// Training timestep.
    pub timestep: usize,
    /// `alpha_bar_t`: the share of the signal's variance left.
    pub alpha_prod: f32,
    /// Mean squared error of the predicted noise (the training loss at this `t`).
    pub eps_mse: f32,
    /// Mean squared error of the clean estimate, in `[0, 1]` pixel units.
    pub x0_mse: f32,
    /// Mean squared error of the noisy input itself rescaled by `1 / sqrt(alpha_bar_t)`, in
    /// `[0, 1]` pixel units: what `x0_mse` would be if the UNet predicted zero noise.
    pub input_mse: f32,
    /// The judge on the clean estimates.
    pub judge: Retrieval,
}

/// Probe `prior` at each of `timesteps` with `images` (`[n, 3, s, s]` in `[0, 1]`, at the
/// prior's resolution) of `captions`, guidance `eps_u + scale (eps_c - eps_u)` (1 = the
/// conditional prediction). The same noise (seeded by `seed`) serves every timestep, so rows
/// differ only by the noise level. `views` are the images' cameras, which a camera-conditioned
/// prior is given. Returns a row and the clean estimates (`[0, 1]`) per timestep.
#[allow(clippy::too_many_arguments)]
pub fn denoise_probe<B: Backend>(
    prior: &DiffusionPrior<B>,
    judge: &Judge<B>,
    images: Tensor<B, 4>,
    captions: &[Composition],
    views: &[ViewAngles],
    timesteps: &[usize],
    guidance_scale: f32,
    seed: u64,
) -> Result<Vec<(ProbeRow, Tensor<B, 4>)>, ProbeError> {
    let dims = images.dims();
    if dims[0] != captions.len() {
        return Err(ProbeError::Mismatch {
            images: dims[0],
            captions: captions.len(),
        });
    }
    let device = images.device();
    let class_labels = match prior.class_labels_width() {
        None => None,
        Some(_) if views.len() == dims[0] => Some(camera_labels::<B>(views, &device)),
        Some(_) => {
            return Err(ProbeError::MissingViews {
                images: dims[0],
                views: views.len(),
            });
        }
    };
    let text: Vec<String> = captions.iter().map(Composition::caption).collect();
    let refs: Vec<&str> = text.iter().map(String::as_str).collect();
    let cond = prior.encode_prompts(&refs)?;
    let uncond = prior.encode_prompts(&[""])?;
    let mut rng = StdRng::seed_from_u64(seed);
    let noise = Tensor::<B, 4>::from_data(
        TensorData::new(standard_normal(&mut rng, dims.iter().product()), dims),
        &device,
    );
    let x0 = images.clone() * 2.0 - 1.0;
    let scheduler = prior.scheduler();
    let mse = |a: Tensor<B, 4>, b: Tensor<B, 4>| -> f32 {
        (a - b).powi_scalar(2).mean().into_scalar().elem()
    };
    let to_unit = |x: Tensor<B, 4>| (x * 0.5 + 0.5).clamp(0.0, 1.0);
    let mut rows = Vec::with_capacity(timesteps.len());
    for &t in timesteps {
        let alpha_prod = scheduler.alpha_prod(t)?;
        let x_t = scheduler.add_noise(x0.clone(), noise.clone(), &[t])?;
        let eps = prior.predict_noise_cfg(
            x_t.clone(),
            t,
            cond.clone(),
            uncond.clone(),
            class_labels.clone(),
            guidance_scale,
        )?;
        let x0_hat = to_unit(scheduler.original_from_epsilon(eps.clone(), x_t.clone(), &[t])?);
        let input = to_unit(x_t / alpha_prod.sqrt());
        let row = ProbeRow {
            timestep: t,
            alpha_prod,
            eps_mse: mse(eps, noise.clone()),
            x0_mse: mse(x0_hat.clone(), images.clone()),
            input_mse: mse(input, images.clone()),
            judge: judge.retrieval(x0_hat.clone(), captions),
        };
        rows.push((row, x0_hat));
    }
    Ok(rows)
}
