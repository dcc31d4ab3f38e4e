//! Gaussians as plain host data: what the Bevy preview draws, what `.ply` export writes, and a
//! density field (sum of opacity-weighted Gaussians, DreamGaussian's `extract_fields`) that
//! mesh extraction samples on a grid.

use burn::tensor::{Tensor, backend::Backend};
use glam::{Mat3, Quat, Vec3};

use super::{Gaussians, sh};
use crate::mesh::{Aabb, AlbedoField, DensityField};

/// Gaussians on the host, activated: linear scales, unit quaternions, opacity in [0, 1],
/// degree-0 colour in RGB.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SplatCloud {
    /// Centres.
    pub positions: Vec<[f32; 3]>,
    /// Standard deviations along the local axes.
    pub scales: Vec<[f32; 3]>,
    /// Unit quaternions `(w, x, y, z)`.
    pub rotations: Vec<[f32; 4]>,
    /// Opacity.
    pub opacities: Vec<f32>,
    /// View-independent colour (degree-0 spherical harmonics + 0.5, clamped to [0, 1]).
    pub colors: Vec<[f32; 3]>,
    /// Raw spherical-harmonics coefficients: degree 0, then higher degrees, per channel
    /// (`[N][(degree + 1)^2 * 3]`, coefficient-major as 3DGS stores `f_dc`/`f_rest`).
    pub sh: Vec<Vec<f32>>,
}

fn rows<B: Backend, const D: usize>(t: &Tensor<B, D>, width: usize) -> Vec<Vec<f32>> {
    let data: Vec<f32> = t
        .clone()
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap_or_default();
    data.chunks(width.max(1)).map(<[f32]>::to_vec).collect()
}

impl<B: Backend> Gaussians<B> {
    /// Copies the Gaussians to the host.
    pub fn to_cloud(&self) -> SplatCloud {
        let means = rows(&self.means, 3);
        let scales = rows(&self.scales(), 3);
        let rotations = rows(&self.rotations, 4);
        let opacities = rows(&self.opacities(), 1);
        let dc = rows(&self.sh_dc, 3);
        let rest = self.sh_rest.as_ref().map(|r| rows(r, r.dims()[1] * 3));
        let n = means.len();
        let mut cloud = SplatCloud::default();
        for i in 0..n {
            cloud
                .positions
                .push([means[i][0], means[i][1], means[i][2]]);
            cloud
                .scales
                .push([scales[i][0], scales[i][1], scales[i][2]]);
            let q = &rotations[i];
            let norm = q.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
            cloud
                .rotations
                .push([q[0] / norm, q[1] / norm, q[2] / norm, q[3] / norm]);
            cloud.opacities.push(opacities[i][0]);
            cloud.colors.push(std::array::from_fn(|c| {
                (dc[i][c] * sh::C0 + 0.5).clamp(0.0, 1.0)
            }));
            let mut coeffs = dc[i].clone();
            if let Some(rest) = &rest {
                coeffs.extend_from_slice(&rest[i]);
            }
            cloud.sh.push(coeffs);
        }
        cloud
    }
}

impl SplatCloud {
    /// Number of Gaussians.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// No Gaussians.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Covariance `R S S^T R^T` of Gaussian `i`, as its upper triangle
    /// `[xx, xy, xz, yy, yz, zz]` (what a splat shader needs).
    pub fn covariance(&self, i: usize) -> [f32; 6] {
        let [w, x, y, z] = self.rotations[i];
        let r = Mat3::from_quat(Quat::from_xyzw(x, y, z, w));
        let var = Vec3::from(self.scales[i]).map(|s| s * s);
        let c = r * Mat3::from_diagonal(var) * r.transpose();
        [
            c.x_axis.x, c.y_axis.x, c.z_axis.x, c.y_axis.y, c.z_axis.y, c.z_axis.z,
        ]
    }

    /// The Gaussians for which `keep(i)` holds, in order.
    pub fn filtered(&self, keep: impl Fn(usize) -> bool) -> SplatCloud {
        let mut out = SplatCloud::default();
        for i in (0..self.len()).filter(|&i| keep(i)) {
            out.positions.push(self.positions[i]);
            out.scales.push(self.scales[i]);
            out.rotations.push(self.rotations[i]);
            out.opacities.push(self.opacities[i]);
            out.colors.push(self.colors[i]);
            if let Some(sh) = self.sh.get(i) {
                out.sh.push(sh.clone());
            }
        }
        out
    }

    /// The cloud scaled uniformly by `scale` about the origin, then moved by `translation`
    /// (centres and standard deviations; rotations and colours are unchanged).
    pub fn transformed(&self, scale: f32, translation: Vec3) -> SplatCloud {
        let mut out = self.clone();
        for p in &mut out.positions {
            *p = (Vec3::from(*p) * scale + translation).to_array();
        }
        for s in &mut out.scales {
            *s = s.map(|v| v * scale.abs());
        }
        out
    }

    /// Inverse covariance of Gaussian `i`.
    fn precision(&self, i: usize) -> Mat3 {
        let [w, x, y, z] = self.rotations[i];
        let r = Mat3::from_quat(Quat::from_xyzw(x, y, z, w));
        let inv = Vec3::from(self.scales[i]).map(|s| 1.0 / (s * s).max(1e-12));
        r * Mat3::from_diagonal(inv) * r.transpose()
    }

    /// The box to mesh the cloud in: the centres grown by the widest 3-sigma reach (at most
    /// 0.5), or the unit cube for an empty cloud.
    pub fn mesh_bounds(&self) -> Aabb {
        let margin = self
            .scales
            .iter()
            .map(|s| 3.0 * s.iter().fold(0.0f32, |a, &b| a.max(b)))
            .fold(0.0f32, f32::max)
            .min(0.5);
        Aabb::from_points(&self.positions)
            .map(|b| b.grown(Vec3::splat(margin + 1e-3)))
            .unwrap_or_else(|| Aabb::cube(1.0))
    }

    /// The fields mesh extraction samples, with a uniform grid over the Gaussians' 3-sigma
    /// boxes so each point only visits the Gaussians near it.
    pub fn fields(&self) -> SplatFields<'_> {
        SplatFields::new(self)
    }
}

/// [`SplatCloud`] as density (`sum o_i G_i(x)`) and albedo (the same weights' mean colour)
/// fields.
#[derive(Debug)]
pub struct SplatFields<'a> {
    cloud: &'a SplatCloud,
    precisions: Vec<Mat3>,
    min: Vec3,
    cell: f32,
    dims: [usize; 3],
    cells: Vec<Vec<u32>>,
}

impl<'a> SplatFields<'a> {
    fn new(cloud: &'a SplatCloud) -> Self {
        let precisions: Vec<Mat3> = (0..cloud.len()).map(|i| cloud.precision(i)).collect();
        let extent = |i: usize| 3.0 * cloud.scales[i].iter().fold(0.0f32, |a, &b| a.max(b));
        let (mut min, mut max) = (Vec3::splat(f32::MAX), Vec3::splat(f32::MIN));
        for i in 0..cloud.len() {
            let p = Vec3::from(cloud.positions[i]);
            min = min.min(p - extent(i));
            max = max.max(p + extent(i));
        }
        if cloud.is_empty() {
            (min, max) = (Vec3::ZERO, Vec3::ONE);
        }
        // About 32 cells along the longest side, at most 64^3 cells.
        let cell = ((max - min).max_element() / 32.0).max(1e-4);
        let dims = ((max - min) / cell)
            .ceil()
            .as_uvec3()
            .max(glam::UVec3::ONE)
            .min(glam::UVec3::splat(64));
        let dims = [dims.x as usize, dims.y as usize, dims.z as usize];
        let cell = ((max - min) / Vec3::new(dims[0] as f32, dims[1] as f32, dims[2] as f32))
            .max_element()
            .max(1e-4);
        let mut cells = vec![Vec::new(); dims[0] * dims[1] * dims[2]];
        for i in 0..cloud.len() {
            let p = Vec3::from(cloud.positions[i]);
            let lo = ((p - extent(i) - min) / cell)
                .floor()
                .max(Vec3::ZERO)
                .as_uvec3();
            let hi = ((p + extent(i) - min) / cell).floor().as_uvec3();
            for z in lo.z..=hi.z.min(dims[2] as u32 - 1) {
                for y in lo.y..=hi.y.min(dims[1] as u32 - 1) {
                    for x in lo.x..=hi.x.min(dims[0] as u32 - 1) {
                        cells[(z as usize * dims[1] + y as usize) * dims[0] + x as usize]
                            .push(i as u32);
                    }
                }
            }
        }
        Self {
            cloud,
            precisions,
            min,
            cell,
            dims,
            cells,
        }
    }

    fn neighbours(&self, p: Vec3) -> &[u32] {
        let c = ((p - self.min) / self.cell).floor();
        if c.min_element() < 0.0 {
            return &[];
        }
        let c = c.as_uvec3();
        let [dx, dy, dz] = self.dims;
        if c.x as usize >= dx || c.y as usize >= dy || c.z as usize >= dz {
            return &[];
        }
        &self.cells[(c.z as usize * dy + c.y as usize) * dx + c.x as usize]
    }

    /// Opacity-weighted Gaussian values and colour at one point.
    fn at(&self, p: Vec3) -> (f32, Vec3) {
        let (mut density, mut color) = (0.0, Vec3::ZERO);
        for &i in self.neighbours(p) {
            let i = i as usize;
            let d = p - Vec3::from(self.cloud.positions[i]);
            let power = -0.5 * d.dot(self.precisions[i] * d);
            if power < -4.5 {
                continue; // beyond 3 sigma
            }
            let w = self.cloud.opacities[i] * power.exp();
            density += w;
            color += w * Vec3::from(self.cloud.colors[i]);
        }
        (density, color)
    }
}

impl DensityField for SplatFields<'_> {
    fn density(&self, points: &[[f32; 3]]) -> Vec<f32> {
        points.iter().map(|p| self.at(Vec3::from(*p)).0).collect()
    }
}

impl AlbedoField for SplatFields<'_> {
    fn albedo(&self, points: &[[f32; 3]]) -> Vec<[f32; 3]> {
        points
            .iter()
            .map(|p| {
                let (w, c) = self.at(Vec3::from(*p));
                if w > 1e-6 {
                    (c / w).to_array()
                } else {
                    [0.5; 3]
                }
            })
            .collect()
    }
}
