//! Texture bake: the albedo field sampled at the surface point behind every texel of a UV
//! atlas ([`unwrap_uvs`]), then dilated so that no texel is left empty.
//!
//! A texel whose centre lies in a triangle of the atlas takes the albedo at the matching
//! surface point. Every other texel takes the colour of the nearest baked texel (breadth-first
//! from all baked texels at once), so bilinear reads at a chart's border, and the mip levels
//! an engine builds, blend a chart only with its own colours and never with a background.

use std::collections::VecDeque;

use glam::{Vec2, Vec3};
use image::{Rgb, RgbImage};

use super::{AlbedoField, BakeConfig, MeshError, TriMesh, unwrap_uvs};

/// A baked base-colour texture and the mesh that maps it.
#[derive(Debug, Clone)]
pub struct BakedMesh {
    /// The mesh with its seams split: positions, smooth normals, atlas UVs.
    pub mesh: TriMesh,
    /// Albedo, sRGB-encoded as glTF's base-colour textures are.
    pub texture: RgbImage,
    /// Charts of the atlas.
    pub charts: usize,
    /// Fraction of the texture's texels that charts cover.
    pub utilization: f32,
}

/// The texels whose centres lie inside a UV-space triangle, with the barycentric weights of
/// the triangle's corners there. `uv` are texel coordinates.
pub fn texels_in_triangle(uv: [Vec2; 3], mut each: impl FnMut(u32, u32, Vec3)) {
    let (e1, e2) = (uv[1] - uv[0], uv[2] - uv[0]);
    let det = e1.perp_dot(e2);
    if det.abs() < 1e-12 || !det.is_finite() {
        return;
    }
    let lo = uv[0].min(uv[1]).min(uv[2]).floor().max(Vec2::ZERO);
    let hi = uv[0].max(uv[1]).max(uv[2]).ceil();
    for y in lo.y as u32..hi.y.max(0.0) as u32 {
        for x in lo.x as u32..hi.x.max(0.0) as u32 {
            let d = Vec2::new(x as f32 + 0.5, y as f32 + 0.5) - uv[0];
            let v = d.perp_dot(e2) / det;
            let w = e1.perp_dot(d) / det;
            let b = Vec3::new(1.0 - v - w, v, w);
            if b.min_element() >= -1e-6 {
                each(x, y, b);
            }
        }
    }
}

/// Fills every texel not in `filled` with the colour of the nearest filled one (8-connected
/// breadth-first search from all filled texels at once). Leaves an image with nothing filled
/// as it is.
pub(crate) fn dilate(texture: &mut RgbImage, filled: &mut [bool]) {
    let (w, h) = texture.dimensions();
    let mut queue: VecDeque<(u32, u32)> = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .filter(|&(x, y)| filled[(y * w + x) as usize])
        .collect();
    while let Some((x, y)) = queue.pop_front() {
        let color = *texture.get_pixel(x, y);
        for (dx, dy) in [
            (-1, 0),
            (1, 0),
            (0, -1),
            (0, 1),
            (-1, -1),
            (1, -1),
            (-1, 1),
            (1, 1),
        ] {
            let (nx, ny) = (x as i64 + dx, y as i64 + dy);
            if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                continue;
            }
            let i = (ny as u32 * w + nx as u32) as usize;
            if !filled[i] {
                filled[i] = true;
                texture.put_pixel(nx as u32, ny as u32, color);
                queue.push_back((nx as u32, ny as u32));
            }
        }
    }
}

/// Unwraps `mesh` into an atlas and bakes `albedo` over its surface into a
/// `config.texture_size` texture, querying at most `chunk` points at a time. Normals are
/// computed if `mesh` has none.
pub fn bake_texture(
    mesh: &TriMesh,
    albedo: &(impl AlbedoField + ?Sized),
    config: &BakeConfig,
    chunk: usize,
) -> Result<BakedMesh, MeshError> {
    let mut with_normals;
    let mut mesh = mesh;
    if mesh.normals.len() != mesh.vertex_count() {
        with_normals = mesh.clone();
        with_normals.compute_smooth_normals();
        mesh = &with_normals;
    }
    let atlas = unwrap_uvs(mesh, config)?;
    let mut out = atlas.mesh;
    out.colors.clear();
    let size = config.texture_size;

    // The surface point behind every texel a triangle owns.
    let mut texels: Vec<(u32, u32)> = Vec::new();
    let mut points: Vec<[f32; 3]> = Vec::new();
    for (tri, corners) in out.indices.chunks_exact(3).zip(out.triangles()) {
        let uv = [0, 1, 2].map(|k| Vec2::from(out.uvs[tri[k] as usize]) * size as f32);
        texels_in_triangle(uv, |x, y, b| {
            texels.push((x.min(size - 1), y.min(size - 1)));
            points.push((corners[0] * b.x + corners[1] * b.y + corners[2] * b.z).to_array());
        });
    }

    let mut texture = RgbImage::new(size, size);
    let mut filled = vec![false; (size * size) as usize];
    let chunk = chunk.max(1);
    for (texels, points) in texels.chunks(chunk).zip(points.chunks(chunk)) {
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
            filled[(y * size + x) as usize] = true;
        }
    }
    dilate(&mut texture, &mut filled);
    Ok(BakedMesh {
        mesh: out,
        texture,
        charts: atlas.charts,
        utilization: atlas.utilization,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::Pointwise;

    #[test]
    fn a_triangle_owns_the_texels_whose_centres_it_covers() {
        let uv = [Vec2::ZERO, Vec2::new(4.0, 0.0), Vec2::new(0.0, 4.0)];
        let mut got = Vec::new();
        texels_in_triangle(uv, |x, y, b| {
            assert!((b.element_sum() - 1.0).abs() < 1e-5);
            got.push((x, y));
        });
        // Centres with x + y + 1 <= 4 (the diagonal's centres count as inside).
        let want: Vec<(u32, u32)> = (0..4)
            .flat_map(|y| (0..4).map(move |x| (x, y)))
            .filter(|&(x, y)| x + y < 4)
            .collect();
        assert_eq!(got, want);
        // A degenerate triangle owns nothing.
        texels_in_triangle([Vec2::ZERO, Vec2::ONE, Vec2::splat(2.0)], |_, _, _| {
            panic!("a line owns no texel")
        });
    }

    #[test]
    fn dilation_fills_from_the_nearest_texel() {
        let mut image = RgbImage::new(5, 1);
        image.put_pixel(0, 0, Rgb([255, 0, 0]));
        image.put_pixel(4, 0, Rgb([0, 0, 255]));
        let mut filled = vec![true, false, false, false, true];
        dilate(&mut image, &mut filled);
        assert!(filled.iter().all(|&f| f));
        assert_eq!(image.get_pixel(1, 0), &Rgb([255, 0, 0]));
        assert_eq!(image.get_pixel(3, 0), &Rgb([0, 0, 255]));
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
        let config = BakeConfig {
            texture_size: 64,
            ..Default::default()
        };
        let baked = bake_texture(&mesh, &albedo, &config, 7).unwrap();
        // Sample the texture at each corner's UV: the colour is the corner's position.
        for (uv, p) in baked.mesh.uvs.iter().zip(&baked.mesh.positions) {
            let (x, y) = ((uv[0] * 64.0).min(63.0), (uv[1] * 64.0).min(63.0));
            let px = baked.texture.get_pixel(x as u32, y as u32);
            let err = (px[0] as f32 / 255.0 - p[0]).abs() + (px[1] as f32 / 255.0 - p[1]).abs();
            assert!(err < 0.1, "uv {uv:?} pos {p:?} texel {px:?}");
        }
    }
}
