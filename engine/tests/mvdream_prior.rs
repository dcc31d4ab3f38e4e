//! MVDream as a prior: a diffusers-style pipeline folder around the tiny MVDream UNet (its
//! original torch pickle as the UNet's weights), loaded by `DiffusionPrior::from_folder`, and
//! SDS steps on groups of 4 views whose cameras reach the UNet in MVDream's convention.

use std::path::PathBuf;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use rewardsds_engine::guidance::{CameraInput, DiffusionPrior, Guidance, GuidanceConfig};
use rewardsds_engine::models::camera_utils::get_camera;

mod pipeline_folders;
use pipeline_folders::{mvdream_folder, mvdream_views};

type I = NdArray<f32>;
type A = Autodiff<I>;

/// A fresh MVDream pipeline folder in the temp directory.
fn mvdream_pipeline(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rsds-mvdream-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    mvdream_folder(&dir);
    dir
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn a_multi_view_pipeline_folder_loads_as_a_camera_conditioned_prior() {
    let device = Default::default();
    let dir = mvdream_pipeline("load");
    let prior = DiffusionPrior::<I>::from_folder(&dir, &device).unwrap();
    assert_eq!(prior.num_frames(), 4);
    assert_eq!(prior.camera_input(), Some(CameraInput::MvDream));
    assert_eq!(prior.class_labels_width(), Some(16));
    // image_size 16 latents through the 2-level VAE: 32 px images.
    assert_eq!(prior.resolution(), 32);

    // The views' cameras are MVDream's own for those angles.
    let labels = to_vec(prior.camera_labels(&mvdream_views()[..4], &device).unwrap());
    let reference = get_camera(4, 15.0, 30.0, 360.0, true).concat();
    assert!(max_abs(&labels, &reference) < 1e-6);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn views_attend_within_their_group_only() {
    let device = Default::default();
    let dir = mvdream_pipeline("groups");
    let prior = DiffusionPrior::<I>::from_folder(&dir, &device).unwrap();
    let config = GuidanceConfig {
        view_dependent_prompting: false,
        ..Default::default()
    };
    let mut guidance = Guidance::<A>::new(config, prior, "a red cube", None, 100).unwrap();
    let base = Tensor::<I, 4>::random([8, 3, 32, 32], Distribution::Default, &device);
    let mut grad = |images: Tensor<I, 4>| {
        let x = Tensor::<A, 4>::from_inner(images).require_grad();
        let out = guidance.step(x.clone(), &mvdream_views(), 3, 7).unwrap();
        let grads = out.loss.backward();
        to_vec(x.grad(&grads).unwrap())
    };
    let a = grad(base.clone());
    // Change the first view of the first object only.
    let mut changed = base.clone();
    changed = changed.slice_assign(
        [0..1, 0..3, 0..32, 0..32],
        Tensor::random([1, 3, 32, 32], Distribution::Default, &device),
    );
    let b = grad(changed);
    let per_view = a.len() / 8;
    let view = |g: &[f32], v: usize| g[v * per_view..(v + 1) * per_view].to_vec();
    // Its group's other views see it through the 3D self-attention...
    for v in 1..4 {
        let d = max_abs(&view(&a, v), &view(&b, v));
        assert!(d > 1e-6, "view {v} did not see view 0 (max change {d})");
    }
    // ...the other object's views do not.
    for v in 4..8 {
        let d = max_abs(&view(&a, v), &view(&b, v));
        assert!(d == 0.0, "view {v} of the other object moved by {d}");
    }

    // Views that are not whole groups of 4 are refused, naming num_frames.
    let six = Tensor::<A, 4>::from_inner(base.narrow(0, 0, 6)).require_grad();
    let err = guidance
        .step(six, &mvdream_views()[..6], 3, 7)
        .unwrap_err()
        .to_string();
    assert!(err.contains("num_frames"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}
