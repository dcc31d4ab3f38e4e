//! What a generation costs before it runs: FLOPs per step and per asset of every part of a
//! step (renderer, encoder, the UNet's noise predictions, scoring, reward), the time they
//! would take on an H100 at PyTorch's measured kernel speed, and the peak memory of a step,
//! which [`memory::check_fits`] compares with what the machine has so that a config that
//! cannot fit is refused before anything is allocated.
//!
//! `cargo run --release --example cost_model` prints the table for every preset.

pub mod anchors;
pub mod flops;
pub mod memory;
pub mod models;
pub mod run;

pub use models::{CostError, CostModels, RewardArchitecture};
pub use run::{Component, RunCost, run_cost, steps_cost};
