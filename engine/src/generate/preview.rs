//! Live previews of a running generation, placed and scaled as the final asset will be (y up,
//! standing on y = 0, longest side `asset_size`): a coarse mesh of the field, or for Gaussian
//! scenes the Gaussians themselves, for hosts that draw splats; in the texture stage the
//! textured mesh.

use glam::Vec3;

use super::generator::{GenerateError, Generator};
use crate::backend::EngineAutodiffBackend;
use crate::export::place_on_ground;
use crate::mesh::{Aabb, ColorMode, MeshConfig, MeshError, SimplifyConfig, TriMesh};
use crate::scene::gaussians::SplatCloud;

/// Gaussians fainter than this are not sent: they cannot change a pixel (3DGS's 1/255).
const MIN_VISIBLE_OPACITY: f32 = 1.0 / 255.0;
/// Gaussians at least this opaque decide where the asset stands; fainter haze around them is
/// mostly below the surface extraction's iso-level.
const MIN_SOLID_OPACITY: f32 = 0.25;

/// A snapshot of the result so far.
#[derive(Debug, Clone)]
pub struct Preview {
    /// Steps done when it was taken.
    pub step: usize,
    /// What to draw.
    pub shape: PreviewShape,
}

/// The ways a preview is drawn.
#[derive(Debug, Clone)]
pub enum PreviewShape {
    /// Positions in metres, normals, linear vertex colours.
    Mesh(TriMesh),
    /// In the texture stage: the textured mesh, placed as the asset will be, and its
    /// texture (sRGB).
    TexturedMesh {
        /// The mesh with its UVs.
        mesh: TriMesh,
        /// The texture as it is now.
        texture: image::RgbImage,
    },
    /// Gaussians in metres; colours as rendered (sRGB-encoded, like the training images).
    Splats(SplatCloud),
}

impl Preview {
    /// The field's coarse mesh, or `None` while nothing is above the iso-level; in the
    /// texture stage the textured mesh itself.
    pub fn mesh<B: EngineAutodiffBackend>(
        generator: &Generator<B>,
        resolution: u32,
    ) -> Result<Option<Self>, GenerateError> {
        if let Some(stage) = generator.textured() {
            let (mesh, _) = place_on_ground(stage.mesh(), Some(generator.config().asset_size))?;
            return Ok(Some(Self {
                step: generator.steps_done(),
                shape: PreviewShape::TexturedMesh {
                    mesh,
                    texture: stage.texture_image(),
                },
            }));
        }
        Ok(preview_mesh(generator, resolution)?.map(|mesh| Self {
            step: generator.steps_done(),
            shape: PreviewShape::Mesh(mesh),
        }))
    }

    /// The visible Gaussians of a Gaussian scene (`None` for a NeRF, or while none is visible).
    pub fn splats<B: EngineAutodiffBackend>(generator: &Generator<B>) -> Option<Self> {
        let cloud = generator.gaussians()?.to_cloud();
        let placed = place_splats_on_ground(&cloud, generator.config().asset_size)?;
        Some(Self {
            step: generator.steps_done(),
            shape: PreviewShape::Splats(placed),
        })
    }
}

/// The field's surface on a coarse grid, vertex-coloured, placed like the exported asset;
/// `None` while nothing is above the iso-level.
pub fn preview_mesh<B: EngineAutodiffBackend>(
    generator: &Generator<B>,
    resolution: u32,
) -> Result<Option<TriMesh>, GenerateError> {
    let config = generator.config();
    let mesh_config = MeshConfig {
        resolution: resolution.max(8),
        coarse_resolution: (resolution / 2).max(8),
        color: ColorMode::VertexColors,
        simplify: SimplifyConfig {
            target_triangles: 8_000,
            ..SimplifyConfig::default()
        },
        ..config.mesh.clone()
    };
    let extracted = match generator.surface(&mesh_config) {
        Ok(extracted) => extracted,
        Err(MeshError::EmptyField { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let (placed, _) = place_on_ground(&extracted.mesh, Some(config.asset_size))?;
    Ok(Some(placed))
}

/// The visible Gaussians of `cloud`, moved and scaled like [`place_on_ground`] moves a mesh:
/// the box of the solid ones' centres gets its longest side `target_size`, x and z centred,
/// its bottom on y = 0. `None` when no Gaussian is visible.
pub fn place_splats_on_ground(cloud: &SplatCloud, target_size: f32) -> Option<SplatCloud> {
    let visible = cloud.filtered(|i| cloud.opacities[i] >= MIN_VISIBLE_OPACITY);
    if visible.is_empty() {
        return None;
    }
    let solid: Vec<[f32; 3]> = (0..visible.len())
        .filter(|&i| visible.opacities[i] >= MIN_SOLID_OPACITY)
        .map(|i| visible.positions[i])
        .collect();
    let bounds = Aabb::from_points(if solid.is_empty() {
        &visible.positions
    } else {
        &solid
    })?;
    let longest = bounds.size().max_element();
    let scale = if longest > 0.0 {
        target_size / longest
    } else {
        1.0
    };
    let anchor = Vec3::new(bounds.center().x, bounds.min.y, bounds.center().z);
    Some(visible.transformed(scale, -anchor * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cloud(points: &[([f32; 3], f32)]) -> SplatCloud {
        let n = points.len();
        SplatCloud {
            positions: points.iter().map(|p| p.0).collect(),
            scales: vec![[0.1, 0.2, 0.3]; n],
            rotations: vec![[1.0, 0.0, 0.0, 0.0]; n],
            opacities: points.iter().map(|p| p.1).collect(),
            colors: vec![[0.5; 3]; n],
            sh: vec![vec![0.0; 3]; n],
        }
    }

    #[test]
    fn splats_stand_on_the_ground_at_the_asset_size() {
        // Solid centres span x 1..3 (the longest side, 2), y -1..0, z 0..1; a faint one
        // outside does not move the box, an invisible one is dropped.
        let c = cloud(&[
            ([1.0, -1.0, 0.0], 0.9),
            ([3.0, 0.0, 1.0], 0.5),
            ([10.0, 10.0, 10.0], 0.1),
            ([0.0, 0.0, 0.0], 0.001),
        ]);
        let placed = place_splats_on_ground(&c, 4.0).unwrap();
        assert_eq!(placed.len(), 3);
        // scale 2: (x - 2) * 2, (y + 1) * 2, (z - 0.5) * 2
        assert_eq!(placed.positions[0], [-2.0, 0.0, -1.0]);
        assert_eq!(placed.positions[1], [2.0, 2.0, 1.0]);
        assert_eq!(placed.positions[2], [16.0, 22.0, 19.0]);
        assert_eq!(placed.scales[0], [0.2, 0.4, 0.6]);
        assert_eq!(placed.opacities, vec![0.9, 0.5, 0.1]);
    }

    #[test]
    fn faint_or_invisible_clouds() {
        // Only faint ones: their own box places them.
        let faint = cloud(&[([0.0, 1.0, 0.0], 0.1), ([0.0, 2.0, 0.0], 0.1)]);
        let placed = place_splats_on_ground(&faint, 1.0).unwrap();
        assert_eq!(placed.positions, vec![[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]);
        // Nothing visible: no preview.
        assert!(place_splats_on_ground(&cloud(&[([0.0; 3], 0.0)]), 1.0).is_none());
        assert!(place_splats_on_ground(&SplatCloud::default(), 1.0).is_none());
    }
}
