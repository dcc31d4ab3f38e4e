//! The live preview: the engine's coarse mesh of the field (or, for Gaussian scenes, the splats
//! of [`crate::splat_preview`]; in the texture stage the textured mesh), drawn as a child of
//! the generating entity, replaced in place every few steps.

use bevy::asset::RenderAssetUsages;
use bevy::mesh::{Indices, PrimitiveTopology};
use bevy::prelude::*;
use bevy::render::render_resource::{Extent3d, TextureDimension, TextureFormat};
use rewardsds_engine::mesh::TriMesh;

/// Marks the preview child of a generating entity (absent before the first preview and after
/// the result replaces it).
#[derive(Component, Reflect, Debug, Clone, Copy)]
#[reflect(Component, Debug, Clone)]
pub struct GenerationPreview {
    /// Steps done when the snapshot was taken.
    pub step: usize,
}

/// A Bevy mesh of an engine mesh: positions, normals and vertex colours (linear RGB, as both
/// sides store them), triangle list.
pub fn preview_to_bevy_mesh(mesh: &TriMesh) -> Mesh {
    // Main world only: the preview is rebuilt often and never read back on the CPU.
    let mut out = Mesh::new(
        PrimitiveTopology::TriangleList,
        RenderAssetUsages::default(),
    );
    out.insert_attribute(Mesh::ATTRIBUTE_POSITION, mesh.positions.clone());
    if mesh.normals.len() == mesh.positions.len() {
        out.insert_attribute(Mesh::ATTRIBUTE_NORMAL, mesh.normals.clone());
    }
    if mesh.colors.len() == mesh.positions.len() {
        let colors: Vec<[f32; 4]> = mesh
            .colors
            .iter()
            .map(|c| [c[0], c[1], c[2], 1.0])
            .collect();
        out.insert_attribute(Mesh::ATTRIBUTE_COLOR, colors);
    }
    out.insert_indices(Indices::U32(mesh.indices.clone()));
    if mesh.normals.len() != mesh.positions.len() {
        out.compute_smooth_normals();
    }
    out
}

/// The texture stage's preview: the textured mesh (positions, normals, UVs) and a material
/// of its texture, an sRGB image as glTF's base colour is.
pub fn textured_preview(
    mesh: &TriMesh,
    texture: &rewardsds_engine::image::RgbImage,
) -> (Mesh, Image, StandardMaterial) {
    let mut out = preview_to_bevy_mesh(mesh);
    if mesh.uvs.len() == mesh.positions.len() {
        out.insert_attribute(Mesh::ATTRIBUTE_UV_0, mesh.uvs.clone());
    }
    let rgba: Vec<u8> = texture
        .pixels()
        .flat_map(|p| [p[0], p[1], p[2], 255])
        .collect();
    let image = Image::new(
        Extent3d {
            width: texture.width(),
            height: texture.height(),
            depth_or_array_layers: 1,
        },
        TextureDimension::D2,
        rgba,
        TextureFormat::Rgba8UnormSrgb,
        RenderAssetUsages::default(),
    );
    let material = StandardMaterial {
        perceptual_roughness: 0.8,
        ..preview_material()
    };
    (out, image, material)
}

/// The material previews share: white (the vertex colours show), both sides visible, since
/// an early field can be open.
pub(crate) fn preview_material() -> StandardMaterial {
    StandardMaterial {
        base_color: Color::WHITE,
        perceptual_roughness: 0.8,
        double_sided: true,
        cull_mode: None,
        ..default()
    }
}
