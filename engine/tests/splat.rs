//! The Gaussian rasteriser (custom op with a hand-written backward) against the dense tensor
//! reference: forward values and gradients, directly on per-view Gaussians and through the
//! projection from 3D parameters; empty scenes, bad input.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Distribution, Tensor, TensorData};
use glam::Vec3;
use rewardsds_engine::render::splat::dense::rasterize_dense;
use rewardsds_engine::render::splat::{
    OUT, PACK, RasterSize, SplatError, SplatRenderer, project, project_with_tensor_ops, rasterize,
};
use rewardsds_engine::scene::camera::Camera;
use rewardsds_engine::scene::gaussians::{Gaussians, GaussiansConfig, GaussiansError};

mod common;
use common::random_packed;

type B = NdArray<f32>;
type A = Autodiff<B>;

fn max_abs(a: Tensor<B, 2>, b: Tensor<B, 2>) -> f32 {
    (a - b).abs().max().into_scalar()
}

fn scale(t: &Tensor<B, 2>) -> f32 {
    t.clone().abs().max().into_scalar().max(1e-6)
}

#[test]
fn op_matches_dense_reference_forward_and_gradients() {
    let device = Default::default();
    // Not a multiple of the tile size, several views, enough Gaussians to overlap deeply.
    let size = RasterSize {
        views: 3,
        width: 37,
        height: 29,
    };
    let n = 120;
    let packed = random_packed(n, size, 7, 8.0, false);
    let leaf = || {
        Tensor::<A, 3>::from_data(
            TensorData::new(packed.clone(), [size.views, n, PACK]),
            &device,
        )
        .require_grad()
    };
    let rows = size.views * size.pixels();
    let weights = Tensor::<A, 2>::random([rows, OUT], Distribution::Uniform(-1.0, 1.0), &device);

    let input = leaf();
    let out = rasterize(input.clone(), size);
    let grads = (out.clone() * weights.clone()).sum().backward();
    let grad_op = input.grad(&grads).unwrap().reshape([size.views * n, PACK]);

    let input = leaf();
    let reference = rasterize_dense(input.clone(), size);
    let grads = (reference.clone() * weights).sum().backward();
    let grad_dense = input.grad(&grads).unwrap().reshape([size.views * n, PACK]);

    let forward = max_abs(out.inner(), reference.inner());
    let backward = max_abs(grad_op.clone(), grad_dense.clone());
    let relative = backward / scale(&grad_dense);
    println!(
        "forward max abs error {forward:e}; gradient max abs error {backward:e} ({relative:e} of the largest)"
    );
    // The images are not trivial: something is drawn and something is opaque.
    let opacity = out_opacity_max(&packed, size, n);
    assert!(
        opacity > 0.9,
        "nothing opaque in the test scene ({opacity})"
    );
    assert!(forward < 1e-4, "forward differs by {forward}");
    assert!(
        relative < 1e-3,
        "gradients differ by {backward} ({relative} relative)"
    );
}

fn out_opacity_max(packed: &[f32], size: RasterSize, n: usize) -> f32 {
    let device = Default::default();
    let input = Tensor::<B, 3>::from_data(
        TensorData::new(packed.to_vec(), [size.views, n, PACK]),
        &device,
    );
    rasterize(input, size).narrow(1, 4, 1).max().into_scalar()
}

fn cameras(size: u32) -> Vec<Camera> {
    [(20.0f32, 15.0f32), (140.0, 30.0)]
        .iter()
        .map(|&(az, el)| Camera::orbit(az, el, 2.5, 45.0, size, size).unwrap())
        .collect()
}

/// `n` anisotropic, randomly rotated Gaussians with some view-dependent colour when
/// `sh_degree` > 0.
fn anisotropic(n: usize, sh_degree: usize, seed: u64) -> Gaussians<B> {
    let device = Default::default();
    let config = GaussiansConfig::new()
        .with_num_points(n)
        .with_sh_degree(sh_degree)
        .with_scale_of_spacing(1.0);
    let mut g: Gaussians<B> = config.init(seed, &device).unwrap();
    g.log_scales = g.log_scales.clone()
        + Tensor::random(
            g.log_scales.dims(),
            Distribution::Uniform(-0.7, 0.7),
            &device,
        );
    g.rotations = Tensor::random(g.rotations.dims(), Distribution::Normal(0.0, 1.0), &device);
    g.sh_rest = g
        .sh_rest
        .map(|r| Tensor::random(r.dims(), Distribution::Uniform(-0.3, 0.3), &device));
    g
}

/// Gradients of the 3D parameters through projection + op equal those through projection +
/// dense reference.
#[test]
fn parameter_gradients_match_dense_reference() {
    let device = Default::default();
    let inner = anisotropic(200, 1, 3);
    let cams = cameras(24);
    let size = RasterSize {
        views: 2,
        width: 24,
        height: 24,
    };
    let weights = Tensor::<A, 2>::random(
        [size.views * size.pixels(), OUT],
        Distribution::Uniform(-1.0, 1.0),
        &device,
    );

    let run = |dense: bool| {
        let g = Gaussians::<A>::tracked(&inner);
        let packed = project(&g, &cams, None);
        let out = if dense {
            rasterize_dense(packed, size)
        } else {
            rasterize(packed, size)
        };
        let grads = (out * weights.clone()).sum().backward();
        g.grads(&grads)
    };
    let (op, dense) = (run(false), run(true));
    let pairs = [
        ("means", op.means, dense.means),
        ("log_scales", op.log_scales, dense.log_scales),
        ("rotations", op.rotations, dense.rotations),
        ("opacity_logits", op.opacity_logits, dense.opacity_logits),
        ("sh_dc", op.sh_dc, dense.sh_dc),
        (
            "sh_rest",
            op.sh_rest.unwrap().reshape([200, 9]),
            dense.sh_rest.unwrap().reshape([200, 9]),
        ),
    ];
    assert_gradients_match(pairs.into(), 2e-3);
}

/// Every `(name, got, want)` gradient is non-trivial and within `tolerance` of `want`'s
/// largest entry.
fn assert_gradients_match(pairs: Vec<(&str, Tensor<B, 2>, Tensor<B, 2>)>, tolerance: f32) {
    for (name, a, b) in pairs {
        let (err, s) = (max_abs(a, b.clone()), scale(&b));
        println!("  {name}: max abs error {err:e} (largest gradient {s:e})");
        assert!(s > 1e-4, "{name}: no gradient reached the parameters");
        assert!(
            err <= tolerance * s,
            "{name}: gradients differ by {err} (largest {s})"
        );
    }
}

/// The CPU backends' projection op (host loops, hand-written backward) against the same
/// projection as tensor ops (autodiff): values and every parameter's gradient, with and
/// without view-dependent colour, the densification probe, Gaussians outside the frustum.
#[test]
fn host_projection_matches_tensor_ops() {
    let device = Default::default();
    for sh_degree in [0, 1] {
        let mut inner = anisotropic(300, sh_degree, 5);
        // Spread the centres out around a camera 2.5 away: some land outside the frustum's
        // 1.3x slack, where the Jacobian is clamped.
        inner.means = inner.means.clone() * 3.0;
        let cams = cameras(24);
        let n = inner.len();
        let weights = Tensor::<A, 3>::random(
            [cams.len(), n, PACK],
            Distribution::Uniform(-1.0, 1.0),
            &device,
        );
        let run = |host: bool| {
            let g = Gaussians::<A>::tracked(&inner);
            let probe = Tensor::<A, 3>::zeros([cams.len(), n, 2], &device).require_grad();
            let out = if host {
                project(&g, &cams, Some(probe.clone()))
            } else {
                project_with_tensor_ops(&g, &cams, Some(probe.clone()))
            };
            let grads = (out.clone() * weights.clone()).sum().backward();
            let probe_grad = probe.grad(&grads).unwrap().reshape([cams.len() * n, 2]);
            (out.inner(), g.grads(&grads), probe_grad)
        };
        let ((out, host, probe_host), (reference, ops, probe_ops)) = (run(true), run(false));
        let flat = |t: Tensor<B, 3>| t.reshape([cams.len() * n, PACK]);
        let forward = max_abs(flat(out), flat(reference.clone())) / scale(&flat(reference));
        println!("sh degree {sh_degree}: forward max error {forward:e} of the largest value");
        assert!(forward < 1e-5, "forward differs by {forward} (relative)");
        let mut pairs = vec![
            ("means", host.means, ops.means),
            ("log_scales", host.log_scales, ops.log_scales),
            ("rotations", host.rotations, ops.rotations),
            ("opacity_logits", host.opacity_logits, ops.opacity_logits),
            ("sh_dc", host.sh_dc, ops.sh_dc),
            ("probe", probe_host, probe_ops),
        ];
        if let (Some(a), Some(b)) = (host.sh_rest, ops.sh_rest) {
            pairs.push(("sh_rest", a.reshape([n, 9]), b.reshape([n, 9])));
        }
        assert_gradients_match(pairs, 1e-4);
    }
}

#[test]
fn no_gaussians_render_the_background() {
    let device = Default::default();
    let config = GaussiansConfig::new().with_num_points(0);
    let empty: Gaussians<B> = config.init(0, &device).unwrap();
    assert!(empty.is_empty());
    let background =
        Tensor::<B, 2>::from_data(TensorData::new(vec![0.2f32, 0.4, 0.6], [1, 3]), &device);
    let out = SplatRenderer
        .render(&empty, &cameras(16), background, false)
        .unwrap();
    let rgb: Vec<f32> = out.render.rgb.into_data().to_vec().unwrap();
    assert_eq!(rgb.len(), 2 * 16 * 16 * 3);
    for px in rgb.chunks(3) {
        assert_eq!(px, [0.2, 0.4, 0.6]);
    }
    assert_eq!(out.render.opacity.max().into_scalar(), 0.0);
}

#[test]
fn bad_input_is_named() {
    let device = Default::default();
    let mut g: Gaussians<B> = GaussiansConfig::new()
        .with_num_points(10)
        .init(0, &device)
        .unwrap();
    g.log_scales = g.log_scales.clone().slice_assign(
        [4..5, 1..2],
        Tensor::from_data(TensorData::new(vec![f32::NAN], [1, 1]), &device),
    );
    match g.check_finite() {
        Err(GaussiansError::NonFinite {
            attribute, index, ..
        }) => {
            assert_eq!((attribute, index), ("log_scales", 4));
        }
        other => panic!("expected a NonFinite error, got {other:?}"),
    }
    let err = GaussiansConfig::new()
        .with_sh_degree(4)
        .init::<B>(0, &device)
        .unwrap_err();
    assert!(err.to_string().contains("sh_degree"), "{err}");

    let mut cams = cameras(16);
    cams[1] = cams[1].with_size(8, 8).unwrap();
    let bg = Tensor::<B, 2>::zeros([1, 3], &device);
    let ok: Gaussians<B> = GaussiansConfig::new()
        .with_num_points(10)
        .init(0, &device)
        .unwrap();
    let err = SplatRenderer.render(&ok, &cams, bg, false).unwrap_err();
    assert!(
        matches!(err, SplatError::MixedSizes { index: 1, .. }),
        "{err}"
    );
}

/// A single Gaussian at the origin shows up where the camera projects the origin.
#[test]
fn a_gaussian_lands_where_the_camera_projects_it() {
    let device = Default::default();
    let config = GaussiansConfig::new().with_opacity(0.9);
    let g: Gaussians<B> = config
        .from_points(&[[0.0, 0.0, 0.0]], &[[1.0, 0.0, 0.0]], 0.05, &device)
        .unwrap();
    let cam = Camera::orbit(30.0, 20.0, 2.0, 40.0, 32, 32).unwrap();
    let (px, py, _) = cam.project(Vec3::ZERO).unwrap();
    let bg = Tensor::<B, 2>::zeros([1, 3], &device);
    let out = SplatRenderer
        .render(&g, std::slice::from_ref(&cam), bg, false)
        .unwrap();
    let opacity: Vec<f32> = out.render.opacity.into_data().to_vec().unwrap();
    let best = (0..opacity.len())
        .max_by(|&a, &b| opacity[a].total_cmp(&opacity[b]))
        .unwrap();
    let (bx, by) = ((best % 32) as f32 + 0.5, (best / 32) as f32 + 0.5);
    assert!(
        (bx - px).abs() <= 1.0 && (by - py).abs() <= 1.0,
        "peak at ({bx}, {by}), projection ({px}, {py})"
    );
    assert!(opacity[best] > 0.6, "peak opacity {}", opacity[best]);
}
