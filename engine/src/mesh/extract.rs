//! Isosurface extraction: naive surface nets (`fast-surface-nets`) on the sampled grid.
//!
//! Surface nets gives an indexed mesh with one vertex per surface cell, shared by all its
//! quads, so the result needs no welding. The grid is padded with "outside" samples on every
//! side: an object that touches the sampling box is capped there, and the surface is always
//! closed.

use fast_surface_nets::ndshape::RuntimeShape;
use fast_surface_nets::{SurfaceNetsBuffer, surface_nets};
use glam::Vec3;

use super::{DensityGrid, MeshError, TriMesh};

/// The surface where `grid` crosses `iso_level` (inside: density > `iso_level`), in world
/// space, wound outward, without normals or colours.
pub fn extract_surface(grid: &DensityGrid, iso_level: f32) -> Result<TriMesh, MeshError> {
    if !iso_level.is_finite() {
        return Err(MeshError::BadConfig {
            name: "iso_level",
            value: iso_level.to_string(),
            why: "must be finite",
        });
    }
    grid.check_not_empty(iso_level)?;

    // The crate reads negative as inside and skips cells on the grid's last plane, so pad one
    // sample before and two after each axis.
    let [nx, ny, nz] = grid.dims.map(|d| d as usize);
    let padded = grid.dims.map(|d| d + 3);
    let [px, py, pz] = padded.map(|d| d as usize);
    // Far outside: an edge from an inside sample to the padding crosses the surface right at
    // the inside sample, so caps sit on the sampling box and not a voxel beyond it.
    let largest = grid
        .values
        .iter()
        .map(|v| (iso_level - v).abs())
        .fold(0.0f32, f32::max);
    let outside = largest * 1.0e3 + 1.0;
    let mut sdf = vec![outside; px * py * pz];
    for z in 0..nz {
        for y in 0..ny {
            let src = nx * (y + ny * z);
            let dst = 1 + px * ((y + 1) + py * (z + 1));
            for (d, v) in sdf[dst..dst + nx]
                .iter_mut()
                .zip(&grid.values[src..src + nx])
            {
                *d = iso_level - v;
            }
        }
    }

    let mut buffer = SurfaceNetsBuffer::default();
    let shape = RuntimeShape::<u32, 3>::new(padded);
    surface_nets(&sdf, &shape, [0; 3], padded.map(|d| d - 1), &mut buffer);

    let origin = grid.origin - Vec3::splat(grid.voxel);
    let positions = buffer
        .positions
        .iter()
        .map(|p| (origin + Vec3::from(*p) * grid.voxel).to_array())
        .collect();
    // The crate winds triangles counter-clockwise seen from the positive (outside) side:
    // already glTF's front faces.
    Ok(TriMesh {
        positions,
        indices: buffer.indices,
        ..Default::default()
    })
}
