//! The rasteriser on CubeCL backends (wgpu, CUDA): the same algorithm as [`super::host`],
//! every step a device kernel, so Gaussians and images stay on the device. Only the number of
//! tile-list entries (4 bytes) is read back per forward, to size the list buffers.
//!
//! Steps: `bin` (tile rectangles, counts, scan, list fill), `sort` (per-list depth sort),
//! `forward` (compositing), `backward` (gradient).

mod backward;
mod bin;
mod forward;
mod rules;
mod sort;

use std::sync::Arc;

use burn::tensor::DType;
use burn_cubecl::ops::numeric::{empty_device_dtype, ones_client, zeros_client};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, kernel::into_contiguous};
use cubecl::prelude::*;

use super::project_host::ViewConstants;
use super::project_op::{ProjectBackend, ProjectState, ProjectTensors};
use super::rasterize::SplatBackend;
use super::{OUT, RasterSize, TILE};
use crate::cube_atomics::grid;

/// Gaussians per shared-memory batch: one per unit of a 16x16 tile cube.
pub(crate) const BATCH: usize = TILE * TILE;

/// Sizes every kernel needs, as kernel scalars.
#[derive(CubeLaunch, CubeType, Clone, Copy, Debug)]
pub(crate) struct Geometry {
    /// Views.
    pub views: u32,
    /// Gaussians per view.
    pub n: u32,
    /// Image width.
    pub width: u32,
    /// Image height.
    pub height: u32,
    /// Tiles along x.
    pub tiles_x: u32,
    /// Tiles per view.
    pub tiles: u32,
}

impl Geometry {
    fn new(size: RasterSize, n: usize) -> Self {
        let (tiles_x, tiles_y) = size.tiles();
        Self {
            views: size.views as u32,
            n: n as u32,
            width: size.width as u32,
            height: size.height as u32,
            tiles_x: tiles_x as u32,
            tiles: (tiles_x * tiles_y) as u32,
        }
    }

    /// The sizes as a kernel launch argument.
    fn arg<R: Runtime>(&self) -> GeometryLaunch<R> {
        GeometryLaunch::new(
            self.views,
            self.n,
            self.width,
            self.height,
            self.tiles_x,
            self.tiles,
        )
    }
}

/// A fresh u32 buffer of `len` elements on `like`'s device.
fn u32_tensor<R: CubeRuntime>(like: &CubeTensor<R>, len: usize) -> CubeTensor<R> {
    empty_device_dtype(
        like.client.clone(),
        like.device.clone(),
        [len].into(),
        DType::U32,
    )
}

/// One unit per element, 256 per cube, spread over two grid dimensions when there are more
/// cubes than one dimension takes.
fn elementwise(len: usize) -> (CubeCount, CubeDim) {
    let cubes = len.div_ceil(256).max(1) as u32;
    (grid(cubes), CubeDim::new_1d(256))
}

/// One cube per (view, tile) list, 1D/2D as [`grid`] (the kernel flattens the position).
fn list_cubes(geo: Geometry) -> CubeCount {
    grid(geo.views * geo.tiles)
}

/// One cube per tile (x) and view (y).
fn tile_cubes(geo: Geometry) -> CubeCount {
    CubeCount::new_2d(geo.tiles, geo.views)
}

/// Whether the backward on `device` accumulates with native float atomics (true) or with
/// the compare-and-swap fallback (false).
pub fn native_float_atomics<R: CubeRuntime>(device: &R::Device) -> bool {
    crate::cube_atomics::native_float_atomics(&R::client(device))
}

/// What the backward needs from the forward, all on the device.
#[derive(Debug)]
pub struct CubeSplatState<R: CubeRuntime> {
    /// `[views * tiles + 1]` u32 list offsets.
    pub offsets: CubeTensor<R>,
    /// Sorted tile lists, u32 Gaussian indices within their view.
    pub ids: CubeTensor<R>,
    /// Final transmittance per pixel.
    pub final_t: CubeTensor<R>,
    /// Per pixel, list entries walked up to and including the last contributor (u32).
    pub last: CubeTensor<R>,
    /// No list entries at all: the image is empty and the gradient zero.
    pub empty: bool,
}

/// The device kernels take the projection from tensor ops, which stay on the device.
impl<R: CubeRuntime, BT: BoolElement> ProjectBackend for CubeBackend<R, f32, i32, BT> {
    fn host_projection() -> bool {
        false
    }

    fn splat_project(
        _inputs: ProjectTensors<Self>,
        _views: &[ViewConstants],
    ) -> Option<(CubeTensor<R>, Arc<ProjectState>)> {
        None
    }

    fn splat_project_backward(_state: &ProjectState, _grad: CubeTensor<R>) -> [CubeTensor<R>; 6] {
        unreachable!("splat_project never answers Some on a CubeCL backend")
    }
}

impl<R: CubeRuntime, BT: BoolElement> SplatBackend for CubeBackend<R, f32, i32, BT> {
    type SplatState = Arc<CubeSplatState<R>>;

    fn splat_forward(
        gaussians: CubeTensor<R>,
        size: RasterSize,
    ) -> (CubeTensor<R>, Self::SplatState) {
        let n = gaussians.meta.shape()[1];
        let geo = Geometry::new(size, n);
        let gaussians = into_contiguous(gaussians);
        let (client, device) = (gaussians.client.clone(), gaussians.device.clone());
        let pixels = size.views * size.pixels();
        let bins = (n > 0).then(|| bin::bin(&gaussians, geo));
        match bins {
            Some(bins) if bins.entries > 0 => {
                sort::sort(&bins.offsets, &bins.keys, &bins.ids, geo);
                let (out, final_t, last) =
                    forward::forward(&gaussians, &bins.offsets, &bins.ids, geo);
                let state = CubeSplatState {
                    offsets: bins.offsets,
                    ids: bins.ids,
                    final_t,
                    last,
                    empty: false,
                };
                (out, Arc::new(state))
            }
            _ => {
                // Nothing overlaps any tile: transparent black, transmittance one.
                let out = zeros_client(
                    client.clone(),
                    device.clone(),
                    [pixels, OUT].into(),
                    DType::F32,
                );
                let state = CubeSplatState {
                    offsets: zeros_client(client.clone(), device.clone(), [1].into(), DType::U32),
                    ids: zeros_client(client.clone(), device.clone(), [1].into(), DType::U32),
                    final_t: ones_client(
                        client.clone(),
                        device.clone(),
                        [pixels].into(),
                        DType::F32,
                    ),
                    last: zeros_client(client, device, [pixels].into(), DType::U32),
                    empty: true,
                };
                (out, Arc::new(state))
            }
        }
    }

    fn splat_backward(
        gaussians: CubeTensor<R>,
        grad: CubeTensor<R>,
        state: &Self::SplatState,
        size: RasterSize,
    ) -> CubeTensor<R> {
        let shape = gaussians.meta.shape().clone();
        if state.empty {
            return zeros_client(
                gaussians.client.clone(),
                gaussians.device.clone(),
                shape,
                DType::F32,
            );
        }
        let geo = Geometry::new(size, shape[1]);
        let gaussians = into_contiguous(gaussians);
        let grad = into_contiguous(grad);
        backward::backward(
            &gaussians,
            &state.offsets,
            &state.ids,
            &state.final_t,
            &state.last,
            &grad,
            geo,
        )
    }
}
