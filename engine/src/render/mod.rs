//! Renderers: scene representation + cameras -> images, differentiably.

pub mod splat;
pub mod volume;

pub use splat::{SplatBackend, SplatRenderer};
pub use volume::{RenderOutput, VolumeRenderer, VolumeRendererConfig};
