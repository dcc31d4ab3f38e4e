//! Renderers: scene representation + cameras -> images, differentiably.

pub mod volume;

pub use volume::{RenderOutput, VolumeRenderer, VolumeRendererConfig};
