//! [`super::projection`]'s EWA projection as one host loop per Gaussian and view, with its
//! gradient written out by hand. On the CPU the tensor-op version runs ~150 small ops forward
//! and twice that backward over `[views, N]` arrays, each a pass over memory with broadcasts
//! and strided copies; this is one pass (the same formulas, term by term).

use rayon::prelude::*;

use super::projection::{FRUSTUM_SLACK, LOW_PASS};
use super::{NEAR, PACK};
use crate::scene::camera::Camera;
use crate::scene::gaussians::rotation::unit_rotation;

/// One view's constants: world-to-camera rotation `w` (rows are the camera axes),
/// translation `t`, intrinsics and the Jacobian's clamp on `x / d` and `y / d`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewConstants {
    w: [[f32; 3]; 3],
    t: [f32; 3],
    fx: f32,
    fy: f32,
    cx: f32,
    cy: f32,
    lim_x: f32,
    lim_y: f32,
}

impl ViewConstants {
    /// The constants of `camera`.
    pub fn new(camera: &Camera) -> Self {
        let k = camera.intrinsics();
        let w: [[f32; 3]; 3] = std::array::from_fn(|r| camera.rotation.col(r).to_array());
        Self {
            w,
            t: std::array::from_fn(|r| -camera.rotation.col(r).dot(camera.position)),
            fx: k.fx,
            fy: k.fy,
            cx: k.cx,
            cy: k.cy,
            lim_x: FRUSTUM_SLACK * k.cx / k.fx,
            lim_y: FRUSTUM_SLACK * k.cy / k.fy,
        }
    }
}

/// The projection's inputs, flat, on the host.
#[derive(Debug, Clone, Default)]
pub struct ProjectInputs {
    /// Centres, `[N, 3]`.
    pub means: Vec<f32>,
    /// Quaternions (w, x, y, z), not necessarily unit, `[N, 4]`.
    pub rotations: Vec<f32>,
    /// Standard deviations, `[N, 3]`.
    pub scales: Vec<f32>,
    /// Colour, `[1 or views, N, 3]` (one row shared by every view, or one per view).
    pub rgb: Vec<f32>,
    /// Opacity in [0, 1], `[N]`.
    pub opacity: Vec<f32>,
    /// Added to the screen-space means, `[views, N, 2]`.
    pub probe: Option<Vec<f32>>,
}

impl ProjectInputs {
    /// Number of Gaussians.
    pub fn len(&self) -> usize {
        self.opacity.len()
    }

    /// No Gaussians.
    pub fn is_empty(&self) -> bool {
        self.opacity.is_empty()
    }

    /// Gaussian `i`'s colour in view `v`.
    fn rgb(&self, v: usize, i: usize) -> &[f32] {
        let rows = self.rgb.len() / (3 * self.len()).max(1);
        let v = if rows == 1 { 0 } else { v };
        &self.rgb[(v * self.len() + i) * 3..][..3]
    }
}

/// The gradients of [`ProjectInputs`], same shapes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProjectGrads {
    /// `[N, 3]`.
    pub means: Vec<f32>,
    /// `[N, 4]`.
    pub rotations: Vec<f32>,
    /// `[N, 3]`.
    pub scales: Vec<f32>,
    /// Shaped like the input colour.
    pub rgb: Vec<f32>,
    /// `[N]`.
    pub opacity: Vec<f32>,
    /// `[views, N, 2]`, when the input had a probe.
    pub probe: Option<Vec<f32>>,
}

/// Every intermediate of one Gaussian in one view that the gradient needs.
struct Geometry {
    /// View-space position.
    p: [f32; 3],
    /// Depth `-z` and the depth divided by (clamped below at [`NEAR`]).
    depth: f32,
    safe: f32,
    /// `x / safe`, `y / safe`, and the same clamped to the frustum slack.
    tx: f32,
    ty: f32,
    txc: f32,
    tyc: f32,
    /// `J W`, 2x3.
    t: [[f32; 3]; 2],
    /// `J W R`, 2x3 (before the scales).
    b: [[f32; 3]; 2],
    /// `J W R S`, 2x3.
    a: [[f32; 3]; 2],
    /// 2D covariance (a, b, c) with the low-pass, its determinant, the conic.
    cov: [f32; 3],
    det: f32,
    conic: [f32; 3],
}

fn geometry(view: &ViewConstants, mean: &[f32], r: &[[f32; 3]; 3], s: &[f32]) -> Geometry {
    let w = &view.w;
    let p: [f32; 3] = std::array::from_fn(|k| {
        w[k][0] * mean[0] + w[k][1] * mean[1] + w[k][2] * mean[2] + view.t[k]
    });
    let depth = -p[2];
    let safe = depth.max(NEAR);
    let (tx, ty) = (p[0] / safe, p[1] / safe);
    let txc = tx.max(-view.lim_x).min(view.lim_x);
    let tyc = ty.max(-view.lim_y).min(view.lim_y);
    let (jx, jy) = (view.fx / safe, -view.fy / safe);
    let t = [
        std::array::from_fn(|k| jx * (w[0][k] + txc * w[2][k])),
        std::array::from_fn(|k| jy * (w[1][k] + tyc * w[2][k])),
    ];
    let b: [[f32; 3]; 2] = std::array::from_fn(|i| {
        std::array::from_fn(|k| t[i][0] * r[0][k] + t[i][1] * r[1][k] + t[i][2] * r[2][k])
    });
    let a: [[f32; 3]; 2] = std::array::from_fn(|i| std::array::from_fn(|k| b[i][k] * s[k]));
    let dot = |u: &[f32; 3], v: &[f32; 3]| u[0] * v[0] + u[1] * v[1] + u[2] * v[2];
    let cov = [
        dot(&a[0], &a[0]) + LOW_PASS,
        dot(&a[0], &a[1]),
        dot(&a[1], &a[1]) + LOW_PASS,
    ];
    let det = cov[0] * cov[2] - cov[1] * cov[1];
    let conic = [cov[2] / det, -cov[1] / det, cov[0] / det];
    Geometry {
        p,
        depth,
        safe,
        tx,
        ty,
        txc,
        tyc,
        t,
        b,
        a,
        cov,
        det,
        conic,
    }
}

/// `[views, N, PACK]`: the rasteriser's input.
pub fn forward(inputs: &ProjectInputs, views: &[ViewConstants]) -> Vec<f32> {
    let n = inputs.len();
    let mut out = vec![0.0f32; views.len() * n * PACK];
    out.par_chunks_mut(PACK).enumerate().for_each(|(e, g)| {
        let (v, i) = (e / n, e % n);
        let view = &views[v];
        let (_, r, _) = unit_rotation(&inputs.rotations[i * 4..][..4]);
        let geo = geometry(
            view,
            &inputs.means[i * 3..][..3],
            &r,
            &inputs.scales[i * 3..][..3],
        );
        let (mut mx, mut my) = (view.cx + view.fx * geo.tx, view.cy - view.fy * geo.ty);
        if let Some(probe) = &inputs.probe {
            mx += probe[e * 2];
            my += probe[e * 2 + 1];
        }
        g[0] = mx;
        g[1] = my;
        g[2..5].copy_from_slice(&geo.conic);
        g[5..8].copy_from_slice(inputs.rgb(v, i));
        g[8] = inputs.opacity[i];
        g[9] = geo.depth;
    });
    out
}

/// The gradient of every input from the output's `grad [views, N, PACK]`.
pub fn backward(inputs: &ProjectInputs, views: &[ViewConstants], grad: &[f32]) -> ProjectGrads {
    let n = inputs.len();
    let mut means = vec![0.0f32; n * 3];
    let mut rotations = vec![0.0f32; n * 4];
    let mut scales = vec![0.0f32; n * 3];
    let mut opacity = vec![0.0f32; n];
    // Per Gaussian, summed over the views in order: deterministic, no shared writes.
    means
        .par_chunks_mut(3)
        .zip(rotations.par_chunks_mut(4))
        .zip(scales.par_chunks_mut(3))
        .zip(opacity.par_iter_mut())
        .enumerate()
        .for_each(|(i, (((g_mean, g_rot), g_scale), g_opacity))| {
            let q = &inputs.rotations[i * 4..][..4];
            let (unit, r, norm) = unit_rotation(q);
            let (mean, s) = (&inputs.means[i * 3..][..3], &inputs.scales[i * 3..][..3]);
            let mut g_r = [[0.0f32; 3]; 3];
            for (v, view) in views.iter().enumerate() {
                let g = &grad[(v * n + i) * PACK..][..PACK];
                *g_opacity += g[8];
                let geo = geometry(view, mean, &r, s);
                backward_one(view, &geo, &r, s, g, g_mean, g_scale, &mut g_r);
            }
            let g_unit = rotation_backward(unit, &g_r);
            // Through q / |q|: remove the radial part.
            let radial: f32 = (0..4).map(|k| unit[k] * g_unit[k]).sum();
            for k in 0..4 {
                g_rot[k] = (g_unit[k] - unit[k] * radial) / norm;
            }
        });
    let views_n = views.len();
    let rgb_rows = inputs.rgb.len() / (3 * n).max(1);
    let mut rgb = vec![0.0f32; inputs.rgb.len()];
    for v in 0..views_n {
        let row = if rgb_rows == 1 { 0 } else { v };
        for i in 0..n {
            for c in 0..3 {
                rgb[(row * n + i) * 3 + c] += grad[(v * n + i) * PACK + 5 + c];
            }
        }
    }
    let probe = inputs.probe.as_ref().map(|_| {
        grad.chunks_exact(PACK)
            .flat_map(|g| [g[0], g[1]])
            .collect::<Vec<f32>>()
    });
    ProjectGrads {
        means,
        rotations,
        scales,
        rgb,
        opacity,
        probe,
    }
}

/// One view's share of one Gaussian's gradient: into the mean and scales, and into the
/// rotation matrix (turned into the quaternion's once all views are summed).
#[allow(clippy::too_many_arguments)]
fn backward_one(
    view: &ViewConstants,
    geo: &Geometry,
    r: &[[f32; 3]; 3],
    s: &[f32],
    g: &[f32],
    g_mean: &mut [f32],
    g_scale: &mut [f32],
    g_r: &mut [[f32; 3]; 3],
) {
    let w = &view.w;
    // Conic = inverse covariance: d(conic)/d(cov).
    let [ca, cb, cc] = geo.cov;
    let det2 = geo.det * geo.det;
    let (ga, gb, gc) = (g[2], g[3], g[4]);
    let g_cov = [
        (-ga * cc * cc + gb * cb * cc - gc * cb * cb) / det2,
        (2.0 * ga * cb * cc - gb * (ca * cc + cb * cb) + 2.0 * gc * ca * cb) / det2,
        (-ga * cb * cb + gb * ca * cb - gc * ca * ca) / det2,
    ];
    // cov = [A0.A0, A0.A1, A1.A1] (+ low-pass).
    let a = &geo.a;
    let g_a: [[f32; 3]; 2] = [
        std::array::from_fn(|k| 2.0 * g_cov[0] * a[0][k] + g_cov[1] * a[1][k]),
        std::array::from_fn(|k| g_cov[1] * a[0][k] + 2.0 * g_cov[2] * a[1][k]),
    ];
    // A = B S, B = T R.
    let mut g_t = [[0.0f32; 3]; 2];
    for k in 0..3 {
        g_scale[k] += g_a[0][k] * geo.b[0][k] + g_a[1][k] * geo.b[1][k];
    }
    for i in 0..2 {
        for k in 0..3 {
            let g_b = g_a[i][k] * s[k];
            for j in 0..3 {
                g_t[i][j] += g_b * r[j][k];
                g_r[j][k] += g_b * geo.t[i][j];
            }
        }
    }
    // T row 0 = jx (W0 + txc W2), row 1 = jy (W1 + tyc W2), jx = fx / safe, jy = -fy / safe.
    let (jx, jy) = (view.fx / geo.safe, -view.fy / geo.safe);
    let (mut g_jx, mut g_jy, mut g_txc, mut g_tyc) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
    for k in 0..3 {
        g_jx += g_t[0][k] * (w[0][k] + geo.txc * w[2][k]);
        g_jy += g_t[1][k] * (w[1][k] + geo.tyc * w[2][k]);
        g_txc += g_t[0][k] * jx * w[2][k];
        g_tyc += g_t[1][k] * jy * w[2][k];
    }
    let inside = |t: f32, lim: f32| t > -lim && t < lim;
    let mut g_tx = if inside(geo.tx, view.lim_x) {
        g_txc
    } else {
        0.0
    };
    let mut g_ty = if inside(geo.ty, view.lim_y) {
        g_tyc
    } else {
        0.0
    };
    // Screen-space mean: u = cx + fx tx, v = cy - fy ty.
    g_tx += g[0] * view.fx;
    g_ty -= g[1] * view.fy;
    let safe2 = geo.safe * geo.safe;
    let g_safe = -g_jx * view.fx / safe2 + g_jy * view.fy / safe2
        - g_tx * geo.p[0] / safe2
        - g_ty * geo.p[1] / safe2;
    let g_depth = g[9] + if geo.depth > NEAR { g_safe } else { 0.0 };
    let g_p = [g_tx / geo.safe, g_ty / geo.safe, -g_depth];
    // p = W m + t.
    for (c, gm) in g_mean.iter_mut().enumerate() {
        *gm += w[0][c] * g_p[0] + w[1][c] * g_p[1] + w[2][c] * g_p[2];
    }
}

/// The gradient of a unit quaternion (w, x, y, z) from its rotation matrix's.
fn rotation_backward(q: [f32; 4], g: &[[f32; 3]; 3]) -> [f32; 4] {
    let [w, x, y, z] = q;
    [
        2.0 * (-z * g[0][1] + y * g[0][2] + z * g[1][0] - x * g[1][2] - y * g[2][0] + x * g[2][1]),
        2.0 * (y * g[0][1] + z * g[0][2] + y * g[1][0] - 2.0 * x * g[1][1] - w * g[1][2]
            + z * g[2][0]
            + w * g[2][1]
            - 2.0 * x * g[2][2]),
        2.0 * (-2.0 * y * g[0][0] + x * g[0][1] + w * g[0][2] + x * g[1][0] + z * g[1][2]
            - w * g[2][0]
            + z * g[2][1]
            - 2.0 * y * g[2][2]),
        2.0 * (-2.0 * z * g[0][0] - w * g[0][1] + x * g[0][2] + w * g[1][0] - 2.0 * z * g[1][1]
            + y * g[1][2]
            + x * g[2][0]
            + y * g[2][1]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scene::gaussians::rotation::rotation_matrix;

    #[test]
    fn rotation_gradient_matches_finite_differences() {
        let q = [0.8f32, -0.3, 0.45, 0.25];
        let weights = [[0.3f32, -1.2, 0.7], [0.5, 0.9, -0.4], [-0.8, 0.2, 1.1]];
        let f = |q: [f32; 4]| -> f64 {
            let r = rotation_matrix(q);
            (0..3)
                .flat_map(|j| (0..3).map(move |k| (j, k)))
                .map(|(j, k)| (weights[j][k] * r[j][k]) as f64)
                .sum()
        };
        let analytic = rotation_backward(q, &weights);
        for k in 0..4 {
            let (mut up, mut down) = (q, q);
            up[k] += 1e-3;
            down[k] -= 1e-3;
            let numeric = (f(up) - f(down)) / 2e-3;
            assert!(
                (analytic[k] as f64 - numeric).abs() < 1e-3,
                "component {k}: {} vs {numeric}",
                analytic[k]
            );
        }
    }
}
