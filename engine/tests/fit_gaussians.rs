//! Fitting 3D Gaussians to 64x64 renders of a known procedural scene reaches a held-out PSNR
//! of 25 dB: projection, the rasteriser's backward, Adam and densification work together.

use std::time::Instant;

use burn::backend::{Autodiff, NdArray};
use rewardsds_engine::fit::{FitError, GaussianFitConfig, fit_gaussians, render_gaussian_views};
use rewardsds_engine::procedural::SdfScene;
use rewardsds_engine::rgb_image::RgbImage;
use rewardsds_engine::scene::camera::{CameraSampler, OrbitConfig, evaluation_orbit};
use rewardsds_engine::scene::gaussians::{DensifyConfig, GaussiansConfig};

type B = Autodiff<NdArray<f32>>;

/// The bar.
const MIN_PSNR_DB: f32 = 25.0;

#[test]
fn fits_procedural_scene_to_heldout_psnr() {
    let device = Default::default();
    let scene = SdfScene::example();
    let mut sampler = CameraSampler::new(OrbitConfig::default(), 5).unwrap();
    let train = sampler.sample(32, 64, 64).unwrap();
    let views: Vec<_> = train.iter().map(|c| (c.clone(), scene.render(c))).collect();
    let heldout = evaluation_orbit(4, 15.0, 2.2, 40.0, 64, 64).unwrap();

    let config = GaussianFitConfig {
        gaussians: GaussiansConfig::new()
            .with_num_points(3000)
            .with_radius(0.8),
        densify: Some(
            DensifyConfig::new()
                .with_start(100)
                .with_end(400)
                .with_interval(100)
                .with_opacity_reset_interval(0),
        ),
        steps: 500,
        views_per_step: 2,
        background: scene.lighting.background,
        seed: 1,
        ..GaussianFitConfig::default()
    };
    let start = Instant::now();
    let mut losses = Vec::new();
    let mut counts = Vec::new();
    let gaussians = fit_gaussians::<B>(&views, &config, &device, |s| {
        losses.push(s.loss);
        if let Some(d) = s.densified {
            counts.push(d);
        }
    })
    .unwrap();
    let predicted =
        render_gaussian_views::<B>(&gaussians, &heldout, config.background, &device).unwrap();
    let truth: Vec<_> = heldout.iter().map(|c| scene.render(c)).collect();
    let (psnr, mean) = RgbImage::mean_psnr(&predicted, &truth);
    println!(
        "held-out PSNR {mean:.2} dB ({psnr:?}), loss {:.4} -> {:.4}, {} Gaussians, densify {counts:?}, {:.1}s",
        losses[0],
        losses[losses.len() - 1],
        gaussians.len(),
        start.elapsed().as_secs_f32()
    );
    assert!(!counts.is_empty(), "densification never ran");
    assert!(
        mean >= MIN_PSNR_DB,
        "held-out PSNR {mean:.2} dB < {MIN_PSNR_DB}"
    );
}

#[test]
fn bad_fit_input_is_named() {
    let device = Default::default();
    let scene = SdfScene::example();
    let mut sampler = CameraSampler::new(OrbitConfig::default(), 5).unwrap();
    let mut cams = sampler.sample(2, 16, 16).unwrap();
    cams[1] = cams[1].with_size(8, 8).unwrap();
    let views: Vec<_> = cams.iter().map(|c| (c.clone(), scene.render(c))).collect();
    let err =
        fit_gaussians::<B>(&views, &GaussianFitConfig::default(), &device, |_| {}).unwrap_err();
    assert!(
        matches!(&err, FitError::BadInput(m) if m.contains("view 1")),
        "{err}"
    );
    let err = fit_gaussians::<B>(&[], &GaussianFitConfig::default(), &device, |_| {}).unwrap_err();
    assert!(matches!(err, FitError::BadInput(_)));
}
