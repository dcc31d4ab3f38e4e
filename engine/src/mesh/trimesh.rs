//! The indexed triangle mesh every mesh stage passes on, and the measurements tests and reports
//! need (volume, closedness, components).

use std::collections::HashMap;

use glam::Vec3;

use super::Aabb;

/// An indexed triangle mesh in world space (Y up, metres once exported).
///
/// Triangles wind counter-clockwise seen from outside (glTF's front face), so
/// [`volume`](Self::volume) is positive for a closed mesh. `normals`, `colors` and `uvs` are
/// either empty or hold one entry per position.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TriMesh {
    /// Vertex positions.
    pub positions: Vec<[f32; 3]>,
    /// Unit vertex normals (empty until computed).
    pub normals: Vec<[f32; 3]>,
    /// Vertex colours, linear RGB in [0, 1] (empty when the mesh is uncoloured).
    pub colors: Vec<[f32; 3]>,
    /// Texture coordinates, glTF's convention (origin at the image's top-left corner); empty
    /// unless a texture was baked.
    pub uvs: Vec<[f32; 2]>,
    /// Three vertex indices per triangle.
    pub indices: Vec<u32>,
}

/// How the edges of a mesh are shared between its triangles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EdgeReport {
    /// Distinct undirected edges.
    pub edges: usize,
    /// Edges used by one triangle only (holes).
    pub boundary: usize,
    /// Edges used by more than two triangles.
    pub non_manifold: usize,
    /// Edges whose two triangles traverse them in the same direction (flipped winding).
    pub misoriented: usize,
}

impl EdgeReport {
    /// Every edge shared by exactly two triangles, wound consistently: a watertight surface.
    pub fn is_closed(&self) -> bool {
        self.boundary == 0 && self.non_manifold == 0 && self.misoriented == 0
    }
}

impl TriMesh {
    /// Number of vertices.
    pub fn vertex_count(&self) -> usize {
        self.positions.len()
    }

    /// Number of triangles.
    pub fn triangle_count(&self) -> usize {
        self.indices.len() / 3
    }

    /// No triangles.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The triangles' corner positions.
    pub fn triangles(&self) -> impl Iterator<Item = [Vec3; 3]> + '_ {
        self.indices
            .chunks_exact(3)
            .map(|t| [t[0], t[1], t[2]].map(|i| Vec3::from(self.positions[i as usize])))
    }

    /// The box around all vertices; `None` for a mesh without vertices.
    pub fn bounds(&self) -> Option<Aabb> {
        Aabb::from_points(&self.positions)
    }

    /// Enclosed volume by the divergence theorem (signed: positive when wound outward).
    pub fn volume(&self) -> f64 {
        self.triangles()
            .map(|[a, b, c]| a.as_dvec3().dot(b.as_dvec3().cross(c.as_dvec3())))
            .sum::<f64>()
            / 6.0
    }

    /// Total surface area.
    pub fn area(&self) -> f64 {
        self.triangles()
            .map(|[a, b, c]| 0.5 * (b - a).as_dvec3().cross((c - a).as_dvec3()).length())
            .sum()
    }

    /// How edges are shared; [`EdgeReport::is_closed`] is the watertightness check.
    pub fn edge_report(&self) -> EdgeReport {
        // Per undirected edge: (uses, uses in the low -> high direction).
        let mut uses: HashMap<(u32, u32), (u32, u32)> = HashMap::new();
        for t in self.indices.chunks_exact(3) {
            for (a, b) in [(t[0], t[1]), (t[1], t[2]), (t[2], t[0])] {
                let e = uses.entry((a.min(b), a.max(b))).or_default();
                e.0 += 1;
                e.1 += u32::from(a < b);
            }
        }
        let mut report = EdgeReport {
            edges: uses.len(),
            ..Default::default()
        };
        for &(n, forward) in uses.values() {
            match n {
                1 => report.boundary += 1,
                2 if forward != 1 => report.misoriented += 1,
                2 => {}
                _ => report.non_manifold += 1,
            }
        }
        report
    }

    /// Smooth vertex normals: the area-weighted mean of the normals of the triangles around
    /// each vertex (every vertex is shared, so shading is smooth across the surface). A vertex
    /// whose triangles cancel out gets +Y.
    pub fn compute_smooth_normals(&mut self) {
        let mut sums = vec![Vec3::ZERO; self.positions.len()];
        for t in self.indices.chunks_exact(3) {
            let [a, b, c] = [t[0], t[1], t[2]].map(|i| Vec3::from(self.positions[i as usize]));
            // The cross product's length is twice the area: area weighting for free.
            let n = (b - a).cross(c - a);
            for &i in t {
                sums[i as usize] += n;
            }
        }
        self.normals = sums
            .into_iter()
            .map(|n| n.try_normalize().unwrap_or(Vec3::Y).to_array())
            .collect();
    }

    /// Scales every position by `scale` about the origin, then adds `offset`.
    pub fn transform(&mut self, scale: f32, offset: Vec3) {
        for p in &mut self.positions {
            *p = (Vec3::from(*p) * scale + offset).to_array();
        }
    }

    /// Drops vertices no triangle uses and orders the rest for the GPU's vertex cache and
    /// fetch (meshopt), keeping normals and colours in step.
    pub fn optimize(&mut self) {
        let n = self.positions.len();
        let has = |len: usize| len == n;
        let (has_normals, has_colors, has_uvs) = (
            has(self.normals.len()),
            has(self.colors.len()),
            has(self.uvs.len()),
        );
        meshopt::optimize_vertex_cache_in_place(&mut self.indices, n);
        // One interleaved stream: meshopt 0.7's `optimize_vertex_fetch_remap` truncates its
        // remap table, so the multi-stream route is not safe to use.
        let interleaved: Vec<[f32; 11]> = (0..n)
            .map(|i| {
                let p = self.positions[i];
                let m = if has_normals {
                    self.normals[i]
                } else {
                    [0.0; 3]
                };
                let c = if has_colors { self.colors[i] } else { [0.0; 3] };
                let t = if has_uvs { self.uvs[i] } else { [0.0; 2] };
                [
                    p[0], p[1], p[2], m[0], m[1], m[2], c[0], c[1], c[2], t[0], t[1],
                ]
            })
            .collect();
        let vertices = meshopt::optimize_vertex_fetch(&mut self.indices, &interleaved);
        self.positions = vertices.iter().map(|v| [v[0], v[1], v[2]]).collect();
        if has_normals {
            self.normals = vertices.iter().map(|v| [v[3], v[4], v[5]]).collect();
        }
        if has_colors {
            self.colors = vertices.iter().map(|v| [v[6], v[7], v[8]]).collect();
        }
        if has_uvs {
            self.uvs = vertices.iter().map(|v| [v[9], v[10]]).collect();
        }
    }

    /// A mesh of the triangles for which `keep(triangle index)` holds, without unused vertices.
    pub fn filter_triangles(&self, mut keep: impl FnMut(usize) -> bool) -> TriMesh {
        let mut new_index = vec![u32::MAX; self.positions.len()];
        let mut out = TriMesh::default();
        for (t, tri) in self.indices.chunks_exact(3).enumerate() {
            if !keep(t) {
                continue;
            }
            for &i in tri {
                let slot = &mut new_index[i as usize];
                if *slot == u32::MAX {
                    *slot = out.positions.len() as u32;
                    out.positions.push(self.positions[i as usize]);
                    if let Some(n) = self.normals.get(i as usize) {
                        out.normals.push(*n);
                    }
                    if let Some(c) = self.colors.get(i as usize) {
                        out.colors.push(*c);
                    }
                    if let Some(t) = self.uvs.get(i as usize) {
                        out.uvs.push(*t);
                    }
                }
                out.indices.push(*slot);
            }
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A unit cube, wound outward.
    pub(crate) fn cube() -> TriMesh {
        let positions = (0..8)
            .map(|i| [(i & 1) as f32, ((i >> 1) & 1) as f32, ((i >> 2) & 1) as f32])
            .collect();
        #[rustfmt::skip]
        let indices = vec![
            0, 2, 1, 1, 2, 3, // z = 0
            4, 5, 6, 5, 7, 6, // z = 1
            0, 1, 4, 1, 5, 4, // y = 0
            2, 6, 3, 3, 6, 7, // y = 1
            0, 4, 2, 2, 4, 6, // x = 0
            1, 3, 5, 3, 7, 5, // x = 1
        ];
        TriMesh {
            positions,
            indices,
            ..Default::default()
        }
    }

    #[test]
    fn cube_measures_right() {
        let mut mesh = cube();
        assert!((mesh.volume() - 1.0).abs() < 1e-9);
        assert!((mesh.area() - 6.0).abs() < 1e-9);
        let edges = mesh.edge_report();
        assert!(edges.is_closed(), "{edges:?}");
        assert_eq!(edges.edges, 18);
        mesh.compute_smooth_normals();
        // Corner 0's normal points away from the cube's centre.
        assert!(Vec3::from(mesh.normals[0]).dot(Vec3::splat(-1.0)) > 0.0);

        let open = mesh.filter_triangles(|t| t != 0);
        let edges = open.edge_report();
        assert_eq!(edges.boundary, 3);
        let mut flipped = cube();
        flipped.indices.swap(0, 1);
        assert_eq!(flipped.edge_report().misoriented, 3);
    }

    #[test]
    fn optimize_drops_unused_vertices_and_keeps_attributes_in_step() {
        let mut mesh = cube();
        mesh.positions.push([9.0, 9.0, 9.0]);
        mesh.compute_smooth_normals();
        mesh.colors = mesh.positions.clone();
        mesh.uvs = mesh.positions.iter().map(|p| [p[0], p[1]]).collect();
        let volume = mesh.volume();
        mesh.optimize();
        assert_eq!(mesh.vertex_count(), 8);
        assert_eq!(mesh.colors, mesh.positions);
        let uvs: Vec<[f32; 2]> = mesh.positions.iter().map(|p| [p[0], p[1]]).collect();
        assert_eq!(mesh.uvs, uvs);
        assert!((mesh.volume() - volume).abs() < 1e-9);
    }
}
