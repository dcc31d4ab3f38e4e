//! Gaussians + cameras -> [`RenderOutput`], the interface the NeRF's volume renderer has:
//! camera-major pixels, colour over a background, opacity and depth.

use burn::tensor::{Tensor, backend::Backend};

use super::rasterize::SplatBackend;
use super::{OUT, PACK, RasterSize, footprint_radius, project, rasterize};
use crate::render::RenderOutput;
use crate::scene::camera::Camera;
use crate::scene::gaussians::Gaussians;

/// Why a batch could not be rendered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SplatError {
    /// No cameras.
    #[error("splat render: no cameras")]
    NoCameras,
    /// Cameras of different sizes in one batch.
    #[error(
        "splat render: camera {index} is {got:?} pixels but camera 0 is {want:?}; one batch shares one image size"
    )]
    MixedSizes {
        /// The first camera that differs.
        index: usize,
        /// Its size.
        got: (u32, u32),
        /// Camera 0's size.
        want: (u32, u32),
    },
    /// Background of the wrong shape.
    #[error(
        "splat render: background has shape {0:?}; expected [1, 3] or [views * height * width, 3]"
    )]
    Background(Vec<usize>),
}

/// One rendered batch.
#[derive(Debug, Clone)]
pub struct SplatOutput<B: Backend> {
    /// Colour over the background, opacity and depth, `[views * height * width, _]`.
    pub render: RenderOutput<B>,
    /// The per-view projected Gaussians fed to the rasteriser, `[views, N, PACK]`.
    pub projected: Tensor<B, 3>,
    /// The zero tensor added to the screen-space means, when asked for: its gradient is the
    /// screen-space gradient densification accumulates.
    pub mean2d_probe: Option<Tensor<B, 3>>,
    /// The batch's size.
    pub size: RasterSize,
}

impl<B: Backend> SplatOutput<B> {
    /// Screen-space radius of every Gaussian in every view, pixels (0 where culled),
    /// `[views][N]`, from the projected values.
    pub fn radii(&self) -> Vec<Vec<f32>> {
        let [views, n, _] = self.projected.dims();
        let data: Vec<f32> = self
            .projected
            .clone()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        (0..views)
            .map(|v| {
                (0..n)
                    .map(|i| footprint_radius(&data[(v * n + i) * PACK..][..PACK]).unwrap_or(0.0))
                    .collect()
            })
            .collect()
    }
}

/// The Gaussian splatting renderer.
#[derive(Debug, Clone, Copy, Default)]
pub struct SplatRenderer;

impl SplatRenderer {
    /// Renders `gaussians` from `cameras` (one image size) over `background` (`[1, 3]` or one
    /// colour per pixel). With `probe`, see [`SplatOutput::mean2d_probe`].
    pub fn render<B: SplatBackend>(
        &self,
        gaussians: &Gaussians<B>,
        cameras: &[Camera],
        background: Tensor<B, 2>,
        probe: bool,
    ) -> Result<SplatOutput<B>, SplatError> {
        let first = cameras.first().ok_or(SplatError::NoCameras)?;
        let want = (first.width, first.height);
        if let Some(index) = cameras.iter().position(|c| (c.width, c.height) != want) {
            let c = &cameras[index];
            return Err(SplatError::MixedSizes {
                index,
                got: (c.width, c.height),
                want,
            });
        }
        let size = RasterSize {
            views: cameras.len(),
            width: first.width as usize,
            height: first.height as usize,
        };
        let rays = size.views * size.pixels();
        let bg = background.dims();
        if bg[1] != 3 || (bg[0] != 1 && bg[0] != rays) {
            return Err(SplatError::Background(bg.to_vec()));
        }
        let device = gaussians.means.device();
        let n = gaussians.len();
        let mean2d_probe =
            probe.then(|| Tensor::<B, 3>::zeros([size.views, n, 2], &device).require_grad());
        let (pixels, projected) = if n == 0 {
            // Nothing to splat: the background shows everywhere.
            let empty = Tensor::<B, 3>::zeros([size.views, 0, PACK], &device);
            (Tensor::<B, 2>::zeros([rays, OUT], &device), empty)
        } else {
            let projected = project(gaussians, cameras, mean2d_probe.clone());
            (rasterize(projected.clone(), size), projected)
        };
        let rgb = pixels.clone().narrow(1, 0, 3);
        let depth = pixels.clone().narrow(1, 3, 1);
        let opacity = pixels.narrow(1, 4, 1);
        let rgb = rgb + background * (opacity.clone().neg().add_scalar(1.0));
        Ok(SplatOutput {
            render: RenderOutput {
                rgb,
                opacity,
                depth,
            },
            projected,
            mean2d_probe,
            size,
        })
    }
}
