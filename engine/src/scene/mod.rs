//! Differentiable 3D scene representations and the cameras that look at them.

pub mod camera;
pub mod gaussians;
pub mod nerf;

pub use camera::{Camera, CameraError, CameraSampler, OrbitConfig, Rays};
pub use gaussians::{Gaussians, GaussiansConfig};
pub use nerf::{Nerf, NerfConfig};
