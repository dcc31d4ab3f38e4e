//! `rewardsds`: text prompt to game-ready 3D asset (`.glb`) with RewardSDS (reward-weighted
//! score distillation, arXiv 2503.09601) on burn, on the CPU, wgpu or CUDA.
//!
//! This facade re-exports the two crates that do the work:
//! - [`engine`] (`rewardsds_engine`): everything that makes an asset, without Bevy: the
//!   [`GenerateConfig`](engine::generate::GenerateConfig) and its presets, the
//!   [`Generator`](engine::generate::Generator) loop (SDS / RewardSDS, NeRF or Gaussians,
//!   checkpoints, editing with DDS), the model ports, mesh extraction and the `.glb` writer;
//! - `plugin` (`bevy_rewardsds`, cargo feature `plugin`): the Bevy plugin, `GenerateAsset` and
//!   its progress, previews and results.
//!
//! The `rewardsds` command (cargo feature `cli`, on by default) runs the engine headless:
//! `rewardsds generate --prompt "a blue cone on top of an orange cylinder"`. The user guide is
//! in the repository's `docs/` (getting started, real models, the plugin, the config
//! reference, benchmarks, architecture).

#![deny(missing_docs)]

pub use rewardsds_engine as engine;

/// The Bevy plugin (cargo feature `plugin`).
#[cfg(feature = "plugin")]
pub use bevy_rewardsds as plugin;
