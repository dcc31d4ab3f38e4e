//! Checkpoints: everything a generation needs to continue exactly where it stopped.
//!
//! A checkpoint folder holds:
//! ```text
//! <dir>/latest                       names the newest complete checkpoint ("step-0000120")
//! <dir>/step-0000120/config.toml     the exact GenerateConfig
//! <dir>/step-0000120/state.json      steps done, seconds spent, format version
//! <dir>/step-0000120/nerf.mpk        the NeRF parameters
//! <dir>/step-0000120/optimizer.mpk   Adam's moments and step counts, per parameter
//! ```
//! Both `.mpk` files are burn records (named MessagePack, full precision). Not safetensors:
//! burn keys the optimiser state by parameter id, and burn's module record is what keeps
//! those ids, so moments and parameters meet again on load.
//!
//! Writing is atomic: a checkpoint is assembled in a hidden temporary folder, renamed into
//! place, and only then named in `latest` (itself replaced by a rename); older checkpoints go
//! after that. Whenever the process stops, `latest` names a complete checkpoint or is absent.
//!
//! There is no RNG state to save: every random draw of step `k` (cameras, ray jitter,
//! timestep, noises) is seeded from `(seed, k)`, so the step count is the RNG state.

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};

use super::config::GenerateConfig;
use super::generator::SceneState;
use super::generator::{GenerateError, Generator, load_guidance};
use crate::backend::EngineAutodiffBackend;
use crate::export::write_atomic;
use crate::guidance::Guidance;
use crate::scene::nerf::Nerf;

/// The file in a checkpoint folder that names the newest complete checkpoint.
pub const LATEST: &str = "latest";
/// Version of the layout above; bumped when it changes.
pub const FORMAT_VERSION: u32 = 1;

const CONFIG_FILE: &str = "config.toml";
const STATE_FILE: &str = "state.json";
const NERF_FILE: &str = "nerf.mpk";
const OPTIMIZER_FILE: &str = "optimizer.mpk";

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
    /// Checkpoints cover NeRF scenes so far.
    #[error(
        "checkpoints are not implemented for {0} scenes yet; set checkpoint_every = 0 or use the NeRF"
    )]
    Unsupported(&'static str),
    /// The parameters are not finite: such a state is never saved over a good one.
    #[error("not checkpointing step {step}: a NeRF parameter is NaN or infinite")]
    NonFinite {
        /// Steps done.
        step: usize,
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

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError {
    let path = path.to_path_buf();
    move |source| CheckpointError::Io {
        action,
        path,
        source,
    }
}

fn invalid(path: &Path, reason: impl ToString) -> CheckpointError {
    CheckpointError::Invalid {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn recorder() -> NamedMpkBytesRecorder<FullPrecisionSettings> {
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

impl<B: EngineAutodiffBackend> Generator<B> {
    /// Writes a checkpoint of the current step into `dir` (created if missing), atomically,
    /// and returns its folder; older checkpoints in `dir` are removed once it is complete.
    /// Refuses (leaving the previous checkpoint) when a parameter is not finite.
    pub fn save_checkpoint(&mut self, dir: &Path) -> Result<PathBuf, GenerateError> {
        let SceneState::Nerf {
            nerf, optimizer, ..
        } = &self.scene
        else {
            return Err(CheckpointError::Unsupported("Gaussian").into());
        };
        let mut check = NonFiniteParams(0);
        nerf.visit(&mut check);
        if check.0 > 0 {
            return Err(CheckpointError::NonFinite { step: self.step }.into());
        }
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let name = format!("step-{:07}", self.step);
        let target = dir.join(&name);

        // 1. assemble in a hidden temporary folder (removed on any error)
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempdir_in(dir)
            .map_err(io("create a temporary folder in", dir))?;
        let nerf_bytes = Recorder::<B>::record(&recorder(), nerf.clone().into_record(), ())
            .map_err(|e| invalid(&staging.path().join(NERF_FILE), e))?;
        let optimizer_bytes = optimizer
            .state_bytes()
            .map_err(|e| invalid(&staging.path().join(OPTIMIZER_FILE), e))?;
        let state = CheckpointState {
            format: FORMAT_VERSION,
            step: self.step,
            elapsed_seconds: self.elapsed,
        };
        let state_json = serde_json::to_string_pretty(&state).expect("the state serialises");
        for (file, bytes) in [
            (CONFIG_FILE, self.config.to_toml().into_bytes()),
            (STATE_FILE, state_json.into_bytes()),
            (NERF_FILE, nerf_bytes),
            (OPTIMIZER_FILE, optimizer_bytes),
        ] {
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
            return Err(io("rename a checkpoint into", &target)(e).into());
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
        self.last_checkpoint = Some(target.clone());
        Ok(target)
    }

    /// Continues the generation checkpointed in `dir`: its exact config, the prior and reward
    /// it names, the NeRF, the optimiser state and the step count. Later checkpoints of
    /// [`run`](Self::run) go to `dir` too.
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
        let read = |file: &str| {
            let path = folder.join(file);
            std::fs::read(&path).map_err(io("read", &path))
        };
        let state_path = folder.join(STATE_FILE);
        let state: CheckpointState =
            serde_json::from_slice(&read(STATE_FILE)?).map_err(|e| invalid(&state_path, e))?;
        if state.format != FORMAT_VERSION {
            return Err(invalid(
                &state_path,
                format!(
                    "format {} (this build reads {FORMAT_VERSION})",
                    state.format
                ),
            )
            .into());
        }
        if state.step > config.steps {
            return Err(invalid(
                &state_path,
                format!(
                    "step {} is past the config's {} steps",
                    state.step, config.steps
                ),
            )
            .into());
        }

        let mut generator = Self::new(config, guidance, device)?;
        let fresh_optimizer = generator.config.optimizer.init::<B, Nerf<B>>();
        let SceneState::Nerf {
            nerf, optimizer, ..
        } = &mut generator.scene
        else {
            return Err(CheckpointError::Unsupported("Gaussian").into());
        };
        let nerf_path = folder.join(NERF_FILE);
        let record: <Nerf<B> as Module<B>>::Record = recorder()
            .load(read(NERF_FILE)?, device)
            .map_err(|e| invalid(&nerf_path, e))?;
        *nerf = nerf.clone().load_record(record);
        let optimizer_path = folder.join(OPTIMIZER_FILE);
        let old = std::mem::replace(optimizer, fresh_optimizer);
        *optimizer = old
            .load_state_bytes(read(OPTIMIZER_FILE)?, device)
            .map_err(|e| invalid(&optimizer_path, e))?;
        generator.step = state.step;
        generator.elapsed = state.elapsed_seconds;
        generator.checkpoint_dir = Some(dir.to_path_buf());
        generator.last_checkpoint = Some(folder);
        Ok(generator)
    }
}
