//! Photometric fitting of a NeRF (here) or Gaussians ([`gaussians`]) to posed images: the
//! check that the renderers and their gradients are right before any diffusion prior is
//! involved, and the `fit_scene` example's engine.

pub mod gaussians;

pub use gaussians::{GaussianFitConfig, GaussianFitStep, fit_gaussians, render_gaussian_views};

use crate::backend::EngineAutodiffBackend;
use burn::module::AutodiffModule;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::optim::OptimizerConfig;
use crate::render::{VolumeRenderer, VolumeRendererConfig};
use crate::rgb_image::RgbImage;
use crate::scene::camera::{Camera, Rays};
use crate::scene::nerf::{Nerf, NerfConfig, NerfLearningRates};

/// Fitting settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FitConfig {
    /// The field.
    pub nerf: NerfConfig,
    /// Samples along each ray.
    pub renderer: VolumeRendererConfig,
    /// Optimisation steps.
    pub steps: usize,
    /// Random rays (from all training views) per step.
    pub rays_per_step: usize,
    /// Learning rate per group.
    pub learning_rates: NerfLearningRates,
    /// Update rule.
    pub optimizer: OptimizerConfig,
    /// Seed for parameters, ray batches and sample jitter.
    pub seed: u64,
}

impl Default for FitConfig {
    fn default() -> Self {
        Self {
            nerf: NerfConfig::new(),
            renderer: VolumeRendererConfig::new(),
            steps: 1000,
            rays_per_step: 4096,
            learning_rates: NerfLearningRates {
                encoding: 0.03,
                network: 0.01,
                background: 0.01,
            },
            optimizer: OptimizerConfig::default(),
            seed: 0,
        }
    }
}

/// What one step reports.
#[derive(Debug, Clone, Copy)]
pub struct FitStep {
    /// Step index, from 0.
    pub step: usize,
    /// Mean squared error of the step's ray batch.
    pub loss: f32,
}

/// Why fitting stopped early.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    /// No training views, or views of different kinds.
    #[error("fit input is invalid: {0}")]
    BadInput(String),
    /// A setting is invalid.
    #[error("fit config is invalid: {0}")]
    BadConfig(String),
    /// The loss stopped being a number.
    #[error("loss became {loss} at step {step}: stopping (lower the learning rates)")]
    NonFinite {
        /// Step where it happened.
        step: usize,
        /// The value.
        loss: f32,
    },
}

/// Fits a fresh NeRF to `views` (camera + image pairs); `on_step` sees every step's loss.
pub fn fit_nerf<B: EngineAutodiffBackend>(
    views: &[(Camera, RgbImage)],
    config: &FitConfig,
    device: &B::Device,
    mut on_step: impl FnMut(FitStep),
) -> Result<Nerf<B>, FitError> {
    if views.is_empty() {
        return Err(FitError::BadInput("no training views".into()));
    }
    for (i, (camera, image)) in views.iter().enumerate() {
        if (camera.width, camera.height) != (image.width, image.height) {
            return Err(FitError::BadInput(format!(
                "view {i}: camera is {}x{} but its image is {}x{}",
                camera.width, camera.height, image.width, image.height
            )));
        }
    }
    config.nerf.validate().map_err(FitError::BadConfig)?;
    config.optimizer.validate().map_err(FitError::BadConfig)?;
    config
        .learning_rates
        .validate()
        .map_err(FitError::BadConfig)?;
    if config.rays_per_step == 0 || config.renderer.num_samples_per_ray == 0 {
        return Err(FitError::BadConfig(
            "rays_per_step and num_samples_per_ray must be at least 1".into(),
        ));
    }

    B::seed(device, config.seed);
    let cameras: Vec<Camera> = views.iter().map(|(c, _)| c.clone()).collect();
    let rays = Rays::of_cameras(&cameras);
    let colors: Vec<f32> = views
        .iter()
        .flat_map(|(_, i)| i.data.iter().copied())
        .collect();
    let renderer = VolumeRenderer::new(config.renderer.clone());
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut nerf = config.nerf.init::<B>(device);
    let mut optimizer = config.optimizer.init::<B, Nerf<B>>();

    for step in 0..config.steps {
        let batch: Vec<usize> = (0..config.rays_per_step)
            .map(|_| rng.random_range(0..rays.len()))
            .collect();
        let target: Vec<f32> = batch
            .iter()
            .flat_map(|&i| colors[3 * i..3 * i + 3].iter().copied())
            .collect();
        let target = Tensor::<B, 2>::from_data(TensorData::new(target, [batch.len(), 3]), device);
        let out = renderer.render(&nerf, &rays.select(&batch), true, device);
        let loss = (out.rgb - target).powi_scalar(2).mean();
        let value: f32 = loss.clone().into_scalar().elem();
        if !value.is_finite() {
            return Err(FitError::NonFinite { step, loss: value });
        }
        on_step(FitStep { step, loss: value });
        let mut grads = loss.backward();
        let groups = nerf.param_groups(&mut grads, &config.learning_rates);
        nerf = optimizer.step(nerf, groups);
    }
    Ok(nerf)
}

/// Renders `cameras` (no gradients) and returns the images.
pub fn render_views<B: EngineAutodiffBackend>(
    nerf: &Nerf<B>,
    renderer: &VolumeRenderer,
    cameras: &[Camera],
    device: &B::Device,
) -> Vec<RgbImage> {
    let inner = nerf.valid();
    cameras
        .iter()
        .map(|camera| {
            let out = renderer.render_images(&inner, std::slice::from_ref(camera), device);
            RgbImage {
                width: camera.width,
                height: camera.height,
                data: out
                    .rgb
                    .into_data()
                    .convert::<f32>()
                    .to_vec()
                    .expect("float data"),
            }
        })
        .collect()
}

use burn::tensor::ElementConversion as _;
