//! Density fields and sampling them on a regular grid.
//!
//! A field is anything that answers "how dense is the scene at these points" in batches:
//! the NeRF ([`NerfField`](super::NerfField)), later Gaussians, or an analytic function for
//! tests ([`Pointwise`]). Batches keep the per-call overhead of a tensor backend small while
//! [`DensityGrid::sample`] bounds memory by asking for at most `chunk` points at a time.

use glam::Vec3;
use serde::{Deserialize, Serialize};

use super::MeshError;

/// An axis-aligned box in world space.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Aabb {
    /// Lower corner.
    pub min: Vec3,
    /// Upper corner.
    pub max: Vec3,
}

impl Aabb {
    /// The box between two corners.
    pub fn new(min: Vec3, max: Vec3) -> Self {
        Self { min, max }
    }

    /// The cube `[-half, half]^3` (a NeRF's region is one).
    pub fn cube(half: f32) -> Self {
        Self::new(Vec3::splat(-half), Vec3::splat(half))
    }

    /// The smallest box holding every point; `None` for no points.
    pub fn from_points(points: &[[f32; 3]]) -> Option<Self> {
        let first = Vec3::from(*points.first()?);
        Some(points.iter().fold(Self::new(first, first), |b, p| {
            let p = Vec3::from(*p);
            Self::new(b.min.min(p), b.max.max(p))
        }))
    }

    /// Edge lengths.
    pub fn size(&self) -> Vec3 {
        self.max - self.min
    }

    /// Centre point.
    pub fn center(&self) -> Vec3 {
        (self.min + self.max) * 0.5
    }

    /// Finite, with `max > min` on every axis.
    pub fn is_valid(&self) -> bool {
        self.min.is_finite() && self.max.is_finite() && self.max.cmpgt(self.min).all()
    }

    /// Grown by `margin` on every side.
    pub fn grown(&self, margin: Vec3) -> Self {
        Self::new(self.min - margin, self.max + margin)
    }

    /// The overlap of two boxes (may be invalid when they do not overlap).
    pub fn intersection(&self, other: &Self) -> Self {
        Self::new(self.min.max(other.min), self.max.min(other.max))
    }

    fn check(&self) -> Result<(), MeshError> {
        if self.is_valid() {
            Ok(())
        } else {
            Err(MeshError::BadBounds {
                min: self.min.into(),
                max: self.max.into(),
            })
        }
    }
}

/// A scalar density field: larger is more solid; the surface is where it crosses an iso-level.
pub trait DensityField {
    /// The density at each world point, in the same order (`points.len()` values).
    fn density(&self, points: &[[f32; 3]]) -> Vec<f32>;
}

impl<F> DensityField for F
where
    F: Fn(&[[f32; 3]]) -> Vec<f32>,
{
    fn density(&self, points: &[[f32; 3]]) -> Vec<f32> {
        self(points)
    }
}

/// Surface colour: albedo in [0, 1], sRGB-encoded as the renderer shows it (what the diffusion
/// prior judged).
pub trait AlbedoField {
    /// The albedo at each world point, in the same order (`points.len()` values).
    fn albedo(&self, points: &[[f32; 3]]) -> Vec<[f32; 3]>;
}

impl<F> AlbedoField for F
where
    F: Fn(&[[f32; 3]]) -> Vec<[f32; 3]>,
{
    fn albedo(&self, points: &[[f32; 3]]) -> Vec<[f32; 3]> {
        self(points)
    }
}

/// A field given one point at a time (analytic test shapes): `Pointwise(|p: Vec3| 1.0 - p.length())`
/// is a density field, `Pointwise(|p: Vec3| [1.0, 0.0, 0.0])` an albedo field.
#[derive(Debug, Clone, Copy)]
pub struct Pointwise<F>(pub F);

impl<F: Fn(Vec3) -> f32> DensityField for Pointwise<F> {
    fn density(&self, points: &[[f32; 3]]) -> Vec<f32> {
        points.iter().map(|p| (self.0)(Vec3::from(*p))).collect()
    }
}

impl<F: Fn(Vec3) -> [f32; 3]> AlbedoField for Pointwise<F> {
    fn albedo(&self, points: &[[f32; 3]]) -> Vec<[f32; 3]> {
        points.iter().map(|p| (self.0)(Vec3::from(*p))).collect()
    }
}

/// Densities sampled on a regular grid of cubic voxels.
#[derive(Debug, Clone, PartialEq)]
pub struct DensityGrid {
    /// World position of sample `[0, 0, 0]`.
    pub origin: Vec3,
    /// Distance between neighbouring samples.
    pub voxel: f32,
    /// Samples along x, y, z.
    pub dims: [u32; 3],
    /// Densities, x fastest: sample `[x, y, z]` is at `x + dims[0] * (y + dims[1] * z)`.
    pub values: Vec<f32>,
}

impl DensityGrid {
    /// Samples `field` over `bounds` with `resolution` samples along the box's longest side and
    /// the same spacing on the others (cubic voxels, so the mesh is equally fine in every
    /// direction). The grid is centred on the box and covers it. The field is asked about at
    /// most `chunk` points per call.
    pub fn sample(
        field: &(impl DensityField + ?Sized),
        bounds: Aabb,
        resolution: u32,
        chunk: usize,
    ) -> Result<Self, MeshError> {
        bounds.check()?;
        if resolution < 2 {
            return Err(MeshError::BadConfig {
                name: "resolution",
                value: resolution.to_string(),
                why: "needs at least 2 samples per axis",
            });
        }
        if chunk == 0 {
            return Err(MeshError::BadConfig {
                name: "chunk",
                value: "0".into(),
                why: "must be at least 1 point per field query",
            });
        }
        let size = bounds.size();
        let voxel = size.max_element() / (resolution - 1) as f32;
        // Samples per axis: enough to cover the side; the small slack keeps an exact fit exact.
        let dims = size
            .to_array()
            .map(|s| ((s / voxel - 1e-3).ceil().max(1.0) as u32 + 1).min(resolution));
        let span = Vec3::new(
            (dims[0] - 1) as f32,
            (dims[1] - 1) as f32,
            (dims[2] - 1) as f32,
        ) * voxel;
        let origin = bounds.center() - span * 0.5;
        let n = dims.iter().map(|&d| d as usize).product::<usize>();

        let mut values = Vec::with_capacity(n);
        let mut points = Vec::with_capacity(chunk.min(n));
        let mut start = 0;
        while start < n {
            let end = (start + chunk).min(n);
            points.clear();
            points.extend((start..end).map(|i| {
                let x = i % dims[0] as usize;
                let y = (i / dims[0] as usize) % dims[1] as usize;
                let z = i / (dims[0] as usize * dims[1] as usize);
                (origin + Vec3::new(x as f32, y as f32, z as f32) * voxel).to_array()
            }));
            let got = field.density(&points);
            if got.len() != points.len() {
                return Err(MeshError::FieldLength {
                    field: "density",
                    expected: points.len(),
                    got: got.len(),
                });
            }
            values.extend_from_slice(&got);
            start = end;
        }
        let grid = Self {
            origin,
            voxel,
            dims,
            values,
        };
        grid.check_finite()?;
        Ok(grid)
    }

    fn check_finite(&self) -> Result<(), MeshError> {
        let mut bad = self
            .values
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.is_finite());
        if let Some((first, _)) = bad.next() {
            return Err(MeshError::NonFinite {
                field: "density",
                count: 1 + bad.count(),
                first: self.position(self.coords(first)).into(),
            });
        }
        Ok(())
    }

    /// Grid coordinates of linear sample index `i`.
    pub fn coords(&self, i: usize) -> [u32; 3] {
        let [nx, ny, _] = self.dims.map(|d| d as usize);
        [
            (i % nx) as u32,
            ((i / nx) % ny) as u32,
            (i / (nx * ny)) as u32,
        ]
    }

    /// World position of grid coordinates (fractional ones interpolate).
    pub fn position(&self, coords: [u32; 3]) -> Vec3 {
        self.origin + Vec3::new(coords[0] as f32, coords[1] as f32, coords[2] as f32) * self.voxel
    }

    /// The box the samples span.
    pub fn bounds(&self) -> Aabb {
        Aabb::new(self.origin, self.position(self.dims.map(|d| d - 1)))
    }

    /// Largest density.
    pub fn max(&self) -> f32 {
        self.values
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max)
    }

    /// Mean and standard deviation of the densities (accumulated in f64: 256^3 samples).
    pub fn mean_std(&self) -> (f32, f32) {
        let n = self.values.len().max(1) as f64;
        let mean = self.values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = self
            .values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean as f32, var.sqrt() as f32)
    }

    /// The box around every sample denser than `level`; `None` when there is none.
    pub fn occupied_bounds(&self, level: f32) -> Option<Aabb> {
        let mut lo = [u32::MAX; 3];
        let mut hi = [0u32; 3];
        let mut any = false;
        for (i, _) in self.values.iter().enumerate().filter(|(_, v)| **v > level) {
            let c = self.coords(i);
            for a in 0..3 {
                lo[a] = lo[a].min(c[a]);
                hi[a] = hi[a].max(c[a]);
            }
            any = true;
        }
        any.then(|| Aabb::new(self.position(lo), self.position(hi)))
    }

    /// For each axis, whether any sample on its lower and upper face is denser than `level`
    /// (the surface reaches the grid's edge there and would be capped).
    pub fn faces_above(&self, level: f32) -> [[bool; 2]; 3] {
        let mut faces = [[false; 2]; 3];
        for (i, _) in self.values.iter().enumerate().filter(|(_, v)| **v > level) {
            let c = self.coords(i);
            for a in 0..3 {
                faces[a][0] |= c[a] == 0;
                faces[a][1] |= c[a] == self.dims[a] - 1;
            }
        }
        faces
    }

    /// The error for a grid with nothing denser than `level`, or `Ok` when there is something.
    pub fn check_not_empty(&self, level: f32) -> Result<(), MeshError> {
        if self.values.iter().any(|&v| v > level) {
            Ok(())
        } else {
            Err(MeshError::EmptyField {
                iso_level: level,
                max_density: self.max(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_covers_the_box_with_cubic_voxels() {
        let field = Pointwise(|p: Vec3| p.x);
        let bounds = Aabb::new(Vec3::new(-1.0, 0.0, 0.0), Vec3::new(1.0, 0.5, 1.0));
        let grid = DensityGrid::sample(&field, bounds, 9, 7).unwrap();
        assert_eq!(grid.dims, [9, 3, 5]);
        assert!((grid.voxel - 0.25).abs() < 1e-6);
        let b = grid.bounds();
        assert!((b.min - bounds.min).abs().max_element() < 1e-5, "{b:?}");
        assert!((b.max - bounds.max).abs().max_element() < 1e-5, "{b:?}");
        // x fastest, values follow positions (chunking does not reorder).
        for (i, v) in grid.values.iter().enumerate() {
            assert!((grid.position(grid.coords(i)).x - v).abs() < 1e-6);
        }
    }

    #[test]
    fn bad_inputs_name_what_is_wrong() {
        let field = Pointwise(|_: Vec3| 0.0);
        let err = DensityGrid::sample(&field, Aabb::cube(1.0), 1, 10).unwrap_err();
        assert!(err.to_string().contains("resolution"), "{err}");
        let flat = Aabb::new(Vec3::ZERO, Vec3::new(1.0, 0.0, 1.0));
        let err = DensityGrid::sample(&field, flat, 8, 10).unwrap_err();
        assert!(matches!(err, MeshError::BadBounds { .. }), "{err}");
        let nan = Pointwise(|p: Vec3| if p.x > 0.9 { f32::NAN } else { 0.0 });
        let err = DensityGrid::sample(&nan, Aabb::cube(1.0), 8, 10).unwrap_err();
        assert!(
            matches!(err, MeshError::NonFinite { count: 64, .. }),
            "{err}"
        );
        let short = |p: &[[f32; 3]]| vec![0.0; p.len() - 1];
        let err = DensityGrid::sample(&short, Aabb::cube(1.0), 8, 10).unwrap_err();
        assert!(
            err.to_string().contains("returned 9 values for 10 points"),
            "{err}"
        );
    }
}
