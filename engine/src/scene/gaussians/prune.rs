//! Pruning before meshing: the Gaussians that should not become surface. DreamGaussian drops
//! Gaussians below opacity 0.005 before it samples the density field (`extract_fields`) and,
//! before its Poisson reconstruction, statistical outliers (Open3D's
//! `remove_statistical_outlier`, `nb_neighbors = 20`); this does both on a [`SplatCloud`].
//!
//! Faint Gaussians matter to the mesh although each is nearly invisible: the density field
//! sums them. After 250 steps most of the initial ball of Gaussians is still there, faded,
//! and drawn at the automatic iso-level (0.036 on the issue's prop) the haze and the stray
//! Gaussians in it mesh as blobs joined to the prop: one piece spanning the whole ball, which
//! the mesh stage's component filter keeps whole.

use std::collections::BinaryHeap;

use glam::Vec3;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::SplatCloud;

/// What to prune before meshing.
///
/// Defaults measured on Tiny World props of `rewardsds generate --scene gaussians` (fast
/// preset, 250 steps, seed 0; `tests/floaters.rs`, `measure_real_prop`): after 250 steps the
/// median Gaussian's opacity is 0.013 and 81% are below 0.05 (the faded initial ball), while
/// the props' surfaces are mostly Gaussians above 0.2. DreamGaussian's 0.005 removes 58 of
/// 2300 there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PruneConfig {
    /// Gaussians less opaque than this are dropped (`0` keeps them all). 0.2: on "a purple
    /// torus on top of an orange cone" 0.1 leaves two white blobs of 21% and 23% of the
    /// cone's area, and 0.3, which removes the last blobs, also erases most of the pale
    /// sphere of "a white sphere and a red cube" (mesh area 4.23 unpruned, 2.42 at 0.2, 1.85
    /// at 0.3). After 1000 steps (an opacity reset at 700) the torus is fainter and 0.1 keeps
    /// more of it (55% of the unpruned torus's area, 26% at 0.2), with no blob either way.
    pub min_opacity: f32,
    /// Neighbours each Gaussian's mean distance is taken over, for the statistical outlier
    /// rule (Open3D's `nb_neighbors`, 20 as DreamGaussian calls it); `0` turns the rule off.
    /// It runs on the Gaussians `min_opacity` keeps, so a clump of fewer strays than this has
    /// to reach out of itself for its neighbours.
    pub nb_neighbors: usize,
    /// A Gaussian whose mean distance to its neighbours exceeds this many times the median
    /// of that distance over the cloud is an outlier. A ratio to the median rather than
    /// Open3D's mean + `std_ratio` x std: strays are a fifth to a third of what `min_opacity`
    /// keeps, and widen the spread they would be measured against (a cut at the median + 1
    /// robust std took 21% of a clean cylinder's Gaussians yet left blobs beside the torus).
    /// 1.3 drops 75 of 230 on the torus prop and 21 of 400 (5%) on a clean cylinder; 1.5
    /// leaves three white blobs of 21-27% of the cone's area.
    pub max_distance_ratio: f32,
}

impl Default for PruneConfig {
    fn default() -> Self {
        Self {
            min_opacity: 0.2,
            nb_neighbors: 20,
            max_distance_ratio: 1.3,
        }
    }
}

/// A [`PruneConfig`] setting out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("prune setting {name} = {value}: {why}")]
pub struct PruneConfigError {
    /// The setting's name, as in [`PruneConfig`].
    pub name: &'static str,
    /// Its value, printed.
    pub value: String,
    /// What it must be instead.
    pub why: &'static str,
}

impl PruneConfig {
    /// Checks the values; the error names the setting.
    pub fn validate(&self) -> Result<(), PruneConfigError> {
        let bad = |name, value: String, why| Err(PruneConfigError { name, value, why });
        if !(0.0..=1.0).contains(&self.min_opacity) {
            return bad(
                "min_opacity",
                self.min_opacity.to_string(),
                "must be in [0, 1]",
            );
        }
        if self.nb_neighbors > 1000 {
            return bad(
                "nb_neighbors",
                self.nb_neighbors.to_string(),
                "must be at most 1000 (0 turns the outlier rule off)",
            );
        }
        if !(self.max_distance_ratio.is_finite() && self.max_distance_ratio >= 1.0) {
            return bad(
                "max_distance_ratio",
                self.max_distance_ratio.to_string(),
                "must be a finite number of at least 1 (1 drops the sparser half)",
            );
        }
        Ok(())
    }
}

/// What [`SplatCloud::pruned`] dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PruneReport {
    /// Gaussians before pruning.
    pub total: usize,
    /// Dropped for a position or opacity that is not finite.
    pub non_finite: usize,
    /// Dropped below `min_opacity`.
    pub transparent: usize,
    /// Dropped by the statistical outlier rule.
    pub outliers: usize,
    /// Gaussians kept.
    pub kept: usize,
    /// The outlier rule's cut: mean neighbour distance above this was dropped (`0` when the
    /// rule did not run).
    pub outlier_distance: f32,
    /// No Gaussian reached `min_opacity` (an untrained scene: Gaussians start at opacity 0.1),
    /// so the rules were skipped and every finite Gaussian kept: an empty cloud has no
    /// surface to mesh, and a scene with nothing opaque has no prop to clean.
    pub skipped: bool,
}

impl SplatCloud {
    /// Which Gaussians survive `config`: first the finite and opaque enough, then, among those,
    /// the ones that are no statistical outlier. When nothing is opaque enough the cloud is
    /// kept whole ([`PruneReport::skipped`]).
    pub fn prune_mask(
        &self,
        config: &PruneConfig,
    ) -> Result<(Vec<bool>, PruneReport), PruneConfigError> {
        config.validate()?;
        let n = self.len();
        let mut report = PruneReport {
            total: n,
            ..PruneReport::default()
        };
        let mut keep = vec![false; n];
        for (i, k) in keep.iter_mut().enumerate() {
            let o = self.opacities.get(i).copied().unwrap_or(f32::NAN);
            if !(o.is_finite() && self.positions[i].iter().all(|c| c.is_finite())) {
                report.non_finite += 1;
            } else if o < config.min_opacity {
                report.transparent += 1;
            } else {
                *k = true;
            }
        }

        if report.transparent > 0 && report.transparent + report.non_finite == n {
            report.skipped = true;
            report.transparent = 0;
            for (i, k) in keep.iter_mut().enumerate() {
                let o = self.opacities.get(i).copied().unwrap_or(f32::NAN);
                *k = o.is_finite() && self.positions[i].iter().all(|c| c.is_finite());
            }
            report.kept = n - report.non_finite;
            return Ok((keep, report));
        }

        let survivors: Vec<usize> = (0..n).filter(|&i| keep[i]).collect();
        let k = config.nb_neighbors;
        if k > 0 && survivors.len() > k {
            let points: Vec<Vec3> = survivors
                .iter()
                .map(|&i| Vec3::from(self.positions[i]))
                .collect();
            let mean_distances = mean_neighbour_distances(&points, k);
            let cut = config.max_distance_ratio * median(&mean_distances);
            report.outlier_distance = cut;
            for (&i, &d) in survivors.iter().zip(&mean_distances) {
                if d > cut {
                    keep[i] = false;
                    report.outliers += 1;
                }
            }
        }
        report.kept = keep.iter().filter(|k| **k).count();
        Ok((keep, report))
    }

    /// The cloud without the Gaussians [`SplatCloud::prune_mask`] rejects.
    pub fn pruned(
        &self,
        config: &PruneConfig,
    ) -> Result<(SplatCloud, PruneReport), PruneConfigError> {
        let (keep, report) = self.prune_mask(config)?;
        Ok((self.filtered(|i| keep[i]), report))
    }
}

fn median(values: &[f32]) -> f32 {
    let mut values = values.to_vec();
    if values.is_empty() {
        return 0.0;
    }
    let mid = values.len() / 2;
    *values.select_nth_unstable_by(mid, f32::total_cmp).1
}

/// Each point's mean Euclidean distance to its `k` nearest other points (a k-d tree; the
/// clouds reach 50 000 Gaussians, too many for all pairs).
fn mean_neighbour_distances(points: &[Vec3], k: usize) -> Vec<f32> {
    let mut order: Vec<u32> = (0..points.len() as u32).collect();
    build(points, &mut order, 0);
    let tree = KdTree { points };
    (0..points.len())
        .into_par_iter()
        .map(|i| {
            let mut heap = BinaryHeap::with_capacity(k + 2);
            // k + 1: the point itself is among the nearest.
            tree.nearest(&order, 0, points[i], k + 1, &mut heap);
            let mut nearest = heap.into_sorted_vec();
            // Drop the point itself (or, where duplicates tie with it at distance 0, one of
            // them: the same distances).
            let own = nearest
                .iter()
                .position(|&(_, j)| j as usize == i)
                .unwrap_or(0);
            if !nearest.is_empty() {
                nearest.remove(own);
            }
            let count = nearest.len().min(k);
            let sum: f32 = nearest[..count]
                .iter()
                .map(|&(bits, _)| f32::from_bits(bits).sqrt())
                .sum();
            sum / count.max(1) as f32
        })
        .collect()
}

/// A k-d tree over `points`, laid out in an index slice: each slice's middle element splits
/// the rest on axis `depth % 3` (built by [`build`]).
struct KdTree<'a> {
    points: &'a [Vec3],
}

fn build(points: &[Vec3], order: &mut [u32], depth: usize) {
    if order.len() <= 1 {
        return;
    }
    let axis = depth % 3;
    let mid = order.len() / 2;
    order.select_nth_unstable_by(mid, |&a, &b| {
        points[a as usize][axis].total_cmp(&points[b as usize][axis])
    });
    let (left, right) = order.split_at_mut(mid);
    build(points, left, depth + 1);
    build(points, &mut right[1..], depth + 1);
}

impl KdTree<'_> {
    /// Pushes the `k` nearest points of `slice` to `q` into `heap`, a max-heap of
    /// (squared distance as bits, index): non-negative floats order as their bits do.
    fn nearest(
        &self,
        slice: &[u32],
        depth: usize,
        q: Vec3,
        k: usize,
        heap: &mut BinaryHeap<(u32, u32)>,
    ) {
        if slice.is_empty() {
            return;
        }
        let mid = slice.len() / 2;
        let index = slice[mid];
        let p = self.points[index as usize];
        let d2 = p.distance_squared(q);
        if heap.len() < k {
            heap.push((d2.to_bits(), index));
        } else if heap.peek().is_some_and(|&(top, _)| d2.to_bits() < top) {
            heap.pop();
            heap.push((d2.to_bits(), index));
        }
        let axis = depth % 3;
        let diff = q[axis] - p[axis];
        let (near, far) = if diff < 0.0 {
            (&slice[..mid], &slice[mid + 1..])
        } else {
            (&slice[mid + 1..], &slice[..mid])
        };
        self.nearest(near, depth + 1, q, k, heap);
        let reach = heap
            .peek()
            .map_or(f32::INFINITY, |&(top, _)| f32::from_bits(top));
        if heap.len() < k || diff * diff < reach {
            self.nearest(far, depth + 1, q, k, heap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbour_distances_match_brute_force() {
        let mut points: Vec<Vec3> = (0..300)
            .map(|i| {
                let t = i as f32;
                Vec3::new((t * 0.37).sin(), (t * 0.91).cos(), (t * 0.13).sin() * 2.0)
            })
            .collect();
        // Duplicates: each is the other's nearest neighbour, at 0.
        points.extend([points[0], points[0], points[5]]);
        let k = 7;
        let fast = mean_neighbour_distances(&points, k);
        for (i, p) in points.iter().enumerate() {
            let mut d: Vec<f32> = points
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, q)| q.distance(*p))
                .collect();
            d.sort_by(f32::total_cmp);
            let brute = d[..k].iter().sum::<f32>() / k as f32;
            assert!(
                (brute - fast[i]).abs() < 1e-5,
                "{i}: {brute} vs {}",
                fast[i]
            );
        }
    }

    #[test]
    fn validate_names_the_setting() {
        let bad = PruneConfig {
            min_opacity: 1.5,
            ..PruneConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().name, "min_opacity");
        let bad = PruneConfig {
            max_distance_ratio: f32::NAN,
            ..PruneConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().name, "max_distance_ratio");
        let bad: Result<PruneConfig, _> = serde_json::from_str(r#"{"min_opacty": 0.1}"#);
        assert!(bad.is_err(), "unknown keys are refused");
        assert!(PruneConfig::default().validate().is_ok());
    }

    #[test]
    fn non_finite_empty_and_untrained_clouds() {
        let cloud = SplatCloud {
            positions: vec![[f32::NAN, 0.0, 0.0], [0.0; 3]],
            scales: vec![[0.1; 3]; 2],
            rotations: vec![[1.0, 0.0, 0.0, 0.0]; 2],
            opacities: vec![0.9, 0.9],
            colors: vec![[0.5; 3]; 2],
            sh: vec![vec![0.0; 3]; 2],
        };
        let (kept, report) = cloud.pruned(&PruneConfig::default()).unwrap();
        assert_eq!((kept.len(), report.non_finite), (1, 1));
        let (empty, _) = SplatCloud::default()
            .pruned(&PruneConfig::default())
            .unwrap();
        assert!(empty.is_empty());
        // Nothing opaque yet: kept whole rather than emptied.
        let faint = SplatCloud {
            opacities: vec![0.1, 0.1],
            ..cloud
        };
        let (kept, report) = faint.pruned(&PruneConfig::default()).unwrap();
        assert_eq!(
            (kept.len(), report.skipped, report.non_finite),
            (1, true, 1)
        );
    }
}
