//! Our own structural check of a `.glb`, for machines without the Khronos validator (node and
//! its npm package): the file parses as glTF 2.0 binary (the `gltf` crate checks the header,
//! chunks and JSON against the schema), its buffers lie inside the binary chunk, and every
//! triangle primitive has finite positions and indices inside them. Weaker than the Khronos validator, which remains
//! the reference ([`super::khronos_validate`]).

use std::path::{Path, PathBuf};

use gltf::mesh::Mode;

/// What a structurally sound `.glb` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlbSummary {
    /// File size in bytes.
    pub bytes: u64,
    /// Meshes.
    pub meshes: usize,
    /// Vertices over all primitives.
    pub vertices: usize,
    /// Triangles over all primitives.
    pub triangles: usize,
    /// Embedded images.
    pub images: usize,
    /// `asset.generator`.
    pub generator: Option<String>,
}

/// Why a file failed the check; the message names the file and the part at fault.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// It is not valid glTF 2.0 binary, or its buffers do not load.
    #[error("{path} is not a valid glTF binary: {why}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        why: String,
    },
    /// A primitive's data is inconsistent.
    #[error("{path}: mesh {mesh}, primitive {primitive}: {why}")]
    Primitive {
        /// The file.
        path: PathBuf,
        /// Mesh index.
        mesh: usize,
        /// Primitive index in the mesh.
        primitive: usize,
        /// What is wrong.
        why: String,
    },
}

/// Checks `path` as described in the module docs and says what it holds.
pub fn inspect_glb(path: &Path) -> Result<GlbSummary, InspectError> {
    let bytes = std::fs::read(path).map_err(|source| InspectError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let format = |why: String| InspectError::Format {
        path: path.to_path_buf(),
        why,
    };
    if bytes.get(..4) != Some(b"glTF".as_slice()) {
        return Err(format("no `glTF` magic at its start (not a .glb)".into()));
    }
    let gltf = gltf::Gltf::from_slice(&bytes).map_err(|e| format(e.to_string()))?;
    let blob = gltf.blob.as_deref().unwrap_or_default();
    for buffer in gltf.document.buffers() {
        match buffer.source() {
            gltf::buffer::Source::Bin if buffer.length() <= blob.len() => {}
            gltf::buffer::Source::Bin => {
                return Err(format(format!(
                    "buffer {} is {} bytes, the binary chunk holds {}",
                    buffer.index(),
                    buffer.length(),
                    blob.len()
                )));
            }
            gltf::buffer::Source::Uri(uri) => {
                return Err(format(format!(
                    "buffer {} refers to an outside file `{uri}`: a .glb asset keeps its data inside",
                    buffer.index()
                )));
            }
        }
    }
    let document = gltf.document;
    let mut summary = GlbSummary {
        bytes: bytes.len() as u64,
        meshes: document.meshes().len(),
        vertices: 0,
        triangles: 0,
        images: document.images().len(),
        generator: document.as_json().asset.generator.clone(),
    };
    for mesh in document.meshes() {
        for primitive in mesh.primitives() {
            let bad = |why: String| InspectError::Primitive {
                path: path.to_path_buf(),
                mesh: mesh.index(),
                primitive: primitive.index(),
                why,
            };
            let reader = primitive.reader(|_| Some(blob));
            let positions: Vec<[f32; 3]> = reader
                .read_positions()
                .ok_or_else(|| bad("no POSITION attribute".into()))?
                .collect();
            if let Some(i) = positions
                .iter()
                .position(|p| !p.iter().all(|c| c.is_finite()))
            {
                return Err(bad(format!("position {i} is not finite")));
            }
            let indices: Vec<u32> = match reader.read_indices() {
                Some(ix) => ix.into_u32().collect(),
                None => (0..positions.len() as u32).collect(),
            };
            if let Some(&i) = indices.iter().find(|&&i| i as usize >= positions.len()) {
                return Err(bad(format!(
                    "index {i} points past its {} vertices",
                    positions.len()
                )));
            }
            if primitive.mode() == Mode::Triangles {
                if indices.len() % 3 != 0 {
                    return Err(bad(format!(
                        "{} indices do not make whole triangles",
                        indices.len()
                    )));
                }
                summary.triangles += indices.len() / 3;
            }
            summary.vertices += positions.len();
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{ExportConfig, glb_bytes};
    use crate::mesh::TriMesh;

    fn tetrahedron() -> TriMesh {
        TriMesh {
            positions: vec![
                [0.0, 0.0, 0.0],
                [1.0, 0.0, 0.0],
                [0.0, 1.0, 0.0],
                [0.0, 0.0, 1.0],
            ],
            indices: vec![0, 2, 1, 0, 1, 3, 0, 3, 2, 1, 2, 3],
            ..TriMesh::default()
        }
    }

    #[test]
    fn a_written_glb_passes_and_a_damaged_one_is_named() {
        let dir = std::env::temp_dir().join(format!("rewardsds-inspect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bytes = glb_bytes(&tetrahedron(), None, &ExportConfig::default()).unwrap();
        let good = dir.join("good.glb");
        std::fs::write(&good, &bytes).unwrap();
        let summary = inspect_glb(&good).unwrap();
        assert_eq!(
            (summary.meshes, summary.vertices, summary.triangles),
            (1, 4, 4)
        );
        assert!(summary.generator.unwrap().starts_with("rewardsds"));

        // Cut short: the binary chunk is missing its end.
        let cut = dir.join("cut.glb");
        std::fs::write(&cut, &bytes[..bytes.len() - 40]).unwrap();
        let err = inspect_glb(&cut).unwrap_err().to_string();
        assert!(
            err.contains("cut.glb") && err.contains("not a valid glTF"),
            "{err}"
        );

        // Not a glb at all.
        let text = dir.join("text.glb");
        std::fs::write(&text, "hello").unwrap();
        let err = inspect_glb(&text).unwrap_err().to_string();
        assert!(err.contains("magic"), "{err}");

        let missing = inspect_glb(&dir.join("none.glb")).unwrap_err().to_string();
        assert!(missing.contains("none.glb"), "{missing}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
