//! Procedural scenes with known geometry: the ground truth for fitting tests, and the world
//! the Tiny World prior is trained on.

pub mod scene;
pub mod sdf;

pub use scene::{Color, Lighting, Object, SdfScene};
pub use sdf::Shape;
