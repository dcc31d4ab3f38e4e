//! Pieces coloured like the backdrop. The guidance sees the scene only over its background
//! colour, so a solid blob of that colour is invisible in every render it judges and nothing
//! removes it; meshed, it is a pale lump beside the prop (the white blobs of Gaussian props).

use serde::{Deserialize, Serialize};

use super::color::query_albedo;
use super::{AlbedoField, MeshError, TriMesh, connected_components};

/// Which backdrop-coloured pieces [`remove_backdrop_pieces`] drops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackdropPieces {
    /// A piece whose mean albedo is within this of the backdrop on every channel (sRGB, 0-1)
    /// is backdrop-coloured; `0` turns the rule off. 0.1: the three white blobs of the
    /// Gaussian prop "a purple torus on top of an orange cone" (seed 0, 250 steps) are 0.075
    /// to 0.08 from its 0.92 backdrop, its purple and orange pieces 0.6 and more.
    pub color_distance: f32,
    /// Only pieces smaller than this fraction of the largest piece's area are dropped, so
    /// that a white object on a white backdrop stays (objects of one scene are of a size);
    /// the blobs above are 6-15% of the largest piece.
    pub max_fraction: f64,
    /// The backdrop; unset: the scene's own (`gaussians.background` for Gaussians; a NeRF's
    /// background is learnt, so the rule needs a colour here to act on one).
    pub color: Option<[f32; 3]>,
}

impl Default for BackdropPieces {
    fn default() -> Self {
        Self {
            color_distance: 0.1,
            max_fraction: 0.25,
            color: None,
        }
    }
}

impl BackdropPieces {
    /// Checks the values; the error names the setting.
    pub fn validate(&self) -> Result<(), MeshError> {
        let bad = |name, value: String, why| Err(MeshError::BadConfig { name, value, why });
        if !(0.0..=1.0).contains(&self.color_distance) {
            return bad(
                "backdrop_pieces.color_distance",
                self.color_distance.to_string(),
                "must be in [0, 1]",
            );
        }
        if !(0.0..=1.0).contains(&self.max_fraction) {
            return bad(
                "backdrop_pieces.max_fraction",
                self.max_fraction.to_string(),
                "must be in [0, 1]",
            );
        }
        if let Some(c) = self.color
            && !c.iter().all(|v| (0.0..=1.0).contains(v))
        {
            return bad(
                "backdrop_pieces.color",
                format!("{c:?}"),
                "must be three numbers in [0, 1]",
            );
        }
        Ok(())
    }
}

/// Drops every piece but the largest that is smaller than `max_fraction` of it and whose mean
/// albedo (over its vertices) lies within `color_distance` of `color`; with no colour or a
/// distance of 0 the mesh is returned as it is. Returns the mesh and the pieces dropped.
pub fn remove_backdrop_pieces(
    mesh: &TriMesh,
    albedo: &(impl AlbedoField + ?Sized),
    config: &BackdropPieces,
    chunk: usize,
) -> Result<(TriMesh, usize), MeshError> {
    config.validate()?;
    let Some(backdrop) = config.color.filter(|_| config.color_distance > 0.0) else {
        return Ok((mesh.clone(), 0));
    };
    let components = connected_components(mesh);
    let Some(&largest) = components.areas.first() else {
        return Ok((mesh.clone(), 0));
    };
    // Only the small pieces' vertices are queried: the field may be a network.
    let small = |c: u32| c > 0 && components.areas[c as usize] < config.max_fraction * largest;
    let mut piece_of_vertex = vec![u32::MAX; mesh.vertex_count()];
    for (t, tri) in mesh.indices.chunks_exact(3).enumerate() {
        let c = components.of_triangle[t];
        if small(c) {
            for &v in tri {
                piece_of_vertex[v as usize] = c;
            }
        }
    }
    let (vertices, points): (Vec<usize>, Vec<[f32; 3]>) = piece_of_vertex
        .iter()
        .enumerate()
        .filter(|(_, c)| **c != u32::MAX)
        .map(|(v, _)| (v, mesh.positions[v]))
        .unzip();
    if vertices.is_empty() {
        return Ok((mesh.clone(), 0));
    }
    let colors = query_albedo(albedo, &points, chunk)?;

    let mut sums = vec![([0.0f64; 3], 0usize); components.len()];
    for (&v, color) in vertices.iter().zip(&colors) {
        let (sum, count) = &mut sums[piece_of_vertex[v] as usize];
        for (s, c) in sum.iter_mut().zip(color) {
            *s += f64::from(c.clamp(0.0, 1.0));
        }
        *count += 1;
    }
    let drop: Vec<bool> = sums
        .iter()
        .map(|(sum, count)| {
            *count > 0
                && sum.iter().zip(&backdrop).all(|(s, b)| {
                    (s / *count as f64 - f64::from(*b)).abs() <= f64::from(config.color_distance)
                })
        })
        .collect();
    let dropped = drop.iter().filter(|d| **d).count();
    if dropped == 0 {
        return Ok((mesh.clone(), 0));
    }
    let kept = mesh.filter_triangles(|t| !drop[components.of_triangle[t] as usize]);
    Ok((kept, dropped))
}
