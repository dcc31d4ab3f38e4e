//! The generation loop, headless: [`GenerateConfig`] (every knob, presets, TOML) and
//! [`Generator`] (step by step, progress events, snapshots, cancellation).

pub mod config;
pub mod generator;
pub mod job;

pub use config::{GenerateConfig, PRESETS};
pub use generator::{
    GenerateError, GenerateEvent, Generator, Progress, StopReason, load_guidance, slug,
};
pub use job::{GenerationJob, JobEvent, JobReport, JobRequest, PreviewMesh};
