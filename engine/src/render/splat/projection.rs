//! EWA splatting's projection (Zwicker et al. 2001, as 3DGS does it): each Gaussian's
//! covariance `R S S^T R^T` is carried to the image by the view rotation and the perspective
//! Jacobian, blurred by 0.3 px^2 (3DGS's low-pass filter) and inverted into a conic. The
//! CPU backends run it as one host op ([`super::project_op`]); the others as tensor ops
//! ([`project_with_tensor_ops`], which autodiff differentiates), the reference the op is
//! tested against.

use burn::tensor::{Tensor, TensorData, backend::Backend};

use super::project_host::ViewConstants;
use super::project_op::{ProjectTensors, primitive, tensor};
use super::rasterize::SplatBackend;
use super::{NEAR, PACK};
use crate::scene::camera::Camera;
use crate::scene::gaussians::{Gaussians, sh};

/// 3DGS clamps the Jacobian's `x / z` to 1.3x the half field of view: Gaussians far outside
/// the frustum would otherwise get huge, unstable footprints.
pub(super) const FRUSTUM_SLACK: f32 = 1.3;
/// Added to the 2D covariance's diagonal (pixels^2): every splat covers about a pixel.
pub(super) const LOW_PASS: f32 = 0.3;

/// Per-view Gaussians for [`super::rasterize`](fn@super::rasterize), `[views, N, PACK]`. With `mean2d_probe`
/// (`[views, N, 2]`, zeros), the screen-space means get it added: its gradient is the
/// gradient of the loss with respect to the means in pixels, which densification reads.
pub fn project<B: SplatBackend>(
    gaussians: &Gaussians<B>,
    cameras: &[Camera],
    mean2d_probe: Option<Tensor<B, 3>>,
) -> Tensor<B, 3> {
    if !B::host_projection() {
        return project_with_tensor_ops(gaussians, cameras, mean2d_probe);
    }
    let (views, n) = (cameras.len(), gaussians.len());
    let device = gaussians.means.device();
    let probe = mean2d_probe
        .clone()
        .unwrap_or_else(|| Tensor::<B, 3>::zeros([views, n, 2], &device));
    let inputs = ProjectTensors {
        means: primitive(gaussians.means.clone()),
        rotations: primitive(gaussians.rotations.clone()),
        scales: primitive(gaussians.scales()),
        // One colour per view only where it depends on the view.
        rgb: primitive(colour(gaussians, cameras, gaussians.sh_rest.is_none())),
        opacity: primitive(gaussians.opacities()),
        probe: primitive(probe),
    };
    let constants: Vec<ViewConstants> = cameras.iter().map(ViewConstants::new).collect();
    match B::splat_project(inputs, &constants) {
        Some((out, _)) => tensor(out),
        None => project_with_tensor_ops(gaussians, cameras, mean2d_probe),
    }
}

/// Colour along the view direction (camera centre to Gaussian), `[views, N, 3]`; with
/// `shared` (no view-dependent terms), `[1, N, 3]`.
fn colour<B: Backend>(gaussians: &Gaussians<B>, cameras: &[Camera], shared: bool) -> Tensor<B, 3> {
    let device = gaussians.means.device();
    let (views, n) = (cameras.len(), gaussians.len());
    if gaussians.sh_rest.is_some() {
        let centres = Tensor::<B, 2>::from_data(
            TensorData::new(
                cameras
                    .iter()
                    .flat_map(|c| c.position.to_array())
                    .collect::<Vec<_>>(),
                [views, 3],
            ),
            &device,
        );
        let dirs = gaussians.means.clone().unsqueeze_dim::<3>(0) - centres.unsqueeze_dim::<3>(1);
        let norm = (dirs.clone() * dirs.clone())
            .sum_dim(2)
            .sqrt()
            .clamp_min(1e-12);
        sh::evaluate(
            gaussians.sh_dc.clone(),
            gaussians.sh_rest.clone(),
            dirs / norm,
        )
    } else {
        let rows = if shared { 1 } else { views };
        let dirs = Tensor::<B, 3>::zeros([rows, n, 3], &device);
        sh::evaluate(gaussians.sh_dc.clone(), None, dirs)
    }
}

/// [`project`] as tensor ops on any backend.
pub fn project_with_tensor_ops<B: Backend>(
    gaussians: &Gaussians<B>,
    cameras: &[Camera],
    mean2d_probe: Option<Tensor<B, 3>>,
) -> Tensor<B, 3> {
    let device = gaussians.means.device();
    let views = cameras.len();
    let n = gaussians.len();
    // Per-view constants as [V, 1] columns.
    let per_view = |f: &dyn Fn(&Camera) -> f32| {
        let v: Vec<f32> = cameras.iter().map(f).collect();
        Tensor::<B, 2>::from_data(TensorData::new(v, [views, 1]), &device)
    };
    // World-to-camera rotation W = R^T (rows are the camera axes) and translation -W p.
    let w = |r: usize, c: usize| per_view(&|cam| cam.rotation.col(r)[c]);
    let t = |r: usize| per_view(&|cam| -cam.rotation.col(r).dot(cam.position));
    let fx = per_view(&|cam| cam.intrinsics().fx);
    let fy = per_view(&|cam| cam.intrinsics().fy);
    let cx = per_view(&|cam| cam.intrinsics().cx);
    let cy = per_view(&|cam| cam.intrinsics().cy);
    let lim_x = per_view(&|cam| FRUSTUM_SLACK * cam.intrinsics().cx / cam.intrinsics().fx);
    let lim_y = per_view(&|cam| FRUSTUM_SLACK * cam.intrinsics().cy / cam.intrinsics().fy);

    let axis = |t: &Tensor<B, 2>, k: usize| t.clone().narrow(1, k, 1).reshape([1, n]);
    let (mx, my, mz) = (
        axis(&gaussians.means, 0),
        axis(&gaussians.means, 1),
        axis(&gaussians.means, 2),
    );
    // View space (OpenGL: the camera looks down -z), [V, N].
    let cam = |r: usize| w(r, 0) * mx.clone() + w(r, 1) * my.clone() + w(r, 2) * mz.clone() + t(r);
    let (x, y, z) = (cam(0), cam(1), cam(2));
    let depth = z.neg();
    let safe = depth.clone().clamp_min(NEAR); // culled later; keeps the division finite
    let (tx, ty) = (x / safe.clone(), y / safe.clone());
    let mut mean_x = cx + fx.clone() * tx.clone();
    let mut mean_y = cy - fy.clone() * ty.clone();
    if let Some(probe) = mean2d_probe {
        mean_x = mean_x + probe.clone().narrow(2, 0, 1).reshape([views, n]);
        mean_y = mean_y + probe.narrow(2, 1, 1).reshape([views, n]);
    }
    let clamp = |v: Tensor<B, 2>, lim: &Tensor<B, 2>| {
        let lim = lim.clone().expand([views, n]);
        v.max_pair(lim.clone().neg()).min_pair(lim)
    };
    let (tx, ty) = (clamp(tx, &lim_x), clamp(ty, &lim_y));

    // T = J W, 2x3: u = cx + fx x/d, v = cy - fy y/d with d = -z.
    let jx = fx / safe.clone();
    let jy = fy.neg() / safe;
    let t_row0: Vec<Tensor<B, 2>> = (0..3)
        .map(|k| jx.clone() * (w(0, k) + tx.clone() * w(2, k)))
        .collect();
    let t_row1: Vec<Tensor<B, 2>> = (0..3)
        .map(|k| jy.clone() * (w(1, k) + ty.clone() * w(2, k)))
        .collect();

    // M = R(q) S, 3x3 per Gaussian, as [1, N] entries.
    let q = gaussians.rotations.clone();
    let q = q.clone() / (q.clone() * q).sum_dim(1).sqrt().clamp_min(1e-12);
    let (qw, qx, qy, qz) = (axis(&q, 0), axis(&q, 1), axis(&q, 2), axis(&q, 3));
    let two = |a: Tensor<B, 2>| a.mul_scalar(2.0);
    let one_minus = |a: Tensor<B, 2>| a.mul_scalar(-2.0).add_scalar(1.0);
    let rot = [
        [
            one_minus(qy.clone() * qy.clone() + qz.clone() * qz.clone()),
            two(qx.clone() * qy.clone() - qw.clone() * qz.clone()),
            two(qx.clone() * qz.clone() + qw.clone() * qy.clone()),
        ],
        [
            two(qx.clone() * qy.clone() + qw.clone() * qz.clone()),
            one_minus(qx.clone() * qx.clone() + qz.clone() * qz.clone()),
            two(qy.clone() * qz.clone() - qw.clone() * qx.clone()),
        ],
        [
            two(qx.clone() * qz.clone() - qw.clone() * qy.clone()),
            two(qy.clone() * qz.clone() + qw.clone() * qx.clone()),
            one_minus(qx.clone() * qx.clone() + qy.clone() * qy.clone()),
        ],
    ];
    let scales = gaussians.scales();
    let s = [axis(&scales, 0), axis(&scales, 1), axis(&scales, 2)];
    // A = T M, 2x3: A_ik = sum_j T_ij R_jk s_k.
    let a_entry = |row: &[Tensor<B, 2>], k: usize| {
        (row[0].clone() * rot[0][k].clone()
            + row[1].clone() * rot[1][k].clone()
            + row[2].clone() * rot[2][k].clone())
            * s[k].clone()
    };
    let a0: Vec<Tensor<B, 2>> = (0..3).map(|k| a_entry(&t_row0, k)).collect();
    let a1: Vec<Tensor<B, 2>> = (0..3).map(|k| a_entry(&t_row1, k)).collect();
    let dot = |p: &[Tensor<B, 2>], q: &[Tensor<B, 2>]| {
        p[0].clone() * q[0].clone() + p[1].clone() * q[1].clone() + p[2].clone() * q[2].clone()
    };
    let cov_a = dot(&a0, &a0).add_scalar(LOW_PASS);
    let cov_b = dot(&a0, &a1);
    let cov_c = dot(&a1, &a1).add_scalar(LOW_PASS);
    let det = cov_a.clone() * cov_c.clone() - cov_b.clone() * cov_b.clone();
    let conic_a = cov_c / det.clone();
    let conic_b = cov_b.neg() / det.clone();
    let conic_c = cov_a / det;

    let rgb = colour(gaussians, cameras, false);
    let opacity = gaussians.opacities().reshape([1, n]).expand([views, n]);

    let mut channels: Vec<Tensor<B, 2>> = vec![mean_x, mean_y, conic_a, conic_b, conic_c];
    channels.extend((0..3).map(|c| rgb.clone().narrow(2, c, 1).reshape([views, n])));
    channels.push(opacity);
    channels.push(depth);
    debug_assert_eq!(channels.len(), PACK);
    Tensor::stack(channels, 2)
}
