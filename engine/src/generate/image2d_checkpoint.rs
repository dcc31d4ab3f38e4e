//! Checkpoints of a 2D run (SDS / RewardSDS, DDS / RewardDDS, VSD / RewardVSD), in the 3D
//! layout ([`super::checkpoint`]): `latest` names the newest `step-NNNNNNN/` folder, written
//! atomically, holding
//! ```text
//! config.toml          the exact Image2dConfig
//! state.json           steps done, seconds spent, format version
//! canvas.mpk           the image (a burn record, keeping the parameter's id)
//! optimizer.mpk        Adam's state for it
//! vsd_lora.mpk, vsd_optimizer.mpk   with VSD: the LoRA's trained tensors and AdamW state
//! ```
//! As in 3D every random draw of step `k` is seeded from `(seed, k)`: the step count is the
//! random state, and a resumed run repeats the uninterrupted one bit for bit.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::record::Recorder;

use super::checkpoint::{
    CONFIG_FILE, CheckpointState, FORMAT_VERSION, OPTIMIZER_FILE, STATE_FILE, commit_checkpoint,
    invalid, io, latest_checkpoint, read_state, recorder, restore_vsd, vsd_files,
};
use super::generator::GenerateError;
use super::image2d::{Canvas, Distillation, Image2dConfig, Image2dGenerator};
use crate::backend::EngineAutodiffBackend;
use crate::guidance::VsdLoRA;
use crate::models::AnyReward;

const CANVAS_FILE: &str = "canvas.mpk";

impl<B: EngineAutodiffBackend> Image2dGenerator<B> {
    /// Makes [`run`](Self::run) write a checkpoint into `dir` every `every` steps (at least 1)
    /// and after the last one.
    pub fn checkpoint_to(&mut self, dir: impl Into<PathBuf>, every: usize) -> &mut Self {
        self.checkpoints = Some((dir.into(), every.max(1)));
        self
    }

    fn vsd(&self) -> Option<&VsdLoRA<B>> {
        match &self.distillation {
            Distillation::Sds(guidance) => guidance.vsd(),
            Distillation::Dds { .. } => None,
        }
    }

    /// Writes a checkpoint of the current step into `dir` (created if missing), atomically;
    /// older checkpoints in `dir` go once it is complete.
    pub fn save_checkpoint(&mut self, dir: &Path) -> Result<PathBuf, GenerateError> {
        let target = dir.join(format!("step-{:07}", self.step));
        let canvas = Recorder::<B>::record(&recorder(), self.canvas.clone().into_record(), ())
            .map_err(|e| invalid(&target.join(CANVAS_FILE), e))?;
        let optimizer = self
            .optimizer
            .state_bytes()
            .map_err(|e| invalid(&target.join(OPTIMIZER_FILE), e))?;
        let state = CheckpointState {
            format: FORMAT_VERSION,
            step: self.step,
            elapsed_seconds: self.elapsed,
        };
        let mut files = vec![
            (CONFIG_FILE, self.config.to_toml().into_bytes()),
            (
                STATE_FILE,
                serde_json::to_vec_pretty(&state).expect("the state serialises"),
            ),
            (CANVAS_FILE, canvas),
            (OPTIMIZER_FILE, optimizer),
        ];
        if let Some(lora) = self.vsd() {
            files.extend(vsd_files(lora, &target)?);
        }
        Ok(commit_checkpoint(dir, self.step, files)?)
    }
}

impl<B: EngineAutodiffBackend> Image2dGenerator<B>
where
    AnyReward<B::InnerBackend>: Send + Sync,
{
    /// Continues the 2D run checkpointed in `dir`: its exact config (prior, reward and, when
    /// editing, the source image loaded again), the image, Adam's state, VSD's LoRA and the
    /// step count. Later checkpoints of [`run`](Self::run) go to `dir` every `every` steps.
    pub fn resume(dir: &Path, every: usize, device: &B::Device) -> Result<Self, GenerateError> {
        let folder = latest_checkpoint(dir)?;
        let read = |file: &str| {
            let path = folder.join(file);
            std::fs::read(&path).map_err(io("read", &path))
        };
        let config_path = folder.join(CONFIG_FILE);
        let text = String::from_utf8(read(CONFIG_FILE)?).map_err(|e| invalid(&config_path, e))?;
        let config = Image2dConfig::from_toml(&text).map_err(|e| invalid(&config_path, e))?;
        let state = read_state(&folder, config.steps)?;

        let mut generator = Self::load(config, device)?;
        let canvas_path = folder.join(CANVAS_FILE);
        let record: <Canvas<B> as Module<B>>::Record = recorder()
            .load(read(CANVAS_FILE)?, device)
            .map_err(|e| invalid(&canvas_path, e))?;
        let canvas = generator.canvas.clone().load_record(record);
        if canvas.pixels.dims() != generator.canvas.pixels.dims() {
            return Err(invalid(
                &canvas_path,
                format!(
                    "holds an image of {:?}, the config makes {:?}",
                    canvas.pixels.dims(),
                    generator.canvas.pixels.dims()
                ),
            )
            .into());
        }
        generator.canvas = canvas;
        let optimizer_path = folder.join(OPTIMIZER_FILE);
        let fresh = generator.config.optimizer.init::<B, Canvas<B>>();
        let old = std::mem::replace(&mut generator.optimizer, fresh);
        generator.optimizer = old
            .load_state_bytes(read(OPTIMIZER_FILE)?, device)
            .map_err(|e| invalid(&optimizer_path, e))?;
        if let Distillation::Sds(guidance) = &mut generator.distillation
            && let Some(lora) = guidance.vsd_mut()
        {
            restore_vsd(lora, &folder)?;
        }
        generator.step = state.step;
        generator.elapsed = state.elapsed_seconds;
        generator.checkpoints = Some((dir.to_path_buf(), every.max(1)));
        Ok(generator)
    }
}
