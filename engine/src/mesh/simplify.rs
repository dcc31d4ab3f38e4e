//! Simplification to a triangle budget (meshoptimizer's edge-collapse simplifier).

use meshopt::SimplifyOptions;
use serde::{Deserialize, Serialize};

use super::{MeshError, TriMesh};

/// How far to simplify.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimplifyConfig {
    /// Most triangles the mesh may keep. A mesh already within budget is left as it is.
    pub target_triangles: usize,
    /// Largest deviation the simplifier may introduce, relative to the mesh's extent. `1.0`
    /// lets the budget alone decide; a smaller value stops earlier (more triangles than the
    /// budget) where reaching the budget would distort the shape more than this.
    pub max_error: f32,
    /// Optional further levels of detail, as triangle budgets (each simplified from the one
    /// before), e.g. `[5000, 1250]`; `Generator::export_glb` writes them beside the asset as
    /// `<name>_LOD1.glb`, `<name>_LOD2.glb`, ... Empty: no LOD chain.
    pub lod_triangles: Vec<usize>,
}

impl Default for SimplifyConfig {
    fn default() -> Self {
        Self {
            target_triangles: 20_000,
            max_error: 1.0,
            lod_triangles: Vec::new(),
        }
    }
}

impl SimplifyConfig {
    /// Checks the values; the error names the setting.
    pub fn validate(&self) -> Result<(), MeshError> {
        if self.target_triangles == 0 || self.lod_triangles.contains(&0) {
            return Err(MeshError::BadConfig {
                name: "simplify.target_triangles",
                value: "0".into(),
                why: "a triangle budget must be at least 1",
            });
        }
        if !(self.max_error.is_finite() && self.max_error >= 0.0) {
            return Err(MeshError::BadConfig {
                name: "simplify.max_error",
                value: self.max_error.to_string(),
                why: "must be finite and >= 0",
            });
        }
        Ok(())
    }
}

/// The result of one simplification.
#[derive(Debug, Clone)]
pub struct Simplified {
    /// The simplified mesh, compacted (no unused vertices); normals are recomputed when the
    /// input had them, colours are carried over.
    pub mesh: TriMesh,
    /// The deviation meshopt reports, relative to the mesh's extent.
    pub relative_error: f32,
}

/// Simplifies `mesh` to at most `target_triangles` (when `max_error` allows).
pub fn simplify(mesh: &TriMesh, target_triangles: usize, max_error: f32) -> Simplified {
    if mesh.triangle_count() <= target_triangles {
        return Simplified {
            mesh: mesh.clone(),
            relative_error: 0.0,
        };
    }
    let mut relative_error = 0.0;
    let indices = meshopt::simplify_decoder(
        &mesh.indices,
        &mesh.positions,
        target_triangles * 3,
        max_error,
        SimplifyOptions::None,
        Some(&mut relative_error),
    );
    // Collapses keep a subset of the original vertices, so every attribute still applies.
    let mut out = TriMesh {
        indices,
        ..mesh.clone()
    };
    out.optimize();
    if !out.normals.is_empty() {
        out.compute_smooth_normals();
    }
    Simplified {
        mesh: out,
        relative_error,
    }
}

/// Levels of detail: each budget in `budgets` simplifies the level before it (the first
/// simplifies `mesh`). Budgets should decrease; a level already within its budget repeats.
pub fn lod_chain(mesh: &TriMesh, budgets: &[usize], max_error: f32) -> Vec<Simplified> {
    let mut levels: Vec<Simplified> = Vec::with_capacity(budgets.len());
    for &budget in budgets {
        let previous = levels.last().map_or(mesh, |l| &l.mesh);
        levels.push(simplify(previous, budget, max_error));
    }
    levels
}
