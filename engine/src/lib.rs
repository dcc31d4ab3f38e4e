//! # rewardsds engine
//!
//! The Bevy-free core of rewardsds: everything that turns a text prompt into a 3D asset.
//!
//! - [`backend`]: choose cpu (ndarray), wgpu or cuda at run time.
//! - [`host_batch`]: one chunk of a batch per CPU core on host backends.
//! - [`host_memory`]: the C allocator keeps freed memory for the host backends' next step.
//! - [`scene`]: cameras and differentiable scene representations (hash-grid NeRF).
//! - [`render`]: differentiable renderers (volume rendering).
//! - [`fit`]: photometric fitting of a NeRF to posed images (renderer check, `fit_scene`).
//! - [`optim`]: Adam/AdamW with a learning rate per parameter group.
//! - [`models`]: CLIP, UNet, VAE, schedulers, reward heads (diffusers/transformers ports).
//! - [`weights`]: model folders and safetensors loading.
//! - [`cost`]: FLOPs, predicted GPU time and peak memory of a run, before it runs.
//! - [`generate`]: the generation loop (config, progress, snapshots).
//! - [`guidance`]: SDS and RewardSDS over a diffusion prior.
//! - [`mesh`]: surface extraction from density fields.
//! - [`export`]: glTF binary writer.
//! - [`tiny_world`]: the built-in offline prior's world, captions and training.
//! - [`procedural`]: analytic SDF scenes with known answers (fitting tests, Tiny World data).
//! - [`transfer`]: copy parameters between backends.
//! - [`rgb_image`]: images on the host: PSNR, PNG, turntable strips.

#![deny(missing_docs)]

pub mod backend;
pub mod cost;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube_atomics;
pub mod export;
pub mod fit;
pub mod generate;
pub mod guidance;
pub mod host_batch;
pub mod host_memory;
pub mod mesh;
pub mod models;
pub mod optim;
pub mod procedural;
pub mod render;
pub mod rgb_image;
pub mod scene;
pub mod tiny_world;
pub mod transfer;
pub mod weights;

pub use backend::{BackendError, BackendKind, BackendTask, run_on};
/// The burn version the engine is built on, for callers that write backend-generic code.
pub use burn;
/// The math crate of the public geometry types (`Vec3`, ...).
pub use glam;
/// The image crate of the baked textures' type ([`mesh::BakedMesh::texture`]).
pub use image;
