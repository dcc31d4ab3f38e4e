//! Adaptive density control (3DGS, as DreamGaussian uses it): Gaussians whose screen-space
//! position gradient stays large are cloned (small ones) or split in two (large ones);
//! transparent or oversized ones are pruned; opacity is reset now and then so that floaters
//! have to earn their opacity back.

use burn::config::Config;
use burn::tensor::{Tensor, TensorData, backend::Backend};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::rotation::unit_rotation;
use super::{GaussianAdam, Gaussians};

/// When and how to densify and prune. Thresholds are 3DGS's.
#[derive(Config, Debug, PartialEq)]
pub struct DensifyConfig {
    /// First step that densifies.
    #[config(default = 100)]
    pub start: usize,
    /// Densification stops after this step (pruning too).
    #[config(default = 3000)]
    pub end: usize,
    /// Steps between densifications.
    #[config(default = 100)]
    pub interval: usize,
    /// Steps between opacity resets (0: never).
    #[config(default = 700)]
    pub opacity_reset_interval: usize,
    /// Mean screen-space gradient norm (NDC units, as 3DGS measures it) above which a
    /// Gaussian is densified.
    #[config(default = 0.0002)]
    pub grad_threshold: f32,
    /// Gaussians larger than this fraction of the scene extent are split, smaller ones cloned.
    #[config(default = 0.01)]
    pub percent_dense: f32,
    /// Scene extent (radius) the size thresholds are relative to.
    #[config(default = 1.0)]
    pub extent: f32,
    /// Gaussians less opaque than this are pruned.
    #[config(default = 0.005)]
    pub min_opacity: f32,
    /// Gaussians wider than this many pixels on screen, or than 0.1 x extent in the world,
    /// are pruned (after the first opacity reset, as 3DGS does); 0 turns it off.
    #[config(default = 20.0)]
    pub max_screen_size: f32,
    /// No densification beyond this many Gaussians (pruning goes on).
    #[config(default = 200_000)]
    pub max_gaussians: usize,
}

/// What one densification did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DensifyReport {
    /// Gaussians cloned.
    pub cloned: usize,
    /// Gaussians split (each into two, the original removed).
    pub split: usize,
    /// Gaussians pruned.
    pub pruned: usize,
    /// Gaussians after it.
    pub total: usize,
}

/// Screen-space gradient and footprint statistics between densifications.
#[derive(Debug, Clone, Default)]
pub struct DensifyStats {
    grad_sum: Vec<f32>,
    seen: Vec<u32>,
    max_radius: Vec<f32>,
}

impl DensifyStats {
    /// Empty statistics for `n` Gaussians.
    pub fn new(n: usize) -> Self {
        Self {
            grad_sum: vec![0.0; n],
            seen: vec![0; n],
            max_radius: vec![0.0; n],
        }
    }

    /// Adds one step: `probe_grad [views * N * 2]` (pixels) and `radii [views][N]` from
    /// [`crate::render::splat::SplatOutput`]; `width`, `height` convert to NDC units.
    pub fn add(&mut self, probe_grad: &[f32], radii: &[Vec<f32>], width: usize, height: usize) {
        let n = self.grad_sum.len();
        for (v, radii) in radii.iter().enumerate() {
            for i in 0..n.min(radii.len()) {
                if radii[i] <= 0.0 {
                    continue;
                }
                let g = &probe_grad[(v * n + i) * 2..][..2];
                let (gx, gy) = (g[0] * 0.5 * width as f32, g[1] * 0.5 * height as f32);
                self.grad_sum[i] += (gx * gx + gy * gy).sqrt();
                self.seen[i] += 1;
                self.max_radius[i] = self.max_radius[i].max(radii[i]);
            }
        }
    }

    /// The accumulators `(grad_sum, seen, max_radius)`, one entry per Gaussian: what a
    /// checkpoint keeps.
    pub(crate) fn parts(&self) -> (&[f32], &[u32], &[f32]) {
        (&self.grad_sum, &self.seen, &self.max_radius)
    }

    /// Statistics from [`parts`](Self::parts); `None` unless the three have one length.
    pub(crate) fn from_parts(
        grad_sum: Vec<f32>,
        seen: Vec<u32>,
        max_radius: Vec<f32>,
    ) -> Option<Self> {
        (grad_sum.len() == seen.len() && seen.len() == max_radius.len()).then_some(Self {
            grad_sum,
            seen,
            max_radius,
        })
    }

    /// Mean gradient norm per Gaussian (0 where never seen).
    pub fn mean_grad(&self) -> Vec<f32> {
        self.grad_sum
            .iter()
            .zip(&self.seen)
            .map(|(g, &s)| if s > 0 { g / s as f32 } else { 0.0 })
            .collect()
    }
}

fn host<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Vec<f32> {
    t.clone()
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap_or_default()
}

impl DensifyConfig {
    /// Whether `step` (1-based, after the update) densifies.
    pub fn densifies_at(&self, step: usize) -> bool {
        step >= self.start && step <= self.end && self.interval > 0 && step % self.interval == 0
    }

    /// Whether `step` resets opacity.
    pub fn resets_opacity_at(&self, step: usize) -> bool {
        self.opacity_reset_interval > 0
            && step <= self.end
            && step % self.opacity_reset_interval == 0
    }

    /// Clones, splits and prunes; the optimiser's moments follow. `step` decides whether the
    /// screen-size pruning is on yet.
    pub fn densify_and_prune<B: Backend>(
        &self,
        params: Gaussians<B>,
        adam: &mut GaussianAdam<B>,
        stats: &DensifyStats,
        step: usize,
        seed: u64,
    ) -> (Gaussians<B>, DensifyReport) {
        let n = params.len();
        let device = params.means.device();
        let grads = stats.mean_grad();
        if std::env::var_os("REWARDSDS_DEBUG_DENSIFY").is_some() {
            let mut sorted: Vec<f32> = grads.iter().copied().filter(|g| *g > 0.0).collect();
            sorted.sort_by(f32::total_cmp);
            let q = |f: f32| {
                sorted
                    .get(((sorted.len() as f32 - 1.0) * f) as usize)
                    .copied()
                    .unwrap_or(0.0)
            };
            eprintln!(
                "densify step {step}: grad quantiles 10/50/90/99% = {:.2e} {:.2e} {:.2e} {:.2e}",
                q(0.1),
                q(0.5),
                q(0.9),
                q(0.99)
            );
        }
        let log_scales = host(&params.log_scales);
        let max_scale: Vec<f32> = (0..n)
            .map(|i| {
                log_scales[i * 3..i * 3 + 3]
                    .iter()
                    .fold(f32::MIN, |a, &b| a.max(b))
                    .exp()
            })
            .collect();
        let opacity = host(&params.opacities());
        let size_pruning = self.max_screen_size > 0.0
            && self.opacity_reset_interval > 0
            && step > self.opacity_reset_interval;

        let pruned: Vec<bool> = (0..n)
            .map(|i| {
                opacity[i] < self.min_opacity
                    || (size_pruning
                        && (stats.max_radius.get(i).copied().unwrap_or(0.0) > self.max_screen_size
                            || max_scale[i] > 0.1 * self.extent))
            })
            .collect();
        let grow = n < self.max_gaussians;
        let big = self.percent_dense * self.extent;
        let hot = |i: usize| {
            grow && !pruned[i] && grads.get(i).copied().unwrap_or(0.0) >= self.grad_threshold
        };
        let clone_ids: Vec<usize> = (0..n).filter(|&i| hot(i) && max_scale[i] <= big).collect();
        let split_ids: Vec<usize> = (0..n).filter(|&i| hot(i) && max_scale[i] > big).collect();

        // Split: two samples from each parent's own Gaussian, 1.6x narrower (3DGS).
        let split = if split_ids.is_empty() {
            None
        } else {
            let parents = params.select(&split_ids);
            let mut children = parents.select(
                &(0..split_ids.len())
                    .chain(0..split_ids.len())
                    .collect::<Vec<_>>(),
            );
            let means = host(&parents.means);
            let rotations = host(&parents.rotations);
            let mut rng = StdRng::seed_from_u64(seed);
            let m = split_ids.len();
            let mut new_means = vec![0.0f32; 2 * m * 3];
            for copy in 0..2 {
                for (j, &i) in split_ids.iter().enumerate() {
                    let s: [f32; 3] = std::array::from_fn(|k| log_scales[i * 3 + k].exp());
                    let local: [f32; 3] = std::array::from_fn(|k| {
                        s[k] * <StandardNormal as Distribution<f32>>::sample(
                            &StandardNormal,
                            &mut rng,
                        )
                    });
                    let rotated = rotate(&rotations[j * 4..j * 4 + 4], local);
                    for k in 0..3 {
                        new_means[(copy * m + j) * 3 + k] = means[j * 3 + k] + rotated[k];
                    }
                }
            }
            children.means = Tensor::from_data(TensorData::new(new_means, [2 * m, 3]), &device);
            children.log_scales = children.log_scales.sub_scalar((0.8f32 * 2.0).ln());
            Some(children)
        };
        let added = match (clone_ids.is_empty(), split) {
            (true, None) => None,
            (false, None) => Some(params.select(&clone_ids)),
            (true, Some(s)) => Some(s),
            (false, Some(s)) => Some(params.select(&clone_ids).concat(s)),
        };
        let split_set: std::collections::HashSet<usize> = split_ids.iter().copied().collect();
        let keep: Vec<usize> = (0..n)
            .filter(|&i| !pruned[i] && !split_set.contains(&i))
            .collect();
        let kept = params.select(&keep);
        let (next, added_len) = match added {
            Some(a) => {
                let len = a.len();
                adam.remap(&keep, &a);
                (kept.concat(a), len)
            }
            None => {
                adam.remap(&keep, &kept.select(&[]));
                (kept, 0)
            }
        };
        let report = DensifyReport {
            cloned: clone_ids.len(),
            split: split_ids.len(),
            pruned: pruned.iter().filter(|&&p| p).count(),
            total: keep.len() + added_len,
        };
        (next, report)
    }

    /// Caps every opacity at 0.01 (3DGS's reset) and clears its moments.
    pub fn reset_opacity<B: Backend>(
        &self,
        params: Gaussians<B>,
        adam: &mut GaussianAdam<B>,
    ) -> Gaussians<B> {
        let cap = (0.01f32 / 0.99).ln();
        adam.reset_opacity();
        Gaussians {
            opacity_logits: params.opacity_logits.clamp_max(cap),
            ..params
        }
    }
}

/// Rotates `v` by the (unnormalised) quaternion `q = (w, x, y, z)`.
fn rotate(q: &[f32], v: [f32; 3]) -> [f32; 3] {
    let (_, r, _) = unit_rotation(q);
    std::array::from_fn(|i| r[i][0] * v[0] + r[i][1] * v[1] + r[i][2] * v[2])
}
