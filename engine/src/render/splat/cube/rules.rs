//! The host's per-Gaussian rules ([`super::super::footprint_radius`],
//! [`super::super::alpha_at`]) as CubeCL functions, so every kernel culls and skips exactly
//! like `host.rs` does.

use cubecl::prelude::*;

use super::super::{ALPHA_MAX, ALPHA_MIN, NEAR};

/// Finite test that survives compilers which fold `x - x`: NaN and inf both fail `<=`.
#[cube]
pub(crate) fn finite(x: f32) -> bool {
    f32::abs(x) <= f32::MAX
}

/// Footprint radius in pixels, or a negative value when the Gaussian cannot contribute.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn footprint_radius(
    mean_x: f32,
    mean_y: f32,
    a: f32,
    b: f32,
    c: f32,
    opacity: f32,
    depth: f32,
) -> f32 {
    let mut radius = f32::new(-1.0);
    if depth > NEAR && opacity * 255.0 > 1.0 && finite(mean_x) && finite(mean_y) {
        let det = a * c - b * b;
        if det > 0.0 && finite(det) {
            // The covariance is the conic's inverse; its largest eigenvalue bounds the spread.
            let sa = c / det;
            let sb = -b / det;
            let sc = a / det;
            let mid = 0.5 * (sa + sc);
            let disc = f32::max(mid * mid - (sa * sc - sb * sb), 0.0);
            let lambda_max = mid + f32::sqrt(disc);
            let r = f32::sqrt(2.0 * lambda_max * f32::ln(255.0 * f32::min(opacity, 1.0)));
            if finite(r) {
                radius = r;
            }
        }
    }
    radius
}

/// 3DGS's per-pixel evaluation: `(alpha, gauss)`, with `alpha < 0` when the pixel skips the
/// Gaussian (`power > 0` or `alpha < ALPHA_MIN`). `dx`, `dy`: mean minus pixel centre.
#[cube]
pub(crate) fn alpha_at(dx: f32, dy: f32, a: f32, b: f32, c: f32, opacity: f32) -> (f32, f32) {
    let power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy;
    let mut alpha = f32::new(-1.0);
    let mut gauss = f32::new(0.0);
    if power <= 0.0 {
        gauss = f32::exp(power);
        let a = f32::min(opacity * gauss, ALPHA_MAX);
        if a >= ALPHA_MIN {
            alpha = a;
        }
    }
    (alpha, gauss)
}
