//! Surface colour from the field's albedo.
//!
//! The baseline is one colour per vertex (glTF `COLOR_0`). [`ColorMode::Texture`] bakes a
//! base-colour texture into a UV atlas instead ([`bake_texture`](super::bake_texture)).

use serde::{Deserialize, Serialize};

use super::{AlbedoField, MeshError, TriMesh};

/// How the exported mesh is coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ColorMode {
    /// One albedo sample per vertex, interpolated across triangles.
    #[default]
    VertexColors,
    /// A base-colour texture baked into a UV atlas
    /// ([`MeshConfig::bake`](super::MeshConfig::bake)); the vertex colours stay on the LODs.
    Texture,
    /// No colour: the material's base colour alone.
    None,
}

/// Samples `albedo` at every vertex (at most `chunk` points per query) and stores it in
/// `mesh.colors` as linear RGB, the colour space glTF's `COLOR_0` is in.
pub fn paint_vertex_colors(
    mesh: &mut TriMesh,
    albedo: &(impl AlbedoField + ?Sized),
    chunk: usize,
) -> Result<(), MeshError> {
    let colors = query_albedo(albedo, &mesh.positions, chunk)?;
    mesh.colors = colors
        .into_iter()
        .map(|c| c.map(|v| srgb_to_linear(v.clamp(0.0, 1.0))))
        .collect();
    Ok(())
}

/// `albedo` at `points` (sRGB, as the field gives it), at most `chunk` points per query;
/// a wrong count or a value that is not finite is an error.
pub(crate) fn query_albedo(
    albedo: &(impl AlbedoField + ?Sized),
    points: &[[f32; 3]],
    chunk: usize,
) -> Result<Vec<[f32; 3]>, MeshError> {
    let mut colors = Vec::with_capacity(points.len());
    for part in points.chunks(chunk.max(1)) {
        let got = albedo.albedo(part);
        if got.len() != part.len() {
            return Err(MeshError::FieldLength {
                field: "albedo",
                expected: part.len(),
                got: got.len(),
            });
        }
        colors.extend(got);
    }
    let mut bad = colors
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.iter().all(|v| v.is_finite()));
    if let Some((first, _)) = bad.next() {
        return Err(MeshError::NonFinite {
            field: "albedo",
            count: 1 + bad.count(),
            first: points[first],
        });
    }
    Ok(colors)
}

/// The sRGB transfer function's inverse: the renderer's (and the prior's) colours are
/// sRGB-encoded, glTF vertex colours are linear.
pub fn srgb_to_linear(v: f32) -> f32 {
    if v <= 0.04045 {
        v / 12.92
    } else {
        ((v + 0.055) / 1.055).powf(2.4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::Pointwise;
    use glam::Vec3;

    #[test]
    fn colours_are_linearised_and_clamped() {
        let mut mesh = TriMesh {
            positions: vec![[0.0; 3], [1.0, 0.0, 0.0]],
            ..Default::default()
        };
        let field = Pointwise(|p: Vec3| [p.x, 0.5, 2.0]);
        paint_vertex_colors(&mut mesh, &field, 1).unwrap();
        assert_eq!(mesh.colors[0][0], 0.0);
        assert_eq!(mesh.colors[1][0], 1.0);
        assert!((mesh.colors[0][1] - 0.214).abs() < 1e-3);
        assert_eq!(mesh.colors[0][2], 1.0);

        let nan = Pointwise(|p: Vec3| [p.x / p.x, 0.0, 0.0]);
        let err = paint_vertex_colors(&mut mesh, &nan, 8).unwrap_err();
        assert!(
            err.to_string().contains("albedo field is not finite"),
            "{err}"
        );
    }
}
