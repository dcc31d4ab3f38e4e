//! Checkpoints: everything a generation needs to continue exactly where it stopped.
//!
//! A checkpoint folder holds:
//! ```text
//! <dir>/latest                       names the newest complete checkpoint ("step-0000120")
//! <dir>/step-0000120/config.toml     the exact GenerateConfig
//! <dir>/step-0000120/state.json      steps done, seconds spent, format version
//! <dir>/step-0000120/nerf.mpk        NeRF scenes: the parameters
//! <dir>/step-0000120/optimizer.mpk   NeRF scenes: Adam's moments and step counts, per parameter
//! <dir>/step-0000120/gaussians.safetensors
//!                                    Gaussian scenes: parameters, Adam, densification stats
//! <dir>/step-0000120/vsd_lora.mpk    with VSD: the LoRA's trained parameters (not the UNet)
//! <dir>/step-0000120/vsd_optimizer.mpk
//!                                    with VSD: the LoRA's AdamW state
//! <dir>/step-0000120/texture_*       in the texture stage, instead of the stage-1 scene:
//!                                    the mesh, the texture and its Adam state
//!                                    (`texture_checkpoint.rs`)
//! ```
//! Both `.mpk` files are burn records (named MessagePack, full precision). Not safetensors:
//! burn keys the optimiser state by parameter id, and burn's module record is what keeps
//! those ids, so moments and parameters meet again on load.
//!
//! The Gaussians are plain tensors whose count N changes with densification, trained by our
//! own Adam, so they need no ids: `gaussians.safetensors` (the `safetensors` crate the engine
//! already writes models with) holds, f32 unless marked and `[N, ...]` for the current N,
//! ```text
//! means, log_scales, rotations, opacity_logits, sh_dc, [sh_rest]      the parameters
//! exp_avg.<attribute>, exp_avg_sq.<attribute>                         Adam's moments
//! densify.grad_sum, densify.seen (u32), densify.max_radius            since the last densify
//! ```
//! and in its header's metadata `adam_step` (Adam's step count) and `last_densify` (the
//! last densification's report, JSON).
//!
//! Writing is atomic: a checkpoint is assembled in a hidden temporary folder, renamed into
//! place, and only then named in `latest` (itself replaced by a rename); older checkpoints go
//! after that. Whenever the process stops, `latest` names a complete checkpoint or is absent.
//!
//! There is no RNG state to save: every random draw of step `k` (cameras, ray jitter,
//! timestep, noises) is seeded from `(seed, k)`, so the step count is the RNG state.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use super::config::{GenerateConfig, SceneKind};
use super::gaussian_scene::GaussianScene;
use super::generator::SceneState;
use super::generator::{GenerateError, Generator, load_guidance};
use super::texture_checkpoint::{restore_textured, texture_files};
use crate::backend::EngineAutodiffBackend;
use crate::export::write_atomic;
use crate::guidance::{Guidance, VsdLoRA};
use crate::scene::gaussians::{DensifyStats, Gaussians};
use crate::scene::nerf::Nerf;

/// The file in a checkpoint folder that names the newest complete checkpoint.
pub const LATEST: &str = "latest";
/// Version of the layout above; bumped when it changes.
pub const FORMAT_VERSION: u32 = 1;

pub(super) const CONFIG_FILE: &str = "config.toml";
pub(super) const STATE_FILE: &str = "state.json";
const NERF_FILE: &str = "nerf.mpk";
pub(super) const OPTIMIZER_FILE: &str = "optimizer.mpk";
const GAUSSIANS_FILE: &str = "gaussians.safetensors";
const VSD_LORA_FILE: &str = "vsd_lora.mpk";
const VSD_OPTIMIZER_FILE: &str = "vsd_optimizer.mpk";

/// The files holding a scene of `kind`.
fn scene_files(kind: SceneKind) -> &'static [&'static str] {
    match kind {
        SceneKind::Nerf => &[NERF_FILE, OPTIMIZER_FILE],
        SceneKind::Gaussians => &[GAUSSIANS_FILE],
    }
}

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file-system operation failed.
    #[error("could not {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The folder has no complete checkpoint.
    #[error("no checkpoint in {0} (its `latest` file is missing)")]
    NotFound(PathBuf),
    /// A checkpoint file is unreadable or does not fit the config.
    #[error("checkpoint file {path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The parameters are not finite: such a state is never saved over a good one.
    #[error("not checkpointing step {step}: {what}")]
    NonFinite {
        /// Steps done.
        step: usize,
        /// Which parameter of which scene.
        what: String,
    },
}

/// `state.json`: where the run stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// [`FORMAT_VERSION`] of the writer.
    pub format: u32,
    /// Steps done.
    pub step: usize,
    /// Seconds spent optimising so far (for the ETA).
    pub elapsed_seconds: f64,
}

pub(super) fn io(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> CheckpointError {
    let path = path.to_path_buf();
    move |source| CheckpointError::Io {
        action,
        path,
        source,
    }
}

pub(super) fn invalid(path: &Path, reason: impl ToString) -> CheckpointError {
    CheckpointError::Invalid {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

pub(super) fn recorder() -> NamedMpkBytesRecorder<FullPrecisionSettings> {
    NamedMpkBytesRecorder::new()
}

/// Counts parameter tensors holding a NaN or an infinity.
struct NonFiniteParams(usize);

impl<B: burn::tensor::backend::Backend> ModuleVisitor<B> for NonFiniteParams {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let bad: i64 = param
            .val()
            .is_finite()
            .bool_not()
            .int()
            .sum()
            .into_scalar()
            .elem();
        if bad > 0 {
            self.0 += 1;
        }
    }
}

/// The complete checkpoint `latest` names in `dir`.
pub fn latest_checkpoint(dir: &Path) -> Result<PathBuf, CheckpointError> {
    let pointer = dir.join(LATEST);
    let name = match std::fs::read_to_string(&pointer) {
        Ok(name) => name,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CheckpointError::NotFound(dir.to_path_buf()));
        }
        Err(e) => return Err(io("read", &pointer)(e)),
    };
    let name = name.trim();
    // Written by us as `step-NNNNNNN`: anything else (a path, `..`) is not followed.
    if !(name.starts_with("step-") && name[5..].bytes().all(|b| b.is_ascii_digit())) {
        return Err(invalid(
            &pointer,
            format!("`{name}` is not a checkpoint name"),
        ));
    }
    Ok(dir.join(name))
}

/// The config saved in the newest checkpoint of `dir`.
pub fn checkpoint_config(dir: &Path) -> Result<GenerateConfig, GenerateError> {
    let path = latest_checkpoint(dir)?.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(io("read", &path))?;
    GenerateConfig::from_toml(&text).map_err(|e| invalid(&path, e).into())
}

/// `state.json` of the checkpoint `folder`, checked against this build's format and the
/// config's `steps`.
pub(super) fn read_state(folder: &Path, steps: usize) -> Result<CheckpointState, CheckpointError> {
    let path = folder.join(STATE_FILE);
    let bytes = std::fs::read(&path).map_err(io("read", &path))?;
    let state: CheckpointState = serde_json::from_slice(&bytes).map_err(|e| invalid(&path, e))?;
    if state.format != FORMAT_VERSION {
        return Err(invalid(
            &path,
            format!(
                "format {} (this build reads {FORMAT_VERSION})",
                state.format
            ),
        ));
    }
    if state.step > steps {
        return Err(invalid(
            &path,
            format!("step {} is past the config's {steps} steps", state.step),
        ));
    }
    Ok(state)
}

/// VSD's LoRA as checkpoint files of the checkpoint `target` (named in errors).
pub(super) fn vsd_files<B: EngineAutodiffBackend>(
    lora: &VsdLoRA<B>,
    target: &Path,
) -> Result<[(&'static str, Vec<u8>); 2], CheckpointError> {
    let (params, optimizer) = lora
        .state_bytes()
        .map_err(|e| invalid(&target.join(VSD_LORA_FILE), e))?;
    Ok([(VSD_LORA_FILE, params), (VSD_OPTIMIZER_FILE, optimizer)])
}

/// Restores VSD's LoRA from the checkpoint `folder`; a missing or unfitting file is named.
pub(super) fn restore_vsd<B: EngineAutodiffBackend>(
    lora: &mut VsdLoRA<B>,
    folder: &Path,
) -> Result<(), CheckpointError> {
    let read = |file: &str| {
        let path = folder.join(file);
        std::fs::read(&path).map_err(io("read", &path))
    };
    lora.load_state_bytes(read(VSD_LORA_FILE)?, read(VSD_OPTIMIZER_FILE)?)
        .map_err(|e| invalid(&folder.join(VSD_LORA_FILE), e))
}

/// The folder name of the checkpoint after `step` steps.
fn checkpoint_name(step: usize) -> String {
    format!("step-{step:07}")
}

/// Writes `files` as the checkpoint after `step` steps in `dir`, atomically, names it in
/// `latest` and removes older checkpoints: the part every scene kind shares.
pub(super) fn commit_checkpoint(
    dir: &Path,
    step: usize,
    files: Vec<(&str, Vec<u8>)>,
) -> Result<PathBuf, CheckpointError> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let name = checkpoint_name(step);
    let target = dir.join(&name);

    // 1. assemble in a hidden temporary folder (removed on any error)
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempdir_in(dir)
        .map_err(io("create a temporary folder in", dir))?;
    for (file, bytes) in files {
        let path = staging.path().join(file);
        let mut f = std::fs::File::create(&path).map_err(io("create", &path))?;
        std::io::Write::write_all(&mut f, &bytes).map_err(io("write", &path))?;
        f.sync_all().map_err(io("flush", &path))?;
    }

    // 2. rename into place (a leftover of an interrupted save of this step goes first:
    //    `latest` never named it, or it is complete and identical)
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(io("remove", &target))?;
    }
    let staged = staging.keep();
    if let Err(e) = std::fs::rename(&staged, &target) {
        std::fs::remove_dir_all(&staged).ok();
        return Err(io("rename a checkpoint into", &target)(e));
    }

    // 3. commit: `latest` names it
    write_atomic(&dir.join(LATEST), format!("{name}\n").as_bytes())
        .map_err(|e| invalid(&dir.join(LATEST), e))?;

    // 4. older checkpoints are no longer needed
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let old = file_name.to_string_lossy();
            if old.starts_with("step-") && old != name {
                std::fs::remove_dir_all(entry.path()).ok();
            }
        }
    }
    Ok(target)
}

impl<B: EngineAutodiffBackend> Generator<B> {
    /// Writes a checkpoint of the current step into `dir` (created if missing), atomically,
    /// and returns its folder; older checkpoints in `dir` are removed once it is complete.
    /// Refuses (leaving the previous checkpoint) when a parameter is not finite.
    pub fn save_checkpoint(&mut self, dir: &Path) -> Result<PathBuf, GenerateError> {
        // Where the files will be: named in errors.
        let target = dir.join(checkpoint_name(self.step));
        let non_finite = |what: String| CheckpointError::NonFinite {
            step: self.step,
            what,
        };
        let scene_files = match &self.scene {
            SceneState::Nerf {
                nerf, optimizer, ..
            } => {
                let mut check = NonFiniteParams(0);
                nerf.visit(&mut check);
                if check.0 > 0 {
                    return Err(non_finite("a NeRF parameter is NaN or infinite".into()).into());
                }
                let nerf_bytes = Recorder::<B>::record(&recorder(), nerf.clone().into_record(), ())
                    .map_err(|e| invalid(&target.join(NERF_FILE), e))?;
                let optimizer_bytes = optimizer
                    .state_bytes()
                    .map_err(|e| invalid(&target.join(OPTIMIZER_FILE), e))?;
                vec![(NERF_FILE, nerf_bytes), (OPTIMIZER_FILE, optimizer_bytes)]
            }
            SceneState::Gaussians(scene) => {
                scene
                    .params
                    .check_finite()
                    .map_err(|e| non_finite(e.to_string()))?;
                let bytes =
                    gaussian_bytes(scene).map_err(|e| invalid(&target.join(GAUSSIANS_FILE), e))?;
                vec![(GAUSSIANS_FILE, bytes)]
            }
            SceneState::Textured(scene) => {
                let mut check = NonFiniteParams(0);
                scene.texture.visit(&mut check);
                if check.0 > 0 {
                    return Err(non_finite("a texel is NaN or infinite".into()).into());
                }
                texture_files(scene, &target)?
            }
        };
        let state = CheckpointState {
            format: FORMAT_VERSION,
            step: self.step,
            elapsed_seconds: self.elapsed,
        };
        let state_json = serde_json::to_string_pretty(&state).expect("the state serialises");
        let mut files = vec![
            (CONFIG_FILE, self.config.to_toml().into_bytes()),
            (STATE_FILE, state_json.into_bytes()),
        ];
        files.extend(scene_files);
        if let Some(lora) = self.guidance.vsd() {
            files.extend(vsd_files(lora, &target)?);
        }
        let target = commit_checkpoint(dir, self.step, files)?;
        self.last_checkpoint = Some(target.clone());
        Ok(target)
    }

    /// Continues the generation checkpointed in `dir`: its exact config, the prior and reward
    /// it names, the scene (NeRF or Gaussians), its optimiser state and the step count. Later
    /// checkpoints of [`run`](Self::run) go to `dir` too.
    pub fn resume(dir: &Path, device: &B::Device) -> Result<Self, GenerateError> {
        let config = checkpoint_config(dir)?;
        let guidance = load_guidance::<B>(&config, device)?;
        Self::resume_with(dir, guidance, device)
    }

    /// [`resume`](Self::resume) with an already built guidance (it must be built from the
    /// checkpoint's config: [`checkpoint_config`]).
    pub fn resume_with(
        dir: &Path,
        guidance: Guidance<B>,
        device: &B::Device,
    ) -> Result<Self, GenerateError> {
        let folder = latest_checkpoint(dir)?;
        let config = checkpoint_config(dir)?;
        let state = read_state(&folder, config.total_steps())?;
        // The other scene kind's files: config.toml and the scene disagree.
        let other = match config.scene {
            SceneKind::Nerf => SceneKind::Gaussians,
            SceneKind::Gaussians => SceneKind::Nerf,
        };
        for file in scene_files(other) {
            let path = folder.join(file);
            if path.exists() {
                return Err(invalid(
                    &path,
                    format!(
                        "it holds a {} scene, but {CONFIG_FILE} says scene = \"{}\"",
                        other.name(),
                        config.scene.name()
                    ),
                )
                .into());
            }
        }

        let mut generator = Self::new(config, guidance, device)?;
        if state.step > generator.config.steps {
            // In the texture stage: its own files replace stage 1's scene.
            let scene = restore_textured::<B>(&folder, &generator.config, device)?;
            let stage = scene.config().clone();
            generator
                .guidance
                .begin_stage(stage.t_min, stage.t_max, stage.steps);
            generator.scene = SceneState::Textured(Box::new(scene));
        } else {
            generator.restore_stage_one(&folder, device)?;
        }
        if let Some(lora) = generator.guidance.vsd_mut() {
            restore_vsd(lora, &folder)?;
        }
        generator.step = state.step;
        generator.elapsed = state.elapsed_seconds;
        generator.checkpoint_dir = Some(dir.to_path_buf());
        generator.last_checkpoint = Some(folder);
        Ok(generator)
    }

    /// Loads the stage-1 scene (NeRF or Gaussians) and its optimiser from `folder`.
    fn restore_stage_one(
        &mut self,
        folder: &Path,
        device: &B::Device,
    ) -> Result<(), GenerateError> {
        let read = |file: &str| {
            let path = folder.join(file);
            std::fs::read(&path).map_err(io("read", &path))
        };
        let generator = self;
        match &mut generator.scene {
            SceneState::Nerf {
                nerf, optimizer, ..
            } => {
                let nerf_path = folder.join(NERF_FILE);
                let record: <Nerf<B> as Module<B>>::Record = recorder()
                    .load(read(NERF_FILE)?, device)
                    .map_err(|e| invalid(&nerf_path, e))?;
                *nerf = nerf.clone().load_record(record);
                let optimizer_path = folder.join(OPTIMIZER_FILE);
                let fresh = generator.config.optimizer.init::<B, Nerf<B>>();
                let old = std::mem::replace(optimizer, fresh);
                *optimizer = old
                    .load_state_bytes(read(OPTIMIZER_FILE)?, device)
                    .map_err(|e| invalid(&optimizer_path, e))?;
            }
            SceneState::Gaussians(scene) => {
                let path = folder.join(GAUSSIANS_FILE);
                load_gaussians(scene, &read(GAUSSIANS_FILE)?, device)
                    .map_err(|e| invalid(&path, e))?;
            }
            SceneState::Textured(_) => unreachable!("a new generator starts in stage 1"),
        }
        Ok(())
    }
}

/// The scene a checkpoint holds, without its optimiser state.
pub(super) enum SavedScene<B: EngineAutodiffBackend> {
    /// The NeRF's parameters.
    Nerf(Nerf<B>),
    /// The Gaussians.
    Gaussians(Gaussians<B::InnerBackend>),
}

/// The scene of the checkpoint `folder`, whose config is `config` (an edit's source).
pub(super) fn read_scene<B: EngineAutodiffBackend>(
    folder: &Path,
    config: &GenerateConfig,
    device: &B::Device,
) -> Result<SavedScene<B>, GenerateError> {
    let read = |file: &str| {
        let path = folder.join(file);
        std::fs::read(&path).map_err(io("read", &path))
    };
    match config.scene {
        SceneKind::Nerf => {
            let path = folder.join(NERF_FILE);
            let record: <Nerf<B> as Module<B>>::Record = recorder()
                .load(read(NERF_FILE)?, device)
                .map_err(|e| invalid(&path, e))?;
            // Lazy parameters: the fresh NeRF's random values are never drawn.
            let nerf = config.nerf.init::<B>(device).load_record(record);
            Ok(SavedScene::Nerf(nerf))
        }
        SceneKind::Gaussians => {
            let path = folder.join(GAUSSIANS_FILE);
            let bytes = read(GAUSSIANS_FILE)?;
            let file = SafeTensors::deserialize(&bytes).map_err(|e| invalid(&path, e))?;
            let with_rest = file.tensor("sh_rest").is_ok();
            let gaussians = read_gaussians::<B::InnerBackend>(&file, "", with_rest, device)
                .map_err(|e| invalid(&path, e))?;
            Ok(SavedScene::Gaussians(gaussians))
        }
    }
}

/// One named tensor on its way into `gaussians.safetensors`: dtype, shape, little-endian bytes.
type Entry = (String, Dtype, Vec<usize>, Vec<u8>);

fn f32_entry(name: String, shape: Vec<usize>, values: &[f32]) -> Entry {
    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    (name, Dtype::F32, shape, bytes)
}

fn tensor_entry<B: Backend, const D: usize>(name: String, t: &Tensor<B, D>) -> Entry {
    let values = t
        .clone()
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("converted to f32");
    f32_entry(name, t.dims().to_vec(), &values)
}

/// The tensors of `g`, named `{prefix}{attribute}`.
fn gaussian_entries<B: Backend>(prefix: &str, g: &Gaussians<B>) -> Vec<Entry> {
    let mut entries = vec![
        tensor_entry(format!("{prefix}means"), &g.means),
        tensor_entry(format!("{prefix}log_scales"), &g.log_scales),
        tensor_entry(format!("{prefix}rotations"), &g.rotations),
        tensor_entry(format!("{prefix}opacity_logits"), &g.opacity_logits),
        tensor_entry(format!("{prefix}sh_dc"), &g.sh_dc),
    ];
    if let Some(rest) = &g.sh_rest {
        entries.push(tensor_entry(format!("{prefix}sh_rest"), rest));
    }
    entries
}

/// `gaussians.safetensors` of `scene` (layout in the module docs).
fn gaussian_bytes<B: EngineAutodiffBackend>(scene: &GaussianScene<B>) -> Result<Vec<u8>, String> {
    let [first, second] = scene.adam.moments();
    let (grad_sum, seen, max_radius) = scene.stats.parts();
    let n = grad_sum.len();
    let mut entries = gaussian_entries("", &scene.params);
    entries.extend(gaussian_entries("exp_avg.", first));
    entries.extend(gaussian_entries("exp_avg_sq.", second));
    entries.push(f32_entry("densify.grad_sum".into(), vec![n], grad_sum));
    entries.push((
        "densify.seen".into(),
        Dtype::U32,
        vec![n],
        seen.iter().flat_map(|v| v.to_le_bytes()).collect(),
    ));
    entries.push(f32_entry("densify.max_radius".into(), vec![n], max_radius));
    let views = entries
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|view| (name.as_str(), view))
                .map_err(|e| format!("tensor `{name}`: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = HashMap::from([
        ("adam_step".to_string(), scene.adam.steps().to_string()),
        (
            "last_densify".to_string(),
            serde_json::to_string(&scene.last_densify).expect("the report serialises"),
        ),
    ]);
    safetensors::serialize(views, Some(metadata)).map_err(|e| e.to_string())
}

/// The values of tensor `name`, checked to be `dtype` with `rank` dimensions.
pub(super) fn read_values<T>(
    file: &SafeTensors,
    name: &str,
    dtype: Dtype,
    rank: usize,
    from_le: fn([u8; 4]) -> T,
) -> Result<(Vec<T>, Vec<usize>), String> {
    let view = file
        .tensor(name)
        .map_err(|_| format!("tensor `{name}` is missing"))?;
    if view.dtype() != dtype || view.shape().len() != rank {
        return Err(format!(
            "tensor `{name}` is {:?} {:?}, expected {dtype:?} of rank {rank}",
            view.dtype(),
            view.shape()
        ));
    }
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| from_le(b.try_into().expect("chunks of 4")))
        .collect();
    Ok((values, view.shape().to_vec()))
}

fn read_tensor<B: Backend, const D: usize>(
    file: &SafeTensors,
    name: &str,
    device: &B::Device,
) -> Result<Tensor<B, D>, String> {
    let (values, shape) = read_values(file, name, Dtype::F32, D, f32::from_le_bytes)?;
    Ok(Tensor::from_data(TensorData::new(values, shape), device))
}

/// The Gaussians named `{prefix}{attribute}`, with `sh_rest` where `with_rest`.
fn read_gaussians<B: Backend>(
    file: &SafeTensors,
    prefix: &str,
    with_rest: bool,
    device: &B::Device,
) -> Result<Gaussians<B>, String> {
    let read = |attribute: &str| read_tensor::<B, 2>(file, &format!("{prefix}{attribute}"), device);
    let g = Gaussians {
        means: read("means")?,
        log_scales: read("log_scales")?,
        rotations: read("rotations")?,
        opacity_logits: read("opacity_logits")?,
        sh_dc: read("sh_dc")?,
        sh_rest: if with_rest {
            Some(read_tensor(file, &format!("{prefix}sh_rest"), device)?)
        } else {
            None
        },
    };
    g.check_shapes().map_err(|e| format!("{prefix}{e}"))?;
    Ok(g)
}

fn shapes<B: Backend>(g: &Gaussians<B>) -> Vec<Vec<usize>> {
    let mut shapes = vec![
        g.means.dims().to_vec(),
        g.log_scales.dims().to_vec(),
        g.rotations.dims().to_vec(),
        g.opacity_logits.dims().to_vec(),
        g.sh_dc.dims().to_vec(),
    ];
    shapes.extend(g.sh_rest.as_ref().map(|r| r.dims().to_vec()));
    shapes
}

/// Restores `scene` (fresh from the checkpoint's config) from `gaussians.safetensors`.
fn load_gaussians<B: EngineAutodiffBackend>(
    scene: &mut GaussianScene<B>,
    bytes: &[u8],
    device: &B::Device,
) -> Result<(), String> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let metadata = header.metadata().clone().unwrap_or_default();
    // The config decides the SH degree; a file with another one belongs to another run.
    let with_rest = scene.params.sh_rest.is_some();
    let params = read_gaussians::<B::InnerBackend>(&file, "", with_rest, device)?;
    let n = params.len();
    let sh_degree = scene.params.sh_degree();
    if params.sh_degree() != sh_degree {
        return Err(format!(
            "spherical-harmonics degree {}, the config's is {sh_degree}",
            params.sh_degree()
        ));
    }
    let first = read_gaussians(&file, "exp_avg.", with_rest, device)?;
    let second = read_gaussians(&file, "exp_avg_sq.", with_rest, device)?;
    for (prefix, moments) in [("exp_avg.", &first), ("exp_avg_sq.", &second)] {
        if shapes(moments) != shapes(&params) {
            return Err(format!(
                "{prefix}* shapes {:?} differ from the parameters' {:?}",
                shapes(moments),
                shapes(&params)
            ));
        }
    }
    let vector = |name: &str| -> Result<Vec<f32>, String> {
        let (values, _) = read_values(&file, name, Dtype::F32, 1, f32::from_le_bytes)?;
        Ok(values)
    };
    let (seen, _) = read_values(&file, "densify.seen", Dtype::U32, 1, u32::from_le_bytes)?;
    let (grad_sum, max_radius) = (vector("densify.grad_sum")?, vector("densify.max_radius")?);
    if [grad_sum.len(), seen.len(), max_radius.len()] != [n; 3] {
        return Err(format!(
            "densify.* hold {}, {} and {} entries for {n} Gaussians",
            grad_sum.len(),
            seen.len(),
            max_radius.len()
        ));
    }
    let stats = DensifyStats::from_parts(grad_sum, seen, max_radius).expect("lengths checked");
    // Everything was read above (a missing tensor is an error there); nothing may be left
    // over unread.
    let attributes = 5 + usize::from(with_rest);
    if file.len() != 3 * attributes + 3 {
        let mut names = file.names();
        names.sort();
        return Err(format!(
            "{} tensors, expected {}: {names:?}",
            file.len(),
            3 * attributes + 3
        ));
    }
    let adam_step = metadata
        .get("adam_step")
        .and_then(|s| s.parse::<usize>().ok())
        .ok_or("metadata `adam_step` is missing or not a count")?;
    let last_densify = match metadata.get("last_densify") {
        Some(json) => {
            serde_json::from_str(json).map_err(|e| format!("metadata `last_densify`: {e}"))?
        }
        None => return Err("metadata `last_densify` is missing".into()),
    };
    // Rates, betas and epsilon stay those of the config.
    scene.adam = scene.adam.clone().with_state(first, second, adam_step);
    scene.params = params;
    scene.stats = stats;
    scene.last_densify = last_densify;
    Ok(())
}
