//! Floater removal: NeRFs leave small blobs of density in empty space; they become small
//! disconnected pieces of mesh that a game asset should not carry.

use serde::{Deserialize, Serialize};

use super::TriMesh;

/// The connected pieces of a mesh (triangles sharing a vertex are connected).
#[derive(Debug, Clone, PartialEq)]
pub struct Components {
    /// Component of each triangle; components are numbered by decreasing area.
    pub of_triangle: Vec<u32>,
    /// Surface area of each component, largest first.
    pub areas: Vec<f64>,
}

impl Components {
    /// Number of components.
    pub fn len(&self) -> usize {
        self.areas.len()
    }

    /// No components (an empty mesh).
    pub fn is_empty(&self) -> bool {
        self.areas.is_empty()
    }
}

/// Splits the mesh into connected components.
pub fn connected_components(mesh: &TriMesh) -> Components {
    // Union-find over vertices: a dozen lines, not worth a graph crate.
    let mut parent: Vec<u32> = (0..mesh.vertex_count() as u32).collect();
    fn root(parent: &mut [u32], mut v: u32) -> u32 {
        while parent[v as usize] != v {
            // Path halving keeps the trees shallow.
            parent[v as usize] = parent[parent[v as usize] as usize];
            v = parent[v as usize];
        }
        v
    }
    for t in mesh.indices.chunks_exact(3) {
        let a = root(&mut parent, t[0]);
        for &other in &t[1..] {
            let b = root(&mut parent, other);
            if a != b {
                parent[b as usize] = a;
            }
        }
    }

    // Number the roots, summing the area of each component.
    let mut label = vec![u32::MAX; parent.len()];
    let mut areas = Vec::new();
    let mut of_triangle = Vec::with_capacity(mesh.triangle_count());
    for (t, [a, b, c]) in mesh.indices.chunks_exact(3).zip(mesh.triangles()) {
        let r = root(&mut parent, t[0]) as usize;
        if label[r] == u32::MAX {
            label[r] = areas.len() as u32;
            areas.push(0.0);
        }
        areas[label[r] as usize] += 0.5 * (b - a).as_dvec3().cross((c - a).as_dvec3()).length();
        of_triangle.push(label[r]);
    }

    // Renumber by decreasing area so component 0 is the main object.
    let mut order: Vec<usize> = (0..areas.len()).collect();
    order.sort_by(|&i, &j| areas[j].total_cmp(&areas[i]));
    let mut rank = vec![0u32; areas.len()];
    for (new, &old) in order.iter().enumerate() {
        rank[old] = new as u32;
    }
    Components {
        of_triangle: of_triangle.into_iter().map(|c| rank[c as usize]).collect(),
        areas: order.iter().map(|&i| areas[i]).collect(),
    }
}

/// What [`remove_floaters`] dropped.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct FloaterReport {
    /// Components before removal.
    pub components: usize,
    /// Components removed.
    pub removed_components: usize,
    /// Triangles removed.
    pub removed_triangles: usize,
    /// Of the pieces left, those dropped for the backdrop's colour
    /// ([`remove_backdrop_pieces`](super::remove_backdrop_pieces)).
    #[serde(default)]
    pub backdrop_components: usize,
}

/// Keeps the components whose area is at least `min_fraction` of the largest one's
/// (`0` keeps everything, `1` keeps only the largest and any of equal area).
pub fn remove_floaters(mesh: &TriMesh, min_fraction: f64) -> (TriMesh, FloaterReport) {
    let components = connected_components(mesh);
    let Some(&largest) = components.areas.first() else {
        return (mesh.clone(), FloaterReport::default());
    };
    let keep: Vec<bool> = components
        .areas
        .iter()
        .map(|&a| a >= min_fraction * largest)
        .collect();
    let kept = mesh.filter_triangles(|t| keep[components.of_triangle[t] as usize]);
    let report = FloaterReport {
        components: components.len(),
        removed_components: keep.iter().filter(|k| !**k).count(),
        removed_triangles: mesh.triangle_count() - kept.triangle_count(),
        backdrop_components: 0,
    };
    (kept, report)
}
