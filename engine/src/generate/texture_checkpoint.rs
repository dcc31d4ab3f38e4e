//! Checkpoint files of the texture stage (`config.texture_stage`), beside the layout of
//! `checkpoint.rs`:
//! ```text
//! texture_mesh.safetensors   the fixed mesh: positions, normals, uvs (f32), indices (u32);
//!                            metadata: the stage-1 mesh report (JSON)
//! texture.mpk                the texture (burn record, keeps the parameter id)
//! texture_optimizer.mpk      Adam's state of the texture
//! ```
//! The mesh is stored, not re-extracted on resume: the UV unwrap may differ between CPU
//! architectures, and a texture only fits the atlas it was baked into.

use std::collections::HashMap;
use std::path::Path;

use burn::module::Module;
use burn::record::Recorder;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::checkpoint::{CheckpointError, invalid, io, read_values, recorder};
use super::config::GenerateConfig;
use super::texture_stage::{Texture, TexturedScene};
use crate::backend::EngineAutodiffBackend;
use crate::mesh::{MeshReport, TriMesh};

pub(super) const TEXTURE_MESH_FILE: &str = "texture_mesh.safetensors";
pub(super) const TEXTURE_FILE: &str = "texture.mpk";
pub(super) const TEXTURE_OPTIMIZER_FILE: &str = "texture_optimizer.mpk";

/// The texture stage's files for the checkpoint `target` (named in errors).
pub(super) fn texture_files<B: EngineAutodiffBackend>(
    scene: &TexturedScene<B>,
    target: &Path,
) -> Result<Vec<(&'static str, Vec<u8>)>, CheckpointError> {
    let mesh = mesh_bytes(&scene.mesh, &scene.report)
        .map_err(|e| invalid(&target.join(TEXTURE_MESH_FILE), e))?;
    let texture = Recorder::<B>::record(&recorder(), scene.texture.clone().into_record(), ())
        .map_err(|e| invalid(&target.join(TEXTURE_FILE), e))?;
    let optimizer = scene
        .optimizer
        .state_bytes()
        .map_err(|e| invalid(&target.join(TEXTURE_OPTIMIZER_FILE), e))?;
    Ok(vec![
        (TEXTURE_MESH_FILE, mesh),
        (TEXTURE_FILE, texture),
        (TEXTURE_OPTIMIZER_FILE, optimizer),
    ])
}

fn mesh_bytes(mesh: &TriMesh, report: &MeshReport) -> Result<Vec<u8>, String> {
    let le = |values: &mut dyn Iterator<Item = [u8; 4]>| values.flatten().collect::<Vec<u8>>();
    let n = mesh.positions.len();
    if mesh.normals.len() != n || mesh.uvs.len() != n {
        return Err("the mesh needs one normal and one UV per vertex".into());
    }
    let entries = [
        (
            "positions",
            Dtype::F32,
            vec![n, 3],
            le(&mut mesh.positions.iter().flatten().map(|v| v.to_le_bytes())),
        ),
        (
            "normals",
            Dtype::F32,
            vec![n, 3],
            le(&mut mesh.normals.iter().flatten().map(|v| v.to_le_bytes())),
        ),
        (
            "uvs",
            Dtype::F32,
            vec![n, 2],
            le(&mut mesh.uvs.iter().flatten().map(|v| v.to_le_bytes())),
        ),
        (
            "indices",
            Dtype::U32,
            vec![mesh.indices.len()],
            le(&mut mesh.indices.iter().map(|v| v.to_le_bytes())),
        ),
    ];
    let views = entries
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|view| (*name, view))
                .map_err(|e| format!("tensor `{name}`: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = HashMap::from([(
        "report".to_string(),
        serde_json::to_string(report).map_err(|e| e.to_string())?,
    )]);
    safetensors::serialize(views, Some(metadata)).map_err(|e| e.to_string())
}

fn read_mesh(bytes: &[u8]) -> Result<(TriMesh, MeshReport), String> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let report = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get("report"))
        .ok_or("the metadata has no `report`")?;
    let report: MeshReport = serde_json::from_str(report).map_err(|e| format!("report: {e}"))?;
    let floats = |name, width: usize| -> Result<Vec<f32>, String> {
        let (values, shape) = read_values(&file, name, Dtype::F32, 2, f32::from_le_bytes)?;
        if shape[1] != width {
            return Err(format!(
                "tensor `{name}` is {shape:?}, expected [N, {width}]"
            ));
        }
        Ok(values)
    };
    let (positions, normals, uvs) = (
        floats("positions", 3)?,
        floats("normals", 3)?,
        floats("uvs", 2)?,
    );
    let (indices, _) = read_values(&file, "indices", Dtype::U32, 1, u32::from_le_bytes)?;
    let n = positions.len() / 3;
    if normals.len() != 3 * n || uvs.len() != 2 * n {
        return Err(format!(
            "{n} positions but {} normals and {} UVs",
            normals.len() / 3,
            uvs.len() / 2
        ));
    }
    if indices.len() % 3 != 0 || indices.iter().any(|&i| i as usize >= n) {
        return Err(format!("indices must be triangles of the {n} vertices"));
    }
    let mesh = TriMesh {
        positions: positions
            .chunks_exact(3)
            .map(|c| [c[0], c[1], c[2]])
            .collect(),
        normals: normals
            .chunks_exact(3)
            .map(|c| [c[0], c[1], c[2]])
            .collect(),
        uvs: uvs.chunks_exact(2).map(|c| [c[0], c[1]]).collect(),
        colors: Vec::new(),
        indices,
    };
    Ok((mesh, report))
}

/// The texture stage of the checkpoint `folder`; each missing or unfitting file is named.
pub(super) fn restore_textured<B: EngineAutodiffBackend>(
    folder: &Path,
    config: &GenerateConfig,
    device: &B::Device,
) -> Result<TexturedScene<B>, CheckpointError> {
    let read = |file: &str| {
        let path = folder.join(file);
        std::fs::read(&path).map_err(io("read", &path))
    };
    let Some(stage) = config.texture_stage.clone() else {
        return Err(invalid(
            &folder.join(TEXTURE_MESH_FILE),
            "the config has no texture_stage",
        ));
    };
    let mesh_path = folder.join(TEXTURE_MESH_FILE);
    let (mesh, report) =
        read_mesh(&read(TEXTURE_MESH_FILE)?).map_err(|e| invalid(&mesh_path, e))?;
    let texture_path = folder.join(TEXTURE_FILE);
    let record: <Texture<B> as Module<B>>::Record = recorder()
        .load(read(TEXTURE_FILE)?, device)
        .map_err(|e| invalid(&texture_path, e))?;
    let [texels, channels] = record.texels.val().dims();
    let size = (texels as f64).sqrt() as u32;
    if channels != 3 || (size * size) as usize != texels {
        return Err(invalid(
            &texture_path,
            format!("{texels}x{channels} texels are not a square RGB texture"),
        ));
    }
    let blank = image::RgbImage::new(size, size);
    let mut scene = TexturedScene::<B>::new(mesh, &blank, report, stage, &config.optimizer, device);
    scene.texture = scene.texture.clone().load_record(record);
    let optimizer_path = folder.join(TEXTURE_OPTIMIZER_FILE);
    let fresh = config.optimizer.init::<B, Texture<B>>();
    let old = std::mem::replace(&mut scene.optimizer, fresh);
    scene.optimizer = old
        .load_state_bytes(read(TEXTURE_OPTIMIZER_FILE)?, device)
        .map_err(|e| invalid(&optimizer_path, e))?;
    Ok(scene)
}
