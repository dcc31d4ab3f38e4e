//! The live preview: the engine's coarse mesh of the field (or, for Gaussian scenes, the splats
//! of [`crate::splat_preview`]), drawn as a child of the generating entity, replaced in place
//! every few steps.

use bevy::asset::RenderAssetUsages;
use bevy::mesh::{Indices, PrimitiveTopology};
use bevy::prelude::*;
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
