//! Gaussian splatting (Kerbl et al. 2023): project 3D Gaussians to screen-space ellipses (EWA),
//! bin them into 16x16 tiles, sort by depth and alpha-composite front to back per pixel.
//!
//! Projection costs O(views x Gaussians): tensor ops on the GPU backends, one host op with a
//! hand-written backward on the CPU ones ([`project_op`]), where ~450 small tensor ops cost
//! more than the rasteriser. Rasterisation is one custom burn op, [`SplatBackend`], with a
//! hand-written backward: its cost is O(pixels x overlapping Gaussians), which no dense
//! tensor formulation reaches.
//! [`dense`] is that dense formulation, kept as the reference the op is tested against.

#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod cube;
pub mod dense;
pub mod host;
pub mod project_host;
pub mod project_op;
pub mod projection;
pub mod rasterize;
pub mod renderer;

pub use project_op::ProjectBackend;
pub use projection::{project, project_with_tensor_ops};
pub use rasterize::{SplatBackend, rasterize};
pub use renderer::{SplatError, SplatOutput, SplatRenderer};

/// Side of the square screen tiles Gaussians are binned into (3DGS: 16).
pub const TILE: usize = 16;
/// Gaussians closer than this to the camera plane (view-space depth) are culled.
pub const NEAR: f32 = 0.01;
/// A Gaussian's alpha is capped here so transmittance stays invertible in the backward.
pub const ALPHA_MAX: f32 = 0.99;
/// Contributions with alpha below this are skipped (3DGS: 1/255).
pub const ALPHA_MIN: f32 = 1.0 / 255.0;
/// Compositing stops before transmittance falls below this (3DGS: 1e-4).
pub const T_MIN: f32 = 1e-4;

/// Per-Gaussian, per-view channels of the rasteriser's input `[views, N, PACK]`: screen-space
/// mean (pixels), conic (inverse 2D covariance: a, b, c of `[[a, b], [b, c]]`), RGB, opacity,
/// view-space depth.
pub const PACK: usize = 10;
/// Screen-space mean, x (pixels, from the left edge).
pub const MEAN_X: usize = 0;
/// Screen-space mean, y (pixels, from the top edge).
pub const MEAN_Y: usize = 1;
/// Conic entry a.
pub const CONIC_A: usize = 2;
/// Conic entry b (off-diagonal).
pub const CONIC_B: usize = 3;
/// Conic entry c.
pub const CONIC_C: usize = 4;
/// Red (green and blue follow).
pub const RED: usize = 5;
/// Opacity in [0, 1].
pub const OPACITY: usize = 8;
/// View-space depth (distance along the viewing axis).
pub const DEPTH: usize = 9;

/// Output channels per pixel, `[views * height * width, OUT]`: RGB (not yet over a
/// background), expected depth, accumulated opacity.
pub const OUT: usize = 5;

/// Size of one rasterisation batch: every view shares the image size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RasterSize {
    /// Number of views.
    pub views: usize,
    /// Image width, pixels.
    pub width: usize,
    /// Image height, pixels.
    pub height: usize,
}

impl RasterSize {
    /// Tiles along x and y.
    pub fn tiles(&self) -> (usize, usize) {
        (self.width.div_ceil(TILE), self.height.div_ceil(TILE))
    }

    /// Pixels in one view.
    pub fn pixels(&self) -> usize {
        self.width * self.height
    }
}

/// Screen-space radius (pixels) beyond which a Gaussian's alpha is below [`ALPHA_MIN`]
/// everywhere, or `None` when it cannot contribute at all (behind the near plane, too
/// transparent, degenerate conic, non-finite). Opacity-aware, so tile binning never drops a
/// contribution the per-pixel test would keep: `o exp(-d^2 / (2 lambda_max)) >= 1/255` needs
/// `d^2 <= 2 lambda_max ln(255 o)`.
#[inline]
pub fn footprint_radius(g: &[f32]) -> Option<f32> {
    let (depth, opacity) = (g[DEPTH], g[OPACITY]);
    if !(depth > NEAR)
        || !(opacity * 255.0 > 1.0)
        || !g[MEAN_X].is_finite()
        || !g[MEAN_Y].is_finite()
    {
        return None;
    }
    let (a, b, c) = (g[CONIC_A], g[CONIC_B], g[CONIC_C]);
    let det = a * c - b * b;
    if !(det > 0.0 && det.is_finite()) {
        return None;
    }
    // The covariance is the conic's inverse; its largest eigenvalue bounds the spread.
    let (sa, sb, sc) = (c / det, -b / det, a / det);
    let mid = 0.5 * (sa + sc);
    let lambda_max = mid + (mid * mid - (sa * sc - sb * sb)).max(0.0).sqrt();
    let radius = (2.0 * lambda_max * (255.0 * opacity.min(1.0)).ln()).sqrt();
    radius.is_finite().then_some(radius)
}

/// Alpha of Gaussian `g` at pixel centre `(px, py)`, with the Gaussian's value and the offset
/// of the mean from the pixel, or `None` when the pixel skips it (3DGS's rules).
#[inline]
pub fn alpha_at(g: &[f32], px: f32, py: f32) -> Option<(f32, f32, f32, f32)> {
    let dx = g[MEAN_X] - px;
    let dy = g[MEAN_Y] - py;
    let power = -0.5 * (g[CONIC_A] * dx * dx + g[CONIC_C] * dy * dy) - g[CONIC_B] * dx * dy;
    if power > 0.0 {
        return None;
    }
    let gauss = power.exp();
    let alpha = (g[OPACITY] * gauss).min(ALPHA_MAX);
    (alpha >= ALPHA_MIN).then_some((alpha, gauss, dx, dy))
}
