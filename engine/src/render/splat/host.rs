//! The rasteriser's CPU kernels: tile binning, forward compositing, backward, as host loops
//! over flat `f32` slices (threads over tiles with rayon).
//!
//! The backward writes each (tile, Gaussian) pair's gradient into its own slot and sums the
//! slots per Gaussian afterwards: no atomics, no per-thread copies of the gradient, and the
//! result does not depend on how tiles were spread over threads.

use rayon::prelude::*;

use super::{
    ALPHA_MAX, CONIC_A, CONIC_B, CONIC_C, DEPTH, MEAN_X, MEAN_Y, OPACITY, OUT, PACK, RED,
    RasterSize, T_MIN, alpha_at, footprint_radius,
};

/// The host's tiles are smaller than the GPU's 16x16 workgroups: one CPU thread walks a tile's
/// list for every pixel, so a tighter list (fewer Gaussians that miss most of the tile) is
/// worth more than the extra binning. The image does not depend on it.
const TILE: usize = 8;

/// Tiles along x and y at the host's tile size.
fn tiles(size: RasterSize) -> (usize, usize) {
    (size.width.div_ceil(TILE), size.height.div_ceil(TILE))
}

/// Every view's tile lists: the Gaussians overlapping each tile, nearest first.
#[derive(Debug, Clone, Default)]
pub struct TileBins {
    /// `offsets[v * tiles + t] .. offsets[v * tiles + t + 1]` index `ids` for tile `t` of
    /// view `v`; `views * tiles + 1` entries.
    pub offsets: Vec<usize>,
    /// Gaussian indices (within their view), grouped by tile, sorted by depth then index.
    pub ids: Vec<u32>,
}

/// What the backward needs from the forward.
#[derive(Debug, Clone, Default)]
pub struct HostState {
    /// The tile lists.
    pub bins: TileBins,
    /// Final transmittance per pixel, `[views * height * width]`.
    pub final_t: Vec<f32>,
    /// Per pixel, how many entries of its tile list the forward walked up to and including
    /// the last one that contributed.
    pub last: Vec<u32>,
}

/// Per Gaussian, the exponent below which its alpha is under [`super::ALPHA_MIN`]
/// (`o exp(p) >= 1/255` iff `p >= -ln(255 o)`), loosened a little so float rounding never
/// skips what [`alpha_at`] would keep: most pixels of a tile fail this test, and it saves
/// them the `exp`.
fn power_cutoffs(gaussians: &[f32]) -> Vec<f32> {
    gaussians
        .chunks_exact(PACK)
        .map(|g| -(255.0 * g[OPACITY]).max(1e-12).ln() - 1e-3)
        .collect()
}

/// [`alpha_at`] behind the cheap exponent test.
#[inline]
fn alpha_fast(g: &[f32], cutoff: f32, px: f32, py: f32) -> Option<(f32, f32, f32, f32)> {
    let dx = g[MEAN_X] - px;
    let dy = g[MEAN_Y] - py;
    let power = -0.5 * (g[CONIC_A] * dx * dx + g[CONIC_C] * dy * dy) - g[CONIC_B] * dx * dy;
    if power < cutoff {
        return None;
    }
    alpha_at(g, px, py)
}

/// Pixel rectangle (inclusive) of tile `t`, clipped to the image.
fn tile_rect(t: usize, size: RasterSize) -> (usize, usize, usize, usize) {
    let (tiles_x, _) = tiles(size);
    let (x0, y0) = ((t % tiles_x) * TILE, (t / tiles_x) * TILE);
    (
        x0,
        y0,
        (x0 + TILE).min(size.width),
        (y0 + TILE).min(size.height),
    )
}

/// Bins every view's Gaussians `[views, n, PACK]` into tiles.
pub fn bin(gaussians: &[f32], n: usize, size: RasterSize) -> TileBins {
    let (tiles_x, tiles_y) = tiles(size);
    let tiles = tiles_x * tiles_y;
    let per_view: Vec<Vec<Vec<u32>>> = (0..size.views)
        .into_par_iter()
        .map(|v| {
            let view = &gaussians[v * n * PACK..(v + 1) * n * PACK];
            let mut lists: Vec<Vec<u32>> = vec![Vec::new(); tiles];
            for (i, g) in view.chunks_exact(PACK).enumerate() {
                let Some(r) = footprint_radius(g) else {
                    continue;
                };
                // Pixels whose centre (x + 0.5) lies within r of the mean.
                let span = |m: f32, len: usize| {
                    let lo = (m - r - 0.5).ceil().max(0.0);
                    let hi = (m + r - 0.5).floor().min(len as f32 - 1.0);
                    (lo <= hi).then(|| (lo as usize / TILE, hi as usize / TILE))
                };
                let (Some((tx0, tx1)), Some((ty0, ty1))) =
                    (span(g[MEAN_X], size.width), span(g[MEAN_Y], size.height))
                else {
                    continue;
                };
                for ty in ty0..=ty1 {
                    for tx in tx0..=tx1 {
                        lists[ty * tiles_x + tx].push(i as u32);
                    }
                }
            }
            for list in &mut lists {
                // Ties broken by index so the order (and the image) is deterministic.
                list.sort_unstable_by(|&a, &b| {
                    let (da, db) = (
                        view[a as usize * PACK + DEPTH],
                        view[b as usize * PACK + DEPTH],
                    );
                    da.total_cmp(&db).then(a.cmp(&b))
                });
            }
            lists
        })
        .collect();
    let mut offsets = Vec::with_capacity(size.views * tiles + 1);
    let mut ids = Vec::new();
    offsets.push(0);
    for lists in per_view {
        for list in lists {
            ids.extend_from_slice(&list);
            offsets.push(ids.len());
        }
    }
    TileBins { offsets, ids }
}

/// Forward: `gaussians [views, n, PACK]` -> `[views * height * width, OUT]` and the state
/// for the backward.
pub fn forward(gaussians: &[f32], n: usize, size: RasterSize) -> (Vec<f32>, HostState) {
    let bins = bin(gaussians, n, size);
    let (tiles_x, tiles_y) = tiles(size);
    let tiles = tiles_x * tiles_y;
    let pixels = size.pixels();
    let mut out = vec![0.0f32; size.views * pixels * OUT];
    let mut final_t = vec![1.0f32; size.views * pixels];
    let mut last = vec![0u32; size.views * pixels];
    let cutoffs = power_cutoffs(gaussians);

    let results: Vec<Vec<(usize, [f32; OUT], f32, u32)>> = (0..size.views * tiles)
        .into_par_iter()
        .map(|task| {
            let (v, t) = (task / tiles, task % tiles);
            let view = &gaussians[v * n * PACK..(v + 1) * n * PACK];
            let list = &bins.ids[bins.offsets[task]..bins.offsets[task + 1]];
            let (x0, y0, x1, y1) = tile_rect(t, size);
            let mut done = Vec::with_capacity((x1 - x0) * (y1 - y0));
            for y in y0..y1 {
                for x in x0..x1 {
                    let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                    let mut transmittance = 1.0f32;
                    let mut acc = [0.0f32; OUT];
                    let mut count = 0u32;
                    for (k, &id) in list.iter().enumerate() {
                        let g = &view[id as usize * PACK..][..PACK];
                        let cutoff = cutoffs[v * n + id as usize];
                        let Some((alpha, _, _, _)) = alpha_fast(g, cutoff, px, py) else {
                            continue;
                        };
                        let next = transmittance * (1.0 - alpha);
                        if next < T_MIN {
                            break;
                        }
                        let w = alpha * transmittance;
                        for c in 0..3 {
                            acc[c] += w * g[RED + c];
                        }
                        acc[3] += w * g[DEPTH];
                        transmittance = next;
                        count = k as u32 + 1;
                    }
                    acc[4] = 1.0 - transmittance;
                    done.push((v * pixels + y * size.width + x, acc, transmittance, count));
                }
            }
            done
        })
        .collect();
    for (p, acc, t, count) in results.into_iter().flatten() {
        out[p * OUT..(p + 1) * OUT].copy_from_slice(&acc);
        final_t[p] = t;
        last[p] = count;
    }
    (
        out,
        HostState {
            bins,
            final_t,
            last,
        },
    )
}

/// Backward: the output gradient `[views * height * width, OUT]` -> the gradient of the
/// input `[views, n, PACK]`.
pub fn backward(
    gaussians: &[f32],
    n: usize,
    size: RasterSize,
    state: &HostState,
    grad: &[f32],
) -> Vec<f32> {
    let bins = &state.bins;
    let (tiles_x, tiles_y) = tiles(size);
    let tiles = tiles_x * tiles_y;
    let pixels = size.pixels();
    let cutoffs = power_cutoffs(gaussians);

    // One gradient slot per tile-list entry; split so each tile owns its slots.
    let mut slots = vec![0.0f32; bins.ids.len() * PACK];
    let mut parts: Vec<&mut [f32]> = Vec::with_capacity(size.views * tiles);
    let mut rest = slots.as_mut_slice();
    for task in 0..size.views * tiles {
        let len = (bins.offsets[task + 1] - bins.offsets[task]) * PACK;
        let (head, tail) = rest.split_at_mut(len);
        parts.push(head);
        rest = tail;
    }
    parts.into_par_iter().enumerate().for_each(|(task, slots)| {
        let (v, t) = (task / tiles, task % tiles);
        let view = &gaussians[v * n * PACK..(v + 1) * n * PACK];
        let list = &bins.ids[bins.offsets[task]..bins.offsets[task + 1]];
        let (x0, y0, x1, y1) = tile_rect(t, size);
        for y in y0..y1 {
            for x in x0..x1 {
                let p = v * pixels + y * size.width + x;
                let g_out = &grad[p * OUT..(p + 1) * OUT];
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                let mut transmittance = state.final_t[p];
                // What lies behind the current Gaussian, composited (per channel).
                let mut behind = [0.0f32; OUT];
                for k in (0..state.last[p] as usize).rev() {
                    let id = list[k] as usize;
                    let g = &view[id * PACK..][..PACK];
                    let Some((alpha, gauss, dx, dy)) = alpha_fast(g, cutoffs[v * n + id], px, py)
                    else {
                        continue;
                    };
                    transmittance /= 1.0 - alpha; // T_k, before this Gaussian
                    let feature = [g[RED], g[RED + 1], g[RED + 2], g[DEPTH], 1.0];
                    let w = alpha * transmittance;
                    let slot = &mut slots[k * PACK..(k + 1) * PACK];
                    for c in 0..3 {
                        slot[RED + c] += w * g_out[c];
                    }
                    slot[DEPTH] += w * g_out[3];
                    let mut d_alpha = 0.0;
                    for c in 0..OUT {
                        d_alpha += g_out[c] * (feature[c] - behind[c]);
                        behind[c] = alpha * feature[c] + (1.0 - alpha) * behind[c];
                    }
                    d_alpha *= transmittance;
                    if g[OPACITY] * gauss >= ALPHA_MAX {
                        continue; // clamped: alpha does not move with the parameters
                    }
                    slot[OPACITY] += d_alpha * gauss;
                    let d_power = d_alpha * alpha;
                    let (a, b, c) = (g[CONIC_A], g[CONIC_B], g[CONIC_C]);
                    slot[MEAN_X] += d_power * (-a * dx - b * dy);
                    slot[MEAN_Y] += d_power * (-b * dx - c * dy);
                    slot[CONIC_A] += d_power * (-0.5 * dx * dx);
                    slot[CONIC_B] += d_power * (-dx * dy);
                    slot[CONIC_C] += d_power * (-0.5 * dy * dy);
                }
            }
        }
    });

    let mut out = vec![0.0f32; size.views * n * PACK];
    for task in 0..size.views * tiles {
        let v = task / tiles;
        for e in bins.offsets[task]..bins.offsets[task + 1] {
            let dst = &mut out[(v * n + bins.ids[e] as usize) * PACK..][..PACK];
            for (d, s) in dst.iter_mut().zip(&slots[e * PACK..(e + 1) * PACK]) {
                *d += s;
            }
        }
    }
    out
}
