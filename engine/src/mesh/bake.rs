//! Texture bake with the simplest UV layout that works on any mesh: one chart per triangle.
//!
//! Triangles are paired into square cells of a grid over the texture; in each cell the first
//! triangle fills the lower-left half and the second the upper-right half, each inset so that
//! bilinear filtering never reads a texel of another triangle: 1 texel from the cell's
//! sides and 2 (in x + y) from the diagonal. Every texel of a cell is then sampled from the albedo field
//! at the surface point of its half's triangle (texels outside the triangle take the nearest
//! point of it), so the border texels carry the triangle's own colour. No unwrapping library
//! is involved, at the price of seams-free but wasteful packing (about 40% of the texels are
//! seen) and split vertices: every triangle gets its own three. Mipmaps would bleed across
//! charts, so the exported sampler uses none.

use glam::{Vec2, Vec3};
use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use super::{AlbedoField, MeshError, TriMesh};

/// Texels between a chart and its cell's sides.
const SIDE_INSET: f32 = 1.0;
/// Texels (measured along x + y) between a chart's hypotenuse and the cell's diagonal.
const DIAGONAL_INSET: f32 = 2.0;
/// Smallest cell (texels) that leaves a chart after the insets.
const MIN_CELL: u32 = 8;

/// A baked base-colour texture and the mesh that maps it.
#[derive(Debug, Clone)]
pub struct BakedMesh {
    /// The mesh with one vertex per triangle corner: positions, smooth normals, UVs.
    pub mesh: TriMesh,
    /// Albedo, sRGB-encoded as glTF's base-colour textures are.
    pub texture: RgbImage,
}

/// Texture size in texels (square).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BakeConfig {
    /// Width and height of the texture. A 20k-triangle mesh gets 10-texel cells at 1024.
    pub texture_size: u32,
}

impl Default for BakeConfig {
    fn default() -> Self {
        Self { texture_size: 1024 }
    }
}

/// The cell size (texels) and cells per row for `triangles` in a `size`-texel texture.
fn layout(triangles: usize, size: u32) -> Result<(u32, u32), MeshError> {
    let cells = triangles.div_ceil(2).max(1);
    let per_row = (cells as f64).sqrt().ceil() as u32;
    let cell = size / per_row;
    if cell < MIN_CELL {
        let needed = per_row * MIN_CELL;
        return Err(MeshError::BadConfig {
            name: "texture_size",
            value: size.to_string(),
            why: if needed <= 16_384 {
                "too small for this many triangles: raise it or lower the triangle budget"
            } else {
                "no texture can hold this many triangles: lower the triangle budget"
            },
        });
    }
    Ok((cell, per_row))
}

/// The UV corners (texels, in the cell) of the lower or upper chart of a `cell`-texel cell.
fn chart_corners(cell: f32, upper: bool) -> [Vec2; 3] {
    let near = SIDE_INSET;
    let far = cell - SIDE_INSET - DIAGONAL_INSET;
    let lower = [
        Vec2::new(near, near),
        Vec2::new(far, near),
        Vec2::new(near, far),
    ];
    if upper {
        // Point-mirrored through the cell's centre.
        lower.map(|p| Vec2::splat(cell) - p)
    } else {
        lower
    }
}

/// Barycentric coordinates of `p` in triangle `t`, clamped to the triangle (the nearest point
/// for points outside, up to the renormalisation).
fn clamped_barycentric(p: Vec2, t: [Vec2; 3]) -> Vec3 {
    let (e1, e2, d) = (t[1] - t[0], t[2] - t[0], p - t[0]);
    let det = e1.perp_dot(e2);
    let v = d.perp_dot(e2) / det;
    let w = e1.perp_dot(d) / det;
    let b = Vec3::new(1.0 - v - w, v, w).max(Vec3::ZERO);
    b / b.element_sum()
}

/// Bakes `albedo` over `mesh`'s surface into a texture (one chart per triangle, see the module
/// docs) and returns the split, UV-mapped mesh with it. Normals are computed if `mesh` has
/// none.
pub fn bake_texture(
    mesh: &TriMesh,
    albedo: &(impl AlbedoField + ?Sized),
    config: &BakeConfig,
    chunk: usize,
) -> Result<BakedMesh, MeshError> {
    if mesh.is_empty() {
        return Err(MeshError::NoTriangles {
            stage: "texture bake",
        });
    }
    let size = config.texture_size;
    let (cell, per_row) = layout(mesh.triangle_count(), size)?;
    let mut normals = mesh.normals.clone();
    if normals.len() != mesh.vertex_count() {
        let mut with_normals = mesh.clone();
        with_normals.compute_smooth_normals();
        normals = with_normals.normals;
    }

    // Split vertices, UVs, and the surface point behind every texel of every used cell.
    let mut out = TriMesh::default();
    let mut texels: Vec<(u32, u32)> = Vec::new();
    let mut points: Vec<[f32; 3]> = Vec::new();
    let cell_f = cell as f32;
    for (t, (tri, corners)) in mesh
        .indices
        .chunks_exact(3)
        .zip(mesh.triangles())
        .enumerate()
    {
        let upper = t % 2 == 1;
        let (cx, cy) = ((t / 2) as u32 % per_row, (t / 2) as u32 / per_row);
        let origin = Vec2::new((cx * cell) as f32, (cy * cell) as f32);
        let uv = chart_corners(cell_f, upper);
        for (k, &i) in tri.iter().enumerate() {
            out.indices.push(out.positions.len() as u32);
            out.positions.push(mesh.positions[i as usize]);
            out.normals.push(normals[i as usize]);
            out.uvs.push(((origin + uv[k]) / size as f32).to_array());
        }
        for y in 0..cell {
            for x in 0..cell {
                let centre = Vec2::new(x as f32 + 0.5, y as f32 + 0.5);
                if (centre.x + centre.y > cell_f) != upper {
                    continue;
                }
                let b = clamped_barycentric(centre, uv);
                let p = corners[0] * b.x + corners[1] * b.y + corners[2] * b.z;
                texels.push((cx * cell + x, cy * cell + y));
                points.push(p.to_array());
            }
        }
    }

    let mut texture = RgbImage::new(size, size);
    for (texels, points) in texels.chunks(chunk.max(1)).zip(points.chunks(chunk.max(1))) {
        let colors = albedo.albedo(points);
        if colors.len() != points.len() {
            return Err(MeshError::FieldLength {
                field: "albedo",
                expected: points.len(),
                got: colors.len(),
            });
        }
        for (&(x, y), (c, p)) in texels.iter().zip(colors.iter().zip(points)) {
            if !c.iter().all(|v| v.is_finite()) {
                return Err(MeshError::NonFinite {
                    field: "albedo",
                    count: 1,
                    first: *p,
                });
            }
            let rgb = c.map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8);
            texture.put_pixel(x, y, Rgb(rgb));
        }
    }
    Ok(BakedMesh { mesh: out, texture })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::Pointwise;

    #[test]
    fn charts_stay_inside_their_half_cell() {
        for upper in [false, true] {
            let c = chart_corners(10.0, upper);
            for p in c {
                assert!(p.min_element() >= 1.0 && p.max_element() <= 9.0, "{p}");
                // Bilinear reads reach less than 2 in x + y: the chart stays on its side.
                let side = p.x + p.y - 10.0;
                assert!(if upper {
                    side >= 2.0 - 1e-5
                } else {
                    side <= -2.0 + 1e-5
                });
            }
        }
        let b = clamped_barycentric(Vec2::new(-5.0, 0.5), chart_corners(10.0, false));
        assert!(b.min_element() >= 0.0 && (b.element_sum() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn texels_hold_the_albedo_of_their_surface_point() {
        // Two triangles of a unit square in the z = 0 plane, coloured by position.
        let mesh = TriMesh {
            positions: vec![
                [0.0, 0.0, 0.0],
                [1.0, 0.0, 0.0],
                [0.0, 1.0, 0.0],
                [1.0, 1.0, 0.0],
            ],
            indices: vec![0, 1, 2, 1, 3, 2],
            ..Default::default()
        };
        let albedo = Pointwise(|p: Vec3| [p.x, p.y, 0.5]);
        let baked = bake_texture(&mesh, &albedo, &BakeConfig { texture_size: 64 }, 7).unwrap();
        assert_eq!(baked.mesh.vertex_count(), 6);
        // Sample the texture at each corner's UV: the colour is the corner's position.
        for (uv, p) in baked.mesh.uvs.iter().zip(&baked.mesh.positions) {
            let px = baked
                .texture
                .get_pixel((uv[0] * 64.0) as u32, (uv[1] * 64.0) as u32);
            let err = (px[0] as f32 / 255.0 - p[0]).abs() + (px[1] as f32 / 255.0 - p[1]).abs();
            assert!(err < 0.1, "uv {uv:?} pos {p:?} texel {px:?}");
        }
        let err = bake_texture(&mesh, &albedo, &BakeConfig { texture_size: 4 }, 7).unwrap_err();
        assert!(err.to_string().contains("texture_size"), "{err}");
    }
}
