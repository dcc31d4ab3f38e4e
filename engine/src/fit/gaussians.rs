//! Photometric fitting of 3D Gaussians: L1 loss on a few random views per step, Adam per
//! attribute, densification and pruning as 3DGS does it.

use burn::tensor::{ElementConversion, Tensor, TensorData};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use super::FitError;
use crate::backend::EngineAutodiffBackend;
use crate::render::SplatRenderer;
use crate::rgb_image::RgbImage;
use crate::scene::camera::Camera;
use crate::scene::gaussians::{
    DensifyConfig, DensifyReport, DensifyStats, GaussianAdam, GaussianLearningRates, Gaussians,
    GaussiansConfig,
};

/// Fitting settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GaussianFitConfig {
    /// Where the Gaussians start.
    pub gaussians: GaussiansConfig,
    /// Densification and pruning; `None` keeps the count fixed.
    pub densify: Option<DensifyConfig>,
    /// Learning rate per attribute.
    pub learning_rates: GaussianLearningRates,
    /// Optimisation steps.
    pub steps: usize,
    /// Random training views per step.
    pub views_per_step: usize,
    /// Background colour behind the Gaussians.
    pub background: [f32; 3],
    /// Seed for the initial Gaussians, view batches and splits.
    pub seed: u64,
}

impl Default for GaussianFitConfig {
    fn default() -> Self {
        Self {
            gaussians: GaussiansConfig::new().with_radius(0.8),
            densify: Some(DensifyConfig::new()),
            learning_rates: GaussianLearningRates::default(),
            steps: 1000,
            views_per_step: 4,
            background: [1.0; 3],
            seed: 0,
        }
    }
}

/// What one step reports.
#[derive(Debug, Clone, Copy)]
pub struct GaussianFitStep {
    /// Step index, from 0.
    pub step: usize,
    /// Mean absolute error of the step's views.
    pub loss: f32,
    /// Gaussians after the step.
    pub count: usize,
    /// What densification did at this step, if it ran.
    pub densified: Option<DensifyReport>,
}

/// Fits fresh Gaussians to `views` (camera + image pairs, one size); `on_step` sees every step.
pub fn fit_gaussians<B: EngineAutodiffBackend>(
    views: &[(Camera, RgbImage)],
    config: &GaussianFitConfig,
    device: &B::Device,
    mut on_step: impl FnMut(GaussianFitStep),
) -> Result<Gaussians<B::InnerBackend>, FitError> {
    let first = views
        .first()
        .ok_or_else(|| FitError::BadInput("no training views".into()))?;
    for (i, (camera, image)) in views.iter().enumerate() {
        if (camera.width, camera.height) != (image.width, image.height)
            || (camera.width, camera.height) != (first.0.width, first.0.height)
        {
            return Err(FitError::BadInput(format!(
                "view {i}: camera {}x{}, image {}x{}; all views must share view 0's size {}x{}",
                camera.width,
                camera.height,
                image.width,
                image.height,
                first.0.width,
                first.0.height
            )));
        }
    }
    config
        .learning_rates
        .validate()
        .map_err(FitError::BadConfig)?;
    if config.views_per_step == 0 {
        return Err(FitError::BadConfig(
            "views_per_step must be at least 1".into(),
        ));
    }
    let mut params = config
        .gaussians
        .init::<B::InnerBackend>(config.seed, device)
        .map_err(|e| FitError::BadConfig(e.to_string()))?;
    let mut adam = GaussianAdam::new(config.learning_rates.clone(), &params);
    let mut stats = DensifyStats::new(params.len());
    let mut rng = StdRng::seed_from_u64(config.seed);
    let background =
        Tensor::<B, 2>::from_data(TensorData::new(config.background.to_vec(), [1, 3]), device);
    let (width, height) = (first.0.width as usize, first.0.height as usize);

    for step in 0..config.steps {
        let batch: Vec<usize> = (0..config.views_per_step)
            .map(|_| rng.random_range(0..views.len()))
            .collect();
        let cameras: Vec<Camera> = batch.iter().map(|&i| views[i].0.clone()).collect();
        let target: Vec<f32> = batch
            .iter()
            .flat_map(|&i| views[i].1.data.iter().copied())
            .collect();
        let rows = target.len() / 3;
        let target = Tensor::<B, 2>::from_data(TensorData::new(target, [rows, 3]), device);

        let densify = config.densify.as_ref().filter(|d| step < d.end);
        let tracked = Gaussians::<B>::tracked(&params);
        let out = SplatRenderer
            .render(&tracked, &cameras, background.clone(), densify.is_some())
            .map_err(|e| FitError::BadInput(e.to_string()))?;
        let loss = (out.render.rgb.clone() - target).abs().mean();
        let value: f32 = loss.clone().into_scalar().elem();
        if !value.is_finite() {
            return Err(FitError::NonFinite { step, loss: value });
        }
        let grads = loss.backward();
        if let (Some(_), Some(probe)) = (densify, &out.mean2d_probe) {
            if let Some(g) = probe.grad(&grads) {
                let g: Vec<f32> = g.into_data().convert::<f32>().to_vec().unwrap_or_default();
                stats.add(&g, &out.radii(), width, height);
            }
        }
        let param_grads = tracked.grads(&grads);
        params = adam.step(params, param_grads);

        let done = step + 1;
        let mut densified = None;
        if let Some(d) = densify {
            if d.densifies_at(done) {
                let (next, report) =
                    d.densify_and_prune(params, &mut adam, &stats, done, config.seed ^ done as u64);
                params = next;
                stats = DensifyStats::new(params.len());
                densified = Some(report);
            }
            if d.resets_opacity_at(done) {
                params = d.reset_opacity(params, &mut adam);
            }
        }
        on_step(GaussianFitStep {
            step,
            loss: value,
            count: params.len(),
            densified,
        });
    }
    params
        .check_finite()
        .map_err(|e| FitError::BadInput(e.to_string()))?;
    Ok(params)
}

/// Renders `cameras` one at a time (no gradients) over `background`.
pub fn render_gaussian_views<B: EngineAutodiffBackend>(
    gaussians: &Gaussians<B::InnerBackend>,
    cameras: &[Camera],
    background: [f32; 3],
    device: &B::Device,
) -> Result<Vec<RgbImage>, FitError> {
    let bg = Tensor::<B::InnerBackend, 2>::from_data(
        TensorData::new(background.to_vec(), [1, 3]),
        device,
    );
    cameras
        .iter()
        .map(|camera| {
            let out = SplatRenderer
                .render(gaussians, std::slice::from_ref(camera), bg.clone(), false)
                .map_err(|e| FitError::BadInput(e.to_string()))?;
            Ok(RgbImage {
                width: camera.width,
                height: camera.height,
                data: out
                    .render
                    .rgb
                    .into_data()
                    .convert::<f32>()
                    .to_vec()
                    .expect("float data"),
            })
        })
        .collect()
}
