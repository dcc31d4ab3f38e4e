//! The rasteriser as a custom burn operation: `[views, N, PACK]` per-view Gaussians ->
//! `[views * height * width, OUT]` pixels, with a hand-written backward registered through
//! burn's autodiff `Backward` trait.

// The host path serves the CPU backends and the fused GPU backends; a GPU build without
// `fusion` (cuda or wgpu alone, e.g. tools/gpu/build.sh) compiles it unused.
#![cfg_attr(
    not(any(feature = "cpu", feature = "flex", feature = "fusion")),
    allow(dead_code, unused_imports, unused_macros)
)]

use std::sync::Arc;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

use super::host::{self, HostState};
use super::project_host::ViewConstants;
use super::project_op::{
    ProjectBackend, ProjectState, ProjectTensors, host_project, host_project_backward,
};
use super::{OUT, PACK, RasterSize};

/// Backends that can rasterise Gaussians (and project them: [`ProjectBackend`]).
pub trait SplatBackend: ProjectBackend {
    /// What the forward leaves for the backward (tile lists, final transmittance, ...).
    type SplatState: Clone + Send + std::fmt::Debug + 'static;

    /// `gaussians [views, N, PACK]` -> `([views * height * width, OUT], state)`.
    fn splat_forward(
        gaussians: FloatTensor<Self>,
        size: RasterSize,
    ) -> (FloatTensor<Self>, Self::SplatState);

    /// Gradient of the input `[views, N, PACK]` from the output's `[views * h * w, OUT]`.
    fn splat_backward(
        gaussians: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        state: &Self::SplatState,
        size: RasterSize,
    ) -> FloatTensor<Self>;
}

/// Rasterises per-view Gaussians `[views, N, PACK]` (see [`super::PACK`]) into pixels
/// `[views * height * width, OUT]`, camera-major like [`crate::scene::camera::Rays`].
pub fn rasterize<B: SplatBackend>(gaussians: Tensor<B, 3>, size: RasterSize) -> Tensor<B, 2> {
    let [views, _, pack] = gaussians.dims();
    assert_eq!(
        pack, PACK,
        "rasterize: the last dimension must be PACK = {PACK}"
    );
    assert_eq!(
        views, size.views,
        "rasterize: {views} views but size says {}",
        size.views
    );
    let (out, _) = B::splat_forward(gaussians.into_primitive().tensor(), size);
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// A float tensor's values on the host, through `into_data` (any backend).
fn download<B: Backend>(t: FloatTensor<B>) -> Vec<f32> {
    Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t))
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("float tensor data")
}

/// [`download`] for burn-ndarray: its `into_data` copies element by element through a
/// dynamic-rank iterator whenever the array is shared (autodiff keeps the rasteriser's input
/// alive, so it always is), which cost ~10% of a CPU training step; a contiguous array is
/// one `memcpy` here.
#[cfg(feature = "cpu")]
fn download_ndarray(t: burn::backend::ndarray::NdArrayTensor) -> Vec<f32> {
    if let burn::backend::ndarray::NdArrayTensor::F32(storage) = &t {
        let view = storage.view();
        return match view.as_slice() {
            Some(values) => values.to_vec(),
            None => view.as_standard_layout().iter().copied().collect(),
        };
    }
    download::<burn::backend::NdArray<f32>>(t)
}

fn to_device<B: Backend, const D: usize>(
    data: Vec<f32>,
    dims: [usize; D],
    device: &B::Device,
) -> FloatTensor<B> {
    Tensor::<B, D>::from_data(TensorData::new(data, dims), device)
        .into_primitive()
        .tensor()
}

/// What the host kernels' backward needs: the forward's state and its input, already on the
/// host (downloading it again would cost as much as the first time).
#[derive(Debug)]
pub struct HostSplatState {
    /// Tile lists, final transmittance, last contributors.
    pub state: HostState,
    /// The input `[views, N, PACK]`, flat.
    pub gaussians: Vec<f32>,
    /// N.
    pub n: usize,
}

/// The host kernels behind any backend: download, run [`host`], upload.
fn host_forward<B: Backend>(
    gaussians: FloatTensor<B>,
    size: RasterSize,
    download: fn(FloatTensor<B>) -> Vec<f32>,
) -> (FloatTensor<B>, Arc<HostSplatState>) {
    let n = burn::tensor::TensorMetadata::shape(&gaussians)[1];
    let device = B::float_device(&gaussians);
    let data = download(gaussians);
    let (out, state) = host::forward(&data, n, size);
    let rows = size.views * size.pixels();
    let state = HostSplatState {
        state,
        gaussians: data,
        n,
    };
    (
        to_device::<B, 2>(out, [rows, OUT], &device),
        Arc::new(state),
    )
}

fn host_backward<B: Backend>(
    grad: FloatTensor<B>,
    state: &HostSplatState,
    size: RasterSize,
    download: fn(FloatTensor<B>) -> Vec<f32>,
) -> FloatTensor<B> {
    let device = B::float_device(&grad);
    let grad = download(grad);
    let out = host::backward(&state.gaussians, state.n, size, &state.state, &grad);
    to_device::<B, 3>(out, [size.views, state.n, PACK], &device)
}

/// Backends whose rasteriser runs the host kernels: the CPU backends by design, and the GPU
/// backends behind burn's fusion (its custom-op plumbing is not wired up). The plain CubeCL
/// backends (wgpu, CUDA) run [`super::cube`]'s device kernels.
macro_rules! host_splat {
    ($backend:ty, $download:expr) => {
        impl SplatBackend for $backend {
            type SplatState = Arc<HostSplatState>;
            fn splat_forward(
                gaussians: FloatTensor<Self>,
                size: RasterSize,
            ) -> (FloatTensor<Self>, Arc<HostSplatState>) {
                host_forward::<Self>(gaussians, size, $download)
            }
            fn splat_backward(
                _gaussians: FloatTensor<Self>,
                grad: FloatTensor<Self>,
                state: &Arc<HostSplatState>,
                size: RasterSize,
            ) -> FloatTensor<Self> {
                host_backward::<Self>(grad, state, size, $download)
            }
        }

        impl ProjectBackend for $backend {
            fn host_projection() -> bool {
                true
            }
            fn splat_project(
                inputs: ProjectTensors<Self>,
                views: &[ViewConstants],
            ) -> Option<(FloatTensor<Self>, Arc<ProjectState>)> {
                Some(host_project::<Self>(inputs, views, $download))
            }
            fn splat_project_backward(
                state: &ProjectState,
                grad: FloatTensor<Self>,
            ) -> [FloatTensor<Self>; 6] {
                host_project_backward::<Self>(state, grad, $download)
            }
        }
    };
}

#[cfg(feature = "cpu")]
host_splat!(burn::backend::NdArray<f32>, download_ndarray);
#[cfg(feature = "flex")]
host_splat!(burn::backend::Flex, download::<burn::backend::Flex>);
#[cfg(all(feature = "wgpu", feature = "fusion"))]
host_splat!(
    burn::backend::Wgpu<f32, i32>,
    download::<burn::backend::Wgpu<f32, i32>>
);
#[cfg(all(feature = "cuda", feature = "fusion"))]
host_splat!(
    burn::backend::Cuda<f32, i32>,
    download::<burn::backend::Cuda<f32, i32>>
);

#[derive(Debug)]
struct RasterizeBackward;

impl<B: SplatBackend> Backward<B, 1> for RasterizeBackward {
    type State = (FloatTensor<B>, B::SplatState, RasterSize);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (gaussians, state, size) = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(parent) = &ops.parents[0] {
            let input_grad = B::splat_backward(gaussians, grad, &state, size);
            grads.register::<B>(parent.id, input_grad);
        }
    }
}

impl<B: SplatBackend, C: CheckpointStrategy> SplatBackend for Autodiff<B, C> {
    type SplatState = B::SplatState;

    fn splat_forward(
        gaussians: FloatTensor<Self>,
        size: RasterSize,
    ) -> (FloatTensor<Self>, Self::SplatState) {
        match RasterizeBackward
            .prepare::<C>([gaussians.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let input = gaussians.primitive;
                let (out, state) = B::splat_forward(input.clone(), size);
                (prep.finish((input, state.clone(), size), out), state)
            }
            OpsKind::UnTracked(prep) => {
                let (out, state) = B::splat_forward(gaussians.primitive, size);
                (prep.finish(out), state)
            }
        }
    }

    fn splat_backward(
        gaussians: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        state: &Self::SplatState,
        size: RasterSize,
    ) -> FloatTensor<Self> {
        // No second derivatives: the gradient is a constant of the graph.
        let out = B::splat_backward(gaussians.primitive, grad.primitive, state, size);
        <Self as AutodiffBackend>::from_inner(out)
    }
}
