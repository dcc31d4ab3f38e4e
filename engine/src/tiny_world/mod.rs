//! Tiny World: the built-in offline prior (see `TINY_WORLD.md` in the design notes).
//!
//! A procedural world of coloured primitives ([`captions`], [`dataset`]), a word-level
//! tokenizer ([`vocab`]), the real model architectures in tiny configurations ([`models`]),
//! sampling ([`sample`]), the judge's evaluation ([`evaluate`], per noise level [`probe`]) and
//! the shipped folder layout ([`folder`]), which the same loaders as Stable Diffusion and CLIP
//! read. Their training (`train`, with a weight average, `ema`, and the whole `recipe`) is
//! behind the cargo feature `train`: only retraining the prior needs it.

pub mod captions;
pub mod dataset;
#[cfg(feature = "train")]
pub mod ema;
pub mod evaluate;
pub mod folder;
pub mod models;
pub mod probe;
#[cfg(feature = "train")]
pub mod recipe;
pub mod sample;
pub mod shape_check;
#[cfg(feature = "train")]
pub mod train;
pub mod vocab;

pub use captions::{Composition, Item, Split};
pub use dataset::{Dataset, IMAGE_SIZE};
pub use models::ModelScale;
