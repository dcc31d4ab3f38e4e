//! Gaussians as the generated scene (DreamGaussian's fast path): rendered with the splat
//! rasteriser, updated with per-attribute Adam, densified and pruned as they are optimised.

use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::generator::GenerateError;
use crate::backend::EngineAutodiffBackend;
use crate::guidance::ConfigError;
use crate::mesh::Aabb;
use crate::render::splat::SplatOutput;
use crate::render::{RenderOutput, SplatRenderer};
use crate::rgb_image::RgbImage;
use crate::scene::camera::Camera;
use crate::scene::gaussians::{
    DensifyConfig, DensifyReport, DensifyStats, GaussianAdam, GaussianLearningRates, Gaussians,
    GaussiansConfig, PruneConfig, PruneConfigError, PruneReport, SplatCloud,
};

/// The Gaussian scene's settings in a [`super::GenerateConfig`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GaussianSceneConfig {
    /// Where the Gaussians start (DreamGaussian: 5000 in a ball of radius 0.5).
    pub init: GaussiansConfig,
    /// Densification and pruning; `None` keeps the count fixed.
    pub densify: Option<DensifyConfig>,
    /// Learning rate per attribute.
    pub learning_rates: GaussianLearningRates,
    /// Colour behind the Gaussians (the prior's usual backdrop).
    pub background: [f32; 3],
    /// What is dropped before the Gaussians are meshed: the faded and the stray, which would
    /// otherwise mesh as blobs around the prop.
    pub prune: PruneConfig,
}

impl Default for GaussianSceneConfig {
    fn default() -> Self {
        Self {
            init: GaussiansConfig::new().with_num_points(2000),
            // DreamGaussian's schedule. The gradient threshold depends on the guidance's loss
            // scale: with the Tiny World prior the median Gaussian sees ~0.2 (NDC units) and
            // the top tenth ~0.5 (REWARDSDS_DEBUG_DENSIFY=1 prints these), so 0.4 densifies
            // about the top tenth per round.
            densify: Some(
                DensifyConfig::new()
                    .with_start(100)
                    .with_end(3000)
                    .with_interval(100)
                    .with_opacity_reset_interval(700)
                    .with_grad_threshold(0.4)
                    .with_max_gaussians(50_000),
            ),
            learning_rates: GaussianLearningRates::default(),
            background: [0.92; 3],
            prune: PruneConfig::default(),
        }
    }
}

impl GaussianSceneConfig {
    /// Checks the values; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.init
            .validate()
            .map_err(|e| ConfigError::new("gaussians.init", e.to_string()))?;
        self.learning_rates
            .validate()
            .map_err(|e| ConfigError::new("gaussians.learning_rates", e))?;
        if let Some(d) = &self.densify
            && d.interval == 0
        {
            return Err(ConfigError::new(
                "gaussians.densify.interval",
                "must be at least 1",
            ));
        }
        self.prune.validate().map_err(|e| {
            ConfigError::new(
                format!("gaussians.prune.{}", e.name),
                format!("{} {}", e.value, e.why),
            )
        })?;
        if self.background.iter().any(|c| !(0.0..=1.0).contains(c)) {
            return Err(ConfigError::new(
                "gaussians.background",
                format!("{:?} must lie in [0, 1]", self.background),
            ));
        }
        Ok(())
    }
}

/// The optimised Gaussians and everything their updates need.
#[derive(Debug)]
pub struct GaussianScene<B: EngineAutodiffBackend> {
    pub(super) params: Gaussians<B::InnerBackend>,
    pub(super) adam: GaussianAdam<B::InnerBackend>,
    pub(super) stats: DensifyStats,
    config: GaussianSceneConfig,
    /// What the last densification did.
    pub last_densify: Option<DensifyReport>,
}

/// One step's render, kept until its gradients arrive.
pub(super) struct PendingStep<B: EngineAutodiffBackend> {
    tracked: Gaussians<B>,
    out: SplatOutput<B>,
}

impl<B: EngineAutodiffBackend> GaussianScene<B> {
    /// Fresh Gaussians from `seed`.
    pub fn new(
        config: &GaussianSceneConfig,
        seed: u64,
        device: &B::Device,
    ) -> Result<Self, GenerateError> {
        config.validate()?;
        let params = config
            .init
            .init::<B::InnerBackend>(seed, device)
            .map_err(|e| ConfigError::new("gaussians.init", e.to_string()))?;
        Self::from_gaussians(config, params)
    }

    /// Starts from `params` (an edited asset's Gaussians) with a fresh optimiser.
    pub fn from_gaussians(
        config: &GaussianSceneConfig,
        params: Gaussians<B::InnerBackend>,
    ) -> Result<Self, GenerateError> {
        config.validate()?;
        Ok(Self {
            adam: GaussianAdam::new(config.learning_rates.clone(), &params),
            stats: DensifyStats::new(params.len()),
            params,
            config: config.clone(),
            last_densify: None,
        })
    }

    /// The Gaussians now.
    pub fn gaussians(&self) -> &Gaussians<B::InnerBackend> {
        &self.params
    }

    fn background<C: burn::tensor::backend::Backend>(&self, device: &C::Device) -> Tensor<C, 2> {
        Tensor::from_data(
            TensorData::new(self.config.background.to_vec(), [1, 3]),
            device,
        )
    }

    /// Renders `cameras` (one size) with gradients: images `[views, 3, h, w]`.
    pub(super) fn render(
        &self,
        cameras: &[Camera],
        step: usize,
        device: &B::Device,
    ) -> Result<(Tensor<B, 4>, PendingStep<B>), GenerateError> {
        let tracked = Gaussians::<B>::tracked(&self.params);
        let probe = self.config.densify.as_ref().is_some_and(|d| step < d.end);
        let out = SplatRenderer
            .render(&tracked, cameras, self.background(device), probe)
            .map_err(|e| ConfigError::new("render_size", e.to_string()))?;
        let size = out.size;
        let images =
            RenderOutput::images(out.render.rgb.clone(), size.views, size.height, size.width);
        Ok((images, PendingStep { tracked, out }))
    }

    /// Applies the step's gradients; `done` is the number of steps after it (1-based).
    pub(super) fn update(
        &mut self,
        pending: PendingStep<B>,
        grads: &B::Gradients,
        done: usize,
        seed: u64,
    ) {
        let PendingStep { tracked, out } = pending;
        if let Some(probe) = &out.mean2d_probe
            && let Some(g) = probe.grad(grads)
        {
            let g: Vec<f32> = g.into_data().convert::<f32>().to_vec().unwrap_or_default();
            self.stats
                .add(&g, &out.radii(), out.size.width, out.size.height);
        }
        let param_grads = tracked.grads(grads);
        // Tensor clones share storage: no copy.
        self.params = self.adam.step(self.params.clone(), param_grads);
        if let Some(d) = &self.config.densify {
            if d.densifies_at(done) {
                let (next, report) = d.densify_and_prune(
                    self.params.clone(),
                    &mut self.adam,
                    &self.stats,
                    done,
                    seed,
                );
                self.params = next;
                self.stats = DensifyStats::new(self.params.len());
                self.last_densify = Some(report);
                log::info!(
                    "densify at step {done}: {} cloned, {} split, {} pruned, {} Gaussians",
                    report.cloned,
                    report.split,
                    report.pruned,
                    report.total
                );
            }
            if d.resets_opacity_at(done) {
                self.params = d.reset_opacity(self.params.clone(), &mut self.adam);
            }
        }
    }

    /// The colour behind the Gaussians in every render the guidance sees.
    pub fn background_color(&self) -> [f32; 3] {
        self.config.background
    }

    /// Renders `cameras` without gradients.
    pub fn render_views(
        &self,
        cameras: &[Camera],
        device: &B::Device,
    ) -> Result<Vec<RgbImage>, GenerateError> {
        crate::fit::render_gaussian_views::<B>(
            &self.params,
            cameras,
            self.config.background,
            device,
        )
        .map_err(|e| ConfigError::new("gaussians", e.to_string()).into())
    }

    /// The Gaussians on the host that should become surface (`prune` applied), a box
    /// around them for surface extraction, and what was pruned.
    pub fn cloud(&self) -> Result<(SplatCloud, Aabb, PruneReport), PruneConfigError> {
        let (cloud, report) = self.params.to_cloud().pruned(&self.config.prune)?;
        let bounds = cloud.mesh_bounds();
        Ok((cloud, bounds, report))
    }
}
