//! Writing meshes as glTF binary (.glb), and Gaussian splat clouds as 3DGS `.ply`.
//!
//! [`write_glb`] places a [`TriMesh`] on the ground (x and z centred, its lowest point at
//! y = 0), scales it to [`ExportConfig::target_size`] metres, and writes one `.glb` with
//! positions, normals, vertex colours (`COLOR_0`) or a baked base-colour texture
//! (`TEXCOORD_0` + embedded PNG), and a PBR metallic-roughness material; the generator and
//! prompt go in `asset.extras`. The file is written atomically (a temporary
//! file in the same folder, renamed over the target), so a file watcher never sees half a
//! file and a failed write leaves nothing behind.

mod atomic;
mod glb;
mod inspect;
mod ply;
mod validator;

pub use atomic::write_atomic;
pub use glb::glb_bytes;
pub use inspect::{GlbSummary, InspectError, inspect_glb};
pub use ply::{splat_ply_bytes, write_splat_ply};
pub use validator::{Validation, ValidatorError, khronos_validate};

use std::path::{Path, PathBuf};

use glam::Vec3;
use serde::{Deserialize, Serialize};

use crate::mesh::TriMesh;

/// Why a mesh could not be exported; the message names the file, setting or data at fault.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The mesh has no triangles: an empty file would be useless.
    #[error("nothing to export: the mesh has no triangles")]
    EmptyMesh,
    /// The mesh's buffers are inconsistent or hold NaN/infinity.
    #[error("invalid mesh: {0}")]
    InvalidMesh(String),
    /// An export setting is out of range.
    #[error("export setting {name} = {value}: {why}")]
    BadConfig {
        /// The setting's name, as in [`ExportConfig`].
        name: &'static str,
        /// Its value, printed.
        value: String,
        /// What it must be instead.
        why: &'static str,
    },
    /// The output path names no file, or its folder does not exist.
    #[error("cannot write {path}: {why}")]
    BadPath {
        /// The requested output path.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// Writing failed; nothing was left at the output path.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder involved.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The glTF JSON could not be encoded.
    #[error("cannot encode the glTF document: {0}")]
    Encode(String),
}

/// The material every exported mesh gets: glTF's PBR metallic-roughness, multiplied by the
/// vertex colours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaterialConfig {
    /// Linear RGBA factor the vertex colours are multiplied by.
    pub base_color: [f32; 4],
    /// 0 = dielectric (props are mostly), 1 = metal.
    pub metallic: f32,
    /// 0 = mirror, 1 = fully rough; the prior's albedo carries no gloss, so it is matte.
    pub roughness: f32,
    /// Render back faces too (for open or thin surfaces; the extracted mesh is closed).
    pub double_sided: bool,
}

impl Default for MaterialConfig {
    fn default() -> Self {
        Self {
            base_color: [1.0; 4],
            metallic: 0.0,
            roughness: 0.9,
            double_sided: false,
        }
    }
}

/// Export settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    /// Length in metres of the mesh's longest side after export; `None` keeps the mesh's own
    /// units (it is still placed on the ground).
    pub target_size: Option<f32>,
    /// Name of the mesh, node and scene in the file.
    pub name: String,
    /// `asset.generator`.
    pub generator: String,
    /// The prompt, stored as `asset.extras.prompt`.
    pub prompt: Option<String>,
    /// More entries for `asset.extras` (seed, config, ...).
    pub extras: serde_json::Map<String, serde_json::Value>,
    /// The material.
    pub material: MaterialConfig,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            target_size: Some(1.0),
            name: "prop".into(),
            generator: format!("rewardsds {}", env!("CARGO_PKG_VERSION")),
            prompt: None,
            extras: serde_json::Map::new(),
            material: MaterialConfig::default(),
        }
    }
}

impl ExportConfig {
    /// Checks the values; the error names the setting.
    pub fn validate(&self) -> Result<(), ExportError> {
        let bad = |name, value: String, why| Err(ExportError::BadConfig { name, value, why });
        if let Some(size) = self.target_size
            && !(size.is_finite() && size > 0.0)
        {
            return bad("target_size", size.to_string(), "must be finite and > 0");
        }
        let m = &self.material;
        if !m.base_color.iter().all(|c| (0.0..=1.0).contains(c)) {
            return bad(
                "material.base_color",
                format!("{:?}", m.base_color),
                "every channel must be in [0, 1]",
            );
        }
        for (name, v) in [
            ("material.metallic", m.metallic),
            ("material.roughness", m.roughness),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(name, v.to_string(), "must be in [0, 1]");
            }
        }
        Ok(())
    }
}

/// What [`write_glb`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportReport {
    /// The file written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: usize,
    /// Vertices written.
    pub vertices: usize,
    /// Triangles written.
    pub triangles: usize,
    /// The factor the mesh was scaled by.
    pub scale: f32,
    /// The exported mesh's extent in metres (x, y, z).
    pub size: [f32; 3],
}

/// A copy of `mesh` standing on the ground plane: x and z centred on the origin, its lowest
/// point at y = 0, scaled so that its longest side is `target_size` (when given). Returns the
/// placed mesh and the scale factor.
pub fn place_on_ground(
    mesh: &TriMesh,
    target_size: Option<f32>,
) -> Result<(TriMesh, f32), ExportError> {
    let bounds = mesh.bounds().ok_or(ExportError::EmptyMesh)?;
    let longest = bounds.size().max_element();
    let scale = match target_size {
        Some(size) if longest > 0.0 => size / longest,
        Some(_) => {
            return Err(ExportError::InvalidMesh(
                "the mesh has zero extent and cannot be scaled".into(),
            ));
        }
        None => 1.0,
    };
    let anchor = Vec3::new(bounds.center().x, bounds.min.y, bounds.center().z);
    let mut placed = mesh.clone();
    placed.transform(scale, -anchor * scale);
    Ok((placed, scale))
}

/// Places `mesh` on the ground, scales it and writes it to `path` as `.glb`, atomically, with
/// `texture` (sRGB base colour, mapped by `mesh.uvs`) embedded when given. On error nothing
/// is left at `path` (an existing file there stays as it was).
pub fn write_glb(
    mesh: &TriMesh,
    texture: Option<&image::RgbImage>,
    path: &Path,
    config: &ExportConfig,
) -> Result<ExportReport, ExportError> {
    let (bytes, placed, scale) = glb::encode(mesh, texture, config)?;
    write_atomic(path, &bytes)?;
    Ok(ExportReport {
        path: path.to_path_buf(),
        bytes: bytes.len(),
        vertices: placed.vertex_count(),
        triangles: placed.triangle_count(),
        scale,
        size: placed.bounds().map_or([0.0; 3], |b| b.size().to_array()),
    })
}
