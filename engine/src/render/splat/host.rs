//! The rasteriser's CPU kernels: tile binning, forward compositing, backward, as host loops
//! over flat `f32` slices (threads over tiles with rayon).
//!
//! The backward writes each (tile, Gaussian) pair's gradient into its own slot and sums the
//! slots per Gaussian afterwards: no atomics, no per-thread copies of the gradient, and the
//! result does not depend on how tiles were spread over threads.

use std::ops::Range;

use rayon::prelude::*;

use super::{
    ALPHA_MAX, ALPHA_MIN, CONIC_A, CONIC_B, CONIC_C, DEPTH, MEAN_X, MEAN_Y, OPACITY, OUT, PACK,
    RED, RasterSize, T_MIN, footprint_radius,
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
    /// Per view and Gaussian, `[views * n]`: the half-height of its 1/255 ellipse in pixels
    /// (`row_half_height`), which bounds the tile rows the kernels visit.
    pub half_height: Vec<f32>,
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

/// Pixels per host tile: the lanes the per-tile loops run over.
const LANES: usize = TILE * TILE;

/// `exp(x)` for `x <= 0` without a library call, so the per-pixel loops vectorise: Cody-Waite
/// reduction to `2^n e^r`, `|r| <= ln 2 / 2`, and a degree-6 Taylor polynomial (relative error
/// below 1e-7, about an ulp). Inputs below -87 give ~1e-38 (never a visible alpha).
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and removing 1.5 * 2^23 rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 0.0);
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // The shifted value's low mantissa bits hold n as an integer: integer ops only, where
    // `n as i32` (a saturating cast) would stop the loop from vectorising.
    let n_int = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    p * f32::from_bits((n_int + 127).wrapping_shl(23) as u32)
}

/// A tile's Gaussians in list order, read in place: the per-Gaussian values are scalars
/// broadcast over the tile's pixels, so a record read from the view (40 bytes, one or two
/// cache lines) costs no more than a gathered copy, and no copy is made.
struct TileGaussians<'a> {
    /// The view's packed Gaussians, `[n, PACK]`.
    view: &'a [f32],
    /// The tile's list: indices into `view`, nearest first.
    list: &'a [u32],
    /// The view's [`TileBins::half_height`], `[n]`.
    half_height: &'a [f32],
    /// The tile's first pixel row.
    y0: usize,
}

impl TileGaussians<'_> {
    fn len(&self) -> usize {
        self.list.len()
    }

    /// Entry `k`'s packed record.
    #[inline(always)]
    fn record(&self, k: usize) -> &[f32] {
        &self.view[self.list[k] as usize * PACK..][..PACK]
    }

    /// The lanes of the tile rows whose centres lie within entry `k`'s vertical extent at
    /// alpha 1/255 (a multiple of [`TILE`] each end): the loops skip rows where its alpha is
    /// below 1/255 everywhere. All rows when anything is not finite.
    #[inline(always)]
    fn lanes(&self, k: usize) -> Range<usize> {
        let id = self.list[k] as usize;
        let centre = self.view[id * PACK + MEAN_Y] - self.y0 as f32 - 0.5;
        let half_height = self.half_height[id];
        let (lo, hi) = (
            (centre - half_height).ceil(),
            (centre + half_height).floor(),
        );
        if !(lo.is_finite() && hi.is_finite()) {
            return 0..LANES;
        }
        let lo = lo.clamp(0.0, TILE as f32) as usize;
        let hi = (hi + 1.0).clamp(lo as f32, TILE as f32) as usize;
        lo * TILE..hi * TILE
    }
}

/// Half-height in pixels of a Gaussian's ellipse at alpha 1/255:
/// `sqrt(2 ln(255 o) Sigma_yy)` (Sigma is the conic's inverse), loosened by a pixel's
/// thousandth so rounding never drops a pixel [`super::alpha_at`] keeps.
fn row_half_height(g: &[f32]) -> f32 {
    let (a, b, c) = (g[CONIC_A], g[CONIC_B], g[CONIC_C]);
    let sigma_yy = a / (a * c - b * b);
    (2.0 * (255.0 * g[OPACITY].min(1.0)).ln() * sigma_yy).sqrt() + 1e-3
}

/// One Gaussian evaluated at the pixels of its rows of a tile: [`super::alpha_at`]'s rules
/// per lane, with 0 for an alpha that pixel skips. Lanes outside its rows keep stale values:
/// every loop runs over `TileGaussians::lanes(k)` only.
struct LaneAlpha {
    alpha: [f32; LANES],
    gauss: [f32; LANES],
    dx: [f32; LANES],
    dy: [f32; LANES],
}

impl LaneAlpha {
    fn new() -> Self {
        Self {
            alpha: [0.0; LANES],
            gauss: [0.0; LANES],
            dx: [0.0; LANES],
            dy: [0.0; LANES],
        }
    }

    /// Evaluates Gaussian `g` (a packed record) over `lanes`.
    #[inline(always)]
    fn eval(&mut self, g: &[f32], lanes: Range<usize>, pixels: &TilePixels) {
        let (mx, my, o) = (g[MEAN_X], g[MEAN_Y], g[OPACITY]);
        let [a, b, c] = [g[CONIC_A], g[CONIC_B], g[CONIC_C]];
        for i in lanes {
            let dx = mx - pixels.x[i];
            let dy = my - pixels.y[i];
            let power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy;
            let gauss = exp_neg(power);
            let alpha = (o * gauss).min(ALPHA_MAX);
            let keep = power <= 0.0 && alpha >= ALPHA_MIN;
            self.alpha[i] = if keep { alpha } else { 0.0 };
            self.gauss[i] = gauss;
            self.dx[i] = dx;
            self.dy[i] = dy;
        }
    }
}

/// A tile's pixel centres, lane by lane (row-major), and which lanes lie inside the image.
struct TilePixels {
    x: [f32; LANES],
    y: [f32; LANES],
    /// Pixel index within the view, `None` past the image's edge.
    index: [Option<usize>; LANES],
}

impl TilePixels {
    fn new(t: usize, size: RasterSize) -> Self {
        let (x0, y0, x1, y1) = tile_rect(t, size);
        let mut pixels = Self {
            x: [0.0; LANES],
            y: [0.0; LANES],
            index: [None; LANES],
        };
        for i in 0..LANES {
            let (x, y) = (x0 + i % TILE, y0 + i / TILE);
            pixels.x[i] = x as f32 + 0.5;
            pixels.y[i] = y as f32 + 0.5;
            if x < x1 && y < y1 {
                pixels.index[i] = Some(y * size.width + x);
            }
        }
        pixels
    }
}

/// Sum of `v` over `lanes` (whole rows) in [`TILE`] interleaved partial sums: vectorises,
/// and the order is fixed, so the result does not depend on the machine.
#[inline(always)]
fn lane_sum(v: &[f32; LANES], lanes: Range<usize>) -> f32 {
    let mut partial = [0.0f32; TILE];
    for row in v[lanes].chunks_exact(TILE) {
        for (p, x) in partial.iter_mut().zip(row) {
            *p += x;
        }
    }
    partial.iter().sum()
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
    let per_view: Vec<(Vec<Vec<u32>>, Vec<f32>)> = (0..size.views)
        .into_par_iter()
        .map(|v| {
            let view = &gaussians[v * n * PACK..(v + 1) * n * PACK];
            // One sort per view; appending in this order leaves every tile list sorted.
            // Ties broken by index so the order (and the image) is deterministic.
            let mut order: Vec<(f32, u32, f32)> = view
                .chunks_exact(PACK)
                .enumerate()
                .filter_map(|(i, g)| footprint_radius(g).map(|r| (g[DEPTH], i as u32, r)))
                .collect();
            order.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let mut lists: Vec<Vec<u32>> = vec![Vec::new(); tiles];
            for &(_, i, r) in &order {
                let g = &view[i as usize * PACK..][..PACK];
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
                        lists[ty * tiles_x + tx].push(i);
                    }
                }
            }
            let half_height = view.chunks_exact(PACK).map(row_half_height).collect();
            (lists, half_height)
        })
        .collect();
    let mut offsets = Vec::with_capacity(size.views * tiles + 1);
    let mut ids = Vec::new();
    let mut half_height = Vec::with_capacity(size.views * n);
    offsets.push(0);
    for (lists, heights) in per_view {
        for list in lists {
            ids.extend_from_slice(&list);
            offsets.push(ids.len());
        }
        half_height.extend(heights);
    }
    TileBins {
        offsets,
        ids,
        half_height,
    }
}

/// Tile `t` of view `v`'s Gaussians, read in place from `gaussians [views, n, PACK]`.
fn tile_gaussians<'a>(
    gaussians: &'a [f32],
    n: usize,
    size: RasterSize,
    bins: &'a TileBins,
    task: usize,
) -> TileGaussians<'a> {
    let (tiles_x, tiles_y) = tiles(size);
    let (v, t) = (task / (tiles_x * tiles_y), task % (tiles_x * tiles_y));
    TileGaussians {
        view: &gaussians[v * n * PACK..(v + 1) * n * PACK],
        list: &bins.ids[bins.offsets[task]..bins.offsets[task + 1]],
        half_height: &bins.half_height[v * n..(v + 1) * n],
        y0: tile_rect(t, size).1,
    }
}

/// Forward: `gaussians [views, n, PACK]` -> `[views * height * width, OUT]` and the state
/// for the backward. Per tile, Gaussians in depth order are the outer loop and the tile's
/// pixels the inner one (as a GPU workgroup runs them), so the inner loop vectorises.
pub fn forward(gaussians: &[f32], n: usize, size: RasterSize) -> (Vec<f32>, HostState) {
    let bins = bin(gaussians, n, size);
    let (tiles_x, tiles_y) = tiles(size);
    let tiles = tiles_x * tiles_y;
    let pixels = size.pixels();
    let mut out = vec![0.0f32; size.views * pixels * OUT];
    let mut final_t = vec![1.0f32; size.views * pixels];
    let mut last = vec![0u32; size.views * pixels];

    let results: Vec<Vec<(usize, [f32; OUT], f32, u32)>> = (0..size.views * tiles)
        .into_par_iter()
        .map(|task| {
            let (v, t) = (task / tiles, task % tiles);
            let px = TilePixels::new(t, size);
            let tile = tile_gaussians(gaussians, n, size, &bins, task);
            let (transmittance, acc, count) = composite(&tile, &px);
            (0..LANES)
                .filter_map(|i| {
                    let p = px.index[i]?;
                    let t = transmittance[i];
                    let rgbd = [acc[0][i], acc[1][i], acc[2][i], acc[3][i], 1.0 - t];
                    Some((v * pixels + p, rgbd, t, count[i]))
                })
                .collect()
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
/// input `[views, n, PACK]`. Walks each tile's list back to front, all pixels at once,
/// undoing the compositing (3DGS's backward) and summing the pixels' contributions per entry.
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
        let px = TilePixels::new(t, size);
        let tile = tile_gaussians(gaussians, n, size, bins, task);
        let mut transmittance = [1.0f32; LANES];
        let mut last = [0usize; LANES];
        let mut g_out = [[0.0f32; LANES]; OUT];
        for i in 0..LANES {
            if let Some(p) = px.index[i] {
                let p = v * pixels + p;
                transmittance[i] = state.final_t[p];
                last[i] = state.last[p] as usize;
                for (c, g) in g_out.iter_mut().enumerate() {
                    g[i] = grad[p * OUT + c];
                }
            }
        }
        undo_composite(&tile, &px, transmittance, &last, &g_out, slots);
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

/// The per-tile loops, compiled twice on x86-64: for the baseline (SSE2) and for AVX2,
/// picked at run time. Same operations in the same order either way (Rust never fuses a
/// multiply and an add on its own), so the image and gradients do not depend on the CPU.
macro_rules! multiversion {
    ($(#[$doc:meta])* fn $name:ident / $avx2:ident / $body:ident ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2, checked just above.
                return unsafe { $avx2($($arg),*) };
            }
            $body($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        fn $avx2($($arg: $ty),*) -> $ret {
            $body($($arg),*)
        }
    };
}

type Composite = ([f32; LANES], [[f32; LANES]; 4], [u32; LANES]);

multiversion! {
    /// Front-to-back compositing of a tile's Gaussians over its pixels: final transmittance,
    /// accumulated colour and depth, and per pixel the list length up to its last contributor.
    fn composite / composite_avx2 / composite_body(tile: &TileGaussians, px: &TilePixels) -> Composite
}

#[inline(always)]
fn composite_body(tile: &TileGaussians, px: &TilePixels) -> Composite {
    let mut live: [bool; LANES] = std::array::from_fn(|i| px.index[i].is_some());
    let mut transmittance = [1.0f32; LANES];
    let mut acc = [[0.0f32; LANES]; 4];
    let mut count = [0u32; LANES];
    let mut lanes = LaneAlpha::new();
    for k in 0..tile.len() {
        if !live.iter().any(|&l| l) {
            break;
        }
        let g = tile.record(k);
        let span = tile.lanes(k);
        lanes.eval(g, span.clone(), px);
        // Separate simple loops over the Gaussian's lanes: each one vectorises.
        let mut w = [0.0f32; LANES];
        for i in span.clone() {
            let alpha = if live[i] { lanes.alpha[i] } else { 0.0 };
            let next = transmittance[i] * (1.0 - alpha);
            // Saturated: the pixel stops before this Gaussian (3DGS).
            let stop = alpha > 0.0 && next < T_MIN;
            let blend = alpha > 0.0 && !stop;
            w[i] = if blend { alpha * transmittance[i] } else { 0.0 };
            transmittance[i] = if blend { next } else { transmittance[i] };
            count[i] = if blend { k as u32 + 1 } else { count[i] };
            live[i] &= !stop;
        }
        for (a, f) in acc.iter_mut().zip([RED, RED + 1, RED + 2, DEPTH]) {
            let f = g[f];
            for i in span.clone() {
                a[i] += w[i] * f;
            }
        }
    }
    (transmittance, acc, count)
}

multiversion! {
    /// The compositing undone back to front: each list entry's gradient, summed over the
    /// tile's pixels, into its slot of `slots`.
    fn undo_composite / undo_composite_avx2 / undo_composite_body(
        tile: &TileGaussians,
        px: &TilePixels,
        transmittance: [f32; LANES],
        last: &[usize; LANES],
        g_out: &[[f32; LANES]; OUT],
        slots: &mut [f32]
    ) -> ()
}

#[inline(always)]
fn undo_composite_body(
    tile: &TileGaussians,
    px: &TilePixels,
    mut transmittance: [f32; LANES],
    last: &[usize; LANES],
    g_out: &[[f32; LANES]; OUT],
    slots: &mut [f32],
) {
    // What lies behind the current Gaussian, composited (per channel, per pixel).
    let mut behind = [[0.0f32; LANES]; OUT];
    let mut lanes = LaneAlpha::new();
    // Per-pixel terms of one entry's gradient, summed with `lane_sum` over its lanes.
    let mut terms = [[0.0f32; LANES]; PACK];
    let end = last.iter().copied().max().unwrap_or(0);
    for k in (0..end).rev() {
        let g = tile.record(k);
        let span = tile.lanes(k);
        lanes.eval(g, span.clone(), px);
        let feature = [g[RED], g[RED + 1], g[RED + 2], g[DEPTH], 1.0];
        let o = g[OPACITY];
        let [a, b, c] = [g[CONIC_A], g[CONIC_B], g[CONIC_C]];
        // Separate simple loops over the Gaussian's lanes: each one vectorises. Lanes outside
        // them see alpha 0: nothing changes there and they add nothing.
        let mut alpha = [0.0f32; LANES];
        for i in span.clone() {
            alpha[i] = if k < last[i] { lanes.alpha[i] } else { 0.0 };
            // T_k, before this Gaussian (a skipped one divides by 1: no change).
            transmittance[i] /= 1.0 - alpha[i];
        }
        for (ch, term) in [RED, RED + 1, RED + 2, DEPTH].into_iter().enumerate() {
            for i in span.clone() {
                terms[term][i] = alpha[i] * transmittance[i] * g_out[ch][i];
            }
        }
        let mut d_alpha = [0.0f32; LANES];
        for (ch, f) in feature.into_iter().enumerate() {
            for i in span.clone() {
                d_alpha[i] += g_out[ch][i] * (f - behind[ch][i]);
                behind[ch][i] = alpha[i] * f + (1.0 - alpha[i]) * behind[ch][i];
            }
        }
        for i in span.clone() {
            // A clamped alpha does not move with the parameters.
            let free = alpha[i] > 0.0 && o * lanes.gauss[i] < ALPHA_MAX;
            let d_alpha = if free {
                d_alpha[i] * transmittance[i]
            } else {
                0.0
            };
            terms[OPACITY][i] = d_alpha * lanes.gauss[i];
            let d_power = d_alpha * alpha[i];
            let (dx, dy) = (lanes.dx[i], lanes.dy[i]);
            terms[MEAN_X][i] = d_power * (-a * dx - b * dy);
            terms[MEAN_Y][i] = d_power * (-b * dx - c * dy);
            terms[CONIC_A][i] = d_power * (-0.5 * dx * dx);
            terms[CONIC_B][i] = d_power * (-dx * dy);
            terms[CONIC_C][i] = d_power * (-0.5 * dy * dy);
        }
        let slot = &mut slots[k * PACK..(k + 1) * PACK];
        for (s, term) in slot.iter_mut().zip(&terms) {
            *s = lane_sum(term, span.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_neg_matches_the_library_to_an_ulp_or_two() {
        let mut worst = 0.0f32;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let (got, want) = (exp_neg(x), x.exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(exp_neg(0.0), 1.0);
        assert!(exp_neg(-1000.0) < 1e-37);
    }
}
