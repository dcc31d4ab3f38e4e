//! Renderers: scene representation + cameras -> images, differentiably.

pub mod recompute;
pub mod splat;
pub mod volume;

pub use recompute::DeferredRender;
pub use splat::{SplatBackend, SplatRenderer};
pub use volume::{RenderOutput, VolumeRenderer, VolumeRendererConfig};
